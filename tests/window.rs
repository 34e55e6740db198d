//! The desktop window under Xvfb: a real X screenshot (xwd) of `inclubit demo` equals the
//! headless render of the same picture at the same pose.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::process::Proc;
use inclubit::capture::testcard::TestCard;
use inclubit::render::{Offscreen, ViewParams};

struct Xvfb {
    child: Child,
    display: String,
}

impl Xvfb {
    /// An Xvfb on the first free display from :90, ready when its socket exists.
    fn start(w: u32, h: u32) -> Xvfb {
        for n in 90..140 {
            let socket = format!("/tmp/.X11-unix/X{n}");
            if Path::new(&socket).exists() || Path::new(&format!("/tmp/.X{n}-lock")).exists() {
                continue;
            }
            let child = Command::new("Xvfb")
                .args([
                    &format!(":{n}"),
                    "-screen",
                    "0",
                    &format!("{w}x{h}x24"),
                    "-nolisten",
                    "tcp",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("Xvfb (apt package xvfb)");
            let x = Xvfb {
                child,
                display: format!(":{n}"),
            };
            let end = Instant::now() + Duration::from_secs(10);
            while !Path::new(&socket).exists() {
                assert!(Instant::now() < end, "Xvfb {n} did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            return x;
        }
        panic!("no free X display");
    }

    /// The whole screen as RGB rows.
    fn screenshot(&self) -> (u32, u32, Vec<[u8; 3]>) {
        let out = Command::new("xwd")
            .args(["-root", "-silent", "-display", &self.display])
            .output()
            .expect("xwd (apt package x11-apps)");
        assert!(out.status.success());
        parse_xwd(&out.stdout)
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A 24-bit TrueColor ZPixmap XWD dump, as Xvfb gives it.
fn parse_xwd(b: &[u8]) -> (u32, u32, Vec<[u8; 3]>) {
    let field = |i: usize| u32::from_be_bytes(b[i * 4..i * 4 + 4].try_into().unwrap());
    let (header, format, w, h) = (field(0) as usize, field(2), field(4), field(5));
    let (msb_first, bpp, line) = (field(7) == 1, field(11), field(12) as usize);
    let (rmask, gmask, bmask) = (field(14), field(15), field(16));
    let ncolors = field(19) as usize;
    assert_eq!((format, bpp), (2, 32), "an unexpected XWD layout");
    let data = &b[header + ncolors * 12..];
    let channel = |p: u32, mask: u32| ((p & mask) >> mask.trailing_zeros()) as u8;
    let mut px = Vec::with_capacity((w * h) as usize);
    for y in 0..h as usize {
        for x in 0..w as usize {
            let raw: [u8; 4] = data[y * line + x * 4..][..4].try_into().unwrap();
            let p = if msb_first {
                u32::from_be_bytes(raw)
            } else {
                u32::from_le_bytes(raw)
            };
            px.push([channel(p, rmask), channel(p, gmask), channel(p, bmask)]);
        }
    }
    (w, h, px)
}

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
