//! Real links, real content (issue 12): the busy test card through the NAT lab with a kernel
//! `tbf` bottleneck, userspace delay and loss, a competing TCP flow (iperf3) and an unequal
//! second viewer. One table: what the viewer received against what was sent to it (or against
//! the bottleneck's capacity), frame latency, frames shown and dropped, IDRs per minute,
//! seconds to adapt after a capacity step, and the sender's CPU (cores, encoder ladder
//! included). Every figure comes from the project's own binaries in this run.
//!
//! Run: `cargo bench --bench links` (root, like the lab tests; `apt install iperf3` for the TCP
//! row). `INCLUBIT_BENCH_SECS=N` sets the measuring window (default 20 s);
//! `INCLUBIT_BENCH_SIZES=3840x1920,1920x960` the sizes (default 1920x960);
//! `INCLUBIT_BENCH_CASES=bottleneck,steps` only the cases whose names contain one of those.

#[path = "../tests/lab/mod.rs"]
mod lab;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use lab::{Lab, Nat};

const CEILING: &str = "20M";

#[derive(Clone, Copy, PartialEq)]
enum Case {
    Clean,
    Loss,
    Bottleneck,
    Steps,
    Tcp,
    TwoViewers,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Clean => "clean",
            Case::Loss => "1% loss, 40 ms RTT",
            Case::Bottleneck => "10 Mbit/s bottleneck",
            Case::Steps => "steps 20/5/20 Mbit/s",
            Case::Tcp => "10 Mbit/s + TCP flow",
            Case::TwoViewers => "2 viewers: LAN + 5M",
        }
    }
}

fn stats(l: &str) -> serde_json::Value {
    serde_json::from_str(l).unwrap_or_default()
}

fn next(rx: &mpsc::Receiver<String>) -> serde_json::Value {
    let end = Instant::now() + Duration::from_secs(10);
    while let Ok(l) = rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
        if l.starts_with('{') {
            return stats(&l);
        }
    }
    serde_json::Value::Null
}

fn latest(rx: &mpsc::Receiver<String>) -> serde_json::Value {
    rx.try_iter()
        .filter(|l| l.starts_with('{'))
        .last()
        .map(|l| stats(&l))
        .unwrap_or_else(|| next(rx))
}

/// CPU seconds a process has used (user + system).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces), 1-based: utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|r| r.1).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / tck
}

struct Row {
    case: &'static str,
    size: String,
    recv: f64,
    sent: f64,
    target: f64,
    /// What the use figure is measured against, and the figure.
    of: &'static str,
    used: f64,
    p50: f64,
    p99: f64,
    fps: f64,
    dropped: u64,
    idr_per_min: f64,
    adapt: String,
    cpu: f64,
}

/// The viewer's lines over a window, summarised.
struct Window {
    recv: f64,
    p50: f64,
    p99: f64,
    fps: f64,
    dropped: u64,
}

fn window(lines: &[serde_json::Value]) -> Window {
    let n = lines.len().max(1) as f64;
    let f = |s: &serde_json::Value, k: &str| s[k].as_f64().unwrap_or(0.0);
    let dropped =
        |s: Option<&serde_json::Value>| s.and_then(|s| s["dropped"].as_u64()).unwrap_or(0);
    Window {
        recv: lines.iter().map(|s| f(s, "bitrate_mbps")).sum::<f64>() / n,
        p50: lines.iter().map(|s| f(s, "latency_p50_ms")).sum::<f64>() / n,
        p99: lines
            .iter()
            .map(|s| f(s, "latency_p99_ms"))
            .fold(0.0, f64::max),
        fps: lines.iter().map(|s| f(s, "fps")).sum::<f64>() / n,
        dropped: dropped(lines.last()).saturating_sub(dropped(lines.first())),
    }
}

