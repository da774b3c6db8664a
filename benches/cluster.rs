//! Cluster benchmark: a 3-node `k8sd datastore` cluster and a 3-node cluster of
//! Debian's etcd, side by side on loopback.
//!
//! Run with `cargo bench --bench cluster -- SECTION...`, SECTION one of:
//! - `writes`: the load of `benches/datastore.rs` (create, update, list; `benches/load/`) sent to
//!   the leader, plus creates sent to a follower (forwarded by the follower to the leader).
//! - `reads`: linearizable reads (single-key Get, and 500-key list pages) from the same number
//!   of callers, all sent to the leader or spread over the three nodes.
//! - `failover`: kill -9 of the leader, then the time to the first acknowledged write through a
//!   client connected to the two survivors; the killed node is restarted between rounds.
//! - `puts`: plain Puts of 1 KiB to the leader at c1, c16 and c256 (etcd's `benchmark put`),
//!   with the CPU time each write cost the leader, a follower and all three members (user +
//!   system, from `/proc/<pid>/stat` before and after the cell). `K8SD_BENCH_PERF=<dir>` also
//!   records `perf record -g` of the leader and of that follower during every k8sd cell into
//!   `<dir>/<server>-<phase>-<leader|follower>-r<round>.data`.
//! - `stall`: a write load while fsyncs are slow (a `dd` disk hog, or `benches/slow-fsync.c`
//!   preloaded into k8sd); counts leader changes. It is what the default Raft timeouts were
//!   checked against (docs/design/raft.md, "Failover timing").
//!
//! No argument runs all but `stall`. The machine is assumed to be shared, so the servers
//! alternate:
//! `writes` and `reads` run `K8SD_BENCH_ROUNDS` rounds (default 3), each starting fresh
//! clusters, etcd first in odd rounds and k8sd first in even ones, one cluster at a time;
//! `failover` keeps both clusters up and alternates kills between them,
//! `K8SD_BENCH_FAILOVERS` per server (default 7). Medians over rounds are printed.
//! `K8SD_BENCH_RAFT_FLAGS` (space-separated) is passed to every k8sd member, e.g.
//! `--election-timeout=250`; `K8SD_BENCH_ETCD_FLAGS` likewise to every etcd member;
//! `K8SD_BENCH_ONLY=k8sd` (or `etcd`) runs one server only. `K8SD_BENCH_BASELINE=<k8sd binary>`
//! adds that build as a third server, `k8sd baseline`, in the same rotation (before/after).
//!
//! Nothing is asserted; the numbers go into docs/benchmarks.md.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation, clippy::cast_sign_loss)]

#[path = "../tests/common/mod.rs"]
mod common;
mod load;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{K8sdCluster, client_for, etcd_bin, free_port, k8sd_baseline_bin, k8sd_bin};
use etcd_client::Client;
use load::{MAX_OPS, MAX_TIME, PAGE, Row, rss_kib};

const ETCD: &str = "etcd 3.4.23";
const K8SD: &str = "k8sd";
const BASELINE: &str = "k8sd baseline";
/// Reads are cheap; count them longer than writes so a cell lasts long enough to mean something.
const READ_OPS: usize = 30_000;
const READ_TIME: Duration = Duration::from_secs(5);

/// Three etcd members on loopback, each keeping its ports and data directory across kill -9.
struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<EtcdMember>,
    initial_cluster: String,
}

struct EtcdMember {
    name: String,
    peer_port: u16,
    client_port: u16,
    child: Option<Child>,
    log: PathBuf,
    starts: u32,
}

