//! The peer service over mutual TLS: a two-node cluster replicates over TLS with peer
//! certificates, and a caller without a client certificate is refused during the handshake.
//! With k8sd's own datastore CA and certificates (`k8sd::pki`), a datastore client
//! certificate of the same CA (kube-apiserver's) is refused by the peer service, with the
//! reason logged, while peers replicate.
#![allow(clippy::tests_outside_test_module, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use crate::common;
use crate::test_ca::TestCa;
use k8sd::datastore::{Command, KeyRange, Op, PutRequest, RangeRequest, Reader, TxnRequest};
use k8sd::raft::pb::Msg;
use k8sd::raft::transport::NetworkFactory;
use k8sd::raft::{RaftConfig, RaftNode};
use tokio::net::TcpListener;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

struct Pki {
    ca: TestCa,
}

impl Pki {
    fn new() -> Pki {
        Pki { ca: TestCa::new() }
    }

    /// A peer certificate: server and client auth, valid for 127.0.0.1.
    fn peer(&self) -> Identity {
        let (cert, key) = self.ca.leaf([IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        Identity::from_pem(cert, key)
    }

    fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.peer())
            .client_ca_root(Certificate::from_pem(&self.ca.ca_pem))
    }

    fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca.ca_pem))
            .identity(self.peer())
    }
}

/// Make `b` a voter beside the leader `a`. A leader just elected may not have committed its
/// first membership entry yet, and openraft then refuses a change ("already undergoing a
/// configuration change"); on a loaded machine that window is wide enough to hit, so retry.
async fn add_voter(a: &RaftNode, b: &RaftNode) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = a.add_learner(b.id(), b.info().clone()).await {
        assert!(Instant::now() < deadline, "add_learner: {e:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.change_membership(BTreeSet::from([a.id(), b.id()]))
        .await
        .unwrap();
}

/// A node in `dir` on a loopback port, with short timers and the TLS settings `tls` makes.
async fn start_with(dir: &std::path::Path, tls: impl FnOnce(&mut RaftConfig)) -> RaftNode {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let mut c = RaftConfig::new(dir, "n", &addr, "https://127.0.0.1:2379");
    c.heartbeat = Duration::from_millis(50);
    c.election_timeout = (Duration::from_millis(400), Duration::from_millis(800));
    tls(&mut c);
    RaftNode::start(c, l).await.unwrap()
}

async fn start(pki: &Pki, dir: &std::path::Path) -> RaftNode {
    start_with(dir, |c| {
        c.server_tls = Some(pki.server());
        c.client_tls = Some(pki.client());
    })
    .await
}

/// `a` bootstraps and leads, then `b` joins it as a voter.
async fn form_pair(a: &RaftNode, b: &RaftNode) {
    a.bootstrap().await.unwrap();
    common::eventually(Duration::from_secs(10), "a leader", || {
        a.status().leader == Some(a.id())
    })
    .await;
    add_voter(a, b).await;
}

/// Put `key` = `value` through `writer`, then read it back from every node's own state.db
/// once `leader` has confirmed it leads (so every write before it is applied there).
async fn put_and_read_back(
    writer: &RaftNode,
    leader: &RaftNode,
    nodes: &[&RaftNode],
    key: &[u8],
    value: &[u8],
) {
    let put = Command::Txn(TxnRequest {
        compare: vec![],
        success: vec![Op::Put(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            ..Default::default()
        })],
        failure: vec![],
    });
    writer.propose(put).await.unwrap().unwrap();
    leader.linearizable_barrier().await.unwrap();
    for n in nodes {
        let req = RangeRequest {
            range: KeyRange::single(key.to_vec()),
            ..Default::default()
        };
        let (res, _) = Reader::open(n.db_path()).unwrap().range(&req).unwrap();
        assert_eq!(res.kvs[0].value, value, "the nodes replicate");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_cluster_replicates_over_mutual_tls_and_refuses_callers_without_a_certificate() {
    let pki = Pki::new();
    let tmp = tempfile::tempdir().unwrap();
    let a = start(&pki, &tmp.path().join("a")).await;
    let b = start(&pki, &tmp.path().join("b")).await;
    form_pair(&a, &b).await;

    // Written on the follower: forwarded to the leader over mTLS, replicated back over mTLS.
    put_and_read_back(&b, &a, &[&a, &b], b"k", b"v").await;

    // With a certificate the service is reached (and rejects the junk body); without one the
    // TLS handshake fails before any RPC runs.
    let junk = Msg {
        body: b"junk".to_vec(),
        ..Default::default()
    };
    let with_cert = NetworkFactory::new(0, Some(pki.client()));
    let status = with_cert
        .client(&a.info().peer_addr)
        .unwrap()
        .grpc()
        .vote(junk.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    let no_cert = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca.ca_pem));
    let without = NetworkFactory::new(0, Some(no_cert));
    let status = without
        .client(&a.info().peer_addr)
        .unwrap()
        .grpc()
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

/// A tracing writer into a shared buffer, to read what the node logged.
#[derive(Clone, Default)]
struct LogBuf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// k8sd's datastore CA and, for a node named `name` on 127.0.0.1, the datastore peer and
/// datastore client certificates exactly as `k8sd init` issues them.
struct DatastorePki {
    ca_pem: String,
    peer: (String, String),
    client: (String, String),
}

impl DatastorePki {
    fn new() -> DatastorePki {
        use k8sd::pki::{CaKind, CertificateAuthority, Leaf, NodeIdentity, issue_leaf};
        let now = time::OffsetDateTime::now_utc();
        let ca = CertificateAuthority::generate(CaKind::Datastore, now).unwrap();
        let id = NodeIdentity {
            node_name: "n1".into(),
            node_ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            extra_sans: vec![],
            service_cidr: "10.96.0.0/12".parse().unwrap(),
        };
        let peer = issue_leaf(&ca, &Leaf::DatastorePeer.spec(&id), now).unwrap();
        let client = issue_leaf(&ca, &Leaf::DatastoreClient.spec(&id), now).unwrap();
        DatastorePki {
            ca_pem: ca.cert_pem().to_string(),
            peer: (peer.cert_pem, peer.key_pem),
            client: (client.cert_pem, client.key_pem),
        }
    }

    fn client_tls(&self, (cert, key): &(String, String)) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(cert, key))
    }
}

