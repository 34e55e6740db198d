//! The GPU renderer (lavapipe on machines without a GPU) against the CPU reference.

mod common;

use inclubit::capture::testcard::TestCard;
use inclubit::picture::I420;
use inclubit::projection::{colour_distance, Face, FisheyeLens, Pose};
use inclubit::render::{reference, rgba_at, Offscreen, ViewParams};
use inclubit::rendezvous::wire::media::{Codec, Projection, StreamHello};

fn errors(a: &[u8], b: &[u8]) -> (f64, u8) {
    let mut sum = 0u64;
    let mut max = 0u8;
    let mut n = 0u64;
    for (pa, pb) in a.chunks(4).zip(b.chunks(4)) {
        for c in 0..3 {
            let d = pa[c].abs_diff(pb[c]);
            sum += d as u64;
            max = max.max(d);
            n += 1;
        }
    }
    (sum as f64 / n as f64, max)
}

#[test]
fn offscreen_render_matches_cpu_reference_at_several_poses() {
    let card = TestCard::new(1024, 512);
    let pic = card.frame(42, 0);
    let (w, h) = (160, 120);
    let mut gpu = Offscreen::new(w, h).expect("a GPU adapter (lavapipe in CI)");
    gpu.upload(&pic);
    let poses = [
        (0.0, 0.0, 90.0),
        (90.0, 0.0, 70.0),
        (180.0, 10.0, 100.0),
        (-45.0, 45.0, 90.0),
        (30.0, -80.0, 60.0),
        (0.0, 89.0, 90.0),
    ];
    for (yaw, pitch, fov) in poses {
        let view = ViewParams {
            pose: Pose::new(yaw, pitch),
            fov_y_deg: fov,
            ..Default::default()
        };
        let got = gpu.render_rgba(&view).unwrap();
        let want = reference::render(&pic, &view, w, h);
        let (mean, max) = errors(&got, &want);
        // Edges between faces differ by a texel of filtering at most.
        assert!(mean < 1.0, "pose {yaw},{pitch}: mean error {mean}");
        assert!(max < 200, "pose {yaw},{pitch}: max error {max}");
        let diff_pixels = got
            .chunks(4)
            .zip(want.chunks(4))
            .filter(|(a, b)| colour_distance([a[0], a[1], a[2]], [b[0], b[1], b[2]]) > 8)
            .count();
        assert!(
            diff_pixels * 100 < (w * h) as usize,
            "pose {yaw},{pitch}: {diff_pixels} pixels differ"
        );
    }
}

#[test]
fn each_face_centre_renders_its_colour() {
    let card = TestCard::new(640, 320);
    let mut gpu = Offscreen::new(64, 64).unwrap();
    gpu.upload(&card.frame(0, 0));
    for face in Face::ALL {
        let (yaw, pitch) = face.angles();
        let rgba = gpu
            .render_rgba(&ViewParams {
                pose: Pose::new(yaw, pitch),
                fov_y_deg: 30.0,
                ..Default::default()
            })
            .unwrap();
        let c = rgba_at(&rgba, 64, 32, 32);
        assert!(colour_distance(c, face.colour()) <= 6, "{face:?}: {c:?}");
    }
}

#[test]
fn stereo_top_bottom_eyes_see_their_own_half() {
    // Top half: the test card; bottom half: the same card turned 180° (back where front was).
    let card = TestCard::new(512, 256);
    let a = card.frame(0, 0);
    let mut stereo = I420::new(512, 512);
    for p in 0..3 {
        let (w, h) = a.plane_size(p);
        for y in 0..h as usize {
            let src = &a.planes[p][y * a.strides[p]..][..w as usize];
            stereo.planes[p][y * stereo.strides[p]..][..w as usize].copy_from_slice(src);
            let dst = &mut stereo.planes[p][(y + h as usize) * stereo.strides[p]..][..w as usize];
            let half = w as usize / 2;
            dst[..half].copy_from_slice(&src[half..]);
            dst[half..].copy_from_slice(&src[..half]);
        }
    }
    let mut gpu = Offscreen::new(32, 32).unwrap();
    gpu.upload(&stereo);
    let mut eye = |eye| {
        let v = ViewParams {
            fov_y_deg: 30.0,
            projection: Projection::EquirectStereoTopBottom,
            eye,
            ..Default::default()
        };
        rgba_at(&gpu.render_rgba(&v).unwrap(), 32, 16, 16)
    };
    let (left, right) = (eye(0), eye(1));
    assert!(colour_distance(left, Face::Front.colour()) <= 6, "{left:?}");
    assert!(
        colour_distance(right, Face::Back.colour()) <= 6,
        "{right:?}"
    );
    // Mono: both eyes identical.
    let mut mono = |eye| {
        let v = ViewParams {
            fov_y_deg: 30.0,
            eye,
            ..Default::default()
        };
        gpu.render_rgba(&v).unwrap()
    };
    assert_eq!(mono(0), mono(1));
}

