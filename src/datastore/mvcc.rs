//! The MVCC state machine over SQLite: one writer that applies commands, and readers.
//!
//! Invariants kept here:
//! - Revisions are dense and assigned only here: a command that changes at least one key takes
//!   `current_rev + 1`, and every change inside it takes the next sub-revision. Failed compares,
//!   read-only commands, lease grants and compactions consume no revision (contract T2, T3, S3).
//! - A batch of commands is applied in one SQLite transaction that also records the applied log
//!   position, so replaying from the last applied entry after a crash is exact (S4).
//! - A command that fails with a client error is rolled back to its savepoint and changes
//!   nothing; the rest of the batch still applies.
//! - Only the writer connection writes; readers use WAL snapshots, so no write path can see
//!   SQLITE_BUSY from a reader (contract X2).

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, params};

use super::error::{Result, StoreError};
use super::sql::{self, SCHEMA, SCHEMA_VERSION, latest_kv, meta_get, meta_set};
use super::types::*;

mod raft_ext;
pub use raft_ext::{
    DedupPrune, RaftApplied, RaftCommand, export_snapshot, read_raft_meta, reseed_for_new_cluster,
};

/// Largest TTL a lease may ask for (etcd's `MaxLeaseTTL`).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// Smallest TTL granted; shorter requests are raised to it, as etcd does with its default
/// election timeout (ceil(1.5 * election timeout)).
pub const MIN_LEASE_TTL: i64 = 2;
/// Server-chosen lease ids: `AUTO_LEASE_BASE | log index` (see `apply_one`).
const AUTO_LEASE_BASE: i64 = 0x0700_0000_0000_0000;
const AUTO_LEASE_MASK: i64 = 0x0000_ffff_ffff_ffff;
/// Most operations in one Txn (etcd's `--max-txn-ops` default).
pub const MAX_TXN_OPS: usize = 128;

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

fn sq(path: &Path) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
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

/// The page size of every `state.db` this build creates, in bytes.
///
/// A row of `kv` (a `WITHOUT ROWID` table) keeps at most about 1000 bytes of itself in its
/// b-tree cell at 4 KiB pages (SQLite's default, and what k8sd 0.1.0 wrote); the rest of a
/// 1 KiB value, and all of `prev_value`, spill into overflow pages of their own. At 16 KiB a
/// cell holds about 4000 bytes, so an update row with both values stays in one page: the file
/// is about 3x smaller and a 500-key list about 4.5x faster (docs/benchmarks.md). An existing
/// file keeps the page size it was created with: SQLite changes it only in a `VACUUM`, and
/// never for a file in WAL mode.
pub const PAGE_SIZE: i64 = 16_384;

/// How long a connection waits for a lock before SQLITE_BUSY.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn page_size_of(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA page_size", [], |r| r.get(0))
}

fn configure(conn: &Connection, path: &Path) -> Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sq(path))?;
    conn.pragma_update(None, "foreign_keys", false)
        .map_err(sq(path))?;
    conn.pragma_update(None, "cache_size", -16_000)
        .map_err(sq(path))?;
    // Read through a memory map, as etcd does: values larger than a page live in overflow pages,
    // which SQLite otherwise fetches with one pread each, bypassing its cache (docs/benchmarks.md).
    conn.pragma_update(None, "mmap_size", 1i64 << 30)
        .map_err(sq(path))?;
    Ok(())
}

