//! Every on-disk path k8sd uses, and its mode, in one place (see docs/directories.md).
//!
//! Two roots: the data dir (persistent: PKI, datastore, component state, logs) and the run dir
//! (volatile: control socket, pid files, containerd state). Both are flags, so several nodes can
//! share one machine in tests, each in its own network namespace.
//!
//! Their defaults, and where the binaries and images are, depend on how k8sd was installed: on
//! the host (FHS paths and the build cache), or as a snap, when snapd's `$SNAP` is set
//! ([`Snap`]: state under `$SNAP_COMMON`, the run dir `/run/snap.<instance>`, everything shipped
//! from `$SNAP`).
//!
//! Over 600 lines only with its tests (about 440 lines of code): one job, every path in one place.

use std::path::{Path, PathBuf};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/k8sd";
pub const DEFAULT_RUN_DIR: &str = "/run/k8sd";
/// Default place of the prebuilt image tarballs, kubebin and the container runtime (outside any
/// checkout).
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/k8sd";

/// systemd-resolved's list of the real upstream servers (present only while it runs).
pub const SYSTEMD_RESOLV_CONF: &str = "/run/systemd/resolve/resolv.conf";
/// The host's resolver configuration; under systemd-resolved it names only the 127.0.0.53 stub.
pub const ETC_RESOLV_CONF: &str = "/etc/resolv.conf";

/// The resolv.conf the kubelet hands to pods with `dnsPolicy: Default` (and so to a cluster DNS
/// server's upstream forwarding): systemd-resolved's upstream list when that file exists, since
/// the stub address 127.0.0.53 in /etc/resolv.conf means "this network namespace" inside a pod
/// and a DNS server forwarding there would query itself.
pub fn kubelet_resolv_conf(systemd_resolved_present: bool) -> &'static str {
    if systemd_resolved_present {
        SYSTEMD_RESOLV_CONF
    } else {
        ETC_RESOLV_CONF
    }
}

/// [`kubelet_resolv_conf`] for this machine.
pub fn host_kubelet_resolv_conf() -> &'static str {
    kubelet_resolv_conf(Path::new(SYSTEMD_RESOLV_CONF).is_file())
}

/// Environment variables k8sd reads.
pub const ENV_KUBEBIN: &str = "K8SD_KUBEBIN";
pub const ENV_RUNTIME_DIR: &str = "K8SD_RUNTIME_DIR";
pub const ENV_IMAGES_DIR: &str = "K8SD_IMAGES_DIR";
pub const ENV_DATA_DIR: &str = "K8SD_DATA_DIR";
pub const ENV_RUN_DIR: &str = "K8SD_RUN_DIR";

/// snapd's environment for a snap's apps and hooks (`snap run` sets all of them).
pub const ENV_SNAP: &str = "SNAP";
pub const ENV_SNAP_DATA: &str = "SNAP_DATA";
pub const ENV_SNAP_COMMON: &str = "SNAP_COMMON";
pub const ENV_SNAP_NAME: &str = "SNAP_NAME";
pub const ENV_SNAP_INSTANCE_NAME: &str = "SNAP_INSTANCE_NAME";
pub const ENV_SNAP_REVISION: &str = "SNAP_REVISION";

/// Debian's containernetworking-plugins, which a host install uses for pod networking.
pub const HOST_CNI_BIN_DIR: &str = "/usr/lib/cni";

/// The pinned Kubernetes version (the one pin lives in assets/kube/VERSION).
pub const KUBE_VERSION: &str = include_str!("../assets/kube/VERSION");

/// 0700, beside a `k8sd backup` archive: the datastore snapshot while it is archived (same
/// filesystem as the archive, so a full disk is reported against the path the user chose).
pub fn backup_scratch(archive_dir: &Path) -> PathBuf {
    archive_dir.join(format!(".k8sd-backup-{}", std::process::id()))
}

pub fn kube_version() -> &'static str {
    KUBE_VERSION.trim()
}

