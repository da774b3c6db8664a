//! Node configuration: what `k8sd init` asks for (flags or a YAML file), validated into a
//! `NodeConfig` before anything is written, and persisted as the versioned `node.yaml`.
//!
//! Over 600 lines only with its tests (about 370 lines of code): one job, node.yaml from request to
//! file.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::extra_args::{ExtraArgs, ExtraArgsError};
use crate::backup::schedule::{self, Schedule, ScheduleError};
use crate::pki::IpCidr;

/// The init request as the user gives it (flags override the file). Crosses the control socket.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct InitRequest {
    pub node_name: Option<String>,
    pub advertise_address: Option<String>,
    pub pod_cidr: Option<String>,
    pub service_cidr: Option<String>,
    #[serde(default)]
    pub extra_sans: Vec<String>,
    /// Add-ons not to deploy (`dns`, `metrics`, `storage`); all are on otherwise. Skipped when
    /// empty so that an older daemon, which refuses unknown fields, still accepts the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disable: Vec<String>,
    /// Operators' changes to component flags (`--kube-apiserver-arg` and its siblings, or
    /// `extra-args:` in the file). Skipped when empty, as `disable` is.
    #[serde(default, skip_serializing_if = "ExtraArgs::is_empty")]
    pub extra_args: ExtraArgs,
    /// The datastore's backend quota in bytes, kept in node.yaml (`NodeConfig`). Skipped when
    /// unset, as `disable` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_backend_bytes: Option<i64>,
    /// When scheduled backups run (`backup/schedule.rs`: `off`, `every 6h`, `00:00,12:00`),
    /// kept in node.yaml. Skipped when unset, as `disable` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_schedule: Option<String>,
    /// How many scheduled archives to keep. Skipped when unset, as `disable` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_retention: Option<u32>,
}

impl InitRequest {
    /// Fill fields missing here from `file` (a YAML config).
    pub fn merge_file(mut self, file: InitRequest) -> Self {
        self.node_name = self.node_name.or(file.node_name);
        self.advertise_address = self.advertise_address.or(file.advertise_address);
        self.pod_cidr = self.pod_cidr.or(file.pod_cidr);
        self.service_cidr = self.service_cidr.or(file.service_cidr);
        if self.extra_sans.is_empty() {
            self.extra_sans = file.extra_sans;
        }
        if self.disable.is_empty() {
            self.disable = file.disable;
        }
        self.extra_args.merge_missing(file.extra_args);
        self.quota_backend_bytes = self.quota_backend_bytes.or(file.quota_backend_bytes);
        self.backup_schedule = self.backup_schedule.or(file.backup_schedule);
        self.backup_retention = self.backup_retention.or(file.backup_retention);
        self
    }
}

pub const DEFAULT_POD_CIDR: &str = "10.88.0.0/16";
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";
/// Ports a control-plane node needs free before init.
pub const PORTS: &[(u16, &str)] = &[
    (6443, "kube-apiserver"),
    (2379, "datastore"),
    (2380, "datastore peers"),
    (10250, "kubelet"),
    (10248, "kubelet healthz"),
    (10257, "kube-controller-manager"),
    (10259, "kube-scheduler"),
    (10256, "kube-proxy healthz"),
    (6400, "k8sd cluster API"),
    (6444, "local API load balancer"),
    (6446, "image mirror"),
];
/// Ports a worker needs free before join.
pub const WORKER_PORTS: &[(u16, &str)] = &[
    (10250, "kubelet"),
    (10248, "kubelet healthz"),
    (10256, "kube-proxy healthz"),
    (6444, "local API load balancer"),
    (6446, "image mirror"),
];

