//! Network emulation in userspace (the kernel here has no `tc netem`): delay and random loss on
//! everything a media socket sends. For labs and benchmarks, set in the environment:
//! `INCLUBIT_NETEM="delay=20ms,loss=1%"`.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::Impairment;

#[derive(Debug)]
pub struct Netem {
    pub delay: Duration,
    /// Probability (0..=1) that a datagram is lost.
    pub loss: f64,
    rng: Mutex<StdRng>,
}

impl Netem {
    pub fn new(delay: Duration, loss: f64) -> Self {
        Self {
            delay,
            loss: loss.clamp(0.0, 1.0),
            rng: Mutex::new(StdRng::from_entropy()),
        }
    }

    /// `delay=20ms,loss=1%` (either part may be left out).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut delay = Duration::ZERO;
        let mut loss = 0.0;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected key=value"))?;
            match k {
                "delay" => {
                    let ms = v.trim_end_matches("ms");
                    delay = Duration::from_secs_f64(
                        ms.parse::<f64>().map_err(|_| format!("bad delay `{v}`"))? / 1000.0,
                    );
                }
                "loss" => {
                    let pct = v.trim_end_matches('%');
                    loss = pct.parse::<f64>().map_err(|_| format!("bad loss `{v}`"))? / 100.0;
                }
                _ => return Err(format!("unknown netem key `{k}` (delay, loss)")),
            }
        }
        Ok(Self::new(delay, loss))
    }

    /// From `INCLUBIT_NETEM`, if set (a malformed value is reported and ignored).
    pub fn from_env() -> Option<std::sync::Arc<dyn Impairment>> {
        let v = std::env::var("INCLUBIT_NETEM").ok()?;
        match Self::parse(&v) {
            Ok(n) => {
                tracing::warn!(delay = ?n.delay, loss = n.loss, "network emulation on (INCLUBIT_NETEM)");
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
        self.loss > 0.0
            && self
                .rng
                .lock()
                .map(|mut r| r.gen::<f64>() < self.loss)
                .unwrap_or(false)
    }

    fn delay_outgoing(&self, _to: SocketAddr, _len: usize) -> Duration {
        self.delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_drops_about_the_share_asked_for() {
        let n = Netem::parse("delay=20ms, loss=10%").unwrap();
        assert_eq!(n.delay, Duration::from_millis(20));
        let a: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let dropped = (0..10_000).filter(|_| n.drop_outgoing(a, 100)).count();
        assert!((800..1200).contains(&dropped), "{dropped}");
        assert!(Netem::parse("jitter=5ms").is_err());
        assert_eq!(Netem::parse("").unwrap().delay, Duration::ZERO);
    }
}
