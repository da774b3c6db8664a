//! A disk with no room, as this node's Raft log writer and state machine meet it.
//!
//! Both write the same batch again until it fits (SQLite rolls a full transaction back, so the
//! retry is exact) and acknowledge nothing meanwhile. What those retries share lives here:
//!
//! - the **hook** that tells the node (`node::alarm`) at every failed attempt, so its NOSPACE
//!   alarm stands for as long as the log or the store cannot be written and new writes are
//!   refused at once instead of hanging until their deadline;
//! - whether a writer is **waiting** for room now, which a leader reads to hand leadership to a
//!   member that can still write (`RaftNode::spawn_full_disk_handover`);
//! - the **closing** flag `RaftNode::shutdown` sets: a retry that sees it gives up and reports
//!   the write failed, so a node whose disk is full still stops (systemd's stop, `k8sd leave`
//!   and `reset` wait for it) and the entry it could not write is never reported flushed;
//! - the rate of the warning ([`Retries`]): the first at once, then one every
//!   [`WARN_EVERY`] with the count, not one per retry.
//!
//! This file names nothing else of `raft`: the log writer, the state machine and the node
//! all name it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Called at every write that failed for want of space (from the log writer's thread or the
/// state machine's task): the node raises its NOSPACE alarm. It must not block.
pub type DiskFullHook = Arc<dyn Fn() + Send + Sync>;

/// Pause between two attempts at the same write on a full disk. It bounds how long a stop
/// waits for a writer to notice the closing flag.
pub const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Repeat of the warning while the disk stays full.
pub const WARN_EVERY: Duration = Duration::from_secs(30);

/// What this node's writers share about a full disk. Cheap to share: one `Arc` per node.
#[derive(Default)]
pub struct FullDisk {
    hook: Option<DiskFullHook>,
    /// Writers now in a retry loop (the log writer and the state machine: 0 to 2).
    waiting: AtomicUsize,
    closing: AtomicBool,
}

impl std::fmt::Debug for FullDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FullDisk")
            .field("waiting", &self.waiting.load(Ordering::Relaxed))
            .field("closing", &self.closing.load(Ordering::Relaxed))
            .finish()
    }
}

impl FullDisk {
    pub fn new(hook: Option<DiskFullHook>) -> Arc<FullDisk> {
        Arc::new(FullDisk {
            hook,
            ..FullDisk::default()
        })
    }

    /// A write just failed for want of space.
    pub fn report(&self) {
        if let Some(hook) = &self.hook {
            hook();
        }
    }

    /// Whether a writer is waiting for room now.
    pub fn is_waiting(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }

    /// Counts the caller as waiting until the guard goes.
    pub fn wait_guard(self: &Arc<Self>) -> WaitGuard {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        WaitGuard(self.clone())
    }

    /// From now on a write that finds the disk full fails instead of waiting.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
    }

    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }
}

/// A writer in a retry loop; see [`FullDisk::wait_guard`].
#[derive(Debug)]
pub struct WaitGuard(Arc<FullDisk>);

impl Drop for WaitGuard {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One writer's retries of one write: when to warn, and how many there were.
#[derive(Debug)]
pub struct Retries {
    since: Instant,
    last_warned: Option<Instant>,
    count: u64,
}

impl Retries {
    pub fn new(now: Instant) -> Retries {
        Retries {
            since: now,
            last_warned: None,
            count: 0,
        }
    }

    /// Count one failed attempt at `now`; `true` when a warning is due (the first failure, then
    /// once per [`WARN_EVERY`]).
    pub fn failed(&mut self, now: Instant) -> bool {
        self.count += 1;
        let due = self
            .last_warned
            .is_none_or(|t| now.saturating_duration_since(t) >= WARN_EVERY);
        if due {
            self.last_warned = Some(now);
        }
        due
    }

    /// Failed attempts so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whole seconds since the first failure.
    pub fn waited_secs(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.since).as_secs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_at_once_then_every_thirty_seconds() {
        let t0 = Instant::now();
        let mut r = Retries::new(t0);
        assert!(r.failed(t0), "the first failure warns at once");
        let mut warned = 0;
        // 500 ms apart for a minute and a half: two more warnings, at 30 s and 60 s.
        for i in 1..=180u64 {
            if r.failed(t0 + RETRY_PAUSE * u32::try_from(i).unwrap()) {
                warned += 1;
            }
        }
        assert_eq!(warned, 3, "at 30, 60 and 90 s");
        assert_eq!(r.count(), 181);
        assert_eq!(r.waited_secs(t0 + Duration::from_secs(90)), 90);
    }

    #[test]
    fn hook_waiting_and_closing() {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let disk = FullDisk::new(Some(Arc::new(move || {
            h.fetch_add(1, Ordering::Relaxed);
        })));
        assert!(!disk.is_waiting());
        let g1 = disk.wait_guard();
        let g2 = disk.wait_guard();
        disk.report();
        disk.report();
        assert_eq!(hits.load(Ordering::Relaxed), 2, "every failed write is reported");
        drop(g1);
        assert!(disk.is_waiting(), "the state machine still waits");
        drop(g2);
        assert!(!disk.is_waiting());
        assert!(!disk.closing());
        disk.close();
        assert!(disk.closing());
        FullDisk::new(None).report();
    }
}
