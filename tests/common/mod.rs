//! Shared helpers for integration tests: start a real `k8sd datastore` or Debian's etcd on a
//! free loopback port in a temporary directory, and stop it on drop.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
    Etcd,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn k8sd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_k8sd"))
}

/// Debian's etcd (package etcd-server). A missing binary is a loud failure, never a skip.
pub fn etcd_bin() -> PathBuf {
    let p = PathBuf::from("/usr/bin/etcd");
    assert!(p.exists(), "/usr/bin/etcd is missing: run scripts/setup-host.sh (installs etcd-server)");
    p
}

pub fn etcdctl_bin() -> PathBuf {
    let p = PathBuf::from("/usr/bin/etcdctl");
    assert!(p.exists(), "/usr/bin/etcdctl is missing: run scripts/setup-host.sh (installs etcd-client)");
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
        let url = format!("http://127.0.0.1:{port}");
        let log = dir.path().join(format!("server-{port}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = match kind {
            Kind::K8sd => {
                let mut c = Command::new(k8sd_bin());
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
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {kind:?}: {e}"));
        let s = Server { child, endpoint: format!("127.0.0.1:{port}"), dir, data_dir, log, kind };
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
        panic!("{:?} did not become ready; log:\n{}", self.kind, std::fs::read_to_string(&self.log).unwrap_or_default());
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.endpoint)
    }

    /// Run etcdctl (v3 API) against this server; returns stdout, panics with stderr on failure.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let out = self.etcdctl_raw(args);
        assert!(out.status.success(), "etcdctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
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
