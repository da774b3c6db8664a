//! The backend table: health, connection counts, the choice of backend for a new connection,
//! and the drain signals. Plain data behind one `std::sync::Mutex` in `mod.rs`; nothing here
//! awaits, sleeps or does IO, so a lock on it is never held across an await point.
//!
//! Drain signals are `tokio::sync::watch` channels, one per backend. Every proxied connection
//! holds a receiver taken when its backend was chosen; bumping the counter (or dropping the
//! sender, when the backend is removed) closes all of them. A receiver marks the value it was
//! created with as seen, so a drain that races with a new connection is never missed.

use std::net::SocketAddr;
use std::time::SystemTime;

use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::health::{Health, Probe, State, Thresholds};

#[derive(Debug)]
pub(crate) struct Backend {
    /// Unique for the life of the pool: a backend removed and added again is a new backend, so a
    /// prober or connection of the old one can never touch the new one's counters.
    pub(crate) id: u64,
    pub(crate) addr: SocketAddr,
    pub(crate) health: Health,
    pub(crate) active: usize,
    pub(crate) last_error: Option<String>,
    pub(crate) last_change: SystemTime,
    drain: watch::Sender<u64>,
    prober: Option<AbortHandle>,
}

impl Backend {
    fn bump_drain(&self) {
        self.drain.send_modify(|epoch| *epoch = epoch.wrapping_add(1));
    }
}

/// One backend a new connection may be sent to, in order of preference.
#[derive(Debug)]
pub(crate) struct Candidate {
    pub(crate) id: u64,
    pub(crate) addr: SocketAddr,
    /// Fires (changed or closed) when connections to this backend must be closed.
    pub(crate) drained: watch::Receiver<u64>,
}

/// A health state change, for the log.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) addr: SocketAddr,
    pub(crate) from: State,
    pub(crate) to: State,
    /// Backends whose open connections were just told to close.
    pub(crate) drained: Vec<(SocketAddr, usize)>,
}

#[derive(Debug)]
pub(crate) struct Pool {
    backends: Vec<Backend>,
    thresholds: Thresholds,
    cursor: usize,
    next_id: u64,
}

