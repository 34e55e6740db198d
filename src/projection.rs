//! The sphere maths shared by the test card, the CPU reference renderer and (mirrored in WGSL)
//! the GPU shader. Right-handed: +X right, +Y up, the viewer looks down -Z ("front").
//!
//! Equirect: longitude 0 is the front (-Z) at the image centre, longitude grows to the right
//! (+X); latitude +90° (up) is the top row.

use std::f32::consts::{FRAC_PI_2, PI};

use inclubit_rendezvous::wire::media::Lens;

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
    let a = w as f32 / h as f32;
    pixel_ray_tangents(x, y, w, h, [-t * a, t * a, -t, t])
}

/// Camera-space ray through a pixel centre of a view whose edges have tangents
/// `[left, right, bottom, top]` (asymmetric, as headset eyes are).
pub fn pixel_ray_tangents(x: u32, y: u32, w: u32, h: u32, tan: [f32; 4]) -> [f32; 3] {
    let u = (x as f32 + 0.5) / w as f32;
    let v = 1.0 - (y as f32 + 0.5) / h as f32;
    normalize([
        tan[0] + (tan[1] - tan[0]) * u,
        tan[2] + (tan[3] - tan[2]) * v,
        -1.0,
    ])
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

/// Column-major 3×3 rotation for a scene orientation correction: yaw about +Y (right
/// positive), then pitch about X (up positive), then roll about the forward axis. Looking at
/// direction `d` shows the video's direction `R·d`, so `--yaw 30` puts what the camera saw 30° to
/// the right straight ahead.
pub fn orientation(yaw_deg: f32, pitch_deg: f32, roll_deg: f32) -> [[f32; 3]; 3] {
    let r = Pose { yaw_deg, pitch_deg }.rotation();
    let (sr, cr) = roll_deg.to_radians().sin_cos();
    mat_mul(r, [[cr, sr, 0.0], [-sr, cr, 0.0], [0.0, 0.0, 1.0]])
}

/// `a · b` for column-major 3×3 matrices.
pub fn mat_mul(a: [[f32; 3]; 3], b: [[f32; 3]; 3]) -> [[f32; 3]; 3] {
    b.map(|col| [0, 1, 2].map(|i| a[0][i] * col[0] + a[1][i] * col[1] + a[2][i] * col[2]))
}

/// `m · v` for a column-major 3×3 matrix.
pub fn mat_apply(m: [[f32; 3]; 3], v: [f32; 3]) -> [f32; 3] {
    [0, 1, 2].map(|i| m[0][i] * v[0] + m[1][i] * v[1] + m[2][i] * v[2])
}

/// A dual-fisheye lens in picture units (see [`inclubit_rendezvous::wire::media::Lens`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FisheyeLens {
    pub fov_deg: f32,
    /// Circle centre in its half: x in half-widths, y in picture heights.
    pub centre: [f32; 2],
    /// Circle radius in picture heights.
    pub radius: f32,
}

impl Default for FisheyeLens {
    fn default() -> Self {
        Self::from_wire(Lens::default())
    }
}

impl FisheyeLens {
    pub fn from_wire(l: Lens) -> Self {
        Self {
            fov_deg: l.fov_cdeg as f32 / 100.0,
            centre: l.centre_e4.map(|c| c as f32 / 10_000.0),
            radius: l.radius_e4 as f32 / 10_000.0,
        }
    }

    pub fn to_wire(self) -> Lens {
        let e4 = |v: f32| (v * 10_000.0).round().clamp(0.0, u16::MAX as f32) as u16;
        Lens {
            fov_cdeg: (self.fov_deg * 100.0).round().clamp(1.0, u16::MAX as f32) as u16,
            centre_e4: self.centre.map(e4),
            radius_e4: e4(self.radius),
        }
    }

    /// Where a lens-local direction (lens axis +Z, right +X, up +Y) lands in half `side`
    /// (0 front, left half; 1 back, right half) of a picture whose height/width is `aspect`.
    /// Equidistant fisheye: distance from the centre grows linearly with the angle off axis.
    fn uv(&self, l: [f32; 3], side: f32, aspect: f32) -> [f32; 2] {
        let theta = l[2].clamp(-1.0, 1.0).acos();
        let len = (l[0] * l[0] + l[1] * l[1]).sqrt();
        let q = if len > 1e-6 {
            [l[0] / len, l[1] / len]
        } else {
            [0.0, 0.0]
        };
        let r = theta / (self.fov_deg.to_radians() * 0.5) * self.radius;
        [
            0.5 * side + 0.5 * self.centre[0] + q[0] * r * aspect,
            self.centre[1] - q[1] * r,
        ]
    }
}

