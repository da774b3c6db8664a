//! This node's own calls to the cluster API with its kubelet identity: a worker's membership
//! calls and its certificate renewal (`Renew`).

use super::config::NodeConfig;
use super::{Daemon, DaemonError};
use crate::cluster::wire::*;
use crate::cluster::{API_PORT, client};
use crate::pki::{self, IssuedCert};

impl Daemon {
    /// A worker's call to the cluster API with its kubelet identity.
    pub(crate) async fn worker_call<Req: serde::Serialize, Rep: serde::de::DeserializeOwned>(
        &self,
        cfg: &NodeConfig,
        req: &Req,
    ) -> Result<Rep, client::JoinError> {
        self.node_call(&cfg.control_plane, client::Rpc::Membership, req)
            .await
    }

    /// On a worker: asks the control plane to sign fresh certificates for every leaf that is
    /// missing, stale or within the renewal window, installs them (each checked against the CA
    /// and its new key) and re-renders the kubeconfigs that embed them. The caller restarts the
    /// components the report names. Nothing due, nothing sent.
    ///
    /// Authenticated by the current kubelet client certificate, so it must still be valid:
    /// renewal starts 120 days before expiry and retries twice a day.
    pub(crate) async fn renew_worker_certs(
        &self,
        cfg: &NodeConfig,
        id: &pki::NodeIdentity,
    ) -> Result<pki::PkiReport, DaemonError> {
        let l = &self.opts.layout;
        let due = pki::worker_renewals_due(&l.pki_dir(), id, &pki::RenewalPolicy::current())?;
        if due.is_empty() {
            return Ok(pki::PkiReport::default());
        }
        let mut keys = Vec::new();
        let mut private = Vec::new();
        for (spec, reason) in &due {
            let leaf = spec.leaf;
            tracing::info!(cert = %leaf.cert_file(), ?reason, "asking the control plane to renew a certificate");
            let key = pki::generate_private_key_pem(&leaf.key_file())?;
            keys.push(RenewKey {
                leaf: leaf.file_stem().to_string(),
                public_key: pki::public_key_pem(&leaf.key_file(), &key)?,
            });
            private.push((leaf, key));
        }
        let req = RenewRequest {
            version: WIRE_VERSION,
            keys,
        };
        let rep: RenewReply = self
            .node_call(&cfg.control_plane, client::Rpc::Renew, &req)
            .await
            .map_err(DaemonError::WorkerRenewal)?;
        let mut issued = Vec::new();
        for (leaf, key_pem) in private {
            let cert = rep
                .certs
                .iter()
                .find(|c| c.leaf == leaf.file_stem())
                .ok_or_else(|| DaemonError::RenewalIncomplete {
                    cert: leaf.cert_file(),
                })?;
            issued.push((
                leaf,
                IssuedCert {
                    cert_pem: cert.cert.clone(),
                    key_pem,
                },
            ));
        }
        let report = pki::install_worker_pki(&l.pki_dir(), &rep.ca_cert, &issued)?;
        let server = format!("https://{}", super::components::lb_addr());
        let kubeconfigs =
            pki::ensure_kubeconfigs(&l.pki_dir(), &l.kubeconfig_dir(), pki::NodeRole::Worker, &server)?;
        Ok(report.merge(kubeconfigs))
    }

    /// A call to the cluster API on `cp` (tried in turn) with this node's kubelet identity.
    pub(crate) async fn node_call<Req: serde::Serialize, Rep: serde::de::DeserializeOwned>(
        &self,
        cp: &[std::net::IpAddr],
        rpc: client::Rpc,
        req: &Req,
    ) -> Result<Rep, client::JoinError> {
        let p = self.opts.layout.pki_dir();
        let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
        let (ca, cert, key) = (
            read("ca.crt"),
            read("kubelet-client.crt"),
            read("kubelet-client.key"),
        );
        let addrs: Vec<String> = cp
            .iter()
            .map(|a| std::net::SocketAddr::new(*a, API_PORT).to_string())
            .collect();
        client::call_as_node(&addrs, &ca, (&cert, &key), rpc, req).await
    }
}
