//! The media socket: quinn's UDP socket with signalling datagrams split off by their first byte
//! ([`inclubit_rendezvous::wire::signal::is_signal`]), and an optional impairment hook for tests.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use inclubit_rendezvous::wire::signal::is_signal;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;

/// Userspace impairment (the kernel here has no netem): decides per datagram whether to drop it.
pub trait Impairment: Send + Sync + fmt::Debug + 'static {
    fn drop_outgoing(&self, to: SocketAddr, len: usize) -> bool;
    fn drop_incoming(&self, _from: SocketAddr, _len: usize) -> bool {
        false
    }
}

pub struct MediaSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    signal_tx: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    impairment: Option<Arc<dyn Impairment>>,
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
        let socket = Arc::new(MediaSocket {
            inner,
            signal_tx,
            impairment,
        });
        Ok((socket.clone(), SignalPort { socket, rx }))
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
        if let Some(imp) = &self.impairment {
            if imp.drop_outgoing(transmit.destination, transmit.contents.len()) {
                return Ok(());
            }
        }
        self.inner.try_send(transmit)
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
                let stride = m.stride.max(1);
                let buf = &mut bufs[i][..m.len];
                // A GRO batch holds segments of `stride` bytes from one source; keep the QUIC
                // ones in place, in order, and hand the rest to signalling.
                let mut write = 0;
                let mut read = 0;
                while read < m.len {
                    let end = (read + stride).min(m.len);
                    let seg_len = end - read;
                    let dropped = self
                        .impairment
                        .as_ref()
                        .is_some_and(|imp| imp.drop_incoming(m.addr, seg_len));
                    if dropped {
                    } else if is_signal(&buf[read..end]) {
                        self.divert(m.addr, &buf[read..end]);
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
                meta[kept] = RecvMeta { len: write, ..m };
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
        self.inner.max_transmit_segments()
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

    /// Sends one signalling datagram from the media socket.
    pub async fn send(&self, to: SocketAddr, bytes: &[u8]) -> io::Result<()> {
        let mut poller = self.socket.inner.clone().create_io_poller();
        loop {
            let t = Transmit {
                destination: to,
                ecn: None,
                contents: bytes,
                segment_size: None,
                src_ip: None,
            };
            match self.socket.inner.try_send(&t) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx)).await?
                }
                r => return r,
            }
        }
    }

    /// The next signalling datagram, or `None` once quinn's endpoint is gone.
    pub async fn recv(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.rx.recv().await
    }
}
