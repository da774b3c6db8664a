//! Wire structs of the cluster API (JSON bodies of `proto/cluster/cluster.proto`). Versioned by
//! `WIRE_VERSION`; a server refuses a version it does not speak with a clear error.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::registry::ClusterInfo;
use super::token::TokenRole;

pub const WIRE_VERSION: u32 = 1;

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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MembershipReply {
    pub version: u32,
    pub member: bool,
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
