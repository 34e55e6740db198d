//! `inclubit send`: capture → encode once → one QUIC connection per viewer, one stream per frame.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inclubit_rendezvous::client::{ClientEvent, Role};
use inclubit_rendezvous::code::RoomCode;
use inclubit_rendezvous::server::rooms::{RoomsConfig, TicketKey};
use inclubit_rendezvous::server::{Server, ServerConfig};
use inclubit_rendezvous::wire::media::{
    Codec, Control, FrameHeader, Projection, StreamHello, ViewerStats,
};
use inclubit_rendezvous::wire::signal::{Claim, RoomTicket, WebSide};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use super::stats::{Percentiles, RateMeter, StatsLine};
use super::PipelineError;
use crate::capture::{self, CaptureConfig, SourceSpec};
use crate::clock;
use crate::encode::{EncodedFrame, Encoder, EncoderConfig};
use crate::net::candidates::host_candidates;
use crate::net::control::read_control;
use crate::net::paths::PathManager;
use crate::net::portmap::{self, PortMapper};
use crate::net::punch::PunchConfig;
use crate::net::signal::Signalling;
use crate::net::{Identity, Impairment, NetError, PathPolicy, PeerEndpoint};
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
    /// The embedded rendezvous's ticket key (kept across restarts by the caller).
    pub ticket_key: Option<TicketKey>,
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
            ticket_key: None,
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

/// State shared by the encoder thread and the viewer tasks.
struct Shared {
    want_keyframe: AtomicBool,
    stop: AtomicBool,
    hello: StreamHello,
    next_seq: AtomicU64,
    budget: Duration,
    viewers: Mutex<Vec<ViewerSlot>>,
    encoded: Mutex<(RateMeter, u64)>,
}

struct ViewerSlot {
    id: usize,
    conn: quinn::Connection,
    stats: ViewerStats,
    skipped: u64,
}

impl Shared {
    fn request_keyframe(&self) {
        self.want_keyframe.store(true, Ordering::Relaxed);
    }

    /// A viewer is connected from this (virtual) address.
    fn is_connected(&self, addr: SocketAddr) -> bool {
        let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        self.viewers.lock().is_ok_and(|v| {
            v.iter()
                .any(|s| canonical(s.conn.remote_address()) == canonical(addr))
        })
    }
}

/// A running sender.
pub struct SendSession {
    pub code: RoomCode,
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
}

