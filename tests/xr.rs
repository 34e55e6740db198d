//! `inclubit view` against the simulated OpenXR runtime (tests/xr-sim), loaded by the real
//! OpenXR loader through an `XR_RUNTIME_JSON` manifest.

use std::net::UdpSocket;
use std::time::Duration;

mod common;

use common::process::Proc;
use common::xr::{manifest, sender, Headset};
use common::xvfb::Xvfb;
use inclubit::projection::{colour_distance, Face};
use inclubit::render::rgba_at;

/// `inclubit view` with the simulated runtime in `mode`; the code names no room, so a viewer
/// that gets past the headset question ends with exit 3.
fn view(mode: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    // Something that answers at the rendezvous address: a real one is not needed to fail fast,
    // but the address must resolve.
    let rv = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rv = rv.local_addr().unwrap().to_string();
    let mut args = vec!["view", "--rendezvous", rv.as_str(), "--bind", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    args.push("K7F-Q2M-4X9P");
    let manifest = manifest();
    common::process::output_headless(
        &args,
        &[
            ("XR_RUNTIME_JSON", manifest.as_os_str()),
            ("INCLUBIT_XR_SIM", mode.as_ref()),
        ],
    )
}

#[test]
fn a_runtime_with_a_headset_starts_the_session_before_the_network() {
    let (code, out, err) = view("hmd", &["--xr"]);
    assert!(
        out.lines().next().is_some_and(|l| l.starts_with(
            "headset     inclubit simulated headset on inclubit simulated runtime 0.1.0, 64×64 per eye"
        )),
        "{out} {err}"
    );
    // The headset is up; the rendezvous never answers, so the viewer ends as a network failure.
    assert_eq!(code, Some(4), "{err}");
}

#[test]
fn a_runtime_without_a_headset_falls_back_to_the_window() {
    let (_, out, err) = view("no-hmd", &["--headless"]);
    assert!(!out.contains("OpenXR"), "--headless asks nothing: {out}");
    let (code, out, err2) = view("no-hmd", &[]);
    assert!(
        out.lines().next().is_some_and(|l| l
            == "the OpenXR runtime inclubit simulated runtime 0.1.0 sees no headset, and no display: rendering headless — use --xr to require a headset"),
        "{out} {err} {err2}"
    );
    // Past the headset question, the viewer goes on (here: to a rendezvous that never answers).
    assert_eq!(code, Some(4), "{err2}");
    let (code, _, err) = view("no-hmd", &["--xr"]);
    assert_eq!(code, Some(6), "{err}");
    assert!(
        err.contains("sees no headset (--xr requires a headset)"),
        "{err}"
    );
}

#[test]
fn a_runtime_without_vulkan_is_unsupported_graphics() {
    let (code, out, err) = view("no-vulkan", &["--window"]);
    assert!(!out.contains("OpenXR"), "--window asks nothing: {out}");
    assert_eq!(code, Some(4), "{err}");
    let (code, _, err) = view("no-vulkan", &["--xr"]);
    assert_eq!(code, Some(6), "{err}");
    assert!(err.contains("cannot render with Vulkan"), "{err}");
}

const EYE: (u32, u32) = (64, 64);
const START: Duration = Duration::from_secs(90);

/// Angles within half a degree (yaw 180 and -180 are one).
fn near(a: f32, b: f32) -> bool {
    ((a - b + 540.0).rem_euclid(360.0) - 180.0).abs() < 0.5
}

/// The centre pixel of each eye of record `r`.
fn centres(h: &Headset, r: u64) -> [[u8; 3]; 2] {
    let (w, ht) = h.eye;
    h.eyes(r).map(|e| rgba_at(&e, w, w / 2, ht / 2))
}

/// Waits for a frame looking at `yaw, pitch` whose eyes show video (not the clear colour of a
/// renderer that has no picture yet), and returns its record.
fn showing(h: &mut Headset, yaw: f32, pitch: f32) -> u64 {
    let mut found = None;
    h.wait_for(
        &format!("a video frame at yaw {yaw} pitch {pitch}"),
        START,
        |h, log| {
            found = log.frames.iter().rev().find_map(|f| {
                let r = f.record?;
                let looks =
                    f.eyes.len() == 2 && f.eyes.iter().all(|e| near(e.0, yaw) && near(e.1, pitch));
                (looks && centres(h, r).iter().all(|c| c.iter().any(|v| *v > 60))).then_some(r)
            });
            found.is_some()
        },
    );
    found.expect("waited for it")
}

fn assert_face(h: &Headset, r: u64, face: Face) {
    assert_faces(h, r, [face, face]);
}

fn assert_faces(h: &Headset, r: u64, faces: [Face; 2]) {
    for (eye, (c, face)) in centres(h, r).iter().zip(faces).enumerate() {
        assert!(
            colour_distance(*c, face.colour()) <= 40,
            "eye {eye} of record {r} shows {c:?}, not {face:?} {:?}",
            face.colour()
        );
    }
}

#[test]
fn each_eye_shows_the_face_the_head_looks_at() {
    let (_send, code, rv) = sender(&[]);
    let mut h = Headset::start(&rv, &code, 90, EYE, true);
    // Up and down short of the poles, where yaw would be undefined in the runtime's log.
    for (yaw, pitch, face) in [
        (0.0, 0.0, Face::Front),
        (90.0, 0.0, Face::Right),
        (180.0, 0.0, Face::Back),
        (-90.0, 0.0, Face::Left),
        (0.0, 80.0, Face::Up),
        (30.0, -80.0, Face::Down),
    ] {
        h.look(yaw, pitch, 0.0);
        let r = showing(&mut h, yaw, pitch);
        assert_face(&h, r, face);
    }
    // Mono video: both eyes see the same scene, each through its own (mirrored) lens.
    let r = showing(&mut h, 0.0, 0.0);
    let [l, rt] = h.eyes(r);
    let mirrored = |x: u32, y: u32| {
        let a = rgba_at(&l, EYE.0, x, y);
        let b = rgba_at(&rt, EYE.0, EYE.0 - 1 - x, y);
        colour_distance(a, b)
    };
    assert!(mirrored(EYE.0 / 2, EYE.1 / 2) <= 40);
    // The stats line counts the headset's frames beside the video's.
    let stats = h.view.as_ref().expect("running").line("view ", START);
    let fps = stats
        .split_whitespace()
        .skip_while(|t| *t != "headset")
        .nth(1)
        .and_then(|v| v.parse::<f64>().ok());
    assert!(fps.is_some_and(|f| f > 0.0), "{stats}");
    let log = h.log();
    assert_eq!(log.session.first().map(String::as_str), Some("begin"));
    assert!(
        log.frames.iter().skip(1).all(|f| f.layers == 1),
        "every shown frame submits a layer"
    );
}

#[test]
fn each_eye_shows_its_own_half_of_stereo_video() {
    let (_send, code, rv) = sender(&["--projection", "equirect-tb"]);
    let mut h = Headset::start(&rv, &code, 90, EYE, true);
    // The mono test card sent as top-bottom: each eye stretches its half over the sphere, so
    // looking 60° down the left eye (top half) samples the card 15° up (the front) and the
    // right eye (bottom half) 75° down (the floor); 60° up: 75° up (the sky) and 15° down.
    for (yaw, pitch, faces) in [
        (0.0, -60.0, [Face::Front, Face::Down]),
        (90.0, 60.0, [Face::Up, Face::Right]),
    ] {
        h.look(yaw, pitch, 0.0);
        let r = showing(&mut h, yaw, pitch);
        assert_faces(&h, r, faces);
    }
}

#[test]
fn turning_the_head_changes_the_very_next_frame_without_new_video() {
    let (send, code, rv) = sender(&[]);
    let mut h = Headset::start(&rv, &code, 90, EYE, true);
    h.look(0.0, 0.0, 0.0);
    let r = showing(&mut h, 0.0, 0.0);
    assert_face(&h, r, Face::Front);
    // Freeze the sender: no video frame leaves it from now on.
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(send.child.id() as i32, libc::SIGSTOP) };
    // Frames already on their way land within a few XR frames; wait out 30 of them.
    let before = h.log().frames.len();
    h.wait_for("30 frames after the sender froze", START, |_, l| {
        l.frames.len() >= before + 30
    });
    // The viewer's decoded-frame count before the turn and after it: equal, so the turned
    // frame was drawn from a picture it already had.
    let decoded = |h: &Headset| {
        let view = h.view.as_ref().expect("running");
        let l = view.line("view ", START);
        l.split_whitespace()
            .skip_while(|t| *t != "frames")
            .nth(1)
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no frame count in {l}"))
    };
    for _ in h.view.as_ref().expect("running").lines.try_iter() {}
    let before_turn = decoded(&h);
    h.look(90.0, 0.0, 0.0);
    let log = h.wait_for("a frame at the new pose", START, |_, l| {
        l.frames
            .iter()
            .any(|f| f.eyes.first().is_some_and(|e| near(e.0, 90.0)))
    });
    let turned = log
        .frames
        .iter()
        .position(|f| f.eyes.first().is_some_and(|e| near(e.0, 90.0)))
        .expect("waited for it");
    let (prev, first) = (&log.frames[turned - 1], &log.frames[turned]);
    assert!(prev.eyes.iter().all(|e| near(e.0, 0.0)), "{prev:?}");
    assert_face(&h, prev.record.expect("kept"), Face::Front);
    assert_face(&h, first.record.expect("kept"), Face::Right);
    assert_eq!(
        decoded(&h),
        before_turn,
        "a video frame was decoded meanwhile"
    );
    // SAFETY: as above.
    unsafe { libc::kill(send.child.id() as i32, libc::SIGCONT) };
}

