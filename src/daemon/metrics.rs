//! The node's metrics listener: `https://<advertise address>:2381/metrics` on every node (the
//! port kubeadm gives etcd's metrics). A control-plane node serves the datastore's metrics
//! under etcd's names; every node serves k8sd's own (`metrics::k8sd`) and the process'.
//!
//! TLS as the image mirror: the kubelet's serving certificate (it names the node's IPs on
//! every node), and clients need a certificate from the cluster CA, which every node holds
//! (a worker has no datastore CA). `docs/metrics.md` says how to issue one for Prometheus.

use std::sync::Arc;

use super::DaemonError;
use super::config::NodeConfig;
use crate::lb::LbHandle;
use crate::metrics::k8sd::{BackendMetrics, CertExpiry, ComponentMetrics};
use crate::metrics::{Text, server};
use crate::node::Node;
use crate::paths::Layout;
use crate::supervisor::Supervisor;

pub const METRICS_PORT: u16 = 2381;

/// What one scrape reads.
#[derive(Debug, Clone)]
struct Sources {
    pki_dir: std::path::PathBuf,
    datastore: Option<Node>,
    supervisor: Arc<Supervisor>,
    lb: Arc<LbHandle>,
}

/// Bind the listener and serve in the background. A port that cannot be bound is logged, not
/// fatal: the node works without its metrics.
pub async fn start(
    layout: &Layout,
    cfg: &NodeConfig,
    datastore: Option<Node>,
    supervisor: Arc<Supervisor>,
    lb: Arc<LbHandle>,
) -> Result<Option<MetricsHandle>, DaemonError> {
    let tls = super::listener_tls::node_listener_tls(layout, "metrics listener", &[b"http/1.1"])?;
    let addr = std::net::SocketAddr::new(cfg.advertise_address, METRICS_PORT);
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(%addr, error = %e, "metrics listener not started: is another etcd or k8sd using port 2381?");
            return Ok(None);
        }
    };
    let sources = Sources {
        pki_dir: layout.pki_dir(),
        datastore,
        supervisor,
        lb,
    };
    let render: server::Render = Arc::new(move || {
        let s = sources.clone();
        Box::pin(async move { exposition(&s).await })
    });
    tracing::info!(%addr, "metrics listener serving /metrics");
    let task = tokio::spawn(server::serve(listener, Some(tls), render, std::future::pending()));
    Ok(Some(MetricsHandle(task)))
}

async fn exposition(s: &Sources) -> String {
    let mut out = Text::new();
    if let Some(node) = &s.datastore {
        crate::etcd::metrics::render(node, &mut out).await;
    }
    let now = time::OffsetDateTime::now_utc();
    let certs: Vec<CertExpiry> = crate::pki::cert_status(&s.pki_dir)
        .unwrap_or_default()
        .into_iter()
        .map(|c| CertExpiry {
            file: c.file_name(),
            subject: c.common_name.unwrap_or_default(),
            remaining_seconds: (c.not_after - now).whole_seconds(),
        })
        .collect();
    let components: Vec<ComponentMetrics> = s
        .supervisor
        .status()
        .into_iter()
        .map(|c| ComponentMetrics {
            state: format!("{:?}", c.state).to_lowercase(),
            name: c.name,
            restarts: c.restarts,
        })
        .collect();
    let backends: Vec<BackendMetrics> =
        s.lb.status()
            .into_iter()
            .map(|b| BackendMetrics {
                address: b.address.to_string(),
                healthy: b.healthy,
                active_connections: b.active_connections,
                consecutive_failures: b.consecutive_failures,
            })
            .collect();
    crate::metrics::k8sd::render(&mut out, &certs, &components, &backends);
    crate::metrics::etcd::render_process(&mut out);
    out.finish()
}

/// Stops the listener (and frees its port) when the node stops.
#[derive(Debug)]
pub struct MetricsHandle(tokio::task::JoinHandle<()>);

impl Drop for MetricsHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}
