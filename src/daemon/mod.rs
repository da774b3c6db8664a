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

mod addon_tls;
mod addons;
pub mod api;
pub mod backups;
pub mod components;
pub mod config;
mod control;
pub mod extra_args;
mod failure;
mod join;
mod leader_wait;
mod listener_tls;
mod metrics;
mod mirror;
mod nodemeta;
mod noderole;
mod podnet;
mod secrets;
pub mod status;
mod storagedir;
pub mod svcroute;
pub mod versions;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::datastore::Durability;
use crate::etcd::{self, TlsFiles};
use crate::httpc::TlsClient;
use crate::node::{Node, NodeConfig as DatastoreConfig, RaftSettings};
use crate::paths::{Layout, RuntimeDir};
use crate::pki::{self, NodeIdentity, NodeRole};
use crate::supervisor::{ComponentSpec, Probe, Supervisor, SupervisorConfig};
use components::Ctx;
use config::{NodeConfig, Role};

pub use control::{ControlClient, ControlError};
pub use failure::{FailureKind, Refusal, config_error_kind};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    NodeFile(#[from] config::NodeFileError),
    #[error("certificates: {0}")]
    Pki(#[from] pki::PkiError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another daemon answers on this node's control socket.
    #[error("another k8sd is already running on {socket}; stop it first")]
    AlreadyRunning { socket: PathBuf },
    /// One of the node's listeners could not take its address.
    #[error(
        "{listener}: cannot listen on {addr}: {source}; is another k8sd or another program using it? `ss -ltnp` shows which"
    )]
    Listen {
        listener: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// A client certificate and key this node uses for its own calls cannot be loaded.
    #[error("{what} credentials: {source}")]
    Credentials {
        what: &'static str,
        #[source]
        source: crate::httpc::HttpError,
    },
    /// The TLS configuration of one of the node's HTTPS listeners cannot be built.
    #[error("{listener}: {source}")]
    ListenerTls {
        listener: String,
        #[source]
        source: crate::tls::MtlsError,
    },
    #[error("rendering the components' config files: {0}")]
    RenderConfig(String),
    #[error("node {node} did not become Ready within 5 minutes; see `k8sd status` and `k8sd logs kubelet`")]
    NotReady { node: String },
    #[error("local API load balancer: {0}")]
    LoadBalancer(#[source] crate::lb::LbError),
    #[error("a readiness probe: {0}")]
    Probe(#[source] crate::supervisor::Error),
    #[error(
        "kubebin (the Kubernetes components) was not found; build it with scripts/build-kube.sh or set K8SD_KUBEBIN"
    )]
    NoKubebin,
    #[error(
        "the container runtime (containerd 2, its runc shim, ctr, runc) is incomplete in {dir}: missing {missing}; build it with scripts/build-runtime.sh or set K8SD_RUNTIME_DIR"
    )]
    NoRuntime { dir: PathBuf, missing: String },
    #[error(
        "the pause image {0} is missing; build images with scripts/build-images.sh or set K8SD_IMAGES_DIR"
    )]
    NoPauseImage(PathBuf),
    #[error(
        "this node is already initialised ({0} exists); nothing was changed. Use `k8sd status` to inspect it"
    )]
    AlreadyInitialised(PathBuf),
    #[error("starting {component} failed: {reason}")]
    Start { component: String, reason: String },
    #[error("renewing this worker's certificates through the cluster API: {0}")]
    WorkerRenewal(#[source] crate::cluster::client::JoinError),
    #[error("the control plane answered a renewal without a certificate for {cert}")]
    RenewalIncomplete { cert: String },
    #[error("{0}")]
    Addons(#[from] addons::AddonsError),
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("{0}")]
    Token(#[from] crate::cluster::token::TokenError),
    #[error(transparent)]
    ClusterApi(#[from] crate::cluster::client::JoinError),
    #[error(transparent)]
    Secrets(#[from] secrets::SecretsError),
    #[error("the cluster records in the datastore: {0}")]
    Registry(#[from] crate::cluster::registry::RegistryError),
    #[error("{0}")]
    Datastore(#[from] crate::node::NodeError),
    /// This binary's Kubernetes minor differs from the control plane's, and the user did not
    /// ask to cross it (or it would skip one).
    #[error("{0}")]
    KubernetesSkew(#[from] crate::cluster::versions::SkewError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The cluster API answered, but not with what a join needs; nothing was written.
    #[error("{via} {problem}")]
    BadReply { via: String, problem: String },
    #[error("cannot encode the node config: {0}")]
    EncodeConfig(#[source] serde_yaml::Error),
    #[error("deleting the Kubernetes Node {node}: {error}")]
    Kubectl { node: String, error: String },
    /// `remove-node` stopped part way; every step can be repeated.
    #[error("{error}. {state}; run `k8sd remove-node {name}` again")]
    RemovalIncomplete {
        name: String,
        error: String,
        state: &'static str,
    },
}

/// Bind one of the node's TCP listeners; the error names the listener and its address.
async fn listen(
    listener: &'static str,
    addr: std::net::SocketAddr,
) -> Result<tokio::net::TcpListener, DaemonError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Listen {
            listener,
            addr: addr.to_string(),
            source,
        })
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> DaemonError + '_ {
    move |source| DaemonError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// Create a directory (and parents) with `mode`.
pub fn mkdir(path: &Path, mode: u32) -> Result<(), DaemonError> {
    std::fs::create_dir_all(path).map_err(write_err(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(write_err(path))
}

/// Write a file atomically and durably with `mode` (`atomic_file`), creating its directory.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), DaemonError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    }
    crate::atomic_file::replace(path, contents, mode).map_err(|e| DaemonError::Write {
        path: e.path,
        source: e.source,
    })
}

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
        mkdir(&l.run_dir, 0o700)?;
        mkdir(&l.data_dir, 0o700)?;
        mkdir(&l.logs_dir(), 0o700)?;
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
        // The cluster's Secrets key is made once, here: a joining control-plane node receives
        // this file, and a restart never makes a new one (see `secrets_encryption`).
        mkdir(&self.opts.layout.pki_dir(), 0o700)?;
        let key = pki::create_encryption_config(
            &self.opts.layout.encryption_config(),
            crate::cluster::token::now_unix(),
        )?;
        tracing::info!(provider = %key.provider, key = %key.write_key, "Secrets are encrypted at rest");
        let text = serde_yaml::to_string(&cfg).map_err(DaemonError::EncodeConfig)?;
        write_file(&node_file, text.as_bytes(), 0o600)?;
        let res = self.bring_up(cfg, Some(progress), None).await;
        if let Err(e) = &res {
            self.set_phase(Phase::Failed(e.to_string()));
        }
        res
    }

    /// Every component the operator changed must accept its whole command line
    /// (`extra_args::check_with_component`): checked before anything is written, so a refused
    /// flag leaves the node as it was.
    async fn check_extra_args(&self, cfg: &NodeConfig) -> Result<(), DaemonError> {
        if cfg.extra_args.is_empty() {
            return Ok(());
        }
        let kubebin = self.kubebin()?;
        let ctx = Ctx {
            layout: &self.opts.layout,
            cfg,
            cgroup_root: &self.opts.cgroup_root,
            encrypt_secrets: cfg.role == Role::ControlPlane,
        };
        for (component, changes) in &cfg.extra_args.0 {
            if changes.is_empty() {
                continue;
            }
            let args = components::kube_args(component, &ctx).ok_or_else(|| {
                config::ConfigError::from(extra_args::ExtraArgsError::NotOnThisNode {
                    component: component.clone(),
                    role: cfg.role_name(),
                })
            })?;
            extra_args::check_with_component(&kubebin, component, &args, changes)
                .await
                .map_err(|e| DaemonError::Config(e.into()))?;
        }
        Ok(())
    }

    fn kubebin(&self) -> Result<PathBuf, DaemonError> {
        self.opts
            .kubebin
            .clone()
            .filter(|p| p.is_file())
            .ok_or(DaemonError::NoKubebin)
    }

    /// The container runtime, complete: never Debian's containerd 1.x or runc from `PATH`.
    fn runtime(&self) -> Result<&RuntimeDir, DaemonError> {
        let rt = &self.opts.runtime;
        let missing = rt.missing();
        if missing.is_empty() {
            return Ok(rt);
        }
        Err(DaemonError::NoRuntime {
            dir: rt.dir().to_owned(),
            missing: missing
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    fn preflight(&self) -> Result<(), DaemonError> {
        self.kubebin()?;
        let pause = self.opts.images_dir.join(crate::images::PAUSE_TARBALL);
        if !pause.is_file() {
            return Err(DaemonError::NoPauseImage(pause));
        }
        self.runtime()?;
        Ok(())
    }

    async fn bring_up(
        self: &Arc<Self>,
        cfg: NodeConfig,
        progress: Option<Progress>,
        pending: Option<join::PendingJoin>,
    ) -> Result<(), DaemonError> {
        let l = self.opts.layout.clone();
        let step = |s: &str| {
            self.set_phase(Phase::Starting(s.to_string()));
            report(&progress, s);
        };
        let kubebin = self.kubebin()?;
        // node.yaml's `disable` (from `init --disable`) waits for the first reconcile to record
        // it in the datastore; replayed on every start, it only fills in what is still unset.
        let disabled = crate::addons::parse_list(&cfg.disable).map_err(config::ConfigError::from)?;
        if !disabled.is_empty() {
            self.addons.set_init_disabled(disabled);
        }
        for (dir, mode) in [
            (l.pki_dir(), 0o700),
            (l.kubeconfig_dir(), 0o700),
            (l.config_dir(), 0o700),
            (l.datastore_dir(), 0o700),
        ] {
            mkdir(&dir, mode)?;
        }
        let identity = NodeIdentity {
            node_name: cfg.node_name.clone(),
            node_ips: vec![cfg.advertise_address],
            extra_sans: cfg.extra_sans.clone(),
            service_cidr: cfg.service_cidr.parse()?,
        };
        let (etcd_stop, stop_rx) = watch::channel(false);
        let backups_stop = etcd_stop.subscribe();
        let datastore = if cfg.role == Role::ControlPlane {
            step("generating certificates and kubeconfigs");
            pki::ensure_control_plane_pki(&l.pki_dir(), &identity)?;
            // Components reach kube-apiserver through the local load balancer, so they keep
            // working (and keep their leader leases) when this node's apiserver is down.
            let server = format!("https://{}", components::lb_addr());
            pki::ensure_kubeconfigs(&l.pki_dir(), &l.kubeconfig_dir(), NodeRole::ControlPlane, &server)?;
            if pending.is_some() {
                step("joining the datastore (as a learner, promoted to voter once caught up)");
            } else if progress.is_none() {
                // A restart: after a whole-cluster one, this waits for a second member.
                step("starting the datastore, waiting for a quorum of its members");
            } else {
                step("starting the datastore");
            }
            let peers = pending
                .as_ref()
                .map(|p| p.datastore_peers.clone())
                .unwrap_or_default();
            let datastore = match self.start_datastore(&cfg, peers).await {
                Ok(d) => d,
                Err(e) => {
                    if pending.is_some() {
                        self.wipe_failed_join();
                    }
                    return Err(e);
                }
            };
            if let Some(p) = &pending {
                step("recording this node in the cluster (the token is consumed now)");
                if let Err(e) = self.complete_join(p, &cfg).await {
                    tracing::error!(error = %e, "completing the join failed; leaving the datastore group");
                    self.abandon_datastore(&datastore).await;
                    self.wipe_failed_join();
                    return Err(e);
                }
            } else {
                leader_wait::until_leader(&datastore, &step).await?;
                self.register_founder(&datastore, &cfg).await?;
            }
            step("checking this node's Kubernetes version against the control plane's");
            self.check_and_publish_versions(&datastore, &cfg).await?;
            self.serve_datastore_and_api(&datastore, &cfg, stop_rx).await?;
            Some(datastore)
        } else {
            // Renew before the kubelet starts, so a worker that was down for months comes back
            // with valid certificates. Only a due certificate costs a call; an unreachable
            // control plane is not fatal here (the renewal loop retries).
            step("checking certificates");
            match self.renew_worker_certs(&cfg, &identity).await {
                Ok(r) if !r.is_empty() => tracing::info!(files = r.changes.len(), "renewed certificates"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "certificate renewal failed; retrying in 12 h"),
            }
            step("checking this node's Kubernetes version against the control plane's");
            self.check_worker_versions(&cfg).await?;
            let server = format!("https://{}", components::lb_addr());
            pki::ensure_kubeconfigs(&l.pki_dir(), &l.kubeconfig_dir(), NodeRole::Worker, &server)?;
            None
        };

        step("starting the local API load balancer");
        let lb = Arc::new(self.start_lb(&cfg, datastore.as_ref()).await?);

        step("rendering component configuration");
        let encrypt_secrets = cfg.role == Role::ControlPlane && self.secrets_encryption()?;
        let ctx = Ctx {
            layout: &l,
            cfg: &cfg,
            cgroup_root: &self.opts.cgroup_root,
            encrypt_secrets,
        };
        for (path, text) in components::config_files(&ctx, self.runtime()?, &self.opts.cni_bin_dir)
            .map_err(DaemonError::RenderConfig)?
        {
            write_file(&path, text.as_bytes(), 0o600)?;
        }
        mkdir(&l.containerd_state(), 0o711)?;
        ensure_cgroup_root(&self.opts.cgroup_root)?;
        step("starting the image mirror");
        let mirror = mirror::start(&l, &cfg, self.runtime()?).await?;

        let supervisor = Arc::new(Supervisor::new(SupervisorConfig {
            run_dir: l.pid_dir(),
            instance: l.data_dir.clone().into_os_string(),
        }));
        step("starting the metrics listener");
        let node_metrics =
            metrics::start(&l, &cfg, datastore.clone(), supervisor.clone(), lb.clone()).await?;
        *self.node.lock().unwrap_or_else(|e| e.into_inner()) = Some(RunningNode {
            cfg: cfg.clone(),
            datastore,
            supervisor: supervisor.clone(),
            etcd_stop,
            lb: Some(lb),
            _mirror: Arc::new(mirror),
            _metrics: node_metrics.map(Arc::new),
        });
        // Before the components start: kube-apiserver may call a webhook Service at once.
        svcroute::spawn(self, identity.service_cidr, cfg.advertise_address);

        let groups = match cfg.role {
            Role::ControlPlane => {
                step(
                    "starting kube-apiserver, controller-manager, scheduler, containerd, kubelet and kube-proxy",
                );
                let mut g = self.control_plane_groups(&ctx, &kubebin)?;
                g.extend(self.node_groups(&ctx, &kubebin)?);
                g
            }
            Role::Worker => {
                step("starting the API load balancer, containerd, kubelet and kube-proxy");
                self.node_groups(&ctx, &kubebin)?
            }
        };
        supervisor.start(groups).await.map_err(|e| DaemonError::Start {
            component: "node".into(),
            reason: e.to_string(),
        })?;
        podnet::spawn(self.clone(), cfg.clone());
        storagedir::spawn(self, cfg.clone());
        if cfg.role == Role::ControlPlane {
            noderole::spawn(self, cfg.node_name.clone());
        }
        // Checked at init and at load; a plan that fails here was edited while running.
        match cfg.backup_plan() {
            Ok(plan) => backups::spawn(
                self.opts.layout.clone(),
                cfg.clone(),
                plan,
                self.backups.clone(),
                move || !*backups_stop.borrow(),
            ),
            Err(e) => tracing::error!(error = %e, "scheduled backups are not running"),
        }

        step("waiting for the node to become Ready");
        let client = self.node_client(&cfg)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        loop {
            if let Some(n) = status::kube_node(&client, self.api_addr(&cfg), &cfg.node_name).await
                && n.ready
            {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(DaemonError::NotReady {
                    node: cfg.node_name.clone(),
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.set_phase(Phase::Running);
        report(&progress, "node is Ready");
        self.spawn_cert_renewal(cfg.clone(), identity, supervisor);
        if cfg.role == Role::ControlPlane {
            self.spawn_addons(cfg.clone());
        }
        self.spawn_removal_watch();
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        Ok(())
    }

    /// Whether kube-apiserver gets `--encryption-provider-config`: the file exists and is
    /// valid. A malformed file stops the start (an apiserver without it could not read the
    /// encrypted Secrets); a missing one only warns, since a node initialised by an older
    /// k8sd has none, and making one here would give this apiserver a key the others lack.
    fn secrets_encryption(&self) -> Result<bool, DaemonError> {
        let path = self.opts.layout.encryption_config();
        match pki::read_encryption_config(&path)? {
            Some((_, key)) => {
                tracing::info!(provider = %key.provider, key = %key.write_key, "Secrets are encrypted at rest");
                Ok(true)
            }
            None => {
                tracing::warn!(
                    path = %path.display(),
                    "no Secrets encryption configuration: Secrets are stored in plaintext. A node \
                     initialised by an older k8sd has none; copy the file from another \
                     control-plane node of this cluster if one has it"
                );
                Ok(false)
            }
        }
    }

    /// The local API load balancer on 127.0.0.1:6444, in front of every control-plane
    /// kube-apiserver: the registry's list on a control-plane node (this node first), the join
    /// answer's on a worker; the balancer then follows the `kubernetes` EndpointSlice itself.
    async fn start_lb(
        &self,
        cfg: &NodeConfig,
        datastore: Option<&Node>,
    ) -> Result<crate::lb::LbHandle, DaemonError> {
        let p = self.opts.layout.pki_dir();
        let tls = TlsClient::from_files(
            &p.join("ca.crt"),
            &p.join("kube-proxy.crt"),
            &p.join("kube-proxy.key"),
        )
        .map_err(|source| DaemonError::Credentials {
            what: "load balancer",
            source,
        })?;
        let mut addrs = vec![];
        if let Some(ds) = datastore {
            addrs.push(cfg.advertise_address);
            if let Ok(members) = crate::cluster::registry::members(ds).await {
                addrs.extend(
                    members
                        .into_iter()
                        .filter(|m| m.role == crate::cluster::registry::MemberRole::ControlPlane)
                        .map(|m| m.address),
                );
            }
        }
        addrs.extend(cfg.control_plane.iter().copied());
        let mut backends: Vec<std::net::SocketAddr> = Vec::new();
        for a in addrs {
            let s = std::net::SocketAddr::new(a, components::APISERVER_PORT);
            if !backends.contains(&s) {
                backends.push(s);
            }
        }
        // Kept whatever the EndpointSlices say (see `LbConfig::pinned`): the apiserver that is
        // always there for this node, its own, or on a worker the ones it joined through.
        let pinned = match datastore {
            Some(_) => vec![cfg.advertise_address],
            None => cfg.control_plane.clone(),
        };
        let state = self.opts.layout.lb_state_file();
        if let Some(dir) = state.parent() {
            mkdir(dir, 0o700)?;
        }
        let mut lb = crate::lb::LbConfig::new(components::lb_addr(), backends, tls, state);
        lb.pinned = pinned
            .into_iter()
            .map(|a| std::net::SocketAddr::new(a, components::APISERVER_PORT))
            .collect();
        crate::lb::LoadBalancer::start(lb)
            .await
            .map_err(DaemonError::LoadBalancer)
    }

    /// Where this node reaches kube-apiserver for its own checks: its own on a control-plane
    /// node, the local load balancer on a worker.
    fn api_addr(&self, cfg: &NodeConfig) -> std::net::SocketAddr {
        match cfg.role {
            Role::ControlPlane => components::apiserver_addr(),
            Role::Worker => components::lb_addr(),
        }
    }

    /// A client for this node's own checks: admin on a control-plane node, the kubelet's
    /// identity on a worker (the Node authorizer lets it read its own Node).
    fn node_client(&self, cfg: &NodeConfig) -> Result<TlsClient, DaemonError> {
        let p = self.opts.layout.pki_dir();
        let (cert, key) = match cfg.role {
            Role::ControlPlane => ("admin.crt", "admin.key"),
            Role::Worker => ("kubelet-client.crt", "kubelet-client.key"),
        };
        TlsClient::from_files(&p.join("ca.crt"), &p.join(cert), &p.join(key))
            .map_err(|source| DaemonError::Credentials { what: "node", source })
    }

    /// Serve the etcd API on 127.0.0.1:2379 (mTLS, datastore CA) and the cluster API on the
    /// advertise address (TLS, tokens) until `stop` flips.
    async fn serve_datastore_and_api(
        self: &Arc<Self>,
        datastore: &Node,
        cfg: &NodeConfig,
        stop: watch::Receiver<bool>,
    ) -> Result<(), DaemonError> {
        let l = &self.opts.layout;
        let listener = listen("datastore", components::datastore_addr()).await?;
        let tls = TlsFiles {
            cert_file: Some(l.pki_dir().join("datastore-server.crt")),
            key_file: Some(l.pki_dir().join("datastore-server.key")),
            trusted_ca_file: Some(l.pki_dir().join("datastore-ca.crt")),
            client_cert_auth: true,
        };
        let node = datastore.clone();
        let mut rx = stop.clone();
        tokio::spawn(async move {
            let res = etcd::serve(node, listener, &tls, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await;
            if let Err(e) = res {
                tracing::error!(error = %e, "datastore server stopped");
            }
        });
        let api_addr = std::net::SocketAddr::new(cfg.advertise_address, crate::cluster::API_PORT);
        let api_listener = listen("cluster API", api_addr).await?;
        let svc = crate::cluster::server::ClusterService {
            node: datastore.clone(),
            pki_dir: l.pki_dir(),
            kubectl: self.kubectl()?,
            failed_joins: Default::default(),
            encryption: Arc::new(secrets::ApiserverKeys {
                path: l.encryption_config(),
                daemon: Arc::downgrade(self),
            }),
        };
        let mut rx = stop;
        tokio::spawn(async move {
            let res = crate::cluster::serve(svc, api_listener, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await;
            if let Err(e) = res {
                tracing::error!(error = %e, "cluster API stopped");
            }
        });
        Ok(())
    }

    /// Twice a day, renew leaf certificates close to expiry (or whose SANs changed) and restart
    /// only the components that read them. A control-plane node signs its own from the CA; a
    /// worker asks the control plane over the cluster API (`Renew`).
    fn spawn_cert_renewal(
        self: &Arc<Self>,
        cfg: NodeConfig,
        identity: NodeIdentity,
        supervisor: Arc<Supervisor>,
    ) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(12 * 3600));
            tick.tick().await; // the first tick is now: bring-up just ensured the PKI
            loop {
                tick.tick().await;
                let Some(d) = me.upgrade() else { return };
                if d.running().is_none() {
                    return;
                }
                let renewed = match cfg.role {
                    Role::ControlPlane => d.renew_control_plane_certs(&identity),
                    Role::Worker => d.renew_worker_certs(&cfg, &identity).await,
                };
                match renewed {
                    Ok(r) => restart_consumers(&supervisor, &r).await,
                    Err(e) => {
                        tracing::error!(error = %e, "certificate renewal check failed; retrying in 12 h")
                    }
                }
            }
        });
    }

    fn renew_control_plane_certs(&self, identity: &NodeIdentity) -> Result<pki::PkiReport, DaemonError> {
        let l = &self.opts.layout;
        let server = format!("https://{}", components::lb_addr());
        let report = pki::ensure_control_plane_pki(&l.pki_dir(), identity)?;
        let kubeconfigs =
            pki::ensure_kubeconfigs(&l.pki_dir(), &l.kubeconfig_dir(), NodeRole::ControlPlane, &server)?;
        Ok(report.merge(kubeconfigs))
    }

    /// The datastore as a Raft member: peer service on the advertise address (mTLS with the
    /// datastore CA, so only control-plane peers can join the Raft group), bootstrapped as a
    /// group of one the first time. Joining nodes later add themselves to this group.
    async fn start_datastore(&self, cfg: &NodeConfig, join: Vec<String>) -> Result<Node, DaemonError> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
        let l = &self.opts.layout;
        let read = |f: &str| {
            let p = l.pki_dir().join(f);
            std::fs::read(&p).map_err(|source| DaemonError::Read { path: p, source })
        };
        let (ca, cert, key) = (
            read("datastore-ca.crt")?,
            read("datastore-peer.crt")?,
            read("datastore-peer.key")?,
        );
        let identity = Identity::from_pem(&cert, &key);
        let peer_addr = std::net::SocketAddr::new(cfg.advertise_address, components::PEER_PORT);
        let listener = listen("datastore peer", peer_addr).await?;
        let client_url = format!("https://{}", components::datastore_addr());
        let mut rc = crate::raft::RaftConfig::new(
            l.datastore_dir(),
            &cfg.node_name,
            &peer_addr.to_string(),
            &client_url,
        );
        rc.server_tls = Some(
            ServerTlsConfig::new()
                .identity(identity.clone())
                .client_ca_root(Certificate::from_pem(&ca)),
        );
        rc.client_tls = Some(
            ClientTlsConfig::new()
                .identity(identity)
                .ca_certificate(Certificate::from_pem(&ca)),
        );
        // The datastore CA also signs kube-apiserver's client certificate; only peer
        // certificates may call the peer service.
        rc.peer_organization = Some(pki::DATASTORE_PEER_ORG.to_string());
        // Every control-plane node keeps voters odd and promotes standbys while it leads.
        rc.auto_promote = true;
        let bootstrap = join.is_empty();
        rc.join = join;
        Node::start_raft(
            DatastoreConfig {
                name: cfg.node_name.clone(),
                data_dir: l.datastore_dir(),
                durability: Durability::Normal,
                client_urls: vec![client_url],
                progress_notify_interval: Duration::from_secs(5),
                quota_bytes: cfg.quota_bytes(),
            },
            RaftSettings {
                config: rc,
                listener,
                bootstrap,
            },
        )
        .await
        .map_err(DaemonError::Datastore)
    }

    pub(crate) fn admin_client(&self) -> Result<TlsClient, DaemonError> {
        let p = self.opts.layout.pki_dir();
        TlsClient::from_files(&p.join("ca.crt"), &p.join("admin.crt"), &p.join("admin.key")).map_err(
            |source| DaemonError::Credentials {
                what: "admin",
                source,
            },
        )
    }

    fn kube_spec(&self, kubebin: &Path, name: &str, args: Vec<String>) -> ComponentSpec {
        ComponentSpec::new(name, kubebin, self.opts.layout.logs_dir())
            .with_args(std::iter::once(name.to_string()).chain(args))
    }

    /// kube-apiserver, then controller-manager and scheduler.
    fn control_plane_groups(
        &self,
        ctx: &Ctx<'_>,
        kubebin: &Path,
    ) -> Result<Vec<Vec<ComponentSpec>>, DaemonError> {
        let kube = |name: &str, args: Vec<String>| self.kube_spec(kubebin, name, args);
        let admin = self.admin_client()?;
        let apiserver_ready = Probe::custom("kube-apiserver /readyz", move || {
            let admin = admin.clone();
            async move {
                matches!(
                    admin
                        .get(components::apiserver_addr(), "/readyz", Duration::from_secs(3))
                        .await,
                    Ok((200, _))
                )
            }
        });
        let tcp = |port: u16| Probe::tcp(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
        let minute = Duration::from_secs(120);
        Ok(vec![
            vec![
                kube("kube-apiserver", components::apiserver_args(ctx))
                    .with_readiness(apiserver_ready, minute)
                    .with_stop_timeout(Duration::from_secs(30)),
            ],
            vec![
                kube(
                    "kube-controller-manager",
                    components::controller_manager_args(ctx),
                )
                .with_readiness(tcp(10257), minute),
                kube("kube-scheduler", components::scheduler_args(ctx)).with_readiness(tcp(10259), minute),
            ],
        ])
    }

    /// What every node runs: containerd, kubelet, kube-proxy.
    fn node_groups(&self, ctx: &Ctx<'_>, kubebin: &Path) -> Result<Vec<Vec<ComponentSpec>>, DaemonError> {
        let kube = |name: &str, args: Vec<String>| self.kube_spec(kubebin, name, args);
        let logs = self.opts.layout.logs_dir();
        let path_env = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
        let runtime = self.runtime()?.clone();
        let containerd_sock = self.opts.layout.containerd_socket();
        let images = self.opts.images_dir.clone();
        let ctr = runtime.ctr();
        let imported = Arc::new(tokio::sync::Mutex::new(false));
        let containerd_ready = Probe::custom("containerd socket and images", move || {
            let (sock, images, imported, ctr) = (
                containerd_sock.clone(),
                images.clone(),
                imported.clone(),
                ctr.clone(),
            );
            async move {
                if tokio::net::UnixStream::connect(&sock).await.is_err() {
                    return false;
                }
                let mut done = imported.lock().await;
                if !*done {
                    *done = tokio::task::spawn_blocking(move || import_images(&ctr, &sock, &images))
                        .await
                        .unwrap_or(false);
                }
                *done
            }
        });
        let http = |url: &str| Probe::http_get(url).map_err(DaemonError::Probe);
        let minute = Duration::from_secs(120);
        Ok(vec![
            vec![
                ComponentSpec::new("containerd", runtime.containerd(), &logs)
                    .with_args(components::containerd_args(ctx))
                    .with_env("PATH", runtime.path_env(path_env))
                    .with_readiness(containerd_ready, minute),
            ],
            vec![
                kube("kubelet", components::kubelet_args(ctx))
                    .with_env("PATH", path_env)
                    .with_readiness(http("http://127.0.0.1:10248/healthz")?, minute),
            ],
            vec![
                kube("kube-proxy", components::kube_proxy_args(ctx))
                    .with_env("PATH", path_env)
                    .with_readiness(http("http://127.0.0.1:10256/healthz")?, minute),
            ],
        ])
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

/// Restart every supervised component that reads a file the report changed.
async fn restart_consumers(supervisor: &Supervisor, report: &pki::PkiReport) {
    for c in report.affected() {
        let Some(name) = component_of(c) else {
            tracing::warn!(consumer = ?c, "renewed certificate takes effect at the next k8sd restart");
            continue;
        };
        tracing::info!(component = name, "restarting after certificate renewal");
        if let Err(e) = supervisor.restart(name).await {
            tracing::error!(component = name, error = %e, "restart after renewal failed");
        }
    }
}

/// The supervised component that reads a certificate consumer's files, if any.
fn component_of(c: pki::Consumer) -> Option<&'static str> {
    use pki::Consumer::*;
    match c {
        KubeApiserver => Some("kube-apiserver"),
        ControllerManager => Some("kube-controller-manager"),
        Scheduler => Some("kube-scheduler"),
        Kubelet => Some("kubelet"),
        KubeProxy => Some("kube-proxy"),
        Datastore | K8sd => None,
    }
}

/// Import every image tarball into containerd's k8s.io namespace and pin it (idempotent).
/// Pinned, because none of them can be pulled back on an offline host: the kubelet's image
/// GC (on above 85 % disk use, assets/kubelet/config.yaml) then frees only other images.
fn import_images(ctr: &Path, sock: &Path, dir: &Path) -> bool {
    // Every image of the catalog whose tarball was built; only the sandbox image is required,
    // the add-ons are imported when scripts/build-images.sh packed them.
    for entry in crate::images::catalog::all() {
        let tarball = dir.join(&entry.tarball);
        if !tarball.is_file() {
            if entry.required {
                tracing::error!(path = %tarball.display(), image = %entry.reference, "required image missing");
                return false;
            }
            continue;
        }
        let imported = crate::images::import(ctr, sock, &tarball)
            .and_then(|()| crate::images::pin(ctr, sock, &entry.reference));
        if let Err(e) = imported {
            tracing::warn!(error = %e, "image import failed; retrying");
            return false;
        }
    }
    true
}

/// The kubelet requires its cgroupRoot to exist in every (v1) hierarchy; a new cpuset cgroup
/// starts with no CPUs or memory nodes, so copy its parent's.
fn ensure_cgroup_root(root: &str) -> Result<(), DaemonError> {
    let rel = root.trim_matches('/');
    if rel.is_empty() {
        return Ok(());
    }
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
        return Ok(());
    };
    for h in entries.flatten().map(|e| e.path()) {
        if !h.join("cgroup.procs").exists() {
            continue;
        }
        let dir = h.join(rel);
        std::fs::create_dir_all(&dir).map_err(write_err(&dir))?;
        for f in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(v) = std::fs::read_to_string(h.join(f))
                && std::fs::read_to_string(dir.join(f))
                    .map(|c| c.trim().is_empty())
                    .unwrap_or(false)
            {
                std::fs::write(dir.join(f), v.trim()).map_err(write_err(&dir.join(f)))?;
            }
        }
    }
    Ok(())
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
