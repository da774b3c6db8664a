//! SQL shared by the writer (inside the apply transaction) and by readers: schema, key-range
//! predicates, row decoding, and the range and event queries.
//!
//! Schema (version 1):
//!
//! ```text
//! kv      (rev, sub) -> key, create_rev, version, lease, value, deleted,
//!                       prev_rev, prev_create_rev, prev_version, prev_lease, prev_value
//!         a rowid table (its `id` is only the row's place in the file) with a unique index
//!         on (rev, sub); files created by earlier builds (k8sd 0.1.0) hold it as a `WITHOUT ROWID` table
//!         keyed by (rev, sub). Every statement names its columns and keys rows by (rev, sub),
//!         so both layouts answer the same SQL (`KV_TABLE` says why the layout changed).
//!         one row per change; a delete is a tombstone row (deleted = 1). The prev_* columns
//!         copy the key's previous live value so prev_kv survives compaction of that row;
//!         physical compaction clears prev_value in the rows it keeps below the compaction
//!         revision, which no watch replays.
//!         index (key, rev) serves point-in-time reads and compaction.
//! latest  key -> (rev, sub) of the live row; absent once deleted. Serves reads at the
//!         current revision and exact counts without touching history.
//! leases  id -> ttl;  lease_keys (lease, key) is the lease -> keys index.
//! meta    name -> integer: schema_version, current_rev, compact_rev, physical_compact_rev,
//!         applied_index, applied_term, member_id, cluster_id.
//! ```

use rusqlite::{Connection, OptionalExtension, Row, ToSql, params};

use super::types::{Event, EventKind, KeyRange, KeyValue};

pub const SCHEMA_VERSION: i64 = 1;

/// `kv` as every `state.db` this build creates holds it: a rowid table whose `id` SQLite assigns
/// (ascending with the revision, so rows are appended), found by (rev, sub) through
/// `kv_rev_sub`.
///
/// Why not `WITHOUT ROWID` keyed by (rev, sub), as before: such a table is an index b-tree, whose
/// cells keep at most about a quarter of a page in place. A 1 KiB value, or an update row with
/// its `prev_value` (2 KiB), then fits only in 16 KiB pages, and at 16 KiB every write dirties
/// whole 16 KiB pages in `latest` and `kv_key_rev` (one each, wherever its key falls), which
/// every commit copies into the WAL: about 65 KiB of WAL for a 1 KiB create committed alone. A
/// rowid table keeps up to a page less 35 bytes in its cells, so the same rows fit 4 KiB pages
/// ([`super::mvcc::PAGE_SIZE`]) and a write appends 3x less WAL, with lists no slower
/// (docs/benchmarks.md, "kv as a rowid table").
pub const KV_TABLE: &str = "
CREATE TABLE kv (
    id INTEGER PRIMARY KEY,
    rev INTEGER NOT NULL,
    sub INTEGER NOT NULL,
    key BLOB NOT NULL,
    create_rev INTEGER NOT NULL,
    version INTEGER NOT NULL,
    lease INTEGER NOT NULL,
    value BLOB NOT NULL,
    deleted INTEGER NOT NULL,
    prev_rev INTEGER NOT NULL,
    prev_create_rev INTEGER NOT NULL,
    prev_version INTEGER NOT NULL,
    prev_lease INTEGER NOT NULL,
    prev_value BLOB
);
CREATE UNIQUE INDEX kv_rev_sub ON kv (rev, sub);
";

/// `kv` as earlier builds (k8sd 0.1.0, at 4 KiB pages, and later at 16 KiB) created it. Files
/// made so are read and written as they are (the SQL is the same); only tests create one.
#[cfg(test)]
pub const KV_TABLE_WITHOUT_ROWID: &str = "
CREATE TABLE kv (
    rev INTEGER NOT NULL,
    sub INTEGER NOT NULL,
    key BLOB NOT NULL,
    create_rev INTEGER NOT NULL,
    version INTEGER NOT NULL,
    lease INTEGER NOT NULL,
    value BLOB NOT NULL,
    deleted INTEGER NOT NULL,
    prev_rev INTEGER NOT NULL,
    prev_create_rev INTEGER NOT NULL,
    prev_version INTEGER NOT NULL,
    prev_lease INTEGER NOT NULL,
    prev_value BLOB,
    PRIMARY KEY (rev, sub)
) WITHOUT ROWID;
";

