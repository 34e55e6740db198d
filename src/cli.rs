//! The command line (clap derive). Network flags are shared through `#[command(flatten)]`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use inclubit_rendezvous::code::PairingCode;
use inclubit_rendezvous::config::{self, ConfigArgs, ConfigError};
use inclubit_rendezvous::server::ServerArgs;
use inclubit_rendezvous::web::WebArgs;
use inclubit_rendezvous::wire::media::Projection;

use crate::capture::SourceSpec;
use crate::net::{punch, PathPolicy};

const AFTER_HELP: &str = "\
Examples:
  inclubit demo                                        test card -> embedded rendezvous -> viewer
  inclubit send --source testcard                      prints a code and the viewer's command
  inclubit send --web                                  ...and a link for browsers on this LAN
  inclubit send --source camera:/dev/video0 --size 3840x1920 --fps 30
  inclubit send --source camera:/dev/video0 --projection dual-fisheye --yaw 90
  inclubit send --source file:talk360.mp4 --rendezvous rv.example.org:7000
  inclubit view --rendezvous rv.example.org:7000 K7F-Q2M-4X9P
  inclubit view --rendezvous rv.example.org:7000 --xr --eye-scale 0.7 K7F-Q2M-4X9P  headset, slower GPU
  inclubit rendezvous --listen 0.0.0.0:7000 --http 0.0.0.0:8080

Exit codes:
  0  finished normally (Ctrl-C, --frames reached, or the sender ended the stream)
  1  other failure
  2  bad command line (including a malformed code)
  3  no room with that code
  4  network: rendezvous unreachable, sender unreachable or lost
  5  source: no camera, camera busy, no such file, not a video
  6  graphics: no GPU adapter or window; with --xr no headset; the OpenXR runtime lost
  7  pairing failed: the code's last part is wrong, or someone is between you and the sender";

#[derive(Debug, Parser)]
#[command(
    name = "inclubit",
    version,
    about = "Live 360° video from a camera PC to VR headsets and browsers, peer to peer",
    after_help = AFTER_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Print stats lines as JSON objects.
    #[arg(long, global = true)]
    pub json: bool,
    /// More logging on stderr (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream a 360 camera, a file or the test card.
    Send(Box<SendArgs>),
    /// Watch a stream by its code.
    View(ViewArgs),
    /// Run a rendezvous server (rooms, signalling, relay; with --http also browser viewers).
    Rendezvous(Box<RendezvousArgs>),
    /// Test card, rendezvous and viewer in one process on this machine.
    Demo(DemoArgs),
}

/// `inclubit rendezvous` reads this when present, as `inclubit-rendezvous` does.
pub const RENDEZVOUS_CONFIG: &str = "/etc/inclubit/rendezvous.toml";

/// What the command line asks for.
pub enum Parsed {
    Run(Box<Cli>),
    /// `--print-config`: the settings in effect, as TOML.
    PrintConfig(String),
}

/// Parses the command line with the config file of `send` or `rendezvous` applied: `--config`,
/// else `~/.config/inclubit/send.toml` or `/etc/inclubit/rendezvous.toml` when present.
/// clap's own errors exit as clap does.
pub fn parse(args: Vec<std::ffi::OsString>) -> Result<Parsed, ConfigError> {
    use clap::{CommandFactory, FromArgMatches};
    let probe = Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(&args)
        .ok();
    let sub = probe
        .as_ref()
        .and_then(|m| m.subcommand_name())
        .map(str::to_string);
    let default = match sub.as_deref() {
        Some("send") => inclubit_rendezvous::state::config_dir().map(|d| d.join("send.toml")),
        Some("rendezvous") => Some(RENDEZVOUS_CONFIG.into()),
        _ => None,
    };
    let with_file = matches!(sub.as_deref(), Some("send" | "rendezvous"));
    let (cmd, m) = if with_file {
        config::get_matches(Cli::command(), args, sub.as_deref(), default)?
    } else {
        let cmd = Cli::command();
        let m = cmd.clone().get_matches_from(args);
        (cmd, m)
    };
    let cli = Cli::from_arg_matches(&m).unwrap_or_else(|e| e.exit());
    let print = match &cli.command {
        Command::Send(a) => a.config.print_config,
        Command::Rendezvous(a) => a.config.print_config,
        _ => false,
    };
    if let (true, Some(name)) = (print, sub.as_deref()) {
        if let (Some(sc), Some(sm)) = (cmd.find_subcommand(name), m.subcommand_matches(name)) {
            return Ok(Parsed::PrintConfig(config::render(sc, sm)));
        }
    }
    Ok(Parsed::Run(Box::new(cli)))
}

