//! The composition root: `k8sd run`. It owns the control socket, and once the node is
//! initialised it brings the node up in dependency order and keeps it running:
//!
//! ```text
//!  PKI + kubeconfigs ─▶ datastore (in-process, mTLS on 127.0.0.1:2379)
//!    ─▶ kube-apiserver (/readyz) ─▶ controller-manager + scheduler
//!    ─▶ containerd (socket + images imported) ─▶ kubelet (/healthz) ─▶ kube-proxy
//!    ─▶ Node Ready ─▶ READY=1 to systemd
//! ```
//!
//! Only this module wires `pki`, `node`/`etcd` and `supervisor` together; the supervisor knows
//! nothing of the others. SIGTERM stops the children in reverse order, then the datastore.
//!
//! Files by role. `Daemon` is one type (defined here) whose methods are split by what they do:
//!
//! | file | role |
//! |---|---|
//! | `mod.rs` | `k8sd run` (control socket, resuming the node, shutdown), `init`, `stop`, the phase |
//! | `preflight.rs` | what `init` checks before it writes anything: binaries, images, extra args |
//! | `render.rs` | `k8sd debug render`: what `init` writes, through the same functions, started by no one |
//! | `bring_up.rs` | bringing the node up in dependency order, after init, a join or a restart |
//! | `datastore.rs` | the Raft member, the etcd API and the cluster API listeners |
//! | `local_lb.rs` | the local API load balancer and its first backends |
//! | `component_specs.rs` | the supervised components in start order with their readiness probes |
//! | `clients.rs` | this node's own calls to kube-apiserver and the wait for its Node to be Ready |
//! | `renewal.rs` | certificate renewal while running and the restarts it causes |
//! | `host.rs` | directories, files and the cgroup root with their modes; binding listeners |
//! | `error.rs`, `failure.rs` | `DaemonError`, and its kind for the CLI's exit code |
//! | `control.rs`, `api.rs` | the control socket's server and client, and its versioned messages |
//! | `config.rs`, `components.rs`, `extra_args.rs` | node.yaml, component arguments and configs |
//! | `join.rs`, `versions.rs` | add-node, tokens, join; the versions check |
//! | `removal.rs` | remove-node, leave, and noticing this node was removed |
//! | `cluster_calls.rs` | this node's cluster API calls as itself: membership, worker renewal |
//! | `status.rs`, `backups.rs`, `secrets.rs` | `k8sd status`, backups, Secrets key rotation |
//! | `apiserver_keys.rs` | this node's side of a rotation: install the keys, wait for kube-apiserver to load them |
//! | `addons.rs`, `addon_tls.rs` | the add-ons' reconcile loop and metrics-server's certificate |
//! | `podnet.rs`, `svcroute.rs`, `noderole.rs`, `storagedir.rs`, `nodemeta.rs` | node plumbing loops |
//! | `mirror.rs`, `metrics.rs`, `listener_tls.rs` | the image mirror and `/metrics` listeners |

mod addon_tls;
mod addons;
pub mod api;
mod apiserver_keys;
pub mod backups;
mod bring_up;
mod clients;
mod cluster_calls;
mod component_specs;
pub mod components;
pub mod config;
mod control;
mod datastore;
mod error;
pub mod extra_args;
mod failure;
mod host;
mod join;
mod listener_tls;
mod local_lb;
mod metrics;
mod mirror;
mod nodemeta;
mod noderole;
mod podnet;
mod preflight;
mod removal;
pub mod render;
mod renewal;
mod secrets;
pub mod status;
mod storagedir;
pub mod svcroute;
pub mod versions;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

use crate::node::Node;
use crate::paths::{Layout, RuntimeDir};
use crate::pki;
use crate::supervisor::Supervisor;
use config::NodeConfig;
use host::{mkdir, write_file};

pub use control::{ControlClient, ControlError};
pub use error::{BadReply, DaemonError, RemovalStep};
pub use failure::{FailureKind, Refusal, config_error_kind};

