//! The state machine's apply thread: committed ranges go into SQLite here, several at a time.
//!
//! ```text
//!  openraft sm worker ──apply(range)──▶ StateMachine::apply ──Job──▶ queue ──▶ apply thread
//!      (returns once queued)                                               │ every job queued
//!                                                                          │ behind the running
//!                                                                          ▼ one: ONE transaction
//!                        answers (responders, waiters) ◀── commit ── Store::apply_raft_batch
//!                        ApplyHook (meta, lessor, watch hub), then `AppliedIndex` advances
//! ```
//!
//! Why: openraft hands the state machine one committed range per log flush, and applies them
//! one after another. Under a sustained load each range holds a few entries, and every range
//! applied as its own SQLite transaction paid the transaction's fixed cost, so the apply fell
//! behind and the ranges queued behind it (docs/design/raft.md, "Under a sustained load, apply
//! is the queue"). Here the ranges that queue up while a transaction runs become the next
//! transaction, as etcd's backend batches its commits.
//!
//! Invariants:
//! - Jobs are applied in the order queued; a transaction holds whole jobs, so the stored
//!   `applied_log_id` is always the last entry of a committed range.
//! - Nobody is answered before the transaction holding their entry has committed, so an
//!   acknowledged write is in the store (and in the Raft log, which is the durable record).
//! - openraft counts a range applied once it is queued. Everything that must see the store
//!   itself waits for [`ApplyThread::wait_applied`] instead (linearizable reads, recovery), or
//!   flushes the queue first (snapshot build and install, which run on the same openraft
//!   worker as `apply`).
//! - A fatal store error stops the thread: it is reported by the next `submit`, which makes
//!   openraft stop this node, and [`AppliedIndex`] is marked failed so that nobody waits for it.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use openraft::EntryPayload;
use openraft::storage::EntryResponder;
use tokio::sync::{mpsc, oneshot, watch};

use super::full_disk::{self, FullDisk, Retries};
use super::outcome;
use super::stages::{self, Stage};
use super::types::{LogId, Response, StoredMembership, TypeConfig};
use crate::datastore::{
    CommittedBatch, DedupPrune, Event, LeaseChanges, LogPosition, RaftApplied, RaftCommand, Store,
};

/// The `raft_meta` rows holding the last applied log id and the membership.
pub(super) const APPLIED_KEY: &str = "applied_log_id";
pub(super) const MEMBERSHIP_KEY: &str = "membership";
/// Committed ranges that may wait for the thread before `apply` itself waits.
const QUEUE: usize = 64;
/// A transaction stops taking queued ranges once it holds this many entries, so one commit's
/// pages and one batch of answers stay bounded (a restart can replay a long log).
const MAX_ENTRIES: usize = 8192;
/// Dedup rows older than this many log entries are dropped even without a low-water mark
/// (proposers that went away). A retry older than this is no longer recognised.
const DEDUP_WINDOW: u64 = 100_000;

/// One committed range, as the state machine saw it when openraft handed it over.
pub(super) struct Job {
    pub(super) items: Vec<EntryResponder<TypeConfig>>,
    pub(super) last: LogId,
    /// The membership in force after this range (the stored `membership` row).
    pub(super) membership: StoredMembership,
    /// The `raft_meta` rows besides the applied log id and membership (the cluster id, once).
    pub(super) extra_rows: Vec<(&'static str, Vec<u8>)>,
}

impl Job {
    /// Append a later range: one transaction, the later range's position and membership.
    fn merge(&mut self, later: Job) {
        self.items.extend(later.items);
        self.last = later.last;
        self.membership = later.membership;
        self.extra_rows.extend(later.extra_rows);
    }

    /// Dedup pruning, decided from the entries alone so every replica prunes alike: each
    /// proposer's low-water mark, and anything older than DEDUP_WINDOW entries.
    fn prune(&self) -> DedupPrune {
        let mut low_water: BTreeMap<u64, u64> = BTreeMap::new();
        for (entry, _) in &self.items {
            if let EntryPayload::Normal(req) = &entry.payload
                && req.low_water > 0
            {
                let w = low_water.entry(req.origin).or_default();
                *w = (*w).max(req.low_water);
            }
        }
        DedupPrune {
            low_water: low_water.into_iter().collect(),
            below_index: self.last.index.saturating_sub(DEDUP_WINDOW),
        }
    }

