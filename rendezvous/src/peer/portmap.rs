//! Port mapping on the home router, in the background: NAT-PMP (RFC 6886; answers in
//! milliseconds) and, when no NAT-PMP server answers, UPnP-IGD (igd-next; discovery takes up to
//! two seconds). A mapped media port is a candidate a peer behind any NAT can reach, which turns
//! symmetric-NAT cases that would need the relay into direct paths. Nothing waits for it: the
//! mapping is announced with the next keepalive when it arrives. Renewed at half its lease,
//! deleted on [`PortMapper::stop`].

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use super::paths::PathManager;
use std::time::Duration;

use igd_next::aio::tokio::Tokio;
use igd_next::{PortMappingProtocol, SearchOptions};
use natpmp::{Protocol, Response};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

const LEASE: u32 = 3600;
const DESCRIPTION: &str = "inclubit media";

enum Mapped {
    Pmp,
    Igd(igd_next::aio::Gateway<Tokio>),
}

pub struct PortMapper {
    external: watch::Receiver<Option<SocketAddr>>,
    state: Arc<Mutex<Option<Mapped>>>,
    internal_port: u16,
    task: JoinHandle<()>,
}

async fn natpmp(internal_port: u16, lease: u32) -> Option<SocketAddr> {
    let run = async {
        let mut n = natpmp::new_tokio_natpmp().await.ok()?;
        n.send_public_address_request().await.ok()?;
        let ip = match n.read_response_or_retry().await.ok()? {
            Response::Gateway(g) => *g.public_address(),
            _ => return None,
        };
        n.send_port_mapping_request(Protocol::UDP, internal_port, internal_port, lease)
            .await
            .ok()?;
        match n.read_response_or_retry().await.ok()? {
            Response::UDP(m) => Some(SocketAddr::from((ip, m.public_port()))),
            _ => None,
        }
    };
    // The crate retries for a minute by the RFC's schedule; a router that has NAT-PMP answers
    // at once.
    tokio::time::timeout(Duration::from_millis(300), run)
        .await
        .ok()
        .flatten()
}

/// Our address on the LAN towards `gateway` (what the router must forward to).
fn local_ip_towards(gateway: IpAddr) -> Option<IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect((gateway, 1900)).ok()?;
    Some(s.local_addr().ok()?.ip())
}

async fn igd(internal_port: u16) -> Option<(SocketAddr, igd_next::aio::Gateway<Tokio>)> {
    let mut opts = SearchOptions::default();
    opts.timeout = Some(Duration::from_secs(2));
    opts.single_search_timeout = Some(Duration::from_secs(2));
    let gw = igd_next::aio::tokio::search_gateway(opts).await.ok()?;
    let local = SocketAddr::new(local_ip_towards(gw.addr.ip())?, internal_port);
    let ip = gw.get_external_ip().await.ok()?;
    gw.add_port(
        PortMappingProtocol::UDP,
        internal_port,
        local,
        LEASE,
        DESCRIPTION,
    )
    .await
    .ok()?;
    Some((SocketAddr::new(ip, internal_port), gw))
}

impl PortMapper {
    /// Starts mapping `internal_port` on the default gateway.
    pub fn start(internal_port: u16) -> Self {
        let (tx, external) = watch::channel(None);
        let state = Arc::new(Mutex::new(None));
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let got = match natpmp(internal_port, LEASE).await {
                    Some(a) => Some((a, Mapped::Pmp, "NAT-PMP")),
                    None => igd(internal_port)
                        .await
                        .map(|(a, gw)| (a, Mapped::Igd(gw), "UPnP-IGD")),
                };
                let Some((addr, how, name)) = got else {
                    tracing::debug!("no router port mapping (no NAT-PMP or UPnP-IGD gateway)");
                    return;
                };
                if *tx.borrow() != Some(addr) {
                    tracing::info!(external = %addr, internal_port, "port mapped on the router ({name})");
                    let _ = tx.send(Some(addr));
                }
                if let Ok(mut s) = st.lock() {
                    *s = Some(how);
                }
                tokio::time::sleep(Duration::from_secs(LEASE as u64 / 2)).await;
            }
        });
        Self {
            external,
            state,
            internal_port,
            task,
        }
    }

    /// The mapped address as soon as there is one.
    pub fn external(&self) -> watch::Receiver<Option<SocketAddr>> {
        self.external.clone()
    }

    /// Deletes the mapping (best effort, bounded).
    pub async fn stop(self) {
        self.task.abort();
        let mapped = self.state.lock().ok().and_then(|mut s| s.take());
        let port = self.internal_port;
        let delete = async move {
            match mapped {
                Some(Mapped::Pmp) => {
                    let _ = natpmp(port, 0).await;
                }
                Some(Mapped::Igd(gw)) => {
                    let _ = gw.remove_port(PortMappingProtocol::UDP, port).await;
                }
                None => {}
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(500), delete).await;
    }
}

impl Drop for PortMapper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether to ask the router for a port mapping: not when told not to, and not when the peer
/// we talk to is on this machine (loopback), where nobody outside needs to reach us.
pub fn wanted(no_upnp: bool, bind: SocketAddr, rendezvous: SocketAddr) -> bool {
    !no_upnp && !bind.ip().is_loopback() && !rendezvous.ip().is_loopback()
}

/// When the router mapping arrives: announce it as a candidate and teach the punchers.
pub fn spawn_announcer(
    mapper: &PortMapper,
    hosts: Vec<SocketAddr>,
    updater: mpsc::UnboundedSender<Vec<SocketAddr>>,
    paths: Arc<PathManager>,
) {
    let mut external = mapper.external();
    tokio::spawn(async move {
        loop {
            let current = *external.borrow_and_update();
            if let Some(addr) = current {
                let mut h = hosts.clone();
                if !h.contains(&addr) {
                    h.push(addr);
                }
                let _ = updater.send(h);
                paths.set_mapped(addr);
            }
            if external.changed().await.is_err() {
                return;
            }
        }
    });
}
