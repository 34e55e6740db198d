//! Drives a [`Puncher`] per peer and steers the media socket's routes from its events.
//!
//! quinn always talks to a peer's virtual address; this module decides, per peer, whether those
//! packets go straight to a punched address or through the relay. Switching is invisible to
//! QUIC (same remote address, same connection, no migration), so a relay → direct upgrade costs
//! no keyframe and shows no glitch: packets already on the relay still arrive and QUIC reorders.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::wire::signal::PeerMsg;
use tokio::sync::mpsc;

use super::punch::{PunchConfig, PunchEvent, Puncher};
use super::signal::PeerSink;
use super::MediaSocket;

/// Called with every punch event (for stats lines and tests).
pub type PathObserver = Arc<dyn Fn(SocketAddr, &PunchEvent) + Send + Sync>;

enum Input {
    Msg(SocketAddr, PeerMsg),
    Candidates(Vec<SocketAddr>),
    Mapped(SocketAddr),
}

pub struct PathManager {
    socket: Arc<MediaSocket>,
    cfg: PunchConfig,
    peers: Mutex<HashMap<u64, mpsc::UnboundedSender<Input>>>,
    observer: Option<PathObserver>,
    /// Our router port mapping, if any.
    mapped: Mutex<Option<SocketAddr>>,
}

impl PathManager {
    /// Returns the manager and the sink the signalling driver forwards punch datagrams to.
    pub fn start(
        socket: Arc<MediaSocket>,
        cfg: PunchConfig,
        observer: Option<PathObserver>,
        mapped: Option<SocketAddr>,
    ) -> (Arc<Self>, PeerSink) {
        let me = Arc::new(Self {
            socket,
            cfg,
            peers: Mutex::new(HashMap::new()),
            observer,
            mapped: Mutex::new(mapped),
        });
        let (tx, mut rx) = mpsc::unbounded_channel::<(SocketAddr, PeerMsg)>();
        let weak = Arc::downgrade(&me);
        tokio::spawn(async move {
            while let Some((from, msg)) = rx.recv().await {
                let Some(me) = weak.upgrade() else { return };
                let peers = me.peers.lock().map(|p| p.get(&msg.session()).cloned());
                if let Ok(Some(p)) = peers {
                    let _ = p.send(Input::Msg(from, msg));
                }
            }
        });
        (me, tx)
    }

    /// Starts punching towards a peer (or adds candidates); returns its virtual address.
    pub fn add_peer(&self, session: u64, secret: u64, candidates: &[SocketAddr]) -> SocketAddr {
        let virt = self.socket.relay_peer(session);
        let Ok(mut peers) = self.peers.lock() else {
            return virt;
        };
        if let Some(p) = peers.get(&session) {
            let _ = p.send(Input::Candidates(candidates.to_vec()));
            return virt;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        peers.insert(session, tx);
        let puncher = Puncher::with_mapping(
            Instant::now(),
            session,
            secret,
            candidates.to_vec(),
            self.mapped.lock().ok().and_then(|m| *m),
            self.cfg.clone(),
        );
        tokio::spawn(drive(
            puncher,
            rx,
            self.socket.clone(),
            virt,
            self.observer.clone(),
        ));
        virt
    }

    /// Our router port mapping arrived: punchers learn to recognise pings through it.
    pub fn set_mapped(&self, addr: SocketAddr) {
        if let Ok(mut m) = self.mapped.lock() {
            *m = Some(addr);
        }
        if let Ok(peers) = self.peers.lock() {
            for p in peers.values() {
                let _ = p.send(Input::Mapped(addr));
            }
        }
    }

    /// Stops punching towards peers not in `keep` (they left).
    pub fn retain(&self, keep: &[u64]) {
        if let Ok(mut peers) = self.peers.lock() {
            peers.retain(|s, _| keep.contains(s));
        }
    }
}

async fn drive(
    mut p: Puncher,
    mut rx: mpsc::UnboundedReceiver<Input>,
    socket: Arc<MediaSocket>,
    virt: SocketAddr,
    observer: Option<PathObserver>,
) {
    loop {
        while let Some((to, msg)) = p.poll_transmit() {
            if let Err(e) = socket.send_datagram(to, &msg.encode()).await {
                tracing::debug!(%to, "punch send failed: {e}");
            }
        }
        while let Some(e) = p.poll_event() {
            match &e {
                PunchEvent::Direct { addr, rtt, upnp } => {
                    let kind = if *upnp { "upnp" } else { "direct" };
                    tracing::info!(peer = %virt, %addr, ?rtt, "path: {kind}");
                    socket.set_upnp(virt, *upnp);
                    socket.set_direct(virt, Some(*addr));
                }
                PunchEvent::PeerUsesMapping => socket.set_upnp(virt, true),
                PunchEvent::PeerSeen { addr } => socket.accept_from(*addr, virt),
                PunchEvent::Lost { addr } => {
                    tracing::info!(peer = %virt, %addr, "direct path lost: back to the relay");
                    socket.set_direct(virt, None);
                }
                PunchEvent::GaveUp => {
                    tracing::info!(peer = %virt, "no direct path yet; staying on the relay")
                }
            }
            if let Some(o) = &observer {
                o(virt, &e);
            }
        }
        let deadline = tokio::time::Instant::from_std(p.poll_timeout());
        tokio::select! {
            i = rx.recv() => match i {
                Some(Input::Msg(from, msg)) => p.handle_msg(Instant::now(), from, msg),
                Some(Input::Candidates(c)) => p.add_candidates(Instant::now(), &c),
                Some(Input::Mapped(a)) => p.set_mapped(a),
                None => break,
            },
            _ = tokio::time::sleep_until(deadline) => p.handle_timeout(Instant::now()),
        }
    }
    socket.forget(virt);
}
