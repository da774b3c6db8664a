//! Starts the node-local image mirror (`crate::mirror`) on every node, before containerd,
//! whose `_default` registry host points at it (`components::config_files`).

use std::sync::Arc;

use super::DaemonError;
use super::components;
use super::config::NodeConfig;
use crate::mirror::{server, store::ContainerdStore};
use crate::paths::{Layout, RuntimeDir};

/// Binds the mirror on the node's advertise address and serves it in the background. Its
/// certificate is the kubelet's serving certificate (it names the node's IPs, on every node);
/// clients need a certificate from the cluster CA, as containerd has the kubelet's.
pub async fn start(
    layout: &Layout,
    cfg: &NodeConfig,
    runtime: &RuntimeDir,
) -> Result<MirrorHandle, DaemonError> {
    let tls = super::listener_tls::node_listener_tls(layout, "image mirror", &[])?;
    let addr = components::mirror_addr(cfg);
    let listener = super::host::listen("image mirror", addr).await?;
    let store = Arc::new(ContainerdStore {
        ctr: runtime.ctr(),
        address: layout.containerd_socket(),
        root: layout.containerd_root(),
    });
    tracing::info!(%addr, "image mirror serving this node's containerd images");
    Ok(MirrorHandle(tokio::spawn(server::serve(listener, tls, store))))
}

/// Stops the mirror (and frees its port) when the node it serves stops.
#[derive(Debug)]
pub struct MirrorHandle(tokio::task::JoinHandle<()>);

impl Drop for MirrorHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}