/// `WIDTHxHEIGHT`.
pub fn parse_eye_scale(s: &str) -> Result<f32, String> {
    s.parse::<f32>()
        .ok()
        .filter(|v| (0.25..=2.0).contains(v))
        .ok_or_else(|| format!("`{s}` is not an eye scale from 0.25 to 2"))
}

pub fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("`{s}` is not a size like 1920x960"))?;
    let p = |v: &str| {
        v.parse::<u32>()
            .ok()
            .filter(|n| (16..=8192).contains(n))
            .ok_or_else(|| format!("`{s}` is not a size like 1920x960 (16..8192)"))
    };
    Ok((p(w)?, p(h)?))
}

/// `8M`, `2500k` or bits per second.
pub fn parse_bitrate(s: &str) -> Result<u32, String> {
    let err = || format!("`{s}` is not a bitrate like 8M or 2500k");
    let (num, mul) = match s.chars().last() {
        Some('M' | 'm') => (&s[..s.len() - 1], 1_000_000.0),
        Some('k' | 'K') => (&s[..s.len() - 1], 1_000.0),
        _ => (s, 1.0),
    };
    let v: f64 = num.parse().map_err(|_| err())?;
    let bps = v * mul;
    if (50_000.0..=500_000_000.0).contains(&bps) {
        Ok(bps as u32)
    } else {
        Err(err())
    }
}

fn parse_projection(s: &str) -> Result<Projection, String> {
    match s {
        "equirect" | "mono" => Ok(Projection::EquirectMono),
        "equirect-tb" | "stereo-tb" => Ok(Projection::EquirectStereoTopBottom),
        "dual-fisheye" | "fisheye" => Ok(Projection::DualFisheye),
        _ => Err(format!(
            "unknown projection `{s}`: equirect, equirect-tb or dual-fisheye"
        )),
    }
}

/// `X,Y` as two numbers.
fn parse_pair(s: &str) -> Result<[f32; 2], String> {
    let (a, b) = s
        .split_once(',')
        .ok_or_else(|| format!("`{s}` is not a pair like 0.5,0.5"))?;
    let n = |v: &str| {
        v.trim()
            .parse::<f32>()
            .map_err(|_| format!("`{v}` is not a number"))
    };
    Ok([n(a)?, n(b)?])
}

fn parse_code(s: &str) -> Result<PairingCode, String> {
    s.parse::<PairingCode>().map_err(|e| e.to_string())
}