impl Store {
    /// Open (or create) the store file. A new store starts empty at revision 1.
    pub fn open(path: &Path, durability: Durability) -> Result<Store> {
        let mut conn = Connection::open(path).map_err(sq(path))?;
        // Before anything writes the file (WAL mode writes its header, the schema its first
        // pages): a new file takes this page size, an existing one ignores it.
        conn.pragma_update(None, "page_size", PAGE_SIZE)
            .map_err(sq(path))?;
        configure(&conn, path)?;
        // Every transaction takes the write lock when it begins. A deferred one reads first and
        // upgrades later, and the upgrade fails at once with SQLITE_BUSY_SNAPSHOT (no busy wait)
        // if the checkpointer truncated the WAL in between: an apply batch would fail and stop
        // the Raft state machine. Begun immediate, it waits for the truncate to end instead.
        conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "wal", |r| r.get(0))
            .map_err(sq(path))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Corrupt {
                path: path.into(),
                reason: format!("cannot enable WAL (got {mode})"),
            });
        }
        let sync = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync).map_err(sq(path))?;
        // Checkpoints run on their own thread (`Checkpointer`), not inside a client's commit.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(sq(path))?;
        // This connection restarts the WAL (at its first write after a complete checkpoint);
        // without a limit SQLite keeps the file at its high-water mark forever.
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)
            .map_err(sq(path))?;
        // Deleted rows are overwritten with zeros, so a compacted (or deleted) value, a Secret's
        // old version say, does not linger in state.db's free space (issue 15). ON rather than
        // FAST: FAST zeroes cells inside b-tree pages but leaves freed pages as they were, and a
        // value over about 1000 bytes ends in an overflow page that compaction frees whole
        // (docs/benchmarks.md has the cost). Only this connection deletes.
        conn.pragma_update(None, "secure_delete", true)
            .map_err(sq(path))?;
        conn.execute_batch(SCHEMA).map_err(sq(path))?;
        let version = meta_get(&conn, "schema_version").map_err(sq(path))?;
        match version {
            None => Self::initialise(&conn, path)?,
            Some(SCHEMA_VERSION) => {}
            Some(v) => {
                return Err(StoreError::Corrupt {
                    path: path.into(),
                    reason: format!(
                        "schema version {v} is newer than this k8sd understands ({SCHEMA_VERSION}); upgrade k8sd"
                    ),
                });
            }
        }
        let meta = Self::load_meta(&conn, path)?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
            meta,
        })
    }

    fn initialise(conn: &Connection, path: &Path) -> Result<()> {
        let member_id: u64 = rand::random::<u64>() >> 1 | 1;
        let cluster_id: u64 = rand::random::<u64>() >> 1 | 1;
        let init = [
            ("schema_version", SCHEMA_VERSION),
            ("current_rev", 1),
            ("compact_rev", 0),
            ("physical_compact_rev", 0),
            ("applied_index", 0),
            ("applied_term", 0),
            ("member_id", to_i64(member_id)),
            ("cluster_id", to_i64(cluster_id)),
        ];
        for (k, v) in init {
            meta_set(conn, k, v).map_err(sq(path))?;
        }
        Ok(())
    }

    fn load_meta(conn: &Connection, path: &Path) -> Result<Meta> {
        let get = |name: &str| -> Result<i64> {
            meta_get(conn, name)
                .map_err(sq(path))?
                .ok_or_else(|| StoreError::Corrupt {
                    path: path.into(),
                    reason: format!("metadata row {name} is missing"),
                })
        };
        Ok(Meta {
            current_rev: get("current_rev")?,
            compact_rev: get("compact_rev")?,
            physical_compact_rev: get("physical_compact_rev")?,
            applied_index: to_u64(get("applied_index")?),
            applied_term: to_u64(get("applied_term")?),
            member_id: to_u64(get("member_id")?),
            cluster_id: to_u64(get("cluster_id")?),
        })
    }

    pub fn meta(&self) -> Meta {
        self.meta
    }

    /// The page size of this store's file: [`PAGE_SIZE`] if this build created it, 4096 if
    /// k8sd 0.1.0 did.
    pub fn page_size(&self) -> Result<i64> {
        page_size_of(&self.conn).map_err(sq(&self.path))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Open a reader on the same file.
    pub fn reader(&self) -> Result<Reader> {
        Reader::open(&self.path)
    }

    /// Apply a batch of commands in one transaction. Returns one result per command and the
    /// events produced, in revision order. A fatal error aborts the whole batch.
    pub fn apply_batch(
        &mut self,
        cmds: &[(LogPosition, &Command)],
    ) -> Result<(Vec<Result<CommandOutput>>, Vec<Event>)> {
        let path = self.path.clone();
        let mut tx = self.conn.transaction().map_err(sq(&path))?;
        let mut meta = self.meta;
        let mut outputs = Vec::with_capacity(cmds.len());
        let mut events = Vec::new();
        for (pos, cmd) in cmds {
            let mut sp = tx.savepoint().map_err(sq(&path))?;
            let mut next = meta;
            let mut cmd_events = Vec::new();
            match apply_one(&sp, &path, &mut next, pos.index, cmd, &mut cmd_events) {
                Ok(out) => {
                    sp.commit().map_err(sq(&path))?;
                    meta = next;
                    events.append(&mut cmd_events);
                    outputs.push(Ok(out));
                }
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => {
                    sp.rollback().map_err(sq(&path))?;
                    drop(sp);
                    outputs.push(Err(e));
                }
            }
            meta.applied_index = pos.index;
            meta.applied_term = pos.term;
        }
        write_meta(&tx, &path, &meta)?;
        tx.commit().map_err(sq(&path))?;
        self.meta = meta;
        Ok((outputs, events))
    }

    /// Physically delete history below the compaction revision, at most `budget` revisions
    /// per call so that apply batches interleave. Returns true while work remains.
    pub fn compact_step(&mut self, budget: i64) -> Result<bool> {
        let target = self.meta.compact_rev;
        let from = self.meta.physical_compact_rev;
        if from >= target {
            return Ok(false);
        }
        let hi = (from + budget.max(1)).min(target);
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(sq(&path))?;
        // Keep, for every key, its newest row at or below the compaction revision, unless that
        // row is a tombstone older than the compaction revision. A tombstone exactly at the
        // compaction revision stays, so a watch from that revision replays it (etcd#19179).
        tx.execute(
            "DELETE FROM kv WHERE rev > ?1 AND rev <= ?2 AND (
                 (deleted = 1 AND rev < ?3)
                 OR EXISTS (SELECT 1 FROM kv AS n WHERE n.key = kv.key AND n.rev > kv.rev AND n.rev <= ?3))",
            params![from, hi, target],
        )
        .map_err(sq(&path))?;
        meta_set(&tx, "physical_compact_rev", hi).map_err(sq(&path))?;
        tx.commit().map_err(sq(&path))?;
        self.meta.physical_compact_rev = hi;
        if hi >= target {
            // Let the WAL shrink now that a large delete is done; passive never blocks readers.
            let _ = self
                .conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        }
        Ok(hi < target)
    }
}

