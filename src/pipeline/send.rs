//! `inclubit send`: capture → encode once → one QUIC connection per viewer, one stream per frame.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inclubit_rendezvous::code::{PairingCode, PairingSecret};
use inclubit_rendezvous::server::rooms::TicketKey;
use inclubit_rendezvous::wire::media::{Codec, Projection, StreamHello, ViewerStats};
use inclubit_rendezvous::wire::signal::{Claim, RoomTicket, WebSide};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use super::deliver::{self, ViewerRate};
use super::ladder::{self, Ladder, LadderConfig, LowEncoder};
use super::room::{follow_room, open_room};
use super::stats::{Percentiles, RateMeter, StatsLine, ViewerLine};
use super::PipelineError;
use crate::capture::{self, CaptureConfig, SourceSpec};
use crate::clock;
use crate::encode::{EncodedFrame, Encoder, EncoderConfig};
use crate::net::portmap::{self, PortMapper};
use crate::net::punch::PunchConfig;
use crate::net::signal::Signalling;
use crate::net::{Impairment, PathPolicy};
use crate::projection::FisheyeLens;

#[derive(Clone)]
pub struct SendConfig {
    pub source: SourceSpec,
    pub capture: CaptureConfig,
    /// Bits per second; `None` picks one for the size and rate.
    pub bitrate: Option<u32>,
    pub projection: Projection,
    /// Scene orientation correction (yaw, pitch, roll degrees), sent to viewers.
    pub orientation: [f32; 3],
    /// Lens geometry for dual-fisheye sources.
    pub lens: FisheyeLens,
    pub bind: SocketAddr,
    /// `None`: run an embedded rendezvous on `embedded_port`.
    pub rendezvous: Option<SocketAddr>,
    pub embedded_port: u16,
    /// A frame older than this is abandoned for a viewer rather than queued.
    pub latency_budget: Duration,
    /// Stop after this many frames (tests, benchmarks).
    pub max_frames: Option<u64>,
    pub encoder_threads: u32,
    pub impairment: Option<Arc<dyn Impairment>>,
    /// Which paths viewers may reach us on.
    pub paths: PathPolicy,
    pub punch: PunchConfig,
    /// Skip the router port mapping.
    pub no_upnp: bool,
    /// A record per encoded frame, for benchmarks.
    pub frame_log: Option<mpsc::UnboundedSender<FrameLog>>,
    /// Re-open this code (a restarted sender keeping its viewers' links).
    pub claim: Option<Claim>,
    /// The code's secret part (kept with `--code`); `None`: a new one.
    pub secret: Option<PairingSecret>,
    /// The embedded rendezvous's ticket key (kept across restarts by the caller).
    pub ticket_key: Option<TicketKey>,
    /// Write the full-size stream to this file as well (`.mkv` or `.mp4`).
    pub record: Option<std::path::PathBuf>,
}

impl Default for SendConfig {
    fn default() -> Self {
        Self {
            source: SourceSpec::TestCard,
            capture: CaptureConfig::default(),
            bitrate: None,
            projection: Projection::EquirectMono,
            orientation: [0.0; 3],
            lens: FisheyeLens::default(),
            bind: "[::]:0".parse().expect("valid"),
            rendezvous: None,
            embedded_port: 7000,
            latency_budget: Duration::from_millis(250),
            max_frames: None,
            encoder_threads: 0,
            impairment: None,
            paths: PathPolicy::Any,
            punch: PunchConfig::default(),
            no_upnp: false,
            frame_log: None,
            claim: None,
            secret: None,
            ticket_key: None,
            record: None,
        }
    }
}

/// When a frame was captured and encoded (wall-clock µs) and how long the encoder took.
#[derive(Debug, Clone, Copy)]
pub struct FrameLog {
    pub seq: u64,
    pub capture_us: u64,
    pub encoded_us: u64,
    pub encode_us: u64,
    pub bytes: usize,
    pub keyframe: bool,
}