#[derive(Debug, Args)]
pub struct SendArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// testcard, file:PATH or camera:/dev/videoN
    #[arg(long, default_value = "testcard")]
    pub source: SourceSpec,
    /// Output size, WIDTHxHEIGHT (2:1 for equirect). Default: the source's own (test card 1920x960).
    #[arg(long, value_parser = parse_size)]
    pub size: Option<(u32, u32)>,
    /// Frames per second (test card and camera; files keep their own rate).
    #[arg(long, default_value_t = 30.0)]
    pub fps: f64,
    /// Video bitrate, e.g. 8M. Default: about 0.1 bit per pixel.
    #[arg(long, value_parser = parse_bitrate)]
    pub bitrate: Option<u32>,
    /// Ask the camera for MJPEG (higher sizes and rates over USB 2).
    #[arg(long)]
    pub mjpeg: bool,
    /// equirect, equirect-tb (stereo, left eye on top) or dual-fisheye (two circles side by
    /// side, front lens left, as 360 cameras give in webcam mode)
    #[arg(long, default_value = "equirect", value_parser = parse_projection)]
    pub projection: Projection,
    /// Dual fisheye: one lens's field of view in degrees.
    #[arg(long, default_value_t = 195.0, value_name = "DEG")]
    pub lens_fov: f32,
    /// Dual fisheye: circle centre in its half, as fractions of the half's width and height.
    #[arg(long, default_value = "0.5,0.5", value_parser = parse_pair, value_name = "X,Y")]
    pub lens_centre: [f32; 2],
    /// Dual fisheye: circle radius as a fraction of the picture height.
    #[arg(long, default_value_t = 0.5, value_name = "R")]
    pub lens_radius: f32,
    /// Turn the scene so viewers start facing the right way: what the camera saw this many
    /// degrees to the right is straight ahead.
    #[arg(
        long,
        default_value_t = 0.0,
        allow_negative_numbers = true,
        value_name = "DEG"
    )]
    pub yaw: f32,
    /// Horizon correction: tilt the scene up (positive) or down, degrees.
    #[arg(
        long,
        default_value_t = 0.0,
        allow_negative_numbers = true,
        value_name = "DEG"
    )]
    pub pitch: f32,
    /// Horizon correction: roll the scene about the forward axis, degrees.
    #[arg(
        long,
        default_value_t = 0.0,
        allow_negative_numbers = true,
        value_name = "DEG"
    )]
    pub roll: f32,
    /// Port of the embedded rendezvous when --rendezvous is not given.
    #[arg(long, default_value_t = 7000)]
    pub rendezvous_port: u16,
    /// Frames older than this (ms) are dropped for a viewer rather than queued.
    #[arg(long, default_value_t = 250)]
    pub latency_budget_ms: u64,
    /// Stop after this many frames.
    #[arg(long)]
    pub frames: Option<u64>,
    /// Keep this code from an earlier run (its ticket is kept on this machine), so viewers'
    /// links and pages keep working across a restart of the sender.
    #[arg(long, value_parser = parse_code, value_name = "CODE")]
    pub code: Option<PairingCode>,
    #[command(flatten)]
    pub net: NetArgs,
    /// Serve browser viewers from this PC (WebRTC bridge and viewer page) on ADDR
    /// (default 0.0.0.0:8080): a LAN needs no server, and the video stays on this PC.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "0.0.0.0:8080")]
    pub web: Option<SocketAddr>,
    #[command(flatten)]
    pub web_opts: WebArgs,
    /// Also write the stream to FILE (.mkv or .mp4) as encoded, no re-encoding, with 360
    /// metadata for players.
    #[arg(long, value_name = "FILE")]
    pub record: Option<std::path::PathBuf>,
    /// Serve Prometheus metrics (per viewer: path, RTT, bitrate, frames sent and skipped) at
    /// http://ADDR/metrics, and /healthz.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
}

impl SendArgs {
    pub fn latency_budget(&self) -> Duration {
        Duration::from_millis(self.latency_budget_ms)
    }
}

#[derive(Debug, Args)]
pub struct ViewArgs {
    /// The code the sender printed, e.g. K7F-Q2M-4X9P. The rendezvous learns only its first
    /// two parts; the third pairs this viewer with the sender end to end.
    #[arg(value_parser = parse_code)]
    pub code: PairingCode,
    #[command(flatten)]
    pub display: DisplayArgs,
    /// Stop after this many frames.
    #[arg(long)]
    pub frames: Option<u64>,
    /// Offscreen render size for --headless.
    #[arg(long, default_value = "1280x720", value_parser = parse_size)]
    pub render_size: (u32, u32),
    /// Check each frame's test-card barcode (sender on --source testcard): proves the whole
    /// path end to end; counts show in the stats line.
    #[arg(long)]
    pub verify: bool,
    /// When the sender is lost (not when it ends the stream), keep joining its code for this
    /// many seconds: a sender restarted with `send --code` comes back on screen. 0: exit at once.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub rejoin: u64,
    /// Ask the sender for at most this bitrate, e.g. 4M on a metered link (it still adapts
    /// below it to what the path carries).
    #[arg(long, value_parser = parse_bitrate)]
    pub max_bitrate: Option<u32>,
    #[command(flatten)]
    pub net: NetArgs,
}

