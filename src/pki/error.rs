//! The one error type of the PKI module.

use std::path::PathBuf;

/// Everything that can go wrong while creating, loading or writing PKI material.
///
/// Variants carry the file name or input that failed; crypto errors from rcgen and parse errors
/// from x509-parser are kept as text because their types borrow the input.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("invalid service CIDR {input:?}: {reason} (expected e.g. 10.96.0.0/12 or fd00::/108)")]
    InvalidCidr { input: String, reason: &'static str },

    #[error("invalid subject alternative name {input:?} for {file}: {source}")]
    InvalidSan {
        file: String,
        input: String,
        #[source]
        source: rcgen::Error,
    },

    #[error("cannot generate {what}: {source}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },

    #[error("cannot parse {what}: {reason}")]
    Parse { what: String, reason: String },

    #[error("{what} is not an ECDSA P-256 key; k8sd uses P-256 for every key")]
    NotP256 { what: String },

    #[error("{cert} does not belong to private key {key}; restore the matching pair or remove both")]
    KeyMismatch { cert: String, key: String },

    #[error(
        "{present} exists but {missing} does not; copy {missing} from another control-plane node, \
         or remove {present} to start a new cluster"
    )]
    CaIncomplete { present: PathBuf, missing: PathBuf },

    #[error("{file} must be signed by {expected} but was given {actual}")]
    WrongSigner {
        file: String,
        expected: &'static str,
        actual: &'static str,
    },

    #[error("{file} is not signed by the cluster CA it is installed with")]
    NotSignedByCa { file: String },

    #[error("cannot render kubeconfig {file}: {source}")]
    Kubeconfig {
        file: String,
        #[source]
        source: serde_yaml::Error,
    },

    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot write {path}: {source} (is the data directory writable by k8sd?)")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
