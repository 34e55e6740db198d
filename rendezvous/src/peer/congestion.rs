//! Congestion control for a live stream: quinn's BBR with a window floor that follows the path's
//! current RTT.
//!
//! quinn-proto 0.11's BBR sizes its window from `RttEstimator::min()`, the lowest RTT the
//! connection has *ever* seen, and never expires it while the sender is app-limited (a live
//! stream nearly always is). When the path's RTT rises mid-stream (a route change, a Wi-Fi
//! roam, direct → relay) the window stays sized for the old RTT: 4 packets per 83 ms froze an
//! 8 Mbit/s stream for good (issue 11). [`WindowFloor`] tracks a recent minimum RTT and the
//! delivery rate; while the recent minimum is well above the lifetime one, the window is at
//! least twice what the path delivered lately (the best rate of the last seconds) times the
//! recent RTT: a longer path carries as much as before, so the window is right at once instead
//! of regrowing from 4 packets, one doubling per round trip, while frames miss their deadline.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{BbrConfig, Controller, ControllerFactory, ControllerMetrics};
use quinn_proto::RttEstimator;

/// The span of the recent-minimum RTT: long enough to ignore one slow ack, short enough that
/// a new path delay is seen before frames miss their deadline (250 ms by default).
const RTT_WINDOW: Duration = Duration::from_millis(250);
/// How long the best delivery rate is remembered (BBR's bandwidth filter spans about 10 round
/// trips; a delay step must not make the path look narrower).
const RATE_WINDOW: Duration = Duration::from_secs(2);
/// Delivery is measured over this many recent RTTs (bounded below and above).
const DELIVERY_RTTS: u32 = 2;
const DELIVERY_MIN: Duration = Duration::from_millis(100);
const DELIVERY_MAX: Duration = Duration::from_secs(1);
/// The floor engages when the recent minimum RTT exceeds the lifetime one by this factor and
/// by [`INFLATION_MIN`] (sub-millisecond loopback jitter is no path change).
const INFLATION_FACTOR: u32 = 2;
const INFLATION_MIN: Duration = Duration::from_millis(5);
/// Window per delivered bytes per RTT: BBR's own cwnd gain.
const GAIN: u64 = 2;

/// The sans-IO part: RTT and delivery samples in, a window floor out.
#[derive(Debug, Clone, Default)]
pub struct WindowFloor {
    /// Monotone queue of (time, rtt): the front is the minimum over [`RTT_WINDOW`].
    rtts: VecDeque<(Instant, Duration)>,
    /// Bytes acknowledged, in arrival order.
    acked: VecDeque<(Instant, u64)>,
    acked_sum: u64,
    /// Monotone queue of (time, bytes per second): the front is the best over [`RATE_WINDOW`].
    rates: VecDeque<(Instant, u64)>,
    floor: u64,
}

impl WindowFloor {
    /// An RTT sample.
    pub fn on_rtt(&mut self, now: Instant, rtt: Duration) {
        while self.rtts.back().is_some_and(|(_, r)| *r >= rtt) {
            self.rtts.pop_back();
        }
        self.rtts.push_back((now, rtt));
        while self
            .rtts
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > RTT_WINDOW)
            && self.rtts.len() > 1
        {
            self.rtts.pop_front();
        }
    }

    /// `bytes` were acknowledged.
    pub fn on_ack(&mut self, now: Instant, bytes: u64) {
        match self.acked.back_mut() {
            // One entry per millisecond keeps the queue short at high packet rates.
            Some((t, b)) if now.saturating_duration_since(*t) < Duration::from_millis(1) => {
                *b += bytes
            }
            _ => self.acked.push_back((now, bytes)),
        }
        self.acked_sum += bytes;
        let span = self.delivery_span();
        while let Some((t, b)) = self.acked.front().copied() {
            if now.saturating_duration_since(t) <= span {
                break;
            }
            self.acked.pop_front();
            self.acked_sum -= b;
        }
    }

    /// Recomputes the floor after a batch of acks; `lifetime_min` is the connection's lowest RTT.
    pub fn update(&mut self, now: Instant, lifetime_min: Duration, min_window: u64) {
        let span = self.delivery_span();
        let rate = (self.acked_sum as u128 * 1_000_000 / span.as_micros().max(1)) as u64;
        while self.rates.back().is_some_and(|(_, r)| *r <= rate) {
            self.rates.pop_back();
        }
        self.rates.push_back((now, rate));
        while self
            .rates
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > RATE_WINDOW)
        {
            self.rates.pop_front();
        }
        let Some(recent) = self.recent_min() else {
            self.floor = 0;
            return;
        };
        let inflated =
            recent > lifetime_min * INFLATION_FACTOR && recent > lifetime_min + INFLATION_MIN;
        self.floor = if inflated {
            let best = self.rates.front().map_or(rate, |(_, r)| *r);
            let per_rtt = (best as u128 * recent.as_micros() / 1_000_000) as u64;
            (GAIN * per_rtt).max(min_window)
        } else {
            0
        };
    }

    /// The window must not be below this (0: no floor).
    pub fn floor(&self) -> u64 {
        self.floor
    }

    pub fn recent_min(&self) -> Option<Duration> {
        self.rtts.front().map(|(_, r)| *r)
    }

    fn delivery_span(&self) -> Duration {
        self.recent_min()
            .map(|r| r * DELIVERY_RTTS)
            .unwrap_or(DELIVERY_MIN)
            .clamp(DELIVERY_MIN, DELIVERY_MAX)
    }
}

