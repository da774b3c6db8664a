//! This node's storage dir (`<data dir>/storage`) recorded on its own Node, as the annotation
//! `k8sd.io/storage-dir`, so that the storage add-on puts each node's local volumes under that
//! node's data dir: the add-on's reconcile loop (`daemon/addons.rs`) renders one
//! local-path-provisioner `nodePathMap` entry per annotated node. Data dirs differ between
//! nodes with `--data-dir` and between a snap node (`$SNAP_COMMON`) and a package one.
//!
//! Every node, workers included, writes it with its kubelet's identity (`system:node:<name>`):
//! the Node authorizer lets a node patch its own Node, and the NodeRestriction admission plugin
//! restricts only its labels, taints, owner references and `configSource`, not annotations.
//! Like the role label, it is checked again at a slow pace: a Node deleted and registered again
//! by its kubelet comes back without it.

use std::sync::Arc;
use std::time::Duration;

use super::Daemon;
use super::config::NodeConfig;
use crate::addons::STORAGE_DIR_ANNOTATION;
use crate::httpc::TlsClient;

/// Check again this often once the annotation is in place.
const RECHECK: Duration = Duration::from_secs(60);
/// And this often while the Node is missing or the apiserver is not answering.
const RETRY: Duration = Duration::from_secs(5);

/// The value of the annotation on a Node (JSON): `Some(None)` when absent, `None` when the
/// body is not a Node.
pub fn recorded(node_json: &[u8]) -> Option<Option<String>> {
    let v: serde_json::Value = serde_json::from_slice(node_json).ok()?;
    if v["kind"] != "Node" {
        return None;
    }
    Some(
        v["metadata"]["annotations"][STORAGE_DIR_ANNOTATION]
            .as_str()
            .map(str::to_string),
    )
}

/// The merge patch that sets the annotation, leaving every other one alone.
pub fn patch(storage_dir: &str) -> Vec<u8> {
    serde_json::json!({ "metadata": { "annotations": { STORAGE_DIR_ANNOTATION: storage_dir } } })
        .to_string()
        .into_bytes()
}

/// Keep this node's storage dir on its Node while the node runs.
pub fn spawn(d: &Arc<Daemon>, cfg: NodeConfig) {
    let me = Arc::downgrade(d);
    let storage_dir = d.layout().storage_dir().display().to_string();
    tokio::spawn(async move {
        let node = cfg.node_name.clone();
        let path = format!("/api/v1/nodes/{node}");
        loop {
            let Some(d) = me.upgrade() else { return };
            if d.running().is_none() {
                return;
            }
            // Read each time: the kubelet's client certificate is renewed in place.
            let p = d.layout().pki_dir();
            let client = TlsClient::from_files(
                &p.join("ca.crt"),
                &p.join("kubelet-client.crt"),
                &p.join("kubelet-client.key"),
            );
            let addr = d.api_addr(&cfg);
            drop(d);
            let pause = match client {
                Ok(client) => record(&client, addr, &path, &node, &storage_dir).await,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record the storage dir on the Node: no kubelet credentials");
                    RECHECK
                }
            };
            tokio::time::sleep(pause).await;
        }
    });
}

/// One check, and the patch if the Node lacks the value; returns when to look again.
async fn record(
    client: &TlsClient,
    addr: std::net::SocketAddr,
    path: &str,
    node: &str,
    storage_dir: &str,
) -> Duration {
    let timeout = Duration::from_secs(10);
    match client.get(addr, path, timeout).await {
        Ok((200, body)) => match recorded(&body) {
            Some(Some(v)) if v == storage_dir => RECHECK,
            Some(_) => match client.patch_merge(addr, path, &patch(storage_dir), timeout).await {
                Ok((200, _)) => {
                    tracing::info!(node, storage_dir, "recorded the storage dir on the Node");
                    RECHECK
                }
                Ok((code, body)) => {
                    tracing::warn!(code, body = %String::from_utf8_lossy(&body), "recording the storage dir on the Node failed; retrying");
                    RETRY
                }
                Err(e) => {
                    tracing::debug!(error = %e, "recording the storage dir on the Node failed; retrying");
                    RETRY
                }
            },
            None => RETRY,
        },
        // 404 until the kubelet registers the Node; errors while the apiserver restarts.
        Ok(_) | Err(_) => RETRY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_annotation_is_read_and_the_patch_sets_only_it() {
        let with = br#"{"kind":"Node","metadata":{"name":"w1","annotations":{"k8sd.io/storage-dir":"/srv/k8sd/storage","x":"y"}}}"#;
        let without = br#"{"kind":"Node","metadata":{"name":"w1","annotations":{"x":"y"}}}"#;
        let none = br#"{"kind":"Node","metadata":{"name":"w1"}}"#;
        assert_eq!(recorded(with), Some(Some("/srv/k8sd/storage".into())));
        assert_eq!(recorded(without), Some(None));
        assert_eq!(recorded(none), Some(None));
        assert_eq!(recorded(br#"{"kind":"Status","code":404}"#), None);
        assert_eq!(recorded(b"garbage"), None);
        let p: serde_json::Value = serde_json::from_slice(&patch("/srv/k8sd/storage")).unwrap();
        assert_eq!(
            p,
            serde_json::json!({"metadata": {"annotations": {"k8sd.io/storage-dir": "/srv/k8sd/storage"}}})
        );
    }
}
