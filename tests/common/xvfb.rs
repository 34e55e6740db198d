//! A virtual X display (Xvfb) for window tests, and screenshots of it.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Xvfb {
    child: Child,
    pub display: String,
}

impl Xvfb {
    /// An Xvfb on a display it finds free itself (`-displayfd`: it takes the first display whose
    /// lock it wins and prints the number once it accepts connections), so parallel tests and
    /// stale locks of killed servers never share or block a display.
    pub fn start(w: u32, h: u32) -> Xvfb {
        use std::io::BufRead;
        let mut child = Command::new("Xvfb")
            .args([
                "-displayfd",
                "1",
                "-screen",
                "0",
                &format!("{w}x{h}x24"),
                "-nolisten",
                "tcp",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("Xvfb (apt package xvfb)");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut x = Xvfb {
            child,
            display: String::new(),
        };
        let n = rx
            .recv_timeout(Duration::from_secs(10))
            .ok()
            .and_then(|l| l.trim().parse::<u32>().ok())
            .unwrap_or_else(|| panic!("Xvfb named no display within 10 s"));
        x.display = format!(":{n}");
        x
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
        // SIGTERM: Xvfb removes its lock and socket (SIGKILL leaves them, and fifty of those
        // used every display up).
        // SAFETY: a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        use wait_timeout::ChildExt;
        if !matches!(self.child.wait_timeout(Duration::from_secs(5)), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
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