/// Where a viewer shows the stream: the headset, a window, or offscreen. Shared by `view` and
/// `demo`.
#[derive(Debug, Args)]
pub struct DisplayArgs {
    /// Render offscreen and print stats (no headset, no window).
    #[arg(long, conflicts_with = "xr")]
    pub headless: bool,
    /// Require a headset (OpenXR): fail instead of opening a desktop window.
    #[arg(long, conflicts_with = "window")]
    pub xr: bool,
    /// The desktop window, without looking for a headset.
    #[arg(long)]
    pub window: bool,
    /// Headset eye images at this share of the runtime's recommended size (0.25 to 2): below 1
    /// keeps the display rate on a GPU too slow for full size (the runtime scales them up).
    #[arg(long, default_value_t = 1.0, value_parser = parse_eye_scale)]
    pub eye_scale: f32,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub display: DisplayArgs,
    /// Stop after this many frames (default: run until Ctrl-C).
    #[arg(long)]
    pub frames: Option<u64>,
    /// Test card size.
    #[arg(long, default_value = "1920x960", value_parser = parse_size)]
    pub size: (u32, u32),
}

#[derive(Debug, Args)]
pub struct RendezvousArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Also serve browser viewers (`/r/CODE`), WHEP and the download page on ADDR, as
    /// `inclubit-rendezvous` does by default.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    #[command(flatten)]
    pub web: WebArgs,
}

/// Network flags shared by `send`, `view` and `demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct NetArgs {
    /// Rendezvous server, HOST:PORT. `send` without it runs its own on --rendezvous-port.
    #[arg(long, value_name = "HOST:PORT")]
    pub rendezvous: Option<String>,
    /// Local address for the media socket ([::]:0: any port, every interface, IPv6 and IPv4).
    #[arg(long, default_value = "[::]:0", value_name = "ADDR")]
    pub bind: SocketAddr,
    /// Carry media through the rendezvous relay only.
    #[arg(long, conflicts_with = "force_direct")]
    pub force_relay: bool,
    /// Never use the relay: fail if the sender cannot be reached directly.
    #[arg(long)]
    pub force_direct: bool,
    /// Seconds of hole punching before settling on the relay (punching resumes later, and
    /// the stream moves to a direct path as soon as one opens).
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub punch_timeout: f64,
    /// Do not ask the router to map the media port (NAT-PMP).
    #[arg(long)]
    pub no_upnp: bool,
}

impl NetArgs {
    pub fn punch(&self) -> punch::PunchConfig {
        punch::PunchConfig {
            timeout: std::time::Duration::from_secs_f64(self.punch_timeout.clamp(0.1, 3600.0)),
            ..Default::default()
        }
    }

    pub fn path_policy(&self) -> PathPolicy {
        if self.force_relay {
            PathPolicy::RelayOnly
        } else if self.force_direct {
            PathPolicy::DirectOnly
        } else {
            PathPolicy::Any
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_bitrates_codes() {
        assert_eq!(parse_size("1920x960"), Ok((1920, 960)));
        assert!(parse_size("1920").is_err());
        assert!(parse_size("0x0").is_err());
        assert_eq!(parse_bitrate("8M"), Ok(8_000_000));
        assert_eq!(parse_bitrate("2500k"), Ok(2_500_000));
        assert!(parse_bitrate("fast").is_err());
        assert!(parse_code("K7F-Q2M-4X9P").is_ok());
        assert!(parse_code("hello").is_err());
    }

    #[test]
    fn network_flags_are_shared() {
        let c = Cli::try_parse_from([
            "inclubit",
            "view",
            "--rendezvous",
            "h:7000",
            "--bind",
            "127.0.0.1:0",
            "K7F-Q2M-4X9P",
        ])
        .unwrap();
        let Command::View(v) = c.command else {
            panic!()
        };
        assert_eq!(v.net.rendezvous.as_deref(), Some("h:7000"));
        let c = Cli::try_parse_from(["inclubit", "send", "--rendezvous", "h", "--json"]).unwrap();
        assert!(c.json);
    }
}
