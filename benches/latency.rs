//! Glass-to-render latency on loopback, per stage, at 1920×960@30 and 3840×1920@30.
//!
//! Run: `cargo bench --bench latency` (INCLUBIT_BENCH_SECS sets the seconds per size, default 10).
//! Everything runs in one process, so all timestamps share one clock. The baseline measured in
//! the same run is encode + decode + one frame interval: what any pipeline must spend. The ratio
//! total / baseline is the overhead of everything else (transport, queues, rendering).
//! Percentiles leave out the first second (warm-up).

use std::collections::HashMap;
use std::time::Duration;

use inclubit::capture::{CaptureConfig, SourceSpec};
use inclubit::pipeline::send::{self, FrameLog, SendConfig};
use inclubit::pipeline::stats::percentile;
use inclubit::pipeline::view::{self, Display, FrameSlot, ViewConfig, ViewEvent};
use inclubit::rendezvous::server::{rooms::RoomsConfig, Server, ServerConfig};
use tokio::sync::mpsc;

struct Stage {
    name: &'static str,
    samples: Vec<u64>,
}

impl Stage {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            samples: Vec::new(),
        }
    }
    fn p(&self, q: f64) -> f64 {
        percentile(self.samples.clone(), q) as f64 / 1000.0
    }
}

async fn run(width: u32, height: u32, secs: u64) {
    let fps = 30u64;
    let server = Server::bind(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        rooms: RoomsConfig::default(),
    })
    .await
    .unwrap();
    let rv = server.local_addr();
    tokio::spawn(server.run());
    let (log_tx, mut log_rx) = mpsc::unbounded_channel::<FrameLog>();
    let frames = secs * fps;
    let sender = send::start(SendConfig {
        source: SourceSpec::TestCard,
        capture: CaptureConfig {
            size: Some((width, height)),
            fps: fps as f64,
            mjpeg: false,
        },
        bind: "127.0.0.1:0".parse().unwrap(),
        rendezvous: Some(rv),
        frame_log: Some(log_tx),
        ..Default::default()
    })
    .await
    .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut cfg = ViewConfig::new(sender.code, rv);
    cfg.bind = "127.0.0.1:0".parse().unwrap();
    cfg.display = Display::Headless {
        width: 1280,
        height: 720,
    };
    cfg.max_frames = Some(frames);
    cfg.events = Some(tx);
    let summary = tokio::time::timeout(
        Duration::from_secs(secs * 3 + 30),
        view::run(cfg, FrameSlot::default()),
    )
    .await
    .expect("viewer finished")
    .expect("viewer ran");
    let stats = sender.stats();
    sender.stop().await.unwrap();

    let mut enc: HashMap<u64, FrameLog> = HashMap::new();
    while let Ok(l) = log_rx.try_recv() {
        enc.insert(l.seq, l);
    }
    let mut decoded: HashMap<u64, u64> = HashMap::new();
    let mut st = [
        Stage::new("capture -> encoded"),
        Stage::new("encoded -> received"),
        Stage::new("received -> decoded"),
        Stage::new("decoded -> rendered"),
        Stage::new("total (glass -> rendered)"),
    ];
    let mut encode = Vec::new();
    let mut decode = Vec::new();
    let mut first_seq = None;
    let mut last_seq = 0;
    while let Ok(e) = rx.try_recv() {
        match e {
            ViewEvent::Decoded {
                seq,
                received_us,
                decoded_us,
                decode_us,
                ..
            } => {
                let Some(l) = enc.get(&seq) else { continue };
                let first = *first_seq.get_or_insert(seq);
                last_seq = seq;
                // The first second warms up decoder, GPU and congestion control.
                if seq < first + fps {
                    continue;
                }
                st[0].samples.push(l.encoded_us - l.capture_us);
                st[1].samples.push(received_us.saturating_sub(l.encoded_us));
                st[2].samples.push(decoded_us.saturating_sub(received_us));
                encode.push(l.encode_us);
                decode.push(decode_us);
                decoded.insert(seq, decoded_us);
            }
            ViewEvent::Shown { seq, rendered_us } => {
                if let (Some(d), Some(l)) = (decoded.get(&seq), enc.get(&seq)) {
                    st[3].samples.push(rendered_us.saturating_sub(*d));
                    st[4].samples.push(rendered_us.saturating_sub(l.capture_us));
                }
            }
            _ => {}
        }
    }
    let interval_ms = 1000.0 / fps as f64;
    let encode_p50 = percentile(encode.clone(), 50.0) as f64 / 1000.0;
    let decode_p50 = percentile(decode.clone(), 50.0) as f64 / 1000.0;
    let baseline = encode_p50 + decode_p50 + interval_ms;
    let span = first_seq.map(|f| last_seq - f + 1).unwrap_or(0);
    let sizes: Vec<u64> = enc.values().map(|l| l.bytes as u64).collect();
    println!("\n== {width}x{height} @ {fps} fps, {secs} s ==");
    println!(
        "frames: captured {}, decoded {} of {} in span, dropped {}, rendered {}",
        enc.len(),
        summary.frames,
        span,
        summary.dropped,
        st[4].samples.len()
    );
    println!(
        "encoded size: mean {:.1} KB, max {:.1} KB, {:.2} Mbit/s",
        sizes.iter().sum::<u64>() as f64 / sizes.len().max(1) as f64 / 1000.0,
        *sizes.iter().max().unwrap_or(&0) as f64 / 1000.0,
        stats.bitrate_mbps
    );
    println!("{:<28} {:>9} {:>9}", "stage", "p50 ms", "p99 ms");
    for s in &st {
        println!("{:<28} {:>9.2} {:>9.2}", s.name, s.p(50.0), s.p(99.0));
    }
    println!(
        "{:<28} {:>9.2} {:>9.2}",
        "  encode (in encoder)",
        encode_p50,
        percentile(encode, 99.0) as f64 / 1000.0
    );
    println!(
        "{:<28} {:>9.2} {:>9.2}",
        "  decode (in decoder)",
        decode_p50,
        percentile(decode, 99.0) as f64 / 1000.0
    );
    println!(
        "baseline encode+decode+interval = {baseline:.2} ms; total p50 / baseline = {:.2} (goal <= 1.3)",
        st[4].p(50.0) / baseline
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs us too: keep that quick.
    let quick = std::env::args().all(|a| a != "--bench");
    let secs: u64 = std::env::var("INCLUBIT_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 1 } else { 10 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(1920, 960, secs));
    if !quick {
        rt.block_on(run(3840, 1920, secs));
    }
}
