//! Cluster PKI: the CAs, every certificate, the service-account key pair, the Secrets encryption
//! key (`encryption.rs`) and every kubeconfig.
//!
//! ```text
//!   spec.rs       the table of every certificate (CN, O, SANs, EKU, signer, file)
//!      │
//!   ca.rs         CAs and signing          inspect.rs   parse, expiry, fingerprint, verify
//!      └──────────────┬─────────────────────────┘
//!   plan.rs       pure decisions: snapshot of files in, list of writes out
//!   kubeconfig.rs kubeconfig wire format and its plan
//!      │
//!   files.rs      the only IO: read snapshot, write atomically (keys 0600, certs 0644)
//! ```
//!
//! Boundary: this module knows file names inside one PKI directory and which processes read
//! each file ([`Consumer`]); it does not know where that directory lives, how components are
//! started, or how a worker's certificates travel (the join module carries [`IssuedCert`]s and
//! the CA certificate in its own wire type). Every key is ECDSA P-256.

mod ca;
mod encryption;
mod error;
mod files;
mod inspect;
mod kubeconfig;
mod plan;
mod spec;

/// The node identity most PKI unit tests share.
#[cfg(test)]
pub(crate) fn test_identity() -> NodeIdentity {
    NodeIdentity {
        node_name: "node-1".into(),
        node_ips: vec!["192.0.2.10".parse().expect("valid address")],
        extra_sans: vec![],
        service_cidr: "10.96.0.0/12".parse().expect("valid CIDR"),
    }
}

pub use ca::{
    CertificateAuthority, IssuedCert, generate_private_key_pem, issue_leaf, issue_service_serving,
    public_key_pem, sign_leaf_for_public_key,
};
pub use encryption::{
    ENCRYPTION_CONFIG_FILE, EncryptionSummary, IDENTITY, KeyEntry, encryption_keys, render_keys,
    validate_encryption_config,
};
pub use error::PkiError;
pub use files::{
    CERT_MODE, CertStatus, FileChange, KEY_MODE, PkiReport, cert_status, create_encryption_config,
    ensure_control_plane_pki, ensure_control_plane_pki_with, ensure_kubeconfigs, install_encryption_config,
    install_worker_pki, load_ca, read_encryption_config, worker_renewals_due,
};
pub use inspect::{CertInfo, ca_fingerprint_sha256, cert_expiry, is_signed_by, parse_cert};
pub use kubeconfig::{CLUSTER_NAME, render_kubeconfig};
pub use plan::{ChangeReason, RenewalPolicy, leaf_verdict, service_cert_verdict};
pub use spec::{
    CA_LIFETIME, CaKind, Consumer, DATASTORE_PEER_ORG, DEFAULT_RENEW_BEFORE, IpCidr, LEAF_LIFETIME, Leaf,
    LeafSpec, NodeIdentity, NodeRole, SA_KEY_FILE, SA_PUB_FILE, San, ServiceCertSpec,
};
