//! Physical compaction: deleting the history a `Compact` command gave up, in steps small
//! enough that apply batches interleave with it.

use rusqlite::params;

use super::{Store, sq};
use crate::datastore::error::Result;
use crate::datastore::sql::meta_set;

impl Store {
    /// Physically delete history below the compaction revision, at most `budget` revisions
    /// per call so that apply batches interleave. Returns true while work remains.
    pub fn compact_step(&mut self, budget: i64) -> Result<bool> {
        let target = self.meta.compact_rev;
        let from = self.meta.physical_compact_rev;
        if from >= target {
            return Ok(false);
        }
        let hi = (from + budget.max(1)).min(target);
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(sq(&path))?;
        // Keep, for every key, its newest row at or below the compaction revision, unless that
        // row is a tombstone older than the compaction revision. A tombstone exactly at the
        // compaction revision stays, so a watch from that revision replays it (etcd#19179).
        tx.execute(
            "DELETE FROM kv WHERE rev > ?1 AND rev <= ?2 AND (
                 (deleted = 1 AND rev < ?3)
                 OR EXISTS (SELECT 1 FROM kv AS n WHERE n.key = kv.key AND n.rev > kv.rev AND n.rev <= ?3))",
            params![from, hi, target],
        )
        .map_err(sq(&path))?;
        // A row kept below the compaction revision is never an event again (watches start at
        // it or later), so the previous value it carries for `prev_kv` is dead: clear it, and
        // `secure_delete` zeroes its bytes. Otherwise an overwritten Secret's old ciphertext
        // would outlive compaction inside the row that replaced it.
        tx.execute(
            "UPDATE kv SET prev_value = NULL WHERE rev > ?1 AND rev <= ?2 AND rev < ?3 AND prev_value IS NOT NULL",
            params![from, hi, target],
        )
        .map_err(sq(&path))?;
        meta_set(&tx, "physical_compact_rev", hi).map_err(sq(&path))?;
        tx.commit().map_err(sq(&path))?;
        self.meta.physical_compact_rev = hi;
        if hi >= target {
            // Let the WAL shrink now that a large delete is done; passive never blocks readers.
            let _ = self
                .conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        }
        Ok(hi < target)
    }
}
