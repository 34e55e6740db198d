//! The web server's limits against clients that hold connections or flood offers (issue 13):
//! a slow client is cut off at the header timeout while others are served, a client over its
//! connection cap is refused at once, and WHEP offers beyond a client's rate get `429` with
//! `Retry-After` while other clients' go through. Loopback only (127.0.0.1 and 127.0.0.2).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inclubit_rendezvous::web::limits::{Rate, WebLimits};
use inclubit_rendezvous::web::{WebServer, WebState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

async fn server(limits: WebLimits) -> WebServer {
    let state = WebState::new(None, None, 0).unwrap().with_limits(limits);
    WebServer::start("127.0.0.1:0".parse().unwrap(), Arc::new(state), None)
        .await
        .unwrap()
}

/// A connection to `to` from loopback address `from`.
async fn connect(from: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    s.connect(to).await.unwrap()
}

/// Sends `raw` and reads until the server closes (within `within`): what it answered.
async fn exchange(c: &mut TcpStream, raw: &str, within: Duration) -> String {
    c.write_all(raw.as_bytes()).await.unwrap();
    read_to_close(c, within).await
}

async fn read_to_close(c: &mut TcpStream, within: Duration) -> String {
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, c.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the server did not close within {within:?}");
    String::from_utf8_lossy(&got).into_owned()
}

const GET: &str = "GET /favicon.ico HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn a_slow_client_is_cut_off_while_others_are_served() {
    let web = server(WebLimits {
        header_timeout: Duration::from_secs(1),
        connections_per_client: 4,
        ..WebLimits::default()
    })
    .await;
    let at = web.local_addr;
    // Four connections that never finish their request head.
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut c = connect("127.0.0.1", at).await;
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        slow.push(c);
    }
    // A fifth from the same client is refused at once.
    let mut fifth = connect("127.0.0.1", at).await;
    let answer = read_to_close(&mut fifth, Duration::from_millis(500)).await;
    assert!(answer.is_empty(), "{answer}");
    // Another client is served meanwhile.
    let mut other = connect("127.0.0.2", at).await;
    let answer = exchange(&mut other, GET, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The slow ones are cut off at the header timeout, not before.
    for c in &mut slow {
        read_to_close(c, Duration::from_secs(5)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(900));
    // Their places are free again.
    let mut again = connect("127.0.0.1", at).await;
    let answer = exchange(&mut again, GET, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_at_the_header_timeout() {
    let web = server(WebLimits {
        header_timeout: Duration::from_secs(1),
        ..WebLimits::default()
    })
    .await;
    let mut c = connect("127.0.0.1", web.local_addr).await;
    c.write_all(b"GET /favicon.ico HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Answered, then held open with no next request: closed.
    let answer = read_to_close(&mut c, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn offers_beyond_a_clients_rate_get_429_with_retry_after() {
    let web = server(WebLimits {
        offers_per_client: Rate {
            burst: 3.0,
            per_second: 0.5,
        },
        ..WebLimits::default()
    })
    .await;
    let offer = "POST /whep/ABC-DEF HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n\
                 Content-Length: 2\r\nConnection: close\r\n\r\nv=";
    let status = |answer: &str| answer.split_whitespace().nth(1).unwrap_or("").to_string();
    // This server has no bridge: an offer that passes the limit is 503 no_bridge.
    for _ in 0..3 {
        let mut c = connect("127.0.0.1", web.local_addr).await;
        let a = exchange(&mut c, offer, Duration::from_secs(5)).await;
        assert_eq!(status(&a), "503", "{a}");
    }
    let mut c = connect("127.0.0.1", web.local_addr).await;
    let a = exchange(&mut c, offer, Duration::from_secs(5)).await;
    assert_eq!(status(&a), "429", "{a}");
    assert!(a.to_ascii_lowercase().contains("retry-after: 2"), "{a}");
    assert!(a.contains("too_many_offers"), "{a}");
    // Another client's offer goes through.
    let mut c = connect("127.0.0.2", web.local_addr).await;
    let a = exchange(&mut c, offer, Duration::from_secs(5)).await;
    assert_eq!(status(&a), "503", "{a}");
}

#[tokio::test]
async fn offers_for_one_room_are_capped_whichever_clients_send_them() {
    let web = server(WebLimits {
        offers_per_room: Rate {
            burst: 2.0,
            per_second: 0.5,
        },
        ..WebLimits::default()
    })
    .await;
    let offer = |code: &str| {
        format!(
            "POST /whep/{code} HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n\
             Content-Length: 2\r\nConnection: close\r\n\r\nv="
        )
    };
    let status = |answer: &str| answer.split_whitespace().nth(1).unwrap_or("").to_string();
    // Two clients spend the room's burst (this server has no bridge: 503 once past the limits).
    for from in ["127.0.0.1", "127.0.0.2"] {
        let mut c = connect(from, web.local_addr).await;
        let a = exchange(&mut c, &offer("K7F-Q2M-4X9P"), Duration::from_secs(5)).await;
        assert_eq!(status(&a), "503", "{a}");
    }
    // A third client for that room waits; the same client for another room does not.
    let mut c = connect("127.0.0.3", web.local_addr).await;
    let a = exchange(&mut c, &offer("K7F-Q2M-4X9Q"), Duration::from_secs(5)).await;
    assert_eq!(status(&a), "429", "{a}");
    let mut c = connect("127.0.0.3", web.local_addr).await;
    let a = exchange(&mut c, &offer("AAA-AAA-AAAA"), Duration::from_secs(5)).await;
    assert_eq!(status(&a), "503", "{a}");
}
