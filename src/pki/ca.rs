//! Certificate authorities and issuance: the only code that signs anything.
//!
//! Pure: PEM text in, PEM text out. Every key is ECDSA P-256; a PEM key of any other type is
//! refused rather than silently accepted.

use std::collections::BTreeSet;
use std::fmt;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
    SubjectPublicKeyInfo,
};
use time::OffsetDateTime;

use super::PkiError;
use super::inspect::parse_cert;
use super::spec::{CA_LIFETIME, CLOCK_SKEW, CaKind, LEAF_LIFETIME, LeafSpec, San, ServiceCertSpec, Usage};

/// A CA that holds its private key and can sign leaves. Only control-plane nodes have one.
pub struct CertificateAuthority {
    kind: CaKind,
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("CertificateAuthority")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// A freshly signed leaf with its private key.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A new self-signed CA with a new key, valid for [`CA_LIFETIME`] from `now`.
    pub fn generate(kind: CaKind, now: OffsetDateTime) -> Result<Self, PkiError> {
        let key = generate_key(&kind.key_file())?;
        Self::self_sign(kind, key, now)
    }

    /// Re-creates the self-signed certificate for an existing CA key (used when a crash left
    /// the key without its certificate). Certificates signed by the old one stay valid: the
    /// subject and key, hence the key identifiers, are the same.
    pub fn from_key_pem(kind: CaKind, key_pem: &str, now: OffsetDateTime) -> Result<Self, PkiError> {
        let key = parse_key(&kind.key_file(), key_pem)?;
        Self::self_sign(kind, key, now)
    }

