//! Writes: a command proposed on any member, forwarded to the leader when this node is not it,
//! answered from this node's own apply of the entry.
//!
//! ```text
//!  propose(cmd) ──▶ Request{origin, request_id, low_water} ──▶ client_write (leader)
//!                       │ ForwardToLeader?  Forward RPC ──▶ leader appends ──▶ Committed{log_id}
//!                       │                   then wait for this node's apply (Waiters)
//!                       └ leader change, lost RPC: re-send the same request; dedup applies it once
//! ```

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use openraft::errors::{ClientWriteError, RaftError};
use tokio::time::Instant;

use super::error::{RaftNodeError, stopped};
use super::node::{RETRY_PAUSE, RaftNode};
use super::stages;
use super::transport::{self, CallError, Method};
use super::types::{NodeInfo, Request, Response};
use super::wire::ForwardReply;
use crate::datastore::{Command, CommandOutput, StoreError};

impl RaftNode {
    /// Propose a command and return its outcome: the command output, or the client error it
    /// caused (a failed compare is not an error at all: it is an output with `succeeded =
    /// false`). The outer error is about Raft: no leader within the deadline, a stopped node,
    /// or an outcome still unknown at the deadline.
    ///
    /// On a follower the proposal is forwarded to the leader, which appends it; the outcome is
    /// then taken from this node's own apply of the entry, so the caller's next local read
    /// already sees its write. Through leader changes the same request (same request id) is
    /// re-sent until `request_timeout`; the state machine's dedup table applies it at most
    /// once and answers a repeat with the first outcome.
    pub async fn propose(&self, cmd: Command) -> Result<Result<CommandOutput, StoreError>, RaftNodeError> {
        let inner = &self.inner;
        let request_id = inner.next_request.fetch_add(1, Ordering::Relaxed);
        // While this guard lives, `request_id` holds the low-water mark down, so the dedup row
        // of this very request can never be pruned before the last retry has been answered.
        let inflight = Inflight::new(&inner.inflight, request_id);
        let low_water = inflight.low_water();
        let request = Request {
            origin: inner.origin,
            request_id,
            low_water,
            cmd,
        };
        let deadline = Instant::now() + inner.request_timeout;
        // Set once an attempt may have been appended somewhere. From then on a retry is only
        // safe because of dedup, and a give-up must say "unknown", never "not applied".
        let mut unknown: Option<String> = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let started = std::time::Instant::now();
            let written = tokio::time::timeout(left, inner.raft.client_write(request.clone())).await;
            let Ok(written) = written else {
                // Appended here as leader but not committed in time (e.g. this leader lost its
                // quorum): the entry may still commit later.
                return Err(RaftNodeError::Ambiguous(
                    "not committed within the deadline".into(),
                ));
            };
            let leader = match written {
                Ok(resp) => {
                    stages::finished(resp.log_id.index, started);
                    return outcome(resp.data);
                }
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    f.leader_id.zip(f.leader_node)
                }
                Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(f))) => {
                    // It may still commit through the new leader; dedup makes the retry safe.
                    unknown = Some(format!("log entry discarded on leader change: {f}"));
                    f.leader_id.zip(f.leader_node)
                }
                Err(e) => return Err(stopped(e)),
            };
            if let Some((id, node)) = leader
                && id != inner.id
                && !inner.net.blocks(id)
            {
                match self.forward(&request, &node, deadline).await {
                    Ok(Some(result)) => return Ok(result),
                    Ok(None) => {}
                    Err(RaftNodeError::Ambiguous(why)) => unknown = Some(why),
                    Err(e) => return Err(e),
                }
            }
            if Instant::now() + RETRY_PAUSE >= deadline {
                return Err(match unknown {
                    Some(why) => RaftNodeError::Ambiguous(why),
                    None => RaftNodeError::NoLeader(inner.request_timeout),
                });
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Forward `request` to the leader at `node`. `Ok(None)` means it was not the leader
    /// (nothing was appended, so a retry is safe); any failure after the request may have
    /// been appended is `Ambiguous`.
    async fn forward(
        &self,
        request: &Request,
        node: &NodeInfo,
        deadline: Instant,
    ) -> Result<Option<Result<CommandOutput, StoreError>>, RaftNodeError> {
        let inner = &self.inner;
        let mut client = inner
            .net
            .client(&node.peer_addr)
            .map_err(|e| RaftNodeError::Ambiguous(e.to_string()))?;
        // Register before sending: the entry may be applied here before the reply arrives.
        let waiter = inner.waiters.register(request.request_id);
        let ttl = deadline.saturating_duration_since(Instant::now());
        let reply: Result<ForwardReply, CallError> =
            transport::call(&mut client, Method::Forward, request, ttl).await;
        match reply {
            Ok(ForwardReply::Committed { .. }) => {}
            Ok(ForwardReply::NotLeader { .. }) => {
                inner.waiters.cancel(request.request_id);
                return Ok(None);
            }
            Err(e) => {
                inner.waiters.cancel(request.request_id);
                return Err(RaftNodeError::Ambiguous(format!(
                    "forwarding to {}: {e:?}",
                    node.peer_addr
                )));
            }
        }
        // Committed on the leader; this node applies it within about a heartbeat.
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, waiter).await {
            Ok(Ok(resp)) => outcome(resp).map(Some),
            Ok(Err(_)) | Err(_) => {
                inner.waiters.cancel(request.request_id);
                Err(RaftNodeError::Ambiguous(
                    "committed, but not applied locally in time".into(),
                ))
            }
        }
    }
}

/// Marks a request id in flight for as long as the guard lives.
struct Inflight {
    set: Arc<std::sync::Mutex<BTreeSet<u64>>>,
    id: u64,
}

impl Inflight {
    fn new(set: &Arc<std::sync::Mutex<BTreeSet<u64>>>, id: u64) -> Self {
        set.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
        Inflight { set: set.clone(), id }
    }

    /// The smallest id still in flight (never above our own).
    fn low_water(&self) -> u64 {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .first()
            .copied()
            .unwrap_or(self.id)
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// A normal entry always produces `Applied` or `Rejected`; `Empty` would be a bug upstream.
fn outcome(resp: Response) -> Result<Result<CommandOutput, StoreError>, RaftNodeError> {
    match resp.into_result() {
        Ok(Some(out)) => Ok(Ok(out)),
        Ok(None) => Err(RaftNodeError::Stopped(
            "a command entry produced no output".into(),
        )),
        Err(e) => Ok(Err(e)),
    }
}
