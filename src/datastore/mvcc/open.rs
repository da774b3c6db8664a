//! Opening `state.db`: every connection's pragmas (`configure`), and the writer's own
//! (WAL, durability, no autocheckpoint, `secure_delete`), the schema and its version, and the
//! metadata a new store starts with.

use std::path::Path;

use rusqlite::Connection;

use super::checkpoint::WAL_SIZE_LIMIT;
use super::{Durability, Meta, Store, sq, to_i64, to_u64};
use crate::datastore::error::{Result, StoreError};
use crate::datastore::sql::{KV_TABLE, SCHEMA, SCHEMA_VERSION, meta_get, meta_set};

/// How long a connection waits for a lock before SQLITE_BUSY.
pub(super) const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub(super) fn configure(conn: &Connection, path: &Path) -> Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sq(path))?;
    conn.pragma_update(None, "foreign_keys", false)
        .map_err(sq(path))?;
    conn.pragma_update(None, "cache_size", -16_000)
        .map_err(sq(path))?;
    // Read through a memory map, as etcd does: values larger than a page live in overflow pages,
    // which SQLite otherwise fetches with one pread each, bypassing its cache (docs/benchmarks.md).
    conn.pragma_update(None, "mmap_size", 1i64 << 30)
        .map_err(sq(path))?;
    // Plans that never depend on a bound value. Without this, SQLite marks some statements
    // (the apply's `latest_kv` among them) to be re-planned when their parameters change, and
    // rusqlite clears a statement's bindings whenever it returns to the statement cache, which
    // expires it: every call parsed and planned its SQL again, 7.6 % of a member's CPU under a
    // sustained write load (docs/benchmarks.md, "etcd's own benchmark tool"). Our plans are
    // index lookups whatever the values; no statistics tables exist for values to matter.
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(sq(path))?;
    Ok(())
}

impl Store {
    /// Open (or create) the store file. A new store starts empty at revision 1.
    pub fn open(path: &Path, durability: Durability) -> Result<Store> {
        let mut conn = Connection::open(path).map_err(sq(path))?;
        // Before anything writes the file (WAL mode writes its header, the schema its first
        // pages): a new file takes this page size, an existing one ignores it.
        conn.pragma_update(None, "page_size", super::PAGE_SIZE)
            .map_err(sq(path))?;
        configure(&conn, path)?;
        // Every transaction takes the write lock when it begins. A deferred one reads first and
        // upgrades later, and the upgrade fails at once with SQLITE_BUSY_SNAPSHOT (no busy wait)
        // if the checkpointer truncated the WAL in between: an apply batch would fail and stop
        // the Raft state machine. Begun immediate, it waits for the truncate to end instead.
        conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "wal", |r| r.get(0))
            .map_err(sq(path))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Corrupt {
                path: path.into(),
                reason: format!("cannot enable WAL (got {mode})"),
            });
        }
        let sync = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync).map_err(sq(path))?;
        // Checkpoints run on their own thread (`Checkpointer`), not inside a client's commit.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(sq(path))?;
        // This connection restarts the WAL (at its first write after a complete checkpoint);
        // without a limit SQLite keeps the file at its high-water mark forever.
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)
            .map_err(sq(path))?;
        // Deleted rows are overwritten with zeros, so a compacted (or deleted) value, a Secret's
        // old version say, does not linger in state.db's free space, where anyone who can read the
        // file could read it. ON rather than
        // FAST: FAST zeroes cells inside b-tree pages but leaves freed pages as they were, and a
        // value over about 1000 bytes ends in an overflow page that compaction frees whole
        // (docs/benchmarks.md has the cost). Only this connection deletes.
        conn.pragma_update(None, "secure_delete", true)
            .map_err(sq(path))?;
        // A new file gets this build's `kv`; an existing one keeps the layout it was made with.
        if super::kv_ddl(&conn).map_err(sq(path))?.is_none() {
            // In one transaction, so a crash cannot leave `kv` without its (rev, sub) index.
            conn.execute_batch(&format!("BEGIN; {KV_TABLE} COMMIT;"))
                .map_err(sq(path))?;
        }
        conn.execute_batch(SCHEMA).map_err(sq(path))?;
        let version = meta_get(&conn, "schema_version").map_err(sq(path))?;
        match version {
            None => Self::initialise(&conn, path)?,
            Some(SCHEMA_VERSION) => {}
            Some(v) => {
                return Err(StoreError::Corrupt {
                    path: path.into(),
                    reason: format!(
                        "schema version {v} is newer than this k8sd understands ({SCHEMA_VERSION}); upgrade k8sd"
                    ),
                });
            }
        }
        let meta = Self::load_meta(&conn, path)?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
            meta,
        })
    }

    fn initialise(conn: &Connection, path: &Path) -> Result<()> {
        let member_id: u64 = rand::random::<u64>() >> 1 | 1;
        let cluster_id: u64 = rand::random::<u64>() >> 1 | 1;
        let init = [
            ("schema_version", SCHEMA_VERSION),
            ("current_rev", 1),
            ("compact_rev", 0),
            ("physical_compact_rev", 0),
            ("applied_index", 0),
            ("applied_term", 0),
            ("member_id", to_i64(member_id)),
            ("cluster_id", to_i64(cluster_id)),
        ];
        for (k, v) in init {
            meta_set(conn, k, v).map_err(sq(path))?;
        }
        Ok(())
    }

    pub(super) fn load_meta(conn: &Connection, path: &Path) -> Result<Meta> {
        let get = |name: &str| -> Result<i64> {
            meta_get(conn, name)
                .map_err(sq(path))?
                .ok_or_else(|| StoreError::Corrupt {
                    path: path.into(),
                    reason: format!("metadata row {name} is missing"),
                })
        };
        Ok(Meta {
            current_rev: get("current_rev")?,
            compact_rev: get("compact_rev")?,
            physical_compact_rev: get("physical_compact_rev")?,
            applied_index: to_u64(get("applied_index")?),
            applied_term: to_u64(get("applied_term")?),
            member_id: to_u64(get("member_id")?),
            cluster_id: to_u64(get("cluster_id")?),
        })
    }
}
