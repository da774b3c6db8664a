//! Who may call the peer service: a certificate that names a datastore peer.
//!
//! mutual TLS with the datastore CA proves only that the caller holds *some* certificate of
//! that CA. kube-apiserver's datastore client certificate comes from the same CA, so without
//! this check whoever holds it (any control-plane host's apiserver, a backup of its PKI) could
//! vote, append entries or install a snapshot. Peer certificates carry an organization that
//! client certificates never carry (k8sd's `k8sd:datastore-peers`, set by `daemon` from the
//! PKI table; this module does not know the PKI), and every call is checked for it before it
//! reaches openraft. The check runs per call, not per connection: tonic exposes the peer's
//! certificates on each request, and parsing one small certificate costs microseconds
//! against a network round trip.

use tonic::Request;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why a caller's certificate does not name a datastore peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerCertRefusal {
    #[error("no client certificate was presented")]
    NoCertificate,
    #[error("the client certificate cannot be parsed: {reason}")]
    Unparsable { reason: String },
    #[error(
        "certificate {subject:?} does not name organization {required:?}: it is not a datastore \
         peer certificate (a datastore client certificate, such as kube-apiserver's, may not \
         join the Raft group)"
    )]
    NotAPeer { subject: String, required: String },
}

/// Checks that the leaf certificate (DER) names `organization` in its subject.
pub fn check_peer_certificate(der: &[u8], organization: &str) -> Result<(), PeerCertRefusal> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| PeerCertRefusal::Unparsable {
        reason: e.to_string(),
    })?;
    let named = cert
        .subject()
        .iter_organization()
        .any(|o| o.as_str().is_ok_and(|s| s == organization));
    if named {
        Ok(())
    } else {
        Err(PeerCertRefusal::NotAPeer {
            subject: cert.subject().to_string(),
            required: organization.to_string(),
        })
    }
}

/// The peer service's gate. `organization: None` admits every caller the transport admitted
/// (plain http on loopback in tests, or `k8sd datastore`, which like etcd trusts every
/// certificate of `--peer-trusted-ca-file`).
#[derive(Debug, Clone, Default)]
pub struct PeerAuth {
    pub organization: Option<String>,
}

impl PeerAuth {
    /// Whether the caller of `req` may use the peer service. The interceptor that answers a
    /// refusal (with a logged reason) is in `service.rs`, where the peer service's statuses are
    /// built.
    pub fn check<T>(&self, req: &Request<T>) -> Result<(), PeerCertRefusal> {
        let Some(org) = &self.organization else {
            return Ok(());
        };
        let certs = req.peer_certs().ok_or(PeerCertRefusal::NoCertificate)?;
        let leaf = certs.first().ok_or(PeerCertRefusal::NoCertificate)?;
        check_peer_certificate(leaf.as_ref(), org)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    fn cert(org: Option<&str>) -> Vec<u8> {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "n1");
        if let Some(o) = org {
            dn.push(DnType::OrganizationName, o);
        }
        p.distinguished_name = dn;
        let key = KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_certificate_naming_the_organization_passes() {
        assert_eq!(
            check_peer_certificate(&cert(Some("k8sd:datastore-peers")), "k8sd:datastore-peers"),
            Ok(())
        );
    }

    #[test]
    fn a_certificate_without_it_is_refused_with_its_subject() {
        for org in [None, Some("system:masters")] {
            let err = check_peer_certificate(&cert(org), "k8sd:datastore-peers").unwrap_err();
            assert!(matches!(&err, PeerCertRefusal::NotAPeer { subject, .. } if subject.contains("n1")));
            assert!(err.to_string().contains("k8sd:datastore-peers"), "{err}");
        }
    }

    #[test]
    fn garbage_is_refused_as_unparsable() {
        assert!(matches!(
            check_peer_certificate(b"junk", "o"),
            Err(PeerCertRefusal::Unparsable { .. })
        ));
    }
}
