//! HTTPS by ACME against Debian's pebble (the ACME test CA), through the real binary on
//! loopback: the server gets a certificate by TLS-ALPN-01 on its HTTPS port, serves the page
//! with it (checked by curl trusting only pebble's root), renews it before it expires without
//! a restart, and after a restart serves the cached one with the CA gone.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_inclubit-rendezvous");
const DOMAIN: &str = "rv.inclubit.test";
/// Pebble issues certificates this long-lived here: renewal is due a third before the end.
const VALIDITY_S: u64 = 24;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `cmd` and waits for a line of its output containing `ready`.
fn start(mut cmd: Command, ready: &str) -> Proc {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (apt: pebble)"));
    let (tx, rx) = mpsc::channel();
    for out in [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
    }
    let proc = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(ready) => break,
            Ok(l) => seen.push(l),
            Err(_) => panic!("no `{ready}` from {cmd:?}:\n{}", seen.join("\n")),
        }
    }
    // Keep draining so the child never blocks on a full pipe.
    std::thread::spawn(move || while rx.recv().is_ok() {});
    proc
}

struct Pebble {
    _dns: Proc,
    _ca: Proc,
    directory: String,
    /// Trusted for the directory's own HTTPS.
    tls_root: PathBuf,
    /// The root pebble issues certificates under.
    issuing_root: PathBuf,
}

fn pebble(dir: &Path, tls_port: u16) -> Pebble {
    let dns_port = free_port();
    let dns = start(
        {
            let mut c = Command::new("pebble-challtestsrv");
            c.args(["-dns01", &format!("127.0.0.1:{dns_port}")])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-management", &format!("127.0.0.1:{}", free_port())])
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""]);
            c
        },
        "Starting challenge servers",
    );
    // Pebble's own HTTPS certificate, for 127.0.0.1.
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let (cert, key) = (dir.join("pebble-cert.pem"), dir.join("pebble-key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let (api, mgmt) = (free_port(), free_port());
    let config = dir.join("pebble.json");
    std::fs::write(
        &config,
        serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{api}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": cert,
            "privateKey": key,
            "httpPort": free_port(),
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": VALIDITY_S,
        }})
        .to_string(),
    )
    .unwrap();
    let ca = start(
        {
            let mut c = Command::new("pebble");
            c.arg("-config")
                .arg(&config)
                .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0");
            c
        },
        "ACME directory available",
    );
    let issuing_root = dir.join("pebble-root.pem");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&cert)
        .arg(format!("https://127.0.0.1:{mgmt}/roots/0"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&issuing_root, &out.stdout).unwrap();
    Pebble {
        _dns: dns,
        _ca: ca,
        directory: format!("https://127.0.0.1:{api}/dir"),
        tls_root: cert,
        issuing_root,
    }
}

fn server(port: u16, state: &Path, directory: &str, root: &Path) -> Proc {
    let mut c = Command::new(BIN);
    c.args(["--listen", "127.0.0.1:0", "--webrtc", "127.0.0.1:0"])
        .args(["--http", &format!("127.0.0.1:{port}")])
        .args(["--acme", DOMAIN, "--acme-email", "admin@example.org"])
        .args(["--acme-directory", directory])
        .arg("--acme-root")
        .arg(root)
        .arg("--state-dir")
        .arg(state)
        .env("RUST_LOG", "inclubit_rendezvous=info")
        .env("NO_COLOR", "1");
    start(c, "web listening on")
}

/// GET `path` over HTTPS trusting only `root`; the body and the served certificate's expiry
/// as curl prints it.
fn get(port: u16, root: &Path, path: &str) -> Result<(String, String), String> {
    let out = Command::new("curl")
        .args(["-sS", "-v", "--max-time", "10", "--cacert"])
        .arg(root)
        .args(["--resolve", &format!("{DOMAIN}:{port}:127.0.0.1")])
        .arg(format!("https://{DOMAIN}:{port}{path}"))
        .output()
        .map_err(|e| e.to_string())?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(err);
    }
    let expiry = err
        .lines()
        .find_map(|l| l.trim().strip_prefix("*  expire date: "))
        .unwrap_or_default()
        .to_string();
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), expiry))
}

fn until<T>(within: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn expiry_metric(port: u16, root: &Path) -> Result<u64, String> {
    let (body, _) = get(port, root, "/metrics")?;
    body.lines()
        .find_map(|l| l.strip_prefix("inclubit_certificate_expiry_timestamp_seconds "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no expiry in {body}"))
}

#[test]
fn acme_issues_serves_renews_and_restarts_from_the_cache() {
    let dir = std::env::temp_dir().join(format!("inclubit-acme-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state");
    let port = free_port();
    let ca = pebble(&dir, port);
    let rv = server(port, &state, &ca.directory, &ca.tls_root);

    // Issued: the page over a certificate only pebble's root vouches for.
    let (body, first_expiry) = until(Duration::from_secs(40), || {
        get(port, &ca.issuing_root, "/healthz")
    });
    assert_eq!(body, "ok\n");
    assert!(!first_expiry.is_empty());
    let first = expiry_metric(port, &ca.issuing_root).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        first > now && first <= now + VALIDITY_S + 5,
        "expiry {first}, now {now}"
    );
    assert!(state.join("acme/cert.pem").is_file() && state.join("acme/account.json").is_file());

    // Renewed while running, before the first one expires: a later expiry, served.
    let renewed = until(Duration::from_secs(VALIDITY_S), || {
        let e = expiry_metric(port, &ca.issuing_root)?;
        if e > first {
            Ok(e)
        } else {
            Err(format!("still the first certificate (expires {e})"))
        }
    });
    let (_, served) = get(port, &ca.issuing_root, "/healthz").unwrap();
    assert_ne!(
        served, first_expiry,
        "the renewed certificate is the one served"
    );
    assert!(renewed > first);

    // Restarted with the CA gone: the cached certificate at once.
    drop(rv);
    drop(ca);
    let _rv = server(
        port,
        &state,
        "https://127.0.0.1:9/dir",
        &dir.join("pebble-cert.pem"),
    );
    let (body, _) = until(Duration::from_secs(10), || {
        get(port, &dir.join("pebble-root.pem"), "/healthz")
    });
    assert_eq!(body, "ok\n");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn acme_without_a_reachable_ca_says_so_and_serves_the_rest() {
    // No CA at all: the server still starts (rooms and relay work), logs why HTTPS is not up.
    let dir = std::env::temp_dir().join(format!("inclubit-acme-none-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut c = Command::new(BIN);
    c.args([
        "--listen",
        "127.0.0.1:0",
        "--webrtc",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
    ])
    .args([
        "--acme",
        DOMAIN,
        "--acme-directory",
        "https://127.0.0.1:9/dir",
    ])
    .arg("--state-dir")
    .arg(&dir)
    .env("RUST_LOG", "inclubit_rendezvous=info");
    let _rv = start(
        c,
        &format!("cannot get a certificate for {DOMAIN} from https://127.0.0.1:9/dir: "),
    );
    let _ = std::fs::remove_dir_all(&dir);
}
