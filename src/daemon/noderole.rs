//! The role label of a control-plane Node: `node-role.kubernetes.io/control-plane=""`, which
//! `kubectl get nodes` shows as ROLES and which workloads select or avoid.
//!
//! The kubelet may not set `node-role.kubernetes.io/*` labels on its own Node (the
//! NodeRestriction admission plugin refuses them, and `--node-labels` rejects them), so k8sd
//! sets it with the admin identity once the Node exists, and keeps it (`nodemeta.rs`).

use std::sync::Arc;

use super::nodemeta::{self, Field, Wanted};
use super::{Daemon, components};

pub const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";

/// Keep the control-plane role label on this node's Node while the node runs, with the admin
/// identity.
pub fn spawn(d: &Arc<Daemon>, node_name: String) {
    let wanted = Wanted {
        field: Field::Labels,
        key: CONTROL_PLANE_LABEL,
        value: String::new(),
        any_value: true,
        what: "the role label",
    };
    nodemeta::spawn(d, node_name, wanted, |d| {
        let client = d.admin_client().map_err(|e| e.to_string())?;
        Ok((client, components::apiserver_addr()))
    });
}
