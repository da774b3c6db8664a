//! etcd's Range rules over the SQL rows: revision bounds, limit and `more`, exact counts,
//! sorting and revision filters. Readers and the reads inside a Txn both come here.

use std::path::Path;

use rusqlite::Connection;

use super::sq;
use crate::datastore::error::{Result, StoreError};
use crate::datastore::sql;
use crate::datastore::types::*;

/// Serve a Range at `req.revision` (0 = current) with etcd's rules for limit, count, more,
/// sorting and revision filters.
pub fn execute_range(
    conn: &Connection,
    path: &Path,
    req: &RangeRequest,
    current: i64,
    compacted: i64,
) -> Result<RangeResult> {
    let rev = if req.revision <= 0 { current } else { req.revision };
    if rev > current {
        return Err(StoreError::FutureRevision {
            requested: rev,
            current,
        });
    }
    if rev < compacted {
        return Err(StoreError::Compacted {
            requested: rev,
            compacted,
        });
    }
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    // etcd: a non-key target with no order sorts ascending; key-ascending is the natural order.
    let order = match (req.sort_order, req.sort_target) {
        (SortOrder::None, t) if t != SortTarget::Key => SortOrder::Ascend,
        (SortOrder::Ascend, SortTarget::Key) => SortOrder::None,
        (o, _) => o,
    };
    let sorted = order != SortOrder::None;
    let want = usize::try_from(req.limit.max(0)).unwrap_or(usize::MAX);
    // Like etcd: fetch one extra row to learn `more`, or everything when the request asked for
    // an explicit order or filters. (etcd decides this on the order as requested, so a non-key
    // target with no order sorts only the first `limit` keys; we match that.)
    let fetch_all = req.sort_order != SortOrder::None || filtered;
    let fetch = if fetch_all || want == 0 {
        0
    } else {
        want.saturating_add(1)
    };
    let (mut kvs, count) = sql::range_rows(
        conn,
        &req.range,
        rev,
        rev == current,
        fetch,
        req.keys_only,
        req.count_only,
    )
    .map_err(sq(path))?;
    if req.count_only {
        return Ok(RangeResult {
            kvs: Vec::new(),
            more: false,
            count,
        });
    }
    if filtered {
        kvs.retain(|kv| {
            (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
        });
    }
    if sorted {
        let key = |a: &KeyValue, b: &KeyValue| match req.sort_target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        };
        match order {
            SortOrder::Descend => kvs.sort_by(|a, b| key(b, a)),
            _ => kvs.sort_by(key),
        }
    }
    let mut more = false;
    if want > 0 && kvs.len() > want {
        kvs.truncate(want);
        more = true;
    }
    Ok(RangeResult { kvs, more, count })
}
