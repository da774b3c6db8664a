//! The Raft log and vote, in their own SQLite file (`<data>/raft/log.db`), apart from the
//! state-machine database so that a checkpoint there never delays a log fsync here.
//!
//! ```text
//!  openraft core ──append(entries, IOFlushed)──▶ pending (memory) ──queue──▶ writer thread
//!        ▲                                          │ readable at once          │ one txn per
//!        └──────────── IOFlushed::io_completed ◀────┴──── after COMMIT+fsync ◀──┘ group of ops
//! ```
//!
//! Invariants:
//! - Every write (append, vote, truncate, purge) goes through one FIFO queue to one writer
//!   thread, so writes reach disk in the order openraft issued them (io_ordering.md).
//! - The committed pointer is not queued: `save_committed` only notes it, and the writer adds
//!   the latest noted value to the next transaction it makes anyway (and to a last one when the
//!   store closes). Queued, it cost a transaction and an fsync of its own after every commit,
//!   which a group of one pays on every write (docs/benchmarks.md). It is a hint for restart
//!   only, written after everything queued before it, so it never names an entry not on disk.
//! - The writer drains whatever is queued into one transaction with `synchronous=FULL`: one
//!   fsync per batch, never per entry. `IOFlushed` fires only after that commit returns.
//! - `append` returns before the fsync; its entries sit in `pending` so readers see them at
//!   once, as openraft requires. An entry leaves `pending` only once it is durable, and only if
//!   it is still the same entry (matched by a sequence number, not by index). It then moves
//!   to `recent` (`log_cache`, bounded), where the apply reads it right after its commit
//!   without SQLite; a truncate or purge removes the same indexes from both maps at once.
//! - `save_vote`, `truncate_after` and `purge` wait for their commit before returning.
//! - Each row stores a CRC-32 of (index, encoded entry). SQLite's WAL already discards a torn,
//!   uncommitted tail at open (frames after the last valid commit frame are ignored), which is
//!   exactly "truncate the torn tail": the lost batch was never reported flushed. A checksum
//!   mismatch in a committed row, or a hole, is real corruption: opening fails and asks the
//!   operator to rejoin, because a log that silently lost a committed entry breaks Raft.
//! - After any write error the store is fail-stop: every later write fails too. A full disk
//!   is not an error: the writer writes the same group again until it fits, telling the node
//!   at every attempt (`full_disk`: its NOSPACE alarm stands meanwhile), and gives up only
//!   once the node is closing; the group is then reported failed, never flushed.
//! - The WAL is bounded: `journal_size_limit` ([`LOG_WAL_LIMIT`]) truncates it when SQLite
//!   restarts it, and when no op has arrived for [`IDLE_TRUNCATE`] the writer thread (the only
//!   writer, so it never waits for another) runs `wal_checkpoint(TRUNCATE)` without waiting for
//!   readers: an idle log.db-wal is empty, not left at its high-water mark.
//!
//! One file of about 700 lines, on purpose: the writer thread, the readers and openraft's
//! storage traits all work on `Shared`'s `pending` map and sequence numbers under the invariants
//! above, and each is short; split apart, every half would reach into the other's internals.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::oneshot;

use super::codec::{decode_entry, encode_entry};
use super::full_disk::{self, FullDisk, Retries};
use super::log_cache::RecentEntries;
use super::stages::{self, Stage};
use super::types::{Entry, LogId, TypeConfig, Vote};