    fn self_sign(kind: CaKind, key: KeyPair, now: OffsetDateTime) -> Result<Self, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(kind.common_name(), None);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + CA_LIFETIME;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(|source| PkiError::Generate {
            what: kind.cert_file(),
            source,
        })?;
        Ok(Self {
            kind,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its certificate and key, checking that they belong together.
    pub fn from_pem(kind: CaKind, cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = parse_key(&kind.key_file(), key_pem)?;
        let info = parse_cert(&kind.cert_file(), cert_pem)?;
        if info.spki_der != key.subject_public_key_info() {
            return Err(PkiError::KeyMismatch {
                cert: kind.cert_file(),
                key: kind.key_file(),
            });
        }
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| PkiError::Parse {
            what: kind.cert_file(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            kind,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            issuer,
        })
    }

    pub fn kind(&self) -> CaKind {
        self.kind
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    fn check_signer(&self, spec: &LeafSpec) -> Result<(), PkiError> {
        if spec.signer == self.kind {
            Ok(())
        } else {
            Err(PkiError::WrongSigner {
                file: spec.leaf.cert_file(),
                expected: spec.signer.common_name(),
                actual: self.kind.common_name(),
            })
        }
    }
}

/// Signs a leaf for `spec` with a new key.
pub fn issue_leaf(
    ca: &CertificateAuthority,
    spec: &LeafSpec,
    now: OffsetDateTime,
) -> Result<IssuedCert, PkiError> {
    let key = generate_key(&spec.leaf.key_file())?;
    let cert_pem = sign(ca, spec, &key, now)?;
    Ok(IssuedCert {
        cert_pem,
        key_pem: key.serialize_pem(),
    })
}

/// Signs a leaf for `spec` over a public key the requester keeps the private half of.
///
/// This is how a worker gets its kubelet and kube-proxy certificates: the control plane
/// decides the subject from its own records (the spec), so the requester can choose neither
/// its name nor a group such as `system:masters`; that is why this takes a bare public key
/// and not a CSR.
pub fn sign_leaf_for_public_key(
    ca: &CertificateAuthority,
    spec: &LeafSpec,
    public_key_pem: &str,
    now: OffsetDateTime,
) -> Result<String, PkiError> {
    let what = format!("public key for {}", spec.leaf.cert_file());
    let key = SubjectPublicKeyInfo::from_pem(public_key_pem).map_err(|e| PkiError::Parse {
        what: what.clone(),
        reason: e.to_string(),
    })?;
    if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
        return Err(PkiError::NotP256 { what });
    }
    sign(ca, spec, &key, now)
}

fn sign(
    ca: &CertificateAuthority,
    spec: &LeafSpec,
    key: &impl PublicKeyData,
    now: OffsetDateTime,
) -> Result<String, PkiError> {
    ca.check_signer(spec)?;
    let file = spec.leaf.cert_file();
    let params = leaf_params(
        &file,
        &spec.common_name,
        spec.organization.as_deref(),
        &spec.sans,
        spec.usage,
        spec.lifetime,
        now,
    )?;
    let cert = params
        .signed_by(key, &ca.issuer)
        .map_err(|source| PkiError::Generate { what: file, source })?;
    Ok(cert.pem())
}

/// A serving certificate for an in-cluster Service, signed by the cluster CA, with a new key.
///
/// metrics-server presents it, and kube-apiserver verifies it against the APIService's
/// `caBundle` (the cluster CA). It is kept in a Secret, not in a node's PKI directory, so it is
/// not a row of the node table (`spec.rs`).
pub fn issue_service_serving(
    ca: &CertificateAuthority,
    spec: &ServiceCertSpec,
    now: OffsetDateTime,
) -> Result<IssuedCert, PkiError> {
    let what = spec.describe();
    if ca.kind != CaKind::Cluster {
        return Err(PkiError::WrongSigner {
            file: what,
            expected: CaKind::Cluster.common_name(),
            actual: ca.kind.common_name(),
        });
    }
    let key = generate_key(&what)?;
    let params = leaf_params(
        &what,
        &spec.common_name(),
        None,
        &spec.sans(),
        Usage::Server,
        LEAF_LIFETIME,
        now,
    )?;
    let cert = params
        .signed_by(&key, &ca.issuer)
        .map_err(|source| PkiError::Generate { what, source })?;
    Ok(IssuedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// What every leaf says apart from its key and signer: subject, SANs, usage and validity.
fn leaf_params(
    file: &str,
    common_name: &str,
    organization: Option<&str>,
    sans: &BTreeSet<San>,
    usage: Usage,
    lifetime: time::Duration,
    now: OffsetDateTime,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(common_name, organization);
    params.subject_alt_names = sans
        .iter()
        .map(|san| match san {
            San::Ip(ip) => Ok(SanType::IpAddress(*ip)),
            San::Dns(name) => {
                name.as_str()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|source| PkiError::InvalidSan {
                        file: file.to_string(),
                        input: name.clone(),
                        source,
                    })
            }
        })
        .collect::<Result<_, _>>()?;
    params.is_ca = IsCa::ExplicitNoCa;
    // ECDSA keys sign; they never encipher keys, so KeyEncipherment would be meaningless.
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if usage.server_auth() {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    if usage.client_auth() {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ClientAuth);
    }
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + lifetime;
    params.serial_number = Some(random_serial());
    Ok(params)
}

/// The service-account token key pair: `(sa.key, sa.pub)` as PKCS#8 and PKIX PEM, which
/// kube-apiserver and kube-controller-manager both read (`keyutil.ParsePrivateKeyPEM`).
pub fn generate_service_account_key() -> Result<(String, String), PkiError> {
    let key = generate_key(super::spec::SA_KEY_FILE)?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

/// The PKIX public key PEM of a private key PEM (to rebuild `sa.pub`, or for a worker to send
/// its public key to the control plane).
pub fn public_key_pem(what: &str, key_pem: &str) -> Result<String, PkiError> {
    Ok(parse_key(what, key_pem)?.public_key_pem())
}

/// A new P-256 private key as PKCS#8 PEM.
pub fn generate_private_key_pem(what: &str) -> Result<String, PkiError> {
    Ok(generate_key(what)?.serialize_pem())
}

/// DER of the SubjectPublicKeyInfo of a private key, to compare with a certificate's.
pub(crate) fn key_spki_der(what: &str, key_pem: &str) -> Result<Vec<u8>, PkiError> {
    Ok(parse_key(what, key_pem)?.subject_public_key_info())
}

fn generate_key(what: &str) -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| PkiError::Generate {
        what: what.to_owned(),
        source,
    })
}

fn parse_key(what: &str, key_pem: &str) -> Result<KeyPair, PkiError> {
    let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::Parse {
        what: what.to_owned(),
        reason: e.to_string(),
    })?;
    if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
        return Err(PkiError::NotP256 {
            what: what.to_owned(),
        });
    }
    Ok(key)
}

fn subject(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, o);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

