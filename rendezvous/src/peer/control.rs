//! The control stream between a sender and one viewer: length-prefixed [`Control`] messages,
//! and the pairing that opens it (see [`super::pairing`]).

use std::time::Duration;

use crate::code::PairingSecret;
use crate::wire::media::{Control, Preference, MAX_CONTROL_LEN};

use super::pairing::{
    Binding, PairingError, SenderPairing, ViewerPairing, BINDING_LEN, EXPORTER_LABEL,
};
use super::NetError;

/// How long each side waits for the other's pairing message.
const PAIRING_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a session with a peer failed after the rendezvous.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("connection to the sender: {0}")]
    Connection(String),
    #[error("the sender sent something malformed: {0}")]
    Protocol(String),
    #[error("pairing failed: {0}")]
    Pairing(#[from] PairingError),
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

async fn write_control(send: &mut quinn::SendStream, msg: &Control) -> Result<(), SessionError> {
    send.write_all(&msg.frame())
        .await
        .map_err(|e| SessionError::Connection(e.to_string()))
}

/// The next control message within the pairing timeout; `what` names it in errors.
async fn expect_control(recv: &mut quinn::RecvStream, what: &str) -> Result<Control, SessionError> {
    match tokio::time::timeout(PAIRING_TIMEOUT, read_control(recv)).await {
        Err(_) => Err(SessionError::Protocol(format!("no {what} within 5 s"))),
        Ok(Ok(Some(m))) => Ok(m),
        Ok(Ok(None)) => Err(SessionError::Connection(format!(
            "the stream ended before the {what}"
        ))),
        Ok(Err(e)) => Err(e),
    }
}

/// What both ends of this TLS session (and only they) read from it.
fn binding(conn: &quinn::Connection) -> Result<Binding, SessionError> {
    let mut b = [0u8; BINDING_LEN];
    conn.export_keying_material(&mut b, EXPORTER_LABEL, b"")
        .map_err(|_| SessionError::Connection("no TLS exporter on this connection".into()))?;
    Ok(b)
}

/// The viewer's side: hello with our SPAKE2 message, the sender's confirmation checked, ours
/// sent. Nothing from the sender is trusted before this returns `Ok`.
pub async fn pair_as_viewer(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    (name, prefer): (String, Preference),
    secret: PairingSecret,
) -> Result<(), SessionError> {
    let (pairing, pake) = ViewerPairing::start(secret);
    write_control(send, &Control::ViewerHello { name, prefer, pake }).await?;
    let Control::Pairing { pake, confirm } = expect_control(recv, "pairing answer").await? else {
        return Err(SessionError::Protocol("expected the pairing answer".into()));
    };
    let ours = pairing.finish(&pake, &confirm, &binding(conn)?)?;
    write_control(send, &Control::PairConfirm { confirm: ours }).await
}

/// The sender's side: reads the viewer's hello, answers, and checks its confirmation. Returns
/// the viewer's name and wishes once it has proved it holds the code's secret on this very
/// connection; an `Err(SessionError::Pairing)` is a failed attempt to count.
pub async fn pair_as_sender(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    secret: PairingSecret,
) -> Result<(String, Preference), SessionError> {
    let Control::ViewerHello { name, prefer, pake } = expect_control(recv, "hello").await? else {
        return Err(SessionError::Protocol("expected the viewer's hello".into()));
    };
    let (pairing, pake, confirm) = SenderPairing::answer(secret, &pake, &binding(conn)?)?;
    write_control(send, &Control::Pairing { pake, confirm }).await?;
    // A viewer that takes our answer and goes away has had its one guess: count it.
    match expect_control(recv, "pairing confirmation").await {
        Ok(Control::PairConfirm { confirm }) => pairing.check(&confirm)?,
        _ => return Err(PairingError::Mismatch.into()),
    }
    Ok((name, prefer))
}
