//! The control-socket protocol between the CLI and the daemon: one JSON request line from the
//! client, then JSON message lines from the daemon until a final `Done`, `Error` or `Status`.
//! These are wire types (versioned by `API_VERSION`), separate from the daemon's internals.

use serde::{Deserialize, Serialize};

use super::config::InitRequest;

pub const API_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    Init { version: u32, init: InitRequest },
    Status { version: u32 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "message", rename_all = "kebab-case")]
pub enum Message {
    Progress { step: String },
    Done,
    Error { error: String },
    Status { status: Box<StatusReport> },
}

/// `k8sd status` as data: the contract between daemon and CLI, also printed as JSON or YAML.
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
