//! Raft replication of the datastore, on openraft 0.10.
//!
//! ```text
//!   etcd façade ──propose(Command)──▶ RaftNode ──client_write──▶ openraft core
//!                                       │  follower? Forward RPC to the leader, then
//!                                       │  wait for the entry's outcome from the local apply
//!   reads ──linearizable_barrier()──▶ read index (local leader, or ReadIndex RPC to it),
//!                                      wait until applied ≥ index, then read the local SQLite
//!
//!   openraft core ──▶ LogStore   (<data>/raft/log.db: log + vote, fsync per batch)
//!                 ──▶ StateMachine (<data>/state.db: the datastore, + raft_meta rows)
//!                 ──▶ NetworkFactory/PeerNetwork ──gRPC──▶ peers' PeerService
//! ```
//!
//! Files by role. A `RaftNode` is one type whose methods are split by what they do:
//!
//! | file | role |
//! |---|---|
//! | `node.rs` | lifecycle: start (storage, openraft, peer service, background tasks), state, shutdown |
//! | `propose.rs` | writes: proposals, forwarding to the leader, dedup-safe retries |
//! | `read_index.rs` | linearizable reads: the read index and the local wait |
//! | `admin.rs` | membership from any member (join, remove, manual changes) and status |
//! | `lease.rs` | questions to the leader's lease clock |
//! | `config.rs`, `error.rs`, `node_id.rs` | settings, errors, this node's identity file |
//! | `transport.rs` | client side of the peer RPCs: openraft's network, unary calls, fault filter |
//! | `service.rs` | server side: the `RaftPeer` gRPC service; the only `tonic::Status` mapping here |
//! | `wire.rs` | the peer messages and their two body formats (rolling upgrades depend on it) |
//! | `negotiate.rs` | which format each peer is sent, learned from its replies |
//! | `membership.rs` | the leader's side of joins, promotions, removals, lost-voter replacement |
//! | `membership_plan.rs` | the pure decisions behind them |
//! | `log_store.rs`, `codec.rs`, `log_cache.rs` | the Raft log in SQLite, its entry encoding, the newest durable entries kept in memory |
//! | `full_disk.rs` | a full disk as the log writer and the state machine meet it: the alarm hook, who waits, the closing flag, the warning rate |
//! | `state_machine.rs`, `outcome.rs` | openraft's state machine: apply, snapshots, the dedup outcomes |
//! | `apply_thread.rs` | the one writer of the datastore: committed ranges queued behind a running transaction become the next one |
//! | `types.rs` | openraft's type configuration and the log entry payload |
//! | `peer_auth.rs`, `recover.rs`, `stages.rs` | peer certificates, `k8sd recover`, write timing |
//!
//! Boundaries: this module is the only writer of the datastore once a node runs Raft; it
//! knows nothing of etcd's protobuf types. The peer service has its own listener, never the
//! etcd client port. A node's identity is a random `u64` kept in `<data>/raft/node-id`, never
//! its hostname or address. See docs/design/raft.md for the reasoning.

mod admin;
pub mod apply_thread;
pub mod codec;
mod config;
mod error;
pub mod full_disk;
mod lease;
mod log_cache;
pub mod log_store;
pub mod membership;
pub mod membership_plan;
pub mod negotiate;
mod node;
mod node_id;
pub mod outcome;
pub mod peer_auth;
mod propose;
mod read_index;
pub mod recover;
pub mod service;
pub mod stages;
pub mod state_machine;
pub mod transport;
pub mod types;
pub mod wire;

/// Generated code for the peer service (`proto/raft/raft.proto`).
pub mod pb {
    #![allow(clippy::all, missing_debug_implementations, missing_docs)]
    tonic::include_proto!("k8sd.raft.v1");
}

pub use admin::{Member, RaftStatus};
pub use config::RaftConfig;
pub use error::RaftNodeError;
pub use node::RaftNode;
pub use node_id::load_or_create_node_id;
pub use service::LeaseClock;
pub use state_machine::Raft;
pub use transport::PeerFilter;
pub use types::{NodeInfo, Request, Response, TypeConfig};
pub use wire::{LeaseReply, LeaseRequest, RemoveError, RemoveOutcome};
