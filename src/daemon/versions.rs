//! This node's versions: published in its member record (`cluster::versions`), shown by
//! `k8sd status`, and held against the control plane's Kubernetes minor before a node starts
//! its components: a control-plane node reads the member records itself, a worker asks the
//! cluster API.

use super::config::NodeConfig;
use super::{Daemon, DaemonError};
use crate::cluster::registry::{self, MemberRole};
use crate::cluster::versions::{NodeVersions, check_kubernetes_skew};
use crate::cluster::wire::{MembershipReply, MembershipRequest, WIRE_VERSION};
use crate::node::Node;

/// What this binary is and carries.
pub fn this_node() -> NodeVersions {
    NodeVersions {
        k8sd: env!("CARGO_PKG_VERSION").to_string(),
        kubernetes: crate::paths::kube_version().to_string(),
    }
}

impl Daemon {
    /// On a control-plane node whose datastore is up, before anything of Kubernetes starts:
    /// refuse a Kubernetes minor this cluster's other control-plane nodes do not run (unless
    /// the user allowed one step), then record this node's versions. Refused, the node
    /// publishes nothing and starts no component; its datastore member stays as it was.
    pub(crate) async fn check_and_publish_versions(
        &self,
        ds: &Node,
        cfg: &NodeConfig,
    ) -> Result<(), DaemonError> {
        let mine = this_node();
        let members = registry::members(ds).await?;
        let others = members
            .iter()
            .filter(|m| m.role == MemberRole::ControlPlane && m.name != cfg.node_name)
            .filter_map(|m| Some((m.name.as_str(), m.versions.as_ref()?.kubernetes.as_str())));
        check_kubernetes_skew(&mine.kubernetes, others, self.opts.allow_kubernetes_minor_change)?;
        registry::publish_versions(ds, &cfg.node_name, &mine).await?;
        Ok(())
    }

    /// On a worker, before its kubelet starts: the same rule against the Kubernetes versions
    /// the control-plane nodes published, asked of the cluster API with the kubelet identity.
    /// An unreachable control plane is not fatal (the worker must come back after a power cut
    /// before its control plane does); the check then runs at the next start.
    pub(crate) async fn check_worker_versions(&self, cfg: &NodeConfig) -> Result<(), DaemonError> {
        // No versions in the request: a refused worker must not publish what it would run.
        let req = MembershipRequest {
            version: WIRE_VERSION,
            leave: false,
            versions: None,
        };
        let reply: MembershipReply = match self.worker_call(cfg, &req).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "could not ask the control plane for its Kubernetes versions; starting without the check");
                return Ok(());
            }
        };
        let others = reply
            .control_plane
            .iter()
            .map(|c| (c.name.as_str(), c.kubernetes.as_str()));
        check_kubernetes_skew(
            &this_node().kubernetes,
            others,
            self.opts.allow_kubernetes_minor_change,
        )?;
        Ok(())
    }
}
