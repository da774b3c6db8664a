//! In-process 3-node Raft clusters on loopback gRPC: replication, forwarding from followers,
//! follower reads after a read-index barrier, leader failover, restart and snapshot catch-up.
//! Every node is a real `RaftNode` with its own data directory; data is checked by reading
//! each node's SQLite file through `datastore::Reader`.
#![allow(clippy::tests_outside_test_module, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8sd::datastore::CommittedBatch;
use k8sd::datastore::{Command, CommandOutput, KeyRange, Reader, StoreError, TxnRequest};
use k8sd::raft::{RaftConfig, RaftNode, RaftNodeError, RaftStatus};
use tempfile::TempDir;
use tokio::net::TcpListener;

use crate::common::eventually_some;
use crate::raft_fixture::{Faults, fast_config, put, read};

/// `(mod_revision, key)` of one event.
type Seen = (i64, Vec<u8>);

struct Member {
    dir: PathBuf,
    addr: String,
    name: String,
    node: Option<RaftNode>,
    /// `(mod_revision, key)` of every event this node's apply hook saw, in order.
    events: Arc<Mutex<Vec<Seen>>>,
}

struct Cluster {
    _tmp: TempDir,
    members: Vec<Member>,
    snapshot_every: u64,
    faults: Arc<Faults>,
}

fn config(m: &Member, snapshot_every: u64, faults: &Arc<Faults>) -> RaftConfig {
    let mut c = fast_config(&m.dir, &m.name, &m.addr, faults);
    c.snapshot_every = snapshot_every;
    c.logs_kept_after_snapshot = 2;
    let events = m.events.clone();
    c.apply_hook = Some(Arc::new(move |b: CommittedBatch| {
        events
            .lock()
            .unwrap()
            .extend(b.events.iter().map(|e| (e.kv.mod_revision, e.kv.key.clone())));
    }));
    c
}

impl Cluster {
    /// Three nodes: the first bootstraps, the others join as learners and are promoted.
    async fn start(snapshot_every: u64) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let faults = Arc::new(Faults::default());
        let mut members = Vec::new();
        let mut listeners = Vec::new();
        for i in 0..3 {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap().to_string();
            members.push(Member {
                dir: tmp.path().join(format!("n{i}")),
                addr,
                name: format!("n{i}"),
                node: None,
                events: Arc::default(),
            });
            listeners.push(l);
        }
        for (m, l) in members.iter_mut().zip(listeners) {
            m.node = Some(
                RaftNode::start(config(m, snapshot_every, &faults), l)
                    .await
                    .unwrap(),
            );
        }
        let mut c = Cluster {
            _tmp: tmp,
            members,
            snapshot_every,
            faults,
        };
        let first = c.node(0);
        first.bootstrap().await.unwrap();
        eventually_some(Duration::from_secs(10), "bootstrap leader", async || {
            (first.status().leader == Some(first.id())).then_some(())
        })
        .await;
        let mut voters = BTreeSet::from([first.id()]);
        for i in 1..3 {
            let n = c.node(i);
            first.add_learner(n.id(), n.info().clone()).await.unwrap();
            voters.insert(n.id());
        }
        first.change_membership(voters.clone()).await.unwrap();
        for i in 0..3 {
            let n = c.node(i);
            eventually_some(Duration::from_secs(10), "membership everywhere", async || {
                (n.status().voters == voters).then_some(())
            })
            .await;
        }
        c.members.truncate(3);
        c
    }

    fn node(&self, i: usize) -> RaftNode {
        self.members[i].node.clone().expect("node is running")
    }

    fn running(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|i| self.members[*i].node.is_some())
            .collect()
    }

    /// The index of the node every running node agrees is leader.
    async fn leader(&self) -> usize {
        eventually_some(Duration::from_secs(15), "an agreed leader", async || {
            let statuses: Vec<RaftStatus> = self.running().iter().map(|i| self.node(*i).status()).collect();
            let leader = statuses.first()?.leader?;
            if statuses.iter().all(|s| s.leader == Some(leader)) {
                self.running().into_iter().find(|i| self.node(*i).id() == leader)
            } else {
                None
            }
        })
        .await
    }

    async fn kill(&mut self, i: usize) {
        let node = self.members[i].node.take().unwrap();
        node.shutdown().await.unwrap();
    }

    async fn restart(&mut self, i: usize) {
        let l = TcpListener::bind(&self.members[i].addr).await.unwrap();
        let node = RaftNode::start(config(&self.members[i], self.snapshot_every, &self.faults), l)
            .await
            .unwrap();
        self.members[i].node = Some(node);
    }

    async fn shutdown(mut self) {
        for i in self.running() {
            self.kill(i).await;
        }
    }
}

