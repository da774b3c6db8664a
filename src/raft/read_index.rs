//! Linearizable reads: a read index from the leader (this node's own, or over the `ReadIndex`
//! RPC), then a local wait until this node has applied up to it; the read itself is local.

use std::time::Duration;

use openraft::ReadPolicy;
use openraft::errors::{LinearizableReadError, RaftError};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::error::{RaftNodeError, stopped};
use super::node::{RETRY_PAUSE, RaftNode};
use super::transport::{self, CallError, Method};
use super::wire::ReadIndexReply;

impl RaftNode {
    /// Wait until this node's state machine reflects every write acknowledged anywhere in
    /// the cluster before the call (ReadIndex), so a local read that follows is linearizable.
    /// Returns the read index. On a follower the index comes from the leader over the peer
    /// service; the wait itself is local.
    pub async fn linearizable_barrier(&self) -> Result<u64, RaftNodeError> {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.request_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let lin = tokio::time::timeout(left, inner.raft.get_read_linearizer(ReadPolicy::ReadIndex)).await;
            let Ok(lin) = lin else {
                return Err(RaftNodeError::Timeout {
                    what: "confirming leadership for a read index",
                    after: inner.request_timeout,
                });
            };
            match lin {
                // We are the leader and a quorum just confirmed it: every write acknowledged
                // before this call is at or below `index`; wait until we have applied it.
                Ok(lin) => {
                    let index = lin.read_log_id().index();
                    return self
                        .wait_store_applied(index, left, "local apply up to the read index")
                        .await
                        .map(|()| index);
                }
                // A follower: the leader does the quorum round trip, we only wait for our own
                // apply. A failed or refused call falls through to the retry below.
                Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                    if let (Some(id), Some(node)) = (f.leader_id, f.leader_node)
                        && id != inner.id
                        && !inner.net.blocks(id)
                        && let Some(index) = self.remote_read_index(&node.peer_addr, left).await
                    {
                        let left = deadline.saturating_duration_since(Instant::now());
                        return self
                            .wait_store_applied(index, left, "local apply up to the read index")
                            .await
                            .map(|()| index);
                    }
                }
                Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_))) => {}
                Err(e) => return Err(stopped(e)),
            }
            if Instant::now() + RETRY_PAUSE >= deadline {
                return Err(RaftNodeError::NoLeader(inner.request_timeout));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Wait until the store itself holds the log up to `index`. openraft's own applied
    /// index runs ahead of it by what is queued for the apply thread (`apply_thread`).
    pub(super) async fn wait_store_applied(
        &self,
        index: u64,
        left: Duration,
        what: &'static str,
    ) -> Result<(), RaftNodeError> {
        if self.inner.apply.wait_applied(index, left).await {
            return Ok(());
        }
        if self.inner.apply.applied().failed {
            return Err(stopped("the state machine's apply thread stopped on an error"));
        }
        Err(RaftNodeError::Timeout { what, after: left })
    }

    /// A read index from the leader at `addr`, sharing one RPC among concurrent callers.
    ///
    /// Single flight: the first caller starts a driver task; callers that arrive while an RPC
    /// is in flight wait for the *next* one. An index is only valid for callers that arrived
    /// before its RPC started (the leader confirms leadership after the request reaches it),
    /// which is exactly who each group contains. `None` means no index this time: retry.
    async fn remote_read_index(&self, addr: &str, ttl: Duration) -> Option<u64> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut b = self.inner.reads.lock().unwrap_or_else(|p| p.into_inner());
            b.waiting.push(tx);
            b.addr = addr.to_string();
            !std::mem::replace(&mut b.running, true)
        };
        if start {
            let (reads, net) = (self.inner.reads.clone(), self.inner.net.clone());
            tokio::spawn(async move {
                loop {
                    let (group, addr) = {
                        let mut b = reads.lock().unwrap_or_else(|p| p.into_inner());
                        if b.waiting.is_empty() {
                            b.running = false;
                            return;
                        }
                        (std::mem::take(&mut b.waiting), b.addr.clone())
                    };
                    let index = match net.client(&addr) {
                        Ok(mut client) => {
                            let reply: Result<ReadIndexReply, CallError> =
                                transport::call(&mut client, Method::ReadIndex, &(), ttl).await;
                            match reply {
                                Ok(ReadIndexReply::Index { index }) => Some(index),
                                _ => None,
                            }
                        }
                        Err(_) => None,
                    };
                    for w in group {
                        let _ = w.send(index);
                    }
                }
            });
        }
        rx.await.ok().flatten()
    }
}

/// The group of read-index callers for the next `ReadIndex` RPC.
#[derive(Debug, Default)]
pub(super) struct ReadBatch {
    waiting: Vec<oneshot::Sender<Option<u64>>>,
    /// The leader address the latest caller saw; the next RPC goes there.
    addr: String,
    /// Whether a driver task is running (it exits when no one is waiting).
    running: bool,
}
