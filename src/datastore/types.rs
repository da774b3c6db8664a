//! Datastore request, response and event types.
//!
//! These mirror the parts of etcd's v3 API that the store implements, without protobuf: the
//! `etcd` module converts between these and the wire types in one place (`etcd/convert.rs`).
//! `Command` and everything it contains is also the payload of a replicated log entry, so it is
//! serialisable and versioned (see `Command`'s docs).

use serde::{Deserialize, Serialize};

/// A key-value pair as stored at one revision (etcd's `mvccpb.KeyValue`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub value: Vec<u8>,
    pub lease: i64,
}

/// The kind of change an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change to one key. A delete carries `kv = {key, mod_revision = deleting revision}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    /// The key's previous live value, kept in the same row so it survives compaction.
    pub prev_kv: Option<KeyValue>,
}

/// A key range in etcd's encoding: empty `end` is the single key, `end == [0]` is every key
/// `>= key`, and otherwise the half-open range `[key, end)`.
///
/// Byte strings are (de)serialised as bytes (`serde_bytes`), not as sequences of `u8`: postcard
/// writes both the same way (a varint length, then the raw bytes), so the log format does not
/// change, but a sequence costs a visitor call per byte: encoding and decoding log entries
/// profiled at 6 % of the server's CPU under 1 KiB puts (docs/design/raft.md). JSON writes both
/// as arrays of numbers, so format-1 entries and JSON peer messages are unchanged too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRange {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub end: Vec<u8>,
}

impl KeyRange {
    pub fn new(key: Vec<u8>, end: Vec<u8>) -> Self {
        KeyRange { key, end }
    }

    pub fn single(key: impl Into<Vec<u8>>) -> Self {
        KeyRange {
            key: key.into(),
            end: Vec::new(),
        }
    }

    pub fn is_single(&self) -> bool {
        self.end.is_empty()
    }

    /// The lower bound and (exclusive) upper bound; `None` means unbounded above.
    pub fn bounds(&self) -> (&[u8], Option<&[u8]>) {
        if self.end == [0] {
            (&self.key, None)
        } else {
            (&self.key, Some(&self.end))
        }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        if self.is_single() {
            return k == self.key.as_slice();
        }
        match self.bounds() {
            (lo, None) => k >= lo,
            (lo, Some(hi)) => k >= lo && k < hi,
        }
    }

    /// Whether two ranges share at least one key (used for the duplicate-key rule in Txn).
    pub fn overlaps(&self, other: &KeyRange) -> bool {
        if self.is_single() {
            return other.contains(&self.key);
        }
        if other.is_single() {
            return self.contains(&other.key);
        }
        let (a_lo, a_hi) = self.bounds();
        let (b_lo, b_hi) = other.bounds();
        let a_before_b_end = b_hi.is_none_or(|hi| a_lo < hi);
        let b_before_a_end = a_hi.is_none_or(|hi| b_lo < hi);
        a_before_b_end && b_before_a_end
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SortOrder {
    #[default]
    None,
    Ascend,
    Descend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RangeRequest {
    pub range: KeyRange,
    pub limit: i64,
    pub revision: i64,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    pub keys_only: bool,
    pub count_only: bool,
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
}

impl Default for KeyRange {
    fn default() -> Self {
        KeyRange::single(Vec::new())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    pub more: bool,
    pub count: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PutRequest {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub lease: i64,
    pub prev_kv: bool,
    pub ignore_value: bool,
    pub ignore_lease: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeleteRequest {
    pub range: KeyRange,
    pub prev_kv: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    Equal,
    Greater,
    Less,
    NotEqual,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Version(i64),
    Create(i64),
    Mod(i64),
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    Lease(i64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub range: KeyRange,
    pub result: CompareResult,
    pub target: CompareTarget,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Range(RangeRequest),
    Put(PutRequest),
    Delete(DeleteRequest),
    Txn(TxnRequest),
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    Range(RangeResult),
    Put { prev_kv: Option<KeyValue> },
    Delete { deleted: i64, prev_kvs: Vec<KeyValue> },
    Txn(TxnResult),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TxnResult {
    pub succeeded: bool,
    pub responses: Vec<OpResult>,
}

/// A deterministic state-machine command: the payload of one log entry.
///
/// Wire stability: this enum is serialised with serde into the replicated log and must stay
/// readable by the next release. Add variants at the end; never change the meaning of an
/// existing one. The log stores it with postcard, which is not self-describing: any change to
/// this type or the types inside it bumps `COMMAND_FORMAT_VERSION` (see `raft::codec`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Put, DeleteRange and Txn all travel as a Txn (a bare Put is a Txn with one success op).
    Txn(TxnRequest),
    /// Set the compaction revision; physical deletion follows in the background.
    Compact { revision: i64 },
    /// Grant a lease. `id == 0` lets the state machine choose an unused id.
    LeaseGrant { id: i64, ttl: i64 },
    /// Revoke (or expire) a lease, deleting its keys at one revision.
    LeaseRevoke { id: i64 },
}

/// Version of the `Command` encoding stored in log entries: the first byte of every binary
/// entry (`raft::codec`). Version 1 was serde_json and is still read.
pub const COMMAND_FORMAT_VERSION: u32 = 2;

/// What applying a command produced. `revision` is the store revision after the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandOutput {
    Txn { revision: i64, result: TxnResult },
    Compact { revision: i64 },
    LeaseGrant { revision: i64, id: i64, ttl: i64 },
    LeaseRevoke { revision: i64 },
}

impl CommandOutput {
    pub fn revision(&self) -> i64 {
        match self {
            CommandOutput::Txn { revision, .. }
            | CommandOutput::Compact { revision }
            | CommandOutput::LeaseGrant { revision, .. }
            | CommandOutput::LeaseRevoke { revision } => *revision,
        }
    }
}

/// A lease as the state machine knows it (deadlines live with the leader's lessor, not here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    pub id: i64,
    pub ttl: i64,
    pub keys: Vec<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_overlap_like_etcd_intervals() {
        let single = KeyRange::single(b"b".to_vec());
        let ac = KeyRange::new(b"a".to_vec(), b"c".to_vec());
        let from_c = KeyRange::new(b"c".to_vec(), vec![0]);
        assert!(single.overlaps(&ac));
        assert!(ac.overlaps(&single));
        assert!(!ac.overlaps(&from_c), "[a,c) and [c,inf) are disjoint");
        assert!(from_c.overlaps(&KeyRange::single(b"zzz".to_vec())));
        assert!(!KeyRange::single(b"a".to_vec()).overlaps(&KeyRange::single(b"b".to_vec())));
    }
}
