//! The standalone rendezvous for an admin's VPS: rooms, relay, the browser bridge, the viewer
//! page and the download page. No ffmpeg, no GPU.

use std::net::SocketAddr;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser};
use inclubit_rendezvous::config::{self, ConfigArgs};
use inclubit_rendezvous::server::{Server, ServerArgs};
use inclubit_rendezvous::web::{WebArgs, WebService};

/// Read when present, unless --config names another file.
const DEFAULT_CONFIG: &str = "/etc/inclubit/rendezvous.toml";

#[derive(Parser)]
#[command(
    version,
    about = "inclubit rendezvous: rooms, signalling and relay for inclubit peers, and the web \
             side (browser viewers over WebRTC, the download page)"
)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(flatten)]
    server: ServerArgs,
    /// HTTP(S) address for browser viewers (`/r/CODE`), WHEP and the download page.
    #[arg(long, default_value = "0.0.0.0:8080", value_name = "ADDR")]
    http: SocketAddr,
    /// No web side at all: rooms and relay only.
    #[arg(long)]
    no_http: bool,
    #[command(flatten)]
    web: WebArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let (cmd, matches) = config::get_matches(
        Cli::command(),
        std::env::args_os().collect(),
        None,
        Some(DEFAULT_CONFIG.into()),
    )
    .unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    });
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if cli.config.print_config {
        print!("{}", config::render(&cmd, &matches));
        return Ok(());
    }
    cli.web.state_dir = cli.server.state_dir();
    let mut server = Server::bind(cli.server.config()).await?;
    let udp = server.local_addr();
    println!("rendezvous listening on udp {udp}");
    let web = if cli.no_http {
        None
    } else {
        let web = WebService::start(cli.http, &cli.web, udp)
            .await
            .context("starting the web side")?;
        server.set_web(web.server.side());
        server.set_metrics(web.metrics.clone());
        let scheme = if web.server.https { "https" } else { "http" };
        println!(
            "web listening on {scheme}://{} (viewer pages at /r/CODE)",
            web.server.local_addr
        );
        Some(web)
    };
    // SIGHUP: the same command line and config file, read again.
    let reload = || {
        let m = config::try_get_matches(
            Cli::command(),
            std::env::args_os().collect(),
            None,
            Some(DEFAULT_CONFIG.into()),
        )?;
        let cli = Cli::from_arg_matches(&m).map_err(|e| e.to_string())?;
        Ok(cli.server.config().rooms)
    };
    inclubit_rendezvous::service::run(server, web.as_ref(), reload).await?;
    Ok(())
}
