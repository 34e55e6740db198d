//! Port mapping on the home router: NAT-PMP (RFC 6886, served by most routers and by
//! miniupnpd). A mapped media port is a candidate a peer behind any NAT can reach, which turns
//! symmetric-NAT cases that would need the relay into direct paths. The mapping is renewed at
//! half its lifetime and deleted on exit.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use natpmp::{Protocol, Response};
use tokio::task::JoinHandle;

const LIFETIME: u32 = 3600;

pub struct PortMapping {
    pub external: SocketAddr,
    internal_port: u16,
    renew: JoinHandle<()>,
}

async fn request(internal_port: u16, lifetime: u32, timeout: Duration) -> Option<(Ipv4Addr, u16)> {
    let run = async {
        let mut n = natpmp::new_tokio_natpmp().await.ok()?;
        n.send_public_address_request().await.ok()?;
        let ip = match n.read_response_or_retry().await.ok()? {
            Response::Gateway(g) => *g.public_address(),
            _ => return None,
        };
        n.send_port_mapping_request(Protocol::UDP, internal_port, internal_port, lifetime)
            .await
            .ok()?;
        match n.read_response_or_retry().await.ok()? {
            Response::UDP(m) => Some((ip, m.public_port())),
            _ => None,
        }
    };
    tokio::time::timeout(timeout, run).await.ok().flatten()
}

impl PortMapping {
    /// Maps `internal_port` on the default gateway, or `None` (no gateway, no NAT-PMP, or no
    /// answer within `timeout`).
    pub async fn create(internal_port: u16, timeout: Duration) -> Option<Self> {
        let (ip, port) = request(internal_port, LIFETIME, timeout).await?;
        let external = SocketAddr::from((ip, port));
        tracing::info!(%external, internal_port, "port mapped on the router (NAT-PMP)");
        let renew = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(LIFETIME as u64 / 2)).await;
                if request(internal_port, LIFETIME, Duration::from_secs(2))
                    .await
                    .is_none()
                {
                    tracing::warn!("could not renew the router's port mapping");
                }
            }
        });
        Some(Self {
            external,
            internal_port,
            renew,
        })
    }

    /// Deletes the mapping (best effort, bounded).
    pub async fn remove(self) {
        self.renew.abort();
        let _ = request(self.internal_port, 0, Duration::from_millis(300)).await;
    }
}

impl Drop for PortMapping {
    fn drop(&mut self) {
        self.renew.abort();
    }
}

/// Whether to ask the router for a port mapping: not when told not to, and not when the peer
/// we talk to is on this machine (loopback), where nobody outside needs to reach us.
pub fn wanted(no_upnp: bool, bind: SocketAddr, rendezvous: SocketAddr) -> bool {
    !no_upnp && !bind.ip().is_loopback() && !rendezvous.ip().is_loopback()
}
