//! Browser viewers in real headless Chromium: WHEP through the bridge, the WebGL page, WebXR
//! emulated by iwer, and the WHEP error paths.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::chrome::{http, page, wait_for, Driver};
use common::process::Proc;
use fantoccini::{Client, Locator};
use inclubit::projection::Face;
use inclubit::rendezvous::web::{WebArgs, WebService};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(40);

/// One test's browsers at a time: several software-rendering Chromiums starve 2 cores.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `inclubit send --web` on loopback; returns the process and the room URL it printed.
fn send_web() -> (Proc, String) {
    send_web_with(&["--size", "640x320"])
}

fn send_web_with(extra: &[&str]) -> (Proc, String) {
    let mut args = vec![
        "send",
        "--web",
        "127.0.0.1:0",
        "--rendezvous-port",
        "0",
        "--bind",
        "127.0.0.1:0",
        "--webrtc",
        "127.0.0.1:0",
        "--no-upnp",
    ];
    args.extend_from_slice(extra);
    let p = Proc::start(&args);
    let line = p.line("browser", Duration::from_secs(30));
    let url = line.split_whitespace().last().unwrap().to_string();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.contains("/r/"),
        "{line}"
    );
    (p, url)
}

fn close_to(got: &Value, want: [u8; 3], tol: i64) -> bool {
    let Some(a) = got.as_array() else {
        return false;
    };
    a.len() == 3
        && a.iter()
            .zip(want)
            .all(|(g, w)| g.as_i64().is_some_and(|g| (g - w as i64).abs() <= tol))
}

/// Chromium drifts pure colours a little through H.264 and its own conversion.
const TOLERANCE: i64 = 48;

