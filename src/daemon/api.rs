//! The control-socket protocol between the CLI and the daemon: one JSON request line from the
//! client, then JSON message lines from the daemon until a final `Done`, `Error` or `Status`.
//! These are wire types (versioned by `API_VERSION`), separate from the daemon's internals.

use serde::{Deserialize, Serialize};

use super::config::InitRequest;
use super::extra_args::ExtraArgs;

pub const API_VERSION: u32 = 1;

/// Whether a daemon of this build answers a request of API `found`: every version up to its
/// own (an older CLI, as when the binary was replaced under a running daemon), never a newer
/// one, whose requests it could misread.
pub fn check_request_version(found: u32) -> Result<(), String> {
    if found <= API_VERSION {
        return Ok(());
    }
    Err(format!(
        "the CLI speaks control API {found}, this daemon reads up to {API_VERSION}; \
         restart the daemon on the new k8sd binary (or use the CLI of the daemon's version)"
    ))
}

/// Whether a CLI of this build reads a status report of API `found`.
pub fn check_report_version(found: u32) -> Result<(), String> {
    if found <= API_VERSION {
        return Ok(());
    }
    Err(format!(
        "the daemon answers control API {found}, this CLI reads up to {API_VERSION}; \
         use the CLI of the daemon's k8sd version"
    ))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    Init {
        version: u32,
        init: InitRequest,
    },
    Status {
        version: u32,
    },
    /// Mint a join token (`k8sd add-node`).
    AddNode {
        version: u32,
        worker: bool,
        name: Option<String>,
        ttl_secs: u64,
    },
    /// Join a cluster with a token (`k8sd join`).
    Join {
        version: u32,
        join: JoinArgs,
    },
    Tokens {
        version: u32,
    },
    RevokeToken {
        version: u32,
        id: String,
    },
    /// `k8sd remove-node NAME [--force]`.
    RemoveNode {
        version: u32,
        name: String,
        force: bool,
    },
    /// `k8sd leave`: remove this node from its cluster and stop it.
    Leave {
        version: u32,
        force: bool,
    },
    /// `k8sd stop|start COMPONENT`: hold one supervised component down, or start it again.
    Component {
        version: u32,
        name: String,
        start: bool,
    },
    /// `k8sd enable|disable NAME`: turn a cluster add-on on or off. Added within version 1:
    /// an older daemon answers it with a malformed-request error.
    Addon {
        version: u32,
        name: String,
        enable: bool,
    },
    /// `k8sd secrets rotate-key`: progress lines, then `Done` or `Error`. Added within version
    /// 1: an older daemon answers it with a malformed-request error.
    RotateSecretsKey {
        version: u32,
    },
}

impl Request {
    pub fn version(&self) -> u32 {
        match self {
            Request::Init { version, .. }
            | Request::Status { version }
            | Request::AddNode { version, .. }
            | Request::Join { version, .. }
            | Request::Tokens { version }
            | Request::RevokeToken { version, .. }
            | Request::RemoveNode { version, .. }
            | Request::Leave { version, .. }
            | Request::Component { version, .. }
            | Request::Addon { version, .. }
            | Request::RotateSecretsKey { version } => *version,
        }
    }
}

/// What `k8sd join` asks for.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct JoinArgs {
    pub token: String,
    pub worker: bool,
    pub node_name: Option<String>,
    pub advertise_address: Option<String>,
    /// Changes to component flags (`--kubelet-arg` and its siblings). Skipped when empty, so
    /// an older daemon still accepts the request.
    #[serde(default, skip_serializing_if = "ExtraArgs::is_empty")]
    pub extra_args: ExtraArgs,
    /// A control-plane joiner's datastore quota and backup settings (`k8sd init`'s). Skipped
    /// when unset, so an older daemon still accepts the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_backend_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_retention: Option<u32>,
    /// A control-plane joiner's own extra SANs, beside the cluster's from `init`. Skipped when
    /// empty, so an older daemon still accepts the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_sans: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct TokenReport {
    pub id: String,
    pub role: String,
    pub name: Option<String>,
    pub state: String,
    pub expires: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "message", rename_all = "kebab-case")]
pub enum Message {
    Progress {
        step: String,
    },
    Done,
    Error {
        error: String,
        /// What kind of failure, for the CLI's exit code; absent from an older daemon's answer.
        #[serde(default)]
        kind: super::FailureKind,
    },
    Status {
        status: Box<StatusReport>,
    },
    /// A minted join token.
    Token {
        token: String,
        expires: String,
    },
    Tokens {
        tokens: Vec<TokenReport>,
    },
}

