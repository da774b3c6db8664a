//! Membership management on real in-process clusters over loopback gRPC: removing learners,
//! voters and the leader without breaking quorum, automatic replacement of a lost voter by a
//! standby, and lease keep-alives through a follower (docs/design/raft.md).
//!
//! Clusters form the way `k8sd datastore --initial-cluster` does: the first node bootstraps,
//! the others `join` it one by one, and the leader's promoter (`auto_promote`) keeps three
//! voters; a fourth node stays a standby learner. Each test checks what an operator would:
//! the member list, that writes still succeed, and that nothing written before is lost.
#![allow(clippy::tests_outside_test_module, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8sd::datastore::{Command, CommandOutput, Durability, KeyRange, RangeRequest};
use k8sd::node::{Node, NodeConfig, RaftSettings};
use k8sd::raft::{RaftConfig, RaftNode, RaftNodeError, RemoveError, RemoveOutcome};
use tempfile::TempDir;
use tokio::net::TcpListener;

use crate::common::eventually_some;
use crate::raft_fixture::{ELECTION, Faults, HEARTBEAT, fast_config, put, put_leased, read};

fn config(
    dir: &Path,
    name: &str,
    addr: &str,
    faults: &Arc<Faults>,
    voter_loss_delay: Duration,
) -> RaftConfig {
    let mut c = fast_config(dir, name, addr, faults);
    c.auto_promote = true;
    c.voter_loss_delay = voter_loss_delay;
    c
}

/// `n` RaftNodes formed by joining: three voters, the rest standby learners.
struct Cluster {
    _tmp: TempDir,
    nodes: Vec<Option<RaftNode>>,
    faults: Arc<Faults>,
}

impl Cluster {
    async fn start(n: usize, voter_loss_delay: Duration) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let faults = Arc::new(Faults::default());
        let mut nodes = Vec::new();
        let mut first_addr = String::new();
        for i in 0..n {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap().to_string();
            let dir: PathBuf = tmp.path().join(format!("n{i}"));
            let node = RaftNode::start(
                config(&dir, &format!("n{i}"), &addr, &faults, voter_loss_delay),
                l,
            )
            .await
            .unwrap();
            if i == 0 {
                node.bootstrap().await.unwrap();
                first_addr = addr;
            } else {
                node.join(std::slice::from_ref(&first_addr), Duration::from_secs(30))
                    .await
                    .unwrap();
            }
            nodes.push(Some(node));
        }
        let c = Cluster {
            _tmp: tmp,
            nodes,
            faults,
        };
        let want = n.min(3);
        let all: BTreeSet<u64> = c.running().iter().map(|i| c.node(*i).id()).collect();
        for i in c.running() {
            let node = c.node(i);
            eventually_some(
                Duration::from_secs(20),
                "three voters and every member everywhere",
                async || {
                    let st = node.status();
                    (st.voters.len() == want && st.members.keys().copied().collect::<BTreeSet<_>>() == all)
                        .then_some(())
                },
            )
            .await;
        }
        c
    }

    fn node(&self, i: usize) -> RaftNode {
        self.nodes[i].clone().expect("node is running")
    }

    fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_some())
            .collect()
    }

    fn index_of(&self, id: u64) -> usize {
        self.running()
            .into_iter()
            .find(|i| self.node(*i).id() == id)
            .unwrap()
    }

    /// The node every running node agrees is leader.
    async fn leader(&self) -> usize {
        eventually_some(Duration::from_secs(15), "an agreed leader", async || {
            let leaders: BTreeSet<Option<u64>> = self
                .running()
                .iter()
                .map(|i| self.node(*i).status().leader)
                .collect();
            match leaders.into_iter().collect::<Vec<_>>()[..] {
                [Some(l)] => Some(self.index_of(l)),
                _ => None,
            }
        })
        .await
    }

    /// Leader, a follower voter, and the standby learner (if any), by index.
    async fn roles(&self) -> (usize, usize, Option<usize>) {
        let l = self.leader().await;
        let st = self.node(l).status();
        let follower = st
            .voters
            .iter()
            .copied()
            .find(|v| *v != st.id)
            .map(|v| self.index_of(v))
            .unwrap();
        let standby = st.learners.iter().next().map(|v| self.index_of(*v));
        (l, follower, standby)
    }

    async fn kill(&mut self, i: usize) {
        let node = self.nodes[i].take().unwrap();
        node.shutdown().await.unwrap();
    }

    async fn shutdown(mut self) {
        for i in self.running() {
            self.kill(i).await;
        }
    }
}

