//! The role label of a control-plane Node: `node-role.kubernetes.io/control-plane=""`, which
//! `kubectl get nodes` shows as ROLES and which workloads select or avoid.
//!
//! The kubelet may not set `node-role.kubernetes.io/*` labels on its own Node (the
//! NodeRestriction admission plugin refuses them, and `--node-labels` rejects them), so k8sd
//! sets it with the admin identity once the Node exists. It keeps checking at a slow pace:
//! a Node deleted and registered again by its kubelet comes back without the label.

use std::sync::Arc;
use std::time::Duration;

use super::{Daemon, components};

pub const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";

/// Check again this often once the label is in place.
const RECHECK: Duration = Duration::from_secs(60);
/// And this often while the Node is missing or the apiserver is not answering.
const RETRY: Duration = Duration::from_secs(5);

/// Whether a Node object (JSON) carries `label`; `None` when the body is not a Node.
pub fn has_label(node_json: &[u8], label: &str) -> Option<bool> {
    let v: serde_json::Value = serde_json::from_slice(node_json).ok()?;
    if v["kind"] != "Node" {
        return None;
    }
    Some(v["metadata"]["labels"].get(label).is_some())
}

/// The merge patch that sets `label` to the empty value, leaving every other label alone.
pub fn label_patch(label: &str) -> Vec<u8> {
    serde_json::json!({ "metadata": { "labels": { label: "" } } })
        .to_string()
        .into_bytes()
}

/// Keep the control-plane role label on this node's Node while the node runs.
pub fn spawn(d: &Arc<Daemon>, node_name: String) {
    let me = Arc::downgrade(d);
    tokio::spawn(async move {
        let path = format!("/api/v1/nodes/{node_name}");
        loop {
            let Some(d) = me.upgrade() else { return };
            if d.running().is_none() {
                return;
            }
            let pause = match d.admin_client() {
                Ok(client) => {
                    let addr = components::apiserver_addr();
                    let timeout = Duration::from_secs(10);
                    match client.get(addr, &path, timeout).await {
                        Ok((200, body)) if has_label(&body, CONTROL_PLANE_LABEL) == Some(true) => RECHECK,
                        Ok((200, _)) => {
                            match client
                                .patch_merge(addr, &path, &label_patch(CONTROL_PLANE_LABEL), timeout)
                                .await
                            {
                                Ok((200, _)) => {
                                    tracing::info!(node = %node_name, label = CONTROL_PLANE_LABEL, "labelled the Node with its role");
                                    RECHECK
                                }
                                Ok((code, body)) => {
                                    tracing::warn!(code, body = %String::from_utf8_lossy(&body), "labelling the Node with its role failed; retrying");
                                    RETRY
                                }
                                Err(e) => {
                                    tracing::debug!(error = %e, "labelling the Node with its role failed; retrying");
                                    RETRY
                                }
                            }
                        }
                        // 404 until the kubelet registers the Node; errors while the apiserver restarts.
                        Ok(_) | Err(_) => RETRY,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot label the Node with its role");
                    RECHECK
                }
            };
            drop(d);
            tokio::time::sleep(pause).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_label_is_detected_and_the_patch_sets_only_it() {
        let with = br#"{"kind":"Node","metadata":{"name":"n1","labels":{"kubernetes.io/hostname":"n1","node-role.kubernetes.io/control-plane":""}}}"#;
        let without = br#"{"kind":"Node","metadata":{"name":"n1","labels":{"kubernetes.io/hostname":"n1"}}}"#;
        let no_labels = br#"{"kind":"Node","metadata":{"name":"n1"}}"#;
        assert_eq!(has_label(with, CONTROL_PLANE_LABEL), Some(true));
        assert_eq!(has_label(without, CONTROL_PLANE_LABEL), Some(false));
        assert_eq!(has_label(no_labels, CONTROL_PLANE_LABEL), Some(false));
        assert_eq!(
            has_label(br#"{"kind":"Status","code":404}"#, CONTROL_PLANE_LABEL),
            None
        );
        assert_eq!(has_label(b"garbage", CONTROL_PLANE_LABEL), None);
        let patch: serde_json::Value = serde_json::from_slice(&label_patch(CONTROL_PLANE_LABEL)).unwrap();
        assert_eq!(
            patch,
            serde_json::json!({"metadata": {"labels": {"node-role.kubernetes.io/control-plane": ""}}})
        );
    }
}