/// Version of the on-disk layout below; bump with a migration.
///
/// 2: entries may be binary (`codec`). The tables are those of 1, and a JSON entry of 1 still
/// decodes, so a version-1 log is taken as it is and marked 2 at open, before any binary entry
/// is written into it; an older k8sd then refuses it with `Format` instead of misreading it.
const LOG_FORMAT_VERSION: i64 = 2;
/// The oldest layout this build opens (and upgrades in place).
const OLDEST_LOG_FORMAT: i64 = 1;
/// Most queued operations folded into one transaction.
const MAX_GROUP: usize = 1024;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS log (idx INTEGER PRIMARY KEY, crc INTEGER NOT NULL, entry BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
";

#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error("raft log sqlite error on {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "raft log {path} is corrupt at index {index}: {reason}; committed entries may be lost, so this \
         node must not rejoin with it: stop k8sd, move {dir} aside and rejoin the cluster"
    )]
    Corrupt {
        path: PathBuf,
        dir: PathBuf,
        index: u64,
        reason: String,
    },
    #[error(
        "raft log {path} has format version {found}, this k8sd understands {OLDEST_LOG_FORMAT} to {LOG_FORMAT_VERSION}; upgrade k8sd"
    )]
    Format { path: PathBuf, found: i64 },
    #[error("cannot create the raft log directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// CRC-32 of one row: the index is included so a row copied to the wrong place fails too.
fn row_crc(idx: u64, blob: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&idx.to_le_bytes());
    h.update(blob);
    h.finalize()
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// State shared by the store, its readers and the writer thread.
#[derive(Debug, Default)]
struct State {
    /// Appended but not yet durable: index -> (sequence, entry). Readers prefer these over
    /// rows on disk, because a pending entry is always at least as new as a row with the same
    /// index (a truncate removes pending entries before its rows are deleted).
    pending: BTreeMap<u64, (u64, Entry)>,
    /// The newest entries that left `pending` durable, so that reads of them (the apply, right
    /// after the commit) skip SQLite and the decode; as true as the rows on disk.
    recent: RecentEntries,
    /// Sequence numbers tell a re-appended entry from the one a finished write covered.
    next_seq: u64,
    /// The durable vote: set only after its commit, so nobody acts on a vote a crash undoes.
    vote: Option<Vote>,
    committed: Option<LogId>,
    /// `committed` changed since the writer last wrote it.
    committed_unsaved: bool,
    last_purged: Option<LogId>,
    /// The last entry openraft has appended (pending or durable), or `last_purged` when the
    /// log is empty. This is what openraft sees, so it moves at `append` time, not at fsync.
    last_log_id: Option<LogId>,
}

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

type Done = oneshot::Sender<io::Result<()>>;

/// One queued write. The writer applies ops strictly in queue order; several may share a
/// transaction, but none is reported done before the transaction holding it has committed.
enum Op {
    Append {
        rows: Vec<(u64, u32, Vec<u8>)>,
        seqs: Vec<(u64, u64)>,
        cb: IOFlushed<TypeConfig>,
    },
    Meta {
        name: &'static str,
        value: Vec<u8>,
        done: Done,
    },
    /// Delete every row with `idx > after` (`after = -1` deletes all).
    Truncate { after: i64, done: Done },
    /// Delete every row with `idx <= upto` and record the purged log id.
    Purge { upto: u64, value: Vec<u8>, done: Done },
}

impl Op {
    fn finish(self, result: &Result<(), String>) {
        let r = || result.clone().map_err(io::Error::other);
        match self {
            Op::Append { cb, .. } => cb.io_completed(r()),
            Op::Meta { done, .. } | Op::Truncate { done, .. } | Op::Purge { done, .. } => {
                let _ = done.send(r());
            }
        }
    }
}

/// The durable Raft log and vote. Implements openraft's `RaftLogStorage`.
#[derive(Debug)]
pub struct LogStore {
    shared: Arc<Shared>,
    ops: std_mpsc::Sender<Op>,
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Append { rows, .. } => write!(f, "Append({} entries)", rows.len()),
            Op::Meta { name, .. } => write!(f, "Meta({name})"),
            Op::Truncate { after, .. } => write!(f, "Truncate(after {after})"),
            Op::Purge { upto, .. } => write!(f, "Purge(upto {upto})"),
        }
    }
}

impl LogStore {
    /// Open (or create) the log at `<dir>/log.db`, verify every entry and start the writer.
    pub fn open(dir: &Path) -> Result<LogStore, LogStoreError> {
        LogStore::open_with(dir, FullDisk::new(None))
    }

