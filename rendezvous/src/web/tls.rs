//! HTTPS: the admin's certificate (PEM files) or a self-signed one for a LAN.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0} holds no certificate")]
    NoCert(PathBuf),
    #[error("{0} holds no private key")]
    NoKey(PathBuf),
    #[error("TLS setup: {0}")]
    Rustls(String),
}

/// The certificate and key in PEM files, ready to serve (and to swap in on SIGHUP).
pub fn certified_from_pem(
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
    let (certs, key) = read_pem(cert, key)?;
    let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(certs, signer)))
}

/// A server config from PEM files.
pub fn from_pem(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (certs, key) = read_pem(cert, key)?;
    config(certs, key)
}

type Pem = (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
);

fn read_pem(cert: &Path, key: &Path) -> Result<Pem, TlsError> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| TlsError::Read(p.into(), e));
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Read(cert.into(), e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(cert.into()));
    }
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| TlsError::Read(key.into(), e))?
        .ok_or_else(|| TlsError::NoKey(key.into()))?;
    Ok((certs, key))
}

/// (not before, not after) of the first certificate in a PEM file.
pub fn leaf_validity(cert: &Path) -> Option<(std::time::SystemTime, std::time::SystemTime)> {
    let pem = std::fs::read(cert).ok()?;
    let leaf = rustls_pemfile::certs(&mut &pem[..]).next()?.ok()?;
    super::acme::validity(&leaf)
}

/// A self-signed certificate for `localhost` and these addresses. With a state directory it is
/// kept there and used again while it names every current address, so browsers that accepted
/// it once do not warn again after a restart.
pub fn self_signed(
    ips: &[IpAddr],
    state: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut names = vec!["localhost".to_string()];
    names.extend(ips.iter().map(|ip| ip.to_string()));
    let files = state.map(|d| {
        (
            d.join("self-signed-cert.pem"),
            d.join("self-signed-key.pem"),
            d.join("self-signed-names"),
        )
    });
    if let Some((cert, key, kept)) = &files {
        let covered = std::fs::read_to_string(kept)
            .is_ok_and(|k| names.iter().all(|n| k.lines().any(|l| l == n)));
        if covered {
            match from_pem(cert, key) {
                Ok(cfg) => return Ok(cfg),
                Err(e) => tracing::warn!("{e}; making a new self-signed certificate"),
            }
        }
    }
    let ck = rcgen::generate_simple_self_signed(names.clone())
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    if let Some((cert, key, kept)) = &files {
        let saved = crate::state::write_private(cert, ck.cert.pem().as_bytes())
            .and_then(|_| {
                crate::state::write_private(key, ck.signing_key.serialize_pem().as_bytes())
            })
            .and_then(|_| crate::state::write_private(kept, names.join("\n").as_bytes()));
        if let Err(e) = saved {
            tracing::warn!("{e}; browsers will warn again after a restart");
        }
    }
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    config(vec![ck.cert.der().clone()], key)
}

fn config(
    certs: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_empty_pem_files_say_which() {
        let dir = std::env::temp_dir().join(format!("inclubit-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, b"").unwrap();
        let missing = dir.join("missing.pem");
        assert!(matches!(from_pem(&missing, &empty), Err(TlsError::Read(p, _)) if p == missing));
        assert!(matches!(from_pem(&empty, &empty), Err(TlsError::NoCert(p)) if p == empty));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn self_signed_config_builds() {
        let cfg = self_signed(&["192.0.2.1".parse().unwrap()], None).unwrap();
        assert_eq!(cfg.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn a_kept_self_signed_certificate_is_used_again_until_an_address_is_new() {
        let dir = std::env::temp_dir().join(format!("inclubit-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let pem = || std::fs::read(dir.join("self-signed-cert.pem")).unwrap();
        self_signed(&[a, b], Some(&dir)).unwrap();
        let first = pem();
        // A restart: the same certificate (and a subset of the addresses is still covered).
        self_signed(&[b, a], Some(&dir)).unwrap();
        self_signed(&[a], Some(&dir)).unwrap();
        assert_eq!(pem(), first);
        // A new address: a new certificate that names it.
        self_signed(&["198.51.100.7".parse().unwrap()], Some(&dir)).unwrap();
        assert_ne!(pem(), first);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
