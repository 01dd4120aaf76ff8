//! The stop escalation for one worker: ask it to shut down, wait, close its stdin, wait,
//! SIGTERM its process group, wait, SIGKILL the group; a kill switch goes straight to SIGKILL.
//!
//! [`Escalation`] is the pure state machine (which step is due, and when the next one is);
//! [`escalate`] drives it against a worker until the worker has exited. The caller reaps.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::group::ExitStatus;

/// Between closing a stopping worker's stdin and sending SIGTERM to its group.
pub const STDIN_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The configurable waits of the escalation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Graces {
    /// After the `shutdown` message, before stdin is closed.
    pub stop: Duration,
    /// After SIGTERM, before SIGKILL.
    pub term: Duration,
}

/// One thing to do to the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Send the `shutdown` message (granting the stop grace).
    SendShutdown,
    CloseStdin,
    /// SIGTERM to the process group.
    Terminate,
    /// SIGKILL to the process group.
    Kill,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    ShutdownSent,
    StdinClosed,
    Terminated,
    Killed,
}

/// Where one stop is, and when its next step is due.
#[derive(Debug, Clone)]
pub struct Escalation {
    graces: Graces,
    phase: Phase,
    deadline: Option<Instant>,
}

impl Escalation {
    /// Starts a stop at `now`, with the step to take at once: the `shutdown` message, or
    /// SIGKILL if `immediately`.
    pub fn begin(graces: Graces, immediately: bool, now: Instant) -> (Self, Step) {
        if immediately {
            let killed = Self {
                graces,
                phase: Phase::Killed,
                deadline: None,
            };
            return (killed, Step::Kill);
        }
        let polite = Self {
            graces,
            phase: Phase::ShutdownSent,
            deadline: Some(now + graces.stop),
        };
        (polite, Step::SendShutdown)
    }

    /// When the next step is due; `None` once SIGKILL has been sent (then only the exit is
    /// left to wait for).
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn is_killed(&self) -> bool {
        self.phase == Phase::Killed
    }

    /// The step due at `now`, if any, advancing the escalation past it.
    pub fn due(&mut self, now: Instant) -> Option<Step> {
        if self.deadline.is_none_or(|deadline| now < deadline) {
            return None;
        }
        let (phase, step, wait) = match self.phase {
            Phase::ShutdownSent => (
                Phase::StdinClosed,
                Step::CloseStdin,
                Some(STDIN_CLOSE_GRACE),
            ),
            Phase::StdinClosed => (Phase::Terminated, Step::Terminate, Some(self.graces.term)),
            Phase::Terminated => (Phase::Killed, Step::Kill, None),
            Phase::Killed => {
                self.deadline = None;
                return None;
            }
        };
        self.phase = phase;
        self.deadline = wait.map(|wait| now + wait);
        Some(step)
    }

    /// The kill switch: SIGKILL now, unless already sent.
    pub fn kill_now(&mut self) -> Option<Step> {
        if self.is_killed() {
            return None;
        }
        self.phase = Phase::Killed;
        self.deadline = None;
        Some(Step::Kill)
    }
}

/// The worker being stopped, as the escalation sees it.
pub trait Stoppable {
    /// Carries out one step of the escalation.
    fn perform(&mut self, step: Step);

    /// Waits for, and handles, the next thing the worker does (a line it wrote, say); resolves
    /// to its exit status once it has exited. Must be cancel-safe: the escalation drops it
    /// whenever a step falls due.
    fn next_exit(&mut self) -> impl Future<Output = Option<ExitStatus>> + Send;
}

