//! The etcd v3 gRPC façade over a datastore `Node`.
//!
//! Layers: protobuf handlers (this module's files) → `node::Node` (propose / read) →
//! `datastore`. Protobuf never reaches the datastore: `convert.rs` translates, and errors
//! become `tonic::Status` only in `status.rs`.

mod convert;
mod kv;
mod lease;
mod maintenance;
pub mod status;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;

use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

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

    fn server_config(&self) -> Result<ServerTlsConfig, ServeError> {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|source| ServeError::Read {
                path: p.clone(),
                source,
            })
        };
        let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) else {
            return Err(ServeError::Tls(
                "--cert-file and --key-file must be given together".into(),
            ));
        };
        let mut cfg = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
        match (&self.trusted_ca_file, self.client_cert_auth) {
            (Some(ca), _) => cfg = cfg.client_ca_root(Certificate::from_pem(read(ca)?)),
            (None, true) => {
                return Err(ServeError::Tls(
                    "--client-cert-auth needs --trusted-ca-file".into(),
                ));
            }
            (None, false) => {}
        }
        Ok(cfg.client_auth_optional(!self.client_cert_auth))
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
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)));
    if tls.enabled() {
        builder = builder.tls_config(tls.server_config()?)?;
    }
    macro_rules! limits {
        ($s:expr) => {
            $s.max_decoding_message_size(MAX_DECODE_BYTES)
                .max_encoding_message_size(usize::MAX)
        };
    }
    // TCP_NODELAY on every connection, as grpc-go does: without it, small responses wait for
    // delayed ACKs (Nagle) and a stream with concurrent traffic stalls ~40 ms per message.
    use futures::StreamExt;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
        s.inspect(|tcp| {
            let _ = tcp.set_nodelay(true);
        })
    });
    builder
        .add_service(health)
        .add_service(limits!(pb::kv_server::KvServer::new(svc.clone())))
        .add_service(limits!(pb::watch_server::WatchServer::new(svc.clone())))
        .add_service(limits!(pb::lease_server::LeaseServer::new(svc.clone())))
        .add_service(limits!(pb::cluster_server::ClusterServer::new(svc.clone())))
        .add_service(limits!(pb::maintenance_server::MaintenanceServer::new(svc)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
