//! Exponential backoff with jitter: the one delay rule for worker restarts and for retries of
//! calls the model provider turned away.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub base: Duration,
    pub factor: f64,
    pub max: Duration,
}

impl Backoff {
    /// The delay before restart number `attempt` (0 for the first restart after a good run).
    ///
    /// `jitter` is a sample from [0, 1); the delay is spread over [d/2, d) ("equal jitter"),
    /// so agents that crashed together do not restart in lockstep, yet no delay collapses to 0.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let exponent = i32::try_from(attempt).unwrap_or(i32::MAX);
        let uncapped = self.base.as_secs_f64() * self.factor.powi(exponent);
        let full = uncapped.min(self.max.as_secs_f64());
        let jitter = jitter.clamp(0.0, 1.0);
        Duration::from_secs_f64(full * (0.5 + 0.5 * jitter))
    }

    pub fn delay_with_random_jitter(&self, attempt: u32) -> Duration {
        self.delay(attempt, fastrand::f64())
    }

    /// The delay before retry number `attempt`, spread over all of [0, d) ("full jitter").
    ///
    /// For calls turned away by a shared, overloaded service: many callers that were refused at
    /// the same moment must come back spread out, or they overload it again together. A
    /// worker restart keeps equal jitter instead, because a delay near zero would defeat the
    /// point of backing off from a crashing worker.
    pub fn full_jitter(&self, attempt: u32, jitter: f64) -> Duration {
        self.delay(attempt, 1.0).mul_f64(jitter.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Backoff {
        Backoff {
            base: Duration::from_millis(500),
            factor: 2.0,
            max: Duration::from_secs(30),
        }
    }

    #[test]
    fn delays_double_from_the_base_until_the_cap() {
        let backoff = defaults();
        let full: Vec<u128> = (0..9).map(|n| backoff.delay(n, 1.0).as_millis()).collect();
        assert_eq!(
            full,
            vec![500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
    }

    #[test]
    fn jitter_spreads_each_delay_over_its_upper_half() {
        let backoff = defaults();
        assert_eq!(backoff.delay(0, 0.0), Duration::from_millis(250));
        assert_eq!(backoff.delay(2, 0.0), Duration::from_millis(1000));
        assert_eq!(backoff.delay(2, 0.5), Duration::from_millis(1500));
        assert_eq!(backoff.delay(40, 0.0), Duration::from_secs(15));
        for attempt in 0..20 {
            let delay = backoff.delay_with_random_jitter(attempt);
            assert!(delay >= backoff.delay(attempt, 0.0) && delay <= backoff.delay(attempt, 1.0));
        }
    }

    #[test]
    fn full_jitter_spreads_each_delay_over_all_of_it() {
        let backoff = defaults();
        assert_eq!(backoff.full_jitter(0, 0.0), Duration::ZERO);
        assert_eq!(backoff.full_jitter(1, 0.5), Duration::from_millis(500));
        assert_eq!(backoff.full_jitter(40, 1.0), Duration::from_secs(30));
        assert_eq!(backoff.full_jitter(3, 7.0), backoff.delay(3, 1.0));
    }

    #[test]
    fn huge_attempt_numbers_stay_at_the_cap() {
        assert_eq!(defaults().delay(u32::MAX, 1.0), Duration::from_secs(30));
    }
}
