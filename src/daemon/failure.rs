//! What kind of failure an error is. The daemon classifies its own errors here and sends the
//! kind with the message over the control socket; the CLI turns it into an exit code
//! (`cli::exit`), so a script can tell "refused" from "broken" without parsing English.

use serde::{Deserialize, Serialize};

use super::DaemonError;
use super::addons::AddonsError;
use super::config::ConfigError;
use super::extra_args::ExtraArgsError;
use crate::addons::AddonError;
use crate::cluster::client::JoinError;
use crate::node::NodeError;
use crate::raft::RaftNodeError;

/// The classes of failure, one exit code each (the table is in `cli::exit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// A bug, a broken host or an unreachable peer: nothing the command line can fix. Also what
    /// an older daemon's answer, which carries no kind, is taken to be.
    #[default]
    Internal,
    /// The command line or config is wrong: a flag, a value, a name, a token's text.
    Usage,
    /// The verb needs an initialised node and this one is not (or is not up yet).
    NotInitialised,
    /// The verb needs a fresh node and this one is initialised.
    AlreadyInitialised,
    /// The k8sd daemon is not running here.
    DaemonNotRunning,
    /// Refused on purpose, and nothing was changed: by the cluster (a token, a quorum check), by
    /// a safety check, or for want of confirmation.
    Refused,
}

/// Refusals and dead ends of the cluster verbs (`add-node`, `tokens`, `join`, `remove-node`,
/// `leave`, `stop`/`start`), each carrying what it was about.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("this node is not initialised; {verb} needs a running node (`k8sd init` or `k8sd join` first)")]
    NotInitialised { verb: &'static str },
    #[error("this node is not running ({phase}); {verb} needs a running node, see `k8sd status`")]
    NodeDown { verb: &'static str, phase: String },
    #[error("this node's datastore is not running; see `k8sd status`")]
    DatastoreDown,
    #[error("this is a worker node; run {verb} on a control-plane node")]
    WorkerNode { verb: &'static str },
    #[error("node name {0} is already taken; pick another or `k8sd remove-node {0}` first")]
    NameTaken(String),
    #[error("--ttl must be positive")]
    ZeroTtl,
    #[error(
        "a worker token must name its node (its certificates are signed for that name); run `k8sd add-node --worker --name NODE`"
    )]
    WorkerTokenNeedsName,
    #[error("no token with id {0}; see `k8sd tokens list`")]
    NoSuchToken(String),
    #[error("no node named {0} in this cluster; see `k8sd status`")]
    NoSuchNode(String),
    #[error(
        "{0} is the node you are on; use `k8sd leave` here, or run remove-node on another control-plane node"
    )]
    RemoveSelf(String),
    #[error(
        "this is the last control-plane node: leaving would destroy the cluster. Use --force to do it anyway"
    )]
    LastControlPlane,
    #[error("{source}; components: {}", known.join(", "))]
    Component {
        #[source]
        source: crate::supervisor::Error,
        known: Vec<String>,
    },
}

impl Refusal {
    pub fn kind(&self) -> FailureKind {
        match self {
            Refusal::NotInitialised { .. } => FailureKind::NotInitialised,
            Refusal::NodeDown { .. } | Refusal::DatastoreDown => FailureKind::Internal,
            Refusal::ZeroTtl | Refusal::WorkerTokenNeedsName | Refusal::Component { .. } => {
                FailureKind::Usage
            }
            Refusal::WorkerNode { .. }
            | Refusal::NameTaken(_)
            | Refusal::NoSuchToken(_)
            | Refusal::NoSuchNode(_)
            | Refusal::RemoveSelf(_)
            | Refusal::LastControlPlane => FailureKind::Refused,
        }
    }
}

/// A cluster API call's failure: refused when the cluster said no or the CA did not match the
/// token, internal when nobody answered.
pub fn join_error_kind(e: &JoinError) -> FailureKind {
    match e {
        JoinError::Refused(_) | JoinError::Fingerprint { .. } => FailureKind::Refused,
        JoinError::Unreachable { .. } | JoinError::NoneReachable(_) => FailureKind::Internal,
    }
}

/// The datastore refuses a membership change that would break quorum: a refusal, not a fault.
fn node_error_kind(e: &NodeError) -> FailureKind {
    match e {
        NodeError::Raft(RaftNodeError::Remove(_) | RaftNodeError::Membership(_)) => FailureKind::Refused,
        _ => FailureKind::Internal,
    }
}

/// Bad flags or config are the operator's to fix, except when the component that would check
/// them cannot run.
pub fn config_error_kind(e: &ConfigError) -> FailureKind {
    match e {
        ConfigError::ExtraArgs(ExtraArgsError::Check { .. }) => FailureKind::Internal,
        _ => FailureKind::Usage,
    }
}

impl DaemonError {
    pub fn kind(&self) -> FailureKind {
        match self {
            DaemonError::Config(e) => config_error_kind(e),
            DaemonError::Token(_) => FailureKind::Usage,
            DaemonError::AlreadyInitialised(_) => FailureKind::AlreadyInitialised,
            DaemonError::Refused(r) => r.kind(),
            DaemonError::ClusterApi(e) => join_error_kind(e),
            DaemonError::Datastore(e) => node_error_kind(e),
            DaemonError::KubernetesSkew(_) => FailureKind::Refused,
            DaemonError::Secrets(
                super::secrets::SecretsError::NodeWithoutKey { .. } | super::secrets::SecretsError::Raced,
            ) => FailureKind::Refused,
            DaemonError::Addons(e) => match e {
                AddonsError::Addon(AddonError::Unknown { .. }) => FailureKind::Usage,
                AddonsError::NotInitialised => FailureKind::NotInitialised,
                AddonsError::Worker => FailureKind::Refused,
                _ => FailureKind::Internal,
            },
            _ => FailureKind::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_travel_as_kebab_case_and_default_to_internal() {
        let text = serde_json::to_string(&FailureKind::AlreadyInitialised).unwrap();
        assert_eq!(text, "\"already-initialised\"");
        assert_eq!(FailureKind::default(), FailureKind::Internal);
    }

    #[test]
    fn refusals_are_classified_by_who_can_fix_them() {
        assert_eq!(Refusal::ZeroTtl.kind(), FailureKind::Usage);
        assert_eq!(Refusal::LastControlPlane.kind(), FailureKind::Refused);
        assert_eq!(
            Refusal::NotInitialised { verb: "add-node" }.kind(),
            FailureKind::NotInitialised
        );
        let e = DaemonError::AlreadyInitialised("/var/lib/k8sd/node.yaml".into());
        assert_eq!(e.kind(), FailureKind::AlreadyInitialised);
        let e = DaemonError::ClusterApi(JoinError::Refused("token used".into()));
        assert_eq!(e.kind(), FailureKind::Refused);
        let e = DaemonError::ClusterApi(JoinError::NoneReachable("10.0.0.1: refused".into()));
        assert_eq!(e.kind(), FailureKind::Internal);
    }
}
