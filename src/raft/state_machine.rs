//! The Raft state machine: openraft's `RaftStateMachine` over `datastore::Store`.
//!
//! ```text
//!  committed entries ──▶ apply(): one Store::apply_raft_batch = one SQLite txn holding
//!                          the data, `applied_log_id` and `membership` (raft_meta rows)
//!                        ──▶ responders (leader-local writes) / waiters (forwarded writes)
//!                        ──▶ ApplyHook (the node's applier: meta, lessor, watch hub) after
//!                            the commit and the answers
//! ```
//!
//! Invariants:
//! - Data, last-applied log id and membership change in one transaction, so after a crash the
//!   store is exactly "everything up to `applied_log_id`" and replay from there is exact. The
//!   store runs `synchronous=NORMAL`; the durable record is the Raft log, so a lost tail is
//!   simply re-applied (the node waits for recovery before serving, see `RaftNode`).
//! - Every entry handed to `apply` gets exactly one answer: through its openraft responder if
//!   it has one (the proposal was made on this node while it led), otherwise through a local
//!   waiter if this node originated it (a forwarded write), otherwise none is wanted.
//! - A client error (failed compare, unknown lease) is a `Response::Rejected`, never an `Err`:
//!   an `Err` from here stops Raft on this node for good.
//! - A snapshot is a `VACUUM INTO` copy taken from its own read transaction: it is consistent
//!   by construction, and its Raft metadata is read back from the copy itself, never from
//!   memory, so the metadata and the data can never disagree.
//! - Snapshot files are immutable once renamed into place; `current.json` names the current
//!   one and is replaced atomically (write, fsync, rename).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::full_disk::{self, FullDisk, Retries};
use super::outcome;
use super::stages::{self, Stage};
use super::types::{LogId, Response, Snapshot, SnapshotFile, SnapshotMeta, StoredMembership, TypeConfig};
use crate::datastore::{
    CommittedBatch, DedupPrune, Durability, Event, LeaseChanges, LogPosition, RaftApplied, RaftCommand,
    Store, StoreError, export_snapshot, read_raft_meta,
};

const APPLIED_KEY: &str = "applied_log_id";
const MEMBERSHIP_KEY: &str = "membership";
/// The cluster id every member reports in response headers (see `cluster_id_of`).
const CLUSTER_ID_KEY: &str = "cluster_id";
const CURRENT: &str = "current.json";
/// `current.json` names the snapshot and its log position, nothing secret.
const SNAPSHOT_FILE_MODE: u32 = 0o644;
/// Dedup rows older than this many log entries are dropped even without a low-water mark
/// (proposers that went away). A retry older than this is no longer recognised.
const DEDUP_WINDOW: u64 = 100_000;

/// openraft over this state machine: the handle every part of `raft/` drives.
pub type Raft = openraft::Raft<TypeConfig, StateMachine>;

/// Called after every committed batch (and installed snapshot), on the apply task, once every
/// entry of the batch has had its answer. Must not block. A node's hook is its applier
/// (`node::applier`), which the standalone apply thread calls too.
pub type ApplyHook = Arc<dyn Fn(CommittedBatch) + Send + Sync>;

/// Waiters for outcomes of this node's forwarded proposals, keyed by request id.
#[derive(Debug, Default)]
pub struct Waiters {
    map: Mutex<HashMap<u64, oneshot::Sender<Response>>>,
}

impl Waiters {
    pub fn register(&self, request_id: u64) -> oneshot::Receiver<Response> {
        let (tx, rx) = oneshot::channel();
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(request_id, tx);
        rx
    }

    pub fn cancel(&self, request_id: u64) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&request_id);
    }

    fn take(&self, request_id: u64) -> Option<oneshot::Sender<Response>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&request_id)
    }
}

/// `current.json`: which snapshot file is current and what it contains.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CurrentSnapshot {
    meta: SnapshotMeta,
    file: String,
}

/// Each command's output, the events, and the revision and compaction revision after a batch.
type BatchApplied = (Vec<RaftApplied>, Vec<Event>, i64, i64);

