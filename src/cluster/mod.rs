//! Cluster membership above the datastore: join tokens, the member registry, and the cluster
//! API through which new nodes join.
//!
//! ```text
//!  k8sd add-node ─▶ daemon ─▶ registry: /k8sd/tokens/<id> (hashed)   ─▶ prints the token
//!  k8sd join     ─▶ daemon ─▶ client: pin CA by fingerprint ─▶ server (any control-plane node)
//!                                      Join: check token + name ─▶ certs / cluster secrets
//!                                      JoinComplete (control plane): consume token + record member
//!  worker renewal ─▶ daemon ─▶ client with its kubelet client cert ─▶ Renew: fresh certs for new keys
//! ```
//!
//! Boundary: this module talks to the datastore only through `node::Node` and to the PKI only
//! through `pki`'s public functions; the daemon decides what to do with what a join returns.

pub mod client;
pub mod registry;
pub mod server;
pub mod throttle;
pub mod token;
pub mod wire;

/// Generated code for the cluster API (`proto/cluster/cluster.proto`).
pub mod pb {
    #![allow(clippy::all, missing_debug_implementations, missing_docs)]
    tonic::include_proto!("k8sd.cluster.v1");
}

/// The cluster API's port on every control-plane node's advertise address.
pub const API_PORT: u16 = 6400;

/// Serve the cluster API on `listener` until `stop` resolves. TLS with the node's kube-apiserver
/// certificate (chain includes the CA, so joiners can pin it); client certificates optional.
pub async fn serve(
    service: server::ClusterService,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
    let read = |f: &str| {
        std::fs::read_to_string(service.pki_dir.join(f)).map_err(|e| format!("cannot read {f}: {e}"))
    };
    let (cert, key, ca) = (read("apiserver.crt")?, read("apiserver.key")?, read("ca.crt")?);
    let chain = format!("{}\n{}", cert.trim_end(), ca);
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(chain, key))
        .client_ca_root(Certificate::from_pem(&ca))
        .client_auth_optional(true);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    Server::builder()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .add_service(
            pb::cluster_api_server::ClusterApiServer::new(service).max_decoding_message_size(1 << 20),
        )
        .serve_with_incoming_shutdown(incoming, stop)
        .await
        .map_err(|e| e.to_string())
}

/// kubectl with the admin kubeconfig, for the few Kubernetes writes k8sd makes itself.
#[derive(Debug, Clone)]
pub struct Kubectl {
    pub kubebin: std::path::PathBuf,
    pub kubeconfig: std::path::PathBuf,
}

impl Kubectl {
    /// Delete a Node object; absent is fine.
    pub async fn delete_node(&self, name: &str) -> Result<(), String> {
        let out = tokio::process::Command::new(&self.kubebin)
            .arg("kubectl")
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args([
                "delete",
                "node",
                name,
                "--ignore-not-found",
                "--wait=false",
                "--request-timeout=20s",
            ])
            .output()
            .await
            .map_err(|e| format!("cannot run kubectl: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "deleting Node {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}
