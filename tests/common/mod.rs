//! Shared helpers for integration tests: start a real `k8sd datastore` or Debian's etcd on a
//! free loopback port in a temporary directory, and stop it on drop; wait for a condition
//! with a deadline (`eventually` and its twins), which every test polls through.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How often `eventually` and `eventually_blocking` look again.
const POLL: Duration = Duration::from_millis(20);
/// How often `eventually_some` calls again: its closure usually asks a server.
const POLL_CALLS: Duration = Duration::from_millis(50);

/// Wait until `cond` holds, looking every 20 ms; fail the test naming `what` once `timeout`
/// has passed. `what` is formatted only then, so it may show state read at that moment.
pub async fn eventually(timeout: Duration, what: impl std::fmt::Display, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The async twin: wait until `f` yields a value and return it.
pub async fn eventually_some<T>(
    timeout: Duration,
    what: impl std::fmt::Display,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL_CALLS).await;
    }
}

/// `eventually` for a test without an async runtime: the thread sleeps between looks.
pub fn eventually_blocking(timeout: Duration, what: impl std::fmt::Display, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// A finished command's stdout, once it is known to have succeeded; a failure fails the test
/// with `what` and the command's stderr.
pub fn must_succeed(what: impl std::fmt::Display, out: std::process::Output) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A running server process.
pub struct Server {
    pub child: Child,
    pub endpoint: String,
    pub dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    kind: Kind,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    K8sd,
    /// Another k8sd build, named by `K8SD_BENCH_BASELINE` (benchmarks compare before/after).
    K8sdBaseline,
    Etcd,
}

/// A loopback port that is free now and that no other call in this process returns.
///
/// The port is handed to a child process, so nothing holds it between this call and the child's
/// bind. A port from the kernel's ephemeral range (what binding port 0 gives) can be taken in
/// that gap by any outgoing connection on the machine, which made tests fail with "Address
/// already in use". So ports come from below that range, where the kernel never allocates on
/// its own, from a counter that starts at a point picked by the process id (test binaries run
/// one after another, and tests in one binary share the counter), and each is checked free.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000; // 20000..32000, below Linux's default ephemeral range (32768..)
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7_919)) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = u16::try_from(LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN).expect("below 32000");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN);
}

pub fn k8sd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_k8sd"))
}

/// The k8sd binary named by `K8SD_BENCH_BASELINE`; asking for it without one set is a loud
/// failure, never a silent fallback to the build under test.
pub fn k8sd_baseline_bin() -> PathBuf {
    let p = PathBuf::from(
        std::env::var_os("K8SD_BENCH_BASELINE")
            .expect("K8SD_BENCH_BASELINE is not set: point it at the k8sd binary to compare against"),
    );
    assert!(p.is_file(), "K8SD_BENCH_BASELINE={} is not a file", p.display());
    p
}

/// Debian's etcd (package etcd-server). A missing binary is a loud failure, never a skip.
pub fn etcd_bin() -> PathBuf {
    let p = PathBuf::from("/usr/bin/etcd");
    assert!(
        p.exists(),
        "/usr/bin/etcd is missing: run scripts/setup-host.sh (installs etcd-server)"
    );
    p
}

pub fn etcdctl_bin() -> PathBuf {
    let p = PathBuf::from("/usr/bin/etcdctl");
    assert!(
        p.exists(),
        "/usr/bin/etcdctl is missing: run scripts/setup-host.sh (installs etcd-client)"
    );
    p
}

impl Server {
    pub fn start(kind: Kind) -> Server {
        Self::start_with(kind, &[])
    }

    pub fn start_with(kind: Kind, extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        Self::start_in(kind, dir, data_dir, extra)
    }

    /// Start on an existing data directory (used to restart after a crash).
    pub fn start_in(kind: Kind, dir: tempfile::TempDir, data_dir: PathBuf, extra: &[&str]) -> Server {
        let port = free_port();
        // A server given a certificate serves https, as etcd's own flags pair them.
        let scheme = if extra.iter().any(|a| a.starts_with("--cert-file")) {
            "https"
        } else {
            "http"
        };
        let url = format!("{scheme}://127.0.0.1:{port}");
        let log = dir.path().join(format!("server-{port}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = match kind {
            Kind::K8sd | Kind::K8sdBaseline => {
                let bin = if kind == Kind::K8sd {
                    k8sd_bin()
                } else {
                    k8sd_baseline_bin()
                };
                let mut c = Command::new(bin);
                c.arg("datastore");
                // K8SD_TEST_RAFT=1 runs every k8sd test server as a Raft member (cluster of one).
                if std::env::var_os("K8SD_TEST_RAFT").is_some_and(|v| v == "1") {
                    c.arg(format!("--listen-peer-urls=http://127.0.0.1:{}", free_port()));
                }
                c
            }
            Kind::Etcd => {
                let mut c = Command::new(etcd_bin());
                let peer = free_port();
                c.arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"));
                c.arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"));
                c.arg(format!("--initial-cluster=default=http://127.0.0.1:{peer}"));
                c
            }
        };
        cmd.arg(format!("--data-dir={}", data_dir.display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .args(extra)
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {kind:?}: {e}"));
        let s = Server {
            child,
            endpoint: format!("127.0.0.1:{port}"),
            dir,
            data_dir,
            log,
            kind,
        };
        s.wait_ready();
        s
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log.contains("ready to serve client requests") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{:?} did not become ready; log:\n{}",
            self.kind,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.endpoint)
    }

    /// Run etcdctl (v3 API) against this server; returns stdout, panics with stderr on failure.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let out = must_succeed(format!("etcdctl {args:?}"), self.etcdctl_raw(args));
        String::from_utf8(out).unwrap()
    }

    pub fn etcdctl_raw(&self, args: &[&str]) -> std::process::Output {
        Command::new(etcdctl_bin())
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint))
            .args(args)
            .output()
            .unwrap()
    }

    /// kill -9, keeping the data directory.
    pub fn kill9(mut self) -> (tempfile::TempDir, PathBuf) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        (dir, self.data_dir.clone())
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connect the Rust etcd client.
pub async fn client(s: &Server) -> etcd_client::Client {
    etcd_client::Client::connect([s.url()], None).await.unwrap()
}

