//! The sender's encoder ladder: the full-size rendition, always encoded, and a half-size one,
//! encoded only while some viewer is on it. Each rendition's bitrate follows the viewers on it:
//! the top one the fastest of them (a slow viewer moves down instead of dragging the others
//! down), the low one the slowest (it is the bottom of the ladder). Keyframes are per
//! rendition: asked for at a frame number (a viewer joining or moving there) or after a loss,
//! and the latter at most once per `LOSS_IDR_GAP` per rendition.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use super::PipelineError;
use crate::encode::scale::{half_size, Halver};
use crate::encode::{EncodedFrame, Encoder, EncoderConfig};
use crate::picture::I420;

pub use inclubit_rendezvous::peer::rendition::{
    LadderConfig, RenditionChooser, LOW, RENDITIONS, TOP,
};

/// IDRs asked for after a loss, per rendition, at most one per this long.
pub const LOSS_IDR_GAP: Duration = Duration::from_millis(500);

/// Below this width the full-size picture is the only rendition (half of it would be too small
/// to be worth watching in a headset).
pub const LADDER_MIN_WIDTH: u32 = 1280;

/// One rendition's state, shared by its encoder and the viewer sessions.
pub struct Rendition {
    pub index: usize,
    pub width: u32,
    pub height: u32,
    /// Target bitrate for its encoder.
    pub bitrate: AtomicU32,
    /// Viewers on it (or moving to it).
    pub users: AtomicUsize,
    /// The first frame number at or after which the next frame must be an IDR (`u64::MAX`: none).
    keyframe_from: AtomicU64,
    /// An IDR after a loss is wanted (made only if `LOSS_IDR_GAP` has passed).
    keyframe_loss: AtomicBool,
    /// The frame number the encoder takes next.
    pub next_seq: AtomicU64,
    idrs: Mutex<IdrLog>,
}

#[derive(Default)]
struct IdrLog {
    at: VecDeque<Instant>,
    last: Option<Instant>,
    total: u64,
}

impl Rendition {
    fn new(index: usize, width: u32, height: u32, bitrate: u32) -> Self {
        Self {
            index,
            width,
            height,
            bitrate: AtomicU32::new(bitrate),
            users: AtomicUsize::new(0),
            // A new encoder starts with an IDR anyway.
            keyframe_from: AtomicU64::new(u64::MAX),
            keyframe_loss: AtomicBool::new(false),
            next_seq: AtomicU64::new(0),
            idrs: Mutex::new(IdrLog::default()),
        }
    }

    /// The frame numbered `seq` or the first after it must be an IDR (a viewer starts there).
    pub fn keyframe_at(&self, seq: u64) {
        self.keyframe_from.fetch_min(seq, Ordering::Relaxed);
    }

    /// A viewer lost something: an IDR soon, unless one was made within `LOSS_IDR_GAP`.
    pub fn keyframe_after_loss(&self) {
        self.keyframe_loss.store(true, Ordering::Relaxed);
    }

    /// Whether the frame `seq` the encoder is about to make must be an IDR.
    fn wants_keyframe(&self, now: Instant, seq: u64) -> bool {
        if seq >= self.keyframe_from.load(Ordering::Relaxed) {
            return true;
        }
        let recent = self
            .idrs
            .lock()
            .ok()
            .and_then(|l| l.last)
            .is_some_and(|t| now.saturating_duration_since(t) < LOSS_IDR_GAP);
        !recent && self.keyframe_loss.load(Ordering::Relaxed)
    }

    /// The encoder made frame `seq`, an IDR or not.
    fn made(&self, now: Instant, seq: u64, keyframe: bool) {
        self.next_seq.store(seq + 1, Ordering::Relaxed);
        if !keyframe {
            return;
        }
        // Requests up to this frame are served.
        let _ = self
            .keyframe_from
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| {
                (f <= seq).then_some(u64::MAX)
            });
        self.keyframe_loss.store(false, Ordering::Relaxed);
        if let Ok(mut l) = self.idrs.lock() {
            l.last = Some(now);
            l.total += 1;
            l.at.push_back(now);
            while l
                .at
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) > Duration::from_secs(60))
            {
                l.at.pop_front();
            }
        }
    }

    /// IDRs made over the last minute.
    pub fn idrs_per_minute(&self, now: Instant) -> usize {
        self.idrs.lock().map_or(0, |l| {
            l.at.iter()
                .filter(|t| now.saturating_duration_since(**t) <= Duration::from_secs(60))
                .count()
        })
    }

    /// IDRs made since the sender started.
    pub fn idrs(&self) -> u64 {
        self.idrs.lock().map_or(0, |l| l.total)
    }

    pub fn name(&self) -> &'static str {
        if self.index == TOP {
            "full"
        } else {
            "half"
        }
    }
}

