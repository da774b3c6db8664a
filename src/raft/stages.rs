//! Where one replicated write's time goes: per-stage timing, for measuring, not for operating.
//!
//! Off unless the environment has `K8SD_RAFT_STAGES=1` at start-up. Off, every hook is one
//! read of an already-initialised `OnceLock<bool>`: nothing is allocated or locked on the
//! write path. On, each hook records an `Instant` against the entry's log index, and when
//! `propose` gets its answer the whole path of that write is folded into a summary that is
//! logged (target `k8sd::raft::stages`) every `REPORT_EVERY` writes:
//!
//! ```text
//!  propose ─▶ append() ─▶ log.db commit (fsync) ─▶ apply() has the entry ─▶ state.db commit
//!     ─▶ responder sent ─▶ propose returns
//! ```
//!
//! It also counts the log writer's transactions (each one fsync under `synchronous=FULL`) and
//! the entries they carried, and the state machine's apply transactions, so the log says how
//! many fsyncs and SQLite transactions one write costs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// The environment variable that turns the timing on.
pub const ENV: &str = "K8SD_RAFT_STAGES";
/// Writes per logged summary.
const REPORT_EVERY: usize = 1000;
/// Entries with marks kept at most.
const MAX_MARKED: usize = 100_000;

/// A point on a write's path, in path order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// `LogStore::append` took the entry.
    Appended = 0,
    /// The log transaction holding it committed (its fsync returned).
    Flushed = 1,
    /// The state machine's `apply` received it (it waits in `apply_thread`'s queue next).
    ApplyStarted = 2,
    /// The state.db transaction holding it committed (on the apply thread).
    Applied = 3,
    /// Its openraft responder was sent the outcome.
    Responded = 4,
}

const STAGES: usize = 5;
/// Column names of a summary: the stages' durations, then the whole write.
const NAMES: [&str; STAGES + 2] = [
    "propose->append",
    "append->log commit",
    "log commit->apply start",
    "apply start->state commit",
    "state commit->respond",
    "respond->propose returns",
    "total",
];

/// Transactions and entries counted since the last summary.
#[derive(Debug, Default)]
struct Counters {
    log_txns: AtomicU64,
    log_entries: AtomicU64,
    /// Log transactions that carried no entry (vote, committed pointer, truncate, purge).
    log_txns_without_entries: AtomicU64,
    apply_txns: AtomicU64,
}

#[derive(Debug, Default)]
struct Tracer {
    marks: Mutex<HashMap<u64, [Option<Instant>; STAGES]>>,
    /// Per finished write: each stage's duration in microseconds, then the total.
    done: Mutex<Vec<[u64; STAGES + 2]>>,
    counters: Counters,
}

fn tracer() -> Option<&'static Tracer> {
    static ON: OnceLock<Option<Tracer>> = OnceLock::new();
    ON.get_or_init(|| {
        std::env::var_os(ENV)
            .is_some_and(|v| v == "1")
            .then(Tracer::default)
    })
    .as_ref()
}

/// Whether timing is on (so callers can skip work done only for it).
pub fn enabled() -> bool {
    tracer().is_some()
}

/// Record that the entry at `index` reached `stage` now.
pub fn mark(index: u64, stage: Stage) {
    if let Some(t) = tracer() {
        let now = Instant::now();
        let mut m = t.marks.lock().unwrap_or_else(|p| p.into_inner());
        // Entries nobody proposes here (blank, membership, forwarded) are never finished;
        // dropping everything now and then bounds them at the cost of a few lost samples.
        if m.len() > MAX_MARKED {
            m.clear();
        }
        m.entry(index).or_default()[stage as usize] = Some(now);
    }
}

/// Count one log transaction that carried `entries` entries.
pub fn log_txn(entries: usize) {
    if let Some(t) = tracer() {
        t.counters.log_txns.fetch_add(1, Ordering::Relaxed);
        t.counters
            .log_entries
            .fetch_add(entries as u64, Ordering::Relaxed);
        if entries == 0 {
            t.counters
                .log_txns_without_entries
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Count one state-machine apply transaction.
pub fn apply_txn() {
    if let Some(t) = tracer() {
        t.counters.apply_txns.fetch_add(1, Ordering::Relaxed);
    }
}

/// `propose` got the answer for the entry at `index`, having called `client_write` at
/// `started`: fold the write's marks into the summary.
pub fn finished(index: u64, started: Instant) {
    let Some(t) = tracer() else { return };
    let end = Instant::now();
    let Some(marks) = t.marks.lock().unwrap_or_else(|p| p.into_inner()).remove(&index) else {
        return;
    };
    let mut row = [0u64; STAGES + 2];
    let mut prev = started;
    for (i, m) in marks.iter().enumerate() {
        // A missing mark (e.g. an entry served from a retry) leaves its stage at 0.
        if let Some(m) = m {
            row[i] = micros(m.saturating_duration_since(prev));
            prev = *m;
        }
    }
    row[STAGES] = micros(end.saturating_duration_since(prev));
    row[STAGES + 1] = micros(end.saturating_duration_since(started));
    let mut done = t.done.lock().unwrap_or_else(|p| p.into_inner());
    done.push(row);
    if done.len() >= REPORT_EVERY {
        let rows = std::mem::take(&mut *done);
        drop(done);
        report(t, rows);
    }
}

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn report(t: &Tracer, rows: Vec<[u64; STAGES + 2]>) {
    let n = rows.len();
    let take = |c: &AtomicU64| c.swap(0, Ordering::Relaxed);
    let (log_txns, log_entries, log_empty, apply_txns) = (
        take(&t.counters.log_txns),
        take(&t.counters.log_entries),
        take(&t.counters.log_txns_without_entries),
        take(&t.counters.apply_txns),
    );
    let mut parts = Vec::new();
    for (col, name) in NAMES.iter().enumerate() {
        let mut v: Vec<u64> = rows.iter().map(|r| r[col]).collect();
        v.sort_unstable();
        let mean = v.iter().sum::<u64>() / n as u64;
        let p50 = v[n / 2];
        let p99 = v[(n * 99 / 100).min(n - 1)];
        parts.push(format!("{name}: mean {mean} p50 {p50} p99 {p99}"));
    }
    tracing::info!(
        target: "k8sd::raft::stages",
        "raft write stages over {n} writes (us): {}; log.db txns {log_txns} ({log_empty} without entries) for \
         {log_entries} entries; state.db apply txns {apply_txns}",
        parts.join("; ")
    );
}
