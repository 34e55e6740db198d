//! The audio jitter buffer, sans-IO: audio packets in (as they arrive), one playout decision
//! per frame period out (as the sound card asks). Audio is played at a steady rate while the
//! network delivers unevenly, so the buffer holds a little: as little as the path allows.
//!
//! The target depth follows the path: the spread of the packets' transit times (arrival minus
//! capture, so the clock offset cancels) over the last seconds, its 95th percentile above its
//! minimum, plus one frame, bounded. When the buffer holds more than the target for a while
//! (the path calmed down, or a burst arrived) one frame is dropped to bring latency back
//! down; when the frame due is missing, the next packet's in-band FEC stands in for it if that
//! packet is here, else the decoder conceals (PLC). A packet that arrives after its turn is
//! counted late and dropped.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct JitterConfig {
    /// One packet's audio (Opus: 20 ms, or 10 ms).
    pub frame: Duration,
    pub min_target: Duration,
    pub max_target: Duration,
    /// Over how long the transit-time spread is measured.
    pub window: Duration,
}

impl Default for JitterConfig {
    fn default() -> Self {
        Self {
            frame: Duration::from_millis(20),
            min_target: Duration::from_millis(20),
            max_target: Duration::from_millis(200),
            window: Duration::from_secs(3),
        }
    }
}

/// What to play for one frame period.
#[derive(Debug, PartialEq, Eq)]
pub enum Playout<P> {
    /// The packet for this period.
    Packet { seq: u64, payload: P },
    /// It is missing but the next one is here: decode this period from its in-band FEC.
    Fec { seq: u64, next: P },
    /// Missing: conceal (the decoder's PLC).
    Conceal { seq: u64 },
    /// Nothing received yet, or the stream paused: silence, no concealment.
    Silence,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JitterStats {
    pub played: u64,
    pub fec: u64,
    pub concealed: u64,
    /// Arrived after their period was played.
    pub late: u64,
    /// Dropped to bring latency down.
    pub shrunk: u64,
    /// Periods concealed while waiting for a late packet (each adds a frame of delay).
    pub stretched: u64,
}

#[derive(Debug)]
pub struct JitterBuffer<P> {
    cfg: JitterConfig,
    packets: BTreeMap<u64, P>,
    /// The next sequence number to play; `None` until playout starts.
    next: Option<u64>,
    /// When playout may start (the first packet's arrival plus the target).
    start_at: Option<Instant>,
    /// (arrival, transit µs) per packet, for the target.
    transit: VecDeque<(Instant, i64)>,
    target: Duration,
    /// Since when the buffer has held more than the target.
    over_since: Option<Instant>,
    /// Missing frames in a row (a long gap is a pause: silence, not concealment).
    missing_run: u32,
    stats: JitterStats,
}

/// Past this many concealed frames in a row the stream counts as paused.
const MAX_CONCEAL_RUN: u32 = 10;
/// How long the buffer must be over its target before a frame is dropped.
const SHRINK_AFTER: Duration = Duration::from_millis(500);

impl<P: Clone> JitterBuffer<P> {
    pub fn new(cfg: JitterConfig) -> Self {
        Self {
            target: cfg.min_target.max(cfg.frame),
            cfg,
            packets: BTreeMap::new(),
            next: None,
            start_at: None,
            transit: VecDeque::new(),
            over_since: None,
            missing_run: 0,
            stats: JitterStats::default(),
        }
    }

    /// A packet arrived: `seq` in sending order, `capture_us` on the sender's clock,
    /// `arrival_us` on ours.
    pub fn push(&mut self, now: Instant, seq: u64, capture_us: u64, arrival_us: u64, payload: P) {
        // Late ones count in the spread above all: they are what the target must cover.
        self.transit
            .push_back((now, (arrival_us as i64).wrapping_sub(capture_us as i64)));
        while self
            .transit
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > self.cfg.window)
        {
            self.transit.pop_front();
        }
        self.retarget();
        if self.next.is_some_and(|n| seq < n) {
            self.stats.late += 1;
            return;
        }
        if self.start_at.is_none() {
            self.start_at = Some(now + self.target);
        }
        // A resumed stream (after a pause) starts again from its first packet.
        if self.missing_run >= MAX_CONCEAL_RUN && self.packets.is_empty() {
            self.next = None;
            self.start_at = Some(now + self.target);
        }
        self.packets.entry(seq).or_insert(payload);
    }