/// State shared by the encoder threads and the viewer sessions.
pub(super) struct Shared {
    pub(super) stop: AtomicBool,
    pub(super) hello: StreamHello,
    pub(super) ladder: Arc<Ladder>,
    pub(super) budget: Duration,
    pub(super) viewers: Mutex<Vec<ViewerSlot>>,
    /// Frames and bytes of the full-size rendition.
    encoded: Mutex<(RateMeter, u64)>,
    /// The code viewers pair with now, and the pairings that failed since it was drawn.
    pairing: Mutex<(PairingCode, u32)>,
    /// Bumped at every new secret: viewer sessions tell their viewers (`Control::Rekeyed`).
    pub(super) rekeys: watch::Sender<u32>,
}

/// Failed pairings (wrong guesses, or someone between) before the code's secret is redrawn.
pub const REKEY_AFTER: u32 = 3;

pub(super) struct ViewerSlot {
    pub(super) id: usize,
    conn: quinn::Connection,
    pub(super) stats: ViewerStats,
    pub(super) skipped: u64,
    pub(super) sent_frames: u64,
    /// Its estimate, rendition and rates, once its session has measured them.
    pub(super) rate: Option<ViewerRate>,
}

impl Shared {
    /// The code viewers must bring now.
    pub(super) fn code(&self) -> Option<PairingCode> {
        self.pairing.lock().ok().map(|p| p.0)
    }

    /// A viewer failed to pair: counted, and after [`REKEY_AFTER`] the secret is redrawn (the
    /// technician is told the new code; viewers already watching stay).
    pub(super) fn pairing_failed(&self) {
        let Ok(mut p) = self.pairing.lock() else {
            return;
        };
        p.1 += 1;
        tracing::warn!(
            failed = p.1,
            "a viewer failed to pair: a wrong code, or someone between it and this sender"
        );
        if p.1 >= REKEY_AFTER {
            p.0.secret = PairingSecret::random(&mut rand::thread_rng());
            p.1 = 0;
            self.rekeys.send_modify(|n| *n += 1);
            tracing::warn!(
                "{REKEY_AFTER} failed pairings: the code is now {} (the old one no longer works)",
                p.0
            );
        }
    }

    /// One viewer's rates as its session last published them.
    pub(super) fn viewer_rate(&self, id: usize) -> Option<ViewerRate> {
        let v = self.viewers.lock().ok()?;
        v.iter().find(|s| s.id == id)?.rate
    }

    /// A viewer is connected from this (virtual) address.
    pub(super) fn is_connected(&self, addr: SocketAddr) -> bool {
        let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        self.viewers.lock().is_ok_and(|v| {
            v.iter()
                .any(|s| canonical(s.conn.remote_address()) == canonical(addr))
        })
    }
}

/// A running sender.
pub struct SendSession {
    /// The code as first printed; [`SendSession::code_now`] after failed pairings.
    pub code: PairingCode,
    /// Proof of ownership of `code` at this rendezvous: keep it to re-open the code later.
    pub ticket: RoomTicket,
    /// The rendezvous viewers should use.
    pub rendezvous: SocketAddr,
    /// True when this process runs the rendezvous.
    pub embedded_rendezvous: bool,
    /// The rendezvous serves browser viewers (same host, this port).
    pub web: Option<WebSide>,
    pub media_addr: SocketAddr,
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    signalling: Option<Signalling>,
    socket: Arc<crate::net::MediaSocket>,
    mapping: Option<PortMapper>,
    encoder: Option<std::thread::JoinHandle<Result<(), PipelineError>>>,
    tasks: Vec<JoinHandle<()>>,
    done: watch::Receiver<bool>,
    recorder: Option<super::record::Recorder>,
}

