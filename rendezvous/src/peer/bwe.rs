//! Bandwidth estimation for one viewer, sans-IO: the bitrate the sender's encoder may give this
//! viewer, from when the viewer says each frame arrived and what the QUIC connection counts.
//!
//! Delay, not loss, is the congestion signal (as in Google Congestion Control and SCReAM): a
//! queue building at the bottleneck shows as frames arriving later relative to when they were
//! sent, long before a router drops anything, while random loss (Wi-Fi, 4G) leaves arrival times
//! alone and QUIC repairs it. Per frame the controller takes the one-way delay up to a constant
//! clock offset, `d = received (viewer clock) - sent (sender clock)`; the queue is the least `d`
//! of the last few frames (a lost packet or a large frame delays one frame, a queue all of
//! them) above the minimum over the last seconds. On a growing or standing queue the target drops to 85% of what
//! actually arrived in the last second (the delivery rate, as BBR measures it), so the queue
//! drains; otherwise it climbs: fast until the first sign of a queue, slowly just after a
//! decrease, then faster again, so a link that improves is found again within seconds. Loss
//! lowers the target only above 10% (GCC's rule), a frame the sender had to abandon at its
//! deadline always does.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::wire::media::FrameArrival;

#[derive(Debug, Clone, Copy)]
pub struct RateConfig {
    /// Bits per second the target never goes below.
    pub floor: u64,
    /// Bits per second the target never goes above (the sender's `--bitrate`).
    pub ceiling: u64,
    /// Where a new viewer starts.
    pub start: u64,
}

/// What the QUIC connection counts, sampled now and then.
#[derive(Debug, Clone, Copy, Default)]
pub struct PathSample {
    pub rtt: Duration,
    pub sent_packets: u64,
    pub lost_packets: u64,
}

/// How the controller reads the path right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// No queue: the target may climb.
    Normal,
    /// A queue is building or standing: the target drops.
    Overuse,
    /// In between: the target holds.
    Hold,
}

/// Queue delay above which the path counts as overused, whatever its trend.
const QUEUE_HIGH_MS: f64 = 60.0;
/// Queue delay under which the path counts as free. A frame's own transmission counts in its
/// delay (its last byte is what is reported): near capacity that is about one frame interval,
/// which is not a queue.
const QUEUE_LOW_MS: f64 = 30.0;
/// A queue growing faster than this (ms per s) with more than `QUEUE_LOW_MS` is overuse.
const TREND_HIGH: f64 = 60.0;
/// How long the minimum delay is remembered (a route change to a longer path is learnt then).
const BASE_WINDOW: Duration = Duration::from_secs(10);
/// Over how long the trend and the delivery rate are measured.
const TREND_WINDOW: Duration = Duration::from_millis(500);
const RATE_WINDOW: Duration = Duration::from_secs(1);
const BURST_WINDOW: Duration = Duration::from_millis(300);
/// The queue is read from the least delay of the last frames within this (or this many).
const FILTER_WINDOW: Duration = Duration::from_millis(150);
const FILTER_FRAMES: usize = 5;
/// Two frames abandoned within this are congestion, not a late repair.
const ABANDON_BURST: Duration = Duration::from_millis(300);
/// Share of the delivery rate kept on a decrease: the rest drains the queue.
const BACKOFF: f64 = 0.9;
/// Loss above this share of packets lowers the target.
const LOSS_HIGH: f64 = 0.10;
/// Climb per second: before any sign of a queue, just after a decrease, and later.
const PROBE_GROWTH: f64 = 2.0;
const NEAR_GROWTH: f64 = 1.08;
const FAR_GROWTH: f64 = 1.4;
/// How long "just after a decrease" lasts.
const NEAR_TIME: Duration = Duration::from_secs(2);
/// Below this share of the path's last measured capacity the target climbs fast (up to it);
/// from there to `NEAR_HIGH` of it, slowly; above, the path must have grown: fast again.
const NEAR_LOW: f64 = 0.95;
const NEAR_HIGH: f64 = 1.15;
/// Frames sent and not yet reported, at most (older ones are forgotten).
const MAX_PENDING: usize = 512;

