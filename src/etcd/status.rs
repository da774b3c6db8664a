//! Errors become `tonic::Status` here and nowhere else. etcd clients map a status to a typed
//! error by its exact message (`rpctypes.errStringToError`), so every message below is etcd's
//! string verbatim (rule E1 of `docs/design/etcd-contract.md`).

use tonic::{Code, Status};

use crate::datastore::StoreError;
use crate::node::NodeError;

pub const REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";
pub const NO_LEADER: &str = "etcdserver: no leader";
/// etcd's `ErrGRPCNoSpace`: a write refused by the NOSPACE alarm.
pub const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";

pub fn store_status(e: &StoreError) -> Status {
    match e {
        StoreError::Compacted { .. } => Status::new(
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        ),
        StoreError::FutureRevision { .. } => Status::new(
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        ),
        StoreError::LeaseNotFound(_) => Status::new(Code::NotFound, "etcdserver: requested lease not found"),
        StoreError::LeaseExists(_) => {
            Status::new(Code::FailedPrecondition, "etcdserver: lease already exists")
        }
        StoreError::LeaseTtlTooLarge(_) => Status::new(Code::OutOfRange, "etcdserver: too large lease TTL"),
        StoreError::KeyNotFound => Status::new(Code::InvalidArgument, "etcdserver: key not found"),
        StoreError::ValueProvided => Status::new(Code::InvalidArgument, "etcdserver: value is provided"),
        StoreError::LeaseProvided => Status::new(Code::InvalidArgument, "etcdserver: lease is provided"),
        StoreError::EmptyKey => Status::new(Code::InvalidArgument, "etcdserver: key is not provided"),
        StoreError::TooManyOps { .. } => Status::new(
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request",
        ),
        StoreError::DuplicateKey => Status::new(
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request",
        ),
        StoreError::Sqlite { .. } | StoreError::Corrupt { .. } | StoreError::Io { .. } => {
            tracing::error!(error = %e, "datastore failure");
            Status::new(Code::Unavailable, "etcdserver: server stopped")
        }
    }
}

pub fn node_status(e: NodeError) -> Status {
    match e {
        NodeError::Store(s) => store_status(&s),
        NodeError::NoSpace(_) => Status::new(Code::ResourceExhausted, NO_SPACE),
        NodeError::Stopped | NodeError::DataDir { .. } => {
            Status::new(Code::Unavailable, "etcdserver: server stopped")
        }
        NodeError::Raft(r) => raft_status(&r),
    }
}

fn raft_status(e: &crate::raft::RaftNodeError) -> Status {
    use crate::raft::RaftNodeError as R;
    match e {
        R::Store(s) => store_status(s),
        R::NoLeader(_) => no_leader(),
        R::Timeout { .. } => timed_out(),
        R::Ambiguous(_) => Status::new(
            Code::Unavailable,
            "etcdserver: request timed out, possibly due to connection lost",
        ),
        R::Membership(_) => Status::new(Code::Unavailable, "etcdserver: leader changed"),
        R::Remove(r) => remove_status(r),
        other => {
            tracing::error!(error = %other, "raft failure");
            Status::new(Code::Unavailable, "etcdserver: server stopped")
        }
    }
}

/// Refused removals, with etcd's codes and strings (`api/v3rpc/rpctypes/error.go`).
fn remove_status(e: &crate::raft::RemoveError) -> Status {
    use crate::raft::RemoveError as E;
    match e {
        E::UnknownMember(_) => Status::new(Code::NotFound, "etcdserver: member not found"),
        E::Unhealthy { .. } | E::NoSuccessor(_) => {
            Status::new(Code::Unavailable, "etcdserver: unhealthy cluster")
        }
        E::LastVoter(_) => Status::new(
            Code::FailedPrecondition,
            "etcdserver: re-configuration failed due to not enough started members",
        ),
    }
}

/// An `AlarmRequest` whose action is none of GET, ACTIVATE, DEACTIVATE.
pub fn unknown_alarm_action(action: i32) -> Status {
    Status::invalid_argument(format!(
        "unknown alarm action {action}: use GET (0), ACTIVATE (1) or DEACTIVATE (2)"
    ))
}

pub fn too_large() -> Status {
    Status::new(Code::InvalidArgument, REQUEST_TOO_LARGE)
}

/// etcd's `ErrTimeout`: the request did not finish in time (a Raft timeout, or the client's
/// deadline, `deadline.rs`). Unavailable, which etcd's client never sends again for a write.
pub fn timed_out() -> Status {
    Status::new(Code::Unavailable, "etcdserver: request timed out")
}

pub fn no_leader() -> Status {
    Status::new(Code::Unavailable, NO_LEADER)
}

/// A local file the server could not read while answering (a snapshot copy).
pub fn io_status(path: &std::path::Path, e: &std::io::Error) -> Status {
    Status::internal(format!("cannot read {}: {e}", path.display()))
}

/// A whole gRPC service k8sd does not serve (v3lock, v3election), with what to use instead.
pub fn service_unimplemented(service: &str, instead: &str) -> Status {
    Status::unimplemented(format!(
        "k8sd does not implement the {service} service; {instead}"
    ))
}

pub fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("k8sd does not implement {what}"))
}
