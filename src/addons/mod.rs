//! The cluster add-ons k8sd ships (CoreDNS, metrics-server, local-path-provisioner): their
//! names, their manifests (compiled in from `assets/addons/manifests/`), and rendering them for
//! a cluster. Pure: no IO, no processes; the daemon (`daemon/addons.rs`) applies what this
//! renders and keeps enablement in the datastore.
//!
//! Every manifest is a `{{marker}}` template rendered with `template::render`, which
//! refuses to leave a marker behind; every image comes from `images::catalog` and is never
//! pulled (`imagePullPolicy: Never`), since nodes have no registry.

use std::net::IpAddr;
use std::path::PathBuf;

use crate::images::{self, catalog};
use crate::template::render;

/// One add-on. The name is what users type (`k8sd disable dns`) and what the datastore keys on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Addon {
    Dns,
    Metrics,
    Storage,
}

/// Where an add-on's workload runs: the Deployment whose readiness is the add-on's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    pub namespace: &'static str,
    pub deployment: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddonError {
    #[error("unknown add-on {name:?}; valid add-ons are: {valid}")]
    Unknown { name: String, valid: String },
    #[error("rendering the {addon} add-on's manifest: {reason}")]
    Render { addon: &'static str, reason: String },
}

impl Addon {
    /// Every add-on, in apply order (DNS first: the others' pods may resolve names).
    pub const ALL: [Addon; 3] = [Addon::Dns, Addon::Metrics, Addon::Storage];

    pub fn name(self) -> &'static str {
        match self {
            Addon::Dns => "dns",
            Addon::Metrics => "metrics",
            Addon::Storage => "storage",
        }
    }

    /// What the add-on is, for `k8sd status` and help texts.
    pub fn description(self) -> &'static str {
        match self {
            Addon::Dns => "CoreDNS: cluster DNS (Service kube-system/kube-dns)",
            Addon::Metrics => "metrics-server: the resource metrics API (kubectl top)",
            Addon::Storage => "local-path-provisioner: the default StorageClass local-path",
        }
    }

    pub fn workload(self) -> Workload {
        let (namespace, deployment) = match self {
            Addon::Dns => ("kube-system", "coredns"),
            Addon::Metrics => ("kube-system", "metrics-server"),
            Addon::Storage => ("kube-system", "local-path-provisioner"),
        };
        Workload {
            namespace,
            deployment,
        }
    }

    fn template(self) -> &'static str {
        match self {
            Addon::Dns => include_str!("../../assets/addons/manifests/dns.yaml"),
            Addon::Metrics => include_str!("../../assets/addons/manifests/metrics.yaml"),
            Addon::Storage => include_str!("../../assets/addons/manifests/storage.yaml"),
        }
    }

    pub fn parse(name: &str) -> Result<Addon, AddonError> {
        let wanted = name.trim().to_ascii_lowercase();
        Addon::ALL
            .into_iter()
            .find(|a| a.name() == wanted)
            .ok_or_else(|| AddonError::Unknown {
                name: name.to_string(),
                valid: valid_names(),
            })
    }
}

impl std::fmt::Display for Addon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// "dns, metrics, storage": for error messages and help.
pub fn valid_names() -> String {
    Addon::ALL.map(Addon::name).join(", ")
}

/// Parse a `--disable` list: names, each possibly comma-separated ("dns,storage"); empty
/// entries are ignored, duplicates collapse, and any unknown name refuses the whole list.
pub fn parse_list(items: &[String]) -> Result<Vec<Addon>, AddonError> {
    let mut out = Vec::new();
    for name in items.iter().flat_map(|s| s.split(',')) {
        if name.trim().is_empty() {
            continue;
        }
        let a = Addon::parse(name)?;
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out.sort();
    Ok(out)
}

/// What the manifests depend on in a given cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderValues {
    /// The `kube-dns` Service's ClusterIP (`NodeConfig::dns_service_ip`).
    pub dns_service_ip: IpAddr,
    /// The metrics APIService's `caBundle`: the cluster CA certificate, base64. metrics-server
    /// serves a certificate from that CA (`daemon/addon_tls.rs`).
    pub cluster_ca_bundle: String,
    /// The TLS 1.2 cipher suites metrics-server may offer (comma-separated Go names): the same
    /// AEAD-only list as the node's components.
    pub tls_cipher_suites: String,
    /// Where local-path volumes live on every node (`Layout::storage_dir`).
    pub storage_dir: PathBuf,
    /// CoreDNS replicas: min(2, schedulable nodes), see [`dns_replicas`].
    pub dns_replicas: u32,
}

/// Two replicas once there are two nodes to spread them over (required anti-affinity keeps
/// them apart), one on a single node, where a second could never be scheduled.
pub fn dns_replicas(schedulable_nodes: usize) -> u32 {
    if schedulable_nodes >= 2 { 2 } else { 1 }
}

/// The add-on's manifest for this cluster: a multi-document YAML stream.
pub fn render_manifest(addon: Addon, v: &RenderValues) -> Result<String, AddonError> {
    let values = [
        ("dns_service_ip", v.dns_service_ip.to_string()),
        ("dns_replicas", v.dns_replicas.to_string()),
        ("cluster_ca_bundle", v.cluster_ca_bundle.clone()),
        ("tls_cipher_suites", v.tls_cipher_suites.clone()),
        ("storage_dir", v.storage_dir.display().to_string()),
        ("coredns_image", catalog::coredns_image()),
        ("metrics_server_image", catalog::metrics_server_image()),
        (
            "local_path_provisioner_image",
            catalog::local_path_provisioner_image(),
        ),
        ("busybox_image", images::BUSYBOX_IMAGE.to_string()),
    ];
    render(addon.template(), &values).map_err(|reason| AddonError::Render {
        addon: addon.name(),
        reason,
    })
}

#[cfg(test)]
mod tests;