fn write_meta(conn: &Connection, path: &Path, m: &Meta) -> Result<()> {
    let rows = [
        ("current_rev", m.current_rev),
        ("compact_rev", m.compact_rev),
        ("applied_index", to_i64(m.applied_index)),
        ("applied_term", to_i64(m.applied_term)),
    ];
    for (k, v) in rows {
        meta_set(conn, k, v).map_err(sq(path))?;
    }
    Ok(())
}

/// Check a Txn's shape before it is proposed: etcd's `checkTxnRequest` and `checkIntervals`.
pub fn validate_txn(txn: &TxnRequest) -> Result<()> {
    check_txn_shape(txn)?;
    check_intervals(&txn.success)?;
    check_intervals(&txn.failure)?;
    Ok(())
}

fn check_txn_shape(txn: &TxnRequest) -> Result<()> {
    let ops = txn.compare.len().max(txn.success.len()).max(txn.failure.len());
    if ops > MAX_TXN_OPS {
        return Err(StoreError::TooManyOps {
            ops,
            max: MAX_TXN_OPS,
        });
    }
    if txn.compare.iter().any(|c| c.range.key.is_empty()) {
        return Err(StoreError::EmptyKey);
    }
    for op in txn.success.iter().chain(&txn.failure) {
        match op {
            Op::Range(r) if r.range.key.is_empty() => return Err(StoreError::EmptyKey),
            Op::Delete(d) if d.range.key.is_empty() => return Err(StoreError::EmptyKey),
            Op::Put(p) if p.key.is_empty() => return Err(StoreError::EmptyKey),
            Op::Put(p) if p.ignore_value && !p.value.is_empty() => return Err(StoreError::ValueProvided),
            Op::Put(p) if p.ignore_lease && p.lease != 0 => return Err(StoreError::LeaseProvided),
            Op::Txn(t) => check_txn_shape(t)?,
            _ => {}
        }
    }
    Ok(())
}

/// etcd's duplicate-key rule: within one branch no key is written twice, and no put falls in
/// a deleted range. A nested Txn's success and failure branches exclude each other, so the
/// same key may appear in both.
fn check_intervals(ops: &[Op]) -> Result<(Vec<Vec<u8>>, Vec<KeyRange>)> {
    let mut dels: Vec<KeyRange> = ops
        .iter()
        .filter_map(|op| {
            if let Op::Delete(d) = op {
                Some(d.range.clone())
            } else {
                None
            }
        })
        .collect();
    let mut puts: Vec<Vec<u8>> = Vec::new();
    let hits = |dels: &[KeyRange], k: &[u8]| dels.iter().any(|d| d.contains(k));
    for op in ops {
        let Op::Txn(t) = op else { continue };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || hits(&dels, k) {
                return Err(StoreError::DuplicateKey);
            }
            puts.push(k.clone());
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || hits(&dels, k) {
                return Err(StoreError::DuplicateKey);
            }
            if !puts.contains(k) {
                puts.push(k.clone());
            }
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Op::Put(p) = op else { continue };
        if puts.contains(&p.key) || hits(&dels, &p.key) {
            return Err(StoreError::DuplicateKey);
        }
        puts.push(p.key.clone());
    }
    Ok((puts, dels))
}

/// Mutable state of one command while it applies: the revision it will take if it writes and
/// the next sub-revision.
struct WriteCtx<'a> {
    conn: &'a Connection,
    path: &'a Path,
    rev: i64,
    sub: i64,
    events: &'a mut Vec<Event>,
}

