//! What each subcommand does at the terminal: start a pipeline, print the code and stats lines,
//! stop cleanly on Ctrl-C, and map failures to exit codes.

use std::net::SocketAddr;
use std::time::Duration;

use crate::cli::{Cli, Command, DemoArgs, DisplayArgs, RendezvousArgs, SendArgs, ViewArgs};
use crate::net::resolve;
use crate::pipeline::send::{self, SendConfig, SendSession};
use crate::pipeline::view::{self, Display, FrameSlot, ViewConfig};
use crate::pipeline::{exit, PipelineError};
use crate::render::desktop;
use crate::rendezvous::state::{ticket_key, Tickets};
use crate::rendezvous::web::WebService;

/// `println!` that ignores a closed stdout: `inclubit send | head` must not stop a stream.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    // Before the runtime's threads exist.
    crate::xr::quiet_loader();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return exit::FAILURE;
        }
    };
    let json = cli.json;
    let r = match cli.command {
        Command::Send(a) => rt.block_on(send_cmd(*a, json)),
        Command::View(a) => view_cmd(&rt, a, json),
        Command::Rendezvous(a) => rt.block_on(rendezvous_cmd(*a)),
        Command::Demo(a) => demo_cmd(&rt, a, json),
    };
    // Don't wait for blocked capture reads and the like.
    rt.shutdown_timeout(Duration::from_millis(500));
    match r {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

async fn rendezvous_cmd(mut a: RendezvousArgs) -> Result<(), PipelineError> {
    a.web.state_dir = a.server.state_dir();
    let mut server = inclubit_rendezvous::server::Server::bind(a.server.config()).await?;
    say!("listening on {}", server.local_addr());
    let web = match a.http {
        Some(addr) => {
            let web = WebService::start(addr, &a.web, server.local_addr())
                .await
                .map_err(|e| PipelineError::Other(format!("web side: {e}")))?;
            let scheme = if web.server.https { "https" } else { "http" };
            say!("web listening on {scheme}://{}", web.server.local_addr);
            server.set_web(web.server.side());
            server.set_metrics(web.metrics.clone());
            Some(web)
        }
        None => None,
    };
    // SIGHUP: the command line and the config file read again.
    let reload = || {
        use clap::{CommandFactory, FromArgMatches};
        let m = inclubit_rendezvous::config::try_get_matches(
            crate::cli::Cli::command(),
            std::env::args_os().collect(),
            Some("rendezvous"),
            Some(crate::cli::RENDEZVOUS_CONFIG.into()),
        )?;
        let sub = m
            .subcommand_matches("rendezvous")
            .ok_or("not the rendezvous command")?;
        let a = RendezvousArgs::from_arg_matches(sub).map_err(|e| e.to_string())?;
        Ok(a.server.config().rooms)
    };
    inclubit_rendezvous::service::run(server, web.as_ref(), reload)
        .await
        .map_err(|e| PipelineError::Other(format!("signals: {e}")))
}

async fn rendezvous_addr(s: &Option<String>) -> Result<Option<SocketAddr>, PipelineError> {
    match s {
        Some(s) => Ok(Some(resolve(s).await?)),
        None => Ok(None),
    }
}

fn send_config(a: &SendArgs, rendezvous: Option<SocketAddr>) -> SendConfig {
    SendConfig {
        source: a.source.clone(),
        capture: crate::capture::CaptureConfig {
            size: a.size,
            fps: a.fps,
            mjpeg: a.mjpeg,
        },
        bitrate: a.bitrate,
        projection: a.projection,
        orientation: [a.yaw, a.pitch, a.roll],
        lens: crate::projection::FisheyeLens {
            fov_deg: a.lens_fov.clamp(1.0, 360.0),
            centre: a.lens_centre,
            radius: a.lens_radius,
        },
        bind: a.net.bind,
        rendezvous,
        embedded_port: a.rendezvous_port,
        latency_budget: a.latency_budget(),
        max_frames: a.frames,
        paths: a.net.path_policy(),
        punch: a.net.punch(),
        impairment: crate::net::netem::Netem::from_env(),
        no_upnp: a.net.no_upnp,
        record: a.record.clone(),
        ..Default::default()
    }
}

/// `scheme://HOST[:port]/r/CODE` for a rendezvous given as `HOST[:PORT]`.
fn browser_link(
    rendezvous: &str,
    web: crate::rendezvous::wire::signal::WebSide,
    code: crate::rendezvous::code::PairingCode,
) -> String {
    let host = match rendezvous.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() && (!h.contains(':') || h.ends_with(']')) => h,
        _ => rendezvous,
    };
    let (scheme, default) = if web.https {
        ("https", 443)
    } else {
        ("http", 80)
    };
    if web.port == default {
        format!("{scheme}://{host}/r/{code}")
    } else {
        format!("{scheme}://{host}:{}/r/{code}", web.port)
    }
}