impl Pool {
    pub(crate) fn new(thresholds: Thresholds) -> Pool {
        Pool {
            backends: Vec::new(),
            thresholds,
            cursor: 0,
            next_id: 1,
        }
    }

    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        self.backends.iter().map(|b| b.addr).collect()
    }

    pub(crate) fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// Makes `addrs` (deduplicated, in that order) the backend list. Backends that stay keep their
    /// health and connections; removed ones are drained and returned so the caller can stop their
    /// probers. Returns the added backends, which need a prober.
    pub(crate) fn replace(&mut self, addrs: &[SocketAddr], now: SystemTime) -> Vec<(u64, SocketAddr)> {
        let mut old = std::mem::take(&mut self.backends);
        let mut added = Vec::new();
        for &addr in addrs {
            if self.backends.iter().any(|b| b.addr == addr) {
                continue;
            }
            if let Some(i) = old.iter().position(|b| b.addr == addr) {
                self.backends.push(old.swap_remove(i));
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            self.backends.push(Backend {
                id,
                addr,
                health: Health::new(),
                active: 0,
                last_error: None,
                last_change: now,
                drain: watch::Sender::new(0),
                prober: None,
            });
            added.push((id, addr));
        }
        // A backend that left the list is no longer a control-plane endpoint: close its
        // connections (dropping the sender closes every receiver) and stop its prober.
        for b in old {
            if let Some(p) = &b.prober {
                p.abort();
            }
        }
        added
    }

    pub(crate) fn attach_prober(&mut self, id: u64, prober: AbortHandle) {
        match self.backends.iter_mut().find(|b| b.id == id) {
            Some(b) => b.prober = Some(prober),
            None => prober.abort(),
        }
    }

    /// Stops every prober and closes every proxied connection (shutdown).
    pub(crate) fn clear(&mut self) {
        self.replace(&[], SystemTime::now());
    }

    /// The backends a new connection should try, best first: healthy ones, then (so that a
    /// cluster-wide blip never makes the balancer refuse everything) the unknown and unhealthy
    /// ones. Within a tier, fewest active connections first, ties broken round-robin.
    pub(crate) fn plan(&mut self) -> Vec<Candidate> {
        let n = self.backends.len().max(1);
        let cursor = self.cursor % n;
        self.cursor = self.cursor.wrapping_add(1);
        let mut order: Vec<(u8, usize, usize, &Backend)> = self
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| (tier(b.health.state), b.active, (i + n - cursor) % n, b))
            .collect();
        order.sort_by_key(|&(tier, active, rot, _)| (tier, active, rot));
        order
            .into_iter()
            .map(|(_, _, _, b)| Candidate {
                id: b.id,
                addr: b.addr,
                drained: b.drain.subscribe(),
            })
            .collect()
    }

    /// Addresses by preference (healthy first, then the rest), without counting as a pick.
    pub(crate) fn preference(&self) -> Vec<SocketAddr> {
        let mut order: Vec<&Backend> = self.backends.iter().collect();
        order.sort_by_key(|b| tier(b.health.state));
        order.into_iter().map(|b| b.addr).collect()
    }

    /// Counts a connection to backend `id`. False if the backend is gone.
    pub(crate) fn register(&mut self, id: u64) -> bool {
        match self.backends.iter_mut().find(|b| b.id == id) {
            Some(b) => {
                b.active += 1;
                true
            }
            None => false,
        }
    }

    pub(crate) fn release(&mut self, id: u64) {
        if let Some(b) = self.backends.iter_mut().find(|b| b.id == id) {
            b.active = b.active.saturating_sub(1);
        }
    }

    /// Records a failed dial from the proxy. It is shown in the status but does not change the
    /// health: the active checks alone decide that, so there is one source of truth.
    pub(crate) fn note_dial_error(&mut self, id: u64, error: String) {
        if let Some(b) = self.backends.iter_mut().find(|b| b.id == id) {
            b.last_error = Some(error);
        }
    }

    /// Feeds one probe outcome for backend `id`. Returns `None` if the backend is gone (its
    /// prober should stop), else the state change it caused, if any.
    ///
    /// The drain rule, checked after every change: while at least one backend is healthy, no
    /// connection stays on an unhealthy one. So a backend that turns unhealthy is drained at once
    /// unless it was the last healthy one (then its connections are as good as any other), and
    /// connections that went to unhealthy backends during an outage move as soon as one recovers.
    pub(crate) fn observe(&mut self, id: u64, probe: &Probe, now: SystemTime) -> Option<Option<Transition>> {
        let t = self.thresholds;
        let b = self.backends.iter_mut().find(|b| b.id == id)?;
        match probe {
            Probe::Ready => {}
            Probe::NotReady(e) | Probe::Failed(e) => b.last_error = Some(e.clone()),
        }
        let from = b.health.state;
        let Some(to) = b.health.observe(probe, t) else {
            return Some(None);
        };
        b.last_change = now;
        let addr = b.addr;
        let mut drained = Vec::new();
        if self.backends.iter().any(|b| b.health.state == State::Healthy) {
            for b in self
                .backends
                .iter()
                .filter(|b| b.health.state == State::Unhealthy)
            {
                b.bump_drain();
                if b.active > 0 {
                    drained.push((b.addr, b.active));
                }
            }
        }
        Some(Some(Transition {
            addr,
            from,
            to,
            drained,
        }))
    }
}

