//! The standalone rendezvous for an admin's VPS: no ffmpeg, no GPU.

use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "inclubit rendezvous: rooms and signalling for inclubit peers"
)]
struct Cli {
    #[command(flatten)]
    server: inclubit_rendezvous::server::ServerArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    inclubit_rendezvous::server::run(cli.server.config()).await?;
    Ok(())
}
