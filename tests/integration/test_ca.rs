//! A throwaway certificate authority for tests that need mutual TLS between parts running in
//! this process (the load balancer and its backends, Raft peers). The real PKI is `k8sd::pki`;
//! this one only signs leaves for loopback addresses.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

pub struct TestCa {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca = p.self_signed(&key).unwrap();
        TestCa {
            ca_pem: ca.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    /// A leaf for these addresses, for server and client auth: (certificate PEM, key PEM).
    pub fn leaf(&self, ips: impl IntoIterator<Item = IpAddr>) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.subject_alt_names = ips.into_iter().map(SanType::IpAddress).collect();
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}
