// Integration tests are their own crate; the unit-test lint does not apply here.
#![allow(clippy::tests_outside_test_module)]

//! The etcd v3 API of `k8sd datastore`, driven by real clients: the Rust `etcd-client` crate
//! and Debian's `etcdctl`. Each test starts its own server on a free loopback port.

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Kind, Server, client};
use etcd_client::{Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};

async fn next_events(stream: &mut etcd_client::WatchStream) -> etcd_client::WatchResponse {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("watch response within 5 s")
        .expect("watch stream ok")
        .expect("watch stream open")
}

#[test]
fn etcdctl_put_get_del_txn_lease_compaction() {
    let s = Server::start(Kind::K8sd);
    assert_eq!(s.etcdctl(&["put", "foo", "bar"]).trim(), "OK");
    assert_eq!(s.etcdctl(&["get", "foo", "--print-value-only"]).trim(), "bar");
    assert!(s.etcdctl(&["put", "foo", "baz", "--prev-kv"]).contains("bar"));
    assert_eq!(s.etcdctl(&["del", "foo"]).trim(), "1");
    assert_eq!(s.etcdctl(&["get", "foo"]).trim(), "");
    let lease = s.etcdctl(&["lease", "grant", "30"]);
    let id = lease
        .split_whitespace()
        .nth(1)
        .expect("lease id in etcdctl output")
        .to_string();
    s.etcdctl(&["put", "leased", "v", &format!("--lease={id}")]);
    assert!(
        s.etcdctl(&["lease", "timetolive", &id, "--keys"])
            .contains("leased")
    );
    s.etcdctl(&["lease", "revoke", &id]);
    assert_eq!(
        s.etcdctl(&["get", "leased"]).trim(),
        "",
        "revoking a lease deletes its keys"
    );
    // Compaction: reads below the compacted revision fail with etcd's message.
    assert!(s.etcdctl(&["compaction", "3"]).contains("compacted revision 3"));
    let out = s.etcdctl_raw(&["get", "foo", "--rev=2"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("required revision has been compacted"));
    let status = s.etcdctl(&["endpoint", "status", "-w", "json"]);
    assert!(
        status.contains("\"version\":\"3.6"),
        "status reports an etcd version >= 3.5.13: {status}"
    );
    let health = s.etcdctl_raw(&["endpoint", "health"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&health.stdout),
        String::from_utf8_lossy(&health.stderr)
    );
    assert!(
        health.status.success() && text.contains("is healthy"),
        "endpoint health: {text}"
    );
}

#[tokio::test]
async fn kube_apiserver_shaped_create_update_delete() {
    let s = Server::start(Kind::K8sd);
    let mut c = client(&s).await;
    let key = "/registry/pods/default/p1";
    // Create: compare mod_revision == 0.
    let create = Txn::new()
        .when([Compare::mod_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key, "v1", None)]);
    let r = c.txn(create.clone()).await.unwrap();
    assert!(r.succeeded());
    let rev = r.header().unwrap().revision();
    assert_eq!(rev, 2, "the first write of an empty store takes revision 2");
    // A second create fails without consuming a revision.
    let r = c.txn(create).await.unwrap();
    assert!(!r.succeeded());
    assert_eq!(r.header().unwrap().revision(), 2);
    // GuaranteedUpdate with a stale revision returns the current object on the failure branch.
    let update = |at: i64, v: &str| {
        Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, at)])
            .and_then([TxnOp::put(key, v, None)])
            .or_else([TxnOp::get(key, None)])
    };
    assert!(c.txn(update(rev, "v2")).await.unwrap().succeeded());
    let r = c.txn(update(rev, "v3")).await.unwrap();
    assert!(!r.succeeded());
    let etcd_client::TxnOpResponse::Get(g) = &r.op_responses()[0] else {
        panic!("range response expected")
    };
    assert_eq!(g.kvs()[0].value(), b"v2");
    assert_eq!((g.kvs()[0].mod_revision(), g.kvs()[0].version()), (3, 2));
    // Paginated list with exact count.
    for i in 0..10 {
        c.put(format!("/registry/cm/ns/{i:02}"), "x", None).await.unwrap();
    }
    let page = c
        .get(
            "/registry/cm/",
            Some(GetOptions::new().with_prefix().with_limit(4)),
        )
        .await
        .unwrap();
    assert_eq!((page.kvs().len(), page.count(), page.more()), (4, 10, true));
    let pinned = page.header().unwrap().revision();
    c.put("/registry/cm/ns/99", "late", None).await.unwrap();
    let mut next = page.kvs()[3].key().to_vec();
    next.push(0);
    let rest = c
        .get(
            next,
            Some(
                GetOptions::new()
                    .with_range("/registry/cm0")
                    .with_revision(pinned),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        rest.kvs().len(),
        6,
        "page 2 at the pinned revision does not see the late write"
    );
    assert_eq!(
        rest.header().unwrap().revision(),
        pinned + 1,
        "header carries the current revision"
    );
}

