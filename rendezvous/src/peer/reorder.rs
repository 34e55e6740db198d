//! Frame ordering and loss recovery on the viewer, sans-IO.
//!
//! Frames arrive on independent QUIC streams, so out of order, and some never arrive (the
//! sender abandoned them, or said so with `Skipped`). This core hands frames to the decoder in
//! sequence and upholds one rule: **a delivered frame is a keyframe or directly follows a
//! delivered frame**, so the decoder never sees a frame that references a lost one. After a gap
//! it drops everything up to the next keyframe and asks for one.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct ReorderConfig {
    /// How long a later frame waits for a missing earlier one before the gap is declared.
    pub hold: Duration,
    /// Repeat the keyframe request this often while waiting for one.
    pub keyframe_retry: Duration,
    /// Most frames held; past this the oldest gap is declared at once.
    pub max_pending: usize,
}

impl Default for ReorderConfig {
    fn default() -> Self {
        Self {
            hold: Duration::from_millis(150),
            keyframe_retry: Duration::from_millis(400),
            max_pending: 64,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Output<F> {
    Deliver {
        seq: u64,
        keyframe: bool,
        frame: F,
    },
    /// Ask the sender for an IDR.
    RequestKeyframe,
    /// This frame will not be shown. Once per frame from the first delivered one on, for every
    /// sequence number the stream skipped past (lost on the way, abandoned by the sender, or
    /// given up while waiting for a keyframe), so a viewer's count matches the sender's.
    Dropped {
        seq: u64,
    },
}

struct Pending<F> {
    arrived: Instant,
    keyframe: bool,
    frame: F,
}

pub struct Reorder<F> {
    cfg: ReorderConfig,
    /// The sequence number the decoder needs next.
    next: Option<u64>,
    pending: BTreeMap<u64, Pending<F>>,
    skipped: BTreeSet<u64>,
    /// Frames at or after `next` already reported dropped (given up early).
    reported: BTreeSet<u64>,
    waiting_key: bool,
    last_request: Option<Instant>,
    out: VecDeque<Output<F>>,
}

impl<F> Reorder<F> {
    pub fn new(cfg: ReorderConfig) -> Self {
        Self {
            cfg,
            next: None,
            pending: BTreeMap::new(),
            skipped: BTreeSet::new(),
            reported: BTreeSet::new(),
            waiting_key: true,
            last_request: None,
            out: VecDeque::new(),
        }
    }

    pub fn waiting_for_keyframe(&self) -> bool {
        self.waiting_key
    }

    pub fn handle_frame(&mut self, now: Instant, seq: u64, keyframe: bool, frame: F) {
        // Too late (already counted when the stream moved past it) or a duplicate.
        if self.next.is_some_and(|n| seq < n)
            || self.pending.contains_key(&seq)
            || self.reported.contains(&seq)
        {
            return;
        }
        self.pending.insert(
            seq,
            Pending {
                arrived: now,
                keyframe,
                frame,
            },
        );
        if self.pending.len() > self.cfg.max_pending {
            self.gap(now);
        }
        self.drain(now);
    }

    /// The sender says `seq` will never come.
    pub fn handle_skipped(&mut self, now: Instant, seq: u64) {
        if self.next.is_none_or(|n| seq >= n) {
            self.skipped.insert(seq);
            self.drain(now);
        }
    }

    /// The decoder choked on a delivered frame: wait for a keyframe.
    pub fn handle_decode_error(&mut self, now: Instant) {
        self.gap(now);
        self.drain(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.waiting_key {
            // Frames held in case their keyframe was overtaken: give up on the old ones.
            let hold = self.cfg.hold;
            let expired: Vec<u64> = self
                .pending
                .iter()
                .filter(|(_, p)| now >= p.arrived + hold)
                .map(|(s, _)| *s)
                .collect();
            for seq in expired {
                self.pending.remove(&seq);
                self.report(seq);
            }
            self.request_keyframe(now);
        } else if self
            .oldest_pending()
            .is_some_and(|t| now >= t + self.cfg.hold)
        {
            self.gap(now);
            self.drain(now);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let held = self.oldest_pending().map(|t| t + self.cfg.hold);
        if self.waiting_key {
            let retry = self.last_request.map(|t| t + self.cfg.keyframe_retry);
            [held, retry].into_iter().flatten().min()
        } else {
            held
        }
    }

    pub fn poll_output(&mut self) -> Option<Output<F>> {
        self.out.pop_front()
    }

    fn oldest_pending(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.arrived).min()
    }

    fn gap(&mut self, _now: Instant) {
        self.waiting_key = true;
    }

    fn request_keyframe(&mut self, now: Instant) {
        if self
            .last_request
            .is_none_or(|t| now >= t + self.cfg.keyframe_retry)
        {
            self.last_request = Some(now);
            self.out.push_back(Output::RequestKeyframe);
        }
    }

    fn drain(&mut self, now: Instant) {
        loop {
            if self.waiting_key {
                let from = self.next.unwrap_or(0);
                let key = self
                    .pending
                    .range(from..)
                    .find(|(_, p)| p.keyframe)
                    .map(|(s, _)| *s);
                match key {
                    Some(k) => {
                        self.advance_to(k);
                        self.waiting_key = false;
                        self.last_request = None;
                    }
                    None => {
                        // Nothing here can be decoded yet. Hold it briefly (its keyframe may
                        // have been overtaken) and ask for an IDR.
                        if self.pending.len() > self.cfg.max_pending {
                            let excess = self.pending.len() - self.cfg.max_pending;
                            let cut = *self.pending.keys().nth(excess).unwrap_or(&0);
                            self.drop_below(cut);
                        }
                        self.request_keyframe(now);
                        break;
                    }
                }
            }
            let Some(n) = self.next else { break };
            if let Some(p) = self.pending.remove(&n) {
                self.next = Some(n + 1);
                self.out.push_back(Output::Deliver {
                    seq: n,
                    keyframe: p.keyframe,
                    frame: p.frame,
                });
            } else if self.skipped.remove(&n) {
                self.advance_to(n + 1);
                self.waiting_key = true;
            } else {
                break;
            }
        }
        if let Some(n) = self.next {
            self.skipped = self.skipped.split_off(&n);
        }
    }

    fn drop_below(&mut self, seq: u64) {
        let keep = self.pending.split_off(&seq);
        for s in std::mem::replace(&mut self.pending, keep).into_keys() {
            self.report(s);
        }
        self.skipped = self.skipped.split_off(&seq);
    }

    /// Reports `seq` dropped once; before the first delivered frame nothing counts.
    fn report(&mut self, seq: u64) {
        if self.next.is_some() && self.reported.insert(seq) {
            self.out.push_back(Output::Dropped { seq });
        }
    }

    /// Moves the decoder's position to `k`: everything before it not delivered is dropped,
    /// reported once each (a jump of absurd length reports its first frames only).
    fn advance_to(&mut self, k: u64) {
        const MOST_REPORTED: u64 = 4096;
        self.drop_below(k);
        if let Some(n) = self.next {
            for s in n..k.min(n.saturating_add(MOST_REPORTED)) {
                self.report(s);
            }
        }
        self.next = Some(k);
        self.reported = self.reported.split_off(&k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drain(r: &mut Reorder<()>) -> Vec<Output<()>> {
        std::iter::from_fn(|| r.poll_output()).collect()
    }

    fn delivered(out: &[Output<()>]) -> Vec<u64> {
        out.iter()
            .filter_map(|o| match o {
                Output::Deliver { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn starts_at_a_keyframe_and_delivers_in_order() {
        let t = Instant::now();
        let mut r = Reorder::new(ReorderConfig::default());
        // Joined mid-stream: P frames first are useless; a keyframe is requested.
        r.handle_frame(t, 10, false, ());
        let out = drain(&mut r);
        assert!(out.contains(&Output::RequestKeyframe));
        assert!(delivered(&out).is_empty());
        r.handle_frame(t, 12, false, ());
        r.handle_frame(t, 11, true, ());
        r.handle_frame(t, 13, false, ());
        assert_eq!(delivered(&drain(&mut r)), [11, 12, 13]);
    }

    #[test]
    fn reordered_frames_wait_within_hold() {
        let t = Instant::now();
        let mut r = Reorder::new(ReorderConfig::default());
        r.handle_frame(t, 0, true, ());
        r.handle_frame(t, 2, false, ());
        assert_eq!(delivered(&drain(&mut r)), [0]);
        assert_eq!(r.poll_timeout(), Some(t + Duration::from_millis(150)));
        r.handle_frame(t + Duration::from_millis(20), 1, false, ());
        assert_eq!(delivered(&drain(&mut r)), [1, 2]);
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn skipped_frame_means_wait_for_keyframe() {
        let t = Instant::now();
        let mut r = Reorder::new(ReorderConfig::default());
        r.handle_frame(t, 0, true, ());
        r.handle_frame(t, 2, false, ());
        r.handle_frame(t, 3, false, ());
        r.handle_skipped(t, 1);
        let out = drain(&mut r);
        assert_eq!(delivered(&out), [0]);
        assert!(out.contains(&Output::RequestKeyframe));
        assert!(r.waiting_for_keyframe());
        r.handle_frame(t, 4, false, ());
        r.handle_frame(t, 6, false, ());
        r.handle_frame(t, 5, true, ());
        let out = drain(&mut r);
        assert_eq!(delivered(&out), [5, 6]);
        for seq in 2..=4 {
            assert!(out.contains(&Output::Dropped { seq }));
        }
    }

    #[test]
    fn missing_frame_times_out_into_a_gap_and_request_repeats() {
        let t = Instant::now();
        let mut r = Reorder::new(ReorderConfig::default());
        r.handle_frame(t, 0, true, ());
        r.handle_frame(t, 2, false, ());
        drain(&mut r);
        let deadline = r.poll_timeout().unwrap();
        assert_eq!(deadline, t + Duration::from_millis(150));
        r.handle_timeout(deadline);
        let mut out = drain(&mut r);
        assert!(out.contains(&Output::RequestKeyframe));
        // No keyframe comes: frame 2 is given up and the request is repeated.
        while let Some(to) = r.poll_timeout() {
            if to > deadline + Duration::from_millis(400) {
                break;
            }
            r.handle_timeout(to);
            out.extend(drain(&mut r));
        }
        assert!(delivered(&out).is_empty());
        assert!(out.contains(&Output::Dropped { seq: 2 }));
        assert_eq!(
            out.iter()
                .filter(|o| **o == Output::RequestKeyframe)
                .count(),
            2
        );
        // A late copy of frame 1 cannot be decoded either.
        r.handle_frame(deadline, 1, false, ());
        assert!(delivered(&drain(&mut r)).is_empty());
    }

    #[test]
    fn decode_error_waits_for_keyframe() {
        let t = Instant::now();
        let mut r = Reorder::new(ReorderConfig::default());
        r.handle_frame(t, 0, true, ());
        drain(&mut r);
        r.handle_decode_error(t);
        assert_eq!(drain(&mut r), vec![Output::RequestKeyframe]);
        r.handle_frame(t, 1, false, ());
        r.handle_frame(t, 2, true, ());
        assert_eq!(delivered(&drain(&mut r)), [2]);
    }

    #[test]
    fn pending_is_bounded() {
        let t = Instant::now();
        let mut r = Reorder::new(ReorderConfig {
            max_pending: 4,
            ..Default::default()
        });
        r.handle_frame(t, 0, true, ());
        for s in 2..10 {
            r.handle_frame(t, s, false, ());
        }
        drain(&mut r);
        assert!(r.pending.len() <= 4);
    }

    proptest! {
        /// Whatever order, loss and skips: delivered frames increase, and each is a keyframe or
        /// follows the previously delivered frame directly.
        #[test]
        fn never_delivers_a_frame_after_a_hole(
            n in 10u64..80,
            key_every in 3u64..20,
            lost in proptest::collection::btree_set(0u64..80, 0..10),
            swaps in proptest::collection::vec((0usize..80, 0usize..80), 0..30),
            skip_lost in any::<bool>(),
        ) {
            let t0 = Instant::now();
            let mut r = Reorder::new(ReorderConfig::default());
            let mut order: Vec<u64> = (0..n).filter(|s| !lost.contains(s)).collect();
            for (a, b) in swaps {
                let len = order.len();
                if len > 1 { order.swap(a % len, b % len); }
            }
            let mut out = Vec::new();
            for (i, s) in order.iter().enumerate() {
                let now = t0 + Duration::from_millis(i as u64 * 10);
                r.handle_frame(now, *s, *s % key_every == 0, ());
                if skip_lost {
                    for l in lost.iter().filter(|l| **l < *s) { r.handle_skipped(now, *l); }
                }
                if let Some(to) = r.poll_timeout() { if to <= now { r.handle_timeout(now); } }
                out.extend(drain(&mut r));
            }
            r.handle_timeout(t0 + Duration::from_secs(100));
            out.extend(drain(&mut r));
            let mut prev: Option<u64> = None;
            for o in &out {
                if let Output::Deliver { seq, keyframe, .. } = o {
                    prop_assert!(prev.is_none_or(|p| *seq > p));
                    prop_assert!(*keyframe || prev == Some(seq - 1), "frame {} after {:?}", seq, prev);
                    prop_assert!(!lost.contains(seq));
                    prev = Some(*seq);
                }
            }
            // With nothing lost and frames in order, everything from the first key is shown.
            if lost.is_empty() && order.windows(2).all(|w| w[0] < w[1]) {
                prop_assert_eq!(delivered(&out).len() as u64, n);
            }
        }
    }

    #[test]
    fn every_frame_skipped_past_is_reported_dropped_exactly_once() {
        // A link cut: frames 10..70 never arrive whole; the sender says some were skipped,
        // some time out while waiting, the rest just never come. Then a keyframe at 70.
        let t = Instant::now();
        let mut r = Reorder::new(ReorderConfig::default());
        for seq in 0..10 {
            r.handle_frame(t, seq, seq == 0, ());
        }
        let mut out = drain(&mut r);
        for seq in (10..40).step_by(3) {
            r.handle_skipped(t, seq);
        }
        r.handle_frame(t, 45, false, ());
        r.handle_timeout(t + Duration::from_millis(200));
        r.handle_timeout(t + Duration::from_millis(400));
        out.extend(drain(&mut r));
        r.handle_frame(t + Duration::from_millis(500), 70, true, ());
        // Stragglers of the cut, after the stream moved on: not new losses.
        r.handle_frame(t + Duration::from_millis(510), 20, false, ());
        r.handle_frame(t + Duration::from_millis(510), 45, false, ());
        out.extend(drain(&mut r));
        let mut dropped: Vec<u64> = out
            .iter()
            .filter_map(|o| match o {
                Output::Dropped { seq } => Some(*seq),
                _ => None,
            })
            .collect();
        dropped.sort_unstable();
        assert_eq!(dropped, (10..70).collect::<Vec<_>>());
        assert_eq!(delivered(&out), (0..10).chain([70]).collect::<Vec<_>>());
    }
}
