//! The real binary, as a user runs it: output, exit codes and bad input.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_inclubit");

mod common;
use common::process::Proc;

fn run(args: &[&str], timeout: Duration) -> (i32, String) {
    Proc::start(args).wait(timeout)
}

fn rendezvous() -> (Proc, SocketAddr) {
    let p = Proc::start(&["rendezvous", "--listen", "127.0.0.1:0"]);
    let l = p.line("listening on ", Duration::from_secs(10));
    let addr = l.trim_start_matches("listening on ").parse().unwrap();
    (p, addr)
}

/// Starts a test-card sender against `rv` (or its own rendezvous) and returns it with its code
/// and the rendezvous address it printed.
fn sender(rv: Option<SocketAddr>) -> (Proc, String, String) {
    let rv_s = rv.map(|a| a.to_string());
    let mut args = vec![
        "send",
        "--source",
        "testcard",
        "--size",
        "640x320",
        "--bind",
        "127.0.0.1:0",
        "--rendezvous-port",
        "0",
    ];
    if let Some(r) = &rv_s {
        args.extend(["--rendezvous", r.as_str()]);
    }
    let p = Proc::start(&args);
    let code = p.line("code ", Duration::from_secs(10));
    let code = code.split_whitespace().nth(1).unwrap().to_string();
    let rvl = p.line("rendezvous ", Duration::from_secs(5));
    let rv_printed = rvl.split_whitespace().nth(1).unwrap().to_string();
    let viewer = p.line("viewer ", Duration::from_secs(5));
    assert!(
        viewer.contains(&format!("inclubit view --rendezvous {rv_printed} {code}")),
        "{viewer}"
    );
    (p, code, rv_printed)
}

fn view(rv: &str, code: &str, frames: &str) -> Proc {
    Proc::start(&[
        "view",
        "--rendezvous",
        rv,
        "--bind",
        "127.0.0.1:0",
        "--headless",
        "--frames",
        frames,
        "--render-size",
        "64x64",
        code,
    ])
}

#[test]
fn send_with_embedded_rendezvous_and_view_with_json_stats() {
    let (_send, code, rv) = sender(None);
    let mut v = Proc::start(&[
        "view",
        "--rendezvous",
        &rv,
        "--bind",
        "127.0.0.1:0",
        "--headless",
        "--frames",
        "60",
        "--render-size",
        "64x64",
        "--json",
        &code,
    ]);
    let l = v.line("{", Duration::from_secs(15));
    let stats: serde_json::Value = serde_json::from_str(&l).unwrap();
    assert_eq!(stats["role"], "view");
    assert_eq!(stats["path"], "direct");
    v.lines = mpsc::channel().1;
    let (code, err) = v.wait(Duration::from_secs(20));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn wrong_code_is_exit_3_with_one_clear_line() {
    let (_rv, addr) = rendezvous();
    let start = Instant::now();
    let (code, err) = run(
        &[
            "view",
            "--rendezvous",
            &addr.to_string(),
            "--headless",
            "K7F-Q2M-4X9P",
        ],
        Duration::from_secs(5),
    );
    assert_eq!(code, 3, "{err}");
    assert!(start.elapsed() < Duration::from_secs(5));
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("error: rendezvous refused: no room with that code"),
        "{err}"
    );
}

#[test]
fn a_wrong_secret_is_exit_7_and_three_of_them_give_the_room_a_new_code() {
    let (send, code, rv) = sender(None);
    let (room, secret) = code.rsplit_once('-').unwrap();
    let bad = format!("{room}-{}", if secret == "0000" { "0001" } else { "0000" });
    for _ in 0..3 {
        let (exit, err) = view(&rv, &bad, "10").wait(Duration::from_secs(20));
        assert_eq!(exit, 7, "{err}");
        let last = err.lines().last().unwrap_or("");
        assert!(
            last.starts_with("error: pairing with the sender failed")
                && last.contains("someone between"),
            "{err}"
        );
    }
    // The technician is told the new code; the old one fails, the new one plays.
    let line = send.line("code ", Duration::from_secs(10));
    let new = line.split_whitespace().nth(1).unwrap().to_string();
    assert!(line.contains("failed pairings"), "{line}");
    assert!(new.starts_with(room) && new != code, "{line}");
    assert!(send.stderr().contains("failed to pair"));
    let (exit, err) = view(&rv, &code, "10").wait(Duration::from_secs(20));
    assert_eq!(exit, 7, "{err}");
    let (exit, err) = view(&rv, &new, "10").wait(Duration::from_secs(30));
    assert_eq!(exit, 0, "{err}");
}

