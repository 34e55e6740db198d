//! HTTP(S): the browser viewer page at `/r/CODE`, WHEP at `/whep/CODE`, and the download page at
//! `/`. Static files are compiled in; only the downloads directory is read at run time.

pub mod acme;
mod downloads;
pub mod limits;
pub mod tls;
mod whep;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use self::limits::{Connections, OfferLimiter, WebLimits};

use crate::bridge::{Bridge, BridgeConfig, BridgeError};
use crate::code::{PairingCode, RoomCode};

const VIEWER_HTML: &str = include_str!("../../../web/viewer.html");
const VIEWER_JS: &str = include_str!("../../../web/viewer.js");
const INDEX_HTML: &str = include_str!("../../../web/index.html");

/// Flags shared by `inclubit-rendezvous` and `inclubit send --web`.
#[derive(Debug, Clone, clap::Args)]
pub struct WebArgs {
    /// TLS certificate chain (PEM). With --tls-key the web server speaks HTTPS.
    #[arg(long, requires = "tls_key", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// HTTPS with a self-signed certificate (a LAN without a domain; browsers warn once).
    #[arg(long, conflicts_with = "tls_cert")]
    pub self_signed: bool,
    /// HTTPS with a certificate for DOMAIN from an ACME CA (Let's Encrypt), obtained and
    /// renewed automatically (TLS-ALPN-01 on the HTTPS port: the CA must reach it on 443);
    /// repeatable. Cached in the state directory.
    #[arg(long, value_name = "DOMAIN", conflicts_with_all = ["tls_cert", "self_signed"])]
    pub acme: Vec<String>,
    /// Contact address the CA warns about expiring certificates.
    #[arg(long, value_name = "EMAIL", requires = "acme")]
    pub acme_email: Option<String>,
    /// The ACME directory (default: Let's Encrypt).
    #[arg(long, value_name = "URL", requires = "acme", default_value = acme::LETS_ENCRYPT)]
    pub acme_directory: String,
    /// Trust this CA certificate (PEM) for the ACME directory's own HTTPS (a test CA).
    #[arg(long, value_name = "PEM", requires = "acme")]
    pub acme_root: Option<PathBuf>,
    /// Directory whose files the download page lists (with size and SHA-256).
    #[arg(long, value_name = "DIR")]
    pub downloads: Option<PathBuf>,
    /// UDP address browsers send WebRTC media to (one port for all of them).
    #[arg(long, default_value = "0.0.0.0:0", value_name = "ADDR")]
    pub webrtc: SocketAddr,
    /// Extra address to announce to browsers (a server behind 1:1 NAT); repeatable.
    #[arg(long, value_name = "IP")]
    pub public_ip: Vec<IpAddr>,
    /// Where a self-signed certificate is kept (set by the program, not a flag).
    #[arg(skip)]
    pub state_dir: Option<PathBuf>,
    /// The bridge runs on the camera PC (`send --web`): browsers pair with the sender's own
    /// process, end to end. Otherwise the server's bridge is trusted, and the page says so.
    #[arg(skip)]
    pub on_camera: bool,
}

