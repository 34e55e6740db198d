//! The browser path in headless Chromium (software decode and WebGL), against the native viewer.
//!
//! Run: `cargo bench --bench browser` (needs chromium + chromedriver: `scripts/setup.sh test`
//! installs them; INCLUBIT_BENCH_SECS sets the seconds per measurement, default 10).
//!
//! 1. Join → first frame: WHEP POST to the first frame the page presents, over fresh page loads.
//! 2. Glass-to-render, native QUIC viewer vs browser, same sender, same run: the page reads the
//!    test card's frame barcode from each presented frame; the native viewer reports each
//!    rendered frame. Both are compared with the sender's capture time for that frame.
//! 3. Bridge CPU per browser viewer at 1920×960@30 with 1, 4 and 8 viewers: the bridge runs in
//!    this process, the sender in another, the viewers are RTCPeerConnections in one Chromium page.

#[path = "../tests/common/chrome.rs"]
mod chrome;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use inclubit::capture::{CaptureConfig, SourceSpec};
use inclubit::pipeline::send::{self, FrameLog, SendConfig};
use inclubit::pipeline::stats::percentile;
use inclubit::pipeline::view::{self, Display, FrameSlot, ViewConfig, ViewEvent};
use inclubit::rendezvous::server::{rooms::RoomsConfig, Server, ServerConfig};
use inclubit::rendezvous::web::{WebArgs, WebService};
use serde_json::{json, Value};
use tokio::sync::mpsc;

async fn rendezvous() -> SocketAddr {
    let server = Server::bind(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        rooms: RoomsConfig::default(),
    })
    .await
    .unwrap();
    let rv = server.local_addr();
    tokio::spawn(server.run());
    rv
}

