//! The worker's API load balancer against real TLS servers in this process.
//!
//! Each backend is a rustls server that requires a client certificate from the test CA, the way
//! kube-apiserver does. It answers `GET /readyz` with 200 or 500 (switchable), answers the
//! EndpointSlice list with a body the test sets, and otherwise speaks a tiny echo protocol: the
//! client sends `WHO\n`, the server names itself, then echoes lines. Clients run TLS through the
//! balancer to the backend, so the balancer only ever sees ciphertext, as in production.
//!
//! There are no timed assertions: every wait is for a condition, with a generous deadline.
#![allow(clippy::tests_outside_test_module, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::eventually;
use crate::test_ca::TestCa;
use k8sd::httpc::TlsClient;
use k8sd::lb::{LbConfig, LbError, LbHandle, LoadBalancer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const DEADLINE: Duration = Duration::from_secs(30);

struct Pki {
    ca: TestCa,
}

impl Pki {
    fn new() -> Pki {
        Pki { ca: TestCa::new() }
    }

    /// A certificate for 127.0.0.1 to 127.0.0.9, server and client auth; (cert PEM, key PEM).
    fn leaf(&self) -> (String, String) {
        self.ca
            .leaf((1..=9).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i))))
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca.ca_pem.as_bytes()).unwrap())
            .unwrap();
        roots
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots()),
            provider.clone(),
        )
        .build()
        .unwrap();
        let (cert, key) = self.leaf();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap();
        Arc::new(config)
    }

    /// What kubelet would use through the balancer.
    fn connector(&self) -> TlsConnector {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (cert, key) = self.leaf();
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots())
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap();
        TlsConnector::from(Arc::new(config))
    }

    /// The balancer's health-check client, built from PEM as the daemon would.
    fn lb_client(&self) -> TlsClient {
        let (cert, key) = self.leaf();
        TlsClient::from_pem(self.ca.ca_pem.as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap()
    }
}

/// A fake kube-apiserver.
struct Backend {
    addr: SocketAddr,
    name: String,
    ready: Arc<AtomicBool>,
    /// The EndpointSlice list body; `None` answers 404.
    slices: Arc<Mutex<Option<String>>>,
    slice_requests: Arc<AtomicUsize>,
    /// Echo connections currently open.
    open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    async fn start(pki: &Pki, name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Backend::serve(pki, name, listener)
    }

    fn serve(pki: &Pki, name: &str, listener: TcpListener) -> Backend {
        let addr = listener.local_addr().unwrap();
        let ready = Arc::new(AtomicBool::new(true));
        let slices = Arc::new(Mutex::new(None));
        let slice_requests = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let acceptor = TlsAcceptor::from(pki.server_config());
        let shared = (
            name.to_owned(),
            ready.clone(),
            slices.clone(),
            slice_requests.clone(),
            open.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, (name, ready, slices, requests, open)) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let _ = handle(BufReader::new(tls), &name, &ready, &slices, &requests, &open).await;
                });
            }
        });
        Backend {
            addr,
            name: name.to_owned(),
            ready,
            slices,
            slice_requests,
            open,
            task,
        }
    }

    fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: BufReader<S>,
    name: &str,
    ready: &AtomicBool,
    slices: &Mutex<Option<String>>,
    requests: &AtomicUsize,
    open: &AtomicUsize,
) -> std::io::Result<()> {
    let mut line = String::new();
    s.read_line(&mut line).await?;
    if line.starts_with("GET ") {
        // Skip the headers, then answer and close, like `Connection: close`.
        let mut header = String::new();
        while s.read_line(&mut header).await? > 2 {
            header.clear();
        }
        let (status, body) = if line.starts_with("GET /readyz") {
            if ready.load(Ordering::SeqCst) {
                ("200 OK", "ok".to_owned())
            } else {
                ("500 Internal Server Error", "[-]etcd failed: reason withheld\nreadyz check failed".to_owned())
            }
        } else if line.starts_with("GET /apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dkubernetes ") {
            requests.fetch_add(1, Ordering::SeqCst);
            match slices.lock().unwrap().clone() {
                Some(b) => ("200 OK", b),
                None => ("404 Not Found", "{}".to_owned()),
            }
        } else {
            ("404 Not Found", "{}".to_owned())
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(resp.as_bytes()).await?;
        return s.shutdown().await;
    }
    if line != "WHO\n" {
        return Ok(());
    }
    open.fetch_add(1, Ordering::SeqCst);
    let result = async {
        s.write_all(format!("{name}\n").as_bytes()).await?;
        s.flush().await?;
        loop {
            line.clear();
            if s.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            s.write_all(line.as_bytes()).await?;
            s.flush().await?;
        }
    }
    .await;
    open.fetch_sub(1, Ordering::SeqCst);
    result
}

/// A client connection through the balancer, TLS end to end to some backend.
struct Conn {
    backend: String,
    s: BufReader<tokio_rustls::client::TlsStream<TcpStream>>,
}

#[derive(Debug)]
enum ConnectError {
    /// The balancer did not accept the TCP connection.
    Refused(std::io::Error),
    /// Accepted, but the session did not get through (e.g. drained during the handshake).
    Session(std::io::Error),
}

async fn try_connect(lb: SocketAddr, tls: &TlsConnector) -> Result<Conn, ConnectError> {
    let tcp = TcpStream::connect(lb).await.map_err(ConnectError::Refused)?;
    let session = async {
        let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
        let mut s = BufReader::new(tls.connect(name, tcp).await?);
        s.write_all(b"WHO\n").await?;
        s.flush().await?;
        let mut who = String::new();
        if s.read_line(&mut who).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before WHO",
            ));
        }
        Ok(Conn {
            backend: who.trim().to_owned(),
            s,
        })
    };
    tokio::time::timeout(DEADLINE, session)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "session")))
        .map_err(ConnectError::Session)
}