impl Default for WebArgs {
    /// Plain HTTP, no downloads, WebRTC on any port of every interface.
    fn default() -> Self {
        Self {
            tls_cert: None,
            tls_key: None,
            self_signed: false,
            acme: Vec::new(),
            acme_email: None,
            acme_directory: acme::LETS_ENCRYPT.into(),
            acme_root: None,
            downloads: None,
            webrtc: SocketAddr::from(([0, 0, 0, 0], 0)),
            public_ip: Vec::new(),
            state_dir: None,
            on_camera: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("cannot listen for HTTP on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    #[error("downloads directory {0}: {1}")]
    Downloads(PathBuf, std::io::Error),
    #[error(transparent)]
    Acme(#[from] acme::AcmeError),
    #[error("--acme needs a state directory (--state-dir) for its account and certificates")]
    AcmeNoState,
}

/// What the handlers share.
pub struct WebState {
    pub bridge: Option<Arc<Bridge>>,
    pub downloads: Option<downloads::Downloads>,
    /// The rendezvous's UDP port, for the commands on the download page.
    pub rendezvous_port: u16,
    pub limits: WebLimits,
    offers: std::sync::Mutex<OfferLimiter>,
    /// The bridge runs on the camera PC (told to pages: end to end, or this server sees it).
    pub on_camera: bool,
    /// What `/metrics` shows; the UDP server publishes its rooms here too.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// The address a request came from (set by the server for every request).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

impl WebState {
    pub fn new(
        bridge: Option<Arc<Bridge>>,
        downloads: Option<PathBuf>,
        rendezvous_port: u16,
    ) -> Result<Self, WebError> {
        let downloads = match downloads {
            Some(dir) => {
                Some(downloads::Downloads::open(&dir).map_err(|e| WebError::Downloads(dir, e))?)
            }
            None => None,
        };
        let limits = WebLimits::default();
        Ok(Self {
            bridge,
            downloads,
            rendezvous_port,
            limits,
            offers: std::sync::Mutex::new(OfferLimiter::new(limits)),
            on_camera: false,
            metrics: Arc::default(),
        })
    }

    /// The same with other limits.
    pub fn with_limits(mut self, limits: WebLimits) -> Self {
        self.limits = limits;
        self.offers = std::sync::Mutex::new(OfferLimiter::new(limits));
        self
    }
}

/// A small icon, so no page load logs a 404 for it.
async fn favicon() -> Response {
    const ICON: &str = "<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'>\
        <circle cx='8' cy='8' r='7' fill='none' stroke='#3a8' stroke-width='2'/>\
        <circle cx='8' cy='8' r='2.5' fill='#3a8'/></svg>";
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        ICON,
    )
        .into_response()
}

pub fn router(state: Arc<WebState>) -> Router {
    Router::new()
        .route("/", get(downloads::index))
        .route("/dl/{name}", get(downloads::file))
        .route("/r/{code}", get(viewer_page))
        .route("/viewer.js", get(viewer_js))
        .route("/favicon.ico", get(favicon))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/whep/{code}", post(whep::offer).options(whep::options))
        .route(
            "/whep/{code}/{session}",
            axum::routing::delete(whep::delete)
                .patch(whep::patch)
                .options(whep::options),
        )
        .fallback(not_found)
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            count_refusal,
        ))
        .with_state(state)
}

/// Prometheus text format.
async fn metrics(axum::extract::State(state): axum::extract::State<Arc<WebState>>) -> Response {
    let bridge = match &state.bridge {
        Some(b) => Some(b.totals().await),
        None => None,
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.encode(bridge),
    )
        .into_response()
}

/// Up and serving (for load balancers and `systemctl`-style checks).
async fn healthz() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "ok\n",
    )
        .into_response()
}

