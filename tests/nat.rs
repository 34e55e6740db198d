//! The NAT matrix and resilience, with real `inclubit` processes in the lab (tests/lab).

mod lab;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use lab::{last_line, line, Lab, Nat};

/// Runs one matrix cell and returns the viewer's final stats.
fn cell(sender: Nat, viewer: Nat, frames: u32) -> serde_json::Value {
    let mut lab = Lab::new(sender, viewer);
    let (rv, code, _s) = lab.start_room("640x320");
    let frames = frames.to_string();
    let (_, v) = lab.start_viewer(&rv, &code, &["--frames", &frames, "--verify", "--json"]);
    // The last line is the final one, printed when the frames were decoded.
    let last = last_line(&v, Duration::from_secs(40))
        .unwrap_or_else(|| panic!("{sender:?} -> {viewer:?}: the viewer printed nothing"));
    serde_json::from_str(&last).unwrap_or_else(|e| panic!("{last}: {e}"))
}

fn check(sender: Nat, viewer: Nat, path: &str) {
    check_frames(sender, viewer, path, 75)
}

fn check_frames(sender: Nat, viewer: Nat, path: &str, frames: u32) {
    let stats = cell(sender, viewer, frames);
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

#[test]
fn cone_to_symmetric_with_upnp_goes_through_the_mapping() {
    check(Nat::Cone, Nat::SymmetricUpnp, "upnp");
}

#[test]
fn symmetric_to_symmetric_with_upnp_goes_through_the_mapping() {
    check(Nat::Symmetric, Nat::SymmetricUpnp, "upnp");
}

#[test]
fn symmetric_with_upnp_sender_to_public_viewer_goes_through_the_mapping() {
    check(Nat::SymmetricUpnp, Nat::Public, "upnp");
}

#[test]
fn symmetric_with_upnp_sender_to_cone_viewer_goes_through_the_mapping() {
    check(Nat::SymmetricUpnp, Nat::Cone, "upnp");
}

#[test]
fn symmetric_with_upnp_sender_to_symmetric_viewer_goes_through_the_mapping() {
    check(Nat::SymmetricUpnp, Nat::Symmetric, "upnp");
}

#[test]
fn a_upnp_igd_mapping_arriving_late_moves_the_stream_off_the_relay() {
    // UPnP discovery takes a while: the stream starts on the relay and moves to the mapping.
    check_frames(Nat::Cone, Nat::SymmetricIgd, "upnp", 240);
}

#[test]
fn upnp_on_both_sides() {
    check(Nat::SymmetricUpnp, Nat::SymmetricUpnp, "upnp");
}

/// A stream in the lab with JSON stats: rendezvous (process 0), sender (1), viewer (2).
/// Returns the viewer's stdout, and the sender's (kept open: a closed pipe is no test here).
fn direct_stream(lab: &mut Lab, frames: &str) -> (mpsc::Receiver<String>, mpsc::Receiver<String>) {
    let (rv, code, s) = lab.start_room("640x320");
    let (_, v) = lab.start_viewer(&rv, &code, &["--frames", frames, "--verify", "--json"]);
    (v, s)
}

fn stats(l: &str) -> serde_json::Value {
    serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))
}

