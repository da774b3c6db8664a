//! The NOSPACE alarm of one member, with etcd's meaning (`etcdserver/quota.go`,
//! `apply.go`'s `applierV3Capped`): while it is raised the member refuses every write that adds
//! data (Put, a Txn with a put in either branch, LeaseGrant) with `etcdserver: mvcc: database
//! space exceeded`, and still serves everything else: reads, watches, deletes, compaction,
//! lease revocation and keep-alives, Status, defragment.
//!
//! Two things raise it:
//! - the quota (`--quota-backend-bytes`, `quota-backend-bytes` in `node.yaml`): a write whose
//!   cost (etcd's: 256 bytes plus key and value per put, 64 per lease) added to the bytes in use
//!   would reach the quota;
//! - a full disk: SQLite reports `SQLITE_FULL` (ENOSPC) from a standalone node's apply (the
//!   transaction was rolled back, so the store is whole and nothing was acknowledged), or the
//!   data dir's filesystem has less than `FULL_FREE_BYTES` free (checked every 200 ms; the
//!   signal a Raft member uses, whose log writer and state machine wait for space and write
//!   the same batch again instead of failing).
//!
//! `Maintenance.Alarm` DEACTIVATE (`etcdctl alarm disarm`) clears it; a write still over the
//! quota raises it again, as in etcd. A full-disk alarm also clears itself once the data dir's
//! filesystem has `RESUME_FREE_BYTES` free again.
//!
//! The alarm lives in memory and belongs to this member alone: it is not replicated through
//! Raft as etcd replicates its alarms. Every member holds the same data, so every member's quota
//! trips at about the same write; a full disk is a fact about one machine, and a member whose
//! disk is full could not persist a replicated alarm anyway. A restart forgets the alarm; the
//! next write over the quota raises it again (docs/operations.md, "Full disks").

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use crate::datastore::{Command, Op, TxnRequest};

/// etcd's default `--quota-backend-bytes`.
pub const DEFAULT_QUOTA_BYTES: i64 = 2 * 1024 * 1024 * 1024;
/// etcd's largest accepted quota (`MaxQuotaBytes`, 8 GiB); larger values are warned about there.
pub const MAX_QUOTA_BYTES: i64 = 8 * 1024 * 1024 * 1024;
/// Free bytes on the data dir's filesystem below which it counts as full. It must cover what
/// writes can append between two looks (200 ms apart), so that a write is refused with NOSPACE
/// rather than admitted and left waiting in a Raft log writer with no room. With 16 KiB pages (a
/// `state.db` of an earlier build) a batch of large values appends several hundred KiB of WAL frames, and a WAL truncate gives a
/// megabyte or more back at once: 1 MiB was too little (a write after a fill was admitted, then
/// timed out).
pub const FULL_FREE_BYTES: u64 = 4 * 1024 * 1024;
/// Free bytes on the data dir's filesystem at which a full-disk alarm clears itself: room for a
/// few WAL frames and Raft log rows, so the first writes after it do not fail at once.
pub const RESUME_FREE_BYTES: u64 = 6 * 1024 * 1024;

/// The quota a `--quota-backend-bytes` setting means, as in etcd: 0 is the default (2 GiB), a
/// negative value is no quota. The flag and node.yaml's `quota-backend-bytes` both go through it.
pub fn effective_quota(setting: i64) -> i64 {
    match setting {
        0 => DEFAULT_QUOTA_BYTES,
        q if q < 0 => i64::MAX,
        q => q,
    }
}

/// etcd's per-key and per-lease overheads in the quota's cost (`quota.go`).
const KV_OVERHEAD: i64 = 256;
const LEASE_OVERHEAD: i64 = 64;

/// Why the alarm was raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSpaceCause {
    /// The bytes in use would reach the quota.
    Quota,
    /// SQLite could not write: the filesystem is full.
    DiskFull,
}

impl NoSpaceCause {
    pub fn as_str(self) -> &'static str {
        match self {
            NoSpaceCause::Quota => "quota",
            NoSpaceCause::DiskFull => "disk-full",
        }
    }
}

