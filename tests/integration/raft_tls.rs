//! The peer service over mutual TLS: a two-node cluster replicates over TLS with peer
//! certificates, and a caller without a client certificate is refused during the handshake.
#![allow(clippy::tests_outside_test_module, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use k8sd::datastore::{Command, KeyRange, Op, PutRequest, RangeRequest, Reader, TxnRequest};
use k8sd::raft::network::NetworkFactory;
use k8sd::raft::pb::Msg;
use k8sd::raft::{RaftConfig, RaftNode};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use tokio::net::TcpListener;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca = p.self_signed(&key).unwrap();
        Pki {
            ca_pem: ca.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    /// A peer certificate: server and client auth, valid for 127.0.0.1.
    fn peer(&self) -> Identity {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST))];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Identity::from_pem(cert.pem(), key.serialize_pem())
    }

    fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.peer())
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
    }

    fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(self.peer())
    }
}

async fn start(pki: &Pki, dir: &std::path::Path) -> RaftNode {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let mut c = RaftConfig::new(dir, "n", &addr, "https://127.0.0.1:2379");
    c.heartbeat = Duration::from_millis(50);
    c.election_timeout = (Duration::from_millis(400), Duration::from_millis(800));
    c.server_tls = Some(pki.server());
    c.client_tls = Some(pki.client());
    RaftNode::start(c, l).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_cluster_replicates_over_mutual_tls_and_refuses_callers_without_a_certificate() {
    let pki = Pki::new();
    let tmp = tempfile::tempdir().unwrap();
    let a = start(&pki, &tmp.path().join("a")).await;
    let b = start(&pki, &tmp.path().join("b")).await;
    a.bootstrap().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.status().leader != Some(a.id()) {
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.add_learner(b.id(), b.info().clone()).await.unwrap();
    a.change_membership(BTreeSet::from([a.id(), b.id()]))
        .await
        .unwrap();

    // Written on the follower: forwarded to the leader over mTLS, replicated back over mTLS.
    let put = Command::Txn(TxnRequest {
        compare: vec![],
        success: vec![Op::Put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })],
        failure: vec![],
    });
    b.propose(put).await.unwrap().unwrap();
    a.linearizable_barrier().await.unwrap();
    for n in [&a, &b] {
        let req = RangeRequest {
            range: KeyRange::single(b"k".to_vec()),
            ..Default::default()
        };
        let (res, _) = Reader::open(n.db_path()).unwrap().range(&req).unwrap();
        assert_eq!(res.kvs[0].value, b"v");
    }

    // With a certificate the service is reached (and rejects the junk body); without one the
    // TLS handshake fails before any RPC runs.
    let junk = Msg {
        body: b"junk".to_vec(),
    };
    let with_cert = NetworkFactory::new(0, Some(pki.client()));
    let status = with_cert
        .client(&a.info().peer_addr)
        .unwrap()
        .vote(junk.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    let no_cert = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca_pem));
    let without = NetworkFactory::new(0, Some(no_cert));
    let status = without
        .client(&a.info().peer_addr)
        .unwrap()
        .vote(junk)
        .await
        .unwrap_err();
    assert_ne!(
        status.code(),
        tonic::Code::InvalidArgument,
        "reached the service without a client cert"
    );
    // The server aborts the handshake ("CertificateRequired"); with TLS 1.3 the client may see
    // that alert, a broken pipe or a closed connection, depending on timing. Either way it is
    // a transport error, which the peer network maps to Unreachable.
    let code = status.code();
    assert!(
        matches!(
            code,
            tonic::Code::Unknown | tonic::Code::Unavailable | tonic::Code::Cancelled
        ),
        "{status:?}"
    );
    assert!(format!("{status:?}").contains("Transport"), "{status:?}");

    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
