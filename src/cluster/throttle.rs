//! Failed joins, counted per source address: after `LIMIT` refusals within `WINDOW`, a source
//! is refused without a look at its token until the window ends. Guessing a token's 256-bit
//! secret is hopeless anyway; this keeps a scanner from filling the log and from costing a
//! linearizable datastore read per attempt.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const LIMIT: u32 = 10;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Sources remembered at most; the oldest windows are dropped first.
const MAX_SOURCES: usize = 4096;

#[derive(Debug, Clone, Default)]
pub struct FailedJoins(Arc<Mutex<HashMap<IpAddr, (u32, Instant)>>>);

impl FailedJoins {
    /// `Some(seconds left)` while `source` is over the limit.
    pub fn blocked(&self, source: IpAddr, now: Instant) -> Option<u64> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (count, start) = map.get(&source)?;
        let left = WINDOW.saturating_sub(now.duration_since(*start));
        (*count >= LIMIT && !left.is_zero()).then(|| left.as_secs().max(1))
    }

    /// Count one refusal; returns the count in the current window.
    pub fn record(&self, source: IpAddr, now: Instant) -> u32 {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_SOURCES && !map.contains_key(&source) {
            map.retain(|_, (_, start)| now.duration_since(*start) < WINDOW);
            if map.len() >= MAX_SOURCES
                && let Some(oldest) = map.iter().min_by_key(|(_, (_, s))| *s).map(|(ip, _)| *ip)
            {
                map.remove(&oldest);
            }
        }
        let entry = map.entry(source).or_insert((0, now));
        if now.duration_since(entry.1) >= WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
        entry.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_blocked_after_the_limit_until_its_window_ends() {
        let f = FailedJoins::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for i in 1..=LIMIT {
            assert_eq!(f.blocked(a, t0), None, "attempt {i}");
            assert_eq!(f.record(a, t0), i);
        }
        assert_eq!(f.blocked(a, t0 + Duration::from_secs(1)), Some(59));
        assert_eq!(f.blocked(b, t0), None, "another source is not affected");
        assert_eq!(f.blocked(a, t0 + WINDOW), None);
        assert_eq!(f.record(a, t0 + WINDOW), 1, "a new window starts from zero");
    }
}
