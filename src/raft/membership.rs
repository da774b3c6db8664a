//! Forming a cluster from a list of peers: the `Join` RPC and automatic promotion of learners.
//!
//! ```text
//!  new node ──Join{id, info}──▶ any listed peer ──(not leader: NotLeader{leader's NodeInfo})
//!                                  │ leader
//!                                  ├─ add_learner(id, info), waiting until it has caught up
//!                                  └─ promote_if_due: learners → voters, one change at a time
//! ```
//!
//! Invariants:
//! - A node's id is its own random id (`raft/node-id`); a `Join` never assigns one, and a
//!   second node claiming an existing member's peer address under another id is refused (it is
//!   almost always a wiped data directory, which must not silently become a second member).
//! - Joining is idempotent: a node that is already a member is answered `Member` at once, so
//!   a joiner that crashed between being added and hearing the reply just asks again.
//! - Voters are kept at an odd number, at most `MAX_VOTERS`: with 1 voter and 1 learner
//!   nothing is promoted; when a second learner has caught up both become voters in one joint
//!   change (1 → 3). Further nodes stay standby learners.
//! - One membership change at a time: every change made here holds `MembershipLock`, and
//!   nothing is promoted while a joint configuration is still in flight.
//! - Voters are never removed here. Replacing a lost voter with a standby is later work
//!   (issue 3 item 10).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::ChangeMembers;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::network::Raft;
use super::types::NodeInfo;

/// Most voters automatic promotion creates (issue 3: 3, later 5 when there are enough nodes).
pub const MAX_VOTERS: usize = 3;
/// A learner within this many entries of the leader's log counts as caught up.
const CAUGHT_UP_LAG: u64 = 100;
/// How long the leader waits for a new learner to catch up inside one `Join` call. The learner
/// stays added after a timeout; its next `Join` goes straight to promotion.
const CATCH_UP_WAIT: Duration = Duration::from_secs(30);

/// Serialises membership changes made by this node.
pub type MembershipLock = Arc<Mutex<()>>;

/// `Join` request: add the caller under its own id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub id: u64,
    pub info: NodeInfo,
    /// Only ask whether the receiver belongs to a cluster (`InCluster` / `NotInCluster`);
    /// change nothing. A first member asks this before it bootstraps.
    #[serde(default)]
    pub probe: bool,
}

/// `Join` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum JoinReply {
    /// The caller is a member (a voter, or a learner that will be promoted when due).
    Member { voter: bool },
    /// Ask the leader instead; `None` when this node does not know one yet.
    NotLeader { leader: Option<NodeInfo> },
    /// Transient (a change in flight, catch-up still running, leadership lost): ask again.
    Retry { reason: String },
    /// Never going to work as asked; the joiner must stop.
    Refused { reason: String },
    /// The receiver has never belonged to a cluster (it is waiting to bootstrap or join).
    NotInCluster,
    /// Answer to a probe: the receiver belongs to a cluster.
    InCluster,
}

/// The number of voters wanted for `members` nodes: the largest odd number not above
/// `min(members, MAX_VOTERS)`.
pub fn target_voters(members: usize) -> usize {
    let n = members.min(MAX_VOTERS);
    if n.is_multiple_of(2) { n.saturating_sub(1) } else { n }
}

/// Leader side of `Join`.
pub async fn handle_join(raft: &Raft, lock: &MembershipLock, req: JoinRequest) -> JoinReply {
    let _guard = lock.lock().await;
    let m = raft.metrics().borrow_watched().clone();
    let cfg = m.membership_config.membership();
    // No voters: this node has neither bootstrapped nor been added anywhere yet.
    if cfg.voter_ids().next().is_none() {
        return JoinReply::NotInCluster;
    }
    if req.probe {
        return JoinReply::InCluster;
    }
    if m.current_leader != Some(m.id) {
        let leader = m.current_leader.and_then(|l| cfg.get_node(&l).cloned());
        return JoinReply::NotLeader { leader };
    }
    if let Some((other, _)) = cfg
        .nodes()
        .find(|(id, n)| **id != req.id && n.peer_addr == req.info.peer_addr)
    {
        return JoinReply::Refused {
            reason: format!(
                "peer address {} already belongs to member {other:016x}; remove that member first",
                req.info.peer_addr
            ),
        };
    }
    if cfg.get_node(&req.id).is_none() {
        let added = tokio::time::timeout(CATCH_UP_WAIT, raft.add_learner(req.id, req.info.clone(), true)).await;
        match added {
            Ok(Ok(_)) => {}
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                return JoinReply::NotLeader { leader: f.leader_node };
            }
            Ok(Err(e)) => return JoinReply::Retry { reason: e.to_string() },
            Err(_) => {
                return JoinReply::Retry {
                    reason: "added as a learner; still catching up".into(),
                };
            }
        }
        tracing::info!(id = %format!("{:016x}", req.id), name = %req.info.name, "added a learner");
    }
    if let Err(reason) = promote_locked(raft).await {
        return JoinReply::Retry { reason };
    }
    let voter = raft
        .metrics()
        .borrow_watched()
        .membership_config
        .membership()
        .voter_ids()
        .any(|v| v == req.id);
    JoinReply::Member { voter }
}

/// Promote caught-up learners if there are fewer voters than `target_voters` and this node is
/// the leader. Does nothing while another change of this node is in progress.
pub async fn promote_if_due(raft: &Raft, lock: &MembershipLock) {
    let Ok(_guard) = lock.try_lock() else { return };
    if let Err(e) = promote_locked(raft).await {
        tracing::debug!(error = %e, "learner promotion deferred");
    }
}

/// `promote_if_due` with the lock held. `Err` is a reason to try again later.
async fn promote_locked(raft: &Raft) -> Result<(), String> {
    let m = raft.metrics().borrow_watched().clone();
    if m.current_leader != Some(m.id) {
        return Ok(());
    }
    let cfg = m.membership_config.membership();
    if cfg.get_joint_config().len() > 1 {
        return Err("a joint configuration is still in flight".into());
    }
    let voters: BTreeSet<u64> = cfg.voter_ids().collect();
    let learners: Vec<u64> = cfg.learner_ids().collect();
    let target = target_voters(voters.len() + learners.len());
    if voters.len() >= target {
        return Ok(());
    }
    let last = m.last_log_index.unwrap_or(0);
    let replication = m.replication.clone().unwrap_or_default();
    let mut ready: Vec<(u64, u64)> = learners
        .iter()
        .filter_map(|id| {
            let matched = replication.get(id).copied().flatten().map(|l| l.index)?;
            (matched + CAUGHT_UP_LAG >= last).then_some((*id, matched))
        })
        .collect();
    // Only promote when the result is odd again: never leave the cluster with 2 voters.
    let need = target - voters.len();
    if ready.len() < need {
        return Err(format!("{} of {need} learners caught up", ready.len()));
    }
    // The most caught-up learners first; ties by id, so every attempt picks the same ones.
    ready.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let add: BTreeSet<u64> = ready.into_iter().take(need).map(|(id, _)| id).collect();
    tracing::info!(voters = ?voters, add = ?add, "promoting learners to voters");
    raft.change_membership(ChangeMembers::AddVoterIds(add), true)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::target_voters;

    #[test]
    fn voters_stay_odd_and_at_most_three() {
        let got: Vec<usize> = (1..=6).map(target_voters).collect();
        assert_eq!(got, vec![1, 1, 3, 3, 3, 3]);
    }
}
