//! The rendezvous server: the sans-IO [`rooms`] core behind a thin tokio UDP driver.

pub mod reflect;
pub mod rooms;

use std::net::SocketAddr;
use std::time::Duration;

use std::io::IoSliceMut;

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::abuse::LogThrottle;
use crate::wire::signal::{parse_relay, relay_to_downlink, ClientMsg, MAX_SIGNAL_LEN};
use rooms::{Event, Rooms, RoomsConfig};

/// Command-line options of the server; shared by `inclubit-rendezvous` and `inclubit rendezvous`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// UDP address to listen on (signalling and, later, relay).
    #[arg(long, default_value = "0.0.0.0:7000")]
    pub listen: SocketAddr,
    /// Seconds a room lives without hearing from its sender.
    #[arg(long, default_value_t = 15)]
    pub room_idle_secs: u64,
    /// Most viewers in one room.
    #[arg(long, default_value_t = 16)]
    pub max_viewers: usize,
    /// IPv4 addresses sharing this many leading bits count as one network for the room and
    /// guessing limits (IPv6: a /64).
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u8).range(8..=32))]
    pub ipv4_prefix: u8,
    /// Most rooms open at once from one network.
    #[arg(long, default_value_t = 16)]
    pub rooms_per_network: usize,
    /// Where the room-ticket key is kept, so senders keep their codes across a restart of this
    /// server. Default: $STATE_DIRECTORY, else ~/.local/state/inclubit-rendezvous.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<std::path::PathBuf>,
}

impl ServerArgs {
    /// `--state-dir`, else the default state directory of `inclubit-rendezvous`.
    pub fn state_dir(&self) -> Option<std::path::PathBuf> {
        self.state_dir
            .clone()
            .or_else(|| crate::state::default_dir("inclubit-rendezvous"))
    }

