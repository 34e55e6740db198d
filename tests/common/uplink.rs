//! A network namespace joined to the host by one veth pair, with the kernel's `tbf` on what
//! leaves it: a server behind a slow uplink, reached by the host's own programs (a browser
//! driven by WebDriver). Its two addresses are on that veth only, so nothing leaves the
//! machine. Needs root; gone on drop.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

pub struct Uplink {
    pub ns: String,
    /// The namespace's address, as the host reaches it.
    pub addr: Ipv4Addr,
    dev: String,
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "`{}` failed (needs root and iproute2): {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Uplink {
    /// A namespace whose traffic to the host is limited to `rate_mbit` (200 ms queue).
    pub fn new(rate_mbit: f64) -> Uplink {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}{n}", std::process::id() % 100_000);
        let (ns, host_dev, dev) = (
            format!("inclubit-up{id}"),
            format!("iu{id}h"),
            format!("iu{id}n"),
        );
        // A /30 per uplink in the benchmarking range (RFC 2544), on this veth only.
        let sub = (std::process::id() % 60) * 4 + n % 4;
        let host = Ipv4Addr::new(198, 19, 240 + (sub / 64) as u8, ((sub % 64) * 4 + 1) as u8);
        let addr = Ipv4Addr::from(u32::from(host) + 1);
        sh(&["ip", "netns", "add", &ns]);
        let up = Uplink {
            ns: ns.clone(),
            addr,
            dev: dev.clone(),
        };
        sh(&[
            "ip", "link", "add", &host_dev, "type", "veth", "peer", "name", &dev, "netns", &ns,
        ]);
        sh(&["ip", "addr", "add", &format!("{host}/30"), "dev", &host_dev]);
        sh(&["ip", "link", "set", &host_dev, "up"]);
        let in_ns = |args: &[&str]| {
            let mut full = vec!["ip", "netns", "exec", &ns];
            full.extend_from_slice(args);
            sh(&full);
        };
        in_ns(&["ip", "link", "set", "lo", "up"]);
        in_ns(&["ip", "addr", "add", &format!("{addr}/30"), "dev", &dev]);
        in_ns(&["ip", "link", "set", &dev, "up"]);
        up.set_rate(rate_mbit);
        up
    }

    /// Changes the uplink's rate.
    pub fn set_rate(&self, rate_mbit: f64) {
        // The bucket holds at least a few ms at the rate (tbf needs rate/HZ).
        let burst = format!("{}", ((rate_mbit * 1e6 / 8.0 * 0.004) as u64).max(16_000));
        let rate = format!("{}kbit", (rate_mbit * 1000.0) as u64);
        sh(&[
            "ip", "netns", "exec", &self.ns, "tc", "qdisc", "replace", "dev", &self.dev, "root",
            "tbf", "rate", &rate, "burst", &burst, "latency", "200ms",
        ]);
    }
}

impl Drop for Uplink {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the veth, and with it the host's end.
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}