fn txn_ok(out: Result<CommandOutput, StoreError>) -> CommandOutput {
    let out = out.expect("no client error");
    assert!(matches!(out, CommandOutput::Txn { .. }), "{out:?}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_writes_from_any_node_replicate_to_all_stores() {
    let c = Cluster::start(5000).await;
    let leader = c.leader().await;
    // One write through every node: the leader proposes directly, followers forward.
    for i in 0..3 {
        let out = c
            .node(i)
            .propose(put(&format!("k{i}"), &format!("v{i}")))
            .await
            .unwrap();
        txn_ok(out);
        // Read-your-write locally right away: a forwarded write returns only after this
        // node applied it.
        assert_eq!(
            read(c.node(i).db_path(), &format!("k{i}")).as_deref(),
            Some(format!("v{i}").as_bytes())
        );
    }
    // A failed compare is an outcome, not an error; a client error comes back as `Err` inside.
    let failing = Command::Txn(TxnRequest {
        compare: vec![k8sd::datastore::Compare {
            range: KeyRange::single(b"k0".to_vec()),
            result: k8sd::datastore::CompareResult::Equal,
            target: k8sd::datastore::CompareTarget::Version(42),
        }],
        success: vec![],
        failure: vec![],
    });
    let follower = (leader + 1) % 3;
    match c.node(follower).propose(failing).await.unwrap().unwrap() {
        CommandOutput::Txn { result, .. } => assert!(!result.succeeded),
        other => panic!("{other:?}"),
    }
    let err = c
        .node(follower)
        .propose(Command::LeaseRevoke { id: 12345 })
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, StoreError::LeaseNotFound(12345)), "{err}");

    // After a read-index barrier, every node's local SQLite has every acknowledged write.
    for i in 0..3 {
        let n = c.node(i);
        n.linearizable_barrier().await.unwrap();
        for k in 0..3 {
            assert_eq!(
                read(n.db_path(), &format!("k{k}")).as_deref(),
                Some(format!("v{k}").as_bytes()),
                "node {i} key k{k}"
            );
        }
    }
    // Many concurrent barriers on a follower share ReadIndex round trips and all succeed.
    let f = c.node(follower);
    let barriers: Vec<_> = (0..50)
        .map(|_| {
            tokio::spawn({
                let f = f.clone();
                async move { f.linearizable_barrier().await }
            })
        })
        .collect();
    for b in barriers {
        b.await.unwrap().unwrap();
    }

    // Every node's apply stream (what will feed its watch hub) saw each write exactly once,
    // in revision order, and all nodes saw the same stream.
    let streams: Vec<Vec<Seen>> = c
        .members
        .iter()
        .map(|m| m.events.lock().unwrap().clone())
        .collect();
    assert_eq!(streams[0].len(), 3, "{:?}", streams[0]);
    assert!(streams[0].windows(2).all(|w| w[0].0 < w[1].0));
    assert!(streams.iter().all(|s| *s == streams[0]));
    // Identical revisions everywhere: the state machine is deterministic.
    let revs: Vec<i64> = (0..3)
        .map(|i| {
            Reader::open(c.node(i).db_path())
                .unwrap()
                .view()
                .unwrap()
                .current_rev
        })
        .collect();
    assert!(revs.iter().all(|r| *r == revs[0]), "{revs:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_leader_loss_elects_a_new_leader_and_the_old_one_catches_up_on_restart() {
    let mut c = Cluster::start(5000).await;
    let old = c.leader().await;
    let old_id = c.node(old).id();
    c.node(old).propose(put("before", "1")).await.unwrap().unwrap();
    c.kill(old).await;

    let new = c.leader().await;
    assert_ne!(c.node(new).id(), old_id);
    // Writes continue, through the new leader and through the remaining follower.
    for i in c.running() {
        txn_ok(c.node(i).propose(put(&format!("after{i}"), "2")).await.unwrap());
    }

    c.restart(old).await;
    let back = c.node(old);
    back.wait_for_recovery(Duration::from_secs(15)).await.unwrap();
    back.linearizable_barrier().await.unwrap();
    for i in c.running() {
        if i != old {
            assert_eq!(
                read(back.db_path(), &format!("after{i}")).as_deref(),
                Some(&b"2"[..])
            );
        }
    }
    assert_eq!(read(back.db_path(), "before").as_deref(), Some(&b"1"[..]));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t30_lagging_node_catches_up_by_snapshot() {
    let mut c = Cluster::start(10).await;
    let leader = c.leader().await;
    let lagging = (leader + 1) % 3;
    let lagging_last = c.node(lagging).status().last_log_index.unwrap_or(0);
    c.kill(lagging).await;
    write_until_purged_past(&c, leader, lagging_last).await;
    restart_and_catch_up_by_snapshot(&mut c, lagging).await;
    c.shutdown().await;
}

/// While a member is down: 60 writes (`s00`..`s59`) through `leader`, until the leader has
/// snapshotted and purged its log past `lagging_last`, what the member holds, so that only a
/// snapshot can bring it back.
async fn write_until_purged_past(c: &Cluster, leader: usize, lagging_last: u64) {
    for k in 0..60 {
        txn_ok(
            c.node(leader)
                .propose(put(&format!("s{k:02}"), "x"))
                .await
                .unwrap(),
        );
    }
    let l = c.node(leader);
    eventually_some(Duration::from_secs(15), "leader purges its log", async || {
        (l.status().purged_index.unwrap_or(0) > lagging_last).then_some(())
    })
    .await;
}

/// Restart `lagging` after `write_until_purged_past`: a snapshot brings it level, and it keeps
/// replicating normally afterwards.
async fn restart_and_catch_up_by_snapshot(c: &mut Cluster, lagging: usize) {
    c.restart(lagging).await;
    let n = c.node(lagging);
    eventually_some(
        Duration::from_secs(20),
        "snapshot installed on the lagging node",
        async || (read(n.db_path(), "s59").is_some()).then_some(()),
    )
    .await;
    assert!(n.status().snapshot_index.is_some(), "{:?}", n.status());
    assert_eq!(read(n.db_path(), "s00").as_deref(), Some(&b"x"[..]));
    txn_ok(n.propose(put("post", "y")).await.unwrap());
    assert_eq!(read(n.db_path(), "post").as_deref(), Some(&b"y"[..]));
}

/// The page size of the SQLite file at `db`, and whether its `kv` is a `WITHOUT ROWID` table
/// (as earlier builds made it) rather than a rowid table (as this build does).
fn format(db: &std::path::Path) -> (i64, bool) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
    let sql: String = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'kv'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    (page, sql.contains("WITHOUT ROWID"))
}

