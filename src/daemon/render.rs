//! `k8sd debug render`: write into a fresh data dir exactly what `k8sd init` writes for a
//! control-plane node, through the same functions, and start nothing:
//!
//! ```text
//!  checks (as init: node.yaml absent, settings, kubebin, runtime, extra args) ─▶ nothing written
//!  ─▶ Secrets key + node.yaml ─▶ CAs, leaves, kubeconfigs ─▶ component configs
//!  ─▶ [CNI configuration for --node-pod-cidr] ─▶ the supervisor's specs, not started
//! ```
//!
//! The report ([`Rendered`]) is what a program needs to run the components by hand: every file
//! with its mode, each component's full command line (k8sd's defaults with the operator's
//! changes applied) and environment in start order, and where the datastore would listen with
//! which files. `tests/e2e/k8s-smoke.sh` runs the upstream components from it against
//! Debian's etcd, so a failure there is the components' or the host's, not the daemon's.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::bring_up::{kubeconfig_server, make_node_dirs, node_identity, write_control_plane_pki};
use super::components::{self, Ctx};
use super::config::{self, ConfigError, InitRequest, NodeConfig};
use super::datastore::DatastoreTls;
use super::{Daemon, DaemonError, make_roots, podnet, write_new_node};
use crate::pki::IpCidr;

/// The version of [`Rendered`]'s JSON; a change that removes or renames a field bumps it.
pub const RENDER_FORMAT_VERSION: u32 = 1;

/// What `debug render` takes beyond `init`'s settings: the two things the daemon itself would
/// otherwise provide.
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    /// Also write the CNI configuration for this pod range of the Node, as the daemon's pod
    /// networking loop does once controller-manager gives the Node its range.
    pub node_pod_cidr: Option<String>,
    /// The server the kubeconfigs name, instead of the local API load balancer (which only a
    /// running daemon serves).
    pub kubeconfig_server: Option<String>,
}

/// `k8sd debug render`'s output (JSON, kebab-case keys).
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Rendered {
    pub version: u32,
    pub node: RenderedNode,
    pub layout: RenderedLayout,
    pub datastore: RenderedDatastore,
    /// In the order the supervisor starts them.
    pub components: Vec<RenderedComponent>,
    /// Every directory and file under the data dir and the run dir, sorted by path.
    pub files: Vec<RenderedFile>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RenderedNode {
    pub name: String,
    pub role: String,
    pub advertise_address: String,
    pub pod_cidr: String,
    pub service_cidr: String,
    pub kubeconfig_server: String,
}

/// The paths a program running the components needs (`paths::Layout`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RenderedLayout {
    pub data_dir: PathBuf,
    pub run_dir: PathBuf,
    pub pki_dir: PathBuf,
    pub kubeconfig_dir: PathBuf,
    pub admin_kubeconfig: PathBuf,
    pub config_dir: PathBuf,
    pub logs_dir: PathBuf,
    pub kubelet_root: PathBuf,
    pub containerd_root: PathBuf,
    pub containerd_state: PathBuf,
    pub containerd_socket: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub cni_ipam_dir: PathBuf,
    pub pod_logs_dir: PathBuf,
    pub cgroup_root: String,
}

