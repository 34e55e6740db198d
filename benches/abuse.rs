//! What an attacker gets from the rendezvous (issue 13), each figure beside the same attack on a
//! server without that limit, measured in the same run:
//! - join attempts per second that get an answer about the room (not `RateLimited`), for guesses
//!   from 1 address and from 253 loopback addresses (one /24);
//! - rooms 253 addresses of one /24 can hold;
//! - HTTP connections that never finish a request, still open 12 s later (500 of them, from 8
//!   addresses);
//! - WHEP offers per second that pass the limits, from 1 client and from 50;
//! - and what a normal user sees meanwhile: a sender and a viewer from another network, from
//!   the sender's start to the viewer's first decoded frame, with no attack, during the guessing
//!   from 253 addresses and with the attacker's /24 holding all the rooms it can; and a page
//!   fetch from another address while the slow connections are held.
//!
//! Run: `cargo bench --bench abuse` (INCLUBIT_BENCH_SECS, default 3, per attack).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inclubit::capture::{CaptureConfig, SourceSpec};
use inclubit::pipeline::send::{self, SendConfig};
use inclubit::pipeline::view::{self, Display, FrameSlot, ViewConfig};
use inclubit::rendezvous::code::RoomCode;
use inclubit::rendezvous::server::{rooms::RoomsConfig, Server, ServerConfig};
use inclubit::rendezvous::web::limits::{Rate, WebLimits};
use inclubit::rendezvous::web::{WebServer, WebState};
use inclubit::rendezvous::wire::signal::{ClientMsg, ErrorKind, ServerMsg};

fn secs() -> f64 {
    std::env::var("INCLUBIT_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0)
}

/// No limit worth the name: the baseline server.
fn unlimited() -> RoomsConfig {
    RoomsConfig {
        rate_per_ip: 1e9,
        burst_per_ip: 1e9,
        joins_per_network: 1e9,
        join_burst_per_network: 1e9,
        misses_per_sec: 1e9,
        miss_burst: 1e9,
        rooms_per_network: usize::MAX,
        ..RoomsConfig::default()
    }
}

fn start(rt: &tokio::runtime::Runtime, rooms: RoomsConfig) -> SocketAddr {
    let server = rt
        .block_on(Server::bind(ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            rooms,
        }))
        .unwrap();
    let addr = server.local_addr();
    rt.spawn(server.run());
    addr
}

fn sockets(n: u8, to: SocketAddr) -> Vec<UdpSocket> {
    (0..n)
        .map(|i| {
            let s = UdpSocket::bind((format!("127.0.0.{}", i + 2).as_str(), 0)).unwrap();
            s.connect(to).unwrap();
            s
        })
        .collect()
}

/// Join attempts for random codes from `from` addresses, a round every millisecond (one attempt
/// from each address): answers per second by kind.
fn guess(to: SocketAddr, from: u8, secs: f64) -> HashMap<&'static str, f64> {
    let socks = sockets(from, to);
    for s in &socks {
        s.set_nonblocking(true).unwrap();
    }
    let mut counts: HashMap<&'static str, u64> = HashMap::new();
    let mut buf = [0u8; 2048];
    let start = Instant::now();
    let mut txn = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        for s in &socks {
            txn += 1;
            let join = ClientMsg::Join {
                txn,
                code: RoomCode::from_bits((txn * 2_654_435_761) as u32),
                hosts: vec![],
            };
            let _ = s.send(&join.encode());
        }
        std::thread::sleep(Duration::from_millis(1));
        for s in &socks {
            while let Ok(n) = s.recv(&mut buf) {
                let kind = match ServerMsg::decode(&buf[..n]) {
                    Ok(ServerMsg::Error {
                        kind: ErrorKind::RateLimited,
                        ..
                    }) => "refused",
                    Ok(_) => "answered",
                    Err(_) => "other",
                };
                *counts.entry(kind).or_default() += 1;
            }
        }
    }
    let t = start.elapsed().as_secs_f64();
    counts.into_iter().map(|(k, v)| (k, v as f64 / t)).collect()
}

