//! Joining a room as a viewer: rendezvous join, punching (or the relay), QUIC to the sender, the
//! control stream and in-order frame delivery. The native viewer decodes what comes out; the
//! browser bridge repacketises it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::candidates::host_candidates;
use super::control::{pair_as_viewer, read_control, SessionError};
use super::endpoint::{client_config, SERVER_NAME};
use super::paths::{PathManager, PathObserver};
use super::portmap::{self, PortMapper};
use super::punch::{PunchConfig, PunchEvent};
use super::reorder::{Output, Reorder, ReorderConfig};
use super::signal::Signalling;
use super::{Impairment, MediaSocket, NetError, PathPolicy, PeerEndpoint};
use crate::client::{ClientEvent, Role};
use crate::code::PairingCode;
use crate::wire::media::{
    Control, FrameArrival, FrameHeader, Preference, StreamHello, ViewerStats, MAX_FRAME_LEN,
};

/// How often frame arrivals are reported to the sender.
const FEEDBACK_EVERY: Duration = Duration::from_millis(50);

/// Builds the stats a viewer reports to the sender, from the current RTT and path name.
pub type StatsFn = Arc<dyn Fn(Duration, &'static str) -> ViewerStats + Send + Sync>;

#[derive(Clone)]
pub struct SubscribeConfig {
    /// The room to join and the secret to pair with its sender.
    pub code: PairingCode,
    pub rendezvous: SocketAddr,
    pub bind: SocketAddr,
    pub reorder: ReorderConfig,
    pub impairment: Option<Arc<dyn Impairment>>,
    pub connect_timeout: Duration,
    pub paths: PathPolicy,
    pub punch: PunchConfig,
    /// Skip the router port mapping.
    pub no_upnp: bool,
    /// Sent to the sender in the viewer hello (its logs name viewers by it).
    pub name: String,
    /// What to report to the sender every ping; `None` reports zeros.
    pub stats: Option<StatsFn>,
    /// Asked of the sender in the hello (the sender chooses, by default).
    pub prefer: Preference,
}

impl SubscribeConfig {
    pub fn new(code: PairingCode, rendezvous: SocketAddr) -> Self {
        Self {
            code,
            rendezvous,
            bind: "[::]:0".parse().expect("valid"),
            reorder: ReorderConfig::default(),
            impairment: None,
            connect_timeout: Duration::from_secs(5),
            paths: PathPolicy::Any,
            punch: PunchConfig::default(),
            no_upnp: false,
            name: "inclubit-view".into(),
            stats: None,
            prefer: Preference::default(),
        }
    }
}

/// A complete frame, in order, ready for a decoder.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub seq: u64,
    pub keyframe: bool,
    pub data: Bytes,
    /// Capture time on this machine's clock (corrected by the ping/pong offset), µs.
    pub capture_us: u64,
    /// When the last byte arrived, µs.
    pub received_us: u64,
}

#[derive(Debug, Clone)]
pub enum SubEvent {
    Frame(Delivered),
    /// A frame will never be delivered (lost, or skipped by the sender).
    Dropped {
        seq: u64,
    },
    /// A keyframe was asked of the sender after a loss.
    KeyframeRequested,
    /// Bytes of one frame arrived (header included), for rate meters.
    Received {
        bytes: u64,
    },
    /// The punching layer reported something; `path` is the path now in use.
    Path {
        path: &'static str,
        event: PunchEvent,
        at: Instant,
    },
    /// The sender drew a new secret: the code this subscription paired with no longer pairs.
    Rekeyed,
}

enum Command {
    DecodeError,
    RequestKeyframe,
    Prefer(Preference),
    Stop,
}

/// Talks to a running subscription; cheap to clone.
#[derive(Clone)]
pub struct SubHandle {
    commands: mpsc::UnboundedSender<Command>,
    conn: quinn::Connection,
    socket: Arc<MediaSocket>,
}

impl SubHandle {
    /// The decoder could not use a frame: wait for the next keyframe (and ask for one).
    pub fn decode_error(&self) {
        let _ = self.commands.send(Command::DecodeError);
    }