#[test]
fn a_killed_rendezvous_does_not_stop_a_direct_stream() {
    let mut lab = Lab::new(Nat::Cone, Nat::Cone);
    let (v, _s) = direct_stream(&mut lab, "240");
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
    let (v, _s) = direct_stream(&mut lab, "100000");
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

#[test]
fn a_roaming_viewer_keeps_watching() {
    let mut lab = Lab::new(Nat::Cone, Nat::Cone);
    let (v, _s) = direct_stream(&mut lab, "100000");
    let before = stats(&line(&v, "{", Duration::from_secs(15)));
    assert_eq!(before["path"], "direct", "{before}");
    lab.roam("b", 2);
    let moved = Instant::now();
    let start_frames = before["frames"].as_u64().unwrap();
    // Two seconds' worth of frames after the move, still direct, nothing corrupt.
    let after = loop {
        let l = v
            .recv_timeout(Duration::from_secs(10))
            .expect("viewer keeps printing");
        let s = stats(&l);
        if s["frames"].as_u64().unwrap() >= start_frames + 120
            && moved.elapsed() > Duration::from_secs(3)
        {
            break s;
        }
        assert!(
            moved.elapsed() < Duration::from_secs(20),
            "stalled after roaming: {s}"
        );
    };
    assert_eq!(after["corrupt"], 0, "{after}");
    assert_eq!(after["path"], "direct", "{after}");
    assert!(after["fps"].as_f64().unwrap() >= 20.0, "{after}");
}

#[test]
fn force_direct_names_the_nat_types_when_only_the_relay_works() {
    let mut lab = Lab::new(Nat::Cone, Nat::Symmetric);
    let (rv, code, _s) = lab.start_room("320x160");
    let (viewer, _v) = lab.start_viewer(&rv, &code, &["--force-direct"]);
    let (status, err) = lab.wait(viewer, Duration::from_secs(20));
    assert_eq!(status, Some(4), "{err}");
    assert!(
        err.contains(
            "NAT types seen: this side port-changing NAT (symmetric-like), the sender \
             port-preserving NAT (cone-like)"
        ),
        "{err}"
    );
}

#[test]
fn blocked_punching_runs_on_the_relay_then_moves_to_direct_when_unblocked() {
    let mut lab = Lab::new(Nat::Cone, Nat::Cone);
    lab.block_peers(true);
    let (rv, code, _s) = lab.start_room("640x320");
    let (_, v) = lab.start_viewer(
        &rv,
        &code,
        &[
            "--frames",
            "100000",
            "--verify",
            "--json",
            "--punch-timeout",
            "1",
        ],
    );
    let first = stats(&line(&v, "{", Duration::from_secs(15)));
    assert_eq!(first["path"], "relay", "{first}");
    lab.block_peers(false);
    let end = Instant::now() + Duration::from_secs(20);
    let direct = loop {
        let s = stats(&v.recv_timeout(Duration::from_secs(5)).expect("stats"));
        if s["path"] == "direct" {
            break s;
        }
        assert!(Instant::now() < end, "never moved to direct: {s}");
    };
    // A few more seconds on the direct path: nothing corrupt, nothing lost since the move.
    let moved_at = direct["frames"].as_u64().unwrap();
    let later = loop {
        let s = stats(&v.recv_timeout(Duration::from_secs(5)).expect("stats"));
        if s["frames"].as_u64().unwrap() >= moved_at + 60 {
            break s;
        }
    };
    assert_eq!(later["path"], "direct", "{later}");
    assert_eq!(later["corrupt"], 0, "{later}");
    assert_eq!(
        later["dropped"], direct["dropped"],
        "frames lost after the move: {later}"
    );
}

#[test]
fn a_restarted_rendezvous_does_not_stop_a_direct_stream() {
    let mut lab = Lab::new(Nat::Cone, Nat::Cone);
    let (v, _s) = direct_stream(&mut lab, "100000");
    let before = stats(&line(&v, "{", Duration::from_secs(15)));
    assert_eq!(before["path"], "direct", "{before}");
    lab.kill(0);
    // A fresh rendezvous on the same address knows no rooms: keepalives now get "no such
    // room", and the direct stream must not care.
    let rv = format!("{}:7000", lab::RV);
    let r = lab.run("rv", &["rendezvous", "--listen", &rv]);
    line(&r, "listening on", Duration::from_secs(10));
    let start = before["frames"].as_u64().unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let s = stats(
            &v.recv_timeout(Duration::from_secs(5))
                .expect("viewer keeps printing"),
        );
        // Six seconds of video after the restart: past every keepalive and loss timer.
        if s["frames"].as_u64().unwrap() >= start + 180 {
            break s;
        }
        assert!(Instant::now() < end, "stream stalled: {s}");
    };
    assert_eq!(after["path"], "direct", "{after}");
    assert_eq!(after["corrupt"], 0, "{after}");
    assert!(after["fps"].as_f64().unwrap() >= 20.0, "{after}");
}

#[test]
fn ipv6_host_candidates_carry_a_direct_path() {
    let mut lab = Lab::new(Nat::Public, Nat::Public);
    lab.ipv6_only_between_sides();
    let (rv, code, _s) = lab.start_room("640x320");
    let (_, v) = lab.start_viewer(&rv, &code, &["--frames", "90", "--verify", "--json"]);
    let last = last_line(&v, Duration::from_secs(40)).expect("viewer stats");
    let s = stats(&last);
    // IPv4 between the two is cut: direct means IPv6.
    assert_eq!(s["path"], "direct", "{s}");
    assert_eq!(s["verified"], 90, "{s}");
}

#[test]
fn a_lossy_slow_internet_still_goes_direct_and_shows_every_frame_right() {
    let mut lab = Lab::new(Nat::Cone, Nat::Cone);
    // 20 ms each way from every peer (RTT about 40 ms) and 2 % loss, in userspace.
    lab.netem = Some("delay=20ms,loss=2%".into());
    let (rv, code, _s) = lab.start_room("640x320");
    let (_, v) = lab.start_viewer(&rv, &code, &["--frames", "120", "--verify", "--json"]);
    let last = last_line(&v, Duration::from_secs(40)).expect("viewer stats");
    let s = stats(&last);
    assert_eq!(s["path"], "direct", "{s}");
    assert!(
        s["rtt_ms"].as_f64().unwrap() >= 35.0,
        "no delay applied: {s}"
    );
    assert!(s["verified"].as_u64().unwrap() >= 60, "{s}");
    assert_eq!(s["corrupt"], 0, "{s}");
}