/// A member whose `state.db` an earlier build created (`kv` a `WITHOUT ROWID` table, 16 KiB
/// pages) falls behind the purged log of a leader whose file this build created (a rowid
/// `kv`, 4 KiB pages). The backup API refuses to change a WAL file's page size and the member's
/// readers keep its file open, so the install first rewrites the snapshot in the member's own
/// format. The member catches up, keeps its format, and replicates on; the inbox keeps no
/// rewrite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t31_a_member_of_the_earlier_format_catches_up_from_a_snapshot_of_the_new_one() {
    let mut c = Cluster::start(10).await;
    let leader = c.leader().await;
    let lagging = (leader + 1) % 3;
    let lagging_last = c.node(lagging).status().last_log_index.unwrap_or(0);
    let db = c.node(lagging).db_path().to_path_buf();
    assert_eq!(format(c.node(leader).db_path()), (4096, false));
    c.kill(lagging).await;
    // The same data in the earlier format, as if that build had created the file (offline, out
    // of WAL mode: the only way SQLite changes a page size).
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let columns = "rev, sub, key, create_rev, version, lease, value, deleted, \
                       prev_rev, prev_create_rev, prev_version, prev_lease, prev_value";
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=delete;
             BEGIN;
             ALTER TABLE kv RENAME TO kv_rowid;
             CREATE TABLE kv (
                 rev INTEGER NOT NULL, sub INTEGER NOT NULL, key BLOB NOT NULL,
                 create_rev INTEGER NOT NULL, version INTEGER NOT NULL, lease INTEGER NOT NULL,
                 value BLOB NOT NULL, deleted INTEGER NOT NULL, prev_rev INTEGER NOT NULL,
                 prev_create_rev INTEGER NOT NULL, prev_version INTEGER NOT NULL,
                 prev_lease INTEGER NOT NULL, prev_value BLOB, PRIMARY KEY (rev, sub)
             ) WITHOUT ROWID;
             INSERT INTO kv ({columns}) SELECT {columns} FROM kv_rowid;
             DROP TABLE kv_rowid;
             CREATE UNIQUE INDEX kv_key_rev ON kv (key, rev);
             COMMIT;
             PRAGMA page_size=16384; VACUUM; PRAGMA journal_mode=wal;"
        ))
        .unwrap();
    }
    assert_eq!(format(&db), (16_384, true));
    write_until_purged_past(&c, leader, lagging_last).await;
    restart_and_catch_up_by_snapshot(&mut c, lagging).await;
    assert_eq!(format(&db), (16_384, true), "the member keeps its own format");
    let inbox = c.members[lagging].dir.join("raft").join("inbox");
    let left: Vec<_> = std::fs::read_dir(&inbox)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains("rewritten"))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "rewrites left in {}: {left:?}", inbox.display());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t40_leadership_transfer_and_member_removal() {
    let mut c = Cluster::start(5000).await;
    let from = c.leader().await;
    let to = (from + 1) % 3;
    c.node(from).transfer_leader(c.node(to).id()).await.unwrap();
    // The trigger returns at once; the handover completes asynchronously.
    eventually_some(
        Duration::from_secs(10),
        "leadership to move to the chosen node",
        async || (c.leader().await == to).then_some(()),
    )
    .await;

    // Remove the old leader: the new voter set is the other two, and writes continue.
    let keep: BTreeSet<u64> = (0..3).filter(|i| *i != from).map(|i| c.node(i).id()).collect();
    c.node(to).change_membership(keep.clone()).await.unwrap();
    for i in (0..3).filter(|i| *i != from) {
        let n = c.node(i);
        eventually_some(Duration::from_secs(10), "the smaller voter set", async || {
            (n.status().voters == keep).then_some(())
        })
        .await;
    }
    c.kill(from).await;
    let other = (0..3).find(|i| *i != from && *i != to).unwrap();
    txn_ok(c.node(other).propose(put("after-removal", "1")).await.unwrap());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t50_isolated_leader_refuses_linearizable_reads_and_rejoins() {
    let c = Cluster::start(5000).await;
    let old = c.leader().await;
    let old_id = c.node(old).id();
    txn_ok(c.node(old).propose(put("k", "old")).await.unwrap());
    c.faults.isolate(old_id);

    // The majority elects a new leader and keeps accepting writes.
    let others: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    eventually_some(
        Duration::from_secs(15),
        "the majority to elect a new leader",
        async || {
            let a = c.node(others[0]).status().leader?;
            (Some(a) == c.node(others[1]).status().leader && a != old_id).then_some(a)
        },
    )
    .await;
    txn_ok(c.node(others[0]).propose(put("k", "new")).await.unwrap());

    // The isolated node still has the old value locally, but it must not serve it as a
    // linearizable read, and it cannot commit a write.
    assert_eq!(read(c.node(old).db_path(), "k").as_deref(), Some(&b"old"[..]));
    let err = c.node(old).linearizable_barrier().await.unwrap_err();
    assert!(
        matches!(err, RaftNodeError::Timeout { .. } | RaftNodeError::NoLeader(_)),
        "{err}"
    );
    let err = c.node(old).propose(put("k", "lost")).await.unwrap_err();
    assert!(
        matches!(err, RaftNodeError::Ambiguous(_) | RaftNodeError::NoLeader(_)),
        "{err}"
    );

    // Healed, it follows the new leader: the barrier succeeds and the read is current. Its
    // uncommitted "lost" entry was truncated, never applied.
    c.faults.heal(old_id);
    let n = c.node(old);
    eventually_some(Duration::from_secs(15), "a barrier after healing", async || {
        n.linearizable_barrier().await.ok()
    })
    .await;
    assert_eq!(read(n.db_path(), "k").as_deref(), Some(&b"new"[..]));
    c.shutdown().await;
}
