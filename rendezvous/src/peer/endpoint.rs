//! quinn endpoint setup: self-signed identity, fingerprint-pinned client config, and a transport
//! tuned for live video (BBR, many concurrent frame streams, short idle timeout).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::wire::media::ALPN;
use crate::wire::signal::Fingerprint;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use super::socket::{Impairment, MediaSocket, SignalPort};
use super::NetError;

/// The server name in every certificate; identity comes from the pinned fingerprint.
pub const SERVER_NAME: &str = "inclubit";

/// A sender's self-signed certificate and key, made fresh each run.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Identity {
    pub fn generate() -> Result<Self, NetError> {
        let ck = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
            .map_err(|e| NetError::Tls(e.to_string()))?;
        Ok(Self {
            cert: ck.cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()),
        })
    }

    pub fn fingerprint(&self) -> Fingerprint {
        fingerprint(&self.cert)
    }
}

pub fn fingerprint(cert: &CertificateDer) -> Fingerprint {
    Sha256::digest(cert.as_ref()).into()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // Cubic collapses under random loss at video rates; BBR holds (FIELD-NOTES). Ours also
    // follows an RTT that rises mid-stream, which quinn's BBR alone does not (congestion.rs).
    t.congestion_controller_factory(Arc::new(super::congestion::LiveBbrConfig::default()));
    t.max_concurrent_uni_streams(512u32.into());
    t.stream_receive_window((16u32 << 20).into());
    t.receive_window((64u32 << 20).into());
    t.send_window(64 << 20);
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    t.max_idle_timeout(Some(Duration::from_secs(10).try_into().expect("10 s fits")));
    t.initial_rtt(Duration::from_millis(100));
    Arc::new(t)
}

/// Accepts exactly the certificate whose SHA-256 the rendezvous gave us.
#[derive(Debug)]
struct PinnedCert {
    fingerprint: Fingerprint,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if fingerprint(end_entity) == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the sender's certificate does not match the one announced at the rendezvous"
                    .into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client config that trusts only the certificate with `fingerprint`.
pub fn client_config(fingerprint: Fingerprint) -> Result<quinn::ClientConfig, NetError> {
    let provider = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCert {
            fingerprint,
            provider,
        }))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| NetError::Tls(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(transport());
    Ok(cfg)
}

fn server_config(id: &Identity) -> Result<quinn::ServerConfig, NetError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(
            vec![id.cert.clone()],
            PrivateKeyDer::Pkcs8(id.key.clone_key()),
        )
        .map_err(|e| NetError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let quic = QuicServerConfig::try_from(tls).map_err(|e| NetError::Tls(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(transport());
    Ok(cfg)
}

/// A peer's quinn endpoint on the shared media socket, plus that socket's signalling port.
pub struct PeerEndpoint {
    pub endpoint: quinn::Endpoint,
    pub signal: SignalPort,
    pub local_addr: SocketAddr,
    pub socket: Arc<MediaSocket>,
}

impl PeerEndpoint {
    /// Binds the media socket. With an identity the endpoint also accepts connections (sender).
    pub fn bind(
        addr: SocketAddr,
        identity: Option<&Identity>,
        impairment: Option<Arc<dyn Impairment>>,
    ) -> Result<Self, NetError> {
        let (socket, signal) = MediaSocket::bind(addr, impairment)
            .map_err(|source| NetError::Bind { addr, source })?;
        let mut ep_cfg = quinn::EndpointConfig::default();
        // Signalling shares the socket and is told apart by QUIC's fixed bit: keep it set.
        ep_cfg.grease_quic_bit(false);
        let server = identity.map(server_config).transpose()?;
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            ep_cfg,
            server,
            socket.clone(),
            Arc::new(quinn::TokioRuntime),
        )?;
        let local_addr = signal.local_addr()?;
        Ok(Self {
            endpoint,
            signal,
            local_addr,
            socket,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn dial(server: &PeerEndpoint, fp: Fingerprint) -> Result<quinn::Connection, String> {
        let client = PeerEndpoint::bind("127.0.0.1:0".parse().unwrap(), None, None).unwrap();
        let conn = client
            .endpoint
            .connect_with(client_config(fp).unwrap(), server.local_addr, SERVER_NAME)
            .map_err(|e| e.to_string())?;
        conn.await.map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn only_the_announced_certificate_is_accepted() {
        let id = Identity::generate().unwrap();
        let server = PeerEndpoint::bind("127.0.0.1:0".parse().unwrap(), Some(&id), None).unwrap();
        let ep = server.endpoint.clone();
        tokio::spawn(async move {
            while let Some(i) = ep.accept().await {
                tokio::spawn(async move {
                    if let Ok(c) = i.await {
                        c.closed().await;
                    }
                });
            }
        });
        let ok = dial(&server, id.fingerprint()).await;
        assert!(ok.is_ok(), "{ok:?}");
        // A rendezvous (or anyone on the path) swapping the key is detected.
        let other = Identity::generate().unwrap();
        let err = dial(&server, other.fingerprint()).await.unwrap_err();
        assert!(err.contains("does not match"), "{err}");
    }
}