/// Builds [`LiveBbr`] controllers for a quinn transport.
#[derive(Debug, Default)]
pub struct LiveBbrConfig {
    bbr: Arc<BbrConfig>,
}

impl ControllerFactory for LiveBbrConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(LiveBbr {
            inner: self.bbr.clone().build(now, current_mtu),
            floor: WindowFloor::default(),
            mtu: current_mtu as u64,
            lifetime_min: Duration::MAX,
        })
    }
}

/// quinn's BBR, with [`WindowFloor`] under its window.
pub struct LiveBbr {
    inner: Box<dyn Controller>,
    floor: WindowFloor,
    mtu: u64,
    lifetime_min: Duration,
}

impl Controller for LiveBbr {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
        // This packet's own round trip: `rtt.latest()` is the newest ack's, not this packet's.
        self.floor.on_rtt(now, now.saturating_duration_since(sent));
        self.floor.on_ack(now, bytes);
        self.lifetime_min = rtt.min();
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
        self.floor.update(now, self.lifetime_min, 4 * self.mtu);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.inner
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.mtu = new_mtu as u64;
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.inner.window().max(self.floor.floor())
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut m = self.inner.metrics();
        m.congestion_window = self.window();
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(LiveBbr {
            inner: self.inner.clone_box(),
            floor: self.floor.clone(),
            mtu: self.mtu,
            lifetime_min: self.lifetime_min,
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTU: u64 = 1200;

    /// A cwnd-limited sender on a path of `rtt`: each round trip delivers the whole window.
    fn round_trip(f: &mut WindowFloor, now: &mut Instant, rtt: Duration, window: u64) {
        let packets = (window / MTU).max(1);
        for i in 0..packets {
            let t = *now + rtt + rtt * i as u32 / packets as u32 / 4;
            f.on_rtt(t, rtt);
            f.on_ack(t, MTU);
        }
        *now += rtt;
    }

    #[test]
    fn no_floor_while_the_rtt_stays_near_its_lifetime_minimum() {
        let mut f = WindowFloor::default();
        let mut now = Instant::now();
        let rtt = Duration::from_millis(40);
        for _ in 0..20 {
            round_trip(&mut f, &mut now, rtt, 100 * MTU);
            f.update(now, Duration::from_millis(38), 4 * MTU);
            assert_eq!(f.floor(), 0);
        }
    }

    #[test]
    fn a_risen_rtt_regrows_a_stale_window_within_a_second() {
        // The lifetime minimum is 0.5 ms (loopback); the path now takes 83 ms. BBR would hold
        // 4 packets. With the floor the window doubles every round trip up to what the app
        // sends (here 1 MB/s, 8 Mbit/s: 83 KB per round trip).
        let mut f = WindowFloor::default();
        let mut now = Instant::now();
        let rtt = Duration::from_millis(83);
        let app_per_rtt = 83_000u64;
        let mut window = 4 * MTU;
        let start = now;
        while window < app_per_rtt && now - start < Duration::from_secs(5) {
            let sent = window.min(app_per_rtt);
            round_trip(&mut f, &mut now, rtt, sent);
            f.update(now, Duration::from_micros(500), 4 * MTU);
            window = window.max(f.floor());
        }
        assert!(window >= app_per_rtt, "window {window}");
        assert!(
            now - start <= Duration::from_secs(1),
            "took {:?}",
            now - start
        );
    }

    #[test]
    fn a_risen_rtt_gets_the_window_the_old_delivery_rate_needs_at_once() {
        // 8 Mbit/s (1 MB/s) on loopback for two seconds, then the path takes 83 ms: the floor
        // is the old rate times the new RTT (twice) within the recent-RTT window, before any
        // frame misses a 250 ms deadline.
        let mut f = WindowFloor::default();
        let mut now = Instant::now();
        let lifetime = Duration::from_micros(500);
        for _ in 0..2000 {
            // 1 MB/s: 1000 bytes per millisecond.
            f.on_rtt(now, lifetime);
            f.on_ack(now, 1000);
            f.update(now, lifetime, 4 * MTU);
            now += Duration::from_millis(1);
        }
        assert_eq!(f.floor(), 0);
        let step = now;
        let rtt = Duration::from_millis(83);
        // BBR's stale window: 4 packets per round trip get through.
        while f.floor() == 0 && now - step < Duration::from_secs(1) {
            round_trip(&mut f, &mut now, rtt, 4 * MTU);
            f.update(now, lifetime, 4 * MTU);
        }
        assert!(
            now - step <= Duration::from_millis(350),
            "took {:?}",
            now - step
        );
        assert!(f.floor() >= 2 * 83_000 * 9 / 10, "floor {}", f.floor());
    }

    #[test]
    fn the_recent_minimum_forgets_an_old_low_rtt() {
        let mut f = WindowFloor::default();
        let t0 = Instant::now();
        f.on_rtt(t0, Duration::from_millis(1));
        f.on_rtt(t0 + Duration::from_millis(100), Duration::from_millis(90));
        assert_eq!(f.recent_min(), Some(Duration::from_millis(1)));
        f.on_rtt(t0 + Duration::from_millis(700), Duration::from_millis(85));
        assert_eq!(f.recent_min(), Some(Duration::from_millis(85)));
        // And back down at once.
        f.on_rtt(t0 + Duration::from_millis(800), Duration::from_millis(2));
        assert_eq!(f.recent_min(), Some(Duration::from_millis(2)));
    }
}