#[test]
fn recentring_turns_the_scene_to_face_the_head() {
    let (_send, code, rv) = sender(&[]);
    let mut h = Headset::start(&rv, &code, 90, EYE, true);
    h.look(90.0, 0.0, 0.0);
    let r = showing(&mut h, 90.0, 0.0);
    assert_face(&h, r, Face::Right);
    h.type_line("r");
    // The head still turned right, but LOCAL now has its front there: the eyes look at yaw 0
    // in it, at the scene's front.
    let r = showing(&mut h, 0.0, 0.0);
    assert_face(&h, r, Face::Front);
    let (code, err) = {
        h.trigger("exit");
        h.wait_exit(Duration::from_secs(30))
    };
    assert_eq!(code, 0, "{err}");
}

/// A test-card sender and a viewer in the simulated headset, past its first frames.
fn streaming() -> (Proc, Headset) {
    let (send, code, rv) = sender(&[]);
    let mut h = Headset::start_with(&rv, &code, 90, EYE, false, &["--json"]);
    h.wait_for("frames", START, |_, l| l.frames.len() >= 10);
    // Connected and playing: ten headset frames come before the network (CI once stopped the
    // sender before the viewer had reached it).
    h.wait_decoded(START);
    (send, h)
}

/// The viewer's exit code, its stderr and the session calls the runtime saw.
fn exit(mut h: Headset) -> (i32, String, Vec<String>) {
    let (code, err) = h.wait_exit(Duration::from_secs(30));
    (code, err, h.log().session)
}

