//! Crash behaviour of the Raft log store.
//!
//! The store keeps the log in SQLite (WAL, synchronous=FULL) with a CRC-32 per row. These tests
//! build the exact bytes a crash can leave behind and check the two promises of issue 3: a torn
//! tail (an unfinished, never-acknowledged batch) is dropped at startup, not refused, and
//! corruption inside the acknowledged log stops the node with an error that tells the operator
//! to rejoin.
#![allow(clippy::tests_outside_test_module, clippy::unwrap_used)]

use std::path::Path;

use k8sd::datastore::{Command, TxnRequest};
use k8sd::raft::log_store::{LogStore, LogStoreError};
use k8sd::raft::types::{Entry, LogId, Request, TypeConfig};
use openraft::alias::LeaderIdOf;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use openraft::vote::RaftLeaderIdExt;
use openraft::{EntryPayload, RaftLogReader};

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(LeaderIdOf::<TypeConfig>::new_committed(term, 1), index)
}

fn entry(term: u64, index: u64) -> Entry {
    let req = Request {
        origin: 1,
        request_id: index,
        low_water: 0,
        cmd: Command::Txn(TxnRequest::default()),
    };
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(req),
    }
}

/// Append and wait until the batch is reported durable.
async fn append(store: &mut LogStore, range: std::ops::RangeInclusive<u64>) {
    let (tx, rx) = TypeConfig::oneshot();
    store
        .append(range.map(|i| entry(1, i)), IOFlushed::signal(tx))
        .await
        .unwrap();
    rx.await.unwrap().unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[tokio::test]
async fn t10_entries_and_vote_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = LogStore::open(dir.path()).unwrap();
        append(&mut s, 1..=5).await;
        let vote = openraft::alias::VoteOf::<TypeConfig>::new(3, 7);
        s.save_vote(&vote).await.unwrap();
    }
    // The writer thread closes its connection once the store is dropped.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut s = LogStore::open(dir.path()).unwrap();
    let st = s.get_log_state().await.unwrap();
    assert_eq!(st.last_log_id, Some(log_id(1, 5)));
    let mut r = s.get_log_reader().await;
    assert_eq!(r.try_get_log_entries(1..6).await.unwrap().len(), 5);
    assert_eq!(
        r.read_vote().await.unwrap(),
        Some(openraft::alias::VoteOf::<TypeConfig>::new(3, 7))
    );
}

#[tokio::test]
async fn t20_torn_tail_is_truncated_not_refused() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let mut s = LogStore::open(&live).unwrap();
    append(&mut s, 1..=5).await;
    append(&mut s, 6..=10).await;
    // A crash image: the files as they are now, with the last WAL frame cut short, as when
    // power fails in the middle of writing the second batch.
    let crash = dir.path().join("crash");
    copy_dir(&live, &crash);
    let wal = crash.join("log.db-wal");
    let len = std::fs::metadata(&wal).unwrap().len();
    assert!(len > 0, "the test needs the batches still in the WAL");
    let f = std::fs::OpenOptions::new().write(true).open(&wal).unwrap();
    f.set_len(len - 100).unwrap();
    drop(f);

    let mut reopened = LogStore::open(&crash).unwrap();
    let st = reopened.get_log_state().await.unwrap();
    // The first, acknowledged batch is intact; the torn second one is gone as a whole.
    assert_eq!(st.last_log_id, Some(log_id(1, 5)));
    let got = reopened
        .get_log_reader()
        .await
        .try_get_log_entries(1..100)
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    // And the log accepts new entries after the truncated tail.
    append(&mut reopened, 6..=6).await;
    drop(s);
}

#[tokio::test]
async fn t30_corrupt_entry_before_the_tail_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = LogStore::open(dir.path()).unwrap();
        append(&mut s, 1..=10).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // Flip bytes of entry 3 behind SQLite's back (bit rot, a bad sector, a stray write).
    let conn = rusqlite::Connection::open(dir.path().join("log.db")).unwrap();
    conn.execute("UPDATE log SET entry = CAST(REPLACE(CAST(entry AS TEXT), '\"origin\"', '\"oRigin\"') AS BLOB) WHERE idx = 3", [])
        .unwrap();
    drop(conn);
    let err = LogStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, LogStoreError::Corrupt { index: 3, .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("rejoin") && msg.contains("checksum"), "{msg}");
}