/// The renditions and their bounds.
pub struct Ladder {
    pub cfg: LadderConfig,
    pub renditions: [Rendition; RENDITIONS],
    /// Whether there is a half-size rendition (see `LADDER_MIN_WIDTH`).
    pub has_low: bool,
}

impl Ladder {
    pub fn new(cfg: LadderConfig, width: u32, height: u32) -> Self {
        let (hw, hh) = half_size(width, height);
        Self {
            cfg,
            renditions: [
                Rendition::new(TOP, width, height, cfg.ceiling),
                Rendition::new(LOW, hw, hh, cfg.low_max()),
            ],
            has_low: width >= LADDER_MIN_WIDTH,
        }
    }

    /// Sets each rendition's bitrate from the targets of the viewers on it
    /// (`(rendition, target)` pairs).
    pub fn follow(&self, viewers: &[(usize, u64)]) {
        let rates = plan(&self.cfg, viewers);
        for (r, rate) in self.renditions.iter().zip(rates) {
            r.bitrate.store(rate, Ordering::Relaxed);
        }
    }
}

/// Bitrate per rendition: the top one the fastest viewer on it, the low one the slowest, within
/// their bounds. A rendition nobody watches keeps its bound (the top one its ceiling).
pub fn plan(cfg: &LadderConfig, viewers: &[(usize, u64)]) -> [u32; RENDITIONS] {
    let on = |r: usize| viewers.iter().filter(move |v| v.0 == r).map(|v| v.1);
    let top = on(TOP).max().map_or(cfg.ceiling as u64, |t| {
        t.clamp(cfg.top_min() as u64, cfg.ceiling as u64)
    });
    let low = on(LOW).min().map_or(cfg.low_max() as u64, |t| {
        t.clamp(cfg.floor as u64, cfg.low_max() as u64)
    });
    [top as u32, low as u32]
}

/// A picture for the half-size encoder.
struct LowJob {
    picture: Arc<I420>,
    seq: u64,
    capture_us: u64,
}

/// Runs the half-size encoder on its own thread (the two encode in parallel). It starts when a
/// viewer moves to it (its first frame is an IDR) and stops when the last one leaves.
pub struct LowEncoder {
    jobs: Option<std_mpsc::SyncSender<Option<LowJob>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    running: bool,
}

impl LowEncoder {
    pub fn spawn(
        ladder: Arc<Ladder>,
        fps: u32,
        threads: u32,
        frames: broadcast::Sender<Arc<EncodedFrame>>,
    ) -> Result<Self, PipelineError> {
        // One picture queued at most: the top encoder waits rather than the two drifting apart
        // (both must make every frame number, or a viewer moving between them sees a gap).
        let (tx, rx) = std_mpsc::sync_channel::<Option<LowJob>>(1);
        let thread = std::thread::Builder::new()
            .name("encode-half".into())
            .spawn(move || low_loop(rx, &ladder, fps, threads, &frames))
            .map_err(|e| PipelineError::Other(e.to_string()))?;
        Ok(Self {
            jobs: Some(tx),
            thread: Some(thread),
            running: false,
        })
    }

    /// Hands over frame `seq` when some viewer is on the half-size rendition.
    pub fn feed(&mut self, ladder: &Ladder, picture: Arc<I420>, seq: u64, capture_us: u64) {
        let Some(tx) = &self.jobs else { return };
        let wanted = ladder.renditions[LOW].users.load(Ordering::Relaxed) > 0;
        let job = match (wanted, self.running) {
            (true, _) => Some(LowJob {
                picture,
                seq,
                capture_us,
            }),
            (false, true) => None,
            (false, false) => return,
        };
        self.running = wanted;
        if tx.send(job).is_err() {
            self.jobs = None;
        }
    }

