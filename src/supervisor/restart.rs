//! What happens after a worker dies: restart after a backoff, cool down after a crash loop,
//! stay stopped by policy, or fail on a problem restarting cannot fix. Pure logic, no clocks.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use serde::Serialize;

use super::backoff::Backoff;
use crate::config::RestartPolicy;

/// Why a worker died, as far as the supervisor can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeathCause {
    /// Exited non-zero or was killed by a signal the supervisor did not send.
    Crash,
    /// Exited 0 without being asked to.
    Exited,
    /// Stopped answering heartbeats.
    Hang,
    /// Held a request past its deadline and did not answer the cancel.
    Deadline,
    /// Broke the wire protocol.
    Protocol,
    /// Did not become ready within the start timeout.
    StartTimeout,
    /// Reported a configuration problem (a `fatal` message or exit code 78).
    Fatal,
    /// Could not be started at all.
    SpawnFailed,
}

impl fmt::Display for DeathCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            DeathCause::Crash => "crash",
            DeathCause::Exited => "exited",
            DeathCause::Hang => "hang",
            DeathCause::Deadline => "deadline",
            DeathCause::Protocol => "protocol",
            DeathCause::StartTimeout => "start timeout",
            DeathCause::Fatal => "fatal",
            DeathCause::SpawnFailed => "spawn failed",
        };
        f.write_str(text)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RestartRules {
    pub policy: RestartPolicy,
    pub backoff: Backoff,
    /// A worker ready at least this long has proven itself: the backoff starts over.
    pub reset_after: Duration,
    pub window: Duration,
    pub max_failures_in_window: u32,
    pub cooldown_retry: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    Restart { delay: Duration, attempt: u32 },
    Cooldown { retry_in: Duration, failures: usize },
    Stop { reason: String },
    Fail { reason: String },
}

/// The failure history of one agent.
#[derive(Debug, Default)]
pub struct RestartTracker {
    failures: VecDeque<Instant>,
    attempt: u32,
    cooling_down: bool,
}

