//! HTTPS certificates from an ACME CA (Let's Encrypt; Debian's pebble in tests), obtained and
//! renewed while the server runs.
//!
//! The challenge is TLS-ALPN-01 (RFC 8737) on the HTTPS port itself, so nothing but that port
//! needs to be open and the server needs no port 80: a connection that asks for ALPN
//! `acme-tls/1` gets the challenge certificate for its SNI name, every other one the issued
//! certificate. The ACME protocol is `instant-acme` (Tokio and rustls, aws-lc-rs like the rest
//! of the build; rustls-acme brings its own async runtime glue and a second rcgen). The account
//! and the certificate are cached in the state directory, so a restart serves at once and asks
//! the CA for nothing; a certificate is renewed when a third of its lifetime is left (as Let's
//! Encrypt advises), and failures are retried with a back-off.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::metrics::Metrics;

/// The ALPN protocol of TLS-ALPN-01 validation connections.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME: {0}")]
    Protocol(#[from] instant_acme::Error),
    #[error("ACME: {0}")]
    Other(String),
    #[error("ACME cache: {0}")]
    Cache(String),
}

#[derive(Debug, Clone)]
pub struct AcmeSettings {
    pub domains: Vec<String>,
    pub email: Option<String>,
    pub directory: String,
    /// Trust this CA (PEM) for the directory's HTTPS (a test CA such as pebble).
    pub directory_root: Option<PathBuf>,
    /// Account, certificate and key live here.
    pub cache: PathBuf,
}

/// The server's certificates: the issued one, and challenge certificates while validating.
#[derive(Debug, Default)]
pub struct CertStore {
    current: RwLock<Option<Arc<CertifiedKey>>>,
    challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let validating = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if validating {
            let name = hello.server_name()?.to_ascii_lowercase();
            return self.challenges.lock().ok()?.get(&name).cloned();
        }
        self.current.read().ok()?.clone()
    }
}

impl CertStore {
    pub fn has_certificate(&self) -> bool {
        self.current.read().is_ok_and(|c| c.is_some())
    }

    /// Serves `key` from the next handshake on.
    pub fn install(&self, key: Arc<CertifiedKey>) {
        if let Ok(mut c) = self.current.write() {
            *c = Some(key);
        }
    }

    fn set_challenge(&self, domain: &str, key: Option<Arc<CertifiedKey>>) {
        if let Ok(mut c) = self.challenges.lock() {
            match key {
                Some(k) => c.insert(domain.to_ascii_lowercase(), k),
                None => c.remove(&domain.to_ascii_lowercase()),
            };
        }
    }
}

/// The rustls config serving `store` (HTTP/1.1, and `acme-tls/1` for validation). PEM files
/// are served through a store too, so SIGHUP can swap them.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<rustls::ServerConfig>, AcmeError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AcmeError::Other(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(store);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    Ok(Arc::new(cfg))
}

/// An issued certificate: chain and key as PEM, and its validity.
struct Issued {
    chain_pem: String,
    key_pem: String,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl Issued {
    fn parse(chain_pem: String, key_pem: String) -> Result<(Self, Arc<CertifiedKey>), AcmeError> {
        let bad = |what: &str| AcmeError::Cache(format!("{what} in the issued certificate"));
        let chain: Vec<_> = rustls_pemfile::certs(&mut chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|_| bad("unreadable PEM"))?;
        let leaf = chain.first().ok_or_else(|| bad("no certificate"))?;
        let (not_before, not_after) = validity(leaf).ok_or_else(|| bad("no validity"))?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .ok()
            .flatten()
            .ok_or_else(|| bad("no key"))?;
        let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
            .map_err(|e| AcmeError::Other(e.to_string()))?;
        let certified = Arc::new(CertifiedKey::new(chain, signer));
        Ok((
            Self {
                chain_pem,
                key_pem,
                not_before,
                not_after,
            },
            certified,
        ))
    }

    /// When to renew: a third of the lifetime before it ends (counted from now at the latest,
    /// so a CA that backdates its certificates causes no renewal storm).
    fn renew_at(&self, now: SystemTime) -> SystemTime {
        let from = self.not_before.max(now.min(self.not_after));
        let life = self.not_after.duration_since(from).unwrap_or_default();
        self.not_after - life / 3
    }
}

/// (not before, not after) of a DER certificate.
pub fn validity(der: &[u8]) -> Option<(SystemTime, SystemTime)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let t = |s: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(s.max(0) as u64);
    Some((
        t(cert.validity().not_before.timestamp()),
        t(cert.validity().not_after.timestamp()),
    ))
}

