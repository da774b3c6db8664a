//! k8sd: one binary that turns Linux machines into a Kubernetes cluster.
//!
//! The crate is a library so that integration tests can drive the daemon in-process; the `k8sd`
//! binary (`src/main.rs`) only parses the command line and maps errors to exit codes.
//! See `docs/ARCHITECTURE.md` for the map of modules and the invariants between them.

pub mod addons;
pub mod atomic_file;
pub mod backup;
pub mod cli;
pub mod cluster;
pub mod daemon;
pub mod datastore;
pub mod etcd;
pub mod httpc;
pub mod images;
pub mod lb;
pub mod metrics;
pub mod mirror;
pub mod node;
pub mod paths;
pub mod pki;
pub mod raft;
pub mod reset;
pub mod supervisor;
pub mod template;
pub mod tls;

/// Generated protobuf and gRPC code for etcd's v3 API (our own .proto files under `proto/`).
pub mod pb {
    #![allow(clippy::all, missing_debug_implementations, missing_docs)]
    /// etcd's `mvccpb` package: key-values and watch events.
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    /// etcd's `etcdserverpb` package: the KV, Watch, Lease, Cluster and Maintenance services.
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
}

/// The etcd version k8sd reports in `Maintenance.Status`.
///
/// kube-apiserver enables progress-notify based consistent reads only for etcd >= 3.5.13
/// (`feature_support_checker.go`); we keep the promise that implies (rules W8 and W9 of
/// `docs/design/etcd-contract.md`).
pub const EMULATED_ETCD_VERSION: &str = "3.6.8";