/// The host in a link others can open: the bound address, or this PC's LAN address.
fn link_host(bound: SocketAddr) -> String {
    if !bound.ip().is_unspecified() {
        return bound.ip().to_string();
    }
    if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .find(|ip| ip.is_ipv4() && !ip.is_loopback())
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "localhost".into())
}

fn announce(s: &SendSession) {
    say!("code        {}", s.code);
    let how = if s.embedded_rendezvous {
        " (embedded)"
    } else {
        ""
    };
    say!("rendezvous  {}{how}", s.rendezvous);
    say!("viewer      {}", s.view_command());
}

/// Room tickets and the embedded rendezvous's key, kept in the user's state directory so a
/// restarted sender keeps its code (`--code`).
struct SenderState {
    tickets: Option<Tickets>,
    /// Which rendezvous the tickets are for.
    rendezvous: String,
}

impl SenderState {
    fn load(a: &SendArgs, cfg: &mut SendConfig) -> Result<Self, PipelineError> {
        let dir = crate::rendezvous::state::default_dir("inclubit");
        let rendezvous = a
            .net
            .rendezvous
            .clone()
            .unwrap_or_else(|| format!("embedded:{}", a.rendezvous_port));
        let tickets = match dir.as_deref().map(Tickets::load) {
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => {
                tracing::warn!("{e}; this code cannot be kept across restarts");
                None
            }
            None => None,
        };
        if cfg.rendezvous.is_none() {
            // The embedded rendezvous keeps its key too, or no ticket would survive it.
            match dir.as_deref().map(|d| ticket_key(&d.join("rendezvous"))) {
                Some(Ok(k)) => cfg.ticket_key = Some(k),
                Some(Err(e)) => tracing::warn!("{e}; codes will not survive a restart"),
                None => {}
            }
        }
        if let Some(code) = a.code {
            cfg.secret = Some(code.secret);
            cfg.claim = tickets
                .as_ref()
                .and_then(|t| t.claim(&rendezvous, code.room));
            if cfg.claim.is_none() {
                return Err(PipelineError::Other(format!(
                    "--code {code}: this machine holds no ticket for that code at {rendezvous} \
                     (kept in {}); run without --code for a new one",
                    tickets
                        .as_ref()
                        .map(|t| t.path().display().to_string())
                        .unwrap_or_else(|| "no state directory".into())
                )));
            }
        }
        Ok(Self {
            tickets,
            rendezvous,
        })
    }

    fn remember(&mut self, s: &SendSession) {
        if let Some(t) = &mut self.tickets {
            if let Err(e) = t.remember(&self.rendezvous, s.code.room, s.ticket) {
                tracing::warn!("{e}; this code cannot be kept across restarts");
            }
        }
    }
}

/// Stops a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The sender's stats line as metrics.
fn metrics_of(
    line: &crate::pipeline::stats::StatsLine,
) -> inclubit_rendezvous::metrics::SenderSample {
    use inclubit_rendezvous::metrics::{SenderSample, ViewerSample};
    SenderSample {
        fps: line.fps,
        bitrate_bps: line.bitrate_mbps * 1e6,
        frames: line.frames,
        viewers: line
            .per_viewer
            .iter()
            .map(|v| ViewerSample {
                id: v.id,
                path: v.path.to_string(),
                rendition: v.rendition.to_string(),
                rtt_seconds: v.rtt_ms / 1000.0,
                estimate_bps: v.estimate_mbps * 1e6,
                target_bps: v.target_mbps * 1e6,
                sent_bps: v.sent_mbps * 1e6,
                frames_sent: v.frames_sent,
                frames_skipped: v.frames_skipped,
                idrs: v.idrs,
            })
            .collect(),
    }
}