/// Gets and renews the certificate for `settings.domains` into `store`, for as long as the
/// task runs. Reports the expiry to `metrics`.
pub async fn run(settings: AcmeSettings, store: Arc<CertStore>, metrics: Arc<Metrics>) {
    let mut current = match load_cached(&settings) {
        Ok(Some((issued, key))) => {
            tracing::info!(domains = ?settings.domains, "ACME: certificate from the cache");
            store.install(key);
            metrics.set_cert_expiry(Some(issued.not_after));
            Some(issued)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!("{e}; asking the CA for a new one");
            None
        }
    };
    let mut backoff = Duration::from_secs(2);
    // Renewal is planned when a certificate arrives, not recomputed while waiting.
    let mut due = current
        .as_ref()
        .map_or(SystemTime::now(), |c| c.renew_at(SystemTime::now()));
    loop {
        if let Ok(wait) = due.duration_since(SystemTime::now()) {
            tracing::info!(in_s = wait.as_secs(), "ACME: renewal due");
            tokio::time::sleep(wait).await;
        }
        match obtain(&settings, &store).await {
            Ok((issued, key)) => {
                tracing::info!(
                    domains = ?settings.domains,
                    valid_s = issued
                        .not_after
                        .duration_since(SystemTime::now())
                        .unwrap_or_default()
                        .as_secs(),
                    "ACME: certificate issued"
                );
                if let Err(e) = save(&settings.cache, &issued, &settings.domains) {
                    tracing::warn!("{e}; the next start asks the CA again");
                }
                store.install(key);
                metrics.set_cert_expiry(Some(issued.not_after));
                due = issued.renew_at(SystemTime::now());
                current = Some(issued);
                backoff = Duration::from_secs(2);
            }
            Err(e) => {
                // Keep serving what there is; try again later, not too often (CA rate limits).
                let left = current
                    .as_ref()
                    .and_then(|c| c.not_after.duration_since(SystemTime::now()).ok())
                    .unwrap_or(Duration::MAX);
                let wait = backoff.min(left / 4).max(Duration::from_secs(1));
                tracing::warn!(
                    "cannot get a certificate for {} from {}: {e}; trying again in {} s",
                    settings.domains.join(", "),
                    settings.directory,
                    wait.as_secs()
                );
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(Duration::from_secs(3600));
            }
        }
    }
}

fn cache_files(dir: &Path) -> [PathBuf; 4] {
    ["account.json", "cert.pem", "key.pem", "domains"].map(|f| dir.join(f))
}

fn load_cached(s: &AcmeSettings) -> Result<Option<(Issued, Arc<CertifiedKey>)>, AcmeError> {
    let [_, cert, key, domains] = cache_files(&s.cache);
    let (Ok(chain), Ok(key), Ok(names)) = (
        std::fs::read_to_string(&cert),
        std::fs::read_to_string(&key),
        std::fs::read_to_string(&domains),
    ) else {
        return Ok(None);
    };
    if names.lines().collect::<Vec<_>>() != s.domains {
        return Ok(None);
    }
    let (issued, certified) = Issued::parse(chain, key)?;
    if issued.not_after <= SystemTime::now() {
        return Ok(None);
    }
    Ok(Some((issued, certified)))
}

fn save(dir: &Path, issued: &Issued, domains: &[String]) -> Result<(), AcmeError> {
    let [_, cert, key, names] = cache_files(dir);
    let w = |p: &Path, b: &[u8]| {
        crate::state::write_private(p, b).map_err(|e| AcmeError::Cache(e.to_string()))
    };
    w(&key, issued.key_pem.as_bytes())?;
    w(&cert, issued.chain_pem.as_bytes())?;
    w(&names, domains.join("\n").as_bytes())
}

