//! How this node calls kube-apiserver for its own checks: the address (its own apiserver or
//! the local load balancer), the clients (admin, or the kubelet's identity on a worker), and
//! the wait for its Node to be Ready.

use std::time::Duration;

use super::config::{NodeConfig, Role};
use super::{Daemon, DaemonError, components, status};
use crate::httpc::TlsClient;

impl Daemon {
    /// Where this node reaches kube-apiserver for its own checks: its own on a control-plane
    /// node, the local load balancer on a worker.
    pub(super) fn api_addr(&self, cfg: &NodeConfig) -> std::net::SocketAddr {
        match cfg.role {
            Role::ControlPlane => components::apiserver_addr(),
            Role::Worker => components::lb_addr(),
        }
    }

    /// A client for this node's own checks: admin on a control-plane node, the kubelet's
    /// identity on a worker (the Node authorizer lets it read its own Node).
    pub(super) fn node_client(&self, cfg: &NodeConfig) -> Result<TlsClient, DaemonError> {
        let p = self.opts.layout.pki_dir();
        let (cert, key) = match cfg.role {
            Role::ControlPlane => ("admin.crt", "admin.key"),
            Role::Worker => ("kubelet-client.crt", "kubelet-client.key"),
        };
        TlsClient::from_files(&p.join("ca.crt"), &p.join(cert), &p.join(key))
            .map_err(|source| DaemonError::Credentials { what: "node", source })
    }

    pub(crate) fn admin_client(&self) -> Result<TlsClient, DaemonError> {
        let p = self.opts.layout.pki_dir();
        TlsClient::from_files(&p.join("ca.crt"), &p.join("admin.crt"), &p.join("admin.key")).map_err(
            |source| DaemonError::Credentials {
                what: "admin",
                source,
            },
        )
    }

    /// Wait up to 5 minutes for this node's Node to report Ready.
    pub(super) async fn wait_until_ready(&self, cfg: &NodeConfig) -> Result<(), DaemonError> {
        let client = self.node_client(cfg)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        loop {
            if let Some(n) = status::kube_node(&client, self.api_addr(cfg), &cfg.node_name).await
                && n.ready
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(DaemonError::NotReady {
                    node: cfg.node_name.clone(),
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