/// Why a request was refused, on the responses of [`json_error`].
#[derive(Debug, Clone, Copy)]
struct Refusal(&'static str);

async fn count_refusal(
    axum::extract::State(state): axum::extract::State<Arc<WebState>>,
    r: Response,
) -> Response {
    if let Some(Refusal(reason)) = r.extensions().get::<Refusal>() {
        state.metrics.refused_http(reason);
    }
    r
}

/// A running web server.
pub struct WebServer {
    pub local_addr: SocketAddr,
    pub https: bool,
    task: JoinHandle<()>,
}

impl WebServer {
    /// Serves `state` on `addr`, over TLS when `tls` is given.
    pub async fn start(
        addr: SocketAddr,
        state: Arc<WebState>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<Self, WebError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| WebError::Bind(addr, e))?;
        let local_addr = listener.local_addr().map_err(|e| WebError::Bind(addr, e))?;
        let limits = state.limits;
        let metrics = state.metrics.clone();
        let app = router(state);
        let https = tls.is_some();
        let task = tokio::spawn(serve(
            listener,
            app,
            tls.map(TlsAcceptor::from),
            limits,
            metrics,
        ));
        tracing::info!(%local_addr, https, "web server listening");
        Ok(Self {
            local_addr,
            https,
            task,
        })
    }

    /// What the rendezvous tells senders about this server.
    pub fn side(&self) -> crate::wire::signal::WebSide {
        crate::wire::signal::WebSide {
            port: self.local_addr.port(),
            https: self.https,
        }
    }

    /// The viewer link for `code`, on `host` (an address or name browsers can reach).
    pub fn room_url(&self, host: &str, code: PairingCode) -> String {
        let scheme = if self.https { "https" } else { "http" };
        let host = match host.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
            _ => host.to_string(),
        };
        format!("{scheme}://{host}:{}/r/{code}", self.local_addr.port())
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts connections within `limits` and serves each over HTTP/1.1 (in TLS with `tls`).
async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    limits: WebLimits,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let conns = Connections::new(limits);
    let mut refused = crate::abuse::LogThrottle::new(std::time::Duration::from_secs(10));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors, say: a moment for connections to close.
                tracing::debug!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let Some(slot) = conns.admit(peer.ip()) else {
            metrics.refused_http("connection_limit");
            if let Some(held) = refused.allow(std::time::Instant::now()) {
                tracing::warn!(
                    last = %peer.ip(),
                    more = held,
                    open = conns.open(),
                    "HTTP connection refused: a client or the server is at its connection limit"
                );
            }
            continue;
        };
        // Answers are small: don't let Nagle hold them back.
        let _ = tcp.set_nodelay(true);
        let (app, tls) = (app.clone(), tls.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let service = TowerToHyperService::new(app.layer(axum::Extension(ClientAddr(peer))));
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let connection = async {
                match tls {
                    None => http.serve_connection(TokioIo::new(tcp), service).await,
                    Some(acceptor) => {
                        let stream =
                            match tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp))
                                .await
                            {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                                    return Ok(());
                                }
                                Err(_) => return Ok(()),
                            };
                        // An ACME validation only looks at the certificate (RFC 8737).
                        if stream.get_ref().1.alpn_protocol() == Some(acme::ACME_TLS_ALPN) {
                            return Ok(());
                        }
                        http.serve_connection(TokioIo::new(stream), service)
                            .with_upgrades()
                            .await
                    }
                }
            };
            match tokio::time::timeout(limits.max_lifetime, connection).await {
                Ok(Err(e)) => tracing::debug!(%peer, "HTTP connection: {e}"),
                Err(_) => tracing::debug!(%peer, "HTTP connection closed at its maximum age"),
                Ok(Ok(())) => {}
            }
        });
    }
}

/// The browser side of a server: bridge + web server, as both binaries run it.
pub struct WebService {
    pub server: WebServer,
    pub bridge: Arc<Bridge>,
    /// Served at `/metrics`; hand it to the UDP server ([`crate::server::Server::set_metrics`]).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The ACME task, with `--acme`.
    acme: Option<tokio::task::AbortHandle>,
    /// With `--tls-cert`: the files and where they are served from.
    pem: Option<(PathBuf, PathBuf, Arc<acme::CertStore>)>,
}

impl Drop for WebService {
    fn drop(&mut self) {
        if let Some(a) = &self.acme {
            a.abort();
        }
    }
}