#[test]
fn the_session_ends_in_order_when_the_runtime_asks() {
    let (_send, h) = streaming();
    h.trigger("exit");
    let (code, err, session) = exit(h);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("rror"), "{err}");
    // Asked to stop, the viewer ended the session (xrEndSession) and destroyed it; it did not
    // ask to exit itself.
    assert_eq!(session, ["begin", "end", "destroy"]);
}

#[test]
fn the_stream_ending_ends_the_session_in_order() {
    let (send, h) = streaming();
    send.interrupt();
    let (code, err, session) = exit(h);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("the sender ended the stream"), "{err}");
    assert_eq!(session, ["begin", "request-exit", "end", "destroy"]);
}

#[test]
fn instance_loss_is_a_clear_error() {
    let (_send, h) = streaming();
    h.trigger("lose");
    let (code, err, _) = exit(h);
    assert_eq!(code, 6, "{err}");
    assert!(
        err.contains("the OpenXR runtime went away (instance lost); restart it and run view again"),
        "{err}"
    );
}

#[test]
fn a_lost_session_comes_back_with_the_headset() {
    let (_send, mut h) = streaming();
    // Unplugged: the session is lost and for a while there is no headset at all.
    h.trigger("unplugged");
    h.trigger("lose-session");
    let view = h.view.as_ref().expect("running");
    view.line(
        "the headset session was lost; waiting for the headset to come back",
        START,
    );
    // The stream goes on meanwhile (two more stats lines), with no new session.
    view.line("{", START);
    view.line("{", START);
    assert_eq!(h.log().session, ["begin", "destroy"]);
    std::fs::remove_file(h.dir.join("unplugged")).expect("plug it back in");
    // A new session, rendering again: frames after the second begin.
    let log = h.wait_for("frames in a new session", START, |_, l| {
        l.session.len() >= 3 && l.since_begin >= 10
    });
    assert_eq!(log.session[..3], ["begin", "destroy", "begin"]);
    h.trigger("exit");
    let (code, err, session) = exit(h);
    assert_eq!(code, 0, "{err}");
    // Lost, not ended: the first session was destroyed without xrEndSession.
    assert_eq!(session, ["begin", "destroy", "begin", "end", "destroy"]);
}

