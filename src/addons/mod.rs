//! The cluster add-ons k8sd ships (CoreDNS, metrics-server, local-path-provisioner): their
//! names, their manifests (compiled in from `assets/addons/manifests/`), and rendering them for
//! a cluster. Pure: no IO, no processes; the daemon (`daemon/addons.rs`) applies what this
//! renders and keeps enablement in the datastore.
//!
//! Every manifest is a `{{marker}}` template rendered with `template::render`, which
//! refuses to leave a marker behind; every image comes from `images::catalog` and is never
//! pulled (`imagePullPolicy: Never`), since nodes have no registry.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

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
    #[error("rendering the {addon} add-on's manifest: {source}")]
    Render {
        addon: &'static str,
        #[source]
        source: crate::template::TemplateError,
    },
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
    /// Where local-path volumes live on a node that has not recorded its own storage dir (the
    /// applying node's `Layout::storage_dir`).
    pub storage_dir: PathBuf,
    /// Each node's own storage dir by node name, from its Node's [`STORAGE_DIR_ANNOTATION`]:
    /// a node's volumes go under its own data dir, whatever the applying node's is.
    pub node_storage_dirs: BTreeMap<String, PathBuf>,
    /// CoreDNS replicas: min(2, schedulable nodes), see [`dns_replicas`].
    pub dns_replicas: u32,
}

/// The annotation on which each node's k8sd records its storage dir (`<data dir>/storage`) on
/// its own Node, for the storage add-on's `nodePathMap`.
pub const STORAGE_DIR_ANNOTATION: &str = "k8sd.io/storage-dir";

/// Why a recorded storage dir cannot be used. local-path-provisioner refuses its whole config
/// for one bad path, so a bad annotation is left out rather than rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageDirError {
    #[error("{path:?} is not an absolute path")]
    NotAbsolute { path: String },
    #[error("{path:?} is the root directory or has a `.` or `..` component")]
    NotNormal { path: String },
}

/// Check a storage dir read from a Node annotation: absolute, not `/`, no `.` or `..`.
pub fn check_storage_dir(path: &str) -> Result<PathBuf, StorageDirError> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(StorageDirError::NotAbsolute { path: path.into() });
    }
    // On the text: `Path::components` drops an inner `.`, which would hide it.
    let dots = path.split('/').any(|c| c == "." || c == "..");
    if dots || p.components().count() < 2 {
        return Err(StorageDirError::NotNormal { path: path.into() });
    }
    Ok(p.to_path_buf())
}

/// local-path-provisioner's `nodePathMap` as JSON: one entry per node that recorded its
/// storage dir, then the default for the rest (nodes whose k8sd has not recorded one yet).
/// JSON-encoded here, not templated, so any path is quoted correctly.
pub fn node_path_map(default: &Path, nodes: &BTreeMap<String, PathBuf>) -> String {
    let entry =
        |node: &str, path: &Path| serde_json::json!({"node": node, "paths": [path.display().to_string()]});
    let entries: Vec<serde_json::Value> = nodes
        .iter()
        .map(|(n, p)| entry(n, p))
        .chain(std::iter::once(entry(
            "DEFAULT_PATH_FOR_NON_LISTED_NODES",
            default,
        )))
        .collect();
    serde_json::Value::Array(entries).to_string()
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
        (
            "storage_node_path_map",
            node_path_map(&v.storage_dir, &v.node_storage_dirs),
        ),
        ("coredns_image", catalog::coredns_image()),
        ("metrics_server_image", catalog::metrics_server_image()),
        (
            "local_path_provisioner_image",
            catalog::local_path_provisioner_image(),
        ),
        ("busybox_image", images::BUSYBOX_IMAGE.to_string()),
    ];
    render(addon.template(), &values).map_err(|source| AddonError::Render {
        addon: addon.name(),
        source,
    })
}

#[cfg(test)]
mod tests;
