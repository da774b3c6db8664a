//! Lease keep-alives and expiry. Deadlines live in the lessor (`lessor.rs`), fed by the
//! applier on every member; only the leader expires leases, by proposing an ordinary
//! `LeaseRevoke`, so every replica deletes the same keys at the same revision.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::datastore::{Command, StoreError};

use super::{Backend, Node, NodeError};

impl Node {
    /// Renew lease `id` (a keep-alive): its TTL, or `None` if the lease is unknown or expired.
    /// A Raft follower asks the leader, whose lessor is the one that expires leases; renewing
    /// the local lessor alone would let the lease expire on the leader (etcd forwards
    /// keep-alives to its leader the same way).
    pub async fn lease_renew(&self, id: i64) -> Result<Option<i64>, NodeError> {
        match &self.inner.backend {
            Backend::Raft(raft) => Ok(raft.renew_lease(id).await?),
            Backend::Local { .. } => Ok(self.inner.applier.lessor.renew(id, Instant::now())),
        }
    }

    /// Remaining whole seconds and granted TTL of lease `id`, by the leader's lessor.
    pub async fn lease_remaining(&self, id: i64) -> Result<Option<(i64, i64)>, NodeError> {
        match &self.inner.backend {
            Backend::Raft(raft) => Ok(raft.lease_remaining(id).await?),
            Backend::Local { .. } => Ok(self.inner.applier.lessor.remaining(id, Instant::now())),
        }
    }

    /// Every 250 ms, on the leader, propose the revocation of every lease past its deadline.
    pub(super) fn spawn_expiry(&self) {
        let node = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let mut was_leader = true;
            loop {
                tick.tick().await;
                if Arc::strong_count(&node.inner) == 1 {
                    return; // every other handle is gone
                }
                // Only the leader expires leases. A node that just became leader gives every
                // lease a full TTL, so a failover never expires a lease early.
                let leader = node.is_leader();
                if leader
                    && !was_leader
                    && let Ok(leases) = node.read(|r| r.leases()).await
                {
                    node.inner.applier.lessor.reset(&leases, Instant::now());
                }
                was_leader = leader;
                if !leader {
                    continue;
                }
                for id in node.inner.applier.lessor.take_expired(Instant::now()) {
                    match node.propose(Command::LeaseRevoke { id }).await {
                        Ok(_) | Err(NodeError::Store(StoreError::LeaseNotFound(_))) => {}
                        Err(NodeError::Stopped) => return,
                        Err(e) => {
                            tracing::warn!(lease = id, error = %e, "lease expiry failed; retrying");
                            node.inner.applier.lessor.retry_later(id, Instant::now());
                        }
                    }
                }
            }
        });
    }
}