#[test]
fn unreachable_rendezvous_is_exit_4() {
    // A port nobody listens on: bind and drop.
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let rv = format!("127.0.0.1:{port}");
    let (code, err) = run(
        &["view", "--rendezvous", &rv, "--headless", "K7F-Q2M-4X9P"],
        Duration::from_secs(5),
    );
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains(&format!("rendezvous {rv} did not answer")),
        "{err}"
    );
    let (code, err) = run(
        &[
            "send",
            "--size",
            "320x160",
            "--rendezvous",
            &rv,
            "--bind",
            "127.0.0.1:0",
        ],
        Duration::from_secs(5),
    );
    assert_eq!(code, 4, "{err}");
}

#[test]
fn missing_camera_and_file_are_exit_5() {
    let (code, err) = run(
        &["send", "--source", "camera:/dev/video99"],
        Duration::from_secs(5),
    );
    assert_eq!((code, err.trim()), (5, "error: no camera at /dev/video99"));
    let (code, err) = run(
        &["send", "--source", "file:/no/such.mp4"],
        Duration::from_secs(5),
    );
    assert_eq!((code, err.trim()), (5, "error: no such file: /no/such.mp4"));
}

#[test]
fn malformed_code_and_flags_are_exit_2() {
    let (code, err) = run(
        &["view", "--rendezvous", "127.0.0.1:1", "NOT-A-CODE"],
        Duration::from_secs(5),
    );
    assert_eq!(code, 2, "{err}");
    // The room part alone (what the rendezvous knows) is not enough, and the error says why.
    let (code, err) = run(
        &["view", "--rendezvous", "127.0.0.1:1", "K7F-Q2M"],
        Duration::from_secs(5),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("only the room part"), "{err}");
    let (code, _) = run(&["send", "--size", "big"], Duration::from_secs(5));
    assert_eq!(code, 2);
}

#[test]
fn help_shows_examples_and_exit_codes() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("inclubit demo") && s.contains("Exit codes:"),
        "{s}"
    );
}

#[test]
fn rendezvous_survives_10000_random_datagrams_then_serves() {
    let (_rv, addr) = rendezvous();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = [0u8; 1500];
    for i in 0..10_000 {
        // xorshift: random lengths and bytes; every tenth starts like a real signal message.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (x % 1400) as usize;
        for b in buf[..len].iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        if i % 10 == 0 && len > 3 {
            buf[0] = 0x21;
            buf[1] = 1;
        }
        let _ = sock.send_to(&buf[..len], addr);
    }
    let (_send, code, _) = sender(Some(addr));
    let v = view(&addr.to_string(), &code, "30");
    let (status, err) = v.wait(Duration::from_secs(30));
    assert_eq!(status, 0, "{err}");
}

#[test]
fn no_gpu_is_a_clear_error() {
    let (_send, code, rv) = sender(None);
    let out = Command::new(BIN)
        .args([
            "view",
            "--rendezvous",
            &rv,
            "--bind",
            "127.0.0.1:0",
            "--headless",
            &code,
        ])
        .env("VK_ICD_FILENAMES", "/nonexistent/icd.json")
        .env("VK_DRIVER_FILES", "/nonexistent/icd.json")
        .env("WGPU_BACKEND", "vulkan")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("no GPU adapter found"), "{err}");
}

#[test]
fn viewer_exits_cleanly_when_sender_stops() {
    let (send, code, rv) = sender(None);
    // Without --rejoin 0 it would keep joining the code for a minute (tests/restart.rs).
    let v = Proc::start(&[
        "view",
        "--rendezvous",
        &rv,
        "--bind",
        "127.0.0.1:0",
        "--headless",
        "--render-size",
        "64x64",
        "--rejoin",
        "0",
        &code,
    ]);
    v.line("view ", Duration::from_secs(15));
    drop(send);
    // The sender was killed without a goodbye: the viewer notices within the idle timeout.
    let (status, err) = v.wait(Duration::from_secs(20));
    assert_eq!(status, 4, "{err}");
    assert!(err.contains("lost the sender"), "{err}");
}

