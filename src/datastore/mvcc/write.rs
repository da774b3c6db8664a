//! The write path: a batch of commands in one transaction, each command in its own savepoint.
//! Everything a command does depends only on the store's contents, the command and its log
//! index, so every replica computes the same revisions, lease ids and events.

use std::path::Path;

use rusqlite::{Connection, params};

use super::range::execute_range;
use super::{LogPosition, Meta, Store, sq, to_i64};
use crate::datastore::error::{Result, StoreError};
use crate::datastore::sql::{self, latest_kv, meta_set};
use crate::datastore::types::*;

/// Largest TTL a lease may ask for (etcd's `MaxLeaseTTL`).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// Smallest TTL granted; shorter requests are raised to it, as etcd does with its default
/// election timeout (ceil(1.5 * election timeout)).
pub const MIN_LEASE_TTL: i64 = 2;
/// Server-chosen lease ids: `AUTO_LEASE_BASE | log index` (see `apply_one`).
const AUTO_LEASE_BASE: i64 = 0x0700_0000_0000_0000;
const AUTO_LEASE_MASK: i64 = 0x0000_ffff_ffff_ffff;

impl Store {
    /// Apply a batch of commands in one transaction. Returns one result per command and the
    /// events produced, in revision order. A fatal error aborts the whole batch.
    pub fn apply_batch(
        &mut self,
        cmds: &[(LogPosition, &Command)],
    ) -> Result<(Vec<Result<CommandOutput>>, Vec<Event>)> {
        let path = self.path.clone();
        let mut tx = self.conn.transaction().map_err(sq(&path))?;
        let mut meta = self.meta;
        let mut outputs = Vec::with_capacity(cmds.len());
        let mut events = Vec::new();
        for (pos, cmd) in cmds {
            let mut sp = tx.savepoint().map_err(sq(&path))?;
            let mut next = meta;
            let mut cmd_events = Vec::new();
            match apply_one(&sp, &path, &mut next, pos.index, cmd, &mut cmd_events) {
                Ok(out) => {
                    sp.commit().map_err(sq(&path))?;
                    meta = next;
                    events.append(&mut cmd_events);
                    outputs.push(Ok(out));
                }
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => {
                    sp.rollback().map_err(sq(&path))?;
                    drop(sp);
                    outputs.push(Err(e));
                }
            }
            meta.applied_index = pos.index;
            meta.applied_term = pos.term;
        }
        write_meta(&tx, &path, &meta)?;
        tx.commit().map_err(sq(&path))?;
        self.meta = meta;
        Ok((outputs, events))
    }
}

pub(super) fn write_meta(conn: &Connection, path: &Path, m: &Meta) -> Result<()> {
    let rows = [
        ("current_rev", m.current_rev),
        ("compact_rev", m.compact_rev),
        ("applied_index", to_i64(m.applied_index)),
        ("applied_term", to_i64(m.applied_term)),
    ];
    for (k, v) in rows {
        meta_set(conn, k, v).map_err(sq(path))?;
    }
    Ok(())
}

/// Mutable state of one command while it applies: the revision it will take if it writes and
/// the next sub-revision.
struct WriteCtx<'a> {
    conn: &'a Connection,
    path: &'a Path,
    rev: i64,
    sub: i64,
    events: &'a mut Vec<Event>,
}