/// The container runtime's pins (containerd and runc; the one pin lives in
/// assets/runtime/versions.env).
const RUNTIME_PINS: &str = include_str!("../assets/runtime/versions.env");

/// The version pinned for `key` (`CONTAINERD` or `RUNC`) in assets/runtime/versions.env, or ""
/// when absent; a unit test pins that both are present.
pub fn runtime_pin(key: &str) -> &'static str {
    RUNTIME_PINS
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
        .unwrap_or("")
}

/// The directory holding the container runtime k8sd runs: containerd 2.x, its runc shim, `ctr`
/// and runc, built together by scripts/build-runtime.sh. One directory, because containerd
/// finds the shim by `PATH` (k8sd puts this directory first) and the shim is told which runc to
/// run by containerd's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeDir(pub PathBuf);

impl RuntimeDir {
    /// The binaries a node needs from the runtime directory.
    pub const BINARIES: [&'static str; 4] = ["containerd", "containerd-shim-runc-v2", "ctr", "runc"];

    pub fn dir(&self) -> &Path {
        &self.0
    }
    pub fn containerd(&self) -> PathBuf {
        self.0.join("containerd")
    }
    pub fn ctr(&self) -> PathBuf {
        self.0.join("ctr")
    }
    pub fn runc(&self) -> PathBuf {
        self.0.join("runc")
    }
    /// Every binary of [`Self::BINARIES`] that is not a file here.
    pub fn missing(&self) -> Vec<PathBuf> {
        Self::BINARIES
            .iter()
            .map(|b| self.0.join(b))
            .filter(|p| !p.is_file())
            .collect()
    }
    /// `PATH` for containerd: this directory first, so the shim containerd looks up by name is
    /// ours and never a `containerd-shim-runc-v2` of Debian's containerd package in /usr/bin.
    pub fn path_env(&self, rest: &str) -> String {
        format!("{}:{rest}", self.0.display())
    }
}

/// k8sd run from a snap: where snapd put it and the state directories snapd gave it.
///
/// Every persistent file lives under `$SNAP_COMMON`, none under `$SNAP_DATA`. snapd copies
/// `$SNAP_DATA` into a new directory at every refresh and goes back to the old copy on a revert;
/// a datastore there would be copied whole (containerd's images with it) and, on a revert,
/// come back older than the Raft log the other members hold for it, a member that forgot
/// entries it acknowledged. `$SNAP_COMMON` is one directory for all revisions, so a refresh
/// keeps the node's state as a package upgrade on the host does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snap {
    /// `$SNAP`: the read-only mounted snap (k8sd, kubebin, the runtime, images, CNI plugins).
    pub root: PathBuf,
    /// `$SNAP_COMMON`: shared by every revision.
    pub common: PathBuf,
    /// `$SNAP_DATA`: this revision's own directory; k8sd keeps nothing there (see above).
    pub data: PathBuf,
    /// `$SNAP_INSTANCE_NAME` (`k8sd`, or `k8sd_<key>` for a parallel install), else `$SNAP_NAME`.
    pub instance: String,
    /// `$SNAP_REVISION`, for messages.
    pub revision: String,
}

/// `$SNAP` is set but the rest of snapd's environment is not usable.
#[derive(Debug, thiserror::Error)]
pub enum SnapEnvError {
    #[error(
        "${ENV_SNAP} is {snap}, so k8sd runs as a snap, but ${var} is {value}, not {want}; snapd sets \
         {ENV_SNAP}, {ENV_SNAP_COMMON}, {ENV_SNAP_DATA}, {ENV_SNAP_NAME} and {ENV_SNAP_REVISION} together: run k8sd \
         through the snap (`snap run k8sd`), set {var} as snapd would, or unset {ENV_SNAP} to use the host's paths"
    )]
    Incomplete {
        snap: String,
        var: &'static str,
        /// The value as found: quoted, or `unset`.
        value: String,
        /// What snapd would have put there.
        want: &'static str,
    },
}