#[test]
fn a_headset_that_will_not_start_falls_back_to_the_window() {
    // No display to fall back to: one clear error.
    let (code, _, err) = view("busy", &[]);
    assert_eq!(code, Some(6), "{err}");
    assert!(
        err.contains("the headset did not start: the OpenXR runtime allows no more sessions"),
        "{err}"
    );
    // With a display: it says why and the window plays the stream.
    let x = Xvfb::start(640, 480);
    let (_send, code, rv) = sender(&[]);
    let manifest = manifest();
    let v = Proc::start_with(
        &["view", "--rendezvous", &rv, "--bind", "127.0.0.1:0", &code],
        &[
            ("XR_RUNTIME_JSON", &manifest.to_string_lossy()),
            ("INCLUBIT_XR_SIM", "busy"),
            ("DISPLAY", &x.display),
        ],
        &["WAYLAND_DISPLAY"],
        std::process::Stdio::null(),
    );
    let l = v.line("the headset did not start", START);
    assert!(l.ends_with("; opening a desktop window"), "{l}");
    let end = std::time::Instant::now() + START;
    loop {
        let l = v.line(
            "view ",
            end.saturating_duration_since(std::time::Instant::now()),
        );
        let frames = l
            .split_whitespace()
            .skip_while(|t| *t != "frames")
            .nth(1)
            .and_then(|n| n.parse::<u64>().ok());
        assert!(!l.contains("headset"), "{l}");
        if frames.is_some_and(|n| n >= 10) {
            break;
        }
    }
}

#[test]
fn eye_images_follow_the_eye_scale() {
    let (_send, code, rv) = sender(&[]);
    let mut h = Headset::start_with(&rv, &code, 90, (128, 96), true, &["--eye-scale", "0.5"]);
    // The runtime recommends 128x96; the viewer renders and submits 64x48.
    h.eye = (64, 48);
    h.look(90.0, 0.0, 0.0);
    let r = showing(&mut h, 90.0, 0.0);
    assert_face(&h, r, Face::Right);
    let shown: Vec<_> = h
        .log()
        .frames
        .into_iter()
        .filter(|f| f.layers == 1)
        .collect();
    assert!(shown.iter().all(|f| f.size == (64, 48)), "{shown:?}");
}

#[test]
fn an_eye_scale_out_of_range_is_a_command_line_error() {
    let (code, _, err) = view("hmd", &["--eye-scale", "5"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is not an eye scale from 0.25 to 2"), "{err}");
}

#[test]
fn the_demo_plays_in_the_headset_when_there_is_one() {
    let mut h = Headset::launch(&["demo", "--size", "640x320"], 90, EYE, true);
    h.look(-90.0, 0.0, 0.0);
    let r = showing(&mut h, -90.0, 0.0);
    assert_face(&h, r, Face::Left);
    h.trigger("exit");
    let (code, err) = h.wait_exit(Duration::from_secs(30));
    assert_eq!(code, 0, "{err}");
}
