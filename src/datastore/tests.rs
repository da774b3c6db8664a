//! Unit tests for the MVCC state machine: plain `#[test]`s on a temporary SQLite file.

use super::*;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("state.db"), Durability::Normal).unwrap();
    (dir, s)
}

fn put(k: &str, v: &str) -> Command {
    Command::Txn(TxnRequest {
        success: vec![Op::Put(PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        })],
        ..Default::default()
    })
}

fn del(k: &str, end: &str) -> Command {
    Command::Txn(TxnRequest {
        success: vec![Op::Delete(DeleteRequest {
            range: KeyRange::new(k.into(), end.into()),
            prev_kv: true,
        })],
        ..Default::default()
    })
}

fn apply(s: &mut Store, cmd: Command) -> Result<CommandOutput, StoreError> {
    let idx = s.meta().applied_index + 1;
    let (mut out, _) = s
        .apply_batch(&[(LogPosition { index: idx, term: 1 }, &cmd)])
        .unwrap();
    out.remove(0)
}

fn get(r: &mut Reader, k: &str, rev: i64) -> Result<RangeResult, StoreError> {
    r.range(&RangeRequest {
        range: KeyRange::single(k),
        revision: rev,
        ..Default::default()
    })
    .map(|x| x.0)
}

#[test]
fn new_store_is_empty_at_revision_one() {
    let (_d, s) = store();
    assert_eq!(s.meta().current_rev, 1);
    let mut r = s.reader().unwrap();
    assert_eq!(r.view().unwrap().current_rev, 1);
}

#[test]
fn put_assigns_dense_revisions_versions_and_create_revision() {
    let (_d, mut s) = store();
    assert_eq!(apply(&mut s, put("a", "1")).unwrap().revision(), 2);
    assert_eq!(apply(&mut s, put("a", "2")).unwrap().revision(), 3);
    assert_eq!(apply(&mut s, put("b", "1")).unwrap().revision(), 4);
    let mut r = s.reader().unwrap();
    let kv = &get(&mut r, "a", 0).unwrap().kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    assert_eq!(kv.value, b"2");
    // Historical read at revision 2 sees the first value.
    assert_eq!(get(&mut r, "a", 2).unwrap().kvs[0].value, b"1");
    // Delete, then recreate: version restarts at 1 with a new create revision.
    apply(&mut s, del("a", "")).unwrap();
    apply(&mut s, put("a", "3")).unwrap();
    let kv = &get(&mut r, "a", 0).unwrap().kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (6, 6, 1));
    assert!(
        get(&mut r, "a", 5).unwrap().kvs.is_empty(),
        "deleted at revision 5"
    );
}

#[test]
fn failed_compare_and_noop_delete_consume_no_revision() {
    let (_d, mut s) = store();
    apply(&mut s, put("k", "v")).unwrap();
    let txn = Command::Txn(TxnRequest {
        compare: vec![Compare {
            range: KeyRange::single("k"),
            result: CompareResult::Equal,
            target: CompareTarget::Mod(0),
        }],
        success: vec![Op::Put(PutRequest {
            key: "k".into(),
            value: "x".into(),
            ..Default::default()
        })],
        failure: vec![Op::Range(RangeRequest {
            range: KeyRange::single("k"),
            ..Default::default()
        })],
    });
    let CommandOutput::Txn { revision, result } = apply(&mut s, txn).unwrap() else {
        panic!()
    };
    assert!(!result.succeeded);
    assert_eq!(revision, 2);
    let OpResult::Range(rr) = &result.responses[0] else {
        panic!()
    };
    assert_eq!(rr.kvs[0].mod_revision, 2);
    assert_eq!(apply(&mut s, del("absent", "")).unwrap().revision(), 2);
}

