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
//! recently, how far each member has replicated), unit-tested below without sockets; the async
//! functions only gather the view and carry out the plan.
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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ChangeMembers;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::network::Raft;
use super::types::{NodeInfo, TypeConfig};

/// Most voters automatic promotion creates: 3 for 3–4 members, 5 once there are 5. Five
/// voters survive two lost nodes; more would only slow every commit.
pub const MAX_VOTERS: usize = 5;
/// A learner within this many entries of the leader's log counts as caught up.
const CAUGHT_UP_LAG: u64 = 100;
/// How long the leader waits for a new learner to catch up inside one `Join` call. The learner
/// stays added after a timeout; its next `Join` goes straight to promotion.
const CATCH_UP_WAIT: Duration = Duration::from_secs(30);

/// How often a removal that looks unsafe re-reads the leader's health view.
const HEALTH_RECHECK: Duration = Duration::from_millis(100);

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
    if n.is_multiple_of(2) {
        n.saturating_sub(1)
    } else {
        n
    }
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

/// What the leader knows about the members when it plans a change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub leader: u64,
    pub voters: BTreeSet<u64>,
    pub learners: BTreeSet<u64>,
    /// Members that acknowledged the leader within the health window; the leader itself always.
    pub healthy: BTreeSet<u64>,
    /// The last log index each member is known to hold (leader's replication progress).
    pub matched: BTreeMap<u64, u64>,
    /// The leader's last log index.
    pub last_index: u64,
}

impl ClusterView {
    /// The view from the leader's metrics. Only meaningful on the leader: followers have no
    /// replication or heartbeat metrics, so every peer would look unhealthy.
    pub fn from_metrics(m: &openraft::RaftMetrics<TypeConfig>, health_window: Duration) -> Self {
        let cfg = m.membership_config.membership();
        let mut healthy: BTreeSet<u64> = m
            .heartbeat
            .iter()
            .flatten()
            .filter_map(|(id, t)| {
                let t = t.as_ref()?;
                (openraft::Instant::elapsed(&**t) < health_window).then_some(*id)
            })
            .collect();
        healthy.insert(m.id);
        let matched = m
            .replication
            .iter()
            .flatten()
            .filter_map(|(id, l)| Some((*id, l.as_ref()?.index)))
            .collect();
        ClusterView {
            leader: m.id,
            voters: cfg.voter_ids().collect(),
            learners: cfg.learner_ids().collect(),
            healthy,
            matched,
            last_index: m.last_log_index.unwrap_or(0),
        }
    }

    fn caught_up(&self, id: u64) -> bool {
        self.matched
            .get(&id)
            .is_some_and(|m| m + CAUGHT_UP_LAG >= self.last_index)
    }

    /// The standby best placed to become a voter: a healthy, caught-up learner, the most
    /// caught-up first, ties by id so every attempt picks the same one.
    pub fn standby(&self) -> Option<u64> {
        self.learners
            .iter()
            .copied()
            .filter(|id| self.healthy.contains(id) && self.caught_up(*id))
            .max_by(|a, b| self.matched[a].cmp(&self.matched[b]).then(b.cmp(a)))
    }

    /// `(healthy, quorum)` of a voter set.
    fn health_of(&self, voters: &BTreeSet<u64>) -> (usize, usize) {
        let healthy = voters.iter().filter(|v| self.healthy.contains(v)).count();
        (healthy, voters.len() / 2 + 1)
    }
}

/// How the leader carries out a removal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemovalPlan {
    /// The member is a learner: drop it, no quorum involved.
    RemoveLearner,
    /// The member to remove is this leader: hand leadership to `to` (a voter that stays)
    /// first; the new leader then plans the removal again.
    TransferLeadership { to: u64 },
    /// The caught-up `standby` takes the removed voter's place: `voters` is the new set.
    Replace { standby: u64, voters: BTreeSet<u64> },
    /// No standby is ready; the voter set shrinks to `voters`.
    Shrink { voters: BTreeSet<u64> },
}

