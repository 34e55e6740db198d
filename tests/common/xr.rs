//! The simulated OpenXR runtime (tests/xr-sim) for tests and benches: built on first use, named
//! by a manifest the real loader reads through `XR_RUNTIME_JSON`, and a viewer rendering into it
//! whose frames and eye images come back through the runtime's shared directory.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::process::Proc;

/// The simulated runtime, built into its own target directory beside the caller's (only
/// openxr-sys, ash and itself: seconds), and a manifest naming it. Once per process: tests run
/// in parallel, and a manifest rewritten under a starting loader reads as no runtime at all.
pub fn manifest() -> PathBuf {
    static MANIFEST: OnceLock<PathBuf> = OnceLock::new();
    MANIFEST
        .get_or_init(|| {
            let mut target = std::env::current_exe().expect("test executable path");
            target.pop();
            if target.ends_with("deps") {
                target.pop();
            }
            let target_dir = target.join("xr-sim");
            let root = env!("CARGO_MANIFEST_DIR");
            let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(["build", "-q", "-p", "inclubit-xr-sim", "--manifest-path"])
                .arg(format!("{root}/Cargo.toml"))
                .arg("--target-dir")
                .arg(&target_dir)
                .status()
                .expect("cargo, to build the simulated runtime");
            assert!(status.success(), "building tests/xr-sim failed");
            let lib = target_dir.join("debug").join("libinclubit_xr_sim.so");
            assert!(lib.exists(), "{} missing", lib.display());
            let json =
                std::env::temp_dir().join(format!("inclubit-xr-sim-{}.json", std::process::id()));
            std::fs::write(
                &json,
                format!(
                    r#"{{"file_format_version": "1.0.0", "runtime": {{"name": "inclubit simulated runtime", "library_path": "{}"}}}}"#,
                    lib.display()
                ),
            )
            .expect("writing the runtime manifest");
            json
        })
        .clone()
}

/// A test-card sender (640×320 unless `extra` names a size) with its own rendezvous on
/// loopback: (process, code, rendezvous).
pub fn sender(extra: &[&str]) -> (Proc, String, String) {
    let mut args = vec![
        "send",
        "--source",
        "testcard",
        "--bind",
        "127.0.0.1:0",
        "--rendezvous-port",
        "0",
    ];
    if !extra.contains(&"--size") {
        args.extend(["--size", "640x320"]);
    }
    args.extend_from_slice(extra);
    let p = Proc::start(&args);
    let code = p.line("code ", Duration::from_secs(20));
    let code = code.split_whitespace().nth(1).expect("a code").to_string();
    let rv = p.line("rendezvous ", Duration::from_secs(5));
    let rv = rv
        .split_whitespace()
        .nth(1)
        .expect("an address")
        .to_string();
    (p, code, rv)
}

/// One frame the viewer submitted, as the runtime logged it.
#[derive(Debug, Clone)]
pub struct Frame {
    pub n: u64,
    pub layers: u32,
    /// The submitted image size.
    pub size: (u32, u32),
    /// Index of its eye images in `eyes.raw`, when they were kept.
    pub record: Option<u64>,
    /// Where each submitted eye looked (yaw, pitch degrees).
    pub eyes: Vec<(f32, f32)>,
}

/// What the runtime logged: frames submitted and display periods (waits, missed).
#[derive(Debug, Default, Clone)]
pub struct Log {
    pub frames: Vec<Frame>,
    pub waits: u64,
    pub missed: u64,
    /// The session calls the viewer made, in order: begin, request-exit, end, destroy.
    pub session: Vec<String>,
    /// Frames submitted since the last session began.
    pub since_begin: usize,
}

impl Log {
    fn parse(text: &str) -> Log {
        let mut log = Log::default();
        for line in text.lines() {
            let t: Vec<&str> = line.split_whitespace().collect();
            match t.first() {
                Some(&"wait") => {
                    log.waits += 1;
                    log.missed += t.get(3).and_then(|m| m.parse::<u64>().ok()).unwrap_or(0);
                }
                Some(&"session") => {
                    log.session.extend(t.get(1).map(|w| w.to_string()));
                    if t.get(1) == Some(&"begin") {
                        log.since_begin = 0;
                    }
                }
                Some(&"frame") if line.ends_with(|c: char| c.is_ascii_digit()) => {
                    let field = |k: &str| {
                        t.iter()
                            .position(|w| *w == k)
                            .and_then(|i| t.get(i + 1))
                            .and_then(|v| v.parse::<u64>().ok())
                    };
                    let mut eyes = Vec::new();
                    for (i, w) in t.iter().enumerate() {
                        if w.starts_with("eye") {
                            let a = |j: usize| t.get(i + j).and_then(|v| v.parse::<f32>().ok());
                            if let (Some(y), Some(p)) = (a(1), a(2)) {
                                eyes.push((y, p));
                            }
                        }
                    }
                    let size = t
                        .iter()
                        .position(|w| *w == "size")
                        .and_then(|i| t.get(i + 1))
                        .and_then(|v| v.split_once('x'))
                        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
                        .unwrap_or((0, 0));
                    log.since_begin += 1;
                    log.frames.push(Frame {
                        n: field("frame").unwrap_or(0),
                        layers: field("layers").unwrap_or(0) as u32,
                        size,
                        record: field("record"),
                        eyes,
                    });
                }
                _ => {}
            }
        }
        log
    }
}

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// `inclubit view` rendering into the simulated headset, and the directory it shares with it.
pub struct Headset {
    pub dir: PathBuf,
    pub eye: (u32, u32),
    pub view: Option<Proc>,
}