#[test]
fn limit_reports_exact_count_and_more() {
    let (_d, mut s) = store();
    for i in 0..5 {
        apply(&mut s, put(&format!("/p/{i}"), "v")).unwrap();
    }
    apply(&mut s, put("/q", "v")).unwrap();
    let mut r = s.reader().unwrap();
    let req = RangeRequest {
        range: KeyRange::new("/p/".into(), "/p0".into()),
        limit: 2,
        ..Default::default()
    };
    let (res, view) = r.range(&req).unwrap();
    assert_eq!((res.kvs.len(), res.count, res.more), (2, 5, true));
    assert_eq!(view.current_rev, 7);
    // Next page from the last key + \0, pinned at the first page's revision.
    let next = RangeRequest {
        range: KeyRange::new(b"/p/1\0".to_vec(), "/p0".into()),
        limit: 10,
        revision: 6,
        ..Default::default()
    };
    let (res, _) = r.range(&next).unwrap();
    assert_eq!((res.kvs.len(), res.count, res.more), (3, 3, false));
    let count = RangeRequest {
        range: KeyRange::new("/".into(), vec![0]),
        count_only: true,
        ..Default::default()
    };
    assert_eq!(r.range(&count).unwrap().0.count, 6);
}

#[test]
fn compaction_errors_and_keeps_reads_at_and_above_it() {
    let (_d, mut s) = store();
    apply(&mut s, put("a", "1")).unwrap(); // 2
    apply(&mut s, put("a", "2")).unwrap(); // 3
    apply(&mut s, del("a", "")).unwrap(); // 4
    apply(&mut s, put("b", "1")).unwrap(); // 5
    assert!(matches!(
        apply(&mut s, Command::Compact { revision: 9 }),
        Err(StoreError::FutureRevision { .. })
    ));
    apply(&mut s, Command::Compact { revision: 4 }).unwrap();
    assert!(matches!(
        apply(&mut s, Command::Compact { revision: 4 }),
        Err(StoreError::Compacted { .. })
    ));
    while s.compact_step(1).unwrap() {}
    let mut r = s.reader().unwrap();
    assert!(matches!(get(&mut r, "a", 3), Err(StoreError::Compacted { .. })));
    assert!(get(&mut r, "a", 4).unwrap().kvs.is_empty());
    // The tombstone at exactly the compaction revision is still replayable, with its prev_kv.
    let (evs, _) = r.events(&KeyRange::new("a".into(), vec![0]), 4, 10).unwrap();
    assert_eq!(evs.len(), 2);
    assert_eq!(evs[0].kind, EventKind::Delete);
    assert_eq!(evs[0].prev_kv.as_ref().unwrap().value, b"2");
    assert!(matches!(
        r.events(&KeyRange::single("a"), 3, 10),
        Err(StoreError::Compacted { .. })
    ));
}

#[test]
fn leases_attach_and_revoke_deletes_keys_at_one_revision() {
    let (_d, mut s) = store();
    let CommandOutput::LeaseGrant { id, ttl, .. } =
        apply(&mut s, Command::LeaseGrant { id: 0, ttl: 1 }).unwrap()
    else {
        panic!()
    };
    assert_eq!(ttl, 2, "raised to the minimum TTL");
    let with_lease = |k: &str, lease: i64| {
        Command::Txn(TxnRequest {
            success: vec![Op::Put(PutRequest {
                key: k.into(),
                value: "v".into(),
                lease,
                ..Default::default()
            })],
            ..Default::default()
        })
    };
    assert!(matches!(
        apply(&mut s, with_lease("x", id + 999)),
        Err(StoreError::LeaseNotFound(_))
    ));
    assert_eq!(s.meta().current_rev, 1, "a refused put changes nothing");
    apply(&mut s, with_lease("x", id)).unwrap();
    apply(&mut s, with_lease("y", id)).unwrap();
    let mut r = s.reader().unwrap();
    assert_eq!(
        r.lease(id, true).unwrap().unwrap().keys,
        vec![b"x".to_vec(), b"y".to_vec()]
    );
    let idx = s.meta().applied_index + 1;
    let (out, events) = s
        .apply_batch(&[(LogPosition { index: idx, term: 1 }, &Command::LeaseRevoke { id })])
        .unwrap();
    assert_eq!(out[0].as_ref().unwrap().revision(), 4);
    assert_eq!(events.len(), 2);
    assert!(
        events
            .iter()
            .all(|e| e.kind == EventKind::Delete && e.kv.mod_revision == 4)
    );
    assert!(r.lease(id, false).unwrap().is_none());
    assert!(matches!(
        apply(&mut s, Command::LeaseRevoke { id }),
        Err(StoreError::LeaseNotFound(_))
    ));
}

