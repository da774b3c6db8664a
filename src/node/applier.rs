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

use crate::datastore::{CommittedBatch, LeaseChange, Meta, Reader};

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
        // In log order: a batch that revokes a lease and grants its ID again must leave it
        // known, as the store does.
        for change in &b.leases.in_log_order {
            match *change {
                LeaseChange::Granted { id, ttl } => self.lessor.granted(id, ttl, now),
                LeaseChange::Revoked { id } => self.lessor.revoked(id),
            }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::datastore::{Command, CommandOutput, LeaseChanges, StoreError};

    fn applier() -> Applier {
        let meta = Meta {
            current_rev: 1,
            compact_rev: 0,
            physical_compact_rev: 0,
            applied_index: 0,
            applied_term: 0,
            member_id: 1,
            cluster_id: 1,
        };
        Applier::new(PathBuf::from("/nonexistent/state.db"), meta)
    }

    /// What the writers record for a grant of `id` that applied.
    fn grant(l: &mut LeaseChanges, id: i64, ttl: i64) {
        l.record(
            &Command::LeaseGrant { id, ttl },
            &Ok(CommandOutput::LeaseGrant { revision: 1, id, ttl }),
        );
    }

    fn revoke(l: &mut LeaseChanges, id: i64, found: bool) {
        let out = if found {
            Ok(CommandOutput::LeaseRevoke { revision: 1 })
        } else {
            Err(StoreError::LeaseNotFound(id))
        };
        l.record(&Command::LeaseRevoke { id }, &out);
    }

    fn batch(leases: LeaseChanges) -> CommittedBatch {
        CommittedBatch {
            revision: 1,
            leases,
            ..Default::default()
        }
    }

    /// A batch that revokes lease 7 and then grants it again (a client revoking and granting
    /// the same ID quickly enough for both to commit together) leaves lease 7 in the store,
    /// so the lessor must keep it with its new TTL and expire it when that runs out. Applying
    /// grants before revokes forgot it: it never expired and keep-alives found no lease.
    #[test]
    fn a_revoke_then_a_grant_of_one_lease_in_one_batch_keeps_the_lease() {
        let a = applier();
        let mut first = LeaseChanges::default();
        grant(&mut first, 7, 30);
        a.committed(batch(first));

        let mut l = LeaseChanges::default();
        revoke(&mut l, 7, true);
        grant(&mut l, 7, 5);
        a.committed(batch(l));
        let now = Instant::now();
        assert_eq!(
            a.lessor.remaining(7, now),
            Some((5, 5)),
            "lease 7 with its new TTL"
        );
        assert!(a.lessor.take_expired(now + Duration::from_secs(4)).is_empty());
        assert_eq!(a.lessor.take_expired(now + Duration::from_secs(6)), vec![7]);
    }

    /// The reverse order within one batch (grant, then revoke) leaves no lease, and neither
    /// does a revoke of an unknown lease followed by nothing.
    #[test]
    fn a_grant_then_a_revoke_of_one_lease_in_one_batch_leaves_none() {
        let a = applier();
        let mut l = LeaseChanges::default();
        grant(&mut l, 7, 5);
        revoke(&mut l, 7, true);
        revoke(&mut l, 8, false);
        a.committed(batch(l));
        let now = Instant::now();
        assert_eq!(a.lessor.remaining(7, now), None);
        assert_eq!(a.lessor.remaining(8, now), None);
        assert!(a.lessor.take_expired(now + Duration::from_secs(60)).is_empty());
    }
}