async fn connect(lb: SocketAddr, tls: &TlsConnector) -> Conn {
    try_connect(lb, tls).await.unwrap()
}

impl Conn {
    async fn echo(&mut self, msg: &str) -> std::io::Result<()> {
        self.s.write_all(format!("{msg}\n").as_bytes()).await?;
        self.s.flush().await?;
        let mut back = String::new();
        self.s.read_line(&mut back).await?;
        if back == format!("{msg}\n") {
            Ok(())
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("echo got {back:?}"),
            ))
        }
    }

    /// True once the connection has been closed under us (EOF or error on read).
    async fn is_closed(&mut self) -> bool {
        let mut buf = String::new();
        matches!(
            tokio::time::timeout(DEADLINE, self.s.read_line(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

fn config(pki: &Pki, backends: &[&Backend], state: &Path) -> LbConfig {
    let mut cfg = LbConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        backends.iter().map(|b| b.addr).collect(),
        pki.lb_client(),
        state.join("lb-endpoints.json"),
    );
    cfg.health_interval = Duration::from_millis(100);
    cfg.health_timeout = Duration::from_secs(2);
    cfg.dial_timeout = Duration::from_secs(2);
    cfg.discovery_interval = None;
    cfg
}

fn state_of(lb: &LbHandle, addr: SocketAddr) -> String {
    lb.status()
        .into_iter()
        .find(|s| s.address == addr)
        .map(|s| s.state)
        .unwrap_or_default()
}

async fn wait_state(lb: &LbHandle, b: &Backend, want: &str) {
    eventually(DEADLINE, &format!("{} {want}", b.name), || {
        state_of(lb, b.addr) == want
    })
    .await;
}

fn count(conns: &[Conn]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for c in conns {
        *m.entry(c.backend.clone()).or_default() += 1;
    }
    m
}

/// A local address where nothing listens: bound but never listening, so it cannot be reused.
fn dead_addr() -> (tokio::net::TcpSocket, SocketAddr) {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let a = s.local_addr().unwrap();
    (s, a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_connections_spread_across_healthy_backends_and_status_reports_them() {
    let pki = Pki::new();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        Backend::start(&pki, "a").await,
        Backend::start(&pki, "b").await,
        Backend::start(&pki, "c").await,
    );
    let lb = LoadBalancer::start(config(&pki, &[&a, &b, &c], tmp.path()))
        .await
        .unwrap();
    for x in [&a, &b, &c] {
        wait_state(&lb, x, "healthy").await;
    }
    let tls = pki.connector();
    let mut conns = Vec::new();
    for _ in 0..9 {
        conns.push(connect(lb.local_addr(), &tls).await);
    }
    // Least connections: every backend holds exactly a third.
    assert_eq!(
        count(&conns),
        BTreeMap::from([("a".into(), 3), ("b".into(), 3), ("c".into(), 3)])
    );
    for c in &mut conns {
        c.echo("hello").await.unwrap();
    }
    let status = lb.status();
    assert_eq!(status.len(), 3);
    for s in &status {
        assert!(s.healthy, "{s:?}");
        assert_eq!((s.active_connections, s.consecutive_failures), (3, 0), "{s:?}");
    }
    let json = serde_json::to_value(&status[0]).unwrap();
    for key in [
        "address",
        "state",
        "healthy",
        "consecutive-failures",
        "active-connections",
        "last-error",
        "last-change",
    ] {
        assert!(json.get(key).is_some(), "{key} missing from {json}");
    }
    drop(conns);
    eventually(DEADLINE, "connections released", || {
        lb.status().iter().all(|s| s.active_connections == 0)
    })
    .await;

    // Shutdown closes the listener: the port refuses afterwards.
    let mut open = connect(lb.local_addr(), &tls).await;
    lb.shutdown().await;
    assert!(open.is_closed().await);
    assert!(TcpStream::connect(lb.local_addr()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_a_not_ready_backend_is_drained_gets_nothing_new_and_fails_back() {
    let pki = Pki::new();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        Backend::start(&pki, "a").await,
        Backend::start(&pki, "b").await,
        Backend::start(&pki, "c").await,
    );
    let lb = LoadBalancer::start(config(&pki, &[&a, &b, &c], tmp.path()))
        .await
        .unwrap();
    for x in [&a, &b, &c] {
        wait_state(&lb, x, "healthy").await;
    }
    let tls = pki.connector();
    let mut conns = Vec::new();
    for _ in 0..6 {
        conns.push(connect(lb.local_addr(), &tls).await);
    }
    assert_eq!(count(&conns)["b"], 2);

    // b still accepts TCP and TLS, but its /readyz says 500: a dial-only check would keep it.
    b.set_ready(false);
    wait_state(&lb, &b, "unhealthy").await;
    let (mut on_b, mut others): (Vec<Conn>, Vec<Conn>) = conns.into_iter().partition(|c| c.backend == "b");
    for c in &mut on_b {
        assert!(
            c.is_closed().await,
            "a connection to the drained backend stays open"
        );
    }
    eventually(DEADLINE, "b's echo connections gone", || b.open() == 0).await;
    for c in &mut others {
        c.echo("still here").await.unwrap();
    }
    let st = lb.status().into_iter().find(|s| s.address == b.addr).unwrap();
    assert!(st.last_error.as_deref().unwrap_or("").contains("500"), "{st:?}");

    let mut fresh = Vec::new();
    for _ in 0..6 {
        fresh.push(connect(lb.local_addr(), &tls).await);
    }
    assert!(!count(&fresh).contains_key("b"), "{:?}", count(&fresh));

    // Fail back: once b is healthy it has the fewest connections and gets the next one.
    b.set_ready(true);
    wait_state(&lb, &b, "healthy").await;
    let back = connect(lb.local_addr(), &tls).await;
    assert_eq!(back.backend, "b");
    for c in others.iter_mut().chain(fresh.iter_mut()) {
        c.echo("undisturbed by the fail-back").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t30_with_every_backend_unhealthy_connections_still_go_through() {
    let pki = Pki::new();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (Backend::start(&pki, "a").await, Backend::start(&pki, "b").await);
    let (_reserved, dead) = dead_addr();
    let mut cfg = config(&pki, &[&a, &b], tmp.path());
    cfg.backends.insert(0, dead);
    let lb = LoadBalancer::start(cfg).await.unwrap();
    a.set_ready(false);
    b.set_ready(false);
    for x in [&a, &b] {
        wait_state(&lb, x, "unhealthy").await;
    }
    eventually(DEADLINE, "dead backend unhealthy", || {
        state_of(&lb, dead) == "unhealthy"
    })
    .await;

    // Every backend is a candidate, in turn; the dead one fails to dial and the next is tried,
    // so no client connection is lost.
    let tls = pki.connector();
    let mut conns = Vec::new();
    for _ in 0..6 {
        let mut c = connect(lb.local_addr(), &tls).await;
        c.echo("blip").await.unwrap();
        conns.push(c);
    }
    let seen = count(&conns);
    assert!(seen.contains_key("a") && seen.contains_key("b"), "{seen:?}");
    let dead_status = lb.status().into_iter().find(|s| s.address == dead).unwrap();
    assert!(dead_status.last_error.is_some(), "{dead_status:?}");

    // a recovers: connections that had to go to the unhealthy b now move.
    a.set_ready(true);
    wait_state(&lb, &a, "healthy").await;
    for c in &mut conns {
        if c.backend == "b" {
            assert!(c.is_closed().await);
        } else {
            c.echo("kept").await.unwrap();
        }
    }
    assert_eq!(connect(lb.local_addr(), &tls).await.backend, "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t40_set_backends_persists_and_a_restart_reloads_the_list() {
    let pki = Pki::new();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        Backend::start(&pki, "a").await,
        Backend::start(&pki, "b").await,
        Backend::start(&pki, "c").await,
    );
    let file = tmp.path().join("lb-endpoints.json");
    let lb = LoadBalancer::start(config(&pki, &[&a], tmp.path()))
        .await
        .unwrap();
    let read = || serde_json::from_slice::<serde_json::Value>(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(
        read(),
        serde_json::json!({"version": 1, "backends": [a.addr.to_string()]})
    );
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    lb.set_backends(vec![b.addr, c.addr]).await.unwrap();
    assert_eq!(lb.backends(), vec![b.addr, c.addr]);
    assert_eq!(
        read()["backends"],
        serde_json::json!([b.addr.to_string(), c.addr.to_string()])
    );
    assert!(matches!(
        lb.set_backends(Vec::new()).await,
        Err(LbError::EmptyBackends)
    ));
    assert_eq!(lb.backends(), vec![b.addr, c.addr]);
    lb.shutdown().await;
    assert!(matches!(
        lb.set_backends(vec![a.addr]).await,
        Err(LbError::Stopped)
    ));

    // The worker restarts and the node it joined through is gone: the saved list still works.
    drop(a);
    let (_reserved, gone) = dead_addr();
    let mut cfg = config(&pki, &[], tmp.path());
    cfg.backends = vec![gone];
    let lb = LoadBalancer::start(cfg).await.unwrap();
    assert_eq!(lb.backends(), vec![gone, b.addr, c.addr]);
    let tls = pki.connector();
    for _ in 0..4 {
        let mut conn = connect(lb.local_addr(), &tls).await;
        assert_ne!(conn.backend, "a");
        conn.echo("after restart").await.unwrap();
    }
    assert_eq!(read()["backends"].as_array().unwrap().len(), 3);

    // Nothing configured and nothing saved is an error that names the file.
    let empty = tempfile::tempdir().unwrap();
    let err = LoadBalancer::start(config(&pki, &[], empty.path()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("lb-endpoints.json"), "{err}");
}

/// A `kubectl get --raw` shaped list: one slice with three apiservers on the same port, one more
/// shutting down (ready false), and the usual metadata the parser has to skip.
fn slice_list(ips: &[&str], not_ready: &str, port: u16) -> String {
    let endpoints: Vec<_> = ips
        .iter()
        .map(|ip| serde_json::json!({"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false}}))
        .chain([serde_json::json!({"addresses": [not_ready], "conditions": {"ready": false, "serving": false, "terminating": true}})])
        .collect();
    serde_json::json!({
        "kind": "EndpointSliceList",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"resourceVersion": "4711"},
        "items": [{
            "metadata": {
                "name": "kubernetes",
                "namespace": "default",
                "uid": "0b6f4e3e-54d5-4a64-9c1f-3b3e0f4c2d1a",
                "resourceVersion": "4700",
                "generation": 3,
                "creationTimestamp": "2026-11-25T04:00:00Z",
                "labels": {
                    "endpointslice.kubernetes.io/managed-by": "endpointslicemirroring-controller.k8s.io",
                    "kubernetes.io/service-name": "kubernetes"
                },
                "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "discovery.k8s.io/v1"}]
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "https", "protocol": "TCP", "port": port}]
        }]
    })
    .to_string()
}

/// Three backends on 127.0.0.2, .3 and .4 with the same port, like apiservers on three hosts.
async fn same_port_backends(pki: &Pki) -> Vec<Backend> {
    for _ in 0..50 {
        let first = TcpListener::bind("127.0.0.2:0").await.unwrap();
        let port = first.local_addr().unwrap().port();
        let (Ok(second), Ok(third)) = (
            TcpListener::bind(("127.0.0.3", port)).await,
            TcpListener::bind(("127.0.0.4", port)).await,
        ) else {
            continue;
        };
        return vec![
            Backend::serve(pki, "n2", first),
            Backend::serve(pki, "n3", second),
            Backend::serve(pki, "n4", third),
        ];
    }
    panic!("no common free port on 127.0.0.2-4");
}

/// EndpointSlice lists the backends have answered so far, all together.
fn served(nodes: &[Backend]) -> usize {
    nodes
        .iter()
        .map(|n| n.slice_requests.load(Ordering::SeqCst))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t50_the_refresher_follows_the_kubernetes_endpointslices() {
    let pki = Pki::new();
    let tmp = tempfile::tempdir().unwrap();
    let nodes = same_port_backends(&pki).await;
    let port = nodes[0].addr.port();
    let body = slice_list(&["127.0.0.2", "127.0.0.3", "127.0.0.4"], "127.0.0.5", port);
    for n in &nodes {
        *n.slices.lock().unwrap() = Some(body.clone());
    }
    // The worker knows only the node it joined through.
    let mut cfg = config(&pki, &[&nodes[0]], tmp.path());
    cfg.discovery_interval = Some(Duration::from_millis(200));
    let lb = LoadBalancer::start(cfg).await.unwrap();
    let all: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    eventually(DEADLINE, "three backends discovered", || lb.backends() == all).await;
    // The pool changes first, the file right after.
    let saved = || {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(tmp.path().join("lb-endpoints.json")).unwrap()).unwrap();
        v["backends"].as_array().unwrap().len()
    };
    eventually(DEADLINE, "three backends saved", || saved() == 3).await;
    for n in &nodes {
        wait_state(&lb, n, "healthy").await;
    }
    let tls = pki.connector();
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(connect(lb.local_addr(), &tls).await);
    }
    assert_eq!(count(&conns).len(), 3);

    // n4 leaves the control plane: it disappears from the slice and from the list.
    let body = slice_list(&["127.0.0.2", "127.0.0.3"], "127.0.0.4", port);
    for n in &nodes {
        *n.slices.lock().unwrap() = Some(body.clone());
    }
    eventually(DEADLINE, "n4 removed", || lb.backends() == all[..2]).await;
    for c in &mut conns {
        if c.backend == "n4" {
            assert!(c.is_closed().await, "connection to a removed backend stays open");
        }
    }

    // An empty answer never empties the list.
    let empty = r#"{"kind":"EndpointSliceList","apiVersion":"discovery.k8s.io/v1","metadata":{},"items":[]}"#;
    for n in &nodes {
        *n.slices.lock().unwrap() = Some(empty.to_owned());
    }
    let before = served(&nodes);
    eventually(DEADLINE, "three more refreshes", || served(&nodes) >= before + 3).await;
    assert_eq!(lb.backends(), all[..2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t55_a_pinned_backend_outlives_a_list_that_omits_it() {
    let pki = Pki::new();
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = same_port_backends(&pki).await;
    let port = nodes[0].addr.port();
    let set_slices = |nodes: &[Backend], ips: &[&str]| {
        let body = slice_list(ips, "127.0.0.9", port);
        for n in nodes {
            *n.slices.lock().unwrap() = Some(body.clone());
        }
    };
    set_slices(&nodes, &["127.0.0.2", "127.0.0.3"]);
    // A control-plane node's balancer: its own apiserver (n2) is pinned.
    let mut cfg = config(&pki, &[&nodes[0]], tmp.path());
    cfg.pinned = vec![nodes[0].addr];
    cfg.discovery_interval = Some(Duration::from_millis(200));
    let lb = LoadBalancer::start(cfg).await.unwrap();
    let two = vec![nodes[0].addr, nodes[1].addr];
    eventually(DEADLINE, "n3 discovered", || lb.backends() == two).await;

    // n2 restarts: it leaves the EndpointSlices, which now name only n3. The list keeps n2.
    set_slices(&nodes, &["127.0.0.3"]);
    let before = served(&nodes);
    eventually(DEADLINE, "three more refreshes", || served(&nodes) >= before + 3).await;
    let mut listed = lb.backends();
    listed.sort();
    assert_eq!(listed, two, "a list without the pinned backend dropped it");

    // n3 goes down for good: every new connection still reaches n2.
    let n3 = nodes.remove(1);
    drop(n3);
    let tls = pki.connector();
    for _ in 0..4 {
        let mut c = connect(lb.local_addr(), &tls).await;
        assert_eq!(c.backend, "n2");
        c.echo("still here").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t60_the_listener_refuses_nothing_while_health_flips() {
    let pki = Pki::new();
    let tmp = tempfile::tempdir().unwrap();
    let backends = Arc::new(vec![
        Backend::start(&pki, "a").await,
        Backend::start(&pki, "b").await,
        Backend::start(&pki, "c").await,
    ]);
    let refs: Vec<&Backend> = backends.iter().collect();
    let mut cfg = config(&pki, &refs, tmp.path());
    cfg.health_interval = Duration::from_millis(50);
    cfg.healthy_after = 1;
    let lb = LoadBalancer::start(cfg).await.unwrap();
    let addr = lb.local_addr();

    let done = Arc::new(AtomicBool::new(false));
    let flipper = {
        let (backends, done) = (backends.clone(), done.clone());
        tokio::spawn(async move {
            // Every readiness pattern of three backends, all down included, twice over.
            for step in 0u32..16 {
                for (i, b) in backends.iter().enumerate() {
                    b.set_ready(step & (1 << i) == 0);
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            done.store(true, Ordering::SeqCst);
        })
    };

    let refused = Arc::new(AtomicUsize::new(0));
    let drained = Arc::new(AtomicUsize::new(0));
    let sessions = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (tls, done) = (pki.connector(), done.clone());
        let (refused, drained, sessions) = (refused.clone(), drained.clone(), sessions.clone());
        clients.push(tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                // A session closed by a drain is retried, as kubelet would; a refusal is a failure.
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    assert!(attempts < 50, "session never got through");
                    let failed = match try_connect(addr, &tls).await {
                        Ok(mut c) => async {
                            c.echo("one").await?;
                            tokio::time::sleep(Duration::from_millis(30)).await;
                            c.echo("two").await
                        }
                        .await
                        .err(),
                        Err(ConnectError::Refused(e)) => {
                            eprintln!("refused: {e}");
                            refused.fetch_add(1, Ordering::SeqCst);
                            continue;
                        }
                        Err(ConnectError::Session(e)) => Some(e),
                    };
                    match failed {
                        None => break,
                        Some(_) => drained.fetch_add(1, Ordering::SeqCst),
                    };
                }
                sessions.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    flipper.await.unwrap();
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(refused.load(Ordering::SeqCst), 0);
    assert!(sessions.load(Ordering::SeqCst) >= 8);
    eprintln!(
        "{} sessions; {} closed by drains and retried",
        sessions.load(Ordering::SeqCst),
        drained.load(Ordering::SeqCst)
    );
    // The balancer is still consistent afterwards: counters back to zero, all healthy again.
    for b in backends.iter() {
        b.set_ready(true);
    }
    for b in backends.iter() {
        wait_state(&lb, b, "healthy").await;
    }
    eventually(DEADLINE, "no connection left counted", || {
        lb.status().iter().all(|s| s.active_connections == 0)
    })
    .await;
    lb.shutdown().await;
}
