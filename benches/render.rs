//! Per-frame render cost of a headset frame: two eyes of 1832×1920 (Quest 2/3 class), mono and
//! stereo top-bottom, offscreen on whatever adapter wgpu finds (lavapipe on machines without a
//! GPU). Baseline in the same run: mono, so the ratio says what stereo costs on top; the upload
//! of one 3840×1920 picture is printed beside it (what each new video frame adds).
//!
//! Run: `cargo bench --bench render` (INCLUBIT_BENCH_FRAMES frames per case, default 30).

use std::time::{Duration, Instant};

use inclubit::capture::testcard::TestCard;
use inclubit::pipeline::stats::percentile;
use inclubit::projection::Pose;
use inclubit::render::{Offscreen, ViewParams};
use inclubit::rendezvous::wire::media::Projection;

const EYE: (u32, u32) = (1832, 1920);

fn time_frames(off: &mut Offscreen, projection: Projection, frames: usize) -> Vec<u64> {
    (0..frames)
        .map(|i| {
            let pose = Pose::new(i as f32 * 3.0, 10.0);
            let start = Instant::now();
            for eye in 0..2 {
                let v = ViewParams {
                    pose,
                    fov_y_deg: 100.0,
                    projection,
                    eye,
                    ..Default::default()
                };
                off.render(&v).expect("render");
            }
            start.elapsed().as_micros() as u64
        })
        .collect()
}

fn main() {
    let quick = std::env::args().all(|a| a != "--bench");
    let frames: usize = std::env::var("INCLUBIT_BENCH_FRAMES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 3 } else { 30 });
    let mut off = match Offscreen::new(EYE.0, EYE.1) {
        Ok(o) => o,
        Err(e) => {
            println!("render bench skipped: {e}");
            return;
        }
    };
    let adapter = off.adapter_name();
    let card = TestCard::new(3840, 1920);
    let pic = card.frame(1, 0);
    let uploads: Vec<u64> = (0..frames.max(3))
        .map(|_| {
            let t = Instant::now();
            off.upload(&pic);
            off.render(&ViewParams::default()).expect("render");
            t.elapsed().as_micros() as u64
        })
        .collect();
    // Warm up, then measure the two interleaved, so drift in the machine hits both alike.
    time_frames(&mut off, Projection::EquirectMono, 2);
    let (mut mono, mut stereo) = (Vec::new(), Vec::new());
    for _ in 0..frames {
        mono.extend(time_frames(&mut off, Projection::EquirectMono, 1));
        stereo.extend(time_frames(
            &mut off,
            Projection::EquirectStereoTopBottom,
            1,
        ));
    }
    let ms = |v: &[u64], q| percentile(v.to_vec(), q) as f64 / 1000.0;
    println!(
        "render cost, 2 eyes × {}×{} on {adapter} ({frames} frames):",
        EYE.0, EYE.1
    );
    println!(
        "  mono     p50 {:>7.2} ms  p99 {:>7.2} ms",
        ms(&mono, 50.0),
        ms(&mono, 99.0)
    );
    println!(
        "  stereo   p50 {:>7.2} ms  p99 {:>7.2} ms",
        ms(&stereo, 50.0),
        ms(&stereo, 99.0)
    );
    println!(
        "  ratio stereo / mono (p50): {:.2}; upload + one small render of a 3840×1920 picture: p50 {:.2} ms",
        ms(&stereo, 50.0) / ms(&mono, 50.0).max(1e-9),
        ms(&uploads, 50.0)
    );
    for hz in [72.0, 90.0, 120.0] {
        let budget = Duration::from_secs_f64(1.0 / hz).as_secs_f64() * 1000.0;
        println!(
            "  {hz:>3} Hz budget {budget:.1} ms: mono uses {:.0}%, stereo {:.0}%",
            ms(&mono, 50.0) / budget * 100.0,
            ms(&stereo, 50.0) / budget * 100.0
        );
    }
}