#[test]
fn ctrl_c_on_the_sender_ends_both_cleanly() {
    let (send, code, rv) = sender(None);
    let v = view(&rv, &code, "100000");
    v.line("view ", Duration::from_secs(15));
    send.interrupt();
    let (status, err) = send.wait(Duration::from_secs(5));
    assert_eq!(status, 0, "{err}");
    let (status, err) = v.wait(Duration::from_secs(5));
    assert_eq!(status, 0, "{err}");
    assert!(err.contains("the sender ended the stream"), "{err}");
}

#[test]
fn demo_headless_stops_cleanly_on_ctrl_c() {
    let p = Proc::start(&["demo", "--headless", "--size", "640x320"]);
    p.line("demo: test card 640x320", Duration::from_secs(10));
    p.line("view ", Duration::from_secs(15));
    p.interrupt();
    let (status, err) = p.wait(Duration::from_secs(5));
    assert_eq!(status, 0, "{err}");
}

#[test]
fn demo_opens_a_window_when_there_is_a_display() {
    // Xvfb is our display here (installed by scripts/setup.sh).
    let out = Command::new("xvfb-run")
        .args([
            "-a",
            "-s",
            "-screen 0 1280x720x24",
            BIN,
            "-v",
            "demo",
            "--frames",
            "45",
            "--size",
            "640x320",
        ])
        .env("RUST_LOG", "inclubit=info")
        .stdin(Stdio::null())
        .output()
        .expect("xvfb-run (apt package xvfb)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("window renderer"), "no window was used: {err}");
}

#[test]
fn a_device_that_is_not_a_camera_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("inclubit-cam-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("video0");
    std::fs::write(&fake, b"not a camera").unwrap();
    let src = format!("camera:{}", fake.display());
    let (code, err) = run(&["send", "--source", &src], Duration::from_secs(5));
    assert_eq!(code, 5, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("error: cannot open camera {}", fake.display())),
        "{err}"
    );
}

#[test]
fn force_relay_shows_relay_path_in_stats() {
    let (_send, code, rv) = sender(None);
    let mut v = Proc::start(&[
        "view",
        "--rendezvous",
        &rv,
        "--bind",
        "127.0.0.1:0",
        "--headless",
        "--frames",
        "45",
        "--render-size",
        "64x64",
        "--json",
        "--force-relay",
        &code,
    ]);
    let l = v.line("{", Duration::from_secs(15));
    let stats: serde_json::Value = serde_json::from_str(&l).unwrap();
    assert_eq!(stats["path"], "relay", "{l}");
    v.lines = mpsc::channel().1;
    let (status, err) = v.wait(Duration::from_secs(20));
    assert_eq!(status, 0, "{err}");
}

