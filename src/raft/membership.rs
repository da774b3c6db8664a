//! Membership management on the leader: the `Join` RPC, automatic promotion of learners,
//! quorum-safe removal (`Remove` RPC), and replacing a lost voter with a standby.
//!
//! ```text
//!  new node ──Join{id, info}──▶ any listed peer ──(not leader: NotLeader{leader's NodeInfo})
//!                                  │ leader
//!                                  ├─ add_learner(id, info), waiting until it has caught up
//!                                  └─ promote_if_due: learners → voters, one change at a time
//!  any node ──Remove{id, force}──▶ leader ── plan_removal(ClusterView) ──▶ one change
//!  leader, every second ── replace_lost_voters: a voter silent for voter_loss_delay
//!                          swaps places with a caught-up standby (it stays, as a learner)
//! ```
//!
//! Decisions are pure functions of a `ClusterView` (who is a voter, who the leader heard from
//! recently, how far each member has replicated) in `membership_plan.rs`, unit-tested there
//! without sockets; the async functions here only gather the view and carry out the plan.
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
//! - A voter is removed only if the new voter set still has a quorum of healthy members
//!   (unless forced), and never down to zero voters. When a caught-up standby exists it takes
//!   the removed voter's place in the same (joint) change, so the voter count stays odd.
//! - A lost voter is never deleted automatically: it is demoted to learner, so it comes back
//!   as a standby and an operator still sees it in the member list.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ChangeMembers;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use tokio::sync::Mutex;

use super::membership_plan::{
    CAUGHT_UP_LAG, ClusterView, LossTracker, RemovalPlan, plan_removal, plan_voter_replacement, target_voters,
};
use super::state_machine::Raft;
use super::types::NodeInfo;
use super::wire::{JoinReply, JoinRequest, RemoveError, RemoveOutcome, RemoveReply, RemoveRequest};

/// How long the leader waits for a new learner to catch up inside one `Join` call. The learner
/// stays added after a timeout; its next `Join` goes straight to promotion.
const CATCH_UP_WAIT: Duration = Duration::from_secs(30);

/// How often a removal that looks unsafe re-reads the leader's health view.
const HEALTH_RECHECK: Duration = Duration::from_millis(100);

/// Serialises membership changes made by this node.
pub type MembershipLock = Arc<Mutex<()>>;

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
        let added =
            tokio::time::timeout(CATCH_UP_WAIT, raft.add_learner(req.id, req.info.clone(), true)).await;
        match added {
            Ok(Ok(_)) => {}
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                return JoinReply::NotLeader {
                    leader: f.leader_node,
                };
            }
            Ok(Err(e)) => {
                return JoinReply::Retry {
                    reason: e.to_string(),
                };
            }
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

/// Timing knobs of membership decisions, taken from `RaftConfig`.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// A member the leader has not heard from (heartbeat or replication acknowledged) within
    /// this window counts as unhealthy. One maximum election timeout, as for `has_leader`.
    pub health_window: Duration,
    /// How long a voter must stay unhealthy before a standby replaces it
    /// (`RaftConfig::voter_loss_delay`).
    pub voter_loss_delay: Duration,
    /// How long one membership change (or leadership transfer) may take inside a request.
    pub change_timeout: Duration,
}

fn leader_hint(raft: &Raft) -> Option<(u64, NodeInfo)> {
    let m = raft.metrics().borrow_watched().clone();
    let l = m.current_leader?;
    m.membership_config
        .membership()
        .get_node(&l)
        .map(|n| (l, n.clone()))
}

/// Run one membership change with a deadline and translate the result into a reply.
async fn change(
    raft: &Raft,
    change: ChangeMembers<u64, NodeInfo>,
    retain: bool,
    policy: &Policy,
) -> Result<(), RemoveReply> {
    match tokio::time::timeout(policy.change_timeout, raft.change_membership(change, retain)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => Err(RemoveReply::NotLeader {
            leader: f.leader_id.zip(f.leader_node),
        }),
        Ok(Err(e)) => Err(RemoveReply::Retry {
            reason: e.to_string(),
        }),
        Err(_) => Err(RemoveReply::InFlight {
            reason: format!(
                "the membership change was proposed but not committed within {:?}; it completes once \
                 a quorum of the old and new voters is reachable",
                policy.change_timeout
            ),
        }),
    }
}

