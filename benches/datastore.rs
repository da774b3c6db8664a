//! Datastore benchmark: `k8sd datastore` and Debian's etcd side by side, same load, same machine.
//!
//! Run with `cargo bench --bench datastore` (release build). Both servers listen on loopback only
//! and keep their data under cargo's target tmp dir (a real disk, so fsyncs cost what they cost).
//! The servers run one after the other, so they never compete for the two cores.
//!
//! Phases, each bounded in count and in time (whichever ends first):
//! - `create cN`: kube-apiserver's Create, `Txn{mod_revision(key) == 0 → Put(key, 1 KiB)}`, with N
//!   concurrent callers on one connection (as the apiserver shares one).
//! - `update cN`: GuaranteedUpdate, `Txn{mod_revision(key) == R → Put; else Range}`, each caller
//!   updating its own key with the revision it last wrote.
//! - `list cN`: pages of a 5000-key prefix list with limit 500, pinned to one revision.
//! - `watch fan-out`: 100 watch streams on one prefix; a writer puts 200 keys, 5 ms apart, each
//!   carrying its send time; latency is commit-to-delivery per watcher and event.
//!
//! Reported: throughput, p50 and p99 latency, and the server's RSS (VmRSS) after each phase.
//! Nothing is asserted; the numbers go into docs/benchmarks.md.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation, clippy::cast_sign_loss)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Kind, Server};
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, WatchOptions};

const VALUE_SIZE: usize = 1024;
const MAX_OPS: usize = 3000;
const MAX_TIME: Duration = Duration::from_secs(10);
const LIST_KEYS: usize = 5000;
const PAGE: i64 = 500;
const WATCHERS: usize = 100;
const WATCH_WRITES: usize = 200;

