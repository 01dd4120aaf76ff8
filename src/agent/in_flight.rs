//! The requests one worker holds: dispatching them, their deadlines and cancels, and what
//! becomes of them when the worker is lost (redelivery, blame, quarantine).

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

use tokio::time::Instant;

use super::job::{DeliveryFailure, Job};
use super::timers::human;
use crate::protocol::{Cancel, Request, SupervisorMessage};

/// One request a worker holds.
#[derive(Debug)]
pub(super) struct Held {
    pub job: Job,
    pub deadline: Instant,
    pub cancel_sent_at: Option<Instant>,
}

/// What a worker's requests call for at some instant.
#[derive(Debug, Default)]
pub(super) struct RequestsDue {
    /// Cancels to send now (deadlines just passed; already marked as sent).
    pub cancels: Vec<SupervisorMessage>,
    /// A request that ignored its cancel for the whole grace: its id and why the worker dies.
    pub overdue: Option<(String, String)>,
}

/// The requests one worker holds, by job id.
#[derive(Debug, Default)]
pub(super) struct InFlight {
    held: BTreeMap<String, Held>,
}

impl InFlight {
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Whether a job that must run alone is among them.
    pub fn holds_isolated(&self) -> bool {
        self.held.values().any(|held| held.job.isolate)
    }

    pub fn first_id(&self) -> Option<&str> {
        self.held.keys().next().map(String::as_str)
    }

    pub fn ids(&self) -> Vec<String> {
        self.held.keys().cloned().collect()
    }

    /// Counts a delivery of `job` and builds the request that delivers it.
    pub fn request_for(job: &mut Job) -> SupervisorMessage {
        job.deliveries += 1;
        SupervisorMessage::Request(Request {
            id: job.request.id.clone(),
            method: job.request.method.clone(),
            params: job.request.params.clone(),
            deadline_ms: u64::try_from(job.request.deadline.as_millis()).unwrap_or(u64::MAX),
            delivery: NonZeroU32::new(job.deliveries),
        })
    }

    /// Holds `job`, sent at `now`; its deadline runs from now.
    pub fn insert(&mut self, job: Job, now: Instant) {
        let held = Held {
            deadline: now + job.request.deadline,
            cancel_sent_at: None,
            job,
        };
        self.held.insert(held.job.request.id.clone(), held);
    }

    pub fn remove(&mut self, id: &str) -> Option<Held> {
        self.held.remove(id)
    }

    pub fn take_all(&mut self) -> Vec<(String, Held)> {
        std::mem::take(&mut self.held).into_iter().collect()
    }

    /// Cancels due at `now` (marked as sent), and the first request that ignored its cancel
    /// for `cancel_grace`.
    pub fn due(&mut self, now: Instant, cancel_grace: Duration) -> RequestsDue {
        let mut due = RequestsDue::default();
        for held in self.held.values_mut() {
            match held.cancel_sent_at {
                None if now >= held.deadline => {
                    held.cancel_sent_at = Some(now);
                    due.cancels.push(SupervisorMessage::Cancel(Cancel {
                        id: held.job.request.id.clone(),
                        reason: Some("deadline".into()),
                    }));
                }
                Some(sent) if now >= sent + cancel_grace && due.overdue.is_none() => {
                    let detail = format!(
                        "request {} overran its deadline of {} and did not answer the cancel within {}",
                        held.job.request.id,
                        human(held.job.request.deadline),
                        human(cancel_grace)
                    );
                    due.overdue = Some((held.job.request.id.clone(), detail));
                }
                _ => {}
            }
        }
        due
    }

    /// The next deadline or end of a cancel grace.
    pub fn next_wakeup(&self, cancel_grace: Duration) -> Option<Instant> {
        self.held
            .values()
            .map(|held| match held.cancel_sent_at {
                None => held.deadline,
                Some(sent) => sent + cancel_grace,
            })
            .min()
    }
}

/// The requests of a dead worker, each with the failure charged to it: with a known culprit
/// only the culprit is blamed (the bystanders just go again); without one, every request is
/// blamed, and if there were several none knows it alone, so each is marked shared and will
/// next run isolated.
pub(super) fn lost_with_worker(
    held: Vec<(String, Held)>,
    culprit: Option<&str>,
    failure: impl Fn(bool) -> DeliveryFailure,
) -> Vec<(Job, Option<DeliveryFailure>)> {
    let shared = held.len() > 1 && culprit.is_none();
    held.into_iter()
        .map(|(id, held)| {
            let mut job = held.job;
            let blamed = culprit.is_none_or(|culprit| culprit == id);
            job.isolate |= shared;
            (job, blamed.then(|| failure(shared)))
        })
        .collect()
}

/// Where a job goes after a lost delivery.
#[derive(Debug)]
pub(super) enum Redelivery {
    /// Back into its role's queue (the isolated queue if it must run alone).
    Requeue { job: Job, isolated: bool },
    /// Lost too often through its own fault: it ends with this failure history.
    Quarantine(Job),
}

