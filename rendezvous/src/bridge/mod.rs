//! The browser bridge: joins rooms as a QUIC viewer ([`feed`]) and serves their H.264 to
//! browsers over WebRTC ([`core`], str0m), fanned out to every browser: one upstream per room
//! and rendition, each browser on the one its path carries (str0m's TWCC estimate).
//! Used by the standalone `inclubit-rendezvous` and by `inclubit send --web`.

pub mod core;
pub mod feed;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use self::core::{BridgeCore, CoreOutput, OfferError, PeerId};
use self::feed::{FeedError, FeedMsg, Feeds};
use crate::code::{PairingCode, RoomCode};
use crate::peer::rendition::{LOW, TOP};
use crate::wire::media::StreamHello;

/// A room is left this long after its last browser viewer.
const IDLE_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// The rendezvous the bridge joins rooms through.
    pub rendezvous: SocketAddr,
    /// UDP address for WebRTC (one port for every browser). An unspecified IP listens on every
    /// interface address (IPv4, and IPv6 but link-local), each announced as an ICE candidate.
    pub bind: SocketAddr,
    /// Extra addresses to announce (a VPS's public IP behind 1:1 NAT).
    pub announce: Vec<IpAddr>,
}

impl BridgeConfig {
    pub fn new(rendezvous: SocketAddr) -> Self {
        Self {
            rendezvous,
            bind: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
            announce: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Feed(#[from] FeedError),
    #[error(transparent)]
    Offer(#[from] OfferError),
    #[error("the bridge has stopped")]
    Stopped,
    #[error("cannot bind the WebRTC port {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

/// A browser viewer's session, as WHEP returns it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub peer: PeerId,
    pub sdp: String,
    pub hello: StreamHello,
}

enum Command {
    Offer {
        room: RoomCode,
        ceiling: u64,
        sdp: String,
        reply: oneshot::Sender<Result<(PeerId, String), OfferError>>,
    },
    Remove {
        room: RoomCode,
        peer: PeerId,
        reply: oneshot::Sender<bool>,
    },
    Viewers {
        room: RoomCode,
        reply: oneshot::Sender<usize>,
    },
    Totals {
        reply: oneshot::Sender<core::BridgeTotals>,
    },
}

/// A running bridge. Dropping it stops it.
pub struct Bridge {
    commands: mpsc::UnboundedSender<Command>,
    feeds: Arc<Feeds>,
    local: Vec<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Bridge {
    pub async fn start(cfg: BridgeConfig) -> Result<Self, BridgeError> {
        let sockets = bind_sockets(cfg.bind).await?;
        let mut local: Vec<SocketAddr> = sockets
            .iter()
            .map(|s| s.local_addr())
            .collect::<Result<_, _>>()
            .map_err(|e| BridgeError::Bind(cfg.bind, e))?;
        let port = local.first().map(|a| a.port()).unwrap_or(0);
        let announce_from = local.len();
        local.extend(cfg.announce.iter().map(|ip| SocketAddr::new(*ip, port)));
        tracing::info!(candidates = ?local, "browser bridge listening");
        let (feed_tx, feed_rx) = mpsc::unbounded_channel();
        let feeds = Arc::new(Feeds::new(cfg.rendezvous, feed_tx));
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (recv_tx, recv_rx) = mpsc::channel::<(SocketAddr, SocketAddr, Vec<u8>)>(1024);
        let mut tasks = Vec::new();
        for s in &sockets {
            tasks.push(tokio::spawn(receive(s.clone(), recv_tx.clone())));
        }
        let driver = Driver {
            // Announced addresses arrive on the socket bound to the port: treat them as its own.
            core: BridgeCore::new(local.clone()),
            local: local.clone(),
            sockets,
            announced: local[announce_from..].to_vec(),
            feeds: feeds.clone(),
            idle_since: HashMap::new(),
            low_wanted: HashMap::new(),
        };
        tasks.push(tokio::spawn(driver.run(command_rx, feed_rx, recv_rx)));
        Ok(Self {
            commands,
            feeds,
            local,
            tasks,
        })
    }

    /// The bridge's ICE candidates.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local
    }

    /// A browser's WHEP offer for `code`: subscribes to the room if needed, then answers.
    /// `client`: where the offer came from (wrong codes are counted per client).
    pub async fn offer(
        &self,
        code: PairingCode,
        client: Option<std::net::IpAddr>,
        sdp: String,
    ) -> Result<Answer, BridgeError> {
        let room = code.room;
        let hello = self.feeds.ensure(code, client).await?;
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Offer {
                room,
                ceiling: hello.bitrate as u64,
                sdp,
                reply,
            })
            .map_err(|_| BridgeError::Stopped)?;
        let (peer, sdp) = rx.await.map_err(|_| BridgeError::Stopped)??;
        Ok(Answer { peer, sdp, hello })
    }

    /// WHEP `DELETE`: false when there is no such session.
    pub async fn remove(&self, room: RoomCode, peer: PeerId) -> bool {
        let (reply, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::Remove { room, peer, reply })
            .is_err()
        {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Browser viewers of `room`.
    pub async fn viewers(&self, room: RoomCode) -> usize {
        let (reply, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::Viewers { room, reply })
            .is_err()
        {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    /// Browsers and the video bytes sent to them, all rooms.
    pub async fn totals(&self) -> core::BridgeTotals {
        let (reply, rx) = oneshot::channel();
        if self.commands.send(Command::Totals { reply }).is_err() {
            return core::BridgeTotals::default();
        }
        rx.await.unwrap_or_default()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        for room in self.feeds.live() {
            self.feeds.release(room);
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One socket per local address when `bind` is unspecified (each a distinct ICE candidate, and
/// the destination of what arrives is known), all on one port when possible.
async fn bind_sockets(bind: SocketAddr) -> Result<Vec<Arc<UdpSocket>>, BridgeError> {
    let ips: Vec<IpAddr> = if bind.ip().is_unspecified() {
        let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()
            .unwrap_or_default()
            .into_iter()
            .map(|i| i.ip())
            .filter(|ip| match ip {
                IpAddr::V4(_) => true,
                // Link-local needs a scope id that a browser's candidate cannot carry.
                IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 != 0xfe80,
            })
            .collect();
        // IPv4 first (its port is the one the others try to share), loopback last.
        ips.sort_by_key(|ip| (ip.is_loopback(), ip.is_ipv6()));
        ips.dedup();
        if ips.is_empty() {
            ips.push(Ipv4Addr::LOCALHOST.into());
        }
        ips
    } else {
        vec![bind.ip()]
    };
    let mut port = bind.port();
    let mut out = Vec::new();
    for ip in ips {
        let sock = match UdpSocket::bind(SocketAddr::new(ip, port)).await {
            Ok(s) => s,
            // The first socket's port is taken on this address: any port will do.
            Err(_) if !out.is_empty() => match UdpSocket::bind(SocketAddr::new(ip, 0)).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%ip, "skipping an address for the bridge: {e}");
                    continue;
                }
            },
            Err(e) => return Err(BridgeError::Bind(SocketAddr::new(ip, port), e)),
        };
        if port == 0 {
            port = sock.local_addr().map(|a| a.port()).unwrap_or(0);
        }
        out.push(Arc::new(sock));
    }
    Ok(out)
}

async fn receive(socket: Arc<UdpSocket>, to: mpsc::Sender<(SocketAddr, SocketAddr, Vec<u8>)>) {
    let Ok(local) = socket.local_addr() else {
        return;
    };
    let mut buf = vec![0u8; 2048];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) => {
                if to.send((local, from, buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
            // ICMP errors from a browser that went away surface here; keep serving the rest.
            Err(e) => tracing::trace!("bridge socket: {e}"),
        }
    }
}

struct Driver {
    core: BridgeCore,
    /// The core's candidates, to rebuild it after a panic.
    local: Vec<SocketAddr>,
    sockets: Vec<Arc<UdpSocket>>,
    announced: Vec<SocketAddr>,
    feeds: Arc<Feeds>,
    idle_since: HashMap<RoomCode, Instant>,
    /// When a browser was last on each room's half-size rendition.
    low_wanted: HashMap<RoomCode, Instant>,
}

impl Driver {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut feed: mpsc::UnboundedReceiver<FeedMsg>,
        mut datagrams: mpsc::Receiver<(SocketAddr, SocketAddr, Vec<u8>)>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let timeout = self.core.poll_timeout();
            tokio::select! {
                c = commands.recv() => {
                    let Some(c) = c else { break };
                    self.command(c);
                }
                Some(m) = feed.recv() => match m {
                    FeedMsg::Frame(room, r, au) => {
                        self.with_core(|c| c.handle_access_unit(Instant::now(), room, r, &au));
                    }
                    FeedMsg::Ended(room, r) => {
                        self.with_core(|c| c.end_rendition(Instant::now(), room, r)).unwrap_or(())
                    }
                },
                Some((local, from, data)) = datagrams.recv() => {
                    let announced = self.announced.clone();
                    let claimed = self.with_core(|c| {
                        c.handle_receive(Instant::now(), from, local, &data)
                            // Sent to an announced (NATed) address: it arrived on our socket.
                            || announced
                                .iter()
                                .any(|a| c.handle_receive(Instant::now(), from, *a, &data))
                    });
                    if claimed == Some(false) {
                        tracing::trace!(%from, "datagram for no browser viewer");
                    }
                }
                _ = async {
                    match timeout {
                        Some(t) => tokio::time::sleep_until(t.into()).await,
                        None => std::future::pending().await,
                    }
                } => self.with_core(|c| c.handle_timeout(Instant::now())).unwrap_or(()),
                _ = tick.tick() => self.release_idle(),
            }
            self.flush().await;
        }
    }

    /// Runs `f` on the core. The core already survives panics inside str0m; should one escape
    /// anyway (a bug of ours), the core is rebuilt empty: its browsers reconnect, the bridge,
    /// its rooms and its port go on.
    fn with_core<T>(&mut self, f: impl FnOnce(&mut BridgeCore) -> T) -> Option<T> {
        let core = &mut self.core;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(core))) {
            Ok(v) => Some(v),
            Err(_) => {
                tracing::error!(
                    "browser bridge core failed; rebuilding it (its viewers reconnect)"
                );
                self.core = BridgeCore::new(self.local.clone());
                for room in self.feeds.live() {
                    self.idle_since.entry(room).or_insert_with(Instant::now);
                }
                None
            }
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Offer {
                room,
                ceiling,
                sdp,
                reply,
            } => {
                let accepted = self
                    .with_core(|c| {
                        c.set_ceiling(room, ceiling);
                        c.accept_offer(Instant::now(), room, &sdp)
                    })
                    .unwrap_or_else(|| {
                        Err(OfferError::Internal(
                            "the bridge failed on this offer".into(),
                        ))
                    });
                match accepted {
                    Ok(ok) => {
                        self.idle_since.remove(&room);
                        let _ = reply.send(Ok(ok));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        // A failed offer may have been the room's only reason to be subscribed.
                        self.idle_since.entry(room).or_insert_with(Instant::now);
                    }
                }
            }
            Command::Remove { room, peer, reply } => {
                let removed = self.with_core(|c| c.remove(room, peer));
                let _ = reply.send(removed.unwrap_or(false));
            }
            Command::Viewers { room, reply } => {
                let _ = reply.send(self.core.viewers(room));
            }
            Command::Totals { reply } => {
                let _ = reply.send(self.core.totals(Instant::now()));
            }
        }
    }

    async fn flush(&mut self) {
        while let Some(o) = self.core.poll_output() {
            match o {
                CoreOutput::Transmit {
                    source,
                    destination,
                    contents,
                } => {
                    let socket = self
                        .sockets
                        .iter()
                        .find(|s| s.local_addr().is_ok_and(|a| a == source))
                        .or_else(|| self.sockets.first());
                    if let Some(s) = socket {
                        if let Err(e) = s.send_to(&contents, destination).await {
                            tracing::trace!(%destination, "bridge send: {e}");
                        }
                    }
                }
                CoreOutput::WantKeyframe(room, r) => self.feeds.request_keyframe(room, r),
                CoreOutput::Demand {
                    room,
                    rendition,
                    max_bitrate,
                } => {
                    if rendition != TOP {
                        self.low_wanted.insert(room, Instant::now());
                    }
                    if !self.feeds.limit(room, rendition, max_bitrate) {
                        let feeds = self.feeds.clone();
                        tokio::spawn(async move {
                            if let Err(e) = feeds.ensure_rendition(room, rendition).await {
                                tracing::info!(%room, rendition, "no upstream of this rendition: {e}");
                            }
                        });
                    }
                }
                CoreOutput::Connected { peer, room } => {
                    tracing::info!(peer, %room, "browser viewer connected");
                }
                CoreOutput::Gone { peer, room } => {
                    tracing::info!(peer, %room, "browser viewer left");
                    if self.core.viewers(room) == 0 {
                        self.idle_since.insert(room, Instant::now());
                    }
                }
            }
        }
    }

    fn release_idle(&mut self) {
        let now = Instant::now();
        // Half-size upstreams nobody has been on for a while.
        for room in self.feeds.live() {
            let wanted = self
                .low_wanted
                .get(&room)
                .is_some_and(|t| now.duration_since(*t) < IDLE_GRACE);
            if !wanted && self.feeds.renditions(room).contains(&LOW) {
                self.feeds.release_rendition(room, LOW);
                self.low_wanted.remove(&room);
            }
        }
        let live = self.feeds.live();
        self.idle_since.retain(|room, since| {
            if self.core.viewers(*room) > 0 {
                return false;
            }
            if now.duration_since(*since) < IDLE_GRACE {
                return true;
            }
            if live.contains(room) {
                self.feeds.release(*room);
            }
            false
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_that_escapes_the_core_rebuilds_it_and_the_bridge_serves_on() {
        let local: Vec<SocketAddr> = vec!["192.0.2.1:4000".parse().unwrap()];
        let (feed_tx, _feed_rx) = mpsc::unbounded_channel();
        let mut driver = Driver {
            core: BridgeCore::new(local.clone()),
            local: local.clone(),
            sockets: Vec::new(),
            announced: Vec::new(),
            feeds: Arc::new(Feeds::new("192.0.2.9:7000".parse().unwrap(), feed_tx)),
            idle_since: HashMap::new(),
            low_wanted: HashMap::new(),
        };
        // A browser's offer, as a str0m peer makes it.
        let mut rtc = str0m::RtcConfig::new().build(Instant::now());
        rtc.add_local_candidate(
            str0m::Candidate::host("198.51.100.2:5000".parse().unwrap(), "udp").unwrap(),
        );
        let mut api = rtc.sdp_api();
        api.add_media(
            str0m::media::MediaKind::Video,
            str0m::media::Direction::RecvOnly,
            None,
            None,
            None,
        );
        let (offer, _) = api.apply().unwrap();
        let offer = offer.to_sdp_string();
        let room = RoomCode::from_bits(7);
        let before = driver.with_core(|c| c.accept_offer(Instant::now(), room, &offer));
        assert!(matches!(before, Some(Ok(_))));
        assert_eq!(driver.core.viewers(room), 1);
        // A bug of ours panics inside the core: the driver survives, with an empty core.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let failed = driver.with_core(|_| -> () { panic!("a bug") });
        std::panic::set_hook(hook);
        assert!(failed.is_none());
        assert_eq!(driver.core.viewers(room), 0);
        let after = driver.with_core(|c| c.accept_offer(Instant::now(), room, &offer));
        assert!(matches!(after, Some(Ok(_))), "{after:?}");
    }

    #[tokio::test]
    async fn every_interface_address_is_a_candidate_on_one_port() {
        let sockets = bind_sockets("0.0.0.0:0".parse().unwrap()).await.unwrap();
        let addrs: Vec<SocketAddr> = sockets.iter().map(|s| s.local_addr().unwrap()).collect();
        let ips: Vec<IpAddr> = if_addrs::get_if_addrs()
            .unwrap()
            .into_iter()
            .map(|i| i.ip())
            .collect();
        assert!(addrs.iter().any(|a| a.ip().is_loopback()), "{addrs:?}");
        for ip in ips {
            let link_local = matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
            assert_eq!(
                addrs.iter().any(|a| a.ip() == ip),
                !link_local,
                "{ip} in {addrs:?}"
            );
        }
        let port = addrs[0].port();
        assert!(addrs.iter().all(|a| a.port() == port), "{addrs:?}");
        // A fixed address gives that one socket.
        let one = bind_sockets("127.0.0.1:0".parse().unwrap()).await.unwrap();
        assert_eq!(one.len(), 1);
    }
}
