//! TLS for the node's own HTTPS listeners (the image mirror, `/metrics`): they serve the
//! kubelet's certificate, which k8sd issues from the cluster CA for the node's names and
//! addresses, and accept only clients with a cluster-CA certificate (containerd presents the
//! kubelet's; a Prometheus gets one as docs/metrics.md shows).

use std::sync::Arc;

use super::DaemonError;
use crate::paths::Layout;
use crate::pki::{CaKind, Leaf};

/// The server configuration for `listener` (named in errors), offering `alpn`.
pub fn node_listener_tls(
    layout: &Layout,
    listener: &str,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, DaemonError> {
    let pki = layout.pki_dir();
    let read = |name: String| {
        let path = pki.join(name);
        std::fs::read(&path).map_err(|source| DaemonError::Read { path, source })
    };
    let serving = Leaf::KubeletServing;
    crate::tls::mutual_tls_server(
        &read(CaKind::Cluster.cert_file())?,
        &read(serving.cert_file())?,
        &read(serving.key_file())?,
        alpn,
    )
    .map_err(|source| DaemonError::ListenerTls {
        listener: listener.to_string(),
        source,
    })
}