async fn probe(c: &Client, yaw: f32, pitch: f32) -> Value {
    c.execute(
        "return inclubit.probe(arguments[0], arguments[1]);",
        vec![json!(yaw), json!(pitch)],
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_plays_the_testcard_with_each_face_in_its_direction() {
    let _one = ONE_BROWSER.lock().await;
    let (_sender, url) = send_web();
    let mut d = Driver::start();
    let c = d.browser().await;
    c.goto(&url).await.unwrap();
    wait_for(&c, "inclubit.frames >= 15", LONG).await;
    assert_eq!(page(&c, "phase").await, json!("playing"));
    for face in Face::ALL {
        let (yaw, pitch) = face.angles();
        let px = probe(&c, yaw, pitch.clamp(-89.0, 89.0)).await;
        assert!(
            close_to(&px, face.colour(), TOLERANCE),
            "{face:?}: got {px}, want {:?}",
            face.colour()
        );
    }
    // The video element stays in the layout (a hidden one would render black).
    let shown = c
        .execute(
            "return getComputedStyle(document.getElementById('v')).display",
            vec![],
        )
        .await
        .unwrap();
    assert_ne!(shown, json!("none"));
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stereo_top_bottom_shows_the_left_eye_half_on_a_flat_screen() {
    let _one = ONE_BROWSER.lock().await;
    let (_sender, url) = send_web_with(&["--size", "640x320", "--projection", "equirect-tb"]);
    let mut d = Driver::start();
    let c = d.browser().await;
    c.goto(&url).await.unwrap();
    wait_for(
        &c,
        "inclubit.frames >= 10 && inclubit.projection === 1",
        LONG,
    )
    .await;
    // The top half (left eye) stretched over the sphere: looking 60° down samples 15° up in
    // the card (mono would show the floor), 20° up samples 55° up (mono: the front).
    for (yaw, pitch, face) in [
        (0.0, -60.0, Face::Front),
        (90.0, -60.0, Face::Right),
        (0.0, 20.0, Face::Up),
    ] {
        let px = probe(&c, yaw, pitch).await;
        assert!(
            close_to(&px, face.colour(), TOLERANCE),
            "yaw {yaw} pitch {pitch}: got {px}, want {face:?} {:?}",
            face.colour()
        );
    }
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_fisheye_and_the_senders_yaw_reach_the_page() {
    let _one = ONE_BROWSER.lock().await;
    let file = std::env::temp_dir().join(format!("inclubit-fisheye-{}.y4m", std::process::id()));
    let card = common::dual_fisheye_card(640, 320, &Default::default());
    common::write_y4m(&file, &card, 30);
    let source = format!("file:{}", file.display());
    // --yaw 90: the camera's right is ahead.
    let (_sender, url) = send_web_with(&[
        "--source",
        &source,
        "--projection",
        "dual-fisheye",
        "--yaw",
        "90",
    ]);
    let mut d = Driver::start();
    let c = d.browser().await;
    c.goto(&url).await.unwrap();
    wait_for(
        &c,
        "inclubit.frames >= 10 && inclubit.projection === 2",
        LONG,
    )
    .await;
    for face in Face::ALL {
        let (yaw, pitch) = face.angles();
        // The page's pose is the viewer's head; the scene is turned 90° by the sender.
        let px = probe(&c, yaw - 90.0, pitch.clamp(-89.0, 89.0)).await;
        assert!(
            close_to(&px, face.colour(), TOLERANCE),
            "{face:?}: got {px}, want {:?}",
            face.colour()
        );
    }
    c.close().await.unwrap();
    let _ = std::fs::remove_file(&file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_then_one_leaves_and_the_other_keeps_playing() {
    let _one = ONE_BROWSER.lock().await;
    let (_sender, url) = send_web();
    let mut d = Driver::start();
    let a = d.browser().await;
    let b = d.browser().await;
    a.goto(&url).await.unwrap();
    b.goto(&url).await.unwrap();
    wait_for(&a, "inclubit.frames >= 10", LONG).await;
    wait_for(&b, "inclubit.frames >= 10", LONG).await;
    // Leaving sends the WHEP DELETE (pagehide).
    a.goto("about:blank").await.unwrap();
    a.close().await.unwrap();
    let before = page(&b, "frames").await.as_u64().unwrap();
    wait_for(
        &b,
        &format!(
            "inclubit.frames >= {} && inclubit.phase === 'playing'",
            before + 30
        ),
        LONG,
    )
    .await;
    b.close().await.unwrap();
}

/// The picture width the page is playing.
async fn video_width(c: &Client) -> u64 {
    c.execute("return document.getElementById('v').videoWidth", vec![])
        .await
        .unwrap()
        .as_u64()
        .unwrap_or(0)
}

/// A browser behind a slow link (the sender, its bridge and page in a namespace whose uplink
/// to the host is a 1.5 Mbit/s kernel `tbf`): str0m's estimate from the browser's own TWCC
/// feedback puts it on the half-size rendition, where it plays on; when the link is lifted it
/// comes back to the full size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_on_a_slow_link_plays_the_half_size_and_comes_back() {
    let _one = ONE_BROWSER.lock().await;
    let up = common::uplink::Uplink::new(1.5);
    let web = format!("{}:0", up.addr);
    let sender = Proc::start_in_netns(
        &up.ns,
        &[
            "send",
            "--web",
            &web,
            "--webrtc",
            &web,
            "--rendezvous-port",
            "0",
            "--bind",
            "127.0.0.1:0",
            "--no-upnp",
            "--source",
            "testcard:busy",
            "--size",
            "1280x640",
            "--bitrate",
            "6M",
        ],
    );
    let line = sender.line("browser", Duration::from_secs(30));
    let url = line.split_whitespace().last().unwrap().to_string();
    let mut d = Driver::start();
    let c = d.browser().await;
    c.goto(&url).await.unwrap();
    wait_for(&c, "inclubit.frames >= 10", LONG).await;
    // On the half size, and playing there.
    wait_for(
        &c,
        "document.getElementById('v').videoWidth === 640 && inclubit.phase === 'playing'",
        Duration::from_secs(60),
    )
    .await;
    let before = page(&c, "frames").await.as_u64().unwrap();
    wait_for(
        &c,
        &format!(
            "inclubit.frames >= {} && inclubit.phase === 'playing'",
            before + 60
        ),
        LONG,
    )
    .await;
    assert_eq!(video_width(&c).await, 640);
    // The link recovers: back on the full size.
    up.set_rate(100.0);
    wait_for(
        &c,
        "document.getElementById('v').videoWidth === 1280 && inclubit.phase === 'playing'",
        Duration::from_secs(60),
    )
    .await;
    c.close().await.unwrap();
    drop(sender);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enter_vr_with_iwer_renders_both_eyes_and_follows_the_head() {
    let iwer = std::env::var("INCLUBIT_IWER").unwrap_or_else(|_| {
        format!(
            "{}/.cache/inclubit-npm/node_modules/iwer/build/iwer.min.js",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let iwer = std::fs::read_to_string(&iwer)
        .unwrap_or_else(|e| panic!("{iwer}: {e} (scripts/setup.sh installs iwer with npm)"));
    let _one = ONE_BROWSER.lock().await;
    let (_sender, url) = send_web();
    let mut d = Driver::start();
    let c = d.browser().await;
    // Software GL renders a Quest 3's eyes slowly: a quarter of the pixels is plenty here.
    c.goto(&format!("{url}?scale=0.5")).await.unwrap();
    wait_for(&c, "inclubit.frames >= 10", LONG).await;
    // A Quest 3 emulated in the page, as iwer installs it.
    c.execute(
        &format!(
            "{iwer}\n;window.__xr = new IWER.XRDevice(IWER.metaQuest3);\
             window.__xr.installRuntime({{forceInstall: true}}); inclubit.checkXR(); return true;"
        ),
        vec![],
    )
    .await
    .unwrap();
    wait_for(&c, "!document.getElementById('vr').hidden", LONG).await;
    c.execute("inclubit.probeXr = true; return true;", vec![])
        .await
        .unwrap();
    c.find(Locator::Css("#vr"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(
        &c,
        "inclubit.xrFrames > 5 && inclubit.xrEyes.length === 2",
        LONG,
    )
    .await;
    let eyes = page(&c, "xrEyes").await;
    let front = Face::Front.colour();
    let both = |eyes: &Value, want: [u8; 3]| {
        eyes.as_array()
            .is_some_and(|e| e.len() == 2 && e.iter().all(|px| close_to(px, want, TOLERANCE)))
    };
    assert!(
        both(&eyes, front),
        "looking ahead: eyes {eyes}, want {front:?}"
    );
    // Turn the head 90° right (a rotation of -90° about +Y): both eyes see the right face.
    c.execute(
        "__xr.quaternion.set(0, -Math.SQRT1_2, 0, Math.SQRT1_2); inclubit.xrEyes = []; return true;",
        vec![],
    )
    .await
    .unwrap();
    let right = Face::Right.colour();
    let end = std::time::Instant::now() + LONG;
    loop {
        let eyes = page(&c, "xrEyes").await;
        if both(&eyes, right) {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "after turning right: eyes {eyes}, want {right:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.close().await.unwrap();
}

/// A standalone rendezvous with its web side, in this process.
async fn standalone() -> (SocketAddr, WebService) {
    let rv = common::rendezvous().await;
    let args = WebArgs {
        webrtc: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    let web = WebService::start("127.0.0.1:0".parse().unwrap(), &args, rv)
        .await
        .unwrap();
    (rv, web)
}

async fn post(addr: SocketAddr, path: &str, sdp: String) -> (u16, Vec<(String, String)>, String) {
    let path = path.to_string();
    let (s, h, b) = tokio::task::spawn_blocking(move || {
        http(addr, "POST", &path, Some("application/sdp"), sdp.as_bytes())
    })
    .await
    .unwrap();
    (s, h, String::from_utf8_lossy(&b).into_owned())
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whep_errors_and_the_pages_states() {
    let _one = ONE_BROWSER.lock().await;
    let (rv, web) = standalone().await;
    let addr = web.server.local_addr;
    let mut d = Driver::start();
    let c = d.browser().await;

    // Real offers from the browser: one it would send, and one with VP8 only.
    c.goto(&format!("http://{addr}/")).await.unwrap();
    let offer = |vp8: bool| {
        format!(
            "const pc = new RTCPeerConnection(); const t = pc.addTransceiver('video', {{direction: 'recvonly'}});\
             if ({vp8}) t.setCodecPreferences(RTCRtpReceiver.getCapabilities('video').codecs.filter(c => c.mimeType === 'video/VP8'));\
             return pc.createOffer().then(o => o.sdp);"
        )
    };
    let h264 = c.execute(&offer(false), vec![]).await.unwrap();
    let h264 = h264.as_str().unwrap().to_string();
    let vp8 = c.execute(&offer(true), vec![]).await.unwrap();
    let vp8 = vp8.as_str().unwrap().to_string();

    // Unknown room: 404 with a JSON body.
    let (status, h, body) = post(addr, "/whep/AAA-AAA", h264.clone()).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(header(&h, "content-type"), Some("application/json"));
    let j: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["error"], "room_not_found");

    let sender = common::sender(rv, 640, 320).await;
    let code = sender.code;
    // The right room with a wrong secret: the bridge's pairing with the sender fails.
    let wrong = format!("/whep/{}-{}", code.room, other_secret(code));
    let (status, body) = post_from("127.0.0.2", addr, &wrong, &h264).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("wrong_code"), "{body}");
    let (status, _, body) = post(addr, &format!("/whep/{code}"), "v=0\r\nnonsense".into()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bad_sdp"));
    let (status, _, body) = post(addr, &format!("/whep/{code}"), vp8).await;
    assert_eq!(status, 406, "{body}");
    assert!(body.contains("H.264"), "{body}");

    // Issue 16: two BUNDLEd video sections on one payload type (str0m panicked, and the bridge
    // answered 503 to every room from then on): 400 with the reason, and the bridge goes on.
    let twice = h264.replacen("a=group:BUNDLE 0", "a=group:BUNDLE 0 1", 1)
        + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=recvonly\r\n\
           a=rtcp-mux\r\na=rtpmap:96 H264/90000\r\n";
    let (status, _, body) = post(addr, &format!("/whep/{code}"), twice).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("video section"), "{body}");

    // The preflight offers what is served; the icon is there (no 404 in the page's console).
    let (status, h, _) = tokio::task::spawn_blocking(move || {
        http(addr, "OPTIONS", &format!("/whep/{code}"), None, b"")
    })
    .await
    .unwrap();
    assert_eq!(status, 204);
    let methods = header(&h, "access-control-allow-methods").unwrap_or_default();
    assert!(!methods.contains("PATCH"), "{methods}");
    let (status, h, _) =
        tokio::task::spawn_blocking(move || http(addr, "GET", "/favicon.ico", None, b""))
            .await
            .unwrap();
    assert_eq!(status, 200);
    assert_eq!(header(&h, "content-type"), Some("image/svg+xml"));

    // A good offer: 201, an answer, a Location to DELETE.
    let (status, h, answer) = post(addr, &format!("/whep/{code}"), h264.clone()).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(header(&h, "content-type"), Some("application/sdp"));
    // The admin's server bridges: the page is told the server can see the stream.
    assert_eq!(header(&h, "inclubit-trust"), Some("server"));
    assert!(answer.starts_with("v=0"));
    assert!(answer.contains("a=ice-lite"));
    assert!(
        answer.contains("127.0.0.1"),
        "a loopback candidate: {answer}"
    );
    let location = header(&h, "location").unwrap().to_string();
    // The secret stays out of the session's address.
    assert!(
        location.starts_with(&format!("/whep/{}/", code.room)),
        "{location}"
    );
    let loc = location.clone();
    let (patch, _, _) = tokio::task::spawn_blocking(move || http(addr, "PATCH", &loc, None, b""))
        .await
        .unwrap();
    assert_eq!(patch, 405);
    let loc = location.clone();
    let (del, _, _) = tokio::task::spawn_blocking(move || http(addr, "DELETE", &loc, None, b""))
        .await
        .unwrap();
    assert_eq!(del, 200);
    let (again, _, _) =
        tokio::task::spawn_blocking(move || http(addr, "DELETE", &location, None, b""))
            .await
            .unwrap();
    assert_eq!(again, 404);

    // The page: a wrong code says so; a live room plays; a stopped sender means "waiting".
    c.goto(&format!("http://{addr}/r/AAA-AAA")).await.unwrap();
    wait_for(&c, "inclubit.phase === 'not_found'", LONG).await;
    let status = c.execute("return inclubit.status", vec![]).await.unwrap();
    let status = status.as_str().unwrap_or_default().to_lowercase();
    assert_eq!(status.matches("room").count(), 1, "said once: {status}");
    c.goto(&format!("http://{addr}/r/{code}")).await.unwrap();
    wait_for(&c, "inclubit.frames >= 10", LONG).await;
    // "Playing" began with a picture of the stream, not Chromium's tiny placeholder.
    let first = c
        .execute("return inclubit.firstSize", vec![])
        .await
        .unwrap();
    assert_eq!(first, json!([640, 320]));
    // With the room live, two more wrong secrets from that client are refused by the bridge
    // itself; after three that client gets no answer for the room, even for the right code
    // (no oracle for guessing), while the page (another client) keeps playing.
    for _ in 0..2 {
        let (status, body) = post_from("127.0.0.2", addr, &wrong, &h264).await;
        assert_eq!(status, 403, "{body}");
    }
    let right = format!("/whep/{code}");
    let (status, body) = post_from("127.0.0.2", addr, &right, &h264).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("room_locked"), "{body}");
    let frames = c.execute("return inclubit.frames", vec![]).await.unwrap();
    let more = format!("inclubit.frames >= {}", frames.as_u64().unwrap() + 10);
    wait_for(&c, &more, LONG).await;
    sender.stop().await.unwrap();
    wait_for(
        &c,
        "inclubit.phase === 'waiting' && inclubit.status.includes('waiting for the camera')",
        LONG,
    )
    .await;
    c.close().await.unwrap();
}

/// The camera PC goes down hard (no goodbye) under an open page: the page's frame count once it
/// has noticed.
async fn kill_under_the_page(c: &Client, mut sender: Proc) -> u64 {
    sender.child.kill().unwrap();
    sender.child.wait().unwrap();
    wait_for(c, "inclubit.phase !== 'playing'", LONG).await;
    let frames = c.execute("return inclubit.frames", vec![]).await.unwrap();
    frames.as_u64().unwrap()
}

/// The page plays again: playing, with 30 frames more than `before`.
async fn plays_again(c: &Client, before: u64) {
    let cond = format!(
        "inclubit.phase === 'playing' && inclubit.frames >= {}",
        before + 30
    );
    wait_for(c, &cond, LONG).await;
}

/// Issue 16: a technician restarts the camera PC's sender with `--code`; the page that was open
/// plays again without a new link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_page_plays_again_after_the_sender_restarts_with_its_code() {
    let _one = ONE_BROWSER.lock().await;
    let (rv, web) = standalone().await;
    let addr = web.server.local_addr;
    let state = std::env::temp_dir().join(format!("inclubit-page-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let rv = rv.to_string();
    let send = |code| common::process::sender_with_state(&rv, &state, code);
    let (first, code) = send(None);
    let mut d = Driver::start();
    let c = d.browser().await;
    c.goto(&format!("http://{addr}/r/{code}")).await.unwrap();
    wait_for(&c, "inclubit.frames >= 10", LONG).await;
    let before = kill_under_the_page(&c, first).await;
    wait_for(&c, "inclubit.phase === 'waiting'", LONG).await;
    let (_second, again) = send(Some(&code));
    assert_eq!(again, code);
    plays_again(&c, before).await;
    c.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&state);
}

/// The same with the page served by the sender itself (`send --web`): the restarted sender
/// serves the page's next offer on the same address, from the same code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_page_plays_again_after_a_send_web_sender_restarts_with_its_code() {
    let _one = ONE_BROWSER.lock().await;
    let web = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let state = std::env::temp_dir().join(format!("inclubit-web-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let start = |code: Option<&str>| {
        let mut args = vec![
            "send",
            "--source",
            "testcard",
            "--size",
            "640x320",
            "--web",
            &web,
            "--rendezvous-port",
            "0",
            "--bind",
            "127.0.0.1:0",
            "--webrtc",
            "127.0.0.1:0",
            "--no-upnp",
        ];
        if let Some(c) = code {
            args.extend(["--code", c]);
        }
        let p = Proc::start_with_env(&args, &[("XDG_STATE_HOME", state.to_str().unwrap())]);
        let code = p.line("code ", Duration::from_secs(30));
        let code = code.split_whitespace().nth(1).unwrap().to_string();
        let url = p.line("browser", Duration::from_secs(30));
        let url = url.split_whitespace().last().unwrap().to_string();
        (p, code, url)
    };
    let (first, code, url) = start(None);
    let mut d = Driver::start();
    let c = d.browser().await;
    c.goto(&url).await.unwrap();
    wait_for(&c, "inclubit.frames >= 10", LONG).await;
    // Served by the camera PC's own bridge: the page says end to end.
    wait_for(&c, "inclubit.trust === 'end-to-end'", LONG).await;
    let before = kill_under_the_page(&c, first).await;
    let (_second, again, url_again) = start(Some(&code));
    assert_eq!(
        (again.as_str(), url_again.as_str()),
        (code.as_str(), url.as_str())
    );
    plays_again(&c, before).await;
    c.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&state);
}

/// A secret that is not `code`'s.
fn other_secret(code: inclubit::rendezvous::code::PairingCode) -> String {
    let bits = code.secret.bits() ^ 1;
    inclubit::rendezvous::code::PairingSecret::from_bits(bits).to_string()
}

/// A WHEP POST from loopback address `from`: (status, body).
async fn post_from(from: &str, to: SocketAddr, path: &str, sdp: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(from.parse().unwrap(), 0)).unwrap();
    let mut c = s.connect(to).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    c.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// A browser-like offer (str0m receiving H.264 video), for WHEP checks that need no browser.
fn str0m_offer() -> String {
    use str0m::media::{Direction, MediaKind};
    let mut rtc = str0m::RtcConfig::new().build(std::time::Instant::now());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    api.apply().unwrap().0.to_sdp_string()
}

/// Issue 13: three wrong codes make the sender draw a new secret. The bridge's live upstream
/// keeps its browsers, but each new browser's code is then proved with the sender: the old
/// code is refused, the new one plays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_re_key_the_bridge_takes_only_the_new_code() {
    use inclubit::pipeline::view::{self, FrameSlot};
    use inclubit::pipeline::PipelineError;
    use inclubit::rendezvous::code::{PairingCode, PairingSecret};
    let (rv, web) = standalone().await;
    let addr = web.server.local_addr;
    let sender = common::sender(rv, 320, 160).await;
    let code = sender.code;
    let offer = str0m_offer();
    let old = format!("/whep/{code}");
    let (status, body) = post_from("127.0.0.2", addr, &old, &offer).await;
    assert_eq!(status, 201, "{body}");
    // Three native viewers with a wrong secret: the sender draws a new one.
    let wrong = PairingCode {
        room: code.room,
        secret: PairingSecret::from_bits(code.secret.bits() ^ 1),
    };
    for _ in 0..3 {
        let (cfg, _rx) = common::headless_viewer(wrong, rv, 1);
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            view::run(cfg, FrameSlot::default()),
        )
        .await
        .expect("the viewer decides within 20 s");
        assert!(matches!(r, Err(PipelineError::Pairing(_))), "{r:?}");
    }
    let new = sender.code_now();
    assert_ne!(new, code);
    // The bridge hears of it from its upstream; from then on the old code is refused.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = post_from("127.0.0.3", addr, &old, &offer).await;
        if status == 403 {
            assert!(body.contains("wrong_code"), "{body}");
            break;
        }
        assert_eq!(status, 201, "{body}");
        assert!(
            std::time::Instant::now() < deadline,
            "the old code still plays"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = post_from("127.0.0.4", addr, &format!("/whep/{new}"), &offer).await;
    assert_eq!(status, 201, "{body}");
    sender.stop().await.unwrap();
}
