//! Server-side mutual TLS for k8sd's small HTTPS listeners (the image mirror, the `/metrics`
//! endpoint): one serving certificate, and every client must present a certificate signed by
//! one CA. rustls with ring offers TLS 1.2 and 1.3 with AEAD suites only, so no weak suite needs
//! to be switched off here.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum MtlsError {
    #[error("TLS material: {what}: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A server configuration serving `cert_pem`/`key_pem` that accepts only clients with a
/// certificate signed by `ca_pem`, offering `alpn` (none: no ALPN extension).
pub fn mutual_tls_server(
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, MtlsError> {
    let pem = |what: &'static str| {
        move |e: rustls::pki_types::pem::Error| MtlsError::Pem {
            what,
            reason: e.to_string(),
        }
    };
    let config_err = |e: rustls::Error| MtlsError::Config(e.to_string());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.map_err(pem("CA certificate"))?).map_err(config_err)?;
    }
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem("serving certificate"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(pem("serving key"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| MtlsError::Config(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(config_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(config_err)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