/// Where the node is in its life, for `k8sd status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Uninitialised,
    Starting(String),
    Running,
    Failed(String),
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Phase::Uninitialised => f.write_str("waiting for `k8sd init`"),
            Phase::Starting(s) => write!(f, "starting: {s}"),
            Phase::Running => f.write_str("running"),
            Phase::Failed(e) => write!(f, "failed: {e}"),
        }
    }
}

/// A progress sink: init streams these lines to the CLI, and they go to systemd's STATUS=.
pub type Progress = mpsc::UnboundedSender<String>;

fn report(p: &Option<Progress>, step: &str) {
    tracing::info!("{step}");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(step)]);
    if let Some(p) = p {
        let _ = p.send(step.to_string());
    }
}

/// Runtime options of `k8sd run`.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub layout: Layout,
    pub kubebin: Option<PathBuf>,
    /// containerd, containerd-shim-runc-v2, ctr and runc (scripts/build-runtime.sh).
    pub runtime: RuntimeDir,
    pub images_dir: PathBuf,
    /// The CNI plugins containerd runs (`paths::cni_bin_dir`).
    pub cni_bin_dir: PathBuf,
    /// The kubelet's cgroupRoot: "/" on a real host; a private subtree when several nodes share
    /// one machine (tests), so their kubepods hierarchies never collide.
    pub cgroup_root: String,
    /// The user's consent to run a Kubernetes minor one step from the control plane's
    /// (`k8sd run --allow-kubernetes-minor-change`): the first node of a minor upgrade.
    pub allow_kubernetes_minor_change: bool,
}

/// The running daemon.
#[derive(Debug)]
pub struct Daemon {
    opts: DaemonOptions,
    phase: Mutex<Phase>,
    node: Mutex<Option<RunningNode>>,
    /// Serialises init and bring-up.
    lifecycle: tokio::sync::Mutex<()>,
    addons: addons::AddonManager,
    /// The scheduled backups' last result and next due time, for status.
    backups: backups::SharedState,
}

#[derive(Debug, Clone)]
struct RunningNode {
    cfg: NodeConfig,
    /// The local datastore replica (control-plane nodes only).
    datastore: Option<Node>,
    supervisor: Arc<Supervisor>,
    /// Stops the etcd and cluster API listeners.
    etcd_stop: watch::Sender<bool>,
    /// The local API load balancer.
    lb: Option<Arc<crate::lb::LbHandle>>,
    /// The node-local image mirror containerd pulls from.
    _mirror: Arc<mirror::MirrorHandle>,
    /// The node's `/metrics` listener (none if its port was taken).
    _metrics: Option<Arc<metrics::MetricsHandle>>,
}

