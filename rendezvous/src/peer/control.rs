//! The control stream between a sender and one viewer: length-prefixed [`Control`] messages.

use crate::wire::media::{Control, MAX_CONTROL_LEN};

use super::NetError;

/// Why a session with a peer failed after the rendezvous.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("connection to the sender: {0}")]
    Connection(String),
    #[error("the sender sent something malformed: {0}")]
    Protocol(String),
}

/// Reads one length-prefixed control message; `None` when the peer finished the stream.
pub async fn read_control(recv: &mut quinn::RecvStream) -> Result<Option<Control>, SessionError> {
    let mut len = [0u8; 2];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(SessionError::Connection(e.to_string())),
    }
    let len = u16::from_be_bytes(len) as usize;
    if len > MAX_CONTROL_LEN {
        return Err(SessionError::Protocol(format!(
            "control message of {len} bytes"
        )));
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| SessionError::Connection(e.to_string()))?;
    Control::decode(&body)
        .map(Some)
        .map_err(|e| SessionError::Protocol(e.to_string()))
}