struct Row {
    phase: String,
    server: &'static str,
    ops: usize,
    secs: f64,
    p50: Duration,
    p99: Duration,
    rss_kib: u64,
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn row(phase: &str, server: &'static str, mut lat: Vec<Duration>, secs: f64, pid: u32) -> Row {
    lat.sort();
    Row {
        phase: phase.to_string(),
        server,
        ops: lat.len(),
        secs,
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
        rss_kib: rss_kib(pid),
    }
}

/// Runs `op(worker, i)` from `conc` workers until `MAX_OPS` ops or `MAX_TIME` in total.
async fn drive<F, Fut>(conc: usize, max_ops: usize, op: F) -> (Vec<Duration>, f64)
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
                if i >= max_ops || start.elapsed() >= MAX_TIME {
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

async fn bench_server(kind: Kind, name: &'static str, rows: &mut Vec<Row>) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let data = dir.path().join("data");
    let server = Server::start_in(kind, dir, data, &[]);
    let pid = server.child.id();
    let client = common::client(&server).await;
    rows.push(row("idle", name, Vec::new(), 1.0, pid));
    let value: Arc<Vec<u8>> = Arc::new(vec![b'v'; VALUE_SIZE]);

    for conc in [1, 16, 256] {
        let (c, v) = (client.clone(), value.clone());
        let (lat, secs) = drive(conc, MAX_OPS, move |_, i| {
            let (mut c, v) = (c.clone(), v.clone());
            async move {
                let key = format!("/registry/bench/create-c{conc}/{i}");
                let t = Txn::new()
                    .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key.as_str(), v.as_slice(), None)]);
                assert!(c.txn(t).await.unwrap().succeeded());
            }
        })
        .await;
        rows.push(row(&format!("create c{conc}"), name, lat, secs, pid));
    }

    for conc in [1, 16, 256] {
        // Each worker owns one key and remembers the revision it last wrote.
        let revs: Arc<Vec<std::sync::Mutex<i64>>> =
            Arc::new((0..conc).map(|_| std::sync::Mutex::new(0)).collect());
        for w in 0..conc {
            let r = client
                .clone()
                .put(
                    format!("/registry/bench/update-c{conc}/{w}"),
                    value.as_slice(),
                    None,
                )
                .await;
            *revs[w].lock().unwrap() = r.unwrap().header().unwrap().revision();
        }
        let (c, v, revs2) = (client.clone(), value.clone(), revs.clone());
        let (lat, secs) = drive(conc, MAX_OPS, move |w, _| {
            let (mut c, v, revs) = (c.clone(), v.clone(), revs2.clone());
            async move {
                let key = format!("/registry/bench/update-c{conc}/{w}");
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
        .await;
        rows.push(row(&format!("update c{conc}"), name, lat, secs, pid));
    }

    // 5000 keys under one prefix, written 100 per Txn (not measured).
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
    let list_rev = first.unwrap().header().unwrap().revision();
    let pages: Arc<Vec<String>> = Arc::new(
        (0..LIST_KEYS / PAGE as usize)
            .map(|p| format!("/registry/pods/ns/pod-{:05}", p * PAGE as usize))
            .collect(),
    );
    for conc in [1, 16] {
        let (c, pages) = (client.clone(), pages.clone());
        let (lat, secs) = drive(conc, MAX_OPS, move |_, i| {
            let (mut c, pages) = (c.clone(), pages.clone());
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
        .await;
        rows.push(row(&format!("list limit {PAGE} c{conc}"), name, lat, secs, pid));
    }

    // Watch fan-out.
    let base = Instant::now();
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let mut ws = client
            .clone()
            .watch("/registry/watch/", Some(WatchOptions::new().with_prefix()))
            .await
            .unwrap();
        let created = ws.message().await.unwrap().unwrap();
        assert!(created.created());
        watchers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while lat.len() < WATCH_WRITES {
                let msg = match tokio::time::timeout_at(deadline, ws.message()).await {
                    Ok(Ok(Some(m))) => m,
                    _ => break,
                };
                let now = base.elapsed();
                for e in msg.events() {
                    let sent: u64 = e.kv().unwrap().value_str().unwrap().parse().unwrap();
                    lat.push(now.saturating_sub(Duration::from_nanos(sent)));
                }
            }
            lat
        }));
    }
    let start = Instant::now();
    let mut c = client.clone();
    for i in 0..WATCH_WRITES {
        let sent = base.elapsed().as_nanos() as u64;
        c.put(format!("/registry/watch/k{i}"), sent.to_string(), None)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut lat = Vec::new();
    for w in watchers {
        lat.extend(w.await.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    let delivered = lat.len();
    rows.push(row(
        &format!("watch fan-out {WATCHERS}x{WATCH_WRITES}"),
        name,
        lat,
        secs,
        pid,
    ));
    if delivered != WATCHERS * WATCH_WRITES {
        eprintln!(
            "warning: {name} delivered {delivered} of {} watch events",
            WATCHERS * WATCH_WRITES
        );
    }
    drop(server);
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is accepted and ignored.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    rt.block_on(async {
        bench_server(Kind::Etcd, "etcd 3.4.23", &mut rows).await;
        bench_server(Kind::K8sd, "k8sd", &mut rows).await;
    });
    let mut phases: Vec<String> = Vec::new();
    for r in &rows {
        if !phases.contains(&r.phase) {
            phases.push(r.phase.clone());
        }
    }
    println!("| phase | server | ops | throughput (ops/s) | p50 (ms) | p99 (ms) | RSS after (MiB) |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for p in &phases {
        for r in rows.iter().filter(|r| &r.phase == p) {
            let tput = if r.ops == 0 {
                "-".to_string()
            } else {
                format!("{:.0}", r.ops as f64 / r.secs)
            };
            let (p50, p99) = if r.ops == 0 {
                ("-".into(), "-".into())
            } else {
                (ms(r.p50), ms(r.p99))
            };
            println!(
                "| {} | {} | {} | {} | {} | {} | {:.1} |",
                r.phase,
                r.server,
                r.ops,
                tput,
                p50,
                p99,
                r.rss_kib as f64 / 1024.0
            );
        }
    }
}
