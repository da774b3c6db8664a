//! The standalone apply thread (`k8sd datastore` without peers): the store's one writer.
//!
//! ```text
//!  Node::propose ──▶ channel ──▶ apply thread ──▶ Store::apply_batch (1 txn, 1 fsync)
//!        ▲                          │
//!        └──── replies ◀────────────┴──▶ Applier::committed (meta, lessor, watch hub)
//! ```
//!
//! Group commit: the thread takes every proposal waiting in the channel (up to `MAX_BATCH`)
//! and applies them in one SQLite transaction. The store commits with `synchronous=FULL`, so a
//! reply means the write is on disk. The applier runs before the replies go out, so a client
//! that hears of its write can already watch it and keep its lease alive. While physical
//! compaction has work, the thread does a step of it whenever no proposal waits.

use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::datastore::{Command, CommandOutput, CommittedBatch, LeaseChanges, LogPosition, Store};

use super::NodeError;
use super::alarm::{Alarm, NoSpaceCause};
use super::applier::Applier;

/// Most commands applied in one transaction.
const MAX_BATCH: usize = 1024;
/// Revisions physically compacted per step between apply batches.
const COMPACT_BUDGET: i64 = 1000;

/// One write waiting for the apply thread, with where its answer goes.
pub(super) struct Proposal {
    pub(super) cmd: Command,
    pub(super) reply: oneshot::Sender<Result<CommandOutput, NodeError>>,
}

impl std::fmt::Debug for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proposal").field("cmd", &self.cmd).finish()
    }
}

/// The thread's body: runs until every sender is gone or the store fails for good.
pub(super) fn apply_loop(
    mut store: Store,
    rx: std_mpsc::Receiver<Proposal>,
    applier: Applier,
    alarm: &Alarm,
) {
    let mut batch: Vec<Proposal> = Vec::with_capacity(MAX_BATCH);
    loop {
        let compacting = store.meta().physical_compact_rev < store.meta().compact_rev;
        let first = if compacting {
            match rx.recv_timeout(Duration::from_millis(1)) {
                Ok(p) => Some(p),
                Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match rx.recv() {
                Ok(p) => Some(p),
                Err(_) => return,
            }
        };
        if let Some(p) = first {
            batch.push(p);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            if !apply_proposals(&mut store, &mut batch, &applier, alarm) {
                return;
            }
        }
        if compacting {
            if let Err(e) = store.compact_step(COMPACT_BUDGET) {
                tracing::error!(error = %e, "compaction failed; it will be retried");
            }
            applier.compacted(store.meta().physical_compact_rev);
        }
    }
}

/// Apply one batch and answer its proposers. Returns false after a fatal store error; a full
/// disk is not fatal (the transaction was rolled back, nothing was acknowledged): the batch is
/// refused with the NOSPACE alarm and the loop goes on.
fn apply_proposals(store: &mut Store, batch: &mut Vec<Proposal>, applier: &Applier, alarm: &Alarm) -> bool {
    let start = store.meta().applied_index;
    let cmds: Vec<(LogPosition, &Command)> = batch
        .iter()
        .zip(1u64..)
        .map(|(p, i)| {
            (
                LogPosition {
                    index: start + i,
                    term: 1,
                },
                &p.cmd,
            )
        })
        .collect();
    let started = Instant::now();
    let applied = store.apply_batch(&cmds);
    // One SQLite transaction, committed with synchronous=FULL: its commit is the WAL fsync and
    // the backend commit at once (a standalone node has no separate log).
    let took = started.elapsed();
    crate::metrics::etcd::ETCD.wal_fsync.observe(took);
    crate::metrics::etcd::ETCD.backend_commit.observe(took);
    match applied {
        Ok((outputs, events)) => {
            let mut leases = LeaseChanges::default();
            for (p, out) in batch.iter().zip(outputs.iter()) {
                leases.record(&p.cmd, out);
            }
            let meta = store.meta();
            applier.committed(CommittedBatch {
                applied: Some(LogPosition {
                    index: meta.applied_index,
                    term: meta.applied_term,
                }),
                revision: meta.current_rev,
                compact_rev: meta.compact_rev,
                physical_compact_rev: meta.physical_compact_rev,
                events,
                replaced: false,
                leases,
            });
            for (p, out) in batch.drain(..).zip(outputs) {
                let _ = p.reply.send(out.map_err(NodeError::from));
            }
            true
        }
        Err(e) if e.is_disk_full() => {
            tracing::error!(error = %e, "datastore apply failed: the disk is full; writes are refused until space is freed");
            alarm.raise(NoSpaceCause::DiskFull);
            for p in batch.drain(..) {
                let _ = p.reply.send(Err(NodeError::NoSpace(NoSpaceCause::DiskFull)));
            }
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "datastore apply failed; refusing further writes");
            for p in batch.drain(..) {
                let _ = p.reply.send(Err(NodeError::Stopped));
            }
            false
        }
    }
}