impl Headset {
    /// Starts `inclubit view` (no display, the simulated runtime as the system's) for `code`.
    /// `rate` is the display's refresh rate, `eye` its eye image size; `images` keeps the
    /// submitted eye images.
    pub fn start(rv: &str, code: &str, rate: u32, eye: (u32, u32), images: bool) -> Headset {
        Self::start_with(rv, code, rate, eye, images, &[])
    }

    /// [`Headset::start`] with more `view` flags (`eye` is the size the runtime recommends).
    pub fn start_with(
        rv: &str,
        code: &str,
        rate: u32,
        eye: (u32, u32),
        images: bool,
        flags: &[&str],
    ) -> Headset {
        let mut args = vec!["view", "--rendezvous", rv, "--bind", "127.0.0.1:0"];
        args.extend_from_slice(flags);
        args.push(code);
        Self::launch(&args, rate, eye, images)
    }

    /// `inclubit ARGS` with the simulated headset as the system's and no display.
    pub fn launch(args: &[&str], rate: u32, eye: (u32, u32), images: bool) -> Headset {
        let dir = std::env::temp_dir().join(format!(
            "inclubit-xr-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory for the simulated headset");
        let mut h = Headset {
            dir,
            eye,
            view: None,
        };
        let manifest = manifest();
        let env = [
            ("XR_RUNTIME_JSON", manifest.to_string_lossy().into_owned()),
            ("INCLUBIT_XR_SIM", "hmd".into()),
            ("INCLUBIT_XR_SIM_DIR", h.dir.to_string_lossy().into_owned()),
            ("INCLUBIT_XR_SIM_RATE", rate.to_string()),
            ("INCLUBIT_XR_SIM_SIZE", format!("{}x{}", eye.0, eye.1)),
            (
                "INCLUBIT_XR_SIM_IMAGES",
                if images { "1" } else { "0" }.into(),
            ),
        ];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        h.view = Some(Proc::start_with(
            args,
            &env,
            &["DISPLAY", "WAYLAND_DISPLAY"],
            Stdio::piped(),
        ));
        h
    }

    /// Points the scripted head at (yaw, pitch, roll) degrees: replaced whole, so the runtime
    /// never reads half a pose.
    pub fn look(&self, yaw: f32, pitch: f32, roll: f32) {
        let tmp = self.dir.join("pose.tmp");
        std::fs::write(&tmp, format!("{yaw} {pitch} {roll}")).expect("pose file");
        std::fs::rename(&tmp, self.dir.join("pose")).expect("pose file");
    }

    /// Types a line at the viewer's terminal (`r`: recentre).
    pub fn type_line(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self
            .view
            .as_mut()
            .and_then(|p| p.child.stdin.as_mut())
            .expect("the viewer's stdin");
        writeln!(stdin, "{line}").expect("writing to the viewer");
    }

    /// Makes the runtime do something: `exit` (it asks the session to end) or `lose` (it goes
    /// away: instance loss).
    pub fn trigger(&self, what: &str) {
        std::fs::write(self.dir.join(what), b"").expect("trigger file");
    }

    pub fn log(&self) -> Log {
        Log::parse(&std::fs::read_to_string(self.dir.join("frames.log")).unwrap_or_default())
    }

    /// Waits until `done` holds for the runtime's log, polling it; the log when it does.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Headset, &Log) -> bool,
    ) -> Log {
        let end = Instant::now() + timeout;
        loop {
            let log = self.log();
            if done(self, &log) {
                return log;
            }
            if let Some(p) = self.view.as_mut() {
                if let Ok(Some(status)) = p.try_status() {
                    panic!("the viewer exited ({status}) before {what}: {}", p.stderr());
                }
            }
            assert!(
                Instant::now() < end,
                "{what}: not within {timeout:?}; {} waits, {} missed, session {:?}, last frames {:?}",
                log.waits,
                log.missed,
                log.session,
                &log.frames[log.frames.len().saturating_sub(3)..]
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The eye images of record `n`: left then right, RGBA rows.
    pub fn eyes(&self, n: u64) -> [Vec<u8>; 2] {
        use std::io::{Read, Seek, SeekFrom};
        let len = (self.eye.0 * self.eye.1 * 4) as usize;
        let mut f = std::fs::File::open(self.dir.join("eyes.raw")).expect("eyes.raw");
        f.seek(SeekFrom::Start(n * 2 * len as u64)).expect("seek");
        let mut both = vec![0u8; 2 * len];
        f.read_exact(&mut both)
            .unwrap_or_else(|e| panic!("record {n} of eyes.raw: {e}"));
        let right = both.split_off(len);
        [both, right]
    }

    /// Waits until the viewer (started with `--json`) has decoded video: the headset renders
    /// from its first frame on, with or without a stream.
    pub fn wait_decoded(&self, timeout: Duration) {
        let view = self.view.as_ref().expect("a running viewer");
        let end = std::time::Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            let line = view.line("{", left);
            let stats: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if stats["frames"].as_u64().unwrap_or(0) > 0 {
                return;
            }
        }
    }

    /// The viewer's exit code and stderr, within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> (i32, String) {
        self.view.take().expect("a running viewer").wait(timeout)
    }
}

impl Drop for Headset {
    fn drop(&mut self) {
        drop(self.view.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