    /// [`LogStore::open`], with the node's view of a full disk (`full_disk`).
    pub fn open_with(dir: &Path, disk: Arc<FullDisk>) -> Result<LogStore, LogStoreError> {
        std::fs::create_dir_all(dir).map_err(|source| LogStoreError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("log.db");
        let sq = |source| LogStoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(sq)?;
        conn.pragma_update(None, "journal_mode", "wal").map_err(sq)?;
        // FULL: the WAL is fsync'd at every commit, which is what makes IOFlushed honest.
        conn.pragma_update(None, "synchronous", "FULL").map_err(sq)?;
        conn.pragma_update(None, "journal_size_limit", LOG_WAL_LIMIT)
            .map_err(sq)?;
        conn.execute_batch(SCHEMA).map_err(sq)?;
        let version: Option<Vec<u8>> = meta_get(&conn, "format").map_err(sq)?;
        match version {
            None => meta_put(&conn, "format", LOG_FORMAT_VERSION.to_string().as_bytes()).map_err(sq)?,
            Some(v) => {
                let found = String::from_utf8_lossy(&v).parse::<i64>().unwrap_or(-1);
                if !(OLDEST_LOG_FORMAT..=LOG_FORMAT_VERSION).contains(&found) {
                    return Err(LogStoreError::Format { path, found });
                }
                if found < LOG_FORMAT_VERSION {
                    meta_put(&conn, "format", LOG_FORMAT_VERSION.to_string().as_bytes()).map_err(sq)?;
                }
            }
        }
        let state = recover(&conn, &path, dir)?;
        let shared = Arc::new(Shared {
            path: path.clone(),
            state: Mutex::new(state),
        });
        let (tx, rx) = std_mpsc::channel();
        let writer_shared = shared.clone();
        std::thread::Builder::new()
            .name("k8sd-raft-log".into())
            .spawn(move || writer_loop(conn, rx, writer_shared, &disk))
            .map_err(|source| LogStoreError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        Ok(LogStore { shared, ops: tx })
    }

    fn send(&self, op: Op) -> io::Result<()> {
        self.ops
            .send(op)
            .map_err(|_| io::Error::other("raft log writer has stopped"))
    }

    async fn send_and_wait(&self, make: impl FnOnce(Done) -> Op) -> io::Result<()> {
        let (done, rx) = oneshot::channel();
        self.send(make(done))?;
        rx.await
            .map_err(|_| io::Error::other("raft log writer has stopped"))?
    }
}

fn meta_get<T: rusqlite::types::FromSql>(conn: &Connection, name: &str) -> rusqlite::Result<Option<T>> {
    conn.query_row("SELECT value FROM meta WHERE name = ?", [name], |r| r.get(0))
        .optional()
}

fn meta_put(conn: &Connection, name: &str, value: &[u8]) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![name, value])?;
    Ok(())
}

