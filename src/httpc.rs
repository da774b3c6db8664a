//! A minimal HTTPS client with client-certificate auth, for k8sd's own calls to
//! kube-apiserver (`/readyz`, reading a Node, a merge patch of its labels). One request per
//! connection, HTTP/1.1, `Connection: close`; enough for small JSON bodies and nothing more.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot read {path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("cannot parse the {what} PEM: {reason}")]
    PemData { what: &'static str, reason: String },
    #[error("tls setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: timed out")]
    Timeout(SocketAddr),
    #[error("{0}: malformed HTTP response")]
    Malformed(SocketAddr),
}

/// A TLS client identity and the CA that signs the server.
#[derive(Debug, Clone)]
pub struct TlsClient {
    config: Arc<rustls::ClientConfig>,
}

impl TlsClient {
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<Self, HttpError> {
        let pem_err = |path: &Path| {
            let path = path.to_path_buf();
            move |e: rustls::pki_types::pem::Error| HttpError::Pem {
                path,
                reason: e.to_string(),
            }
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).map_err(pem_err(ca))? {
            roots.add(c.map_err(pem_err(ca))?)?;
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(pem_err(cert))?
            .collect::<Result<_, _>>()
            .map_err(pem_err(cert))?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(pem_err(key))?;
        Self::build(roots, chain, key)
    }

    /// The same as [`TlsClient::from_files`], from PEM text already in memory: the CA bundle that
    /// signs the servers, the client certificate chain and its private key.
    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<Self, HttpError> {
        let pem_err = |what: &'static str| {
            move |e: rustls::pki_types::pem::Error| HttpError::PemData {
                what,
                reason: e.to_string(),
            }
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca) {
            roots.add(c.map_err(pem_err("CA"))?)?;
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<_, _>>()
            .map_err(pem_err("client certificate"))?;
        if chain.is_empty() {
            return Err(HttpError::PemData {
                what: "client certificate",
                reason: "no certificate found".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(pem_err("client key"))?;
        Self::build(roots, chain, key)
    }

    fn build(
        roots: rustls::RootCertStore,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, HttpError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        Ok(TlsClient {
            config: Arc::new(config),
        })
    }

    /// GET `path` from `addr`, verifying the server certificate for `addr`'s IP.
    /// Returns the status code and body.
    pub async fn get(
        &self,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> Result<(u16, Vec<u8>), HttpError> {
        tokio::time::timeout(timeout, self.request(addr, "GET", path, None))
            .await
            .map_err(|_| HttpError::Timeout(addr))?
    }

    /// PATCH `path` with a JSON merge patch (RFC 7386), as `kubectl patch --type=merge`.
    /// Returns the status code and body.
    pub async fn patch_merge(
        &self,
        addr: SocketAddr,
        path: &str,
        patch: &[u8],
        timeout: Duration,
    ) -> Result<(u16, Vec<u8>), HttpError> {
        let body = Some(("application/merge-patch+json", patch));
        tokio::time::timeout(timeout, self.request(addr, "PATCH", path, body))
            .await
            .map_err(|_| HttpError::Timeout(addr))?
    }

    async fn request(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<(u16, Vec<u8>), HttpError> {
        let io = |source| HttpError::Io { addr, source };
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let name = ServerName::IpAddress(addr.ip().into());
        let mut tls = connector.connect(name, tcp).await.map_err(io)?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n"
        )
        .into_bytes();
        match body {
            Some((content_type, bytes)) => {
                req.extend_from_slice(
                    format!(
                        "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                        bytes.len()
                    )
                    .as_bytes(),
                );
                req.extend_from_slice(bytes);
            }
            None => req.extend_from_slice(b"\r\n"),
        }
        tls.write_all(&req).await.map_err(io)?;
        let mut buf = Vec::new();
        // Servers may close without TLS close_notify; keep what arrived.
        if let Err(e) = tls.read_to_end(&mut buf).await
            && buf.is_empty()
        {
            return Err(io(e));
        }
        parse_response(&buf).ok_or(HttpError::Malformed(addr))
    }
}

fn parse_response(buf: &[u8]) -> Option<(u16, Vec<u8>)> {
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..split]).ok()?;
    let status: u16 = head.lines().next()?.split_whitespace().nth(1)?.parse().ok()?;
    let body = &buf[split + 4..];
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked")
    });
    Some((status, if chunked { dechunk(body)? } else { body.to_vec() }))
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_str = std::str::from_utf8(&body[..line_end])
            .ok()?
            .split(';')
            .next()?
            .trim();
        let size = usize::from_str_radix(size_str, 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(parse_response(plain), Some((200, b"ok".to_vec())));
        let chunked =
            b"HTTP/1.1 500 Internal\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Some((500, b"abcde".to_vec())));
        assert_eq!(parse_response(b"garbage"), None);
    }
}
