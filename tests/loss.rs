//! Loss and slow viewers, with our userspace impairment on the media socket.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use inclubit::pipeline::send;
use inclubit::pipeline::view::{self, FrameSlot, ViewEvent};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_frames_are_skipped_to_a_keyframe_never_shown_corrupt() {
    let rv = rendezvous().await;
    let blackout = Arc::new(Blackout::default());
    let mut cfg = testcard_config(rv, 640, 320);
    cfg.impairment = Some(blackout.clone());
    cfg.latency_budget = Duration::from_millis(150);
    let send = send::start(cfg).await.unwrap();
    let (vcfg, mut rx) = headless_viewer(send.code, rv, 1_000_000);
    let run = tokio::spawn(view::run(vcfg, FrameSlot::default()));

    // Stream, then cut the sender's outgoing packets for half a second at frame 40.
    let before = collect(&mut rx, Duration::from_secs(20), |e| decoded_count(e) >= 40).await;
    assert!(decoded_count(&before) >= 40, "stream did not start");
    blackout.start(Duration::from_millis(500));
    let after = collect(&mut rx, Duration::from_secs(30), |e| decoded_count(e) >= 60).await;
    run.abort();

    let mut all = before.clone();
    all.extend(after.iter().cloned());
    let decoded = assert_never_corrupt(&all);
    let dropped = after
        .iter()
        .filter(|e| matches!(e, ViewEvent::Dropped { .. }))
        .count();
    assert!(dropped > 0, "the blackout lost no frame");
    assert!(
        after
            .iter()
            .any(|e| matches!(e, ViewEvent::KeyframeRequested)),
        "no keyframe requested after the gap"
    );
    // A hole in the sequence, bridged by a keyframe.
    let gap = decoded
        .windows(2)
        .find(|w| w[1].0 != w[0].0 + 1)
        .expect("a gap in decoded frames");
    assert!(
        gap[1].1,
        "first frame after the gap is not a keyframe: {gap:?}"
    );
    assert!(decoded_count(&after) >= 60, "did not recover");
    send.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_viewer_never_slows_the_others() {
    let rv = rendezvous().await;
    let send = sender(rv, 640, 320).await;
    let stall = Arc::new(Blackout::incoming());
    let (mut slow_cfg, mut slow_rx) = headless_viewer(send.code, rv, 1_000_000);
    slow_cfg.impairment = Some(stall.clone());
    let (fast_cfg, mut fast_rx) = headless_viewer(send.code, rv, 1_000_000);
    let slow = tokio::spawn(view::run(slow_cfg, FrameSlot::default()));
    let started = collect(&mut slow_rx, Duration::from_secs(20), |e| {
        decoded_count(e) >= 10
    })
    .await;
    assert!(decoded_count(&started) >= 10);
    let fast = tokio::spawn(view::run(fast_cfg, FrameSlot::default()));
    let fast_start = collect(&mut fast_rx, Duration::from_secs(20), |e| {
        decoded_count(e) >= 10
    })
    .await;
    // A viewer joining mid-stream gets a keyframe within a few frames of joining.
    let next_seq = fast_start.iter().find_map(|e| match e {
        ViewEvent::Connected { hello, .. } => Some(hello.next_seq),
        _ => None,
    });
    let first = assert_never_corrupt(&fast_start)[0].0;
    assert!(
        first <= next_seq.unwrap() + 6,
        "first frame {first}, joined at {next_seq:?}"
    );

    // The slow viewer hears nothing for two seconds (its packets vanish on arrival).
    stall.start(Duration::from_secs(2));
    let during = collect(&mut fast_rx, Duration::from_secs(20), |e| {
        decoded_count(e) >= 90
    })
    .await;
    let mut fast_all = fast_start.clone();
    fast_all.extend(during.iter().cloned());
    let fast_decoded = assert_never_corrupt(&fast_all);
    assert!(fast_decoded.len() >= 100);
    // The fast viewer lost nothing: its frames are consecutive.
    assert!(
        fast_decoded.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "fast viewer had a gap while the other stalled"
    );
    assert!(!during
        .iter()
        .any(|e| matches!(e, ViewEvent::Dropped { .. })));
    // And the slow one recovers afterwards.
    let recovered = collect(&mut slow_rx, Duration::from_secs(20), |e| {
        e.iter()
            .filter(|e| matches!(e, ViewEvent::Decoded { .. }))
            .count()
            >= 100
    })
    .await;
    let mut slow_all = started;
    slow_all.extend(recovered);
    let slow_decoded = assert_never_corrupt(&slow_all);
    assert!(slow_decoded.len() >= 100, "slow viewer did not recover");
    assert!(
        slow_decoded.windows(2).any(|w| w[1].0 != w[0].0 + 1),
        "the stalled viewer lost nothing: the stall did not bite"
    );
    slow.abort();
    fast.abort();
    send.stop().await.unwrap();
}
