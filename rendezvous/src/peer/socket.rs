//! The media socket: quinn's UDP socket with signalling datagrams split off by their first byte
//! ([`crate::wire::signal::is_signal`]), relay paths, and an optional impairment
//! hook for tests.
//!
//! Relay paths: quinn talks to a peer at a *virtual* address (in 240.0.0.0/4, which is never
//! routed); this socket carries those packets through the rendezvous relay, wrapped in relay
//! frames, and presents the relay's packets as coming from the virtual address. QUIC stays end to
//! end; the relay sees ciphertext only.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::task::{ready, Context, Poll};

use crate::wire::signal::{is_signal, parse_relay, relay_header, RELAY_OVERHEAD};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;

/// Userspace impairment (the kernel here has no netem): decides per datagram whether to drop it.
pub trait Impairment: Send + Sync + fmt::Debug + 'static {
    fn drop_outgoing(&self, to: SocketAddr, len: usize) -> bool;
    fn drop_incoming(&self, _from: SocketAddr, _len: usize) -> bool {
        false
    }
    /// Hold an outgoing datagram this long before it leaves.
    fn delay_outgoing(&self, _to: SocketAddr, _len: usize) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

pub struct MediaSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    /// For delayed sends (network emulation).
    me: std::sync::Weak<MediaSocket>,
    /// Dual-stack IPv6 socket: the kernel and quinn want IPv4 peers as IPv4-mapped addresses.
    v6: bool,
    signal_tx: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    impairment: Option<Arc<dyn Impairment>>,
    relays: Mutex<RelayTable>,
    /// Datagrams the emulated delay holds, in sending order.
    delayed: std::sync::OnceLock<mpsc::UnboundedSender<DelayedSend>>,
}

struct DelayedSend {
    due: tokio::time::Instant,
    contents: Vec<u8>,
    dest: SocketAddr,
    ecn: Option<quinn::udp::EcnCodepoint>,
    segment_size: Option<usize>,
    src_ip: Option<std::net::IpAddr>,
    route: Route,
}

/// Peers by virtual address: the relay session, the direct path once punched, and the real
/// addresses the peer proved itself from.
struct RelayTable {
    /// The rendezvous that relays for us.
    server: Option<SocketAddr>,
    relay_allowed: bool,
    by_virtual: HashMap<SocketAddr, u64>,
    by_session: HashMap<u64, SocketAddr>,
    direct: HashMap<SocketAddr, SocketAddr>,
    seen: HashMap<SocketAddr, SocketAddr>,
    /// Peers whose direct path goes through a router port mapping.
    upnp: std::collections::HashSet<SocketAddr>,
}

impl Default for RelayTable {
    fn default() -> Self {
        Self {
            server: None,
            relay_allowed: true,
            by_virtual: HashMap::new(),
            by_session: HashMap::new(),
            direct: HashMap::new(),
            seen: HashMap::new(),
            upnp: std::collections::HashSet::new(),
        }
    }
}

/// How packets to a virtual peer address travel now.
enum Route {
    Direct(SocketAddr),
    Relay(SocketAddr, u64),
    Nowhere,
}

/// True for the virtual addresses this socket hands out for relay paths.
pub fn is_relay_address(a: &SocketAddr) -> bool {
    matches!(canonical(*a), SocketAddr::V4(v4) if v4.ip().octets()[0] >= 240 && !v4.ip().is_broadcast())
}

/// IPv4-mapped IPv6 addresses (what a dual-stack socket reports for IPv4 peers) as plain IPv4:
/// the form every table here uses.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

impl fmt::Debug for MediaSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MediaSocket").finish_non_exhaustive()
    }
}

/// The signalling side of a [`MediaSocket`].
pub struct SignalPort {
    socket: Arc<MediaSocket>,
    rx: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
}

impl MediaSocket {
    /// Binds with large buffers (video bursts) and returns the socket for quinn plus the
    /// signalling port.
    pub fn bind(
        addr: SocketAddr,
        impairment: Option<Arc<dyn Impairment>>,
    ) -> io::Result<(Arc<MediaSocket>, SignalPort)> {
        match Self::bind_exact(addr, impairment.clone()) {
            // A machine without IPv6: the IPv4 wildcard will do.
            Err(_) if addr.ip() == std::net::Ipv6Addr::UNSPECIFIED => {
                Self::bind_exact(SocketAddr::from(([0, 0, 0, 0], addr.port())), impairment)
            }
            r => r,
        }
    }

