//! Datastore errors. Each variant that a client can cause maps to one exact etcd error in
//! `etcd/status.rs`; `Sqlite` and `Io` are fatal to the store.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("mvcc: required revision has been compacted (requested {requested}, compacted {compacted})")]
    Compacted { requested: i64, compacted: i64 },
    #[error("mvcc: required revision is a future revision (requested {requested}, current {current})")]
    FutureRevision { requested: i64, current: i64 },
    #[error("requested lease not found: {0:x}")]
    LeaseNotFound(i64),
    #[error("lease already exists: {0:x}")]
    LeaseExists(i64),
    #[error("too large lease TTL: {0}")]
    LeaseTtlTooLarge(i64),
    #[error("key not found")]
    KeyNotFound,
    #[error("value is provided")]
    ValueProvided,
    #[error("lease is provided")]
    LeaseProvided,
    #[error("key is not provided")]
    EmptyKey,
    #[error("too many operations in txn request ({ops} > {max})")]
    TooManyOps { ops: usize, max: usize },
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    #[error("sqlite error on {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "cannot open the datastore at {path}: {reason}; move the directory aside and rejoin, or restore a backup"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// Fatal errors mean the store can no longer be trusted; the node must stop applying.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            StoreError::Sqlite { .. } | StoreError::Corrupt { .. } | StoreError::Io { .. }
        )
    }

    /// The filesystem ran out of space (SQLite's `SQLITE_FULL`, which it reports for ENOSPC, or
    /// ENOSPC itself). Unlike other fatal errors the store is still whole: the transaction that
    /// failed was rolled back, so the writer may try again once space is freed.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Sqlite { source, .. } => sqlite_disk_full(source),
            StoreError::Io { source, .. } => source.kind() == std::io::ErrorKind::StorageFull,
            _ => false,
        }
    }
}

/// SQLite's `SQLITE_FULL`, which it reports for ENOSPC: the failed transaction was rolled back,
/// so the same write can be tried again once there is room (the Raft log writer does).
pub fn sqlite_disk_full(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
