//! The etcd v3 gRPC façade over a datastore `Node`.
//!
//! Layers: protobuf handlers (this module's files) → `node::Node` (propose / read) →
//! `datastore`. Protobuf never reaches the datastore: `convert.rs` translates, and errors
//! become `tonic::Status` only in `status.rs`.

mod authority;
mod convert;
mod deadline;
mod kv;
mod lease;
mod maintenance;
mod metered;
pub mod metrics;
mod refused;
pub mod status;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tonic::transport::Server;

use crate::node::Node;
use crate::pb::etcdserverpb as pb;

/// etcd's `--max-request-bytes` default: larger requests get "request is too large".
pub const MAX_REQUEST_BYTES: usize = 3 * 512 * 1024;
/// etcd's gRPC receive limit: the request limit plus 512 KiB of overhead. Larger messages get
/// grpc-go's ResourceExhausted, which we give ourselves (tonic would say OutOfRange).
pub const MAX_RECV_BYTES: usize = MAX_REQUEST_BYTES + 512 * 1024;
/// What tonic will decode at all; anything between MAX_RECV_BYTES and this is refused by us.
pub const MAX_DECODE_BYTES: usize = 16 * 1024 * 1024;

/// The gRPC services, sharing one node.
#[derive(Debug, Clone)]
pub struct EtcdService {
    node: Node,
}

impl EtcdService {
    pub fn new(node: Node) -> Self {
        EtcdService { node }
    }

    fn header(&self, revision: i64) -> pb::ResponseHeader {
        let meta = self.node.meta();
        pb::ResponseHeader {
            cluster_id: meta.cluster_id,
            member_id: meta.member_id,
            revision,
            raft_term: self.node.raft_term(),
        }
    }
}

/// TLS material for the client listener, as etcd's flags name it.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub trusted_ca_file: Option<PathBuf>,
    pub client_cert_auth: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid TLS configuration: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}; is another etcd or k8sd already using it?")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("grpc server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl TlsFiles {
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }

    /// The rustls configuration tonic would build from these files: client certificates
    /// required with --client-cert-auth, optional when only a CA is given, ALPN h2. k8sd
    /// terminates TLS itself so that [`authority::AuthorityFix`] can sit between TLS and h2.
    fn server_config(&self) -> Result<rustls::ServerConfig, ServeError> {
        let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) else {
            return Err(ServeError::Tls(
                "--cert-file and --key-file must be given together".into(),
            ));
        };
        let read_err = |p: &PathBuf| {
            let path = p.clone();
            move |e: rustls::pki_types::pem::Error| ServeError::Read {
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
            }
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(read_err(cert))?;
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(read_err(key))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ServeError::Tls(e.to_string()))?;
        let builder = match (&self.trusted_ca_file, self.client_cert_auth) {
            (Some(ca), auth) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca).map_err(read_err(ca))? {
                    roots
                        .add(c.map_err(read_err(ca))?)
                        .map_err(|e| ServeError::Tls(format!("{}: {e}", ca.display())))?;
                }
                let v =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let v = if auth { v } else { v.allow_unauthenticated() };
                builder.with_client_cert_verifier(v.build().map_err(|e| ServeError::Tls(e.to_string()))?)
            }
            (None, true) => {
                return Err(ServeError::Tls(
                    "--client-cert-auth needs --trusted-ca-file".into(),
                ));
            }
            (None, false) => builder.with_no_client_auth(),
        };
        let mut cfg = builder
            .with_single_cert(chain, key_der)
            .map_err(|e| ServeError::Tls(format!("{}: {e}", key.display())))?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(cfg)
    }
}

/// Serve the etcd API on `listener` until `shutdown` resolves.
pub async fn serve(
    node: Node,
    listener: tokio::net::TcpListener,
    tls: &TlsFiles,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let svc = EtcdService::new(node);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .layer(metered::MeteredLayer)
        .layer(tower_layer::layer_fn(deadline::Deadline::new));
    let tls = if tls.enabled() {
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls.server_config()?)))
    } else {
        None
    };
    macro_rules! limits {
        ($s:expr) => {
            $s.max_decoding_message_size(MAX_DECODE_BYTES)
                .max_encoding_message_size(usize::MAX)
        };
    }
    let incoming = incoming(listener, tls);
    builder
        .add_service(health)
        .add_service(limits!(pb::kv_server::KvServer::new(svc.clone())))
        .add_service(limits!(pb::watch_server::WatchServer::new(svc.clone())))
        .add_service(limits!(pb::lease_server::LeaseServer::new(svc.clone())))
        .add_service(limits!(pb::cluster_server::ClusterServer::new(svc.clone())))
        .add_service(limits!(pb::maintenance_server::MaintenanceServer::new(svc)))
        .add_service(refused::Lock)
        .add_service(refused::Election)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// Accepted client connections, TLS handshaken when `tls` is set, each wrapped in
/// [`authority::AuthorityFix`]. Handshakes run in their own tasks so a slow or silent client
/// never holds up the accept loop; a failed one is logged and dropped, as tonic does.
fn incoming(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> impl futures::Stream<Item = std::io::Result<authority::AuthorityFix<Conn>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting an etcd client");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            // TCP_NODELAY on every connection, as grpc-go does: without it, small responses
            // wait for delayed ACKs (Nagle) and a stream with concurrent traffic stalls ~40 ms
            // per message.
            let _ = tcp.set_nodelay(true);
            match &tls {
                None => {
                    if tx
                        .send(Ok(authority::AuthorityFix::new(Conn::Plain(tcp))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Some(acceptor) => {
                    let (acceptor, tx) = (acceptor.clone(), tx.clone());
                    tokio::spawn(async move {
                        let hs =
                            tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp));
                        match hs.await {
                            Ok(Ok(s)) => {
                                let conn = Conn::Tls(Box::new(s));
                                let _ = tx.send(Ok(authority::AuthorityFix::new(conn))).await;
                            }
                            Ok(Err(e)) => tracing::debug!(error = %e, "etcd client TLS handshake failed"),
                            Err(_) => tracing::debug!("etcd client TLS handshake timed out"),
                        }
                    });
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A client connection, plain (loopback only) or TLS.
#[derive(Debug)]
enum Conn {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

impl tokio::io::AsyncRead for Conn {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Conn {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Option<std::net::SocketAddr>;
    fn connect_info(&self) -> Self::ConnectInfo {
        match self {
            Conn::Plain(s) => s.peer_addr().ok(),
            Conn::Tls(s) => s.get_ref().0.peer_addr().ok(),
        }
    }
}