    pub fn config(&self) -> ServerConfig {
        let dir = self.state_dir();
        let ticket_key = match dir.as_deref().map(crate::state::ticket_key) {
            Some(Ok(k)) => Some(k),
            Some(Err(e)) => {
                tracing::warn!("{e}; rooms will not survive a restart of this server");
                None
            }
            None => {
                tracing::warn!("no state directory; rooms will not survive a restart");
                None
            }
        };
        ServerConfig {
            listen: self.listen,
            rooms: RoomsConfig {
                idle: Duration::from_secs(self.room_idle_secs),
                max_viewers: self.max_viewers,
                ipv4_prefix: self.ipv4_prefix,
                rooms_per_network: self.rooms_per_network,
                ticket_key,
                ..Default::default()
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub rooms: RoomsConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub struct Server {
    socket: UdpSocket,
    udp: quinn_udp::UdpSocketState,
    rooms: Rooms,
    malformed: u64,
    stun_replies: Vec<(SocketAddr, Vec<u8>)>,
    rate_log: LogThrottle,
    rooms_log: LogThrottle,
    relay_log: LogThrottle,
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
    control: Option<tokio::sync::mpsc::UnboundedReceiver<ServerControl>>,
}

/// Told to a running server (signals, at the binary's edge).
#[derive(Debug)]
pub enum ServerControl {
    /// SIGHUP: new limits from the config (rooms and members stay).
    Reload(RoomsConfig),
    /// SIGTERM: tell every member the server is going, then stop (answered when sent).
    Drain(tokio::sync::oneshot::Sender<()>),
}

/// Datagram buffers per receive call; each holds a GRO batch of up to 64 KiB.
const BATCH: usize = 16;
const BUF: usize = 64 * 1024;

impl Server {
    pub async fn bind(cfg: ServerConfig) -> Result<Self, ServerError> {
        let bind_err = |source| ServerError::Bind {
            addr: cfg.listen,
            source,
        };
        let socket = UdpSocket::bind(cfg.listen).await.map_err(bind_err)?;
        let udp = quinn_udp::UdpSocketState::new((&socket).into()).map_err(bind_err)?;
        Ok(Self {
            socket,
            udp,
            rooms: Rooms::new(cfg.rooms, rand::random()),
            malformed: 0,
            stun_replies: Vec::new(),
            rate_log: LogThrottle::new(Duration::from_secs(10)),
            rooms_log: LogThrottle::new(Duration::from_secs(10)),
            relay_log: LogThrottle::new(Duration::from_secs(10)),
            metrics: None,
            control: None,
        })
    }

    /// Tells senders opening rooms where browsers can watch (after the web side started).
    pub fn set_web(&mut self, web: crate::wire::signal::WebSide) {
        self.rooms.set_web(web);
    }

    /// A handle to reload or drain the server once it runs.
    pub fn control(&mut self) -> tokio::sync::mpsc::UnboundedSender<ServerControl> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.control = Some(rx);
        tx
    }

    /// Publishes the rooms' figures to `metrics` (the web side's `/metrics`) once a second.
    pub fn set_metrics(&mut self, metrics: std::sync::Arc<crate::metrics::Metrics>) {
        self.metrics = Some(metrics);
    }

    fn publish(&self) {
        if let Some(m) = &self.metrics {
            m.publish_rooms(self.rooms.snapshot(), self.malformed);
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        // A bound socket always has a local address.
        self.socket
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until the task is dropped. Bad datagrams are counted and dropped; socket errors
    /// are logged and the loop goes on: nothing a client sends stops the server.
    ///
    /// Relay data is the hot path: a GRO batch of same-size datagrams from one member goes back
    /// out as GSO batches, one header byte changed per datagram, nothing copied.
    pub async fn run(mut self) {
        tracing::info!(addr = %self.local_addr(), "rendezvous listening");
        let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; BUF]).collect();
        let mut metas = [quinn_udp::RecvMeta::default(); BATCH];
        let mut publish = tokio::time::interval(Duration::from_secs(1));
        publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut control = self.control.take();
        loop {
            let timeout = self.rooms.poll_timeout().map(Instant::from_std);
            let sleep = async {
                match timeout {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = self.socket.readable() => {
                    if let Err(e) = r {
                        tracing::debug!("socket error: {e}");
                    }
                    // Drain what is queued, batch by batch.
                    loop {
                        let got = {
                            let mut iovs: Vec<IoSliceMut> =
                                bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                            let (socket, udp) = (&self.socket, &self.udp);
                            socket.try_io(Interest::READABLE, || {
                                udp.recv(socket.into(), &mut iovs, &mut metas)
                            })
                        };
                        match got {
                            Ok(n) => {
                                for i in 0..n {
                                    let m = metas[i];
                                    self.on_batch(m, &mut bufs[i][..m.len]).await;
                                }
                                self.flush().await;
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(e) => {
                                tracing::debug!("recv error: {e}");
                                break;
                            }
                        }
                    }
                }
                _ = sleep => self.rooms.handle_timeout(std::time::Instant::now()),
                _ = publish.tick() => self.publish(),
                Some(c) = async {
                    match control.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => match c {
                    ServerControl::Reload(cfg) => {
                        tracing::info!(max_viewers = cfg.max_viewers, "limits reloaded");
                        self.rooms.set_limits(&cfg);
                    }
                    ServerControl::Drain(done) => {
                        let rooms = self.rooms.room_count();
                        self.rooms.closing();
                        self.flush().await;
                        tracing::info!(rooms, "shutting down: members told");
                        let _ = done.send(());
                        return;
                    }
                },
            }
            self.flush().await;
        }
    }

    /// One received buffer: `meta.len` bytes in segments of `meta.stride` from one source.
    async fn on_batch(&mut self, meta: quinn_udp::RecvMeta, buf: &mut [u8]) {
        let stride = meta.stride.max(1);
        let from = meta.addr;
        let now = std::time::Instant::now();
        // Runs of consecutive relay segments going to the same member.
        let mut run: Option<(SocketAddr, usize, usize)> = None;
        let mut start = 0;
        while start < buf.len() {
            let end = (start + stride).min(buf.len());
            let seg = &mut buf[start..end];
            let to = match parse_relay(true, seg) {
                Some((session, payload)) => {
                    let len = payload.len();
                    let to = self.rooms.route_relay(now, from, session, len);
                    if to.is_some() {
                        relay_to_downlink(seg);
                    }
                    to
                }
                None => {
                    self.on_datagram(from, seg);
                    None
                }
            };
            match (&mut run, to) {
                (Some((dst, _, e)), Some(t)) if *dst == t && *e == start => *e = end,
                (r, t) => {
                    if let Some((dst, s, e)) = r.take() {
                        self.forward(dst, &buf[s..e], stride).await;
                    }
                    *r = t.map(|t| (t, start, end));
                }
            }
            start = end;
        }
        if let Some((dst, s, e)) = run {
            self.forward(dst, &buf[s..e], stride).await;
        }
    }

    /// Sends relay datagrams (segments of `stride` bytes) with GSO where the kernel has it.
    async fn forward(&self, to: SocketAddr, data: &[u8], stride: usize) {
        let max = self.udp.max_gso_segments().max(1) * stride;
        for chunk in data.chunks(max) {
            let t = quinn_udp::Transmit {
                destination: to,
                ecn: None,
                contents: chunk,
                segment_size: (chunk.len() > stride).then_some(stride),
                src_ip: None,
            };
            loop {
                let r = self.socket.try_io(Interest::WRITABLE, || {
                    self.udp.send((&self.socket).into(), &t)
                });
                match r {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if self.socket.writable().await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(%to, "relay send error: {e}");
                        break;
                    }
                    Ok(()) => break,
                }
            }
        }
    }

    fn on_datagram(&mut self, from: SocketAddr, bytes: &[u8]) {
        if let Some(resp) = reflect::binding_response(bytes, from) {
            self.stun_replies.push((from, resp));
            return;
        }
        if bytes.len() > MAX_SIGNAL_LEN {
            self.malformed += 1;
            return;
        }
        match ClientMsg::decode(bytes) {
            Ok(msg) => self.rooms.handle(std::time::Instant::now(), from, msg),
            Err(e) => {
                self.malformed += 1;
                if self.malformed.is_power_of_two() {
                    tracing::debug!(%from, total = self.malformed, "dropped malformed datagram: {e}");
                }
            }
        }
    }

    async fn flush(&mut self) {
        while let Some(ev) = self.rooms.poll_event() {
            match ev {
                Event::Opened { code, from } => tracing::info!(%code, %from, "room opened"),
                Event::Joined { code, member, from } => {
                    tracing::info!(%code, member, %from, "viewer joined")
                }
                Event::ViewerLeft { code, member } => tracing::info!(%code, member, "viewer left"),
                Event::Moved { code, member, to } => {
                    tracing::info!(%code, member, %to, "member moved (address proven)")
                }
                Event::Closed { code, reason } => tracing::info!(%code, ?reason, "room closed"),
                Event::RateLimited { ip } => {
                    if let Some(more) = self.rate_log.allow(std::time::Instant::now()) {
                        tracing::warn!(%ip, more, "rate limit: refusing requests")
                    }
                }
                Event::TooManyRooms { network } => {
                    if let Some(more) = self.rooms_log.allow(std::time::Instant::now()) {
                        tracing::warn!(%network, more, "a network at its room limit was refused a room")
                    }
                }
                Event::GuessingLimited => tracing::warn!(
                    "joins of missing codes spent the server's budget: refusing networks that guessed lately"
                ),
                Event::RelayLimited { session, limit } => {
                    if let Some(more) = self.relay_log.allow(std::time::Instant::now()) {
                        tracing::warn!(session = %format!("{session:016x}"), limit, more, "relay limit reached: dropping data")
                    }
                }
                Event::RelayRefused { session, from } => {
                    if let Some(more) = self.relay_log.allow(std::time::Instant::now()) {
                        tracing::warn!(session = %format!("{session:016x}"), %from, more, "relay data from a non-member refused")
                    }
                }
            }
        }
        for (to, resp) in std::mem::take(&mut self.stun_replies) {
            let _ = self.socket.send_to(&resp, to).await;
        }
        while let Some(t) = self.rooms.poll_transmit() {
            if let Err(e) = self.socket.send_to(&t.msg.encode(), t.to).await {
                tracing::debug!(to = %t.to, "send error: {e}");
            }
        }
    }
}

/// Binds and serves forever (until the task is dropped).
pub async fn run(cfg: ServerConfig) -> Result<(), ServerError> {
    Server::bind(cfg).await?.run().await;
    Ok(())
}