    /// A new consumer needs a keyframe soon (a browser joined).
    pub fn request_keyframe(&self) {
        let _ = self.commands.send(Command::RequestKeyframe);
    }

    /// Tells the sender what this viewer wants now (a rendition, a bitrate cap).
    pub fn prefer(&self, p: Preference) {
        let _ = self.commands.send(Command::Prefer(p));
    }

    /// Leave: the subscription closes the connection and ends.
    pub fn stop(&self) {
        let _ = self.commands.send(Command::Stop);
    }

    pub fn rtt(&self) -> Duration {
        self.conn.rtt()
    }

    /// "direct" or "relay".
    pub fn path(&self) -> &'static str {
        self.socket.path_name(&self.conn.remote_address())
    }
}

/// How a subscription ended.
#[derive(Debug)]
pub struct SubEnd {
    /// The sender closed the stream (rather than [`SubHandle::stop`]).
    pub sender_ended: bool,
    /// Why the connection was lost, when it was not closed on purpose.
    pub lost: Option<String>,
}

/// A live subscription to a room's stream.
pub struct Subscription {
    pub hello: StreamHello,
    pub remote: SocketAddr,
    pub handle: SubHandle,
    pub events: mpsc::UnboundedReceiver<SubEvent>,
    task: JoinHandle<SubEnd>,
}

impl Subscription {
    /// Waits for the subscription to end (after [`SubHandle::stop`] or the sender leaving).
    pub async fn finished(task: JoinHandle<SubEnd>) -> SubEnd {
        task.await.unwrap_or(SubEnd {
            sender_ended: false,
            lost: Some("subscription task failed".into()),
        })
    }

    /// Splits off the task handle for [`Subscription::finished`].
    pub fn into_parts(
        self,
    ) -> (
        StreamHello,
        SubHandle,
        mpsc::UnboundedReceiver<SubEvent>,
        JoinHandle<SubEnd>,
    ) {
        (self.hello, self.handle, self.events, self.task)
    }
}

struct Arrival {
    header: FrameHeader,
    data: Bytes,
    received_us: u64,
}

