//! Membership and status: joining a cluster, removing members (routed to the leader), the
//! manual changes the in-process tests drive, and a point-in-time view of this node's Raft state.
//! The leader's side of joins and removals is `membership.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use tokio::time::Instant;

use super::error::{RaftNodeError, membership_err, stopped};
use super::membership;
use super::node::{RETRY_PAUSE, RaftNode};
use super::transport::{self, CallError, Method};
use super::types::NodeInfo;
use super::wire::{JoinReply, JoinRequest, RemoveOutcome, RemoveReply, RemoveRequest};

/// A point-in-time view of this node's Raft state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftStatus {
    pub id: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub state: ServerState,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub voters: BTreeSet<u64>,
    pub learners: BTreeSet<u64>,
    /// Every member (voter or learner) and where it says it can be reached.
    pub members: BTreeMap<u64, NodeInfo>,
}

/// One member of the cluster, as an operator lists them (e.g. to map a name to the id that
/// `remove_member` takes). Names are labels and need not be unique; ids are identities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub info: NodeInfo,
    /// A voter; otherwise a learner (a standby, or one still catching up).
    pub voter: bool,
}

impl RaftStatus {
    /// Every member, in id order.
    pub fn member_list(&self) -> Vec<Member> {
        self.members
            .iter()
            .map(|(id, info)| Member {
                id: *id,
                info: info.clone(),
                voter: self.voters.contains(id),
            })
            .collect()
    }
}

impl RaftNode {
    /// Leader, term, log and apply positions, membership.
    pub fn status(&self) -> RaftStatus {
        let m = self.inner.raft.metrics().borrow_watched().clone();
        let cfg = m.membership_config.membership();
        RaftStatus {
            id: m.id,
            leader: m.current_leader,
            term: m.current_term,
            state: m.state,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            voters: cfg.voter_ids().collect(),
            learners: cfg.learner_ids().collect(),
            members: cfg.nodes().map(|(id, n)| (*id, n.clone())).collect(),
        }
    }

    /// Add a node as a non-voting learner and wait until it has caught up (leader only).
    pub async fn add_learner(&self, id: u64, info: NodeInfo) -> Result<(), RaftNodeError> {
        self.inner
            .raft
            .add_learner(id, info, true)
            .await
            .map(|_| ())
            .map_err(membership_err)
    }

    /// Replace the voter set (leader only). Every id must already be a member (learner or
    /// voter). openraft goes through a joint configuration; one change at a time.
    pub async fn change_membership(&self, voters: BTreeSet<u64>) -> Result<(), RaftNodeError> {
        self.inner
            .raft
            .change_membership(voters, false)
            .await
            .map(|_| ())
            .map_err(membership_err)
    }

    /// Ask the leader (this node) to hand leadership to `to`, e.g. on graceful shutdown.
    pub async fn transfer_leader(&self, to: u64) -> Result<(), RaftNodeError> {
        self.inner
            .raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(stopped)
    }

    /// Remove member `id` from the cluster. Callable on any member: a follower forwards the
    /// request to the leader over the peer service (mTLS), following leader hints.
    ///
    /// A learner is removed at once. A voter is replaced by a caught-up standby learner when
    /// one exists (the voter count stays the same, in one joint change); otherwise the voter
    /// set shrinks. Refused with `RemoveError::Unhealthy` when the new voter set would not
    /// have a quorum of members the leader heard from within an election timeout (`force`
    /// skips this check), and with `LastVoter` when no voter would remain (even with `force`).
    /// Removing the leader first hands leadership to another voter, which then removes it.
    ///
    /// The removed node is not stopped; the caller shuts it down. A forced change whose new
    /// quorum is unreachable stays in flight after the `Timeout` error and completes when
    /// enough members are back.
    pub async fn remove_member(&self, id: u64, force: bool) -> Result<RemoveOutcome, RaftNodeError> {
        match self.remove_request(id, force, false).await? {
            Some(outcome) => Ok(outcome),
            // Only a dry run is answered `Allowed`; a leader that did not remove must say why.
            None => Err(RaftNodeError::Membership(
                "the leader answered a removal as if it were a dry run".into(),
            )),
        }
    }

    /// Ask the leader whether removing member `id` without `force` would go ahead now, by the
    /// same rules as [`Self::remove_member`], changing nothing: `Ok` if it would, the refusal
    /// (`RemoveError::Unhealthy`, `LastVoter`, ...) otherwise. Used before anything else is
    /// undone, so a refused `leave` or `reset` leaves the node as it was.
    pub async fn check_removal(&self, id: u64) -> Result<(), RaftNodeError> {
        self.remove_request(id, false, true).await.map(|_| ())
    }