#[tokio::test]
async fn watch_replays_history_keeps_txn_atomic_and_cancels_compacted_starts() {
    let s = Server::start(Kind::K8sd);
    let mut c = client(&s).await;
    c.put("/w/a", "1", None).await.unwrap(); // 2
    c.put("/w/a", "2", None).await.unwrap(); // 3
    c.txn(Txn::new().and_then([TxnOp::put("/w/b", "1", None), TxnOp::delete("/w/a", None)]))
        .await
        .unwrap(); // 4
    let mut stream = c
        .watch(
            "/w/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(2)
                    .with_prev_key(),
            ),
        )
        .await
        .unwrap();
    let created = next_events(&mut stream).await;
    assert!(created.created());
    let mut seen: Vec<(i64, EventType)> = Vec::new();
    while seen.len() < 4 {
        let r = next_events(&mut stream).await;
        let revs: Vec<i64> = r
            .events()
            .iter()
            .map(|e| e.kv().unwrap().mod_revision())
            .collect();
        if revs.contains(&4) {
            assert_eq!(
                revs.iter().filter(|&&r| r == 4).count(),
                2,
                "both events of revision 4 in one response"
            );
        }
        for e in r.events() {
            if e.event_type() == EventType::Delete || e.kv().unwrap().version() > 1 {
                assert!(e.prev_kv().is_some(), "modify and delete carry prev_kv");
            }
            seen.push((e.kv().unwrap().mod_revision(), e.event_type()));
        }
    }
    assert_eq!(
        seen,
        vec![
            (2, EventType::Put),
            (3, EventType::Put),
            (4, EventType::Put),
            (4, EventType::Delete)
        ]
    );
    // Live events follow with no gap or duplicate.
    c.put("/w/c", "1", None).await.unwrap();
    let r = next_events(&mut stream).await;
    assert_eq!(r.events()[0].kv().unwrap().mod_revision(), 5);

    c.compact(4, None).await.unwrap();
    let mut old = c
        .watch(
            "/w/",
            Some(WatchOptions::new().with_prefix().with_start_revision(3)),
        )
        .await
        .unwrap();
    let mut cancelled = None;
    for _ in 0..2 {
        let r = next_events(&mut old).await;
        if r.canceled() {
            cancelled = Some(r.compact_revision());
        }
    }
    assert_eq!(
        cancelled,
        Some(4),
        "a compacted start is cancelled with compact_revision"
    );
}