/// Why a removal is refused. Crosses the wire in `RemoveReply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RemoveError {
    #[error("no member with id {0:016x}; list the members and use one of their ids")]
    UnknownMember(u64),
    #[error("member {0:016x} is the last voter; removing it would leave the cluster without voters")]
    LastVoter(u64),
    #[error(
        "removing member {id:016x} would leave {healthy} healthy of {voters} voters, short of a quorum of \
         {quorum}; bring the unreachable members back, or pass --force to skip this health check"
    )]
    Unhealthy {
        id: u64,
        healthy: usize,
        voters: usize,
        quorum: usize,
    },
    #[error(
        "member {0:016x} is the leader and no other healthy voter can take over; bring a voter back, \
         or remove another member first"
    )]
    NoSuccessor(u64),
}

/// Decide how to remove `id` (pure; the leader's `handle_remove` carries it out).
///
/// Rules, in order: unknown ids are refused; a learner is dropped; the last voter is never
/// removed (not even with `force`); a voter is replaced by a caught-up standby when there is
/// one, else the voter set shrinks; the new voter set must have a quorum of healthy members
/// unless `force`; the leader hands over leadership before it is removed.
pub fn plan_removal(view: &ClusterView, id: u64, force: bool) -> Result<RemovalPlan, RemoveError> {
    if view.learners.contains(&id) {
        return Ok(RemovalPlan::RemoveLearner);
    }
    if !view.voters.contains(&id) {
        return Err(RemoveError::UnknownMember(id));
    }
    let mut voters = view.voters.clone();
    voters.remove(&id);
    if voters.is_empty() {
        return Err(RemoveError::LastVoter(id));
    }
    let standby = view.standby();
    if let Some(s) = standby {
        voters.insert(s);
    }
    // The change goes through a joint configuration, which needs a quorum of the old voters
    // as well as of the new ones; check the new set first, it is the one that must live on.
    if !force {
        for set in [&voters, &view.voters] {
            let (healthy, quorum) = view.health_of(set);
            if healthy < quorum {
                return Err(RemoveError::Unhealthy {
                    id,
                    healthy,
                    voters: set.len(),
                    quorum,
                });
            }
        }
    }
    if id == view.leader {
        // Hand over to a healthy voter that stays (a standby is not a voter yet), the most
        // caught up first: the transfer needs its log to be current.
        let to = view
            .voters
            .iter()
            .copied()
            .filter(|v| *v != id && view.healthy.contains(v))
            .max_by(|a, b| {
                let (ma, mb) = (view.matched.get(a), view.matched.get(b));
                ma.cmp(&mb).then(b.cmp(a))
            })
            .ok_or(RemoveError::NoSuccessor(id))?;
        return Ok(RemovalPlan::TransferLeadership { to });
    }
    Ok(match standby {
        Some(standby) => RemovalPlan::Replace { standby, voters },
        None => RemovalPlan::Shrink { voters },
    })
}

/// Whether voter `lost` can be swapped for a standby: `(standby, new voters)` when a healthy,
/// caught-up learner exists and the new set keeps a healthy quorum (pure).
pub fn plan_voter_replacement(view: &ClusterView, lost: u64) -> Option<(u64, BTreeSet<u64>)> {
    if lost == view.leader || !view.voters.contains(&lost) {
        return None;
    }
    let standby = view.standby()?;
    let mut voters = view.voters.clone();
    voters.remove(&lost);
    voters.insert(standby);
    let healthy_quorum = |set: &BTreeSet<u64>| {
        let (healthy, quorum) = view.health_of(set);
        healthy >= quorum
    };
    // Both halves of the joint configuration must be able to commit.
    (healthy_quorum(&voters) && healthy_quorum(&view.voters)).then_some((standby, voters))
}

/// `Remove` request: take member `id` out of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveRequest {
    pub id: u64,
    /// Skip the healthy-quorum check (never the last-voter check).
    pub force: bool,
    /// Only decide: answer `Allowed` where the removal would go ahead, change nothing. `k8sd
    /// leave` and `k8sd reset` ask first, so a refusal comes before they touch any record.
    /// Absent (false) in requests from older nodes.
    #[serde(default)]
    pub dry_run: bool,
}

