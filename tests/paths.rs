//! Path choice on loopback: relay while direct is blocked, then a live move to direct.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use inclubit::pipeline::send;
use inclubit::pipeline::view::{self, FrameSlot, ViewEvent};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_first_then_upgrade_to_direct_without_a_glitch() {
    let rv = rendezvous().await;
    let mut scfg = testcard_config(rv, 640, 320);
    scfg.punch = quick_punch();
    let send = send::start(scfg).await.unwrap();
    let firewall = Arc::new(PeerFirewall::new(rv));
    let (mut cfg, mut rx) = headless_viewer(send.code, rv, 1_000_000);
    cfg.impairment = Some(firewall.clone());
    cfg.punch = quick_punch();
    let run = tokio::spawn(view::run(cfg, FrameSlot::default()));

    // Media starts on the relay: direct is blocked.
    let before = collect(&mut rx, Duration::from_secs(20), |e| decoded_count(e) >= 45).await;
    assert!(decoded_count(&before) >= 45, "no video over the relay");
    assert!(
        !before
            .iter()
            .any(|e| matches!(e, ViewEvent::Path { path: "direct" })),
        "went direct through a closed firewall"
    );
    let remote = before.iter().find_map(|e| match e {
        ViewEvent::Connected { remote, .. } => Some(*remote),
        _ => None,
    });
    assert!(inclubit::net::is_relay_address(&remote.unwrap()));

    // The firewall opens mid-stream: the path flips to direct, the stream goes on untouched.
    firewall.open();
    let after = collect(&mut rx, Duration::from_secs(20), |e| {
        e.iter()
            .position(|e| matches!(e, ViewEvent::Path { path: "direct" }))
            .is_some_and(|i| decoded_count(&e[i..]) >= 45)
    })
    .await;
    assert!(
        after
            .iter()
            .any(|e| matches!(e, ViewEvent::Path { path: "direct" })),
        "never upgraded to direct"
    );
    let mut all = before;
    all.extend(after.iter().cloned());
    let decoded = assert_never_corrupt(&all);
    // Not one frame lost across the switch.
    let gap = decoded.windows(2).find(|w| w[1].0 != w[0].0 + 1);
    assert!(
        gap.is_none(),
        "a gap in the stream during the path change: {gap:?}; dropped {:?}; first {:?}",
        all.iter()
            .filter_map(|e| match e {
                ViewEvent::Dropped { seq } => Some(*seq),
                _ => None,
            })
            .collect::<Vec<_>>(),
        decoded.first()
    );
    assert!(!after.iter().any(|e| matches!(e, ViewEvent::Dropped { .. })));
    run.abort();
    send.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn force_direct_fails_clearly_when_only_the_relay_works() {
    let rv = rendezvous().await;
    let send = sender(rv, 320, 160).await;
    let firewall = Arc::new(PeerFirewall::new(rv));
    let (mut cfg, _rx) = headless_viewer(send.code, rv, 10);
    cfg.impairment = Some(firewall);
    cfg.paths = inclubit::net::PathPolicy::DirectOnly;
    cfg.connect_timeout = Duration::from_secs(2);
    let err = view::run(cfg, FrameSlot::default()).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("could not reach the sender directly"), "{msg}");
    assert!(msg.contains("--force-direct"), "{msg}");
    send.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_two_second_cut_recovers_within_a_second_of_the_link_returning() {
    let rv = rendezvous().await;
    let send = sender(rv, 640, 320).await;
    let cut = Arc::new(Cut::default());
    let (mut cfg, mut rx) = headless_viewer(send.code, rv, 1_000_000);
    cfg.impairment = Some(cut.clone());
    let run = tokio::spawn(view::run(cfg, FrameSlot::default()));
    let before = collect(&mut rx, Duration::from_secs(20), |e| decoded_count(e) >= 30).await;
    assert!(decoded_count(&before) >= 30);
    let back = cut.start(Duration::from_secs(2));
    // Frames decoded before the cut may still drain; wait for the first one captured after it.
    let after = collect(&mut rx, Duration::from_secs(20), |e| {
        e.iter().any(|e| matches!(e, ViewEvent::Decoded { capture_us, .. }
            if *capture_us > inclubit::clock::now_us().saturating_sub(500_000) && std::time::Instant::now() > back))
    })
    .await;
    let recovered = std::time::Instant::now().saturating_duration_since(back);
    eprintln!("stream back {recovered:?} after the link returned");
    assert!(
        after.iter().any(|e| matches!(e, ViewEvent::Decoded { .. })),
        "no recovery"
    );
    assert!(
        recovered < Duration::from_secs(1),
        "recovered after {recovered:?}"
    );
    let mut all = before;
    all.extend(after);
    assert_never_corrupt(&all);
    run.abort();
    send.stop().await.unwrap();
}
