//! The admin's side of the standalone server, through its real binary: the config file, the
//! metrics a Prometheus server scrapes, and the systemd unit shipped in `rendezvous/dist`.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use inclubit_rendezvous::code::RoomCode;
use inclubit_rendezvous::wire::signal::{ClientMsg, ErrorKind, ServerMsg};

const BIN: &str = env!("CARGO_BIN_EXE_inclubit-rendezvous");

fn dist(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("dist")
        .join(name)
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("inclubit-admin-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("STATE_DIRECTORY", temp_dir("state"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_file_sets_flags_and_flags_override_it() {
    let dir = temp_dir("config");
    let cfg = dir.join("rendezvous.toml");
    std::fs::write(
        &cfg,
        "# a comment\nmax-viewers = 32\nroom_idle_secs = 40\nlisten = \"127.0.0.1:7300\"\n\
         public-ip = [\"192.0.2.7\", \"192.0.2.8\"]\nno-http = true\n",
    )
    .unwrap();
    let path = cfg.to_str().unwrap();
    let (code, out, err) = run(&["--config", path, "--print-config", "--room-idle-secs", "50"]);
    assert_eq!(code, Some(0), "{err}");
    for line in [
        "max-viewers = 32",
        "room-idle-secs = 50",
        "listen = \"127.0.0.1:7300\"",
        "public-ip = [\"192.0.2.7\", \"192.0.2.8\"]",
        "no-http = true",
        "rooms-per-network = 16",
        "# tls-cert =",
    ] {
        assert!(out.lines().any(|l| l == line), "no `{line}` in\n{out}");
    }
    // What it prints is a config file that gives the same settings.
    let again = dir.join("printed.toml");
    std::fs::write(&again, &out).unwrap();
    let (code, out2, err) = run(&["--config", again.to_str().unwrap(), "--print-config"]);
    assert_eq!((code, out2.as_str()), (Some(0), out.as_str()), "{err}");
}

#[test]
fn bad_config_files_name_the_key_and_line() {
    let dir = temp_dir("bad-config");
    let cases = [
        (
            "max-viewers = 3\n\nmax-veiwers = 4\n",
            "bad.toml:3: unknown key `max-veiwers`",
        ),
        (
            "listen = \"nowhere\"\n",
            "bad.toml:1: bad value for `listen`: ",
        ),
        (
            "no-http = \"yes\"\n",
            "bad.toml:1: bad value for `no-http`: expected true or false",
        ),
        ("max-viewers = = 3\n", "bad.toml: line 1: "),
    ];
    for (text, want) in cases {
        let cfg = dir.join("bad.toml");
        std::fs::write(&cfg, text).unwrap();
        let (code, _, err) = run(&["--config", cfg.to_str().unwrap()]);
        assert_eq!(code, Some(2), "{text}: {err}");
        assert!(err.contains(want), "{text}: want `{want}` in {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
    let (code, _, err) = run(&["--config", "/nonexistent/rv.toml"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("/nonexistent/rv.toml"), "{err}");
}

#[test]
fn the_shipped_example_config_is_valid() {
    let (code, out, err) = run(&[
        "--config",
        dist("rendezvous.toml").to_str().unwrap(),
        "--print-config",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("listen = "), "{out}");
}

/// The server binary on loopback; its stdout lines.
struct Server {
    child: Child,
    udp: SocketAddr,
    http: String,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let mut child = Command::new(BIN)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
                "--webrtc",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env("STATE_DIRECTORY", temp_dir("server-state"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn inclubit-rendezvous");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let mut server = Server {
            child,
            udp: "0.0.0.0:0".parse().unwrap(),
            http: String::new(),
        };
        while server.http.is_empty() {
            let l = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("the server's listening lines");
            if let Some(a) = l.strip_prefix("rendezvous listening on udp ") {
                server.udp = a.trim().parse().unwrap();
            }
            if let Some(rest) = l.strip_prefix("web listening on ") {
                server.http = rest.split_whitespace().next().unwrap().to_string();
            }
        }
        server
    }

    fn get(&self, path: &str) -> (u16, String, String) {
        let out = Command::new("curl")
            .args([
                "-sk",
                "--max-time",
                "20",
                "-D",
                "/dev/stderr",
                "-w",
                "\n%{http_code}",
            ])
            .arg(format!("{}{path}", self.http))
            .output()
            .expect("curl (scripts/setup.sh installs it)");
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = body.rsplit_once('\n').unwrap();
        (
            code.parse().unwrap(),
            body.to_string(),
            String::from_utf8_lossy(&out.stderr).to_ascii_lowercase(),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One Prometheus text exposition, checked line by line: `# HELP`/`# TYPE` before each family,
/// every sample `name{labels} number` of a declared family. Returns (series, value).
fn parse_exposition(text: &str) -> Vec<(String, f64)> {
    let mut families: Vec<(String, String)> = Vec::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                [
                    "counter",
                    "gauge",
                    "histogram",
                    "summary",
                    "info",
                    "unknown"
                ]
                .contains(&kind),
                "{line}"
            );
            families.push((name.to_string(), kind.to_string()));
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        assert!(!line.starts_with('#'), "stray comment: {line}");
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            }
        }
        let (family, kind) = families.last().expect("a sample before any TYPE");
        let declared = name == family
            || (kind == "counter" && name.strip_suffix("_total") == Some(family.as_str()))
            || (kind == "counter" && name.strip_suffix("_created") == Some(family.as_str()));
        assert!(declared, "{line} is not of family {family}");
        samples.push((series.to_string(), value));
    }
    samples
}

fn value(samples: &[(String, f64)], series: &str) -> Option<f64> {
    samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v)
}

#[test]
fn metrics_are_scraped_and_parse() {
    let server = Server::start(&[]);
    let (code, body, _) = server.get("/healthz");
    assert_eq!((code, body.as_str()), (200, "ok\n"));

    // A room, and a guess at a code that has none.
    let s = udp_to(server.udp);
    let code = open_room(&s);
    let wrong = RoomCode::from_bits(code.bits() ^ 1);
    assert_eq!(join(server.udp, wrong, 2), Err(ErrorKind::RoomNotFound));
    // Garbage counts as malformed and changes nothing else.
    s.send(&[0xff, 0x00, 0x01]).unwrap();

    // The server publishes its rooms about once a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    let samples = loop {
        let (code, body, headers) = server.get("/metrics");
        assert_eq!(code, 200);
        assert!(headers.contains("content-type: text/plain"), "{headers}");
        let samples = parse_exposition(&body);
        let ready = value(&samples, "inclubit_rooms") == Some(1.0)
            && value(&samples, "inclubit_malformed_datagrams_total") == Some(1.0);
        if ready || Instant::now() > deadline {
            break samples;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let want = [
        ("inclubit_rooms", 1.0),
        ("inclubit_peers{role=\"sender\"}", 1.0),
        ("inclubit_peers{role=\"viewer\"}", 0.0),
        ("inclubit_relay_sessions", 0.0),
        ("inclubit_relay_bytes_total", 0.0),
        (
            "inclubit_refused_requests_total{reason=\"room_not_found\"}",
            1.0,
        ),
        ("inclubit_malformed_datagrams_total", 1.0),
        ("inclubit_whep_sessions", 0.0),
        ("inclubit_bridge_viewers", 0.0),
        ("inclubit_bridge_bitrate_bits_per_second", 0.0),
    ];
    for (series, v) in want {
        assert_eq!(value(&samples, series), Some(v), "{series} in {samples:?}");
    }

    // A WHEP offer for a room that is not there is counted by its reason.
    let out = Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "20",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args([
            "-X",
            "POST",
            "-H",
            "content-type: application/sdp",
            "--data",
            "v=0",
        ])
        .arg(format!("{}/whep/{}-4X9P", server.http, wrong))
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&out.stdout), "201");
    let (_, body, _) = server.get("/metrics");
    let samples = parse_exposition(&body);
    let refused: f64 = samples
        .iter()
        .filter(|(s, _)| s.starts_with("inclubit_http_refused_requests_total{"))
        .map(|(_, v)| v)
        .sum();
    assert!(refused >= 1.0, "{body}");
}

fn systemd_analyze(args: &[&str]) -> Option<std::process::Output> {
    Command::new("systemd-analyze").args(args).output().ok()
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    // The unit as shipped, pointing at the binary under test.
    let unit = std::fs::read_to_string(dist("inclubit-rendezvous.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/inclubit-rendezvous\n"));
    for line in [
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "ProtectSystem=strict",
        "StateDirectory=inclubit-rendezvous",
    ] {
        assert!(unit.lines().any(|l| l == line), "no {line}");
    }
    let dir = temp_dir("unit");
    let path = dir.join("inclubit-rendezvous.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/inclubit-rendezvous", BIN),
    )
    .unwrap();
    let path = path.to_str().unwrap();
    let out = systemd_analyze(&["verify", path]).expect("systemd-analyze (apt: systemd)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "verify: {err}"
    );
    // Exposure on systemd's 0 (locked down) to 10 (unprotected) scale: 1.6 when written.
    let out = systemd_analyze(&["security", "--offline=yes", "--threshold=20", path]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "security: {text}");
    let level: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for ").nth(1))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in {text}"));
    assert!(level <= 2.0, "exposure {level}:\n{text}");
}

