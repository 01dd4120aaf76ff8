//! Protocol noise (stray non-JSON lines, messages of unknown type) merged into at most one
//! `protocol_noise` event per agent per interval, carrying the count since the last one, so a
//! noisy worker cannot flush the kept event history.

use std::time::Duration;

use tokio::time::Instant;

use crate::supervisor::EventKind;

/// At most one `protocol_noise` event per agent this often.
pub(super) const NOISE_REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// The `kind` of a report whose latest noise was a non-JSON line.
pub(super) const NOISE_STRAY_LINE: &str = "stray_line";
/// The `kind` of a report whose latest noise was a message of unknown type.
pub(super) const NOISE_UNKNOWN_TYPE: &str = "unknown_type";
/// The `kind` of a report whose latest noise was a response for a request the worker does not
/// hold (an unknown id, or one already answered).
pub(super) const NOISE_UNKNOWN_RESPONSE: &str = "unknown_response";

/// One merged report: how much noise since the last report, and what the latest was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NoiseReport {
    pub kind: &'static str,
    pub detail: String,
    pub count: u64,
}

impl NoiseReport {
    pub fn into_event(self) -> EventKind {
        EventKind::ProtocolNoise {
            kind: self.kind.to_owned(),
            detail: self.detail,
            count: self.count,
        }
    }
}

/// The rate limit: the first noise is reported at once, later noise within the interval is
/// held and reported, merged, when the interval is up.
#[derive(Debug, Default)]
pub(super) struct NoiseGate {
    last_report: Option<Instant>,
    pending: u64,
    latest: Option<(&'static str, String)>,
}

impl NoiseGate {
    /// Counts one piece of noise at `now`; returns a report if one may go out now.
    pub fn record(
        &mut self,
        kind: &'static str,
        detail: String,
        now: Instant,
    ) -> Option<NoiseReport> {
        self.pending += 1;
        self.latest = Some((kind, detail));
        self.flush(now, false)
    }

    /// The held report, if there is one and it is due at `now` (or at all, if `force`).
    pub fn flush(&mut self, now: Instant, force: bool) -> Option<NoiseReport> {
        if self.pending == 0 {
            return None;
        }
        let due = self
            .last_report
            .is_none_or(|at| now >= at + NOISE_REPORT_INTERVAL);
        if !due && !force {
            return None;
        }
        let (kind, detail) = self.latest.take()?;
        let count = std::mem::take(&mut self.pending);
        self.last_report = Some(now);
        Some(NoiseReport {
            kind,
            detail,
            count,
        })
    }

    /// When held noise is next due to be reported.
    pub fn next_flush(&self) -> Option<Instant> {
        if self.pending == 0 {
            return None;
        }
        self.last_report.map(|at| at + NOISE_REPORT_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_noise_is_reported_at_once_and_a_burst_after_it_is_merged() {
        let t0 = Instant::now();
        let mut gate = NoiseGate::default();
        let first = gate.record(NOISE_STRAY_LINE, "hello".into(), t0);
        assert_eq!(
            first,
            Some(NoiseReport {
                kind: NOISE_STRAY_LINE,
                detail: "hello".into(),
                count: 1
            })
        );
        assert_eq!(gate.next_flush(), None, "nothing held");
        for n in 0..500 {
            let at = t0 + Duration::from_millis(n);
            assert_eq!(gate.record(NOISE_STRAY_LINE, format!("line {n}"), at), None);
        }
        assert_eq!(gate.record(NOISE_UNKNOWN_TYPE, "banana".into(), t0), None);
        let due = t0 + NOISE_REPORT_INTERVAL;
        assert_eq!(gate.next_flush(), Some(due));
        assert_eq!(gate.flush(due - Duration::from_millis(1), false), None);
        let merged = gate.flush(due, false).expect("due");
        assert_eq!(merged.count, 501);
        assert_eq!(
            (merged.kind, merged.detail.as_str()),
            (NOISE_UNKNOWN_TYPE, "banana")
        );
        assert_eq!(gate.flush(due, false), None, "nothing left");
    }

    #[test]
    fn noise_after_a_quiet_interval_is_reported_at_once() {
        let t0 = Instant::now();
        let mut gate = NoiseGate::default();
        gate.record(NOISE_STRAY_LINE, "a".into(), t0);
        let later = t0 + NOISE_REPORT_INTERVAL * 3;
        let report = gate.record(NOISE_STRAY_LINE, "b".into(), later);
        assert_eq!(report.map(|r| r.count), Some(1));
    }

    #[test]
    fn a_forced_flush_reports_held_noise_early() {
        let t0 = Instant::now();
        let mut gate = NoiseGate::default();
        gate.record(NOISE_STRAY_LINE, "a".into(), t0);
        gate.record(NOISE_STRAY_LINE, "b".into(), t0);
        assert_eq!(gate.flush(t0, true).map(|r| r.count), Some(1));
        assert_eq!(gate.flush(t0, true), None);
    }
}