/// A standalone multi-process k8sd cluster on loopback, formed with `--initial-cluster`.
/// Each member keeps its ports and data directory across kill -9 and restart.
pub struct K8sdCluster {
    pub dir: tempfile::TempDir,
    pub members: Vec<ClusterMember>,
    initial_cluster: String,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    /// The k8sd binary every member runs (the build under test unless a benchmark says).
    bin: PathBuf,
}

pub struct ClusterMember {
    pub name: String,
    pub peer_port: u16,
    pub client_port: u16,
    pub data_dir: PathBuf,
    pub child: Option<Child>,
    /// Log of the latest start (one file per start, so readiness is never read from an old one).
    pub log: PathBuf,
    starts: u32,
}

impl ClusterMember {
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
}

impl K8sdCluster {
    /// Start `n` members at once (the joiners retry until the first one is up) and wait until
    /// every one of them serves clients. `extra` goes to every member (e.g. Raft timeouts).
    pub fn start(n: usize, extra: &[&str]) -> K8sdCluster {
        K8sdCluster::start_with_env(n, extra, &[])
    }

    /// `start`, with environment variables set for every member process (e.g. `LD_PRELOAD`).
    pub fn start_with_env(n: usize, extra: &[&str], env: &[(&str, &str)]) -> K8sdCluster {
        K8sdCluster::start_prepared(n, extra, env, |_| {})
    }

    /// `start_with_env`, after `prepare` has run on each member's data directory path before
    /// the member first starts (a test mounts a filesystem there).
    pub fn start_prepared(
        n: usize,
        extra: &[&str],
        env: &[(&str, &str)],
        prepare: impl FnMut(&Path),
    ) -> K8sdCluster {
        K8sdCluster::start_bin_prepared(k8sd_bin(), n, extra, env, prepare)
    }

    /// `start_with_env` with another k8sd binary (a benchmark's baseline build).
    pub fn start_bin(bin: PathBuf, n: usize, extra: &[&str], env: &[(&str, &str)]) -> K8sdCluster {
        K8sdCluster::start_bin_prepared(bin, n, extra, env, |_| {})
    }

    fn start_bin_prepared(
        bin: PathBuf,
        n: usize,
        extra: &[&str],
        env: &[(&str, &str)],
        mut prepare: impl FnMut(&Path),
    ) -> K8sdCluster {
        let dir = tempfile::tempdir().unwrap();
        let members: Vec<ClusterMember> = (0..n)
            .map(|i| ClusterMember {
                name: format!("n{}", i + 1),
                peer_port: free_port(),
                client_port: free_port(),
                data_dir: dir.path().join(format!("n{}", i + 1)),
                child: None,
                log: PathBuf::new(),
                starts: 0,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = K8sdCluster {
            dir,
            members,
            initial_cluster,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            bin,
        };
        for m in &c.members {
            prepare(&m.data_dir);
        }
        for i in 0..n {
            c.spawn(i);
        }
        for i in 0..n {
            c.wait_ready(i, Duration::from_secs(60));
        }
        c
    }

    /// Start member `i` on its data directory and ports (fresh or after a kill).
    pub fn spawn(&mut self, i: usize) {
        let m = &mut self.members[i];
        assert!(m.child.is_none(), "{} is already running", m.name);
        m.starts += 1;
        m.log = self.dir.path().join(format!("{}-{}.log", m.name, m.starts));
        let out = std::fs::File::create(&m.log).unwrap();
        let child = Command::new(&self.bin)
            .arg("datastore")
            .arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", m.data_dir.display()))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{}", m.peer_port))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg(format!("--listen-client-urls={}", m.url()))
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        m.child = Some(child);
    }

    pub fn wait_ready(&self, i: usize, timeout: Duration) {
        let m = &self.members[i];
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if std::fs::read_to_string(&m.log)
                .unwrap_or_default()
                .contains("ready to serve client requests")
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{} did not become ready; log:\n{}",
            m.name,
            std::fs::read_to_string(&m.log).unwrap_or_default()
        );
    }

    /// kill -9 member `i`, keeping its data directory.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.url()).collect()
    }
}

impl Drop for K8sdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill9(i);
        }
    }
}

/// An etcd client for one endpoint whose requests give up after `timeout`.
pub async fn client_for(url: &str, timeout: Duration) -> etcd_client::Client {
    let opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(timeout);
    etcd_client::Client::connect([url], Some(opts)).await.unwrap()
}