/// The source and its full-size encoder, at the configured (or default) bitrate.
async fn open_source(
    cfg: &SendConfig,
) -> Result<(Box<dyn capture::FrameSource>, Encoder, EncoderConfig), PipelineError> {
    let spec = cfg.source.clone();
    let capture_cfg = cfg.capture.clone();
    let source = tokio::task::spawn_blocking(move || capture::open(&spec, &capture_cfg))
        .await
        .map_err(|e| PipelineError::Other(e.to_string()))??;
    let (width, height) = source.size();
    let fps = source.fps().round().max(1.0) as u32;
    let enc_cfg = EncoderConfig {
        width,
        height,
        fps,
        bitrate: cfg
            .bitrate
            .unwrap_or_else(|| EncoderConfig::default_bitrate(width, height, fps)),
        threads: cfg.encoder_threads,
    };
    let encoder = Encoder::new(enc_cfg.clone())?;
    Ok((source, encoder, enc_cfg))
}

pub async fn start(cfg: SendConfig) -> Result<SendSession, PipelineError> {
    // The source first: a missing camera or file fails before anything touches the network.
    let (source, encoder, enc_cfg) = open_source(&cfg).await?;
    let (width, height, fps) = (enc_cfg.width, enc_cfg.height, enc_cfg.fps);
    let ladder = Arc::new(Ladder::new(
        LadderConfig::new(enc_cfg.bitrate),
        width,
        height,
    ));

    let room = open_room(&cfg).await?;
    let code = PairingCode {
        room: room.code,
        secret: cfg
            .secret
            .unwrap_or_else(|| PairingSecret::random(&mut rand::thread_rng())),
    };
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        hello: StreamHello {
            codec: Codec::H264,
            width: width as u16,
            height: height as u16,
            fps_milli: fps * 1000,
            projection: cfg.projection,
            bitrate: enc_cfg.bitrate,
            orientation_cdeg: cfg
                .orientation
                .map(|d| (d * 100.0).round().clamp(-18000.0, 18000.0) as i16),
            next_seq: 0,
            lens: cfg.lens.to_wire(),
        },
        ladder: ladder.clone(),
        budget: cfg.latency_budget,
        viewers: Mutex::new(Vec::new()),
        encoded: Mutex::new((RateMeter::default(), 0)),
        pairing: Mutex::new((code, 0)),
        rekeys: watch::channel(0).0,
    });
    let (frames_tx, _) = broadcast::channel::<Arc<EncodedFrame>>(16);
    let (done_tx, done) = watch::channel(false);
    let recorder = match &cfg.record {
        Some(path) => Some(super::record::Recorder::start(
            path,
            cfg.projection,
            cfg.orientation,
            frames_tx.subscribe(),
            ladder.clone(),
        )?),
        None => None,
    };

    let low = LowEncoder::spawn(ladder, fps, cfg.encoder_threads, frames_tx.clone())?;
    let enc_thread = {
        let shared = shared.clone();
        let frames_tx = frames_tx.clone();
        let max = cfg.max_frames;
        let log = cfg.frame_log.clone();
        std::thread::Builder::new()
            .name("capture+encode".into())
            .spawn(move || {
                let r = encode_loop(source, encoder, low, &shared, &frames_tx, max, log);
                let _ = done_tx.send(true);
                r
            })
            .map_err(|e| PipelineError::Other(e.to_string()))?
    };

    if let Some(m) = &room.mapping {
        portmap::spawn_announcer(
            m,
            room.hosts.clone(),
            room.signalling.hosts_updater(),
            room.paths.clone(),
        );
    }
    // Punch towards every viewer the rendezvous tells us about; stop for those who left.
    let peers_task = tokio::spawn(follow_room(
        room.events,
        room.paths,
        shared.clone(),
        room.socket.clone(),
        room.code,
        cfg.paths != PathPolicy::RelayOnly,
    ));
    let mut tasks = vec![
        peers_task,
        tokio::spawn(accept_loop(
            room.endpoint.clone(),
            shared.clone(),
            frames_tx,
            cfg.paths,
        )),
    ];
    tasks.extend(room.server_task);
    Ok(SendSession {
        code,
        ticket: room.ticket,
        rendezvous: room.advertised,
        embedded_rendezvous: room.embedded,
        web: room.web,
        media_addr: room.local_addr,
        shared,
        endpoint: room.endpoint,
        signalling: Some(room.signalling),
        socket: room.socket,
        mapping: room.mapping,
        encoder: Some(enc_thread),
        tasks,
        done,
        recorder,
    })
}

