//! Keeping one label or annotation on this node's own Node object while the node runs: read the
//! Node, and merge-patch the key when it is missing or different. The role label
//! (`noderole.rs`) and the storage dir (`storagedir.rs`) are kept this way.
//!
//! It checks again at a slow pace: a Node deleted and registered again by its kubelet comes
//! back without either.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::Daemon;
use crate::httpc::TlsClient;

/// Check again this often once the value is in place.
const RECHECK: Duration = Duration::from_secs(60);
/// And this often while the Node is missing or the apiserver is not answering.
const RETRY: Duration = Duration::from_secs(5);

/// Where under `metadata` the key lives.
#[derive(Debug, Clone, Copy)]
pub enum Field {
    Labels,
    Annotations,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::Labels => "labels",
            Field::Annotations => "annotations",
        }
    }
}

/// The value of `key` on a Node (JSON): `Some(None)` when absent, `None` when the body is not
/// a Node.
pub fn value(node_json: &[u8], field: Field, key: &str) -> Option<Option<String>> {
    let v: serde_json::Value = serde_json::from_slice(node_json).ok()?;
    if v["kind"] != "Node" {
        return None;
    }
    Some(v["metadata"][field.name()][key].as_str().map(str::to_string))
}

/// The merge patch that sets `key` to `value`, leaving every other key alone.
pub fn patch(field: Field, key: &str, value: &str) -> Vec<u8> {
    serde_json::json!({ "metadata": { field.name(): { key: value } } })
        .to_string()
        .into_bytes()
}

/// One key to keep on the Node, and what to call it in the log.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub field: Field,
    pub key: &'static str,
    pub value: String,
    /// Present with any value is enough: an operator's own value is left alone.
    pub any_value: bool,
    /// e.g. "the role label", for log lines.
    pub what: &'static str,
}

/// Keep `wanted` on the Node `node` while this node runs. `credentials` gives the client and
/// the apiserver address to use; it is called before every check, so renewed certificates
/// are picked up.
pub fn spawn<C>(d: &Arc<Daemon>, node: String, wanted: Wanted, credentials: C)
where
    C: Fn(&Daemon) -> Result<(TlsClient, SocketAddr), String> + Send + 'static,
{
    let me = Arc::downgrade(d);
    tokio::spawn(async move {
        let path = format!("/api/v1/nodes/{node}");
        loop {
            let Some(d) = me.upgrade() else { return };
            if d.running().is_none() {
                return;
            }
            let creds = credentials(&d);
            drop(d);
            let pause = match creds {
                Ok((client, addr)) => ensure(&client, addr, &path, &node, &wanted).await,
                Err(e) => {
                    tracing::warn!(error = %e, what = wanted.what, "cannot keep this on the Node: no credentials");
                    RECHECK
                }
            };
            tokio::time::sleep(pause).await;
        }
    });
}

/// One check, and the patch if the Node lacks the value; returns when to look again.
async fn ensure(client: &TlsClient, addr: SocketAddr, path: &str, node: &str, w: &Wanted) -> Duration {
    let timeout = Duration::from_secs(10);
    match client.get(addr, path, timeout).await {
        Ok((200, body)) => match value(&body, w.field, w.key) {
            Some(Some(v)) if w.any_value || v == w.value => RECHECK,
            Some(_) => match client
                .patch_merge(addr, path, &patch(w.field, w.key, &w.value), timeout)
                .await
            {
                Ok((200, _)) => {
                    tracing::info!(node, key = w.key, value = %w.value, "set {} on the Node", w.what);
                    RECHECK
                }
                Ok((code, body)) => {
                    tracing::warn!(code, body = %String::from_utf8_lossy(&body), "setting {} on the Node failed; retrying", w.what);
                    RETRY
                }
                Err(e) => {
                    tracing::debug!(error = %e, "setting {} on the Node failed; retrying", w.what);
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

    const ROLE: &str = "node-role.kubernetes.io/control-plane";
    const STORAGE: &str = "k8sd.io/storage-dir";

    #[test]
    fn a_label_is_detected_and_the_patch_sets_only_it() {
        let has_label = |body: &[u8]| value(body, Field::Labels, ROLE).map(|v| v.is_some());
        let with = br#"{"kind":"Node","metadata":{"name":"n1","labels":{"kubernetes.io/hostname":"n1","node-role.kubernetes.io/control-plane":""}}}"#;
        let without = br#"{"kind":"Node","metadata":{"name":"n1","labels":{"kubernetes.io/hostname":"n1"}}}"#;
        let no_labels = br#"{"kind":"Node","metadata":{"name":"n1"}}"#;
        assert_eq!(has_label(with), Some(true));
        assert_eq!(has_label(without), Some(false));
        assert_eq!(has_label(no_labels), Some(false));
        assert_eq!(has_label(br#"{"kind":"Status","code":404}"#), None);
        assert_eq!(has_label(b"garbage"), None);
        let p: serde_json::Value = serde_json::from_slice(&patch(Field::Labels, ROLE, "")).unwrap();
        assert_eq!(
            p,
            serde_json::json!({"metadata": {"labels": {"node-role.kubernetes.io/control-plane": ""}}})
        );
    }

    #[test]
    fn an_annotation_is_read_and_the_patch_sets_only_it() {
        let recorded = |body: &[u8]| value(body, Field::Annotations, STORAGE);
        let with = br#"{"kind":"Node","metadata":{"name":"w1","annotations":{"k8sd.io/storage-dir":"/srv/k8sd/storage","x":"y"}}}"#;
        let without = br#"{"kind":"Node","metadata":{"name":"w1","annotations":{"x":"y"}}}"#;
        let none = br#"{"kind":"Node","metadata":{"name":"w1"}}"#;
        assert_eq!(recorded(with), Some(Some("/srv/k8sd/storage".into())));
        assert_eq!(recorded(without), Some(None));
        assert_eq!(recorded(none), Some(None));
        assert_eq!(recorded(br#"{"kind":"Status","code":404}"#), None);
        assert_eq!(recorded(b"garbage"), None);
        let p: serde_json::Value =
            serde_json::from_slice(&patch(Field::Annotations, STORAGE, "/srv/k8sd/storage")).unwrap();
        assert_eq!(
            p,
            serde_json::json!({"metadata": {"annotations": {"k8sd.io/storage-dir": "/srv/k8sd/storage"}}})
        );
    }
}
