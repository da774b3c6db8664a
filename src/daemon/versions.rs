//! This node's versions: published in its member record (`cluster::versions`), shown by
//! `k8sd status`, and held against the control plane's Kubernetes minor before a
//! control-plane node starts its components.

use super::config::NodeConfig;
use super::{Daemon, DaemonError};
use crate::cluster::registry::{self, MemberRole};
use crate::cluster::versions::{NodeVersions, check_kubernetes_skew};
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
}