/// Regression (found by Kubernetes' storage tests on a 3-node cluster): server-chosen lease ids
/// came from a random per-store counter, so each replica gave the same grant a different id and
/// a Put with that lease succeeded on one replica and failed on the others. The id must depend
/// only on the replicated input.
#[test]
fn server_chosen_lease_ids_are_the_same_on_every_replica() {
    let (_d1, mut a) = store();
    let (_d2, mut b) = store();
    let grant = Command::LeaseGrant { id: 0, ttl: 60 };
    let pos = LogPosition { index: 7, term: 2 };
    let (ra, _) = a.apply_batch(&[(pos, &grant)]).unwrap();
    let (rb, _) = b.apply_batch(&[(pos, &grant)]).unwrap();
    assert_eq!(ra[0].as_ref().unwrap(), rb[0].as_ref().unwrap());
    let CommandOutput::LeaseGrant { id, .. } = ra[0].as_ref().unwrap() else {
        panic!()
    };
    assert!(*id > 0);
    // A client-chosen id that collides is skipped deterministically, never reused.
    let (rc, _) = a
        .apply_batch(&[(
            LogPosition { index: 8, term: 2 },
            &Command::LeaseGrant {
                id: 0x0700_0000_0000_0009,
                ttl: 5,
            },
        )])
        .unwrap();
    assert!(rc[0].is_ok());
    let (rd, _) = a
        .apply_batch(&[(LogPosition { index: 9, term: 2 }, &grant)])
        .unwrap();
    let CommandOutput::LeaseGrant { id: next, .. } = rd[0].as_ref().unwrap() else {
        panic!()
    };
    assert_ne!(*next, 0x0700_0000_0000_0009);
}

#[test]
fn duplicate_keys_and_oversized_txns_are_refused() {
    let p = |k: &str| {
        Op::Put(PutRequest {
            key: k.into(),
            ..Default::default()
        })
    };
    let dup = TxnRequest {
        success: vec![p("a"), p("a")],
        ..Default::default()
    };
    assert!(matches!(validate_txn(&dup), Err(StoreError::DuplicateKey)));
    let in_del = TxnRequest {
        success: vec![
            p("b"),
            Op::Delete(DeleteRequest {
                range: KeyRange::new("a".into(), "c".into()),
                prev_kv: false,
            }),
        ],
        ..Default::default()
    };
    assert!(matches!(validate_txn(&in_del), Err(StoreError::DuplicateKey)));
    let many = TxnRequest {
        success: (0..129).map(|i| p(&i.to_string())).collect(),
        ..Default::default()
    };
    assert!(matches!(validate_txn(&many), Err(StoreError::TooManyOps { .. })));
    assert!(
        validate_txn(&TxnRequest {
            success: vec![p("a")],
            failure: vec![p("a")],
            ..Default::default()
        })
        .is_ok()
    );
    // A nested txn's branches exclude each other: the same key in both is fine, but not next
    // to a put of that key at the outer level.
    let nested = TxnRequest {
        success: vec![p("n")],
        failure: vec![p("n")],
        ..Default::default()
    };
    assert!(
        validate_txn(&TxnRequest {
            success: vec![p("o"), Op::Txn(nested.clone())],
            ..Default::default()
        })
        .is_ok()
    );
    assert!(matches!(
        validate_txn(&TxnRequest {
            success: vec![p("n"), Op::Txn(nested)],
            ..Default::default()
        }),
        Err(StoreError::DuplicateKey)
    ));
    let compares = (0..129)
        .map(|i| Compare {
            range: KeyRange::single(i.to_string()),
            result: CompareResult::Equal,
            target: CompareTarget::Version(0),
        })
        .collect();
    assert!(matches!(
        validate_txn(&TxnRequest {
            compare: compares,
            ..Default::default()
        }),
        Err(StoreError::TooManyOps { .. })
    ));
}

