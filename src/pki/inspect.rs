//! Reading certificates back: subjects, SANs, usages, expiry, fingerprints and signatures.
//!
//! Used to decide whether an existing certificate still matches its spec, for `k8sd status`,
//! and for join-token pinning. Pure: PEM text in.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::PkiError;
use super::spec::San;

/// What k8sd cares about in a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub common_name: Option<String>,
    pub organizations: Vec<String>,
    pub sans: BTreeSet<San>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub server_auth: bool,
    pub client_auth: bool,
    pub is_ca: bool,
    /// DER of the SubjectPublicKeyInfo, to match the certificate with its private key.
    pub spki_der: Vec<u8>,
}

/// The DER bytes of the first `CERTIFICATE` block in `pem`.
fn cert_der(what: &str, pem: &str) -> Result<Vec<u8>, PkiError> {
    let parse = |reason: String| PkiError::Parse {
        what: what.to_owned(),
        reason,
    };
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| parse(format!("not PEM: {e}")))?;
    if pem.label != "CERTIFICATE" {
        return Err(parse(format!(
            "expected a CERTIFICATE block, found {:?}",
            pem.label
        )));
    }
    Ok(pem.contents)
}

fn with_cert<T>(
    what: &str,
    pem: &str,
    f: impl FnOnce(&X509Certificate<'_>) -> Result<T, String>,
) -> Result<T, PkiError> {
    let der = cert_der(what, pem)?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| PkiError::Parse {
        what: what.to_owned(),
        reason: e.to_string(),
    })?;
    f(&cert).map_err(|reason| PkiError::Parse {
        what: what.to_owned(),
        reason,
    })
}

/// Parses a PEM certificate; `what` names it in errors (usually the file name).
pub fn parse_cert(what: &str, pem: &str) -> Result<CertInfo, PkiError> {
    with_cert(what, pem, |cert| {
        let subject = cert.subject();
        let common_name = match subject.iter_common_name().next() {
            Some(cn) => Some(cn.as_str().map_err(|e| format!("common name: {e}"))?.to_owned()),
            None => None,
        };
        let organizations = subject
            .iter_organization()
            .map(|o| {
                o.as_str()
                    .map(str::to_owned)
                    .map_err(|e| format!("organization: {e}"))
            })
            .collect::<Result<_, _>>()?;
        let mut sans = BTreeSet::new();
        if let Some(ext) = cert
            .subject_alternative_name()
            .map_err(|e| format!("subjectAltName: {e}"))?
        {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(d) => {
                        sans.insert(San::Dns((*d).to_owned()));
                    }
                    GeneralName::IPAddress(bytes) => {
                        let ip = match bytes.len() {
                            4 => <[u8; 4]>::try_from(*bytes)
                                .map(|b| IpAddr::V4(Ipv4Addr::from(b)))
                                .ok(),
                            16 => <[u8; 16]>::try_from(*bytes)
                                .map(|b| IpAddr::V6(Ipv6Addr::from(b)))
                                .ok(),
                            _ => None,
                        };
                        sans.insert(San::Ip(ip.ok_or("malformed IP address SAN")?));
                    }
                    // Other name types never appear in k8sd certificates; a cert with one
                    // cannot match any spec, which the SAN comparison will notice.
                    other => {
                        sans.insert(San::Dns(format!("unsupported:{other}")));
                    }
                }
            }
        }
        let eku = cert
            .extended_key_usage()
            .map_err(|e| format!("extendedKeyUsage: {e}"))?;
        Ok(CertInfo {
            common_name,
            organizations,
            sans,
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            server_auth: eku.as_ref().is_some_and(|e| e.value.server_auth),
            client_auth: eku.as_ref().is_some_and(|e| e.value.client_auth),
            is_ca: cert.is_ca(),
            spki_der: cert.public_key().raw.to_vec(),
        })
    })
}

/// When the certificate stops being valid.
pub fn cert_expiry(cert_pem: &str) -> Result<OffsetDateTime, PkiError> {
    with_cert("certificate", cert_pem, |cert| {
        Ok(cert.validity().not_after.to_datetime())
    })
}

/// Lowercase hex SHA-256 over the certificate's DER: what a join token pins. It equals
/// `openssl x509 -noout -fingerprint -sha256` without the colons.
pub fn ca_fingerprint_sha256(ca_cert_pem: &str) -> Result<String, PkiError> {
    let der = cert_der("CA certificate", ca_cert_pem)?;
    Ok(hex::encode(Sha256::digest(&der)))
}

/// Whether `cert_pem`'s signature verifies with the public key of `ca_cert_pem`.
pub fn is_signed_by(cert_pem: &str, ca_cert_pem: &str) -> Result<bool, PkiError> {
    let ca_der = cert_der("CA certificate", ca_cert_pem)?;
    let (_, ca) = X509Certificate::from_der(&ca_der).map_err(|e| PkiError::Parse {
        what: "CA certificate".to_owned(),
        reason: e.to_string(),
    })?;
    with_cert("certificate", cert_pem, |cert| {
        Ok(cert.verify_signature(Some(ca.public_key())).is_ok())
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::process::{Command, Stdio};

    use super::*;
    use crate::pki::ca::CertificateAuthority;
    use crate::pki::spec::{CA_LIFETIME, CaKind};

    #[test]
    fn fingerprint_is_stable_and_matches_openssl() {
        let ca = CertificateAuthority::generate(CaKind::Cluster, OffsetDateTime::now_utc()).unwrap();
        let ours = ca_fingerprint_sha256(ca.cert_pem()).unwrap();
        assert_eq!(ours, ca_fingerprint_sha256(ca.cert_pem()).unwrap());
        assert_eq!(ours.len(), 64);

        let mut child = Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("openssl is installed");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(ca.cert_pem().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        // "sha256 Fingerprint=AB:CD:..." (the prefix's case varies between versions).
        let text = String::from_utf8(out.stdout).unwrap();
        let theirs = text
            .trim()
            .rsplit('=')
            .next()
            .unwrap()
            .replace(':', "")
            .to_lowercase();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn expiry_and_ca_flag() {
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let ca = CertificateAuthority::generate(CaKind::Datastore, now).unwrap();
        assert_eq!(cert_expiry(ca.cert_pem()).unwrap(), now + CA_LIFETIME);
        let info = parse_cert("datastore-ca.crt", ca.cert_pem()).unwrap();
        assert!(info.is_ca);
        assert_eq!(info.common_name.as_deref(), Some("k8sd-datastore-ca"));
    }

    #[test]
    fn garbage_is_a_parse_error_naming_the_input() {
        let err = parse_cert("apiserver.crt", "not a pem").unwrap_err();
        assert!(
            err.to_string().starts_with("cannot parse apiserver.crt: "),
            "{err}"
        );
        let key_pem = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let err = ca_fingerprint_sha256(&key_pem).unwrap_err();
        assert!(err.to_string().contains("expected a CERTIFICATE block"), "{err}");
    }
}
