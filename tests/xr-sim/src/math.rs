//! Poses: unit quaternions (x, y, z, w) and the yaw/pitch/roll the tests script in degrees.

use openxr_sys::{Posef, Quaternionf, Vector3f};

pub fn identity() -> Posef {
    Posef {
        orientation: Quaternionf {
            x: 0.0,
            y: 0.0,
            z: 0.0,
            w: 1.0,
        },
        position: Vector3f {
            x: 0.0,
            y: 0.0,
            z: 0.0,
        },
    }
}

fn axis_angle(axis: [f32; 3], deg: f32) -> Quaternionf {
    let (s, c) = (deg.to_radians() / 2.0).sin_cos();
    Quaternionf {
        x: axis[0] * s,
        y: axis[1] * s,
        z: axis[2] * s,
        w: c,
    }
}

pub fn qmul(a: Quaternionf, b: Quaternionf) -> Quaternionf {
    Quaternionf {
        w: a.w * b.w - a.x * b.x - a.y * b.y - a.z * b.z,
        x: a.w * b.x + a.x * b.w + a.y * b.z - a.z * b.y,
        y: a.w * b.y - a.x * b.z + a.y * b.w + a.z * b.x,
        z: a.w * b.z + a.x * b.y - a.y * b.x + a.z * b.w,
    }
}

fn conj(q: Quaternionf) -> Quaternionf {
    Quaternionf {
        x: -q.x,
        y: -q.y,
        z: -q.z,
        w: q.w,
    }
}

pub fn rotate(q: Quaternionf, v: Vector3f) -> Vector3f {
    let p = Quaternionf {
        x: v.x,
        y: v.y,
        z: v.z,
        w: 0.0,
    };
    let r = qmul(qmul(q, p), conj(q));
    Vector3f {
        x: r.x,
        y: r.y,
        z: r.z,
    }
}

/// Head orientation: yaw (turning right positive) about +Y, then pitch (up positive) about
/// the head's X, then roll about its forward axis; OpenXR axes (+Y up, forward -Z).
pub fn head(yaw: f32, pitch: f32, roll: f32) -> Posef {
    let q = qmul(
        qmul(
            axis_angle([0.0, 1.0, 0.0], -yaw),
            axis_angle([1.0, 0.0, 0.0], pitch),
        ),
        axis_angle([0.0, 0.0, -1.0], roll),
    );
    Posef {
        orientation: q,
        ..identity()
    }
}

/// `a · b`: b expressed in a's frame, then a.
pub fn compose(a: Posef, b: Posef) -> Posef {
    let p = rotate(a.orientation, b.position);
    Posef {
        orientation: qmul(a.orientation, b.orientation),
        position: Vector3f {
            x: a.position.x + p.x,
            y: a.position.y + p.y,
            z: a.position.z + p.z,
        },
    }
}

pub fn inverse(a: Posef) -> Posef {
    let q = conj(a.orientation);
    let p = rotate(
        q,
        Vector3f {
            x: -a.position.x,
            y: -a.position.y,
            z: -a.position.z,
        },
    );
    Posef {
        orientation: q,
        position: p,
    }
}

/// Where a pose looks, as (yaw, pitch) degrees.
pub fn yaw_pitch(p: Posef) -> (f32, f32) {
    let f = rotate(
        p.orientation,
        Vector3f {
            x: 0.0,
            y: 0.0,
            z: -1.0,
        },
    );
    (
        f.x.atan2(-f.z).to_degrees(),
        f.y.clamp(-1.0, 1.0).asin().to_degrees(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripted_head_looks_where_asked() {
        let (y, p) = yaw_pitch(head(90.0, 0.0, 0.0));
        assert!((y - 90.0).abs() < 1e-3 && p.abs() < 1e-3, "{y} {p}");
        let (y, p) = yaw_pitch(head(-30.0, 20.0, 10.0));
        assert!(
            (y + 30.0).abs() < 1e-3 && (p - 20.0).abs() < 1e-3,
            "{y} {p}"
        );
        let h = head(40.0, 10.0, 0.0);
        let (y, _) = yaw_pitch(compose(inverse(h), h));
        assert!(y.abs() < 1e-3);
    }
}
