//! A path whose delay changes mid-stream (a route change, a Wi-Fi roam, direct → relay): the
//! stream comes back within a second of each step (issue 11: it froze for good when the RTT
//! rose after the viewer joined).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use inclubit::pipeline::send;
use inclubit::pipeline::view::{self, FrameSlot, ViewEvent};

/// One-way delay on everything a peer sends, changeable while it runs.
#[derive(Debug, Default)]
struct Delay {
    us: AtomicU64,
}

impl Delay {
    fn set(&self, d: Duration) {
        self.us.store(d.as_micros() as u64, Ordering::Relaxed);
    }
}

impl inclubit::net::Impairment for Delay {
    fn drop_outgoing(&self, _to: SocketAddr, _len: usize) -> bool {
        false
    }
    fn delay_outgoing(&self, _to: SocketAddr, _len: usize) -> Duration {
        Duration::from_micros(self.us.load(Ordering::Relaxed))
    }
}

/// Decoded frames (with the time each was decoded here) until `window` has passed.
async fn decoded_for(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<ViewEvent>,
    window: Duration,
) -> Vec<(Instant, u64)> {
    let events = collect(rx, window, |_| false).await;
    let now = Instant::now();
    let now_us = inclubit::clock::now_us();
    events
        .iter()
        .filter_map(|e| match e {
            ViewEvent::Decoded {
                seq, decoded_us, ..
            } => Some((
                now - Duration::from_micros(now_us.saturating_sub(*decoded_us)),
                *seq,
            )),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delay_steps_mid_stream_the_stream_is_back_within_a_second() {
    // RUST_LOG=debug shows what the sender and viewer did around a step.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let rv = rendezvous().await;
    let delay = Arc::new(Delay::default());
    let mut cfg = testcard_config(rv, 1280, 640);
    // Camera-like content (~6 Mbit/s): a window sized for the old RTT cannot carry it.
    cfg.source = inclubit::capture::SourceSpec::BusyTestCard;
    cfg.bitrate = Some(8_000_000);
    cfg.impairment = Some(delay.clone());
    let send = send::start(cfg).await.unwrap();
    let (mut vcfg, mut rx) = headless_viewer(send.code, rv, u64::MAX);
    vcfg.impairment = Some(delay.clone());
    let run = tokio::spawn(view::run(vcfg, FrameSlot::default()));
    let start = collect(&mut rx, Duration::from_secs(20), |e| decoded_count(e) >= 30).await;
    assert!(decoded_count(&start) >= 30, "stream did not start");

    // Each side's delay: 0 → 20 ms (RTT ≈ 40 ms) → 0 → 40 ms (RTT ≈ 80 ms).
    for (i, ms) in [20u64, 0, 40].into_iter().enumerate() {
        delay.set(Duration::from_millis(ms));
        let step = Instant::now();
        let frames = decoded_for(&mut rx, Duration::from_secs(4)).await;
        // Back within 1 s: from then on frames keep coming at most 300 ms apart, at ≥ 20 fps.
        let settled: Vec<_> = frames
            .iter()
            .filter(|(t, _)| *t >= step + Duration::from_secs(1))
            .collect();
        let fps = settled.len() as f64 / 3.0;
        let worst_gap = settled
            .windows(2)
            .map(|w| w[1].0 - w[0].0)
            .max()
            .unwrap_or(Duration::MAX);
        let gaps: Vec<String> = frames
            .windows(2)
            .filter(|w| w[1].0 - w[0].0 > Duration::from_millis(150))
            .map(|w| {
                format!(
                    "{:?} before seq {} at +{:?}",
                    w[1].0 - w[0].0,
                    w[1].1,
                    w[0].0.saturating_duration_since(step)
                )
            })
            .collect();
        assert!(
            fps >= 20.0 && worst_gap <= Duration::from_millis(300),
            "step {i} (delay {ms} ms each way): {fps:.1} fps, worst gap {worst_gap:?} \
             from 1 s after the step ({} frames in all); gaps over 150 ms: {gaps:?}",
            frames.len()
        );
    }
    run.abort();
    send.stop().await.unwrap();
}