/// Joins `cfg.code`, connects to its sender and starts delivering frames.
pub async fn subscribe(cfg: SubscribeConfig) -> Result<Subscription, SessionError> {
    let (events_tx, events) = mpsc::unbounded_channel::<SubEvent>();
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
        let events = events_tx.clone();
        let socket = socket.clone();
        Arc::new(move |virt, e| {
            let _ = events.send(SubEvent::Path {
                path: socket.path_name(&virt),
                event: e.clone(),
                at: Instant::now(),
            });
        })
    };
    let (paths, peer_sink) =
        PathManager::start(socket.clone(), cfg.punch.clone(), Some(observer), None);
    let (signalling, mut signal_events) = Signalling::spawn(
        signal,
        cfg.rendezvous,
        Role::Viewer {
            code: cfg.code.room,
            hosts: hosts.clone(),
        },
        Some(peer_sink),
    );
    let own_hosts = hosts.clone();
    let (candidates, fingerprint, relay, secret, reflexive, sender_direct_only) =
        match signal_events.recv().await {
            Some(ClientEvent::Joined {
                sender,
                fingerprint,
                relay,
                secret,
                reflexive,
                sender_direct_only,
                ..
            }) => (
                sender,
                fingerprint,
                relay,
                secret,
                reflexive,
                sender_direct_only,
            ),
            Some(ClientEvent::Refused(kind)) => return Err(NetError::Refused(kind).into()),
            _ => return Err(NetError::Unreachable(cfg.rendezvous).into()),
        };
    // One address for the sender whatever the path: the socket carries it through the relay
    // until punching finds a direct path, then straight (see peer::paths).
    let sender_addr = match cfg.paths {
        PathPolicy::RelayOnly => socket.relay_peer(relay),
        _ => paths.add_peer(relay, secret, &candidates),
    };
    if let Some(m) = &mapping {
        portmap::spawn_announcer(m, hosts, signalling.hosts_updater(), paths.clone());
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
        Err(SessionError::Net(e @ (NetError::NoPath(_) | NetError::SenderRefused))) => {
            // The rendezvous lists the sender's host addresses, then the one it saw.
            let theirs = match candidates.split_last() {
                Some((seen, hosts)) => super::describe_nat(hosts, *seen),
                None => "unknown",
            };
            let ours = super::describe_nat(&own_hosts, reflexive);
            return Err(match (cfg.paths, e) {
                (PathPolicy::DirectOnly, _) => NetError::NoDirectPath {
                    ours,
                    theirs,
                    candidates,
                },
                _ if sender_direct_only => NetError::SenderDirectOnly {
                    ours,
                    theirs,
                    candidates,
                },
                (_, e @ NetError::SenderRefused) => e,
                _ => NetError::NoPath(candidates),
            }
            .into());
        }
        r => r?,
    };
    let remote = conn.remote_address();
    let (mut ctrl_send, mut ctrl_recv) = conn
        .open_bi()
        .await
        .map_err(|e| SessionError::Connection(e.to_string()))?;
    pair_as_viewer(
        &conn,
        &mut ctrl_send,
        &mut ctrl_recv,
        (cfg.name.clone(), cfg.prefer),
        cfg.code.secret,
    )
    .await?;
    let hello = match tokio::time::timeout(Duration::from_secs(5), read_control(&mut ctrl_recv))
        .await
        .map_err(|_| SessionError::Protocol("no hello from the sender".into()))??
    {
        Some(Control::Hello(h)) => h,
        other => {
            return Err(SessionError::Protocol(format!(
                "expected hello, got {other:?}"
            )))
        }
    };
    tracing::info!(%remote, path = socket.path_name(&remote), w = hello.width, h = hello.height, "connected to sender");

    let (commands, command_rx) = mpsc::unbounded_channel();
    let handle = SubHandle {
        commands,
        conn: conn.clone(),
        socket: socket.clone(),
    };
    let running = Running {
        conn,
        endpoint,
        signalling,
        mapping,
        candidate_updates,
        ctrl_send,
        ctrl_recv,
        events: events_tx,
        commands: command_rx,
        reorder: cfg.reorder.clone(),
        stats: cfg.stats.clone(),
        handle: handle.clone(),
    };
    Ok(Subscription {
        hello,
        remote,
        handle,
        events,
        task: tokio::spawn(running.run()),
    })
}

/// Everything a connected subscription owns.
struct Running {
    conn: quinn::Connection,
    endpoint: quinn::Endpoint,
    signalling: Signalling,
    mapping: Option<PortMapper>,
    candidate_updates: JoinHandle<()>,
    ctrl_send: quinn::SendStream,
    ctrl_recv: quinn::RecvStream,
    events: mpsc::UnboundedSender<SubEvent>,
    commands: mpsc::UnboundedReceiver<Command>,
    reorder: ReorderConfig,
    stats: Option<StatsFn>,
    handle: SubHandle,
}