/// `k8sd status` as data: what the daemon sends and the CLI reads, also printed as JSON or YAML.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct StatusReport {
    pub version: u32,
    pub initialised: bool,
    pub node_name: Option<String>,
    pub role: Option<String>,
    pub ready: bool,
    pub phase: String,
    pub datastore: Option<DatastoreStatus>,
    pub components: Vec<ComponentReport>,
    pub certificates: Vec<CertReport>,
    pub kubernetes_node: Option<KubeNodeReport>,
    /// This daemon's k8sd version and the Kubernetes version it carries; `unknown` in a report
    /// from a daemon older than the fields.
    #[serde(default = "unknown")]
    pub k8sd_version: String,
    #[serde(default = "unknown")]
    pub kubernetes_version: String,
    /// Every node of the cluster (control-plane nodes only know this).
    #[serde(default)]
    pub nodes: Vec<ClusterNodeReport>,
    /// Whether the datastore tolerates losing one control-plane node (3+ healthy voters).
    #[serde(default)]
    pub ha: Option<bool>,
    /// The local API load balancer's backends.
    #[serde(default)]
    pub api_backends: Vec<serde_json::Value>,
    /// Every cluster add-on (control-plane nodes only know this; empty elsewhere).
    #[serde(default)]
    pub addons: Vec<AddonReport>,
    /// The scheduled backups (control-plane nodes only; absent elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_backups: Option<ScheduledBackupsReport>,
    /// The Secrets encryption key this node's kube-apiserver writes with (control-plane nodes
    /// only; never the key itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_encryption: Option<SecretsEncryptionReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct SecretsEncryptionReport {
    /// `secretbox` or `aescbc`; `none` on a node without a key (Secrets in plaintext);
    /// `identity` while a first key is staged (still plaintext, the key read but not written).
    pub provider: String,
    /// The write key's name; empty without a key, `identity` while a first key is staged.
    pub key: String,
    /// When k8sd made the write key (RFC 3339, UTC), from its name.
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub age_days: Option<u64>,
    /// Every key this node reads with, the write key first.
    pub keys: Vec<String>,
    /// The phase of a `k8sd secrets rotate-key` under way, if any.
    #[serde(default)]
    pub rotation: Option<String>,
}

/// The scheduled backups of a control-plane node: the schedule, the last result, the next one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct ScheduledBackupsReport {
    /// As node.yaml's `backup-schedule` means it (`off`, `every 6h`, `00:00,12:00`).
    pub schedule: String,
    pub retention: u32,
    /// The last one since the daemon started; absent when none has run yet.
    #[serde(default)]
    pub last: Option<LastBackupReport>,
    /// RFC 3339, UTC; absent when the schedule is `off`.
    #[serde(default)]
    pub next_due: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct LastBackupReport {
    /// When it started, RFC 3339, UTC.
    pub time: String,
    pub ok: bool,
    /// The archive written (when ok).
    #[serde(default)]
    pub path: Option<String>,
    /// Why none was written (when not ok).
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct AddonReport {
    pub name: String,
    pub enabled: bool,
    /// Enabled and its Deployment has every desired replica ready; always true when disabled.
    pub ready: bool,
    pub ready_replicas: u32,
    pub desired_replicas: u32,
    pub state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct ClusterNodeReport {
    pub name: String,
    pub address: String,
    /// voter, standby or worker.
    pub role: String,
    pub datastore_leader: bool,
    /// What the node runs, as it published it; `unknown` for a node whose k8sd publishes
    /// nothing (older than the field) and in a report from such a daemon.
    #[serde(default = "unknown")]
    pub k8sd_version: String,
    #[serde(default = "unknown")]
    pub kubernetes_version: String,
}

fn unknown() -> String {
    crate::cluster::versions::UNKNOWN.to_string()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct DatastoreStatus {
    pub endpoint: String,
    pub revision: i64,
    pub applied_index: u64,
    pub leader: String,
    pub members: Vec<MemberReport>,
    pub db_size_bytes: i64,
    /// The backend quota and this member's raised alarms (`NOSPACE`, with its cause: quota or
    /// disk-full). Absent in a report from a k8sd older than the quota.
    #[serde(default)]
    pub quota_bytes: i64,
    #[serde(default)]
    pub alarms: Vec<AlarmReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct AlarmReport {
    /// etcd's alarm name: `NOSPACE`.
    pub alarm: String,
    /// `quota` or `disk-full`.
    pub cause: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct MemberReport {
    pub id: String,
    pub name: String,
    pub role: String,
    pub leader: bool,
    pub applied_index: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct ComponentReport {
    pub name: String,
    pub state: String,
    pub running: bool,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    pub last_lines: Vec<String>,
    /// The command line after the program: k8sd's defaults with the operator's extra args.
    #[serde(default)]
    pub args: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct CertReport {
    pub file: String,
    pub subject: String,
    pub expires: String,
    pub days_left: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct KubeNodeReport {
    pub name: String,
    pub ready: bool,
    pub reason: String,
}
