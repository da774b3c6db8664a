//! Cluster PKI: the CAs, every certificate, the service-account key pair and every kubeconfig.

mod error;
mod spec;

pub use error::PkiError;
pub use spec::{
    CA_LIFETIME, CaKind, Consumer, DEFAULT_RENEW_BEFORE, IpCidr, LEAF_LIFETIME, Leaf, LeafSpec, NodeIdentity,
    NodeRole, SA_KEY_FILE, SA_PUB_FILE, San,
};
