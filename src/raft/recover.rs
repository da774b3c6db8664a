//! Quorum-loss recovery (`k8sd recover`): make this node the only voter of its Raft group,
//! offline, with its own data, and fence off the members it replaces.
//!
//! openraft changes membership only through a committed entry, which needs the quorum that is
//! gone. So the change is written the way a leader would have written it, with the daemon
//! stopped:
//!
//! ```text
//!  log.db  ... [last entry (term T)] + [membership {me}, log id (T+1, me), last+1]
//!  vote    (T+1, me, committed)             fence file  raft/removed-members: every other id
//! ```
//!
//! At the next start openraft takes the newest membership entry of the log as effective (even
//! uncommitted), so this node is the only voter: it elects itself and its first entry commits
//! everything in its log, the membership entry included. Nothing of the log is dropped: an
//! entry this node holds may have been acknowledged to a client by the old leader, and a new
//! leader's log is authoritative in Raft anyway.
//!
//! The fence is what keeps a "lost" member that comes back from splitting the cluster: two
//! lost voters that return together still hold a quorum of the *old* configuration, elect one
//! of themselves at a higher term and would send this node AppendEntries, which Raft accepts
//! from any higher term, truncating the recovered log. The peer service refuses every Raft
//! RPC whose sender (leader or candidate) is fenced (`service.rs`), so they can never reach
//! this node's log; they must be reset and join again with new tokens (new ids).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use openraft::Membership;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage};
use openraft::vote::RaftLeaderId;

use super::log_store::{LogStore, LogStoreError};
use super::types::{Entry, NodeInfo, StoredMembership, Vote};

/// Ids of the members `k8sd recover` removed, one 16-digit hex id per line, under `raft/`.
pub const FENCE_FILE: &str = "removed-members";
/// The fence holds member ids, no secret: readable by anyone, as `node-id` is.
const FENCE_MODE: u32 = 0o644;

/// The membership as the recovering node sees it, and which voters answered a probe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryView {
    pub me: u64,
    pub voters: BTreeSet<u64>,
    pub learners: BTreeSet<u64>,
    /// Voters other than `me` that answered on their peer address.
    pub reachable: BTreeSet<u64>,
}

/// Why `k8sd recover` will not run. Nothing has been changed when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecoverRefusal {
    #[error(
        "{reachable} of {voters} datastore voters are reachable (this node included), a quorum of {quorum}: \
         the cluster can still elect a leader, so recover would split it. Nothing was changed. Bring the \
         others back, or remove lost members with `k8sd remove-node NAME`"
    )]
    QuorumReachable {
        reachable: usize,
        voters: usize,
        quorum: usize,
    },
    #[error(
        "this node ({0:016x}) is not a datastore voter: its replica may lag behind the lost voters'. \
         Nothing was changed. Run k8sd recover on a surviving voter (see `k8sd status`)"
    )]
    NotAVoter(u64),
    #[error(
        "this node ({0:016x}) is already the only datastore voter and has no other members; there is \
         nothing to recover. Nothing was changed"
    )]
    AlreadyAlone(u64),
}

/// The members a recovery removes: everyone but `me`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryPlan {
    pub remove: BTreeSet<u64>,
}

/// Decide whether `view.me` may make itself the only voter (pure).
///
/// Rules, in order: only a voter recovers (a learner's replica may lag what the voters
/// committed); a node that is already alone has nothing to do; if a quorum of the voters is
/// reachable the cluster is not lost and recover refuses, naming how many answered.
pub fn plan_recovery(view: &RecoveryView) -> Result<RecoveryPlan, RecoverRefusal> {
    if !view.voters.contains(&view.me) {
        return Err(RecoverRefusal::NotAVoter(view.me));
    }
    let remove: BTreeSet<u64> = view
        .voters
        .iter()
        .chain(&view.learners)
        .copied()
        .filter(|id| *id != view.me)
        .collect();
    if remove.is_empty() {
        return Err(RecoverRefusal::AlreadyAlone(view.me));
    }
    let reachable = 1 + view
        .reachable
        .iter()
        .filter(|id| **id != view.me && view.voters.contains(id))
        .count();
    let quorum = view.voters.len() / 2 + 1;
    if reachable >= quorum {
        return Err(RecoverRefusal::QuorumReachable {
            reachable,
            voters: view.voters.len(),
            quorum,
        });
    }
    Ok(RecoveryPlan { remove })
}

