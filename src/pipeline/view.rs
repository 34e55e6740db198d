//! `inclubit view`: join by code → QUIC to the sender → reorder/recover → decode → render.
//!
//! Threads: tokio tasks for the network and the reorder core, one decoder thread, and one render
//! thread (headless) or the window's event loop on the main thread. Rendering reads the latest
//! decoded picture, so looking around never waits for video.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use inclubit_rendezvous::client::{ClientEvent, Role};
use inclubit_rendezvous::code::RoomCode;
use inclubit_rendezvous::wire::media::{
    Control, FrameHeader, StreamHello, ViewerStats, MAX_FRAME_LEN,
};
use tokio::sync::mpsc;

use super::send::read_control;
use super::stats::{Percentiles, RateMeter, StatsLine};
use super::PipelineError;
use crate::clock;
use crate::decode::Decoder;
use crate::net::candidates::host_candidates;
use crate::net::endpoint::{client_config, SERVER_NAME};
use crate::net::paths::{PathManager, PathObserver};
use crate::net::portmap::{self, PortMapper};
use crate::net::punch::{PunchConfig, PunchEvent};
use crate::net::reorder::{Output, Reorder, ReorderConfig};
use crate::net::signal::Signalling;
use crate::net::{Impairment, NetError, PathPolicy, PeerEndpoint};
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
    pub code: RoomCode,
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
    /// A frame this old (since capture) when its turn to decode comes is skipped, up to the
    /// next keyframe, so a slow CPU costs frames rather than ever-growing latency.
    pub late_after: Duration,
    pub paths: PathPolicy,
    pub punch: PunchConfig,
    /// Check every decoded frame's test-card barcode against its sequence number.
    pub verify_testcard: bool,
    /// Skip the router port mapping.
    pub no_upnp: bool,
    pub name: String,
}