async fn web(rv: SocketAddr) -> WebService {
    let args = WebArgs {
        webrtc: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    WebService::start("127.0.0.1:0".parse().unwrap(), &args, rv)
        .await
        .unwrap()
}

fn testcard(rv: SocketAddr, log: Option<mpsc::UnboundedSender<FrameLog>>) -> SendConfig {
    SendConfig {
        source: SourceSpec::TestCard,
        capture: CaptureConfig {
            size: Some((1920, 960)),
            fps: 30.0,
            mjpeg: false,
        },
        bind: "127.0.0.1:0".parse().unwrap(),
        rendezvous: Some(rv),
        frame_log: log,
        no_upnp: true,
        ..Default::default()
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

async fn join_to_first_frame(loads: usize) {
    let rv = rendezvous().await;
    let web = web(rv).await;
    let sender = send::start(testcard(rv, None)).await.unwrap();
    let mut driver = chrome::Driver::start();
    let c = driver.browser().await;
    let url = format!("http://{}/r/{}", web.server.local_addr, sender.code);
    let mut joins = Vec::new();
    let mut connects = Vec::new();
    let mut answers = Vec::new();
    // Fresh page loads; the first one also pays for Chromium's start-up and is left out.
    for i in 0..loads {
        c.goto(&format!("{url}?join={i}")).await.unwrap();
        let v = chrome::wait_for(&c, "inclubit.joinMs", Duration::from_secs(30)).await;
        if i > 0 {
            joins.push((v.as_f64().unwrap() * 1000.0) as u64);
            let conn = chrome::page(&c, "connectMs").await;
            connects.push((conn.as_f64().unwrap_or(0.0) * 1000.0) as u64);
            let ans = chrome::page(&c, "answerMs").await;
            answers.push((ans.as_f64().unwrap_or(0.0) * 1000.0) as u64);
        }
        c.goto("about:blank").await.unwrap();
    }
    println!(
        "join -> first frame (WHEP POST to first presented frame, {} joins): p50 {:.1} ms  min {:.1}  max {:.1}",
        joins.len(),
        ms(percentile(joins.clone(), 50.0)),
        ms(*joins.iter().min().unwrap()),
        ms(*joins.iter().max().unwrap()),
    );
    println!(
        "  WHEP POST to answer: p50 {:.1} ms; to ICE+DTLS connected: p50 {:.1} ms",
        ms(percentile(answers, 50.0)),
        ms(percentile(connects, 50.0))
    );
    println!("  goal: <= 1 RTT + one frame (33.3 ms) + decode; field prototype ~156 ms");
    let _ = c.close().await;
    sender.stop().await.unwrap();
}

async fn glass_to_render(secs: u64) {
    let rv = rendezvous().await;
    let web = web(rv).await;
    let (log_tx, mut log_rx) = mpsc::unbounded_channel::<FrameLog>();
    let sender = send::start(testcard(rv, Some(log_tx))).await.unwrap();

    // Native viewer, headless (lavapipe), in this process.
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let mut cfg = ViewConfig::new(sender.code, rv);
    cfg.bind = "127.0.0.1:0".parse().unwrap();
    cfg.display = Display::Headless {
        width: 1280,
        height: 720,
    };
    cfg.events = Some(ev_tx);
    cfg.no_upnp = true;
    let slot = FrameSlot::default();
    let native = tokio::spawn(view::run(cfg, slot.clone()));

    // Browser viewer reading each frame's barcode.
    let mut driver = chrome::Driver::start();
    let c = driver.browser().await;
    c.goto(&format!(
        "http://{}/r/{}?measure",
        web.server.local_addr, sender.code
    ))
    .await
    .unwrap();
    chrome::wait_for(&c, "inclubit.frames > 30", Duration::from_secs(30)).await;
    c.execute("inclubit.marks = []; return true;", vec![])
        .await
        .unwrap();
    let start_us = inclubit::clock::now_us();
    let mut native_shown: Vec<(u64, u64)> = Vec::new();
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    while let Ok(Some(e)) = tokio::time::timeout_at(end, ev_rx.recv()).await {
        if let ViewEvent::Shown { seq, rendered_us } = e {
            if rendered_us > start_us {
                native_shown.push((seq, rendered_us));
            }
        }
    }
    let marks = c.execute("return inclubit.marks;", vec![]).await.unwrap();
    slot.close();
    let _ = native.await;
    let _ = c.close().await;
    sender.stop().await.unwrap();
    let mut capture: HashMap<u64, u64> = HashMap::new();
    while let Ok(l) = log_rx.try_recv() {
        capture.insert(l.seq & 0xFF_FFFF, l.capture_us);
    }
    let native_lat: Vec<u64> = native_shown
        .iter()
        .filter_map(|(seq, at)| Some(at.saturating_sub(*capture.get(&(seq & 0xFF_FFFF))?)))
        .collect();
    let browser_lat: Vec<u64> = marks
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|m| {
            let n = m.get(0)?.as_u64()?;
            let shown_us = (m.get(1)?.as_f64()? * 1000.0) as u64;
            Some(shown_us.saturating_sub(*capture.get(&n)?))
        })
        .collect();
    let report = |name: &str, v: &[u64]| {
        println!(
            "  {name:<8} {:>4} frames  p50 {:>6.1} ms  p99 {:>6.1} ms",
            v.len(),
            ms(percentile(v.to_vec(), 50.0)),
            ms(percentile(v.to_vec(), 99.0)),
        );
    };
    println!("glass -> render at 1920x960@30, same sender, same run ({secs} s):");
    report("native", &native_lat);
    report("browser", &browser_lat);
    if !native_lat.is_empty() && !browser_lat.is_empty() {
        println!(
            "  ratio native / browser (p50): {:.2}  (goal <= 0.5)",
            percentile(native_lat.clone(), 50.0) as f64
                / percentile(browser_lat.clone(), 50.0).max(1) as f64
        );
    }
}

/// This process's CPU time (user + system).
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Opens `n` WHEP sessions in the page; returns when each has received video.
const OPEN_PCS: &str = r#"
const [n, path, done] = arguments;
window.pcs = [];
Promise.all([...Array(n)].map(async () => {
  const pc = new RTCPeerConnection();
  pc.addTransceiver('video', {direction: 'recvonly'});
  await pc.setLocalDescription(await pc.createOffer());
  const r = await fetch(path, {method: 'POST', headers: {'Content-Type': 'application/sdp'}, body: pc.localDescription.sdp});
  await pc.setRemoteDescription({type: 'answer', sdp: await r.text()});
  pc.resource = r.headers.get('Location');
  window.pcs.push(pc);
})).then(() => done(true), (e) => done(String(e)));
"#;

const FRAMES_RECEIVED: &str = r#"
const done = arguments[0];
Promise.all(window.pcs.map(pc => pc.getStats().then(s => {
  let f = 0; s.forEach(x => { if (x.type === 'inbound-rtp' && x.kind === 'video') f = x.framesReceived || 0; });
  return f;
}))).then(done);
"#;

async fn bridge_cpu(secs: u64, viewers: &[usize]) {
    let rv = rendezvous().await;
    let web = web(rv).await;
    // The sender in its own process, so this process's CPU is the bridge (and the rendezvous).
    let exe = env!("CARGO_BIN_EXE_inclubit");
    let mut sender = std::process::Command::new(exe)
        .args([
            "send",
            "--size",
            "1920x960",
            "--rendezvous",
            &rv.to_string(),
            "--bind",
            "127.0.0.1:0",
            "--no-upnp",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{exe}: {e} (cargo build --release --bin inclubit)"));
    let code = {
        use std::io::BufRead;
        let out = sender.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(out).lines();
        loop {
            let l = lines.next().expect("sender output").unwrap();
            if let Some(c) = l.strip_prefix("code") {
                break c.trim().to_string();
            }
        }
    };
    let mut driver = chrome::Driver::start();
    let c = driver.browser().await;
    c.goto(&format!("http://{}/", web.server.local_addr))
        .await
        .unwrap();
    println!(
        "bridge CPU at 1920x960@30 ({secs} s per row; viewers are Chromium peer connections):"
    );
    let mut one = None;
    for &n in viewers {
        let r = c
            .execute_async(OPEN_PCS, vec![json!(n), json!(format!("/whep/{code}"))])
            .await
            .unwrap();
        assert_eq!(r, json!(true), "opening {n} viewers");
        // Everyone receiving before the window opens.
        let got = |v: &Value| {
            v.as_array()
                .map(|a| a.iter().filter_map(|f| f.as_u64()).collect::<Vec<_>>())
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let f = got(&c.execute_async(FRAMES_RECEIVED, vec![]).await.unwrap()).unwrap();
            if f.len() == n && f.iter().all(|x| *x > 10) {
                break;
            }
            assert!(Instant::now() < deadline, "viewers not receiving: {f:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let f0 = got(&c.execute_async(FRAMES_RECEIVED, vec![]).await.unwrap()).unwrap();
        let (cpu0, t0) = (cpu_time(), Instant::now());
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let (cpu1, t1) = (cpu_time(), Instant::now());
        let f1 = got(&c.execute_async(FRAMES_RECEIVED, vec![]).await.unwrap()).unwrap();
        let wall = (t1 - t0).as_secs_f64();
        let cpu = (cpu1 - cpu0).as_secs_f64() / wall * 100.0;
        let fps: f64 =
            f1.iter().zip(&f0).map(|(a, b)| (a - b) as f64).sum::<f64>() / wall / n as f64;
        let base = *one.get_or_insert(cpu);
        let marginal = if n > 1 {
            (cpu - base) / (n - 1) as f64
        } else {
            cpu
        };
        println!(
            "  {n} viewer(s): {cpu:>5.1}% of a core  ({:.2}% per viewer, {marginal:.2}% per added viewer)  {fps:.1} fps received each",
            cpu / n as f64
        );
        c.execute(
            "window.pcs.forEach(pc => { pc.close(); fetch(pc.resource, {method: 'DELETE'}); }); return true;",
            vec![],
        )
        .await
        .unwrap();
    }
    let _ = c.close().await;
    let _ = sender.kill();
    let _ = sender.wait();
}

fn main() {
    if !std::path::Path::new(chrome::CHROMEDRIVER).exists() {
        println!(
            "browser bench skipped: {} missing (scripts/setup.sh test installs it)",
            chrome::CHROMEDRIVER
        );
        return;
    }
    // `cargo bench` passes --bench; `cargo test --all-targets` runs us too: keep that quick.
    let quick = std::env::args().all(|a| a != "--bench");
    let secs: u64 = std::env::var("INCLUBIT_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 1 } else { 10 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let only = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let want = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
    rt.block_on(async {
        if want("join") {
            join_to_first_frame(if quick { 3 } else { 11 }).await;
        }
        if want("latency") {
            glass_to_render(secs).await;
        }
        if want("cpu") {
            bridge_cpu(secs, if quick { &[1, 2] } else { &[1, 4, 8] }).await;
        }
    });
}