/// Rooms opened by 253 addresses of one /24, two attempts each.
fn squat(to: SocketAddr) -> usize {
    let socks = sockets(253, to);
    let mut opened = 0;
    let mut buf = [0u8; 2048];
    for (i, s) in socks.iter().enumerate() {
        for txn in 0..2u64 {
            let open = ClientMsg::Open {
                txn: (i as u64) << 8 | txn,
                hosts: vec![],
                fingerprint: [0; 32],
                claim: None,
                direct_only: false,
            };
            let _ = s.send(&open.encode());
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            // Its answer (a keepalive's answer may come first).
            while let Ok(n) = s.recv(&mut buf) {
                match ServerMsg::decode(&buf[..n]) {
                    Ok(ServerMsg::Opened { code, token, .. }) => {
                        opened += 1;
                        // Proved, as a real client does: the room stays.
                        let keepalive = ClientMsg::Keepalive {
                            code,
                            member: 0,
                            token,
                            hosts: vec![],
                        };
                        let _ = s.send(&keepalive.encode());
                        break;
                    }
                    Ok(ServerMsg::Error { .. }) => break,
                    _ => {}
                }
            }
        }
    }
    opened
}

/// 500 connections from 8 addresses that send half a request head: how many are open after
/// `wait`.
async fn slow_http(web: &WebServer, wait: Duration) -> usize {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conns = Vec::new();
    for i in 0..500u32 {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        let ip: IpAddr = format!("127.0.1.{}", 1 + i % 8).parse().unwrap();
        s.bind(SocketAddr::new(ip, 0)).unwrap();
        if let Ok(mut c) = s.connect(web.local_addr).await {
            let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await;
            conns.push(c);
        }
    }
    tokio::time::sleep(wait).await;
    let mut open = 0;
    for c in &mut conns {
        let mut b = [0u8; 64];
        // Closed connections read 0 (or fail) at once; open ones would block.
        match tokio::time::timeout(Duration::from_millis(5), c.read(&mut b)).await {
            Err(_) => open += 1,
            Ok(Ok(n)) if n > 0 => open += 1,
            _ => {}
        }
    }
    open
}

/// WHEP offers from `clients` addresses for `secs`: offers per second that passed the limits
/// (this server has no bridge: such an offer is `503 no_bridge`; a refused one `429`).
async fn offers(web: &WebServer, clients: u8, secs: f64) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = b"POST /whep/K7F-Q2M-4X9P HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n\
                Content-Length: 2\r\nConnection: close\r\n\r\nv=";
    let start = Instant::now();
    let mut passed = 0u64;
    let mut i = 0u32;
    while start.elapsed().as_secs_f64() < secs {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        let ip: IpAddr = format!("127.0.2.{}", 1 + i % clients as u32)
            .parse()
            .unwrap();
        i += 1;
        s.bind(SocketAddr::new(ip, 0)).unwrap();
        let Ok(mut c) = s.connect(web.local_addr).await else {
            continue;
        };
        let _ = c.write_all(req).await;
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got).await;
        if got.starts_with(b"HTTP/1.1 503") {
            passed += 1;
        }
    }
    passed as f64 / start.elapsed().as_secs_f64()
}

/// A normal sender and viewer (on 127.9.0.0/16, not the attacker's /24): from the sender's start
/// to the viewer's first decoded frame.
async fn first_frame(rv: SocketAddr) -> Option<Duration> {
    let t0 = Instant::now();
    let send = send::start(SendConfig {
        source: SourceSpec::TestCard,
        capture: CaptureConfig {
            size: Some((320, 160)),
            fps: 30.0,
            mjpeg: false,
        },
        bind: "127.9.0.1:0".parse().unwrap(),
        rendezvous: Some(rv),
        encoder_threads: 1,
        ..Default::default()
    })
    .await
    .ok()?;
    let mut cfg = ViewConfig::new(send.code, rv);
    cfg.bind = "127.9.1.1:0".parse().unwrap();
    cfg.display = Display::Headless {
        width: 16,
        height: 16,
    };
    cfg.max_frames = Some(1);
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        view::run(cfg, FrameSlot::default()),
    )
    .await;
    let t = t0.elapsed();
    let _ = send.stop().await;
    matches!(r, Ok(Ok(_))).then_some(t)
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("failed".into(), |d| {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    })
}

