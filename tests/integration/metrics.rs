//! The datastore's Prometheus endpoint (docs/metrics.md), scraped as an operator's Prometheus
//! would: a real `k8sd datastore` with `--listen-metrics-urls`, curl with a client certificate.
//! Every metric etcd's dashboard and alerts need is there under etcd's name and type, the
//! values move with writes and watches, and a client without a certificate from the trusted CA
//! is refused.

#![allow(clippy::tests_outside_test_module, clippy::unwrap_used)]

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Kind, Server, free_port};

/// Every metric docs/metrics.md names, and the rest of what etcd's Grafana dashboard and alerts read,
/// with the type etcd declares.
const REQUIRED: &[(&str, &str)] = &[
    ("etcd_server_has_leader", "gauge"),
    ("etcd_server_is_leader", "gauge"),
    ("etcd_server_leader_changes_seen_total", "counter"),
    ("etcd_server_proposals_committed_total", "gauge"),
    ("etcd_server_proposals_applied_total", "gauge"),
    ("etcd_server_proposals_pending", "gauge"),
    ("etcd_server_proposals_failed_total", "counter"),
    ("etcd_server_quota_backend_bytes", "gauge"),
    ("etcd_disk_wal_fsync_duration_seconds", "histogram"),
    ("etcd_disk_backend_commit_duration_seconds", "histogram"),
    ("etcd_mvcc_db_total_size_in_bytes", "gauge"),
    ("etcd_mvcc_db_total_size_in_use_in_bytes", "gauge"),
    ("etcd_network_peer_round_trip_time_seconds", "histogram"),
    ("etcd_debugging_mvcc_keys_total", "gauge"),
    ("etcd_debugging_mvcc_watcher_total", "gauge"),
    ("etcd_mvcc_watcher_total", "gauge"),
    ("etcd_mvcc_put_total", "counter"),
    ("grpc_server_started_total", "counter"),
    ("grpc_server_handled_total", "counter"),
    ("grpc_server_msg_received_total", "counter"),
    ("grpc_server_msg_sent_total", "counter"),
    ("grpc_server_handling_seconds", "histogram"),
    ("etcd_network_client_grpc_received_bytes_total", "counter"),
    ("etcd_network_client_grpc_sent_bytes_total", "counter"),
    ("process_resident_memory_bytes", "gauge"),
];

/// A CA with a server certificate for 127.0.0.1 and a client certificate, and a second CA
/// with a client certificate the server must refuse.
fn write_pki(dir: &Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
        Issuer, KeyPair, SanType,
    };
    for (prefix, leaves) in [("", &["server", "client"][..]), ("other-", &["client"][..])] {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct names: rcgen's default subject is one string for every certificate, and
        // OpenSSL (curl) takes a leaf whose subject equals its issuer for self-signed.
        ca.distinguished_name = DistinguishedName::new();
        ca.distinguished_name
            .push(DnType::CommonName, format!("{prefix}metrics-test-ca"));
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join(format!("{prefix}ca.crt")), ca_cert.pem()).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        for name in leaves {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            p.distinguished_name = DistinguishedName::new();
            p.distinguished_name
                .push(DnType::CommonName, format!("{prefix}{name}"));
            p.subject_alt_names
                .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
            p.extended_key_usages = vec![if *name == "server" {
                ExtendedKeyUsagePurpose::ServerAuth
            } else {
                ExtendedKeyUsagePurpose::ClientAuth
            }];
            let cert = p.signed_by(&key, &issuer).unwrap();
            std::fs::write(dir.join(format!("{prefix}{name}.crt")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{prefix}{name}.key")), key.serialize_pem()).unwrap();
        }
    }
}

struct Datastore {
    server: Server,
    pki: PathBuf,
    metrics_url: String,
}