async fn account(s: &AcmeSettings) -> Result<Account, AcmeError> {
    let builder = || match &s.directory_root {
        Some(root) => Account::builder_with_root(root),
        None => Account::builder(),
    };
    let [path, ..] = cache_files(&s.cache);
    if let Ok(text) = std::fs::read_to_string(&path) {
        match serde_json::from_str::<AccountCredentials>(&text) {
            Ok(creds) => return Ok(builder()?.from_credentials(creds).await?),
            Err(e) => tracing::warn!("{}: {e}; making a new ACME account", path.display()),
        }
    }
    let contact: Vec<String> = s.email.iter().map(|e| format!("mailto:{e}")).collect();
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, creds) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            s.directory.clone(),
            None,
        )
        .await?;
    let json = serde_json::to_vec(&creds).map_err(|e| AcmeError::Cache(e.to_string()))?;
    crate::state::write_private(&path, &json).map_err(|e| AcmeError::Cache(e.to_string()))?;
    Ok(account)
}

/// One order: TLS-ALPN-01 for each name, then a certificate for a new key.
async fn obtain(
    s: &AcmeSettings,
    store: &CertStore,
) -> Result<(Issued, Arc<CertifiedKey>), AcmeError> {
    let account = account(s).await?;
    let identifiers: Vec<Identifier> = s.domains.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut validating = Vec::new();
    let result = async {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            if authz.status != AuthorizationStatus::Pending {
                continue;
            }
            let mut challenge = authz
                .challenge(ChallengeType::TlsAlpn01)
                .ok_or_else(|| AcmeError::Other("the CA offers no tls-alpn-01 challenge".into()))?;
            let domain = challenge.identifier().to_string();
            let digest = challenge.key_authorization().digest();
            store.set_challenge(&domain, Some(challenge_cert(&domain, digest.as_ref())?));
            validating.push(domain);
            challenge.set_ready().await?;
        }
        let retries = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .timeout(Duration::from_secs(60));
        let status = order.poll_ready(&retries).await?;
        if status != OrderStatus::Ready {
            return Err(AcmeError::Other(format!(
                "the CA did not validate {:?}: order {status:?}",
                s.domains
            )));
        }
        let key = rcgen::KeyPair::generate().map_err(|e| AcmeError::Other(e.to_string()))?;
        let mut params = rcgen::CertificateParams::new(s.domains.clone())
            .map_err(|e| AcmeError::Other(e.to_string()))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .map_err(|e| AcmeError::Other(e.to_string()))?;
        order.finalize_csr(csr.der()).await?;
        let chain = order.poll_certificate(&retries).await?;
        Issued::parse(chain, key.serialize_pem())
    }
    .await;
    for d in validating {
        store.set_challenge(&d, None);
    }
    result
}

/// The self-signed certificate RFC 8737 asks for: the name, and the key authorization's digest
/// in the critical acmeIdentifier extension.
fn challenge_cert(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, AcmeError> {
    let err = |e: rcgen::Error| AcmeError::Other(e.to_string());
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()]).map_err(err)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(err)?;
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der)
        .map_err(|e| AcmeError::Other(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(not_before: u64, not_after: u64) -> Issued {
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        Issued {
            chain_pem: String::new(),
            key_pem: String::new(),
            not_before: t(not_before),
            not_after: t(not_after),
        }
    }

    #[test]
    fn renews_with_a_third_of_the_lifetime_left() {
        // Let's Encrypt's 90 days: at day 60.
        let day = 86_400;
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let i = issued(0, 90 * day);
        assert_eq!(i.renew_at(t(0)), t(60 * day));
        let i = issued(100, 130);
        assert_eq!(i.renew_at(t(100)), t(120));
        // Backdated by an hour: a third of what is left from now, not of the backdated span.
        let i = issued(0, 3600 + 90);
        assert_eq!(i.renew_at(t(3600)), t(3600 + 60));
        // Already expired: now.
        assert_eq!(i.renew_at(t(4000)), t(3690));
    }

    #[test]
    fn the_challenge_certificate_carries_the_digest_and_the_validity_reads_back() {
        let store = CertStore::default();
        let key = challenge_cert("rv.example.org", &[7u8; 32]).unwrap();
        let der = key.cert[0].as_ref();
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        // An OCTET STRING of the 32-byte digest.
        assert_eq!(&ext.value[..2], &[0x04, 32]);
        assert_eq!(&ext.value[2..], &[7u8; 32]);
        assert!(validity(der).is_some());
        store.set_challenge("RV.example.org", Some(key));
        assert!(store
            .challenges
            .lock()
            .unwrap()
            .contains_key("rv.example.org"));
        assert!(!store.has_certificate());
    }
}
