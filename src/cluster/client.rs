//! The joiner's half of the cluster API.
//!
//! ```text
//!  for addr in token.addrs:
//!    1. TLS handshake, server chain must contain a certificate whose SHA-256 = token.ca
//!       (nothing is sent; this only learns the CA certificate, checked by its hash)
//!    2. gRPC over TLS verified against that CA (standard verification, IP SAN = addr)
//!       → Join / JoinComplete, authenticated by the token secret
//! ```
//! A mismatching fingerprint stops the join at once (another cluster, or someone in the
//! middle); an unreachable address moves on to the next one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::pb::Msg;
use super::pb::cluster_api_client::ClusterApiClient;

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(
        "{addr} presents a CA that does not match the token (token pins sha256 {expected}, server sent {got}); the token is for another cluster, or something intercepts the connection. Nothing was sent"
    )]
    Fingerprint {
        addr: String,
        expected: String,
        got: String,
    },
    #[error("{addr} is unreachable: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("no control-plane node in the token answered:\n  {0}")]
    NoneReachable(String),
    #[error("{0}")]
    Refused(String),
}

/// Pins by fingerprint during the first handshake and remembers the CA it found.
#[derive(Debug)]
struct Pinner {
    expected: String,
    found: Mutex<Option<(Option<CertificateDer<'static>>, Vec<String>)>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinner {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut seen = Vec::new();
        let mut hit = None;
        for c in std::iter::once(end_entity).chain(intermediates) {
            let fp = hex::encode(Sha256::digest(c.as_ref()));
            if fp.eq_ignore_ascii_case(&self.expected) {
                hit = Some(c.clone().into_owned());
            }
            seen.push(fp);
        }
        *self.found.lock().unwrap_or_else(|p| p.into_inner()) = Some((hit, seen));
        // The handshake's only purpose is to learn the CA; the real call verifies properly.
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn pem_of(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

/// Learn the cluster CA certificate from `addr`, checked against `fingerprint`.
pub async fn pin_ca(addr: &str, fingerprint: &str) -> Result<String, JoinError> {
    let unreachable = |reason: String| JoinError::Unreachable {
        addr: addr.to_string(),
        reason,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pinner = Arc::new(Pinner {
        expected: fingerprint.to_string(),
        found: Mutex::new(None),
        provider: provider.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| unreachable(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(pinner.clone())
        .with_no_client_auth();
    let sock: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| unreachable(format!("not an ip:port address ({e})")))?;
    let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(sock))
        .await
        .map_err(|_| unreachable("connect timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let name = ServerName::IpAddress(sock.ip().into());
    let handshake = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp);
    let _ = tokio::time::timeout(Duration::from_secs(5), handshake)
        .await
        .map_err(|_| unreachable("TLS handshake timed out".into()))?
        .map_err(|e| unreachable(format!("TLS handshake: {e}")))?;
    let found = pinner.found.lock().unwrap_or_else(|p| p.into_inner()).take();
    match found {
        Some((Some(der), _)) => Ok(pem_of(der.as_ref())),
        Some((None, seen)) => Err(JoinError::Fingerprint {
            addr: addr.to_string(),
            expected: fingerprint.to_string(),
            got: seen.last().cloned().unwrap_or_default(),
        }),
        None => Err(unreachable("the server sent no certificate".into())),
    }
}

/// A gRPC client to `addr`, verifying the server against `ca_pem`.
pub async fn connect(
    addr: &str,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<ClusterApiClient<Channel>, JoinError> {
    let unreachable = |reason: String| JoinError::Unreachable {
        addr: addr.to_string(),
        reason,
    };
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some((cert, key)) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
    }
    let ep = Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| unreachable(e.to_string()))?
        .tls_config(tls)
        .map_err(|e| unreachable(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(120));
    let ch = ep.connect().await.map_err(|e| unreachable(format!("{e:?}")))?;
    Ok(ClusterApiClient::new(ch).max_decoding_message_size(16 << 20))
}

/// One JSON call. Refusals (`PermissionDenied`, `AlreadyExists`, ...) are final; transport
/// errors are `Unreachable` so the caller may try another address.
pub async fn call<Req: serde::Serialize, Rep: serde::de::DeserializeOwned>(
    client: &mut ClusterApiClient<Channel>,
    addr: &str,
    rpc: Rpc,
    req: &Req,
) -> Result<Rep, JoinError> {
    let msg = Msg {
        body: serde_json::to_vec(req).map_err(|e| JoinError::Refused(e.to_string()))?,
    };
    let res = match rpc {
        Rpc::Join => client.join(msg).await,
        Rpc::JoinComplete => client.join_complete(msg).await,
        Rpc::Membership => client.membership(msg).await,
        Rpc::Renew => client.renew(msg).await,
        Rpc::Encryption => client.encryption(msg).await,
    };
    match res {
        Ok(r) => serde_json::from_slice(&r.into_inner().body)
            .map_err(|e| JoinError::Refused(format!("{addr} sent a malformed answer: {e}"))),
        Err(s)
            if matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
            ) =>
        {
            Err(JoinError::Unreachable {
                addr: addr.to_string(),
                reason: s.message().to_string(),
            })
        }
        Err(s) if s.code() == tonic::Code::Unimplemented => Err(JoinError::Refused(format!(
            "{addr} runs a k8sd without this call ({rpc:?}); upgrade k8sd there"
        ))),
        Err(s) => Err(JoinError::Refused(format!(
            "{addr} refused {}: {}",
            match rpc {
                Rpc::Encryption => "the Secrets key call",
                _ => "the join",
            },
            s.message()
        ))),
    }
}

/// The cluster API's calls.
#[derive(Debug, Clone, Copy)]
pub enum Rpc {
    Join,
    JoinComplete,
    Membership,
    Renew,
    Encryption,
}

/// Try each address in turn: pin, connect, call. Stops at the first answer or refusal.
pub async fn call_any<Req: serde::Serialize, Rep: serde::de::DeserializeOwned>(
    addrs: &[String],
    fingerprint: &str,
    rpc: Rpc,
    req: &Req,
) -> Result<(Rep, String), JoinError> {
    let mut failures = Vec::new();
    for addr in addrs {
        let attempt = async {
            let ca = pin_ca(addr, fingerprint).await?;
            let mut c = connect(addr, &ca, None).await?;
            call::<Req, Rep>(&mut c, addr, rpc, req).await
        };
        match attempt.await {
            Ok(rep) => return Ok((rep, addr.clone())),
            Err(e @ JoinError::Unreachable { .. }) => {
                tracing::warn!(error = %e, "trying the next control-plane address");
                failures.push(e.to_string());
            }
            Err(e) => return Err(e),
        }
    }
    Err(JoinError::NoneReachable(failures.join("\n  ")))
}

/// A joined node's call with its own client certificate, to each address in turn (the CA is
/// the node's own copy, no pinning needed).
pub async fn call_as_node<Req: serde::Serialize, Rep: serde::de::DeserializeOwned>(
    addrs: &[String],
    ca_pem: &str,
    identity: (&str, &str),
    rpc: Rpc,
    req: &Req,
) -> Result<Rep, JoinError> {
    let mut failures = Vec::new();
    for addr in addrs {
        let attempt = async {
            let mut c = connect(addr, ca_pem, Some(identity)).await?;
            call::<Req, Rep>(&mut c, addr, rpc, req).await
        };
        match attempt.await {
            Ok(rep) => return Ok(rep),
            Err(e @ JoinError::Unreachable { .. }) => failures.push(e.to_string()),
            Err(e) => return Err(e),
        }
    }
    Err(JoinError::NoneReachable(failures.join("\n  ")))
}