    /// One `Remove` request, routed to the leader; `None` for an allowed dry run.
    async fn remove_request(
        &self,
        id: u64,
        force: bool,
        dry_run: bool,
    ) -> Result<Option<RemoveOutcome>, RaftNodeError> {
        let inner = &self.inner;
        let req = RemoveRequest { id, force, dry_run };
        // A leader transfer plus a joint change can take two request timeouts.
        let deadline = Instant::now() + inner.request_timeout * 3;
        let mut hint: Option<(u64, NodeInfo)> = None;
        let mut last = String::from("no leader");
        loop {
            let st = self.status();
            let target = hint
                .take()
                .or_else(|| st.leader.and_then(|l| st.members.get(&l).map(|n| (l, n.clone()))));
            let reply = match target {
                Some((l, _)) if l == inner.id => Some(
                    membership::handle_remove(&inner.raft, &inner.membership, &inner.policy, req.clone())
                        .await,
                ),
                Some((l, node)) if !inner.net.blocks(l) => {
                    let ttl = deadline.saturating_duration_since(Instant::now());
                    match inner.net.client(&node.peer_addr) {
                        Ok(mut c) => match transport::call(&mut c, Method::Remove, &req, ttl).await {
                            Ok(reply) => Some(reply),
                            Err(e) => {
                                last = format!("{}: {e:?}", node.peer_addr);
                                None
                            }
                        },
                        Err(e) => {
                            last = format!("{}: {e}", node.peer_addr);
                            None
                        }
                    }
                }
                _ => None,
            };
            match reply {
                Some(RemoveReply::Removed(outcome)) => return Ok(Some(outcome)),
                Some(RemoveReply::Allowed) => return Ok(None),
                Some(RemoveReply::Refused(e)) => return Err(e.into()),
                Some(RemoveReply::InFlight { reason }) => {
                    return Err(RaftNodeError::Membership(reason));
                }
                Some(RemoveReply::NotLeader { leader }) => {
                    last = "asked a node that is not the leader".into();
                    hint = leader;
                }
                Some(RemoveReply::Retry { reason }) => last = reason,
                None => {}
            }
            if Instant::now() + RETRY_PAUSE >= deadline {
                tracing::warn!(member = %format!("{id:016x}"), reason = %last, "member removal gave up");
                return Err(RaftNodeError::Timeout {
                    what: "member removal",
                    after: inner.request_timeout * 3,
                });
            }
            tokio::time::sleep(if hint.is_some() {
                RETRY_PAUSE / 2
            } else {
                RETRY_PAUSE
            })
            .await;
        }
    }

    /// Ask the peers at `seeds` (`host:port` of their peer services) to add this node under
    /// its own id, following leader hints, until it is a member or `timeout` passes. Safe to
    /// repeat: a member is told so at once.
    pub async fn join(&self, seeds: &[String], timeout: Duration) -> Result<(), RaftNodeError> {
        let inner = &self.inner;
        if seeds.is_empty() {
            return Err(RaftNodeError::Join("no peers to ask".into()));
        }
        let req = JoinRequest {
            id: inner.id,
            info: inner.info.clone(),
            probe: false,
        };
        let deadline = Instant::now() + timeout;
        let mut hint: Option<String> = None;
        let mut next = 0usize;
        loop {
            let addr = hint.take().unwrap_or_else(|| {
                next += 1;
                seeds[(next - 1) % seeds.len()].clone()
            });
            // The leader may wait for this node to catch up before answering.
            let ttl = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(40));
            let reply: Result<JoinReply, String> = match inner.net.client(&addr) {
                Ok(mut c) => transport::call(&mut c, Method::Join, &req, ttl)
                    .await
                    .map_err(|e| format!("{e:?}")),
                Err(e) => Err(e.to_string()),
            };
            let last = match reply {
                Ok(JoinReply::Member { voter }) => {
                    tracing::info!(via = %addr, voter, "joined the cluster");
                    return Ok(());
                }
                Ok(JoinReply::Refused { reason }) => return Err(RaftNodeError::Join(reason)),
                Ok(JoinReply::NotLeader { leader }) => {
                    hint = leader
                        .map(|n| n.peer_addr)
                        .filter(|a| *a != addr && *a != inner.info.peer_addr);
                    format!("{addr} is not the leader")
                }
                Ok(JoinReply::Retry { reason }) => format!("{addr}: {reason}"),
                Ok(JoinReply::NotInCluster | JoinReply::InCluster) => {
                    format!("{addr} is not in a cluster yet")
                }
                Err(e) => format!("{addr}: {e}"),
            };
            if Instant::now() >= deadline {
                return Err(RaftNodeError::Join(last));
            }
            tracing::debug!(reason = %last, "join not done yet; retrying");
            tokio::time::sleep(Duration::from_millis(if hint.is_some() { 50 } else { 500 })).await;
        }
    }

    /// Whether any of the peers at `seeds` already belongs to a cluster (one quick probe each;
    /// unreachable peers count as no). A first member asks before it bootstraps, so that one
    /// restarted with a wiped data dir joins the running cluster (where a duplicate peer
    /// address is refused) instead of founding a second one next to it.
    pub async fn cluster_exists(&self, seeds: &[String]) -> bool {
        let inner = &self.inner;
        let req = JoinRequest {
            id: inner.id,
            info: inner.info.clone(),
            probe: true,
        };
        for addr in seeds {
            let Ok(mut c) = inner.net.client(addr) else {
                continue;
            };
            let reply: Result<JoinReply, CallError> =
                transport::call(&mut c, Method::Join, &req, Duration::from_secs(2)).await;
            if let Ok(JoinReply::InCluster | JoinReply::NotLeader { .. } | JoinReply::Member { .. }) = reply {
                tracing::info!(peer = %addr, "a cluster already exists; joining it instead of bootstrapping");
                return true;
            }
        }
        false
    }
}