/// Apply one command at log position `index`. Everything here must depend only on the store's
/// contents, the command and `index`, so that every replica computes the same result.
pub(super) fn apply_one(
    conn: &Connection,
    path: &Path,
    meta: &mut Meta,
    index: u64,
    cmd: &Command,
    events: &mut Vec<Event>,
) -> Result<CommandOutput> {
    let mut ctx = WriteCtx {
        conn,
        path,
        rev: meta.current_rev + 1,
        sub: 0,
        events,
    };
    match cmd {
        Command::Txn(txn) => {
            let result = apply_txn(&mut ctx, meta, txn)?;
            if ctx.sub > 0 {
                meta.current_rev = ctx.rev;
            }
            Ok(CommandOutput::Txn {
                revision: meta.current_rev,
                result,
            })
        }
        Command::Compact { revision } => {
            if *revision <= meta.compact_rev {
                return Err(StoreError::Compacted {
                    requested: *revision,
                    compacted: meta.compact_rev,
                });
            }
            if *revision > meta.current_rev {
                return Err(StoreError::FutureRevision {
                    requested: *revision,
                    current: meta.current_rev,
                });
            }
            meta.compact_rev = *revision;
            Ok(CommandOutput::Compact {
                revision: meta.current_rev,
            })
        }
        Command::LeaseGrant { id, ttl } => {
            if *ttl > MAX_LEASE_TTL {
                return Err(StoreError::LeaseTtlTooLarge(*ttl));
            }
            let ttl = (*ttl).max(MIN_LEASE_TTL);
            let id = if *id == 0 {
                // The id comes from the entry's log index, which every replica agrees on (a
                // per-store counter would give each replica its own id for the same grant).
                // Indexes are never reused, so neither are ids; the high bits keep them clear
                // of small ids that clients choose themselves, and a collision with one steps
                // to the next block, deterministically.
                let mut candidate = AUTO_LEASE_BASE | (to_i64(index) & AUTO_LEASE_MASK);
                while lease_exists(conn, path, candidate)? {
                    candidate = (candidate + AUTO_LEASE_MASK + 1) & i64::MAX;
                }
                candidate
            } else if lease_exists(conn, path, *id)? {
                return Err(StoreError::LeaseExists(*id));
            } else {
                *id
            };
            conn.prepare_cached("INSERT INTO leases (id, ttl) VALUES (?, ?)")
                .and_then(|mut s| s.execute(params![id, ttl]))
                .map_err(sq(path))?;
            Ok(CommandOutput::LeaseGrant {
                revision: meta.current_rev,
                id,
                ttl,
            })
        }
        Command::LeaseRevoke { id } => {
            if !lease_exists(conn, path, *id)? {
                return Err(StoreError::LeaseNotFound(*id));
            }
            let keys: Vec<Vec<u8>> = conn
                .prepare_cached("SELECT key FROM lease_keys WHERE lease = ? ORDER BY key")
                .and_then(|mut s| s.query_map([id], |r| r.get(0))?.collect())
                .map_err(sq(path))?;
            for key in keys {
                delete_range(&mut ctx, &KeyRange::single(key), false)?;
            }
            conn.execute("DELETE FROM leases WHERE id = ?", [id])
                .map_err(sq(path))?;
            conn.execute("DELETE FROM lease_keys WHERE lease = ?", [id])
                .map_err(sq(path))?;
            if ctx.sub > 0 {
                meta.current_rev = ctx.rev;
            }
            Ok(CommandOutput::LeaseRevoke {
                revision: meta.current_rev,
            })
        }
    }
}

fn lease_exists(conn: &Connection, path: &Path, id: i64) -> Result<bool> {
    conn.prepare_cached("SELECT 1 FROM leases WHERE id = ?")
        .and_then(|mut s| s.exists([id]))
        .map_err(sq(path))
}

