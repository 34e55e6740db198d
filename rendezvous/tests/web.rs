//! The standalone server's web side, through its real binary and curl: the download page,
//! file serving without traversal, HTTPS, and bad flags.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_inclubit-rendezvous");

struct Server {
    child: Child,
    base: String,
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
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn inclubit-rendezvous");
        let out = child.stdout.take();
        // Owned first: a panic below still kills the child.
        let mut server = Server {
            child,
            base: String::new(),
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out.expect("piped stdout"))
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(l);
            }
        });
        while server.base.is_empty() {
            let l = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("a `web listening on` line");
            if let Some(rest) = l.strip_prefix("web listening on ") {
                server.base = rest.split_whitespace().next().unwrap().to_string();
            }
        }
        server
    }

    /// (status, body) of a GET; the path is sent as written (`..` included).
    fn get(&self, path: &str) -> (u16, Vec<u8>) {
        let out = curl(
            &["-sk", "--path-as-is", "-w", "\n%{http_code}"],
            &self.base,
            path,
        );
        let mut body = out.stdout;
        let nl = body.iter().rposition(|b| *b == b'\n').unwrap();
        let code = std::str::from_utf8(&body[nl + 1..])
            .unwrap()
            .parse()
            .unwrap();
        body.truncate(nl);
        (code, body)
    }

    fn headers(&self, path: &str) -> String {
        let out = curl(&["-sk", "-D", "-", "-o", "/dev/null"], &self.base, path);
        String::from_utf8_lossy(&out.stdout).to_ascii_lowercase()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn curl(flags: &[&str], base: &str, path: &str) -> Output {
    Command::new("curl")
        .args(flags)
        .args(["--max-time", "20"])
        .arg(format!("{base}{path}"))
        .output()
        .expect("curl (scripts/setup.sh installs it)")
}

fn sha256_hex(data: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(data)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("inclubit-web-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn download_page_lists_files_with_sha256_and_serves_nothing_else() {
    let root = temp_dir("dl");
    let dl = root.join("downloads");
    std::fs::create_dir_all(dl.join("sub")).unwrap();
    let binary: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dl.join("inclubit-x86_64-linux"), &binary).unwrap();
    std::fs::write(dl.join(".secret-dotfile"), b"no").unwrap();
    std::fs::write(root.join("secret"), b"outside").unwrap();
    let s = Server::start(&["--downloads", dl.to_str().unwrap()]);

    let (code, page) = s.get("/");
    let page = String::from_utf8(page).unwrap();
    assert_eq!(code, 200);
    assert!(page.contains("inclubit-x86_64-linux"), "{page}");
    assert!(page.contains(&sha256_hex(&binary)), "{page}");
    assert!(page.contains("195.3 KiB"), "{page}");
    assert!(page.contains("inclubit view CODE --rendezvous 127.0.0.1:"));
    assert!(page.contains("inclubit send --rendezvous 127.0.0.1:"));
    assert!(!page.contains("secret-dotfile"));
    assert!(s
        .headers("/")
        .contains("content-type: text/html; charset=utf-8"));

    let (code, got) = s.get("/dl/inclubit-x86_64-linux");
    assert_eq!(code, 200);
    assert_eq!(got, binary);
    let h = s.headers("/dl/inclubit-x86_64-linux");
    assert!(h.contains("content-type: application/octet-stream"), "{h}");
    assert!(
        h.contains(&format!("etag: \"{}\"", sha256_hex(&binary))),
        "{h}"
    );
    assert!(h.contains("cache-control: public"), "{h}");

    for path in [
        "/dl/../secret",
        "/dl/..%2Fsecret",
        "/dl/%2e%2e%2fsecret",
        "/dl/%2E%2E/secret",
        "/dl/..%5Csecret",
        "/dl/.secret-dotfile",
        "/dl/sub",
        "/dl/",
        "/dl/nope",
        "/../secret",
    ] {
        let (code, body) = s.get(path);
        assert_eq!(code, 404, "{path}: {}", String::from_utf8_lossy(&body));
    }
    // The viewer page exists for valid codes only.
    assert_eq!(s.get("/r/K7F-Q2M").0, 200);
    assert_eq!(s.get("/r/not-a-code").0, 404);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn self_signed_https_serves_the_pages() {
    let s = Server::start(&["--self-signed"]);
    assert!(s.base.starts_with("https://"), "{}", s.base);
    let (code, page) = s.get("/");
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&page).contains("<h1>inclubit</h1>"));
    let (code, js) = s.get("/viewer.js");
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&js).contains("immersive-vr"));
    // Plain HTTP to the HTTPS port gets no page.
    let plain = s.base.replacen("https://", "http://", 1);
    let out = curl(
        &["-s", "-o", "/dev/null", "-w", "%{http_code}"],
        &plain,
        "/",
    );
    assert_ne!(String::from_utf8_lossy(&out.stdout), "200");
}

#[test]
fn bad_web_flags_are_clear_errors() {
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--tls-cert", "/nonexistent/cert.pem"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--tls-key"), "{err}");
    let (code, err) = run(&[
        "--tls-cert",
        "/nonexistent/c.pem",
        "--tls-key",
        "/nonexistent/k.pem",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("/nonexistent/c.pem"), "{err}");
    let (code, err) = run(&["--downloads", "/nonexistent/dir"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("/nonexistent/dir"), "{err}");
}