impl EtcdCluster {
    fn start() -> EtcdCluster {
        let dir = tempfile::tempdir().unwrap();
        let members: Vec<EtcdMember> = (1..=3)
            .map(|i| EtcdMember {
                name: format!("e{i}"),
                peer_port: free_port(),
                client_port: free_port(),
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
        let mut c = EtcdCluster {
            dir,
            members,
            initial_cluster,
        };
        for i in 0..3 {
            c.spawn(i);
        }
        for i in 0..3 {
            c.wait_ready(i);
        }
        c
    }

    fn spawn(&mut self, i: usize) {
        let m = &mut self.members[i];
        m.starts += 1;
        m.log = self.dir.path().join(format!("{}-{}.log", m.name, m.starts));
        let out = std::fs::File::create(&m.log).unwrap();
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let child = Command::new(etcd_bin())
            .arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", self.dir.path().join(&m.name).display()))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg("--initial-cluster-state=new")
            .arg("--initial-cluster-token=bench")
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .args(
                std::env::var("K8SD_BENCH_ETCD_FLAGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        m.child = Some(child);
    }

    fn wait_ready(&self, i: usize) {
        let m = &self.members[i];
        let deadline = Instant::now() + Duration::from_secs(60);
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

    fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill9(i);
        }
    }
}

/// Either cluster, behind the few operations the benchmark needs.
enum Cluster {
    Etcd(EtcdCluster),
    K8sd(K8sdCluster),
}

impl Cluster {
    fn start(server: &str) -> Cluster {
        if server == ETCD {
            return Cluster::Etcd(EtcdCluster::start());
        }
        let flags = std::env::var("K8SD_BENCH_RAFT_FLAGS").unwrap_or_default();
        let extra: Vec<&str> = flags.split_whitespace().collect();
        let bin = if server == BASELINE {
            k8sd_baseline_bin()
        } else {
            k8sd_bin()
        };
        Cluster::K8sd(K8sdCluster::start_bin(bin, 3, &extra, &[]))
    }

    fn urls(&self) -> Vec<String> {
        match self {
            Cluster::Etcd(c) => c
                .members
                .iter()
                .map(|m| format!("http://127.0.0.1:{}", m.client_port))
                .collect(),
            Cluster::K8sd(c) => c.endpoints(),
        }
    }

    fn running(&self, i: usize) -> bool {
        match self {
            Cluster::Etcd(c) => c.members[i].child.is_some(),
            Cluster::K8sd(c) => c.running(i),
        }
    }

    /// The members' process ids, `None` for one not running.
    fn pids(&self) -> Vec<Option<u32>> {
        match self {
            Cluster::Etcd(c) => c
                .members
                .iter()
                .map(|m| m.child.as_ref().map(Child::id))
                .collect(),
            Cluster::K8sd(c) => c
                .members
                .iter()
                .map(|m| m.child.as_ref().map(Child::id))
                .collect(),
        }
    }

    /// Sum of the members' RSS.
    fn rss_kib(&self) -> u64 {
        self.pids().into_iter().flatten().map(rss_kib).sum()
    }

    /// Each member's CPU time so far (zero for one not running).
    fn cpu_times(&self) -> Vec<Duration> {
        self.pids()
            .into_iter()
            .map(|p| p.map_or(Duration::ZERO, load::cpu_time))
            .collect()
    }

    fn kill9(&mut self, i: usize) {
        match self {
            Cluster::Etcd(c) => c.kill9(i),
            Cluster::K8sd(c) => c.kill9(i),
        }
    }

    fn restart(&mut self, i: usize) {
        match self {
            Cluster::Etcd(c) => {
                c.spawn(i);
                c.wait_ready(i);
            }
            Cluster::K8sd(c) => {
                c.spawn(i);
                c.wait_ready(i, Duration::from_secs(60));
            }
        }
    }
}

/// The index of the leader every running member agrees on (polled for up to 60 s).
async fn leader_index(c: &Cluster) -> usize {
    let urls = c.urls();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut seen = Vec::new();
        for (i, url) in urls.iter().enumerate() {
            if !c.running(i) {
                continue;
            }
            let mut cl = client_for(url, Duration::from_secs(1)).await;
            if let Ok(s) = cl.status().await {
                seen.push((i, s.header().map(|h| h.member_id()).unwrap_or(0), s.leader()));
            } else {
                seen.push((i, 0, 0));
            }
        }
        let leader = seen.first().map(|s| s.2).unwrap_or(0);
        if leader != 0
            && seen.iter().all(|s| s.2 == leader)
            && let Some(s) = seen.iter().find(|s| s.1 == leader)
        {
            return s.0;
        }
        assert!(
            Instant::now() < deadline,
            "no agreed leader within 60 s: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn connect(url: &str) -> Client {
    client_for(url, Duration::from_secs(30)).await
}

/// Linearizable single-key Gets of a 1 KiB value; worker `w` uses `clients[w % len]`.
async fn get(clients: &[Client], conc: usize) -> (Vec<Duration>, f64) {
    let clients: Arc<Vec<Client>> = Arc::new(clients.to_vec());
    load::drive(conc, READ_OPS, READ_TIME, move |w, i| {
        let mut c = clients[w % clients.len()].clone();
        async move {
            let r = c
                .get(format!("/registry/bench/read/{}", i % 100), None)
                .await
                .unwrap();
            assert_eq!(r.kvs().len(), 1);
        }
    })
    .await
}

async fn writes(server: &str, rows: &mut Vec<Row>) {
    let c = Cluster::start(server);
    let li = leader_index(&c).await;
    let urls = c.urls();
    let leader = connect(&urls[li]).await;
    let follower = connect(&urls[(li + 1) % 3]).await;
    for conc in [1, 16, 256] {
        let (lat, secs) = load::create(&leader, conc, "").await;
        rows.push(Row::new(
            &format!("create c{conc}"),
            server,
            lat,
            secs,
            c.rss_kib(),
        ));
    }
    let (lat, secs) = load::create(&follower, 16, "via-follower-").await;
    rows.push(Row::new(
        "create c16 via a follower",
        server,
        lat,
        secs,
        c.rss_kib(),
    ));
    for conc in [1, 16, 256] {
        let (lat, secs) = load::update(&leader, conc, "").await;
        rows.push(Row::new(
            &format!("update c{conc}"),
            server,
            lat,
            secs,
            c.rss_kib(),
        ));
    }
    let list_rev = load::fill_list_prefix(&leader).await;
    for conc in [1, 16] {
        let (lat, secs) = load::list(std::slice::from_ref(&leader), conc, list_rev, MAX_OPS, MAX_TIME).await;
        rows.push(Row::new(
            &format!("list limit {PAGE} c{conc}"),
            server,
            lat,
            secs,
            c.rss_kib(),
        ));
    }
    assert_eq!(
        leader_index(&c).await,
        li,
        "{server}: the leader changed during the write phases"
    );
}

/// CPU time per acknowledged write in one cell, in ms: the leader's, one follower's, all three.
struct CpuRow {
    phase: String,
    server: String,
    leader: f64,
    follower: f64,
    all: f64,
}

/// `perf record -g` of one process until dropped (SIGINT, so perf writes its file whole).
struct Perf(Child);

impl Perf {
    /// A recording of `pid` into `<K8SD_BENCH_PERF>/<name>.data`, or nothing without the variable.
    fn start(pid: Option<u32>, name: &str) -> Option<Perf> {
        let dir = PathBuf::from(std::env::var_os("K8SD_BENCH_PERF")?);
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join(format!("{}.data", name.replace(' ', "-")));
        let child = Command::new("perf")
            .args([
                "record",
                "-q",
                "-F",
                "999",
                "-g",
                "--call-graph",
                "dwarf,16384",
                "-o",
            ])
            .arg(&out)
            .arg("-p")
            .arg(pid?.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("K8SD_BENCH_PERF is set but perf does not start: install linux-perf");
        // perf needs a moment to attach before the load starts.
        std::thread::sleep(Duration::from_millis(300));
        Some(Perf(child))
    }
}

impl Drop for Perf {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.0.wait();
    }
}

/// Plain Puts to the leader at c1, c16 and c256, with each write's CPU cost on every member.
async fn puts(server: &str, round: usize, rows: &mut Vec<Row>, cpu: &mut Vec<CpuRow>) {
    let c = Cluster::start(server);
    let li = leader_index(&c).await;
    let fi = (li + 1) % 3;
    let leader = connect(&c.urls()[li]).await;
    for conc in [1, 16, 256] {
        let phase = format!("put c{conc}");
        let pids = c.pids();
        let profiles = if server == ETCD {
            Vec::new()
        } else {
            [(li, "leader"), (fi, "follower")]
                .into_iter()
                .filter_map(|(i, role)| Perf::start(pids[i], &format!("{server}-{phase}-{role}-r{round}")))
                .collect()
        };
        let before = c.cpu_times();
        let (lat, secs) = load::put(&leader, conc, "").await;
        let after = c.cpu_times();
        drop(profiles);
        let per_write = |i: usize| (after[i] - before[i]).as_secs_f64() * 1000.0 / lat.len().max(1) as f64;
        cpu.push(CpuRow {
            phase: phase.clone(),
            server: server.to_string(),
            leader: per_write(li),
            follower: per_write(fi),
            all: (0..3).map(per_write).sum(),
        });
        rows.push(Row::new(&phase, server, lat, secs, c.rss_kib()));
    }
    assert_eq!(
        leader_index(&c).await,
        li,
        "{server}: the leader changed during the put phases"
    );
}

fn print_cpu(rounds: &[Vec<CpuRow>]) {
    println!(
        "\n## CPU per acknowledged put (ms, user + system): median of {} rounds\n",
        rounds.len()
    );
    println!("| phase | server | leader | follower | all three | leader per round |");
    println!("|---|---|---:|---:|---:|---|");
    let mut keys: Vec<(String, String)> = Vec::new();
    for r in rounds.iter().flatten() {
        let k = (r.phase.clone(), r.server.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.sort_by_key(|(p, _)| p.trim_start_matches("put c").parse::<u32>().unwrap_or(0));
    for (phase, server) in keys {
        let cells: Vec<&CpuRow> = rounds
            .iter()
            .flatten()
            .filter(|r| r.phase == phase && r.server == server)
            .collect();
        let col = |f: fn(&CpuRow) -> f64| median(&cells.iter().map(|r| f(r)).collect::<Vec<_>>());
        let per: Vec<String> = cells.iter().map(|r| format!("{:.3}", r.leader)).collect();
        println!(
            "| {phase} | {server} | {:.3} | {:.3} | {:.3} | {} |",
            col(|r| r.leader),
            col(|r| r.follower),
            col(|r| r.all),
            per.join(", ")
        );
    }
}

async fn reads(server: &str, rows: &mut Vec<Row>) {
    let c = Cluster::start(server);
    let li = leader_index(&c).await;
    let urls = c.urls();
    let leader = connect(&urls[li]).await;
    for k in 0..100 {
        leader
            .clone()
            .put(
                format!("/registry/bench/read/{k}"),
                vec![b'v'; load::VALUE_SIZE],
                None,
            )
            .await
            .unwrap();
    }
    let list_rev = load::fill_list_prefix(&leader).await;
    // Three connections either way, so the only difference is where they go.
    let mut to_leader = Vec::new();
    let mut spread = Vec::new();
    for i in 0..3 {
        to_leader.push(connect(&urls[li]).await);
        spread.push(connect(&urls[(li + i) % 3]).await);
    }
    for (how, clients) in [("leader", &to_leader), ("spread", &spread)] {
        let (lat, secs) = get(clients, 48).await;
        rows.push(Row::new(
            &format!("get c48, {how}"),
            server,
            lat,
            secs,
            c.rss_kib(),
        ));
        let (lat, secs) = load::list(clients, 15, list_rev, READ_OPS, READ_TIME).await;
        rows.push(Row::new(
            &format!("list limit {PAGE} c15, {how}"),
            server,
            lat,
            secs,
            c.rss_kib(),
        ));
    }
}

/// Kill -9 the leader and time the first acknowledged write through either survivor. Probes
/// (one Put each) start every 20 ms on both survivors and run concurrently, so neither a client
/// timeout nor a server-side retry pause of one probe delays the measurement.
async fn failover_once(c: &mut Cluster, n: usize) -> Duration {
    let li = leader_index(c).await;
    let urls = c.urls();
    let mut survivors = Vec::new();
    for i in (0..3).filter(|i| *i != li) {
        let mut cl = connect(&urls[i]).await;
        cl.put("/bench/failover/warm", "x", None).await.unwrap();
        survivors.push(cl);
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut probes = tokio::task::JoinSet::new();
    let killed_at = Instant::now();
    c.kill9(li);
    let mut k = 0u64;
    let took = loop {
        for cl in &survivors {
            let (mut cl, tx) = (cl.clone(), tx.clone());
            k += 1;
            let key = format!("/bench/failover/{n}/{k}");
            probes.spawn(async move {
                if cl.put(key, "x", None).await.is_ok() {
                    let _ = tx.send(Instant::now());
                }
            });
        }
        tokio::select! {
            Some(at) = rx.recv() => break at - killed_at,
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(60),
            "no write acknowledged within 60 s"
        );
    };
    probes.abort_all();
    c.restart(li);
    leader_index(c).await;
    // Let the restarted member catch up and every follower's lease settle before the next kill.
    tokio::time::sleep(Duration::from_secs(2)).await;
    took
}

/// Write load (Put of 1 KiB from 16 callers to the leader, errors counted, not fatal) for
/// `STALL_TIME` while two `dd` streams write 1 GiB each with direct IO, twice, on the same
/// disk, so the servers' fsyncs queue behind them (`K8SD_BENCH_HOG=0`: no `dd`). Reports how
/// often the leader changed (Raft term) and the write latencies. With `benches/slow-fsync.c`
/// preloaded, k8sd's every fsync takes `K8SD_FSYNC_DELAY_MS` longer.
const STALL_TIME: Duration = Duration::from_secs(24);

async fn stall(server: &str) -> String {
    let c = Cluster::start(server);
    let li = leader_index(&c).await;
    let urls = c.urls();
    let leader = connect(&urls[li]).await;
    let term = async |cl: &Client| cl.clone().status().await.map(|s| s.raft_term()).unwrap_or(0);
    let term_before = term(&leader).await;
    let hog_dir = tempfile::tempdir().unwrap();
    let hog = hog_dir.path().join("hog");
    let hog_on = std::env::var("K8SD_BENCH_HOG").map(|v| v != "0").unwrap_or(true);
    let hog_thread = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        for _ in 0..(if hog_on { 2 } else { 0 }) {
            // Two direct-IO streams of 1 GiB keep the disk queue full, so every fsync of the
            // servers waits behind them.
            let hogs: Vec<Child> = (0..2)
                .map(|j| {
                    Command::new("dd")
                        .args([
                            "if=/dev/zero",
                            &format!("of={}{j}", hog.display()),
                            "bs=4M",
                            "count=256",
                            "oflag=direct",
                        ])
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap()
                })
                .collect();
            for mut h in hogs {
                let _ = h.wait();
            }
            for j in 0..2 {
                let _ = std::fs::remove_file(format!("{}{j}", hog.display()));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    // Followers' Status every 100 ms during the load: how often one reports no leader.
    let mut followers = Vec::new();
    for i in (0..3).filter(|i| *i != li) {
        followers.push(client_for(&urls[i], Duration::from_secs(1)).await);
    }
    let poller = tokio::spawn(async move {
        let (mut polls, mut leaderless) = (0u32, 0u32);
        let end = Instant::now() + STALL_TIME;
        while Instant::now() < end {
            for f in &mut followers {
                polls += 1;
                if f.status().await.map(|s| s.leader()).unwrap_or(0) == 0 {
                    leaderless += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (polls, leaderless)
    });
    let errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (cl, errs) = (leader.clone(), errors.clone());
    let v = Arc::new(vec![b'v'; load::VALUE_SIZE]);
    let (mut lat, secs) = load::drive(16, usize::MAX, STALL_TIME, move |w, i| {
        let (mut cl, errs, v) = (cl.clone(), errs.clone(), v.clone());
        async move {
            if cl
                .put(format!("/bench/stall/{w}/{i}"), v.as_slice(), None)
                .await
                .is_err()
            {
                errs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    })
    .await;
    hog_thread.join().unwrap();
    let (polls, leaderless) = poller.await.unwrap();
    let term_after = term(&connect(&urls[leader_index(&c).await]).await).await;
    lat.sort();
    let max = lat.last().copied().unwrap_or_default();
    format!(
        "| {server} | {} | {leaderless} of {polls} | {} | {:.0} | {:.2} | {:.2} | {:.0} |",
        term_after.saturating_sub(term_before),
        errors.load(std::sync::atomic::Ordering::Relaxed),
        lat.len() as f64 / secs,
        load::percentile(&lat, 0.5).as_secs_f64() * 1000.0,
        load::percentile(&lat, 0.99).as_secs_f64() * 1000.0,
        max.as_secs_f64() * 1000.0,
    )
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn print_rounds(title: &str, rounds: &[Vec<Row>]) {
    println!("\n## {title}: median of {} rounds\n", rounds.len());
    println!(
        "| phase | server | ops/s (median) | p50 ms (median) | p99 ms (median) | RSS of 3 (MiB) | ops/s per round |"
    );
    println!("|---|---|---:|---:|---:|---:|---|");
    // Phases in first-seen order, each followed by its servers.
    let mut keys: Vec<(String, String)> = Vec::new();
    for r in rounds.iter().flatten() {
        let k = (r.phase.clone(), r.server.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let phases: Vec<String> = keys.iter().fold(Vec::new(), |mut v, (p, _)| {
        if !v.contains(p) {
            v.push(p.clone());
        }
        v
    });
    let keys: Vec<(String, String)> = phases
        .iter()
        .flat_map(|p| keys.iter().filter(move |(q, _)| q == p).cloned())
        .collect();
    for (phase, server) in keys {
        let cells: Vec<&Row> = rounds
            .iter()
            .flatten()
            .filter(|r| r.phase == phase && r.server == server)
            .collect();
        let t: Vec<f64> = cells.iter().map(|r| r.throughput()).collect();
        let p50: Vec<f64> = cells.iter().map(|r| r.p50.as_secs_f64() * 1000.0).collect();
        let p99: Vec<f64> = cells.iter().map(|r| r.p99.as_secs_f64() * 1000.0).collect();
        let rss: Vec<f64> = cells.iter().map(|r| r.rss_kib as f64 / 1024.0).collect();
        let per: Vec<String> = t.iter().map(|x| format!("{x:.0}")).collect();
        println!(
            "| {phase} | {server} | {:.0} | {:.2} | {:.2} | {:.0} | {} |",
            median(&t),
            median(&p50),
            median(&p99),
            median(&rss),
            per.join(", ")
        );
    }
}

fn servers(round: usize) -> Vec<&'static str> {
    let only = std::env::var("K8SD_BENCH_ONLY").unwrap_or_default();
    let mut s = vec![ETCD, K8SD];
    if std::env::var_os("K8SD_BENCH_BASELINE").is_some() {
        s.insert(1, BASELINE);
    }
    // Each round starts with the next server, so none always runs first.
    let n = s.len();
    s.rotate_left(round % n);
    if !only.is_empty() {
        s.retain(|x| x.starts_with(only.as_str()));
    }
    s
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn uptime() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

async fn run(sections: &[String]) {
    let want = |s: &str| (sections.is_empty() && s != "stall") || sections.iter().any(|x| x == s);
    let rounds = env_usize("K8SD_BENCH_ROUNDS", 3);
    println!(
        "k8sd flags: {:?}; etcd flags: {:?}",
        std::env::var("K8SD_BENCH_RAFT_FLAGS").unwrap_or_default(),
        std::env::var("K8SD_BENCH_ETCD_FLAGS").unwrap_or_default()
    );
    if want("writes") {
        let mut all = Vec::new();
        for r in 0..rounds {
            let mut rows = Vec::new();
            for s in servers(r) {
                eprintln!("writes round {} {s}: load average {}", r + 1, uptime());
                writes(s, &mut rows).await;
            }
            all.push(rows);
        }
        print_rounds(
            "writes (3-node clusters, load sent to the leader unless noted)",
            &all,
        );
    }
    if want("puts") {
        let (mut all, mut cpu) = (Vec::new(), Vec::new());
        for r in 0..rounds {
            let (mut rows, mut cells) = (Vec::new(), Vec::new());
            for s in servers(r) {
                eprintln!("puts round {} {s}: load average {}", r + 1, uptime());
                puts(s, r + 1, &mut rows, &mut cells).await;
            }
            all.push(rows);
            cpu.push(cells);
        }
        print_rounds("puts (3-node clusters, 1 KiB, sent to the leader)", &all);
        print_cpu(&cpu);
    }
    if want("reads") {
        let mut all = Vec::new();
        for r in 0..rounds {
            let mut rows = Vec::new();
            for s in servers(r) {
                eprintln!("reads round {} {s}: load average {}", r + 1, uptime());
                reads(s, &mut rows).await;
            }
            all.push(rows);
        }
        print_rounds("linearizable reads, leader alone vs spread over 3 nodes", &all);
    }
    if want("stall") {
        let mut lines = Vec::new();
        for r in 0..rounds {
            for s in servers(r) {
                eprintln!("stall round {} {s}: load average {}", r + 1, uptime());
                lines.push(stall(s).await);
                eprintln!("{}", lines.last().unwrap());
            }
        }
        println!(
            "\n## fsync stalls: put c16 to the leader for {STALL_TIME:?} next to 2 x 2 dd streams of 1 GiB, oflag=direct\n"
        );
        println!(
            "| server | leader changes (term delta) | follower Status without leader | failed puts | puts/s | p50 ms | p99 ms | max ms |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        for l in lines {
            println!("{l}");
        }
    }
    if want("failover") {
        let n = env_usize("K8SD_BENCH_FAILOVERS", 7);
        let mut clusters: Vec<(&str, Cluster)> =
            servers(0).into_iter().map(|s| (s, Cluster::start(s))).collect();
        let mut times: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
        for k in 0..n {
            // Alternate which server goes first.
            if k % 2 == 1 {
                clusters.reverse();
            }
            for (s, c) in clusters.iter_mut() {
                let took = failover_once(c, k).await;
                eprintln!(
                    "failover {s} #{}: {} ms (load average {})",
                    k + 1,
                    took.as_millis(),
                    uptime()
                );
                times.entry(s).or_default().push(took);
            }
            if k % 2 == 1 {
                clusters.reverse();
            }
        }
        println!("\n## failover: kill -9 of the leader -> first acknowledged write via a survivor\n");
        println!("| server | kills | median (ms) | max (ms) | all (ms) |");
        println!("|---|---:|---:|---:|---|");
        for (s, t) in &times {
            let ms_: Vec<f64> = t.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
            let all: Vec<String> = ms_.iter().map(|x| format!("{x:.0}")).collect();
            let max = ms_.iter().copied().fold(0.0, f64::max);
            println!(
                "| {s} | {} | {:.0} | {max:.0} | {} |",
                t.len(),
                median(&ms_),
                all.join(", ")
            );
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; other arguments choose sections.
    let sections: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(&sections));
}
