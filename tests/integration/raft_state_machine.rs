//! The Raft state machine over the SQLite store: one transaction per batch, Raft metadata
//! persisted with the data, and at-most-once application of a retried proposal (dedup).
#![allow(clippy::tests_outside_test_module, clippy::unwrap_used)]

use std::sync::Arc;

use k8sd::datastore::{
    Command, CommandOutput, Compare, CompareResult, CompareTarget, KeyRange, LeaseChange, LeaseChanges, Op,
    PutRequest, Reader, TxnRequest,
};
use k8sd::raft::Response;
use k8sd::raft::state_machine::{ApplyHook, StateMachine, Waiters};
use k8sd::raft::types::{Entry, LogId, Request, TypeConfig};
use openraft::EntryPayload;
use openraft::alias::LeaderIdOf;
use openraft::storage::RaftStateMachine;
use openraft::vote::RaftLeaderIdExt;

const ORIGIN: u64 = 7;

fn log_id(index: u64) -> LogId {
    LogId::new(LeaderIdOf::<TypeConfig>::new_committed(1, 1), index)
}

/// etcd's create: put only if the key does not exist yet.
fn create(key: &str) -> Command {
    Command::Txn(TxnRequest {
        compare: vec![Compare {
            range: KeyRange::single(key.as_bytes().to_vec()),
            result: CompareResult::Equal,
            target: CompareTarget::Create(0),
        }],
        success: vec![Op::Put(PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            ..Default::default()
        })],
        failure: vec![],
    })
}

struct Sm {
    _dir: tempfile::TempDir,
    sm: StateMachine,
    waiters: Arc<Waiters>,
    db: std::path::PathBuf,
    next_index: u64,
}

impl Sm {
    fn open() -> Sm {
        let dir = tempfile::tempdir().unwrap();
        let waiters = Arc::new(Waiters::default());
        let db = dir.path().join("state.db");
        let sm = StateMachine::open(ORIGIN, &db, &dir.path().join("snap"), waiters.clone(), None).unwrap();
        Sm {
            _dir: dir,
            sm,
            waiters,
            db,
            next_index: 1,
        }
    }

    /// Apply one entry carrying `(ORIGIN, request_id)` and return the outcome it reported.
    async fn apply(&mut self, request_id: u64, low_water: u64, cmd: Command) -> Response {
        let rx = self.waiters.register(request_id);
        let req = Request {
            origin: ORIGIN,
            request_id,
            low_water,
            cmd,
        };
        let entry = Entry {
            log_id: log_id(self.next_index),
            payload: EntryPayload::Normal(req),
        };
        self.next_index += 1;
        self.sm
            .apply(futures::stream::iter([Ok((entry, None))]))
            .await
            .unwrap();
        rx.await.unwrap()
    }

    fn revision(&self) -> i64 {
        Reader::open(&self.db).unwrap().view().unwrap().current_rev
    }
}

fn succeeded(r: Response) -> (bool, i64) {
    match r {
        Response::Applied(CommandOutput::Txn { revision, result }) => (result.succeeded, revision),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn t10_a_retried_create_returns_its_own_success_not_already_exists() {
    let mut s = Sm::open();
    assert_eq!(succeeded(s.apply(1, 1, create("/a")).await), (true, 2));
    // The same request again (a retry after a leader change): not applied twice, and it
    // reports the original success rather than a failed compare.
    assert_eq!(succeeded(s.apply(1, 1, create("/a")).await), (true, 2));
    assert_eq!(s.revision(), 2);
    // A different request with the same body is a real second create and fails its compare.
    assert_eq!(succeeded(s.apply(2, 1, create("/a")).await), (false, 2));
}

#[tokio::test]
async fn t20_low_water_prunes_dedup_rows_deterministically() {
    let mut s = Sm::open();
    assert!(succeeded(s.apply(1, 1, create("/a")).await).0);
    // The proposer reports that nothing below 2 is in flight any more: row 1 is dropped, so
    // a (buggy) late repeat of request 1 is applied afresh, and its compare fails.
    assert!(succeeded(s.apply(2, 2, create("/b")).await).0);
    assert_eq!(succeeded(s.apply(1, 1, create("/a")).await), (false, 3));
}

#[tokio::test]
async fn t30_applied_log_id_survives_reopen() {
    let mut s = Sm::open();
    s.apply(1, 1, create("/a")).await;
    s.apply(2, 1, create("/b")).await;
    let (applied, _) = s.sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(2)));
    let dir = s._dir.path().to_path_buf();
    drop(s.sm);
    let mut again = StateMachine::open(
        ORIGIN,
        &dir.join("state.db"),
        &dir.join("snap"),
        Arc::default(),
        None,
    )
    .unwrap();
    assert_eq!(again.applied_state().await.unwrap().0, Some(log_id(2)));
}