#[test]
fn state_survives_reopen_with_applied_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let mut s = Store::open(&path, Durability::Full).unwrap();
        apply(&mut s, put("a", "1")).unwrap();
        apply(&mut s, put("b", "1")).unwrap();
    }
    let s = Store::open(&path, Durability::Full).unwrap();
    assert_eq!((s.meta().current_rev, s.meta().applied_index), (3, 2));
}

#[test]
fn hash_kv_depends_on_the_logical_history_not_on_physical_compaction() {
    let (_d1, mut a) = store();
    let (_d2, mut b) = store();
    for s in [&mut a, &mut b] {
        apply(s, put("a", "1")).unwrap(); // 2
        apply(s, put("a", "2")).unwrap(); // 3
        apply(s, put("b", "1")).unwrap(); // 4
        apply(s, del("b", "")).unwrap(); // 5
        apply(s, put("c", "1")).unwrap(); // 6
    }
    let (mut ra, mut rb) = (a.reader().unwrap(), b.reader().unwrap());
    let h6 = ra.hash_kv(0).unwrap();
    assert_eq!((h6.revision, h6.compact_revision, h6.current_revision), (6, 0, 6));
    assert_eq!(h6, rb.hash_kv(6).unwrap(), "same log, same hash");
    let h4 = ra.hash_kv(4).unwrap();
    assert_ne!(
        h4.hash, h6.hash,
        "a hash covers only revisions up to the one asked for"
    );
    assert!(matches!(ra.hash_kv(7), Err(StoreError::FutureRevision { .. })));
    // Both compact at 5 (b's tombstone); only `a` deletes the history physically.
    for s in [&mut a, &mut b] {
        apply(s, Command::Compact { revision: 5 }).unwrap();
    }
    while a.compact_step(1).unwrap() {}
    let (mut ra, mut rb) = (a.reader().unwrap(), b.reader().unwrap());
    let ha = ra.hash_kv(0).unwrap();
    assert_eq!(ha.compact_revision, 5);
    assert_eq!(
        ha,
        rb.hash_kv(0).unwrap(),
        "physical compaction progress must not matter"
    );
    assert_ne!(ha.hash, h6.hash, "compacted history is no longer hashed");
    assert!(matches!(ra.hash_kv(4), Err(StoreError::Compacted { .. })));
    assert_eq!(ra.hash_kv(5).unwrap().revision, 5);
}

/// A state.db written by a newer k8sd (a schema this build does not know) is refused at open,
/// naming both versions, and left as it was.
#[test]
fn a_newer_schema_is_refused_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    drop(Store::open(&path, Durability::Normal).unwrap());
    let newer = sql::SCHEMA_VERSION + 1;
    let conn = rusqlite::Connection::open(&path).unwrap();
    sql::meta_set(&conn, "schema_version", newer).unwrap();
    drop(conn);
    let Err(e) = Store::open(&path, Durability::Normal) else {
        panic!("a store of schema {newer} opened")
    };
    let text = e.to_string();
    assert!(
        text.contains(&format!("schema version {newer}"))
            && text.contains(&format!("({})", sql::SCHEMA_VERSION)),
        "{text}"
    );
    let conn = rusqlite::Connection::open(&path).unwrap();
    assert_eq!(sql::meta_get(&conn, "schema_version").unwrap(), Some(newer));
}

/// The page size the file at `path` has on disk (byte 16 of its header, through SQLite).
fn file_page_size(path: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap()
}

/// An empty file in WAL mode with `kv` as earlier builds made it (`WITHOUT ROWID`), at
/// `page_size`: 4096 is what k8sd 0.1.0's `Store::open` began with (it set no page size, and
/// the bundled SQLite's default is 4096), 16384 what the builds between that and this did.
fn create_without_rowid(path: &std::path::Path, page_size: i64) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_update(None, "page_size", page_size).unwrap();
    conn.pragma_update(None, "journal_mode", "wal").unwrap();
    conn.execute_batch(sql::KV_TABLE_WITHOUT_ROWID).unwrap();
}