/// The persisted node configuration (`node.yaml`). Versioned: a newer k8sd must read it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeConfig {
    pub version: u32,
    pub role: Role,
    pub node_name: String,
    pub advertise_address: IpAddr,
    pub pod_cidr: String,
    pub service_cidr: String,
    pub extra_sans: Vec<String>,
    /// Workers: the control-plane nodes' addresses at join time (the API load balancer's first
    /// backends; it keeps its own, fresher list after that).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub control_plane: Vec<IpAddr>,
    /// `init --disable`: the add-ons the first node starts without. The datastore holds the
    /// cluster's choice once the first reconcile has recorded it; this copy is replayed on every
    /// start (recording only what is still unset), so a crash before that first reconcile
    /// cannot turn them on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disable: Vec<String>,
    /// Operators' changes to component flags, applied over k8sd's defaults at every start
    /// (`extra_args`). Absent in a node.yaml written before they existed.
    #[serde(default, skip_serializing_if = "ExtraArgs::is_empty")]
    pub extra_args: ExtraArgs,
    /// The datastore's backend quota in bytes (etcd's `--quota-backend-bytes`): at this many
    /// bytes in use the NOSPACE alarm refuses writes that add data. Absent or 0: etcd's 2 GiB;
    /// negative: no quota. Takes effect at the next start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_backend_bytes: Option<i64>,
    /// When scheduled backups run on a control-plane node (`off`, `every N{s,m,h}`, or UTC
    /// times `HH:MM,...`). Absent: k3s's `00:00,12:00`. Takes effect at the next start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_schedule: Option<String>,
    /// How many scheduled archives `<data dir>/backups` keeps. Absent: 5, as k3s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_retention: Option<u32>,
}

/// A node's scheduled backups, checked (`NodeConfig::backup_plan`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupPlan {
    pub schedule: Schedule,
    /// Scheduled archives kept; at least 1.
    pub retention: u32,
}

/// Check a backup schedule and retention as given (`None`: the defaults).
pub fn backup_plan(schedule: Option<&str>, retention: Option<u32>) -> Result<BackupPlan, ConfigError> {
    let schedule = schedule
        .unwrap_or(schedule::DEFAULT_SCHEDULE)
        .parse::<Schedule>()
        .map_err(ConfigError::BackupSchedule)?;
    let retention = retention.unwrap_or(schedule::DEFAULT_KEEP);
    if retention == 0 {
        return Err(ConfigError::BackupRetention(retention));
    }
    Ok(BackupPlan { schedule, retention })
}

impl NodeConfig {
    /// This node's scheduled backups as node.yaml sets them. Workers hold no datastore and
    /// take none, whatever the file says (`schedules_backups`).
    pub fn backup_plan(&self) -> Result<BackupPlan, ConfigError> {
        backup_plan(self.backup_schedule.as_deref(), self.backup_retention)
    }

    /// Whether this node takes scheduled backups: control-plane nodes only, since only they
    /// hold the datastore and the CA keys.
    pub fn schedules_backups(&self) -> bool {
        self.role == Role::ControlPlane
    }

    /// The datastore quota this node runs with (`quota-backend-bytes`, read as etcd's flag).
    pub fn quota_bytes(&self) -> i64 {
        crate::node::alarm::effective_quota(self.quota_backend_bytes.unwrap_or(0))
    }

    /// The cluster DNS Service's address (the 10th of the service CIDR): the kubelet's
    /// `clusterDNS` and the `kube-dns` Service's ClusterIP. `validate` refuses ranges too small
    /// for it, so `None` means a hand-edited node.yaml.
    pub fn dns_service_ip(&self) -> Option<IpAddr> {
        self.service_cidr.parse::<IpCidr>().ok()?.dns_service_ip()
    }

    pub fn role_name(&self) -> String {
        match self.role {
            Role::ControlPlane => "control-plane".into(),
            Role::Worker => "worker".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    ControlPlane,
    Worker,
}

pub const NODE_CONFIG_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "advertise address {0} is a loopback address; the kubelet and other nodes cannot use it. Pass --advertise-address with this machine's address"
    )]
    Loopback(IpAddr),
    #[error(
        "advertise address {0} is not assigned to any interface of this machine; pass one of its addresses"
    )]
    NotLocal(IpAddr),
    #[error("no usable advertise address found (no non-loopback IPv4 address); pass --advertise-address")]
    NoAddress,
    #[error(
        "port {port} ({what}) is already in use; stop whatever listens there (ss -ltnp 'sport = :{port}') and retry"
    )]
    PortInUse { port: u16, what: &'static str },
    #[error("pod CIDR {pod} and service CIDR {service} overlap; choose disjoint ranges")]
    Overlap { pod: String, service: String },
    #[error("cannot read {path}: {reason}")]
    File { path: String, reason: String },
    /// Not a `#[source]`: the message already holds it, and the CLI prints sources too.
    #[error("{0}; fix --disable or the config file's `disable:` list")]
    Addon(crate::addons::AddonError),
    /// Not a `#[source]` either, for the same reason.
    #[error("{0}; nothing was changed")]
    ExtraArgs(ExtraArgsError),
    #[error("{0}; fix --backup-schedule or `backup-schedule:` in the config file or node.yaml")]
    BackupSchedule(ScheduleError),
    #[error(
        "backup retention {0}: keep at least 1 archive (--backup-retention or `backup-retention:`); to take no scheduled backups write `backup-schedule: off` instead"
    )]
    BackupRetention(u32),
}

