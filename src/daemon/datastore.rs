//! This node's datastore on a control-plane node: the Raft member (peer service on the
//! advertise address, only datastore peer certificates admitted), then the etcd API on
//! 127.0.0.1:2379 and the cluster API on the advertise address.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::components;
use super::config::NodeConfig;
use super::host::listen;
use super::{Daemon, DaemonError, apiserver_keys};
use crate::datastore::Durability;
use crate::etcd::{self, TlsFiles};
use crate::node::{Node, NodeConfig as DatastoreConfig, RaftSettings};
use crate::paths::Layout;
use crate::pki;

/// The datastore's TLS files in a node's PKI dir: the CA it trusts for both ports, the
/// serving pair of the etcd API on 127.0.0.1:2379 and the pair of the Raft peer port.
#[derive(Debug, Clone)]
pub(super) struct DatastoreTls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub peer_cert: PathBuf,
    pub peer_key: PathBuf,
}

impl DatastoreTls {
    pub fn of(l: &Layout) -> DatastoreTls {
        let f = |name: String| l.pki_dir().join(name);
        DatastoreTls {
            ca: f(pki::CaKind::Datastore.cert_file()),
            server_cert: f(pki::Leaf::DatastoreServer.cert_file()),
            server_key: f(pki::Leaf::DatastoreServer.key_file()),
            peer_cert: f(pki::Leaf::DatastorePeer.cert_file()),
            peer_key: f(pki::Leaf::DatastorePeer.key_file()),
        }
    }
}

impl Daemon {
    /// The datastore as a Raft member: peer service on the advertise address (mTLS with the
    /// datastore CA, so only control-plane peers can join the Raft group), bootstrapped as a
    /// group of one the first time. Joining nodes later add themselves to this group.
    pub(super) async fn start_datastore(
        &self,
        cfg: &NodeConfig,
        join: Vec<String>,
    ) -> Result<Node, DaemonError> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
        let l = &self.opts.layout;
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|source| DaemonError::Read {
                path: p.clone(),
                source,
            })
        };
        let files = DatastoreTls::of(l);
        let (ca, cert, key) = (read(&files.ca)?, read(&files.peer_cert)?, read(&files.peer_key)?);
        let identity = Identity::from_pem(&cert, &key);
        let peer_addr = std::net::SocketAddr::new(cfg.advertise_address, components::PEER_PORT);
        let listener = listen("datastore peer", peer_addr).await?;
        let client_url = format!("https://{}", components::datastore_addr());
        let mut rc = crate::raft::RaftConfig::new(
            l.datastore_dir(),
            &cfg.node_name,
            &peer_addr.to_string(),
            &client_url,
        );
        rc.server_tls = Some(
            ServerTlsConfig::new()
                .identity(identity.clone())
                .client_ca_root(Certificate::from_pem(&ca)),
        );
        rc.client_tls = Some(
            ClientTlsConfig::new()
                .identity(identity)
                .ca_certificate(Certificate::from_pem(&ca)),
        );
        // The datastore CA also signs kube-apiserver's client certificate; only peer
        // certificates may call the peer service.
        rc.peer_organization = Some(pki::DATASTORE_PEER_ORG.to_string());
        // Every control-plane node keeps voters odd and promotes standbys while it leads.
        rc.auto_promote = true;
        let bootstrap = join.is_empty();
        rc.join = join;
        Node::start_raft(
            DatastoreConfig {
                name: cfg.node_name.clone(),
                data_dir: l.datastore_dir(),
                durability: Durability::Normal,
                client_urls: vec![client_url],
                progress_notify_interval: Duration::from_secs(5),
                quota_bytes: cfg.quota_bytes(),
            },
            RaftSettings {
                config: rc,
                listener,
                bootstrap,
            },
        )
        .await
        .map_err(DaemonError::Datastore)
    }

    /// Serve the etcd API on 127.0.0.1:2379 (mTLS, datastore CA) and the cluster API on the
    /// advertise address (TLS, tokens) until `stop` flips.
    pub(super) async fn serve_datastore_and_api(
        self: &Arc<Self>,
        datastore: &Node,
        cfg: &NodeConfig,
        stop: watch::Receiver<bool>,
    ) -> Result<(), DaemonError> {
        let l = &self.opts.layout;
        let listener = listen("datastore", components::datastore_addr()).await?;
        let files = DatastoreTls::of(l);
        let tls = TlsFiles {
            cert_file: Some(files.server_cert),
            key_file: Some(files.server_key),
            trusted_ca_file: Some(files.ca),
            client_cert_auth: true,
        };
        let node = datastore.clone();
        let mut rx = stop.clone();
        tokio::spawn(async move {
            let res = etcd::serve(node, listener, &tls, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await;
            if let Err(e) = res {
                tracing::error!(error = %e, "datastore server stopped");
            }
        });
        let api_addr = std::net::SocketAddr::new(cfg.advertise_address, crate::cluster::API_PORT);
        let api_listener = listen("cluster API", api_addr).await?;
        let svc = crate::cluster::server::ClusterService {
            node: datastore.clone(),
            pki_dir: l.pki_dir(),
            kubectl: self.kubectl()?,
            failed_joins: Default::default(),
            encryption: Arc::new(apiserver_keys::ApiserverKeys {
                path: l.encryption_config(),
                daemon: Arc::downgrade(self),
            }),
        };
        let mut rx = stop;
        tokio::spawn(async move {
            let res = crate::cluster::serve(svc, api_listener, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await;
            if let Err(e) = res {
                tracing::error!(error = %e, "cluster API stopped");
            }
        });
        Ok(())
    }
}