/// Everything but `kv`, which must exist first (`KV_TABLE` for a new file). Idempotent.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS kv_key_rev ON kv (key, rev);
CREATE TABLE IF NOT EXISTS latest (key BLOB PRIMARY KEY, rev INTEGER NOT NULL, sub INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY, ttl INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS lease_keys (lease INTEGER NOT NULL, key BLOB NOT NULL, PRIMARY KEY (lease, key)) WITHOUT ROWID;
";

/// Columns selected for a live row, in the order `row_kv` decodes them.
pub const KV_COLS: &str = "kv.key, kv.create_rev, kv.rev, kv.version, kv.value, kv.lease";

pub fn row_kv(row: &Row<'_>, keys_only: bool) -> rusqlite::Result<KeyValue> {
    Ok(KeyValue {
        key: row.get(0)?,
        create_revision: row.get(1)?,
        mod_revision: row.get(2)?,
        version: row.get(3)?,
        value: if keys_only { Vec::new() } else { row.get(4)? },
        lease: row.get(5)?,
    })
}

/// A SQL predicate on column `col` for a key range, with its parameters.
pub fn range_predicate(col: &str, range: &KeyRange) -> (String, Vec<Vec<u8>>) {
    if range.is_single() {
        return (format!("{col} = ?"), vec![range.key.clone()]);
    }
    match range.bounds() {
        (lo, None) => (format!("{col} >= ?"), vec![lo.to_vec()]),
        (lo, Some(hi)) => (
            format!("{col} >= ? AND {col} < ?"),
            vec![lo.to_vec(), hi.to_vec()],
        ),
    }
}

pub fn meta_get(conn: &Connection, name: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT value FROM meta WHERE name = ?")?
        .query_row([name], |r| r.get(0))
        .optional()
}

pub fn meta_set(conn: &Connection, name: &str, value: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![name, value])?;
    Ok(())
}

/// The statement of [`latest_kv`], one string so a test can find it in the statement cache.
pub fn latest_kv_sql() -> String {
    format!(
        "SELECT {KV_COLS} FROM latest JOIN kv ON kv.rev = latest.rev AND kv.sub = latest.sub WHERE latest.key = ?"
    )
}

/// A key's live row at the current revision (inside the writer this includes the open
/// transaction's own writes).
pub fn latest_kv(conn: &Connection, key: &[u8]) -> rusqlite::Result<Option<KeyValue>> {
    conn.prepare_cached(&latest_kv_sql())?
        .query_row([key], |r| row_kv(r, false))
        .optional()
}

