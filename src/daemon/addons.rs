//! Applying the add-ons (`crate::addons`) to the cluster and keeping them current.
//!
//! Every control-plane node runs one reconcile loop once its node is up: it reads each add-on's
//! enablement from the datastore (`/k8sd/addons/<name>`, absent = enabled), renders the
//! manifest for this cluster, and applies it with `kubectl apply --server-side
//! --field-manager=k8sd --force-conflicts` (or deletes it when disabled). Server-side apply makes
//! k8sd own exactly the fields its manifests set: an upgraded binary changes them, a user's
//! changes elsewhere survive. A manifest is re-applied when its rendering or enablement
//! changes, and every 10 minutes to repair deletions; failures are logged and retried with
//! backoff, and never hold the node's readiness.
//!
//! The rendering follows the Nodes: CoreDNS's replicas their schedulable count, the storage
//! add-on's `nodePathMap` the storage dir each node recorded (`daemon/storagedir.rs`). So a node
//! that joins or records its storage dir changes the manifest, which is applied within a tick.
//!
//! Over 600 lines only with its tests (about 520 lines of code): one job, the add-ons' reconcile
//! loop and its reports.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::api::AddonReport;
use super::config::{NodeConfig, Role};
use super::{Daemon, DaemonError, addon_tls, components};
use crate::addons::{self, Addon, AddonError, RenderValues};
use crate::cluster::Kubectl;
use crate::cluster::registry::{self, RegistryError};

