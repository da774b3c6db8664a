//! Crash behaviour of the Raft log store.
//!
//! The store keeps the log in SQLite (WAL, synchronous=FULL) with a CRC-32 per row. These tests
//! build the exact bytes a crash can leave behind and check the two promises of docs/design/raft.md: a torn
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

/// `save_committed` queues no write of its own (it cost every write a second fsync): the
/// pointer rides the next transaction, or a last one when the store closes. Either way a
/// restart must find the newest pointer.
#[tokio::test]
async fn t15_committed_pointer_rides_the_next_write_or_the_close() {
    let dir = tempfile::tempdir().unwrap();
    let reopened_committed = || async {
        let mut s = LogStore::open(dir.path()).unwrap();
        s.read_committed().await.unwrap()
    };
    {
        let mut s = LogStore::open(dir.path()).unwrap();
        append(&mut s, 1..=5).await;
        s.save_committed(Some(log_id(1, 3))).await.unwrap();
        append(&mut s, 6..=6).await;
        // Durable with entry 6: a second connection sees it while this store is still open.
        assert_eq!(reopened_committed().await, Some(log_id(1, 3)));
        s.save_committed(Some(log_id(1, 6))).await.unwrap();
        assert_eq!(s.read_committed().await.unwrap(), Some(log_id(1, 6)));
    }
    // Nothing was written after the last pointer: the writer thread saves it as it closes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let found = reopened_committed().await;
        if found == Some(log_id(1, 6)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the committed pointer saved before close was not on disk 5 s later: found {found:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
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
    let changed = conn
        .execute(
            "UPDATE log SET entry = CAST(entry || X'00' AS BLOB) WHERE idx = 3",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(conn);
    let err = LogStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, LogStoreError::Corrupt { index: 3, .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("rejoin") && msg.contains("checksum"), "{msg}");
}

/// An upgrade must not lose the log: a `log.db` written by a k8sd from before the binary entry
/// format (layout 1, serde_json entries) opens, reads back entry for entry, takes new binary
/// entries after the old ones, and is marked layout 2 so that an older k8sd refuses it.
#[tokio::test]
async fn t40_a_json_log_from_an_older_k8sd_is_read_and_extended() {
    let dir = tempfile::tempdir().unwrap();
    let old: Vec<Entry> = (1..=3).map(|i| entry(1, i)).collect();
    {
        // The bytes k8sd 8202a0e and earlier wrote, built by hand.
        let conn = rusqlite::Connection::open(dir.path().join("log.db")).unwrap();
        conn.execute_batch(
            "CREATE TABLE log (idx INTEGER PRIMARY KEY, crc INTEGER NOT NULL, entry BLOB NOT NULL);
             CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
             INSERT INTO meta VALUES ('format', CAST('1' AS BLOB));",
        )
        .unwrap();
        for e in &old {
            let idx = e.log_id.index;
            let blob = serde_json::to_vec(e).unwrap();
            let mut h = crc32fast::Hasher::new();
            h.update(&idx.to_le_bytes());
            h.update(&blob);
            conn.execute(
                "INSERT INTO log (idx, crc, entry) VALUES (?, ?, ?)",
                rusqlite::params![i64::try_from(idx).unwrap(), i64::from(h.finalize()), blob],
            )
            .unwrap();
        }
    }
    let mut s = LogStore::open(dir.path()).unwrap();
    assert_eq!(s.get_log_state().await.unwrap().last_log_id, Some(log_id(1, 3)));
    append(&mut s, 4..=5).await;
    drop(s);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    let mut s = LogStore::open(dir.path()).unwrap();
    let got = s.get_log_reader().await.try_get_log_entries(1..10).await.unwrap();
    let want: Vec<Entry> = (1..=5).map(|i| entry(1, i)).collect();
    assert_eq!(got, want);
    let conn = rusqlite::Connection::open(dir.path().join("log.db")).unwrap();
    let format: Vec<u8> = conn
        .query_row("SELECT value FROM meta WHERE name = 'format'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(format, b"2");
    // The old rows are kept as written (JSON), the new ones are binary.
    let first: Vec<u8> = conn
        .query_row("SELECT entry FROM log WHERE idx = 1", [], |r| r.get(0))
        .unwrap();
    let last: Vec<u8> = conn
        .query_row("SELECT entry FROM log WHERE idx = 5", [], |r| r.get(0))
        .unwrap();
    assert_eq!(first[0], b'{');
    assert_eq!(last[0], 2);
}

/// A log written by a newer k8sd (a format this build does not know) is refused at open with
/// both versions named, and left as it was.
#[tokio::test]
async fn t45_a_log_of_a_newer_format_is_refused_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = LogStore::open(dir.path()).unwrap();
        append(&mut s, 1..=2).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let conn = rusqlite::Connection::open(dir.path().join("log.db")).unwrap();
    conn.execute(
        "UPDATE meta SET value = CAST('3' AS BLOB) WHERE name = 'format'",
        [],
    )
    .unwrap();
    drop(conn);
    let Err(e) = LogStore::open(dir.path()) else {
        panic!("a format-3 log opened")
    };
    assert!(matches!(e, LogStoreError::Format { found: 3, .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("format version 3") && text.contains("understands 1 to 2"),
        "{text}"
    );
    let conn = rusqlite::Connection::open(dir.path().join("log.db")).unwrap();
    let format: Vec<u8> = conn
        .query_row("SELECT value FROM meta WHERE name = 'format'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(format, b"3", "the refused log is left as it was");
}