impl Running {
    async fn run(self) -> SubEnd {
        let Running {
            conn,
            endpoint,
            signalling,
            mapping,
            candidate_updates,
            mut ctrl_send,
            mut ctrl_recv,
            events,
            mut commands,
            reorder,
            stats,
            handle,
        } = self;
        let offset_us = Arc::new(AtomicI64::new(0));

        // Control stream reader: skips and clock pongs.
        let (skip_tx, mut skip_rx) = mpsc::unbounded_channel::<u64>();
        let ctrl_reader = {
            let offset = offset_us.clone();
            let best_rtt = Arc::new(AtomicU64::new(u64::MAX));
            let events = events.clone();
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
                            let now = crate::clock::now_us();
                            let rtt = now.saturating_sub(viewer_us);
                            // Keep the estimate from the fastest round trip: least queueing error.
                            if rtt <= best_rtt.load(Ordering::Relaxed) {
                                best_rtt.store(rtt, Ordering::Relaxed);
                                let off = sender_us as i64 - (viewer_us + rtt / 2) as i64;
                                offset.store(off, Ordering::Relaxed);
                            }
                        }
                        Ok(Some(Control::Rekeyed)) => {
                            let _ = events.send(SubEvent::Rekeyed);
                        }
                        Ok(Some(other)) => tracing::debug!("ignoring control {other:?}"),
                        Ok(None) | Err(_) => break,
                    }
                }
            })
        };

        // Frame streams: one per frame.
        let (arrival_tx, mut arrivals) = mpsc::unbounded_channel::<Arrival>();
        let acceptor = {
            let conn = conn.clone();
            let events = events.clone();
            tokio::spawn(async move {
                while let Ok(recv) = conn.accept_uni().await {
                    tokio::spawn(read_frame(recv, arrival_tx.clone(), events.clone()));
                }
            })
        };

        // Ping and stats to the sender.
        let (ctrl_out_tx, mut ctrl_out_rx) = mpsc::unbounded_channel::<Control>();
        let writer = tokio::spawn(async move {
            while let Some(m) = ctrl_out_rx.recv().await {
                if ctrl_send.write_all(&m.frame()).await.is_err() {
                    break;
                }
            }
        });

        let mut reorder = Reorder::<(Bytes, u64, u64)>::new(reorder);
        let mut ping = tokio::time::interval(Duration::from_millis(500));
        // Frame arrivals go back to the sender in small batches, for its rate control.
        let mut arrived: Vec<FrameArrival> = Vec::new();
        let mut feedback = tokio::time::interval(FEEDBACK_EVERY);
        feedback.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // Stopped here rather than by the sender going away.
        let mut local_stop = false;
        // The newest frame heard of, told with keyframe requests.
        let mut seen = 0u64;
        loop {
            let timeout = reorder.poll_timeout();
            tokio::select! {
                a = arrivals.recv() => {
                    let Some(a) = a else { break };
                    arrived.push(FrameArrival { seq: a.header.seq, received_us: a.received_us });
                    if arrived.len() >= FrameArrival::MAX_PER_MESSAGE {
                        let _ = ctrl_out_tx.send(Control::Arrivals(std::mem::take(&mut arrived)));
                    }
                    let off = offset_us.load(Ordering::Relaxed);
                    let capture = (a.header.capture_us as i64 - off).max(0) as u64;
                    tracing::trace!(seq = a.header.seq, keyframe = a.header.keyframe, len = a.data.len(), "frame arrived");
                    seen = seen.max(a.header.seq);
                    reorder.handle_frame(Instant::now(), a.header.seq, a.header.keyframe, (a.data, capture, a.received_us));
                }
                Some(seq) = skip_rx.recv() => {
                    seen = seen.max(seq);
                    reorder.handle_skipped(Instant::now(), seq);
                }
                c = commands.recv() => match c {
                    Some(Command::DecodeError) => reorder.handle_decode_error(Instant::now()),
                    Some(Command::RequestKeyframe) => {
                        let _ = ctrl_out_tx.send(Control::KeyframeRequest { seen });
                    }
                    Some(Command::Prefer(p)) => {
                        let _ = ctrl_out_tx.send(Control::Prefer(p));
                    }
                    Some(Command::Stop) | None => {
                        local_stop = true;
                        break;
                    }
                },
                _ = async {
                    match timeout {
                        Some(t) => tokio::time::sleep_until(t.into()).await,
                        None => std::future::pending().await,
                    }
                } => reorder.handle_timeout(Instant::now()),
                _ = feedback.tick(), if !arrived.is_empty() => {
                    let _ = ctrl_out_tx.send(Control::Arrivals(std::mem::take(&mut arrived)));
                }
                _ = ping.tick() => {
                    let _ = ctrl_out_tx.send(Control::Ping { viewer_us: crate::clock::now_us() });
                    let s = stats
                        .as_ref()
                        .map(|f| f(conn.rtt(), handle.path()))
                        .unwrap_or_default();
                    let _ = ctrl_out_tx.send(Control::Stats(s));
                }
                _ = conn.closed() => break
            }
            while let Some(o) = reorder.poll_output() {
                let ev = match o {
                    Output::Deliver {
                        seq,
                        keyframe,
                        frame: (data, capture_us, received_us),
                    } => SubEvent::Frame(Delivered {
                        seq,
                        keyframe,
                        data,
                        capture_us,
                        received_us,
                    }),
                    Output::RequestKeyframe => {
                        tracing::debug!(seen, "asking the sender for a keyframe");
                        let _ = ctrl_out_tx.send(Control::KeyframeRequest { seen });
                        SubEvent::KeyframeRequested
                    }
                    Output::Dropped { seq } => {
                        tracing::trace!(seq, "frame lost or skipped");
                        SubEvent::Dropped { seq }
                    }
                };
                let _ = events.send(ev);
            }
        }
        let reason = conn.close_reason();
        let sender_ended = !local_stop && reason.is_some();
        conn.close(0u32.into(), b"viewer done");
        acceptor.abort();
        ctrl_reader.abort();
        writer.abort();
        candidate_updates.abort();
        signalling.leave().await;
        if let Some(m) = mapping {
            m.stop().await;
        }
        endpoint.close(0u32.into(), b"bye");
        let lost = match (sender_ended, reason) {
            (true, Some(quinn::ConnectionError::ApplicationClosed(_))) | (_, None) | (false, _) => {
                None
            }
            (true, Some(e)) => Some(e.to_string()),
        };
        SubEnd { sender_ended, lost }
    }
}

