//! The datastore: an MVCC key-value store on SQLite with etcd's semantics.
//!
//! It is a deterministic state machine: `Store::apply_batch` takes commands in log order and
//! assigns revisions, and `Reader` serves reads from WAL snapshots. It knows nothing about
//! gRPC, protobuf or async runtimes; those live in `etcd` and `node`. Of Raft it knows only
//! what must commit in the same transaction as the data, opaque to it (`mvcc/raft_ext.rs`,
//! docs/ARCHITECTURE.md "What the datastore knows of Raft"). Plain `#[test]`s cover it.

mod committed;
pub mod error;
pub mod mvcc;
mod sql;
pub mod types;

pub use committed::{CommittedBatch, LeaseChange, LeaseChanges};
pub use error::StoreError;
pub use mvcc::{
    Checkpointer, Durability, KvHash, LogPosition, Meta, PAGE_SIZE, ReadView, Reader, Store, execute_range,
    validate_txn,
};
// Raft-only additions (src/datastore/mvcc/raft_ext.rs).
pub use mvcc::{
    DedupPrune, RaftApplied, RaftCommand, export_snapshot, read_raft_meta, reseed_for_new_cluster,
};
pub use types::*;

#[cfg(test)]
mod tests;