    fn retarget(&mut self) {
        let mut t: Vec<i64> = self.transit.iter().map(|(_, d)| *d).collect();
        if t.len() < 2 {
            return;
        }
        t.sort_unstable();
        let min = t[0];
        let p95 = t[(t.len() - 1) * 95 / 100];
        let spread = Duration::from_micros(p95.saturating_sub(min).max(0) as u64);
        self.target = (spread + self.cfg.frame).clamp(self.cfg.min_target, self.cfg.max_target);
    }

    /// What to play for the next frame period (call once per period, from the output clock).
    pub fn pop(&mut self, now: Instant) -> Playout<P> {
        if self.next.is_none() {
            if self.start_at.is_none_or(|t| now < t) {
                return Playout::Silence;
            }
            match self.packets.keys().next() {
                Some(&first) => self.next = Some(first),
                None => return Playout::Silence,
            }
        }
        let Some(seq) = self.next else {
            return Playout::Silence;
        };
        self.shrink(now, seq);
        let Some(seq) = self.next else {
            return Playout::Silence;
        };
        self.next = Some(seq.saturating_add(1));
        if let Some(payload) = self.packets.remove(&seq) {
            self.missing_run = 0;
            self.stats.played += 1;
            return Playout::Packet { seq, payload };
        }
        self.missing_run = self.missing_run.saturating_add(1);
        if self.missing_run > MAX_CONCEAL_RUN {
            // A pause, not a loss: stay put until packets come again.
            self.next = Some(seq);
            return Playout::Silence;
        }
        // Fewer frames are here after it than the target holds: it is more likely late than
        // lost. Conceal this period without giving up on it (the buffer grows by a frame).
        let lead = self
            .packets
            .keys()
            .next_back()
            .map_or(0, |last| last.saturating_sub(seq));
        if self.cfg.frame * (lead as u32) < self.target {
            self.next = Some(seq);
            self.stats.stretched += 1;
            return Playout::Conceal { seq };
        }
        // The next packet carries this one's FEC; it stays for its own turn.
        if let Some(next) = self.packets.get(&seq.saturating_add(1)) {
            self.stats.fec += 1;
            return Playout::Fec {
                seq,
                next: next.clone(),
            };
        }
        self.stats.concealed += 1;
        Playout::Conceal { seq }
    }

    /// Drops the oldest frame when the buffer has held more than its target for a while.
    fn shrink(&mut self, now: Instant, next: u64) {
        let depth = self
            .packets
            .keys()
            .next_back()
            .map_or(0, |last| last.saturating_sub(next).saturating_add(1));
        let held = self.cfg.frame * depth as u32;
        if held > self.target + self.cfg.frame {
            let since = *self.over_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= SHRINK_AFTER {
                self.packets.remove(&next);
                self.next = Some(next.saturating_add(1));
                self.stats.shrunk += 1;
                self.over_since = None;
            }
        } else {
            self.over_since = None;
        }
    }

    /// The depth the buffer aims at.
    pub fn target(&self) -> Duration {
        self.target
    }

    /// Audio held now.
    pub fn depth(&self) -> Duration {
        self.cfg.frame * self.packets.len() as u32
    }

    pub fn stats(&self) -> JitterStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: Duration = Duration::from_millis(20);

    /// A sender of 20 ms packets over a path with the given per-packet extra delay (ms) and
    /// losses, played out by a sound card asking every 20 ms, on a virtual clock.
    struct Run {
        jb: JitterBuffer<u64>,
        t0: Instant,
        played: Vec<Playout<u64>>,
    }

    impl Run {
        fn new() -> Self {
            Self {
                jb: JitterBuffer::new(JitterConfig::default()),
                t0: Instant::now(),
                played: Vec::new(),
            }
        }

        /// Packets 0..n, packet i sent at i*20 ms and arriving `delay(i)` ms later (None: lost);
        /// the card pops every 20 ms from 0 to the end.
        fn go(&mut self, n: u64, delay: impl Fn(u64) -> Option<u64>) {
            let mut arrivals: Vec<(u64, u64)> = (0..n)
                .filter_map(|i| delay(i).map(|d| (i * 20 + d, i)))
                .collect();
            arrivals.sort_unstable();
            let end = n * 20 + 400;
            let mut next = 0;
            for ms in 0..end {
                let now = self.t0 + Duration::from_millis(ms);
                while next < arrivals.len() && arrivals[next].0 <= ms {
                    let (at, seq) = arrivals[next];
                    self.jb.push(now, seq, seq * 20_000, at * 1000, seq);
                    next += 1;
                }
                if ms % 20 == 0 {
                    self.played.push(self.jb.pop(now));
                }
            }
        }

        fn packets(&self) -> Vec<u64> {
            self.played
                .iter()
                .filter_map(|p| match p {
                    Playout::Packet { seq, .. } => Some(*seq),
                    _ => None,
                })
                .collect()
        }
    }