fn apply_txn(ctx: &mut WriteCtx<'_>, meta: &Meta, txn: &TxnRequest) -> Result<TxnResult> {
    let mut succeeded = true;
    for c in &txn.compare {
        if !compare(ctx.conn, ctx.path, c)? {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded { &txn.success } else { &txn.failure };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let r = match op {
            Op::Range(req) => {
                // Reads inside a write see the writes made earlier in the same Txn, like etcd.
                let current = if ctx.sub > 0 { ctx.rev } else { meta.current_rev };
                OpResult::Range(execute_range(ctx.conn, ctx.path, req, current, meta.compact_rev)?)
            }
            Op::Put(req) => put(ctx, req)?,
            Op::Delete(req) => delete_range(ctx, &req.range, req.prev_kv)?,
            Op::Txn(inner) => OpResult::Txn(apply_txn(ctx, meta, inner)?),
        };
        responses.push(r);
    }
    Ok(TxnResult { succeeded, responses })
}

fn compare(conn: &Connection, path: &Path, c: &Compare) -> Result<bool> {
    let kvs = if c.range.is_single() {
        latest_kv(conn, &c.range.key)
            .map_err(sq(path))?
            .into_iter()
            .collect::<Vec<_>>()
    } else {
        sql::range_rows(conn, &c.range, 0, true, 0, false, false)
            .map_err(sq(path))?
            .0
    };
    if kvs.is_empty() {
        // etcd compares a missing key as the zero KeyValue, except that a value compare fails.
        if matches!(c.target, CompareTarget::Value(_)) {
            return Ok(false);
        }
        return Ok(compare_kv(c, &KeyValue::default()));
    }
    Ok(kvs.iter().all(|kv| compare_kv(c, kv)))
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let ord: Ordering = match &c.target {
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::Create(v) => kv.create_revision.cmp(v),
        CompareTarget::Mod(v) => kv.mod_revision.cmp(v),
        CompareTarget::Lease(v) => kv.lease.cmp(v),
        CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
    };
    match c.result {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
    }
}

fn put(ctx: &mut WriteCtx<'_>, req: &PutRequest) -> Result<OpResult> {
    let (conn, path) = (ctx.conn, ctx.path);
    let prev = latest_kv(conn, &req.key).map_err(sq(path))?;
    if (req.ignore_value || req.ignore_lease) && prev.is_none() {
        return Err(StoreError::KeyNotFound);
    }
    let lease = match (&prev, req.ignore_lease) {
        (Some(p), true) => p.lease,
        _ => req.lease,
    };
    if lease != 0 && !lease_exists(conn, path, lease)? {
        return Err(StoreError::LeaseNotFound(lease));
    }
    let value = match (&prev, req.ignore_value) {
        (Some(p), true) => p.value.clone(),
        _ => req.value.clone(),
    };
    let (rev, sub) = (ctx.rev, ctx.sub);
    ctx.sub += 1;
    let kv = KeyValue {
        key: req.key.clone(),
        create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
        mod_revision: rev,
        version: prev.as_ref().map_or(1, |p| p.version + 1),
        value,
        lease,
    };
    insert_row(conn, path, rev, sub, &kv, false, prev.as_ref())?;
    conn.prepare_cached("INSERT INTO latest (key, rev, sub) VALUES (?1, ?2, ?3) ON CONFLICT(key) DO UPDATE SET rev = ?2, sub = ?3")
        .and_then(|mut s| s.execute(params![kv.key, rev, sub]))
        .map_err(sq(path))?;
    let prev_lease = prev.as_ref().map_or(0, |p| p.lease);
    if prev_lease != 0 && prev_lease != lease {
        detach(conn, path, prev_lease, &kv.key)?;
    }
    if lease != 0 && lease != prev_lease {
        conn.prepare_cached("INSERT OR IGNORE INTO lease_keys (lease, key) VALUES (?, ?)")
            .and_then(|mut s| s.execute(params![lease, kv.key]))
            .map_err(sq(path))?;
    }
    ctx.events.push(Event {
        kind: EventKind::Put,
        kv,
        prev_kv: prev.clone(),
    });
    Ok(OpResult::Put {
        prev_kv: if req.prev_kv { prev } else { None },
    })
}

fn delete_range(ctx: &mut WriteCtx<'_>, range: &KeyRange, want_prev: bool) -> Result<OpResult> {
    let (conn, path) = (ctx.conn, ctx.path);
    let (victims, _) = sql::range_rows(conn, range, 0, true, 0, false, false).map_err(sq(path))?;
    let deleted = i64::try_from(victims.len()).unwrap_or(i64::MAX);
    for prev in &victims {
        let (rev, sub) = (ctx.rev, ctx.sub);
        ctx.sub += 1;
        let tomb = KeyValue {
            key: prev.key.clone(),
            mod_revision: rev,
            ..KeyValue::default()
        };
        insert_row(conn, path, rev, sub, &tomb, true, Some(prev))?;
        conn.prepare_cached("DELETE FROM latest WHERE key = ?")
            .and_then(|mut s| s.execute([&prev.key]))
            .map_err(sq(path))?;
        if prev.lease != 0 {
            detach(conn, path, prev.lease, &prev.key)?;
        }
        ctx.events.push(Event {
            kind: EventKind::Delete,
            kv: tomb,
            prev_kv: Some(prev.clone()),
        });
    }
    Ok(OpResult::Delete {
        deleted,
        prev_kvs: if want_prev { victims } else { Vec::new() },
    })
}

fn detach(conn: &Connection, path: &Path, lease: i64, key: &[u8]) -> Result<()> {
    conn.prepare_cached("DELETE FROM lease_keys WHERE lease = ? AND key = ?")
        .and_then(|mut s| s.execute(params![lease, key]))
        .map_err(sq(path))?;
    Ok(())
}

fn insert_row(
    conn: &Connection,
    path: &Path,
    rev: i64,
    sub: i64,
    kv: &KeyValue,
    deleted: bool,
    prev: Option<&KeyValue>,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO kv (rev, sub, key, create_rev, version, lease, value, deleted,
                         prev_rev, prev_create_rev, prev_version, prev_lease, prev_value)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .and_then(|mut s| {
        s.execute(params![
            rev,
            sub,
            kv.key,
            kv.create_revision,
            kv.version,
            kv.lease,
            kv.value,
            i64::from(deleted),
            prev.map_or(0, |p| p.mod_revision),
            prev.map_or(0, |p| p.create_revision),
            prev.map_or(0, |p| p.version),
            prev.map_or(0, |p| p.lease),
            prev.map(|p| p.value.as_slice()),
        ])
    })
    .map_err(sq(path))?;
    Ok(())
}