fn tier(s: State) -> u8 {
    match s {
        State::Healthy => 0,
        State::Unknown => 1,
        State::Unhealthy => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        unhealthy_after: 2,
        healthy_after: 1,
    };

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 6443))
    }

    fn pool(n: u8) -> Pool {
        let mut p = Pool::new(T);
        let addrs: Vec<_> = (1..=n).map(addr).collect();
        p.replace(&addrs, SystemTime::UNIX_EPOCH);
        p
    }

    fn id_of(p: &Pool, i: u8) -> u64 {
        p.backends.iter().find(|b| b.addr == addr(i)).unwrap().id
    }

    fn set(p: &mut Pool, i: u8, probe: Probe) -> Option<Transition> {
        let id = id_of(p, i);
        p.observe(id, &probe, SystemTime::UNIX_EPOCH).unwrap()
    }

    fn first(p: &mut Pool) -> SocketAddr {
        p.plan()[0].addr
    }

    fn bad() -> Probe {
        Probe::NotReady("HTTP 500".into())
    }

    #[test]
    fn equal_backends_are_picked_round_robin() {
        let mut p = pool(3);
        let picks: Vec<_> = (0..6).map(|_| first(&mut p)).collect();
        assert_eq!(picks, vec![addr(1), addr(2), addr(3), addr(1), addr(2), addr(3)]);
    }

    #[test]
    fn fewest_connections_wins_among_healthy() {
        let mut p = pool(3);
        for i in 1..=3 {
            set(&mut p, i, Probe::Ready);
        }
        let (a, b) = (id_of(&p, 1), id_of(&p, 2));
        assert!(p.register(a) && p.register(a) && p.register(b));
        assert_eq!(first(&mut p), addr(3));
        assert!(p.register(id_of(&p, 3)));
        // 2, 1, 1: backends 2 and 3 tie and alternate.
        let picks: Vec<_> = (0..2).map(|_| first(&mut p)).collect();
        assert!(picks.contains(&addr(2)) && picks.contains(&addr(3)), "{picks:?}");
        p.release(a);
        p.release(a);
        assert_eq!(first(&mut p), addr(1));
    }

    #[test]
    fn unhealthy_backends_come_last_but_are_still_tried() {
        let mut p = pool(3);
        set(&mut p, 1, Probe::Ready);
        set(&mut p, 2, bad());
        // Healthy, then unknown, then unhealthy.
        let order: Vec<_> = p.plan().into_iter().map(|c| c.addr).collect();
        assert_eq!(order, vec![addr(1), addr(3), addr(2)]);
        // Everything unhealthy: every backend is still a candidate, spread round-robin.
        for i in 1..=3 {
            set(&mut p, i, bad());
        }
        let firsts: Vec<_> = (0..3).map(|_| first(&mut p)).collect();
        assert_eq!(firsts.len(), 3);
        for i in 1..=3 {
            assert!(firsts.contains(&addr(i)));
        }
        assert_eq!(p.plan().len(), 3);
    }

    #[test]
    fn a_backend_turning_unhealthy_is_drained_unless_it_was_the_last_healthy_one() {
        let mut p = pool(2);
        set(&mut p, 1, Probe::Ready);
        set(&mut p, 2, Probe::Ready);
        let mut on1 = p.plan().into_iter().find(|c| c.addr == addr(1)).unwrap().drained;
        let on2 = p.plan().into_iter().find(|c| c.addr == addr(2)).unwrap().drained;
        p.register(id_of(&p, 1));

        let t = set(&mut p, 1, bad()).unwrap();
        assert_eq!((t.from, t.to), (State::Healthy, State::Unhealthy));
        assert_eq!(t.drained, vec![(addr(1), 1)]);
        assert!(on1.has_changed().unwrap());
        on1.mark_unchanged();

        // The last healthy backend goes: nothing is drained, all connections are equally bad.
        let t = set(&mut p, 2, bad()).unwrap();
        assert!(t.drained.is_empty());
        assert!(!on2.has_changed().unwrap());

        // Backend 2 recovers: connections that stayed on backend 1 move now.
        set(&mut p, 2, Probe::Ready).unwrap();
        assert!(on1.has_changed().unwrap());
        assert!(!on2.has_changed().unwrap());
    }

    #[test]
    fn replace_keeps_state_of_staying_backends_and_closes_removed_ones() {
        let mut p = pool(2);
        set(&mut p, 1, Probe::Ready);
        let kept = id_of(&p, 1);
        p.register(kept);
        let gone = p.plan().into_iter().find(|c| c.addr == addr(2)).unwrap().drained;

        let added = p.replace(&[addr(3), addr(1), addr(3)], SystemTime::UNIX_EPOCH);
        assert_eq!(added.len(), 1);
        assert_eq!(added[0].1, addr(3));
        assert_eq!(p.addrs(), vec![addr(3), addr(1)]);
        let b1 = p.backends().iter().find(|b| b.addr == addr(1)).unwrap();
        assert_eq!((b1.id, b1.active, b1.health.state), (kept, 1, State::Healthy));
        assert!(
            gone.has_changed().is_err(),
            "removed backend's connections are closed"
        );
        // A prober of the removed backend gets told to stop.
        assert!(p.observe(999, &Probe::Ready, SystemTime::UNIX_EPOCH).is_none());
    }

    #[test]
    fn a_removed_and_re_added_backend_is_a_new_backend() {
        let mut p = pool(1);
        let old = id_of(&p, 1);
        p.register(old);
        p.replace(&[addr(2)], SystemTime::UNIX_EPOCH);
        p.replace(&[addr(1), addr(2)], SystemTime::UNIX_EPOCH);
        assert_ne!(id_of(&p, 1), old);
        p.release(old);
        assert!(p.backends().iter().all(|b| b.active == 0));
    }
}