#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error(transparent)]
    Log(#[from] LogStoreError),
    #[error("raft log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {reason}; nothing was changed")]
    Membership { path: PathBuf, reason: String },
    #[error("{0}; nothing was changed")]
    Fence(#[from] FenceError),
}

/// The applied membership of the state database, read-only (safe while the daemon runs).
pub fn applied_membership(db: &Path) -> Result<StoredMembership, RecoverError> {
    let bad = |reason: String| RecoverError::Membership {
        path: db.to_path_buf(),
        reason,
    };
    let raw = crate::datastore::read_raft_meta(db, "membership").map_err(|e| bad(e.to_string()))?;
    match raw {
        Some(b) => serde_json::from_slice(&b).map_err(|e| bad(format!("undecodable membership: {e}"))),
        None => Err(bad(
            "no Raft membership recorded (is this node a datastore member?)".into(),
        )),
    }
}

/// The voters, learners and addresses of a membership.
pub fn members_of(m: &StoredMembership) -> (BTreeSet<u64>, BTreeSet<u64>, BTreeMap<u64, NodeInfo>) {
    let cfg = m.membership();
    (
        cfg.voter_ids().collect(),
        cfg.learner_ids().collect(),
        cfg.nodes().map(|(id, n)| (*id, n.clone())).collect(),
    )
}

/// Why the fence file could not be read. Either one stops the node: a fence that is read
/// only in part would let a removed member's messages through again.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("cannot read the fence file {path} (members removed by k8sd recover): {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the fence file {path} (members removed by k8sd recover) has a garbled line {line}: {content:?} is not \
         a member id (1 to 16 hex digits, not 0). This node refuses to start rather than let the member that \
         line fenced back in. Fix the line to the removed member's id, or delete it if that member was never \
         removed or has been reset, then start k8sd again"
    )]
    Garbled {
        path: PathBuf,
        /// 1-based, as an editor shows it.
        line: usize,
        content: String,
    },
}

/// Ids fenced by an earlier recovery (empty when there is no fence file).
///
/// Every line must be an id as `write_fence` writes it. A line that is not refuses the whole
/// file: skipping it would silently unfence that member, whose Raft messages could then
/// truncate this node's recovered log. Lines of only whitespace name nobody and are ignored,
/// so an editor's trailing blank line is harmless.
pub fn read_fence(raft_dir: &Path) -> Result<BTreeSet<u64>, FenceError> {
    let path = raft_dir.join(FENCE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(source) => return Err(FenceError::Read { path, source }),
    };
    let mut ids = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let id = line.trim();
        if id.is_empty() {
            continue;
        }
        // from_str_radix alone would take a leading '+' and any number of leading zeros; an id
        // is at most 16 hex digits, so two ids run together are not read as a third.
        match u64::from_str_radix(id, 16) {
            Ok(n) if n != 0 && id.len() <= 16 && id.chars().all(|c| c.is_ascii_hexdigit()) => {
                ids.insert(n);
            }
            _ => {
                return Err(FenceError::Garbled {
                    path,
                    line: i + 1,
                    content: line.to_string(),
                });
            }
        }
    }
    Ok(ids)
}

fn write_fence(raft_dir: &Path, ids: &BTreeSet<u64>) -> io::Result<()> {
    let text: String = ids.iter().map(|id| format!("{id:016x}\n")).collect();
    crate::atomic_file::replace(&raft_dir.join(FENCE_FILE), text.as_bytes(), FENCE_MODE)?;
    Ok(())
}

/// What `make_sole_voter` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    /// The other members of the membership in force, now removed, with their names. Every
    /// other id the log names is fenced as well.
    pub removed: BTreeMap<u64, String>,
    /// The new membership entry's index and term.
    pub index: u64,
    pub term: u64,
}