    fn bind_exact(
        addr: SocketAddr,
        impairment: Option<Arc<dyn Impairment>>,
    ) -> io::Result<(Arc<MediaSocket>, SignalPort)> {
        let domain = socket2::Domain::for_address(addr);
        let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        if addr.is_ipv6() {
            // Accept IPv4 too when bound to [::].
            let _ = s.set_only_v6(false);
        }
        // Best effort: the kernel caps these at net.core.[rw]mem_max.
        let _ = s.set_recv_buffer_size(4 << 20);
        let _ = s.set_send_buffer_size(4 << 20);
        s.bind(&addr.into())?;
        let std_socket: std::net::UdpSocket = s.into();
        let inner = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, std_socket)?;
        let (signal_tx, rx) = mpsc::channel(256);
        let socket = Arc::new_cyclic(|me| MediaSocket {
            me: me.clone(),
            inner,
            v6: addr.is_ipv6(),
            signal_tx,
            impairment,
            relays: Mutex::new(RelayTable::default()),
            delayed: std::sync::OnceLock::new(),
        });
        Ok((socket.clone(), SignalPort { socket, rx }))
    }

    /// Sets the rendezvous whose relay this socket uses.
    pub fn set_relay_server(&self, server: SocketAddr) {
        if let Ok(mut t) = self.relays.lock() {
            t.server = Some(server);
        }
    }

    /// The virtual address of relay `session` (made on first use).
    pub fn relay_peer(&self, session: u64) -> SocketAddr {
        let Ok(mut t) = self.relays.lock() else {
            return SocketAddr::from(([240, 0, 0, 1], 1));
        };
        if let Some(v) = t.by_session.get(&session) {
            return *v;
        }
        let n = t.by_session.len() as u32 + 1;
        let v = SocketAddr::from((Ipv4Addr::from(0xF000_0000 | (n & 0x0FFF_FFFF)), 1));
        t.by_session.insert(session, v);
        t.by_virtual.insert(v, session);
        v
    }

    /// An address in the form the kernel and quinn use for this socket.
    fn wire(&self, a: SocketAddr) -> SocketAddr {
        match a {
            SocketAddr::V4(v4) if self.v6 => {
                SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
            }
            a => a,
        }
    }

    fn route(&self, to: &SocketAddr) -> Route {
        let to = &canonical(*to);
        let Ok(t) = self.relays.lock() else {
            return Route::Nowhere;
        };
        if let Some(d) = t.direct.get(to) {
            return Route::Direct(*d);
        }
        match (t.server, t.by_virtual.get(to)) {
            (Some(server), Some(session)) if t.relay_allowed => Route::Relay(server, *session),
            _ => Route::Nowhere,
        }
    }

    /// Sends packets for `virt` straight to `addr` (a punched path), or back via the relay.
    pub fn set_direct(&self, virt: SocketAddr, addr: Option<SocketAddr>) {
        if let Ok(mut t) = self.relays.lock() {
            match addr {
                Some(a) => {
                    t.direct.insert(virt, a);
                    t.seen.insert(a, virt);
                }
                None => {
                    t.direct.remove(&virt);
                }
            }
        }
    }

    /// Marks the direct path to `virt` as going through a router port mapping (stats only).
    pub fn set_upnp(&self, virt: SocketAddr, upnp: bool) {
        if let Ok(mut t) = self.relays.lock() {
            if upnp {
                t.upnp.insert(virt);
            } else {
                t.upnp.remove(&virt);
            }
        }
    }

    /// Packets from `addr` (where the peer proved itself) are the peer at `virt`.
    pub fn accept_from(&self, addr: SocketAddr, virt: SocketAddr) {
        if let Ok(mut t) = self.relays.lock() {
            t.seen.insert(addr, virt);
        }
    }

    /// Forgets a peer's direct addresses (it left).
    pub fn forget(&self, virt: SocketAddr) {
        if let Ok(mut t) = self.relays.lock() {
            t.direct.remove(&virt);
            t.seen.retain(|_, v| *v != virt);
        }
    }

    /// `--force-direct`: never carry media through the relay.
    pub fn set_relay_allowed(&self, allowed: bool) {
        if let Ok(mut t) = self.relays.lock() {
            t.relay_allowed = allowed;
        }
    }

    /// "direct", "upnp", "relay" or "-" (no path yet) for a connection's remote address.
    pub fn path_name(&self, remote: &SocketAddr) -> &'static str {
        let remote = &canonical(*remote);
        if !is_relay_address(remote) {
            return "direct";
        }
        let upnp = self
            .relays
            .lock()
            .map(|t| t.upnp.contains(remote))
            .unwrap_or(false);
        match self.route(remote) {
            Route::Direct(_) if upnp => "upnp",
            Route::Direct(_) => "direct",
            Route::Relay(..) => "relay",
            Route::Nowhere => "-",
        }
    }

    fn seen_as(&self, from: &SocketAddr) -> Option<SocketAddr> {
        self.relays.lock().ok()?.seen.get(from).copied()
    }

    /// Sends one datagram of our own (signalling, punching) from the media socket.
    pub async fn send_datagram(&self, to: SocketAddr, bytes: &[u8]) -> io::Result<()> {
        let to = canonical(to);
        if let Some(imp) = &self.impairment {
            if imp.drop_outgoing(to, bytes.len()) {
                return Ok(());
            }
            let delay = imp.delay_outgoing(to, bytes.len());
            if let (false, Some(me)) = (delay.is_zero(), self.me.upgrade()) {
                let bytes = bytes.to_vec();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = me.send_now(to, &bytes).await;
                });
                return Ok(());
            }
        }
        self.send_now(to, bytes).await
    }

    async fn send_now(&self, to: SocketAddr, bytes: &[u8]) -> io::Result<()> {
        let mut poller = self.inner.clone().create_io_poller();
        loop {
            let t = Transmit {
                destination: self.wire(to),
                ecn: None,
                contents: bytes,
                segment_size: None,
                src_ip: None,
            };
            match self.inner.try_send(&t) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx)).await?
                }
                r => return r,
            }
        }
    }

    /// Emulated delay: the datagram leaves later, in the order it was sent (one task drains a
    /// queue; a timer per packet let packets due in the same millisecond overtake each other,
    /// which QUIC counts as loss); the caller sees it sent.
    fn send_later(
        &self,
        delay: std::time::Duration,
        t: &Transmit,
        dest: SocketAddr,
        route: Route,
    ) -> io::Result<()> {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return Ok(());
        };
        let queue = self.delayed.get_or_init(|| {
            let (tx, mut rx) = mpsc::unbounded_channel::<DelayedSend>();
            let me = self.me.clone();
            rt.spawn(async move {
                while let Some(d) = rx.recv().await {
                    tokio::time::sleep_until(d.due).await;
                    let Some(me) = me.upgrade() else { break };
                    let t = Transmit {
                        destination: d.dest,
                        ecn: d.ecn,
                        contents: &d.contents,
                        segment_size: d.segment_size,
                        src_ip: d.src_ip,
                    };
                    let _ = match d.route {
                        Route::Relay(server, session) => me.send_relayed(&t, server, session),
                        Route::Direct(hop) => me.inner.try_send(&Transmit {
                            destination: me.wire(hop),
                            ..t
                        }),
                        Route::Nowhere => Ok(()),
                    };
                }
            });
            tx
        });
        let src_ip = if is_relay_address(&dest) {
            None
        } else {
            t.src_ip
        };
        let _ = queue.send(DelayedSend {
            due: tokio::time::Instant::now() + delay,
            contents: t.contents.to_vec(),
            dest,
            ecn: t.ecn,
            segment_size: t.segment_size,
            src_ip,
            route,
        });
        Ok(())
    }

    /// Wraps each packet of a (possibly GSO) transmit in a relay frame for the rendezvous.
    fn send_relayed(&self, t: &Transmit, server: SocketAddr, session: u64) -> io::Result<()> {
        let seg = t.segment_size.unwrap_or(t.contents.len()).max(1);
        let header = relay_header(true, session);
        for packet in t.contents.chunks(seg) {
            let mut framed = Vec::with_capacity(RELAY_OVERHEAD + packet.len());
            framed.extend_from_slice(&header);
            framed.extend_from_slice(packet);
            self.inner.try_send(&Transmit {
                destination: self.wire(server),
                ecn: t.ecn,
                contents: &framed,
                segment_size: None,
                src_ip: None,
            })?;
        }
        Ok(())
    }

    /// The virtual address for relay data from `from`, if it is our relay's.
    fn relay_source(&self, from: SocketAddr, session: u64) -> Option<SocketAddr> {
        let t = self.relays.lock().ok()?;
        if t.server != Some(from) || !t.relay_allowed {
            return None;
        }
        if let Some(v) = t.by_session.get(&session) {
            return Some(*v);
        }
        // A viewer reaching us through the relay before the rendezvous told us about it.
        drop(t);
        Some(self.relay_peer(session))
    }

    fn divert(&self, from: SocketAddr, bytes: &[u8]) {
        // Never block QUIC's receive path: drop signalling if nobody keeps up.
        let _ = self.signal_tx.try_send((from, bytes.to_vec()));
    }
}

