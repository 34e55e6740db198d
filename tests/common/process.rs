//! The real `inclubit` binary as a child process.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_inclubit");

/// A child process killed on drop, with its stdout lines on a channel and its stderr kept.
pub struct Proc {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    err: Arc<Mutex<String>>,
    err_done: Option<std::thread::JoinHandle<()>>,
    args: String,
}

impl Proc {
    pub fn start(args: &[&str]) -> Proc {
        Self::start_with_env(args, &[])
    }

    /// [`Proc::start`] with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Proc {
        Self::start_with(args, env, &[], Stdio::null())
    }

    /// [`Proc::start`] in network namespace `ns` (`ip netns exec`, which becomes the program).
    pub fn start_in_netns(ns: &str, args: &[&str]) -> Proc {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, BIN]).args(args);
        Self::spawn(cmd, args, Stdio::null())
    }

    /// [`Proc::start`] with variables set, others removed, and the given stdin.
    pub fn start_with(args: &[&str], env: &[(&str, &str)], remove: &[&str], stdin: Stdio) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        for r in remove {
            cmd.env_remove(r);
        }
        cmd.envs(env.iter().copied());
        Self::spawn(cmd, args, stdin)
    }

    fn spawn(mut cmd: Command, args: &[&str], stdin: Stdio) -> Proc {
        let mut child = cmd
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn inclubit");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let err = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().expect("piped stderr");
        let sink = err.clone();
        let err_done = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut e) = sink.lock() {
                    e.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        Proc {
            child,
            lines,
            err,
            err_done: Some(err_done),
            args: args.join(" "),
        }
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.err.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Its exit status if it has exited.
    pub fn try_status(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }

    /// The first stdout line starting with `prefix`, within `timeout`.
    pub fn line(&self, prefix: &str, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => {}
                Err(e) => panic!(
                    "`inclubit {}`: no line starting with {prefix:?}: {e}\nits stderr:\n{}",
                    self.args,
                    self.stderr()
                ),
            }
        }
    }

    pub fn wait(mut self, timeout: Duration) -> (i32, String) {
        use wait_timeout::ChildExt;
        let status = self
            .child
            .wait_timeout(timeout)
            .unwrap()
            .unwrap_or_else(|| panic!("`inclubit {}` did not exit within {timeout:?}", self.args));
        // Its stderr ends with it (unless a child of its own holds the pipe).
        if let Some(t) = self.err_done.take() {
            let _ = t.join();
        }
        (status.code().unwrap_or(-1), self.stderr())
    }

    pub fn interrupt(&self) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `inclubit` to the end with no display and no OpenXR runtime named but what `env` sets:
/// (exit code, stdout, stderr).
pub fn output_headless(
    args: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("XR_RUNTIME_JSON")
        .envs(env.iter().copied())
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .stdin(Stdio::null())
        .output()
        .expect("run inclubit");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A 640×320 test-card sender on loopback against `rendezvous`, keeping its room tickets in
/// `state` (its XDG_STATE_HOME) and, with `code`, asking for that code back: (process, code).
pub fn sender_with_state(
    rendezvous: &str,
    state: &std::path::Path,
    code: Option<&str>,
) -> (Proc, String) {
    let mut args = vec![
        "send",
        "--source",
        "testcard",
        "--size",
        "640x320",
        "--bind",
        "127.0.0.1:0",
        "--rendezvous",
        rendezvous,
    ];
    if let Some(c) = code {
        args.extend(["--code", c]);
    }
    let state = state.to_str().expect("a UTF-8 temp path");
    let p = Proc::start_with_env(&args, &[("XDG_STATE_HOME", state)]);
    let line = p.line("code ", Duration::from_secs(20));
    let code = line.split_whitespace().nth(1).expect("a code").to_string();
    (p, code)
}
