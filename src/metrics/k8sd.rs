//! k8sd's own metrics, served by the node daemon beside the datastore's: certificate expiry per
//! file (as k3s' `k3s_certificate_expiration_seconds`), the supervised components' restarts
//! and state, and the local API load balancer's backends. The daemon gathers plain values at
//! scrape time; this file only names and renders them.

use super::{Kind, Text};

/// One certificate file of the node's PKI.
#[derive(Debug, Clone)]
pub struct CertExpiry {
    /// The file name under `pki/`, e.g. `apiserver.crt`.
    pub file: String,
    /// The certificate's common name.
    pub subject: String,
    /// Seconds until it expires (negative once expired).
    pub remaining_seconds: i64,
}

/// One supervised component.
#[derive(Debug, Clone)]
pub struct ComponentMetrics {
    pub name: String,
    /// One of [`STATES`].
    pub state: String,
    pub restarts: u32,
}

/// The supervisor's states, as `k8sd status` prints them.
pub const STATES: [&str; 6] = ["starting", "running", "ready", "backoff", "stopped", "failed"];

/// One kube-apiserver behind the local API load balancer.
#[derive(Debug, Clone)]
pub struct BackendMetrics {
    /// `IP:port`.
    pub address: String,
    pub healthy: bool,
    pub active_connections: u64,
    pub consecutive_failures: u32,
}

#[allow(clippy::cast_precision_loss)] // seconds and counts stay far below 2^53
pub fn render(
    out: &mut Text,
    certs: &[CertExpiry],
    components: &[ComponentMetrics],
    backends: &[BackendMetrics],
) {
    out.family(
        "k8sd_certificate_expiration_seconds",
        Kind::Gauge,
        "Remaining lifetime on the certificate.",
    );
    for c in certs {
        out.sample(
            "k8sd_certificate_expiration_seconds",
            &[("file", &c.file), ("subject", &c.subject)],
            c.remaining_seconds as f64,
        );
    }
    out.family(
        "k8sd_component_restarts_total",
        Kind::Counter,
        "Times the supervisor respawned the component after it exited unplanned.",
    );
    for c in components {
        out.sample(
            "k8sd_component_restarts_total",
            &[("component", &c.name)],
            f64::from(c.restarts),
        );
    }
    out.family(
        "k8sd_component_state",
        Kind::Gauge,
        "1 for the state the component is in, 0 for the others.",
    );
    for c in components {
        for s in STATES {
            let v = if c.state == s { 1.0 } else { 0.0 };
            out.sample("k8sd_component_state", &[("component", &c.name), ("state", s)], v);
        }
    }
    out.family(
        "k8sd_lb_backend_healthy",
        Kind::Gauge,
        "1 when the local API load balancer's last /readyz probe of this kube-apiserver passed.",
    );
    for b in backends {
        out.sample(
            "k8sd_lb_backend_healthy",
            &[("backend", &b.address)],
            if b.healthy { 1.0 } else { 0.0 },
        );
    }
    out.family(
        "k8sd_lb_backend_active_connections",
        Kind::Gauge,
        "Connections the local API load balancer holds open to this kube-apiserver.",
    );
    for b in backends {
        out.sample(
            "k8sd_lb_backend_active_connections",
            &[("backend", &b.address)],
            b.active_connections as f64,
        );
    }
    out.family(
        "k8sd_lb_backend_consecutive_failures",
        Kind::Gauge,
        "Failed probes or dials of this kube-apiserver since its last success.",
    );
    for b in backends {
        out.sample(
            "k8sd_lb_backend_consecutive_failures",
            &[("backend", &b.address)],
            f64::from(b.consecutive_failures),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_is_a_series_and_only_the_current_one_is_1() {
        let mut t = Text::new();
        render(
            &mut t,
            &[CertExpiry {
                file: "apiserver.crt".into(),
                subject: "kube-apiserver".into(),
                remaining_seconds: 86_400,
            }],
            &[ComponentMetrics {
                name: "kubelet".into(),
                state: "backoff".into(),
                restarts: 3,
            }],
            &[BackendMetrics {
                address: "10.0.0.1:6443".into(),
                healthy: true,
                active_connections: 2,
                consecutive_failures: 0,
            }],
        );
        let s = t.finish();
        assert!(
            s.contains("# TYPE k8sd_certificate_expiration_seconds gauge\n"),
            "{s}"
        );
        assert!(
            s.contains("k8sd_certificate_expiration_seconds{file=\"apiserver.crt\",subject=\"kube-apiserver\"} 86400\n"),
            "{s}"
        );
        assert!(
            s.contains("k8sd_component_restarts_total{component=\"kubelet\"} 3\n"),
            "{s}"
        );
        assert!(
            s.contains("k8sd_component_state{component=\"kubelet\",state=\"backoff\"} 1\n"),
            "{s}"
        );
        assert!(
            s.contains("k8sd_component_state{component=\"kubelet\",state=\"ready\"} 0\n"),
            "{s}"
        );
        assert_eq!(
            s.lines()
                .filter(|l| l.starts_with("k8sd_component_state{"))
                .count(),
            STATES.len()
        );
        assert!(
            s.contains("k8sd_lb_backend_healthy{backend=\"10.0.0.1:6443\"} 1\n"),
            "{s}"
        );
        assert!(
            s.contains("k8sd_lb_backend_active_connections{backend=\"10.0.0.1:6443\"} 2\n"),
            "{s}"
        );
    }
}