/// What a successful removal did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoveOutcome {
    /// A learner (standby) left the cluster.
    LearnerRemoved,
    /// A voter left and the standby `replacement` became a voter in its place.
    VoterReplaced { replacement: u64 },
    /// A voter left and no standby was ready, so the voter set shrank to `voters`.
    VoterRemoved { voters: BTreeSet<u64> },
}

/// `Remove` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RemoveReply {
    Removed(RemoveOutcome),
    /// A dry run whose removal would go ahead now (nothing was changed).
    Allowed,
    Refused(RemoveError),
    /// Ask the leader instead (also the answer after this leader handed leadership away in
    /// order to remove itself).
    NotLeader {
        leader: Option<(u64, NodeInfo)>,
    },
    /// Transient (a change in flight, no quorum contact yet): ask again.
    Retry {
        reason: String,
    },
    /// The change was proposed but not committed in time. It stays in flight and completes
    /// once a quorum of the old and the new voter sets is reachable; asking again would not
    /// help.
    InFlight {
        reason: String,
    },
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

/// When each voter was first seen unhealthy by this leader. A new leader starts counting from
/// its own first observation, so a leader change can only delay a replacement, never hasten it.
#[derive(Debug, Default)]
pub struct LossTracker {
    down_since: BTreeMap<u64, Instant>,
    /// Voters already reported as lost with no standby to replace them (warn once).
    reported: BTreeSet<u64>,
}

