//! The load shared by the datastore benchmarks (`benches/datastore.rs`, single server, and
//! `benches/cluster.rs`, three-node clusters), so "the same load" holds by construction.
//!
//! Every phase is bounded in count and in time, whichever ends first. The functions return
//! per-operation latencies and the phase's wall time; the callers turn them into `Row`s.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};

pub const VALUE_SIZE: usize = 1024;
pub const MAX_OPS: usize = 3000;
pub const MAX_TIME: Duration = Duration::from_secs(10);
pub const LIST_KEYS: usize = 5000;
pub const PAGE: i64 = 500;

/// One measured cell.
pub struct Row {
    pub phase: String,
    pub server: String,
    pub ops: usize,
    pub secs: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub rss_kib: u64,
}

impl Row {
    pub fn new(phase: &str, server: &str, mut lat: Vec<Duration>, secs: f64, rss_kib: u64) -> Row {
        lat.sort();
        Row {
            phase: phase.to_string(),
            server: server.to_string(),
            ops: lat.len(),
            secs,
            p50: percentile(&lat, 0.50),
            p99: percentile(&lat, 0.99),
            rss_kib,
        }
    }

    pub fn throughput(&self) -> f64 {
        if self.ops == 0 {
            0.0
        } else {
            self.ops as f64 / self.secs
        }
    }
}

pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// Runs `op(worker, i)` from `conc` workers until `max_ops` ops or `max_time` in total.
pub async fn drive<F, Fut>(conc: usize, max_ops: usize, max_time: Duration, op: F) -> (Vec<Duration>, f64)
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..conc {
        let (op, next) = (op.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= max_ops || start.elapsed() >= max_time {
                    break;
                }
                let t = Instant::now();
                op(w, i).await;
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    (all, start.elapsed().as_secs_f64())
}

fn value() -> Arc<Vec<u8>> {
    Arc::new(vec![b'v'; VALUE_SIZE])
}

/// kube-apiserver's Create: `Txn{mod_revision(key) == 0 → Put(key, 1 KiB)}`, fresh keys.
/// `tag` keeps the keys of different runs on one server apart.
pub async fn create(client: &Client, conc: usize, tag: &str) -> (Vec<Duration>, f64) {
    let (c, v, tag) = (client.clone(), value(), tag.to_string());
    drive(conc, MAX_OPS, MAX_TIME, move |_, i| {
        let (mut c, v) = (c.clone(), v.clone());
        let key = format!("/registry/bench/create-{tag}c{conc}/{i}");
        async move {
            let t = Txn::new()
                .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.as_str(), v.as_slice(), None)]);
            assert!(c.txn(t).await.unwrap().succeeded());
        }
    })
    .await
}

/// A plain `Put(key, 1 KiB)` of fresh keys: what etcd's own `benchmark put` sends, so the
/// figure compares with that tool's.
pub async fn put(client: &Client, conc: usize, tag: &str) -> (Vec<Duration>, f64) {
    let (c, v, tag) = (client.clone(), value(), tag.to_string());
    drive(conc, MAX_OPS, MAX_TIME, move |_, i| {
        let (mut c, v) = (c.clone(), v.clone());
        let key = format!("/registry/bench/put-{tag}c{conc}/{i}");
        async move {
            c.put(key, v.as_slice(), None).await.unwrap();
        }
    })
    .await
}

/// CPU time (user + system, all threads) a process has used so far, from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis
    // start at field 3, so utime and stime (fields 14 and 15) are the 12th and 13th of them.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf only reads a constant of the running system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Duration::from_secs_f64(ticks as f64 / hz.max(1) as f64)
}

