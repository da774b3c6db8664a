//! Pod networking across nodes, without an overlay: the controller-manager gives every Node a
//! pod CIDR from the cluster's range (`--allocate-node-cidrs`); each node writes its CNI bridge
//! configuration for its own CIDR once it has one, and routes every other node's CIDR via that
//! node's InternalIP. Nodes must share an L2 segment (or a router that knows nothing of pods
//! must not sit between them): the same assumption as flannel's host-gw backend.
//!
//! Until the CNI configuration exists the kubelet reports NetworkReady=false, so the node
//! turns Ready only once its pods can get addresses.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::config::NodeConfig;
use super::host::write_file;
use super::{Daemon, DaemonError, components};
use crate::httpc::TlsClient;

/// One Node as pod networking sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeNet {
    pub name: String,
    pub pod_cidr: Option<String>,
    pub internal_ip: Option<IpAddr>,
}

/// Parse a `NodeList` body.
pub fn parse_nodes(body: &[u8]) -> Option<Vec<NodeNet>> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(
        v["items"]
            .as_array()?
            .iter()
            .map(|n| NodeNet {
                name: n["metadata"]["name"].as_str().unwrap_or_default().to_string(),
                pod_cidr: n["spec"]["podCIDR"].as_str().map(str::to_string),
                internal_ip: n["status"]["addresses"]
                    .as_array()
                    .and_then(|a| a.iter().find(|x| x["type"] == "InternalIP"))
                    .and_then(|x| x["address"].as_str())
                    .and_then(|s| s.parse().ok()),
            })
            .collect(),
    )
}

/// Routes this node needs: every other node's pod CIDR via its InternalIP.
pub fn routes_for(me: &str, nodes: &[NodeNet]) -> BTreeMap<String, IpAddr> {
    nodes
        .iter()
        .filter(|n| n.name != me)
        .filter_map(|n| Some((n.pod_cidr.clone()?, n.internal_ip?)))
        .collect()
}

fn ip_route_replace(cidr: &str, via: IpAddr) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(["route", "replace", cidr, "via", &via.to_string()])
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Write the CNI configuration for this node's pod range `cidr` (0644) unless the file already
/// says exactly that; whether it was written.
pub(super) fn write_conflist(ctx: &components::Ctx<'_>, cidr: &str) -> Result<bool, DaemonError> {
    let path = ctx.layout.cni_conflist();
    let text = components::cni_conflist(ctx, cidr).map_err(|source| DaemonError::RenderConfig {
        file: path.clone(),
        source,
    })?;
    if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
        return Ok(false);
    }
    write_file(&path, text.as_bytes(), 0o644)?;
    Ok(true)
}

/// Keep the CNI configuration and routes in step with the Node objects, while the node runs.
pub fn spawn(d: Arc<Daemon>, cfg: NodeConfig) {
    tokio::spawn(async move {
        let p = d.opts.layout.pki_dir();
        let client = match TlsClient::from_files(
            &p.join("ca.crt"),
            &p.join("kube-proxy.crt"),
            &p.join("kube-proxy.key"),
        ) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "pod networking cannot read kube-proxy credentials");
                return;
            }
        };
        let addr = d.api_addr(&cfg);
        let mut installed: BTreeMap<String, IpAddr> = BTreeMap::new();
        loop {
            if d.running().is_none() {
                return;
            }
            let nodes = match client.get(addr, "/api/v1/nodes", Duration::from_secs(5)).await {
                Ok((200, body)) => parse_nodes(&body),
                Ok((code, _)) => {
                    tracing::debug!(code, "listing nodes for pod networking failed");
                    None
                }
                Err(e) => {
                    tracing::debug!(error = %e, "listing nodes for pod networking failed");
                    None
                }
            };
            let mut pause = Duration::from_secs(5);
            if let Some(nodes) = nodes {
                match nodes
                    .iter()
                    .find(|n| n.name == cfg.node_name)
                    .and_then(|n| n.pod_cidr.clone())
                {
                    Some(cidr) => {
                        let ctx = components::Ctx {
                            layout: &d.opts.layout,
                            cfg: &cfg,
                            cgroup_root: &d.opts.cgroup_root,
                            // The CNI config does not depend on it.
                            encrypt_secrets: false,
                        };
                        match write_conflist(&ctx, &cidr) {
                            Ok(true) => tracing::info!(pod_cidr = %cidr, "pod network configured"),
                            Ok(false) => {}
                            Err(e) => tracing::error!(error = %e, "cannot write the CNI configuration"),
                        }
                    }
                    None => pause = Duration::from_secs(1),
                }
                for (cidr, via) in routes_for(&cfg.node_name, &nodes) {
                    if installed.get(&cidr) == Some(&via) {
                        continue;
                    }
                    match ip_route_replace(&cidr, via) {
                        Ok(()) => {
                            tracing::info!(%cidr, %via, "route to a node's pods");
                            installed.insert(cidr, via);
                        }
                        Err(e) => {
                            tracing::warn!(%cidr, %via, error = %e, "cannot add a route to a node's pods")
                        }
                    }
                }
            } else {
                pause = Duration::from_secs(2);
            }
            tokio::time::sleep(pause).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_go_to_every_other_node_with_a_cidr() {
        let body = br#"{"items":[
          {"metadata":{"name":"n1"},"spec":{"podCIDR":"10.88.0.0/24"},"status":{"addresses":[{"type":"InternalIP","address":"10.0.0.1"},{"type":"Hostname","address":"n1"}]}},
          {"metadata":{"name":"n2"},"spec":{"podCIDR":"10.88.1.0/24"},"status":{"addresses":[{"type":"InternalIP","address":"10.0.0.2"}]}},
          {"metadata":{"name":"n3"},"spec":{},"status":{"addresses":[{"type":"InternalIP","address":"10.0.0.3"}]}}
        ]}"#;
        let nodes = parse_nodes(body).unwrap();
        assert_eq!(nodes.len(), 3);
        let r = routes_for("n1", &nodes);
        assert_eq!(r.len(), 1, "self and nodes without a CIDR get no route: {r:?}");
        assert_eq!(r["10.88.1.0/24"].to_string(), "10.0.0.2");
        assert!(parse_nodes(b"not json").is_none());
    }
}
