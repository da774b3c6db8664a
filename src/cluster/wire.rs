//! Wire structs of the cluster API (JSON bodies of `proto/cluster/cluster.proto`). Versioned by
//! `WIRE_VERSION`; a server refuses a version it does not speak with a clear error.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::registry::ClusterInfo;
use super::token::TokenRole;
use super::versions::NodeVersions;

/// 2: a control-plane `Join` answer carries the Secrets encryption configuration.
pub const WIRE_VERSION: u32 = 2;
/// The oldest version a server still answers: a version-1 worker needs nothing new, so it can
/// join and renew; a version-1 control-plane joiner is refused at `Join` (it would not install
/// the Secrets key and its apiserver could not read a Secret).
pub const MIN_WIRE_VERSION: u32 = 1;
/// The first version whose control-plane joiners install the Secrets encryption key.
pub const ENCRYPTION_WIRE_VERSION: u32 = 2;

/// Public keys (PKIX PEM) a worker wants certificates for; it keeps the private halves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerKeys {
    pub kubelet_client: String,
    pub kubelet_serving: String,
    pub kube_proxy: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub version: u32,
    /// The whole token string (its secret authenticates the call).
    pub token: String,
    pub name: String,
    pub role: TokenRole,
    pub address: IpAddr,
    /// Workers only.
    pub worker_keys: Option<WorkerKeys>,
    /// What the joiner runs; the server records it and holds its Kubernetes version against
    /// the control plane's (`versions::check_kubernetes_skew`) before the token is touched.
    /// Absent from an older joiner's request, which is then not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<NodeVersions>,
    /// The user's consent to cross one Kubernetes minor (`--allow-kubernetes-minor-change`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_kubernetes_minor_change: bool,
}

/// A file of the cluster's secrets for a new control-plane node: name in the PKI dir and PEM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretFile {
    pub name: String,
    pub pem: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerCerts {
    pub kubelet_client: String,
    pub kubelet_serving: String,
    pub kube_proxy: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinReply {
    pub version: u32,
    pub cluster: ClusterInfo,
    /// The cluster CA certificate (PEM).
    pub ca_cert: String,
    /// Addresses of the control-plane nodes (their kube-apiservers listen on :6443).
    pub control_plane: Vec<IpAddr>,
    /// Control-plane joiners: the CAs with keys and the service-account key pair.
    pub secrets: Vec<SecretFile>,
    /// Control-plane joiners: the datastore peers' `host:port`, to join the Raft group through.
    pub datastore_peers: Vec<String>,
    /// Workers: their certificates, signed by the cluster CA.
    pub worker_certs: Option<WorkerCerts>,
    /// Control-plane joiners: kube-apiserver's EncryptionConfiguration holding the cluster's
    /// Secrets key (from wire version 2; absent from an older server's answer, which the
    /// joiner refuses).
    #[serde(default)]
    pub encryption_config: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinCompleteRequest {
    pub version: u32,
    pub token: String,
    pub name: String,
    pub address: IpAddr,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinCompleteReply {
    pub version: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MembershipRequest {
    pub version: u32,
    /// Leave the cluster (delete this node's record and Node object).
    pub leave: bool,
    /// What the caller runs now, recorded in its member record (how a worker, which cannot
    /// write the datastore, publishes a new version after an upgrade). Absent from an older
    /// node's request, and ignored by an older server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<NodeVersions>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MembershipReply {
    pub version: u32,
    pub member: bool,
    /// The Kubernetes version each control-plane node published, so that a worker holds its
    /// own against them before it starts its kubelet. Absent from an older server's reply, and
    /// from the answer to a `leave`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub control_plane: Vec<ControlPlaneVersion>,
}

/// One control-plane node's published Kubernetes version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlPlaneVersion {
    pub name: String,
    pub kubernetes: String,
}

/// A worker's public keys (PKIX PEM) for the certificates it wants re-signed, by file stem of
/// the leaf (`kubelet`, `kubelet-client`, `kube-proxy`); it keeps the private halves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewRequest {
    pub version: u32,
    pub keys: Vec<RenewKey>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewKey {
    pub leaf: String,
    pub public_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewReply {
    pub version: u32,
    /// The cluster CA certificate (PEM), to verify the new certificates against.
    pub ca_cert: String,
    pub certs: Vec<RenewedCert>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewedCert {
    pub leaf: String,
    pub cert: String,
}

/// `k8sd secrets rotate-key` reading (`set: None`) or replacing a control-plane node's Secrets
/// encryption configuration. Added within version 2: an older server answers Unimplemented.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncryptionRequest {
    pub version: u32,
    /// The whole new configuration; the server validates it, writes it 0600 and waits until
    /// its kube-apiserver uses it (reloaded in place, or restarted) before it answers.
    pub set: Option<String>,
}

/// How a node's kube-apiserver took a new Secrets encryption configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeysApplied {
    /// Its kube-apiserver was not running; it starts with the new file.
    NotRunning,
    /// Loaded in place: no restart, no API downtime.
    Reloaded,
    /// Restarted with the new file.
    Restarted,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncryptionReply {
    pub version: u32,
    /// The node's configuration after the call; `None` on a node without one.
    pub config: Option<String>,
    /// With `set`: how its kube-apiserver took the file. Absent from an older node's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<KeysApplied>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer from a version-1 server has no `encryption_config`: it parses (the joiner then
    /// refuses with a clear error) instead of failing to decode or panicking.
    #[test]
    fn an_older_servers_join_answer_parses_without_the_encryption_key() {
        let old = r#"{"version":1,"cluster":{"pod-cidr":"10.88.0.0/16","service-cidr":"10.96.0.0/12"},
            "ca_cert":"x","control_plane":[],"secrets":[],"datastore_peers":[],"worker_certs":null}"#;
        let rep: JoinReply = serde_json::from_str(old).unwrap();
        assert!(rep.encryption_config.is_none());
    }

    /// A membership answer from a server older than `control_plane` parses with none, so a
    /// worker then starts unchecked rather than failing; a newer one carries the versions.
    #[test]
    fn membership_answers_with_and_without_control_plane_versions() {
        let old: MembershipReply = serde_json::from_str(r#"{"version":1,"member":true}"#).unwrap();
        assert!(old.member && old.control_plane.is_empty());
        let new: MembershipReply = serde_json::from_str(
            r#"{"version":1,"member":true,"control_plane":[{"name":"n1","kubernetes":"v1.36.3"}]}"#,
        )
        .unwrap();
        assert_eq!(
            new.control_plane,
            vec![ControlPlaneVersion {
                name: "n1".into(),
                kubernetes: "v1.36.3".into()
            }]
        );
    }
}
