//! The openraft type configuration and the types that ride in log entries.
//!
//! `Request` and `NodeInfo` are written into the Raft log and sent between peers, so they are
//! wire types: never change the meaning of a field. Peer messages are JSON, where a new field
//! needs `#[serde(default)]`; the log is postcard (`codec.rs`), where any change to these types
//! also bumps `COMMAND_FORMAT_VERSION` and keeps a decoder for the previous format.
//! `Response` is node-local by design (see its docs) and never crosses the wire.

use std::fmt;
use std::path::PathBuf;

use openraft::alias;
use serde::{Deserialize, Serialize};

use crate::datastore::{Command, CommandOutput, StoreError};

openraft::declare_raft_types!(
    /// k8sd's Raft types: u64 node ids, `NodeInfo` addresses, `Request` payloads.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = NodeInfo,
);

/// A node's stable identity is its `NodeId` (a random u64 kept in `raft/node-id`); this is
/// only where to reach it, which may change across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Human-readable name, reported by MemberList; not an identity.
    pub name: String,
    /// `host:port` of the peer (Raft) service.
    pub peer_addr: String,
    /// URL of the etcd client service, advertised to clients.
    pub client_addr: String,
}

/// The payload of a normal log entry: a datastore command plus who proposed it.
///
/// `(origin, request_id)` names a proposal cluster-wide. `origin` is a random id drawn by each
/// `RaftNode` at start (a proposer session, so ids never repeat across restarts) and
/// `request_id` counts up within it. The state machine applies each key at most once and keeps
/// its outcome in the `dedup` table, so a proposal retried after a leader change returns the
/// outcome of its first application. `low_water` is the proposer's lowest request id still in
/// flight: rows of that origin below it can no longer be asked for and are pruned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub origin: u64,
    pub request_id: u64,
    #[serde(default)]
    pub low_water: u64,
    pub cmd: Command,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.cmd {
            Command::Txn(_) => "txn",
            Command::Compact { .. } => "compact",
            Command::LeaseGrant { .. } => "lease-grant",
            Command::LeaseRevoke { .. } => "lease-revoke",
        };
        write!(f, "{kind} from {:x}#{}", self.origin, self.request_id)
    }
}

/// What applying one entry produced on this node.
///
/// A client error (failed precondition, unknown lease, ...) is `Rejected`, a normal outcome:
/// any `Err` from the state machine would be fatal to Raft (databendlabs/openraft#285).
#[derive(Debug)]
pub enum Response {
    Applied(CommandOutput),
    Rejected(StoreError),
    /// Blank and membership entries carry no command.
    Empty,
}

impl Response {
    /// The outcome a proposer sees: the command output, or the client error it caused.
    pub fn into_result(self) -> Result<Option<CommandOutput>, StoreError> {
        match self {
            Response::Applied(out) => Ok(Some(out)),
            Response::Rejected(e) => Err(e),
            Response::Empty => Ok(None),
        }
    }
}

// openraft's `serde` feature requires `R: Serialize + Deserialize` because it derives serde on
// `ClientWriteResponse`. We never send a `Response` anywhere: every node computes the same
// outcome by applying the same entry, and a forwarded write is answered from the origin node's
// own apply (see `raft::RaftNode::propose`). The impls below only satisfy the bound and refuse
// loudly if that design is ever broken.
impl Serialize for Response {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "raft responses are node-local and never serialised",
        ))
    }
}

impl<'de> Deserialize<'de> for Response {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "raft responses are node-local and never deserialised",
        ))
    }
}

/// A snapshot is a self-contained SQLite database file (see `state_machine`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    pub path: PathBuf,
}

pub type LogId = alias::LogIdOf<TypeConfig>;
pub type Entry = alias::EntryOf<TypeConfig>;
pub type Vote = alias::VoteOf<TypeConfig>;
pub type StoredMembership = alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = alias::SnapshotOf<TypeConfig, SnapshotFile>;