pub async fn start(cfg: SendConfig) -> Result<SendSession, PipelineError> {
    // The source first: a missing camera or file fails before anything touches the network.
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

    let identity = Identity::generate()?;
    let ep = PeerEndpoint::bind(cfg.bind, Some(&identity), cfg.impairment.clone())?;

    let (rendezvous, embedded, server_task) = match cfg.rendezvous {
        Some(addr) => (addr, false, None),
        None => {
            let (addr, task) =
                embed_rendezvous(cfg.bind, cfg.embedded_port, cfg.ticket_key).await?;
            (addr, true, Some(task))
        }
    };
    // Talk to an embedded rendezvous over loopback when bound to every interface.
    let signal_to = if embedded && rendezvous.ip().is_unspecified() {
        SocketAddr::new([127, 0, 0, 1].into(), rendezvous.port())
    } else {
        rendezvous
    };
    let hosts = host_candidates(ep.local_addr);
    // A router port mapping makes us reachable even behind a symmetric NAT. Nothing waits for
    // it: it is announced when it arrives, and punching moves to it.
    let mapping = portmap::wanted(cfg.no_upnp, cfg.bind, signal_to)
        .then(|| PortMapper::start(ep.local_addr.port()));
    let PeerEndpoint {
        endpoint,
        signal,
        local_addr,
        socket,
    } = ep;
    let media_socket = socket.clone();
    // Viewers that cannot reach us directly come through the rendezvous relay.
    socket.set_relay_server(signal_to);
    socket.set_relay_allowed(cfg.paths != PathPolicy::DirectOnly);
    let (paths, peer_sink) = PathManager::start(socket.clone(), cfg.punch.clone(), None, None);
    let (signalling, mut events) = Signalling::spawn(
        signal,
        signal_to,
        Role::Sender {
            hosts: hosts.clone(),
            fingerprint: identity.fingerprint(),
            claim: cfg.claim,
            direct_only: cfg.paths == PathPolicy::DirectOnly,
        },
        Some(peer_sink),
    );
    let (code, web, ticket) = match events.recv().await {
        Some(ClientEvent::Opened {
            code,
            reflexive,
            web,
            ticket,
        }) => {
            tracing::debug!(%code, %reflexive, "room opened");
            if let Some(c) = cfg.claim.filter(|c| c.code != code) {
                tracing::warn!(
                    "the rendezvous does not recognise the ticket of {} (it restarted with a new \
                     key); this stream has a new code",
                    c.code
                );
            }
            (code, web, ticket)
        }
        Some(ClientEvent::Refused(kind)) => return Err(NetError::Refused(kind).into()),
        _ => return Err(NetError::Unreachable(signal_to).into()),
    };
    // What to tell viewers: a concrete address for the embedded rendezvous.
    let advertised = if embedded && rendezvous.ip().is_unspecified() {
        hosts
            .iter()
            .find(|a| a.is_ipv4())
            .map(|a| SocketAddr::new(a.ip(), rendezvous.port()))
            .unwrap_or(signal_to)
    } else {
        rendezvous
    };

    let shared = Arc::new(Shared {
        want_keyframe: AtomicBool::new(true),
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
        next_seq: AtomicU64::new(0),
        budget: cfg.latency_budget,
        viewers: Mutex::new(Vec::new()),
        encoded: Mutex::new((RateMeter::default(), 0)),
    });
    let (frames_tx, _) = broadcast::channel::<Arc<EncodedFrame>>(16);
    let (done_tx, done) = watch::channel(false);

    let enc_thread = {
        let shared = shared.clone();
        let frames_tx = frames_tx.clone();
        let max = cfg.max_frames;
        let log = cfg.frame_log.clone();
        std::thread::Builder::new()
            .name("capture+encode".into())
            .spawn(move || {
                let r = encode_loop(source, encoder, &shared, &frames_tx, max, log);
                let _ = done_tx.send(true);
                r
            })
            .map_err(|e| PipelineError::Other(e.to_string()))?
    };

    if let Some(m) = &mapping {
        portmap::spawn_announcer(m, hosts.clone(), signalling.hosts_updater(), paths.clone());
    }
    // Punch towards every viewer the rendezvous tells us about; stop for those who left.
    let punch = cfg.paths != PathPolicy::RelayOnly;
    let peers_task = {
        let (shared, socket) = (shared.clone(), media_socket.clone());
        tokio::spawn(async move {
            // Viewers from before the room was re-opened (the rendezvous restarted) are not in
            // the new room's lists, but their streams go on: their paths stay while they are
            // connected.
            let mut listed: Vec<u64> = Vec::new();
            let mut carried: Vec<u64> = Vec::new();
            while let Some(ev) = events.recv().await {
                match ev {
                    ClientEvent::Viewers(list) => {
                        if punch {
                            for v in &list {
                                paths.add_peer(v.relay, v.secret, &v.candidates);
                            }
                        }
                        listed = list.iter().map(|v| v.relay).collect();
                        carried.retain(|r| shared.is_connected(socket.relay_peer(*r)));
                        paths.retain(&[&listed[..], &carried[..]].concat());
                    }
                    ClientEvent::Lost => tracing::warn!("rendezvous not answering; streams go on"),
                    ClientEvent::Restored => tracing::info!("rendezvous answering again"),
                    ClientEvent::RoomGone => {
                        tracing::warn!(
                            "the rendezvous forgot this room (restarted?); re-opening it"
                        )
                    }
                    // Re-opening was refused (e.g. the server is full): say so, the stream goes on.
                    ClientEvent::Refused(kind) => tracing::warn!(
                        "the rendezvous refused to re-open this room ({kind}); new viewers cannot \
                         join, the current ones go on"
                    ),
                    ClientEvent::Opened { code: again, .. } => {
                        carried.append(&mut listed);
                        if again == code {
                            tracing::info!(%code, "room re-opened at the rendezvous; viewers can join again")
                        } else {
                            tracing::warn!(
                                "the rendezvous no longer knows this room's ticket: new code \
                                 {again}; viewers need the new code"
                            )
                        }
                    }
                    _ => {}
                }
            }
        })
    };
    let mut tasks = vec![
        peers_task,
        tokio::spawn(accept_loop(
            endpoint.clone(),
            shared.clone(),
            frames_tx,
            cfg.paths,
        )),
    ];
    tasks.extend(server_task);
    Ok(SendSession {
        code,
        ticket,
        rendezvous: advertised,
        embedded_rendezvous: embedded,
        web,
        media_addr: local_addr,
        shared,
        endpoint,
        signalling: Some(signalling),
        socket: media_socket,
        mapping,
        encoder: Some(enc_thread),
        tasks,
        done,
    })
}