fn run(case: Case, size: &str, secs: usize) -> Vec<Row> {
    let mut lab = Lab::new(Nat::Cone, Nat::Cone);
    if case == Case::Loss {
        lab.netem = Some("delay=20ms,loss=1%".into());
    }
    let (rv, code, send) = lab.start_busy_room(size, CEILING);
    let sender_pid = lab.pid(1);
    let capacity = match case {
        Case::Bottleneck | Case::Tcp => Some(10.0),
        Case::Steps => Some(20.0),
        Case::TwoViewers => Some(5.0),
        _ => None,
    };
    if let Some(c) = capacity {
        lab.bottleneck("b", Some(c));
    }
    let mut fast = None;
    if case == Case::TwoViewers {
        let (_, f) = lab.start_viewer_at("a", &rv, &code, &["--json"]);
        // Playing before the other joins: the sender numbers viewers in joining order.
        next(&f);
        fast = Some(f);
    }
    let mut fast_lines: Vec<serde_json::Value> = Vec::new();
    let (_, v) = lab.start_viewer(&rv, &code, &["--json"]);
    if case == Case::Tcp {
        // A download through the same bottleneck: iperf3's server on the public side sends to
        // a client behind the viewer's router.
        lab.spawn("rv", &["iperf3", "-s", "-1"]);
        lab.wait_listening("rv", 5201, Duration::from_secs(5));
        lab.spawn(
            "b",
            &[
                "iperf3",
                "-c",
                lab::RV,
                "-R",
                "-t",
                "600",
                "--connect-timeout",
                "3000",
            ],
        );
    }
    // Settling.
    for _ in 0..8 {
        next(&v);
    }
    let cpu0 = (cpu_seconds(sender_pid), Instant::now());
    // The sender's lines over the same window, for what it sent each viewer.
    let mut send_lines: Vec<serde_json::Value> = Vec::new();
    let mut adapt = "-".to_string();
    let lines: Vec<serde_json::Value> = if case == Case::Steps {
        let before = latest(&send)["per_viewer"][0]["target_mbps"]
            .as_f64()
            .unwrap_or(0.0);
        lab.bottleneck("b", Some(5.0));
        let down: Vec<serde_json::Value> = (0..secs / 2)
            .map(|_| {
                let l = next(&v);
                send_lines.push(latest(&send));
                l
            })
            .collect();
        // Adapted: the sender's target within the new capacity.
        let within = send_lines
            .iter()
            .position(|l| {
                l["per_viewer"][0]["target_mbps"]
                    .as_f64()
                    .unwrap_or(f64::MAX)
                    <= 5.0
            })
            .map(|i| format!("{}", i + 1))
            .unwrap_or(">".into());
        let live_again = down
            .iter()
            .position(|s| {
                s["fps"].as_f64().unwrap_or(0.0) >= 25.0
                    && s["latency_p99_ms"].as_f64().unwrap_or(f64::MAX) <= 300.0
            })
            .map(|i| format!("{}", i + 1))
            .unwrap_or(">".into());
        lab.bottleneck("b", Some(20.0));
        let mut up_at = None;
        let mut up = Vec::new();
        for i in 0..secs {
            up.push(next(&v));
            send_lines.push(latest(&send));
            let t = send_lines[send_lines.len() - 1]["per_viewer"][0]["target_mbps"]
                .as_f64()
                .unwrap_or(0.0);
            if up_at.is_none() && t >= 0.8 * before {
                up_at = Some(i + 1);
            }
        }
        adapt = format!(
            "{within}↓ (live {live_again}) {}↑",
            up_at.map(|s| s.to_string()).unwrap_or(">".into())
        );
        down.into_iter().chain(up).collect()
    } else {
        (0..secs)
            .map(|_| {
                let l = next(&v);
                send_lines.push(latest(&send));
                if let Some(f) = &fast {
                    fast_lines.push(latest(f));
                }
                l
            })
            .collect()
    };
    let cpu = (cpu_seconds(sender_pid) - cpu0.0) / cpu0.1.elapsed().as_secs_f64();
    let s = latest(&send);
    let viewers = s["per_viewer"].as_array().cloned().unwrap_or_default();
    // Mean Mbit/s the sender sent viewer `id` over the window.
    let sent_to = |id: u64| {
        let v: Vec<f64> = send_lines
            .iter()
            .filter_map(|l| {
                l["per_viewer"]
                    .as_array()?
                    .iter()
                    .find(|p| p["id"].as_u64() == Some(id))?["sent_mbps"]
                    .as_f64()
            })
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let row = |w: Window, who: &serde_json::Value, cap: Option<f64>, label: &'static str| {
        let sent = sent_to(who["id"].as_u64().unwrap_or(0));
        let (of, used) = match cap {
            Some(c) => ("capacity", w.recv / c),
            None => ("sent", if sent > 0.0 { w.recv / sent } else { 0.0 }),
        };
        Row {
            case: label,
            size: format!("{size} {}", who["rendition"].as_str().unwrap_or("?")),
            recv: w.recv,
            sent,
            target: who["target_mbps"].as_f64().unwrap_or(0.0),
            of,
            used,
            p50: w.p50,
            p99: w.p99,
            fps: w.fps,
            dropped: w.dropped,
            idr_per_min: who["idr_per_min"].as_f64().unwrap_or(0.0),
            adapt: adapt.clone(),
            cpu,
        }
    };
    // The viewer behind the bottleneck joined last: the highest id.
    let slow = viewers
        .iter()
        .max_by_key(|v| v["id"].as_u64().unwrap_or(0))
        .cloned()
        .unwrap_or_default();
    let cap = match case {
        Case::Steps => None,
        _ => capacity,
    };
    let mut rows = vec![row(window(&lines), &slow, cap, case.name())];
    if fast.is_some() {
        let lines = fast_lines;
        let who = viewers
            .iter()
            .min_by_key(|v| v["id"].as_u64().unwrap_or(0))
            .cloned()
            .unwrap_or_default();
        rows.push(row(window(&lines), &who, None, "  + the LAN viewer"));
    }
    rows
}