const ABSOLUTE: &str = "an absolute path";
const SNAP_NAME_CHARS: &str = "a snap name (lower-case letters, digits, '-' and '_')";
const NON_EMPTY: &str = "a non-empty value";

impl Snap {
    /// The snap k8sd runs from, read from `get` (an environment): `None` without `$SNAP`.
    pub fn from_vars(get: impl Fn(&str) -> Option<std::ffi::OsString>) -> Result<Option<Snap>, SnapEnvError> {
        let Some(root) = get(ENV_SNAP).filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let root = PathBuf::from(root);
        let incomplete = |var: &'static str, value: Option<&std::ffi::OsStr>, want: &'static str| {
            SnapEnvError::Incomplete {
                snap: root.display().to_string(),
                var,
                value: value.map_or_else(|| "unset".to_owned(), |v| format!("{:?}", v.to_string_lossy())),
                want,
            }
        };
        let abs = |var: &'static str| match get(var) {
            Some(v) if Path::new(&v).is_absolute() => Ok(PathBuf::from(v)),
            other => Err(incomplete(var, other.as_deref(), ABSOLUTE)),
        };
        let text = |var: &'static str| match get(var) {
            Some(v) if !v.is_empty() => v.into_string().map_err(|v| incomplete(var, Some(&v), NON_EMPTY)),
            other => Err(incomplete(var, other.as_deref(), NON_EMPTY)),
        };
        // The instance name becomes a directory name (/run/snap.<instance>): no '/' or "..".
        let snap_name = |var: &'static str, v: String| {
            let ok = !v.is_empty()
                && v.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
            if ok {
                Ok(v)
            } else {
                Err(incomplete(var, Some(std::ffi::OsStr::new(&v)), SNAP_NAME_CHARS))
            }
        };
        if !root.is_absolute() {
            return Err(incomplete(ENV_SNAP, Some(root.as_os_str()), ABSOLUTE));
        }
        let name = snap_name(ENV_SNAP_NAME, text(ENV_SNAP_NAME)?)?;
        let instance = match get(ENV_SNAP_INSTANCE_NAME).filter(|v| !v.is_empty()) {
            None => name,
            Some(v) => snap_name(ENV_SNAP_INSTANCE_NAME, v.to_string_lossy().into_owned())?,
        };
        Ok(Some(Snap {
            common: abs(ENV_SNAP_COMMON)?,
            data: abs(ENV_SNAP_DATA)?,
            instance,
            revision: text(ENV_SNAP_REVISION)?,
            root,
        }))
    }

    /// The snap this process runs from (its environment).
    pub fn from_env() -> Result<Option<Snap>, SnapEnvError> {
        Self::from_vars(|k| std::env::var_os(k))
    }

    /// The data dir: `$SNAP_COMMON/var/lib/k8sd`, the host's path under the shared directory,
    /// so the layout below it is the same as on a host install.
    pub fn data_dir(&self) -> PathBuf {
        self.common.join(DEFAULT_DATA_DIR.trim_start_matches('/'))
    }
    /// The run dir: `/run/snap.<instance>`, snapd's own runtime directory name for a snap
    /// (tmpfs, gone at boot, as `/run/k8sd` on the host).
    pub fn run_dir(&self) -> PathBuf {
        PathBuf::from(format!("/run/snap.{}", self.instance))
    }
    pub fn kubebin(&self) -> PathBuf {
        self.root.join("bin/kubebin")
    }
    pub fn runtime_dir(&self) -> RuntimeDir {
        RuntimeDir(self.root.join("runtime"))
    }
    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }
    pub fn cni_bin_dir(&self) -> PathBuf {
        self.root.join("cni/bin")
    }
}