/// Where k8sd's datastore serves and with which files, under etcd's flag names, so an etcd
/// can stand in for it: kube-apiserver's `--etcd-servers` names `client-url`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RenderedDatastore {
    pub client_url: String,
    pub peer_url: String,
    pub trusted_ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub peer_cert_file: PathBuf,
    pub peer_key_file: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct RenderedComponent {
    pub name: String,
    /// The program, then every argument.
    pub argv: Vec<String>,
    /// Set on top of k8sd's own environment.
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub struct RenderedFile {
    pub path: PathBuf,
    /// `dir` or `file`.
    pub kind: &'static str,
    /// The permission bits in octal, as `0600`.
    pub mode: String,
}

impl Daemon {
    /// Check `req` as `init` does, then write what `init` writes and report it. A refusal
    /// writes nothing.
    pub async fn render(&self, req: &InitRequest, opts: &RenderOptions) -> Result<Rendered, DaemonError> {
        let l = &self.opts.layout;
        if l.node_file().exists() {
            return Err(DaemonError::AlreadyInitialised(l.node_file()));
        }
        refuse_used_dir(&l.data_dir)?;
        let cfg = config::validate(req, &config::host_name(), &config::local_addresses())?;
        let kubebin = self.kubebin()?;
        self.runtime()?;
        self.check_extra_args(&cfg).await?;
        let server = match &opts.kubeconfig_server {
            Some(url) => check_server_url(url)?,
            None => kubeconfig_server(),
        };
        let node_pod_cidr = match &opts.node_pod_cidr {
            Some(c) => Some(check_node_pod_cidr(&cfg, c)?),
            None => None,
        };

        make_roots(l)?;
        write_new_node(l, &cfg)?;
        make_node_dirs(l)?;
        write_control_plane_pki(l, &node_identity(&cfg)?, &server)?;
        let ctx = Ctx {
            layout: l,
            cfg: &cfg,
            cgroup_root: &self.opts.cgroup_root,
            encrypt_secrets: self.secrets_encryption()?,
        };
        self.write_component_configs(&ctx)?;
        if let Some(cidr) = &node_pod_cidr {
            podnet::write_conflist(&ctx, cidr)?;
        }
        let mut groups = self.control_plane_groups(&ctx, &kubebin)?;
        groups.extend(self.node_groups(&ctx, &kubebin)?);
        let components = groups
            .into_iter()
            .flatten()
            .map(|spec| RenderedComponent {
                argv: std::iter::once(spec.program.into_os_string())
                    .chain(spec.args)
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect(),
                env: spec
                    .env
                    .into_iter()
                    .map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned()))
                    .collect(),
                name: spec.name,
            })
            .collect();
        let mut files = list_tree(&l.data_dir)?;
        files.extend(list_tree(&l.run_dir)?);
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Rendered {
            version: RENDER_FORMAT_VERSION,
            node: node_report(&cfg, server),
            layout: self.layout_report(),
            datastore: datastore_report(l, &cfg),
            components,
            files,
        })
    }

    fn layout_report(&self) -> RenderedLayout {
        let l = &self.opts.layout;
        RenderedLayout {
            data_dir: l.data_dir.clone(),
            run_dir: l.run_dir.clone(),
            pki_dir: l.pki_dir(),
            kubeconfig_dir: l.kubeconfig_dir(),
            admin_kubeconfig: l.admin_kubeconfig(),
            config_dir: l.config_dir(),
            logs_dir: l.logs_dir(),
            kubelet_root: l.kubelet_root(),
            containerd_root: l.containerd_root(),
            containerd_state: l.containerd_state(),
            containerd_socket: l.containerd_socket(),
            cni_conf_dir: l.cni_conf_dir(),
            cni_ipam_dir: l.cni_ipam_dir(),
            pod_logs_dir: l.pod_logs_dir(),
            cgroup_root: self.opts.cgroup_root.clone(),
        }
    }
}

fn node_report(cfg: &NodeConfig, kubeconfig_server: String) -> RenderedNode {
    RenderedNode {
        name: cfg.node_name.clone(),
        role: cfg.role_name(),
        advertise_address: cfg.advertise_address.to_string(),
        pod_cidr: cfg.pod_cidr.clone(),
        service_cidr: cfg.service_cidr.clone(),
        kubeconfig_server,
    }
}

fn datastore_report(l: &crate::paths::Layout, cfg: &NodeConfig) -> RenderedDatastore {
    let tls = DatastoreTls::of(l);
    let peer = std::net::SocketAddr::new(cfg.advertise_address, components::PEER_PORT);
    RenderedDatastore {
        client_url: format!("https://{}", components::datastore_addr()),
        peer_url: format!("https://{peer}"),
        trusted_ca_file: tls.ca,
        cert_file: tls.server_cert,
        key_file: tls.server_key,
        peer_cert_file: tls.peer_cert,
        peer_key_file: tls.peer_key,
    }
}

