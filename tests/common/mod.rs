//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use inclubit::capture::{CaptureConfig, SourceSpec};
use inclubit::pipeline::send::{self, SendConfig, SendSession};
use inclubit::pipeline::view::ViewEvent;
use inclubit::rendezvous::server::{rooms::RoomsConfig, Server, ServerConfig};
use tokio::sync::mpsc;

pub const LOOPBACK: &str = "127.0.0.1:0";

pub async fn rendezvous() -> SocketAddr {
    let server = Server::bind(ServerConfig {
        listen: LOOPBACK.parse().unwrap(),
        rooms: RoomsConfig::default(),
    })
    .await
    .unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.run());
    addr
}

pub fn testcard_config(rv: SocketAddr, w: u32, h: u32) -> SendConfig {
    SendConfig {
        source: SourceSpec::TestCard,
        capture: CaptureConfig {
            size: Some((w, h)),
            fps: 30.0,
            mjpeg: false,
        },
        bind: LOOPBACK.parse().unwrap(),
        rendezvous: Some(rv),
        encoder_threads: 1,
        ..Default::default()
    }
}

pub async fn sender(rv: SocketAddr, w: u32, h: u32) -> SendSession {
    send::start(testcard_config(rv, w, h)).await.unwrap()
}

/// Collects events until `done` says so or the deadline passes.
pub async fn collect(
    rx: &mut mpsc::UnboundedReceiver<ViewEvent>,
    deadline: Duration,
    mut done: impl FnMut(&[ViewEvent]) -> bool,
) -> Vec<ViewEvent> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(deadline, async {
        while let Some(e) = rx.recv().await {
            out.push(e);
            if done(&out) {
                break;
            }
        }
    })
    .await;
    out
}

pub fn decoded_count(ev: &[ViewEvent]) -> usize {
    ev.iter()
        .filter(|e| matches!(e, ViewEvent::Decoded { .. }))
        .count()
}