impl From<ExtraArgsError> for ConfigError {
    fn from(e: ExtraArgsError) -> Self {
        ConfigError::ExtraArgs(e)
    }
}

/// Reading node.yaml failed: it exists but cannot be read, or does not parse. The cause is in
/// the message, not a `#[source]`: the CLI prints sources too.
#[derive(Debug, thiserror::Error)]
pub enum NodeFileError {
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("{} is unreadable: {error}; restore it (from a backup, `k8sd backup`) or remove the data dir", path.display())]
    Parse {
        path: std::path::PathBuf,
        error: serde_yaml::Error,
    },
    #[error(
        "{} has format version {found}, this k8sd reads versions 1 to {NODE_CONFIG_VERSION}: it was written by a newer \
         k8sd; run that version (or newer) on this node, or restore a backup taken before the upgrade",
        path.display()
    )]
    Version { path: std::path::PathBuf, found: u64 },
}

/// The node's config file (`Layout::node_file`); `None` when there is none (not initialised).
/// The one reader of node.yaml, for the daemon and the CLI verbs that run without it.
pub fn read_node_file(path: &std::path::Path) -> Result<Option<NodeConfig>, NodeFileError> {
    let parse = |error| NodeFileError::Parse {
        path: path.to_path_buf(),
        error,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            // The version first: a newer file may hold fields this build refuses as unknown,
            // and "written by a newer k8sd" is the useful answer, not "unknown field".
            let probe: serde_yaml::Value = serde_yaml::from_str(&text).map_err(parse)?;
            if let Some(found) = probe.get("version").and_then(serde_yaml::Value::as_u64)
                && found > u64::from(NODE_CONFIG_VERSION)
            {
                return Err(NodeFileError::Version {
                    path: path.to_path_buf(),
                    found,
                });
            }
            serde_yaml::from_value(probe).map(Some).map_err(parse)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(NodeFileError::Read {
            path: path.to_path_buf(),
            error,
        }),
    }
}

impl From<crate::addons::AddonError> for ConfigError {
    fn from(e: crate::addons::AddonError) -> Self {
        ConfigError::Addon(e)
    }
}

