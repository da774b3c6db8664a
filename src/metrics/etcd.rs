//! The datastore's metrics under etcd's names, types, help texts, label sets and histogram
//! buckets (etcd's `server/etcdserver/metrics.go`, `server/storage/wal/metrics.go`,
//! `server/storage/backend/metrics.go`, `server/storage/mvcc/metrics.go` and
//! `server/etcdserver/api/rafthttp/metrics.go`), so etcd's Grafana dashboard and alerts read
//! them unchanged. `docs/metrics.md` says what each one measures in k8sd.
//!
//! Events are recorded into [`ETCD`] where they happen; values that are cheaper to read at
//! scrape time (leader, positions, database size, keys) arrive in a [`Scrape`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::{Counter, Gauge, Histogram, Kind, Text, exponential_buckets};

/// etcd's WAL fsync and backend commit buckets: 1 ms to 8 s.
const DISK_BUCKETS: [f64; 14] = exponential_buckets(0.001, 2.0);
/// etcd's peer round-trip buckets: 0.1 ms to 3.3 s.
const RTT_BUCKETS: [f64; 16] = exponential_buckets(0.0001, 2.0);

/// Counters, gauges and histograms recorded as things happen.
#[derive(Debug)]
pub struct EtcdMetrics {
    pub leader_changes: Counter,
    pub proposals_pending: Gauge,
    pub proposals_failed: Counter,
    /// Raft log commits (a member) or state.db WAL commits (standalone): one fsync each.
    pub wal_fsync: Histogram<14>,
    /// State machine transactions.
    pub backend_commit: Histogram<14>,
    pub watch_streams: Gauge,
    pub watchers: Gauge,
    pub puts: Counter,
    pub deletes: Counter,
    pub ranges: Counter,
    pub txns: Counter,
    peer_rtt: Mutex<BTreeMap<String, Arc<Histogram<16>>>>,
}

/// The process's datastore metrics (one datastore node per process).
pub static ETCD: EtcdMetrics = EtcdMetrics {
    leader_changes: Counter::new(),
    proposals_pending: Gauge::new(),
    proposals_failed: Counter::new(),
    wal_fsync: Histogram::new(DISK_BUCKETS),
    backend_commit: Histogram::new(DISK_BUCKETS),
    watch_streams: Gauge::new(),
    watchers: Gauge::new(),
    puts: Counter::new(),
    deletes: Counter::new(),
    ranges: Counter::new(),
    txns: Counter::new(),
    peer_rtt: Mutex::new(BTreeMap::new()),
};

impl EtcdMetrics {
    /// One round trip to peer `to` (etcd labels it with the member id in hex). Called once per
    /// heartbeat per peer at most, so the map's lock is off every client path.
    pub fn peer_round_trip(&self, to: u64, rtt: std::time::Duration) {
        let h = {
            let mut map = self.peer_rtt.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(format!("{to:x}"))
                .or_insert_with(|| Arc::new(Histogram::new(RTT_BUCKETS)))
                .clone()
        };
        h.observe(rtt);
    }
}

/// What the datastore node reports at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub has_leader: bool,
    pub is_leader: bool,
    /// Raft commit index (a standalone node: its applied index).
    pub committed_index: u64,
    pub applied_index: u64,
    pub db_size: i64,
    pub db_size_in_use: i64,
    pub quota_bytes: i64,
    pub keys: i64,
    pub current_revision: i64,
    pub compact_revision: i64,
    pub member_id: u64,
    pub version: String,
}