fn encode_loop(
    mut source: Box<dyn capture::FrameSource>,
    mut encoder: Encoder,
    mut low: LowEncoder,
    shared: &Shared,
    frames: &broadcast::Sender<Arc<EncodedFrame>>,
    max: Option<u64>,
    log: Option<mpsc::UnboundedSender<FrameLog>>,
) -> Result<(), PipelineError> {
    let mut seq = 0u64;
    while !shared.stop.load(Ordering::Relaxed) && max.is_none_or(|m| seq < m) {
        let captured = source.next_frame()?;
        let encoded = ladder::encode_top(
            &shared.ladder,
            &mut encoder,
            &captured.picture,
            seq,
            captured.capture_us,
        )?;
        if let Some(frame) = encoded {
            if let Some(log) = &log {
                let _ = log.send(FrameLog {
                    seq,
                    capture_us: frame.capture_us,
                    encoded_us: clock::now_us(),
                    encode_us: frame.encode_us as u64,
                    bytes: frame.data.len(),
                    keyframe: frame.keyframe,
                });
            }
            if let Ok(mut e) = shared.encoded.lock() {
                e.0.record(Instant::now(), frame.data.len() as u64);
                e.1 += 1;
            }
            // No receivers (no viewer yet) is fine.
            let _ = frames.send(Arc::new(frame));
        }
        low.feed(
            &shared.ladder,
            Arc::new(captured.picture),
            seq,
            captured.capture_us,
        );
        seq += 1;
    }
    low.stop();
    Ok(())
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    frames: broadcast::Sender<Arc<EncodedFrame>>,
    paths: PathPolicy,
) {
    let mut next_id = 0;
    while let Some(incoming) = endpoint.accept().await {
        let relayed = crate::net::is_relay_address(&incoming.remote_address());
        let allowed = match paths {
            PathPolicy::Any => true,
            PathPolicy::RelayOnly => relayed,
            PathPolicy::DirectOnly => !relayed,
        };
        if !allowed {
            tracing::info!(remote = %incoming.remote_address(), ?paths, "refusing a viewer on a forbidden path");
            incoming.refuse();
            continue;
        }
        next_id += 1;
        let id = next_id;
        let shared = shared.clone();
        let rx = frames.subscribe();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!("handshake failed: {e}");
                    return;
                }
            };
            let remote = conn.remote_address();
            let control = match deliver::pair_viewer(id, &conn, &shared).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::info!(%remote, id, "viewer refused: {e}");
                    conn.close(PAIRING_FAILED.into(), b"pairing failed");
                    return;
                }
            };
            tracing::info!(%remote, id, "viewer connected");
            if let Ok(mut v) = shared.viewers.lock() {
                v.push(ViewerSlot {
                    id,
                    conn: conn.clone(),
                    stats: ViewerStats::default(),
                    skipped: 0,
                    sent_frames: 0,
                    rate: None,
                });
            }
            let r = deliver::serve_viewer(id, conn.clone(), &shared, rx, control).await;
            if let Ok(mut v) = shared.viewers.lock() {
                v.retain(|s| s.id != id);
            }
            match r {
                Ok(()) => tracing::info!(%remote, id, "viewer left"),
                Err(e) => tracing::info!(%remote, id, "viewer dropped: {e}"),
            }
            conn.close(0u32.into(), b"bye");
        });
    }
}

/// QUIC close code for a viewer that did not pair.
const PAIRING_FAILED: u32 = 7;

impl SendSession {
    /// The code viewers must bring now (it changes after failed pairings).
    pub fn code_now(&self) -> PairingCode {
        self.shared.code().unwrap_or(self.code)
    }

    /// The command a viewer runs.
    pub fn view_command(&self) -> String {
        format!(
            "inclubit view --rendezvous {} {}",
            self.rendezvous,
            self.code_now()
        )
    }

    pub fn stats(&self) -> StatsLine {
        stats_of(&self.shared, &self.socket)
    }

