//! How a test drives the simulated headset and gets its output back.
//!
//! Environment, read once per session:
//! - `INCLUBIT_XR_SIM_RATE`: display rate in Hz (default 90).
//! - `INCLUBIT_XR_SIM_SIZE`: recommended eye image size `WxH` (default 64x64).
//! - `INCLUBIT_XR_SIM_DIR`: a directory the test shares with the runtime (nothing is read or
//!   written without it). The runtime reads there, on every frame:
//!   `pose` ("yaw pitch roll" in degrees: the head), `exit` (present: the runtime asks the
//!   session to end), `lose` (present: the runtime goes away, instance loss), `lose-session` (one-shot, removed
//!   when seen: the session is lost, XR_SESSION_STATE_LOSS_PENDING; a new one can be made). It writes
//!   `frames.log` (a line per frame) and `eyes.raw` (the submitted eye images, RGBA, one record
//!   per frame: both eyes, left first) unless `INCLUBIT_XR_SIM_IMAGES=0`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// The test's `unplugged` file: no headset while it is there.
pub fn unplugged() -> bool {
    std::env::var_os("INCLUBIT_XR_SIM_DIR")
        .is_some_and(|d| PathBuf::from(d).join("unplugged").exists())
}

pub struct Control {
    pub period: Duration,
    pub size: (u32, u32),
    dir: Option<PathBuf>,
    images: bool,
    log: Option<File>,
    eyes: Option<File>,
}

impl Control {
    pub fn from_env() -> Self {
        let rate = std::env::var("INCLUBIT_XR_SIM_RATE")
            .ok()
            .and_then(|r| r.parse::<f64>().ok())
            .filter(|r| *r > 0.0)
            .unwrap_or(90.0);
        let size = std::env::var("INCLUBIT_XR_SIM_SIZE")
            .ok()
            .and_then(|s| {
                let (w, h) = s.split_once('x')?;
                Some((w.parse().ok()?, h.parse().ok()?))
            })
            .unwrap_or((64, 64));
        let dir = std::env::var_os("INCLUBIT_XR_SIM_DIR").map(PathBuf::from);
        let images = std::env::var("INCLUBIT_XR_SIM_IMAGES").map_or(true, |v| v != "0");
        let open = |name: &str| {
            let d = dir.as_ref()?;
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(d.join(name))
                .ok()
        };
        Self {
            period: Duration::from_secs_f64(1.0 / rate),
            size,
            log: open("frames.log"),
            eyes: if images { open("eyes.raw") } else { None },
            dir,
            images,
        }
    }

    pub fn wants_images(&self) -> bool {
        self.images && self.eyes.is_some()
    }

    /// The scripted head (yaw, pitch, roll degrees); straight ahead without a script.
    pub fn head(&self) -> [f32; 3] {
        let Some(text) = self
            .dir
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.join("pose")).ok())
        else {
            return [0.0; 3];
        };
        let mut v = text
            .split_whitespace()
            .map(|t| t.parse::<f32>().unwrap_or(0.0));
        [
            v.next().unwrap_or(0.0),
            v.next().unwrap_or(0.0),
            v.next().unwrap_or(0.0),
        ]
    }

    pub fn flag(&self, name: &str) -> bool {
        self.dir.as_ref().is_some_and(|d| d.join(name).exists())
    }

    /// A one-shot trigger: true (and gone) if the test left it.
    pub fn take(&self, name: &str) -> bool {
        self.dir
            .as_ref()
            .is_some_and(|d| std::fs::remove_file(d.join(name)).is_ok())
    }

    pub fn log(&mut self, line: std::fmt::Arguments<'_>) {
        if let Some(f) = &mut self.log {
            let _ = writeln!(f, "{line}");
        }
    }

    /// One frame's eye images, left then right, each tightly packed RGBA.
    pub fn eyes(&mut self, eyes: &[Vec<u8>]) {
        if let Some(f) = &mut self.eyes {
            for e in eyes {
                let _ = f.write_all(e);
            }
        }
    }
}
