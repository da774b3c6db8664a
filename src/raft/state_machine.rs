//! The Raft state machine: openraft's `RaftStateMachine` over `datastore::Store`.
//!
//! ```text
//!  committed range ──▶ apply(): membership and rows worked out here, then queued
//!                        ──▶ apply_thread: the ranges queued behind a running transaction
//!                            become ONE Store::apply_raft_batch (data, `applied_log_id` and
//!                            `membership` raft_meta rows), then the answers, then the
//!                            ApplyHook (the node's applier: meta, lessor, watch hub)
//! ```
//!
//! Invariants:
//! - Data, last-applied log id and membership change in one transaction, so after a crash the
//!   store is exactly "everything up to `applied_log_id`" and replay from there is exact. The
//!   store runs `synchronous=NORMAL`; the durable record is the Raft log, so a lost tail is
//!   simply re-applied (the node waits for recovery before serving, see `RaftNode`).
//! - Every entry handed to `apply` gets exactly one answer, after the commit that holds it:
//!   through its openraft responder if it has one (the proposal was made on this node while it
//!   led), otherwise through a local waiter if this node originated it (a forwarded write),
//!   otherwise none is wanted.
//! - openraft's applied index runs ahead of the store by what is queued; snapshot build and
//!   install flush the queue first, and reads wait for the store's own index
//!   (`ApplyThread::wait_applied`).
//! - A client error (failed compare, unknown lease) is a `Response::Rejected`, never an `Err`:
//!   an `Err` from here stops Raft on this node for good.
//! - A snapshot is a `VACUUM INTO` copy taken from its own read transaction: it is consistent
//!   by construction, and its Raft metadata is read back from the copy itself, never from
//!   memory, so the metadata and the data can never disagree.
//! - Snapshot files are immutable once renamed into place; `current.json` names the current
//!   one and is replaced atomically (write, fsync, rename).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};

use super::apply_thread::{self, APPLIED_KEY, ApplyThread, Job, MEMBERSHIP_KEY, position};
pub use super::apply_thread::{ApplyHook, Waiters};
use super::full_disk::FullDisk;
use super::stages::{self, Stage};
use super::types::{LogId, Snapshot, SnapshotFile, SnapshotMeta, StoredMembership, TypeConfig};
use crate::datastore::{
    CommittedBatch, Durability, LeaseChanges, Store, StoreError, export_snapshot, read_raft_meta,
};

/// The cluster id every member reports in response headers (see `cluster_id_of`).
const CLUSTER_ID_KEY: &str = "cluster_id";
const CURRENT: &str = "current.json";
/// `current.json` names the snapshot and its log position, nothing secret.
const SNAPSHOT_FILE_MODE: u32 = 0o644;
/// openraft over this state machine: the handle every part of `raft/` drives.
pub type Raft = openraft::Raft<TypeConfig, StateMachine>;

/// `current.json`: which snapshot file is current and what it contains.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CurrentSnapshot {
    meta: SnapshotMeta,
    file: String,
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
    store: Arc<Mutex<Store>>,
    db_path: PathBuf,
    snap_dir: PathBuf,
    applied: Option<LogId>,
    membership: StoredMembership,
    current: Arc<Mutex<Option<CurrentSnapshot>>>,
    hook: Option<ApplyHook>,
    /// Commits what `apply` queues, and answers its writers.
    apply: ApplyThread,
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
        Self::open_with(origin, db_path, snap_dir, waiters, hook, FullDisk::new(None))
    }

    /// `open`, sharing the node's view of a full disk (`full_disk`) with the apply's retries.
    pub fn open_with(
        origin: u64,
        db_path: &Path,
        snap_dir: &Path,
        waiters: Arc<Waiters>,
        hook: Option<ApplyHook>,
        disk: Arc<FullDisk>,
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
        let store = Arc::new(Mutex::new(store));
        let thread = apply_thread::Context {
            origin,
            store: store.clone(),
            waiters,
            hook: hook.clone(),
            disk,
        };
        let apply = ApplyThread::spawn(thread, applied.map_or(0, |l: LogId| l.index)).map_err(io)?;
        Ok(StateMachine {
            store,
            db_path: db_path.to_path_buf(),
            snap_dir: snap_dir.to_path_buf(),
            applied,
            membership,
            current: Arc::new(Mutex::new(current)),
            hook,
            apply,
        })
    }

    /// The apply thread, for whoever must wait until the store itself has applied an index.
    pub fn apply_thread(&self) -> ApplyThread {
        self.apply.clone()
    }

    fn builder(&self) -> SnapshotBuilder {
        SnapshotBuilder {
            db_path: self.db_path.clone(),
            snap_dir: self.snap_dir.clone(),
            current: self.current.clone(),
        }
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
        // The stream ends with the range openraft decided to apply; take it whole.
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
        for (entry, _) in &items {
            if let EntryPayload::Membership(m) = &entry.payload {
                membership = StoredMembership::new(Some(entry.log_id), m.clone());
            }
        }
        // The bootstrap membership entry (index 0) names the cluster. Every member applies it,
        // or receives the row inside a snapshot, so all of them report the same id.
        let mut extra_rows = Vec::new();
        if let Some((first, _)) = items
            .iter()
            .find(|(e, _)| e.log_id.index == 0 && matches!(e.payload, EntryPayload::Membership(_)))
        {
            extra_rows.push((CLUSTER_ID_KEY, json(&cluster_id_of(&first.log_id))?));
        }
        // The apply thread commits it, with whatever else queued up meanwhile, and answers its
        // writers; openraft counts it applied from here on (module `apply_thread`).
        self.apply
            .submit(Job {
                items,
                last,
                membership: membership.clone(),
                extra_rows,
            })
            .await?;
        self.applied = Some(last);
        self.membership = membership;
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // A snapshot is copied from the store, and openraft expects it to cover everything it
        // counts applied. A failed thread leaves the store as it was: the copy is still
        // consistent, only older, and its metadata says so.
        let _ = self.apply.flush().await;
        self.builder()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        // Whatever was queued before is older than the snapshot; it must not land on top of it.
        self.apply.flush().await?;
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
        self.apply.installed(meta.last_log_id.map_or(0, |l| l.index));
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