    /// The stats line on demand, away from the session (a metrics server).
    pub fn stats_source(&self) -> impl Fn() -> StatsLine + Send + Sync + 'static {
        let (shared, socket) = (self.shared.clone(), self.socket.clone());
        move || stats_of(&shared, &socket)
    }

    /// Resolves when capture stops (`max_frames` reached or the source failed).
    pub async fn finished(&mut self) -> Result<(), PipelineError> {
        let _ = self.done.wait_for(|d| *d).await;
        self.join_encoder()
    }

    fn join_encoder(&mut self) -> Result<(), PipelineError> {
        match self.encoder.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(PipelineError::Other("encoder thread panicked".into())),
            None => Ok(()),
        }
    }

    /// Stops capture, says goodbye to viewers and the rendezvous.
    pub async fn stop(mut self) -> Result<(), PipelineError> {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Close viewers first, while their paths (punched or relayed) still exist, so the
        // goodbye reaches them; only then leave the room and tear the paths down.
        self.endpoint.close(0u32.into(), b"sender stopped");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        if let Some(s) = self.signalling.take() {
            s.leave().await;
        }
        if let Some(m) = self.mapping.take() {
            m.stop().await;
        }
        let r = tokio::task::block_in_place(|| self.join_encoder());
        for t in &self.tasks {
            t.abort();
        }
        // The channel closes with the encoder and the tasks gone: the file is finished.
        if let Some(rec) = self.recorder.take() {
            let written = tokio::task::block_in_place(|| rec.finish())?;
            tracing::info!(frames = written, "recording written");
        }
        r
    }
}

fn stats_of(shared: &Shared, socket: &crate::net::MediaSocket) -> StatsLine {
    let (fps, bps, frames) = match shared.encoded.lock() {
        Ok(mut e) => {
            let (f, b) = e.0.rates(Instant::now());
            (f, b, e.1)
        }
        Err(_) => (0.0, 0.0, 0),
    };
    let mut line = StatsLine {
        role: "send",
        fps,
        bitrate_mbps: bps / 1e6,
        frames,
        ..Default::default()
    };
    if let Ok(v) = shared.viewers.lock() {
        line.viewers = Some(v.len());
        let mut p50 = Percentiles::new(64);
        let mut p99 = Percentiles::new(64);
        let mut rtt = 0.0f64;
        for s in v.iter() {
            rtt = rtt.max(s.conn.rtt().as_secs_f64() * 1000.0);
            p50.record(s.stats.latency_p50_us as u64);
            p99.record(s.stats.latency_p99_us as u64);
            line.dropped += s.stats.frames_dropped.max(s.skipped);
        }
        line.rtt_ms = rtt;
        let mut paths: Vec<&str> = v
            .iter()
            .map(|s| socket.path_name(&s.conn.remote_address()))
            .collect();
        paths.sort_unstable();
        paths.dedup();
        line.path = paths.join("+");
        let now = Instant::now();
        let ladder = &shared.ladder;
        line.per_viewer = v
            .iter()
            .filter_map(|s| {
                let r = s.rate?;
                let rendition = &ladder.renditions[r.rendition];
                Some(ViewerLine {
                    id: s.id,
                    rendition: rendition.name(),
                    estimate_mbps: r.estimate as f64 / 1e6,
                    target_mbps: r.target as f64 / 1e6,
                    sent_mbps: r.sent / 1e6,
                    idr_per_min: rendition.idrs_per_minute(now),
                    idrs: rendition.idrs(),
                    queue_ms: r.queue.as_secs_f64() * 1000.0,
                    loss_pct: r.loss * 100.0,
                    path: socket.path_name(&s.conn.remote_address()),
                    rtt_ms: s.conn.rtt().as_secs_f64() * 1000.0,
                    frames_sent: s.sent_frames,
                    frames_skipped: s.skipped,
                })
            })
            .collect();
        line.latency_p50_ms = p50.get(100.0) as f64 / 1000.0;
        line.latency_p99_ms = p99.get(100.0) as f64 / 1000.0;
        if v.is_empty() {
            line.path = "-".into();
        }
    }
    line
}