/// The data dir when neither `--data-dir` nor `K8SD_DATA_DIR` names one.
pub fn default_data_dir(snap: Option<&Snap>) -> PathBuf {
    snap.map_or_else(|| PathBuf::from(DEFAULT_DATA_DIR), Snap::data_dir)
}

/// The run dir when neither `--run-dir` nor `K8SD_RUN_DIR` names one.
pub fn default_run_dir(snap: Option<&Snap>) -> PathBuf {
    snap.map_or_else(|| PathBuf::from(DEFAULT_RUN_DIR), Snap::run_dir)
}

/// Where containerd finds the CNI plugins: the snap's own, else Debian's package.
pub fn cni_bin_dir(snap: Option<&Snap>) -> PathBuf {
    snap.map_or_else(|| PathBuf::from(HOST_CNI_BIN_DIR), Snap::cni_bin_dir)
}

/// The CNI plugins the pod network configuration (`assets/cni/10-k8sd.conflist`) calls.
pub const CNI_PLUGINS: [&str; 4] = ["bridge", "host-local", "portmap", "loopback"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub data_dir: PathBuf,
    pub run_dir: PathBuf,
}

impl Layout {
    pub fn new(data_dir: impl Into<PathBuf>, run_dir: impl Into<PathBuf>) -> Self {
        Layout {
            data_dir: data_dir.into(),
            run_dir: run_dir.into(),
        }
    }

    fn d(&self, p: &str) -> PathBuf {
        self.data_dir.join(p)
    }
    fn r(&self, p: &str) -> PathBuf {
        self.run_dir.join(p)
    }

    /// 0600: the node's persisted configuration; its presence means "initialised".
    pub fn node_file(&self) -> PathBuf {
        self.d("node.yaml")
    }
    /// 0700: certificates (0644) and keys (0600).
    pub fn pki_dir(&self) -> PathBuf {
        self.d("pki")
    }
    /// 0600: kube-apiserver's EncryptionConfiguration with the cluster's Secrets key, made at
    /// `k8sd init` and handed to joining control-plane nodes (`pki::ENCRYPTION_CONFIG_FILE`).
    pub fn encryption_config(&self) -> PathBuf {
        self.pki_dir().join("encryption-config.yaml")
    }
    /// 0700: kubeconfigs (0600).
    pub fn kubeconfig_dir(&self) -> PathBuf {
        self.d("kubeconfig")
    }
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.kubeconfig_dir().join("admin.conf")
    }
    /// 0700: the datastore's SQLite files.
    pub fn datastore_dir(&self) -> PathBuf {
        self.d("datastore")
    }
    /// 0700: scheduled backup archives (0600 each: they hold the CA keys), kept to the node's
    /// `backup-retention`.
    pub fn backups_dir(&self) -> PathBuf {
        self.d("backups")
    }
    /// 0700: `k8sd restore`'s scratch copy of an archive while it is verified and prepared.
    pub fn restore_scratch(&self) -> PathBuf {
        self.d(&format!(".k8sd-restore-{}", std::process::id()))
    }
    /// 0700: rendered component configuration files.
    pub fn config_dir(&self) -> PathBuf {
        self.d("config")
    }
    /// 0700: one log file per component plus k8sd's own daemon log.
    pub fn logs_dir(&self) -> PathBuf {
        self.d("logs")
    }
    /// kube-apiserver's audit log (control-plane nodes), rotated by kube-apiserver itself.
    pub fn audit_log(&self) -> PathBuf {
        self.logs_dir().join("audit.log")
    }
    pub fn daemon_log(&self) -> PathBuf {
        self.logs_dir().join("k8sd.log")
    }
    pub fn containerd_root(&self) -> PathBuf {
        self.d("containerd")
    }
    pub fn kubelet_root(&self) -> PathBuf {
        self.d("kubelet")
    }
    pub fn pod_logs_dir(&self) -> PathBuf {
        self.d("pod-logs")
    }
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.d("cni/net.d")
    }
    /// 0644: the CNI configuration for this node's pod range, written once the Node has one.
    pub fn cni_conflist(&self) -> PathBuf {
        self.cni_conf_dir().join("10-k8sd.conflist")
    }
    /// containerd's registry host configuration (`config_path`): `_default/hosts.toml` points
    /// every registry at the node-local image mirror.
    pub fn registry_config_dir(&self) -> PathBuf {
        self.config_dir().join("registry")
    }
    pub fn cni_ipam_dir(&self) -> PathBuf {
        self.d("cni/networks")
    }
    /// 0755: local-path volumes (the storage add-on), one `pvc-*` directory per volume, made
    /// and removed by the provisioner's helper pods.
    pub fn storage_dir(&self) -> PathBuf {
        self.d("storage")
    }
    /// 0600: the local API load balancer's last known kube-apiserver endpoints.
    pub fn lb_state_file(&self) -> PathBuf {
        self.d("lb/endpoints.json")
    }
    /// 0700: volatile state.
    pub fn containerd_state(&self) -> PathBuf {
        self.r("containerd")
    }
    pub fn containerd_socket(&self) -> PathBuf {
        self.r("containerd/containerd.sock")
    }
    /// 0600, root only: the CLI talks to the daemon here.
    pub fn control_socket(&self) -> PathBuf {
        self.r("k8sd.sock")
    }
    /// The daemon's own pid.
    pub fn daemon_pid_file(&self) -> PathBuf {
        self.r("k8sd.pid")
    }
    /// Pid files of supervised children.
    pub fn pid_dir(&self) -> PathBuf {
        self.r("pids")
    }
}