async fn embed_rendezvous(
    bind: SocketAddr,
    port: u16,
    ticket_key: Option<TicketKey>,
) -> Result<(SocketAddr, JoinHandle<()>), PipelineError> {
    let cfg = |port| ServerConfig {
        listen: SocketAddr::new(bind.ip(), port),
        rooms: RoomsConfig {
            ticket_key,
            ..Default::default()
        },
    };
    let server = match Server::bind(cfg(port)).await {
        Ok(s) => s,
        Err(e) if port != 0 => {
            tracing::info!("{e}; using another port");
            Server::bind(cfg(0)).await?
        }
        Err(e) => return Err(e.into()),
    };
    let addr = server.local_addr();
    Ok((addr, tokio::spawn(server.run())))
}

fn encode_loop(
    mut source: Box<dyn capture::FrameSource>,
    mut encoder: Encoder,
    shared: &Shared,
    frames: &broadcast::Sender<Arc<EncodedFrame>>,
    max: Option<u64>,
    log: Option<mpsc::UnboundedSender<FrameLog>>,
) -> Result<(), PipelineError> {
    // Keyframes on demand, but not more often than this: many lossy viewers must not turn the
    // stream into all-IDR.
    let min_idr_gap = Duration::from_millis(100);
    let mut last_idr: Option<Instant> = None;
    let mut seq = 0u64;
    while !shared.stop.load(Ordering::Relaxed) && max.is_none_or(|m| seq < m) {
        let captured = source.next_frame()?;
        let idr_ok = last_idr.is_none_or(|t| t.elapsed() >= min_idr_gap);
        let force = idr_ok && shared.want_keyframe.swap(false, Ordering::Relaxed);
        if let Some(frame) = encoder.encode(&captured.picture, seq, captured.capture_us, force)? {
            if frame.keyframe {
                last_idr = Some(Instant::now());
            }
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
            shared.next_seq.store(seq + 1, Ordering::Relaxed);
            // No receivers (no viewer yet) is fine.
            let _ = frames.send(Arc::new(frame));
        }
        seq += 1;
    }
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
            tracing::info!(%remote, id, "viewer connected");
            if let Ok(mut v) = shared.viewers.lock() {
                v.push(ViewerSlot {
                    id,
                    conn: conn.clone(),
                    stats: ViewerStats::default(),
                    skipped: 0,
                });
            }
            let r = serve_viewer(id, conn.clone(), &shared, rx).await;
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

async fn serve_viewer(
    id: usize,
    conn: quinn::Connection,
    shared: &Arc<Shared>,
    mut frames: broadcast::Receiver<Arc<EncodedFrame>>,
) -> Result<(), PipelineError> {
    let (mut ctrl_send, mut ctrl_recv) =
        tokio::time::timeout(Duration::from_secs(5), conn.accept_bi())
            .await
            .map_err(|_| PipelineError::Protocol("no control stream within 5 s".into()))?
            .map_err(|e| PipelineError::Connection(e.to_string()))?;
    match read_control(&mut ctrl_recv).await? {
        Some(Control::ViewerHello { name }) => tracing::debug!(id, %name, "hello"),
        other => {
            return Err(PipelineError::Protocol(format!(
                "expected hello, got {other:?}"
            )))
        }
    }
    let mut hello = shared.hello.clone();
    hello.next_seq = shared.next_seq.load(Ordering::Relaxed);
    ctrl_send
        .write_all(&Control::Hello(hello).frame())
        .await
        .map_err(|e| PipelineError::Connection(e.to_string()))?;
    // A viewer joining mid-stream needs an IDR to start.
    shared.request_keyframe();

    let (ctrl_tx, mut ctrl_rx) = mpsc::channel::<Control>(64);
    let reader = tokio::spawn(async move {
        while let Ok(Some(m)) = read_control(&mut ctrl_recv).await {
            if ctrl_tx.send(m).await.is_err() {
                break;
            }
        }
    });
    let (skip_tx, mut skip_rx) = mpsc::unbounded_channel::<u64>();
    let inflight = Arc::new(AtomicU64::new(0));
    let max_inflight = (shared.budget.as_secs_f64() * shared.hello.fps_milli as f64 / 1000.0)
        .ceil()
        .max(2.0) as u64;
    let mut waiting_key = true;
    let mut last_seq: Option<u64> = None;

    let result = loop {
        let mut skipped = Vec::new();
        tokio::select! {
            f = frames.recv() => match f {
                Ok(frame) => {
                    last_seq = Some(frame.seq);
                    let age = Duration::from_micros(clock::now_us().saturating_sub(frame.capture_us));
                    if waiting_key && !frame.keyframe {
                        skipped.push(frame.seq);
                    } else if age >= shared.budget || inflight.load(Ordering::Relaxed) >= max_inflight {
                        skipped.push(frame.seq);
                        waiting_key = true;
                    } else {
                        waiting_key = false;
                        let deadline = tokio::time::Instant::now() + (shared.budget - age);
                        tokio::spawn(send_frame(conn.clone(), frame, shared.hello.projection, deadline, skip_tx.clone(), inflight.clone()));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    // This viewer's task fell behind: its frames only are lost.
                    if let Some(l) = last_seq {
                        skipped.extend(l + 1..=l + n);
                        last_seq = Some(l + n);
                    }
                    waiting_key = true;
                }
                Err(broadcast::error::RecvError::Closed) => break Ok(()),
            },
            Some(seq) = skip_rx.recv() => {
                skipped.push(seq);
                waiting_key = true;
            }
            m = ctrl_rx.recv() => match m {
                Some(Control::KeyframeRequest) => {
                    waiting_key = true;
                    shared.request_keyframe();
                }
                Some(Control::Ping { viewer_us }) => {
                    let pong = Control::Pong { viewer_us, sender_us: clock::now_us() };
                    if let Err(e) = ctrl_send.write_all(&pong.frame()).await {
                        break Err(PipelineError::Connection(e.to_string()));
                    }
                }
                Some(Control::Stats(s)) => {
                    if let Ok(mut v) = shared.viewers.lock() {
                        if let Some(slot) = v.iter_mut().find(|s| s.id == id) {
                            slot.stats = s;
                        }
                    }
                }
                Some(other) => break Err(PipelineError::Protocol(format!("unexpected {other:?}"))),
                None => break Ok(()),
            },
            _ = conn.closed() => break Ok(()),
        }
        if !skipped.is_empty() {
            if waiting_key {
                shared.request_keyframe();
            }
            if let Ok(mut v) = shared.viewers.lock() {
                if let Some(slot) = v.iter_mut().find(|s| s.id == id) {
                    slot.skipped += skipped.len() as u64;
                }
            }
            for seq in skipped {
                if let Err(e) = ctrl_send.write_all(&Control::Skipped { seq }.frame()).await {
                    reader.abort();
                    return Err(PipelineError::Connection(e.to_string()));
                }
            }
        }
    };
    reader.abort();
    result
}

async fn send_frame(
    conn: quinn::Connection,
    frame: Arc<EncodedFrame>,
    projection: Projection,
    deadline: tokio::time::Instant,
    skipped: mpsc::UnboundedSender<u64>,
    inflight: Arc<AtomicU64>,
) {
    inflight.fetch_add(1, Ordering::Relaxed);
    let header = FrameHeader {
        seq: frame.seq,
        capture_us: frame.capture_us,
        keyframe: frame.keyframe,
        has_config: frame.keyframe,
        codec: Codec::H264,
        projection,
        width: frame.width as u16,
        height: frame.height as u16,
        payload_len: frame.data.len() as u32,
    };
    let ok = match tokio::time::timeout_at(deadline, conn.open_uni()).await {
        Ok(Ok(mut s)) => {
            let sent = tokio::time::timeout_at(deadline, async {
                s.write_all(&header.encode()).await.ok()?;
                s.write_all(&frame.data).await.ok()?;
                s.finish().ok()?;
                // Done when the viewer has acknowledged every byte.
                s.stopped().await.ok()
            })
            .await;
            match sent {
                Ok(Some(None)) => true,
                _ => {
                    // Too late or refused: abandon it rather than let it queue.
                    let _ = s.reset(1u32.into());
                    false
                }
            }
        }
        _ => false,
    };
    inflight.fetch_sub(1, Ordering::Relaxed);
    if !ok && conn.close_reason().is_none() {
        let _ = skipped.send(frame.seq);
    }
}

impl SendSession {
    /// The command a viewer runs.
    pub fn view_command(&self) -> String {
        format!(
            "inclubit view --rendezvous {} {}",
            self.rendezvous, self.code
        )
    }

    pub fn stats(&self) -> StatsLine {
        let (fps, bps, frames) = match self.shared.encoded.lock() {
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
        if let Ok(v) = self.shared.viewers.lock() {
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
                .map(|s| self.socket.path_name(&s.conn.remote_address()))
                .collect();
            paths.sort_unstable();
            paths.dedup();
            line.path = paths.join("+");
            line.latency_p50_ms = p50.get(100.0) as f64 / 1000.0;
            line.latency_p99_ms = p99.get(100.0) as f64 / 1000.0;
            if v.is_empty() {
                line.path = "-".into();
            }
        }
        line
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
        r
    }
}