fn main() {
    let quick = std::env::args().all(|a| a != "--bench");
    let secs: usize = std::env::var("INCLUBIT_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 4 } else { 20 });
    let sizes = std::env::var("INCLUBIT_BENCH_SIZES").unwrap_or_else(|_| "1920x960".into());
    let cases: &[Case] = if quick {
        &[Case::Bottleneck]
    } else {
        &[
            Case::Clean,
            Case::Loss,
            Case::Bottleneck,
            Case::Steps,
            Case::Tcp,
            Case::TwoViewers,
        ]
    };
    let only = std::env::var("INCLUBIT_BENCH_CASES").ok();
    let cases: Vec<Case> = cases
        .iter()
        .copied()
        .filter(|c| {
            only.as_deref()
                .is_none_or(|o| o.split(',').any(|w| c.name().contains(w)))
        })
        .collect();
    let have_iperf = std::process::Command::new("iperf3")
        .arg("--version")
        .output()
        .is_ok();
    println!("\nbusy test card, 30 fps, ceiling {CEILING}; {secs} s per row after 8 s settling\n");
    println!(
        "{:<22} {:<15} {:>8} {:>8} {:>8} {:>14} {:>8} {:>8} {:>6} {:>8} {:>8} {:>16} {:>6}",
        "case",
        "size",
        "recv",
        "sent",
        "target",
        "recv/",
        "p50 ms",
        "p99 ms",
        "fps",
        "dropped",
        "IDR/min",
        "adapt s",
        "cpu"
    );
    for size in sizes.split(',') {
        for &case in &cases {
            if case == Case::Tcp && !have_iperf {
                println!("{:<22} (no iperf3: apt install iperf3)", case.name());
                continue;
            }
            for r in run(case, size, secs) {
                println!(
                    "{:<22} {:<15} {:>8.2} {:>8.2} {:>8.2} {:>5.2} {:<8} {:>8.1} {:>8.1} {:>6.1} {:>8} {:>8.1} {:>16} {:>6.2}",
                    r.case,
                    r.size,
                    r.recv,
                    r.sent,
                    r.target,
                    r.used,
                    r.of,
                    r.p50,
                    r.p99,
                    r.fps,
                    r.dropped,
                    r.idr_per_min,
                    r.adapt,
                    r.cpu
                );
            }
        }
    }
    println!(
        "\nrecv, sent: Mbit/s the viewer received and the sender sent it, means over the window; \
         target: its estimate's target at the end. recv/sent: over what \
         was sent; recv/capacity: over the bottleneck. adapt s: seconds after the step down until the target is within the new \
         capacity (live: until the viewer shows ≥ 25 fps with its p99, over its last 300 frames, ≤ 300 ms), \
         and after the step up until the target is back to 80%. cpu: the sender's cores."
    );
}