/// GuaranteedUpdate: `Txn{mod_revision(key) == R → Put; else Range}`, each caller updating its
/// own key with the revision it last wrote.
pub async fn update(client: &Client, conc: usize, tag: &str) -> (Vec<Duration>, f64) {
    let value = value();
    let revs: Arc<Vec<std::sync::Mutex<i64>>> =
        Arc::new((0..conc).map(|_| std::sync::Mutex::new(0)).collect());
    for (w, rev) in revs.iter().enumerate() {
        let r = client
            .clone()
            .put(
                format!("/registry/bench/update-{tag}c{conc}/{w}"),
                value.as_slice(),
                None,
            )
            .await;
        *rev.lock().unwrap() = r.unwrap().header().unwrap().revision();
    }
    let (c, v, tag) = (client.clone(), value.clone(), tag.to_string());
    drive(conc, MAX_OPS, MAX_TIME, move |w, _| {
        let (mut c, v, revs) = (c.clone(), v.clone(), revs.clone());
        let key = format!("/registry/bench/update-{tag}c{conc}/{w}");
        async move {
            let r = *revs[w].lock().unwrap();
            let t = Txn::new()
                .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, r)])
                .and_then([TxnOp::put(key.as_str(), v.as_slice(), None)])
                .or_else([TxnOp::get(key.as_str(), None)]);
            let resp = c.txn(t).await.unwrap();
            assert!(resp.succeeded(), "update of {key} at {r} conflicted");
            *revs[w].lock().unwrap() = resp.header().unwrap().revision();
        }
    })
    .await
}

/// Writes `LIST_KEYS` keys with 1 KiB values under `/registry/pods/ns/`, 100 per Txn (not
/// measured), and returns the revision to pin list pages to.
pub async fn fill_list_prefix(client: &Client) -> i64 {
    let value = value();
    for batch in 0..LIST_KEYS / 100 {
        let ops: Vec<TxnOp> = (0..100)
            .map(|j| {
                TxnOp::put(
                    format!("/registry/pods/ns/pod-{:05}", batch * 100 + j),
                    value.as_slice(),
                    None,
                )
            })
            .collect();
        client.clone().txn(Txn::new().and_then(ops)).await.unwrap();
    }
    let first = client
        .clone()
        .get(
            "/registry/pods/",
            Some(GetOptions::new().with_prefix().with_limit(1)),
        )
        .await;
    first.unwrap().header().unwrap().revision()
}

/// Pages `Range{key, range_end, limit=500, revision=R}` of the prefix written by
/// `fill_list_prefix`. Worker `w` sends through `clients[w % clients.len()]`, so one client is
/// one node and several spread the callers over nodes. Linearizable (etcd's default).
pub async fn list(
    clients: &[Client],
    conc: usize,
    list_rev: i64,
    max_ops: usize,
    max_time: Duration,
) -> (Vec<Duration>, f64) {
    let pages: Arc<Vec<String>> = Arc::new(
        (0..LIST_KEYS / PAGE as usize)
            .map(|p| format!("/registry/pods/ns/pod-{:05}", p * PAGE as usize))
            .collect(),
    );
    let clients: Arc<Vec<Client>> = Arc::new(clients.to_vec());
    drive(conc, max_ops, max_time, move |w, i| {
        let (mut c, pages) = (clients[w % clients.len()].clone(), pages.clone());
        async move {
            let start = pages[i % pages.len()].clone();
            let opts = GetOptions::new()
                .with_range("/registry/pods0")
                .with_limit(PAGE)
                .with_revision(list_rev);
            let r = c.get(start, Some(opts)).await.unwrap();
            assert_eq!(r.kvs().len(), PAGE as usize);
        }
    })
    .await
}

/// Every regular file under `dir` (recursively) with its size in bytes, sorted by path relative
/// to `dir`: the data directory's footprint, file by file (state.db and its -wal, log.db and its
/// -wal, etcd's snap/db and wal segments).
pub fn dir_files(dir: &std::path::Path) -> Vec<(String, u64)> {
    fn walk(root: &std::path::Path, d: &std::path::Path, out: &mut Vec<(String, u64)>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => walk(root, &p, out),
                Ok(m) if m.is_file() => {
                    let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
                    out.push((rel, m.len()));
                }
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

pub fn mib(bytes: u64) -> String {
    format!("{:.2}", bytes as f64 / (1024.0 * 1024.0))
}