/// Leader side of `Remove` (also called directly when the caller is the leader).
pub async fn handle_remove(
    raft: &Raft,
    lock: &MembershipLock,
    policy: &Policy,
    req: RemoveRequest,
) -> RemoveReply {
    let _guard = lock.lock().await;
    let m = raft.metrics().borrow_watched().clone();
    if m.current_leader != Some(m.id) {
        return RemoveReply::NotLeader {
            leader: leader_hint(raft),
        };
    }
    if m.membership_config.membership().get_joint_config().len() > 1 {
        return RemoveReply::Retry {
            reason: "a joint configuration is still in flight".into(),
        };
    }
    let id = format!("{:016x}", req.id);
    // Health evidence is a heartbeat acknowledged within one window. A leader elected a moment
    // ago has not heard from everyone yet, so a refusal for health reasons stands only if it
    // still holds after one more window of heartbeats.
    let evidence_by = Instant::now() + policy.health_window;
    let plan = loop {
        let m = raft.metrics().borrow_watched().clone();
        if m.current_leader != Some(m.id) {
            return RemoveReply::NotLeader {
                leader: leader_hint(raft),
            };
        }
        let view = ClusterView::from_metrics(&m, policy.health_window);
        match plan_removal(&view, req.id, req.force) {
            Ok(p) => break p,
            Err(RemoveError::Unhealthy { .. } | RemoveError::NoSuccessor(_))
                if Instant::now() < evidence_by =>
            {
                tokio::time::sleep(HEALTH_RECHECK).await;
            }
            Err(e) => {
                tracing::warn!(member = %id, force = req.force, reason = %e, "member removal refused");
                return RemoveReply::Refused(e);
            }
        }
    };
    if req.dry_run {
        return RemoveReply::Allowed;
    }
    let done = match plan {
        RemovalPlan::RemoveLearner => {
            tracing::info!(member = %id, "removing a learner");
            change(
                raft,
                ChangeMembers::RemoveNodes(BTreeSet::from([req.id])),
                false,
                policy,
            )
            .await
            .map(|_| RemoveOutcome::LearnerRemoved)
        }
        RemovalPlan::TransferLeadership { to } => {
            tracing::info!(member = %id, to = %format!("{to:016x}"), "transferring leadership before removing this leader");
            if let Err(e) = raft.trigger().transfer_leader(to).await {
                return RemoveReply::Retry {
                    reason: e.to_string(),
                };
            }
            let moved = raft
                .wait(Some(policy.change_timeout))
                .metrics(
                    |m| m.current_leader.is_some_and(|l| l != m.id),
                    "leadership moved away",
                )
                .await;
            return match moved {
                Ok(_) => RemoveReply::NotLeader {
                    leader: leader_hint(raft),
                },
                Err(e) => RemoveReply::Retry {
                    reason: format!("leadership transfer to {to:016x} did not finish: {e}"),
                },
            };
        }
        RemovalPlan::Replace { standby, voters } => {
            tracing::info!(member = %id, standby = %format!("{standby:016x}"), voters = ?voters, "replacing a voter with a standby");
            change(raft, ChangeMembers::ReplaceAllVoters(voters), false, policy)
                .await
                .map(|_| RemoveOutcome::VoterReplaced { replacement: standby })
        }
        RemovalPlan::Shrink { voters } => {
            tracing::info!(member = %id, voters = ?voters, force = req.force, "removing a voter; no standby is ready, the voter set shrinks");
            change(
                raft,
                ChangeMembers::ReplaceAllVoters(voters.clone()),
                false,
                policy,
            )
            .await
            .map(|_| RemoveOutcome::VoterRemoved { voters })
        }
    };
    match done {
        Ok(outcome) => {
            tracing::info!(member = %id, outcome = ?outcome, "member removed");
            RemoveReply::Removed(outcome)
        }
        Err(reply) => reply,
    }
}

/// Swap a voter that has been unreachable for `policy.voter_loss_delay` for a caught-up
/// standby (docs/design/raft.md, "Removing members, and replacing lost voters"). The lost
/// voter is demoted to learner, not removed: when it comes back it catches up and is the next
/// standby. Leader only; skipped while another change of this node runs or a joint
/// configuration is in flight.
pub async fn replace_lost_voters(
    raft: &Raft,
    lock: &MembershipLock,
    policy: &Policy,
    tracker: &mut LossTracker,
) {
    let Ok(_guard) = lock.try_lock() else { return };
    let m = raft.metrics().borrow_watched().clone();
    if m.current_leader != Some(m.id) {
        tracker.clear();
        return;
    }
    if m.membership_config.membership().get_joint_config().len() > 1 {
        return;
    }
    let view = ClusterView::from_metrics(&m, policy.health_window);
    let lost = tracker.observe(&view, Instant::now(), policy.voter_loss_delay);
    // One change at a time: the first lost voter now, the next on a later tick.
    let Some(&lost) = lost.first() else { return };
    let lost_id = format!("{lost:016x}");
    let Some((standby, voters)) = plan_voter_replacement(&view, lost) else {
        if tracker.first_report(lost) {
            tracing::warn!(
                voter = %lost_id,
                after = ?policy.voter_loss_delay,
                "voter unreachable, but no caught-up standby can replace it while keeping a healthy quorum"
            );
        }
        return;
    };
    tracing::warn!(
        voter = %lost_id,
        standby = %format!("{standby:016x}"),
        after = ?policy.voter_loss_delay,
        "voter unreachable for longer than voter_loss_delay; promoting a standby and demoting the lost voter to learner"
    );
    match change(
        raft,
        ChangeMembers::ReplaceAllVoters(voters.clone()),
        true,
        policy,
    )
    .await
    {
        Ok(()) => {
            tracing::info!(voters = ?voters, demoted = %lost_id, "lost voter replaced by a standby");
            tracker.clear();
        }
        Err(reply) => {
            tracing::warn!(voter = %lost_id, result = ?reply, "replacing a lost voter did not finish; will retry")
        }
    }
}