/// Unit direction → (front lens uv, back lens uv, weight of the front lens). The weight falls
/// from 1 to 0 (smoothstep) across the band both lenses see, so the seam blends.
pub fn dir_to_dual_fisheye(
    d: [f32; 3],
    lens: &FisheyeLens,
    aspect: f32,
) -> ([f32; 2], [f32; 2], f32) {
    let half_fov = lens.fov_deg.to_radians() * 0.5;
    let off_front = (-d[2]).clamp(-1.0, 1.0).acos();
    let t = ((half_fov - off_front) / (2.0 * half_fov - std::f32::consts::PI)).clamp(0.0, 1.0);
    let w = t * t * (3.0 - 2.0 * t);
    let front = lens.uv([d[0], d[1], -d[2]], 0.0, aspect);
    let back = lens.uv([-d[0], d[1], d[2]], 1.0, aspect);
    (front, back, w)
}

/// The world direction a dual-fisheye picture shows at `uv`, `None` outside both circles.
pub fn dual_fisheye_to_dir(uv: [f32; 2], lens: &FisheyeLens, aspect: f32) -> Option<[f32; 3]> {
    let side = if uv[0] < 0.5 { 0.0 } else { 1.0 };
    let dx = (uv[0] - 0.5 * side - 0.5 * lens.centre[0]) / aspect;
    let dy = lens.centre[1] - uv[1];
    let r = (dx * dx + dy * dy).sqrt();
    let theta = r / lens.radius * lens.fov_deg.to_radians() * 0.5;
    if r > lens.radius || theta > std::f32::consts::PI {
        return None;
    }
    let (q0, q1) = if r > 1e-9 {
        (dx / r, dy / r)
    } else {
        (0.0, 0.0)
    };
    let l = [theta.sin() * q0, theta.sin() * q1, theta.cos()];
    Some(if side == 0.0 {
        [l[0], l[1], -l[2]]
    } else {
        [-l[0], l[1], l[2]]
    })
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
    fn dual_fisheye_roundtrip_and_seam() {
        let lens = FisheyeLens::default();
        assert_eq!(FisheyeLens::from_wire(lens.to_wire()), lens);
        // Lens centres look front and back.
        let (f, b, w) = dir_to_dual_fisheye([0.0, 0.0, -1.0], &lens, 0.5);
        assert!((f[0] - 0.25).abs() < 1e-6 && (f[1] - 0.5).abs() < 1e-6 && w == 1.0);
        let (_, b2, w2) = dir_to_dual_fisheye([0.0, 0.0, 1.0], &lens, 0.5);
        assert!((b2[0] - 0.75).abs() < 1e-6 && w2 == 0.0, "{b:?}");
        // Right of the front lens is +X; right of the back lens (facing +Z) is -X.
        let (f, _, _) = dir_to_dual_fisheye(normalize([0.3, 0.0, -1.0]), &lens, 0.5);
        assert!(f[0] > 0.25);
        let (_, b, _) = dir_to_dual_fisheye(normalize([-0.3, 0.0, 1.0]), &lens, 0.5);
        assert!(b[0] > 0.75);
        // Up is up in both.
        let (f, b, _) = dir_to_dual_fisheye(normalize([0.0, 1.0, -0.01]), &lens, 0.5);
        assert!(f[1] < 0.5 && b[1] < 0.5);
        // Round trips for directions each lens sees.
        for d in [
            [0.2, 0.3, -0.9],
            [0.9, -0.1, 0.1],
            [-0.5, 0.5, 0.7],
            [0.0, -1.0, 0.05],
        ] {
            let d = normalize(d);
            let (f, b, w) = dir_to_dual_fisheye(d, &lens, 0.5);
            let uv = if w >= 0.5 { f } else { b };
            let back = dual_fisheye_to_dir(uv, &lens, 0.5).unwrap();
            assert!(close(back, d), "{d:?} -> {uv:?} -> {back:?}");
        }
        // The seam blends: at 90° off both axes each lens has half the weight.
        let (_, _, w) = dir_to_dual_fisheye([1.0, 0.0, 0.0], &lens, 0.5);
        assert!((w - 0.5).abs() < 1e-5);
        // Outside the circles there is nothing.
        assert!(dual_fisheye_to_dir([0.01, 0.01], &lens, 0.5).is_none());
    }

    #[test]
    fn orientation_turns_the_scene() {
        // --yaw 90: looking ahead shows what the camera saw on its right.
        let o = orientation(90.0, 0.0, 0.0);
        assert!(close(mat_apply(o, [0.0, 0.0, -1.0]), [1.0, 0.0, 0.0]));
        // Roll turns the horizon about the forward axis; forward stays forward.
        let o = orientation(0.0, 0.0, 30.0);
        assert!(close(mat_apply(o, [0.0, 0.0, -1.0]), [0.0, 0.0, -1.0]));
        assert!(mat_apply(o, [1.0, 0.0, 0.0])[1].abs() > 0.4);
        let id = orientation(0.0, 0.0, 0.0);
        assert!(close(mat_apply(id, [0.3, 0.4, -0.5]), [0.3, 0.4, -0.5]));
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
