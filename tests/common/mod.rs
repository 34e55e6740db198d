//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod chrome;
pub mod process;
pub mod uplink;
pub mod xr;
pub mod xvfb;

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

/// Userspace impairment: drops every datagram (one direction) until a deadline.
#[derive(Debug, Default)]
pub struct Blackout {
    until: std::sync::Mutex<Option<std::time::Instant>>,
    pub incoming: bool,
}

impl Blackout {
    pub fn incoming() -> Self {
        Self {
            incoming: true,
            ..Default::default()
        }
    }
    pub fn start(&self, d: Duration) {
        *self.until.lock().unwrap() = Some(std::time::Instant::now() + d);
    }
    fn active(&self) -> bool {
        self.until
            .lock()
            .unwrap()
            .is_some_and(|t| std::time::Instant::now() < t)
    }
}

impl inclubit::net::Impairment for Blackout {
    fn drop_outgoing(&self, _to: SocketAddr, _len: usize) -> bool {
        !self.incoming && self.active()
    }
    fn drop_incoming(&self, _from: SocketAddr, _len: usize) -> bool {
        self.incoming && self.active()
    }
}

pub fn headless_viewer(
    code: inclubit::rendezvous::code::PairingCode,
    rv: SocketAddr,
    frames: u64,
) -> (
    inclubit::pipeline::view::ViewConfig,
    mpsc::UnboundedReceiver<ViewEvent>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut cfg = inclubit::pipeline::view::ViewConfig::new(code, rv);
    cfg.bind = LOOPBACK.parse().unwrap();
    cfg.display = inclubit::pipeline::view::Display::Headless {
        width: 16,
        height: 16,
    };
    cfg.max_frames = Some(frames);
    cfg.events = Some(tx);
    (cfg, rx)
}

/// Checks the rule the viewer must keep: every decoded frame is a keyframe or directly follows
/// the previous decoded frame, and its barcode is its own sequence number. Returns the decoded
/// sequence numbers with their keyframe flags.
pub fn assert_never_corrupt(events: &[ViewEvent]) -> Vec<(u64, bool)> {
    let mut out: Vec<(u64, bool)> = Vec::new();
    for e in events {
        if let ViewEvent::Decoded {
            seq,
            keyframe,
            picture,
            ..
        } = e
        {
            if let Some((prev, _)) = out.last() {
                assert!(
                    *keyframe || *seq == prev + 1,
                    "frame {seq} decoded after {prev} without a keyframe"
                );
            } else {
                assert!(keyframe, "first decoded frame {seq} is not a keyframe");
            }
            assert_eq!(
                inclubit::capture::testcard::read_barcode(picture),
                Some(*seq as u32 & 0xFF_FFFF),
                "picture of frame {seq} is not frame {seq}"
            );
            out.push((*seq, *keyframe));
        }
    }
    out
}

/// Blocks every datagram between this peer and anyone but the rendezvous while switched on: a
/// firewall that stops hole punching (and direct QUIC) but leaves the relay open.
#[derive(Debug)]
pub struct PeerFirewall {
    pub rendezvous: SocketAddr,
    pub blocked: std::sync::atomic::AtomicBool,
}

impl PeerFirewall {
    pub fn new(rendezvous: SocketAddr) -> Self {
        Self {
            rendezvous,
            blocked: std::sync::atomic::AtomicBool::new(true),
        }
    }
    pub fn open(&self) {
        self.blocked
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }
    fn blocks(&self, other: SocketAddr) -> bool {
        other != self.rendezvous && self.blocked.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl inclubit::net::Impairment for PeerFirewall {
    fn drop_outgoing(&self, to: SocketAddr, _len: usize) -> bool {
        self.blocks(to)
    }
    fn drop_incoming(&self, from: SocketAddr, _len: usize) -> bool {
        self.blocks(from)
    }
}

/// Punching tuned for tests: give up after a second, retry half a second later.
pub fn quick_punch() -> inclubit::net::punch::PunchConfig {
    inclubit::net::punch::PunchConfig {
        timeout: Duration::from_secs(1),
        retry_after: Duration::from_millis(500),
        ..Default::default()
    }
}

/// Drops everything in both directions while on: a cut link.
#[derive(Debug, Default)]
pub struct Cut {
    until: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Cut {
    pub fn start(&self, d: Duration) -> std::time::Instant {
        let end = std::time::Instant::now() + d;
        *self.until.lock().unwrap() = Some(end);
        end
    }
    fn active(&self) -> bool {
        self.until
            .lock()
            .unwrap()
            .is_some_and(|t| std::time::Instant::now() < t)
    }
}

impl inclubit::net::Impairment for Cut {
    fn drop_outgoing(&self, _to: SocketAddr, _len: usize) -> bool {
        self.active()
    }
    fn drop_incoming(&self, _from: SocketAddr, _len: usize) -> bool {
        self.active()
    }
}

/// A dual-fisheye picture of the test card's cube: each pixel the colour of the face its lens
/// sees there, black outside the circles.
pub fn dual_fisheye_card(
    w: u32,
    h: u32,
    lens: &inclubit::projection::FisheyeLens,
) -> inclubit::picture::I420 {
    let aspect = h as f32 / w as f32;
    let colour =
        |u: f32, v: f32| match inclubit::projection::dual_fisheye_to_dir([u, v], lens, aspect) {
            Some(d) => inclubit::projection::rgb_to_yuv(inclubit::projection::Face::of(d).colour()),
            None => inclubit::projection::rgb_to_yuv([0, 0, 0]),
        };
    let mut p = inclubit::picture::I420::new(w, h);
    for y in 0..h {
        for x in 0..w {
            let c = colour((x as f32 + 0.5) / w as f32, (y as f32 + 0.5) / h as f32);
            p.planes[0][(y as usize) * p.strides[0] + x as usize] = c[0];
        }
    }
    let (cw, ch) = inclubit::picture::I420::chroma_size(w, h);
    for y in 0..ch {
        for x in 0..cw {
            let c = colour((2 * x + 1) as f32 / w as f32, (2 * y + 1) as f32 / h as f32);
            p.planes[1][(y as usize) * p.strides[1] + x as usize] = c[1];
            p.planes[2][(y as usize) * p.strides[2] + x as usize] = c[2];
        }
    }
    p
}

/// Writes `frames` copies of `pic` as a Y4M file (a source `inclubit send` reads with FFmpeg).
pub fn write_y4m(path: &std::path::Path, pic: &inclubit::picture::I420, frames: usize) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(
        f,
        "YUV4MPEG2 W{} H{} F30:1 Ip A1:1 C420jpeg",
        pic.width, pic.height
    )
    .unwrap();
    for _ in 0..frames {
        f.write_all(b"FRAME\n").unwrap();
        for p in 0..3 {
            let (w, h) = pic.plane_size(p);
            for y in 0..h as usize {
                f.write_all(&pic.planes[p][y * pic.strides[p]..][..w as usize])
                    .unwrap();
            }
        }
    }
}
