//! Relay capacity of the rendezvous on one core: 1200-byte datagrams from one member of a relay
//! session to the other, through the real server loop, on loopback.
//!
//! Run: `cargo bench --bench relay` (INCLUBIT_BENCH_SECS, default 5). The baseline measured in
//! the same run is a plain UDP echo hop on the same machine (one recv + one send per datagram,
//! no relay logic): the ratio shows what the relay's checks and limits cost. The server runs on
//! a single-threaded runtime, i.e. one core.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inclubit::rendezvous::server::{rooms::RoomsConfig, Server, ServerConfig};
use inclubit::rendezvous::wire::signal::{relay_header, ClientMsg, ServerMsg};

const PAYLOAD: usize = 1200;

fn recv_msg(s: &UdpSocket) -> ServerMsg {
    let mut buf = [0u8; 2048];
    loop {
        let n = s.recv(&mut buf).expect("answer from the rendezvous");
        if let Ok(m) = ServerMsg::decode(&buf[..n]) {
            return m;
        }
    }
}

/// Pushes datagrams from `a` to `target` for `secs`, counting what arrives at `b`.
fn blast(a: UdpSocket, b: UdpSocket, target: SocketAddr, header: &[u8], secs: f64) -> (f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let got = Arc::new(AtomicU64::new(0));
    b.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let rx = {
        let (stop, got) = (stop.clone(), got.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if b.recv(&mut buf).is_ok() {
                    got.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let mut pkt = header.to_vec();
    pkt.resize(header.len() + PAYLOAD, 0x40);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        // Bursts: the kernel's socket buffers, not the sender, set the limit.
        for _ in 0..64 {
            let _ = a.send_to(&pkt, target);
        }
        std::thread::yield_now();
    }
    let elapsed = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    rx.join().unwrap();
    let n = got.load(Ordering::Relaxed) as f64;
    (n / elapsed, n * PAYLOAD as f64 * 8.0 / elapsed / 1e6)
}

fn main() {
    let quick = std::env::args().all(|a| a != "--bench");
    let secs: f64 = std::env::var("INCLUBIT_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 0.5 } else { 5.0 });

    // The rendezvous on its own single-threaded runtime: one core.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let server = Server::bind(ServerConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                rooms: RoomsConfig {
                    // Measure the relay, not its limits.
                    relay_bytes_per_session: 1e12,
                    relay_packets_per_session: 1e9,
                    relay_bytes_per_ip: 1e12,
                    ..Default::default()
                },
            })
            .await
            .unwrap();
            addr_tx.send(server.local_addr()).unwrap();
            server.run().await;
        });
    });
    let rv = addr_rx.recv().unwrap();
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    for s in [&a, &b] {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.connect(rv).unwrap();
    }
    a.send(
        &ClientMsg::Open {
            txn: 1,
            hosts: vec![],
            fingerprint: [0; 32],
        }
        .encode(),
    )
    .unwrap();
    let ServerMsg::Opened { code, .. } = recv_msg(&a) else {
        panic!("not opened")
    };
    b.send(
        &ClientMsg::Join {
            txn: 2,
            code,
            hosts: vec![],
        }
        .encode(),
    )
    .unwrap();
    let session = loop {
        if let ServerMsg::Joined { relay, .. } = recv_msg(&b) {
            break relay;
        }
    };
    let (relay_pps, relay_mbps) = blast(a, b, rv, &relay_header(true, session), secs);

    // Baseline: a bare UDP forwarder on one core, same machine, same sizes.
    let fwd = UdpSocket::bind("127.0.0.1:0").unwrap();
    let fwd_addr = fwd.local_addr().unwrap();
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    let d = UdpSocket::bind("127.0.0.1:0").unwrap();
    let d_addr = d.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok(n) = fwd.recv(&mut buf) {
            let _ = fwd.send_to(&buf[..n], d_addr);
        }
    });
    let (base_pps, base_mbps) = blast(c, d, fwd_addr, &relay_header(true, 0), secs);
    println!("\n== relay, {PAYLOAD}-byte datagrams, {secs} s, server on one core ==");
    println!("{:<34} {:>12} {:>12}", "", "packets/s", "Mbit/s");
    println!(
        "{:<34} {:>12.0} {:>12.1}",
        "inclubit relay", relay_pps, relay_mbps
    );
    println!(
        "{:<34} {:>12.0} {:>12.1}",
        "baseline: bare UDP forwarder", base_pps, base_mbps
    );
    println!("relay / bare forwarder = {:.2}", relay_pps / base_pps);
}
