//! Networking: one UDP socket per peer carries both QUIC media and rendezvous signalling.

pub mod candidates;
pub mod endpoint;
pub mod reorder;
pub mod signal;
pub mod socket;

pub use endpoint::{Identity, PeerEndpoint};
pub use socket::{Impairment, MediaSocket, SignalPort};

use std::net::SocketAddr;

/// Network flags shared by `send`, `view` and `demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct NetArgs {
    /// Rendezvous server, HOST:PORT. `send` without it runs its own on --rendezvous-port.
    #[arg(long, value_name = "HOST:PORT")]
    pub rendezvous: Option<String>,
    /// Local address for the media socket (0.0.0.0:0 picks any port on every interface).
    #[arg(long, default_value = "0.0.0.0:0", value_name = "ADDR")]
    pub bind: SocketAddr,
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
    Refused(inclubit_rendezvous::wire::signal::ErrorKind),
    #[error("could not reach the sender at any of {0:?}")]
    NoPath(Vec<SocketAddr>),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
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