impl ViewConfig {
    pub fn new(code: RoomCode, rendezvous: SocketAddr) -> Self {
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
    /// `Some((ok, bad))` when checking test-card barcodes.
    pub verify: Option<(u64, u64)>,
    pub started: Option<Instant>,
    pub connected: Option<Duration>,
    pub first_frame: Option<Duration>,
    pub direct: Option<Duration>,
}

impl Metrics {
    pub fn line(&mut self) -> StatsLine {
        let now = Instant::now();
        let (_, bps) = self.received.rates(now);
        let (fps, _) = self.shown.rates(now);
        StatsLine {
            role: "view",
            fps,
            bitrate_mbps: bps / 1e6,
            rtt_ms: self.rtt.as_secs_f64() * 1000.0,
            latency_p50_ms: self.latency_us.get(50.0) as f64 / 1000.0,
            latency_p99_ms: self.latency_us.get(99.0) as f64 / 1000.0,
            dropped: self.dropped,
            frames: self.frames,
            viewers: None,
            path: self.path.clone(),
            verified: self.verify.map(|v| v.0),
            corrupt: self.verify.map(|v| v.1),
            connect_ms: self.connected.map(|d| d.as_secs_f64() * 1000.0),
            first_frame_ms: self.first_frame.map(|d| d.as_secs_f64() * 1000.0),
            direct_ms: self.direct.map(|d| d.as_secs_f64() * 1000.0),
        }
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

struct Arrival {
    header: FrameHeader,
    data: Bytes,
    received_us: u64,
}

struct ToDecode {
    seq: u64,
    keyframe: bool,
    data: Bytes,
    capture_us: u64,
    received_us: u64,
}

/// Joins the room and shows the stream until the sender stops, `max_frames` is reached or the
/// future is dropped. `metrics` (when given) is updated live for a stats line.
pub async fn run(cfg: ViewConfig, slot: FrameSlot) -> Result<ViewSummary, PipelineError> {
    if let Ok(mut m) = slot.metrics.lock() {
        m.started = Some(Instant::now());
    }
    let ep = PeerEndpoint::bind(cfg.bind, None, cfg.impairment.clone())?;
    let hosts = host_candidates(ep.local_addr);
    let mapping = portmap::wanted(cfg.no_upnp, cfg.bind, cfg.rendezvous)
        .then(|| PortMapper::start(ep.local_addr.port()));
    let PeerEndpoint {
        endpoint,
        signal,
        socket,
        ..
    } = ep;
    socket.set_relay_server(cfg.rendezvous);
    socket.set_relay_allowed(cfg.paths != PathPolicy::DirectOnly);
    let observer: PathObserver = {
        let events = cfg.events.clone();
        let socket = socket.clone();
        let metrics = slot.metrics.clone();
        Arc::new(move |virt, e| {
            let path = socket.path_name(&virt);
            if let Ok(mut m) = metrics.lock() {
                m.path = path.into();
                if matches!(e, PunchEvent::Direct { .. }) && m.direct.is_none() {
                    m.direct = m.started.map(|s| s.elapsed());
                }
            }
            if let (Some(tx), PunchEvent::Direct { .. } | PunchEvent::Lost { .. }) = (&events, e) {
                let _ = tx.send(ViewEvent::Path { path });
            }
        })
    };
    let (paths, peer_sink) =
        PathManager::start(socket.clone(), cfg.punch.clone(), Some(observer), None);
    let (signalling, mut signal_events) = Signalling::spawn(
        signal,
        cfg.rendezvous,
        Role::Viewer {
            code: cfg.code,
            hosts: hosts.clone(),
        },
        Some(peer_sink),
    );
    let own_hosts = hosts.clone();
    let (candidates, fingerprint, relay, secret, reflexive) = match signal_events.recv().await {
        Some(ClientEvent::Joined {
            sender,
            fingerprint,
            relay,
            secret,
            reflexive,
            ..
        }) => (sender, fingerprint, relay, secret, reflexive),
        Some(ClientEvent::Refused(kind)) => return Err(NetError::Refused(kind).into()),
        _ => return Err(NetError::Unreachable(cfg.rendezvous).into()),
    };
    // One address for the sender whatever the path: the socket carries it through the relay
    // until punching finds a direct path, then straight (see net::paths).
    let sender_addr = match cfg.paths {
        PathPolicy::RelayOnly => socket.relay_peer(relay),
        _ => paths.add_peer(relay, secret, &candidates),
    };
    if let Some(m) = &mapping {
        super::send::spawn_mapping_announcer(m, hosts, signalling.hosts_updater(), paths.clone());
    }
    // The sender's candidates can grow (its router mapping arrives late): punch there too.
    let candidate_updates = {
        let paths = paths.clone();
        let punch = cfg.paths != PathPolicy::RelayOnly;
        tokio::spawn(async move {
            while let Some(ev) = signal_events.recv().await {
                match ev {
                    ClientEvent::SenderCandidates(c) if punch => {
                        paths.add_peer(relay, secret, &c);
                    }
                    ClientEvent::RoomGone => tracing::debug!("the room is gone at the rendezvous"),
                    _ => {}
                }
            }
        })
    };
    let conn = match connect(
        &endpoint,
        client_config(fingerprint)?,
        sender_addr,
        cfg.connect_timeout,
    )
    .await
    {
        Err(PipelineError::Net(NetError::NoPath(_))) => {
            return Err(match cfg.paths {
                PathPolicy::DirectOnly => {
                    // The rendezvous lists the sender's host addresses, then the one it saw.
                    let theirs = match candidates.split_last() {
                        Some((seen, hosts)) => crate::net::describe_nat(hosts, *seen),
                        None => "unknown",
                    };
                    NetError::NoDirectPath {
                        ours: crate::net::describe_nat(&own_hosts, reflexive),
                        theirs,
                        candidates,
                    }
                }
                _ => NetError::NoPath(candidates),
            }
            .into());
        }
        r => r?,
    };
    let remote = conn.remote_address();
    let path = socket.path_name(&remote);
    let (mut ctrl_send, mut ctrl_recv) = conn
        .open_bi()
        .await
        .map_err(|e| PipelineError::Connection(e.to_string()))?;
    ctrl_send
        .write_all(
            &Control::ViewerHello {
                name: cfg.name.clone(),
            }
            .frame(),
        )
        .await
        .map_err(|e| PipelineError::Connection(e.to_string()))?;
    let hello = match tokio::time::timeout(Duration::from_secs(5), read_control(&mut ctrl_recv))
        .await
        .map_err(|_| PipelineError::Protocol("no hello from the sender".into()))??
    {
        Some(Control::Hello(h)) => h,
        other => {
            return Err(PipelineError::Protocol(format!(
                "expected hello, got {other:?}"
            )))
        }
    };
    tracing::info!(%remote, path, w = hello.width, h = hello.height, "connected to sender");
    if let Ok(mut h) = slot.hello.lock() {
        *h = Some(hello.clone());
    }
    if let Ok(mut m) = slot.metrics.lock() {
        m.path = path.into();
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

    let offset_us = Arc::new(AtomicI64::new(0));
    let late_drops = Arc::new(AtomicU64::new(0));
    let decoded_count = Arc::new(AtomicU64::new(0));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
    let (decode_err_tx, mut decode_err_rx) = mpsc::unbounded_channel::<()>();
    let (to_decoder, decoder_rx) = std::sync::mpsc::channel::<ToDecode>();

    // Decoder thread.
    let render_slot = FrameSlot {
        metrics: slot.metrics.clone(),
        ..Default::default()
    };
    let decoder_thread = {
        let events = cfg.events.clone();
        let slot = slot.clone();
        let render_slot = render_slot.clone();
        let max = cfg.max_frames;
        let count = decoded_count.clone();
        let display = cfg.display.clone();
        let done_tx = done_tx.clone();
        let late_after = cfg.late_after;
        let verify = cfg.verify_testcard;
        let late = late_drops.clone();
        std::thread::Builder::new()
            .name("decode".into())
            .spawn(move || -> Result<(), PipelineError> {
                let mut dec = Decoder::new()?;
                let mut skipping = false;
                while let Ok(item) = decoder_rx.recv() {
                    // Live beats complete: when decoding falls behind (a slow CPU), skip to
                    // the next keyframe instead of letting latency grow.
                    let age =
                        Duration::from_micros(clock::now_us().saturating_sub(item.capture_us));
                    if !item.keyframe && (skipping || age > late_after) {
                        if !skipping {
                            tracing::debug!(
                                seq = item.seq,
                                ?age,
                                "decoder behind; skipping to a keyframe"
                            );
                            let _ = decode_err_tx.send(());
                        }
                        skipping = true;
                        late.fetch_add(1, Ordering::Relaxed);
                        if let Some(tx) = &events {
                            let _ = tx.send(ViewEvent::Dropped { seq: item.seq });
                        }
                        continue;
                    }
                    skipping = false;
                    let started = Instant::now();
                    match dec.decode(&item.data) {
                        Ok(Some(pic)) => {
                            let decode_us = started.elapsed().as_micros() as u64;
                            let decoded_us = clock::now_us();
                            let pic = Arc::new(pic);
                            let n = count.fetch_add(1, Ordering::Relaxed) + 1;
                            let check = verify.then(|| {
                                crate::capture::testcard::read_barcode(&pic)
                                    == Some(item.seq as u32 & 0xFF_FFFF)
                            });
                            if let Ok(mut m) = slot.metrics.lock() {
                                m.frames = n;
                                if n == 1 {
                                    m.first_frame = m.started.map(|s| s.elapsed());
                                }
                                if let Some(ok) = check {
                                    let (good, bad) = m.verify.unwrap_or((0, 0));
                                    m.verify =
                                        Some(if ok { (good + 1, bad) } else { (good, bad + 1) });
                                }
                                m.shown.record(Instant::now(), 0);
                                if matches!(display, Display::None) {
                                    m.latency_us
                                        .record(decoded_us.saturating_sub(item.capture_us));
                                }
                            }
                            if let Some(tx) = &events {
                                let _ = tx.send(ViewEvent::Decoded {
                                    seq: item.seq,
                                    keyframe: item.keyframe,
                                    picture: pic.clone(),
                                    capture_us: item.capture_us,
                                    received_us: item.received_us,
                                    decoded_us,
                                    decode_us,
                                });
                            }
                            let latest = Latest {
                                seq: item.seq,
                                capture_us: item.capture_us,
                                picture: pic,
                            };
                            match display {
                                Display::Window(_) => slot.put(latest),
                                Display::Headless { .. } => render_slot.put(latest),
                                Display::None => {}
                            }
                            if max.is_some_and(|m| n >= m) {
                                let _ = done_tx.send(());
                                break;
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::debug!(seq = item.seq, "decode error: {e}");
                            let _ = decode_err_tx.send(());
                        }
                    }
                }
                render_slot.close();
                Ok(())
            })
            .map_err(|e| PipelineError::Other(e.to_string()))?
    };
    let render_thread = match &cfg.display {
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
    };

    // Control stream reader: skips and clock pongs.
    let (skip_tx, mut skip_rx) = mpsc::unbounded_channel::<u64>();
    let ctrl_reader = {
        let offset = offset_us.clone();
        let best_rtt = Arc::new(AtomicU64::new(u64::MAX));
        tokio::spawn(async move {
            loop {
                match read_control(&mut ctrl_recv).await {
                    Ok(Some(Control::Skipped { seq })) => {
                        let _ = skip_tx.send(seq);
                    }
                    Ok(Some(Control::Pong {
                        viewer_us,
                        sender_us,
                    })) => {
                        let now = clock::now_us();
                        let rtt = now.saturating_sub(viewer_us);
                        // Keep the estimate from the fastest round trip: least queueing error.
                        if rtt <= best_rtt.load(Ordering::Relaxed) {
                            best_rtt.store(rtt, Ordering::Relaxed);
                            let off = sender_us as i64 - (viewer_us + rtt / 2) as i64;
                            offset.store(off, Ordering::Relaxed);
                        }
                    }
                    Ok(Some(other)) => tracing::debug!("ignoring control {other:?}"),
                    Ok(None) | Err(_) => break,
                }
            }
        })
    };

    // Frame streams.
    let (arrival_tx, mut arrivals) = mpsc::unbounded_channel::<Arrival>();
    let acceptor = {
        let conn = conn.clone();
        let metrics = slot.metrics.clone();
        tokio::spawn(async move {
            while let Ok(mut recv) = conn.accept_uni().await {
                let tx = arrival_tx.clone();
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    let mut h = [0u8; FrameHeader::LEN];
                    if recv.read_exact(&mut h).await.is_err() {
                        return;
                    }
                    let Ok(header) = FrameHeader::decode(&h) else {
                        tracing::debug!("malformed frame header");
                        let _ = recv.stop(2u32.into());
                        return;
                    };
                    // Grows as bytes arrive: a header's claimed length costs nothing until the
                    // data is really there.
                    let want = header.payload_len as usize;
                    let data = match recv.read_to_end(want.min(MAX_FRAME_LEN)).await {
                        Ok(d) if d.len() == want => d,
                        Ok(_) => {
                            tracing::debug!(
                                seq = header.seq,
                                "frame shorter or longer than its header"
                            );
                            return;
                        }
                        // Reset by the sender (too late), too long, or the connection went away.
                        Err(_) => return,
                    };
                    if let Ok(mut m) = metrics.lock() {
                        m.received
                            .record(Instant::now(), (data.len() + FrameHeader::LEN) as u64);
                    }
                    let _ = tx.send(Arrival {
                        header,
                        data: Bytes::from(data),
                        received_us: clock::now_us(),
                    });
                });
            }
        })
    };

    // Ping / stats to the sender.
    let (ctrl_out_tx, mut ctrl_out_rx) = mpsc::unbounded_channel::<Control>();
    let writer = tokio::spawn(async move {
        while let Some(m) = ctrl_out_rx.recv().await {
            if ctrl_send.write_all(&m.frame()).await.is_err() {
                break;
            }
        }
    });

    let mut reorder = Reorder::<(Bytes, u64, u64)>::new(cfg.reorder.clone());
    let mut ping = tokio::time::interval(Duration::from_millis(500));
    let mut dropped = 0u64;
    // Stopped here (frames reached, window closed) rather than by the sender going away.
    let mut local_stop = false;
    loop {
        let timeout = reorder.poll_timeout();
        tokio::select! {
            a = arrivals.recv() => {
                let Some(a) = a else { break };
                let off = offset_us.load(Ordering::Relaxed);
                let capture = (a.header.capture_us as i64 - off).max(0) as u64;
                reorder.handle_frame(Instant::now(), a.header.seq, a.header.keyframe, (a.data, capture, a.received_us));
            }
            Some(seq) = skip_rx.recv() => reorder.handle_skipped(Instant::now(), seq),
            Some(()) = decode_err_rx.recv() => reorder.handle_decode_error(Instant::now()),
            _ = async {
                match timeout {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            } => reorder.handle_timeout(Instant::now()),
            _ = ping.tick() => {
                let _ = ctrl_out_tx.send(Control::Ping { viewer_us: clock::now_us() });
                let stats = match slot.metrics.lock() {
                    Ok(mut m) => {
                        m.rtt = conn.rtt();
                        m.path = socket.path_name(&remote).into();
                        m.dropped = dropped + late_drops.load(Ordering::Relaxed);
                        ViewerStats {
                            frames_shown: m.frames,
                            frames_dropped: m.dropped,
                            latency_p50_us: m.latency_us.get(50.0) as u32,
                            latency_p99_us: m.latency_us.get(99.0) as u32,
                        }
                    }
                    Err(_) => ViewerStats::default(),
                };
                let _ = ctrl_out_tx.send(Control::Stats(stats));
            }
            _ = done_rx.recv() => {
                local_stop = true;
                break;
            }
            _ = slot.closed() => {
                local_stop = true;
                break;
            }
            _ = conn.closed() => break
        }
        while let Some(o) = reorder.poll_output() {
            match o {
                Output::Deliver {
                    seq,
                    keyframe,
                    frame: (data, capture_us, received_us),
                } => {
                    let _ = to_decoder.send(ToDecode {
                        seq,
                        keyframe,
                        data,
                        capture_us,
                        received_us,
                    });
                }
                Output::RequestKeyframe => {
                    let _ = ctrl_out_tx.send(Control::KeyframeRequest);
                    emit(ViewEvent::KeyframeRequested);
                }
                Output::Dropped { seq } => {
                    // Frames before the first keyframe of a mid-stream join are not losses.
                    if decoded_count.load(Ordering::Relaxed) > 0 {
                        dropped += 1;
                    }
                    emit(ViewEvent::Dropped { seq });
                }
            }
        }
    }
    let reason = conn.close_reason();
    let sender_ended = !local_stop && reason.is_some();
    conn.close(0u32.into(), b"viewer done");
    drop(to_decoder);
    acceptor.abort();
    ctrl_reader.abort();
    writer.abort();
    candidate_updates.abort();
    signalling.leave().await;
    if let Some(m) = mapping {
        m.stop().await;
    }
    let frames = decoded_count.load(Ordering::Relaxed);
    let dropped = dropped + late_drops.load(Ordering::Relaxed);
    let dec = tokio::task::spawn_blocking(move || decoder_thread.join())
        .await
        .map_err(|e| PipelineError::Other(e.to_string()))?;
    match dec {
        Ok(r) => r?,
        Err(_) => return Err(PipelineError::Other("decoder thread panicked".into())),
    }
    render_slot.close();
    if let Some(t) = render_thread {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    slot.close();
    endpoint.close(0u32.into(), b"bye");
    if sender_ended {
        match reason {
            Some(quinn::ConnectionError::ApplicationClosed(_)) | None => {}
            Some(e) => return Err(PipelineError::Connection(format!("lost the sender: {e}"))),
        }
    }
    Ok(ViewSummary {
        frames,
        dropped,
        sender_ended,
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
        if probes.is_empty() {
            if let Err(e) = off.render(&ViewParams::default()) {
                tracing::warn!("render failed: {e}");
                return;
            }
        }
        for (i, view) in probes.iter().enumerate() {
            match off.render_rgba(view) {
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

/// Dials the sender's (virtual) address; which path carries it is the socket's business.
async fn connect(
    endpoint: &quinn::Endpoint,
    cfg: quinn::ClientConfig,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<quinn::Connection, PipelineError> {
    let attempt = async {
        endpoint
            .connect_with(cfg, addr, SERVER_NAME)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(conn)) => Ok(conn),
        // A certificate that does not match the one announced: say so, it is not a path issue.
        Ok(Err(e)) if e.contains("certificate") => Err(PipelineError::Connection(e)),
        Ok(Err(e)) => {
            tracing::debug!("connect failed: {e}");
            Err(NetError::NoPath(vec![addr]).into())
        }
        Err(_) => Err(NetError::NoPath(vec![addr]).into()),
    }
}