#[test]
fn a_new_store_has_4_kib_pages_and_kv_as_a_rowid_table() {
    let (d, mut s) = store();
    assert_eq!(PAGE_SIZE, 4096);
    assert_eq!(
        s.format().unwrap(),
        mvcc::FileFormat {
            page_size: 4096,
            kv: mvcc::KvLayout::Rowid
        }
    );
    // A 1 KiB value and, in an update's row, its previous value too stay in the row's own
    // cell: kv has no overflow page (what 4 KiB pages cost the earlier `WITHOUT ROWID` layout).
    let big = "v".repeat(1024);
    for i in 0..20 {
        apply(&mut s, put(&format!("/k/{i:02}"), &big)).unwrap();
        apply(&mut s, put(&format!("/k/{i:02}"), &big)).unwrap();
    }
    drop(s);
    let path = d.path().join("state.db");
    assert_eq!(file_page_size(&path), 4096);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let overflow: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM dbstat WHERE name = 'kv' AND pagetype = 'overflow'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        overflow, 0,
        "1 KiB values and their previous values fit kv's cells"
    );
}

/// A file an earlier build created (`WITHOUT ROWID`, 16 KiB pages) keeps its format when this
/// build opens it: it reads, writes and reopens as it was.
#[test]
fn a_store_with_the_earlier_kv_layout_keeps_working_and_keeps_its_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    create_without_rowid(&path, 16_384);
    let earlier = mvcc::FileFormat {
        page_size: 16_384,
        kv: mvcc::KvLayout::WithoutRowid,
    };
    {
        let mut s = Store::open(&path, Durability::Normal).unwrap();
        assert_eq!(s.format().unwrap(), earlier);
        for i in 0..20 {
            apply(&mut s, put(&format!("/k/{i:02}"), "one")).unwrap();
        }
    }
    let mut s = Store::open(&path, Durability::Normal).unwrap();
    assert_eq!(
        s.format().unwrap(),
        earlier,
        "reopening must not change the format"
    );
    apply(&mut s, put("/k/00", "two")).unwrap();
    apply(&mut s, del("/k/01", "")).unwrap();
    let mut r = s.reader().unwrap();
    assert_eq!(get(&mut r, "/k/00", 0).unwrap().kvs[0].value, b"two");
    assert_eq!(get(&mut r, "/k/00", 21).unwrap().kvs[0].value, b"one");
    assert!(get(&mut r, "/k/01", 0).unwrap().kvs.is_empty());
    assert_eq!(get(&mut r, "/k/01", 21).unwrap().kvs[0].value, b"one");
}

/// A node upgraded from k8sd 0.1.0 keeps its 4 KiB file: it opens, reads and writes (values
/// of 1 KiB, which spill into overflow pages at this size), and is still 4 KiB after reopening.
#[test]
fn a_store_created_at_4_kib_pages_keeps_working_and_keeps_its_page_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    create_without_rowid(&path, 4096);
    let big = "v".repeat(1024);
    {
        let mut s = Store::open(&path, Durability::Normal).unwrap();
        assert_eq!(s.format().unwrap().page_size, 4096);
        assert_eq!(s.format().unwrap().kv, mvcc::KvLayout::WithoutRowid);
        for i in 0..50 {
            apply(&mut s, put(&format!("/k/{i:02}"), &big)).unwrap();
        }
    }
    let mut s = Store::open(&path, Durability::Normal).unwrap();
    assert_eq!(
        s.format().unwrap().page_size,
        4096,
        "reopening must not change the page size"
    );
    assert_eq!(s.meta().current_rev, 51);
    apply(&mut s, put("/k/00", "updated")).unwrap();
    apply(&mut s, del("/k/01", "")).unwrap();
    let mut r = s.reader().unwrap();
    let all = r
        .range(&RangeRequest {
            range: KeyRange::new("/k/".into(), "/k0".into()),
            ..Default::default()
        })
        .unwrap()
        .0;
    assert_eq!(all.kvs.len(), 49);
    assert_eq!(all.kvs[0].value, b"updated");
    assert_eq!(all.kvs[1].value, big.as_bytes());
    assert_eq!(get(&mut r, "/k/01", 51).unwrap().kvs[0].value, big.as_bytes());
    drop((r, s));
    assert_eq!(file_page_size(&path), 4096);
}