/// Reads one frame stream: header, then exactly the payload it announces.
async fn read_frame(
    mut recv: quinn::RecvStream,
    arrivals: mpsc::UnboundedSender<Arrival>,
    events: mpsc::UnboundedSender<SubEvent>,
) {
    let mut h = [0u8; FrameHeader::LEN];
    if recv.read_exact(&mut h).await.is_err() {
        return;
    }
    let Ok(header) = FrameHeader::decode(&h) else {
        tracing::debug!("malformed frame header");
        let _ = recv.stop(2u32.into());
        return;
    };
    // Grows as bytes arrive: a header's claimed length costs nothing until the data is there.
    let want = header.payload_len as usize;
    let data = match recv.read_to_end(want.min(MAX_FRAME_LEN)).await {
        Ok(d) if d.len() == want => d,
        Ok(_) => {
            tracing::debug!(seq = header.seq, "frame shorter or longer than its header");
            return;
        }
        // Reset by the sender (too late), too long, or the connection went away.
        Err(_) => return,
    };
    let _ = events.send(SubEvent::Received {
        bytes: (data.len() + FrameHeader::LEN) as u64,
    });
    let _ = arrivals.send(Arrival {
        header,
        data: Bytes::from(data),
        received_us: crate::clock::now_us(),
    });
}

/// Dials the sender's (virtual) address; which path carries it is the socket's business.
async fn connect(
    endpoint: &quinn::Endpoint,
    cfg: quinn::ClientConfig,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<quinn::Connection, SessionError> {
    let attempt = async {
        match endpoint.connect_with(cfg, addr, SERVER_NAME) {
            Ok(connecting) => connecting.await.map_err(Ok),
            Err(e) => Err(Err(e.to_string())),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(conn)) => Ok(conn),
        // A sender with --force-direct refuses what comes through the relay.
        Ok(Err(Ok(quinn::ConnectionError::ConnectionClosed(c))))
            if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
        {
            Err(NetError::SenderRefused.into())
        }
        Ok(Err(e)) => {
            let e = e.map_or_else(|s| s, |c| c.to_string());
            // A certificate that does not match the one announced: not a path issue.
            if e.contains("certificate") {
                return Err(SessionError::Connection(e));
            }
            tracing::debug!("connect failed: {e}");
            Err(NetError::NoPath(vec![addr]).into())
        }
        Err(_) => Err(NetError::NoPath(vec![addr]).into()),
    }
}