/// Apply one batch in one SQLite transaction (on a blocking thread), then let physical
/// compaction run for a few milliseconds.
fn apply_batch(
    store: &Mutex<Store>,
    items: &[EntryResponder<TypeConfig>],
    rows: &[(&str, Vec<u8>)],
    prune: &DedupPrune,
    last: LogId,
) -> crate::datastore::error::Result<BatchApplied> {
    let cmds: Vec<RaftCommand<'_>> = items
        .iter()
        .filter_map(|(e, _)| match &e.payload {
            EntryPayload::Normal(req) => Some(RaftCommand {
                pos: position(&e.log_id),
                cmd: &req.cmd,
                dedup: Some((req.origin, req.request_id)),
            }),
            _ => None,
        })
        .collect();
    let meta: Vec<(&str, &[u8])> = rows.iter().map(|(k, v)| (*k, v.as_slice())).collect();
    let mut store = store.lock().unwrap_or_else(|p| p.into_inner());
    let commit_started = std::time::Instant::now();
    let applied = store.apply_raft_batch(&cmds, position(&last), &meta, &outcome::encode, prune);
    // The state machine's transaction is etcd's backend commit.
    crate::metrics::etcd::ETCD
        .backend_commit
        .observe(commit_started.elapsed());
    let (outputs, events) = applied?;
    let revision = store.meta().current_rev;
    // Physical compaction rides along with apply batches, a few milliseconds at a time, so it
    // never holds the writer for long (rule S5 of `docs/design/etcd-contract.md`).
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_millis(5) {
        match store.compact_step(1000) {
            Ok(true) => continue,
            Ok(false) => break,
            Err(e) => {
                tracing::warn!(error = %e, "compaction step failed; retried with the next batch");
                break;
            }
        }
    }
    Ok((outputs, events, revision, store.meta().compact_rev))
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// A cluster id from the log id of the bootstrap entry (term 0, the founding node's id, index
/// 0): the same on every member, different for every cluster founded, never 0. Mixed with
/// splitmix64 so it is not mistaken for the founder's member id.
fn cluster_id_of(first: &LogId) -> u64 {
    let mut z = first.leader_id.node_id ^ first.leader_id.term.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) >> 1 | 1
}

/// The replicated cluster id of the Raft member whose state database is `db`, once it has
/// applied (or received in a snapshot) its cluster's bootstrap entry. `None` for a database
/// from before this row existed; callers fall back to the store's own id.
pub fn replicated_cluster_id(db: &Path) -> Result<Option<u64>, StoreError> {
    Ok(read_raft_meta(db, CLUSTER_ID_KEY)?.and_then(|b| serde_json::from_slice(&b).ok()))
}

fn json<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(io_err)
}

/// The state machine handed to openraft. The `Store` sits behind a mutex only so that SQLite
/// work can run on a blocking thread; openraft calls `apply` and `install_snapshot` serially.
pub struct StateMachine {
    /// This process's proposer id (`Request::origin`): outcomes of our own forwarded
    /// proposals go to `waiters`.
    origin: u64,
    store: Arc<Mutex<Store>>,
    db_path: PathBuf,
    snap_dir: PathBuf,
    applied: Option<LogId>,
    membership: StoredMembership,
    current: Arc<Mutex<Option<CurrentSnapshot>>>,
    waiters: Arc<Waiters>,
    hook: Option<ApplyHook>,
    disk: Arc<FullDisk>,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("db_path", &self.db_path)
            .field("applied", &self.applied)
            .finish()
    }
}

