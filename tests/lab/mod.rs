//! The NAT lab, shared by tests/nat.rs and benches/connect.rs: network namespaces, veth links
//! and iptables NAT (cone: MASQUERADE, which keeps ports; symmetric: MASQUERADE --random-fully),
//! with the rendezvous on a "public" segment and home-router firewalls. Nothing in the lab is
//! linked to the host's network, so no datagram leaves it. Every namespace and process goes
//! away on drop, also when a test fails. Needs root and `iptables` (scripts/setup.sh).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_inclubit");
/// The tables miniupnpd (nftables build) adds its rules to.
const NFT_TABLES: &str = "add table inet miniupnpd
add chain inet miniupnpd forward { type filter hook forward priority 0 ; policy accept ; }
add chain inet miniupnpd forwardUPnP
add rule inet miniupnpd forward jump forwardUPnP
add chain inet miniupnpd prerouting { type nat hook prerouting priority -100 ; policy accept ; }
add chain inet miniupnpd UPnP
add rule inet miniupnpd prerouting jump UPnP
add chain inet miniupnpd postrouting { type nat hook postrouting priority 100 ; policy accept ; }
add chain inet miniupnpd UPnP-Postrouting
add rule inet miniupnpd postrouting jump UPnP-Postrouting
";

pub const RV: &str = "198.18.0.10";

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Nat {
    Public,
    Cone,
    Symmetric,
    /// Symmetric NAT whose router maps ports on request (miniupnpd: NAT-PMP and UPnP-IGD).
    SymmetricUpnp,
    /// The same with UPnP-IGD only (NAT-PMP off), like many ISP routers.
    SymmetricIgd,
}

pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    procs: Vec<Child>,
    /// The internet bridge port of each side ("a", "b").
    uplinks: Vec<(String, String)>,
    /// stderr of each process, shown when a test fails.
    logs: Vec<std::path::PathBuf>,
    /// Configuration files written for the lab's daemons.
    temp_files: Vec<std::path::PathBuf>,
    /// `INCLUBIT_NETEM` for every peer process: delay and loss in userspace.
    pub netem: Option<String>,
    /// Routers that run miniupnpd, with their LAN number and whether NAT-PMP is on.
    upnp_routers: Vec<(String, u32, bool)>,
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
    pub fn new(sender: Nat, viewer: Nat) -> Lab {
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
            upnp_routers: Vec::new(),
            netem: None,
            temp_files: Vec::new(),
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
        if matches!(nat, Nat::SymmetricUpnp | Nat::SymmetricIgd) {
            self.upnp_routers
                .push((router.clone(), n, nat == Nat::SymmetricUpnp));
        }
        let lan_net = format!("{lan}.0/24");
        let mut rule = vec![
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            &lan_net,
            "-o",
            "wan",
            "-j",
            "MASQUERADE",
        ];
        if matches!(nat, Nat::Symmetric | Nat::SymmetricUpnp | Nat::SymmetricIgd) {
            rule.push("--random-fully");
        }
        self.in_ns(&router, &rule);
        // Port mappings (DNAT) may come in.
        self.in_ns(
            &router,
            &[
                "iptables",
                "-A",
                "FORWARD",
                "-i",
                "wan",
                "-m",
                "conntrack",
                "--ctstate",
                "DNAT",
                "-j",
                "ACCEPT",
            ],
        );
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
    pub fn run(&mut self, short: &str, args: &[&str]) -> mpsc::Receiver<String> {
        let ns = self.name(short);
        let log = std::env::temp_dir().join(format!("{}-{}.log", ns, self.procs.len()));
        let err = std::fs::File::create(&log).expect("log file");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns, BIN])
            .args(args)
            .env(
                "RUST_LOG",
                "inclubit=debug,inclubit_rendezvous=info,inclubit_rendezvous::peer::subscribe=debug",
            )
            .env("INCLUBIT_NETEM", self.netem.as_deref().unwrap_or(""))
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
    /// Starts miniupnpd on the UPnP routers (after the rendezvous, which answers its STUN
    /// check) and waits until it serves NAT-PMP.
    pub fn start_upnp(&mut self) {
        for (router, n, natpmp) in self.upnp_routers.clone() {
            let natpmp = if natpmp { "yes" } else { "no" };
            let dir = std::env::temp_dir();
            let nft_file = dir.join(format!("{router}.nft"));
            std::fs::write(&nft_file, NFT_TABLES).unwrap();
            self.in_ns(&router, &["nft", "-f", nft_file.to_str().unwrap()]);
            let conf = format!(
                "ext_ifname=wan\nlistening_ip=lan\nport=0\nenable_natpmp={natpmp}\nenable_upnp=yes\n\
                 secure_mode=yes\nsystem_uptime=yes\next_perform_stun=yes\n\
                 ext_stun_host={RV}\next_stun_port=7000\n\
                 uuid=3d3cec3a-8cf0-11e0-98ee-001a6bd2d0{n:02}\n\
                 upnp_table_name=miniupnpd\nupnp_nat_table_name=miniupnpd\n\
                 upnp_forward_chain=forwardUPnP\nupnp_nat_chain=UPnP\n\
                 upnp_nat_postrouting_chain=UPnP-Postrouting\n\
                 allow 1024-65535 10.10.{n}.0/24 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n"
            );
            let conf_file = dir.join(format!("{router}.conf"));
            std::fs::write(&conf_file, conf).unwrap();
            self.temp_files.extend([
                nft_file.clone(),
                conf_file.clone(),
                dir.join(format!("{router}.pid")),
            ]);
            let log = dir.join(format!("{router}-miniupnpd.log"));
            let mut child = Command::new("ip")
                .args(["netns", "exec", &router, "miniupnpd", "-d", "-f"])
                .arg(&conf_file)
                // One pid file per lab router (the default one is shared by all namespaces).
                .arg("-P")
                .arg(dir.join(format!("{router}.pid")))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("miniupnpd (apt package miniupnpd)");
            // Its log lines go to the log file and to us: ready is an event, not a poll.
            let err = child.stderr.take().expect("piped");
            let mut file = std::fs::File::create(&log).unwrap();
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                use std::io::Write;
                for l in BufReader::new(err).lines().map_while(Result::ok) {
                    let _ = writeln!(file, "{l}");
                    let _ = tx.send(l);
                }
            });
            self.procs.push(child);
            self.logs.push(log.clone());
            let end = Instant::now() + Duration::from_secs(10);
            loop {
                match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
                    Ok(l)
                        if l.contains("Listening for NAT-PMP") || l.contains("HTTP listening") =>
                    {
                        break
                    }
                    Ok(_) => {}
                    Err(e) => panic!("miniupnpd did not start ({e}); see {}", log.display()),
                }
            }
        }
    }

    /// Takes side `short`'s internet link down (`up == false`) or back up.
    pub fn link(&self, short: &str, up: bool) {
        let port = &self.uplinks.iter().find(|(s, _)| s == short).unwrap().1;
        let state = if up { "up" } else { "down" };
        self.in_ns(&self.name("inet"), &["ip", "link", "set", port, state]);
    }

    /// Moves host `short` to another LAN address: its NAT maps it anew (a roaming device).
    pub fn roam(&self, short: &str, n: u32) {
        let host = self.name(short);
        self.in_ns(
            &host,
            &["sysctl", "-qw", "net.ipv4.conf.all.promote_secondaries=1"],
        );
        self.in_ns(
            &host,
            &["sysctl", "-qw", "net.ipv4.conf.eth0.promote_secondaries=1"],
        );
        let lan = format!("10.10.{n}");
        self.in_ns(
            &host,
            &["ip", "addr", "add", &format!("{lan}.3/24"), "dev", "eth0"],
        );
        self.in_ns(
            &host,
            &["ip", "addr", "del", &format!("{lan}.2/24"), "dev", "eth0"],
        );
        // Deleting the primary address drops the routes that used it.
        let _ = std::process::Command::new("ip")
            .args([
                "netns", "exec", &host, "ip", "route", "replace", "default", "via",
            ])
            .arg(format!("{lan}.1"))
            .status();
    }

    /// Starts the rendezvous, the routers' miniupnpd (which checks its address with the
    /// rendezvous) and a test-card sender on side "a"; returns the rendezvous address, the room
    /// code and the sender's stdout.
    pub fn start_room(&mut self, size: &str) -> (String, String, mpsc::Receiver<String>) {
        self.start_room_with(&["--source", "testcard", "--size", size])
    }

    /// The busy (camera-like) test card at `size` and `bitrate`, stats as JSON.
    pub fn start_busy_room(
        &mut self,
        size: &str,
        bitrate: &str,
    ) -> (String, String, mpsc::Receiver<String>) {
        self.start_room_with(&[
            "--json",
            "--source",
            "testcard:busy",
            "--size",
            size,
            "--bitrate",
            bitrate,
        ])
    }

    /// [`Lab::start_room`] with the sender's source and settings given (`send ARGS`).
    pub fn start_room_with(&mut self, send: &[&str]) -> (String, String, mpsc::Receiver<String>) {
        let rv = format!("{RV}:7000");
        let r = self.run("rv", &["rendezvous", "--listen", &rv]);
        line(&r, "listening on", Duration::from_secs(10));
        self.start_upnp();
        let mut args = vec!["send", "--rendezvous", &rv];
        args.extend_from_slice(send);
        let s = self.run("a", &args);
        let code = line(&s, "code ", Duration::from_secs(10));
        let code = code.split_whitespace().nth(1).unwrap().to_string();
        (rv, code, s)
    }

    /// Starts a headless viewer on side "b" with `extra` flags; returns its index (for
    /// [`Lab::wait`]) and its stdout.
    pub fn start_viewer(
        &mut self,
        rv: &str,
        code: &str,
        extra: &[&str],
    ) -> (usize, mpsc::Receiver<String>) {
        self.start_viewer_at("b", rv, code, extra)
    }

    /// [`Lab::start_viewer`] on side `short` ("a": the sender's own network).
    pub fn start_viewer_at(
        &mut self,
        short: &str,
        rv: &str,
        code: &str,
        extra: &[&str],
    ) -> (usize, mpsc::Receiver<String>) {
        let mut args = vec![
            "view",
            "--rendezvous",
            rv,
            "--headless",
            "--render-size",
            "32x32",
        ];
        args.extend_from_slice(extra);
        args.push(code);
        let rx = self.run(short, &args);
        (self.procs.len() - 1, rx)
    }

    /// Blocks (or unblocks) everything between the two sides' routers: peers can still reach
    /// the rendezvous, so only the relay works.
    pub fn block_peers(&self, block: bool) {
        let op = if block { "-I" } else { "-D" };
        for (short, peer_ip) in [("ra", "198.18.0.3"), ("rb", "198.18.0.2")] {
            let router = self.name(short);
            if !self.namespaces.contains(&router) {
                continue;
            }
            for dir in ["-s", "-d"] {
                for chain in ["INPUT", "OUTPUT", "FORWARD"] {
                    self.in_ns(
                        &router,
                        &["iptables", op, chain, dir, peer_ip, "-j", "DROP"],
                    );
                }
            }
        }
    }

    /// Gives the public hosts "a" and "b" IPv6 addresses too (a documentation prefix, inside
    /// the lab only) and cuts IPv4 between them: only IPv6 can carry a direct path.
    pub fn ipv6_only_between_sides(&self) {
        for (short, me, peer) in [("a", 21, "198.18.0.22"), ("b", 22, "198.18.0.21")] {
            let host = self.name(short);
            self.in_ns(
                &host,
                &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0"],
            );
            self.in_ns(
                &host,
                &[
                    "ip",
                    "-6",
                    "addr",
                    "add",
                    &format!("2001:db8::{me}/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ],
            );
            for dir in ["OUTPUT", "INPUT"] {
                let flag = if dir == "OUTPUT" { "-d" } else { "-s" };
                self.in_ns(&host, &["iptables", "-A", dir, flag, peer, "-j", "DROP"]);
            }
        }
    }

    /// Delay and loss (userspace) that the test changes while peers run: peers started after
    /// this read their `INCLUBIT_NETEM` settings from a file, which [`Lab::set_netem`] rewrites.
    pub fn netem_file(&mut self, initial: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("{}-netem", self.prefix));
        set_netem(&path, initial);
        self.temp_files.push(path.clone());
        self.netem = Some(format!("file:{}", path.display()));
        path
    }

    /// A rate limit (the kernel's `tbf`, with a 200 ms queue like a home router's) on side
    /// `short`'s router, both ways: its uplink and what it forwards to its host. `None` lifts it.
    pub fn bottleneck(&self, short: &str, rate_mbit: Option<f64>) {
        let router = self.name(&format!("r{short}"));
        assert!(
            self.namespaces.contains(&router),
            "side {short} has no router"
        );
        for dev in ["wan", "lan"] {
            match rate_mbit {
                Some(r) => {
                    // The bucket holds at least a few ms at the rate (tbf needs rate/HZ).
                    let burst = format!("{}", ((r * 1e6 / 8.0 * 0.004) as u64).max(16_000));
                    let rate = format!("{}kbit", (r * 1000.0) as u64);
                    self.in_ns(
                        &router,
                        &[
                            "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", &rate,
                            "burst", &burst, "latency", "200ms",
                        ],
                    );
                }
                None => self.in_ns(&router, &["tc", "qdisc", "del", "dev", dev, "root"]),
            }
        }
    }

    /// Runs any program in namespace `short` (a competing flow, say) until the lab goes.
    pub fn spawn(&mut self, short: &str, program: &[&str]) {
        let ns = self.name(short);
        let log = std::env::temp_dir().join(format!("{}-{}.log", ns, self.procs.len()));
        let err = std::fs::File::create(&log).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(program)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", program.join(" ")));
        self.logs.push(log);
        self.procs.push(child);
    }

    /// Waits until something in namespace `short` listens on TCP `port`.
    pub fn wait_listening(&self, short: &str, port: u16, within: Duration) {
        let ns = self.name(short);
        let end = Instant::now() + within;
        let want = format!(":{port} ");
        loop {
            let out = Command::new("ip")
                .args(["netns", "exec", &ns, "ss", "-Hltn"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            if out.contains(&want) {
                return;
            }
            assert!(Instant::now() < end, "nothing listens on {port} in {short}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id of the `i`-th process started (`ip netns exec` becomes the program).
    pub fn pid(&self, i: usize) -> u32 {
        self.procs[i].id()
    }

    /// Waits for the `i`-th process to exit; returns its exit code and stderr.
    pub fn wait(&mut self, i: usize, timeout: Duration) -> (Option<i32>, String) {
        use wait_timeout::ChildExt;
        let status = self.procs[i]
            .wait_timeout(timeout)
            .expect("wait")
            .unwrap_or_else(|| panic!("process {i} did not exit within {timeout:?}"));
        let err = std::fs::read_to_string(&self.logs[i]).unwrap_or_default();
        (status.code(), err)
    }

    /// Kills the `i`-th process started with [`Lab::run`].
    pub fn kill(&mut self, i: usize) {
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
                // A process's own panic first (a backtrace would push it out of the tail).
                let lines: Vec<&str> = text.lines().collect();
                for (i, l) in lines.iter().enumerate() {
                    if l.contains("panicked at") {
                        eprintln!("--- {} panicked:", log.display());
                        for l in &lines[i..(i + 3).min(lines.len())] {
                            eprintln!("{l}");
                        }
                    }
                }
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("--- {} (last lines)", log.display());
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
            // INCLUBIT_LAB_LOGS=keep: leave them for a look after the run.
            if std::env::var_os("INCLUBIT_LAB_LOGS").is_none() {
                let _ = std::fs::remove_file(log);
            }
        }
        for f in &self.temp_files {
            let _ = std::fs::remove_file(f);
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Rewrites a [`Lab::netem_file`] (whole, so no peer reads half of it).
pub fn set_netem(path: &std::path::Path, settings: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, settings).expect("write the netem file");
    std::fs::rename(&tmp, path).expect("replace the netem file");
}

/// The last line printed before the channel closes or `timeout` passes.
pub fn last_line(rx: &mpsc::Receiver<String>, timeout: Duration) -> Option<String> {
    let end = Instant::now() + timeout;
    let mut last = None;
    while let Ok(l) = rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
        last = Some(l);
    }
    last
}

pub fn line(rx: &mpsc::Receiver<String>, prefix: &str, timeout: Duration) -> String {
    let end = Instant::now() + timeout;
    loop {
        match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(l) if l.starts_with(prefix) => return l,
            Ok(_) => {}
            Err(e) => panic!("no line starting with {prefix:?}: {e}"),
        }
    }
}
