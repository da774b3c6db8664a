//! What a Raft node's operations fail with.

use std::path::PathBuf;
use std::time::Duration;

use super::log_store::LogStoreError;
use super::recover;
use super::wire::RemoveError;
use crate::datastore::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RaftNodeError {
    #[error(transparent)]
    Log(#[from] LogStoreError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid raft configuration: {0}")]
    Config(String),
    #[error("cannot read or create the node id at {path}: {source}")]
    NodeId {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Fence(#[from] recover::FenceError),
    #[error("the node id file {path} is corrupt; restore it or move the data directory aside and rejoin")]
    NodeIdCorrupt { path: PathBuf },
    #[error("raft node stopped: {0}")]
    Stopped(String),
    #[error("no leader within {0:?}")]
    NoLeader(Duration),
    #[error("{what} did not finish within {after:?}")]
    Timeout { what: &'static str, after: Duration },
    /// The write may or may not have been applied; only the dedup table can make a retry safe.
    #[error("outcome unknown: {0}")]
    Ambiguous(String),
    #[error("membership change refused: {0}")]
    Membership(String),
    /// `remove_member` refused: unknown id, last voter, or no healthy quorum afterwards.
    #[error("cannot remove the member: {0}")]
    Remove(#[from] RemoveError),
    #[error("cannot join the cluster: {0}")]
    Join(String),
    #[error("peer service on {addr} failed: {message}")]
    Serve { addr: String, message: String },
}

/// openraft has stopped (shut down, or a fatal storage error): nothing more will happen.
pub(super) fn stopped(e: impl std::fmt::Display) -> RaftNodeError {
    RaftNodeError::Stopped(e.to_string())
}

/// A membership change openraft refused.
pub(super) fn membership_err(e: impl std::fmt::Display) -> RaftNodeError {
    RaftNodeError::Membership(e.to_string())
}
