//! `inclubit view` against the simulated OpenXR runtime (tests/xr-sim), loaded by the real
//! OpenXR loader through an `XR_RUNTIME_JSON` manifest.

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

mod common;

/// The simulated runtime (tests/xr-sim), built on first use into its own target directory
/// (only openxr-sys and itself: seconds), and a manifest naming it.
fn manifest() -> PathBuf {
    // Once per process: tests run in parallel, and a manifest rewritten under a starting loader
    // reads as no runtime at all.
    static MANIFEST: OnceLock<PathBuf> = OnceLock::new();
    MANIFEST
        .get_or_init(|| {
            let mut target = std::env::current_exe().unwrap();
            target.pop();
            if target.ends_with("deps") {
                target.pop();
            }
            let target_dir = target.join("xr-sim");
            let root = env!("CARGO_MANIFEST_DIR");
            let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(["build", "-q", "-p", "inclubit-xr-sim", "--manifest-path"])
                .arg(format!("{root}/Cargo.toml"))
                .arg("--target-dir")
                .arg(&target_dir)
                .status()
                .expect("cargo, to build the simulated runtime");
            assert!(status.success(), "building tests/xr-sim failed");
            let lib = target_dir.join("debug").join("libinclubit_xr_sim.so");
            assert!(lib.exists(), "{} missing", lib.display());
            let json =
                std::env::temp_dir().join(format!("inclubit-xr-sim-{}.json", std::process::id()));
            std::fs::write(
                &json,
                format!(
                    r#"{{"file_format_version": "1.0.0", "runtime": {{"name": "inclubit simulated runtime", "library_path": "{}"}}}}"#,
                    lib.display()
                ),
            )
            .unwrap();
            json
        })
        .clone()
}

/// `inclubit view` with the simulated runtime in `mode`; the code names no room, so a viewer
/// that gets past the headset question ends with exit 3.
fn view(mode: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    // Something that answers at the rendezvous address: a real one is not needed to fail fast,
    // but the address must resolve.
    let rv = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rv = rv.local_addr().unwrap().to_string();
    let mut args = vec!["view", "--rendezvous", rv.as_str(), "--bind", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    args.push("K7F-Q2M");
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
fn a_runtime_with_a_headset_is_found_and_named() {
    let (code, _, err) = view("hmd", &["--xr"]);
    assert_eq!(code, Some(6), "{err}");
    assert!(
        err.contains(
            "OpenXR runtime inclubit simulated runtime 0.1.0 with inclubit simulated headset found"
        ),
        "{err}"
    );
}

#[test]
fn a_runtime_without_a_headset_falls_back_to_the_window() {
    let (_, out, err) = view("no-hmd", &["--headless"]);
    assert!(!out.contains("OpenXR"), "--headless asks nothing: {out}");
    let (code, out, err2) = view("no-hmd", &[]);
    assert!(
        out.lines().next().is_some_and(|l| l
            == "the OpenXR runtime inclubit simulated runtime 0.1.0 sees no headset; opening a desktop window — use --xr to require one"),
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
