//! openraft's storage conformance suite, run against our SQLite log store and state machine.
#![allow(clippy::tests_outside_test_module, clippy::unwrap_used)]

use std::sync::Arc;

use k8sd::raft::log_store::LogStore;
use k8sd::raft::state_machine::{StateMachine, Waiters};
use k8sd::raft::types::TypeConfig;
use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().unwrap();
        let log = LogStore::open(&dir.path().join("raft")).unwrap();
        let sm = StateMachine::open(
            1,
            &dir.path().join("state.db"),
            &dir.path().join("snapshots"),
            Arc::new(Waiters::default()),
            None,
        )
        .unwrap();
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes() {
    Suite::test_all(Builder).await.unwrap();
}