/// Apply one command at log position `index`. Everything here must depend only on the store's
/// contents, the command and `index`, so that every replica computes the same result.
fn apply_one(
    conn: &Connection,
    path: &Path,
    meta: &mut Meta,
    index: u64,
    cmd: &Command,
    events: &mut Vec<Event>,
) -> Result<CommandOutput> {
    let mut ctx = WriteCtx {
        conn,
        path,
        rev: meta.current_rev + 1,
        sub: 0,
        events,
    };
    match cmd {
        Command::Txn(txn) => {
            let result = apply_txn(&mut ctx, meta, txn)?;
            if ctx.sub > 0 {
                meta.current_rev = ctx.rev;
            }
            Ok(CommandOutput::Txn {
                revision: meta.current_rev,
                result,
            })
        }
        Command::Compact { revision } => {
            if *revision <= meta.compact_rev {
                return Err(StoreError::Compacted {
                    requested: *revision,
                    compacted: meta.compact_rev,
                });
            }
            if *revision > meta.current_rev {
                return Err(StoreError::FutureRevision {
                    requested: *revision,
                    current: meta.current_rev,
                });
            }
            meta.compact_rev = *revision;
            Ok(CommandOutput::Compact {
                revision: meta.current_rev,
            })
        }
        Command::LeaseGrant { id, ttl } => {
            if *ttl > MAX_LEASE_TTL {
                return Err(StoreError::LeaseTtlTooLarge(*ttl));
            }
            let ttl = (*ttl).max(MIN_LEASE_TTL);
            let id = if *id == 0 {
                // The id comes from the entry's log index, which every replica agrees on (a
                // per-store counter would give each replica its own id for the same grant).
                // Indexes are never reused, so neither are ids; the high bits keep them clear
                // of small ids that clients choose themselves, and a collision with one steps
                // to the next block, deterministically.
                let mut candidate = AUTO_LEASE_BASE | (to_i64(index) & AUTO_LEASE_MASK);
                while lease_exists(conn, path, candidate)? {
                    candidate = (candidate + AUTO_LEASE_MASK + 1) & i64::MAX;
                }
                candidate
            } else if lease_exists(conn, path, *id)? {
                return Err(StoreError::LeaseExists(*id));
            } else {
                *id
            };
            conn.prepare_cached("INSERT INTO leases (id, ttl) VALUES (?, ?)")
                .and_then(|mut s| s.execute(params![id, ttl]))
                .map_err(sq(path))?;
            Ok(CommandOutput::LeaseGrant {
                revision: meta.current_rev,
                id,
                ttl,
            })
        }
        Command::LeaseRevoke { id } => {
            if !lease_exists(conn, path, *id)? {
                return Err(StoreError::LeaseNotFound(*id));
            }
            let keys: Vec<Vec<u8>> = conn
                .prepare_cached("SELECT key FROM lease_keys WHERE lease = ? ORDER BY key")
                .and_then(|mut s| s.query_map([id], |r| r.get(0))?.collect())
                .map_err(sq(path))?;
            for key in keys {
                delete_range(&mut ctx, &KeyRange::single(key), false)?;
            }
            conn.execute("DELETE FROM leases WHERE id = ?", [id])
                .map_err(sq(path))?;
            conn.execute("DELETE FROM lease_keys WHERE lease = ?", [id])
                .map_err(sq(path))?;
            if ctx.sub > 0 {
                meta.current_rev = ctx.rev;
            }
            Ok(CommandOutput::LeaseRevoke {
                revision: meta.current_rev,
            })
        }
    }
}

fn lease_exists(conn: &Connection, path: &Path, id: i64) -> Result<bool> {
    conn.prepare_cached("SELECT 1 FROM leases WHERE id = ?")
        .and_then(|mut s| s.exists([id]))
        .map_err(sq(path))
}

