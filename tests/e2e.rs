//! End to end on loopback: rendezvous + test-card sender (real x264) + two headless viewers.

mod common;

use std::time::Duration;

use common::*;
use inclubit::capture::testcard::read_barcode;
use inclubit::pipeline::send;
use inclubit::pipeline::view::{self, Display, FrameSlot, ViewConfig, ViewEvent};
use inclubit::projection::{colour_distance, Face, Pose};
use inclubit::render::{rgba_at, ViewParams};
use tokio::sync::mpsc;

fn probes() -> Vec<ViewParams> {
    Face::ALL
        .iter()
        .map(|f| {
            let (yaw, pitch) = f.angles();
            ViewParams {
                pose: Pose::new(yaw, pitch),
                fov_y_deg: 20.0,
                ..Default::default()
            }
        })
        .collect()
}

fn check_viewer(events: &[ViewEvent], frames: u64) {
    let mut last = None;
    let mut decoded = 0;
    let mut rendered = 0;
    for e in events {
        match e {
            ViewEvent::Decoded {
                seq,
                keyframe,
                picture,
                ..
            } => {
                if last.is_none() {
                    assert!(keyframe, "first decoded frame must be a keyframe");
                }
                assert!(
                    last.is_none_or(|l| *seq > l),
                    "out of order: {seq} after {last:?}"
                );
                assert_eq!(
                    read_barcode(picture),
                    Some(*seq as u32 & 0xFF_FFFF),
                    "barcode of decoded frame {seq}"
                );
                last = Some(*seq);
                decoded += 1;
            }
            ViewEvent::Rendered {
                probe,
                rgba,
                width,
                height,
                ..
            } => {
                let face = Face::ALL[*probe];
                let c = rgba_at(rgba, *width, width / 2, height / 2);
                assert!(
                    colour_distance(c, face.colour()) <= 40,
                    "{face:?} rendered as {c:?}"
                );
                rendered += 1;
            }
            _ => {}
        }
    }
    assert!(decoded >= frames, "decoded {decoded} < {frames}");
    assert!(rendered >= 6, "rendered {rendered} probe views");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_viewers_get_every_frame_right() {
    let rv = rendezvous().await;
    let send = sender(rv, 640, 320).await;
    let mut runs = Vec::new();
    let mut rxs = Vec::new();
    for i in 0..2 {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut cfg = ViewConfig::new(send.code, rv);
        cfg.bind = LOOPBACK.parse().unwrap();
        cfg.display = Display::Headless {
            width: 32,
            height: 32,
        };
        cfg.probes = probes();
        cfg.max_frames = Some(150);
        cfg.events = Some(tx);
        cfg.name = format!("viewer-{i}");
        runs.push(tokio::spawn(view::run(cfg, FrameSlot::default())));
        rxs.push(rx);
    }
    for run in runs {
        let summary = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("viewer finishes in time")
            .unwrap()
            .unwrap();
        assert!(summary.frames >= 150, "{summary:?}");
    }
    for mut rx in rxs {
        let mut events = Vec::new();
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }
        check_viewer(&events, 150);
    }
    let stats = send.stats();
    assert!(stats.frames >= 150);
    send.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_only_viewer_gets_the_stream_through_the_rendezvous() {
    let rv = rendezvous().await;
    let send = sender(rv, 640, 320).await;
    let (mut cfg, mut rx) = headless_viewer(send.code, rv, 60);
    cfg.paths = inclubit::net::PathPolicy::RelayOnly;
    let run = tokio::spawn(view::run(cfg, FrameSlot::default()));
    let summary = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("viewer finishes")
        .unwrap()
        .unwrap();
    assert_eq!(summary.frames, 60);
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    let remote = events.iter().find_map(|e| match e {
        ViewEvent::Connected { remote, .. } => Some(*remote),
        _ => None,
    });
    assert!(
        inclubit::net::is_relay_address(&remote.unwrap()),
        "{remote:?}"
    );
    assert_eq!(assert_never_corrupt(&events).len(), 60);
    send.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sender_forcing_direct_refuses_relayed_viewers() {
    let rv = rendezvous().await;
    let mut scfg = testcard_config(rv, 320, 160);
    scfg.paths = inclubit::net::PathPolicy::DirectOnly;
    let send = inclubit::pipeline::send::start(scfg).await.unwrap();
    let (mut cfg, _rx) = headless_viewer(send.code, rv, 10);
    cfg.paths = inclubit::net::PathPolicy::RelayOnly;
    cfg.connect_timeout = Duration::from_secs(2);
    let err = view::run(cfg, FrameSlot::default()).await.unwrap_err();
    assert_eq!(err.exit_code(), inclubit::pipeline::exit::NETWORK, "{err}");
    // The viewer says why: the sender's --force-direct, with the NAT types seen.
    let msg = err.to_string();
    assert!(
        msg.contains("the sender accepts direct paths only (it runs with --force-direct)"),
        "{msg}"
    );
    assert!(msg.contains("NAT types seen"), "{msg}");
    send.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_senders_yaw_travels_in_the_hello_and_turns_the_viewers_scene() {
    let rv = rendezvous().await;
    let mut scfg = testcard_config(rv, 640, 320);
    scfg.orientation = [90.0, 0.0, 0.0];
    let send = inclubit::pipeline::send::start(scfg).await.unwrap();
    let (mut cfg, mut rx) = headless_viewer(send.code, rv, 20);
    cfg.display = Display::Headless {
        width: 32,
        height: 32,
    };
    // A viewer looking straight ahead, and one looking 90° left.
    cfg.probes = [0.0, -90.0]
        .map(|yaw| ViewParams {
            pose: Pose::new(yaw, 0.0),
            fov_y_deg: 20.0,
            ..Default::default()
        })
        .to_vec();
    let summary = tokio::time::timeout(
        Duration::from_secs(30),
        view::run(cfg, FrameSlot::default()),
    )
    .await
    .expect("viewer finishes")
    .unwrap();
    assert_eq!(summary.frames, 20);
    let mut seen = [None, None];
    while let Ok(e) = rx.try_recv() {
        match e {
            ViewEvent::Connected { hello, .. } => assert_eq!(hello.orientation_cdeg, [9000, 0, 0]),
            ViewEvent::Rendered { probe, rgba, .. } => {
                seen[probe] = Some(rgba_at(&rgba, 32, 16, 16))
            }
            _ => {}
        }
    }
    let [ahead, left] = seen.map(|c| c.expect("a rendered probe"));
    assert!(
        colour_distance(ahead, Face::Right.colour()) <= 12,
        "{ahead:?}"
    );
    assert!(
        colour_distance(left, Face::Front.colour()) <= 12,
        "{left:?}"
    );
    send.stop().await.unwrap();
}

/// A viewer asking for at most 1.5 Mbit/s (`view --max-bitrate`; the browser bridge asks the
/// same way for each upstream) is served the half-size rendition at that rate, every frame
/// right, while the full size stays available at the ceiling.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_viewer_asking_for_less_gets_the_half_size_at_that_rate() {
    let rv = rendezvous().await;
    let mut scfg = testcard_config(rv, 1280, 640);
    scfg.source = inclubit::capture::SourceSpec::BusyTestCard;
    scfg.bitrate = Some(8_000_000);
    let send = send::start(scfg).await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut cfg = ViewConfig::new(send.code, rv);
    cfg.bind = LOOPBACK.parse().unwrap();
    cfg.display = Display::Headless {
        width: 32,
        height: 32,
    };
    cfg.events = Some(tx);
    cfg.prefer.max_bitrate = 1_500_000;
    let run = tokio::spawn(view::run(cfg, FrameSlot::default()));
    // Placed on the half size within its target's bound.
    let end = std::time::Instant::now() + Duration::from_secs(30);
    let line = loop {
        let stats = send.stats();
        if let Some(v) = stats
            .per_viewer
            .iter()
            .find(|v| v.rendition == "half" && v.sent_mbps > 0.0)
        {
            break v.clone();
        }
        assert!(
            std::time::Instant::now() < end,
            "never on the half size: {:?}",
            stats.per_viewer
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(line.target_mbps <= 1.5, "{line:?}");
    // Half-size pictures from then on, each with the right barcode.
    let events = collect(&mut rx, Duration::from_secs(20), |ev| {
        ev.iter()
            .filter(|e| matches!(e, ViewEvent::Decoded { picture, .. } if picture.width == 640))
            .count()
            >= 60
    })
    .await;
    let mut half = 0;
    for e in &events {
        if let ViewEvent::Decoded { seq, picture, .. } = e {
            assert_eq!(
                read_barcode(picture),
                Some(*seq as u32 & 0xFF_FFFF),
                "barcode of frame {seq} ({}x{})",
                picture.width,
                picture.height
            );
            half += usize::from(picture.width == 640);
        }
    }
    assert!(half >= 60, "{half} half-size frames");
    let sent = send.stats().per_viewer[0].sent_mbps;
    assert!(sent <= 2.0, "sent {sent:.2} Mbit/s to a viewer asking 1.5");
    run.abort();
    send.stop().await.unwrap();
}