impl Datastore {
    fn start(raft: bool) -> Datastore {
        let pki = tempfile::tempdir().unwrap().keep();
        write_pki(&pki);
        let p = |f: &str| pki.join(f).display().to_string();
        let metrics_url = format!("https://127.0.0.1:{}/metrics", free_port());
        let mut args = vec![
            format!("--cert-file={}", p("server.crt")),
            format!("--key-file={}", p("server.key")),
            format!("--trusted-ca-file={}", p("ca.crt")),
            "--client-cert-auth".to_string(),
            format!(
                "--listen-metrics-urls={}",
                metrics_url.trim_end_matches("/metrics")
            ),
        ];
        if raft {
            args.push(format!("--listen-peer-urls=http://127.0.0.1:{}", free_port()));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = Server::start_with(Kind::K8sd, &args);
        Datastore {
            server,
            pki,
            metrics_url,
        }
    }

    fn p(&self, f: &str) -> String {
        self.pki.join(f).display().to_string()
    }

    fn curl(&self, client: Option<&str>) -> std::process::Output {
        let mut c = Command::new("curl");
        c.args(["-sS", "--fail", "--max-time", "10", "--cacert", &self.p("ca.crt")]);
        if let Some(prefix) = client {
            c.args(["--cert", &self.p(&format!("{prefix}client.crt"))]);
            c.args(["--key", &self.p(&format!("{prefix}client.key"))]);
        }
        c.arg(&self.metrics_url).output().expect("curl is installed")
    }

    fn scrape(&self) -> Scrape {
        let out = common::must_succeed(format!("scraping {}", self.metrics_url), self.curl(Some("")));
        Scrape(String::from_utf8(out).unwrap())
    }

    fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(common::etcdctl_bin())
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=https://{}", self.server.endpoint))
            .args([
                format!("--cacert={}", self.p("ca.crt")),
                format!("--cert={}", self.p("client.crt")),
                format!("--key={}", self.p("client.key")),
            ])
            .args(args)
            .output()
            .unwrap()
    }

    fn put(&self, key: &str, value: &str) {
        common::must_succeed("etcdctl put", self.etcdctl(&["put", key, value]));
    }
}

struct Scrape(String);

impl Scrape {
    /// The value of the sample line `series` exactly (name plus labels as rendered).
    fn value(&self, series: &str) -> f64 {
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no sample {series} in:\n{}", self.0))
            .parse()
            .unwrap()
    }

    fn type_of(&self, name: &str) -> Option<&str> {
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(&format!("# TYPE {name} ")))
    }
}

fn check_names_and_types(s: &Scrape) {
    let wrong: Vec<String> = REQUIRED
        .iter()
        .filter(|(name, kind)| s.type_of(name) != Some(kind))
        .map(|(name, kind)| format!("{name}: want TYPE {kind}, got {:?}", s.type_of(name)))
        .collect();
    assert!(wrong.is_empty(), "{}\n--- scrape:\n{}", wrong.join("\n"), s.0);
}

const PUT_OK: &str = r#"grpc_server_handled_total{grpc_code="OK",grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"}"#;
const PUT_STARTED: &str =
    r#"grpc_server_started_total{grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"}"#;
const WATCH_STARTED: &str = r#"grpc_server_started_total{grpc_method="Watch",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"}"#;

