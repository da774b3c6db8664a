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
pub mod rotation;
pub mod server;
pub mod throttle;
pub mod token;
pub mod versions;
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

/// What the cluster API's `Encryption` call does on this node; the daemon implements it, since
/// this module knows no processes.
pub trait EncryptionHost: Send + Sync + std::fmt::Debug {
    /// This node's Secrets encryption configuration, if it has one.
    fn current(&self) -> Result<Option<String>, EncryptionHostError>;
    /// Install `text` (validated, 0600), then wait until this node's kube-apiserver uses it:
    /// reloaded in place, or restarted and ready again.
    fn apply(
        &self,
        text: String,
    ) -> futures::future::BoxFuture<'static, Result<wire::KeysApplied, EncryptionHostError>>;
}

/// Why an [`EncryptionHost`] call failed. The cluster API sends the message to the node that
/// asked, so each says what failed on this node.
#[derive(Debug, thiserror::Error)]
pub enum EncryptionHostError {
    /// Reading or installing the configuration file (the error names the file).
    #[error(transparent)]
    File(#[from] crate::pki::PkiError),
    /// kube-apiserver failed to load the new file and keeps its previous keys; the previous
    /// file was put back.
    #[error(
        "kube-apiserver refused the new Secrets encryption configuration and keeps its previous keys; \
         see `k8sd logs kube-apiserver` on the node that refused it"
    )]
    Refused,
    /// kube-apiserver did not come back after the restart that loads the new keys. The source
    /// is the supervisor's error, a module this one does not name.
    #[error(
        "kube-apiserver did not come back with the new keys: {0}; see `k8sd logs kube-apiserver` on the node that restarted it"
    )]
    Restart(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// kubectl with the admin kubeconfig, for the few Kubernetes writes k8sd makes itself.
#[derive(Debug, Clone)]
pub struct Kubectl {
    pub kubebin: std::path::PathBuf,
    pub kubeconfig: std::path::PathBuf,
}

/// Why [`Kubectl::delete_node`] failed.
#[derive(Debug, thiserror::Error)]
pub enum KubectlError {
    #[error("deleting Node {node}: cannot run kubectl ({kubebin}): {source}")]
    Spawn {
        node: String,
        kubebin: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// kubectl ran and failed: `stderr` is what it said, after `attempts` tries.
    #[error("deleting Node {node} ({attempts} attempt(s) in {secs} s): {stderr}")]
    DeleteNode {
        node: String,
        attempts: u32,
        secs: u64,
        stderr: String,
    },
}

/// One kubectl run that failed.
enum Attempt {
    Spawn(std::io::Error),
    Failed { stderr: String },
}

/// How long [`Kubectl::delete_node`] keeps trying through transient API errors.
const DELETE_NODE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(90);

impl Kubectl {
    /// Delete a Node object; absent is fine. Transient errors are retried for up to 90 s:
    /// kubectl goes through the local API load balancer, which closes connections to a
    /// kube-apiserver the moment it turns unhealthy (a node being removed, a node that just
    /// died), so a single try fails with `Unable to connect to the server: EOF` even though
    /// another apiserver would answer the next one.
    pub async fn delete_node(&self, name: &str) -> Result<(), KubectlError> {
        let start = tokio::time::Instant::now();
        let mut delay = std::time::Duration::from_millis(500);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let err = match self.delete_node_once(name).await {
                Ok(()) => return Ok(()),
                Err(Attempt::Spawn(source)) => {
                    return Err(KubectlError::Spawn {
                        node: name.to_string(),
                        kubebin: self.kubebin.clone(),
                        source,
                    });
                }
                Err(Attempt::Failed { stderr }) => stderr,
            };
            if !is_transient(&err) || start.elapsed() + delay > DELETE_NODE_DEADLINE {
                return Err(KubectlError::DeleteNode {
                    node: name.to_string(),
                    attempts,
                    secs: start.elapsed().as_secs(),
                    stderr: err,
                });
            }
            tracing::warn!(node = %name, error = %err, "deleting a Node failed; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_secs(5));
        }
    }

    async fn delete_node_once(&self, name: &str) -> Result<(), Attempt> {
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
            .map_err(Attempt::Spawn)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Attempt::Failed {
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }
}

/// Whether kubectl's error text says the API was unreachable or briefly unable to answer
/// (worth another try), as opposed to a refusal such as Forbidden that will not change.
fn is_transient(stderr: &str) -> bool {
    const TRANSIENT: &[&str] = &[
        "Unable to connect to the server",
        "EOF",
        "connection refused",
        "connection reset",
        "broken pipe",
        "i/o timeout",
        "TLS handshake timeout",
        "Client.Timeout",
        "context deadline exceeded",
        "the server is currently unable to handle the request",
        "the server was unable to return a response in the time allotted",
        "Timeout: request did not complete",
        "etcdserver:",
        "http2:",
        "Internal error occurred",
        "too many requests",
    ];
    TRANSIENT.iter().any(|t| stderr.contains(t))
}

#[cfg(test)]
mod tests {
    use super::is_transient;

    #[test]
    fn an_unreachable_or_busy_api_is_transient_and_a_refusal_is_not() {
        // The errors of the HA test's remove-node while a removed or killed apiserver was
        // being drained from the load balancer.
        assert!(is_transient("Unable to connect to the server: unexpected EOF"));
        assert!(is_transient("Unable to connect to the server: EOF"));
        assert!(is_transient(
            "Unable to connect to the server: dial tcp 127.0.0.1:6444: connect: connection refused"
        ));
        assert!(is_transient(
            "Error from server (ServiceUnavailable): the server is currently unable to handle the request"
        ));
        assert!(is_transient("Error from server: etcdserver: request timed out"));
        assert!(!is_transient(
            "Error from server (Forbidden): nodes \"n3\" is forbidden: User \"x\" cannot delete resource"
        ));
        assert!(!is_transient(
            "error: error loading config file \"/x/admin.conf\": no such file or directory"
        ));
    }
}