/// Find kubebin: `$K8SD_KUBEBIN`, the snap's, next to the k8sd binary, or the build cache.
pub fn find_kubebin(snap: Option<&Snap>) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(ENV_KUBEBIN) {
        return Some(PathBuf::from(p));
    }
    if let Some(s) = snap {
        return Some(s.kubebin());
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("kubebin")));
    let cached = Path::new(DEFAULT_CACHE_DIR)
        .join("kube")
        .join(kube_version())
        .join("kubebin");
    [beside, Some(cached)].into_iter().flatten().find(|p| p.is_file())
}

/// The build cache's runtime directory for the pins: what scripts/build-runtime.sh prints.
pub fn cached_runtime_dir() -> PathBuf {
    Path::new(DEFAULT_CACHE_DIR).join("runtime").join(format!(
        "containerd-{}-runc-{}",
        runtime_pin("CONTAINERD"),
        runtime_pin("RUNC")
    ))
}

/// Find the container runtime: `$K8SD_RUNTIME_DIR`, the snap's, else the build cache.
/// Unlike kubebin, never "beside the k8sd binary": k8sd installed in /usr/bin would then pick
/// up Debian's containerd 1.x, which Kubernetes 1.36 no longer fully supports.
pub fn find_runtime_dir(snap: Option<&Snap>) -> RuntimeDir {
    match (std::env::var_os(ENV_RUNTIME_DIR), snap) {
        (Some(dir), _) => RuntimeDir(PathBuf::from(dir)),
        (None, Some(s)) => s.runtime_dir(),
        (None, None) => RuntimeDir(cached_runtime_dir()),
    }
}

