//! Soak: the real binaries (rendezvous, sender, headless viewer) stream for most of a minute and
//! their memory stays flat after warm-up. Issue 11: the viewer grew ~7–15 MB/s (lavapipe
//! compiled and leaked a shader variant per draw) while every other test passed.

mod common;

use std::time::Duration;

use common::process::Proc;

/// Resident memory of a process, KiB.
fn rss_kib(p: &Proc) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.child.id()))
        .expect("the process is running");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status")
}

/// Stats lines after this many seconds count as warmed up; this many more are measured.
const WARM_UP: usize = 10;
const MEASURED: usize = 40;
/// Flat: every sample within this share of the first measured one.
const TOLERANCE: f64 = 0.10;

#[test]
fn viewer_sender_and_rendezvous_memory_stays_flat_while_streaming() {
    let rv = Proc::start(&["rendezvous", "--listen", "127.0.0.1:0"]);
    let l = rv.line("listening on ", Duration::from_secs(10));
    let rv_addr = l.trim_start_matches("listening on ").to_string();
    let send = Proc::start(&[
        "send",
        "--source",
        "testcard:busy",
        "--size",
        "960x480",
        "--bind",
        "127.0.0.1:0",
        "--rendezvous",
        &rv_addr,
    ]);
    let code = send.line("code ", Duration::from_secs(10));
    let code = code.split_whitespace().nth(1).unwrap().to_string();
    let mut view = Proc::start(&[
        "view",
        "--rendezvous",
        &rv_addr,
        "--bind",
        "127.0.0.1:0",
        "--headless",
        "--render-size",
        "320x180",
        "--json",
        &code,
    ]);

    // The viewer's once-a-second stats line is the clock: one sample of each process per line.
    let mut samples: Vec<[u64; 3]> = Vec::new();
    let mut fps = Vec::new();
    for _ in 0..WARM_UP + MEASURED {
        let line = view.line("{", Duration::from_secs(10));
        assert!(
            view.try_status().unwrap().is_none(),
            "viewer exited: {}",
            view.stderr()
        );
        let stats: serde_json::Value = serde_json::from_str(&line).unwrap();
        fps.push(stats["fps"].as_f64().unwrap_or(0.0));
        samples.push([rss_kib(&view), rss_kib(&send), rss_kib(&rv)]);
    }
    let measured = &samples[WARM_UP..];
    let playing = fps[WARM_UP..].iter().filter(|f| **f >= 20.0).count();
    assert!(
        playing >= MEASURED * 9 / 10,
        "the stream did not play while measured: fps {fps:?}"
    );
    for (i, who) in ["viewer", "sender", "rendezvous"].iter().enumerate() {
        let base = measured[0][i] as f64;
        let series: Vec<u64> = measured.iter().map(|s| s[i]).collect();
        let worst = series
            .iter()
            .map(|v| (*v as f64 - base).abs() / base)
            .fold(0.0, f64::max);
        assert!(
            worst <= TOLERANCE,
            "{who} memory not flat over {MEASURED} s after warm-up: {:.1}% off its first \
             sample; KiB {series:?}",
            worst * 100.0
        );
    }
}