    /// The `raft_meta` rows this job's transaction writes.
    fn rows(&self) -> io::Result<Vec<(&'static str, Vec<u8>)>> {
        let json = |v: serde_json::Result<Vec<u8>>| v.map_err(io::Error::other);
        let mut rows = vec![
            (APPLIED_KEY, json(serde_json::to_vec(&Some(self.last)))?),
            (MEMBERSHIP_KEY, json(serde_json::to_vec(&self.membership))?),
        ];
        rows.extend(self.extra_rows.iter().cloned());
        Ok(rows)
    }
}

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
        self.take(request_id);
    }

    pub(super) fn take(&self, request_id: u64) -> Option<oneshot::Sender<Response>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&request_id)
    }
}

enum Msg {
    Apply(Job),
    /// Answered once every job queued before it is in the store.
    Flush(oneshot::Sender<()>),
    /// Apply what is queued before it, then end the thread.
    Stop,
}

/// How far the store itself has applied the log, as the apply thread reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppliedIndex {
    pub index: u64,
    /// The thread stopped on a fatal error; the index will not advance again.
    pub failed: bool,
}

/// What the apply thread needs: the store and where answers and batches go.
pub(super) struct Context {
    pub(super) origin: u64,
    pub(super) store: Arc<Mutex<Store>>,
    pub(super) waiters: Arc<Waiters>,
    pub(super) hook: Option<ApplyHook>,
    pub(super) disk: Arc<FullDisk>,
}

