//! Raft replication of the datastore (openraft 0.10).
pub mod log_store;
pub mod state_machine;
pub mod types;
