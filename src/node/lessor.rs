//! Lease deadlines. The replicated state holds which leases exist and their TTLs; when each
//! one expires is local knowledge of the node that runs expiry (the leader), exactly as in
//! etcd's lessor. A new leader restarts every deadline at its full TTL, so a lease never
//! expires early because of a failover. Expiry is proposed as an ordinary `LeaseRevoke`
//! command, so every replica deletes the same keys at the same revision.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Lessor {
    leases: Mutex<HashMap<i64, Entry>>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    ttl: i64,
    deadline: Instant,
    /// An expiry proposal is in flight; do not propose it again.
    expiring: bool,
}

fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}

impl Lessor {
    /// Start tracking every existing lease with a full TTL from `now`.
    pub fn reset(&self, leases: &[(i64, i64)], now: Instant) {
        let mut map = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        map.clear();
        for &(id, ttl) in leases {
            map.insert(
                id,
                Entry {
                    ttl,
                    deadline: now + ttl_duration(ttl),
                    expiring: false,
                },
            );
        }
    }

    pub fn granted(&self, id: i64, ttl: i64, now: Instant) {
        let mut map = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(
            id,
            Entry {
                ttl,
                deadline: now + ttl_duration(ttl),
                expiring: false,
            },
        );
    }

    pub fn revoked(&self, id: i64) {
        self.leases.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    /// Renew a lease; returns its TTL, or `None` if it does not exist (or is already expiring).
    pub fn renew(&self, id: i64, now: Instant) -> Option<i64> {
        let mut map = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        let e = map.get_mut(&id)?;
        if e.expiring || e.deadline <= now {
            return None;
        }
        e.deadline = now + ttl_duration(e.ttl);
        Some(e.ttl)
    }

    /// Remaining whole seconds (rounded up) and the granted TTL.
    pub fn remaining(&self, id: i64, now: Instant) -> Option<(i64, i64)> {
        let map = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        let e = map.get(&id)?;
        let left = e.deadline.saturating_duration_since(now);
        let secs = i64::try_from(left.as_secs()).unwrap_or(i64::MAX) + i64::from(left.subsec_nanos() > 0);
        Some((if e.expiring { -1 } else { secs }, e.ttl))
    }

    /// Leases past their deadline, marked as expiring so they are proposed once.
    pub fn take_expired(&self, now: Instant) -> Vec<i64> {
        let mut map = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (id, e) in map.iter_mut() {
            if !e.expiring && e.deadline <= now {
                e.expiring = true;
                out.push(*id);
            }
        }
        out.sort_unstable();
        out
    }

    /// An expiry proposal failed for a transient reason: try again shortly.
    pub fn retry_later(&self, id: i64, now: Instant) {
        if let Some(e) = self.leases.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&id) {
            e.expiring = false;
            e.deadline = now + Duration::from_millis(500);
        }
    }
}

/// The leader answers followers' keep-alives from its lessor (`raft::LeaseClock`).
impl crate::raft::LeaseClock for Lessor {
    fn renew_now(&self, id: i64) -> Option<i64> {
        self.renew(id, Instant::now())
    }

    fn remaining_now(&self, id: i64) -> Option<(i64, i64)> {
        self.remaining(id, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_reported_once_and_renewal_pushes_the_deadline() {
        let l = Lessor::default();
        let t0 = Instant::now();
        l.granted(7, 10, t0);
        assert_eq!(l.remaining(7, t0 + Duration::from_millis(2500)), Some((8, 10)));
        assert!(l.take_expired(t0 + Duration::from_secs(9)).is_empty());
        assert_eq!(l.renew(7, t0 + Duration::from_secs(9)), Some(10));
        assert!(l.take_expired(t0 + Duration::from_secs(18)).is_empty());
        assert_eq!(l.take_expired(t0 + Duration::from_secs(20)), vec![7]);
        assert!(
            l.take_expired(t0 + Duration::from_secs(30)).is_empty(),
            "proposed once"
        );
        assert_eq!(l.renew(7, t0 + Duration::from_secs(30)), None);
        l.revoked(7);
        assert_eq!(l.remaining(7, t0), None);
    }
}
