//! Network emulation in userspace (the kernel here has no `tc netem`): delay and random loss on
//! everything a media socket sends. For labs and benchmarks, set in the environment:
//! `INCLUBIT_NETEM="delay=20ms,loss=1%"`, or `INCLUBIT_NETEM=file:PATH` to change them while it runs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::Impairment;

/// How often a `file:` setting is looked at again.
const RECHECK: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct NetemSettings {
    pub delay: Duration,
    /// Probability (0..=1) that a datagram is lost.
    pub loss: f64,
}

impl NetemSettings {
    /// `delay=20ms,loss=1%` (either part may be left out).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut out = Self::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected key=value"))?;
            match k {
                "delay" => {
                    let ms = v.trim_end_matches("ms");
                    out.delay = Duration::from_secs_f64(
                        ms.parse::<f64>().map_err(|_| format!("bad delay `{v}`"))? / 1000.0,
                    );
                }
                "loss" => {
                    let pct = v.trim_end_matches('%');
                    out.loss = (pct.parse::<f64>().map_err(|_| format!("bad loss `{v}`"))? / 100.0)
                        .clamp(0.0, 1.0);
                }
                _ => return Err(format!("unknown netem key `{k}` (delay, loss)")),
            }
        }
        Ok(out)
    }
}

/// Delay and loss, fixed or read from a file that may change while the process runs (a lab
/// changing a path's delay mid-stream).
#[derive(Debug)]
pub struct Netem {
    file: Option<PathBuf>,
    state: Mutex<State>,
    rng: Mutex<StdRng>,
}

#[derive(Debug)]
struct State {
    now: NetemSettings,
    checked: Option<Instant>,
    modified: Option<SystemTime>,
}

impl Netem {
    pub fn new(delay: Duration, loss: f64) -> Self {
        Self::with(
            None,
            NetemSettings {
                delay,
                loss: loss.clamp(0.0, 1.0),
            },
        )
    }

    fn with(file: Option<PathBuf>, now: NetemSettings) -> Self {
        Self {
            file,
            state: Mutex::new(State {
                now,
                checked: None,
                modified: None,
            }),
            rng: Mutex::new(StdRng::from_entropy()),
        }
    }

    /// `delay=20ms,loss=1%`, or `file:PATH` for settings in that form read from PATH, again
    /// whenever it changes (a missing or malformed file means no impairment, said once).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.strip_prefix("file:") {
            Some(path) => Ok(Self::with(Some(path.into()), NetemSettings::default())),
            None => Ok(Self::with(None, NetemSettings::parse(s)?)),
        }
    }

    /// The settings in force now.
    pub fn settings(&self) -> NetemSettings {
        let Ok(mut st) = self.state.lock() else {
            return NetemSettings::default();
        };
        if let Some(file) = &self.file {
            let due = st.checked.is_none_or(|t| t.elapsed() >= RECHECK);
            if due {
                st.checked = Some(Instant::now());
                let modified = std::fs::metadata(file).and_then(|m| m.modified()).ok();
                if modified != st.modified {
                    st.modified = modified;
                    let read = std::fs::read_to_string(file).map_err(|e| e.to_string());
                    st.now = match read.and_then(|t| NetemSettings::parse(t.trim())) {
                        Ok(n) => {
                            tracing::info!(delay = ?n.delay, loss = n.loss, "network emulation changed");
                            n
                        }
                        Err(e) => {
                            tracing::warn!("network emulation file {}: {e}", file.display());
                            NetemSettings::default()
                        }
                    };
                }
            }
        }
        st.now
    }

    /// From `INCLUBIT_NETEM`, if set (a malformed value is reported and ignored).
    pub fn from_env() -> Option<std::sync::Arc<dyn Impairment>> {
        let v = std::env::var("INCLUBIT_NETEM").ok()?;
        if v.trim().is_empty() {
            return None;
        }
        match Self::parse(&v) {
            Ok(n) => {
                tracing::warn!("network emulation on (INCLUBIT_NETEM={v})");
                Some(std::sync::Arc::new(n))
            }
            Err(e) => {
                tracing::warn!("ignoring INCLUBIT_NETEM: {e}");
                None
            }
        }
    }
}

impl Impairment for Netem {
    fn drop_outgoing(&self, _to: SocketAddr, _len: usize) -> bool {
        let loss = self.settings().loss;
        loss > 0.0
            && self
                .rng
                .lock()
                .map(|mut r| r.gen::<f64>() < loss)
                .unwrap_or(false)
    }

    fn delay_outgoing(&self, _to: SocketAddr, _len: usize) -> Duration {
        self.settings().delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_drops_about_the_share_asked_for() {
        let n = Netem::parse("delay=20ms, loss=10%").unwrap();
        assert_eq!(n.settings().delay, Duration::from_millis(20));
        let a: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let dropped = (0..10_000).filter(|_| n.drop_outgoing(a, 100)).count();
        assert!((800..1200).contains(&dropped), "{dropped}");
        assert!(Netem::parse("jitter=5ms").is_err());
        assert_eq!(Netem::parse("").unwrap().settings().delay, Duration::ZERO);
    }

    #[test]
    fn a_file_setting_follows_the_file() {
        let dir = std::env::temp_dir().join(format!("netem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("netem");
        let n = Netem::parse(&format!("file:{}", path.display())).unwrap();
        // No file yet: no impairment.
        assert_eq!(n.settings(), NetemSettings::default());
        std::fs::write(&path, "delay=40ms\n").unwrap();
        let want = Duration::from_millis(40);
        let end = Instant::now() + Duration::from_secs(5);
        while n.settings().delay != want {
            assert!(Instant::now() < end, "the new delay was never read");
            std::thread::sleep(RECHECK);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
