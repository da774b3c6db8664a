//! The newest durable log entries, kept in memory after their commit so that the state
//! machine's apply and the replication to followers read them without a SQLite query and a
//! decode.
//!
//! Why: openraft's state-machine worker reads every committed range back from the log store
//! before applying it. In a Raft group of one an entry is committed exactly when it is durable,
//! which is when `LogStore` drops it from `pending`, so every apply read the entry back from
//! `log.db` and decoded it again: 5 % of the server's CPU under 1 KiB puts (docs/design/raft.md).
//!
//! Bounded by bytes ([`MAX_BYTES`]), the oldest dropped first; the apply lags the log by a few
//! milliseconds, so a few hundred entries is what is read. The owner keeps it true to the log:
//! a truncate or purge removes the same indexes here, and an entry is inserted only while it is
//! still the one the log holds at its index (`log_store.rs` checks its sequence number).

use std::collections::BTreeMap;
use std::ops::Bound;

use super::types::Entry;

/// Most bytes of entries kept (encoded sizes plus [`PER_ENTRY`] each).
const MAX_BYTES: usize = 8 << 20;
/// What an entry costs beyond its encoded bytes: the map node and the entry's own fields.
const PER_ENTRY: usize = 256;

#[derive(Debug, Default)]
pub struct RecentEntries {
    entries: BTreeMap<u64, (Entry, usize)>,
    bytes: usize,
}

impl RecentEntries {
    /// Keep `entry` (index `idx`, `encoded` bytes in the log); drops the oldest entries beyond
    /// the bound. An entry larger than the whole bound is not kept.
    pub fn insert(&mut self, idx: u64, entry: Entry, encoded: usize) {
        let cost = encoded + PER_ENTRY;
        if cost > MAX_BYTES {
            self.remove_from(idx);
            return;
        }
        if let Some((_, old)) = self.entries.insert(idx, (entry, cost)) {
            self.bytes -= old;
        }
        self.bytes += cost;
        while self.bytes > MAX_BYTES {
            let Some((_, (_, c))) = self.entries.pop_first() else {
                break;
            };
            self.bytes -= c;
        }
    }

    /// Forget every entry at `idx` or above (a truncate, or entries appended anew from `idx`).
    pub fn remove_from(&mut self, idx: u64) {
        for (_, (_, c)) in self.entries.split_off(&idx) {
            self.bytes -= c;
        }
    }

    /// Forget every entry at `upto` or below (a purge).
    pub fn remove_upto(&mut self, upto: u64) {
        let kept = self.entries.split_off(&upto.saturating_add(1));
        let gone = std::mem::replace(&mut self.entries, kept);
        for (_, (_, c)) in gone {
            self.bytes -= c;
        }
    }

    /// The kept entries with index in `[start, end)` (`end` `None`: no upper bound).
    pub fn range(&self, start: u64, end: Option<u64>) -> impl Iterator<Item = (u64, &Entry)> {
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        self.entries
            .range((Bound::Included(start), upper))
            .map(|(i, (e, _))| (*i, e))
    }
}

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;
    use openraft::alias::LeaderIdOf;
    use openraft::vote::RaftLeaderIdExt;

    use super::*;
    use crate::raft::types::{LogId, TypeConfig};

    fn entry(idx: u64) -> Entry {
        Entry {
            log_id: LogId::new(LeaderIdOf::<TypeConfig>::new_committed(1, 1), idx),
            payload: EntryPayload::Blank,
        }
    }

    fn indexes(r: &RecentEntries, start: u64, end: Option<u64>) -> Vec<u64> {
        r.range(start, end).map(|(i, _)| i).collect()
    }

    #[test]
    fn truncate_and_purge_remove_exactly_their_indexes() {
        let mut r = RecentEntries::default();
        for i in 1..=10 {
            r.insert(i, entry(i), 100);
        }
        r.remove_from(8);
        r.remove_upto(3);
        assert_eq!(indexes(&r, 0, None), vec![4, 5, 6, 7]);
        assert_eq!(indexes(&r, 5, Some(7)), vec![5, 6]);
        assert_eq!(r.bytes, 4 * (100 + PER_ENTRY));
    }

    #[test]
    fn the_oldest_go_first_once_past_the_bound() {
        let mut r = RecentEntries::default();
        let size = MAX_BYTES / 4 - PER_ENTRY;
        for i in 1..=6 {
            r.insert(i, entry(i), size);
        }
        assert_eq!(indexes(&r, 0, None), vec![3, 4, 5, 6]);
        assert_eq!(r.bytes, MAX_BYTES);
        // Re-inserting an index replaces it and counts it once.
        r.insert(6, entry(6), size);
        assert_eq!(r.entries.len(), 4);
        assert_eq!(r.bytes, MAX_BYTES);
    }

    #[test]
    fn an_entry_larger_than_the_bound_is_not_kept_and_drops_what_follows_it() {
        let mut r = RecentEntries::default();
        r.insert(1, entry(1), 10);
        r.insert(2, entry(2), 10);
        r.insert(2, entry(2), MAX_BYTES);
        assert_eq!(indexes(&r, 0, None), vec![1]);
        assert_eq!(r.bytes, 10 + PER_ENTRY);
    }
}
