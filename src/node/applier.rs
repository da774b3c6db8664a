//! The applier: what happens on a node after a batch is committed to its store, for both
//! writers (the standalone apply thread, `apply.rs`, and the Raft state machine through its
//! apply hook).
//!
//! ```text
//!  apply thread ──┐                       ┌─▶ meta (revision, compaction, applied position)
//!                 ├─▶ Applier::committed ─┼─▶ lessor (deadlines of granted / revoked leases)
//!  Raft apply hook┘   (after the commit)  └─▶ watch hub (events, or a resync after a snapshot)
//! ```
//!
//! The order is fixed: the node's metadata first, so a revision a watcher sees is never ahead
//! of the node's headers; the lessor next; the watch hub last. Every member records lease
//! grants and revokes, a follower too: only the leader expires leases (`leases.rs`), but a
//! follower that becomes leader must already know every lease (and restarts each deadline at
//! its full TTL then).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::datastore::{CommittedBatch, Meta, Reader};

use super::hub::{EventBatch, WatchHub};
use super::lessor::Lessor;

/// The node's state derived from its store's commits. Cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct Applier {
    pub(super) hub: Arc<WatchHub>,
    pub(super) lessor: Arc<Lessor>,
    pub(super) meta: Arc<Mutex<Meta>>,
    /// The store, read again when a snapshot replaced it.
    db_path: PathBuf,
}

impl Applier {
    /// An applier whose hub starts after `meta.current_rev`.
    pub(super) fn new(db_path: PathBuf, meta: Meta) -> Applier {
        Applier {
            hub: Arc::new(WatchHub::new(meta.current_rev)),
            lessor: Arc::new(Lessor::default()),
            meta: Arc::new(Mutex::new(meta)),
            db_path,
        }
    }

    /// Everything a committed batch changes outside the store. Must not block: the Raft
    /// apply task and the standalone apply thread call it.
    pub(super) fn committed(&self, b: CommittedBatch) {
        {
            let mut m = self.meta.lock().unwrap_or_else(|p| p.into_inner());
            m.current_rev = b.revision;
            m.compact_rev = b.compact_rev;
            m.physical_compact_rev = b.physical_compact_rev;
            if let Some(pos) = b.applied {
                m.applied_index = pos.index;
                m.applied_term = pos.term;
            }
        }
        let now = Instant::now();
        // Grants before revokes, as both writers did before they shared this.
        for &(id, ttl) in &b.leases.granted {
            self.lessor.granted(id, ttl, now);
        }
        for id in &b.leases.revoked {
            self.lessor.revoked(*id);
        }
        if b.replaced {
            // History arrived without events: every watch stream catches up from SQLite, and
            // the lessor learns the snapshot's leases, each with a full TTL.
            self.hub.publish(EventBatch {
                revision: b.revision,
                events: Vec::new(),
                resync: true,
            });
            if let Ok(leases) = Reader::open(&self.db_path).and_then(|mut r| r.leases()) {
                self.lessor.reset(&leases, now);
            }
        } else if !b.events.is_empty() {
            self.hub.publish(EventBatch {
                revision: b.revision,
                events: b.events,
                resync: false,
            });
        }
    }

    /// Physical compaction moved on between batches (the standalone apply thread compacts
    /// there; a Raft member reports it with its batches).
    pub(super) fn compacted(&self, physical_compact_rev: i64) {
        self.meta
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .physical_compact_rev = physical_compact_rev;
    }

    /// A Raft member has replayed what it applied before and caught up with its cluster: take
    /// its ids, the store's revisions (never going back from what a batch already reported),
    /// and its leases, each with a full TTL; watchers subscribing from now on start after
    /// `current_rev`.
    pub(super) fn caught_up(
        &self,
        member_id: u64,
        cluster_id: u64,
        (current_rev, compact_rev): (i64, i64),
        leases: &[(i64, i64)],
    ) {
        self.lessor.reset(leases, Instant::now());
        {
            let mut m = self.meta.lock().unwrap_or_else(|p| p.into_inner());
            m.member_id = member_id;
            m.cluster_id = cluster_id;
            m.current_rev = m.current_rev.max(current_rev);
            m.compact_rev = m.compact_rev.max(compact_rev);
        }
        self.hub.advance_to(current_rev);
    }

    /// The node's metadata now.
    pub(super) fn meta(&self) -> Meta {
        *self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }
}