/// Load the vote and log pointers and verify every row: checksums, indexes and contiguity.
fn recover(conn: &Connection, path: &Path, dir: &Path) -> Result<State, LogStoreError> {
    let sq = |source| LogStoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let corrupt = |index: u64, reason: String| LogStoreError::Corrupt {
        path: path.to_path_buf(),
        dir: dir.to_path_buf(),
        index,
        reason,
    };
    let decode_meta =
        |name: &str| -> Result<Option<Vec<u8>>, LogStoreError> { meta_get(conn, name).map_err(sq) };
    let mut state = State::default();
    if let Some(v) = decode_meta("vote")? {
        state.vote =
            Some(serde_json::from_slice(&v).map_err(|e| corrupt(0, format!("undecodable vote: {e}")))?);
    }
    if let Some(v) = decode_meta("committed")? {
        state.committed =
            serde_json::from_slice(&v).map_err(|e| corrupt(0, format!("undecodable committed id: {e}")))?;
    }
    if let Some(v) = decode_meta("last_purged")? {
        state.last_purged =
            serde_json::from_slice(&v).map_err(|e| corrupt(0, format!("undecodable purge point: {e}")))?;
    }
    let mut stmt = conn
        .prepare("SELECT idx, crc, entry FROM log ORDER BY idx")
        .map_err(sq)?;
    let mut rows = stmt.query([]).map_err(sq)?;
    // The first row must follow the purge point, and every later row its predecessor: a gap
    // means entries were lost, which no torn write can cause (SQLite commits are atomic).
    let mut expect = state.last_purged.as_ref().map(|l| l.index + 1);
    let mut last: Option<(u64, Vec<u8>)> = None;
    while let Some(row) = rows.next().map_err(sq)? {
        let idx: i64 = row.get(0).map_err(sq)?;
        let idx = u64::try_from(idx).map_err(|_| corrupt(0, format!("negative index {idx}")))?;
        let crc: i64 = row.get(1).map_err(sq)?;
        let blob: Vec<u8> = row.get(2).map_err(sq)?;
        if i64::from(row_crc(idx, &blob)) != crc {
            return Err(corrupt(idx, "checksum mismatch".into()));
        }
        if let Some(e) = expect
            && e != idx
        {
            return Err(corrupt(idx, format!("hole in the log: expected index {e}")));
        }
        expect = Some(idx + 1);
        last = Some((idx, blob));
    }
    // Only the last entry is decoded: its log id is all openraft needs at startup, and every
    // row has been checksummed above; reads decode (and re-check) entries as they are needed.
    state.last_log_id = match last {
        Some((idx, blob)) => {
            let entry = decode_entry(&blob).map_err(|e| corrupt(idx, format!("undecodable entry: {e}")))?;
            Some(entry.log_id)
        }
        None => state.last_purged,
    };
    Ok(state)
}

/// log.db-wal is truncated to this size when SQLite restarts it. Four times the default
/// autocheckpoint (1000 pages, 4 MiB), so a normal restart never pays for a truncate, but a WAL
/// that a long read held open (a snapshot or a slow follower's catch-up) comes back down.
const LOG_WAL_LIMIT: i64 = 16 << 20;

/// How long the writer waits with nothing queued before it empties the WAL. Long enough that a
/// steady load (even one write a second) never pays for the checkpoint's fsyncs, short enough
/// that a log at rest holds no WAL.
const IDLE_TRUNCATE: std::time::Duration = std::time::Duration::from_secs(2);

/// Copy the whole WAL into log.db and truncate it to zero bytes. Called only by the writer
/// thread while idle. It does not wait for readers (busy timeout 0): if one holds the WAL, the
/// truncate is skipped and retried after the next idle period.
fn truncate_wal(conn: &Connection) -> rusqlite::Result<bool> {
    // 5 s: rusqlite's default, which log.db's connection keeps.
    let busy = crate::datastore::mvcc::truncate_wal_nowait(conn, std::time::Duration::from_secs(5))?;
    Ok(busy == 0)
}