/// Stops `target`: runs the escalation until the worker has exited and returns how it ended.
/// The kill switch and the escalation's own deadlines are polled before the worker, so a
/// worker flooding its output cannot delay its own SIGTERM or SIGKILL.
pub async fn escalate(
    target: &mut impl Stoppable,
    graces: Graces,
    immediately: bool,
    kill_now: &CancellationToken,
) -> ExitStatus {
    let (mut escalation, first) = Escalation::begin(graces, immediately, Instant::now());
    target.perform(first);
    loop {
        enum Turn {
            KillNow,
            Deadline,
            Worker(Option<ExitStatus>),
        }
        let killed = escalation.is_killed();
        let deadline = escalation.deadline();
        let turn = tokio::select! {
            biased;
            () = kill_now.cancelled(), if !killed => Turn::KillNow,
            () = sleep_until(deadline) => Turn::Deadline,
            exit = target.next_exit() => Turn::Worker(exit),
        };
        let step = match turn {
            Turn::KillNow => escalation.kill_now(),
            Turn::Deadline => escalation.due(Instant::now()),
            Turn::Worker(Some(status)) => return status,
            Turn::Worker(None) => None,
        };
        if let Some(step) = step {
            target.perform(step);
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACES: Graces = Graces {
        stop: Duration::from_millis(2000),
        term: Duration::from_millis(500),
    };

    #[test]
    fn a_polite_stop_escalates_through_every_step_at_its_grace() {
        let start = Instant::now();
        let (mut escalation, first) = Escalation::begin(GRACES, false, start);
        assert_eq!(first, Step::SendShutdown);
        assert_eq!(escalation.deadline(), Some(start + GRACES.stop));
        assert_eq!(escalation.due(start + GRACES.stop / 2), None, "not yet");

        let closed_at = start + GRACES.stop;
        assert_eq!(escalation.due(closed_at), Some(Step::CloseStdin));
        assert_eq!(escalation.deadline(), Some(closed_at + STDIN_CLOSE_GRACE));

        let termed_at = closed_at + STDIN_CLOSE_GRACE;
        assert_eq!(escalation.due(termed_at), Some(Step::Terminate));
        assert_eq!(escalation.deadline(), Some(termed_at + GRACES.term));

        assert_eq!(escalation.due(termed_at + GRACES.term), Some(Step::Kill));
        assert!(escalation.is_killed());
        assert_eq!(escalation.deadline(), None);
        assert_eq!(escalation.due(termed_at + GRACES.term * 10), None);
    }

    #[test]
    fn an_immediate_stop_is_a_sigkill_and_nothing_after() {
        let (mut escalation, first) = Escalation::begin(GRACES, true, Instant::now());
        assert_eq!(first, Step::Kill);
        assert_eq!(escalation.deadline(), None);
        assert_eq!(escalation.kill_now(), None, "never a second SIGKILL");
    }

    #[test]
    fn the_kill_switch_skips_the_remaining_graces() {
        let start = Instant::now();
        let (mut escalation, _) = Escalation::begin(GRACES, false, start);
        assert_eq!(escalation.kill_now(), Some(Step::Kill));
        assert_eq!(escalation.deadline(), None);
        assert_eq!(escalation.due(start + GRACES.stop), None);
    }

    /// A worker that ignores everything but SIGKILL, or (with `busy`) also floods its output.
    struct Stubborn {
        start: Instant,
        steps: Vec<(Step, Duration)>,
        dies_on: Step,
        dead: bool,
        busy: bool,
        on_step: Option<(Step, CancellationToken)>,
    }

    impl Stubborn {
        fn new(dies_on: Step) -> Self {
            Self {
                start: Instant::now(),
                steps: Vec::new(),
                dies_on,
                dead: false,
                busy: false,
                on_step: None,
            }
        }
    }

    impl Stoppable for Stubborn {
        fn perform(&mut self, step: Step) {
            self.steps.push((step, self.start.elapsed()));
            self.dead |= step == self.dies_on;
            if let Some((trigger, token)) = &self.on_step
                && *trigger == step
            {
                token.cancel();
            }
        }

        async fn next_exit(&mut self) -> Option<ExitStatus> {
            if self.dead {
                return Some(ExitStatus::Signal { signal: 9 });
            }
            if self.busy {
                // Always something to read: a flood of one line per (paused) millisecond.
                tokio::time::advance(Duration::from_millis(1)).await;
                return None;
            }
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_ignoring_everything_is_sigkilled_after_the_graces() {
        let mut worker = Stubborn::new(Step::Kill);
        let status = escalate(&mut worker, GRACES, false, &CancellationToken::new()).await;
        assert_eq!(status, ExitStatus::Signal { signal: 9 });
        let close = GRACES.stop;
        let term = close + STDIN_CLOSE_GRACE;
        assert_eq!(
            worker.steps,
            vec![
                (Step::SendShutdown, Duration::ZERO),
                (Step::CloseStdin, close),
                (Step::Terminate, term),
                (Step::Kill, term + GRACES.term),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_flooding_worker_cannot_delay_its_escalation() {
        let mut worker = Stubborn::new(Step::Kill);
        worker.busy = true;
        escalate(&mut worker, GRACES, false, &CancellationToken::new()).await;
        let kill_at = GRACES.stop + STDIN_CLOSE_GRACE + GRACES.term;
        assert_eq!(worker.steps.last(), Some(&(Step::Kill, kill_at)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_that_honours_sigterm_gets_no_sigkill() {
        let mut worker = Stubborn::new(Step::Terminate);
        escalate(&mut worker, GRACES, false, &CancellationToken::new()).await;
        let steps: Vec<Step> = worker.steps.iter().map(|(step, _)| *step).collect();
        assert_eq!(
            steps,
            vec![Step::SendShutdown, Step::CloseStdin, Step::Terminate]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_kill_switch_during_a_stop_kills_at_once_even_during_a_flood() {
        let kill_now = CancellationToken::new();
        let mut worker = Stubborn::new(Step::Kill);
        worker.busy = true;
        // The second Ctrl-C arrives while the worker is being asked politely.
        worker.on_step = Some((Step::CloseStdin, kill_now.clone()));
        escalate(&mut worker, GRACES, false, &kill_now).await;
        assert_eq!(
            worker.steps,
            vec![
                (Step::SendShutdown, Duration::ZERO),
                (Step::CloseStdin, GRACES.stop),
                (Step::Kill, GRACES.stop),
            ]
        );
    }
}
