//! A virtual X display (Xvfb) for window tests, and screenshots of it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Xvfb {
    child: Child,
    pub display: String,
}

impl Xvfb {
    /// An Xvfb on a free display from :90 to :139, ready when its socket exists.
    pub fn start(w: u32, h: u32) -> Xvfb {
        // Parallel test processes, and tests within one, start their search at different displays.
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let first = std::process::id() % 50
            + 7 * STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for n in (0..50).map(|i| 90 + (first + i) % 50) {
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
            let mut x = Xvfb {
                child,
                display: format!(":{n}"),
            };
            let end = Instant::now() + Duration::from_secs(10);
            // Another process may have taken the display first: that Xvfb exits.
            while !Path::new(&socket).exists() && x.child.try_wait().ok().flatten().is_none() {
                assert!(Instant::now() < end, "Xvfb {n} did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            if x.child.try_wait().ok().flatten().is_none() {
                return x;
            }
        }
        panic!("no free X display");
    }

    /// The whole screen as RGB rows.
    pub fn screenshot(&self) -> (u32, u32, Vec<[u8; 3]>) {
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
