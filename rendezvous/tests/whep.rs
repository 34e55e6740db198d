//! WHEP against a room whose sender is registered but never answers QUIC: a clear 503.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use inclubit_rendezvous::client::{ClientEvent, Role};
use inclubit_rendezvous::peer::signal::Signalling;
use inclubit_rendezvous::peer::PeerEndpoint;
use inclubit_rendezvous::server::{rooms::RoomsConfig, Server, ServerConfig};
use inclubit_rendezvous::web::{WebArgs, WebService};
use str0m::media::{Direction, MediaKind};
use str0m::RtcConfig;

/// A browser-like offer (str0m receiving H.264 video).
fn offer() -> String {
    let mut rtc = RtcConfig::new().build(Instant::now());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    api.apply().unwrap().0.to_sdp_string()
}

fn post(addr: SocketAddr, path: &str, body: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_that_never_answers_is_503_with_retry_after() {
    let server = Server::bind(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        rooms: RoomsConfig::default(),
    })
    .await
    .unwrap();
    let rv = server.local_addr();
    tokio::spawn(server.run());

    // Opens a room, but its endpoint accepts no connections (no identity) and never punches.
    let ep = PeerEndpoint::bind("127.0.0.1:0".parse().unwrap(), None, None).unwrap();
    let (_signalling, mut events) = Signalling::spawn(
        ep.signal,
        rv,
        Role::Sender {
            hosts: vec![ep.local_addr],
            fingerprint: [7; 32],
            claim: None,
            direct_only: false,
        },
        None,
    );
    let code = loop {
        match events.recv().await.expect("signalling events") {
            ClientEvent::Opened { code, .. } => break code,
            _ => continue,
        }
    };

    let args = WebArgs {
        webrtc: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    let web = WebService::start("127.0.0.1:0".parse().unwrap(), &args, rv)
        .await
        .unwrap();
    let addr = web.server.local_addr;
    // Any secret: the sender never answers, so pairing is never reached.
    let path = format!("/whep/{code}-4X9P");
    let sdp = offer();
    let resp = tokio::task::spawn_blocking(move || post(addr, &path, &sdp))
        .await
        .unwrap();
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("retry-after: 2"),
        "{resp}"
    );
    assert!(resp.contains("\"sender_offline\""), "{resp}");
    assert!(resp.contains("cannot be reached"), "{resp}");
}
