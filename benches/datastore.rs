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
//! `K8SD_TEST_RAFT=1` runs k8sd as a Raft group of one (what `k8sd init` runs) instead of
//! without peers; `K8SD_BENCH_BASELINE=<path to a k8sd binary>` adds that build to the same run,
//! between etcd and this one, for before/after figures.
//!
//! Reported: throughput, p50 and p99 latency, and the server's RSS (VmRSS) after each phase;
//! then every file in each server's data directory with its size right after the load and
//! again after `K8SD_BENCH_IDLE_SECS` (default 60) seconds of idle, the server still running,
//! so WAL files that do not shrink once the load ends show. Nothing is asserted; the numbers go
//! into docs/benchmarks.md.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation, clippy::cast_sign_loss)]

#[path = "../tests/common/mod.rs"]
mod common;
mod load;

use std::time::{Duration, Instant};

use common::{Kind, Server};
use etcd_client::WatchOptions;
use load::{MAX_OPS, MAX_TIME, PAGE, Row, dir_files, mib, ms, rss_kib};

const WATCHERS: usize = 100;
const WATCH_WRITES: usize = 200;

/// One server's data directory, file by file, right after the load and after the idle wait.
struct Footprint {
    server: &'static str,
    after_load: Vec<(String, u64)>,
    after_idle: Vec<(String, u64)>,
}

fn idle_secs() -> u64 {
    std::env::var("K8SD_BENCH_IDLE_SECS").map_or(60, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("K8SD_BENCH_IDLE_SECS={v} is not a whole number of seconds"))
    })
}

fn row(phase: &str, server: &str, lat: Vec<Duration>, secs: f64, pid: u32) -> Row {
    Row::new(phase, server, lat, secs, rss_kib(pid))
}

async fn bench_server(kind: Kind, name: &'static str, rows: &mut Vec<Row>, files: &mut Vec<Footprint>) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let data = dir.path().join("data");
    let server = Server::start_in(kind, dir, data.clone(), &[]);
    let pid = server.child.id();
    let client = common::client(&server).await;
    rows.push(row("idle", name, Vec::new(), 1.0, pid));

    for conc in [1, 16, 256] {
        let (lat, secs) = load::create(&client, conc, "").await;
        rows.push(row(&format!("create c{conc}"), name, lat, secs, pid));
    }
    for conc in [1, 16, 256] {
        let (lat, secs) = load::update(&client, conc, "").await;
        rows.push(row(&format!("update c{conc}"), name, lat, secs, pid));
    }
    let list_rev = load::fill_list_prefix(&client).await;
    for conc in [1, 16] {
        let (lat, secs) = load::list(std::slice::from_ref(&client), conc, list_rev, MAX_OPS, MAX_TIME).await;
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
    let after_load = dir_files(&data);
    tokio::time::sleep(Duration::from_secs(idle_secs())).await;
    files.push(Footprint {
        server: name,
        after_load,
        after_idle: dir_files(&data),
    });
    // K8SD_RAFT_STAGES=1 (inherited by the server): show its per-stage write timing.
    if std::env::var_os("K8SD_RAFT_STAGES").is_some() {
        let log = std::fs::read_to_string(&server.log).unwrap_or_default();
        for line in log.lines().filter(|l| l.contains("raft write stages")) {
            println!("{name}: {line}");
        }
    }
    drop(server);
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is accepted and ignored.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    let mut files = Vec::new();
    rt.block_on(async {
        bench_server(Kind::Etcd, "etcd 3.4.23", &mut rows, &mut files).await;
        // K8SD_BENCH_BASELINE=<k8sd binary>: an older build in the same run, for before/after.
        if std::env::var_os("K8SD_BENCH_BASELINE").is_some() {
            bench_server(Kind::K8sdBaseline, "k8sd baseline", &mut rows, &mut files).await;
        }
        bench_server(Kind::K8sd, "k8sd", &mut rows, &mut files).await;
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
    print_footprints(&files);
}

fn print_footprints(files: &[Footprint]) {
    println!();
    println!(
        "Data directory, file by file (MiB): right after the load / after {} s idle",
        idle_secs()
    );
    println!();
    println!("| server | file | after load | after idle |");
    println!("|---|---|---:|---:|");
    for f in files {
        let mut names: Vec<&String> = f.after_load.iter().chain(&f.after_idle).map(|(n, _)| n).collect();
        names.sort();
        names.dedup();
        let size = |v: &[(String, u64)], n: &str| {
            v.iter()
                .find(|(m, _)| m == n)
                .map_or("-".into(), |(_, b)| mib(*b))
        };
        for n in names {
            println!(
                "| {} | {} | {} | {} |",
                f.server,
                n,
                size(&f.after_load, n),
                size(&f.after_idle, n)
            );
        }
        let total = |v: &[(String, u64)]| mib(v.iter().map(|(_, b)| b).sum());
        println!(
            "| {} | **total** | {} | {} |",
            f.server,
            total(&f.after_load),
            total(&f.after_idle)
        );
    }
}