/// The writer thread: group whatever is queued into one transaction, commit (fsync), then
/// report. Once a write fails, every later one fails without touching the file.
fn writer_loop(mut conn: Connection, rx: std_mpsc::Receiver<Op>, shared: Arc<Shared>, disk: &Arc<FullDisk>) {
    let mut failed: Option<String> = None;
    // Whether the WAL may hold frames since the last truncate.
    let mut wal_dirty = true;
    // The loop ends when the `LogStore` (the only sender) is dropped; the connection closes
    // with it, and SQLite checkpoints the WAL on that last close.
    loop {
        let first = match rx.recv_timeout(IDLE_TRUNCATE) {
            Ok(op) => op,
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                if wal_dirty && failed.is_none() {
                    match truncate_wal(&conn) {
                        Ok(done) => wal_dirty = !done,
                        Err(e) => {
                            tracing::debug!(error = %e, "raft log: idle WAL truncate failed; will retry")
                        }
                    }
                }
                continue;
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
        };
        wal_dirty = true;
        // Group commit: whatever queued up during the previous fsync goes into this one.
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        // Fail-stop: after one failed write we no longer know what is on disk, so nothing
        // else is written and every later op reports the first error.
        let committed = take_unsaved_committed(&shared);
        let result = match &failed {
            Some(msg) => Err(msg.clone()),
            None => {
                write_until_space(&mut conn, &group, committed.as_deref(), &shared.path, disk).map_err(|e| {
                    let msg = format!("raft log write to {} failed: {e}", shared.path.display());
                    tracing::error!("{msg}; refusing further log writes");
                    msg
                })
            }
        };
        if let Err(msg) = &result {
            failed = Some(msg.clone());
        } else {
            if stages::enabled() {
                let mut entries = 0;
                for op in &group {
                    if let Op::Append { seqs, .. } = op {
                        entries += seqs.len();
                        for (idx, _) in seqs {
                            stages::mark(*idx, Stage::Flushed);
                        }
                    }
                }
                stages::log_txn(entries);
            }
            // Durable now: move from `pending` to `recent` exactly the entries this group wrote.
            let mut st = shared.lock();
            for op in &group {
                if let Op::Append { seqs, rows, .. } = op {
                    for ((idx, seq), (_, _, blob)) in seqs.iter().zip(rows) {
                        if st.pending.get(idx).is_some_and(|(s, _)| s == seq)
                            && let Some((_, entry)) = st.pending.remove(idx)
                        {
                            st.recent.insert(*idx, entry, blob.len());
                        }
                    }
                }
            }
        }
        for op in group {
            op.finish(&result);
        }
    }
    // Closing: the committed pointer noted since the last write goes down with a last commit.
    if failed.is_none()
        && let Some(value) = take_unsaved_committed(&shared)
        && let Err(e) = write_until_space(&mut conn, &[], Some(&value), &shared.path, disk)
    {
        tracing::warn!(error = %e, "raft log: could not save the committed pointer at close");
    }
}

/// The committed pointer noted by `save_committed` since the writer last took it, encoded.
fn take_unsaved_committed(shared: &Shared) -> Option<Vec<u8>> {
    let mut st = shared.lock();
    if !std::mem::take(&mut st.committed_unsaved) {
        return None;
    }
    // Encoding an Option<LogId> cannot fail; if it ever did, the hint is simply not saved.
    serde_json::to_vec(&st.committed).ok()
}

/// `timed_write_group`, retried while the disk is full (SQLITE_FULL rolls the transaction
/// back, so the same group is written again exactly). Nothing in the group is reported done
/// meanwhile, so no entry counts as flushed before it is; any other error is fail-stop, and so
/// is a full disk once the node is closing (`FullDisk::close`), so that a stop never waits for
/// space.
fn write_until_space(
    conn: &mut Connection,
    group: &[Op],
    committed: Option<&[u8]>,
    path: &Path,
    disk: &Arc<FullDisk>,
) -> rusqlite::Result<()> {
    let mut waiting: Option<(Retries, full_disk::WaitGuard)> = None;
    loop {
        match timed_write_group(conn, group, committed) {
            Err(e) if crate::datastore::error::sqlite_disk_full(&e) => {
                disk.report();
                let now = std::time::Instant::now();
                let (retries, _) = waiting.get_or_insert_with(|| (Retries::new(now), disk.wait_guard()));
                let due = retries.failed(now);
                if disk.closing() {
                    tracing::warn!(
                        path = %path.display(),
                        ops = group.len(),
                        retries = retries.count(),
                        "raft log: stopping while the disk is still full; the writes not on disk \
                         are reported failed, not acknowledged"
                    );
                    return Err(e);
                }
                if due {
                    tracing::warn!(
                        error = %e,
                        path = %path.display(),
                        retries = retries.count(),
                        waited_s = retries.waited_secs(now),
                        "raft log: the disk is full; the write is retried until it fits and \
                         new writes are refused with NOSPACE meanwhile: free space on the \
                         filesystem holding the data dir"
                    );
                }
                std::thread::sleep(full_disk::RETRY_PAUSE);
            }
            other => {
                if let (Some((retries, _)), Ok(())) = (&waiting, &other) {
                    tracing::info!(retries = retries.count(), "raft log: the disk has room again");
                }
                return other;
            }
        }
    }
}

/// `write_group`, timed as etcd's WAL fsync: the commit is this log's one fsync.
fn timed_write_group(conn: &mut Connection, group: &[Op], committed: Option<&[u8]>) -> rusqlite::Result<()> {
    let started = std::time::Instant::now();
    let result = write_group(conn, group, committed);
    crate::metrics::etcd::ETCD.wal_fsync.observe(started.elapsed());
    result
}

