//! `inclubit view`: join by code → QUIC to the sender → reorder/recover → decode → render.
//!
//! Threads: tokio tasks for the network and the reorder core, one decoder thread, and one render
//! thread (headless) or the window's event loop on the main thread. Rendering reads the latest
//! decoded picture, so looking around never waits for video.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use inclubit_rendezvous::code::PairingCode;
use inclubit_rendezvous::wire::media::{Preference, StreamHello, ViewerStats};
use tokio::sync::mpsc;

use super::decoding::DecodeStage;
use super::stats::{Percentiles, RateMeter, StatsLine};
use super::PipelineError;
use crate::clock;
use crate::net::punch::{PunchConfig, PunchEvent};
use crate::net::reorder::ReorderConfig;
use crate::net::subscribe::{
    subscribe, Delivered, StatsFn, SubEnd, SubEvent, SubscribeConfig, Subscription,
};
use crate::net::{Impairment, PathPolicy};
use crate::picture::I420;
use crate::render::{Offscreen, ViewParams};

/// Where decoded pictures go.
#[derive(Clone)]
pub enum Display {
    /// Offscreen rendering at this size (`--headless`, tests).
    Headless { width: u32, height: u32 },
    /// A window on the main thread reads the latest picture from this slot.
    Window(FrameSlot),
    /// Decode only.
    None,
}

/// The latest decoded picture, for a renderer running at its own rate.
#[derive(Clone, Default)]
pub struct FrameSlot {
    inner: Arc<(Mutex<Option<Latest>>, Condvar)>,
    pub closed: Arc<AtomicBool>,
    closing: Arc<tokio::sync::Notify>,
    pub metrics: Arc<Mutex<Metrics>>,
    pub hello: Arc<Mutex<Option<StreamHello>>>,
}

/// A decoded picture and where it came from.
#[derive(Clone)]
pub struct Latest {
    pub seq: u64,
    /// Viewer-clock capture time, for glass-to-render latency.
    pub capture_us: u64,
    pub picture: Arc<I420>,
}

impl FrameSlot {
    pub fn put(&self, latest: Latest) {
        if let Ok(mut g) = self.inner.0.lock() {
            *g = Some(latest);
        }
        self.inner.1.notify_all();
    }

    /// The newest picture if it is newer than `after`.
    pub fn latest_after(&self, after: Option<u64>) -> Option<Latest> {
        let g = self.inner.0.lock().ok()?;
        g.as_ref()
            .filter(|l| after.is_none_or(|a| l.seq > a))
            .cloned()
    }

    /// Waits up to `timeout` for a picture newer than `after`.
    pub fn wait_after(&self, after: Option<u64>, timeout: Duration) -> Option<Latest> {
        let g = self.inner.0.lock().ok()?;
        let (g, _) = self
            .inner
            .1
            .wait_timeout_while(g, timeout, |v| {
                v.as_ref().is_none_or(|l| after.is_some_and(|a| l.seq <= a))
                    && !self.closed.load(Ordering::Relaxed)
            })
            .ok()?;
        g.as_ref()
            .filter(|l| after.is_none_or(|a| l.seq > a))
            .cloned()
    }

    /// Waits up to `timeout` for [`FrameSlot::close`]; true once closed.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let Ok(g) = self.inner.0.lock() else {
            return true;
        };
        let _ = self
            .inner
            .1
            .wait_timeout_while(g, timeout, |_| !self.closed.load(Ordering::Relaxed));
        self.closed.load(Ordering::Relaxed)
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.inner.1.notify_all();
        // A stored permit: the viewer loop sees it even if it is not waiting yet.
        self.closing.notify_one();
    }

    /// Resolves once [`FrameSlot::close`] has been called.
    pub async fn closed(&self) {
        while !self.closed.load(Ordering::Relaxed) {
            self.closing.notified().await;
        }
    }
}

