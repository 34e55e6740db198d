//! Wires the stages together; the only place that spawns tasks and threads.

mod decoding;
mod deliver;
pub mod demo;
pub mod ladder;
pub mod record;
mod room;
pub mod send;
pub mod stats;
pub mod view;

use crate::capture::CaptureError;
use crate::decode::DecodeError;
use crate::encode::EncodeError;
use crate::net::NetError;
use crate::render::RenderError;
use inclubit_rendezvous::wire::signal::ErrorKind;

/// Why a pipeline stopped. [`PipelineError::exit_code`] maps it to the documented exit codes.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Rendezvous(#[from] inclubit_rendezvous::server::ServerError),
    #[error("connection to the sender: {0}")]
    Connection(String),
    #[error("the sender sent something malformed: {0}")]
    Protocol(String),
    /// The other end does not hold this code's secret on this connection.
    #[error("pairing with the sender failed: {0}")]
    Pairing(#[from] inclubit_rendezvous::peer::pairing::PairingError),
    /// `--xr` and no headset to render to.
    #[error("{0}")]
    Headset(String),
    #[error(transparent)]
    Record(#[from] record::RecordError),
    #[error("{0}")]
    Other(String),
}

impl From<crate::net::control::SessionError> for PipelineError {
    fn from(e: crate::net::control::SessionError) -> Self {
        use crate::net::control::SessionError as S;
        match e {
            S::Net(e) => Self::Net(e),
            S::Connection(e) => Self::Connection(e),
            S::Protocol(e) => Self::Protocol(e),
            S::Pairing(e) => Self::Pairing(e),
        }
    }
}

/// Exit codes, also listed in `inclubit --help` and the README.
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILURE: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const ROOM_NOT_FOUND: i32 = 3;
    pub const NETWORK: i32 = 4;
    pub const SOURCE: i32 = 5;
    pub const GRAPHICS: i32 = 6;
    /// The code's secret part did not pair: a wrong code, or someone between.
    pub const PAIRING: i32 = 7;
}

impl PipelineError {
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Capture(_) => exit::SOURCE,
            Self::Net(NetError::Refused(ErrorKind::RoomNotFound)) => exit::ROOM_NOT_FOUND,
            Self::Net(_) | Self::Connection(_) | Self::Rendezvous(_) => exit::NETWORK,
            Self::Render(_) | Self::Headset(_) => exit::GRAPHICS,
            Self::Pairing(_) => exit::PAIRING,
            _ => exit::FAILURE,
        }
    }
}