#[derive(Debug)]
pub struct RateController {
    cfg: RateConfig,
    target: f64,
    epoch: Instant,
    /// Frames sent and not yet reported: (seq, sent, bytes).
    pending: VecDeque<(u64, Instant, u32)>,
    /// (sent, one-way delay + offset in ms) per reported frame, for the base and the trend.
    delays: VecDeque<(Instant, f64)>,
    /// (sent, least delay of the last few frames) per report, for the trend.
    filtered: VecDeque<(Instant, f64)>,
    /// (received µs on the viewer's clock, bytes) per reported frame, for the delivery rate.
    received: VecDeque<(u64, u32)>,
    queue_ms: f64,
    trend: f64,
    /// When frames were abandoned lately.
    abandoned: VecDeque<Instant>,
    usage: Usage,
    rtt: Duration,
    last_path: Option<(Instant, PathSample)>,
    loss: f64,
    /// Until then no further decrease (its effect is not visible yet) and no increase.
    hold_until: Option<Instant>,
    last_decrease: Option<Instant>,
    /// No queue seen yet: climb fast.
    probing: bool,
    last_poll: Option<Instant>,
    /// What the path delivered when it last queued (bits per second): where to climb
    /// carefully (GCC's "near max").
    capacity: Option<f64>,
    /// (sent, bytes) per frame over the last second: what the encoder actually gives, which
    /// lags and undershoots the target.
    sent: VecDeque<(Instant, u32)>,
}

impl RateController {
    pub fn new(now: Instant, cfg: RateConfig) -> Self {
        let cfg = RateConfig {
            floor: cfg.floor.min(cfg.ceiling),
            ..cfg
        };
        Self {
            target: cfg.start.clamp(cfg.floor, cfg.ceiling) as f64,
            cfg,
            epoch: now,
            pending: VecDeque::new(),
            delays: VecDeque::new(),
            filtered: VecDeque::new(),
            received: VecDeque::new(),
            queue_ms: 0.0,
            trend: 0.0,
            abandoned: VecDeque::new(),
            usage: Usage::Normal,
            rtt: Duration::from_millis(100),
            last_path: None,
            loss: 0.0,
            hold_until: None,
            last_decrease: None,
            probing: true,
            last_poll: None,
            capacity: None,
            sent: VecDeque::new(),
        }
    }