impl AsyncUdpSocket for MediaSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let dest = canonical(transmit.destination);
        let route = if is_relay_address(&dest) {
            self.route(&dest)
        } else {
            Route::Direct(dest)
        };
        // Impairment acts on the wire: the real next hop, not the virtual address.
        let next_hop = match route {
            Route::Direct(a) | Route::Relay(a, _) => a,
            // No path (yet, or any more): the packet is lost, as on a dead link.
            Route::Nowhere => return Ok(()),
        };
        if let Some(imp) = &self.impairment {
            if imp.drop_outgoing(next_hop, transmit.contents.len()) {
                return Ok(());
            }
            let delay = imp.delay_outgoing(next_hop, transmit.contents.len());
            if !delay.is_zero() {
                return self.send_later(delay, transmit, dest, route);
            }
        }
        // For a virtual peer the real path is ours to choose: quinn's source-address hint
        // (taken from whichever path a packet last came in on, maybe another family) must go.
        let src_ip = if is_relay_address(&dest) {
            None
        } else {
            transmit.src_ip
        };
        match route {
            Route::Relay(server, session) => self.send_relayed(transmit, server, session),
            _ => self.inner.try_send(&Transmit {
                destination: self.wire(next_hop),
                src_ip,
                ..*transmit
            }),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let n = ready!(self.inner.poll_recv(cx, bufs, meta))?;
            let mut kept = 0;
            for i in 0..n {
                let m = meta[i];
                let from = canonical(m.addr);
                let stride = m.stride.max(1);
                let buf = &mut bufs[i][..m.len];
                // A GRO batch holds segments of `stride` bytes from one source. Keep the QUIC
                // ones in place, in order; unwrap relay data (all segments of a relayed batch
                // shrink alike, so the stride stays uniform); hand the rest to signalling.
                let mut source = self.seen_as(&from).unwrap_or(from);
                let mut out_stride = stride;
                let mut write = 0;
                let mut read = 0;
                while read < m.len {
                    let end = (read + stride).min(m.len);
                    let seg_len = end - read;
                    let dropped = self
                        .impairment
                        .as_ref()
                        .is_some_and(|imp| imp.drop_incoming(from, seg_len));
                    let relayed = parse_relay(false, &buf[read..end])
                        .and_then(|(session, _)| self.relay_source(from, session));
                    if dropped {
                    } else if let Some(virt) = relayed {
                        source = virt;
                        out_stride = stride - RELAY_OVERHEAD;
                        buf.copy_within(read + RELAY_OVERHEAD..end, write);
                        write += seg_len - RELAY_OVERHEAD;
                    } else if is_signal(&buf[read..end]) {
                        self.divert(from, &buf[read..end]);
                    } else {
                        buf.copy_within(read..end, write);
                        write += seg_len;
                    }
                    read = end;
                }
                if write == 0 {
                    continue;
                }
                if kept != i {
                    let (head, tail) = bufs.split_at_mut(i);
                    head[kept][..write].copy_from_slice(&tail[0][..write]);
                }
                meta[kept] = RecvMeta {
                    addr: self.wire(source),
                    len: write,
                    stride: out_stride.min(write),
                    ..m
                };
                kept += 1;
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        // Impairment loses and delays packets one by one, as a link does: a GSO batch would
        // be lost whole (1% "loss" dropped ~6% of the packets).
        if self.impairment.is_some() {
            1
        } else {
            self.inner.max_transmit_segments()
        }
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

impl SignalPort {
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.inner.local_addr()
    }

    pub fn socket(&self) -> &Arc<MediaSocket> {
        &self.socket
    }

    /// Sends one signalling datagram from the media socket.
    pub async fn send(&self, to: SocketAddr, bytes: &[u8]) -> io::Result<()> {
        self.socket.send_datagram(to, bytes).await
    }

    /// The next signalling datagram, or `None` once quinn's endpoint is gone.
    pub async fn recv(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.rx.recv().await
    }
}
