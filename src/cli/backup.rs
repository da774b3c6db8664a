//! `k8sd backup`: one consistent archive of a control-plane node (see `crate::backup`).

use super::exit::fail;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::backup::{self, Manifest, SNAPSHOT_ENTRY};
use crate::daemon::ControlClient;
use crate::daemon::config::{NodeConfig, Role};
use crate::paths::Layout;

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// Archive to write (tar.gz, mode 0600: it holds the CA keys). Must not exist.
    /// Default: k8sd-backup-<node>-<UTC time>.tar.gz in the current directory.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

pub fn backup(layout: Layout, args: BackupArgs) -> anyhow::Result<()> {
    let node = read_node(&layout)?;
    if node.role != Role::ControlPlane {
        fail!(
            Refused,
            "{} is a worker, which holds no datastore and no CA keys; run k8sd backup on a control-plane node",
            node.node_name
        );
    }
    if !ControlClient::new(layout.control_socket()).is_running() {
        fail!(
            DaemonNotRunning,
            "the k8sd daemon is not running (no answer on {}); start it (k8sd run, or systemctl start k8sd) and retry",
            layout.control_socket().display()
        );
    }
    let (out, m) = write_backup(&layout, &node, args.output, "k8sd-backup")?;
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    println!(
        "backup written to {} ({} files, {size} bytes): cluster {}, datastore revision {}",
        out.display(),
        m.files.len(),
        m.cluster_id,
        m.revision
    );
    Ok(())
}

/// Write a backup archive of `node` to `out` (default `<prefix>-<node>-<UTC time>.tar.gz` in
/// the current directory), through `daemon::backups`, the code path scheduled backups take too.
/// It reads the datastore file itself, so it works with the daemon running or stopped
/// (`k8sd recover` takes its backup offline).
pub(super) fn write_backup(
    layout: &Layout,
    node: &NodeConfig,
    out: Option<PathBuf>,
    prefix: &str,
) -> anyhow::Result<(PathBuf, Manifest)> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let out =
        out.unwrap_or_else(|| PathBuf::from(backup::archive::default_name(prefix, &node.node_name, now)));
    let m = crate::daemon::backups::write_node_backup(layout, node, &out, now)?;
    Ok((out, m))
}

pub(super) fn read_node(layout: &Layout) -> anyhow::Result<NodeConfig> {
    let path = layout.node_file();
    match crate::daemon::config::read_node_file(&path)? {
        Some(node) => Ok(node),
        None => fail!(
            NotInitialised,
            "this machine is not a k8sd node ({} does not exist); run k8sd backup on a control-plane node, or pass its --data-dir",
            path.display()
        ),
    }
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The archive written by `k8sd backup`.
    pub file: PathBuf,
    /// Node name (default: the backed-up node's).
    #[arg(long)]
    pub node_name: Option<String>,
    /// This machine's address for the cluster (default: first non-loopback IPv4).
    #[arg(long)]
    pub advertise_address: Option<String>,
    /// The datastore's backend quota in bytes, as `k8sd init --quota-backend-bytes` (default:
    /// the backed-up node's, from its node.yaml in the archive).
    #[arg(long, allow_negative_numbers = true)]
    pub quota_backend_bytes: Option<i64>,
    /// Give up waiting for the node after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    #[command(flatten)]
    pub run: super::node::RunArgs,
}

