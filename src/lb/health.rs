//! The health of one backend as a pure state machine: probe outcomes go in, a state change
//! (if any) comes out. No clocks, no sockets; the runtime in `mod.rs` feeds it.
//!
//! ```text
//!                first 200
//!   Unknown ───────────────────────▶ Healthy
//!      │                             │    ▲
//!      │ any          a non-200, or  │    │ `healthy_after`
//!      │ failure  `unhealthy_after`  │    │ 200s in a row
//!      │       transport failures    │    │
//!      │                in a row     ▼    │
//!      └─────────────────────────▶ Unhealthy
//! ```
//!
//! A non-200 `/readyz` is authoritative: kube-apiserver is up and says it must not get traffic
//! (shutting down with `--shutdown-delay-duration`, or its datastore is gone). A transport failure
//! (refused, reset, timeout) may be a blip, so it takes several in a row.

/// What the last probe of `/readyz` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Probe {
    /// HTTP 200.
    Ready,
    /// The server answered, with another status. The text is for `last_error`.
    NotReady(String),
    /// No HTTP answer: dial, TLS, timeout or a malformed response.
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Not probed yet. Gets traffic only when no backend is healthy.
    Unknown,
    Healthy,
    Unhealthy,
}

impl State {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            State::Unknown => "unknown",
            State::Healthy => "healthy",
            State::Unhealthy => "unhealthy",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Thresholds {
    /// Consecutive transport failures that make a healthy backend unhealthy (at least 1).
    pub(crate) unhealthy_after: u32,
    /// Consecutive 200s that make an unhealthy backend healthy again (at least 1).
    pub(crate) healthy_after: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Health {
    pub(crate) state: State,
    pub(crate) consecutive_failures: u32,
    consecutive_successes: u32,
}

impl Health {
    pub(crate) fn new() -> Health {
        Health {
            state: State::Unknown,
            consecutive_failures: 0,
            consecutive_successes: 0,
        }
    }

    /// Records one probe outcome; returns the new state if it changed.
    pub(crate) fn observe(&mut self, probe: &Probe, t: Thresholds) -> Option<State> {
        let next = match probe {
            Probe::Ready => {
                self.consecutive_failures = 0;
                self.consecutive_successes = self.consecutive_successes.saturating_add(1);
                match self.state {
                    // Nothing to recover from yet: one good answer is enough.
                    State::Unknown => State::Healthy,
                    State::Unhealthy if self.consecutive_successes >= t.healthy_after.max(1) => {
                        State::Healthy
                    }
                    s => s,
                }
            }
            Probe::NotReady(_) => {
                self.consecutive_successes = 0;
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                State::Unhealthy
            }
            Probe::Failed(_) => {
                self.consecutive_successes = 0;
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                match self.state {
                    State::Healthy if self.consecutive_failures < t.unhealthy_after.max(1) => State::Healthy,
                    _ => State::Unhealthy,
                }
            }
        };
        if next == self.state {
            return None;
        }
        self.state = next;
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        unhealthy_after: 2,
        healthy_after: 2,
    };

    fn run(probes: &[Probe]) -> Vec<Option<State>> {
        let mut h = Health::new();
        probes.iter().map(|p| h.observe(p, T)).collect()
    }

    fn failed() -> Probe {
        Probe::Failed("connection refused".into())
    }

    #[test]
    fn first_success_makes_an_unknown_backend_healthy() {
        assert_eq!(
            run(&[Probe::Ready, Probe::Ready]),
            vec![Some(State::Healthy), None]
        );
    }

    #[test]
    fn first_failure_makes_an_unknown_backend_unhealthy() {
        assert_eq!(run(&[failed()]), vec![Some(State::Unhealthy)]);
    }

    #[test]
    fn transport_failures_must_repeat_but_a_non_200_counts_at_once() {
        assert_eq!(
            run(&[Probe::Ready, failed(), Probe::Ready, failed(), failed()]),
            vec![Some(State::Healthy), None, None, None, Some(State::Unhealthy)]
        );
        assert_eq!(
            run(&[Probe::Ready, Probe::NotReady("500".into())]),
            vec![Some(State::Healthy), Some(State::Unhealthy)]
        );
    }

    #[test]
    fn recovery_needs_consecutive_successes() {
        let nr = || Probe::NotReady("500".into());
        assert_eq!(
            run(&[Probe::Ready, nr(), Probe::Ready, nr(), Probe::Ready, Probe::Ready]),
            vec![
                Some(State::Healthy),
                Some(State::Unhealthy),
                None,
                None,
                None,
                Some(State::Healthy)
            ]
        );
    }

    #[test]
    fn failure_counter_is_reported_and_reset() {
        let mut h = Health::new();
        h.observe(&failed(), T);
        h.observe(&failed(), T);
        assert_eq!(h.consecutive_failures, 2);
        h.observe(&Probe::Ready, T);
        assert_eq!(h.consecutive_failures, 0);
    }

    #[test]
    fn zero_thresholds_behave_as_one() {
        let t = Thresholds {
            unhealthy_after: 0,
            healthy_after: 0,
        };
        let mut h = Health::new();
        h.observe(&Probe::Ready, t);
        assert_eq!(h.observe(&failed(), t), Some(State::Unhealthy));
        assert_eq!(h.observe(&Probe::Ready, t), Some(State::Healthy));
    }
}
