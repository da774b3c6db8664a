//! Additions for the Raft state machine (`crate::raft::state_machine`), kept apart from the
//! standalone apply path so the two can evolve separately.
//!
//! - `apply_raft_batch` is `apply_batch` plus two things Raft needs in the same transaction: the
//!   applied position may lie past the last command (blank and membership entries carry no
//!   command), and opaque `raft_meta` rows (applied log id, membership) are written atomically
//!   with the data, so a restart never sees data and Raft bookkeeping disagree.
//! - Dedup: a command may carry `(origin, request_id)`. The first time it is applied its outcome,
//!   encoded by the caller, is stored in `dedup` in the same transaction; a later command with
//!   the same key is not applied again and yields the stored bytes instead. This is what makes
//!   a retried forwarded write safe (docs/design/raft.md, "Forwarded writes and dedup"). The
//!   datastore does not interpret the bytes; their format belongs to `crate::raft`.
//! - `export_snapshot` / `Store::import_snapshot` copy the whole database consistently.
//!
//! `raft_meta` is its own table (`name -> BLOB`) rather than rows in `meta`, whose values are
//! integers that every reader decodes as such.
//!
//! Over 600 lines only with its tests (about 340 lines of code): one job, the rows that must
//! commit with the Raft state machine's data.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::write::{apply_one, write_meta};
use super::{PAGE_SIZE, Result, Store, StoreError, page_size_of, sq};
use crate::datastore::sql::meta_set;
use crate::datastore::types::{Command, CommandOutput, DeleteRequest, Event, KeyRange, Op, TxnRequest};
use crate::datastore::{LogPosition, mvcc::to_i64};