/// Apply a group of ops in one transaction, in order, then the committed pointer if given.
/// With `synchronous=FULL` the commit returns only once the WAL is fsync'd: this is the one
/// fsync of the group.
fn write_group(conn: &mut Connection, group: &[Op], committed: Option<&[u8]>) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for op in group {
        match op {
            Op::Append { rows, .. } => {
                // REPLACE: an append may overwrite a suffix that a truncate already removed
                // in an earlier group; rows are never left with mixed terms.
                let mut stmt =
                    tx.prepare_cached("INSERT OR REPLACE INTO log (idx, crc, entry) VALUES (?, ?, ?)")?;
                for (idx, crc, blob) in rows {
                    stmt.execute(params![to_i64(*idx), i64::from(*crc), blob])?;
                }
            }
            Op::Meta { name, value, .. } => meta_put(&tx, name, value)?,
            Op::Truncate { after, .. } => {
                tx.prepare_cached("DELETE FROM log WHERE idx > ?")?
                    .execute([after])?;
            }
            Op::Purge { upto, value, .. } => {
                tx.prepare_cached("DELETE FROM log WHERE idx <= ?")?
                    .execute([to_i64(*upto)])?;
                meta_put(&tx, "last_purged", value)?;
            }
        }
    }
    if let Some(value) = committed {
        meta_put(&tx, "committed", value)?;
    }
    tx.commit()
}

/// A reader for replication tasks and the apply: pending and recent entries from memory, the
/// rest from SQLite.
///
/// Each reader has its own read-only SQLite connection, opened on first use, so replication
/// tasks read concurrently with each other and with the writer (WAL snapshot isolation). The
/// mutex only satisfies openraft's `Sync` bound; one reader is used by one task at a time.
#[derive(Debug)]
pub struct LogReader {
    shared: Arc<Shared>,
    conn: Mutex<Option<Connection>>,
}

