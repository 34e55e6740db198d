//! The sphere maths shared by the test card, the CPU reference renderer and (mirrored in WGSL)
//! the GPU shader. Right-handed: +X right, +Y up, the viewer looks down -Z ("front").
//!
//! Equirect: longitude 0 is the front (-Z) at the image centre, longitude grows to the right
//! (+X); latitude +90° (up) is the top row.

use std::f32::consts::{FRAC_PI_2, PI};

/// Unit direction → equirect texture coordinate in [0,1]².
pub fn dir_to_equirect(d: [f32; 3]) -> [f32; 2] {
    let lon = d[0].atan2(-d[2]);
    let lat = d[1].clamp(-1.0, 1.0).asin();
    [0.5 + lon / (2.0 * PI), 0.5 - lat / PI]
}

/// Equirect texture coordinate → unit direction.
pub fn equirect_to_dir(uv: [f32; 2]) -> [f32; 3] {
    let lon = (uv[0] - 0.5) * 2.0 * PI;
    let lat = (0.5 - uv[1]) * PI;
    [lat.cos() * lon.sin(), lat.sin(), -lat.cos() * lon.cos()]
}

/// Direction from yaw (degrees, + turns right) and pitch (degrees, + looks up).
pub fn dir_from_angles(yaw_deg: f32, pitch_deg: f32) -> [f32; 3] {
    let (y, p) = (yaw_deg.to_radians(), pitch_deg.to_radians());
    [p.cos() * y.sin(), p.sin(), -p.cos() * y.cos()]
}

/// A camera orientation: yaw about +Y (turning right is positive), then pitch about the camera's X.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Pose {
    pub yaw_deg: f32,
    pub pitch_deg: f32,
}

impl Pose {
    pub fn new(yaw_deg: f32, pitch_deg: f32) -> Self {
        Self {
            yaw_deg,
            pitch_deg: pitch_deg.clamp(-89.9, 89.9),
        }
    }

    /// Column-major 3×3 rotation taking camera-space directions to world space.
    pub fn rotation(&self) -> [[f32; 3]; 3] {
        let (sy, cy) = (-self.yaw_deg.to_radians()).sin_cos();
        let (sp, cp) = self.pitch_deg.to_radians().sin_cos();
        // R = Ry(-yaw) * Rx(pitch), columns are the images of the camera axes.
        let x = [cy, 0.0, -sy];
        let y = [sy * sp, cp, cy * sp];
        let z = [sy * cp, -sp, cy * cp];
        [x, y, z]
    }

    /// World direction of a camera-space ray.
    pub fn apply(&self, v: [f32; 3]) -> [f32; 3] {
        let r = self.rotation();
        [
            r[0][0] * v[0] + r[1][0] * v[1] + r[2][0] * v[2],
            r[0][1] * v[0] + r[1][1] * v[1] + r[2][1] * v[2],
            r[0][2] * v[0] + r[1][2] * v[1] + r[2][2] * v[2],
        ]
    }
}

/// Camera-space ray through a pixel centre of a `w`×`h` view with vertical field of view `fov_y`.
pub fn pixel_ray(x: u32, y: u32, w: u32, h: u32, fov_y_deg: f32) -> [f32; 3] {
    let t = (fov_y_deg.to_radians() / 2.0).tan();
    let aspect = w as f32 / h as f32;
    let nx = ((x as f32 + 0.5) / w as f32) * 2.0 - 1.0;
    let ny = 1.0 - ((y as f32 + 0.5) / h as f32) * 2.0;
    normalize([nx * t * aspect, ny * t, -1.0])
}

pub fn normalize(v: [f32; 3]) -> [f32; 3] {
    let l = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
    [v[0] / l, v[1] / l, v[2] / l]
}

/// BT.709 limited range, as the shader does it.
pub fn yuv_to_rgb(yuv: [u8; 3]) -> [u8; 3] {
    let y = (yuv[0] as f32 - 16.0) * (255.0 / 219.0);
    let cb = (yuv[1] as f32 - 128.0) * (255.0 / 224.0);
    let cr = (yuv[2] as f32 - 128.0) * (255.0 / 224.0);
    let r = y + 1.5748 * cr;
    let g = y - 0.187_324 * cb - 0.468_124 * cr;
    let b = y + 1.8556 * cb;
    [r, g, b].map(|c| c.round().clamp(0.0, 255.0) as u8)
}

/// [`yuv_to_rgb`] on normalised inputs, as the GPU sees them.
pub fn yuv_to_rgb_f(yuv: [f32; 3]) -> [u8; 3] {
    let y = (yuv[0] - 16.0 / 255.0) * (255.0 / 219.0);
    let cb = (yuv[1] - 128.0 / 255.0) * (255.0 / 224.0);
    let cr = (yuv[2] - 128.0 / 255.0) * (255.0 / 224.0);
    let r = y + 1.5748 * cr;
    let g = y - 0.187_324 * cb - 0.468_124 * cr;
    let b = y + 1.8556 * cb;
    [r, g, b].map(|c| (c.clamp(0.0, 1.0) * 255.0).round() as u8)
}

