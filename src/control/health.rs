//! Agent health: the one place that turns an agent's state and restart history into
//! `healthy`, `degraded`, `unhealthy` or `stopped`.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::agent::StateName;

/// A worker that replaced another this recently has not proven itself yet.
pub const RECENT_RESTART: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Ready or busy, and no worker of this agent ended in the last five minutes.
    Healthy,
    /// Ready or busy but restarted within the last five minutes, or on its way up
    /// (`starting`, `backoff`).
    Degraded,
    /// Not serving and not about to: `cooldown`, `failed`, or `stopping` (not answering).
    Unhealthy,
    /// `stopped`: by an operator (`mnemosyne stop`) or by its restart policy; the reason says
    /// which. Stopped on purpose, so not counted as unhealthy.
    Stopped,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Unhealthy => "unhealthy",
            Health::Stopped => "stopped",
        })
    }
}

/// The health of an agent in `state` whose previous worker (if any) ended at `last_exit`.
///
/// Any end of a worker counts as a restart here, an operator's `restart` included: the new
/// worker is equally unproven either way.
pub fn health(state: StateName, last_exit: Option<SystemTime>, now: SystemTime) -> Health {
    match state {
        StateName::Ready | StateName::Busy => {
            let recent = last_exit.is_some_and(|at| {
                // A clock stepped backwards makes the exit look like the future: recent.
                now.duration_since(at)
                    .map_or(true, |since| since < RECENT_RESTART)
            });
            if recent {
                Health::Degraded
            } else {
                Health::Healthy
            }
        }
        StateName::Starting | StateName::Backoff => Health::Degraded,
        StateName::Cooldown | StateName::Failed | StateName::Stopping => Health::Unhealthy,
        StateName::Stopped => Health::Stopped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds_ago: u64, now: SystemTime) -> Option<SystemTime> {
        Some(now - Duration::from_secs(seconds_ago))
    }

    #[test]
    fn a_serving_agent_that_never_restarted_is_healthy() {
        let now = SystemTime::now();
        assert_eq!(health(StateName::Ready, None, now), Health::Healthy);
        assert_eq!(health(StateName::Busy, None, now), Health::Healthy);
    }

    #[test]
    fn a_restart_within_five_minutes_makes_a_serving_agent_degraded() {
        let now = SystemTime::now();
        assert_eq!(health(StateName::Ready, at(10, now), now), Health::Degraded);
        assert_eq!(health(StateName::Busy, at(299, now), now), Health::Degraded);
        assert_eq!(health(StateName::Ready, at(300, now), now), Health::Healthy);
        assert_eq!(health(StateName::Busy, at(3600, now), now), Health::Healthy);
    }

    #[test]
    fn an_exit_in_the_future_counts_as_recent() {
        let now = SystemTime::now();
        let later = Some(now + Duration::from_secs(5));
        assert_eq!(health(StateName::Ready, later, now), Health::Degraded);
    }

    #[test]
    fn an_agent_on_its_way_up_is_degraded() {
        let now = SystemTime::now();
        assert_eq!(health(StateName::Starting, None, now), Health::Degraded);
        assert_eq!(
            health(StateName::Backoff, at(1, now), now),
            Health::Degraded
        );
    }

    #[test]
    fn cooldown_failed_and_stopping_are_unhealthy() {
        let now = SystemTime::now();
        for state in [StateName::Cooldown, StateName::Failed, StateName::Stopping] {
            assert_eq!(
                health(state, at(1000, now), now),
                Health::Unhealthy,
                "{state}"
            );
        }
    }

    #[test]
    fn a_stopped_agent_is_stopped_not_unhealthy() {
        let now = SystemTime::now();
        assert_eq!(health(StateName::Stopped, at(1, now), now), Health::Stopped);
        assert_eq!(health(StateName::Stopped, None, now), Health::Stopped);
    }
}