/// Where the image tarballs (pause.tar, busybox.tar) are: `$K8SD_IMAGES_DIR`, the snap's, or
/// the build cache.
pub fn images_dir(snap: Option<&Snap>) -> PathBuf {
    match (std::env::var_os(ENV_IMAGES_DIR), snap) {
        (Some(dir), _) => PathBuf::from(dir),
        (None, Some(s)) => s.images_dir(),
        (None, None) => Path::new(DEFAULT_CACHE_DIR).join("images"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_pins_are_versions_and_name_the_cache_dir() {
        for key in ["CONTAINERD", "RUNC"] {
            let v = runtime_pin(key);
            assert!(
                v.starts_with('v') && v.split('.').count() == 3,
                "{key}={v:?} in assets/runtime/versions.env"
            );
        }
        // Kubernetes 1.36 needs containerd 2.x; image volumes need >= 2.1.
        assert!(runtime_pin("CONTAINERD").starts_with("v2."));
        assert_eq!(runtime_pin("NOPE"), "");
        let dir = cached_runtime_dir();
        assert_eq!(
            dir.file_name().unwrap().to_string_lossy(),
            format!(
                "containerd-{}-runc-{}",
                runtime_pin("CONTAINERD"),
                runtime_pin("RUNC")
            )
        );
        assert!(dir.starts_with("/var/cache/k8sd/runtime"));
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<std::ffi::OsString> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.into())
    }

    const SNAPD: [(&str, &str); 5] = [
        ("SNAP", "/snap/k8sd/12"),
        ("SNAP_DATA", "/var/snap/k8sd/12"),
        ("SNAP_COMMON", "/var/snap/k8sd/common"),
        ("SNAP_NAME", "k8sd"),
        ("SNAP_REVISION", "12"),
    ];

    #[test]
    fn without_snap_the_defaults_are_the_hosts() {
        assert_eq!(Snap::from_vars(env(&[])).unwrap(), None);
        assert_eq!(Snap::from_vars(env(&[("SNAP", "")])).unwrap(), None);
        assert_eq!(default_data_dir(None), Path::new("/var/lib/k8sd"));
        assert_eq!(default_run_dir(None), Path::new("/run/k8sd"));
        assert_eq!(cni_bin_dir(None), Path::new("/usr/lib/cni"));
    }

    #[test]
    fn in_a_snap_state_is_under_snap_common_and_binaries_under_snap() {
        let snap = Snap::from_vars(env(&SNAPD)).unwrap().unwrap();
        let s = Some(&snap);
        // SNAP_COMMON, not SNAP_DATA: a refresh or revert never moves or rolls back the datastore.
        assert_eq!(
            default_data_dir(s),
            Path::new("/var/snap/k8sd/common/var/lib/k8sd")
        );
        assert!(!default_data_dir(s).starts_with(&snap.data));
        assert_eq!(default_run_dir(s), Path::new("/run/snap.k8sd"));
        assert_eq!(cni_bin_dir(s), Path::new("/snap/k8sd/12/cni/bin"));
        assert_eq!(snap.kubebin(), Path::new("/snap/k8sd/12/bin/kubebin"));
        assert_eq!(snap.runtime_dir().dir(), Path::new("/snap/k8sd/12/runtime"));
        assert_eq!(snap.images_dir(), Path::new("/snap/k8sd/12/images"));
        assert_eq!(snap.revision, "12");
    }

    #[test]
    fn a_new_revision_keeps_the_data_dir() {
        let old = Snap::from_vars(env(&SNAPD)).unwrap().unwrap();
        let mut vars = SNAPD;
        vars[0].1 = "/snap/k8sd/13";
        vars[1].1 = "/var/snap/k8sd/13";
        vars[4].1 = "13";
        let new = Snap::from_vars(env(&vars)).unwrap().unwrap();
        assert_eq!(old.data_dir(), new.data_dir());
        assert_eq!(old.run_dir(), new.run_dir());
        assert_ne!(old.kubebin(), new.kubebin());
    }

    #[test]
    fn a_parallel_instance_has_its_own_run_dir() {
        let mut vars = SNAPD.to_vec();
        vars.push(("SNAP_INSTANCE_NAME", "k8sd_test"));
        let snap = Snap::from_vars(env(&vars)).unwrap().unwrap();
        assert_eq!(snap.run_dir(), Path::new("/run/snap.k8sd_test"));
    }

    #[test]
    fn an_incomplete_snap_environment_is_refused_naming_the_variable() {
        for (drop, var) in [
            (1, "SNAP_DATA"),
            (2, "SNAP_COMMON"),
            (3, "SNAP_NAME"),
            (4, "SNAP_REVISION"),
        ] {
            let vars: Vec<_> = SNAPD
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != drop)
                .map(|(_, v)| *v)
                .collect();
            let err = Snap::from_vars(env(&vars)).unwrap_err().to_string();
            assert!(err.contains(&format!("${var} is unset, not ")), "{err}");
            assert!(err.contains("unset SNAP"), "{err}");
        }
        let mut vars = SNAPD;
        vars[2].1 = "relative/common";
        let err = Snap::from_vars(env(&vars)).unwrap_err().to_string();
        assert!(
            err.contains("$SNAP_COMMON is \"relative/common\", not an absolute path"),
            "{err}"
        );
        // The instance name is a directory name under /run: nothing that leaves it.
        let mut vars = SNAPD.to_vec();
        vars.push(("SNAP_INSTANCE_NAME", "../etc"));
        let err = Snap::from_vars(env(&vars)).unwrap_err().to_string();
        assert!(
            err.contains("$SNAP_INSTANCE_NAME is \"../etc\", not a snap name"),
            "{err}"
        );
        let mut vars = SNAPD;
        vars[0].1 = "snap/k8sd/12";
        assert!(Snap::from_vars(env(&vars)).is_err());
    }

    /// The destinations of snap/contents.txt: what scripts/build-snap.sh puts under `$SNAP`.
    fn snap_contents() -> Vec<&'static str> {
        include_str!("../snap/contents.txt")
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|l| l.split_whitespace().next().unwrap())
            .collect()
    }

    #[test]
    fn the_snap_ships_every_file_a_node_run_from_it_looks_for() {
        let snap = Snap::from_vars(env(&SNAPD)).unwrap().unwrap();
        let shipped: Vec<PathBuf> = snap_contents().iter().map(|d| snap.root.join(d)).collect();
        let mut wanted = vec![snap.root.join("bin/k8sd"), snap.kubebin()];
        let runtime = snap.runtime_dir();
        wanted.extend(RuntimeDir::BINARIES.iter().map(|b| runtime.dir().join(b)));
        wanted.extend(CNI_PLUGINS.iter().map(|p| snap.cni_bin_dir().join(p)));
        for w in &wanted {
            assert!(shipped.contains(w), "snap/contents.txt lacks {}", w.display());
        }
        // Only the CNI plugins k8sd uses, not the whole containernetworking-plugins package.
        let cni = shipped
            .iter()
            .filter(|p| p.starts_with(snap.cni_bin_dir()))
            .count();
        assert_eq!(cni, CNI_PLUGINS.len());
    }

    #[test]
    fn cni_plugins_are_the_ones_the_conflist_calls_and_loopback() {
        let conflist: serde_json::Value =
            serde_json::from_str(include_str!("../assets/cni/10-k8sd.conflist")).unwrap();
        let mut called: Vec<&str> = vec!["loopback"];
        for plugin in conflist["plugins"].as_array().unwrap() {
            called.push(plugin["type"].as_str().unwrap());
            if let Some(ipam) = plugin["ipam"]["type"].as_str() {
                called.push(ipam);
            }
        }
        called.sort_unstable();
        let mut ours = CNI_PLUGINS.to_vec();
        ours.sort_unstable();
        assert_eq!(called, ours);
    }

    #[test]
    fn runtime_dir_names_its_binaries_and_puts_itself_first_on_path() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = RuntimeDir(tmp.path().to_owned());
        assert_eq!(rt.missing().len(), 4);
        std::fs::write(rt.ctr(), "").unwrap();
        assert!(!rt.missing().contains(&rt.ctr()));
        assert!(rt.missing().contains(&rt.containerd()));
        assert!(rt.missing().contains(&rt.runc()));
        assert_eq!(
            rt.path_env("/usr/bin:/bin"),
            format!("{}:/usr/bin:/bin", tmp.path().display())
        );
    }
}