/// Make `me` the only voter of the group stored under `datastore_dir` (`state.db`, `raft/`).
/// The daemon must be stopped: this opens the log for writing. `remove` is re-derived from the
/// log's own newest membership, so an entry the state database has not applied yet counts.
pub fn make_sole_voter(datastore_dir: &Path, me: u64) -> Result<Rewritten, RecoverError> {
    let raft_dir = datastore_dir.join("raft");
    let log_path = raft_dir.join("log.db");
    let io_err = |source| RecoverError::Io {
        path: log_path.clone(),
        source,
    };
    let applied = applied_membership(&datastore_dir.join("state.db"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err)?;
    let mut log = LogStore::open(&raft_dir)?;
    rt.block_on(async {
        let state = log.get_log_state().await.map_err(io_err)?;
        let mut reader = log.get_log_reader().await;
        let vote = reader.read_vote().await.map_err(io_err)?;
        // Every membership the log holds after the purged prefix, newest last: a member the
        // state database has not applied yet is still a member to fence.
        let mut memberships = vec![applied.membership().clone()];
        if let Some(last) = state.last_log_id {
            let from = state.last_purged_log_id.map_or(0, |l| l.index + 1);
            let entries = reader
                .try_get_log_entries(from..last.index + 1)
                .await
                .map_err(io_err)?;
            memberships.extend(entries.iter().filter_map(|e| e.get_membership()));
        }
        let mut nodes: BTreeMap<u64, NodeInfo> = BTreeMap::new();
        for m in &memberships {
            for (id, n) in m.nodes() {
                nodes.insert(*id, n.clone());
            }
        }
        let Some(my_info) = nodes.get(&me).cloned() else {
            return Err(RecoverError::Membership {
                path: log_path.clone(),
                reason: format!("this node ({me:016x}) is in none of the stored memberships"),
            });
        };
        // Reported as removed: the other members of the newest membership, the one in force.
        // Members that earlier memberships of the log name were removed before (by
        // `remove-node`); they are fenced too, but naming them would send the operator to
        // remove them again.
        let current = memberships.last().unwrap_or(applied.membership());
        let removed: BTreeMap<u64, String> = current
            .nodes()
            .filter(|(id, _)| **id != me)
            .map(|(id, n)| (*id, n.name.clone()))
            .collect();
        // The fence first: a crash after it and before the log write leaves a node that
        // refuses the members it still has, which a second run of recover completes.
        let mut fence = read_fence(&raft_dir)?;
        fence.extend(nodes.keys().filter(|id| **id != me));
        write_fence(&raft_dir, &fence).map_err(io_err)?;

        let last_term = state.last_log_id.map_or(0, |l| l.committed_leader_id().term);
        let term = vote.map_or(0, |v| v.leader_id().term).max(last_term) + 1;
        let index = state.last_log_id.map_or(0, |l| l.index + 1);
        let vote = Vote::new_committed(term, me);
        let log_id = openraft::LogId::new(vote.leader_id().to_committed(), index);
        let membership = Membership::new(vec![BTreeSet::from([me])], BTreeMap::from([(me, my_info)]))
            .map_err(|e| RecoverError::Membership {
                path: log_path.clone(),
                reason: e.to_string(),
            })?;
        let entry = Entry::new_membership(log_id, membership);
        // The vote is saved after the entry and waited for; the log writer commits in order,
        // so once it returns both are durable.
        log.append([entry], IOFlushed::noop()).await.map_err(io_err)?;
        log.save_vote(&vote).await.map_err(io_err)?;
        Ok(Rewritten { removed, index, term })
    })
}

#[cfg(test)]
mod tests {
    use openraft::alias::LeaderIdOf;
    use openraft::vote::RaftLeaderIdExt;

    use super::*;
    use crate::datastore::{DedupPrune, Durability, LogPosition, Store};
    use crate::raft::types::{LogId, TypeConfig};

    fn view(voters: &[u64], learners: &[u64], reachable: &[u64]) -> RecoveryView {
        RecoveryView {
            me: 1,
            voters: voters.iter().copied().collect(),
            learners: learners.iter().copied().collect(),
            reachable: reachable.iter().copied().collect(),
        }
    }

    #[test]
    fn two_of_three_voters_lost_recovers_and_removes_every_other_member() {
        let plan = plan_recovery(&view(&[1, 2, 3], &[4], &[])).unwrap();
        assert_eq!(plan.remove, BTreeSet::from([2, 3, 4]));
    }

    #[test]
    fn a_reachable_quorum_refuses_naming_how_many_answered() {
        let e = plan_recovery(&view(&[1, 2, 3], &[], &[2])).unwrap_err();
        assert_eq!(
            e,
            RecoverRefusal::QuorumReachable {
                reachable: 2,
                voters: 3,
                quorum: 2
            }
        );
        assert!(
            e.to_string().contains("2 of 3 datastore voters are reachable"),
            "{e}"
        );
        // A reachable learner is not a voter: it does not make a quorum.
        plan_recovery(&view(&[1, 2, 3], &[4], &[4])).unwrap();
        // Five voters, two reachable besides this one: still a quorum of 3.
        assert!(plan_recovery(&view(&[1, 2, 3, 4, 5], &[], &[2, 3])).is_err());
        plan_recovery(&view(&[1, 2, 3, 4, 5], &[], &[2])).unwrap();
    }

    #[test]
    fn a_learner_or_a_lone_voter_refuses() {
        let mut v = view(&[2, 3, 5], &[1], &[]);
        assert_eq!(plan_recovery(&v).unwrap_err(), RecoverRefusal::NotAVoter(1));
        v = view(&[1], &[], &[]);
        assert_eq!(plan_recovery(&v).unwrap_err(), RecoverRefusal::AlreadyAlone(1));
    }

    #[test]
    fn the_fence_file_round_trips_and_is_empty_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_fence(dir.path()).unwrap().is_empty());
        write_fence(dir.path(), &BTreeSet::from([0xab, u64::MAX >> 1])).unwrap();
        assert_eq!(
            read_fence(dir.path()).unwrap(),
            BTreeSet::from([0xab, u64::MAX >> 1])
        );
    }

    fn info(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            peer_addr: format!("{name}:2380"),
            client_addr: format!("https://{name}:2379"),
        }
    }

    /// Voters and learners (members of `nodes` that are not voters) as openraft stores them.
    fn membership(voters: &[u64], nodes: &[u64]) -> Membership<u64, NodeInfo> {
        Membership::new(
            vec![voters.iter().copied().collect()],
            nodes
                .iter()
                .map(|id| (*id, info(&format!("n{id}"))))
                .collect::<BTreeMap<_, _>>(),
        )
        .unwrap()
    }

    /// A log id of a leader of `term` (node 2 led the old cluster).
    fn old_log_id(term: u64, index: u64) -> LogId {
        LogId::new(LeaderIdOf::<TypeConfig>::new_committed(term, 2), index)
    }

    /// A control-plane node's datastore after quorum loss, in real files: `state.db` has
    /// applied voters {1, 2, 3} with learner 4 (as of index 3); the log (term 2, indexes 1-5)
    /// holds that membership at 1 and, at 5, a newer one not applied yet that dropped 4 and
    /// added learner 6; the vote is node 2's uncommitted term 3.
    fn lost_quorum_datastore(dir: &Path) -> Vec<Entry> {
        let raft_dir = dir.join("raft");
        std::fs::create_dir_all(&raft_dir).unwrap();
        let applied = StoredMembership::new(Some(old_log_id(2, 1)), membership(&[1, 2, 3], &[1, 2, 3, 4]));
        let mut store = Store::open(&dir.join("state.db"), Durability::Normal).unwrap();
        store.enable_raft_meta().unwrap();
        store
            .apply_raft_batch(
                &[],
                LogPosition { index: 3, term: 2 },
                &[("membership", &serde_json::to_vec(&applied).unwrap())],
                &|_| Vec::new(),
                &DedupPrune::default(),
            )
            .unwrap();
        drop(store);
        let mut entries = vec![Entry::new_membership(
            old_log_id(2, 1),
            membership(&[1, 2, 3], &[1, 2, 3, 4]),
        )];
        entries.extend((2..=4).map(|i| Entry::new_blank(old_log_id(2, i))));
        entries.push(Entry::new_membership(
            old_log_id(2, 5),
            membership(&[1, 2, 3], &[1, 2, 3, 6]),
        ));
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let mut log = LogStore::open(&raft_dir).unwrap();
            log.append(entries.clone(), IOFlushed::noop()).await.unwrap();
            // Saved after the entries and waited for: the writer commits in order.
            log.save_vote(&Vote::new(3, 2)).await.unwrap();
        });
        entries
    }

    /// The log's entries and vote, read from a fresh open of `raft/`.
    fn read_log(dir: &Path) -> (Vec<Entry>, Option<Vote>) {
        // The previous store's writer thread closes its connection once the store is dropped.
        std::thread::sleep(std::time::Duration::from_millis(100));
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let mut log = LogStore::open(&dir.join("raft")).unwrap();
            let last = log.get_log_state().await.unwrap().last_log_id.unwrap();
            let mut reader = log.get_log_reader().await;
            let entries = reader.try_get_log_entries(1..last.index + 1).await.unwrap();
            (entries, reader.read_vote().await.unwrap())
        })
    }

    #[test]
    fn make_sole_voter_appends_a_membership_of_one_in_a_new_term_and_fences_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let before = lost_quorum_datastore(dir.path());
        assert_eq!(read_log(dir.path()), (before.clone(), Some(Vote::new(3, 2))));

        let done = make_sole_voter(dir.path(), 1).unwrap();

        // Reported: the other members of the newest membership (the log's, not yet applied),
        // so 6 and not 4, which that membership had already dropped.
        assert_eq!(
            done,
            Rewritten {
                removed: BTreeMap::from([(2, "n2".into()), (3, "n3".into()), (6, "n6".into())]),
                index: 6,
                term: 4,
            }
        );
        let (entries, vote) = read_log(dir.path());
        // Nothing of the old log is dropped or changed.
        assert_eq!(entries[..5], before[..]);
        assert_eq!(entries.len(), 6);
        // One entry more, in a term above both the vote's (3) and the log's (2), led by this
        // node: the only voter and the only node.
        let last = &entries[5];
        assert_eq!(
            last.log_id,
            LogId::new(LeaderIdOf::<TypeConfig>::new_committed(4, 1), 6)
        );
        let m = last.get_membership().unwrap();
        assert_eq!(m.voter_ids().collect::<Vec<_>>(), vec![1]);
        assert_eq!(
            m.nodes().map(|(id, n)| (*id, n.clone())).collect::<Vec<_>>(),
            vec![(1, info("n1"))]
        );
        assert_eq!(vote, Some(Vote::new_committed(4, 1)));
        // Fenced: every other id any membership names, 4 included.
        assert_eq!(
            read_fence(&dir.path().join("raft")).unwrap(),
            BTreeSet::from([2, 3, 4, 6])
        );
    }

    #[test]
    fn make_sole_voter_for_a_node_in_no_membership_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let before = lost_quorum_datastore(dir.path());
        let e = make_sole_voter(dir.path(), 9).unwrap_err();
        assert!(
            matches!(&e, RecoverError::Membership { reason, .. } if reason.contains("0000000000000009")),
            "{e}"
        );
        assert_eq!(read_log(dir.path()), (before, Some(Vote::new(3, 2))));
        assert!(!dir.path().join("raft").join(FENCE_FILE).exists());
    }

    #[test]
    fn a_garbled_fence_line_refuses_naming_the_file_line_and_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FENCE_FILE);
        // A blank line names nobody; an id as written, with stray spaces, still counts.
        std::fs::write(&path, "00000000000000ab\n\n  00000000000000cd \n").unwrap();
        assert_eq!(read_fence(dir.path()).unwrap(), BTreeSet::from([0xab, 0xcd]));
        for bad in ["00000000000000zz", "+ab", "0", "00000000000000ab00", "ab cd"] {
            std::fs::write(&path, format!("00000000000000ab\n\n{bad}\n00000000000000cd\n")).unwrap();
            let e = read_fence(dir.path()).unwrap_err();
            match &e {
                FenceError::Garbled {
                    path: p,
                    line,
                    content,
                } => {
                    assert_eq!((p, *line, content.as_str()), (&path, 3, bad), "{bad}");
                }
                other => panic!("{bad}: {other:?}"),
            }
            let msg = e.to_string();
            for want in [
                &path.display().to_string(),
                "line 3",
                bad,
                "delete it",
                "start k8sd again",
            ] {
                assert!(msg.contains(want), "{msg:?} lacks {want:?}");
            }
        }
    }
}