#[test]
fn dual_fisheye_matches_cpu_reference_and_each_face_is_in_its_direction() {
    let lens = FisheyeLens::default();
    let pic = common::dual_fisheye_card(1024, 512, &lens);
    let (w, h) = (160, 120);
    let mut gpu = Offscreen::new(w, h).unwrap();
    gpu.upload(&pic);
    // Straight at each lens, across the seam (±90°), up and down through both circles' rims.
    for (yaw, pitch, fov) in [
        (0.0, 0.0, 90.0),
        (180.0, 0.0, 90.0),
        (90.0, 0.0, 100.0),
        (-90.0, 20.0, 90.0),
        (45.0, 60.0, 90.0),
        (-30.0, -85.0, 70.0),
    ] {
        let view = ViewParams {
            pose: Pose::new(yaw, pitch),
            fov_y_deg: fov,
            projection: Projection::DualFisheye,
            lens,
            ..Default::default()
        };
        let got = gpu.render_rgba(&view).unwrap();
        let want = reference::render(&pic, &view, w, h);
        let (mean, max) = errors(&got, &want);
        assert!(mean < 1.5, "pose {yaw},{pitch}: mean error {mean}");
        assert!(max < 200, "pose {yaw},{pitch}: max error {max}");
    }
    let mut small = Offscreen::new(64, 64).unwrap();
    small.upload(&pic);
    for face in Face::ALL {
        let (yaw, pitch) = face.angles();
        let rgba = small
            .render_rgba(&ViewParams {
                pose: Pose::new(yaw, pitch),
                fov_y_deg: 20.0,
                projection: Projection::DualFisheye,
                lens,
                ..Default::default()
            })
            .unwrap();
        let c = rgba_at(&rgba, 64, 32, 32);
        assert!(colour_distance(c, face.colour()) <= 8, "{face:?}: {c:?}");
    }
}

#[test]
fn the_senders_orientation_turns_the_scene() {
    let card = TestCard::new(640, 320);
    let pic = card.frame(0, 0);
    let mut gpu = Offscreen::new(64, 64).unwrap();
    gpu.upload(&pic);
    let hello = StreamHello {
        codec: Codec::H264,
        width: 640,
        height: 320,
        fps_milli: 30_000,
        projection: Projection::EquirectMono,
        bitrate: 1,
        // --yaw 90: what the camera saw on its right is ahead.
        orientation_cdeg: [9000, 0, 0],
        next_seq: 0,
        lens: Default::default(),
    };
    let ahead = ViewParams {
        fov_y_deg: 20.0,
        ..Default::default()
    }
    .with_hello(&hello);
    let c = rgba_at(&gpu.render_rgba(&ahead).unwrap(), 64, 32, 32);
    assert!(colour_distance(c, Face::Right.colour()) <= 6, "{c:?}");
    // Turning the head left by 90° brings the camera's front back.
    let left = ViewParams {
        pose: Pose::new(-90.0, 0.0),
        ..ahead
    };
    let c = rgba_at(&gpu.render_rgba(&left).unwrap(), 64, 32, 32);
    assert!(colour_distance(c, Face::Front.colour()) <= 6, "{c:?}");
    // GPU and CPU agree with a roll and pitch as well.
    let tilted = ViewParams {
        pose: Pose::new(20.0, 10.0),
        fov_y_deg: 90.0,
        orientation: [10.0, -15.0, 25.0],
        ..Default::default()
    };
    let mut big = Offscreen::new(160, 120).unwrap();
    big.upload(&pic);
    let (mean, _) = errors(
        &big.render_rgba(&tilted).unwrap(),
        &reference::render(&pic, &tilted, 160, 120),
    );
    assert!(mean < 1.0, "mean error {mean}");
}

/// A headset eye: a full head rotation (roll included), an asymmetric field of view, and an sRGB
/// target the shader must write linear values into. The bytes read back (what the runtime gets)
/// equal the CPU reference, for every projection, in both eyes.
#[test]
fn headset_eyes_match_cpu_reference_on_srgb_targets() {
    use inclubit::projection::{mat_mul, orientation};
    use inclubit::render::{Fov, Gpu};
    let card = TestCard::new(1024, 512);
    let mono = card.frame(7, 0);
    let (w, h) = (96, 104);
    let fov = |eye: u32| {
        let (inner, outer) = (45f32.to_radians(), 52f32.to_radians());
        let (left, right) = if eye == 0 {
            (-outer, inner)
        } else {
            (-inner, outer)
        };
        Fov {
            left,
            right,
            up: 47f32.to_radians(),
            down: -53f32.to_radians(),
        }
    };
    for format in [
        wgpu::TextureFormat::Rgba8UnormSrgb,
        wgpu::TextureFormat::Rgba8Unorm,
    ] {
        let gpu = Gpu::headless().expect("a GPU adapter (lavapipe in CI)");
        let mut off = Offscreen::with_format(gpu, w, h, format).unwrap();
        off.upload(&mono);
        for (yaw, pitch, roll) in [(0.0, 0.0, 0.0), (100.0, 20.0, 15.0), (-150.0, -35.0, -25.0)] {
            // Turn, look up, then tilt the head: the order a head pose composes in.
            let head = mat_mul(
                Pose::new(yaw, pitch).rotation(),
                orientation(0.0, 0.0, roll),
            );
            for eye in 0..2 {
                let view = ViewParams {
                    head: Some(head),
                    fov: Some(fov(eye)),
                    eye,
                    ..Default::default()
                };
                let got = off.render_rgba(&view).unwrap();
                let want = reference::render(&mono, &view, w, h);
                let (mean, max) = errors(&got, &want);
                assert!(
                    mean < 1.0 && max < 200,
                    "{format:?} head {yaw},{pitch},{roll} eye {eye}: mean {mean} max {max}"
                );
            }
        }
        // The two eyes' lenses are mirror images: the same head gives different images.
        let view = |eye| ViewParams {
            fov: Some(fov(eye)),
            eye,
            ..Default::default()
        };
        let (l, r) = (
            off.render_rgba(&view(0)).unwrap(),
            off.render_rgba(&view(1)).unwrap(),
        );
        assert!(errors(&l, &r).0 > 1.0, "asymmetric eyes rendered alike");
    }
}