fn invalid(what: &'static str, value: &str, reason: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        what,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// Validate a request into a node configuration. Checks only; writes nothing.
pub fn validate(
    req: &InitRequest,
    host_name: &str,
    local_addrs: &[IpAddr],
) -> Result<NodeConfig, ConfigError> {
    let node_name = req.node_name.clone().unwrap_or_else(|| host_name.to_lowercase());
    validate_node_name(&node_name)?;
    let advertise_address = match &req.advertise_address {
        Some(a) => {
            let ip: IpAddr = a.parse().map_err(|e| invalid("advertise address", a, e))?;
            if ip.is_loopback() {
                return Err(ConfigError::Loopback(ip));
            }
            if !local_addrs.contains(&ip) {
                return Err(ConfigError::NotLocal(ip));
            }
            ip
        }
        None => *local_addrs
            .iter()
            .find(|a| a.is_ipv4() && !a.is_loopback())
            .ok_or(ConfigError::NoAddress)?,
    };
    let pod_cidr = req.pod_cidr.clone().unwrap_or_else(|| DEFAULT_POD_CIDR.into());
    let service_cidr = req
        .service_cidr
        .clone()
        .unwrap_or_else(|| DEFAULT_SERVICE_CIDR.into());
    let pod: IpCidr = pod_cidr.parse().map_err(|e| invalid("pod CIDR", &pod_cidr, e))?;
    let svc: IpCidr = service_cidr
        .parse()
        .map_err(|e| invalid("service CIDR", &service_cidr, e))?;
    if svc.dns_service_ip().is_none() {
        return Err(invalid(
            "service CIDR",
            &service_cidr,
            "too small: the cluster DNS Service takes its 10th address; use /28 or larger",
        ));
    }
    if cidrs_overlap(&pod.to_string(), &svc.to_string()) {
        return Err(ConfigError::Overlap {
            pod: pod_cidr,
            service: service_cidr,
        });
    }
    let disable = crate::addons::parse_list(&req.disable)?;
    req.extra_args.validate()?;
    backup_plan(req.backup_schedule.as_deref(), req.backup_retention)?;
    for san in &req.extra_sans {
        if san.is_empty() || san.contains(char::is_whitespace) {
            return Err(invalid("extra SAN", san, "must be a DNS name or an IP address"));
        }
    }
    Ok(NodeConfig {
        version: NODE_CONFIG_VERSION,
        role: Role::ControlPlane,
        node_name,
        advertise_address,
        pod_cidr: pod.to_string(),
        service_cidr: svc.to_string(),
        extra_sans: req.extra_sans.clone(),
        control_plane: Vec::new(),
        disable: disable.iter().map(|a| a.name().to_string()).collect(),
        extra_args: req.extra_args.clone(),
        quota_backend_bytes: req.quota_backend_bytes,
        backup_schedule: req.backup_schedule.clone(),
        backup_retention: req.backup_retention,
    })
}

#[cfg(test)]
impl NodeConfig {
    /// The fixture unit tests start from: control-plane node `n1` at 10.0.0.5 with the default
    /// ranges and nothing else set.
    pub(crate) fn example() -> NodeConfig {
        NodeConfig {
            version: NODE_CONFIG_VERSION,
            role: Role::ControlPlane,
            node_name: "n1".into(),
            advertise_address: std::net::Ipv4Addr::new(10, 0, 0, 5).into(),
            pod_cidr: "10.88.0.0/16".into(),
            service_cidr: "10.96.0.0/12".into(),
            extra_sans: vec![],
            control_plane: vec![],
            disable: vec![],
            extra_args: Default::default(),
            quota_backend_bytes: None,
            backup_schedule: None,
            backup_retention: None,
        }
    }
}

/// RFC 1123 subdomain, as Kubernetes requires for Node names.
pub fn validate_node_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "node name",
            name,
            "use lowercase letters, digits, '-' and '.' (RFC 1123)",
        ))
    }
}

fn cidr_range(c: &str) -> Option<(u128, u128)> {
    let (ip, len) = c.split_once('/')?;
    let len: u32 = len.parse().ok()?;
    let (v, bits) = match ip.parse::<IpAddr>().ok()? {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    };
    let host = bits - len.min(bits);
    let size = if host >= 128 {
        u128::MAX
    } else {
        (1u128 << host) - 1
    };
    Some((v, v.saturating_add(size)))
}

fn cidrs_overlap(a: &str, b: &str) -> bool {
    match (cidr_range(a), cidr_range(b)) {
        (Some((a0, a1)), Some((b0, b1))) => a0 <= b1 && b0 <= a1,
        _ => false,
    }
}

/// Every port in `ports` must be free on this host.
pub fn check_ports(ports: &[(u16, &'static str)]) -> Result<(), ConfigError> {
    for &(port, what) in ports {
        let addr = SocketAddr::from(([0, 0, 0, 0], port));
        if TcpListener::bind(addr).is_err() {
            return Err(ConfigError::PortInUse { port, what });
        }
    }
    Ok(())
}

/// Addresses assigned to this host's interfaces, from `ip -o addr` semantics via getifaddrs.
pub fn local_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            if let Some(s) = a.address {
                if let Some(v4) = s.as_sockaddr_in() {
                    out.push(IpAddr::V4(v4.ip()));
                } else if let Some(v6) = s.as_sockaddr_in6() {
                    out.push(IpAddr::V6(v6.ip()));
                }
            }
        }
    }
    out
}

pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "k8sd-node".into())
}