async fn send_cmd(a: SendArgs, json: bool) -> Result<(), PipelineError> {
    let rv = rendezvous_addr(&a.net.rendezvous).await?;
    let mut cfg = send_config(&a, rv);
    let mut state = SenderState::load(&a, &mut cfg)?;
    let mut s = send::start(cfg).await?;
    state.remember(&s);
    announce(&s);
    if a.code.is_none() {
        say!(
            "keep        restart with --code {} to keep this code",
            s.code
        );
    }
    let _web = match a.web {
        Some(addr) => {
            let mut opts = a.web_opts.clone();
            opts.state_dir = crate::rendezvous::state::default_dir("inclubit");
            opts.on_camera = true;
            let web = WebService::start(addr, &opts, s.rendezvous)
                .await
                .map_err(|e| PipelineError::Other(format!("web viewer: {e}")))?;
            say!(
                "browser     {}",
                web.server.room_url(&link_host(addr), s.code)
            );
            Some(web)
        }
        None => {
            // The rendezvous has a web side: the link is on the host we reached it by.
            if let (Some(web), Some(rv)) = (s.web, &a.net.rendezvous) {
                say!("browser     {}", browser_link(rv, web, s.code));
            }
            None
        }
    };
    let _metrics = match a.metrics {
        Some(addr) => {
            let stats = s.stats_source();
            let scrape = std::sync::Arc::new(move || metrics_of(&stats()).encode());
            let (local, task) = inclubit_rendezvous::metrics::serve(addr, scrape)
                .await
                .map_err(|e| PipelineError::Other(format!("metrics on {addr}: {e}")))?;
            say!("metrics     http://{local}/metrics");
            Some(AbortOnDrop(task))
        }
        None => None,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // After a stall of the runtime, one line, not a burst of identical ones.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick.tick().await;
    // One listener for the whole loop: a signal arriving between iterations is not lost.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut code = s.code;
    let r = loop {
        tokio::select! {
            r = s.finished() => break r,
            _ = &mut ctrl_c => break Ok(()),
            _ = tick.tick() => {
                // Failed pairings drew a new secret: the technician hands out the new code.
                if s.code_now() != code {
                    code = s.code_now();
                    say!("code        {code}  (new: {} failed pairings; the old code no longer works)", send::REKEY_AFTER);
                    say!("viewer      {}", s.view_command());
                }
                say!("{}", s.stats().render(json))
            }
        }
    };
    let stopped = s.stop().await;
    r.and(stopped)
}

fn view_config(a: &ViewArgs, rendezvous: SocketAddr, display: Display) -> ViewConfig {
    let mut cfg = ViewConfig::new(a.code, rendezvous);
    cfg.bind = a.net.bind;
    cfg.rejoin = (a.rejoin > 0).then(|| Duration::from_secs(a.rejoin));
    cfg.prefer.max_bitrate = a.max_bitrate.unwrap_or(0) as u64;
    cfg.paths = a.net.path_policy();
    cfg.verify_testcard = a.verify;
    cfg.punch = a.net.punch();
    cfg.impairment = crate::net::netem::Netem::from_env();
    cfg.no_upnp = a.net.no_upnp;
    cfg.display = display;
    cfg.max_frames = a.frames;
    cfg
}

/// Drives a viewer, printing stats every second, until it ends or Ctrl-C.
async fn view_loop(cfg: ViewConfig, slot: FrameSlot, json: bool) -> Result<(), PipelineError> {
    let metrics = slot.metrics.clone();
    let closer = slot.clone();
    let run = view::run(cfg, slot);
    tokio::pin!(run);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // After a stall of the runtime, one line, not a burst of identical ones.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick.tick().await;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            r = &mut run => {
                closer.close();
                let summary = r?;
                if let Ok(mut m) = metrics.lock() {
                    // A last line with the final counts.
                    say!("{}", m.line().render(json));
                }
                if summary.sender_ended {
                    eprintln!("the sender ended the stream");
                }
                return Ok(());
            }
            _ = &mut ctrl_c => {
                closer.close();
                return Ok(());
            }
            _ = tick.tick() => {
                if let Ok(mut m) = metrics.lock() {
                    // Nothing to report before the stream starts.
                    if !m.path.is_empty() {
                        say!("{}", m.line().render(json));
                    }
                }
            }
        }
    }
}

