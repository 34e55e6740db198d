//! Connect time per NAT-lab cell (needs root, like the lab tests): from `inclubit view` starting
//! to the QUIC connection, to the first decoded frame and to the first direct path.
//!
//! Run: `cargo bench --bench connect`. Every peer delays its datagrams by 20 ms in userspace
//! (`INCLUBIT_NETEM`), so paths have an RTT of about 40 ms; the goal for direct cells is
//! 3 RTT + 50 ms, and for relay cells video within 1.5 s. Each line shows the viewer's QUIC RTT
//! measured in the same run.

#[path = "../tests/lab/mod.rs"]
mod lab;

use std::time::Duration;

use lab::{last_line, Lab, Nat};

/// Each peer delays what it sends by 20 ms: an RTT of about 40 ms, like a city-to-city path.
const NETEM: &str = "delay=20ms";

fn run(sender: Nat, viewer: Nat) -> serde_json::Value {
    let mut lab = Lab::new(sender, viewer);
    lab.netem = Some(NETEM.into());
    let (rv, code, _s) = lab.start_room("640x320");
    let (_, v) = lab.start_viewer(&rv, &code, &["--frames", "90", "--json"]);
    let last = last_line(&v, Duration::from_secs(30)).unwrap_or_default();
    serde_json::from_str(&last).unwrap_or_default()
}

fn main() {
    let quick = std::env::args().all(|a| a != "--bench");
    let cells: &[(Nat, Nat)] = if quick {
        &[(Nat::Cone, Nat::Cone)]
    } else {
        &[
            (Nat::Cone, Nat::Public),
            (Nat::Cone, Nat::Cone),
            (Nat::Cone, Nat::Symmetric),
            (Nat::Symmetric, Nat::Public),
            (Nat::Symmetric, Nat::Cone),
            (Nat::Symmetric, Nat::Symmetric),
            (Nat::Cone, Nat::SymmetricUpnp),
            (Nat::Symmetric, Nat::SymmetricUpnp),
            (Nat::SymmetricUpnp, Nat::Public),
            (Nat::SymmetricUpnp, Nat::SymmetricUpnp),
            (Nat::Cone, Nat::SymmetricIgd),
        ]
    };
    println!(
        "\n{:<22} {:>7} {:>11} {:>14} {:>11} {:>8} {:>14}",
        "sender -> viewer", "path", "connect ms", "first frame ms", "direct ms", "rtt ms", "goal"
    );
    let ms = |v: &serde_json::Value| v.as_f64().map(|x| format!("{x:.1}")).unwrap_or("-".into());
    for (s, v) in cells {
        let st = run(*s, *v);
        let path = st["path"].as_str().unwrap_or("?");
        let rtt = st["rtt_ms"].as_f64().unwrap_or(0.0);
        let goal = if path == "direct" || path == "upnp" {
            let g = 3.0 * rtt + 50.0;
            let d = st["direct_ms"].as_f64().unwrap_or(f64::INFINITY);
            format!("{:.2} of {g:.0}ms", d / g)
        } else {
            let f = st["first_frame_ms"].as_f64().unwrap_or(f64::INFINITY);
            format!("{:.2} of 1.5s", f / 1500.0)
        };
        println!(
            "{:<22} {:>7} {:>11} {:>14} {:>11} {:>8.2} {:>14}",
            format!("{s:?} -> {v:?}"),
            path,
            ms(&st["connect_ms"]),
            ms(&st["first_frame_ms"]),
            ms(&st["direct_ms"]),
            rtt,
            goal
        );
    }
}