pub fn rgb_to_yuv(rgb: [u8; 3]) -> [u8; 3] {
    let [r, g, b] = rgb.map(|c| c as f32 / 255.0);
    let y = 0.2126 * r + 0.7152 * g + 0.0722 * b;
    let cb = (b - y) / 1.8556;
    let cr = (r - y) / 1.5748;
    [16.0 + 219.0 * y, 128.0 + 224.0 * cb, 128.0 + 224.0 * cr]
        .map(|c| c.round().clamp(0.0, 255.0) as u8)
}

/// The six faces of the cube around the viewer, each with a colour on the test card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Face {
    Front,
    Back,
    Right,
    Left,
    Up,
    Down,
}

impl Face {
    pub const ALL: [Face; 6] = [
        Face::Front,
        Face::Back,
        Face::Right,
        Face::Left,
        Face::Up,
        Face::Down,
    ];

    /// The face a direction points at (largest component).
    pub fn of(d: [f32; 3]) -> Face {
        let [x, y, z] = d;
        let (ax, ay, az) = (x.abs(), y.abs(), z.abs());
        if ay >= ax && ay >= az {
            if y > 0.0 {
                Face::Up
            } else {
                Face::Down
            }
        } else if ax >= az {
            if x > 0.0 {
                Face::Right
            } else {
                Face::Left
            }
        } else if z < 0.0 {
            Face::Front
        } else {
            Face::Back
        }
    }

    /// The centre direction of the face as (yaw, pitch) degrees.
    pub fn angles(self) -> (f32, f32) {
        match self {
            Face::Front => (0.0, 0.0),
            Face::Right => (90.0, 0.0),
            Face::Back => (180.0, 0.0),
            Face::Left => (-90.0, 0.0),
            Face::Up => (0.0, 90.0),
            Face::Down => (0.0, -90.0),
        }
    }

    pub fn colour(self) -> [u8; 3] {
        match self {
            Face::Front => [220, 30, 30],
            Face::Back => [30, 220, 220],
            Face::Right => [30, 200, 30],
            Face::Left => [220, 30, 220],
            Face::Up => [30, 30, 220],
            Face::Down => [220, 220, 30],
        }
    }
}

/// Largest per-channel difference between two colours.
pub fn colour_distance(a: [u8; 3], b: [u8; 3]) -> u8 {
    (0..3).map(|i| a[i].abs_diff(b[i])).max().unwrap_or(0)
}

pub const HALF_PI: f32 = FRAC_PI_2;

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: [f32; 3], b: [f32; 3]) -> bool {
        (0..3).all(|i| (a[i] - b[i]).abs() < 1e-4)
    }

    #[test]
    fn equirect_roundtrip_and_orientation() {
        assert_eq!(dir_to_equirect([0.0, 0.0, -1.0]), [0.5, 0.5]);
        let right = dir_to_equirect([1.0, 0.0, 0.0]);
        assert!((right[0] - 0.75).abs() < 1e-6);
        assert!(dir_to_equirect([0.0, 1.0, 0.0])[1].abs() < 1e-6);
        for &(u, v) in &[(0.1, 0.2), (0.7, 0.9), (0.5, 0.5), (0.33, 0.6)] {
            let d = equirect_to_dir([u, v]);
            let back = dir_to_equirect(d);
            assert!((back[0] - u).abs() < 1e-5 && (back[1] - v).abs() < 1e-5);
        }
    }

    #[test]
    fn pose_looks_where_angles_say() {
        for face in Face::ALL {
            let (yaw, pitch) = face.angles();
            let d = Pose::new(yaw, pitch).apply([0.0, 0.0, -1.0]);
            assert_eq!(Face::of(d), face, "{face:?} {d:?}");
            assert!(close(d, dir_from_angles(yaw, pitch.clamp(-89.9, 89.9))));
        }
        // Camera up stays up-ish when looking forward; camera right points to +X.
        let p = Pose::new(0.0, 0.0);
        assert!(close(p.apply([1.0, 0.0, 0.0]), [1.0, 0.0, 0.0]));
        assert!(close(p.apply([0.0, 1.0, 0.0]), [0.0, 1.0, 0.0]));
    }

    #[test]
    fn colour_conversion_roundtrip() {
        for face in Face::ALL {
            let c = face.colour();
            assert!(
                colour_distance(yuv_to_rgb(rgb_to_yuv(c)), c) <= 3,
                "{face:?}"
            );
        }
    }
}