fn apply_txn(ctx: &mut WriteCtx<'_>, meta: &Meta, txn: &TxnRequest) -> Result<TxnResult> {
    let mut succeeded = true;
    for c in &txn.compare {
        if !compare(ctx.conn, ctx.path, c)? {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded { &txn.success } else { &txn.failure };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let r = match op {
            Op::Range(req) => {
                // Reads inside a write see the writes made earlier in the same Txn, like etcd.
                let current = if ctx.sub > 0 { ctx.rev } else { meta.current_rev };
                OpResult::Range(execute_range(ctx.conn, ctx.path, req, current, meta.compact_rev)?)
            }
            Op::Put(req) => put(ctx, req)?,
            Op::Delete(req) => delete_range(ctx, &req.range, req.prev_kv)?,
            Op::Txn(inner) => OpResult::Txn(apply_txn(ctx, meta, inner)?),
        };
        responses.push(r);
    }
    Ok(TxnResult { succeeded, responses })
}

fn compare(conn: &Connection, path: &Path, c: &Compare) -> Result<bool> {
    let kvs = if c.range.is_single() {
        latest_kv(conn, &c.range.key)
            .map_err(sq(path))?
            .into_iter()
            .collect::<Vec<_>>()
    } else {
        sql::range_rows(conn, &c.range, 0, true, 0, false, false)
            .map_err(sq(path))?
            .0
    };
    if kvs.is_empty() {
        // etcd compares a missing key as the zero KeyValue, except that a value compare fails.
        if matches!(c.target, CompareTarget::Value(_)) {
            return Ok(false);
        }
        return Ok(compare_kv(c, &KeyValue::default()));
    }
    Ok(kvs.iter().all(|kv| compare_kv(c, kv)))
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let ord: Ordering = match &c.target {
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::Create(v) => kv.create_revision.cmp(v),
        CompareTarget::Mod(v) => kv.mod_revision.cmp(v),
        CompareTarget::Lease(v) => kv.lease.cmp(v),
        CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
    };
    match c.result {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
    }
}

fn put(ctx: &mut WriteCtx<'_>, req: &PutRequest) -> Result<OpResult> {
    let (conn, path) = (ctx.conn, ctx.path);
    let prev = latest_kv(conn, &req.key).map_err(sq(path))?;
    if (req.ignore_value || req.ignore_lease) && prev.is_none() {
        return Err(StoreError::KeyNotFound);
    }
    let lease = match (&prev, req.ignore_lease) {
        (Some(p), true) => p.lease,
        _ => req.lease,
    };
    if lease != 0 && !lease_exists(conn, path, lease)? {
        return Err(StoreError::LeaseNotFound(lease));
    }
    let value = match (&prev, req.ignore_value) {
        (Some(p), true) => p.value.clone(),
        _ => req.value.clone(),
    };
    let (rev, sub) = (ctx.rev, ctx.sub);
    ctx.sub += 1;
    let kv = KeyValue {
        key: req.key.clone(),
        create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
        mod_revision: rev,
        version: prev.as_ref().map_or(1, |p| p.version + 1),
        value,
        lease,
    };
    insert_row(conn, path, rev, sub, &kv, false, prev.as_ref())?;
    conn.prepare_cached("INSERT INTO latest (key, rev, sub) VALUES (?1, ?2, ?3) ON CONFLICT(key) DO UPDATE SET rev = ?2, sub = ?3")
        .and_then(|mut s| s.execute(params![kv.key, rev, sub]))
        .map_err(sq(path))?;
    let prev_lease = prev.as_ref().map_or(0, |p| p.lease);
    if prev_lease != 0 && prev_lease != lease {
        detach(conn, path, prev_lease, &kv.key)?;
    }
    if lease != 0 && lease != prev_lease {
        conn.prepare_cached("INSERT OR IGNORE INTO lease_keys (lease, key) VALUES (?, ?)")
            .and_then(|mut s| s.execute(params![lease, kv.key]))
            .map_err(sq(path))?;
    }
    ctx.events.push(Event {
        kind: EventKind::Put,
        kv,
        prev_kv: prev.clone(),
    });
    Ok(OpResult::Put {
        prev_kv: if req.prev_kv { prev } else { None },
    })
}

fn delete_range(ctx: &mut WriteCtx<'_>, range: &KeyRange, want_prev: bool) -> Result<OpResult> {
    let (conn, path) = (ctx.conn, ctx.path);
    let (victims, _) = sql::range_rows(conn, range, 0, true, 0, false, false).map_err(sq(path))?;
    let deleted = i64::try_from(victims.len()).unwrap_or(i64::MAX);
    for prev in &victims {
        let (rev, sub) = (ctx.rev, ctx.sub);
        ctx.sub += 1;
        let tomb = KeyValue {
            key: prev.key.clone(),
            mod_revision: rev,
            ..KeyValue::default()
        };
        insert_row(conn, path, rev, sub, &tomb, true, Some(prev))?;
        conn.prepare_cached("DELETE FROM latest WHERE key = ?")
            .and_then(|mut s| s.execute([&prev.key]))
            .map_err(sq(path))?;
        if prev.lease != 0 {
            detach(conn, path, prev.lease, &prev.key)?;
        }
        ctx.events.push(Event {
            kind: EventKind::Delete,
            kv: tomb,
            prev_kv: Some(prev.clone()),
        });
    }
    Ok(OpResult::Delete {
        deleted,
        prev_kvs: if want_prev { victims } else { Vec::new() },
    })
}

fn detach(conn: &Connection, path: &Path, lease: i64, key: &[u8]) -> Result<()> {
    conn.prepare_cached("DELETE FROM lease_keys WHERE lease = ? AND key = ?")
        .and_then(|mut s| s.execute(params![lease, key]))
        .map_err(sq(path))?;
    Ok(())
}

fn insert_row(
    conn: &Connection,
    path: &Path,
    rev: i64,
    sub: i64,
    kv: &KeyValue,
    deleted: bool,
    prev: Option<&KeyValue>,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO kv (rev, sub, key, create_rev, version, lease, value, deleted,
                         prev_rev, prev_create_rev, prev_version, prev_lease, prev_value)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .and_then(|mut s| {
        s.execute(params![
            rev,
            sub,
            kv.key,
            kv.create_revision,
            kv.version,
            kv.lease,
            kv.value,
            i64::from(deleted),
            prev.map_or(0, |p| p.mod_revision),
            prev.map_or(0, |p| p.create_revision),
            prev.map_or(0, |p| p.version),
            prev.map_or(0, |p| p.lease),
            prev.map(|p| p.value.as_slice()),
        ])
    })
    .map_err(sq(path))?;
    Ok(())
}

/// Serve a Range at `req.revision` (0 = current) with etcd's rules for limit, count, more,
/// sorting and revision filters.
pub fn execute_range(
    conn: &Connection,
    path: &Path,
    req: &RangeRequest,
    current: i64,
    compacted: i64,
) -> Result<RangeResult> {
    let rev = if req.revision <= 0 { current } else { req.revision };
    if rev > current {
        return Err(StoreError::FutureRevision {
            requested: rev,
            current,
        });
    }
    if rev < compacted {
        return Err(StoreError::Compacted {
            requested: rev,
            compacted,
        });
    }
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    // etcd: a non-key target with no order sorts ascending; key-ascending is the natural order.
    let order = match (req.sort_order, req.sort_target) {
        (SortOrder::None, t) if t != SortTarget::Key => SortOrder::Ascend,
        (SortOrder::Ascend, SortTarget::Key) => SortOrder::None,
        (o, _) => o,
    };
    let sorted = order != SortOrder::None;
    let want = usize::try_from(req.limit.max(0)).unwrap_or(usize::MAX);
    // Like etcd: fetch one extra row to learn `more`, or everything when the request asked for
    // an explicit order or filters. (etcd decides this on the order as requested, so a non-key
    // target with no order sorts only the first `limit` keys; we match that.)
    let fetch_all = req.sort_order != SortOrder::None || filtered;
    let fetch = if fetch_all || want == 0 {
        0
    } else {
        want.saturating_add(1)
    };
    let (mut kvs, count) = sql::range_rows(
        conn,
        &req.range,
        rev,
        rev == current,
        fetch,
        req.keys_only,
        req.count_only,
    )
    .map_err(sq(path))?;
    if req.count_only {
        return Ok(RangeResult {
            kvs: Vec::new(),
            more: false,
            count,
        });
    }
    if filtered {
        kvs.retain(|kv| {
            (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
        });
    }
    if sorted {
        let key = |a: &KeyValue, b: &KeyValue| match req.sort_target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        };
        match order {
            SortOrder::Descend => kvs.sort_by(|a, b| key(b, a)),
            _ => kvs.sort_by(key),
        }
    }
    let mut more = false;
    if want > 0 && kvs.len() > want {
        kvs.truncate(want);
        more = true;
    }
    Ok(RangeResult { kvs, more, count })
}

/// state.db-wal is cut back to this size whenever the writer restarts it (`journal_size_limit`),
/// and the checkpointer truncates it to zero once it is past this size and fully copied back.
/// 64 MiB is about 16,000 pages: at the bench's c256 rate (a few thousand 1 KiB writes a
/// second, a few pages each) several seconds of writes, so under load the limit is crossed a
/// few times a minute, not on every 200 ms tick (each truncate costs an fsync and holds off the
/// writer while it runs), while an idle or lightly loaded store keeps a WAL no bigger than this.
pub const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// `wal_checkpoint(TRUNCATE)` on `conn` with a busy timeout of 0, so it never waits for the
/// writer or a reader, then the connection's usual `busy` timeout again. Returns SQLite's busy
/// column: 0 when the WAL was copied back and truncated, 1 when something was in the way.
pub fn truncate_wal_nowait(conn: &Connection, busy: std::time::Duration) -> rusqlite::Result<i64> {
    conn.busy_timeout(std::time::Duration::ZERO)?;
    let done = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0));
    conn.busy_timeout(busy)?;
    done
}