#[tokio::test]
async fn progress_request_reports_current_revision_and_future_starts_wait() {
    let s = Server::start(Kind::K8sd);
    let mut c = client(&s).await;
    for i in 0..3 {
        c.put(format!("k{i}"), "v", None).await.unwrap();
    }
    let mut stream = c
        .watch("k", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(next_events(&mut stream).await.created());
    stream.request_progress().await.unwrap();
    let p = next_events(&mut stream).await;
    assert!(p.events().is_empty() && !p.created() && !p.canceled());
    assert_eq!(
        p.header().unwrap().revision(),
        4,
        "progress carries the current revision"
    );

    // A watch from a future revision waits until the store reaches it.
    let mut future = c
        .watch("z", Some(WatchOptions::new().with_start_revision(7)))
        .await
        .unwrap();
    assert!(next_events(&mut future).await.created());
    c.put("z", "5", None).await.unwrap(); // 5: before the start
    c.put("y", "6", None).await.unwrap(); // 6
    c.put("z", "7", None).await.unwrap(); // 7
    let r = next_events(&mut future).await;
    assert_eq!(r.events().len(), 1);
    assert_eq!(r.events()[0].kv().unwrap().value(), b"7");
}

#[tokio::test]
async fn concurrent_writers_are_seen_once_in_order_by_every_watcher() {
    let s = Server::start(Kind::K8sd);
    let c = client(&s).await;
    let mut streams = Vec::new();
    for _ in 0..8 {
        let st = c
            .watch_client()
            .watch("/c/", Some(WatchOptions::new().with_prefix()))
            .await
            .unwrap();
        streams.push(st);
    }
    for st in streams.iter_mut() {
        assert!(next_events(st).await.created());
    }
    let writers = 16;
    let per = 50;
    let mut handles = Vec::new();
    for w in 0..writers {
        let mut kv = c.kv_client();
        handles.push(tokio::spawn(async move {
            for i in 0..per {
                kv.put(format!("/c/{w}/{i}"), "v", None).await.unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let total = writers * per;
    for st in streams.iter_mut() {
        let mut revs = Vec::new();
        while revs.len() < total {
            for e in next_events(st).await.events() {
                revs.push(e.kv().unwrap().mod_revision());
            }
        }
        let expected: Vec<i64> = (2..2 + total as i64).collect();
        assert_eq!(revs, expected, "every revision exactly once, in order");
    }
}

#[tokio::test]
async fn unknown_leases_and_oversized_requests_get_etcd_errors() {
    let s = Server::start(Kind::K8sd);
    let mut c = client(&s).await;
    let err = c
        .put("k", "v", Some(PutOptions::new().with_lease(12345)))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("etcdserver: requested lease not found"), "{err}");
    let err = c
        .put("big", vec![0u8; 1024 * 1024 + 600 * 1024], None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("etcdserver: request is too large"), "{err}");
    let ok = c.put("fits", vec![0u8; 1024 * 1024], None).await;
    assert!(ok.is_ok(), "a 1 MiB value is accepted: {ok:?}");
    assert_eq!(
        c.get("k", None).await.unwrap().count(),
        0,
        "refused writes change nothing"
    );
    let g = c.lease_grant(1, None).await.unwrap();
    assert_eq!(g.ttl(), 2, "TTL raised to the minimum like etcd");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let err = c.lease_time_to_live(g.id(), None).await;
    assert!(
        err.is_err() || err.unwrap().ttl() <= 0,
        "an unrenewed lease expires"
    );
}

/// kill -9 during a write load: every acknowledged write must be there after restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_writes_loses_no_acknowledged_write() {
    let s = Server::start(Kind::K8sd);
    let c = client(&s).await;
    let acked = std::sync::Arc::new(std::sync::Mutex::new(HashMap::<String, String>::new()));
    let mut handles = Vec::new();
    for w in 0..8 {
        let mut kv = c.kv_client();
        let acked = acked.clone();
        handles.push(tokio::spawn(async move {
            for i in 0.. {
                let (k, v) = (format!("/crash/{w}/{}", i % 40), format!("{w}-{i}"));
                match kv.put(k.clone(), v.clone(), None).await {
                    Ok(_) => {
                        acked.lock().unwrap().insert(k, v);
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (dir, data) = s.kill9();
    for h in handles {
        let _ = h.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "the load made progress before the crash ({} keys)",
        acked.len()
    );
    let s = Server::start_in(Kind::K8sd, dir, data, &[]);
    let mut c = client(&s).await;
    let all = c
        .get("/crash/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let stored: HashMap<String, String> = all
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
            )
        })
        .collect();
    for (k, v) in &acked {
        let got = stored
            .get(k)
            .unwrap_or_else(|| panic!("acknowledged key {k} lost"));
        // A later write to the same key may have landed without its ack reaching us.
        let (gw, gi) = got.split_once('-').unwrap();
        let (vw, vi) = v.split_once('-').unwrap();
        assert_eq!(gw, vw);
        assert!(
            gi.parse::<u64>().unwrap() >= vi.parse::<u64>().unwrap(),
            "key {k} went back from {v} to {got}"
        );
    }
    // The store keeps working after recovery.
    c.put("/after", "ok", None).await.unwrap();
}

/// Backups: `etcdctl snapshot save` works against k8sd, with the endpoint written as
/// a URL. The file is what etcd's framing gives: the data, then its SHA-256 (etcd's
/// v3rpc/maintenance.go appends it; `snapshot restore` checks it). The data is a consistent
/// SQLite copy of the store holding every key at the revision of the save.
#[tokio::test]
async fn etcdctl_snapshot_save_streams_a_checksummed_consistent_copy() {
    use sha2::Digest;
    let s = Server::start(Kind::K8sd);
    let mut c = client(&s).await;
    // Enough data for many 32 KiB chunks.
    let big = "x".repeat(10_000);
    for i in 0..100 {
        c.put(format!("/snap/{i:03}"), big.clone(), None).await.unwrap();
    }
    let rev = c
        .get("/snap/000", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("k8sd.snap");
    let out = std::process::Command::new(common::etcdctl_bin())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", s.url()))
        .args(["snapshot", "save"])
        .arg(&file)
        .output()
        .unwrap();
    common::must_succeed("etcdctl snapshot save", out);
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.len() > 1_000_000, "{} bytes", bytes.len());
    let (data, sum) = bytes.split_at(bytes.len() - 32);
    assert_eq!(
        sum,
        sha2::Sha256::digest(data).as_slice(),
        "the trailing SHA-256 is of the data"
    );
    let db = dir.path().join("state.db");
    std::fs::write(&db, data).unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    let current: i64 = conn
        .query_row("SELECT value FROM meta WHERE name = 'current_rev'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(current, rev);
    let keys: i64 = conn
        .query_row("SELECT count(*) FROM latest WHERE key LIKE '/snap/%'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(keys, 100);
    // No temporary copy is left beside the live store.
    let leftovers: Vec<_> = std::fs::read_dir(s.data_dir().join("datastore"))
        .or_else(|_| std::fs::read_dir(s.data_dir()))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".snapshot-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
