//! Head poses from OpenXR (unit quaternions) as the renderer's rotation matrices, and the
//! yaw-only turn a recentre applies to the LOCAL space.

use openxr as xr;

fn qmul(a: xr::Quaternionf, b: xr::Quaternionf) -> xr::Quaternionf {
    xr::Quaternionf {
        w: a.w * b.w - a.x * b.x - a.y * b.y - a.z * b.z,
        x: a.w * b.x + a.x * b.w + a.y * b.z - a.z * b.y,
        y: a.w * b.y - a.x * b.z + a.y * b.w + a.z * b.x,
        z: a.w * b.z + a.x * b.y - a.y * b.x + a.z * b.w,
    }
}

pub fn rotate(q: xr::Quaternionf, v: [f32; 3]) -> [f32; 3] {
    let p = xr::Quaternionf {
        x: v[0],
        y: v[1],
        z: v[2],
        w: 0.0,
    };
    let c = xr::Quaternionf {
        x: -q.x,
        y: -q.y,
        z: -q.z,
        w: q.w,
    };
    let r = qmul(qmul(q, p), c);
    [r.x, r.y, r.z]
}

/// Column-major rotation: the columns are where the head's axes point. OpenXR's axes (+X
/// right, +Y up, forward -Z) are the renderer's.
pub fn matrix(q: xr::Quaternionf) -> [[f32; 3]; 3] {
    [
        rotate(q, [1.0, 0.0, 0.0]),
        rotate(q, [0.0, 1.0, 0.0]),
        rotate(q, [0.0, 0.0, 1.0]),
    ]
}

/// `a · b`: b given in a's frame.
pub fn compose(a: xr::Posef, b: xr::Posef) -> xr::Posef {
    let p = rotate(a.orientation, [b.position.x, b.position.y, b.position.z]);
    xr::Posef {
        orientation: qmul(a.orientation, b.orientation),
        position: xr::Vector3f {
            x: a.position.x + p[0],
            y: a.position.y + p[1],
            z: a.position.z + p[2],
        },
    }
}

/// The turn about +Y (up) that faces where `head` looks, at the head's position: the new
/// origin of a recentred LOCAL space. Pitch and roll stay the head's own.
pub fn facing(head: xr::Posef) -> xr::Posef {
    let f = rotate(head.orientation, [0.0, 0.0, -1.0]);
    let angle = (-f[0]).atan2(-f[2]);
    let (s, c) = (angle / 2.0).sin_cos();
    xr::Posef {
        orientation: xr::Quaternionf {
            x: 0.0,
            y: s,
            z: 0.0,
            w: c,
        },
        position: head.position,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::Pose;

    fn q_axis(axis: [f32; 3], deg: f32) -> xr::Quaternionf {
        let (s, c) = (deg.to_radians() / 2.0).sin_cos();
        xr::Quaternionf {
            x: axis[0] * s,
            y: axis[1] * s,
            z: axis[2] * s,
            w: c,
        }
    }

    fn close(a: [[f32; 3]; 3], b: [[f32; 3]; 3]) -> bool {
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .all(|(x, y)| (x - y).abs() < 1e-5)
    }

    #[test]
    fn quaternion_matrix_matches_the_desktop_pose() {
        // Turning right 30° then looking up 20°: the same rotation the mouse-look pose makes.
        let q = qmul(
            q_axis([0.0, 1.0, 0.0], -30.0),
            q_axis([1.0, 0.0, 0.0], 20.0),
        );
        assert!(close(matrix(q), Pose::new(30.0, 20.0).rotation()));
    }

    #[test]
    fn recentring_faces_the_head_and_keeps_its_pitch() {
        let head = xr::Posef {
            orientation: qmul(
                q_axis([0.0, 1.0, 0.0], -75.0),
                q_axis([1.0, 0.0, 0.0], 15.0),
            ),
            position: xr::Vector3f {
                x: 0.1,
                y: 1.6,
                z: 0.0,
            },
        };
        let origin = facing(head);
        // The head seen from the new origin: no yaw left, the pitch kept.
        let inv = xr::Posef {
            orientation: xr::Quaternionf {
                x: -origin.orientation.x,
                y: -origin.orientation.y,
                z: -origin.orientation.z,
                w: origin.orientation.w,
            },
            position: xr::Vector3f::default(),
        };
        let rel = compose(inv, head);
        assert!(close(
            matrix(rel.orientation),
            Pose::new(0.0, 15.0).rotation()
        ));
    }
}
