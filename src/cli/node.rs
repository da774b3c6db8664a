//! Node verbs: `run`, `init`, `status`, `kubectl`, `config`, `logs`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};

use super::exit::{self, fail};
use crate::daemon::api::{API_VERSION, Message, Request, StatusReport};
use crate::daemon::config::{self, InitRequest};
use crate::daemon::extra_args::ExtraArgs;
use crate::daemon::{ControlClient, Daemon, DaemonOptions};
use crate::paths::{self, Layout};

/// Where this node keeps its state. Shared by every node verb.
#[derive(Debug, Clone, clap::Args)]
pub struct LayoutArgs {
    /// Persistent state: PKI, datastore, component state and logs [default: /var/lib/k8sd; in
    /// the snap $SNAP_COMMON/var/lib/k8sd].
    #[arg(long, env = paths::ENV_DATA_DIR, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Volatile state: the control socket and pid files [default: /run/k8sd; in the snap
    /// /run/snap.k8sd].
    #[arg(long, env = paths::ENV_RUN_DIR, global = true)]
    pub run_dir: Option<PathBuf>,
}

impl LayoutArgs {
    /// The flags (or their variables), else the defaults of this install: the host's, or the
    /// snap's when snapd's `$SNAP` is set.
    pub fn layout(&self) -> Result<Layout, paths::SnapEnvError> {
        let snap = paths::Snap::from_env()?;
        Ok(Layout::new(
            self.data_dir
                .clone()
                .unwrap_or_else(|| paths::default_data_dir(snap.as_ref())),
            self.run_dir
                .clone()
                .unwrap_or_else(|| paths::default_run_dir(snap.as_ref())),
        ))
    }
}

/// Where this node's programs are and the kubelet's cgroup root: what `run` and
/// `debug render` both need to name the components' command lines.
#[derive(Debug, Clone, clap::Args)]
pub struct HostArgs {
    /// The kubebin multi-call binary (defaults: $K8SD_KUBEBIN, $SNAP/bin/kubebin in the snap,
    /// beside k8sd, or the build cache).
    #[arg(long)]
    pub kubebin: Option<PathBuf>,
    /// Directory with containerd, containerd-shim-runc-v2, ctr and runc (defaults:
    /// $K8SD_RUNTIME_DIR, $SNAP/runtime in the snap, or the build cache of
    /// scripts/build-runtime.sh).
    #[arg(long)]
    pub runtime_dir: Option<PathBuf>,
    /// Directory with pause.tar and busybox.tar (default: $K8SD_IMAGES_DIR, $SNAP/images in the
    /// snap, or /var/cache/k8sd/images).
    #[arg(long)]
    pub images_dir: Option<PathBuf>,
    /// The kubelet's cgroup root; give each node its own when several share one machine.
    #[arg(long, env = "K8SD_CGROUP_ROOT", default_value = "/")]
    pub cgroup_root: String,
}