#[derive(Clone)]
pub struct ViewConfig {
    pub code: PairingCode,
    pub rendezvous: SocketAddr,
    pub bind: SocketAddr,
    pub display: Display,
    /// Headless: also render these views after each picture and report them as events.
    pub probes: Vec<ViewParams>,
    /// Stop after this many decoded frames.
    pub max_frames: Option<u64>,
    pub events: Option<mpsc::UnboundedSender<ViewEvent>>,
    pub reorder: ReorderConfig,
    pub impairment: Option<Arc<dyn Impairment>>,
    pub connect_timeout: Duration,
    /// A frame that has waited this long here (since it arrived) when its turn to decode comes
    /// is skipped, up to the next keyframe, so a slow CPU costs frames rather than ever-growing
    /// latency.
    pub late_after: Duration,
    pub paths: PathPolicy,
    pub punch: PunchConfig,
    /// Check every decoded frame's test-card barcode against its sequence number.
    pub verify_testcard: bool,
    /// Skip the router port mapping.
    pub no_upnp: bool,
    pub name: String,
    /// After losing the sender (not a sender that ended the stream), join again for this long:
    /// a sender restarted with its code (`send --code`) comes back.
    pub rejoin: Option<Duration>,
    /// Asked of the sender: a rendition, a bitrate cap (by default it chooses by the path).
    pub prefer: Preference,
}

/// Between attempts to join again.
const REJOIN_RETRY: Duration = Duration::from_secs(1);