const RAFT_META_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS raft_meta (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dedup (
    origin INTEGER NOT NULL, request_id INTEGER NOT NULL, idx INTEGER NOT NULL, outcome BLOB NOT NULL,
    PRIMARY KEY (origin, request_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedup_idx ON dedup (idx);
";

/// One replicated command for `apply_raft_batch`.
#[derive(Debug, Clone, Copy)]
pub struct RaftCommand<'a> {
    pub pos: LogPosition,
    pub cmd: &'a Command,
    /// `(origin, request_id)`: apply at most once per key (see the module docs).
    pub dedup: Option<(u64, u64)>,
}

/// What one `RaftCommand` produced.
#[derive(Debug)]
pub enum RaftApplied {
    /// Applied now; a client error is a normal outcome.
    Fresh(Result<CommandOutput>),
    /// Already applied earlier: the outcome stored then, as encoded by the caller.
    Duplicate(Vec<u8>),
}

/// Which dedup rows a batch deletes: per origin, every request id below a low-water mark,
/// and, for every origin, rows written at a log index below `below_index`.
#[derive(Debug, Clone, Default)]
pub struct DedupPrune {
    pub low_water: Vec<(u64, u64)>,
    pub below_index: u64,
}

impl Store {
    /// Create the `raft_meta` table if this database predates it. Idempotent.
    pub fn enable_raft_meta(&mut self) -> Result<()> {
        self.conn.execute_batch(RAFT_META_SCHEMA).map_err(sq(&self.path))
    }

    /// Apply replicated commands in one transaction, set the applied position to `applied`
    /// (which may be past the last command) and upsert `raft_meta` rows, all atomically.
    /// Client errors are per-command results, exactly as in `apply_batch`; a fatal error aborts
    /// the batch and leaves the database untouched.
    pub fn apply_raft_batch(
        &mut self,
        cmds: &[RaftCommand<'_>],
        applied: LogPosition,
        raft_meta: &[(&str, &[u8])],
        encode: &dyn Fn(&Result<CommandOutput>) -> Vec<u8>,
        prune: &DedupPrune,
    ) -> Result<(Vec<RaftApplied>, Vec<Event>)> {
        let path = self.path.clone();
        let mut tx = self.conn.transaction().map_err(sq(&path))?;
        let mut meta = self.meta;
        let mut outputs = Vec::with_capacity(cmds.len());
        let mut events = Vec::new();
        for rc in cmds {
            if let Some((origin, request_id)) = rc.dedup {
                let seen: Option<Vec<u8>> = tx
                    .prepare_cached("SELECT outcome FROM dedup WHERE origin = ? AND request_id = ?")
                    .and_then(|mut st| {
                        st.query_row(params![to_i64(origin), to_i64(request_id)], |r| r.get(0))
                            .optional()
                    })
                    .map_err(sq(&path))?;
                if let Some(bytes) = seen {
                    outputs.push(RaftApplied::Duplicate(bytes));
                    continue;
                }
            }
            let mut sp = tx.savepoint().map_err(sq(&path))?;
            let mut next = meta;
            let mut cmd_events = Vec::new();
            let result = match apply_one(&sp, &path, &mut next, rc.pos.index, rc.cmd, &mut cmd_events) {
                Ok(out) => {
                    sp.commit().map_err(sq(&path))?;
                    meta = next;
                    events.append(&mut cmd_events);
                    Ok(out)
                }
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => {
                    sp.rollback().map_err(sq(&path))?;
                    drop(sp);
                    Err(e)
                }
            };
            if let Some((origin, request_id)) = rc.dedup {
                tx.prepare_cached("INSERT INTO dedup (origin, request_id, idx, outcome) VALUES (?, ?, ?, ?)")
                    .and_then(|mut st| {
                        st.execute(params![
                            to_i64(origin),
                            to_i64(request_id),
                            to_i64(rc.pos.index),
                            encode(&result)
                        ])
                    })
                    .map_err(sq(&path))?;
            }
            outputs.push(RaftApplied::Fresh(result));
        }
        // Pruning depends only on the log, so every replica keeps the same rows.
        for (origin, below) in &prune.low_water {
            tx.prepare_cached("DELETE FROM dedup WHERE origin = ? AND request_id < ?")
                .and_then(|mut st| st.execute(params![to_i64(*origin), to_i64(*below)]))
                .map_err(sq(&path))?;
        }
        if prune.below_index > 0 {
            tx.prepare_cached("DELETE FROM dedup WHERE idx < ?")
                .and_then(|mut st| st.execute([to_i64(prune.below_index)]))
                .map_err(sq(&path))?;
        }
        meta.applied_index = applied.index;
        meta.applied_term = applied.term;
        write_meta(&tx, &path, &meta)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO raft_meta (name, value) VALUES (?, ?) \
                     ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                )
                .map_err(sq(&path))?;
            for (name, value) in raft_meta {
                stmt.execute(params![name, value]).map_err(sq(&path))?;
            }
        }
        tx.commit().map_err(sq(&path))?;
        self.meta = meta;
        Ok((outputs, events))
    }

    /// One `raft_meta` row as last committed by this writer.
    pub fn raft_meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        read_raft_meta_conn(&self.conn, name).map_err(sq(&self.path))
    }

    /// Replace the whole database with the snapshot file at `src`, in one write transaction
    /// through SQLite's online backup API. Readers keep their connections: an open read sees
    /// the old content, the next one the new. The node-local `member_id` survives the copy (the
    /// snapshot carries the sender's); everything else, `cluster_id` included, comes from `src`.
    ///
    /// The store keeps its own page size, whatever the snapshot's. The backup API cannot change
    /// the page size of a database in WAL mode (it fails with SQLITE_READONLY), and the file
    /// must stay the one the readers have open, so it is not replaced by a copy of `src` either
    /// (a copy would have taken the sender's page size). A snapshot whose page size differs
    /// (from a member whose file k8sd 0.1.0 created at 4 KiB, or the other way round) is first
    /// rewritten at this store's page size into a temporary file beside `src`, which the caller
    /// owns (a crash may leave it there).
    pub fn import_snapshot(&mut self, src: &Path) -> Result<()> {
        let member_id = self.meta.member_id;
        let mut from = Connection::open_with_flags(src, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sq(src))?;
        let ours = self.page_size()?;
        let theirs = page_size_of(&from).map_err(sq(src))?;
        let rewritten = if theirs == ours {
            None
        } else {
            let tmp = src.with_extension(format!("page-size-{ours}.tmp"));
            let _ = std::fs::remove_file(&tmp);
            copy_with_page_size(&from, src, &tmp, Some(ours))?;
            from = Connection::open_with_flags(&tmp, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sq(&tmp))?;
            Some(tmp)
        };
        let imported = self.import_from(&from, src);
        drop(from);
        if let Some(tmp) = rewritten {
            let _ = std::fs::remove_file(tmp);
        }
        imported?;
        self.conn
            .execute_batch(RAFT_META_SCHEMA)
            .map_err(sq(&self.path))?;
        meta_set(&self.conn, "member_id", to_i64(member_id)).map_err(sq(&self.path))?;
        self.meta = Self::load_meta(&self.conn, &self.path)?;
        Ok(())
    }

    /// Copy every page of `from` (a snapshot of the same page size) over this database.
    fn import_from(&mut self, from: &Connection, src: &Path) -> Result<()> {
        {
            let backup = rusqlite::backup::Backup::new(from, &mut self.conn).map_err(sq(&self.path))?;
            // -1 copies every page in one step, so the destination changes in one transaction.
            match backup.step(-1).map_err(sq(&self.path))? {
                rusqlite::backup::StepResult::Done => {}
                other => {
                    return Err(StoreError::Corrupt {
                        path: self.path.clone(),
                        reason: format!("snapshot import from {} did not finish: {other:?}", src.display()),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Write a consistent, compacted copy of the database at `db` to `dst` (which must not exist),
/// from one read transaction (`VACUUM INTO`), without blocking the writer.
///
/// The copy keeps `db`'s page size. That keeps a rolling upgrade from k8sd 0.1.0 working: its
/// members' files are all 4 KiB, so are their snapshots, and a member still running 0.1.0
/// (whose import cannot rewrite a snapshot of another page size) installs them as before.
pub fn export_snapshot(db: &Path, dst: &Path) -> Result<()> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sq(db))?;
    copy_with_page_size(&conn, db, dst, None)
}

/// `VACUUM INTO dst` from `conn` (the database at `db`), at `page_size` if given, else at the
/// source's. `VACUUM INTO` takes the page size the connection asked for with
/// `PRAGMA page_size` even when the source is in WAL mode; an in-place `VACUUM` would not.
fn copy_with_page_size(conn: &Connection, db: &Path, dst: &Path, page_size: Option<i64>) -> Result<()> {
    let dst_str = dst.to_str().ok_or_else(|| StoreError::Io {
        path: dst.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "snapshot path is not utf-8"),
    })?;
    if let Some(size) = page_size {
        conn.pragma_update(None, "page_size", size).map_err(sq(db))?;
    }
    conn.execute("VACUUM INTO ?", [dst_str]).map_err(sq(db))?;
    Ok(())
}

/// Turn a copy of a member's database into the seed of a new cluster (`k8sd restore`).
///
/// The data, revisions, compaction point and leases stay. Every key under `drop_prefixes`
/// (the old cluster's member and token records, named by the caller) is deleted by one
/// ordinary command, so the deletion takes the next revision and is in the history like any
/// other write. Then the Raft bookkeeping of the old cluster goes (applied log id,
/// membership, replicated cluster id, dedup rows), the applied position returns to 0 and the
/// member id is fresh. A group of one can then bootstrap on it and number its log from the
/// start, while revisions go on from where the backup left them.
///
/// The seed is a new cluster's first file, so it gets the page size of a new store
/// ([`PAGE_SIZE`]) whatever the backed-up member's was: a backup of a member whose file k8sd
/// 0.1.0 created (4 KiB pages) is rewritten, which no node can do to its live file.
pub fn reseed_for_new_cluster(db: &Path, drop_prefixes: &[&[u8]]) -> Result<()> {
    if !drop_prefixes.is_empty() {
        let mut store = Store::open(db, super::Durability::Normal)?;
        let success = drop_prefixes
            .iter()
            .map(|p| {
                let mut end = p.to_vec();
                if let Some(last) = end.last_mut() {
                    *last += 1;
                }
                Op::Delete(DeleteRequest {
                    range: KeyRange::new(p.to_vec(), end),
                    prev_kv: false,
                })
            })
            .collect();
        let cmd = Command::Txn(TxnRequest {
            compare: vec![],
            success,
            failure: vec![],
        });
        let m = store.meta();
        let pos = LogPosition {
            index: m.applied_index + 1,
            term: m.applied_term,
        };
        let (mut out, _) = store.apply_batch(&[(pos, &cmd)])?;
        if let Some(Err(e)) = out.pop() {
            return Err(e);
        }
    }
    let mut conn = Connection::open(db).map_err(sq(db))?;
    let tx = conn.transaction().map_err(sq(db))?;
    tx.execute_batch(RAFT_META_SCHEMA).map_err(sq(db))?;
    tx.execute_batch("DELETE FROM raft_meta; DELETE FROM dedup;")
        .map_err(sq(db))?;
    meta_set(&tx, "applied_index", 0).map_err(sq(db))?;
    meta_set(&tx, "applied_term", 0).map_err(sq(db))?;
    let member_id: u64 = rand::random::<u64>() >> 1 | 1;
    meta_set(&tx, "member_id", to_i64(member_id)).map_err(sq(db))?;
    tx.commit().map_err(sq(db))?;
    if page_size_of(&conn).map_err(sq(db))? != PAGE_SIZE {
        // Out of WAL mode first: SQLite changes the page size only in a VACUUM of a file in a
        // rollback journal mode. No other connection has the file open. `Store::open` puts it
        // back in WAL mode when the node starts.
        conn.pragma_update(None, "journal_mode", "delete")
            .map_err(sq(db))?;
        conn.pragma_update(None, "page_size", PAGE_SIZE).map_err(sq(db))?;
        conn.execute_batch("VACUUM").map_err(sq(db))?;
    }
    Ok(())
}

/// One `raft_meta` row of the database file at `db` (a live store or a snapshot file).
pub fn read_raft_meta(db: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sq(db))?;
    read_raft_meta_conn(&conn, name).map_err(sq(db))
}

fn read_raft_meta_conn(conn: &Connection, name: &str) -> rusqlite::Result<Option<Vec<u8>>> {
    let exists: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'raft_meta'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if exists.is_none() {
        return Ok(None);
    }
    conn.query_row("SELECT value FROM raft_meta WHERE name = ?", [name], |r| r.get(0))
        .optional()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::types::{KeyRange, Op, PutRequest, RangeRequest, TxnRequest};
    use crate::datastore::{Durability, Reader};

    fn put(key: &str) -> Command {
        Command::Txn(TxnRequest {
            compare: vec![],
            success: vec![Op::Put(PutRequest {
                key: key.into(),
                value: b"v".to_vec(),
                ..Default::default()
            })],
            failure: vec![],
        })
    }

    #[test]
    fn snapshot_export_import_keeps_wal_mode_member_id_and_data() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Store::open(&dir.path().join("a.db"), Durability::Normal).unwrap();
        a.enable_raft_meta().unwrap();
        let cmd = put("k");
        let cmds = [RaftCommand {
            pos: LogPosition { index: 1, term: 1 },
            cmd: &cmd,
            dedup: Some((9, 1)),
        }];
        let applied = LogPosition { index: 3, term: 1 };
        a.apply_raft_batch(
            &cmds,
            applied,
            &[("m", b"x")],
            &|_| b"o".to_vec(),
            &DedupPrune::default(),
        )
        .unwrap();
        assert_eq!(a.meta().applied_index, 3, "applied may lie past the last command");

        let snap = dir.path().join("snap.db");
        export_snapshot(&dir.path().join("a.db"), &snap).unwrap();
        assert_eq!(read_raft_meta(&snap, "m").unwrap().as_deref(), Some(&b"x"[..]));

        let mut b = Store::open(&dir.path().join("b.db"), Durability::Normal).unwrap();
        let b_member = b.meta().member_id;
        // A reader opened before the import sees the new content on its next read.
        let mut reader = Reader::open(&dir.path().join("b.db")).unwrap();
        b.import_snapshot(&snap).unwrap();
        let mode: String = b.conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(b.meta().member_id, b_member, "member id is node-local");
        assert_eq!(b.meta().applied_index, 3);
        assert_eq!(b.raft_meta("m").unwrap().as_deref(), Some(&b"x"[..]));
        let req = RangeRequest {
            range: KeyRange::single(b"k".to_vec()),
            ..Default::default()
        };
        assert_eq!(reader.range(&req).unwrap().0.kvs.len(), 1);
        // The dedup row came along: the same key is a duplicate on the new node too.
        let again = [RaftCommand {
            pos: LogPosition { index: 4, term: 1 },
            cmd: &cmd,
            dedup: Some((9, 1)),
        }];
        let (out, _) = b
            .apply_raft_batch(
                &again,
                LogPosition { index: 4, term: 1 },
                &[],
                &|_| Vec::new(),
                &DedupPrune::default(),
            )
            .unwrap();
        assert!(matches!(&out[0], RaftApplied::Duplicate(o) if o == b"o"));
    }

    /// A store whose file k8sd 0.1.0 created: 4 KiB pages (see `datastore::tests`).
    fn open_at_4_kib(path: &Path) -> Store {
        let conn = Connection::open(path).unwrap();
        conn.pragma_update(None, "page_size", 4096).unwrap();
        conn.pragma_update(None, "journal_mode", "wal").unwrap();
        drop(conn);
        let s = Store::open(path, Durability::Normal).unwrap();
        assert_eq!(s.page_size().unwrap(), 4096);
        s
    }

    fn page_size_of_file(path: &Path) -> i64 {
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        page_size_of(&conn).unwrap()
    }

    fn keys(db: &Path) -> Vec<Vec<u8>> {
        let mut reader = Reader::open(db).unwrap();
        let req = RangeRequest {
            range: KeyRange::new(b"/".to_vec(), vec![0]),
            ..Default::default()
        };
        reader
            .range(&req)
            .unwrap()
            .0
            .kvs
            .into_iter()
            .map(|kv| kv.key)
            .collect()
    }

    fn apply_puts(s: &mut Store, names: &[&str]) {
        let cmds: Vec<Command> = names.iter().map(|k| put(k)).collect();
        let start = s.meta().applied_index;
        let batch: Vec<RaftCommand<'_>> = cmds
            .iter()
            .zip(start + 1..)
            .map(|(cmd, index)| RaftCommand {
                pos: LogPosition { index, term: 1 },
                cmd,
                dedup: None,
            })
            .collect();
        let last = LogPosition {
            index: start + names.len() as u64,
            term: 1,
        };
        s.apply_raft_batch(&batch, last, &[], &|_| Vec::new(), &DedupPrune::default())
            .unwrap();
    }

    /// Members whose files differ in page size (one created by k8sd 0.1.0 at 4 KiB, one by this
    /// build at 16 KiB) exchange snapshots both ways: a snapshot keeps its sender's page size,
    /// the receiver keeps its own and gets the data, and no rewrite is left beside the snapshot.
    #[test]
    fn snapshots_install_across_page_sizes_and_each_store_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let (old_db, new_db) = (dir.path().join("old.db"), dir.path().join("new.db"));
        let mut old = open_at_4_kib(&old_db);
        old.enable_raft_meta().unwrap();
        apply_puts(&mut old, &["/a", "/b"]);
        let mut new = Store::open(&new_db, Durability::Normal).unwrap();
        new.enable_raft_meta().unwrap();
        apply_puts(&mut new, &["/x", "/y", "/z"]);

        let from_old = dir.path().join("inbox").join("from-old.db");
        std::fs::create_dir(dir.path().join("inbox")).unwrap();
        export_snapshot(&old_db, &from_old).unwrap();
        assert_eq!(
            page_size_of_file(&from_old),
            4096,
            "a snapshot keeps its source's page size"
        );
        let from_new = dir.path().join("from-new.db");
        export_snapshot(&new_db, &from_new).unwrap();
        assert_eq!(page_size_of_file(&from_new), PAGE_SIZE);

        new.import_snapshot(&from_old).unwrap();
        assert_eq!(new.page_size().unwrap(), PAGE_SIZE);
        assert_eq!(new.meta().current_rev, 3);
        assert_eq!(keys(&new_db), vec![b"/a".to_vec(), b"/b".to_vec()]);
        let left: Vec<_> = std::fs::read_dir(dir.path().join("inbox"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from("from-old.db")],
            "the rewrite is removed"
        );

        old.import_snapshot(&from_new).unwrap();
        assert_eq!(old.page_size().unwrap(), 4096);
        assert_eq!(old.meta().current_rev, 4);
        assert_eq!(
            keys(&old_db),
            vec![b"/x".to_vec(), b"/y".to_vec(), b"/z".to_vec()]
        );
        // Both go on writing.
        apply_puts(&mut old, &["/after"]);
        apply_puts(&mut new, &["/after"]);
        drop((old, new));
        assert_eq!(page_size_of_file(&old_db), 4096);
        assert_eq!(page_size_of_file(&new_db), PAGE_SIZE);
    }

    /// `k8sd restore` of a backup taken on a member whose file k8sd 0.1.0 created: the new
    /// cluster's seed has the page size of a new store, and the same data.
    #[test]
    fn a_reseeded_4_kib_copy_becomes_a_16_kib_file_with_the_same_data() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        let mut a = open_at_4_kib(&db);
        a.enable_raft_meta().unwrap();
        apply_puts(&mut a, &["/registry/keep", "/k8sd/tokens/t1"]);
        let before = a.meta().current_rev;
        drop(a);
        let seed = dir.path().join("seed.db");
        export_snapshot(&db, &seed).unwrap();
        assert_eq!(page_size_of_file(&seed), 4096);
        reseed_for_new_cluster(&seed, &[b"/k8sd/tokens/"]).unwrap();
        assert_eq!(page_size_of_file(&seed), PAGE_SIZE);
        let s = Store::open(&seed, Durability::Normal).unwrap();
        assert_eq!(s.page_size().unwrap(), PAGE_SIZE);
        assert_eq!(s.meta().current_rev, before + 1);
        let mode: String = s.conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(keys(&seed), vec![b"/registry/keep".to_vec()]);
    }

    /// `k8sd restore`: the seed keeps its data and revision, loses the listed prefixes through
    /// one new revision, and carries no Raft bookkeeping of the old cluster.
    #[test]
    fn a_reseeded_copy_keeps_data_and_revisions_and_drops_the_old_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        let mut a = Store::open(&db, Durability::Normal).unwrap();
        a.enable_raft_meta().unwrap();
        let cmds: Vec<Command> = [
            "/registry/keep",
            "/k8sd/members/old",
            "/k8sd/tokens/t1",
            "/k8sd/cluster",
        ]
        .into_iter()
        .map(put)
        .collect();
        let batch: Vec<RaftCommand<'_>> = cmds
            .iter()
            .enumerate()
            .map(|(i, cmd)| RaftCommand {
                pos: LogPosition {
                    index: i as u64 + 1,
                    term: 2,
                },
                cmd,
                dedup: Some((7, i as u64)),
            })
            .collect();
        a.apply_raft_batch(
            &batch,
            LogPosition { index: 9, term: 2 },
            &[("membership", b"old")],
            &|_| Vec::new(),
            &DedupPrune::default(),
        )
        .unwrap();
        let before = a.meta();
        drop(a);

        reseed_for_new_cluster(&db, &[b"/k8sd/members/", b"/k8sd/tokens/"]).unwrap();
        let b = Store::open(&db, Durability::Normal).unwrap();
        let m = b.meta();
        assert_eq!(
            m.current_rev,
            before.current_rev + 1,
            "the deletion takes one revision"
        );
        assert_eq!((m.applied_index, m.applied_term), (0, 0));
        assert_ne!(m.member_id, before.member_id);
        assert_eq!(b.raft_meta("membership").unwrap(), None);
        let dedup: i64 = b
            .conn
            .query_row("SELECT count(*) FROM dedup", [], |r| r.get(0))
            .unwrap();
        assert_eq!(dedup, 0);
        let mut reader = Reader::open(&db).unwrap();
        let keys: Vec<Vec<u8>> = reader
            .range(&RangeRequest {
                range: KeyRange::new(b"/".to_vec(), vec![0]),
                ..Default::default()
            })
            .unwrap()
            .0
            .kvs
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        assert_eq!(keys, vec![b"/k8sd/cluster".to_vec(), b"/registry/keep".to_vec()]);
    }
}
