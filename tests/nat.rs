//! The NAT lab: network namespaces, veth links and iptables NAT (cone: MASQUERADE, which keeps
//! ports; symmetric: MASQUERADE --random-fully), with the rendezvous on a "public" segment.
//! Real `inclubit` processes run inside the namespaces. Nothing in the lab is linked to the
//! host's network, so no datagram leaves it. Every namespace and process goes away on drop,
//! also when a test fails. Needs root (CI runs as root) and `iptables` (scripts/setup.sh).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_inclubit");
const RV: &str = "198.18.0.10";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Nat {
    Public,
    Cone,
    Symmetric,
}

struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    procs: Vec<Child>,
    /// The internet bridge port of each side ("a", "b").
    uplinks: Vec<(String, String)>,
    /// stderr of each process, shown when a test fails.
    logs: Vec<std::path::PathBuf>,
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "`{}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lab {
    fn new(sender: Nat, viewer: Nat) -> Lab {
        static N: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "ib{}x{}",
            std::process::id() % 100_000,
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Lab {
            prefix,
            namespaces: Vec::new(),
            procs: Vec::new(),
            uplinks: Vec::new(),
            logs: Vec::new(),
        };
        let inet = lab.ns("inet");
        lab.in_ns(&inet, &["ip", "link", "add", "br0", "type", "bridge"]);
        lab.in_ns(&inet, &["ip", "link", "set", "br0", "up"]);
        let rv = lab.ns("rv");
        lab.wire_to_internet(&rv, "eth0", &format!("{RV}/24"), 0);
        lab.side("a", sender, 1);
        lab.side("b", viewer, 2);
        lab
    }

    fn name(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    fn ns(&mut self, short: &str) -> String {
        let n = self.name(short);
        sh(&["ip", "netns", "add", &n]);
        self.namespaces.push(n.clone());
        self.in_ns(&n, &["ip", "link", "set", "lo", "up"]);
        n
    }

    fn in_ns(&self, ns: &str, args: &[&str]) {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(args);
        sh(&full);
    }

    /// A veth from `ns` (named `ifname`, address `cidr`) to the internet bridge.
    fn wire_to_internet(&self, ns: &str, ifname: &str, cidr: &str, idx: u32) {
        let inet = self.name("inet");
        let port = format!("p{idx}");
        sh(&[
            "ip", "link", "add", ifname, "netns", ns, "type", "veth", "peer", "name", &port,
            "netns", &inet,
        ]);
        self.in_ns(&inet, &["ip", "link", "set", &port, "master", "br0"]);
        self.in_ns(&inet, &["ip", "link", "set", &port, "up"]);
        self.in_ns(ns, &["ip", "addr", "add", cidr, "dev", ifname]);
        self.in_ns(ns, &["ip", "link", "set", ifname, "up"]);
    }

    /// Host `short` (namespace "a" or "b"), public or behind its own NAT router.
    fn side(&mut self, short: &str, nat: Nat, n: u32) {
        let host = self.ns(short);
        if nat == Nat::Public {
            self.wire_to_internet(&host, "eth0", &format!("198.18.0.{}/24", 20 + n), n + 10);
            self.uplinks.push((short.into(), format!("p{}", n + 10)));
            return;
        }
        let router = self.ns(&format!("r{short}"));
        self.wire_to_internet(&router, "wan", &format!("198.18.0.{}/24", n + 1), n + 20);
        self.uplinks.push((short.into(), format!("p{}", n + 20)));
        sh(&[
            "ip", "link", "add", "lan", "netns", &router, "type", "veth", "peer", "name", "eth0",
            "netns", &host,
        ]);
        let lan = format!("10.10.{n}");
        self.in_ns(
            &router,
            &["ip", "addr", "add", &format!("{lan}.1/24"), "dev", "lan"],
        );
        self.in_ns(&router, &["ip", "link", "set", "lan", "up"]);
        self.in_ns(
            &host,
            &["ip", "addr", "add", &format!("{lan}.2/24"), "dev", "eth0"],
        );
        self.in_ns(&host, &["ip", "link", "set", "eth0", "up"]);
        self.in_ns(
            &host,
            &["ip", "route", "add", "default", "via", &format!("{lan}.1")],
        );
        self.in_ns(&router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let mut rule = vec![
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "wan",
            "-j",
            "MASQUERADE",
        ];
        if nat == Nat::Symmetric {
            rule.push("--random-fully");
        }
        self.in_ns(&router, &rule);
        // Like a home router: unsolicited packets from the internet are dropped, to the router
        // itself and to the LAN. (Without it Linux confirms a conntrack entry for a peer's
        // early punch and then re-maps our own first punch to another port.)
        for chain in ["INPUT", "FORWARD"] {
            self.in_ns(
                &router,
                &[
                    "iptables",
                    "-A",
                    chain,
                    "-i",
                    "wan",
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "NEW",
                    "-j",
                    "DROP",
                ],
            );
        }
    }

    /// Runs `inclubit ARGS` in namespace `short`; stdout lines come back on the channel.
    fn run(&mut self, short: &str, args: &[&str]) -> mpsc::Receiver<String> {
        let ns = self.name(short);
        let log = std::env::temp_dir().join(format!("{}-{}.log", ns, self.procs.len()));
        let err = std::fs::File::create(&log).expect("log file");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns, BIN])
            .args(args)
            .env("RUST_LOG", "inclubit=debug,inclubit_rendezvous=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("spawn inclubit in the lab");
        self.logs.push(log);
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        self.procs.push(child);
        rx
    }
}