impl ViewConfig {
    pub fn new(code: PairingCode, rendezvous: SocketAddr) -> Self {
        Self {
            code,
            rendezvous,
            bind: "[::]:0".parse().expect("valid"),
            display: Display::Headless {
                width: 640,
                height: 480,
            },
            probes: Vec::new(),
            max_frames: None,
            events: None,
            reorder: ReorderConfig::default(),
            impairment: None,
            connect_timeout: Duration::from_secs(5),
            late_after: Duration::from_millis(300),
            paths: PathPolicy::Any,
            punch: PunchConfig::default(),
            verify_testcard: false,
            no_upnp: false,
            name: "inclubit-view".into(),
            rejoin: None,
            prefer: Preference::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub enum ViewEvent {
    Connected {
        remote: SocketAddr,
        hello: StreamHello,
    },
    Decoded {
        seq: u64,
        keyframe: bool,
        picture: Arc<I420>,
        /// Viewer-clock µs: capture (offset-corrected), all bytes received, decoded.
        capture_us: u64,
        received_us: u64,
        decoded_us: u64,
        /// Time inside the decoder.
        decode_us: u64,
    },
    /// A picture reached the screen (or the offscreen target): GPU work finished.
    Shown {
        seq: u64,
        rendered_us: u64,
    },
    Rendered {
        seq: u64,
        probe: usize,
        rgba: Arc<Vec<u8>>,
        width: u32,
        height: u32,
        rendered_us: u64,
    },
    Dropped {
        seq: u64,
    },
    KeyframeRequested,
    /// The path to the sender changed ("direct" or "relay").
    Path {
        path: &'static str,
    },
}

/// What `view --verify` found in the decoded pictures.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The picture shows its own frame number.
    pub ok: u64,
    /// It shows the number of the frame decoded just before: the encoder left that region
    /// as it was (x264 at a very low bitrate skips blocks whose change it cannot afford).
    pub stale: u64,
    /// Anything else: a wrong or unreadable number, what decoding on a broken reference gives.
    pub corrupt: u64,
}

/// Live counters of a viewer.
#[derive(Debug, Default)]
pub struct Metrics {
    pub received: RateMeter,
    pub shown: RateMeter,
    pub latency_us: Percentiles,
    pub frames: u64,
    pub dropped: u64,
    pub rtt: Duration,
    pub path: String,
    /// Counts of test-card barcode checks, when checking.
    pub verify: Option<Verified>,

    pub started: Option<Instant>,
    pub connected: Option<Duration>,
    pub first_frame: Option<Duration>,
    pub direct: Option<Duration>,
    /// Frames submitted to a headset, and its display periods that got none.
    pub headset: Option<RateMeter>,
    pub headset_missed: u64,
    /// When the newest picture was decoded, and its capture time (viewer clock, µs).
    pub last_picture: Option<(Instant, u64)>,
}

/// No new picture for this long is a stall, and the stats line says so.
pub const STALL_AFTER: Duration = Duration::from_secs(1);

impl Metrics {
    pub fn line(&mut self) -> StatsLine {
        self.line_at(Instant::now(), clock::now_us())
    }

    /// The stats line at `now` (`now_us` the same moment on the viewer clock).
    pub fn line_at(&mut self, now: Instant, now_us: u64) -> StatsLine {
        let (_, bps) = self.received.rates(now);
        let (fps, _) = self.shown.rates(now);
        let stall = self
            .last_picture
            .filter(|(at, _)| now.saturating_duration_since(*at) > STALL_AFTER);
        let (mut p50, mut p99) = (
            self.latency_us.get(50.0) as f64 / 1000.0,
            self.latency_us.get(99.0) as f64 / 1000.0,
        );
        if let Some((_, capture_us)) = stall {
            // What is on screen is this old, and getting older.
            let age = now_us.saturating_sub(capture_us) as f64 / 1000.0;
            (p50, p99) = (age.max(p50), age.max(p99));
        }
        StatsLine {
            role: "view",
            fps,
            bitrate_mbps: bps / 1e6,
            rtt_ms: self.rtt.as_secs_f64() * 1000.0,
            latency_p50_ms: p50,
            latency_p99_ms: p99,
            stalled_s: stall.map(|(at, _)| now.saturating_duration_since(at).as_secs_f64()),
            dropped: self.dropped,
            frames: self.frames,
            viewers: None,
            path: self.path.clone(),
            verified: self.verify.map(|v| v.ok),
            stale: self.verify.map(|v| v.stale).filter(|n| *n > 0),
            corrupt: self.verify.map(|v| v.corrupt),
            connect_ms: self.connected.map(|d| d.as_secs_f64() * 1000.0),
            first_frame_ms: self.first_frame.map(|d| d.as_secs_f64() * 1000.0),
            direct_ms: self.direct.map(|d| d.as_secs_f64() * 1000.0),
            headset_fps: self.headset.as_mut().map(|h| h.rates(now).0),
            headset_missed: self.headset.as_ref().map(|_| self.headset_missed),
            per_viewer: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_shows_as_a_stall_not_as_the_last_good_latency() {
        let now = Instant::now();
        let now_us = 100_000_000;
        let mut m = Metrics::default();
        for _ in 0..30 {
            m.latency_us.record(20_000);
        }
        m.last_picture = Some((now - Duration::from_millis(500), now_us - 520_000));
        let live = m.line_at(now, now_us);
        assert_eq!((live.stalled_s, live.latency_p50_ms), (None, 20.0));
        // Three seconds without a new picture: the one on screen is 3.02 s old.
        m.last_picture = Some((now - Duration::from_secs(3), now_us - 3_020_000));
        let stalled = m.line_at(now, now_us);
        assert_eq!(stalled.stalled_s, Some(3.0));
        assert_eq!(stalled.latency_p50_ms, 3020.0);
        assert!(stalled.render(false).contains("STALLED"));
    }
}

/// How a viewing session ended.
#[derive(Debug, Clone)]
pub struct ViewSummary {
    pub frames: u64,
    pub dropped: u64,
    /// True when the sender closed the stream (rather than `max_frames` being reached).
    pub sender_ended: bool,
}

pub async fn run(cfg: ViewConfig, slot: FrameSlot) -> Result<ViewSummary, PipelineError> {
    if let Ok(mut m) = slot.metrics.lock() {
        m.started = Some(Instant::now());
    }
    let counters = Counters::default();
    let stats = stats_reporter(&slot, counters.late.clone(), counters.dropped.clone());
    // The renderer first: a missing GPU fails before the network, and GPU start-up overlaps
    // the connection instead of delaying the first frames.
    let render_slot = FrameSlot {
        metrics: slot.metrics.clone(),
        hello: slot.hello.clone(),
        ..Default::default()
    };
    let render_thread = start_renderer(&cfg, &render_slot)?;

    let mut rejoin_until: Option<Instant> = None;
    let end = loop {
        let sub = subscribe(SubscribeConfig {
            code: cfg.code,
            rendezvous: cfg.rendezvous,
            bind: cfg.bind,
            reorder: cfg.reorder.clone(),
            impairment: cfg.impairment.clone(),
            connect_timeout: cfg.connect_timeout,
            paths: cfg.paths,
            punch: cfg.punch.clone(),
            no_upnp: cfg.no_upnp,
            name: cfg.name.clone(),
            stats: Some(stats.clone()),
            prefer: cfg.prefer,
        })
        .await;
        let sub = match sub {
            Ok(s) => s,
            // Rejoining after a lost sender: it may still be restarting (no room yet, no path).
            Err(e)
                if rejoin_until.is_some_and(|t| Instant::now() < t)
                    && !slot.closed.load(Ordering::Relaxed) =>
            {
                tracing::debug!("rejoining {}: {e}", cfg.code);
                tokio::select! {
                    _ = tokio::time::sleep(REJOIN_RETRY) => {}
                    _ = slot.closed() => {}
                }
                continue;
            }
            Err(e) => {
                // Let the renderer go (it waits for pictures that will never come), and wait for
                // it: exiting while it holds the GPU device crashed lavapipe (exit 139).
                render_slot.close();
                if let Some(t) = render_thread {
                    let _ = tokio::task::spawn_blocking(move || t.join()).await;
                }
                return Err(e.into());
            }
        };
        let (end, stopping) = play(&cfg, &slot, &render_slot, sub, &counters).await?;
        match (&end.lost, cfg.rejoin) {
            // Lost, not ended: the sender may be restarting (same code, `send --code`). Keep the
            // last picture up and join again.
            (Some(e), Some(window)) if !stopping => {
                tracing::warn!(
                    "lost the sender ({e}); rejoining {} for up to {window:?}",
                    cfg.code
                );
                rejoin_until = Some(Instant::now() + window);
                continue;
            }
            _ => break end,
        }
    };
    let frames = counters.decoded.load(Ordering::Relaxed);
    let dropped = counters.dropped.load(Ordering::Relaxed) + counters.late.load(Ordering::Relaxed);
    render_slot.close();
    if let Some(t) = render_thread {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    slot.close();
    if let Some(e) = end.lost {
        return Err(PipelineError::Connection(format!("lost the sender: {e}")));
    }
    Ok(ViewSummary {
        frames,
        dropped,
        sender_ended: end.sender_ended,
    })
}

/// The headless renderer's thread (the window and the headset render on the main thread),
/// once it holds a GPU device: a missing GPU fails here, before the network.
fn start_renderer(
    cfg: &ViewConfig,
    render_slot: &FrameSlot,
) -> Result<Option<std::thread::JoinHandle<()>>, PipelineError> {
    Ok(match &cfg.display {
        Display::Headless { width, height } => {
            let (w, h) = (*width, *height);
            let probes = cfg.probes.clone();
            let events = cfg.events.clone();
            let rslot = render_slot.clone();
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let t = std::thread::Builder::new()
                .name("render".into())
                .spawn(move || render_headless(rslot, w, h, probes, events, ready_tx))
                .map_err(|e| PipelineError::Other(e.to_string()))?;
            // Fail early and clearly when there is no GPU at all.
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(PipelineError::Other("render thread ended".into())),
            }
            Some(t)
        }
        _ => None,
    })
}

/// Frames decoded, and frames lost on the way or skipped for being late, over every
/// connection of one `run`.
#[derive(Default)]
struct Counters {
    decoded: Arc<AtomicU64>,
    late: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
}

/// One connection to the sender, from its hello to its end: frames to the decode stage, path
/// and loss events to the metrics. Returns how it ended and whether this side stopped it.
async fn play(
    cfg: &ViewConfig,
    slot: &FrameSlot,
    render_slot: &FrameSlot,
    sub: Subscription,
    counters: &Counters,
) -> Result<(SubEnd, bool), PipelineError> {
    let remote = sub.remote;
    let (hello, handle, mut sub_events, sub_task) = sub.into_parts();
    if let Ok(mut h) = slot.hello.lock() {
        *h = Some(hello.clone());
    }
    if let Ok(mut m) = slot.metrics.lock() {
        m.path = handle.path().into();
        m.connected = m.started.map(|s| s.elapsed());
    }
    let emit = |e: ViewEvent| {
        if let Some(tx) = &cfg.events {
            let _ = tx.send(e);
        }
    };
    emit(ViewEvent::Connected {
        remote,
        hello: hello.clone(),
    });

    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
    let (to_decoder, decoder_rx) = std::sync::mpsc::channel::<Delivered>();

    let decoder_thread = DecodeStage {
        events: cfg.events.clone(),
        slot: slot.clone(),
        render_slot: render_slot.clone(),
        display: cfg.display.clone(),
        max: cfg.max_frames,
        done: done_tx,
        count: counters.decoded.clone(),
        late: counters.late.clone(),
        late_after: cfg.late_after,
        verify: cfg.verify_testcard,
        handle: handle.clone(),
    }
    .spawn(decoder_rx)?;
    let mut stopping = false;
    loop {
        tokio::select! {
            ev = sub_events.recv() => {
                let Some(ev) = ev else { break };
                match ev {
                    SubEvent::Frame(f) => {
                        let _ = to_decoder.send(f);
                    }
                    SubEvent::Received { bytes } => {
                        if let Ok(mut m) = slot.metrics.lock() {
                            m.received.record(Instant::now(), bytes);
                        }
                    }
                    SubEvent::KeyframeRequested => emit(ViewEvent::KeyframeRequested),
                    // Watching goes on; the technician hands out the new code.
                    SubEvent::Rekeyed => tracing::info!("the sender drew a new code; this viewer stays"),
                    SubEvent::Dropped { seq } => {
                        // Frames before the first keyframe of a mid-stream join are not losses.
                        if counters.decoded.load(Ordering::Relaxed) > 0 {
                            counters.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        emit(ViewEvent::Dropped { seq });
                    }
                    SubEvent::Path { path, event, at } => {
                        if let Ok(mut m) = slot.metrics.lock() {
                            m.path = path.into();
                            if matches!(event, PunchEvent::Direct { .. }) && m.direct.is_none() {
                                m.direct = m.started.map(|s| at.duration_since(s));
                            }
                        }
                        if matches!(event, PunchEvent::Direct { .. } | PunchEvent::Lost { .. }) {
                            emit(ViewEvent::Path { path });
                        }
                    }
                }
            }
            _ = done_rx.recv(), if !stopping => {
                stopping = true;
                handle.stop();
            }
            _ = slot.closed(), if !stopping => {
                stopping = true;
                handle.stop();
            }
        }
    }
    let end = Subscription::finished(sub_task).await;
    drop(to_decoder);
    let dec = tokio::task::spawn_blocking(move || decoder_thread.join())
        .await
        .map_err(|e| PipelineError::Other(e.to_string()))?;
    match dec {
        Ok(r) => r?,
        Err(_) => return Err(PipelineError::Other("decoder thread panicked".into())),
    }
    Ok((end, stopping))
}

/// What the viewer reports to the sender every ping, from its metrics.
fn stats_reporter(slot: &FrameSlot, late: Arc<AtomicU64>, dropped: Arc<AtomicU64>) -> StatsFn {
    let metrics = slot.metrics.clone();
    Arc::new(move |rtt, path| match metrics.lock() {
        Ok(mut m) => {
            m.rtt = rtt;
            m.path = path.into();
            m.dropped = dropped.load(Ordering::Relaxed) + late.load(Ordering::Relaxed);
            ViewerStats {
                frames_shown: m.frames,
                frames_dropped: m.dropped,
                latency_p50_us: m.latency_us.get(50.0) as u32,
                latency_p99_us: m.latency_us.get(99.0) as u32,
            }
        }
        Err(_) => ViewerStats::default(),
    })
}

fn render_headless(
    slot: FrameSlot,
    width: u32,
    height: u32,
    probes: Vec<ViewParams>,
    events: Option<mpsc::UnboundedSender<ViewEvent>>,
    ready: std::sync::mpsc::Sender<Result<(), crate::render::RenderError>>,
) {
    let mut off = match Offscreen::new(width, height) {
        Ok(o) => {
            tracing::debug!(adapter = %o.gpu.adapter_name(), "headless renderer");
            let _ = ready.send(Ok(()));
            o
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut last = None;
    while !slot.closed.load(Ordering::Relaxed) {
        let Some(Latest {
            seq,
            capture_us,
            picture,
        }) = slot.wait_after(last, Duration::from_millis(100))
        else {
            continue;
        };
        last = Some(seq);
        off.upload(&picture);
        // The stream decides projection, orientation and lens; a probe only the pose.
        let hello = slot.hello.lock().ok().and_then(|h| h.clone());
        let scene = |v: &ViewParams| match &hello {
            Some(h) => v.with_hello(h),
            None => *v,
        };
        if probes.is_empty() {
            if let Err(e) = off.render(&scene(&ViewParams::default())) {
                tracing::warn!("render failed: {e}");
                return;
            }
        }
        for (i, view) in probes.iter().enumerate() {
            match off.render_rgba(&scene(view)) {
                Ok(rgba) => {
                    if let Some(tx) = &events {
                        let _ = tx.send(ViewEvent::Rendered {
                            seq,
                            probe: i,
                            rgba: Arc::new(rgba),
                            width,
                            height,
                            rendered_us: clock::now_us(),
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!("render failed: {e}");
                    return;
                }
            }
        }
        let rendered = clock::now_us();
        if let Some(tx) = &events {
            let _ = tx.send(ViewEvent::Shown {
                seq,
                rendered_us: rendered,
            });
        }
        if let Ok(mut m) = slot.metrics.lock() {
            m.latency_us.record(rendered.saturating_sub(capture_us));
        }
    }
}