/// 16 random bytes, positive and without a leading zero byte, so the DER integer is minimal.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::inspect::is_signed_by;
    use crate::pki::spec::Leaf;

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    use crate::pki::test_identity as id;

    #[test]
    fn every_leaf_verifies_against_its_own_ca_only() {
        let cas = CaKind::ALL.map(|k| CertificateAuthority::generate(k, now()).unwrap());
        for leaf in Leaf::ALL {
            let spec = leaf.spec(&id());
            let ca = cas.iter().find(|c| c.kind() == spec.signer).unwrap();
            let issued = issue_leaf(ca, &spec, now()).unwrap();
            for other in &cas {
                let signed = is_signed_by(&issued.cert_pem, other.cert_pem()).unwrap();
                assert_eq!(
                    signed,
                    other.kind() == spec.signer,
                    "{leaf:?} against {:?}",
                    other.kind()
                );
            }
            // Every CA self-verifies.
            assert!(is_signed_by(ca.cert_pem(), ca.cert_pem()).unwrap());
        }
    }

    #[test]
    fn a_reloaded_ca_signs_leaves_that_verify() {
        let ca = CertificateAuthority::generate(CaKind::Cluster, now()).unwrap();
        let reloaded = CertificateAuthority::from_pem(CaKind::Cluster, ca.cert_pem(), ca.key_pem()).unwrap();
        let issued = issue_leaf(&reloaded, &Leaf::Admin.spec(&id()), now()).unwrap();
        assert!(is_signed_by(&issued.cert_pem, ca.cert_pem()).unwrap());
        assert!(format!("{reloaded:?}").contains("Cluster"));
        assert!(
            !format!("{reloaded:?}").contains("PRIVATE"),
            "Debug must not print the key"
        );
    }

    #[test]
    fn a_ca_key_that_does_not_match_is_refused() {
        let a = CertificateAuthority::generate(CaKind::Cluster, now()).unwrap();
        let b = CertificateAuthority::generate(CaKind::Cluster, now()).unwrap();
        let err = CertificateAuthority::from_pem(CaKind::Cluster, a.cert_pem(), b.key_pem()).unwrap_err();
        assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err}");
    }

    #[test]
    fn the_wrong_ca_is_refused_for_a_leaf() {
        let ca = CertificateAuthority::generate(CaKind::Cluster, now()).unwrap();
        let err = issue_leaf(&ca, &Leaf::FrontProxyClient.spec(&id()), now()).unwrap_err();
        assert!(matches!(err, PkiError::WrongSigner { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "front-proxy-client.crt must be signed by front-proxy-ca but was given kubernetes-ca"
        );
    }

    #[test]
    fn leaves_for_a_workers_public_key() {
        let ca = CertificateAuthority::generate(CaKind::Cluster, now()).unwrap();
        let worker_key = generate_private_key_pem("kubelet.key").unwrap();
        let public = public_key_pem("kubelet.key", &worker_key).unwrap();
        let spec = Leaf::KubeletClient.spec(&id());
        let cert = sign_leaf_for_public_key(&ca, &spec, &public, now()).unwrap();
        assert!(is_signed_by(&cert, ca.cert_pem()).unwrap());
        let info = parse_cert("kubelet-client.crt", &cert).unwrap();
        assert_eq!(info.spki_der, key_spki_der("kubelet.key", &worker_key).unwrap());
        assert_eq!(info.common_name.as_deref(), Some("system:node:node-1"));

        let ed25519 = KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .unwrap()
            .public_key_pem();
        let err = sign_leaf_for_public_key(&ca, &spec, &ed25519, now()).unwrap_err();
        assert!(matches!(err, PkiError::NotP256 { .. }), "{err}");
    }

    #[test]
    fn non_p256_private_keys_are_refused() {
        let ed25519 = KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .unwrap()
            .serialize_pem();
        let err = CertificateAuthority::from_key_pem(CaKind::Cluster, &ed25519, now()).unwrap_err();
        assert!(matches!(err, PkiError::NotP256 { .. }), "{err}");
    }

    #[test]
    fn service_account_key_pair_is_p256_pkcs8_and_pkix() {
        let (key, public) = generate_service_account_key().unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"));
        assert_eq!(public_key_pem("sa.key", &key).unwrap(), public);
    }
}
