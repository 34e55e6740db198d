//! Relay capacity of the rendezvous on one core: 1200-byte datagrams from one member of a relay
//! session to the other, through the real server loop, on loopback.
//!
//! Run: `cargo bench --bench relay` (INCLUBIT_BENCH_SECS, default 5). Baselines measured in the
//! same run with the same blaster: a bare UDP forwarder (one recv + one send per datagram, no
//! relay logic) and, when Debian's `coturn` is installed (`apt install coturn`), coturn's
//! `turnserver` with one relay thread, fed TURN ChannelData by a minimal client in this file.
//! Our server runs on a single-threaded runtime, i.e. one core.

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

/// Pushes datagrams from `a` to `target` for `secs`, counting what arrives at `b`. Like quinn,
/// the blaster sends GSO batches of up to 10 datagrams and the receiver reads GRO batches, so the
/// traffic is what real peers produce; the server's own work is what differs.
fn blast(a: UdpSocket, b: UdpSocket, target: SocketAddr, header: &[u8], secs: f64) -> (f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let got = Arc::new(AtomicU64::new(0));
    b.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let rx = {
        let (stop, got) = (stop.clone(), got.clone());
        std::thread::spawn(move || {
            let state = quinn_udp::UdpSocketState::new((&b).into()).unwrap();
            let mut bufs: Vec<Vec<u8>> = (0..8).map(|_| vec![0u8; 65536]).collect();
            let mut metas = [quinn_udp::RecvMeta::default(); 8];
            while !stop.load(Ordering::Relaxed) {
                let mut iovs: Vec<std::io::IoSliceMut> = bufs
                    .iter_mut()
                    .map(|b| std::io::IoSliceMut::new(b))
                    .collect();
                if let Ok(n) = state.recv((&b).into(), &mut iovs, &mut metas) {
                    let count: usize = metas[..n]
                        .iter()
                        .map(|m| m.len.div_ceil(m.stride.max(1)))
                        .sum();
                    got.fetch_add(count as u64, Ordering::Relaxed);
                }
            }
        })
    };
    let state = quinn_udp::UdpSocketState::new((&a).into()).unwrap();
    let segs = state.max_gso_segments().clamp(1, 10);
    let mut one = header.to_vec();
    one.resize(header.len() + PAYLOAD, 0x40);
    let batch: Vec<u8> = one.repeat(segs);
    let t = quinn_udp::Transmit {
        destination: target,
        ecn: None,
        contents: &batch,
        segment_size: (segs > 1).then_some(one.len()),
        src_ip: None,
    };
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        for _ in 0..16 {
            let _ = state.send((&a).into(), &t);
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

/// A STUN/TURN request with the given attributes (no authentication: coturn runs --no-auth).
fn stun(method: u16, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (t, v) in attrs {
        body.extend_from_slice(&t.to_be_bytes());
        body.extend_from_slice(&(v.len() as u16).to_be_bytes());
        body.extend_from_slice(v);
        while body.len() % 4 != 0 {
            body.push(0);
        }
    }
    let mut m = Vec::new();
    m.extend_from_slice(&method.to_be_bytes());
    m.extend_from_slice(&(body.len() as u16).to_be_bytes());
    m.extend_from_slice(&0x2112_A442u32.to_be_bytes());
    m.extend_from_slice(&rand::random::<[u8; 12]>());
    m.extend_from_slice(&body);
    m
}

fn xor_peer(a: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(a) = a else {
        panic!("v4 only")
    };
    let mut v = vec![0, 1];
    v.extend_from_slice(&(a.port() ^ 0x2112).to_be_bytes());
    let ip = u32::from(*a.ip()) ^ 0x2112_A442;
    v.extend_from_slice(&ip.to_be_bytes());
    v
}

/// coturn on one relay thread, an allocation bound to channel 0x4000 towards `peer`.
/// Returns the server process and the TURN server address, or `None` without coturn.
fn coturn(peer: SocketAddr, client: &UdpSocket) -> Option<(std::process::Child, SocketAddr)> {
    let port = UdpSocket::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = std::process::Command::new("turnserver")
        .args([
            "-n",
            "--no-auth",
            "--listening-ip",
            "127.0.0.1",
            "--relay-ip",
            "127.0.0.1",
            "--listening-port",
            &port.to_string(),
            "--min-port",
            "49152",
            "--max-port",
            "49999",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--allow-loopback-peers",
            "--relay-threads",
            "1",
            "--no-stdout-log",
            "--log-file",
            "/dev/null",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let server: SocketAddr = format!("127.0.0.1:{port}").parse().ok()?;
    let mut buf = [0u8; 2048];
    let ask = |msg: Vec<u8>, buf: &mut [u8]| -> Option<u16> {
        for _ in 0..50 {
            client.send_to(&msg, server).ok()?;
            if let Ok((n, _)) = client.recv_from(buf) {
                if n >= 2 {
                    return Some(u16::from_be_bytes([buf[0], buf[1]]));
                }
            }
        }
        None
    };
    client
        .set_read_timeout(Some(Duration::from_millis(100)))
        .ok()?;
    let ok = ask(stun(0x0003, &[(0x0019, vec![17, 0, 0, 0])]), &mut buf)? == 0x0103
        && ask(stun(0x0008, &[(0x0012, xor_peer(peer))]), &mut buf)? == 0x0108
        && ask(
            stun(
                0x0009,
                &[(0x000C, vec![0x40, 0, 0, 0]), (0x0012, xor_peer(peer))],
            ),
            &mut buf,
        )? == 0x0109;
    ok.then_some((child, server))
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
            claim: None,
            direct_only: false,
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

    // coturn, same blaster: ChannelData frames (4-byte header) to a bound peer.
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let turn = coturn(peer.local_addr().unwrap(), &client);
    let turn_result = turn.as_ref().map(|(_, server)| {
        let header = [0x40, 0x00, (PAYLOAD >> 8) as u8, PAYLOAD as u8];
        blast(client.try_clone().unwrap(), peer, *server, &header, secs)
    });
    if let Some((mut child, _)) = turn {
        let _ = child.kill();
        let _ = child.wait();
    }

    println!("\n== relay, {PAYLOAD}-byte datagrams, {secs} s, server on one core ==");
    println!("{:<34} {:>12} {:>12}", "", "packets/s", "Mbit/s");
    let row = |name: &str, pps: f64, mbps: f64| println!("{name:<34} {pps:>12.0} {mbps:>12.1}");
    row("inclubit relay", relay_pps, relay_mbps);
    row("baseline: bare UDP forwarder", base_pps, base_mbps);
    match turn_result {
        Some((pps, mbps)) => {
            row("coturn (1 relay thread)", pps, mbps);
            println!("relay / coturn = {:.2} (goal >= 2)", relay_pps / pps);
        }
        None => println!("coturn: not installed or not answering (apt install coturn)"),
    }
    println!("relay / bare forwarder = {:.2}", relay_pps / base_pps);
}