fn txn_ok(out: Result<Result<CommandOutput, k8sd::datastore::StoreError>, RaftNodeError>) {
    let out = out.unwrap().unwrap();
    assert!(matches!(out, CommandOutput::Txn { .. }), "{out:?}");
}

/// Wait until `node` sees exactly `voters` and `learners`.
async fn must_membership(node: &RaftNode, voters: &BTreeSet<u64>, learners: &BTreeSet<u64>) {
    eventually_some(Duration::from_secs(15), "the expected membership", async || {
        let st = node.status();
        (st.voters == *voters && st.learners == *learners).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_a_learner_is_removed_directly() {
    let c = Cluster::start(4, Duration::from_secs(300)).await;
    let (l, f, s) = c.roles().await;
    let s = s.expect("a standby");
    let voters = c.node(l).status().voters;
    // Asked on a follower: forwarded to the leader.
    let out = c.node(f).remove_member(c.node(s).id(), false).await.unwrap();
    assert_eq!(out, RemoveOutcome::LearnerRemoved);
    for i in [l, f] {
        must_membership(&c.node(i), &voters, &BTreeSet::new()).await;
        assert_eq!(c.node(i).status().members.len(), 3);
    }
    txn_ok(c.node(f).propose(put("after", "1")).await);
    // Asking again names the id as unknown.
    let err = c.node(l).remove_member(c.node(s).id(), false).await.unwrap_err();
    assert!(
        matches!(err, RaftNodeError::Remove(RemoveError::UnknownMember(_))),
        "{err}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_a_removed_voter_is_replaced_by_the_standby() {
    let mut c = Cluster::start(4, Duration::from_secs(300)).await;
    let (l, f, s) = c.roles().await;
    let s = s.expect("a standby");
    txn_ok(c.node(l).propose(put("before", "1")).await);
    let (f_id, s_id) = (c.node(f).id(), c.node(s).id());
    // Asked on the standby itself, a learner: forwarded too.
    let out = c.node(s).remove_member(f_id, false).await.unwrap();
    assert_eq!(out, RemoveOutcome::VoterReplaced { replacement: s_id });
    let mut voters = c.node(l).status().voters;
    voters.remove(&f_id);
    voters.insert(s_id);
    assert_eq!(voters.len(), 3, "the voter count stays odd");
    for i in [l, s] {
        must_membership(&c.node(i), &voters, &BTreeSet::new()).await;
        assert!(!c.node(i).status().members.contains_key(&f_id));
    }
    c.kill(f).await;
    txn_ok(c.node(s).propose(put("after", "2")).await);
    let db = c.node(s).db_path().to_path_buf();
    assert_eq!(read(&db, "before").as_deref(), Some(&b"1"[..]));
    assert_eq!(read(&db, "after").as_deref(), Some(&b"2"[..]));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t30_removal_that_breaks_a_healthy_quorum_is_refused_unless_forced() {
    let c = Cluster::start(3, Duration::from_secs(300)).await;
    let l = c.leader().await;
    let others: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    let (a, b) = (others[0], others[1]);
    let (l_id, a_id, b_id) = (c.node(l).id(), c.node(a).id(), c.node(b).id());
    txn_ok(c.node(a).propose(put("before", "1")).await);
    let voters = c.node(l).status().voters;
    // A dry run (what `leave` and `reset` ask first) allows the removal while all are healthy,
    // and changes nothing.
    for via in [l, a] {
        c.node(via).check_removal(a_id).await.unwrap();
    }
    assert_eq!(c.node(l).status().voters, voters, "a dry run changes nothing");

    // b is cut off. Removing a would leave {l, b} with one healthy voter of two.
    c.faults.isolate(b_id);
    tokio::time::sleep(ELECTION.1 * 2).await;
    for via in [l, a] {
        let err = c.node(via).check_removal(a_id).await.unwrap_err();
        assert!(
            matches!(
                err,
                RaftNodeError::Remove(RemoveError::Unhealthy { healthy: 1, .. })
            ),
            "the dry run refuses as the removal would: {err}"
        );
        let err = c.node(via).remove_member(a_id, false).await.unwrap_err();
        assert!(
            matches!(
                err,
                RaftNodeError::Remove(RemoveError::Unhealthy {
                    healthy: 1,
                    voters: 2,
                    quorum: 2,
                    ..
                })
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("--force"),
            "the refusal names the override: {err}"
        );
    }
    assert_eq!(c.node(l).status().voters, voters, "nothing changed");
    let err = c.node(l).remove_member(0x1234, true).await.unwrap_err();
    assert!(
        matches!(err, RaftNodeError::Remove(RemoveError::UnknownMember(0x1234))),
        "{err}"
    );
    // The cluster still writes with a and l.
    txn_ok(c.node(l).propose(put("during", "2")).await);

    // Forced, the change is made; it commits once b (needed by the new quorum) is back.
    let forced = tokio::spawn({
        let n = c.node(l);
        async move { n.remove_member(a_id, true).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.faults.heal(b_id);
    let out = forced.await.unwrap().unwrap();
    let want = BTreeSet::from([l_id, b_id]);
    assert_eq!(out, RemoveOutcome::VoterRemoved { voters: want.clone() });
    for i in [l, b] {
        must_membership(&c.node(i), &want, &BTreeSet::new()).await;
    }
    txn_ok(c.node(b).propose(put("after", "3")).await);
    let db = c.node(b).db_path().to_path_buf();
    for (k, v) in [("before", "1"), ("during", "2"), ("after", "3")] {
        assert_eq!(read(&db, k).as_deref(), Some(v.as_bytes()), "{k}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t40_the_leader_hands_over_before_it_is_removed() {
    let mut c = Cluster::start(4, Duration::from_secs(300)).await;
    let (l, _, s) = c.roles().await;
    let s = s.expect("a standby");
    txn_ok(c.node(l).propose(put("before", "1")).await);
    let (l_id, s_id) = (c.node(l).id(), c.node(s).id());
    let out = c.node(l).remove_member(l_id, false).await.unwrap();
    assert_eq!(out, RemoveOutcome::VoterReplaced { replacement: s_id });
    let mut voters = c.node(s).status().voters;
    eventually_some(
        Duration::from_secs(10),
        "the removal to reach the standby",
        async || {
            voters = c.node(s).status().voters;
            (!voters.contains(&l_id)).then_some(())
        },
    )
    .await;
    assert!(voters.contains(&s_id) && voters.len() == 3, "{voters:?}");
    c.kill(l).await;
    let new = c.leader().await;
    assert_ne!(c.node(new).id(), l_id);
    for i in c.running() {
        txn_ok(c.node(i).propose(put(&format!("after{i}"), "2")).await);
        must_membership(&c.node(i), &voters, &BTreeSet::new()).await;
    }
    assert_eq!(read(c.node(s).db_path(), "before").as_deref(), Some(&b"1"[..]));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t50_a_lost_voter_is_replaced_by_the_standby_and_returns_as_one() {
    let delay = Duration::from_secs(2);
    let c = Cluster::start(4, delay).await;
    let (l, f, s) = c.roles().await;
    let s = s.expect("a standby");
    let (f_id, s_id) = (c.node(f).id(), c.node(s).id());
    txn_ok(c.node(f).propose(put("before", "1")).await);
    let old_voters = c.node(l).status().voters;

    c.faults.isolate(f_id);
    let lost_at = Instant::now();
    // Before the delay nothing moves (a reboot must not trip it).
    tokio::time::sleep(delay / 2).await;
    assert_eq!(c.node(l).status().voters, old_voters);
    let mut voters = old_voters.clone();
    voters.remove(&f_id);
    voters.insert(s_id);
    must_membership(&c.node(l), &voters, &BTreeSet::from([f_id])).await;
    assert!(
        lost_at.elapsed() >= delay,
        "replaced after {:?}",
        lost_at.elapsed()
    );
    // Still a member: demoted, never deleted.
    assert!(c.node(l).status().members.contains_key(&f_id));
    txn_ok(c.node(s).propose(put("during", "2")).await);

    // Healed, it catches up as a learner (the standby), and the voters stay as they are.
    c.faults.heal(f_id);
    let back = c.node(f);
    eventually_some(Duration::from_secs(15), "the old voter to catch up", async || {
        read(back.db_path(), "during").map(|_| ())
    })
    .await;
    must_membership(&back, &voters, &BTreeSet::from([f_id])).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(c.node(l).status().voters, voters, "no flapping after it returned");
    assert_eq!(read(back.db_path(), "before").as_deref(), Some(&b"1"[..]));
    txn_ok(back.propose(put("after", "3")).await);
    c.shutdown().await;
}

/// Three `Node`s (the etcd façade's backend) formed by joining.
async fn node_cluster(tmp: &Path) -> Vec<Node> {
    let mut nodes = Vec::new();
    let mut first = String::new();
    for i in 0..3 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let dir = tmp.join(format!("n{i}"));
        let mut rc = RaftConfig::new(&dir, &format!("n{i}"), &addr, "http://127.0.0.1:2379");
        rc.heartbeat = HEARTBEAT;
        rc.election_timeout = ELECTION;
        rc.request_timeout = Duration::from_secs(3);
        rc.auto_promote = true;
        if i == 0 {
            first = addr;
        } else {
            rc.join = vec![first.clone()];
        }
        let cfg = NodeConfig {
            name: format!("n{i}"),
            data_dir: dir,
            durability: Durability::Normal,
            client_urls: vec![],
            progress_notify_interval: Duration::from_secs(600),
            quota_bytes: k8sd::node::alarm::DEFAULT_QUOTA_BYTES,
        };
        let settings = RaftSettings {
            config: rc,
            listener: l,
            bootstrap: i == 0,
        };
        nodes.push(Node::start_raft(cfg, settings).await.unwrap());
    }
    for n in &nodes {
        eventually_some(Duration::from_secs(20), "three voters", async || {
            (n.raft_status()?.voters.len() == 3).then_some(())
        })
        .await;
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t60_a_lease_kept_alive_only_through_a_follower_survives_and_then_expires() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = node_cluster(tmp.path()).await;
    let follower = eventually_some(Duration::from_secs(15), "a follower with a leader", async || {
        nodes.iter().find(|n| {
            let st = n.raft_status().unwrap();
            st.leader.is_some_and(|l| l != st.id)
        })
    })
    .await
    .clone();
    let CommandOutput::LeaseGrant { id, ttl, .. } = follower
        .propose(Command::LeaseGrant { id: 0, ttl: 2 })
        .await
        .unwrap()
    else {
        panic!("not a grant")
    };
    assert_eq!(ttl, 2);
    follower.propose(put_leased("leased", "v", id)).await.unwrap();

    // Keep-alives through the follower only, for well over the TTL.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        assert_eq!(follower.lease_renew(id).await.unwrap(), Some(2));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (left, granted) = follower.lease_remaining(id).await.unwrap().unwrap();
    assert!((1..=2).contains(&left) && granted == 2, "{left}/{granted}");
    for n in &nodes {
        n.barrier().await.unwrap();
        let v = n
            .read(|r| {
                r.range(&RangeRequest {
                    range: KeyRange::single(b"leased".to_vec()),
                    ..Default::default()
                })
            })
            .await;
        assert_eq!(v.unwrap().0.kvs.len(), 1, "the key survives while kept alive");
    }

    // No more keep-alives: the leader expires it, everywhere.
    eventually_some(Duration::from_secs(10), "the lease to expire", async || {
        follower.barrier().await.ok()?;
        let v = follower
            .read(|r| {
                r.range(&RangeRequest {
                    range: KeyRange::single(b"leased".to_vec()),
                    ..Default::default()
                })
            })
            .await
            .ok()?;
        v.0.kvs.is_empty().then_some(())
    })
    .await;
    assert_eq!(
        follower.lease_renew(id).await.unwrap(),
        None,
        "an expired lease answers TTL 0"
    );
    for n in &nodes {
        n.shutdown().await;
    }
}