/// This member's NOSPACE alarm and the database size the quota is checked against.
#[derive(Debug)]
pub struct Alarm {
    quota_bytes: i64,
    /// Mirrors `cause.is_some()`, so the write path checks it without a lock.
    raised: AtomicBool,
    cause: Mutex<Option<NoSpaceCause>>,
    /// Bytes in use in the database (pages minus free pages), refreshed by the checkpoint
    /// thread every 200 ms and after each refused write.
    in_use: AtomicI64,
}

impl Alarm {
    pub fn new(quota_bytes: i64) -> Alarm {
        Alarm {
            quota_bytes,
            raised: AtomicBool::new(false),
            cause: Mutex::new(None),
            in_use: AtomicI64::new(0),
        }
    }

    pub fn quota_bytes(&self) -> i64 {
        self.quota_bytes
    }

    pub fn cause(&self) -> Option<NoSpaceCause> {
        *self.cause.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Raise the alarm. A full disk overrides a quota alarm (it is the one that needs space
    /// freed on the machine), never the other way round.
    pub fn raise(&self, cause: NoSpaceCause) {
        let mut c = self.cause.lock().unwrap_or_else(|p| p.into_inner());
        if *c != Some(NoSpaceCause::DiskFull) && *c != Some(cause) {
            tracing::warn!(
                cause = cause.as_str(),
                in_use = self.in_use.load(Ordering::Relaxed),
                quota = self.quota_bytes,
                "NOSPACE alarm raised: writes that add data are refused until it is disarmed \
                 (free space, compact, then etcdctl alarm disarm)"
            );
            *c = Some(cause);
        }
        self.raised.store(true, Ordering::Release);
    }

    /// Clear the alarm (`etcdctl alarm disarm`); returns what was raised.
    pub fn disarm(&self) -> Option<NoSpaceCause> {
        let mut c = self.cause.lock().unwrap_or_else(|p| p.into_inner());
        let was = c.take();
        self.raised.store(false, Ordering::Release);
        if let Some(cause) = was {
            tracing::info!(cause = cause.as_str(), "NOSPACE alarm cleared");
        }
        was
    }

    /// Follow the free space of the data dir's filesystem: below `FULL_FREE_BYTES` the disk
    /// counts as full; a full-disk alarm clears itself once `RESUME_FREE_BYTES` are free.
    pub fn observe_free(&self, free: u64) {
        if free < FULL_FREE_BYTES {
            self.raise(NoSpaceCause::DiskFull);
        } else if free >= RESUME_FREE_BYTES && self.cause() == Some(NoSpaceCause::DiskFull) {
            tracing::info!(free, "the data dir has room again");
            self.disarm();
        }
    }

    pub fn set_in_use(&self, bytes: i64) {
        self.in_use.store(bytes, Ordering::Relaxed);
    }

    /// Admit a command or refuse it with the alarm, raising the alarm when the command's cost
    /// would take the database to the quota (etcd's `backendQuota.Available`).
    pub fn admit(&self, cmd: &Command) -> Result<(), NoSpaceCause> {
        let cost = cost(cmd);
        if cost == 0 {
            return Ok(());
        }
        if self.raised.load(Ordering::Acquire)
            && let Some(cause) = self.cause()
        {
            return Err(cause);
        }
        if self.in_use.load(Ordering::Relaxed) + cost >= self.quota_bytes {
            self.raise(NoSpaceCause::Quota);
            return Err(NoSpaceCause::Quota);
        }
        Ok(())
    }
}

/// etcd's quota cost of a command: 0 for anything that adds no data (those are never refused).
pub fn cost(cmd: &Command) -> i64 {
    match cmd {
        Command::Txn(t) => txn_cost(t),
        Command::LeaseGrant { .. } => LEASE_OVERHEAD,
        Command::Compact { .. } | Command::LeaseRevoke { .. } => 0,
    }
}

/// The larger branch's puts, as etcd's `costTxn` (a put nested in an inner Txn counts too).
fn txn_cost(t: &TxnRequest) -> i64 {
    let branch = |ops: &[Op]| -> i64 {
        ops.iter()
            .map(|op| match op {
                Op::Put(p) => KV_OVERHEAD + len(&p.key) + len(&p.value),
                Op::Txn(inner) => txn_cost(inner),
                Op::Range(_) | Op::Delete(_) => 0,
            })
            .sum()
    };
    branch(&t.success).max(branch(&t.failure))
}

fn len(b: &[u8]) -> i64 {
    i64::try_from(b.len()).unwrap_or(i64::MAX)
}

/// Bytes this process can still write on the filesystem holding `dir` (root may use the
/// blocks reserved for it, so it sees the free count; others the available count).
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    let blocks = if nix::unistd::geteuid().is_root() {
        st.blocks_free()
    } else {
        st.blocks_available()
    };
    Some(blocks.saturating_mul(st.fragment_size()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::PutRequest;

    fn put(key: &str, value: &str) -> Op {
        Op::Put(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })
    }

    #[test]
    fn costs_follow_etcd() {
        let one = Command::Txn(TxnRequest {
            success: vec![put("k", "vv")],
            ..Default::default()
        });
        assert_eq!(cost(&one), 256 + 3);
        let branches = Command::Txn(TxnRequest {
            success: vec![put("a", "1")],
            failure: vec![put("b", "2"), put("c", "3")],
            ..Default::default()
        });
        assert_eq!(cost(&branches), 2 * 258, "the larger branch counts");
        let read_only = Command::Txn(TxnRequest {
            success: vec![Op::Range(Default::default()), Op::Delete(Default::default())],
            ..Default::default()
        });
        assert_eq!(cost(&read_only), 0);
        assert_eq!(cost(&Command::LeaseGrant { id: 0, ttl: 5 }), 64);
        assert_eq!(cost(&Command::Compact { revision: 3 }), 0);
    }

    #[test]
    fn quota_settings_follow_etcd() {
        assert_eq!(effective_quota(0), DEFAULT_QUOTA_BYTES);
        assert_eq!(effective_quota(-1), i64::MAX, "negative: no quota");
        assert_eq!(effective_quota(4096), 4096);
    }

    #[test]
    fn quota_raises_and_disarm_clears() {
        let a = Alarm::new(1000);
        let big = Command::Txn(TxnRequest {
            success: vec![put("k", &"x".repeat(100))],
            ..Default::default()
        });
        a.set_in_use(500);
        assert_eq!(a.admit(&big), Ok(()));
        a.set_in_use(700);
        assert_eq!(a.admit(&big), Err(NoSpaceCause::Quota));
        // Raised: refused even once back under the quota, until disarmed; deletes still pass.
        a.set_in_use(0);
        assert_eq!(a.admit(&big), Err(NoSpaceCause::Quota));
        assert_eq!(a.admit(&Command::LeaseRevoke { id: 1 }), Ok(()));
        assert_eq!(a.disarm(), Some(NoSpaceCause::Quota));
        assert_eq!(a.admit(&big), Ok(()));
    }

    #[test]
    fn full_disk_overrides_quota_and_resumes_with_space() {
        let a = Alarm::new(i64::MAX);
        a.raise(NoSpaceCause::Quota);
        a.raise(NoSpaceCause::DiskFull);
        a.raise(NoSpaceCause::Quota);
        assert_eq!(a.cause(), Some(NoSpaceCause::DiskFull));
        a.observe_free(RESUME_FREE_BYTES - 1);
        assert_eq!(a.cause(), Some(NoSpaceCause::DiskFull));
        a.observe_free(RESUME_FREE_BYTES);
        assert_eq!(a.cause(), None);
        a.observe_free(FULL_FREE_BYTES - 1);
        assert_eq!(
            a.cause(),
            Some(NoSpaceCause::DiskFull),
            "an almost full disk raises it"
        );
        a.disarm();
        // A quota alarm never clears itself.
        a.raise(NoSpaceCause::Quota);
        a.observe_free(u64::MAX);
        assert_eq!(a.cause(), Some(NoSpaceCause::Quota));
    }
}