impl Daemon {
    pub fn new(opts: DaemonOptions) -> Arc<Daemon> {
        Arc::new(Daemon {
            opts,
            phase: Mutex::new(Phase::Uninitialised),
            node: Mutex::new(None),
            lifecycle: tokio::sync::Mutex::new(()),
            addons: addons::AddonManager::default(),
            backups: backups::SharedState::default(),
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.opts.layout
    }

    fn set_phase(&self, p: Phase) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = p;
    }

    pub fn phase(&self) -> Phase {
        self.phase.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn running(&self) -> Option<RunningNode> {
        self.node.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Serve the control socket; resume the node if it was initialised; stop on SIGTERM.
    pub async fn run(
        self: Arc<Self>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), DaemonError> {
        let l = self.opts.layout.clone();
        make_roots(&l)?;
        let listener = control::bind(&l.control_socket())?;
        write_file(
            &l.daemon_pid_file(),
            format!("{}\n", std::process::id()).as_bytes(),
            0o644,
        )?;
        tokio::spawn(control::serve(listener, self.clone()));
        spawn_watchdog();
        if let Some(cfg) = self.load_config()? {
            let me = self.clone();
            tokio::spawn(async move {
                let _guard = me.lifecycle.lock().await;
                if let Err(e) = me.bring_up(cfg, None, None).await {
                    tracing::error!(error = %e, "resuming the node failed");
                    me.set_phase(Phase::Failed(e.to_string()));
                }
            });
        } else {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status("waiting for k8sd init")]);
            // Nothing to start: the service is up and idle.
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        }
        shutdown.await;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        self.stop().await;
        let _ = std::fs::remove_file(l.control_socket());
        let _ = std::fs::remove_file(l.daemon_pid_file());
        Ok(())
    }

    /// node.yaml, checked where a hand edit can break it without breaking its YAML: a
    /// malformed backup schedule stops the start with a usage error that says what to write.
    fn load_config(&self) -> Result<Option<NodeConfig>, DaemonError> {
        let cfg = config::read_node_file(&self.opts.layout.node_file())?;
        if let Some(c) = &cfg {
            c.backup_plan()?;
        }
        Ok(cfg)
    }

    /// `k8sd init`: validate, persist, bring up. Refused on an initialised node.
    pub async fn init(
        self: &Arc<Self>,
        req: config::InitRequest,
        progress: Progress,
    ) -> Result<(), DaemonError> {
        let _guard = self.lifecycle.lock().await;
        let node_file = self.opts.layout.node_file();
        if node_file.exists() {
            return Err(DaemonError::AlreadyInitialised(node_file));
        }
        report(&Some(progress.clone()), "checking configuration");
        let cfg = config::validate(&req, &config::host_name(), &config::local_addresses())?;
        config::check_ports(config::PORTS)?;
        self.preflight()?;
        self.check_extra_args(&cfg).await?;
        write_new_node(&self.opts.layout, &cfg)?;
        let res = self.bring_up(cfg, Some(progress), None).await;
        if let Err(e) = &res {
            self.set_phase(Phase::Failed(e.to_string()));
        }
        res
    }

    /// Stop children in reverse order, then the datastore.
    pub async fn stop(&self) {
        let running = self.node.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(n) = running {
            n.supervisor.stop().await;
            let _ = n.etcd_stop.send(true);
            if let Some(lb) = n.lb {
                lb.shutdown().await;
            }
            if let Some(d) = n.datastore {
                d.shutdown().await;
            }
        }
    }

    pub async fn status(&self) -> api::StatusReport {
        status::build(self).await
    }
}

/// The data dir, run dir and logs dir, made before anything else is written in them.
fn make_roots(l: &Layout) -> Result<(), DaemonError> {
    mkdir(&l.run_dir, 0o700)?;
    mkdir(&l.data_dir, 0o700)?;
    mkdir(&l.logs_dir(), 0o700)
}

/// What `init` writes once its checks pass: the cluster's Secrets key, then node.yaml, whose
/// presence marks the node initialised. The key is made once, here: a joining control-plane
/// node receives this file, and a restart never makes a new one (see `secrets_encryption`).
fn write_new_node(l: &Layout, cfg: &NodeConfig) -> Result<(), DaemonError> {
    mkdir(&l.pki_dir(), 0o700)?;
    let key = pki::create_encryption_config(&l.encryption_config(), crate::cluster::token::now_unix())?;
    tracing::info!(provider = %key.provider, key = %key.write_key, "Secrets are encrypted at rest");
    let text = serde_yaml::to_string(cfg).map_err(DaemonError::EncodeConfig)?;
    write_file(&l.node_file(), text.as_bytes(), 0o600)
}

/// Ping systemd's watchdog at half its interval when WATCHDOG_USEC asks for it.
fn spawn_watchdog() {
    if let Some(interval) = sd_notify::watchdog_enabled().filter(|d| !d.is_zero()) {
        tokio::spawn(async move {
            let mut t = tokio::time::interval(interval / 2);
            loop {
                t.tick().await;
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
        });
    }
}