fn view_cmd(rt: &tokio::runtime::Runtime, a: ViewArgs, json: bool) -> Result<(), PipelineError> {
    let Some(rv) = &a.net.rendezvous else {
        return Err(PipelineError::Other(
            "view needs --rendezvous HOST:PORT (the sender prints the exact command)".into(),
        ));
    };
    let rv = rt.block_on(resolve(rv))?;
    let cfg = view_config(&a, rv, Display::None);
    let title = format!("inclubit {}", a.code);
    show(rt, &a.display, cfg, &title, a.render_size, json)
}

/// Runs a viewer on what `d` asks for: the headset when there is one, else a window when there
/// is a display, else offscreen at `headless_size` with a stats line.
fn show(
    rt: &tokio::runtime::Runtime,
    d: &DisplayArgs,
    mut cfg: ViewConfig,
    title: &str,
    headless_size: (u32, u32),
    json: bool,
) -> Result<(), PipelineError> {
    let display = desktop::display_available();
    if !d.headless && !d.window && headset_or_window(d.xr, display)? {
        let slot = FrameSlot::default();
        cfg.display = Display::Window(slot.clone());
        return on_main_thread(rt, slot.clone(), view_loop(cfg, slot, json), |slot| {
            headset_or_fallback(slot, title, d.xr, d.eye_scale)
        });
    }
    if d.headless || !display {
        // Without --window the headset line already said it.
        if d.window {
            eprintln!("no display found; rendering headless (use --headless to silence this)");
        }
        cfg.display = Display::Headless {
            width: headless_size.0,
            height: headless_size.1,
        };
        return rt.block_on(view_loop(cfg, FrameSlot::default(), json));
    }
    let slot = FrameSlot::default();
    cfg.display = Display::Window(slot.clone());
    windowed(rt, slot.clone(), title, view_loop(cfg, slot, json))
}

/// Looks for a headset: true when there is one. Without one (or with `require`) says why in
/// one line; the caller then opens the desktop window.
fn headset_or_window(require: bool, display: bool) -> Result<bool, PipelineError> {
    let why = match crate::xr::probe() {
        Ok(_) => return Ok(true),
        Err(e) => e.to_string(),
    };
    if require {
        return Err(PipelineError::Headset(format!(
            "{why} (--xr requires a headset)"
        )));
    }
    if display {
        say!("{why}; opening a desktop window — use --xr to require one");
    } else {
        say!("{why}, and no display: rendering headless — use --xr to require a headset");
    }
    Ok(false)
}

/// Renders to the headset; if the session cannot even start (and `--xr` was not given), says
/// why and opens the desktop window instead.
fn headset_or_fallback(
    slot: FrameSlot,
    title: &str,
    require: bool,
    eye_scale: f32,
) -> Result<(), PipelineError> {
    let (recentre_tx, recentre) = std::sync::mpsc::channel();
    // `r` + Enter at the terminal recentres; no stdin (a service, CI) just means no command.
    let _ = std::thread::Builder::new()
        .name("recentre".into())
        .spawn(move || {
            for line in std::io::stdin().lines() {
                let Ok(line) = line else { break };
                if matches!(line.trim(), "r" | "R" | "recentre" | "recenter")
                    && recentre_tx.send(()).is_err()
                {
                    break;
                }
            }
        });
    let mut started = false;
    loop {
        let r = crate::xr::session::run(slot.clone(), &recentre, eye_scale, |h| {
            started = true;
            say!(
                "headset     {} on {}, {}×{} per eye; type r + Enter to recentre",
                h.system,
                h.runtime,
                h.eye_size.0,
                h.eye_size.1
            );
        });
        return match r {
            Err(crate::xr::session::XrError::SessionLost) => {
                say!("the headset session was lost; waiting for the headset to come back");
                if wait_for_headset(&slot) {
                    continue;
                }
                Ok(())
            }
            Err(e) if !started => {
                let why = format!("the headset did not start: {e}");
                if require || !desktop::display_available() {
                    return Err(PipelineError::Headset(why));
                }
                say!("{why}; opening a desktop window");
                desktop::run_window(slot, title).map_err(PipelineError::from)
            }
            r => r.map_err(|e| PipelineError::Headset(e.to_string())),
        };
    }
}