    pub fn stop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for LowEncoder {
    fn drop(&mut self) {
        self.stop();
    }
}

fn low_loop(
    jobs: std_mpsc::Receiver<Option<LowJob>>,
    ladder: &Ladder,
    fps: u32,
    threads: u32,
    frames: &broadcast::Sender<Arc<EncodedFrame>>,
) {
    let r = &ladder.renditions[LOW];
    let top = &ladder.renditions[TOP];
    let mut halver = match Halver::new(top.width, top.height) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!("no half-size rendition (scaler: {e})");
            return;
        }
    };
    let mut encoder: Option<Encoder> = None;
    while let Ok(job) = jobs.recv() {
        let Some(job) = job else {
            // Nobody on it: stop; a later viewer starts it again from an IDR.
            encoder = None;
            tracing::debug!("half-size rendition stopped");
            continue;
        };
        let half = match halver.half(&job.picture) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!("half-size rendition: {e}");
                return;
            }
        };
        let bitrate = r.bitrate.load(Ordering::Relaxed);
        let enc = match &mut encoder {
            Some(e) => e,
            None => match Encoder::new(EncoderConfig {
                width: half.width,
                height: half.height,
                fps,
                bitrate,
                threads,
            }) {
                Ok(e) => {
                    tracing::debug!(seq = job.seq, "half-size rendition started");
                    encoder.insert(e)
                }
                Err(e) => {
                    tracing::warn!("cannot start the half-size encoder: {e}");
                    return;
                }
            },
        };
        enc.set_bitrate(bitrate);
        let now = Instant::now();
        let force = r.wants_keyframe(now, job.seq);
        match enc.encode(&half, job.seq, job.capture_us, force) {
            Ok(Some(mut frame)) => {
                frame.rendition = LOW as u8;
                r.made(now, job.seq, frame.keyframe);
                let _ = frames.send(Arc::new(frame));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!("half-size encoder: {e}");
                return;
            }
        }
    }
}

/// Encodes one picture on the top rendition (on the capture thread).
pub fn encode_top(
    ladder: &Ladder,
    encoder: &mut Encoder,
    picture: &I420,
    seq: u64,
    capture_us: u64,
) -> Result<Option<EncodedFrame>, PipelineError> {
    let r = &ladder.renditions[TOP];
    encoder.set_bitrate(r.bitrate.load(Ordering::Relaxed));
    let now = Instant::now();
    let force = r.wants_keyframe(now, seq);
    let frame = encoder.encode(picture, seq, capture_us, force)?;
    match &frame {
        Some(f) => r.made(now, seq, f.keyframe),
        None => r.next_seq.store(seq + 1, Ordering::Relaxed),
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LadderConfig {
        LadderConfig::new(20_000_000)
    }

    #[test]
    fn the_top_follows_its_fastest_viewer_the_low_its_slowest() {
        let c = cfg();
        assert_eq!(plan(&c, &[]), [20_000_000, c.low_max()]);
        assert_eq!(
            plan(
                &c,
                &[
                    (TOP, 12_000_000),
                    (TOP, 18_000_000),
                    (LOW, 2_000_000),
                    (LOW, 3_000_000)
                ]
            ),
            [18_000_000, 2_000_000]
        );
        // Within bounds.
        assert_eq!(plan(&c, &[(TOP, 1), (LOW, 1)]), [c.top_min(), c.floor]);
        assert_eq!(
            plan(&c, &[(TOP, u64::MAX), (LOW, u64::MAX)]),
            [20_000_000, c.low_max()]
        );
    }

    #[test]
    fn keyframes_at_a_frame_number_and_after_loss_rate_limited() {
        let r = Rendition::new(TOP, 64, 32, 1_000_000);
        let t0 = Instant::now();
        r.made(t0, 0, true);
        // A request from after the encoder's first IDR is not served by it.
        r.keyframe_at(5);
        r.made(t0, 1, true);
        assert!(!r.wants_keyframe(t0, 4));
        assert!(r.wants_keyframe(t0, 5));
        r.made(t0, 5, true);
        assert!(!r.wants_keyframe(t0, 6), "served");
        // Losses: not within `LOSS_IDR_GAP` of the last IDR, then one.
        r.keyframe_after_loss();
        assert!(!r.wants_keyframe(t0 + LOSS_IDR_GAP / 2, 20));
        let later = t0 + LOSS_IDR_GAP + Duration::from_millis(100);
        assert!(r.wants_keyframe(later, 33));
        r.made(later, 33, true);
        assert!(!r.wants_keyframe(later, 34));
        assert_eq!(r.idrs_per_minute(later), 4);
        assert_eq!(r.idrs(), 4);
        assert_eq!(r.idrs_per_minute(t0 + Duration::from_secs(62)), 0);
    }

    #[test]
    fn small_pictures_have_one_rendition() {
        assert!(Ladder::new(cfg(), 1280, 640).has_low);
        assert!(!Ladder::new(cfg(), 640, 320).has_low);
    }
}
