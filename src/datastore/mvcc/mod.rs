//! The MVCC state machine over SQLite: one writer that applies commands, and readers.
//!
//! Invariants kept here:
//! - Revisions are dense and assigned only here: a command that changes at least one key takes
//!   `current_rev + 1`, and every change inside it takes the next sub-revision. Failed compares,
//!   read-only commands, lease grants and compactions consume no revision.
//! - A batch of commands is applied in one SQLite transaction that also records the applied log
//!   position, so replaying from the last applied entry after a crash is exact.
//! - A command that fails with a client error is rolled back to its savepoint and changes
//!   nothing; the rest of the batch still applies.
//! - Only the writer connection writes; readers use WAL snapshots, so no write path can see
//!   SQLITE_BUSY from a reader.
//!
//! Files by role. `Store` is one type (defined here, so every file below may use its
//! connection) whose methods are split by what they do:
//!
//! | file | role |
//! |---|---|
//! | `open.rs` | opening `state.db`: the connection pragmas, the schema, a new store's metadata |
//! | `write.rs` | the write path: `apply_batch`, one command at a time, Txn compares, puts, deletes, leases |
//! | `validate.rs` | a Txn's shape and duplicate keys, checked before it is proposed |
//! | `range.rs` | etcd's Range rules (limit, count, sort, filters), for readers and Txns alike |
//! | `read.rs` | `Reader`: reads from one WAL snapshot, events, leases, `HashKV`, sizes |
//! | `compact.rs` | physical compaction in budgeted steps |
//! | `checkpoint.rs` | the WAL checkpointer and the file's footprint (size limit, bytes in use) |
//! | `raft_ext.rs` | what the Raft state machine adds: dedup, `raft_meta`, snapshots, reseeding |

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::error::{Result, StoreError};

mod checkpoint;
mod compact;
mod open;
mod raft_ext;
mod range;
mod read;
mod validate;
mod write;

pub use checkpoint::{Checkpointer, WAL_SIZE_LIMIT, truncate_wal_nowait};
pub use raft_ext::{
    DedupPrune, RaftApplied, RaftCommand, export_snapshot, read_raft_meta, reseed_for_new_cluster,
};
pub use range::execute_range;
pub use read::{KvHash, ReadView, Reader};
pub use validate::{MAX_TXN_OPS, validate_txn};
pub use write::{MAX_LEASE_TTL, MIN_LEASE_TTL};

/// How hard the writer pushes commits to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync the WAL at every commit. Used when the store itself is the only durable record
    /// (a standalone store without a separate replicated log).
    Full,
    /// No fsync per commit; a crash may lose the tail, which is replayed from the durable log.
    Normal,
}

/// The store's metadata, cached by the writer and written in every apply transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub current_rev: i64,
    pub compact_rev: i64,
    pub physical_compact_rev: i64,
    pub applied_index: u64,
    pub applied_term: u64,
    pub member_id: u64,
    pub cluster_id: u64,
}

/// A position in the replicated log; the store records the last one it applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogPosition {
    pub index: u64,
    pub term: u64,
}

/// The page size of every `state.db` this build creates, in bytes: SQLite's default.
///
/// `kv` is a rowid table (`sql::KV_TABLE`), whose cells keep up to a page less 35 bytes in
/// place, so an update row holding a 1 KiB value and its 1 KiB `prev_value` fits a 4 KiB page
/// with no overflow page. Earlier builds held `kv` as a `WITHOUT ROWID` table and needed 16 KiB
/// pages for the same; with 4 KiB pages each write dirties 4 KiB, not 16 KiB, in the key
/// indexes, and appends about 3x less WAL (docs/benchmarks.md). An existing file keeps the
/// page size it was created with: SQLite changes it only in a `VACUUM`, and never for a file
/// in WAL mode.
pub const PAGE_SIZE: i64 = 4096;

fn page_size_of(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA page_size", [], |r| r.get(0))
}

/// How a `state.db` file holds `kv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvLayout {
    /// A rowid table with a unique index on (rev, sub): what this build creates.
    Rowid,
    /// A `WITHOUT ROWID` table keyed by (rev, sub): what earlier builds created.
    WithoutRowid,
}

/// What a `state.db` file is made of, beyond its rows: the two things a snapshot install keeps
/// from the receiver rather than take from the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileFormat {
    pub page_size: i64,
    pub kv: KvLayout,
}

/// The format of every `state.db` this build creates.
pub const NEW_FORMAT: FileFormat = FileFormat {
    page_size: PAGE_SIZE,
    kv: KvLayout::Rowid,
};

/// The statement that created `kv` in the database `conn` has open as `main`; `None` in a new
/// file, which has no `kv` yet.
fn kv_ddl(conn: &Connection) -> rusqlite::Result<Option<String>> {
    use rusqlite::OptionalExtension;
    conn.query_row(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'kv'",
        [],
        |r| r.get(0),
    )
    .optional()
}

fn format_of(conn: &Connection) -> rusqlite::Result<FileFormat> {
    let kv = match kv_ddl(conn)? {
        Some(sql) if sql.to_ascii_uppercase().contains("WITHOUT ROWID") => KvLayout::WithoutRowid,
        _ => KvLayout::Rowid,
    };
    Ok(FileFormat {
        page_size: page_size_of(conn)?,
        kv,
    })
}

pub(super) fn sq(path: &Path) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

/// Keep i64 <-> u64 conversions for ids and indexes in one place.
fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The writer: owns the only read-write connection.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
    meta: Meta,
}

impl Store {
    pub fn meta(&self) -> Meta {
        self.meta
    }

    /// This store file's page size and `kv` layout: [`NEW_FORMAT`] if this build created it;
    /// `WITHOUT ROWID` at 4096 if k8sd 0.1.0 did, at 16384 if a build between the two did.
    pub fn format(&self) -> Result<FileFormat> {
        format_of(&self.conn).map_err(sq(&self.path))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Open a reader on the same file.
    pub fn reader(&self) -> Result<Reader> {
        Reader::open(&self.path)
    }
}