/// Copies committed WAL pages into the database file, off the writer's path. Without it, every
/// thousandth commit would pay for a checkpoint (and its fsync) while clients wait.
#[derive(Debug)]
pub struct Checkpointer {
    conn: Connection,
    path: PathBuf,
    page_size: i64,
    /// WAL frames seen at the previous checkpoint: the same count twice means no writes came in
    /// between, so the writer is idle.
    last_frames: i64,
}

impl Checkpointer {
    pub fn open(path: &Path) -> Result<Checkpointer> {
        let conn = Connection::open(path).map_err(sq(path))?;
        configure(&conn, path)?;
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)
            .map_err(sq(path))?;
        let page_size = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(sq(path))?;
        Ok(Checkpointer {
            conn,
            path: path.to_path_buf(),
            page_size,
            last_frames: -1,
        })
    }

    /// A passive checkpoint: never waits for readers or the writer. Then, once every frame is
    /// copied back and either no write came in since the previous call (the writer is idle) or
    /// the WAL is past [`WAL_SIZE_LIMIT`], truncate the WAL to zero bytes. Returns the WAL size
    /// in frames and how many were copied, as the passive checkpoint saw them.
    pub fn checkpoint(&mut self) -> Result<(i64, i64)> {
        let (frames, copied): (i64, i64) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(1)?, r.get(2)?))
            })
            .map_err(sq(&self.path))?;
        let idle = frames == self.last_frames;
        self.last_frames = frames;
        if frames > 0 && copied == frames && (idle || frames * self.page_size > WAL_SIZE_LIMIT) {
            self.truncate()?;
        }
        Ok((frames, copied))
    }

    /// `wal_checkpoint(TRUNCATE)` that neither waits for the writer nor for readers (busy
    /// timeout 0): it takes the write lock only if it is free, and gives up if a reader still
    /// uses the WAL. Everything is already copied back, so it holds the lock only for the
    /// truncate itself; a commit arriving meanwhile waits that long, readers never wait.
    fn truncate(&mut self) -> Result<()> {
        let path = self.path.clone();
        match truncate_wal_nowait(&self.conn, BUSY_TIMEOUT) {
            // Busy (0 = done, 1 = a reader or the writer was in the way): retried next time.
            Ok(_) => {
                self.last_frames = -1;
                Ok(())
            }
            Err(e) if is_busy(&e) => Ok(()),
            Err(e) => Err(sq(&path)(e)),
        }
    }

    /// Bytes in use in the database (pages minus free pages), what the quota is checked against.
    pub fn in_use_bytes(&self) -> Result<i64> {
        db_size(&self.conn, &self.path).map(|(_, in_use)| in_use)
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// A read-only connection. Each call reads one consistent WAL snapshot.
#[derive(Debug)]
pub struct Reader {
    conn: Connection,
    path: PathBuf,
}

/// The answer to [`Reader::hash_kv`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHash {
    pub hash: u32,
    /// The revision hashed (the request's, or the current one for 0).
    pub revision: i64,
    pub compact_revision: i64,
    pub current_revision: i64,
}

