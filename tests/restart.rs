//! Restarts, as users do them: the rendezvous restarted under a running stream, and the sender
//! restarted with `--code` (issues 11 and 16). Real binaries on loopback; each process gets its
//! own state directory.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::process::Proc;

fn state_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("inclubit-restart-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn rendezvous(listen: &str, state: &Path) -> (Proc, SocketAddr) {
    let p = Proc::start(&[
        "rendezvous",
        "--listen",
        listen,
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    let l = p.line("listening on ", Duration::from_secs(10));
    (p, l.trim_start_matches("listening on ").parse().unwrap())
}

fn sender(rv: SocketAddr, state: &Path, code: Option<&str>) -> (Proc, String) {
    common::process::sender_with_state(&rv.to_string(), state, code)
}

/// Runs a headless viewer for 30 frames: its exit code and stderr.
fn view(rv: SocketAddr, code: &str) -> (i32, String) {
    Proc::start(&[
        "view",
        "--rendezvous",
        &rv.to_string(),
        "--bind",
        "127.0.0.1:0",
        "--headless",
        "--render-size",
        "64x64",
        "--frames",
        "30",
        code,
    ])
    .wait(Duration::from_secs(30))
}

/// Viewers try until one plays or the deadline passes; the last failure otherwise.
fn view_until_it_plays(rv: SocketAddr, code: &str, deadline: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let (exit, err) = view(rv, code);
        if exit == 0 {
            return Ok(start.elapsed());
        }
        if start.elapsed() > deadline {
            return Err(format!("exit {exit}: {err}"));
        }
    }
}

#[test]
fn a_restarted_rendezvous_gets_the_room_back_and_new_viewers_join_with_the_old_code() {
    let (rv_state, send_state) = (state_dir("rv"), state_dir("send"));
    let (mut rv, addr) = rendezvous("127.0.0.1:0", &rv_state);
    let (send, code) = sender(addr, &send_state, None);
    assert_eq!(
        view(addr, &code).0,
        0,
        "the stream plays before the restart"
    );

    // Killed, not stopped: it forgets every room.
    rv.child.kill().unwrap();
    rv.child.wait().unwrap();
    let (_rv, again) = rendezvous(&addr.to_string(), &rv_state);
    assert_eq!(again, addr);
    // The sender's keepalive (every 2 s) hears the room is gone and re-opens it.
    let took = view_until_it_plays(addr, &code, Duration::from_secs(20)).unwrap_or_else(|e| {
        panic!(
            "no viewer could join {code} again: {e}\nsender: {}",
            send.stderr()
        )
    });
    assert!(took < Duration::from_secs(20));
    let _ = std::fs::remove_dir_all(&rv_state);
    let _ = std::fs::remove_dir_all(&send_state);
}

#[test]
fn a_rendezvous_that_lost_its_key_gives_the_sender_a_new_code_and_says_so() {
    let (rv_state, send_state) = (state_dir("rv-key"), state_dir("send-key"));
    let (mut rv, addr) = rendezvous("127.0.0.1:0", &rv_state);
    let (send, code) = sender(addr, &send_state, None);
    rv.child.kill().unwrap();
    rv.child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&rv_state);
    let (_rv, _) = rendezvous(&addr.to_string(), &rv_state);
    let end = Instant::now() + Duration::from_secs(20);
    while !send.stderr().contains("new code") {
        assert!(
            Instant::now() < end,
            "the sender did not say its code changed: {}",
            send.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(view(addr, &code).0, 3, "the old code is gone");
    let _ = std::fs::remove_dir_all(&rv_state);
    let _ = std::fs::remove_dir_all(&send_state);
}

#[test]
fn a_restarted_sender_keeps_its_code_with_dash_dash_code() {
    let (rv_state, send_state) = (state_dir("rv-send"), state_dir("send-send"));
    let (_rv, addr) = rendezvous("127.0.0.1:0", &rv_state);
    let (mut first, code) = sender(addr, &send_state, None);
    assert_eq!(view(addr, &code).0, 0);
    // The camera PC crashes: no goodbye, the room is still open at the rendezvous.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let (_second, again) = sender(addr, &send_state, Some(&code));
    assert_eq!(again, code, "the restarted sender has a new code");
    assert_eq!(view(addr, &code).0, 0, "a viewer plays the old code again");

    // Another machine (no ticket) cannot take the code.
    let other = state_dir("send-other");
    let p = Proc::start_with_env(
        &[
            "send",
            "--source",
            "testcard",
            "--bind",
            "127.0.0.1:0",
            "--rendezvous",
            &addr.to_string(),
            "--code",
            &code,
        ],
        &[("XDG_STATE_HOME", other.to_str().unwrap())],
    );
    let (exit, err) = p.wait(Duration::from_secs(10));
    assert_eq!(exit, 1, "{err}");
    assert!(err.contains("holds no ticket"), "{err}");
    for d in [rv_state, send_state, other] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn a_viewer_that_lost_its_sender_plays_again_when_the_sender_restarts_with_its_code() {
    let (rv_state, send_state) = (state_dir("rv-view"), state_dir("send-view"));
    let (_rv, addr) = rendezvous("127.0.0.1:0", &rv_state);
    let (mut first, code) = sender(addr, &send_state, None);
    let mut viewer = Proc::start(&[
        "view",
        "--rendezvous",
        &addr.to_string(),
        "--bind",
        "127.0.0.1:0",
        "--headless",
        "--render-size",
        "64x64",
        "--json",
        &code,
    ]);
    let frames = |p: &Proc| -> u64 {
        let line = p.line("{", Duration::from_secs(20));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        v["frames"].as_u64().unwrap_or(0)
    };
    let end = Instant::now() + Duration::from_secs(20);
    while frames(&viewer) < 30 {
        assert!(Instant::now() < end, "the stream did not start");
    }
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let (_second, again) = sender(addr, &send_state, Some(&code));
    assert_eq!(again, code);
    let before = frames(&viewer);
    // QUIC notices the loss after its idle timeout (10 s); then the viewer joins again.
    let end = Instant::now() + Duration::from_secs(45);
    loop {
        let n = frames(&viewer);
        if n >= before + 60 {
            break;
        }
        assert!(
            Instant::now() < end && viewer.try_status().unwrap().is_none(),
            "the viewer did not play again ({n} frames, {before} before): {}",
            viewer.stderr()
        );
    }
    assert!(viewer.stderr().contains("rejoining"), "{}", viewer.stderr());
    let _ = std::fs::remove_dir_all(&rv_state);
    let _ = std::fs::remove_dir_all(&send_state);
}