/// `k8sd restore FILE`: a new single-node cluster from an archive, on a fresh machine.
///
/// ```text
///  refuse an initialised data dir (or one with a datastore or PKI in it)
///  ─▶ unpack into a scratch dir and verify every checksum (nothing else touched yet)
///  ─▶ check the node settings as init does ─▶ reseed the datastore copy
///  ─▶ move pki/ and datastore/state.db into place ─▶ `init` through the daemon
/// ```
///
/// The node then starts exactly as `k8sd init` starts one, with the backed-up CAs, service
/// account key and Secrets key (the PKI plan keeps existing CAs and re-issues the leaves whose
/// names or addresses changed; kubeconfigs are rendered again) and the backed-up data. If init
/// fails before it records the node (`node.yaml`), what restore put in place is removed again,
/// so the data dir is as fresh as before and restore can simply be run again.
pub fn restore(layout: Layout, args: RestoreArgs) -> anyhow::Result<()> {
    use crate::daemon::api::{API_VERSION, Request};
    use crate::daemon::config;
    let data_dir = layout.data_dir.clone();
    if layout.node_file().exists() {
        fail!(
            AlreadyInitialised,
            "the data dir {} already holds an initialised node ({} exists); k8sd restore builds a new cluster on a fresh machine only. Nothing was changed. Restore on a fresh machine, or pass an empty --data-dir",
            data_dir.display(),
            layout.node_file().display()
        );
    }
    let pki_used = std::fs::read_dir(layout.pki_dir()).is_ok_and(|mut d| d.next().is_some());
    for (leftover, present) in [
        (layout.datastore_dir().join("state.db"), false),
        (layout.pki_dir(), pki_used),
    ] {
        if present || leftover.is_file() {
            fail!(
                Refused,
                "the data dir {} is not fresh: {} exists (left by an earlier node or a failed join); remove {} and retry. Nothing was changed",
                data_dir.display(),
                leftover.display(),
                data_dir.display()
            );
        }
    }
    super::node::check_writable(&data_dir)?;
    let scratch = layout.restore_scratch();
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir(&scratch).with_context(|| format!("cannot create {}", scratch.display()))?;
    set_mode(&scratch, 0o700)?;
    let res = unpack_and_install(&layout, &args, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    let (manifest, init) = res?;
    println!(
        "restoring cluster {} (datastore revision {}, k8sd {}, Kubernetes {}, backed up on {}) from {}",
        manifest.cluster_id,
        manifest.revision,
        manifest.k8sd_version,
        manifest.kubernetes_version,
        manifest.node_name,
        args.file.display()
    );
    let req = Request::Init {
        version: API_VERSION,
        init,
    };
    let res = super::node::drive(&layout, &args.run, req, config::PORTS, args.timeout);
    if res.is_err() && !layout.node_file().exists() {
        // Init refused before it recorded the node (a busy port, a missing component): take
        // back what restore installed, so the data dir is fresh again.
        uninstall(&layout);
    }
    res?;
    println!(
        "restored: a one-node cluster with the backed-up CAs and data. Add nodes with `k8sd add-node` (old tokens are void)"
    );
    Ok(())
}

/// Unpack and verify into `scratch`, check the node settings, then move the PKI and the
/// reseeded datastore into the data dir. Returns the manifest and the init request.
fn unpack_and_install(
    layout: &Layout,
    args: &RestoreArgs,
    scratch: &Path,
) -> anyhow::Result<(Manifest, crate::daemon::config::InitRequest)> {
    use crate::cluster::registry::{MEMBERS_PREFIX, TOKENS_PREFIX};
    use crate::daemon::config::{self, InitRequest};
    let manifest = backup::unpack_verified(&args.file, scratch)?;
    let yaml = scratch.join("node.yaml");
    let text = std::fs::read_to_string(&yaml).with_context(|| {
        format!(
            "{} holds no node.yaml; it is not a control-plane node's backup. Nothing was changed",
            args.file.display()
        )
    })?;
    let archived: NodeConfig = serde_yaml::from_str(&text)
        .with_context(|| format!("the node.yaml in {} is unreadable", args.file.display()))?;
    if archived.role != Role::ControlPlane {
        fail!(
            Usage,
            "{} is a worker's archive; restore a control-plane node's backup. Nothing was changed",
            args.file.display()
        );
    }
    if !scratch.join("pki").join("ca.key").exists() {
        fail!(
            Usage,
            "{} holds no pki/ca.key; it cannot restore the cluster CA. Nothing was changed",
            args.file.display()
        );
    }
    // Everything the daemon will check, before anything is moved into place. The cluster's
    // ranges are the archived ones: the restored objects (Services, Pods) use them.
    let req = InitRequest {
        node_name: Some(args.node_name.clone().unwrap_or(archived.node_name.clone())),
        advertise_address: args.advertise_address.clone(),
        pod_cidr: Some(archived.pod_cidr.clone()),
        service_cidr: Some(archived.service_cidr.clone()),
        extra_sans: archived.extra_sans.clone(),
        disable: archived.disable.clone(),
        extra_args: archived.extra_args.clone(),
        // The quota the operator chose for this data: under the default one a store that had a
        // bigger quota could refuse writes at once, and a smaller one would be silently lifted.
        quota_backend_bytes: args.quota_backend_bytes.or(archived.quota_backend_bytes),
        // The operator's schedule goes with the data, as the quota does.
        backup_schedule: archived.backup_schedule.clone(),
        backup_retention: archived.backup_retention,
    };
    config::validate(&req, &config::host_name(), &config::local_addresses())?;
    // The old cluster's member and token records go: its other nodes are not members of the
    // new cluster, and a token minted before the backup must not admit anyone now.
    let snap = scratch.join(SNAPSHOT_ENTRY);
    crate::datastore::reseed_for_new_cluster(&snap, &[MEMBERS_PREFIX.as_bytes(), TOKENS_PREFIX.as_bytes()])
        .with_context(|| format!("cannot prepare the datastore from {}", args.file.display()))?;
    let pki = layout.pki_dir();
    std::fs::rename(scratch.join("pki"), &pki)
        .with_context(|| format!("cannot move the PKI to {}", pki.display()))?;
    set_mode(&pki, 0o700)?;
    let ds = layout.datastore_dir();
    std::fs::create_dir_all(&ds).with_context(|| format!("cannot create {}", ds.display()))?;
    set_mode(&ds, 0o700)?;
    let db = ds.join("state.db");
    std::fs::rename(&snap, &db).with_context(|| format!("cannot move the datastore to {}", db.display()))?;
    Ok((manifest, req))
}

/// Remove what `unpack_and_install` put into the data dir.
fn uninstall(layout: &Layout) {
    for dir in [layout.pki_dir(), layout.kubeconfig_dir(), layout.datastore_dir()] {
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!(
                "could not remove {}: {e}; remove it before the next restore",
                dir.display()
            );
        }
    }
}

fn set_mode(p: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", p.display()))
}