/// A page fetch from an address the attack does not use.
async fn page_fetch(web: &WebServer) -> Option<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t0 = Instant::now();
    let s = tokio::net::TcpSocket::new_v4().ok()?;
    s.bind("127.9.2.1:0".parse().unwrap()).ok()?;
    let mut c = tokio::time::timeout(Duration::from_secs(5), s.connect(web.local_addr))
        .await
        .ok()?
        .ok()?;
    c.write_all(b"GET /viewer.js HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut got))
        .await
        .ok()?
        .ok()?;
    got.starts_with(b"HTTP/1.1 200").then(|| t0.elapsed())
}

async fn web(limits: WebLimits) -> WebServer {
    let state = WebState::new(None, None, 0).unwrap().with_limits(limits);
    WebServer::start("127.0.0.1:0".parse().unwrap(), Arc::new(state), None)
        .await
        .unwrap()
}

fn main() {
    // Before any thread: Mesa's drivers want a runtime dir (the binary does the same).
    inclubit::xr::quiet_loader();
    // `cargo bench` passes --bench; `cargo test --all-targets` runs us too: keep that quick.
    let quick = std::env::args().all(|a| a != "--bench");
    let secs = if quick { 0.5 } else { secs() };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let open = start(&rt, unlimited());

    println!("attack                                   limited     baseline (no limit)   ratio");
    for from in [1u8, 253] {
        // A fresh server each: what one attack spent does not count against the next.
        let l = guess(start(&rt, RoomsConfig::default()), from, secs);
        let b = guess(open, from, secs);
        let (l, b) = (
            l.get("answered").copied().unwrap_or(0.0),
            b.get("answered").copied().unwrap_or(0.0),
        );
        println!(
            "join guesses answered/s, {from:>3} address(es) {l:>9.0}   {b:>12.0}            {:.4}",
            l / b.max(1.0)
        );
    }
    let squatted = start(&rt, RoomsConfig::default());
    let (l, b) = (squat(squatted), squat(start(&rt, unlimited())));
    println!(
        "rooms held by 253 addresses of a /24     {l:>9}   {b:>12}            {:.4}",
        l as f64 / b.max(1) as f64
    );

    // A normal sender and viewer meanwhile.
    let normal = start(&rt, RoomsConfig::default());
    let quiet = rt.block_on(first_frame(normal));
    let guessed = start(&rt, RoomsConfig::default());
    let attack = std::thread::spawn(move || guess(guessed, 253, secs.max(3.0)));
    let during = rt.block_on(first_frame(guessed));
    let _ = attack.join();
    let beside_squat = rt.block_on(first_frame(squatted));
    println!(
        "normal sender start to viewer's first frame: no attack {}, during guessing from 253 addresses {}, beside a /24 holding its rooms {}",
        ms(quiet),
        ms(during),
        ms(beside_squat)
    );
    rt.block_on(async {
        // Past the 10 s header timeout (a test run only checks the attack runs).
        let wait = Duration::from_secs(if quick { 1 } else { 12 });
        let limited = web(WebLimits::default()).await;
        let open = web(WebLimits {
            header_timeout: Duration::from_secs(3600),
            max_lifetime: Duration::from_secs(3600),
            max_connections: 1 << 20,
            connections_per_client: 1 << 20,
            ..WebLimits::default()
        })
        .await;
        let quiet = page_fetch(&limited).await;
        let (l, b, during) = tokio::join!(slow_http(&limited, wait), slow_http(&open, wait), async {
            // Once the slow connections are in: a normal page fetch from elsewhere.
            tokio::time::sleep(Duration::from_millis(500)).await;
            page_fetch(&limited).await
        });
        println!(
            "slow HTTP connections open after {:>2} s    {l:>9}   {b:>12}            {:.4}",
            wait.as_secs(),
            l as f64 / b.max(1) as f64
        );
        println!(
            "a normal page fetch: no attack {}, while the slow connections are held {}",
            ms(quiet),
            ms(during)
        );
        let free = Rate {
            burst: 1e9,
            per_second: 1e9,
        };
        let open = web(WebLimits {
            offers_per_client: free,
            offers_per_room: free,
            offers_total: free,
            ..WebLimits::default()
        })
        .await;
        for clients in [1u8, 50] {
            let limited = web(WebLimits::default()).await;
            let l = offers(&limited, clients, secs).await;
            let b = offers(&open, clients, secs).await;
            println!(
                "WHEP offers passed/s, {clients:>2} client(s)          {l:>9.1}   {b:>12.1}            {:.4}",
                l / b.max(1e-9)
            );
        }
    });
}