/// One apply batch that grants lease 9, revokes it and grants it again (as a client's
/// revoke and re-grant of one ID do when they commit together) leaves the lease in the store
/// with its second TTL, and reports the changes to the node's applier in log order, so its
/// lessor ends knowing the lease too.
#[tokio::test]
async fn t40_a_revoke_and_a_grant_of_one_lease_in_one_batch_reach_the_applier_in_log_order() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let seen: Arc<std::sync::Mutex<Vec<LeaseChanges>>> = Arc::default();
    let record = seen.clone();
    let hook: ApplyHook = Arc::new(move |b| record.lock().unwrap().push(b.leases));
    let mut sm =
        StateMachine::open(ORIGIN, &db, &dir.path().join("snap"), Arc::default(), Some(hook)).unwrap();
    let cmds = [
        Command::LeaseGrant { id: 9, ttl: 30 },
        Command::LeaseRevoke { id: 9 },
        Command::LeaseGrant { id: 9, ttl: 5 },
    ];
    let entries = cmds.into_iter().zip(1u64..).map(|(cmd, i)| {
        let req = Request {
            origin: ORIGIN,
            request_id: i,
            low_water: 1,
            cmd,
        };
        let entry = Entry {
            log_id: log_id(i),
            payload: EntryPayload::Normal(req),
        };
        Ok((entry, None))
    });
    sm.apply(futures::stream::iter(entries)).await.unwrap();
    // The batch is committed, and the applier told, on the apply thread.
    sm.apply_thread().flush().await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![LeaseChanges {
            in_log_order: vec![
                LeaseChange::Granted { id: 9, ttl: 30 },
                LeaseChange::Revoked { id: 9 },
                LeaseChange::Granted { id: 9, ttl: 5 },
            ],
        }],
        "one batch, its lease changes in log order"
    );
    assert_eq!(Reader::open(&db).unwrap().leases().unwrap(), vec![(9, 5)]);
}

/// What the applier heard of one batch: its last log index and its events' revisions.
type Batch = (u64, Vec<i64>);

/// Committed ranges that openraft hands over while the apply thread is busy become one SQLite
/// transaction: the applier hears of one batch for them, whose events are every write's, in
/// log order, and every writer still gets its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t50_ranges_queued_behind_a_running_apply_commit_as_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let waiters = Arc::new(Waiters::default());
    // The applier of the first batch holds the apply thread until the test lets it go.
    let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let gate = std::sync::Mutex::new(Some((entered_tx, release_rx)));
    let batches: Arc<std::sync::Mutex<Vec<Batch>>> = Arc::default();
    let record = batches.clone();
    let hook: ApplyHook = Arc::new(move |b| {
        let revisions = b.events.iter().map(|e| e.kv.mod_revision).collect();
        record
            .lock()
            .unwrap()
            .push((b.applied.map_or(0, |p| p.index), revisions));
        if let Some((entered, release)) = gate.lock().unwrap().take() {
            entered.send(()).unwrap();
            release.recv().unwrap();
        }
    });
    let mut sm =
        StateMachine::open(ORIGIN, &db, &dir.path().join("snap"), waiters.clone(), Some(hook)).unwrap();
    let put = |i: u64| {
        let req = Request {
            origin: ORIGIN,
            request_id: i,
            low_water: 1,
            cmd: Command::Txn(TxnRequest {
                compare: vec![],
                success: vec![Op::Put(PutRequest {
                    key: format!("/k{i}").into_bytes(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })],
                failure: vec![],
            }),
        };
        Ok((
            Entry {
                log_id: log_id(i),
                payload: EntryPayload::Normal(req),
            },
            None,
        ))
    };
    let answers: Vec<_> = (1..=4).map(|i| waiters.register(i)).collect();
    sm.apply(futures::stream::iter([put(1)])).await.unwrap();
    tokio::task::spawn_blocking(move || entered_rx.recv().unwrap())
        .await
        .unwrap();
    // The thread is inside the first batch's applier: these three ranges queue behind it.
    sm.apply(futures::stream::iter([put(2)])).await.unwrap();
    sm.apply(futures::stream::iter([put(3), put(4)])).await.unwrap();
    release_tx.send(()).unwrap();
    for (i, rx) in (1..).zip(answers) {
        match rx.await.unwrap() {
            Response::Applied(CommandOutput::Txn { revision, .. }) => assert_eq!(revision, i + 1),
            other => panic!("write {i}: {other:?}"),
        }
    }
    sm.apply_thread().flush().await.unwrap();
    assert_eq!(
        *batches.lock().unwrap(),
        vec![(1, vec![2]), (4, vec![3, 4, 5])],
        "the first range alone, then the three queued behind it in one batch"
    );
    assert_eq!(sm.apply_thread().applied().index, 4);
}