impl StateMachine {
    /// Open the store at `db_path` and the snapshot directory `snap_dir`.
    pub fn open(
        origin: u64,
        db_path: &Path,
        snap_dir: &Path,
        waiters: Arc<Waiters>,
        hook: Option<ApplyHook>,
    ) -> Result<StateMachine, StoreError> {
        let io = |source| StoreError::Io {
            path: snap_dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(snap_dir).map_err(io)?;
        // A crash during a build or an install can leave a `tmp-*` copy or a temporary
        // `current.json` behind (`atomic_file`'s, or an older k8sd's `current.json.tmp`); nothing
        // refers to them (the pointer is switched last), so they go.
        for e in std::fs::read_dir(snap_dir).map_err(io)?.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("tmp-") || name.ends_with(".tmp") || crate::atomic_file::is_temp_name(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let mut store = Store::open(db_path, Durability::Normal)?;
        store.enable_raft_meta()?;
        let corrupt = |what: &str, e: serde_json::Error| StoreError::Corrupt {
            path: db_path.to_path_buf(),
            reason: format!("undecodable raft {what}: {e}"),
        };
        let applied = match store.raft_meta(APPLIED_KEY)? {
            Some(b) => serde_json::from_slice(&b).map_err(|e| corrupt("applied log id", e))?,
            None => None,
        };
        let membership = match store.raft_meta(MEMBERSHIP_KEY)? {
            Some(b) => serde_json::from_slice(&b).map_err(|e| corrupt("membership", e))?,
            None => StoredMembership::default(),
        };
        let current = match std::fs::read(snap_dir.join(CURRENT)) {
            Ok(b) => {
                Some(
                    serde_json::from_slice::<CurrentSnapshot>(&b).map_err(|e| StoreError::Corrupt {
                        path: snap_dir.join(CURRENT),
                        reason: format!("undecodable snapshot pointer: {e}"),
                    })?,
                )
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(e)),
        };
        Ok(StateMachine {
            origin,
            store: Arc::new(Mutex::new(store)),
            db_path: db_path.to_path_buf(),
            snap_dir: snap_dir.to_path_buf(),
            applied,
            membership,
            current: Arc::new(Mutex::new(current)),
            waiters,
            hook,
            disk: FullDisk::new(None),
        })
    }

    /// Share the node's view of a full disk (`full_disk`) with the apply's retries.
    pub fn with_full_disk(mut self, disk: Arc<FullDisk>) -> StateMachine {
        self.disk = disk;
        self
    }

    fn builder(&self) -> SnapshotBuilder {
        SnapshotBuilder {
            db_path: self.db_path.clone(),
            snap_dir: self.snap_dir.clone(),
            current: self.current.clone(),
        }
    }
}

fn position(log_id: &LogId) -> LogPosition {
    LogPosition {
        index: log_id.index,
        term: log_id.leader_id.term,
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        // The stream ends with the batch openraft decided to apply; take it whole so that it
        // becomes one transaction.
        let mut items = Vec::new();
        while let Some(item) = entries.next().await {
            items.push(item?);
        }
        let Some(last) = items.last().map(|(e, _)| e.log_id) else {
            return Ok(());
        };
        if stages::enabled() {
            for (e, _) in &items {
                stages::mark(e.log_id.index, Stage::ApplyStarted);
            }
        }
        let mut membership = self.membership.clone();
        // Dedup pruning, decided from the entries alone so every replica prunes alike: each
        // proposer's low-water mark, and anything older than DEDUP_WINDOW entries.
        let mut low_water: BTreeMap<u64, u64> = BTreeMap::new();
        for (entry, _) in &items {
            match &entry.payload {
                EntryPayload::Membership(m) => {
                    membership = StoredMembership::new(Some(entry.log_id), m.clone())
                }
                EntryPayload::Normal(req) if req.low_water > 0 => {
                    let w = low_water.entry(req.origin).or_default();
                    *w = (*w).max(req.low_water);
                }
                _ => {}
            }
        }
        let prune = DedupPrune {
            low_water: low_water.into_iter().collect(),
            below_index: last.index.saturating_sub(DEDUP_WINDOW),
        };
        let mut rows = vec![
            (APPLIED_KEY, json(&Some(last))?),
            (MEMBERSHIP_KEY, json(&membership)?),
        ];
        // The bootstrap membership entry (index 0) names the cluster. Every member applies it,
        // or receives the row inside a snapshot, so all of them report the same id.
        if let Some((first, _)) = items
            .iter()
            .find(|(e, _)| e.log_id.index == 0 && matches!(e.payload, EntryPayload::Membership(_)))
        {
            rows.push((CLUSTER_ID_KEY, json(&cluster_id_of(&first.log_id))?));
        }
        // SQLite work runs on a blocking thread; the entries (with their responders) travel
        // there and back so that answers are sent only after the commit.
        // A full disk (SQLITE_FULL) rolled the transaction back and left the store whole: wait
        // and apply the same batch again, rather than fail, which would stop Raft on this node
        // for good. Nobody is answered meanwhile, so nothing unkept is acknowledged; the node's
        // NOSPACE alarm (raised at every failed attempt, `full_disk`) refuses new writes in the
        // meantime.
        let mut batch = (items, rows, prune);
        let mut waiting = None;
        let (items, applied) = loop {
            let store = self.store.clone();
            let (back, applied) = tokio::task::spawn_blocking(move || {
                let (items, rows, prune) = &batch;
                let applied = apply_batch(&store, items, rows, prune, last);
                (batch, applied)
            })
            .await
            .map_err(io_err)?;
            match applied {
                // Closing: give up, answering nobody (the batch is not applied here; it is
                // committed, so the next start applies it again).
                Err(e) if e.is_disk_full() && !self.disk.closing() => {
                    self.disk.report();
                    let now = std::time::Instant::now();
                    let (retries, _) =
                        waiting.get_or_insert_with(|| (Retries::new(now), self.disk.wait_guard()));
                    if retries.failed(now) {
                        tracing::warn!(
                            error = %e,
                            retries = retries.count(),
                            waited_s = retries.waited_secs(now),
                            "state machine: the disk is full; the batch is applied again until it \
                             fits: free space on the filesystem holding the data dir"
                        );
                    }
                    batch = back;
                    tokio::time::sleep(full_disk::RETRY_PAUSE).await;
                }
                applied => break (back.0, applied),
            }
        };
        drop(waiting);
        // A fatal store error: openraft stops this node; it must be rebuilt (rule X1 of
        // `docs/design/etcd-contract.md`).
        let (outputs, events, revision, compact_rev) = applied.map_err(io_err)?;
        if stages::enabled() {
            stages::apply_txn();
            for (e, _) in &items {
                stages::mark(e.log_id.index, Stage::Applied);
            }
        }
        let mut outputs = outputs.into_iter();
        let mut leases = LeaseChanges::default();
        for (entry, responder) in items {
            let (response, origin) = match &entry.payload {
                EntryPayload::Normal(req) => {
                    let result = match outputs.next() {
                        Some(RaftApplied::Fresh(r)) => {
                            // Only a fresh application changes leases; a duplicate changed nothing.
                            leases.record(&req.cmd, &r);
                            r
                        }
                        Some(RaftApplied::Duplicate(bytes)) => {
                            outcome::decode(&bytes).map_err(io::Error::other)?
                        }
                        None => {
                            return Err(io::Error::other("datastore returned fewer outputs than commands"));
                        }
                    };
                    let r = match result {
                        Ok(out) => Response::Applied(out),
                        Err(e) => Response::Rejected(e),
                    };
                    (r, Some((req.origin, req.request_id)))
                }
                _ => (Response::Empty, None),
            };
            // Exactly one destination per entry (module invariant): the local client via its
            // responder, else this process's forwarded proposal via its waiter, else nobody.
            if let Some(responder) = responder {
                stages::mark(entry.log_id.index, Stage::Responded);
                responder.send(response);
            } else if let Some((origin, request_id)) = origin
                && origin == self.origin
                && let Some(waiter) = self.waiters.take(request_id)
            {
                let _ = waiter.send(response);
            }
        }
        self.applied = Some(last);
        self.membership = membership;
        if let Some(hook) = &self.hook {
            hook(CommittedBatch {
                applied: Some(position(&last)),
                revision,
                compact_rev,
                // Physical compaction rides along with the batches; a Raft member reports it
                // as done up to the compaction revision.
                physical_compact_rev: compact_rev,
                events,
                replaced: false,
                leases,
            });
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.builder()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        // The import is one SQLite write transaction, so a crash mid-install leaves the old
        // database intact; openraft retries the install from its own state afterwards.
        let store = self.store.clone();
        let builder = self.builder();
        let meta2 = meta.clone();
        let (revision, compact_rev) = tokio::task::spawn_blocking(move || -> io::Result<(i64, i64)> {
            let mut store = store.lock().unwrap_or_else(|p| p.into_inner());
            store.import_snapshot(&snapshot.path).map_err(io_err)?;
            // Keep a copy as our own current snapshot (the source may belong to someone else,
            // e.g. the network inbox, which deletes it after this returns).
            builder.adopt(&snapshot.path, meta2, false)?;
            Ok((store.meta().current_rev, store.meta().compact_rev))
        })
        .await
        .map_err(io_err)??;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        if let Some(hook) = &self.hook {
            hook(CommittedBatch {
                applied: meta.last_log_id.as_ref().map(position),
                revision,
                compact_rev,
                physical_compact_rev: compact_rev,
                events: Vec::new(),
                replaced: true,
                leases: LeaseChanges::default(),
            });
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let cur = self.current.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(cur.map(|c| Snapshot {
            meta: c.meta,
            snapshot: SnapshotFile {
                path: self.snap_dir.join(c.file),
            },
        }))
    }
}

/// Builds snapshots concurrently with `apply`, from its own read transaction.
#[derive(Debug)]
pub struct SnapshotBuilder {
    db_path: PathBuf,
    snap_dir: PathBuf,
    current: Arc<Mutex<Option<CurrentSnapshot>>>,
}

impl SnapshotBuilder {
    /// Copy, read the copy's own metadata, then adopt it. A crash at any point leaves at
    /// worst a `tmp-*` file, and `current.json` still names a complete snapshot.
    fn build_blocking(&self) -> io::Result<Snapshot> {
        let tmp = self
            .snap_dir
            .join(format!("tmp-{:016x}.db", rand::random::<u64>()));
        export_snapshot(&self.db_path, &tmp).map_err(io_err)?;
        let decode = |key: &str| -> io::Result<Option<Vec<u8>>> { read_raft_meta(&tmp, key).map_err(io_err) };
        let last_log_id: Option<LogId> = match decode(APPLIED_KEY)? {
            Some(b) => serde_json::from_slice(&b).map_err(io_err)?,
            None => None,
        };
        let last_membership: StoredMembership = match decode(MEMBERSHIP_KEY)? {
            Some(b) => serde_json::from_slice(&b).map_err(io_err)?,
            None => StoredMembership::default(),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
        };
        let path = self.adopt(&tmp, meta.clone(), true)?;
        Ok(Snapshot {
            meta,
            snapshot: SnapshotFile { path },
        })
    }

    /// Make `src` the current snapshot: place it under a unique name (renaming when `owned`,
    /// copying otherwise), fsync, switch `current.json`, then delete older snapshot files.
    fn adopt(&self, src: &Path, meta: SnapshotMeta, owned: bool) -> io::Result<PathBuf> {
        let (term, index) = meta.last_log_id.map_or((0, 0), |l| (l.leader_id.term, l.index));
        let file = format!("snap-{term}-{index}-{:08x}.db", rand::random::<u32>());
        let dst = self.snap_dir.join(&file);
        if owned {
            std::fs::rename(src, &dst)?;
        } else {
            std::fs::copy(src, &dst)?;
        }
        std::fs::File::open(&dst)?.sync_all()?;
        let cur = CurrentSnapshot {
            meta,
            file: file.clone(),
        };
        // The directory fsync inside also makes the snapshot file's new name durable.
        crate::atomic_file::replace(&self.snap_dir.join(CURRENT), &json(&cur)?, SNAPSHOT_FILE_MODE)?;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(cur);
        // Older snapshots are garbage now. A sender still streaming one keeps its open file.
        for e in std::fs::read_dir(&self.snap_dir)?.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("snap-") && name != file.as_str() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(dst)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let this = SnapshotBuilder {
            db_path: self.db_path.clone(),
            snap_dir: self.snap_dir.clone(),
            current: self.current.clone(),
        };
        tokio::task::spawn_blocking(move || this.build_blocking())
            .await
            .map_err(io_err)?
    }
}
