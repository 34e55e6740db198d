//! End-to-end pairing over real QUIC on loopback (issue 13): the code's secret pairs a viewer
//! with its sender; a wrong secret fails at both ends; and a rendezvous that hands the viewer
//! its own certificate fingerprint and relays the connection byte for byte to the real sender
//! (a man in the middle) is refused by both ends, though every byte it relays is genuine.

use std::net::SocketAddr;

use inclubit_rendezvous::code::PairingSecret;
use inclubit_rendezvous::peer::control::{pair_as_sender, pair_as_viewer, SessionError};
use inclubit_rendezvous::peer::endpoint::{client_config, Identity, PeerEndpoint, SERVER_NAME};
use inclubit_rendezvous::peer::pairing::PairingError;
use inclubit_rendezvous::wire::media::Preference;
use inclubit_rendezvous::wire::signal::Fingerprint;
use tokio::sync::mpsc;

const LOOPBACK: &str = "127.0.0.1:0";

fn secret(s: &str) -> PairingSecret {
    s.parse().unwrap()
}

/// A sender that pairs every connection with `secret` and reports each outcome.
fn sender(
    secret: PairingSecret,
) -> (
    PeerEndpoint,
    Fingerprint,
    mpsc::UnboundedReceiver<Result<(), SessionError>>,
) {
    let id = Identity::generate().unwrap();
    let ep = PeerEndpoint::bind(LOOPBACK.parse().unwrap(), Some(&id), None).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let endpoint = ep.endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                let Ok((mut send, mut recv)) = conn.accept_bi().await else {
                    return;
                };
                let r = pair_as_sender(&conn, &mut send, &mut recv, secret).await;
                // Paired: end our side so the viewer knows (the pipeline says Hello here).
                let _ = send.finish();
                let _ = tx.send(r.map(|_| ()));
                conn.closed().await;
            });
        }
    });
    (ep, id.fingerprint(), rx)
}

async fn viewer(
    to: SocketAddr,
    fp: Fingerprint,
    secret: PairingSecret,
) -> Result<(), SessionError> {
    let ep = PeerEndpoint::bind(LOOPBACK.parse().unwrap(), None, None).unwrap();
    let conn = ep
        .endpoint
        .connect_with(client_config(fp).unwrap(), to, SERVER_NAME)
        .unwrap()
        .await
        .map_err(|e| SessionError::Connection(e.to_string()))?;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let hello = ("test".to_string(), Preference::default());
    let r = pair_as_viewer(&conn, &mut send, &mut recv, hello, secret).await;
    if r.is_ok() {
        // Closing now could drop our confirmation unsent: wait for the sender's side to end.
        let _ = recv.read_to_end(64).await;
    }
    conn.close(0u32.into(), b"done");
    r
}

fn is_mismatch(r: &Result<(), SessionError>) -> bool {
    matches!(r, Err(SessionError::Pairing(PairingError::Mismatch)))
}

#[tokio::test]
async fn the_right_secret_pairs_and_a_wrong_one_fails_at_both_ends() {
    let (s, fp, mut outcomes) = sender(secret("4X9P"));
    viewer(s.local_addr, fp, secret("4X9P")).await.unwrap();
    outcomes.recv().await.unwrap().unwrap();

    let r = viewer(s.local_addr, fp, secret("4X9Q")).await;
    assert!(is_mismatch(&r), "{r:?}");
    let r = outcomes.recv().await.unwrap();
    assert!(is_mismatch(&r), "{r:?}");
}

#[tokio::test]
async fn a_rendezvous_in_the_middle_is_refused_by_both_ends() {
    let (s, real_fp, mut outcomes) = sender(secret("4X9P"));
    // The middle: its own identity (the fingerprint a malicious rendezvous hands the viewer),
    // and a connection to the real sender (whose fingerprint it knows) for each viewer.
    let mid_id = Identity::generate().unwrap();
    let mid = PeerEndpoint::bind(LOOPBACK.parse().unwrap(), Some(&mid_id), None).unwrap();
    let upstream = PeerEndpoint::bind(LOOPBACK.parse().unwrap(), None, None).unwrap();
    let (mid_ep, up_ep, to) = (
        mid.endpoint.clone(),
        upstream.endpoint.clone(),
        s.local_addr,
    );
    tokio::spawn(async move {
        while let Some(incoming) = mid_ep.accept().await {
            let up_ep = up_ep.clone();
            tokio::spawn(async move {
                let Ok(down) = incoming.await else { return };
                let Ok((mut d_send, mut d_recv)) = down.accept_bi().await else {
                    return;
                };
                let up = up_ep
                    .connect_with(client_config(real_fp).unwrap(), to, SERVER_NAME)
                    .unwrap()
                    .await
                    .unwrap();
                let (mut u_send, mut u_recv) = up.open_bi().await.unwrap();
                // Every byte relayed as is, both ways.
                let a = tokio::io::copy(&mut d_recv, &mut u_send);
                let b = tokio::io::copy(&mut u_recv, &mut d_send);
                let _ = tokio::join!(a, b);
            });
        }
    });
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        viewer(mid.local_addr, mid_id.fingerprint(), secret("4X9P")),
    )
    .await
    .expect("the viewer decided within 30 s");
    assert!(is_mismatch(&r), "the viewer accepted the middle: {r:?}");
    assert!(
        r.unwrap_err().to_string().contains("someone between"),
        "the viewer's line names the possibility"
    );
    let r = outcomes.recv().await.unwrap();
    assert!(is_mismatch(&r), "the sender accepted the middle: {r:?}");
}
