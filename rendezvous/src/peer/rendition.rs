//! The renditions of a stream (the sender's encoder ladder: full size and half size) and how
//! a viewer is placed on one. Shared by the sender, which places its QUIC viewers, and the
//! browser bridge, which places each browser on one of its upstreams.

use std::time::{Duration, Instant};

/// The full-size rendition, always encoded.
pub const TOP: usize = 0;
/// The half-size rendition, encoded while some viewer is on it.
pub const LOW: usize = 1;
pub const RENDITIONS: usize = 2;

/// Bitrate bounds of the ladder, bits per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LadderConfig {
    /// `--bitrate`: the top rendition's ceiling.
    pub ceiling: u32,
    /// The least any rendition gets.
    pub floor: u32,
}

impl LadderConfig {
    pub fn new(ceiling: u32) -> Self {
        Self {
            ceiling,
            floor: (ceiling / 40).clamp(150_000, ceiling.max(1)),
        }
    }

    /// Below this a viewer is better served by the half-size picture.
    pub fn top_min(&self) -> u32 {
        (self.ceiling / 4).max(self.floor)
    }

    /// The most the half-size rendition gets.
    pub fn low_max(&self) -> u32 {
        (self.ceiling / 3).max(self.floor)
    }
}

/// Which rendition one viewer should be on, with hysteresis: down when its target has been
/// too low for a second, up when it has been high enough for three, and after an up-move that
/// did not hold, not again for a while (doubling, up to a minute).
#[derive(Debug)]
pub struct RenditionChooser {
    since: Option<(usize, Instant)>,
    last_up: Option<Instant>,
    up_backoff: Duration,
    not_before: Option<Instant>,
}

const DOWN_AFTER: Duration = Duration::from_secs(1);
const UP_AFTER: Duration = Duration::from_secs(3);

impl Default for RenditionChooser {
    fn default() -> Self {
        Self {
            since: None,
            last_up: None,
            up_backoff: Duration::from_secs(10),
            not_before: None,
        }
    }
}

impl RenditionChooser {
    /// Where a viewer starting with `target` begins; `top_min`: the least the top is sent at.
    pub fn start(target: u64, top_min: u64) -> usize {
        if target >= top_min {
            TOP
        } else {
            LOW
        }
    }

    /// The rendition this viewer should move to, if any, with `target` its estimate. `probing`:
    /// that estimate has seen no queue yet (a low target then means "not measured", not
    /// "cannot"). `top_rate`: what the top is sent at now; `top_min`: the least it ever is.
    pub fn update(
        &mut self,
        now: Instant,
        current: usize,
        (target, probing): (u64, bool),
        top_rate: u64,
        top_min: u64,
    ) -> Option<usize> {
        let want = match current {
            TOP => {
                let behind = !probing && target < (0.7 * top_rate as f64) as u64;
                (target < top_min || behind).then_some(LOW)
            }
            _ => {
                let enough = target >= (1.2 * top_min as f64) as u64
                    && target >= (0.9 * top_rate as f64) as u64;
                let allowed = self.not_before.is_none_or(|t| now >= t);
                (enough && allowed).then_some(TOP)
            }
        };
        let Some(want) = want else {
            self.since = None;
            return None;
        };
        let since = match self.since {
            Some((w, t)) if w == want => t,
            _ => {
                self.since = Some((want, now));
                now
            }
        };
        let after = if want == LOW { DOWN_AFTER } else { UP_AFTER };
        if now.saturating_duration_since(since) < after {
            return None;
        }
        self.since = None;
        if want == TOP {
            self.last_up = Some(now);
        } else if self
            .last_up
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(10))
        {
            // The way up did not hold: wait longer before trying again.
            self.not_before = Some(now + self.up_backoff);
            self.up_backoff = (self.up_backoff * 2).min(Duration::from_secs(60));
        }
        Some(want)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOP_MIN: u64 = 5_000_000;

    #[test]
    fn a_viewer_moves_down_after_a_second_and_up_after_three() {
        let t0 = Instant::now();
        let mut ch = RenditionChooser::default();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Too low for the top: down, but only after a second of it.
        assert_eq!(
            ch.update(at(0), TOP, (3_000_000, false), 20_000_000, TOP_MIN),
            None
        );
        assert_eq!(
            ch.update(at(900), TOP, (3_000_000, false), 20_000_000, TOP_MIN),
            None
        );
        assert_eq!(
            ch.update(at(1000), TOP, (3_000_000, false), 20_000_000, TOP_MIN),
            Some(LOW)
        );
        // A blip back up resets the count.
        assert_eq!(
            ch.update(at(1100), LOW, (19_000_000, false), 20_000_000, TOP_MIN),
            None
        );
        assert_eq!(
            ch.update(at(1200), LOW, (2_000_000, false), 20_000_000, TOP_MIN),
            None
        );
        assert_eq!(
            ch.update(at(2200), LOW, (19_000_000, false), 20_000_000, TOP_MIN),
            None
        );
        assert_eq!(
            ch.update(at(5200), LOW, (19_000_000, false), 20_000_000, TOP_MIN),
            Some(TOP)
        );
        // It did not hold: down again, and no way up for 10 s.
        assert_eq!(
            ch.update(at(6000), TOP, (2_000_000, false), 20_000_000, TOP_MIN),
            None
        );
        assert_eq!(
            ch.update(at(7000), TOP, (2_000_000, false), 20_000_000, TOP_MIN),
            Some(LOW)
        );
        assert_eq!(
            ch.update(at(8000), LOW, (19_000_000, false), 20_000_000, TOP_MIN),
            None
        );
        assert_eq!(
            ch.update(at(12000), LOW, (19_000_000, false), 20_000_000, TOP_MIN),
            None
        );
        assert_eq!(
            ch.update(at(17000), LOW, (19_000_000, false), 20_000_000, TOP_MIN),
            None
        );
        assert_eq!(
            ch.update(at(20000), LOW, (19_000_000, false), 20_000_000, TOP_MIN),
            Some(TOP)
        );
    }

    #[test]
    fn a_probing_viewer_is_not_moved_for_being_below_the_top_rate() {
        let t0 = Instant::now();
        let mut ch = RenditionChooser::default();
        for s in 0..5 {
            let now = t0 + Duration::from_secs(s);
            assert_eq!(
                ch.update(now, TOP, (8_000_000, true), 20_000_000, TOP_MIN),
                None
            );
        }
        // Once measured, 8 of 20 Mbit/s is behind.
        ch.update(
            t0 + Duration::from_secs(6),
            TOP,
            (8_000_000, false),
            20_000_000,
            TOP_MIN,
        );
        assert_eq!(
            ch.update(
                t0 + Duration::from_secs(7),
                TOP,
                (8_000_000, false),
                20_000_000,
                TOP_MIN
            ),
            Some(LOW)
        );
    }
}