impl LossTracker {
    /// Record which voters are unhealthy now; return those unhealthy for at least `delay`.
    pub fn observe(&mut self, view: &ClusterView, now: Instant, delay: Duration) -> Vec<u64> {
        let down: BTreeSet<u64> = view
            .voters
            .iter()
            .copied()
            .filter(|v| !view.healthy.contains(v))
            .collect();
        self.down_since.retain(|id, _| down.contains(id));
        self.reported.retain(|id| down.contains(id));
        for id in &down {
            self.down_since.entry(*id).or_insert(now);
        }
        self.down_since
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) >= delay)
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn clear(&mut self) {
        self.down_since.clear();
        self.reported.clear();
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
        if tracker.reported.insert(lost) {
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

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::{Duration, Instant};

    use super::*;

    /// Leader 1; voters and learners as given; `down` members unhealthy; every member matched
    /// at the leader's last index (1000) except those in `behind` (at 0).
    fn view(voters: &[u64], learners: &[u64], down: &[u64], behind: &[u64]) -> ClusterView {
        let all: Vec<u64> = voters.iter().chain(learners).copied().collect();
        ClusterView {
            leader: 1,
            voters: voters.iter().copied().collect(),
            learners: learners.iter().copied().collect(),
            healthy: all.iter().copied().filter(|id| !down.contains(id)).collect(),
            matched: all
                .iter()
                .map(|id| (*id, if behind.contains(id) { 0 } else { 1000 }))
                .collect::<BTreeMap<_, _>>(),
            last_index: 1000,
        }
    }

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_learner_is_removed_directly_and_unknown_ids_are_refused() {
        let v = view(&[1, 2, 3], &[4], &[2, 3, 4], &[]);
        assert_eq!(plan_removal(&v, 4, false), Ok(RemovalPlan::RemoveLearner));
        assert_eq!(plan_removal(&v, 9, true), Err(RemoveError::UnknownMember(9)));
    }

    #[test]
    fn a_voter_is_replaced_by_a_caught_up_healthy_standby() {
        let v = view(&[1, 2, 3], &[4, 5], &[], &[5]);
        assert_eq!(
            plan_removal(&v, 2, false),
            Ok(RemovalPlan::Replace {
                standby: 4,
                voters: set(&[1, 3, 4])
            })
        );
        // A standby that is behind or unreachable does not count: the voter set shrinks.
        let v = view(&[1, 2, 3], &[4], &[], &[4]);
        assert_eq!(
            plan_removal(&v, 2, false),
            Ok(RemovalPlan::Shrink { voters: set(&[1, 3]) })
        );
        let v = view(&[1, 2, 3], &[4], &[4], &[]);
        assert_eq!(
            plan_removal(&v, 2, false),
            Ok(RemovalPlan::Shrink { voters: set(&[1, 3]) })
        );
    }

    #[test]
    fn removal_that_leaves_no_healthy_quorum_is_refused_unless_forced() {
        // 3 is unreachable: {1, 3} would have 1 healthy of 2, short of a quorum of 2.
        let v = view(&[1, 2, 3], &[], &[3], &[]);
        let err = plan_removal(&v, 2, false).unwrap_err();
        assert_eq!(
            err,
            RemoveError::Unhealthy {
                id: 2,
                healthy: 1,
                voters: 2,
                quorum: 2
            }
        );
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(
            plan_removal(&v, 2, true),
            Ok(RemovalPlan::Shrink { voters: set(&[1, 3]) })
        );
        // Removing the unreachable one is fine: {1, 2} are both healthy.
        assert_eq!(
            plan_removal(&v, 3, false),
            Ok(RemovalPlan::Shrink { voters: set(&[1, 2]) })
        );
    }

    #[test]
    fn the_last_voter_is_never_removed_even_with_force() {
        let v = view(&[1], &[2], &[], &[]);
        assert_eq!(plan_removal(&v, 1, true), Err(RemoveError::LastVoter(1)));
    }

    #[test]
    fn the_leader_hands_over_to_a_healthy_voter_before_it_is_removed() {
        let v = view(&[1, 2, 3], &[4], &[2], &[]);
        assert_eq!(
            plan_removal(&v, 1, false),
            Ok(RemovalPlan::TransferLeadership { to: 3 })
        );
        // The only other voter is down: with force there is still nobody to hand over to.
        let v = view(&[1, 2], &[], &[2], &[]);
        assert_eq!(plan_removal(&v, 1, true), Err(RemoveError::NoSuccessor(1)));
    }

    #[test]
    fn a_lost_voter_is_swapped_for_a_standby_only_with_a_healthy_quorum() {
        let v = view(&[1, 2, 3], &[4], &[3], &[]);
        assert_eq!(plan_voter_replacement(&v, 3), Some((4, set(&[1, 2, 4]))));
        // No standby, or one that is behind: nothing to do.
        assert_eq!(plan_voter_replacement(&view(&[1, 2, 3], &[], &[3], &[]), 3), None);
        assert_eq!(
            plan_voter_replacement(&view(&[1, 2, 3], &[4], &[3], &[4]), 3),
            None
        );
        // Two of three voters lost: {1, 3, 4} would have 2 healthy of 3, but the joint change
        // also needs a quorum of {1, 2, 3}, which has only the leader: nothing is attempted.
        let v = view(&[1, 2, 3], &[4], &[2, 3], &[]);
        assert_eq!(plan_voter_replacement(&v, 2), None);
        // The leader is never "lost".
        assert_eq!(plan_voter_replacement(&v, 1), None);
    }

    #[test]
    fn loss_is_reported_only_after_the_delay_and_forgotten_on_recovery() {
        let mut t = LossTracker::default();
        let t0 = Instant::now();
        let delay = Duration::from_secs(300);
        let down = view(&[1, 2, 3], &[4], &[3], &[]);
        assert!(t.observe(&down, t0, delay).is_empty());
        assert!(t.observe(&down, t0 + Duration::from_secs(299), delay).is_empty());
        assert_eq!(t.observe(&down, t0 + Duration::from_secs(300), delay), vec![3]);
        // Back before the delay (a reboot): the clock starts over.
        let up = view(&[1, 2, 3], &[4], &[], &[]);
        assert!(t.observe(&up, t0 + Duration::from_secs(301), delay).is_empty());
        assert!(t.observe(&down, t0 + Duration::from_secs(302), delay).is_empty());
    }

    #[test]
    fn voters_stay_odd_and_at_most_five() {
        let got: Vec<usize> = (1..=7).map(target_voters).collect();
        assert_eq!(got, vec![1, 1, 3, 3, 5, 5, 5]);
    }
}