impl Lab {
    /// Takes side `short`'s internet link down (`up == false`) or back up.
    fn link(&self, short: &str, up: bool) {
        let port = &self.uplinks.iter().find(|(s, _)| s == short).unwrap().1;
        let state = if up { "up" } else { "down" };
        self.in_ns(&self.name("inet"), &["ip", "link", "set", port, state]);
    }

    /// Kills the `i`-th process started with [`Lab::run`].
    fn kill(&mut self, i: usize) {
        let _ = self.procs[i].kill();
        let _ = self.procs[i].wait();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
        for log in &self.logs {
            if std::thread::panicking() {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("--- {} (last lines)", log.display());
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
            let _ = std::fs::remove_file(log);
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn line(rx: &mpsc::Receiver<String>, prefix: &str, timeout: Duration) -> String {
    let end = Instant::now() + timeout;
    loop {
        match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(l) if l.starts_with(prefix) => return l,
            Ok(_) => {}
            Err(e) => panic!("no line starting with {prefix:?}: {e}"),
        }
    }
}

/// Runs one matrix cell and returns the viewer's final stats.
fn cell(sender: Nat, viewer: Nat) -> serde_json::Value {
    let mut lab = Lab::new(sender, viewer);
    let rv = format!("{RV}:7000");
    let _r = lab.run("rv", &["rendezvous", "--listen", &rv]);
    // The rendezvous is up once it prints; then the sender.
    line(&_r, "listening on", Duration::from_secs(10));
    let s = lab.run(
        "a",
        &[
            "send",
            "--source",
            "testcard",
            "--size",
            "640x320",
            "--rendezvous",
            &rv,
        ],
    );
    let code = line(&s, "code ", Duration::from_secs(10));
    let code = code.split_whitespace().nth(1).unwrap().to_string();
    let v = lab.run(
        "b",
        &[
            "view",
            "--rendezvous",
            &rv,
            "--headless",
            "--render-size",
            "32x32",
            "--frames",
            "75",
            "--verify",
            "--json",
            &code,
        ],
    );
    // The last line is the final one, printed when 75 frames were decoded.
    let mut last = None;
    let end = Instant::now() + Duration::from_secs(40);
    while let Ok(l) = v.recv_timeout(end.saturating_duration_since(Instant::now())) {
        last = Some(l);
    }
    let last =
        last.unwrap_or_else(|| panic!("{sender:?} -> {viewer:?}: the viewer printed nothing"));
    serde_json::from_str(&last).unwrap_or_else(|e| panic!("{last}: {e}"))
}

fn check(sender: Nat, viewer: Nat, path: &str) {
    let stats = cell(sender, viewer);
    assert_eq!(stats["path"], path, "{sender:?} -> {viewer:?}: {stats}");
    assert!(stats["frames"].as_u64().unwrap() >= 60, "{stats}");
    assert!(stats["verified"].as_u64().unwrap() >= 60, "{stats}");
    assert_eq!(stats["corrupt"], 0, "{stats}");
}

#[test]
fn cone_sender_public_viewer_goes_direct() {
    check(Nat::Cone, Nat::Public, "direct");
}

#[test]
fn cone_to_cone_goes_direct() {
    check(Nat::Cone, Nat::Cone, "direct");
}

#[test]
fn cone_to_symmetric_uses_the_relay() {
    check(Nat::Cone, Nat::Symmetric, "relay");
}

#[test]
fn symmetric_sender_public_viewer_goes_direct() {
    check(Nat::Symmetric, Nat::Public, "direct");
}

#[test]
fn symmetric_to_cone_uses_the_relay() {
    check(Nat::Symmetric, Nat::Cone, "relay");
}

#[test]
fn symmetric_to_symmetric_uses_the_relay() {
    check(Nat::Symmetric, Nat::Symmetric, "relay");
}

/// A direct stream in the lab: rendezvous (process 0), sender (1), viewer (2) with JSON stats.
fn direct_stream(lab: &mut Lab, frames: &str) -> mpsc::Receiver<String> {
    let rv = format!("{RV}:7000");
    let r = lab.run("rv", &["rendezvous", "--listen", &rv]);
    line(&r, "listening on", Duration::from_secs(10));
    let s = lab.run(
        "a",
        &[
            "send",
            "--source",
            "testcard",
            "--size",
            "640x320",
            "--rendezvous",
            &rv,
        ],
    );
    let code = line(&s, "code ", Duration::from_secs(10));
    let code = code.split_whitespace().nth(1).unwrap().to_string();
    lab.run(
        "b",
        &[
            "view",
            "--rendezvous",
            &rv,
            "--headless",
            "--render-size",
            "32x32",
            "--frames",
            frames,
            "--verify",
            "--json",
            &code,
        ],
    )
}

fn stats(l: &str) -> serde_json::Value {
    serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))
}

#[test]
fn a_killed_rendezvous_does_not_stop_a_direct_stream() {
    let mut lab = Lab::new(Nat::Cone, Nat::Cone);
    let v = direct_stream(&mut lab, "240");
    let first = stats(&line(&v, "{", Duration::from_secs(15)));
    assert_eq!(first["path"], "direct", "{first}");
    lab.kill(0);
    let mut last = first;
    let end = Instant::now() + Duration::from_secs(20);
    while let Ok(l) = v.recv_timeout(end.saturating_duration_since(Instant::now())) {
        last = stats(&l);
    }
    assert_eq!(last["frames"], 240, "{last}");
    assert_eq!(last["verified"], 240, "{last}");
    assert_eq!(last["path"], "direct", "{last}");
}

#[test]
fn a_two_second_link_cut_recovers() {
    let mut lab = Lab::new(Nat::Cone, Nat::Cone);
    let v = direct_stream(&mut lab, "100000");
    let before = stats(&line(&v, "{", Duration::from_secs(15)));
    assert_eq!(before["path"], "direct", "{before}");
    lab.link("b", false);
    std::thread::sleep(Duration::from_secs(2)); // the cut itself, not a wait for an event
    let frames_at_cut = {
        // Drain what was printed during the cut.
        let mut f = before["frames"].as_u64().unwrap();
        while let Ok(l) = v.try_recv() {
            f = stats(&l)["frames"].as_u64().unwrap();
        }
        f
    };
    lab.link("b", true);
    let back = Instant::now();
    // Recovered once a stats line shows the stream moving again at a full second's worth.
    let recovered = loop {
        let l = v
            .recv_timeout(Duration::from_secs(10))
            .expect("the viewer keeps printing");
        let s = stats(&l);
        if s["frames"].as_u64().unwrap() >= frames_at_cut + 30 && s["fps"].as_f64().unwrap() >= 20.0
        {
            break back.elapsed();
        }
        assert!(back.elapsed() < Duration::from_secs(10), "no recovery: {s}");
    };
    eprintln!("recovered {recovered:?} after the link returned");
    let after = stats(&line(&v, "{", Duration::from_secs(5)));
    assert_eq!(after["corrupt"], 0, "{after}");
    assert_eq!(after["path"], "direct", "{after}");
}