#[allow(clippy::cast_precision_loss)] // positions, sizes and counts stay far below 2^53
pub fn render(out: &mut Text, s: &Scrape) {
    let m = &ETCD;
    let b = |v: bool| if v { 1.0 } else { 0.0 };
    out.single(
        "etcd_server_has_leader",
        Kind::Gauge,
        "Whether or not a leader exists. 1 is existence, 0 is not.",
        b(s.has_leader),
    );
    out.single(
        "etcd_server_is_leader",
        Kind::Gauge,
        "Whether or not this member is a leader. 1 if is, 0 otherwise.",
        b(s.is_leader),
    );
    out.single(
        "etcd_server_leader_changes_seen_total",
        Kind::Counter,
        "The number of leader changes seen.",
        m.leader_changes.get() as f64,
    );
    // etcd declares these two as gauges despite the _total suffix; dashboards rely on it.
    out.single(
        "etcd_server_proposals_committed_total",
        Kind::Gauge,
        "The total number of consensus proposals committed.",
        s.committed_index as f64,
    );
    out.single(
        "etcd_server_proposals_applied_total",
        Kind::Gauge,
        "The total number of consensus proposals applied.",
        s.applied_index as f64,
    );
    out.single(
        "etcd_server_proposals_pending",
        Kind::Gauge,
        "The current number of pending proposals to commit.",
        m.proposals_pending.get() as f64,
    );
    out.single(
        "etcd_server_proposals_failed_total",
        Kind::Counter,
        "The total number of failed proposals seen.",
        m.proposals_failed.get() as f64,
    );
    out.single(
        "etcd_server_quota_backend_bytes",
        Kind::Gauge,
        "Current backend storage quota size in bytes.",
        s.quota_bytes as f64,
    );
    let id = format!("{:x}", s.member_id);
    out.family(
        "etcd_server_id",
        Kind::Gauge,
        "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
    );
    out.sample("etcd_server_id", &[("server_id", &id)], 1.0);
    out.family(
        "etcd_server_version",
        Kind::Gauge,
        "Which version is running. 1 for 'server_version' label with current version.",
    );
    out.sample("etcd_server_version", &[("server_version", &s.version)], 1.0);

    out.family(
        "etcd_disk_wal_fsync_duration_seconds",
        Kind::Histogram,
        "The latency distributions of fsync called by WAL.",
    );
    m.wal_fsync
        .render(out, "etcd_disk_wal_fsync_duration_seconds", &[]);
    out.family(
        "etcd_disk_backend_commit_duration_seconds",
        Kind::Histogram,
        "The latency distributions of commit called by backend.",
    );
    m.backend_commit
        .render(out, "etcd_disk_backend_commit_duration_seconds", &[]);

    out.single(
        "etcd_mvcc_db_total_size_in_bytes",
        Kind::Gauge,
        "Total size of the underlying database physically allocated in bytes.",
        s.db_size as f64,
    );
    out.single(
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        Kind::Gauge,
        "Total size of the underlying database logically in use in bytes.",
        s.db_size_in_use as f64,
    );
    out.single(
        "etcd_debugging_mvcc_keys_total",
        Kind::Gauge,
        "Total number of keys.",
        s.keys as f64,
    );
    out.single(
        "etcd_debugging_mvcc_watch_stream_total",
        Kind::Gauge,
        "Total number of watch streams.",
        m.watch_streams.get() as f64,
    );
    out.single(
        "etcd_debugging_mvcc_watcher_total",
        Kind::Gauge,
        "Total number of watchers.",
        m.watchers.get() as f64,
    );
    // The name etcd's dashboards and alerts read (docs/metrics.md); etcd itself only has the
    // etcd_debugging_ one above.
    out.single(
        "etcd_mvcc_watcher_total",
        Kind::Gauge,
        "Total number of watchers.",
        m.watchers.get() as f64,
    );
    out.single(
        "etcd_mvcc_current_revision",
        Kind::Gauge,
        "The current revision of store.",
        s.current_revision as f64,
    );
    out.single(
        "etcd_mvcc_compact_revision",
        Kind::Gauge,
        "The revision of the last compaction in store.",
        s.compact_revision as f64,
    );
    for (name, help, c) in [
        (
            "etcd_mvcc_range_total",
            "Total number of ranges seen by this member.",
            &m.ranges,
        ),
        (
            "etcd_mvcc_put_total",
            "Total number of puts seen by this member.",
            &m.puts,
        ),
        (
            "etcd_mvcc_delete_total",
            "Total number of deletes seen by this member.",
            &m.deletes,
        ),
        (
            "etcd_mvcc_txn_total",
            "Total number of txns seen by this member.",
            &m.txns,
        ),
    ] {
        out.single(name, Kind::Counter, help, c.get() as f64);
    }

    out.family(
        "etcd_network_peer_round_trip_time_seconds",
        Kind::Histogram,
        "Round-Trip-Time histogram between peers",
    );
    let peers: Vec<(String, Arc<Histogram<16>>)> = m
        .peer_rtt
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (to, h) in peers {
        h.render(out, "etcd_network_peer_round_trip_time_seconds", &[("To", &to)]);
    }
}

/// The process metrics Prometheus' Go client adds to every etcd (`process_*`), from
/// `/proc/self`; etcd's dashboard plots the resident memory.
#[allow(clippy::cast_precision_loss)] // byte and descriptor counts stay far below 2^53
pub fn render_process(out: &mut Text) {
    // VmRSS is in KiB whatever the page size.
    let rss_kib = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok()
    });
    if let Some(kib) = rss_kib {
        out.single(
            "process_resident_memory_bytes",
            Kind::Gauge,
            "Resident memory size in bytes.",
            (kib * 1024) as f64,
        );
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        out.single(
            "process_open_fds",
            Kind::Gauge,
            "Number of open file descriptors.",
            dir.count() as f64,
        );
    }
    if let Ok((soft, _)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        out.single(
            "process_max_fds",
            Kind::Gauge,
            "Maximum number of open file descriptors.",
            soft as f64,
        );
    }
}
