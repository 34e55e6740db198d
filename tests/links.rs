//! Real links in the NAT lab: a path whose delay changes mid-stream (issue 11) and, with the
//! kernel's `tbf` as the bottleneck, a path whose capacity is smaller than the stream or changes
//! (issue 12). Every viewer checks each frame's barcode: nothing corrupt is ever shown.

mod lab;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use lab::{set_netem, Lab, Nat};

fn stats(l: &str) -> serde_json::Value {
    serde_json::from_str(l).unwrap_or_else(|e| panic!("not a stats line ({e}): {l}"))
}

/// The viewer's next stats line.
fn next_stats(v: &mpsc::Receiver<String>) -> serde_json::Value {
    stats(&lab::line(v, "{", Duration::from_secs(10)))
}

/// Waits until the viewer shows at least `fps`.
fn playing(v: &mpsc::Receiver<String>, fps: f64, within: Duration) -> serde_json::Value {
    let end = Instant::now() + within;
    loop {
        let s = next_stats(v);
        if s["fps"].as_f64().unwrap_or(0.0) >= fps {
            return s;
        }
        assert!(Instant::now() < end, "never reached {fps} fps: {s}");
    }
}

#[test]
fn delay_steps_mid_stream_the_stream_is_back_within_a_second() {
    let mut lab = Lab::new(Nat::Cone, Nat::Cone);
    let netem = lab.netem_file("");
    let (rv, code, _s) = lab.start_room_with(&[
        "--source",
        "testcard:busy",
        "--size",
        "1280x640",
        "--bitrate",
        "6M",
    ]);
    let (_, v) = lab.start_viewer(&rv, &code, &["--verify", "--json"]);
    playing(&v, 20.0, Duration::from_secs(30));
    // One-way delay on every datagram each peer sends, so the RTT is about twice this.
    for delay in [20, 0, 40, 0] {
        set_netem(&netem, &format!("delay={delay}ms"));
        let stepped = Instant::now();
        // Lines that cover the first second after the step may show it.
        let mut s = next_stats(&v);
        while stepped.elapsed() < Duration::from_secs(2) {
            s = next_stats(&v);
        }
        // From then on: live.
        for _ in 0..3 {
            assert!(
                s["fps"].as_f64().unwrap_or(0.0) >= 20.0 && s.get("stalled_s").is_none(),
                "{delay} ms each way: not back within a second: {s}"
            );
            assert_eq!(s["corrupt"], 0, "{s}");
            s = next_stats(&v);
        }
        let rtt = s["rtt_ms"].as_f64().unwrap_or(0.0);
        assert!(
            rtt >= 1.6 * delay as f64 && rtt <= 2.0 * delay as f64 + 60.0,
            "{delay} ms each way but an RTT of {rtt} ms: {s}"
        );
    }
}
