//! k8sd's integration tests, in one test binary.
//!
//! Each module was once a binary of its own. In a release build every test binary compiles its
//! own copy of the generic code it uses (tonic, hyper, rustls, openraft, tokio), and that, not
//! linking, was most of the cold build's `cargo test --no-run` time: one crate compiles it once.
//! Run one module with a filter, for example
//! `cargo test --release --test integration raft_multiprocess::`.
//!
//! `tests/etcdctl_check_perf.rs` stays a binary of its own: it measures latency, and must not
//! share the machine with the tests here.

// Tests are the whole crate here, and a failed unwrap is a failed test.
#![allow(clippy::tests_outside_test_module, clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;

mod architecture;
mod datastore_files;
mod etcd_api;
mod etcd_differential;
mod lb;
mod metrics;
mod nospace;
mod raft_cluster;
mod raft_fixture;
mod raft_log_store;
mod raft_membership;
mod raft_multiprocess;
mod raft_state_machine;
mod raft_store_suite;
mod raft_tls;
mod raft_wire;
mod render;
mod supervisor;
mod test_ca;
