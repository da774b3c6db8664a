//! What one committed apply batch did, as the rest of a node needs to know it: the store's
//! revisions after it, its events, and which leases it granted or revoked.
//!
//! Both writers of a store build one (the standalone apply thread in `node::apply` and the
//! Raft state machine) and hand it to the node's one applier (`node::applier`), so what
//! happens after a commit is written once. The datastore only describes the commit; it does
//! not know who consumes the description.

use super::error::Result;
use super::mvcc::LogPosition;
use super::types::{Command, CommandOutput, Event};

/// One change a committed command made to the leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseChange {
    /// A lease was granted with this TTL in seconds.
    Granted { id: i64, ttl: i64 },
    /// A revoke command applied, whether or not the lease still existed (an unknown lease has
    /// no deadline to keep either).
    Revoked { id: i64 },
}

/// Leases a batch granted and revoked, in the order their commands applied. The order is
/// the log's: a batch may revoke a lease and grant the same ID again, and only applying the
/// changes in that order leaves the lease known, as it is in the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseChanges {
    pub in_log_order: Vec<LeaseChange>,
}

impl LeaseChanges {
    /// Record what `cmd`, applied with `result`, did to the leases. Call it only for commands
    /// applied now, in log order: a Raft duplicate was applied earlier and changed nothing
    /// this time.
    pub fn record(&mut self, cmd: &Command, result: &Result<CommandOutput>) {
        match (cmd, result) {
            (_, Ok(CommandOutput::LeaseGrant { id, ttl, .. })) => {
                self.in_log_order
                    .push(LeaseChange::Granted { id: *id, ttl: *ttl });
            }
            (Command::LeaseRevoke { id }, _) => self.in_log_order.push(LeaseChange::Revoked { id: *id }),
            _ => {}
        }
    }
}

/// One committed batch.
#[derive(Debug, Clone, Default)]
pub struct CommittedBatch {
    /// The last log position the batch covers (`None`: a snapshot of an empty log).
    pub applied: Option<LogPosition>,
    /// Store revision after the batch.
    pub revision: i64,
    /// Compaction revision after the batch.
    pub compact_rev: i64,
    /// How far physical compaction had got after the batch.
    pub physical_compact_rev: i64,
    /// Events in revision order; empty when `replaced`.
    pub events: Vec<Event>,
    /// The whole database was replaced (a Raft snapshot was installed): anything derived from
    /// it must be rebuilt from the store, since the events in between are not available.
    pub replaced: bool,
    pub leases: LeaseChanges,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::StoreError;

    #[test]
    fn grants_and_revokes_are_recorded_whatever_the_revoke_found() {
        let mut l = LeaseChanges::default();
        l.record(
            &Command::LeaseGrant { id: 0, ttl: 5 },
            &Ok(CommandOutput::LeaseGrant {
                revision: 1,
                id: 7,
                ttl: 5,
            }),
        );
        l.record(
            &Command::LeaseRevoke { id: 8 },
            &Err(StoreError::LeaseNotFound(8)),
        );
        l.record(
            &Command::LeaseRevoke { id: 7 },
            &Ok(CommandOutput::LeaseRevoke { revision: 2 }),
        );
        l.record(
            &Command::Compact { revision: 1 },
            &Ok(CommandOutput::Compact { revision: 1 }),
        );
        assert_eq!(
            l.in_log_order,
            vec![
                LeaseChange::Granted { id: 7, ttl: 5 },
                LeaseChange::Revoked { id: 8 },
                LeaseChange::Revoked { id: 7 },
            ]
        );
    }
}