/// A render makes a new node: into a data dir that holds anything (another node's PKI, a
/// datastore, a daemon's log) it would mix its files with those.
fn refuse_used_dir(dir: &Path) -> Result<(), DaemonError> {
    let used = match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(source) => {
            return Err(DaemonError::Read {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    if used {
        return Err(ConfigError::Invalid {
            what: "data dir",
            value: dir.display().to_string(),
            reason: "it is not empty; render into a new or empty --data-dir".into(),
        }
        .into());
    }
    Ok(())
}

/// The kubeconfigs' server: an `https://` URL with a host and nothing after it.
fn check_server_url(url: &str) -> Result<String, ConfigError> {
    let host = url.strip_prefix("https://").unwrap_or_default();
    if host.is_empty() || host.contains(['/', '?', '#']) || host.contains(char::is_whitespace) {
        return Err(ConfigError::Invalid {
            what: "kubeconfig server",
            value: url.to_string(),
            reason: "write https://HOST:PORT, such as https://127.0.0.1:6443 for kube-apiserver itself"
                .into(),
        });
    }
    Ok(url.to_string())
}

/// The Node's pod range must be a range inside the cluster's, as controller-manager gives.
fn check_node_pod_cidr(cfg: &NodeConfig, cidr: &str) -> Result<String, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        what: "node pod CIDR",
        value: cidr.to_string(),
        reason,
    };
    let node: IpCidr = cidr.parse().map_err(|e| invalid(format!("{e}")))?;
    let cluster: IpCidr = cfg
        .pod_cidr
        .parse()
        .map_err(|e| invalid(format!("the pod CIDR: {e}")))?;
    let inside = node.prefix() >= cluster.prefix()
        && IpCidr::new(node.network(), cluster.prefix()).is_ok_and(|n| n.network() == cluster.network());
    if !inside {
        return Err(invalid(format!(
            "not inside the pod CIDR {}; give a range of it, such as its first /24",
            cfg.pod_cidr
        )));
    }
    Ok(node.to_string())
}

/// Every directory and file under `root` (itself included), with its mode.
fn list_tree(root: &Path) -> Result<Vec<RenderedFile>, DaemonError> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DaemonError::Read { path, source }
    };
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).map_err(read_err(&path))?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(read_err(&path))? {
                pending.push(entry.map_err(read_err(&path))?.path());
            }
        }
        out.push(RenderedFile {
            kind: if meta.is_dir() { "dir" } else { "file" },
            mode: format!("{:04o}", meta.permissions().mode() & 0o7777),
            path,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_pod_range_must_lie_inside_the_clusters() {
        let cfg = NodeConfig::example();
        assert_eq!(check_node_pod_cidr(&cfg, "10.88.3.0/24").unwrap(), "10.88.3.0/24");
        assert_eq!(check_node_pod_cidr(&cfg, "10.88.0.0/16").unwrap(), "10.88.0.0/16");
        for bad in ["10.89.0.0/24", "10.0.0.0/8", "10.88.0.0", "ten/24"] {
            let err = check_node_pod_cidr(&cfg, bad).unwrap_err().to_string();
            assert!(err.contains("node pod CIDR") && err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn the_kubeconfig_server_is_an_https_url_without_a_path() {
        assert!(check_server_url("https://127.0.0.1:6443").is_ok());
        for bad in [
            "http://127.0.0.1:6443",
            "https://",
            "https://h/x",
            "127.0.0.1:6443",
        ] {
            let err = check_server_url(bad).unwrap_err().to_string();
            assert!(err.contains("https://HOST:PORT"), "{bad}: {err}");
        }
    }
}
