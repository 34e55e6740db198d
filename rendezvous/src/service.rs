//! The server as a system service: runs until SIGTERM or Ctrl-C, then drains (every sender and
//! viewer is told, so senders re-open their rooms when it is back); SIGHUP reloads the limits
//! from the config and the PEM certificate.

use tokio::signal::unix::{signal, SignalKind};

use crate::server::rooms::RoomsConfig;
use crate::server::{Server, ServerControl};
use crate::web::WebService;

/// How long draining may take before the server stops anyway.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves `server` (and `web`, which lives as long as this runs) until a stop signal.
/// `reload` reads the settings again for SIGHUP; an error keeps the old ones.
pub async fn run(
    mut server: Server,
    web: Option<&WebService>,
    reload: impl Fn() -> Result<RoomsConfig, String>,
) -> std::io::Result<()> {
    let control = server.control();
    let mut task = tokio::spawn(server.run());
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = hup.recv() => {
                match reload() {
                    Ok(cfg) => {
                        let _ = control.send(ServerControl::Reload(cfg));
                    }
                    Err(e) => tracing::warn!("reload: {e}; the settings stay as they were"),
                }
                match web.map(WebService::reload_certificate) {
                    Some(Ok(true)) => tracing::info!("certificate reloaded"),
                    Some(Err(e)) => tracing::warn!("reload: {e}; the certificate stays"),
                    _ => {}
                }
            }
            _ = &mut task => return Ok(()),
        }
    }
    let (done, told) = tokio::sync::oneshot::channel();
    if control.send(ServerControl::Drain(done)).is_ok() {
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, told).await;
    }
    task.abort();
    Ok(())
}