/// The store revision and compaction point as seen by one read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadView {
    pub current_rev: i64,
    pub compact_rev: i64,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sq(path))?;
        configure(&conn, path)?;
        Ok(Reader {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn read<T>(&mut self, f: impl FnOnce(&Connection, &Path, ReadView) -> Result<T>) -> Result<T> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(sq(&path))?;
        let get = |n: &str| meta_get(&tx, n).map_err(sq(&path)).map(|v| v.unwrap_or(0));
        let view = ReadView {
            current_rev: get("current_rev")?,
            compact_rev: get("compact_rev")?,
        };
        let out = f(&tx, &path, view)?;
        tx.finish().map_err(sq(&path))?;
        Ok(out)
    }

    /// The cluster id recorded when the store was created.
    pub fn cluster_id(&mut self) -> Result<u64> {
        let p = self.path.clone();
        meta_get(&self.conn, "cluster_id")
            .map_err(sq(&p))
            .map(|v| to_u64(v.unwrap_or(1)))
    }

    pub fn view(&mut self) -> Result<ReadView> {
        self.read(|_, _, v| Ok(v))
    }

    pub fn range(&mut self, req: &RangeRequest) -> Result<(RangeResult, ReadView)> {
        self.read(|c, p, v| Ok((execute_range(c, p, req, v.current_rev, v.compact_rev)?, v)))
    }

    /// Events in `range` with revisions in `[from, to]`; `to` is clamped to the snapshot's
    /// current revision, which is returned with them. Fails if `from` is compacted.
    pub fn events(&mut self, range: &KeyRange, from: i64, to: i64) -> Result<(Vec<Event>, ReadView)> {
        self.read(|c, p, v| {
            if from < v.compact_rev {
                return Err(StoreError::Compacted {
                    requested: from,
                    compacted: v.compact_rev,
                });
            }
            let to = to.min(v.current_rev);
            let evs = if from > to {
                Vec::new()
            } else {
                sql::events_between(c, range, from, to).map_err(sq(p))?
            };
            Ok((evs, v))
        })
    }

    pub fn lease(&mut self, id: i64, with_keys: bool) -> Result<Option<LeaseInfo>> {
        self.read(|c, p, _| {
            let ttl: Option<i64> = {
                use rusqlite::OptionalExtension;
                c.prepare_cached("SELECT ttl FROM leases WHERE id = ?")
                    .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
                    .map_err(sq(p))?
            };
            let Some(ttl) = ttl else { return Ok(None) };
            let keys = if with_keys {
                c.prepare_cached("SELECT key FROM lease_keys WHERE lease = ? ORDER BY key")
                    .and_then(|mut s| s.query_map([id], |r| r.get(0))?.collect())
                    .map_err(sq(p))?
            } else {
                Vec::new()
            };
            Ok(Some(LeaseInfo { id, ttl, keys }))
        })
    }

    /// Every lease id with its TTL.
    pub fn leases(&mut self) -> Result<Vec<(i64, i64)>> {
        self.read(|c, p, _| {
            c.prepare_cached("SELECT id, ttl FROM leases ORDER BY id")
                .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
                .map_err(sq(p))
        })
    }

    /// etcd's `HashKV`: a CRC-32 of the MVCC key-value history visible at `rev` (0: the
    /// current revision), with the revision hashed and the compaction revision. Equal on every
    /// replica that applied the same log, whatever its physical compaction progress: like
    /// etcd's `kvHasher` (server/storage/mvcc/hash.go) it hashes every revision in
    /// `(compact, rev]` and, at or below the compaction revision, only what compaction keeps
    /// (each key's newest row, unless that row is a tombstone), read in (revision, sub) order.
    /// Leases are not part of it, as in etcd.
    pub fn hash_kv(&mut self, rev: i64) -> Result<KvHash> {
        self.read(|c, p, v| {
            if rev > v.current_rev {
                return Err(StoreError::FutureRevision {
                    requested: rev,
                    current: v.current_rev,
                });
            }
            if rev > 0 && rev < v.compact_rev {
                return Err(StoreError::Compacted {
                    requested: rev,
                    compacted: v.compact_rev,
                });
            }
            let rev = if rev == 0 { v.current_rev } else { rev };
            let mut h = crc32fast::Hasher::new();
            h.update(b"key");
            let mut stmt = c
                .prepare(
                    "SELECT rev, sub, key, create_rev, version, lease, value, deleted FROM kv
                     WHERE rev <= ?1 AND (rev > ?2 OR (deleted = 0 AND NOT EXISTS (
                         SELECT 1 FROM kv AS n WHERE n.key = kv.key AND n.rev > kv.rev AND n.rev <= ?2)))
                     ORDER BY rev, sub",
                )
                .map_err(sq(p))?;
            let mut rows = stmt.query(params![rev, v.compact_rev]).map_err(sq(p))?;
            while let Some(r) = rows.next().map_err(sq(p))? {
                let get_i = |i| r.get::<_, i64>(i).map_err(sq(p));
                let get_b = |i| r.get::<_, Vec<u8>>(i).map_err(sq(p));
                for n in [get_i(0)?, get_i(1)?, get_i(3)?, get_i(4)?, get_i(5)?, get_i(7)?] {
                    h.update(&n.to_be_bytes());
                }
                // Length-prefixed, so that no two histories hash the same bytes.
                for b in [get_b(2)?, get_b(6)?] {
                    h.update(&(b.len() as u64).to_be_bytes());
                    h.update(&b);
                }
            }
            Ok(KvHash {
                hash: h.finalize(),
                revision: rev,
                compact_revision: v.compact_rev,
                current_revision: v.current_rev,
            })
        })
    }

    /// How many keys exist now (deleted ones excluded): etcd's `keys_total`.
    pub fn key_count(&mut self) -> Result<i64> {
        let p = self.path.clone();
        self.conn
            .query_row("SELECT count(*) FROM latest", [], |r| r.get(0))
            .map_err(sq(&p))
    }

    /// Bytes allocated by the database file and bytes in use (allocated minus free pages).
    pub fn db_size(&mut self) -> Result<(i64, i64)> {
        db_size(&self.conn, &self.path)
    }
}

/// Bytes allocated by the database file at `path` and bytes in use (allocated minus free
/// pages), read through `conn`.
fn db_size(conn: &Connection, path: &Path) -> Result<(i64, i64)> {
    let q = |name: &str| -> Result<i64> {
        conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
            .map_err(sq(path))
    };
    let (pages, free, size) = (q("page_count")?, q("freelist_count")?, q("page_size")?);
    Ok((pages * size, (pages - free) * size))
}
