//! The clocks of one worker: its start timeout and its heartbeat (pings, and the kill after
//! too many unanswered) — what is due at an instant, and when the next wakeup is. Plain
//! functions of (state, now), so tests drive them with plain instants.

use std::time::Duration;

use tokio::time::Instant;

use crate::supervisor::DeathCause;

/// The configured timings of an agent's workers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Timing {
    pub heartbeat_interval: Duration,
    pub heartbeat_misses: u32,
    pub start_timeout: Duration,
    pub cancel_grace: Duration,
    pub stop_grace: Duration,
    pub term_grace: Duration,
}

/// What a worker's clocks call for at some instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ClockDue {
    Nothing,
    /// Send a ping with this nonce (it is already counted as unanswered).
    Ping(u64),
    /// Kill the worker, for this cause and with this detail.
    Kill(DeathCause, String),
}

/// The start and heartbeat clocks of one worker.
#[derive(Debug, Clone)]
pub(super) struct WorkerClock {
    started_at: Instant,
    ready_at: Option<Instant>,
    next_ping_at: Option<Instant>,
    next_nonce: u64,
    unanswered_pings: u32,
}

impl WorkerClock {
    pub fn new(started_at: Instant) -> Self {
        Self {
            started_at,
            ready_at: None,
            next_ping_at: None,
            next_nonce: 0,
            unanswered_pings: 0,
        }
    }

    pub fn ready_at(&self) -> Option<Instant> {
        self.ready_at
    }

    /// The worker said `ready`: the start timeout no longer applies and heartbeats begin.
    /// Returns false if it had already said so.
    pub fn ready(&mut self, now: Instant, timing: &Timing) -> bool {
        if self.ready_at.is_some() {
            return false;
        }
        self.ready_at = Some(now);
        self.next_ping_at = Some(now + timing.heartbeat_interval);
        true
    }

    /// A `pong` arrived. Any pong for a ping we sent proves the worker is alive.
    pub fn pong(&mut self, nonce: u64) {
        if nonce <= self.next_nonce {
            self.unanswered_pings = 0;
        }
    }

    /// What is due at `now`. A ping returned is counted as sent and the next one scheduled.
    pub fn due(&mut self, now: Instant, timing: &Timing) -> ClockDue {
        if self.ready_at.is_none() && now >= self.started_at + timing.start_timeout {
            let detail = format!(
                "not ready within the start timeout of {}",
                human(timing.start_timeout)
            );
            return ClockDue::Kill(DeathCause::StartTimeout, detail);
        }
        if self.next_ping_at.is_none_or(|at| now < at) {
            return ClockDue::Nothing;
        }
        if self.unanswered_pings >= timing.heartbeat_misses {
            let detail = format!(
                "{} heartbeats in a row unanswered ({} apart)",
                self.unanswered_pings,
                human(timing.heartbeat_interval)
            );
            return ClockDue::Kill(DeathCause::Hang, detail);
        }
        self.next_nonce += 1;
        self.unanswered_pings += 1;
        self.next_ping_at = Some(now + timing.heartbeat_interval);
        ClockDue::Ping(self.next_nonce)
    }

    /// When something may next be due: the start timeout or the next ping.
    pub fn next_wakeup(&self, timing: &Timing) -> Option<Instant> {
        let start_deadline = self
            .ready_at
            .is_none()
            .then(|| self.started_at + timing.start_timeout);
        [start_deadline, self.next_ping_at]
            .into_iter()
            .flatten()
            .min()
    }
}

/// The earliest of some optional instants.
pub(super) fn earliest(instants: impl IntoIterator<Item = Option<Instant>>) -> Option<Instant> {
    instants.into_iter().flatten().min()
}

/// A duration for people: whole milliseconds read better than humantime's nanoseconds.
pub(super) fn human(duration: Duration) -> String {
    humantime::format_duration(Duration::from_millis(duration.as_millis() as u64)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> Timing {
        Timing {
            heartbeat_interval: Duration::from_millis(100),
            heartbeat_misses: 3,
            start_timeout: Duration::from_secs(10),
            cancel_grace: Duration::from_millis(500),
            stop_grace: Duration::from_secs(2),
            term_grace: Duration::from_secs(1),
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_worker_not_ready_within_the_start_timeout_is_killed() {
        let t0 = Instant::now();
        let mut clock = WorkerClock::new(t0);
        assert_eq!(
            clock.next_wakeup(&timing()),
            Some(t0 + timing().start_timeout)
        );
        assert_eq!(
            clock.due(t0 + timing().start_timeout - MS, &timing()),
            ClockDue::Nothing
        );
        let due = clock.due(t0 + timing().start_timeout, &timing());
        assert!(
            matches!(&due, ClockDue::Kill(DeathCause::StartTimeout, detail) if detail.contains("10s")),
            "{due:?}"
        );
    }

    #[test]
    fn a_ready_worker_is_pinged_every_interval_and_a_pong_resets_the_count() {
        let t0 = Instant::now();
        let timing = timing();
        let mut clock = WorkerClock::new(t0);
        assert!(clock.ready(t0, &timing));
        assert!(
            !clock.ready(t0 + MS, &timing),
            "only the first ready counts"
        );
        let first = t0 + timing.heartbeat_interval;
        assert_eq!(clock.next_wakeup(&timing), Some(first));
        assert_eq!(clock.due(first - MS, &timing), ClockDue::Nothing);
        assert_eq!(clock.due(first, &timing), ClockDue::Ping(1));
        assert_eq!(clock.due(first, &timing), ClockDue::Nothing, "not twice");
        let second = first + timing.heartbeat_interval;
        assert_eq!(clock.next_wakeup(&timing), Some(second));
        clock.pong(1);
        assert_eq!(clock.due(second, &timing), ClockDue::Ping(2));
    }

    #[test]
    fn a_worker_missing_heartbeat_misses_pings_in_a_row_is_killed_as_hung() {
        let t0 = Instant::now();
        let timing = timing();
        let mut clock = WorkerClock::new(t0);
        clock.ready(t0, &timing);
        let mut now = t0;
        for nonce in 1..=u64::from(timing.heartbeat_misses) {
            now += timing.heartbeat_interval;
            assert_eq!(clock.due(now, &timing), ClockDue::Ping(nonce));
        }
        now += timing.heartbeat_interval;
        let due = clock.due(now, &timing);
        assert!(
            matches!(&due, ClockDue::Kill(DeathCause::Hang, detail) if detail.starts_with("3 heartbeats")),
            "{due:?}"
        );
    }

    #[test]
    fn a_pong_for_a_ping_never_sent_does_not_count() {
        let t0 = Instant::now();
        let timing = timing();
        let mut clock = WorkerClock::new(t0);
        clock.ready(t0, &timing);
        let mut now = t0;
        for _ in 0..timing.heartbeat_misses {
            now += timing.heartbeat_interval;
            clock.due(now, &timing);
        }
        clock.pong(99);
        now += timing.heartbeat_interval;
        assert!(matches!(
            clock.due(now, &timing),
            ClockDue::Kill(DeathCause::Hang, _)
        ));
    }

    #[test]
    fn durations_read_in_whole_milliseconds() {
        assert_eq!(human(Duration::from_nanos(1_500_000_123)), "1s 500ms");
    }
}