/// How often the loop looks at enablement and the node count.
const TICK: Duration = Duration::from_secs(30);
/// How often an unchanged manifest is applied anyway (repairs objects someone deleted).
const REFRESH: Duration = Duration::from_secs(600);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Why a read from kube-apiserver with the admin identity failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiRead {
    /// The admin client certificate could not be loaded (boxed: it is a `DaemonError`, which
    /// holds this one).
    #[error("{0}")]
    Credentials(#[source] Box<DaemonError>),
    #[error(transparent)]
    Http(#[from] crate::httpc::HttpError),
    #[error("kube-apiserver answered HTTP {0}")]
    Status(u16),
    #[error("kube-apiserver's answer is not the JSON expected: {0}")]
    Json(#[from] serde_json::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum AddonsError {
    #[error(transparent)]
    Addon(#[from] AddonError),
    #[error(
        "this node is not initialised; add-ons are managed on a control-plane node (`k8sd init` or `k8sd join`)"
    )]
    NotInitialised,
    #[error("this is a worker node; run `k8sd enable|disable NAME` on a control-plane node")]
    Worker,
    #[error("the control plane is not running yet ({phase}); wait for `k8sd status --wait-ready` and retry")]
    NotRunning { phase: String },
    #[error("add-on state in the datastore: {0}")]
    Registry(#[from] RegistryError),
    #[error(
        "service CIDR {service_cidr} has no 10th address for the kube-dns Service; node.yaml was edited by hand?"
    )]
    NoDnsIp { service_cidr: String },
    #[error("cannot run kubectl ({kubebin}): {source}")]
    Spawn {
        kubebin: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{action} the {addon} add-on failed: {stderr}; k8sd retries in the background (see `k8sd logs k8sd`)"
    )]
    Kubectl {
        action: &'static str,
        addon: Addon,
        stderr: String,
    },
    #[error("listing nodes from kube-apiserver: {source}")]
    Nodes {
        #[source]
        source: ApiRead,
    },
    #[error("{what}: {source}")]
    ServingCert {
        what: String,
        #[source]
        source: crate::pki::PkiError,
    },
    #[error("reading the Secret {secret}: {source}")]
    SecretRead {
        secret: String,
        #[source]
        source: ApiRead,
    },
    #[error(
        "reading the cluster CA certificate {path}: {source}; is this node's PKI intact (`k8sd status`)?"
    )]
    CaCert {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What this node last did for an add-on.
#[derive(Debug, Clone, Copy)]
struct Applied {
    /// Of the enablement and the rendered manifest.
    digest: u64,
    at: Instant,
}

/// The daemon's add-on state: what was last applied, and the `init --disable` list waiting to
/// be recorded once the datastore runs.
#[derive(Debug, Default)]
pub struct AddonManager {
    /// Also serialises kubectl runs: the loop and `k8sd enable|disable` never race.
    applied: tokio::sync::Mutex<HashMap<Addon, Applied>>,
    init_disabled: std::sync::Mutex<Option<Vec<Addon>>>,
}

impl AddonManager {
    /// Remember `init --disable`: recorded by the first reconcile, before anything is applied.
    pub fn set_init_disabled(&self, list: Vec<Addon>) {
        *self.init_disabled.lock().unwrap_or_else(|e| e.into_inner()) = Some(list);
    }

    fn take_init_disabled(&self) -> Option<Vec<Addon>> {
        self.init_disabled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

fn digest(enabled: bool, manifest: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (enabled, manifest).hash(&mut h);
    h.finish()
}

impl Daemon {
    /// Start the reconcile loop (control-plane nodes). It ends when the node stops.
    pub(super) fn spawn_addons(self: &Arc<Self>, cfg: NodeConfig) {
        if cfg.role != Role::ControlPlane {
            return;
        }
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut backoff = Duration::from_secs(5);
            loop {
                let Some(d) = me.upgrade() else { return };
                if d.running().is_none() {
                    return;
                }
                let delay = match d.reconcile_addons(&cfg).await {
                    Ok(()) => {
                        backoff = Duration::from_secs(5);
                        TICK
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "add-ons not reconciled");
                        let b = backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        b
                    }
                };
                drop(d);
                tokio::time::sleep(delay).await;
            }
        });
    }

    /// One pass over every add-on. Keeps going past a failing add-on; returns the first error.
    async fn reconcile_addons(&self, cfg: &NodeConfig) -> Result<(), AddonsError> {
        let (kubectl, ds) = self.addon_context()?;
        if let Some(list) = self.addons.take_init_disabled() {
            for a in &list {
                if let Err(e) = registry::set_addon_if_absent(&ds, a.name(), false).await {
                    // Put it back: the next pass must record it before applying anything.
                    self.addons.set_init_disabled(list.clone());
                    return Err(e.into());
                }
            }
        }
        let values = self.render_values(cfg).await?;
        let mut first_err = None;
        for a in Addon::ALL {
            let res = match registry::addon_enabled(&ds, a.name()).await {
                Ok(enabled) => self.reconcile_one(&kubectl, a, enabled, &values, false).await,
                Err(e) => Err(e.into()),
            };
            if let Err(e) = res {
                tracing::warn!(addon = a.name(), error = %e, "add-on not reconciled");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    async fn render_values(&self, cfg: &NodeConfig) -> Result<RenderValues, AddonsError> {
        let nodes = self.nodes().await?;
        let dns_service_ip = cfg.dns_service_ip().ok_or_else(|| AddonsError::NoDnsIp {
            service_cidr: cfg.service_cidr.clone(),
        })?;
        let ca_path = self
            .layout()
            .pki_dir()
            .join(crate::pki::CaKind::Cluster.cert_file());
        let ca_cert = tokio::fs::read_to_string(&ca_path)
            .await
            .map_err(|source| AddonsError::CaCert {
                path: ca_path,
                source,
            })?;
        Ok(RenderValues {
            dns_service_ip,
            cluster_ca_bundle: addon_tls::ca_bundle(&ca_cert),
            tls_cipher_suites: components::TLS_CIPHER_SUITES.join(","),
            storage_dir: self.layout().storage_dir(),
            node_storage_dirs: storage_dirs(&nodes),
            dns_replicas: addons::dns_replicas(schedulable(&nodes)),
        })
    }

    /// Apply (enabled) or delete (disabled) one add-on unless this node already did so for the
    /// same manifest recently; `force` does it regardless.
    async fn reconcile_one(
        &self,
        kubectl: &Kubectl,
        addon: Addon,
        enabled: bool,
        values: &RenderValues,
        force: bool,
    ) -> Result<(), AddonsError> {
        let manifest = addons::render_manifest(addon, values)?;
        let digest = digest(enabled, &manifest);
        let mut applied = self.addons.applied.lock().await;
        if !force
            && let Some(last) = applied.get(&addon)
            && last.digest == digest
            && last.at.elapsed() < REFRESH
        {
            return Ok(());
        }
        if enabled {
            if addon == Addon::Metrics {
                // Before the Deployment that mounts it, so the pod starts with its certificate.
                self.ensure_metrics_tls(kubectl).await?;
            }
            run_kubectl(
                kubectl,
                addon,
                "applying",
                &[
                    "apply",
                    "--server-side",
                    "--field-manager=k8sd",
                    "--force-conflicts",
                    "--request-timeout=60s",
                    "-f",
                    "-",
                ],
                &manifest,
            )
            .await?;
        } else {
            run_kubectl(
                kubectl,
                addon,
                "removing",
                &[
                    "delete",
                    "--ignore-not-found",
                    "--wait=true",
                    "--timeout=90s",
                    "--request-timeout=60s",
                    "-f",
                    "-",
                ],
                &manifest,
            )
            .await?;
            if addon == Addon::Metrics {
                // Not in the manifest (its data has its own field manager), so removed here.
                run_kubectl(
                    kubectl,
                    addon,
                    "removing",
                    &[
                        "delete",
                        "secret",
                        "--namespace",
                        addon_tls::METRICS_SERVER.namespace,
                        addon_tls::SECRET,
                        "--ignore-not-found",
                        "--request-timeout=60s",
                    ],
                    "",
                )
                .await?;
            }
        }
        tracing::info!(addon = addon.name(), enabled, "add-on reconciled");
        applied.insert(
            addon,
            Applied {
                digest,
                at: Instant::now(),
            },
        );
        Ok(())
    }

    /// `k8sd enable|disable NAME`: record the choice for the whole cluster, then apply or
    /// remove the add-on now. The other control-plane nodes follow within one tick.
    pub async fn set_addon(&self, name: &str, enable: bool) -> Result<(), AddonsError> {
        let addon = Addon::parse(name)?;
        let (kubectl, ds) = self.addon_context()?;
        let cfg = self.running().map(|r| r.cfg).ok_or(AddonsError::NotInitialised)?;
        registry::set_addon(&ds, addon.name(), enable).await?;
        let values = self.render_values(&cfg).await?;
        self.reconcile_one(&kubectl, addon, enable, &values, true).await
    }

    /// kubectl and the datastore, or why this node cannot manage add-ons.
    fn addon_context(&self) -> Result<(Kubectl, crate::node::Node), AddonsError> {
        let Some(r) = self.running() else {
            return Err(if self.layout().node_file().exists() {
                AddonsError::NotRunning {
                    phase: format!("{:?}", self.phase()),
                }
            } else {
                AddonsError::NotInitialised
            });
        };
        if r.cfg.role == Role::Worker {
            return Err(AddonsError::Worker);
        }
        let ds = r.datastore.ok_or_else(|| AddonsError::NotRunning {
            phase: "the datastore is not running".into(),
        })?;
        let kubectl = self.kubectl().map_err(|_| AddonsError::NotRunning {
            phase: "kubebin is missing".into(),
        })?;
        Ok((kubectl, ds))
    }

    /// The NodeList: CoreDNS replicas follow the schedulable nodes, local volumes each node's
    /// recorded storage dir.
    async fn nodes(&self) -> Result<serde_json::Value, AddonsError> {
        let err = |source: ApiRead| AddonsError::Nodes { source };
        let client = self
            .admin_client()
            .map_err(|e| err(ApiRead::Credentials(Box::new(e))))?;
        let (code, body) = client
            .get(
                components::apiserver_addr(),
                "/api/v1/nodes",
                Duration::from_secs(10),
            )
            .await
            .map_err(|e| err(e.into()))?;
        if code != 200 {
            return Err(err(ApiRead::Status(code)));
        }
        serde_json::from_slice(&body).map_err(|e| err(e.into()))
    }

    /// Every add-on with its enablement and its Deployment's ready/desired replicas.
    pub(super) async fn addon_reports(&self, ds: &crate::node::Node) -> Vec<AddonReport> {
        let client = self.admin_client().ok();
        let mut out = Vec::new();
        for a in Addon::ALL {
            let enabled = registry::addon_enabled(ds, a.name()).await;
            let w = a.workload();
            let deployment = match &client {
                Some(c) => c
                    .get(
                        components::apiserver_addr(),
                        &format!(
                            "/apis/apps/v1/namespaces/{}/deployments/{}",
                            w.namespace, w.deployment
                        ),
                        Duration::from_secs(3),
                    )
                    .await
                    .ok(),
                None => None,
            };
            out.push(addon_report(a, enabled.ok(), deployment));
        }
        out
    }
}

/// Count nodes that are Ready and not cordoned.
fn schedulable(nodes: &serde_json::Value) -> usize {
    nodes["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|n| n["spec"]["unschedulable"] != true)
                .filter(|n| {
                    n["status"]["conditions"]
                        .as_array()
                        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Each node's storage dir as its k8sd recorded it (`daemon/storagedir.rs`). A node without
/// the annotation is left out (it takes the default path); one whose value local-path-provisioner
/// would refuse is left out with a warning, since one bad path would stop every volume.
fn storage_dirs(nodes: &serde_json::Value) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    for n in nodes["items"].as_array().into_iter().flatten() {
        let (Some(name), Some(dir)) = (
            n["metadata"]["name"].as_str(),
            n["metadata"]["annotations"][addons::STORAGE_DIR_ANNOTATION].as_str(),
        ) else {
            continue;
        };
        match addons::check_storage_dir(dir) {
            Ok(dir) => {
                out.insert(name.to_string(), dir);
            }
            Err(e) => tracing::warn!(
                node = name,
                error = %e,
                "ignoring the node's {} annotation; its volumes take the default path until its k8sd records a valid one",
                addons::STORAGE_DIR_ANNOTATION
            ),
        }
    }
    out
}

/// One add-on's line in `k8sd status`, from its enablement (None: unreadable) and the API's
/// answer for its Deployment (None: no answer).
fn addon_report(addon: Addon, enabled: Option<bool>, deployment: Option<(u16, Vec<u8>)>) -> AddonReport {
    let w = addon.workload();
    let mut r = AddonReport {
        name: addon.name().into(),
        enabled: enabled.unwrap_or(false),
        ready: false,
        ready_replicas: 0,
        desired_replicas: 0,
        state: String::new(),
    };
    let Some(enabled) = enabled else {
        r.state = "unknown: the datastore did not answer".into();
        return r;
    };
    match deployment {
        Some((200, body)) => {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let count = |v: &serde_json::Value, default| {
                v.as_u64()
                    .map_or(default, |n| u32::try_from(n).unwrap_or(u32::MAX))
            };
            r.desired_replicas = count(&v["spec"]["replicas"], 1);
            r.ready_replicas = count(&v["status"]["readyReplicas"], 0);
            let current = v["status"]["observedGeneration"].as_i64() >= v["metadata"]["generation"].as_i64()
                && v["status"]["updatedReplicas"].as_u64().unwrap_or(0) >= u64::from(r.desired_replicas);
            r.ready = enabled && r.desired_replicas > 0 && r.ready_replicas >= r.desired_replicas && current;
            r.state = match (enabled, r.ready) {
                (true, true) => "ready".into(),
                (true, false) => format!(
                    "not ready: see `k8sd kubectl -n {} describe deployment {}`",
                    w.namespace, w.deployment
                ),
                (false, _) => "disabled (being removed)".into(),
            };
        }
        Some((404, _)) if !enabled => {
            r.ready = true;
            r.state = "disabled".into();
        }
        Some((404, _)) => r.state = "not applied yet".into(),
        Some((code, _)) => r.state = format!("unknown: kube-apiserver answered HTTP {code}"),
        None => r.state = "unknown: kube-apiserver did not answer".into(),
    }
    if !enabled {
        // Nothing to wait for: `--wait-ready` only waits for enabled add-ons.
        r.ready = true;
    }
    r
}

pub(super) async fn run_kubectl(
    kubectl: &Kubectl,
    addon: Addon,
    action: &'static str,
    args: &[&str],
    stdin: &str,
) -> Result<(), AddonsError> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(&kubectl.kubebin)
        .arg("kubectl")
        .arg(format!("--kubeconfig={}", kubectl.kubeconfig.display()))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| AddonsError::Spawn {
            kubebin: kubectl.kubebin.clone(),
            source,
        })?;
    if let Some(mut input) = child.stdin.take() {
        // A write error means kubectl exited early; its stderr says why.
        let _ = input.write_all(stdin.as_bytes()).await;
    }
    let out = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
        .await
        .map_err(|_| AddonsError::Kubectl {
            action,
            addon,
            stderr: "kubectl did not finish within 180 s".into(),
        })?
        .map_err(|source| AddonsError::Spawn {
            kubebin: kubectl.kubebin.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(AddonsError::Kubectl {
            action,
            addon,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kube_dns_service_takes_the_node_configs_dns_address() {
        let cfg =
            super::super::config::validate(&Default::default(), "h", &["10.0.0.5".parse().unwrap()]).unwrap();
        let ip = cfg.dns_service_ip().unwrap();
        let v = RenderValues {
            dns_service_ip: ip,
            cluster_ca_bundle: String::new(),
            tls_cipher_suites: String::new(),
            storage_dir: "/var/lib/k8sd/storage".into(),
            node_storage_dirs: Default::default(),
            dns_replicas: 2,
        };
        let text = addons::render_manifest(Addon::Dns, &v).unwrap();
        assert!(text.contains(&format!("clusterIP: {ip}")), "{text}");
    }

    fn deployment(replicas: u32, ready: u32, generation: i64, observed: i64) -> Option<(u16, Vec<u8>)> {
        let v = serde_json::json!({
            "metadata": {"generation": generation},
            "spec": {"replicas": replicas},
            "status": {"readyReplicas": ready, "updatedReplicas": ready, "observedGeneration": observed},
        });
        Some((200, serde_json::to_vec(&v).unwrap()))
    }

    #[test]
    fn an_addon_is_ready_when_its_current_deployment_is() {
        let r = addon_report(Addon::Dns, Some(true), deployment(2, 2, 3, 3));
        assert!(r.ready && r.enabled, "{r:?}");
        assert_eq!((r.ready_replicas, r.desired_replicas), (2, 2));
        assert!(!addon_report(Addon::Dns, Some(true), deployment(2, 1, 3, 3)).ready);
        // Not yet seen by the controller: the ready count is for the old spec.
        assert!(!addon_report(Addon::Dns, Some(true), deployment(2, 2, 4, 3)).ready);
        assert!(!addon_report(Addon::Dns, Some(true), Some((404, vec![]))).ready);
        assert!(!addon_report(Addon::Dns, Some(true), None).ready);
        assert!(!addon_report(Addon::Dns, None, deployment(1, 1, 1, 1)).ready);
    }

    #[test]
    fn a_disabled_addon_never_holds_readiness() {
        let gone = addon_report(Addon::Storage, Some(false), Some((404, vec![])));
        assert!(gone.ready && !gone.enabled);
        assert_eq!(gone.state, "disabled");
        let leaving = addon_report(Addon::Storage, Some(false), deployment(1, 1, 1, 1));
        assert!(leaving.ready && leaving.state.contains("being removed"));
    }

    #[test]
    fn only_ready_uncordoned_nodes_count() {
        let v = serde_json::json!({"items": [
            {"spec": {}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}},
            {"spec": {"unschedulable": true}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}},
            {"spec": {}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}},
            {"spec": {}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}},
        ]});
        assert_eq!(schedulable(&v), 2);
        assert_eq!(schedulable(&serde_json::json!({})), 0);
    }

    #[test]
    fn each_nodes_recorded_storage_dir_is_read_and_a_bad_one_left_out() {
        let v = serde_json::json!({"items": [
            {"metadata": {"name": "w1", "annotations": {"k8sd.io/storage-dir": "/srv/w1/storage"}}},
            {"metadata": {"name": "cp1", "annotations": {"other": "x"}}},
            {"metadata": {"name": "cp2"}},
            {"metadata": {"name": "bad", "annotations": {"k8sd.io/storage-dir": "relative/storage"}}},
        ]});
        let dirs = storage_dirs(&v);
        assert_eq!(
            dirs,
            BTreeMap::from([("w1".to_string(), PathBuf::from("/srv/w1/storage"))])
        );
        assert!(storage_dirs(&serde_json::json!({})).is_empty());
    }

    #[test]
    fn the_wire_stays_compatible_within_api_version_1() {
        use super::super::api::{Request, StatusReport};
        let req = Request::Addon {
            version: 1,
            name: "dns".into(),
            enable: false,
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"request":"addon","version":1,"name":"dns","enable":false}"#
        );
        // A status from a daemon that predates add-ons still parses, with none listed.
        let old = r#"{"version":1,"initialised":true,"node-name":"n","role":"control-plane",
            "ready":true,"phase":"running","datastore":null,"components":[],"certificates":[],
            "kubernetes-node":null}"#;
        let s: StatusReport = serde_json::from_str(old).unwrap();
        assert!(s.addons.is_empty());
    }

    #[test]
    fn the_digest_changes_with_enablement_and_manifest() {
        assert_eq!(digest(true, "a"), digest(true, "a"));
        assert_ne!(digest(true, "a"), digest(false, "a"));
        assert_ne!(digest(true, "a"), digest(true, "b"));
    }
}