/// Live key-values in `range` as of `rev`, ascending by key. `at_current` selects the fast
/// path through `latest`. Returns at most `limit` (0 = all) values and the exact count.
pub fn range_rows(
    conn: &Connection,
    range: &KeyRange,
    rev: i64,
    at_current: bool,
    limit: usize,
    keys_only: bool,
    count_only: bool,
) -> rusqlite::Result<(Vec<KeyValue>, i64)> {
    if at_current {
        let (pred, args) = range_predicate("latest.key", range);
        let args: Vec<&dyn ToSql> = args.iter().map(|a| a as &dyn ToSql).collect();
        let count: i64 = conn
            .prepare_cached(&format!("SELECT COUNT(*) FROM latest WHERE {pred}"))?
            .query_row(args.as_slice(), |r| r.get(0))?;
        if count_only {
            return Ok((Vec::new(), count));
        }
        let lim = if limit == 0 {
            -1
        } else {
            i64::try_from(limit).unwrap_or(i64::MAX)
        };
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {KV_COLS} FROM latest JOIN kv ON kv.rev = latest.rev AND kv.sub = latest.sub \
             WHERE {pred} ORDER BY latest.key LIMIT {lim}"
        ))?;
        let kvs = stmt
            .query_map(args.as_slice(), |r| row_kv(r, keys_only))?
            .collect::<Result<Vec<_>, _>>()?;
        return Ok((kvs, count));
    }
    // Historical read: for each key, the newest row at or below `rev`; SQLite returns the bare
    // columns of the row that holds MAX(rev). Tombstones are counted out afterwards.
    let (pred, args) = range_predicate("key", range);
    let mut params: Vec<&dyn ToSql> = args.iter().map(|a| a as &dyn ToSql).collect();
    params.push(&rev);
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT key, MAX(rev), sub, deleted FROM kv WHERE {pred} AND rev <= ? GROUP BY key ORDER BY key"
    ))?;
    let mut live: Vec<(i64, i64)> = Vec::new();
    let mut rows = stmt.query(params.as_slice())?;
    while let Some(row) = rows.next()? {
        let deleted: i64 = row.get(3)?;
        if deleted == 0 {
            live.push((row.get(1)?, row.get(2)?));
        }
    }
    let count = i64::try_from(live.len()).unwrap_or(i64::MAX);
    if count_only {
        return Ok((Vec::new(), count));
    }
    let take = if limit == 0 {
        live.len()
    } else {
        limit.min(live.len())
    };
    let mut fetch = conn.prepare_cached(&format!("SELECT {KV_COLS} FROM kv WHERE rev = ? AND sub = ?"))?;
    let mut kvs = Vec::with_capacity(take);
    for (r, s) in live.into_iter().take(take) {
        kvs.push(fetch.query_row(params![r, s], |row| row_kv(row, keys_only))?);
    }
    Ok((kvs, count))
}

/// Every change in `range` with `from <= rev <= to`, in (rev, sub) order.
pub fn events_between(
    conn: &Connection,
    range: &KeyRange,
    from: i64,
    to: i64,
) -> rusqlite::Result<Vec<Event>> {
    let (pred, args) = range_predicate("key", range);
    let mut params: Vec<&dyn ToSql> = vec![&from, &to];
    params.extend(args.iter().map(|a| a as &dyn ToSql));
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT key, create_rev, rev, version, value, lease, deleted, \
                prev_rev, prev_create_rev, prev_version, prev_lease, prev_value \
         FROM kv WHERE rev >= ? AND rev <= ? AND {pred} ORDER BY rev, sub"
    ))?;
    let rows = stmt.query_map(params.as_slice(), row_event)?;
    rows.collect()
}

fn row_event(row: &Row<'_>) -> rusqlite::Result<Event> {
    let key: Vec<u8> = row.get(0)?;
    let deleted: i64 = row.get(6)?;
    let prev_rev: i64 = row.get(7)?;
    let prev_kv = if prev_rev > 0 {
        Some(KeyValue {
            key: key.clone(),
            create_revision: row.get(8)?,
            mod_revision: prev_rev,
            version: row.get(9)?,
            value: row.get::<_, Option<Vec<u8>>>(11)?.unwrap_or_default(),
            lease: row.get(10)?,
        })
    } else {
        None
    };
    let mod_revision: i64 = row.get(2)?;
    let (kind, kv) = if deleted != 0 {
        (
            EventKind::Delete,
            KeyValue {
                key,
                mod_revision,
                ..KeyValue::default()
            },
        )
    } else {
        (
            EventKind::Put,
            KeyValue {
                key,
                create_revision: row.get(1)?,
                mod_revision,
                version: row.get(3)?,
                value: row.get(4)?,
                lease: row.get(5)?,
            },
        )
    };
    Ok(Event { kind, kv, prev_kv })
}