impl LogReader {
    fn read_range(&self, start: u64, end: Option<u64>) -> io::Result<Vec<Entry>> {
        // Take the in-memory entries first, `pending` and `recent` under one lock (an entry
        // moves from one to the other under it, so none is missed in between); `pending` wins
        // where both hold an index, being newer. An entry that leaves memory after this point
        // was committed before it left, so the SQLite read below sees it.
        let (mut out, hi): (BTreeMap<u64, Entry>, u64) = {
            let st = self.shared.lock();
            let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
            let mut out: BTreeMap<u64, Entry> = st
                .pending
                .range((Bound::Included(start), upper))
                .map(|(i, (_, e))| (*i, e.clone()))
                .collect();
            for (i, e) in st.recent.range(start, end) {
                out.entry(i).or_insert_with(|| e.clone());
            }
            let last = st.last_log_id.as_ref().map_or(0, |l| l.index.saturating_add(1));
            (out, end.map_or(last, |e| e.min(last)))
        };
        // Everything asked for was in memory: the apply's common case.
        let held = if start < hi {
            out.range(start..hi).count()
        } else {
            0
        };
        if u64::try_from(held).is_ok_and(|n| n == hi.saturating_sub(start)) {
            return Ok(out.into_values().collect());
        }
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            let c = Connection::open_with_flags(&self.shared.path, OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(io_err)?;
            *guard = Some(c);
        }
        let Some(conn) = guard.as_ref() else {
            return Err(io::Error::other("no raft log connection"));
        };
        let mut stmt = conn
            .prepare_cached("SELECT idx, crc, entry FROM log WHERE idx >= ? AND idx < ? ORDER BY idx")
            .map_err(io_err)?;
        let hi = end.map_or(i64::MAX, to_i64);
        let mut rows = stmt.query(params![to_i64(start), hi]).map_err(io_err)?;
        while let Some(row) = rows.next().map_err(io_err)? {
            let idx = u64::try_from(row.get::<_, i64>(0).map_err(io_err)?).unwrap_or(0);
            if out.contains_key(&idx) {
                continue; // the in-memory copy is the newest
            }
            let crc: i64 = row.get(1).map_err(io_err)?;
            let blob: Vec<u8> = row.get(2).map_err(io_err)?;
            if i64::from(row_crc(idx, &blob)) != crc {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "raft log {} entry {idx} fails its checksum",
                        self.shared.path.display()
                    ),
                ));
            }
            out.insert(idx, decode_entry(&blob).map_err(io_err)?);
        }
        Ok(out.into_values().collect())
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => Some(e.saturating_add(1)),
        Bound::Excluded(e) => Some(*e),
        Bound::Unbounded => None,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = bounds(&range);
        self.read_range(start, end)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        // Served from memory: it is the durable vote (see `State::vote`), and openraft's
        // leader-bounded streams compare it before and after a read, so it must be cheap.
        Ok(self.shared.lock().vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let st = self.shared.lock();
        Ok(LogState {
            last_purged_log_id: st.last_purged,
            last_log_id: st.last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            shared: self.shared.clone(),
            conn: Mutex::new(None),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let value = serde_json::to_vec(vote).map_err(io_err)?;
        self.send_and_wait(|done| Op::Meta {
            name: "vote",
            value,
            done,
        })
        .await?;
        // Published only once durable, so a reader never acts on a vote a crash could undo.
        self.shared.lock().vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not queued: it rides the next transaction (module invariants). A lost update only
        // means a restart re-applies less eagerly; it can never claim more than was committed.
        let mut st = self.shared.lock();
        st.committed = committed;
        st.committed_unsaved = true;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.shared.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Publish to `pending` first, then queue. All writes take `&mut self`, so no other
        // write can slip between the two and the queue order matches the order in which
        // entries became visible.
        let mut rows = Vec::new();
        let mut seqs = Vec::new();
        {
            let mut st = self.shared.lock();
            for entry in entries {
                let idx = entry.log_id.index;
                let blob = encode_entry(&entry).map_err(io_err)?;
                let seq = st.next_seq;
                st.next_seq += 1;
                rows.push((idx, row_crc(idx, &blob), blob));
                seqs.push((idx, seq));
                st.last_log_id = Some(entry.log_id);
                st.pending.insert(idx, (seq, entry));
                stages::mark(idx, Stage::Appended);
            }
            // Appending at an index replaces the log from there on.
            if let Some(&(first, _)) = seqs.first() {
                st.recent.remove_from(first);
            }
        }
        self.send(Op::Append {
            rows,
            seqs,
            cb: callback,
        })
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let after = last_log_id.as_ref().map_or(-1, |l| to_i64(l.index));
        // Readers must stop seeing the removed suffix now. Rows still on disk are deleted by
        // the queued op, after any earlier queued append of them has landed; until then no
        // reader asks for them, since openraft only reads up to `last_log_id`.
        {
            let mut st = self.shared.lock();
            st.pending.retain(|i, _| to_i64(*i) <= after);
            st.recent
                .remove_from(u64::try_from(after.saturating_add(1)).unwrap_or(0));
            // Truncating past the end changes nothing; otherwise the new end is `last_log_id`.
            if st.last_log_id.as_ref().is_some_and(|l| to_i64(l.index) > after) {
                st.last_log_id = last_log_id.or(st.last_purged);
            }
        }
        self.send_and_wait(|done| Op::Truncate { after, done }).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let value = serde_json::to_vec(&Some(log_id)).map_err(io_err)?;
        let upto = log_id.index;
        // Purged entries are covered by a durable snapshot, so the in-memory pointers may
        // move after the delete is durable; openraft never reads below them again.
        self.send_and_wait(|done| Op::Purge { upto, value, done }).await?;
        let mut st = self.shared.lock();
        st.pending.retain(|i, _| *i > upto);
        st.recent.remove_upto(upto);
        st.last_purged = Some(log_id);
        if st.last_log_id.as_ref().is_none_or(|l| l.index < upto) {
            st.last_log_id = Some(log_id);
        }
        Ok(())
    }
}
