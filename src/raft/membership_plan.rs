//! The pure decisions of membership management: how many voters a cluster wants, how a member
//! is removed, when a lost voter is swapped for a standby. Each is a function of a
//! `ClusterView` (who is a voter, who the leader heard from recently, how far each member has
//! replicated), unit-tested below without sockets; `membership.rs` gathers the view on the
//! leader and carries the plan out.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::types::TypeConfig;
use super::wire::RemoveError;

/// Most voters automatic promotion creates: 3 for 3–4 members, 5 once there are 5. Five
/// voters survive two lost nodes; more would only slow every commit.
pub const MAX_VOTERS: usize = 5;
/// A learner within this many entries of the leader's log counts as caught up.
pub(super) const CAUGHT_UP_LAG: u64 = 100;

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

    /// Whether `id` is reported lost-without-a-standby for the first time since it went down
    /// (so the warning is logged once per loss).
    pub fn first_report(&mut self, id: u64) -> bool {
        self.reported.insert(id)
    }

    pub fn clear(&mut self) {
        self.down_since.clear();
        self.reported.clear();
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
