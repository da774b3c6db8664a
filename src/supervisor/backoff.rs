//! Restart policy: exponential backoff that forgets old failures after a stable run.
//!
//! This is the pure core of supervision (STYLE habit 1). It never sleeps and never reads the
//! clock: the runtime feeds it [`Event`]s stamped with the time they happened and performs the
//! [`Action`]s it returns. That keeps the policy testable with injected instants, and keeps the
//! question "how long do we wait before respawning kube-apiserver?" answerable by reading one
//! file.
//!
//! Why backoff at all: k0s respawns with a fixed delay, so a component that cannot start (a
//! bad flag, a port in use) burns CPU and floods its log forever. Why reset after a stable run:
//! a component that ran fine for hours and then crashed once should come back after the
//! initial delay, not after the delay earned by a crash loop last week.

use std::time::{Duration, Instant};

/// Tuning of the restart policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Delay before the first respawn after a crash.
    pub initial: Duration,
    /// Upper bound of the delay; doubling stops here.
    pub max: Duration,
    /// A run at least this long counts as stable and clears the failure streak.
    pub stable_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            stable_after: Duration::from_secs(30),
        }
    }
}

/// Something that happened to the supervised process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The process was spawned.
    Started { at: Instant },
    /// The process exited on its own (or could not be spawned at all).
    Exited { at: Instant },
    /// An operator-initiated stop or restart: the next failure starts a fresh streak.
    Reset,
}

/// What the runtime must do in response to an [`Event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The last run was stable; earlier failures no longer count (the runtime logs this).
    ForgetFailures,
    /// Respawn the process after this delay.
    RestartAfter(Duration),
}

/// The backoff state machine for one component.
#[derive(Clone, Debug)]
pub struct Backoff {
    policy: BackoffPolicy,
    /// Consecutive unstable exits; the next delay is `initial * 2^failures`, capped.
    failures: u32,
    /// When the current run started, if a process is running.
    running_since: Option<Instant>,
}

impl Backoff {
    pub fn new(policy: BackoffPolicy) -> Self {
        Self {
            policy,
            failures: 0,
            running_since: None,
        }
    }

    /// Consecutive unstable exits so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        match event {
            Event::Started { at } => {
                self.running_since = Some(at);
                Vec::new()
            }
            Event::Exited { at } => {
                let mut actions = Vec::new();
                // An exit without a recorded start is a spawn failure: it never counts as stable.
                let ran_for = self
                    .running_since
                    .take()
                    .map(|since| at.saturating_duration_since(since));
                if ran_for.is_some_and(|d| d >= self.policy.stable_after) && self.failures > 0 {
                    self.failures = 0;
                    actions.push(Action::ForgetFailures);
                }
                actions.push(Action::RestartAfter(self.delay()));
                self.failures = self.failures.saturating_add(1);
                actions
            }
            Event::Reset => {
                self.failures = 0;
                self.running_since = None;
                Vec::new()
            }
        }
    }

    /// `initial * 2^failures`, capped at `max`, computed without overflow.
    fn delay(&self) -> Duration {
        // 2^32 seconds is far beyond any sane cap, so a shift beyond 31 is simply "the cap".
        let factor = 1u32.checked_shl(self.failures).unwrap_or(u32::MAX);
        self.policy.initial.saturating_mul(factor).min(self.policy.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Starts at `t0 + start` and exits at `t0 + end`, returning the actions for the exit.
    fn run(b: &mut Backoff, t0: Instant, start: u64, end: u64) -> Vec<Action> {
        assert_eq!(b.handle(Event::Started { at: t0 + secs(start) }), vec![]);
        b.handle(Event::Exited { at: t0 + secs(end) })
    }

    #[test]
    fn crash_loop_doubles_up_to_the_cap() {
        let mut b = Backoff::new(BackoffPolicy::default());
        let t0 = Instant::now();
        let mut delays = Vec::new();
        let mut t = 0;
        for _ in 0..9 {
            let actions = run(&mut b, t0, t, t + 1);
            let [Action::RestartAfter(d)] = actions[..] else {
                panic!("unexpected {actions:?}")
            };
            delays.push(d.as_secs());
            t += 1 + d.as_secs();
        }
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.failures(), 9);
    }

    #[test]
    fn stable_run_resets_the_streak() {
        let mut b = Backoff::new(BackoffPolicy::default());
        let t0 = Instant::now();
        run(&mut b, t0, 0, 1);
        run(&mut b, t0, 2, 3);
        assert_eq!(run(&mut b, t0, 5, 6), vec![Action::RestartAfter(secs(4))]);
        // Ran for exactly `stable_after`: the streak is forgotten and the delay is back to 1 s.
        assert_eq!(
            run(&mut b, t0, 10, 40),
            vec![Action::ForgetFailures, Action::RestartAfter(secs(1))]
        );
        assert_eq!(run(&mut b, t0, 41, 42), vec![Action::RestartAfter(secs(2))]);
    }

    #[test]
    fn first_stable_exit_does_not_report_a_reset() {
        let mut b = Backoff::new(BackoffPolicy::default());
        let t0 = Instant::now();
        assert_eq!(run(&mut b, t0, 0, 3600), vec![Action::RestartAfter(secs(1))]);
    }

    #[test]
    fn spawn_failures_back_off_and_never_count_as_stable() {
        let mut b = Backoff::new(BackoffPolicy::default());
        let t0 = Instant::now();
        // No Started event: the program could not be spawned.
        assert_eq!(
            b.handle(Event::Exited { at: t0 }),
            vec![Action::RestartAfter(secs(1))]
        );
        assert_eq!(
            b.handle(Event::Exited { at: t0 + secs(100) }),
            vec![Action::RestartAfter(secs(2))]
        );
    }

    #[test]
    fn reset_clears_failures() {
        let mut b = Backoff::new(BackoffPolicy::default());
        let t0 = Instant::now();
        run(&mut b, t0, 0, 1);
        run(&mut b, t0, 2, 3);
        assert_eq!(b.handle(Event::Reset), vec![]);
        assert_eq!(run(&mut b, t0, 4, 5), vec![Action::RestartAfter(secs(1))]);
    }

    #[test]
    fn huge_streaks_do_not_overflow() {
        let policy = BackoffPolicy {
            initial: Duration::from_millis(10),
            ..BackoffPolicy::default()
        };
        let mut b = Backoff::new(policy);
        let t0 = Instant::now();
        for _ in 0..200 {
            b.handle(Event::Exited { at: t0 });
        }
        assert_eq!(
            b.handle(Event::Exited { at: t0 }),
            vec![Action::RestartAfter(secs(60))]
        );
    }
}