pub fn read_init_file(path: &Path) -> Result<InitRequest, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    serde_yaml::from_str(&text).map_err(|e| ConfigError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> Vec<IpAddr> {
        vec!["127.0.0.1".parse().unwrap(), "10.0.0.5".parse().unwrap()]
    }

    /// node.yaml of this version reads back; one from a newer k8sd, even with a field this build
    /// does not know, is refused naming the file and both versions, not as an unknown field.
    #[test]
    fn a_newer_node_file_is_refused_naming_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.yaml");
        let cfg = NodeConfig::example();
        std::fs::write(&path, serde_yaml::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(read_node_file(&path).unwrap(), Some(cfg.clone()));

        let mut newer: serde_yaml::Value = serde_yaml::to_value(&cfg).unwrap();
        newer["version"] = serde_yaml::to_value(NODE_CONFIG_VERSION + 1).unwrap();
        newer["a-field-of-the-future"] = serde_yaml::Value::Bool(true);
        std::fs::write(&path, serde_yaml::to_string(&newer).unwrap()).unwrap();
        let e = read_node_file(&path).unwrap_err();
        assert!(
            matches!(e, NodeFileError::Version { found, .. } if found == u64::from(NODE_CONFIG_VERSION) + 1)
        );
        let text = e.to_string();
        assert!(
            text.contains(&path.display().to_string())
                && text.contains(&format!("format version {}", NODE_CONFIG_VERSION + 1))
                && text.contains(&format!("1 to {NODE_CONFIG_VERSION}")),
            "{text}"
        );
    }

    #[test]
    fn backup_settings_default_to_k3s_and_bad_ones_say_what_to_write() {
        let d = backup_plan(None, None).unwrap();
        assert_eq!(
            (d.schedule.to_string(), d.retention),
            ("00:00,12:00".to_string(), 5)
        );
        let file: InitRequest =
            serde_yaml::from_str("backup-schedule: every 20s\nbackup-retention: 2\n").unwrap();
        let merged = InitRequest::default().merge_file(file);
        let cfg = validate(&merged, "h", &addrs()).unwrap();
        let plan = cfg.backup_plan().unwrap();
        assert_eq!((plan.schedule, plan.retention), (Schedule::Every(20), 2));
        let off = backup_plan(Some("off"), None).unwrap();
        assert_eq!(off.schedule, Schedule::Off);

        let bad = InitRequest {
            backup_schedule: Some("every 6".into()),
            ..Default::default()
        };
        let e = validate(&bad, "h", &addrs()).unwrap_err();
        assert!(
            matches!(&e, ConfigError::BackupSchedule(s) if s.value == "every 6"),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("needs a unit") && msg.contains("`every 6h`") && msg.contains("--backup-schedule"),
            "{msg}"
        );
        let zero = InitRequest {
            backup_retention: Some(0),
            ..Default::default()
        };
        let e = validate(&zero, "h", &addrs()).unwrap_err();
        assert!(matches!(e, ConfigError::BackupRetention(0)), "{e}");
        assert!(e.to_string().contains("backup-schedule: off"), "{e}");
        assert_eq!(
            super::super::config_error_kind(&e),
            super::super::FailureKind::Usage
        );
        // A hand-edited node.yaml with a bad schedule fails at load, the same way.
        let mut edited = cfg.clone();
        edited.backup_schedule = Some("25:00".into());
        assert!(matches!(
            edited.backup_plan(),
            Err(ConfigError::BackupSchedule(_))
        ));
    }

    #[test]
    fn defaults_pick_the_first_non_loopback_address() {
        let c = validate(&InitRequest::default(), "Host-A", &addrs()).unwrap();
        assert_eq!(c.node_name, "host-a");
        assert_eq!(c.advertise_address.to_string(), "10.0.0.5");
        assert_eq!(c.dns_service_ip().unwrap().to_string(), "10.96.0.10");
        assert_eq!(
            (c.pod_cidr.as_str(), c.service_cidr.as_str()),
            (DEFAULT_POD_CIDR, DEFAULT_SERVICE_CIDR)
        );
    }

    #[test]
    fn bad_input_is_refused_with_the_reason() {
        let req = |f: fn(&mut InitRequest)| {
            let mut r = InitRequest::default();
            f(&mut r);
            validate(&r, "h", &addrs()).unwrap_err().to_string()
        };
        assert!(req(|r| r.advertise_address = Some("127.0.0.1".into())).contains("loopback"));
        assert!(req(|r| r.advertise_address = Some("10.9.9.9".into())).contains("not assigned"));
        assert!(req(|r| r.pod_cidr = Some("10.88.0.0/33".into())).contains("pod CIDR"));
        assert!(req(|r| r.service_cidr = Some("nonsense".into())).contains("service CIDR"));
        assert!(req(|r| r.service_cidr = Some("10.88.128.0/24".into())).contains("overlap"));
        assert!(req(|r| r.service_cidr = Some("10.96.0.0/29".into())).contains("too small"));
        assert!(req(|r| r.node_name = Some("Bad_Name".into())).contains("node name"));
        assert!(
            req(|r| r.disable = vec!["dns,ingres".into()])
                .contains("valid add-ons are: dns, metrics, storage")
        );
        assert!(validate(&InitRequest::default(), "h", &["127.0.0.1".parse().unwrap()]).is_err());
    }

    #[test]
    fn init_disable_is_kept_in_node_yaml() {
        let req = InitRequest {
            disable: vec!["storage,dns".into(), "dns".into()],
            ..Default::default()
        };
        let cfg = validate(&req, "h", &addrs()).unwrap();
        assert_eq!(cfg.disable, ["dns", "storage"]);
        let text = serde_yaml::to_string(&cfg).unwrap();
        let back: NodeConfig = serde_yaml::from_str(&text).unwrap();
        assert_eq!(back.disable, cfg.disable);
        // A node.yaml written before the field existed reads as "nothing disabled", and a node
        // with nothing disabled writes no `disable` key.
        let plain = validate(&InitRequest::default(), "h", &addrs()).unwrap();
        let text = serde_yaml::to_string(&plain).unwrap();
        assert!(!text.contains("disable"), "{text}");
        assert!(
            serde_yaml::from_str::<NodeConfig>(&text)
                .unwrap()
                .disable
                .is_empty()
        );
    }

    #[test]
    fn config_file_rejects_unknown_fields_and_flags_win() {
        let file: InitRequest =
            serde_yaml::from_str("node-name: a\npod-cidr: 10.1.0.0/16\ndisable: [metrics]\n").unwrap();
        let merged = InitRequest {
            node_name: Some("b".into()),
            ..Default::default()
        }
        .merge_file(file);
        assert_eq!(merged.node_name.as_deref(), Some("b"));
        assert_eq!(merged.pod_cidr.as_deref(), Some("10.1.0.0/16"));
        assert_eq!(merged.disable, ["metrics"]);
        let quota: InitRequest = serde_yaml::from_str("quota-backend-bytes: 8388608\n").unwrap();
        let merged = InitRequest::default().merge_file(quota.clone());
        assert_eq!(merged.quota_backend_bytes, Some(8 << 20));
        assert_eq!(
            validate(&merged, "h", &addrs()).unwrap().quota_backend_bytes,
            Some(8 << 20),
            "kept in node.yaml"
        );
        let flag = InitRequest {
            quota_backend_bytes: Some(-1),
            ..Default::default()
        };
        assert_eq!(flag.merge_file(quota).quota_backend_bytes, Some(-1));
        // An empty list is not sent, so a daemon that predates add-ons accepts the request.
        assert!(
            !serde_json::to_string(&InitRequest::default())
                .unwrap()
                .contains("disable")
        );
        assert!(
            !serde_json::to_string(&InitRequest::default())
                .unwrap()
                .contains("quota")
        );
        assert!(serde_yaml::from_str::<InitRequest>("podcidr: x\n").is_err());
    }

    #[test]
    fn node_yaml_is_read_as_absent_a_config_or_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.yaml");
        assert!(read_node_file(&path).unwrap().is_none());
        std::fs::write(&path, "role: [").unwrap();
        let e = read_node_file(&path).unwrap_err().to_string();
        assert!(
            e.contains(&path.display().to_string()) && e.contains("unreadable"),
            "{e}"
        );
        std::fs::create_dir(dir.path().join("dir.yaml")).unwrap();
        let e = read_node_file(&dir.path().join("dir.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot read "), "{e}");
    }
}