/// The handle to the apply thread. Clones share the thread.
#[derive(Clone, Debug)]
pub struct ApplyThread {
    tx: mpsc::Sender<Msg>,
    /// Shared with the thread, which advances it; also set for a snapshot installed beside it
    /// (`installed`).
    applied: Arc<watch::Sender<AppliedIndex>>,
    /// The reason the thread stopped on a fatal error.
    failure: Arc<Mutex<Option<String>>>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl ApplyThread {
    /// Start the thread; `applied` is the store's applied index at open.
    pub(super) fn spawn(ctx: Context, applied: u64) -> io::Result<ApplyThread> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let applied = Arc::new(watch::Sender::new(AppliedIndex {
            index: applied,
            failed: false,
        }));
        let failure = Arc::new(Mutex::new(None));
        let worker = Worker {
            ctx,
            rx,
            applied: applied.clone(),
            failure: failure.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("k8sd-raft-apply".into())
            .spawn(move || worker.run())?;
        Ok(ApplyThread {
            tx,
            applied,
            failure,
            thread: Arc::new(Mutex::new(Some(handle))),
        })
    }

    fn stopped(&self) -> io::Error {
        let failure = self.failure.lock().unwrap_or_else(|p| p.into_inner()).clone();
        io::Error::other(failure.unwrap_or_else(|| "the state machine's apply thread has stopped".into()))
    }

    /// Queue a committed range. Waits only while the queue is full. A failed thread has closed
    /// the queue, so the send itself reports the failure.
    pub(super) async fn submit(&self, job: Job) -> io::Result<()> {
        self.tx.send(Msg::Apply(job)).await.map_err(|_| self.stopped())
    }

    /// Wait until every range queued so far is in the store.
    pub async fn flush(&self) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Msg::Flush(tx)).await.map_err(|_| self.stopped())?;
        rx.await.map_err(|_| self.stopped())
    }

    /// Record the position of a snapshot installed outside the thread, after a flush (so
    /// nothing queued is behind it).
    pub(super) fn installed(&self, index: u64) {
        self.applied.send_modify(|a| a.index = index);
    }

    /// The store's applied index and whether the thread failed.
    pub fn applied(&self) -> AppliedIndex {
        *self.applied.borrow()
    }

    /// Wait until the store has applied `index`, or `timeout` passes (`false`), or the thread
    /// failed (`false`).
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|a| a.index >= index || a.failed)).await;
        matches!(reached, Ok(Ok(a)) if a.index >= index)
    }

    /// Apply what is queued, then end the thread and wait for it. For the node's shutdown,
    /// after openraft has stopped, so that a restart in the same process never finds the old
    /// thread still writing.
    pub async fn stop(&self) {
        let _ = self.tx.send(Msg::Stop).await;
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

struct Worker {
    ctx: Context,
    rx: mpsc::Receiver<Msg>,
    applied: Arc<watch::Sender<AppliedIndex>>,
    failure: Arc<Mutex<Option<String>>>,
}

impl Worker {
    fn run(mut self) {
        while let Some(msg) = self.rx.blocking_recv() {
            let mut job = match msg {
                Msg::Apply(job) => job,
                Msg::Flush(done) => {
                    let _ = done.send(());
                    continue;
                }
                Msg::Stop => return,
            };
            // Every range queued behind the first joins its transaction, up to a flush or a
            // stop, which are answered once it has committed.
            let mut after = None;
            while job.items.len() < MAX_ENTRIES {
                match self.rx.try_recv() {
                    Ok(Msg::Apply(next)) => job.merge(next),
                    Ok(other) => {
                        after = Some(other);
                        break;
                    }
                    Err(_) => break,
                }
            }
            if let Err(e) = self.apply(job) {
                tracing::error!(error = %e, "the state machine cannot apply committed entries; this node stops");
                *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                self.applied.send_modify(|a| a.failed = true);
                // Queued answers are dropped unanswered: their writes were not applied here.
                self.rx.close();
                return;
            }
            match after {
                Some(Msg::Flush(done)) => {
                    let _ = done.send(());
                }
                Some(Msg::Stop) => return,
                _ => {}
            }
        }
    }

    /// One transaction for `job`, then its answers and the hook.
    fn apply(&mut self, job: Job) -> io::Result<()> {
        let (outputs, events, revision, compact_rev) = self.commit(&job)?;
        if stages::enabled() {
            stages::apply_txn();
            for (e, _) in &job.items {
                stages::mark(e.log_id.index, Stage::Applied);
            }
        }
        let mut outputs = outputs.into_iter();
        let mut leases = LeaseChanges::default();
        for (entry, responder) in job.items {
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
            // Exactly one destination per entry: the local client via its responder, else
            // this process's forwarded proposal via its waiter, else nobody.
            if let Some(responder) = responder {
                stages::mark(entry.log_id.index, Stage::Responded);
                responder.send(response);
            } else if let Some((origin, request_id)) = origin
                && origin == self.ctx.origin
                && let Some(waiter) = self.ctx.waiters.take(request_id)
            {
                let _ = waiter.send(response);
            }
        }
        if let Some(hook) = &self.ctx.hook {
            hook(CommittedBatch {
                applied: Some(position(&job.last)),
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
        self.applied
            .send_modify(|a| a.index = a.index.max(job.last.index));
        Ok(())
    }

    /// The transaction. A full disk (SQLITE_FULL) rolled it back and left the store whole:
    /// wait and apply the same job again, rather than fail, which would stop Raft on this node
    /// for good. Nobody is answered meanwhile, so nothing unkept is acknowledged; the node's
    /// NOSPACE alarm (raised at every failed attempt, `full_disk`) refuses new writes.
    fn commit(&self, job: &Job) -> io::Result<BatchApplied> {
        let rows = job.rows()?;
        let prune = job.prune();
        let mut waiting = None;
        loop {
            match apply_batch(&self.ctx.store, &job.items, &rows, &prune, job.last) {
                // Closing: give up, answering nobody (the job is committed in the log, so the
                // next start applies it again).
                Err(e) if e.is_disk_full() && !self.ctx.disk.closing() => {
                    self.ctx.disk.report();
                    let now = Instant::now();
                    let (retries, _) =
                        waiting.get_or_insert_with(|| (Retries::new(now), self.ctx.disk.wait_guard()));
                    if retries.failed(now) {
                        tracing::warn!(
                            error = %e,
                            retries = retries.count(),
                            waited_s = retries.waited_secs(now),
                            "state machine: the disk is full; the batch is applied again until it \
                             fits: free space on the filesystem holding the data dir"
                        );
                    }
                    std::thread::sleep(full_disk::RETRY_PAUSE);
                }
                // A fatal store error: this node must be rebuilt (rule X1 of
                // `docs/design/etcd-contract.md`).
                applied => return applied.map_err(|e| io::Error::other(e.to_string())),
            }
        }
    }
}

/// Each command's output, the events, and the revision and compaction revision after a batch.
type BatchApplied = (Vec<RaftApplied>, Vec<Event>, i64, i64);

/// Apply one batch in one SQLite transaction, then let physical compaction run for a few
/// milliseconds.
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
    let commit_started = Instant::now();
    let applied = store.apply_raft_batch(&cmds, position(&last), &meta, &outcome::encode, prune);
    // The state machine's transaction is etcd's backend commit.
    crate::metrics::etcd::ETCD
        .backend_commit
        .observe(commit_started.elapsed());
    let (outputs, events) = applied?;
    let revision = store.meta().current_rev;
    // Physical compaction rides along with apply batches, a few milliseconds at a time, so it
    // never holds the writer for long (rule S5 of `docs/design/etcd-contract.md`).
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(5) {
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

pub(super) fn position(log_id: &LogId) -> LogPosition {
    LogPosition {
        index: log_id.index,
        term: log_id.leader_id.term,
    }
}