/// Records `failure` on `job` and decides its way on: quarantined once `max_deliveries` lost
/// deliveries are blamed on it, requeued otherwise.
pub(super) fn redelivery(
    mut job: Job,
    failure: Option<DeliveryFailure>,
    max_deliveries: u32,
) -> Redelivery {
    if let Some(failure) = failure {
        job.failures.push(failure);
    }
    if job.attributed_failures() >= max_deliveries as usize {
        return Redelivery::Quarantine(job);
    }
    let isolated = job.isolate;
    Redelivery::Requeue { job, isolated }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::agent::JobRequest;
    use crate::supervisor::DeathCause;

    const GRACE: Duration = Duration::from_millis(500);

    fn job(id: &str, deadline: Duration) -> Job {
        Job::new(JobRequest {
            id: id.into(),
            method: "echo".into(),
            params: json!({}),
            deadline,
        })
        .0
    }

    fn failure(shared: bool) -> DeliveryFailure {
        DeliveryFailure {
            agent: "executor-1".into(),
            pid: 42,
            cause: DeathCause::Crash,
            exit: None,
            shared,
            stderr_tail: Vec::new(),
        }
    }

    #[test]
    fn each_delivery_is_counted_and_numbered_on_the_wire() {
        let mut job = job("j1", Duration::from_secs(3));
        InFlight::request_for(&mut job);
        let SupervisorMessage::Request(request) = InFlight::request_for(&mut job) else {
            panic!("a request");
        };
        assert_eq!(job.deliveries, 2);
        assert_eq!(request.delivery, NonZeroU32::new(2));
        assert_eq!(request.deadline_ms, 3000);
    }

    #[test]
    fn a_request_past_its_deadline_is_cancelled_once_then_overdue_after_the_grace() {
        let t0 = Instant::now();
        let mut in_flight = InFlight::default();
        in_flight.insert(job("slow", Duration::from_secs(1)), t0);
        in_flight.insert(job("late", Duration::from_secs(5)), t0);
        assert_eq!(
            in_flight.next_wakeup(GRACE),
            Some(t0 + Duration::from_secs(1))
        );

        let deadline = t0 + Duration::from_secs(1);
        let due = in_flight.due(deadline, GRACE);
        assert_eq!(due.cancels.len(), 1);
        assert!(matches!(&due.cancels[0], SupervisorMessage::Cancel(c) if c.id == "slow"));
        assert!(due.overdue.is_none());
        assert_eq!(in_flight.next_wakeup(GRACE), Some(deadline + GRACE));

        let again = in_flight.due(deadline + GRACE - Duration::from_millis(1), GRACE);
        assert!(
            again.cancels.is_empty() && again.overdue.is_none(),
            "one cancel only"
        );

        let overdue = in_flight.due(deadline + GRACE, GRACE).overdue;
        let (id, detail) = overdue.expect("overdue after the grace");
        assert_eq!(id, "slow");
        assert!(detail.contains("within 500ms"), "{detail}");
    }

    #[test]
    fn an_answered_request_leaves_no_timer() {
        let t0 = Instant::now();
        let mut in_flight = InFlight::default();
        in_flight.insert(job("j1", Duration::from_secs(1)), t0);
        assert!(in_flight.remove("j1").is_some());
        assert!(in_flight.is_empty());
        assert_eq!(in_flight.next_wakeup(GRACE), None);
    }

    #[test]
    fn a_known_culprit_alone_is_blamed_for_a_death() {
        let t0 = Instant::now();
        let mut in_flight = InFlight::default();
        in_flight.insert(job("culprit", Duration::from_secs(1)), t0);
        in_flight.insert(job("bystander", Duration::from_secs(1)), t0);
        let lost = lost_with_worker(in_flight.take_all(), Some("culprit"), failure);
        for (job, failure) in &lost {
            let blamed = job.request.id == "culprit";
            assert_eq!(failure.is_some(), blamed, "{}", job.request.id);
            assert!(!job.isolate);
        }
    }

    #[test]
    fn a_death_without_culprit_shares_the_blame_and_isolates_every_job() {
        let t0 = Instant::now();
        let mut in_flight = InFlight::default();
        in_flight.insert(job("a", Duration::from_secs(1)), t0);
        in_flight.insert(job("b", Duration::from_secs(1)), t0);
        let lost = lost_with_worker(in_flight.take_all(), None, failure);
        assert!(
            lost.iter()
                .all(|(job, failure)| job.isolate && failure.as_ref().is_some_and(|f| f.shared))
        );
    }

    #[test]
    fn a_lone_job_is_blamed_without_being_isolated() {
        let mut in_flight = InFlight::default();
        in_flight.insert(job("a", Duration::from_secs(1)), Instant::now());
        let lost = lost_with_worker(in_flight.take_all(), None, failure);
        assert!(!lost[0].0.isolate);
        assert_eq!(lost[0].1.as_ref().map(|f| f.shared), Some(false));
    }

    #[test]
    fn a_job_is_quarantined_after_max_deliveries_blamed_failures_only() {
        let mut job = job("j", Duration::from_secs(1));
        job = match redelivery(job, Some(failure(true)), 2) {
            Redelivery::Requeue { job, .. } => job,
            Redelivery::Quarantine(_) => panic!("shared failures do not count"),
        };
        job = match redelivery(job, Some(failure(false)), 2) {
            Redelivery::Requeue { job, .. } => job,
            Redelivery::Quarantine(_) => panic!("one blamed failure of two allowed"),
        };
        job = match redelivery(job, None, 2) {
            Redelivery::Requeue { job, .. } => job,
            Redelivery::Quarantine(_) => panic!("an unblamed loss does not count"),
        };
        match redelivery(job, Some(failure(false)), 2) {
            Redelivery::Quarantine(job) => assert_eq!(job.failures.len(), 3),
            Redelivery::Requeue { .. } => panic!("quarantined at the second blamed failure"),
        }
    }

    #[test]
    fn an_isolated_job_goes_back_to_the_isolated_queue() {
        let mut job = job("j", Duration::from_secs(1));
        job.isolate = true;
        assert!(matches!(
            redelivery(job, None, 3),
            Redelivery::Requeue { isolated: true, .. }
        ));
    }
}
