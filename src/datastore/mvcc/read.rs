//! `Reader`: a read-only connection, each call one consistent WAL snapshot.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, params};

use super::checkpoint::db_size;
use super::open::configure;
use super::range::execute_range;
use super::{sq, to_u64};
use crate::datastore::error::{Result, StoreError};
use crate::datastore::sql::{self, meta_get};
use crate::datastore::types::*;

/// A read-only connection. Each call reads one consistent WAL snapshot.
#[derive(Debug)]
pub struct Reader {
    conn: Connection,
    path: PathBuf,
}

/// The answer to [`Reader::hash_kv`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHash {
    pub hash: u32,
    /// The revision hashed (the request's, or the current one for 0).
    pub revision: i64,
    pub compact_revision: i64,
    pub current_revision: i64,
}

/// The store revision and compaction point as seen by one read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadView {
    pub current_rev: i64,
    pub compact_rev: i64,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sq(path))?;
        configure(&conn, path)?;
        Ok(Reader {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn read<T>(&mut self, f: impl FnOnce(&Connection, &Path, ReadView) -> Result<T>) -> Result<T> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(sq(&path))?;
        let get = |n: &str| meta_get(&tx, n).map_err(sq(&path)).map(|v| v.unwrap_or(0));
        let view = ReadView {
            current_rev: get("current_rev")?,
            compact_rev: get("compact_rev")?,
        };
        let out = f(&tx, &path, view)?;
        tx.finish().map_err(sq(&path))?;
        Ok(out)
    }

    /// The cluster id recorded when the store was created.
    pub fn cluster_id(&mut self) -> Result<u64> {
        let p = self.path.clone();
        meta_get(&self.conn, "cluster_id")
            .map_err(sq(&p))
            .map(|v| to_u64(v.unwrap_or(1)))
    }

    pub fn view(&mut self) -> Result<ReadView> {
        self.read(|_, _, v| Ok(v))
    }

    pub fn range(&mut self, req: &RangeRequest) -> Result<(RangeResult, ReadView)> {
        self.read(|c, p, v| Ok((execute_range(c, p, req, v.current_rev, v.compact_rev)?, v)))
    }

    /// Events in `range` with revisions in `[from, to]`; `to` is clamped to the snapshot's
    /// current revision, which is returned with them. Fails if `from` is compacted.
    pub fn events(&mut self, range: &KeyRange, from: i64, to: i64) -> Result<(Vec<Event>, ReadView)> {
        self.read(|c, p, v| {
            if from < v.compact_rev {
                return Err(StoreError::Compacted {
                    requested: from,
                    compacted: v.compact_rev,
                });
            }
            let to = to.min(v.current_rev);
            let evs = if from > to {
                Vec::new()
            } else {
                sql::events_between(c, range, from, to).map_err(sq(p))?
            };
            Ok((evs, v))
        })
    }

    pub fn lease(&mut self, id: i64, with_keys: bool) -> Result<Option<LeaseInfo>> {
        self.read(|c, p, _| {
            let ttl: Option<i64> = {
                use rusqlite::OptionalExtension;
                c.prepare_cached("SELECT ttl FROM leases WHERE id = ?")
                    .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
                    .map_err(sq(p))?
            };
            let Some(ttl) = ttl else { return Ok(None) };
            let keys = if with_keys {
                c.prepare_cached("SELECT key FROM lease_keys WHERE lease = ? ORDER BY key")
                    .and_then(|mut s| s.query_map([id], |r| r.get(0))?.collect())
                    .map_err(sq(p))?
            } else {
                Vec::new()
            };
            Ok(Some(LeaseInfo { id, ttl, keys }))
        })
    }

    /// Every lease id with its TTL.
    pub fn leases(&mut self) -> Result<Vec<(i64, i64)>> {
        self.read(|c, p, _| {
            c.prepare_cached("SELECT id, ttl FROM leases ORDER BY id")
                .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
                .map_err(sq(p))
        })
    }

    /// etcd's `HashKV`: a CRC-32 of the MVCC key-value history visible at `rev` (0: the
    /// current revision), with the revision hashed and the compaction revision. Equal on every
    /// replica that applied the same log, whatever its physical compaction progress: like
    /// etcd's `kvHasher` (server/storage/mvcc/hash.go) it hashes every revision in
    /// `(compact, rev]` and, at or below the compaction revision, only what compaction keeps
    /// (each key's newest row, unless that row is a tombstone), read in (revision, sub) order.
    /// Leases are not part of it, as in etcd.
    pub fn hash_kv(&mut self, rev: i64) -> Result<KvHash> {
        self.read(|c, p, v| {
            if rev > v.current_rev {
                return Err(StoreError::FutureRevision {
                    requested: rev,
                    current: v.current_rev,
                });
            }
            if rev > 0 && rev < v.compact_rev {
                return Err(StoreError::Compacted {
                    requested: rev,
                    compacted: v.compact_rev,
                });
            }
            let rev = if rev == 0 { v.current_rev } else { rev };
            let mut h = crc32fast::Hasher::new();
            h.update(b"key");
            let mut stmt = c
                .prepare(
                    "SELECT rev, sub, key, create_rev, version, lease, value, deleted FROM kv
                     WHERE rev <= ?1 AND (rev > ?2 OR (deleted = 0 AND NOT EXISTS (
                         SELECT 1 FROM kv AS n WHERE n.key = kv.key AND n.rev > kv.rev AND n.rev <= ?2)))
                     ORDER BY rev, sub",
                )
                .map_err(sq(p))?;
            let mut rows = stmt.query(params![rev, v.compact_rev]).map_err(sq(p))?;
            while let Some(r) = rows.next().map_err(sq(p))? {
                let get_i = |i| r.get::<_, i64>(i).map_err(sq(p));
                let get_b = |i| r.get::<_, Vec<u8>>(i).map_err(sq(p));
                for n in [get_i(0)?, get_i(1)?, get_i(3)?, get_i(4)?, get_i(5)?, get_i(7)?] {
                    h.update(&n.to_be_bytes());
                }
                // Length-prefixed, so that no two histories hash the same bytes.
                for b in [get_b(2)?, get_b(6)?] {
                    h.update(&(b.len() as u64).to_be_bytes());
                    h.update(&b);
                }
            }
            Ok(KvHash {
                hash: h.finalize(),
                revision: rev,
                compact_revision: v.compact_rev,
                current_revision: v.current_rev,
            })
        })
    }

    /// How many keys exist now (deleted ones excluded): etcd's `keys_total`.
    pub fn key_count(&mut self) -> Result<i64> {
        let p = self.path.clone();
        self.conn
            .query_row("SELECT count(*) FROM latest", [], |r| r.get(0))
            .map_err(sq(&p))
    }

    /// Bytes allocated by the database file and bytes in use (allocated minus free pages).
    pub fn db_size(&mut self) -> Result<(i64, i64)> {
        db_size(&self.conn, &self.path)
    }
}