impl HostArgs {
    /// The daemon's options: the flags, else this install's defaults (the host's or the snap's).
    pub fn options(
        self,
        layout: Layout,
        allow_kubernetes_minor_change: bool,
    ) -> anyhow::Result<DaemonOptions> {
        let snap = paths::Snap::from_env()?;
        let snap = snap.as_ref();
        if let Some(s) = snap {
            tracing::info!(snap = %s.root.display(), revision = %s.revision, data_dir = %layout.data_dir.display(), "running from a snap");
        }
        Ok(DaemonOptions {
            layout,
            kubebin: self.kubebin.or_else(|| paths::find_kubebin(snap)),
            runtime: self
                .runtime_dir
                .map(paths::RuntimeDir)
                .unwrap_or_else(|| paths::find_runtime_dir(snap)),
            images_dir: self.images_dir.unwrap_or_else(|| paths::images_dir(snap)),
            cni_bin_dir: paths::cni_bin_dir(snap),
            cgroup_root: self.cgroup_root,
            allow_kubernetes_minor_change,
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub host: HostArgs,
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Let this node run a Kubernetes minor version one step from the other control-plane
    /// nodes' (the first node of a minor upgrade). Without it such a node refuses to start its
    /// components or to join; a skipped minor is refused even with it. See docs/operations.md,
    /// "Upgrades". The variable takes 1/0, true/false, yes/no or on/off: the documented
    /// `K8SD_ALLOW_KUBERNETES_MINOR_CHANGE=1` was refused by clap's strict true/false parser.
    #[arg(long, env = "K8SD_ALLOW_KUBERNETES_MINOR_CHANGE",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_kubernetes_minor_change: bool,
}

pub fn run(layout: Layout, args: RunArgs) -> anyhow::Result<()> {
    super::init_logging(&args.log_level);
    let opts = args.host.options(layout, args.allow_kubernetes_minor_change)?;
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let daemon = Daemon::new(opts);
        daemon.run(super::shutdown_signal()).await?;
        Ok(())
    })
}

/// Changes to the components' flags, shared by `init` and `join`. Each takes NAME=VALUE (add a
/// flag, or replace k8sd's value) or NAME- (remove one of k8sd's flags), and may repeat.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ExtraArgFlags {
    /// A kube-apiserver flag: NAME=VALUE sets it, NAME- removes k8sd's default (repeatable).
    #[arg(long = "kube-apiserver-arg", value_name = "NAME=VALUE")]
    pub kube_apiserver: Vec<String>,
    /// A kube-controller-manager flag, as --kube-apiserver-arg.
    #[arg(long = "kube-controller-manager-arg", value_name = "NAME=VALUE")]
    pub kube_controller_manager: Vec<String>,
    /// A kube-scheduler flag, as --kube-apiserver-arg.
    #[arg(long = "kube-scheduler-arg", value_name = "NAME=VALUE")]
    pub kube_scheduler: Vec<String>,
    /// A kubelet flag, as --kube-apiserver-arg.
    #[arg(long = "kubelet-arg", value_name = "NAME=VALUE")]
    pub kubelet: Vec<String>,
    /// A kube-proxy flag, as --kube-apiserver-arg.
    #[arg(long = "kube-proxy-arg", value_name = "NAME=VALUE")]
    pub kube_proxy: Vec<String>,
}

impl ExtraArgFlags {
    pub fn to_extra_args(&self) -> Result<ExtraArgs, config::ConfigError> {
        let mut x = ExtraArgs::default();
        for (component, items) in [
            ("kube-apiserver", &self.kube_apiserver),
            ("kube-controller-manager", &self.kube_controller_manager),
            ("kube-scheduler", &self.kube_scheduler),
            ("kubelet", &self.kubelet),
            ("kube-proxy", &self.kube_proxy),
        ] {
            x.add_cli(component, items)?;
        }
        Ok(x)
    }
}

