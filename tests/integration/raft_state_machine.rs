//! The Raft state machine over the SQLite store: one transaction per batch, Raft metadata
//! persisted with the data, and at-most-once application of a retried proposal (dedup).
#![allow(clippy::tests_outside_test_module, clippy::unwrap_used)]

use std::sync::Arc;

use k8sd::datastore::{
    Command, CommandOutput, Compare, CompareResult, CompareTarget, KeyRange, Op, PutRequest, Reader,
    TxnRequest,
};
use k8sd::raft::Response;
use k8sd::raft::state_machine::{StateMachine, Waiters};
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