#[test]
fn sender_prints_the_browser_link_of_a_rendezvous_with_a_web_side() {
    let r = Proc::start(&[
        "rendezvous",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--webrtc",
        "127.0.0.1:0",
    ]);
    let l = r.line("listening on ", Duration::from_secs(10));
    let rv: SocketAddr = l.trim_start_matches("listening on ").parse().unwrap();
    let web = r.line("web listening on ", Duration::from_secs(10));
    let web = web
        .trim_start_matches("web listening on http://")
        .to_string();
    let (s, code, _) = sender(Some(rv));
    let link = s.line("browser ", Duration::from_secs(5));
    assert_eq!(
        link.split_whitespace().nth(1),
        Some(format!("http://{web}/r/{code}").as_str()),
        "{link}"
    );
    // And the page is there.
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .arg(format!("http://{web}/r/{code}"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
}

#[test]
fn sender_without_a_web_side_prints_no_browser_link() {
    let (_r, rv) = rendezvous();
    let (s, _, _) = sender(Some(rv));
    // The first stats line comes after everything announce prints.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let l = s
            .lines
            .recv_timeout(end.saturating_duration_since(Instant::now()))
            .expect("a stats line");
        assert!(!l.starts_with("browser"), "{l}");
        if l.starts_with("send ") {
            break;
        }
    }
}

#[test]
fn no_openxr_runtime_falls_back_to_the_window_or_fails_with_xr() {
    // No runtime on this machine (and none named): the real loader says so.
    let (_r, rv) = rendezvous();
    let (_s, code, rv_s) = sender(Some(rv));
    let run = |extra: &[&str]| {
        let mut args = vec!["view", "--rendezvous", &rv_s, "--bind", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        args.push(&code);
        common::process::output_headless(&args, &[])
    };
    let (status, out, err) = run(&["--frames", "5", "--render-size", "64x64"]);
    assert_eq!(status, Some(0), "{err}");
    // No display either: one line says what happens, and nothing contradicts it.
    assert!(
        out.lines().any(|l| l
            == "no OpenXR runtime found, and no display: rendering headless — use --xr to require a headset"),
        "{out}"
    );
    assert!(!out.contains("opening a desktop window"), "{out}");
    assert!(!err.contains("no display found"), "{err}");
    let (status, _, err) = run(&["--xr"]);
    assert_eq!(status, Some(6), "{err}");
    assert_eq!(
        err.trim(),
        "error: no OpenXR runtime found (--xr requires a headset)"
    );
    let (status, out, err) = run(&["--window", "--frames", "5", "--render-size", "64x64"]);
    assert_eq!(status, Some(0), "{err}");
    assert!(!out.contains("OpenXR"), "{out}");
}

#[test]
fn no_runtime_dir_is_no_noise_on_stderr() {
    // A service or an ssh session has no XDG_RUNTIME_DIR; Mesa complained once per Vulkan
    // instance.
    let p = Proc::start_with(
        &["demo", "--headless", "--frames", "5", "--size", "640x320"],
        &[],
        &["XDG_RUNTIME_DIR", "DISPLAY", "WAYLAND_DISPLAY"],
        std::process::Stdio::null(),
    );
    let (code, err) = p.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("XDG_RUNTIME_DIR"), "{err}");
}

#[test]
fn after_a_stall_the_viewer_prints_one_stats_line_not_a_burst() {
    let (_send, code, rv) = sender(None);
    let v = view(&rv, &code, "100000");
    v.line("view ", Duration::from_secs(15));
    // The whole viewer stops for 3 s (a suspended laptop, a debugger): three ticks are due when
    // it resumes.
    let pid = v.child.id() as i32;
    // SAFETY: signals to our own child process.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_secs(3));
    while v.lines.try_recv().is_ok() {}
    unsafe { libc::kill(pid, libc::SIGCONT) };
    v.line("view ", Duration::from_secs(5));
    let burst = std::iter::from_fn(|| v.lines.recv_timeout(Duration::from_millis(400)).ok())
        .filter(|l| l.starts_with("view "))
        .take(3)
        .count();
    assert_eq!(burst, 0, "more stats lines came at once after the stall");
}

#[test]
fn sender_serves_metrics_per_viewer() {
    let p = Proc::start(&[
        "send",
        "--source",
        "testcard",
        "--size",
        "320x160",
        "--bind",
        "127.0.0.1:0",
        "--rendezvous-port",
        "0",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let code = p.line("code ", Duration::from_secs(10));
    let code = code.split_whitespace().nth(1).unwrap().to_string();
    let rv = p.line("rendezvous ", Duration::from_secs(5));
    let rv = rv.split_whitespace().nth(1).unwrap().to_string();
    let url = p.line("metrics ", Duration::from_secs(5));
    let url = url.split_whitespace().nth(1).unwrap().to_string();
    let scrape = || {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", &url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(scrape().contains("inclubit_send_viewers 0"));
    let _v = view(&rv, &code, "100000");
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = scrape();
        let sent = text
            .lines()
            .find(|l| {
                l.starts_with("inclubit_viewer_frames_sent_total{viewer=\"1\",path=\"direct\"}")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
        if sent.is_some_and(|n| n >= 30) || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for want in [
        "inclubit_send_viewers 1",
        "inclubit_viewer_rtt_seconds{viewer=\"1\",path=\"direct\",rendition=\"full\"}",
        "inclubit_viewer_sent_bits_per_second{viewer=\"1\",path=\"direct\",rendition=\"full\"}",
        "inclubit_viewer_frames_skipped_total{viewer=\"1\",path=\"direct\"}",
    ] {
        assert!(text.contains(want), "no `{want}` in\n{text}");
    }
    let sent = text
        .lines()
        .find(|l| l.starts_with("inclubit_viewer_frames_sent_total{viewer=\"1\""))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
    assert!(sent.is_some_and(|n| n >= 30), "{text}");
    let health = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            &url.replace("/metrics", "/healthz"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&health.stdout), "ok\n");
}

#[test]
fn send_reads_its_settings_from_a_config_file() {
    let dir = std::env::temp_dir().join(format!("inclubit-send-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("send.toml");
    std::fs::write(&cfg, "size = \"320x160\"\nbitrate = \"2M\"\nfps = 25\n").unwrap();
    let cfg = cfg.to_str().unwrap();
    let printed = Command::new(BIN)
        .args(["send", "--config", cfg, "--print-config", "--fps", "20"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&printed.stdout);
    assert!(printed.status.success(), "{out}");
    for line in ["size = \"320x160\"", "bitrate = \"2M\"", "fps = 20"] {
        assert!(out.lines().any(|l| l == line), "no `{line}` in\n{out}");
    }
    std::fs::write(dir.join("bad.toml"), "size = \"huge\"\n").unwrap();
    let (code, out) = run(
        &["send", "--config", dir.join("bad.toml").to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("bad.toml:1: bad value for `size`"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// ffprobe's view of a file: its first video stream and its format, frames counted by
/// decoding every one.
fn probe(path: &std::path::Path) -> serde_json::Value {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_streams",
            "-show_format",
        ])
        .args(["-of", "json"])
        .arg(path)
        .output()
        .expect("ffprobe (apt: ffmpeg)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn record(args: &[&str], file: &std::path::Path) {
    let mut all = vec![
        "send",
        "--source",
        "testcard",
        "--bind",
        "127.0.0.1:0",
        "--rendezvous-port",
        "0",
        "--record",
        file.to_str().unwrap(),
    ];
    all.extend(args);
    let (code, err) = run(&all, Duration::from_secs(60));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn record_writes_the_stream_with_360_metadata() {
    let dir = std::env::temp_dir().join(format!("inclubit-record-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let mkv = dir.join("talk.mkv");
    record(&["--size", "640x320", "--frames", "90"], &mkv);
    let p = probe(&mkv);
    let s = &p["streams"][0];
    assert_eq!(s["codec_name"], "h264", "{p}");
    assert_eq!(
        (s["width"].as_u64(), s["height"].as_u64()),
        (Some(640), Some(320))
    );
    // Every frame encoded is in the file and decodes; 90 frames at 30 fps.
    assert_eq!(s["nb_read_frames"], "90", "{p}");
    let duration: f64 = p["format"]["duration"].as_str().unwrap().parse().unwrap();
    assert!((2.8..=3.1).contains(&duration), "duration {duration}");
    let side = &s["side_data_list"][0];
    assert_eq!(side["side_data_type"], "Spherical Mapping", "{p}");
    assert_eq!(side["projection"], "equirectangular", "{p}");

    // MP4, stereo top-bottom, a turned scene: both boxes, the yaw kept.
    let mp4 = dir.join("stage.mp4");
    record(
        &[
            "--size",
            "640x640",
            "--projection",
            "equirect-tb",
            "--yaw",
            "90",
            "--frames",
            "60",
        ],
        &mp4,
    );
    let p = probe(&mp4);
    let s = &p["streams"][0];
    assert_eq!(s["nb_read_frames"], "60", "{p}");
    let sides = s["side_data_list"].as_array().expect("side data");
    assert!(
        sides
            .iter()
            .any(|d| d["side_data_type"] == "Stereo 3D" && d["type"] == "top and bottom"),
        "{p}"
    );
    assert!(
        sides
            .iter()
            .any(|d| d["projection"] == "equirectangular" && d["yaw"] == 90),
        "{p}"
    );

    // An unknown container, a place that cannot be written: one line, nothing streamed.
    for (file, want) in [
        (dir.join("talk.avi"), "name it .mkv or .mp4"),
        (
            std::path::PathBuf::from("/nonexistent/dir/talk.mkv"),
            "No such file or directory",
        ),
    ] {
        let (code, err) = run(
            &[
                "send",
                "--frames",
                "5",
                "--record",
                file.to_str().unwrap(),
                "--rendezvous-port",
                "0",
            ],
            Duration::from_secs(20),
        );
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains(want) && err.contains("cannot record to"),
            "{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