impl WebService {
    /// Serves HTTP(S) on `http` with a bridge that joins rooms through `rendezvous`.
    pub async fn start(
        http: SocketAddr,
        args: &WebArgs,
        rendezvous: SocketAddr,
    ) -> Result<Self, WebError> {
        let mut expiry = None;
        let mut acme = None;
        let mut pem = None;
        let tls = match (&args.tls_cert, &args.tls_key, args.self_signed) {
            _ if !args.acme.is_empty() => {
                let cache = args.state_dir.as_ref().ok_or(WebError::AcmeNoState)?;
                let store = Arc::new(acme::CertStore::default());
                acme = Some((
                    acme::AcmeSettings {
                        domains: args.acme.clone(),
                        email: args.acme_email.clone(),
                        directory: args.acme_directory.clone(),
                        directory_root: args.acme_root.clone(),
                        cache: cache.join("acme"),
                    },
                    store.clone(),
                ));
                Some(acme::server_config(store)?)
            }
            (Some(c), Some(k), _) => {
                expiry = tls::leaf_validity(c).map(|(_, until)| until);
                let store = Arc::new(acme::CertStore::default());
                store.install(tls::certified_from_pem(c, k)?);
                pem = Some((c.clone(), k.clone(), store.clone()));
                Some(acme::server_config(store)?)
            }
            (_, _, true) => {
                let ips: Vec<IpAddr> = if_addrs::get_if_addrs()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|i| i.ip())
                    .chain(args.public_ip.iter().copied())
                    .collect();
                Some(tls::self_signed(&ips, args.state_dir.as_deref())?)
            }
            _ => None,
        };
        // An embedded or co-located rendezvous bound to every interface is reached on loopback.
        let rendezvous = if rendezvous.ip().is_unspecified() {
            SocketAddr::new([127, 0, 0, 1].into(), rendezvous.port())
        } else {
            rendezvous
        };
        let bridge = Arc::new(
            Bridge::start(BridgeConfig {
                rendezvous,
                bind: args.webrtc,
                announce: args.public_ip.clone(),
            })
            .await?,
        );
        let mut state = WebState::new(
            Some(bridge.clone()),
            args.downloads.clone(),
            rendezvous.port(),
        )?;
        state.on_camera = args.on_camera;
        let state = Arc::new(state);
        let metrics = state.metrics.clone();
        metrics.set_cert_expiry(expiry);
        let server = WebServer::start(http, state, tls).await?;
        let acme = acme.map(|(settings, store)| {
            tokio::spawn(acme::run(settings, store, metrics.clone())).abort_handle()
        });
        Ok(Self {
            server,
            bridge,
            metrics,
            acme,
            pem,
        })
    }

    /// SIGHUP: reads the PEM certificate and key again and serves them from the next
    /// connection on (an ACME certificate renews by itself). On error the old one stays.
    pub fn reload_certificate(&self) -> Result<bool, WebError> {
        let Some((cert, key, store)) = &self.pem else {
            return Ok(false);
        };
        store.install(tls::certified_from_pem(cert, key)?);
        self.metrics
            .set_cert_expiry(tls::leaf_validity(cert).map(|(_, until)| until));
        Ok(true)
    }
}

fn html(body: String, cache: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, cache),
        ],
        body,
    )
        .into_response()
}

async fn viewer_page(Path(code): Path<String>) -> Response {
    // A room code without its secret still gets the page, which then says what is missing.
    if code.parse::<PairingCode>().is_err() && code.parse::<RoomCode>().is_err() {
        return not_found().await;
    }
    html(VIEWER_HTML.to_string(), "no-cache")
}

async fn viewer_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        VIEWER_JS,
    )
        .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "not found\n",
    )
        .into_response()
}

/// `{"error": kind, "message": text}` with `status`.
fn json_error(status: StatusCode, kind: &'static str, message: String) -> Response {
    let body = serde_json::json!({ "error": kind, "message": message }).to_string();
    let mut r = (status, body).into_response();
    r.extensions_mut().insert(Refusal(kind));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The host part of the request's `Host` header, for links and commands on pages.
fn request_host(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    // "[::1]:8080" → "[::1]", "example.org:8080" → "example.org".
    match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(':') => h.into(),
        _ => host.into(),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_loses_its_port() {
        let h = |v: &'static str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, HeaderValue::from_static(v));
            request_host(&m)
        };
        assert_eq!(h("example.org:8080"), "example.org");
        assert_eq!(h("example.org"), "example.org");
        assert_eq!(h("[::1]:8080"), "[::1]");
        assert_eq!(h("192.0.2.7:80"), "192.0.2.7");
        assert_eq!(request_host(&HeaderMap::new()), "localhost");
    }

    #[test]
    fn page_and_script_stay_small() {
        // No framework, no CDN: the whole viewer is these two files.
        let total = VIEWER_HTML.len() + VIEWER_JS.len();
        assert!(total < 20 * 1024, "viewer is {total} bytes");
        assert!(!VIEWER_HTML.contains("http://") && !VIEWER_HTML.contains("https://"));
        assert!(!VIEWER_JS.contains("http://") && !VIEWER_JS.contains("https://"));
    }

    #[test]
    fn escaping() {
        assert_eq!(
            escape("<a href=\"x\">&</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
        );
    }
}