    /// The sender started sending frame `seq` of `bytes` to this viewer.
    pub fn on_frame_sent(&mut self, now: Instant, seq: u64, bytes: usize) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
        }
        let bytes = bytes.min(u32::MAX as usize) as u32;
        self.pending.push_back((seq, now, bytes));
        self.sent.push_back((now, bytes));
        while self
            .sent
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > RATE_WINDOW)
        {
            self.sent.pop_front();
        }
    }

    /// Bits per second sent over the last `window` (at most `RATE_WINDOW`), once there is
    /// half of it.
    fn sent_rate(&self, now: Instant, window: Duration) -> Option<f64> {
        let recent = self
            .sent
            .iter()
            .filter(|(t, _)| now.saturating_duration_since(*t) <= window);
        // The first frame's bytes went out as the span began.
        let (mut first, mut bytes) = (None, 0u64);
        for (t, b) in recent {
            match first {
                None => first = Some(*t),
                Some(_) => bytes += *b as u64,
            }
        }
        let span = now.saturating_duration_since(first?);
        (span >= window / 2).then(|| bytes as f64 * 8.0 / span.as_secs_f64())
    }

    /// The viewer reports frames it received completely.
    pub fn on_arrivals(&mut self, now: Instant, arrivals: &[FrameArrival]) {
        for a in arrivals {
            // Reports come in sending order, give or take a reordered frame.
            let Some(i) = self.pending.iter().position(|p| p.0 == a.seq) else {
                continue;
            };
            let (_, sent, bytes) = self.pending[i];
            self.pending.drain(..=i);
            let sent_ms = sent.saturating_duration_since(self.epoch).as_secs_f64() * 1000.0;
            let d = a.received_us as f64 / 1000.0 - sent_ms;
            self.delays.push_back((sent, d));
            self.received.push_back((a.received_us, bytes));
        }
        self.trim(now);
        self.detect(now);
    }

    /// The sender gave up on a frame for this viewer (too late). With a queue, or several in a
    /// row, the path is badly overloaded; one alone with no queue is a lost packet repaired too
    /// late (a tail loss waits for QUIC's probe timeout), which is not congestion.
    pub fn on_frame_abandoned(&mut self, now: Instant, seq: u64) {
        self.pending.retain(|p| p.0 != seq);
        while self
            .abandoned
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > ABANDON_BURST)
        {
            self.abandoned.pop_front();
        }
        self.abandoned.push_back(now);
        if self.queue_ms > QUEUE_LOW_MS || self.abandoned.len() >= 2 {
            self.usage = Usage::Overuse;
            self.decrease(now, 0.7);
        }
    }

    /// The connection's own figures.
    pub fn on_path(&mut self, now: Instant, s: PathSample) {
        self.rtt = s.rtt;
        match self.last_path {
            Some((at, prev)) if now.saturating_duration_since(at) >= Duration::from_millis(500) => {
                let sent = s.sent_packets.saturating_sub(prev.sent_packets);
                let lost = s.lost_packets.saturating_sub(prev.lost_packets);
                let sample = if sent > 0 {
                    (lost as f64 / sent as f64).min(1.0)
                } else {
                    0.0
                };
                // Smoothed over a couple of seconds: a few hundred packets say little alone.
                self.loss = 0.7 * self.loss + 0.3 * sample;
                self.last_path = Some((now, s));
                if self.loss > LOSS_HIGH && self.may_decrease(now) {
                    self.target =
                        (self.target * (1.0 - 0.5 * self.loss)).max(self.cfg.floor as f64);
                    self.after_decrease(now);
                }
            }
            Some(_) => {}
            None => self.last_path = Some((now, s)),
        }
    }

    /// The target bitrate now (bits per second); call at least a few times a second.
    pub fn poll(&mut self, now: Instant) -> u64 {
        let dt = self
            .last_poll
            .map(|t| now.saturating_duration_since(t).as_secs_f64())
            .unwrap_or(0.0)
            .min(0.5);
        self.last_poll = Some(now);
        let holding = self.hold_until.is_some_and(|t| now < t);
        if self.usage == Usage::Normal && !holding && self.loss <= LOSS_HIGH / 2.0 {
            // Back up to just under the last capacity fast, then carefully: by what is sent,
            // not the target (the encoder lags it and gives less).
            // A short window: a longer one lags a climbing target, which then overshoots.
            let near = match (self.capacity, self.sent_rate(now, BURST_WINDOW)) {
                (Some(c), Some(sent)) => sent >= NEAR_LOW * c && sent <= NEAR_HIGH * c,
                (Some(_), None) => true,
                (None, _) => self
                    .last_decrease
                    .is_some_and(|t| now.saturating_duration_since(t) < NEAR_TIME),
            };
            let growth = if self.probing {
                PROBE_GROWTH
            } else if near {
                NEAR_GROWTH
            } else {
                FAR_GROWTH
            };
            let mut next = self.target * growth.powf(dt);
            // Not far above what actually gets through: an encoder that undershoots (a still
            // picture) must not leave a target the path was never shown to carry.
            if let Some(rate) = self.delivery_rate() {
                next = next
                    .min((1.5 * rate).max(rate + 1_000_000.0))
                    .max(self.target.min(next));
            }
            self.target = next;
        }
        self.target = self
            .target
            .clamp(self.cfg.floor as f64, self.cfg.ceiling as f64);
        self.target as u64
    }

    pub fn target(&self) -> u64 {
        self.target as u64
    }

    /// The estimate of what the path carries: the delivery rate while the path is loaded,
    /// else at least the target (bits per second).
    pub fn estimate(&self) -> u64 {
        let rate = self.delivery_rate().unwrap_or(0.0);
        match self.usage {
            Usage::Overuse => rate as u64,
            _ => rate.max(self.target) as u64,
        }
    }

    /// No queue seen yet: the target is still a guess on its way up.
    pub fn probing(&self) -> bool {
        self.probing
    }

    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// The queue on the path as last measured (ms above the minimum one-way delay).
    pub fn queue_delay(&self) -> Duration {
        Duration::from_secs_f64(self.queue_ms.max(0.0) / 1000.0)
    }

    /// Share of packets lost, smoothed over the last seconds.
    pub fn loss(&self) -> f64 {
        self.loss
    }

    fn trim(&mut self, now: Instant) {
        while self
            .delays
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > BASE_WINDOW)
        {
            self.delays.pop_front();
        }
        if let Some(&(last, _)) = self.received.back() {
            let window = RATE_WINDOW.as_micros() as u64;
            while self
                .received
                .front()
                .is_some_and(|(t, _)| last.saturating_sub(*t) > window)
            {
                self.received.pop_front();
            }
        }
    }

    /// Bits per second received over the last second, once there is half a second's worth.
    fn delivery_rate(&self) -> Option<f64> {
        Self::rate_of(self.received.iter(), Duration::from_millis(500))
    }

    /// Bits per second received over the last `BURST_WINDOW`: while a queue builds, frames
    /// leave the bottleneck back to back, so this is what the path carries now.
    fn recent_delivery_rate(&self) -> Option<f64> {
        let (last, _) = *self.received.back()?;
        let window = BURST_WINDOW.as_micros() as u64;
        let recent = self
            .received
            .iter()
            .skip_while(|(t, _)| last.saturating_sub(*t) > window);
        Self::rate_of(recent, BURST_WINDOW / 6)
    }

    fn rate_of<'a>(
        mut frames: impl Iterator<Item = &'a (u64, u32)>,
        min_span: Duration,
    ) -> Option<f64> {
        let (first, _) = *frames.next()?;
        // The first frame's bytes arrived before the span began.
        let (mut last, mut bytes, mut n) = (first, 0u64, 0);
        for (t, b) in frames {
            (last, bytes, n) = (*t, bytes + *b as u64, n + 1);
        }
        let span = last.saturating_sub(first) as f64 / 1e6;
        (n >= 1 && span >= min_span.as_secs_f64()).then(|| bytes as f64 * 8.0 / span)
    }

    fn detect(&mut self, now: Instant) {
        let Some(&(latest_at, _)) = self.delays.back() else {
            return;
        };
        let base = self
            .delays
            .iter()
            .map(|(_, d)| *d)
            .fold(f64::INFINITY, f64::min);
        // The least delay of the last few frames: a queue delays them all, while a lost packet
        // (repaired a round trip later) or one large frame (an IDR) delays only one.
        let current = self
            .delays
            .iter()
            .rev()
            .take_while(|(t, _)| latest_at.saturating_duration_since(*t) <= FILTER_WINDOW)
            .take(FILTER_FRAMES)
            .map(|(_, d)| *d)
            .fold(f64::INFINITY, f64::min);
        self.queue_ms = current - base;
        self.filtered.push_back((latest_at, current));
        while self
            .filtered
            .front()
            .is_some_and(|(t, _)| latest_at.saturating_duration_since(*t) > TREND_WINDOW)
        {
            self.filtered.pop_front();
        }
        self.trend = self.slope();
        self.usage = if self.queue_ms > QUEUE_HIGH_MS
            || (self.queue_ms > QUEUE_LOW_MS && self.trend > TREND_HIGH)
        {
            Usage::Overuse
        } else if self.queue_ms < QUEUE_LOW_MS {
            Usage::Normal
        } else {
            Usage::Hold
        };
        if self.usage == Usage::Overuse {
            self.decrease(now, BACKOFF.sqrt());
        }
    }

    /// Least-squares slope of the filtered one-way delay over the trend window, ms per second.
    fn slope(&self) -> f64 {
        if self.filtered.len() < 4 {
            return 0.0;
        }
        let n = self.filtered.len() as f64;
        let x = |t: &Instant| t.saturating_duration_since(self.epoch).as_secs_f64();
        let (mx, my) = self
            .filtered
            .iter()
            .fold((0.0, 0.0), |(a, b), (t, y)| (a + x(t) / n, b + y / n));
        let (num, den) = self.filtered.iter().fold((0.0, 0.0), |(a, b), (t, y)| {
            (a + (x(t) - mx) * (y - my), b + (x(t) - mx) * (x(t) - mx))
        });
        if den <= f64::EPSILON {
            0.0
        } else {
            num / den
        }
    }

    fn may_decrease(&self, now: Instant) -> bool {
        self.hold_until.is_none_or(|t| now >= t)
    }

    /// Down to what the path carries, and at least by `at_least` (of the target).
    fn decrease(&mut self, now: Instant, at_least: f64) {
        if !self.may_decrease(now) {
            return;
        }
        // What arrives now while a queue builds is what the path carries; without that, a
        // cut that does not trust last second's rate (the path may have just shrunk).
        let next = match self.recent_delivery_rate() {
            Some(rate) => {
                self.capacity = Some(match self.capacity {
                    Some(c) if (rate - c).abs() < 0.3 * c => 0.5 * (c + rate),
                    _ => rate,
                });
                // The encoder gives less than its target (x264 undershoots busy pictures by
                // 20% or so): aim what it sends, not the target, just under the path.
                let encoder_yield = self
                    .sent_rate(now, RATE_WINDOW)
                    .map_or(1.0, |sent| (self.target / sent.max(1.0)).clamp(1.0, 1.3));
                (BACKOFF * rate * encoder_yield).min(self.target * at_least)
            }
            None => (BACKOFF * self.delivery_rate().unwrap_or(f64::MAX)).min(0.7 * self.target),
        };
        self.target = next.max(self.cfg.floor as f64);
        self.after_decrease(now);
    }

    fn after_decrease(&mut self, now: Instant) {
        self.probing = false;
        self.last_decrease = Some(now);
        // Until the lower rate has had a round trip (and a little) to show.
        self.hold_until =
            Some(now + self.rtt.max(Duration::from_millis(50)) + Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const FPS: f64 = 30.0;

    /// One viewer's path: a bottleneck of `capacity` bits/s with a 200 ms queue (tail drop),
    /// `prop` one-way delay and random loss, carrying an encoder that follows the target at once.
    struct Link {
        capacity: f64,
        prop: Duration,
        loss: f64,
        /// When the bottleneck has sent everything queued so far.
        free_at: Instant,
        rng: StdRng,
        sent_packets: u64,
        lost_packets: u64,
    }

    struct Run {
        ctl: RateController,
        link: Link,
        now: Instant,
        t0: Instant,
        seq: u64,
        /// (deliver the report at, the arrival) on their way back.
        reports: VecDeque<(Instant, FrameArrival)>,
        /// Frames the queue dropped, with the time the sender gives up on them.
        abandoned: VecDeque<(Instant, u64)>,
        /// (sent, arrived) per frame delivered.
        delivered: Vec<(Instant, Instant)>,
        /// Offset between the two clocks: nothing may depend on it.
        clock_offset_us: u64,
        bits: Vec<(Instant, f64)>,
    }

    impl Run {
        fn new(capacity: f64, prop_ms: u64, loss: f64, cfg: RateConfig) -> Self {
            let t0 = Instant::now();
            Run {
                ctl: RateController::new(t0, cfg),
                link: Link {
                    capacity,
                    prop: Duration::from_millis(prop_ms),
                    loss,
                    free_at: t0,
                    rng: StdRng::seed_from_u64(7),
                    sent_packets: 0,
                    lost_packets: 0,
                },
                now: t0,
                t0,
                seq: 0,
                reports: VecDeque::new(),
                abandoned: VecDeque::new(),
                delivered: Vec::new(),
                clock_offset_us: 987_654_321,
                bits: Vec::new(),
            }
        }

        fn viewer_us(&self, at: Instant) -> u64 {
            at.duration_since(self.t0).as_micros() as u64 + self.clock_offset_us
        }

        /// Runs for `secs` of virtual time, one frame per frame interval.
        fn run(&mut self, secs: f64) {
            let frames = (secs * FPS) as u64;
            let interval = Duration::from_secs_f64(1.0 / FPS);
            let mut batch: Vec<FrameArrival> = Vec::new();
            for _ in 0..frames {
                let target = self.ctl.poll(self.now) as f64;
                // Frame sizes vary ±30% around the mean, like a real encoder's.
                let jitter = 0.7 + 0.6 * self.link.rng.gen::<f64>();
                let bytes = (target / FPS / 8.0 * jitter) as usize;
                self.bits.push((self.now, bytes as f64 * 8.0));
                self.ctl.on_frame_sent(self.now, self.seq, bytes);
                let packets = bytes.div_ceil(1200) as u64;
                let lost = (0..packets)
                    .filter(|_| self.link.rng.gen::<f64>() < self.link.loss)
                    .count() as u64;
                self.link.sent_packets += packets + lost;
                self.link.lost_packets += lost;
                let start = self.link.free_at.max(self.now);
                if start.duration_since(self.now) > Duration::from_millis(200) {
                    // The bottleneck's queue is full: tail drop; the sender gives up at its deadline.
                    self.abandoned
                        .push_back((self.now + Duration::from_millis(250), self.seq));
                } else {
                    let tx = Duration::from_secs_f64(
                        (bytes as u64 + (packets + lost) * 40) as f64 * 8.0 / self.link.capacity,
                    );
                    self.link.free_at = start + tx;
                    let mut arrived = self.link.free_at + self.link.prop;
                    if lost > 0 {
                        // Repaired about a round trip later.
                        arrived += self.link.prop * 5 / 2;
                    }
                    self.delivered.push((self.now, arrived));
                    let a = FrameArrival {
                        seq: self.seq,
                        received_us: self.viewer_us(arrived),
                    };
                    // Reports go back in 50 ms batches, after the return trip.
                    let report_at = arrived + Duration::from_millis(50) + self.link.prop;
                    self.reports.push_back((report_at, a));
                }
                self.seq += 1;
                self.now += interval;
                while self.reports.front().is_some_and(|(t, _)| *t <= self.now) {
                    if let Some((_, a)) = self.reports.pop_front() {
                        batch.push(a);
                    }
                }
                if !batch.is_empty() {
                    self.ctl.on_arrivals(self.now, &batch);
                    batch.clear();
                }
                while self.abandoned.front().is_some_and(|(t, _)| *t <= self.now) {
                    if let Some((_, s)) = self.abandoned.pop_front() {
                        self.ctl.on_frame_abandoned(self.now, s);
                    }
                }
                self.ctl.on_path(
                    self.now,
                    PathSample {
                        rtt: self.link.prop * 2,
                        sent_packets: self.link.sent_packets,
                        lost_packets: self.link.lost_packets,
                    },
                );
            }
        }

        fn elapsed(&self) -> f64 {
            self.now.duration_since(self.t0).as_secs_f64()
        }

        /// Mean bits per second sent over the last `secs`.
        fn sent_rate(&self, secs: f64) -> f64 {
            let from = self.now - Duration::from_secs_f64(secs);
            self.bits
                .iter()
                .filter(|(t, _)| *t >= from)
                .map(|(_, b)| b)
                .sum::<f64>()
                / secs
        }

        /// Worst queueing (arrival − sent − propagation) of frames sent in the last `secs`.
        fn worst_queue(&self, secs: f64) -> Duration {
            let from = self.now - Duration::from_secs_f64(secs);
            self.delivered
                .iter()
                .filter(|(s, _)| *s >= from)
                .map(|(s, a)| a.duration_since(*s).saturating_sub(self.link.prop))
                .max()
                .unwrap_or_default()
        }
    }

    fn cfg(ceiling_mbit: f64) -> RateConfig {
        RateConfig {
            floor: 300_000,
            ceiling: (ceiling_mbit * 1e6) as u64,
            start: 4_000_000,
        }
    }

    #[test]
    fn settles_under_a_bottleneck_with_a_short_queue() {
        let mut r = Run::new(5e6, 20, 0.0, cfg(20.0));
        r.run(5.0);
        r.run(20.0);
        let used = r.sent_rate(20.0) / 5e6;
        assert!((0.88..=1.0).contains(&used), "{used:.2} of the capacity");
        let q = r.worst_queue(20.0);
        assert!(q <= Duration::from_millis(200), "queue up to {q:?}");
        eprintln!("used {used:.2}, worst queue {q:?}");
    }

    #[test]
    fn random_loss_is_not_congestion() {
        let mut r = Run::new(1e9, 20, 0.01, cfg(20.0));
        r.run(10.0);
        let rate = r.sent_rate(5.0);
        assert!(rate >= 0.9 * 20e6, "{:.1} Mbit/s at 1% loss", rate / 1e6);
    }

    #[test]
    fn heavy_loss_lowers_the_target() {
        let mut r = Run::new(1e9, 20, 0.3, cfg(20.0));
        r.run(5.0);
        assert!(
            r.ctl.target() < 10_000_000,
            "{} at 30% loss",
            r.ctl.target()
        );
    }

    #[test]
    fn follows_capacity_down_within_two_seconds_and_up_within_ten() {
        let mut r = Run::new(20e6, 10, 0.0, cfg(20.0));
        r.run(8.0);
        assert!(r.ctl.target() as f64 >= 0.8 * 20e6, "{}", r.ctl.target());
        r.link.capacity = 4e6;
        r.run(2.0);
        assert!(
            r.ctl.target() as f64 <= 4e6,
            "still {} 2 s after the capacity fell to 4 Mbit/s",
            r.ctl.target()
        );
        r.run(5.0);
        assert!(r.worst_queue(3.0) <= Duration::from_millis(200));
        r.link.capacity = 20e6;
        let stepped = r.elapsed();
        while (r.ctl.target() as f64) < 0.8 * 20e6 {
            r.run(0.5);
            assert!(
                r.elapsed() - stepped <= 10.0,
                "{} 10 s after the capacity came back",
                r.ctl.target()
            );
        }
    }

    #[test]
    fn a_still_picture_does_not_raise_the_target_without_bound() {
        // The encoder sends an eighth of the target (nothing moves): the target does not climb
        // towards the ceiling on a path never shown to carry it.
        let t0 = Instant::now();
        let mut c = RateController::new(t0, cfg(50.0));
        let mut now = t0;
        for seq in 0..300u64 {
            c.poll(now);
            c.on_frame_sent(now, seq, 2_000);
            c.on_arrivals(
                now,
                &[FrameArrival {
                    seq,
                    received_us: now.duration_since(t0).as_micros() as u64 + 5_000,
                }],
            );
            now += Duration::from_millis(33);
        }
        assert!(c.target() <= 8_000_000, "{}", c.target());
    }

    #[test]
    fn one_abandoned_frame_alone_is_a_late_repair_two_are_congestion() {
        let t0 = Instant::now();
        let mut c = RateController::new(t0, cfg(20.0));
        c.on_frame_abandoned(t0, 1);
        assert_eq!(c.target(), 4_000_000, "one, with no queue");
        c.on_frame_abandoned(t0 + Duration::from_millis(500), 2);
        assert_eq!(c.target(), 4_000_000, "another, long after");
        c.on_frame_abandoned(t0 + Duration::from_millis(600), 3);
        assert!(c.target() <= 2_800_000, "two in a row: {}", c.target());
    }

    #[test]
    fn a_reordered_or_unknown_report_is_ignored() {
        let t0 = Instant::now();
        let mut c = RateController::new(t0, cfg(20.0));
        c.on_arrivals(
            t0,
            &[FrameArrival {
                seq: 99,
                received_us: u64::MAX,
            }],
        );
        assert_eq!(c.usage(), Usage::Normal);
        assert_eq!(c.target(), 4_000_000);
    }
}
