//! XR frame pacing: `inclubit view` in the simulated headset (tests/xr-sim, through the real
//! OpenXR loader) at 72, 90 and 120 Hz, for a small eye and a Quest 2/3 class eye
//! (1832×1920). Per case: display periods the runtime offered (requested), frames the viewer
//! submitted (rendered), and their ratio. The baseline, measured in the same run on the same
//! adapter: the offscreen cost of both eyes at that size, the share of the display rate it
//! allows, and how much of that share the XR loop reaches ("of that").
//!
//! Run: `cargo bench --bench xr` (INCLUBIT_BENCH_SECS seconds per case, default 4).

use std::time::{Duration, Instant};

use inclubit::capture::testcard::TestCard;
use inclubit::pipeline::stats::percentile;
use inclubit::render::{Fov, Offscreen, ViewParams};

#[allow(dead_code)]
#[path = "../tests/common/process.rs"]
mod process;
#[allow(dead_code)]
#[path = "../tests/common/xr.rs"]
mod xr;

/// Both eyes of one headset frame offscreen, median milliseconds.
fn two_eyes_ms(off: &mut Offscreen, frames: usize) -> f64 {
    let fov = Fov {
        left: -0.87,
        right: 0.79,
        up: 0.84,
        down: -0.91,
    };
    let times: Vec<u64> = (0..frames)
        .map(|_| {
            let t = Instant::now();
            for eye in 0..2 {
                let v = ViewParams {
                    fov: Some(fov),
                    eye,
                    ..Default::default()
                };
                off.render(&v).expect("render");
            }
            t.elapsed().as_micros() as u64
        })
        .collect();
    percentile(times, 50.0) as f64 / 1000.0
}

struct Pacing {
    requested: u64,
    rendered: u64,
}

/// Runs the viewer in the simulated headset and counts over `window`, after a warm-up.
fn pacing(rv: &str, code: &str, rate: u32, eye: (u32, u32), window: Duration) -> Pacing {
    let mut h = xr::Headset::start(rv, code, rate, eye, false);
    let warm = h.wait_for("warm-up frames", Duration::from_secs(120), |_, l| {
        l.frames.len() >= 10
    });
    // The measurement window itself: counts, not timing assertions.
    std::thread::sleep(window);
    let end = h.log();
    let periods = |l: &xr::Log| l.waits + l.missed;
    let shown = |l: &xr::Log| l.frames.iter().filter(|f| f.layers == 1).count() as u64;
    Pacing {
        requested: periods(&end) - periods(&warm),
        rendered: shown(&end) - shown(&warm),
    }
}

fn main() {
    let quick = std::env::args().all(|a| a != "--bench");
    let secs: f64 = std::env::var("INCLUBIT_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 0.5 } else { 4.0 });
    let window = Duration::from_secs_f64(secs);
    let (rates, eyes): (&[u32], &[(u32, u32)]) = if quick {
        (&[90], &[(64, 64)])
    } else {
        (&[72, 90, 120], &[(512, 512), (1832, 1920)])
    };
    let card = TestCard::new(1920, 960);
    let mut baselines = Vec::new();
    for &(w, h) in eyes {
        let mut off = match Offscreen::new(w, h) {
            Ok(o) => o,
            Err(e) => {
                println!("xr bench skipped: {e}");
                return;
            }
        };
        if baselines.is_empty() {
            println!("adapter: {}", off.adapter_name());
        }
        off.upload(&card.frame(1, 0));
        baselines.push(two_eyes_ms(&mut off, if quick { 3 } else { 20 }));
    }
    let (send, code, rv) = xr::sender(&["--size", "1920x960"]);
    println!("sender: test card 1920x960 @ 30 fps, x264; viewer in the simulated headset");
    println!(
        "{:>10} {:>5} {:>10} {:>9} {:>9} {:>7} {:>14} {:>9}",
        "eye", "Hz", "2 eyes ms", "requested", "rendered", "ratio", "render allows", "of that"
    );
    for (&(w, h), &ms) in eyes.iter().zip(&baselines) {
        for &rate in rates {
            let p = pacing(&rv, &code, rate, (w, h), window);
            let ratio = p.rendered as f64 / p.requested.max(1) as f64;
            let allows = (1000.0 / ms / rate as f64).min(1.0);
            println!(
                "{:>10} {:>5} {:>10.1} {:>9} {:>9} {:>7.2} {:>14.2} {:>9.2}",
                format!("{w}x{h}"),
                rate,
                ms,
                p.requested,
                p.rendered,
                ratio,
                allows,
                ratio / allows
            );
        }
    }
    drop(send);
}