/// Asks the runtime for a headset once a second until there is one (true) or the stream ends.
fn wait_for_headset(slot: &FrameSlot) -> bool {
    loop {
        if slot.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return false;
        }
        if crate::xr::probe().is_ok() {
            return true;
        }
        if slot.wait_closed(Duration::from_secs(1)) {
            return false;
        }
    }
}

/// Runs `work` on the runtime while the window owns the main thread.
fn windowed<F>(
    rt: &tokio::runtime::Runtime,
    slot: FrameSlot,
    title: &str,
    work: F,
) -> Result<(), PipelineError>
where
    F: std::future::Future<Output = Result<(), PipelineError>> + Send + 'static,
{
    on_main_thread(rt, slot, work, |slot| {
        desktop::run_window(slot, title).map_err(PipelineError::from)
    })
}

/// Runs `work` on the runtime while `display` (a window or the headset) owns the main thread.
fn on_main_thread<F>(
    rt: &tokio::runtime::Runtime,
    slot: FrameSlot,
    work: F,
    display: impl FnOnce(FrameSlot) -> Result<(), PipelineError>,
) -> Result<(), PipelineError>
where
    F: std::future::Future<Output = Result<(), PipelineError>> + Send + 'static,
{
    let handle = rt.spawn(work);
    let shown = display(slot.clone());
    slot.close();
    let r = rt.block_on(async {
        match tokio::time::timeout(Duration::from_secs(3), handle).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(PipelineError::Other(e.to_string())),
            Err(_) => Ok(()),
        }
    });
    shown?;
    r
}

fn demo_cmd(rt: &tokio::runtime::Runtime, a: DemoArgs, json: bool) -> Result<(), PipelineError> {
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("valid");
    let cfg = SendConfig {
        capture: crate::capture::CaptureConfig {
            size: Some(a.size),
            ..Default::default()
        },
        bind: loopback,
        embedded_port: 0,
        ..Default::default()
    };
    let sender = rt.block_on(send::start(cfg))?;
    say!(
        "demo: test card {}x{} -> rendezvous {} -> viewer (code {})",
        a.size.0,
        a.size.1,
        sender.rendezvous,
        sender.code
    );
    let mut vcfg = ViewConfig::new(sender.code, sender.rendezvous);
    vcfg.bind = loopback;
    vcfg.max_frames = a.frames;
    let r = show(rt, &a.display, vcfg, "inclubit demo", (1280, 720), json);
    let stopped = rt.block_on(sender.stop());
    r.and(stopped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rendezvous::wire::signal::WebSide;

    #[test]
    fn browser_links_use_the_rendezvous_host() {
        let code = "K7F-Q2M-4X9P".parse().unwrap();
        let web = |port, https| WebSide { port, https };
        assert_eq!(
            browser_link("example.org:7000", web(443, true), code),
            "https://example.org/r/K7F-Q2M-4X9P"
        );
        assert_eq!(
            browser_link("example.org", web(8080, false), code),
            "http://example.org:8080/r/K7F-Q2M-4X9P"
        );
        assert_eq!(
            browser_link("[2001:db8::1]:7000", web(80, false), code),
            "http://[2001:db8::1]/r/K7F-Q2M-4X9P"
        );
        assert_eq!(
            browser_link("192.0.2.1:7000", web(8443, true), code),
            "https://192.0.2.1:8443/r/K7F-Q2M-4X9P"
        );
    }
}
