//! The viewer's decode stage: in-order frames in, pictures out to the window or the headless
//! renderer, with the viewer's counters and test-card checks. One thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::view::{Display, FrameSlot, Latest, ViewEvent};
use super::PipelineError;
use crate::clock;
use crate::decode::Decoder;
use crate::net::subscribe::{Delivered, SubHandle};

/// A picture's barcode against its frame number (see [`super::view::Verified`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Ok,
    Stale,
    Corrupt,
}

/// How far back a stale barcode may be (x264 left the region unchanged that long).
const STALE_FRAMES: u32 = 8;

impl Check {
    /// `read`: the barcode of frame `seq`'s picture; `previous`: the frame decoded before it.
    /// Stale only right after the frame before it (the reference was intact, so an old number
    /// is the encoder's choice); anything else that does not match is corrupt.
    fn of(read: Option<u32>, seq: u64, previous: Option<u64>) -> Check {
        let mask = 0xFF_FFFF;
        let want = seq as u32 & mask;
        match read {
            Some(r) if r == want => Check::Ok,
            Some(r)
                if previous.is_some_and(|p| p + 1 == seq)
                    && (1..=STALE_FRAMES).contains(&(want.wrapping_sub(r) & mask)) =>
            {
                Check::Stale
            }
            _ => Check::Corrupt,
        }
    }
}

pub(super) struct DecodeStage {
    pub events: Option<mpsc::UnboundedSender<ViewEvent>>,
    /// The window's slot (and the viewer's metrics).
    pub slot: FrameSlot,
    /// The headless renderer's slot.
    pub render_slot: FrameSlot,
    pub display: Display,
    /// Stop after this many decoded frames (then `done` is told).
    pub max: Option<u64>,
    pub done: mpsc::UnboundedSender<()>,
    /// Frames decoded, over every connection of this viewer.
    pub count: Arc<AtomicU64>,
    /// Frames skipped because decoding fell behind.
    pub late: Arc<AtomicU64>,
    pub late_after: Duration,
    pub verify: bool,
    pub handle: SubHandle,
}

impl DecodeStage {
    pub fn spawn(
        self,
        frames: std::sync::mpsc::Receiver<Delivered>,
    ) -> Result<std::thread::JoinHandle<Result<(), PipelineError>>, PipelineError> {
        std::thread::Builder::new()
            .name("decode".into())
            .spawn(move || self.run(frames))
            .map_err(|e| PipelineError::Other(e.to_string()))
    }

    fn run(self, frames: std::sync::mpsc::Receiver<Delivered>) -> Result<(), PipelineError> {
        let mut dec = Decoder::new()?;
        let mut skipping = false;
        let mut previous: Option<u64> = None;
        while let Ok(item) = frames.recv() {
            // Live beats complete: when decoding falls behind (a slow CPU), skip to the next
            // keyframe instead of letting latency grow. Behind means frames waiting here, not
            // frames that came late: the network's delay is the sender's to bound (it lowers the
            // rate, abandons what is too old).
            let waited = Duration::from_micros(clock::now_us().saturating_sub(item.received_us));
            if !item.keyframe && (skipping || waited > self.late_after) {
                if !skipping {
                    tracing::debug!(
                        seq = item.seq,
                        ?waited,
                        "decoder behind; skipping to a keyframe"
                    );
                    self.handle.decode_error();
                }
                skipping = true;
                self.late.fetch_add(1, Ordering::Relaxed);
                self.emit(ViewEvent::Dropped { seq: item.seq });
                continue;
            }
            skipping = false;
            let started = Instant::now();
            match dec.decode(&item.data) {
                Ok(Some(pic)) => {
                    let n = self.shown(&item, previous, Arc::new(pic), started.elapsed());
                    previous = Some(item.seq);
                    if self.max.is_some_and(|m| n >= m) {
                        let _ = self.done.send(());
                        break;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    // What follows references this frame: nothing more until the keyframe
                    // just asked for (a picture decoded on a broken reference is garbage).
                    tracing::debug!(seq = item.seq, "decode error: {e}");
                    self.handle.decode_error();
                    skipping = true;
                }
            }
        }
        Ok(())
    }

    fn emit(&self, e: ViewEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
    }

    /// Counts a decoded picture, checks it, and hands it on; returns the count. `previous`:
    /// the frame decoded before it.
    fn shown(
        &self,
        item: &Delivered,
        previous: Option<u64>,
        pic: Arc<crate::picture::I420>,
        took: Duration,
    ) -> u64 {
        let decoded_us = clock::now_us();
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let check = self.verify.then(|| {
            let read = crate::capture::testcard::read_barcode(&pic);
            let c = Check::of(read, item.seq, previous);
            if c != Check::Ok {
                tracing::warn!(
                    seq = item.seq,
                    ?read,
                    keyframe = item.keyframe,
                    check = ?c,
                    "picture does not show its frame's barcode"
                );
            }
            c
        });
        if let Ok(mut m) = self.slot.metrics.lock() {
            m.frames = n;
            if n == 1 {
                m.first_frame = m.started.map(|s| s.elapsed());
            }
            if let Some(c) = check {
                let v = m.verify.get_or_insert_with(Default::default);
                match c {
                    Check::Ok => v.ok += 1,
                    Check::Stale => v.stale += 1,
                    Check::Corrupt => v.corrupt += 1,
                }
            }
            m.shown.record(Instant::now(), 0);
            m.last_picture = Some((Instant::now(), item.capture_us));
            if matches!(self.display, Display::None) {
                m.latency_us
                    .record(decoded_us.saturating_sub(item.capture_us));
            }
        }
        self.emit(ViewEvent::Decoded {
            seq: item.seq,
            keyframe: item.keyframe,
            picture: pic.clone(),
            capture_us: item.capture_us,
            received_us: item.received_us,
            decoded_us,
            decode_us: took.as_micros() as u64,
        });
        let latest = Latest {
            seq: item.seq,
            capture_us: item.capture_us,
            picture: pic,
        };
        match self.display {
            Display::Window(_) => self.slot.put(latest),
            Display::Headless { .. } => self.render_slot.put(latest),
            Display::None => {}
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_number_right_after_its_predecessor_is_stale_anything_else_corrupt() {
        assert_eq!(Check::of(Some(91), 91, Some(90)), Check::Ok);
        assert_eq!(Check::of(Some(90), 91, Some(90)), Check::Stale);
        assert_eq!(Check::of(Some(86), 91, Some(90)), Check::Stale);
        // Across the 24-bit wrap.
        assert_eq!(
            Check::of(Some(0xFF_FFFF), 1 << 24, Some((1 << 24) - 1)),
            Check::Stale
        );
        // After a gap the reference may be gone: an old number is corruption then.
        assert_eq!(Check::of(Some(90), 91, Some(85)), Check::Corrupt);
        assert_eq!(Check::of(Some(90), 91, None), Check::Corrupt);
        // Too old, from the future, or unreadable.
        assert_eq!(Check::of(Some(80), 91, Some(90)), Check::Corrupt);
        assert_eq!(Check::of(Some(92), 91, Some(90)), Check::Corrupt);
        assert_eq!(Check::of(None, 91, Some(90)), Check::Corrupt);
    }
}
