//! Live statistics: rates over the last second, latency percentiles over recent frames, and
//! the one-line (or JSON) rendering both ends print.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Events per second and bytes per second over a sliding one-second window.
#[derive(Debug, Default)]
pub struct RateMeter {
    events: VecDeque<(Instant, u64)>,
}

impl RateMeter {
    pub fn record(&mut self, now: Instant, bytes: u64) {
        self.events.push_back((now, bytes));
        self.trim(now);
    }

    fn trim(&mut self, now: Instant) {
        while self
            .events
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(1))
        {
            self.events.pop_front();
        }
    }

    /// (events/s, bits/s)
    pub fn rates(&mut self, now: Instant) -> (f64, f64) {
        self.trim(now);
        let bytes: u64 = self.events.iter().map(|(_, b)| b).sum();
        (self.events.len() as f64, bytes as f64 * 8.0)
    }
}

/// Percentiles over the most recent samples.
#[derive(Debug)]
pub struct Percentiles {
    samples: VecDeque<u64>,
    cap: usize,
}

impl Default for Percentiles {
    fn default() -> Self {
        Self::new(300)
    }
}

impl Percentiles {
    pub fn new(cap: usize) -> Self {
        Self {
            samples: VecDeque::with_capacity(cap),
            cap,
        }
    }

    pub fn record(&mut self, v: u64) {
        if self.samples.len() == self.cap {
            self.samples.pop_front();
        }
        self.samples.push_back(v);
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The `p`-th percentile (0..=100), or 0 with no samples.
    pub fn get(&self, p: f64) -> u64 {
        percentile(self.samples.iter().copied().collect(), p)
    }
}

pub fn percentile(mut v: Vec<u64>, p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

/// One stats line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StatsLine {
    pub role: &'static str,
    pub fps: f64,
    pub bitrate_mbps: f64,
    pub rtt_ms: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub dropped: u64,
    pub frames: u64,
    pub viewers: Option<usize>,
    pub path: String,
    /// With `view --verify`: frames whose test-card barcode matched / did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<u64>,
    /// Pictures that still showed the previous frame's number (see `view::Verified`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub corrupt: Option<u64>,
    /// Viewer: milliseconds from start to the QUIC connection, to the first decoded frame,
    /// and to the first direct path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_frame_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_ms: Option<f64>,
    /// Viewer in a headset: frames submitted per second, and display periods missed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headset_fps: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headset_missed: Option<u64>,
    /// Viewer: seconds since the last new picture, when that is over a second (a stall). The
    /// latency figures then give the age of the picture on screen, not the last good ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stalled_s: Option<f64>,
    /// Sender: each viewer's estimate, rendition and rates.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub per_viewer: Vec<ViewerLine>,
}

/// One viewer, as the sender sees it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ViewerLine {
    pub id: usize,
    /// `full` or `half`.
    pub rendition: &'static str,
    /// What its path is estimated to carry, what its rendition is encoded at for it, and
    /// what was sent to it over the last second.
    pub estimate_mbps: f64,
    pub target_mbps: f64,
    pub sent_mbps: f64,
    /// IDRs its rendition made over the last minute, and since the start.
    pub idr_per_min: usize,
    pub idrs: u64,
    /// The queue its estimate reads on the path (ms) and the packets lost (%).
    pub queue_ms: f64,
    pub loss_pct: f64,
    /// direct, upnp or relay, and its round-trip time.
    pub path: &'static str,
    pub rtt_ms: f64,
    /// Frames sent to it, and not sent (too late, or waiting for a keyframe).
    pub frames_sent: u64,
    pub frames_skipped: u64,
}

impl StatsLine {
    pub fn render(&self, json: bool) -> String {
        if json {
            return serde_json::to_string(self).unwrap_or_default();
        }
        let viewers = self
            .viewers
            .map(|v| format!("  viewers {v}"))
            .unwrap_or_default();
        let verify = match (self.verified, self.corrupt) {
            (Some(ok), Some(bad)) => match self.stale {
                Some(stale) => format!("  testcard ok {ok} stale {stale} bad {bad}"),
                None => format!("  testcard ok {ok} bad {bad}"),
            },
            _ => String::new(),
        };
        let headset = match (self.headset_fps, self.headset_missed) {
            (Some(fps), missed) => {
                format!("  headset {fps:5.1} fps missed {}", missed.unwrap_or(0))
            }
            _ => String::new(),
        };
        let latency = match self.stalled_s {
            Some(s) => format!(
                "STALLED {s:5.1} s, picture {:6.0} ms old",
                self.latency_p50_ms
            ),
            None => format!(
                "latency p50 {:5.1} ms p99 {:5.1} ms",
                self.latency_p50_ms, self.latency_p99_ms
            ),
        };
        let per_viewer: String = self
            .per_viewer
            .iter()
            .map(|v| {
                format!(
                    "\n  viewer {} {}  est {:6.2}  target {:6.2}  sent {:6.2} Mbit/s  queue {:4.0} ms  loss {:4.1}%  idr/min {}",
                    v.id,
                    v.rendition,
                    v.estimate_mbps,
                    v.target_mbps,
                    v.sent_mbps,
                    v.queue_ms,
                    v.loss_pct,
                    v.idr_per_min
                )
            })
            .collect();
        format!(
            "{:<4} fps {:5.1}  bitrate {:6.2} Mbit/s  rtt {:6.1} ms  {latency}  dropped {}  frames {}{}{}  path {}{}{per_viewer}",
            self.role,
            self.fps,
            self.bitrate_mbps,
            self.rtt_ms,
            self.dropped,
            self.frames,
            viewers,
            headset,
            self.path,
            verify,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_rates() {
        let mut p = Percentiles::new(100);
        for v in 1..=100 {
            p.record(v);
        }
        assert_eq!(p.get(50.0), 51);
        assert_eq!(p.get(99.0), 99);
        assert_eq!(Percentiles::new(3).get(50.0), 0);
        let t = Instant::now();
        let mut r = RateMeter::default();
        for i in 0..30 {
            r.record(t + Duration::from_millis(i * 33), 1000);
        }
        let (fps, bps) = r.rates(t + Duration::from_millis(990));
        assert_eq!(fps, 30.0);
        assert_eq!(bps, 240_000.0);
        assert_eq!(r.rates(t + Duration::from_secs(3)).0, 0.0);
    }

    #[test]
    fn line_and_json() {
        let s = StatsLine {
            role: "view",
            fps: 30.0,
            path: "direct".into(),
            ..Default::default()
        };
        assert!(s.render(false).contains("fps  30.0"));
        assert!(!s.render(false).contains("headset"));
        let v: serde_json::Value = serde_json::from_str(&s.render(true)).unwrap();
        assert_eq!(v["path"], "direct");
        assert!(v.get("headset_fps").is_none());
        let h = StatsLine {
            headset_fps: Some(90.0),
            headset_missed: Some(2),
            ..s
        };
        assert!(h.render(false).contains("headset  90.0 fps missed 2"));
        let stalled = StatsLine {
            stalled_s: Some(3.2),
            latency_p50_ms: 3300.0,
            ..Default::default()
        };
        assert!(stalled
            .render(false)
            .contains("STALLED   3.2 s, picture   3300 ms old"));
        assert!(!stalled.render(false).contains("p50"));
        let v: serde_json::Value = serde_json::from_str(&h.render(true)).unwrap();
        assert_eq!(
            (v["headset_fps"].as_f64(), v["headset_missed"].as_u64()),
            (Some(90.0), Some(2))
        );
    }
}