/// The node's settings as `init` takes them; `debug render` takes the same.
#[derive(Debug, clap::Args)]
pub struct InitSettings {
    /// Kubernetes node name (default: the host name, lowercased).
    #[arg(long)]
    pub node_name: Option<String>,
    /// This node's address for the cluster; never loopback (default: first non-loopback IPv4).
    #[arg(long)]
    pub advertise_address: Option<String>,
    /// Pod network range (default 10.88.0.0/16).
    #[arg(long)]
    pub pod_cidr: Option<String>,
    /// Service IP range (default 10.96.0.0/12).
    #[arg(long)]
    pub service_cidr: Option<String>,
    /// Extra subject alternative names for the API server certificate (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub extra_sans: Vec<String>,
    /// Add-ons not to deploy, comma-separated: dns, metrics, storage (all are on otherwise;
    /// change later with `k8sd enable|disable NAME`).
    #[arg(long, value_delimiter = ',')]
    pub disable: Vec<String>,
    #[command(flatten)]
    pub extra_args: ExtraArgFlags,
    #[command(flatten)]
    pub control_plane: ControlPlaneFlags,
    /// YAML file with the same settings (kebab-case keys; component flags under
    /// `extra-args: {COMPONENT: {NAME: VALUE}}`, a null VALUE removes); flags win.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl InitSettings {
    /// The init request: the flags, then the config file for what they leave unset.
    pub fn request(self) -> anyhow::Result<InitRequest> {
        let req = InitRequest {
            node_name: self.node_name,
            advertise_address: self.advertise_address,
            pod_cidr: self.pod_cidr,
            service_cidr: self.service_cidr,
            extra_sans: self.extra_sans,
            disable: self.disable,
            extra_args: self.extra_args.to_extra_args()?,
            quota_backend_bytes: self.control_plane.quota_backend_bytes,
            backup_schedule: self.control_plane.backup_schedule,
            backup_retention: self.control_plane.backup_retention,
        };
        Ok(match &self.config {
            Some(file) => req.merge_file(config::read_init_file(file)?),
            None => req,
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub settings: InitSettings,
    /// Give up waiting for the node after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    #[command(flatten)]
    pub run: RunArgs,
}

/// A control-plane node's own settings, given to `init` or to a control-plane `join`.
#[derive(Debug, Default, clap::Args)]
pub struct ControlPlaneFlags {
    /// The datastore's backend quota in bytes (etcd's --quota-backend-bytes): at this many
    /// bytes in use writes that add data are refused with a NOSPACE alarm. 0: etcd's 2 GiB
    /// (the default); negative: no quota. Kept in node.yaml.
    #[arg(long, allow_negative_numbers = true)]
    pub quota_backend_bytes: Option<i64>,
    /// When this control-plane node writes a backup archive into <data dir>/backups: `off`,
    /// `every N` with N in s, m or h (`every 6h`), or UTC times `HH:MM,...` (default
    /// `00:00,12:00`, as k3s). Kept in node.yaml.
    #[arg(long)]
    pub backup_schedule: Option<String>,
    /// How many scheduled backup archives to keep, newest first (default 5, as k3s).
    #[arg(long)]
    pub backup_retention: Option<u32>,
}

impl ControlPlaneFlags {
    /// Whether any of them was given: a worker has no datastore and takes no backups.
    pub fn any(&self) -> bool {
        self.quota_backend_bytes.is_some()
            || self.backup_schedule.is_some()
            || self.backup_retention.is_some()
    }
}

pub fn init(layout: Layout, args: InitArgs) -> anyhow::Result<()> {
    let req = args.settings.request()?;
    if layout.node_file().exists() {
        fail!(
            AlreadyInitialised,
            "this node is already initialised ({} exists); nothing was changed. Use `k8sd status`",
            layout.node_file().display()
        );
    }
    // Check everything we can before anything is written or started.
    config::validate(&req, &config::host_name(), &config::local_addresses())?;
    check_writable(&layout.data_dir)?;
    let req = Request::Init {
        version: API_VERSION,
        init: req,
    };
    drive(&layout, &args.run, req, config::PORTS, args.timeout)
}

/// Start the daemon if none runs (after checking `ports` are free), send `req`, print its
/// progress, and wait up to `timeout` seconds for the outcome.
pub(super) fn drive(
    layout: &Layout,
    run: &RunArgs,
    req: Request,
    ports: &[(u16, &'static str)],
    timeout: u64,
) -> anyhow::Result<()> {
    let client = ControlClient::new(layout.control_socket());
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async move {
        if !client.is_running() {
            config::check_ports(ports)?;
            start_detached_daemon(layout, run)?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while !client.is_running() {
                if tokio::time::Instant::now() > deadline {
                    bail!(
                        "the k8sd daemon did not start; see {}",
                        layout.daemon_log().display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            println!("started the k8sd daemon (log: {})", layout.daemon_log().display());
        }
        let call = client.call(&req, |m| {
            if let Message::Progress { step } = m {
                println!("  {step}");
            }
        });
        match tokio::time::timeout(Duration::from_secs(timeout), call).await {
            Err(_) => bail!("the node is not ready after {timeout} s; see `k8sd status`"),
            Ok(r) => match r? {
                Message::Done => {
                    println!("node is ready. Try: k8sd kubectl get nodes");
                    Ok(())
                }
                Message::Error { error, kind } => Err(exit::failure(kind, error)),
                other => bail!("unexpected answer from the daemon: {other:?}"),
            },
        }
    })
}

pub(super) fn check_writable(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "data dir {} cannot be created; pick another with --data-dir",
            dir.display()
        )
    })?;
    let probe = dir.join(".k8sd-write-test");
    std::fs::write(&probe, b"").with_context(|| {
        format!(
            "data dir {} is not writable; pick another with --data-dir or run as root",
            dir.display()
        )
    })?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// `k8sd run` in the background, in its own session, logging into the data dir.
fn start_detached_daemon(layout: &Layout, args: &RunArgs) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    std::fs::create_dir_all(layout.logs_dir())?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(layout.daemon_log())?;
    let exe = std::env::current_exe().context("cannot find the k8sd executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("run")
        .arg("--data-dir")
        .arg(&layout.data_dir)
        .arg("--run-dir")
        .arg(&layout.run_dir)
        .arg("--log-level")
        .arg(&args.log_level)
        .arg("--cgroup-root")
        .arg(&args.host.cgroup_root);
    if let Some(k) = &args.host.kubebin {
        cmd.arg("--kubebin").arg(k);
    }
    if let Some(r) = &args.host.runtime_dir {
        cmd.arg("--runtime-dir").arg(r);
    }
    if let Some(i) = &args.host.images_dir {
        cmd.arg("--images-dir").arg(i);
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .env_remove("NOTIFY_SOCKET");
    cmd.spawn().context("cannot start the k8sd daemon")?;
    Ok(())
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
    Yaml,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[arg(long, short, value_enum, default_value = "text")]
    pub output: Output,
    /// Wait until the node and every enabled add-on are ready (up to --timeout seconds).
    #[arg(long)]
    pub wait_ready: bool,
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

pub fn status(layout: Layout, args: StatusArgs) -> anyhow::Result<()> {
    let client = ControlClient::new(layout.control_socket());
    let rt = tokio::runtime::Runtime::new()?;
    let report: StatusReport = rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
        loop {
            let got = match client
                .call(&Request::Status { version: API_VERSION }, |_| {})
                .await
            {
                Ok(Message::Status { status }) => Ok(*status),
                Ok(Message::Error { error, kind }) => Err(exit::failure(kind, error)),
                Ok(other) => Err(anyhow::anyhow!("unexpected answer: {other:?}")),
                Err(e) => Err(e.into()),
            };
            match got {
                Ok(s) if !args.wait_ready || (s.ready && s.addons.iter().all(|a| a.ready)) => return Ok(s),
                Err(e) if !args.wait_ready => return Err(e),
                _ if tokio::time::Instant::now() > deadline => {
                    bail!(
                        "not ready after {} s; run `k8sd status` for details",
                        args.timeout
                    )
                }
                _ => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    })?;
    match args.output {
        Output::Text => print!("{}", crate::daemon::status::render_text(&report)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Yaml => print!("{}", serde_yaml::to_string(&report)?),
    }
    Ok(())
}

/// `k8sd kubectl ARGS…`: kubectl from kubebin with the admin kubeconfig.
pub fn kubectl(layout: Layout, args: Vec<String>) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let kubebin = paths::find_kubebin(paths::Snap::from_env()?.as_ref())
        .context("kubebin not found; build it with scripts/build-kube.sh or set K8SD_KUBEBIN")?;
    let kc = layout.admin_kubeconfig();
    if !kc.exists() {
        fail!(
            NotInitialised,
            "{} does not exist; initialise the node with `k8sd init` first",
            kc.display()
        );
    }
    let err = std::process::Command::new(kubebin)
        .arg("kubectl")
        .arg(format!("--kubeconfig={}", kc.display()))
        .args(args)
        .exec();
    Err(err).context("cannot run kubectl")
}

pub fn config(layout: Layout) -> anyhow::Result<()> {
    let kc = layout.admin_kubeconfig();
    let text = std::fs::read_to_string(&kc).with_context(|| {
        format!(
            "cannot read {}; initialise the node with `k8sd init` first",
            kc.display()
        )
    })?;
    print!("{text}");
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// kube-apiserver, kube-controller-manager, kube-scheduler, containerd, kubelet, kube-proxy,
    /// k8sd, or audit (kube-apiserver's audit log, on control-plane nodes).
    pub component: String,
    /// Number of lines from the end (0 = all).
    #[arg(long, short = 'n', default_value_t = 100)]
    pub lines: usize,
}

pub const COMPONENTS: &[&str] = &[
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "containerd",
    "kubelet",
    "kube-proxy",
    "k8sd",
    "audit",
];

pub fn logs(layout: Layout, args: LogsArgs) -> anyhow::Result<()> {
    if !COMPONENTS.contains(&args.component.as_str()) {
        fail!(
            Usage,
            "unknown component {:?}; choose one of: {}",
            args.component,
            COMPONENTS.join(", ")
        );
    }
    let path = layout.logs_dir().join(format!("{}.log", args.component));
    let text = std::fs::read_to_string(&path).with_context(|| format!("no log at {}", path.display()))?;
    let lines: Vec<&str> = text.lines().collect();
    let from = if args.lines == 0 {
        0
    } else {
        lines.len().saturating_sub(args.lines)
    };
    // A reader that has seen enough (`| head`, `| grep -q`) closes the pipe: that ends the
    // output, it is not an error.
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for l in &lines[from..] {
        match writeln!(out, "{l}") {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e).context("writing the log to standard output"),
        }
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("writing the log to standard output")
        }
        _ => Ok(()),
    }
}