fn names_types_and_moving_values(raft: bool) {
    let ds = Datastore::start(raft);
    let before = ds.scrape();
    check_names_and_types(&before);
    assert_eq!(before.value("etcd_server_has_leader"), 1.0);
    assert_eq!(before.value("etcd_server_is_leader"), 1.0);
    assert!(before.value("etcd_server_leader_changes_seen_total") >= 1.0);

    for i in 0..10 {
        ds.put(&format!("/metrics/k{i}"), "v");
    }
    // A watcher that stays open while we scrape.
    let mut watch = Command::new(common::etcdctl_bin())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=https://{}", ds.server.endpoint))
        .args([
            format!("--cacert={}", ds.p("ca.crt")),
            format!("--cert={}", ds.p("client.crt")),
            format!("--key={}", ds.p("client.key")),
        ])
        .args(["watch", "/metrics/", "--prefix"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let s = ds.scrape();
        if s.value("etcd_mvcc_watcher_total") >= 1.0 || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = watch.kill();
    let _ = watch.wait();

    assert_eq!(
        after.value("etcd_mvcc_watcher_total"),
        1.0,
        "one etcdctl watch is open"
    );
    assert_eq!(after.value("etcd_debugging_mvcc_watcher_total"), 1.0);
    assert!(after.value(WATCH_STARTED) >= 1.0);
    assert_eq!(
        after.value(PUT_OK) - before.value(PUT_OK),
        10.0,
        "10 puts handled OK"
    );
    assert_eq!(after.value(PUT_STARTED) - before.value(PUT_STARTED), 10.0);
    assert_eq!(
        after.value("etcd_mvcc_put_total") - before.value("etcd_mvcc_put_total"),
        10.0
    );
    assert_eq!(after.value("etcd_debugging_mvcc_keys_total"), 10.0);
    for moved in [
        "etcd_server_proposals_committed_total",
        "etcd_server_proposals_applied_total",
        "etcd_disk_wal_fsync_duration_seconds_count",
        "etcd_disk_backend_commit_duration_seconds_count",
        "etcd_network_client_grpc_received_bytes_total",
    ] {
        assert!(
            after.value(moved) >= before.value(moved) + 10.0,
            "{moved} moved from {} to {} after 10 puts",
            before.value(moved),
            after.value(moved)
        );
    }
    assert!(after.value("etcd_mvcc_db_total_size_in_bytes") > 0.0);
    assert!(
        after.value("etcd_mvcc_db_total_size_in_use_in_bytes")
            <= after.value("etcd_mvcc_db_total_size_in_bytes")
    );
    assert_eq!(after.value("etcd_server_proposals_pending"), 0.0);
    assert_eq!(after.value("etcd_server_proposals_failed_total"), 0.0);
    // The +Inf bucket of a histogram equals its count.
    assert_eq!(
        after.value(r#"etcd_disk_wal_fsync_duration_seconds_bucket{le="+Inf"}"#),
        after.value("etcd_disk_wal_fsync_duration_seconds_count")
    );
    // The closed watch stream leaves the gauge.
    common::eventually_blocking(
        Duration::from_secs(10),
        "the watcher gauge to leave 1 after the watch closed",
        || ds.scrape().value("etcd_mvcc_watcher_total") == 0.0,
    );
}

#[test]
fn t10_standalone_serves_etcd_metrics_that_move() {
    names_types_and_moving_values(false);
}

#[test]
fn t20_raft_member_serves_etcd_metrics_that_move() {
    names_types_and_moving_values(true);
}

#[test]
fn t30_clients_without_a_trusted_certificate_are_refused() {
    let ds = Datastore::start(false);
    let none = ds.curl(None);
    assert!(
        !none.status.success(),
        "a scrape without a client certificate was answered"
    );
    let other = ds.curl(Some("other-"));
    assert!(
        !other.status.success(),
        "a scrape with another CA's certificate was answered"
    );
    assert!(ds.curl(Some("")).status.success());
}

#[test]
fn t40_https_metrics_without_a_client_ca_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    write_pki(dir.path());
    let p = |f: &str| dir.path().join(f).display().to_string();
    let out = Command::new(common::k8sd_bin())
        .arg("datastore")
        .arg(format!("--data-dir={}", p("data")))
        .arg(format!("--listen-client-urls=https://127.0.0.1:{}", free_port()))
        .arg(format!("--cert-file={}", p("server.crt")))
        .arg(format!("--key-file={}", p("server.key")))
        .arg(format!("--listen-metrics-urls=https://127.0.0.1:{}", free_port()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("requires client certificates") && err.contains("--trusted-ca-file"),
        "{err}"
    );
    let out = Command::new(common::k8sd_bin())
        .arg("datastore")
        .arg(format!("--data-dir={}", p("data")))
        .arg(format!("--listen-metrics-urls=http://0.0.0.0:{}", free_port()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing plain http"), "{err}");
}