impl RestartTracker {
    /// Forgets the history: an operator's `start` or `restart` gives the agent a clean slate.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    pub fn after_death(
        &mut self,
        rules: &RestartRules,
        cause: DeathCause,
        ready_for: Option<Duration>,
        now: Instant,
        jitter: f64,
    ) -> Next {
        if cause == DeathCause::Fatal {
            return Next::Fail {
                reason: "the worker reported a configuration problem".into(),
            };
        }
        match (rules.policy, cause) {
            (RestartPolicy::Temporary, _) => {
                return Next::Stop {
                    reason: format!("temporary agent ended ({cause}); not restarted by policy"),
                };
            }
            (RestartPolicy::Transient, DeathCause::Exited) => {
                return Next::Stop {
                    reason: "transient agent exited cleanly; not restarted by policy".into(),
                };
            }
            _ => {}
        }
        let proven = ready_for.is_some_and(|ready| ready >= rules.reset_after);
        if proven {
            self.attempt = 0;
            self.cooling_down = false;
        }
        self.failures.push_back(now);
        while self
            .failures
            .front()
            .is_some_and(|&t| now.duration_since(t) > rules.window)
        {
            self.failures.pop_front();
        }
        let loop_detected = self.failures.len() > rules.max_failures_in_window as usize;
        if loop_detected || self.cooling_down {
            // Once in a crash loop, stay on the slow schedule until a worker proves itself by
            // staying ready; otherwise every cooldown would buy another burst of fast restarts.
            self.cooling_down = true;
            return Next::Cooldown {
                retry_in: rules.cooldown_retry,
                failures: self.failures.len(),
            };
        }
        // A worker that proved itself, or the first failure in the window, is replaced at once,
        // as runit and OTP do: waiting would only stretch an outage that one restart ends.
        // Backing off starts with the second failure in the window, which is when a restart
        // has been seen not to help.
        if proven || self.failures.len() == 1 {
            self.attempt = 0;
        }
        let attempt = self.attempt;
        self.attempt = self.attempt.saturating_add(1);
        let delay = match attempt.checked_sub(1) {
            None => Duration::ZERO,
            Some(backoff_step) => rules.backoff.delay(backoff_step, jitter),
        };
        Next::Restart { delay, attempt }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(policy: RestartPolicy) -> RestartRules {
        RestartRules {
            policy,
            backoff: Backoff {
                base: Duration::from_millis(500),
                factor: 2.0,
                max: Duration::from_secs(30),
            },
            reset_after: Duration::from_secs(60),
            window: Duration::from_secs(60),
            max_failures_in_window: 5,
            cooldown_retry: Duration::from_secs(300),
        }
    }

    fn delay_of(next: &Next) -> Duration {
        match next {
            Next::Restart { delay, .. } => *delay,
            other => panic!("expected a restart, got {other:?}"),
        }
    }

    #[test]
    fn crashes_back_off_exponentially() {
        let rules = rules(RestartPolicy::Permanent);
        let mut tracker = RestartTracker::default();
        let start = Instant::now();
        let delays: Vec<Duration> = (0..4)
            .map(|n| {
                let at = start + Duration::from_secs(20 * n);
                delay_of(&tracker.after_death(&rules, DeathCause::Crash, None, at, 1.0))
            })
            .collect();
        assert_eq!(delays, [0, 500, 1000, 2000].map(Duration::from_millis));
    }

    #[test]
    fn the_first_failure_in_the_window_restarts_at_once_whatever_came_before() {
        let rules = rules(RestartPolicy::Permanent);
        let mut tracker = RestartTracker::default();
        let start = Instant::now();
        tracker.after_death(&rules, DeathCause::Crash, None, start, 1.0);
        let second = tracker.after_death(&rules, DeathCause::Crash, None, start, 1.0);
        assert_eq!(delay_of(&second), Duration::from_millis(500));
        let after_a_quiet_window = start + Duration::from_secs(61);
        let next = tracker.after_death(&rules, DeathCause::Crash, None, after_a_quiet_window, 1.0);
        assert_eq!(
            next,
            Next::Restart {
                delay: Duration::ZERO,
                attempt: 0
            }
        );
    }

    #[test]
    fn a_worker_ready_long_enough_resets_the_backoff() {
        let rules = rules(RestartPolicy::Permanent);
        let mut tracker = RestartTracker::default();
        let now = Instant::now();
        tracker.after_death(&rules, DeathCause::Crash, None, now, 1.0);
        tracker.after_death(&rules, DeathCause::Crash, None, now, 1.0);
        let next = tracker.after_death(
            &rules,
            DeathCause::Crash,
            Some(Duration::from_secs(61)),
            now,
            1.0,
        );
        assert_eq!(delay_of(&next), Duration::ZERO);
        let crash_right_after = tracker.after_death(&rules, DeathCause::Crash, None, now, 1.0);
        assert_eq!(delay_of(&crash_right_after), Duration::from_millis(500));
    }

    #[test]
    fn more_than_five_failures_in_a_minute_means_cooldown_until_a_worker_proves_itself() {
        let rules = rules(RestartPolicy::Permanent);
        let mut tracker = RestartTracker::default();
        let start = Instant::now();
        for n in 0..5 {
            let next = tracker.after_death(
                &rules,
                DeathCause::Crash,
                None,
                start + Duration::from_secs(n),
                0.0,
            );
            assert!(
                matches!(next, Next::Restart { .. }),
                "failure {n} should restart: {next:?}"
            );
        }
        let sixth = tracker.after_death(
            &rules,
            DeathCause::Crash,
            None,
            start + Duration::from_secs(5),
            0.0,
        );
        assert_eq!(
            sixth,
            Next::Cooldown {
                retry_in: Duration::from_secs(300),
                failures: 6
            }
        );
        // The retry after the cooldown fails quickly again: still cooling down.
        let later = start + Duration::from_secs(400);
        let again = tracker.after_death(
            &rules,
            DeathCause::StartTimeout,
            Some(Duration::from_secs(1)),
            later,
            0.0,
        );
        assert!(matches!(again, Next::Cooldown { .. }));
        // A worker that stayed ready for the reset period ends the cooldown.
        let much_later = start + Duration::from_secs(900);
        let recovered = tracker.after_death(
            &rules,
            DeathCause::Crash,
            Some(Duration::from_secs(120)),
            much_later,
            1.0,
        );
        assert_eq!(delay_of(&recovered), Duration::ZERO);
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let rules = rules(RestartPolicy::Permanent);
        let mut tracker = RestartTracker::default();
        let start = Instant::now();
        for n in 0..20 {
            let next = tracker.after_death(
                &rules,
                DeathCause::Crash,
                None,
                start + Duration::from_secs(61 * n),
                0.0,
            );
            assert!(matches!(next, Next::Restart { .. }));
        }
    }

    #[test]
    fn fatal_configuration_problems_fail_whatever_the_policy() {
        let mut tracker = RestartTracker::default();
        let next = tracker.after_death(
            &rules(RestartPolicy::Permanent),
            DeathCause::Fatal,
            None,
            Instant::now(),
            0.0,
        );
        assert!(matches!(next, Next::Fail { .. }));
    }

    #[test]
    fn restart_policies_follow_otp() {
        let now = Instant::now();
        let mut tracker = RestartTracker::default();
        let transient = rules(RestartPolicy::Transient);
        assert!(matches!(
            tracker.after_death(&transient, DeathCause::Exited, None, now, 0.0),
            Next::Stop { .. }
        ));
        assert!(matches!(
            tracker.after_death(&transient, DeathCause::Crash, None, now, 0.0),
            Next::Restart { .. }
        ));
        let temporary = rules(RestartPolicy::Temporary);
        assert!(matches!(
            tracker.after_death(&temporary, DeathCause::Crash, None, now, 0.0),
            Next::Stop { .. }
        ));
        let permanent = rules(RestartPolicy::Permanent);
        assert!(matches!(
            tracker.after_death(&permanent, DeathCause::Exited, None, now, 0.0),
            Next::Restart { .. }
        ));
    }
}
