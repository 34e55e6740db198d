//! A peer's networking (sender, viewer, browser bridge): one UDP socket per peer carries both
//! QUIC media and rendezvous signalling.

pub mod bwe;
pub mod candidates;
pub mod congestion;
pub mod control;
pub mod endpoint;
pub mod jitter;
pub mod netem;
pub mod pairing;
pub mod paths;
pub mod portmap;
pub mod punch;
pub mod rendition;
pub mod reorder;
pub mod signal;
pub mod socket;
pub mod subscribe;

pub use endpoint::{Identity, PeerEndpoint};
pub use socket::{is_relay_address, Impairment, MediaSocket, SignalPort};

use std::net::SocketAddr;

/// Which paths a viewer may use to reach the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathPolicy {
    /// Direct candidates first, the relay in parallel a moment later.
    #[default]
    Any,
    DirectOnly,
    RelayOnly,
}

/// "relay" for a virtual relay address, "direct" otherwise.
pub fn path_name(remote: &SocketAddr) -> &'static str {
    if is_relay_address(remote) {
        "relay"
    } else {
        "direct"
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot bind the media socket to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot resolve rendezvous address `{0}`")]
    Resolve(String),
    #[error("rendezvous {0} did not answer (is it running, and is UDP to it allowed?)")]
    Unreachable(SocketAddr),
    #[error("rendezvous refused: {0}")]
    Refused(crate::wire::signal::ErrorKind),
    #[error("could not reach the sender at any of {0:?}")]
    NoPath(Vec<SocketAddr>),
    #[error(
        "could not reach the sender directly at any of {candidates:?} (--force-direct forbids \
         the relay); NAT types seen: this side {ours}, the sender {theirs}"
    )]
    NoDirectPath {
        candidates: Vec<SocketAddr>,
        ours: &'static str,
        theirs: &'static str,
    },
    /// The sender runs with `--force-direct` and refused us over the relay.
    #[error(
        "the sender accepts direct paths only (it runs with --force-direct) and none worked: \
         tried {candidates:?}; NAT types seen: this side {ours}, the sender {theirs}"
    )]
    SenderDirectOnly {
        candidates: Vec<SocketAddr>,
        ours: &'static str,
        theirs: &'static str,
    },
    /// The sender refused the connection on the path it came by (its `--force-relay` or
    /// `--force-direct`).
    #[error(
        "the sender refused the connection on this path (it forces the relay or a direct path)"
    )]
    SenderRefused,
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What a peer's NAT looks like from its host addresses and the address the rendezvous saw.
/// One observation cannot tell cone from symmetric for sure; a changed port is the tell-tale.
pub fn describe_nat(hosts: &[SocketAddr], reflexive: SocketAddr) -> &'static str {
    if hosts.contains(&reflexive) {
        "no NAT (public address)"
    } else if hosts.iter().any(|h| h.port() == reflexive.port()) {
        "port-preserving NAT (cone-like)"
    } else {
        "port-changing NAT (symmetric-like)"
    }
}

/// Resolves `HOST:PORT` (default port 7000).
pub async fn resolve(s: &str) -> Result<SocketAddr, NetError> {
    let with_port = if s
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        s.to_string()
    } else {
        format!("{s}:7000")
    };
    tokio::net::lookup_host(&with_port)
        .await
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| NetError::Resolve(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nat_descriptions() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            describe_nat(&[a("198.18.0.5:4000")], a("198.18.0.5:4000")),
            "no NAT (public address)"
        );
        assert_eq!(
            describe_nat(&[a("10.0.0.2:4000")], a("198.18.0.2:4000")),
            "port-preserving NAT (cone-like)"
        );
        assert_eq!(
            describe_nat(&[a("10.0.0.2:4000")], a("198.18.0.2:51234")),
            "port-changing NAT (symmetric-like)"
        );
    }
}