async fn start_k8sd_peer(pki: &DatastorePki, dir: &std::path::Path) -> RaftNode {
    start_with(dir, |c| {
        c.server_tls = Some(
            ServerTlsConfig::new()
                .identity(Identity::from_pem(&pki.peer.0, &pki.peer.1))
                .client_ca_root(Certificate::from_pem(&pki.ca_pem)),
        );
        c.client_tls = Some(pki.client_tls(&pki.peer));
        // As `k8sd run` configures its datastore member.
        c.peer_organization = Some(k8sd::pki::DATASTORE_PEER_ORG.to_string());
    })
    .await
}

// A current-thread runtime, so every task of both nodes (the peer service's interceptor
// included) logs into this test's subscriber and no other test's.
#[tokio::test]
async fn t20_a_datastore_client_certificate_is_refused_on_the_peer_port_and_peers_replicate() {
    let logs = LogBuf::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let pki = DatastorePki::new();
    let tmp = tempfile::tempdir().unwrap();
    let a = start_k8sd_peer(&pki, &tmp.path().join("a")).await;
    let b = start_k8sd_peer(&pki, &tmp.path().join("b")).await;
    form_pair(&a, &b).await;
    put_and_read_back(&b, &a, &[&a, &b], b"k", b"from-b").await;

    // kube-apiserver's certificate completes the TLS handshake (same CA) but is refused by the
    // service before the call reaches Raft: PermissionDenied, not the InvalidArgument a peer
    // gets for the junk body.
    let junk = Msg {
        body: b"junk".to_vec(),
        ..Default::default()
    };
    let as_client = NetworkFactory::new(0, Some(pki.client_tls(&pki.client)));
    let status = as_client
        .client(&a.info().peer_addr)
        .unwrap()
        .grpc()
        .vote(junk.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("k8sd-datastore-client")
            && status.message().contains("not a datastore peer"),
        "{status:?}"
    );
    let as_peer = NetworkFactory::new(0, Some(pki.client_tls(&pki.peer)));
    let status = as_peer
        .client(&a.info().peer_addr)
        .unwrap()
        .grpc()
        .vote(junk)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let line = logged
        .lines()
        .find(|l| l.contains("refused a datastore peer call"))
        .unwrap_or_else(|| panic!("no refusal logged; log:\n{logged}"));
    assert!(
        line.contains("127.0.0.1") && line.contains("k8sd-datastore-client"),
        "the log line names the caller and the certificate: {line}"
    );

    // The cluster still replicates after the refusal.
    put_and_read_back(&a, &b, &[&b], b"k2", b"after").await;

    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