    #[test]
    fn a_steady_path_plays_every_packet_in_order_at_the_minimum_depth() {
        let mut r = Run::new();
        r.go(200, |_| Some(5));
        assert_eq!(r.packets(), (0..200).collect::<Vec<_>>());
        assert_eq!(r.jb.target(), Duration::from_millis(20));
        let s = r.jb.stats();
        assert_eq!((s.late, s.fec, s.shrunk), (0, 0, 0));
        // Concealment only after the last packet (then silence).
        let last = r
            .played
            .iter()
            .rposition(|p| matches!(p, Playout::Packet { .. }));
        assert!(r.played[..last.unwrap()]
            .iter()
            .all(|p| matches!(p, Playout::Packet { .. } | Playout::Silence)));
    }

    #[test]
    fn jitter_raises_the_target_so_nothing_arrives_late() {
        let mut r = Run::new();
        // 0 to 60 ms of extra delay, varying packet to packet (reordering too).
        r.go(500, |i| Some(i * 37 % 61));
        let t = r.jb.target();
        assert!(
            t >= Duration::from_millis(60) && t <= Duration::from_millis(100),
            "{t:?}"
        );
        let s = r.jb.stats();
        // Until the spread is learnt a few are late; after that none.
        assert!(s.late + s.concealed <= 10, "{s:?}");
        let late_part: Vec<u64> = r.packets().into_iter().filter(|&p| p >= 100).collect();
        assert_eq!(
            late_part,
            (100..500).collect::<Vec<_>>(),
            "in order after warm-up"
        );
    }

    #[test]
    fn a_lost_packet_is_covered_by_the_next_ones_fec_or_concealed() {
        let mut r = Run::new();
        r.go(100, |i| {
            if i == 40 || (i == 70 || i == 71) {
                None
            } else {
                Some(5)
            }
        });
        assert!(
            r.played.contains(&Playout::Fec { seq: 40, next: 41 }),
            "{:?}",
            r.played
        );
        // Two in a row: the first from the second's FEC is impossible: concealed, then FEC.
        assert!(r.played.contains(&Playout::Conceal { seq: 70 }));
        assert!(r.played.contains(&Playout::Fec { seq: 71, next: 72 }));
        // Packets play once each, in order; the ones that arrived and did not play are the
        // frames dropped to win back the latency the waiting added.
        let played = r.packets();
        assert!(played.windows(2).all(|w| w[0] < w[1]), "{played:?}");
        assert!(!played.iter().any(|p| [40, 70, 71].contains(p)));
        let missed = 97 - played.len() as u64;
        assert_eq!(missed, r.jb.stats().shrunk, "{:?}", r.jb.stats());
    }

    #[test]
    fn after_a_burst_the_latency_comes_back_down() {
        let mut r = Run::new();
        // A 300 ms stall delivers packets 50..65 at once, then the path is steady again.
        r.go(300, |i| {
            Some(if (50..65).contains(&i) {
                300 - (i - 50) * 20
            } else {
                5
            })
        });
        let s = r.jb.stats();
        assert!(s.shrunk >= 1, "{s:?}");
        // At the end the buffer is back near its target.
        assert!(
            r.jb.depth() <= r.jb.target() + FRAME * 2,
            "{:?}",
            r.jb.depth()
        );
    }

    #[test]
    fn sequence_numbers_from_the_network_at_the_edge_do_not_panic() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let t = Instant::now();
        for (k, seq) in [u64::MAX, u64::MAX - 1, 0, u64::MAX]
            .into_iter()
            .enumerate()
        {
            jb.push(t, seq, u64::MAX, k as u64, seq);
        }
        for k in 0..40u64 {
            let _ = jb.pop(t + Duration::from_millis(k * 20));
        }
    }

    #[test]
    fn a_pause_is_silence_and_the_stream_resumes_without_a_backlog() {
        let mut r = Run::new();
        r.go(50, |_| Some(5));
        let before = r.played.len();
        // No packets for a second: silence after a few concealed frames.
        let t = r.t0 + Duration::from_millis(50 * 20 + 400);
        for k in 0..50u64 {
            r.played.push(r.jb.pop(t + Duration::from_millis(k * 20)));
        }
        let silent = r.played[before..]
            .iter()
            .filter(|p| matches!(p, Playout::Silence))
            .count();
        assert!(silent >= 30, "{:?}", &r.played[before..]);
        assert!(r.jb.stats().concealed <= MAX_CONCEAL_RUN as u64 + 1);
    }
}
