//! The desktop window under Xvfb: a real X screenshot (xwd) of `inclubit demo` equals the
//! headless render of the same picture at the same pose.

mod common;

use std::time::{Duration, Instant};

use common::process::Proc;
use common::xvfb::Xvfb;
use inclubit::capture::testcard::TestCard;
use inclubit::render::{Offscreen, ViewParams};

#[test]
fn window_screenshot_equals_the_headless_render() {
    let (w, h) = (1280, 720);
    let x = Xvfb::start(w, h);
    let demo = Proc::start_with_env(&["demo", "--size", "640x320"], &[("DISPLAY", &x.display)]);
    // Wait until the window has shown frames (the stats line counts them).
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let l = demo
            .lines
            .recv_timeout(end.saturating_duration_since(Instant::now()))
            .expect("demo stats lines");
        let frames = l
            .split_whitespace()
            .skip_while(|t| *t != "frames")
            .nth(1)
            .and_then(|n| n.parse::<u64>().ok());
        if frames.is_some_and(|n| n >= 30) {
            break;
        }
    }
    let (sw, sh, shot) = x.screenshot();
    drop(demo);
    assert_eq!((sw, sh), (w, h));

    // The same pose offscreen. The view (±45° up and down) misses the card's barcode and clock
    // bands, so which frame was on screen does not matter; the window shows it through x264.
    let mut off = Offscreen::new(w, h).unwrap();
    off.upload(&TestCard::new(640, 320).frame(0, 0));
    let want = off.render_rgba(&ViewParams::default()).unwrap();
    let mut sum = 0u64;
    let mut far = 0usize;
    for (i, got) in shot.iter().enumerate() {
        let d = (0..3)
            .map(|c| got[c].abs_diff(want[i * 4 + c]))
            .max()
            .unwrap_or(0);
        sum += d as u64;
        far += (d > 24) as usize;
    }
    let mean = sum as f64 / shot.len() as f64;
    assert!(mean < 3.0, "mean difference {mean}");
    assert!(
        far * 100 < shot.len(),
        "{far} pixels differ by more than 24"
    );
}
