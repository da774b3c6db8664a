//! Leases live on the leader's clock (`node::Lessor`): only the leader expires them, so a
//! keep-alive or time-to-live question on a follower is asked of the leader over the `Lease`
//! RPC, and answered at once from this node's own clock when it leads.

use tokio::time::Instant;

use super::error::RaftNodeError;
use super::node::{RETRY_PAUSE, RaftNode};
use super::transport::{self, CallError, Method};
use super::wire::{LeaseReply, LeaseRequest};

impl RaftNode {
    /// Renew lease `id` on the leader's lease clock (forwarded when this node is not the
    /// leader): its TTL, or `None` if the leader does not know the lease. Only the leader
    /// expires leases, so renewing anywhere else would not keep a lease alive.
    pub async fn renew_lease(&self, id: i64) -> Result<Option<i64>, RaftNodeError> {
        match self.lease_call(LeaseRequest::Renew { id }).await? {
            LeaseReply::Renewed { ttl } => Ok(ttl),
            other => Err(RaftNodeError::Stopped(format!(
                "unexpected lease reply {other:?}"
            ))),
        }
    }

    /// Remaining seconds and granted TTL of lease `id` by the leader's clock.
    pub async fn lease_remaining(&self, id: i64) -> Result<Option<(i64, i64)>, RaftNodeError> {
        match self.lease_call(LeaseRequest::Remaining { id }).await? {
            LeaseReply::Remaining { left } => Ok(left),
            other => Err(RaftNodeError::Stopped(format!(
                "unexpected lease reply {other:?}"
            ))),
        }
    }

    /// Ask the leader's lease clock (this node's own when it leads), retrying through leader
    /// changes until `request_timeout`.
    async fn lease_call(&self, req: LeaseRequest) -> Result<LeaseReply, RaftNodeError> {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.request_timeout;
        loop {
            let st = self.status();
            match st.leader {
                Some(l) if l == inner.id => {
                    let clock = inner
                        .leases
                        .as_ref()
                        .ok_or_else(|| RaftNodeError::Config("this node keeps no lease clock".into()))?;
                    return Ok(req.answer(clock.as_ref()));
                }
                Some(l) if !inner.net.blocks(l) => {
                    if let Some(node) = st.members.get(&l)
                        && let Ok(mut c) = inner.net.client(&node.peer_addr)
                    {
                        let ttl = deadline.saturating_duration_since(Instant::now());
                        let reply: Result<LeaseReply, CallError> =
                            transport::call(&mut c, Method::Lease, &req, ttl).await;
                        match reply {
                            Ok(LeaseReply::NotLeader { .. }) | Err(_) => {}
                            Ok(answer) => return Ok(answer),
                        }
                    }
                }
                _ => {}
            }
            if Instant::now() + RETRY_PAUSE >= deadline {
                return Err(RaftNodeError::NoLeader(inner.request_timeout));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}