#[test]
fn the_compose_file_runs_the_one_image() {
    let compose = std::fs::read_to_string(dist("compose.yaml")).unwrap();
    let services: Vec<&str> = compose
        .lines()
        .skip_while(|l| *l != "services:")
        .skip(1)
        .take_while(|l| l.starts_with(' ') || l.is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   ") && l.ends_with(':'))
        .collect();
    assert_eq!(services, ["  rendezvous:"], "one service");
    assert!(compose.contains("dockerfile: rendezvous/dist/Containerfile"));
    let containerfile = std::fs::read_to_string(dist("Containerfile")).unwrap();
    assert!(containerfile.contains("cargo build --release --locked -p inclubit-rendezvous"));
    assert!(containerfile.contains("ENV STATE_DIRECTORY=/var/lib/inclubit-rendezvous"));
    assert!(compose.contains("state:/var/lib/inclubit-rendezvous"));
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    let r = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(r, 0, "kill");
}

fn open_room(s: &UdpSocket) -> RoomCode {
    let open = ClientMsg::Open {
        txn: 1,
        hosts: vec![],
        fingerprint: [0; 32],
        claim: None,
        direct_only: false,
    };
    s.send(&open.encode()).unwrap();
    let mut buf = [0u8; 2048];
    let n = s.recv(&mut buf).unwrap();
    match ServerMsg::decode(&buf[..n]) {
        Ok(ServerMsg::Opened { code, .. }) => code,
        other => panic!("{other:?}"),
    }
}

fn udp_to(server: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.connect(server).unwrap();
    s
}

/// A viewer's join: Ok, or the error kind.
fn join(server: SocketAddr, code: RoomCode, txn: u64) -> Result<(), ErrorKind> {
    let s = udp_to(server);
    s.send(
        &ClientMsg::Join {
            txn,
            code,
            hosts: vec![],
        }
        .encode(),
    )
    .unwrap();
    let mut buf = [0u8; 2048];
    let n = s.recv(&mut buf).unwrap();
    match ServerMsg::decode(&buf[..n]) {
        Ok(ServerMsg::Joined { .. }) => Ok(()),
        Ok(ServerMsg::Error { kind, .. }) => Err(kind),
        other => panic!("{other:?}"),
    }
}

#[test]
fn sigterm_tells_every_member_and_exits_cleanly() {
    let mut server = Server::start(&[]);
    let sender = udp_to(server.udp);
    let code = open_room(&sender);
    join(server.udp, code, 7).unwrap();
    signal(&server.child, libc::SIGTERM);
    let mut buf = [0u8; 2048];
    let told = loop {
        let n = sender.recv(&mut buf).expect("told before the server goes");
        if let Ok(ServerMsg::Error { kind, .. }) = ServerMsg::decode(&buf[..n]) {
            break kind;
        }
    };
    assert_eq!(told, ErrorKind::ServerClosing);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "still running 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn sighup_reloads_limits_and_the_certificate() {
    let dir = temp_dir("reload");
    let cfg = dir.join("rendezvous.toml");
    std::fs::write(&cfg, "max-viewers = 16\n").unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let write_cert = |year: i32| {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(year, 1, 1);
        let k = rcgen::KeyPair::generate().unwrap();
        let c = params.self_signed(&k).unwrap();
        std::fs::write(&cert, c.pem()).unwrap();
        std::fs::write(&key, k.serialize_pem()).unwrap();
    };
    write_cert(2030);
    let server = Server::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let expiry = || {
        let out = Command::new("curl")
            .args(["-sk", "-v", "--max-time", "10", "-o", "/dev/null"])
            .arg(format!("{}/healthz", server.http))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("*  expire date: ")
                    .map(str::to_string)
            })
            .unwrap_or_default()
    };
    let before = expiry();
    assert!(before.contains("2030"), "{before}");

    let code = open_room(&udp_to(server.udp));
    join(server.udp, code, 1).unwrap();
    std::fs::write(&cfg, "max-viewers = 1\n").unwrap();
    write_cert(2031);
    signal(&server.child, libc::SIGHUP);
    // The old limit (16) would let all of these in.
    let full = (2..8).any(|txn| {
        let r = join(server.udp, code, txn);
        if r.is_ok() {
            std::thread::sleep(Duration::from_millis(200));
        }
        r == Err(ErrorKind::RoomFull)
    });
    assert!(full, "max-viewers = 1 not applied after SIGHUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while expiry() == before {
        assert!(Instant::now() < deadline, "certificate not reloaded");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(expiry().contains("2031"), "{}", expiry());
}
