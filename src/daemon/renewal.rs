//! Certificate renewal while the node runs: twice a day, leaves close to expiry (or whose
//! SANs changed) are renewed and only the components that read them restart.

use std::sync::Arc;
use std::time::Duration;

use super::components;
use super::config::{NodeConfig, Role};
use super::{Daemon, DaemonError};
use crate::pki::{self, NodeIdentity, NodeRole};
use crate::supervisor::Supervisor;

impl Daemon {
    /// Twice a day, renew leaf certificates close to expiry (or whose SANs changed) and restart
    /// only the components that read them. A control-plane node signs its own from the CA; a
    /// worker asks the control plane over the cluster API (`Renew`).
    pub(super) fn spawn_cert_renewal(
        self: &Arc<Self>,
        cfg: NodeConfig,
        identity: NodeIdentity,
        supervisor: Arc<Supervisor>,
    ) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(12 * 3600));
            tick.tick().await; // the first tick is now: bring-up just ensured the PKI
            loop {
                tick.tick().await;
                let Some(d) = me.upgrade() else { return };
                if d.running().is_none() {
                    return;
                }
                let renewed = match cfg.role {
                    Role::ControlPlane => d.renew_control_plane_certs(&identity),
                    Role::Worker => d.renew_worker_certs(&cfg, &identity).await,
                };
                match renewed {
                    Ok(r) => restart_consumers(&supervisor, &r).await,
                    Err(e) => {
                        tracing::error!(error = %e, "certificate renewal check failed; retrying in 12 h")
                    }
                }
            }
        });
    }

    fn renew_control_plane_certs(&self, identity: &NodeIdentity) -> Result<pki::PkiReport, DaemonError> {
        let l = &self.opts.layout;
        let server = format!("https://{}", components::lb_addr());
        let report = pki::ensure_control_plane_pki(&l.pki_dir(), identity)?;
        let kubeconfigs =
            pki::ensure_kubeconfigs(&l.pki_dir(), &l.kubeconfig_dir(), NodeRole::ControlPlane, &server)?;
        Ok(report.merge(kubeconfigs))
    }
}

/// Restart every supervised component that reads a file the report changed.
async fn restart_consumers(supervisor: &Supervisor, report: &pki::PkiReport) {
    for c in report.affected() {
        let Some(name) = component_of(c) else {
            tracing::warn!(consumer = ?c, "renewed certificate takes effect at the next k8sd restart");
            continue;
        };
        tracing::info!(component = name, "restarting after certificate renewal");
        if let Err(e) = supervisor.restart(name).await {
            tracing::error!(component = name, error = %e, "restart after renewal failed");
        }
    }
}

/// The supervised component that reads a certificate consumer's files, if any.
fn component_of(c: pki::Consumer) -> Option<&'static str> {
    use pki::Consumer::*;
    match c {
        KubeApiserver => Some("kube-apiserver"),
        ControllerManager => Some("kube-controller-manager"),
        Scheduler => Some("kube-scheduler"),
        Kubelet => Some("kubelet"),
        KubeProxy => Some("kube-proxy"),
        Datastore | K8sd => None,
    }
}
