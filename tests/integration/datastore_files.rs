// Integration tests are their own crate; the unit-test lint does not apply here.
#![allow(clippy::tests_outside_test_module, clippy::unwrap_used)]

//! What `k8sd datastore` leaves in its files (issues 13 and 15): real processes, standalone and
//! as a Raft member, real files read back from the data directory.
//!
//! - A value written, then deleted and compacted, is no longer anywhere in `state.db` or its
//!   WAL once the WAL is checkpointed: `secure_delete` zeroes deleted rows, including a large
//!   value's overflow pages that compaction frees whole. So is a value overwritten and then
//!   compacted, which the row that replaced it carried for `prev_kv`.
//! - Once writes stop, `state.db-wal` is emptied (truncated to zero bytes) within seconds
//!   instead of staying at its high-water mark.
//!
//! The value also sits in the Raft log (`raft/log.db`) until the log is purged after a
//! snapshot; that file is not checked here (docs/ARCHITECTURE.md, store invariants).

use crate::common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Kind, Server, client, free_port};
use etcd_client::CompactionOptions;

fn start(raft: bool) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args: Vec<String> = if raft {
        vec![format!("--listen-peer-urls=http://127.0.0.1:{}", free_port())]
    } else {
        Vec::new()
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_in(Kind::K8sd, dir, data, &args)
}

fn read(path: &Path) -> Vec<u8> {
    match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("cannot read {}: {e}", path.display()),
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Waits until `state.db-wal` is empty (or gone), as the checkpointer leaves it once the writer
/// is idle, and returns how long that took.
fn wait_wal_empty(wal: &Path, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let len = std::fs::metadata(wal).map_or(0, |m| m.len());
        if len == 0 {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{} still holds {len} bytes {limit:?} after the last write: the idle checkpointer did not truncate it",
            wal.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn compacted_values_are_gone(raft: bool) {
    let server = start(raft);
    let state: PathBuf = server.data_dir().join("state.db");
    let wal: PathBuf = server.data_dir().join("state.db-wal");
    let mut c = client(&server).await;

    // One value small enough to sit inside its b-tree cell, one that ends in overflow pages.
    let small = format!("k8sd-secret-small-{}", std::process::id());
    // SQLite splits a large value between its cell and overflow pages, so its bytes are looked
    // for as two markers: one at the start (in the cell) and one at the end (in an overflow page).
    let head = format!("k8sd-secret-large-head-{}", std::process::id());
    let tail = format!("k8sd-secret-large-tail-{}", std::process::id());
    let large = format!("{head}{}{tail}", "x".repeat(3000));
    c.put("/registry/secrets/ns/small", small.as_str(), None)
        .await
        .unwrap();
    c.put("/registry/secrets/ns/large", large.as_str(), None)
        .await
        .unwrap();
    // One overwritten, not deleted: its new row carries the old value for prev_kv.
    let overwritten = format!("k8sd-secret-overwritten-{}", std::process::id());
    c.put("/registry/secrets/ns/over", overwritten.as_str(), None)
        .await
        .unwrap();
    // Rows around them, so they share pages with values that stay.
    for i in 0..50 {
        c.put(format!("/registry/secrets/ns/keep-{i:02}"), vec![b'k'; 600], None)
            .await
            .unwrap();
    }
    c.put("/registry/secrets/ns/over", "rotated", None).await.unwrap();
    let on_disk = [read(&state), read(&wal)].concat();
    for marker in [&small, &head, &tail, &overwritten] {
        assert!(
            contains(&on_disk, marker.as_bytes()),
            "{marker} must be on disk after the writes, or this test proves nothing"
        );
    }

    // Delete both, overwrite nothing else, and compact past the deletes.
    c.delete("/registry/secrets/ns/small", None).await.unwrap();
    c.delete("/registry/secrets/ns/large", None).await.unwrap();
    let rev = c.put("/registry/other", "after", None).await.unwrap();
    let rev = rev.header().unwrap().revision();
    c.compact(rev, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();

    // No more writes: the checkpointer copies the WAL back and truncates it.
    let took = wait_wal_empty(&wal, Duration::from_secs(20));
    let db = read(&state);
    for marker in [&small, &head, &tail, &overwritten] {
        assert!(
            !contains(&db, marker.as_bytes()),
            "{marker} (deleted and compacted) is still in {} ({} bytes), WAL emptied after {took:?}",
            state.display(),
            db.len()
        );
    }
    // The rows that stayed are still there, read back through the server.
    let kept = c
        .get(
            "/registry/secrets/ns/keep-",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(
        kept.kvs().len(),
        50,
        "the rows that were not deleted must survive"
    );
    let over = c.get("/registry/secrets/ns/over", None).await.unwrap();
    assert_eq!(
        over.kvs()[0].value(),
        b"rotated",
        "the overwritten key keeps its new value"
    );
    assert!(
        c.get("/registry/secrets/ns/small", None)
            .await
            .unwrap()
            .kvs()
            .is_empty(),
        "deleted key must stay deleted"
    );
}

#[tokio::test]
async fn compacted_values_are_gone_standalone() {
    compacted_values_are_gone(false).await;
}

#[tokio::test]
async fn compacted_values_are_gone_raft_member() {
    compacted_values_are_gone(true).await;
}
