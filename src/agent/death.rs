//! How a worker ends: stopping it on purpose (the escalation, driven against this worker),
//! collecting it once it has exited (group kill before reap, last lines, stderr), and, for a
//! death, the crash report and the restart decision.

use std::time::Duration;

use tokio::time::Instant;

use super::actor::{AgentActor, Worker, send};
use super::connection::ConnEvent;
use super::in_flight::lost_with_worker;
use super::job::DeliveryFailure;
use super::messages::FAILURE_TAIL_LINES;
use super::state::{AgentState, CrashReport, LastExit, wall_clock};
use super::timers::human;
use crate::process::ExitStatus;
use crate::process::escalation::{Graces, Step, Stoppable, escalate};
use crate::protocol::{Shutdown, SupervisorMessage};
use crate::supervisor::{DeathCause, EventKind, Next};

/// After a worker exits, how long its stdout and stderr may take to reach EOF. A grandchild
/// that inherited the pipes could hold them open forever; it gets SIGKILLed with the group
/// first, so this only bounds a pathological case.
const EXIT_DRAIN_GRACE: Duration = Duration::from_secs(2);
/// The exit code (EX_CONFIG) by which a worker says restarting cannot help.
const EX_CONFIG: i32 = 78;

impl AgentActor {
    pub(super) async fn on_worker_exit(&mut self, status: ExitStatus) {
        let mut worker = self.collect_exited_worker().await;
        let (cause, detail) = match worker.doom.take() {
            Some(doom) => doom,
            None if status.code() == Some(EX_CONFIG) => (
                DeathCause::Fatal,
                format!("exited with code {EX_CONFIG} (configuration problem); see its stderr"),
            ),
            None if status.is_success() => (
                DeathCause::Exited,
                "exited with code 0 without being asked to".into(),
            ),
            None => (DeathCause::Crash, status.to_string()),
        };
        let pid = worker.conn.pid;
        tracing::warn!(pid, %status, %cause, %detail, "worker died");
        let in_flight = worker.in_flight.ids();
        let culprit = worker.culprit.take();
        let stderr_tail = self.tail.last(FAILURE_TAIL_LINES);
        let lost = lost_with_worker(worker.in_flight.take_all(), culprit.as_deref(), |shared| {
            DeliveryFailure {
                agent: self.spec.id.clone(),
                pid,
                cause,
                exit: Some(status),
                shared,
                stderr_tail: stderr_tail.clone(),
            }
        });
        for (job, failure) in lost {
            self.redeliver(job, failure);
        }
        let now = Instant::now();
        let ready_for = worker.clock.ready_at().map(|at| now - at);
        self.last_exit = Some(LastExit {
            status,
            cause,
            at: std::time::SystemTime::now(),
        });
        let next =
            self.tracker
                .after_death(&self.spec.rules, cause, ready_for, now, fastrand::f64());
        let (state, next_name) = self.state_after(next, cause, &detail, now);
        let report = CrashReport {
            pid,
            exit: status,
            cause,
            detail: detail.clone(),
            in_flight,
            restarts: self.restarts,
            next: next_name,
            next_retry: state.retry_at().map(wall_clock),
            stderr_tail: self.tail.last(crate::process::STDERR_TAIL_LINES),
        };
        self.ctx.events.publish(
            Some(&self.spec.id),
            EventKind::WorkerExited(Box::new(report)),
        );
        let reason = state.reason().unwrap_or("worker died").to_owned();
        self.set_state(state, reason);
    }

    pub(super) fn state_after(
        &self,
        next: Next,
        cause: DeathCause,
        detail: &str,
        now: Instant,
    ) -> (AgentState, &'static str) {
        match next {
            Next::Restart { delay, attempt } => (
                AgentState::Backoff {
                    until: now + delay,
                    attempt,
                    reason: format!("{cause}: {detail}; restarting in {}", human(delay)),
                },
                "restart",
            ),
            Next::Cooldown { retry_in, failures } => (
                AgentState::Cooldown {
                    until: now + retry_in,
                    reason: format!(
                        "crash loop: {failures} failures within {}; retrying every {}; last: {cause}: {detail}",
                        human(self.spec.rules.window),
                        human(retry_in)
                    ),
                },
                "cooldown",
            ),
            Next::Stop { reason } => (AgentState::Stopped { reason }, "stop"),
            Next::Fail { reason } => (
                AgentState::Failed {
                    reason: format!("{reason}: {detail}"),
                },
                "fail",
            ),
        }
    }

    /// After the worker has exited, and before it is reaped (so its process-group id cannot
    /// have been reused): kills what is left of its group (grandchildren), reads what it wrote
    /// last (bounded), releases the group from the warden, reaps, and hands back its
    /// bookkeeping.
    async fn collect_exited_worker(&mut self) -> Worker {
        let worker = self.worker.as_mut().expect("an exited worker exists");
        let group = worker.conn.group;
        group.kill();
        let remaining = worker.conn.remaining_events(EXIT_DRAIN_GRACE).await;
        for event in remaining {
            match event {
                ConnEvent::Message(message) => self.on_message(message),
                ConnEvent::Stray(_) | ConnEvent::Unknown(_) => self.on_noise(event),
                _ => {}
            }
        }
        let mut worker = self.worker.take().expect("an exited worker exists");
        if let Some(warden) = &self.ctx.warden {
            warden.release(group);
        }
        worker.conn.reap();
        worker.conn.finish_stderr(EXIT_DRAIN_GRACE).await;
        worker
    }

    /// Stops the worker on purpose (see [`crate::process::escalation`]); `immediately` (or a
    /// second signal) skips to SIGKILL. Keeps reading the worker's stdout throughout, so work
    /// that finishes in the grace period is answered and a worker blocked writing to us can
    /// still exit.
    pub(super) async fn stop_worker(&mut self, reason: &str, immediately: bool) {
        let Some(worker) = self.worker.as_ref() else {
            return;
        };
        let pid = worker.conn.pid;
        self.set_state(
            AgentState::Stopping {
                pid,
                reason: reason.to_owned(),
            },
            reason,
        );
        let graces = Graces {
            stop: self.spec.timing.stop_grace,
            term: self.spec.timing.term_grace,
        };
        let kill_now = self.ctx.kill_now.clone();
        let mut stopping = StoppingWorker {
            actor: self,
            reason,
            immediately,
        };
        let status = escalate(&mut stopping, graces, immediately, &kill_now).await;
        let mut worker = self.collect_exited_worker().await;
        tracing::info!(pid, %status, "worker stopped");
        self.last_exit = Some(LastExit {
            status,
            cause: DeathCause::Exited,
            at: std::time::SystemTime::now(),
        });
        for (_, held) in worker.in_flight.take_all() {
            // The worker was stopped on purpose; that is not the job's fault, so no failure is
            // recorded and a sibling (or the next worker) takes it.
            self.redeliver(held.job, None);
        }
    }
}

/// The worker being stopped, as the escalation drives it.
struct StoppingWorker<'a> {
    actor: &'a mut AgentActor,
    reason: &'a str,
    immediately: bool,
}

impl StoppingWorker<'_> {
    fn worker(&mut self) -> &mut Worker {
        self.actor
            .worker
            .as_mut()
            .expect("the stopping worker exists until it exits")
    }
}

impl Stoppable for StoppingWorker<'_> {
    fn perform(&mut self, step: Step) {
        let max_line = self.actor.spec.max_line_bytes;
        let grace = self.actor.spec.timing.stop_grace;
        let reason = self.reason.to_owned();
        let immediately = self.immediately;
        let worker = self.worker();
        let pid = worker.conn.pid;
        match step {
            Step::SendShutdown => {
                let shutdown = SupervisorMessage::Shutdown(Shutdown {
                    grace_ms: u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
                    reason: Some(reason),
                });
                send(worker, &shutdown, max_line);
            }
            Step::CloseStdin => worker.conn.close_stdin(),
            Step::Terminate => {
                tracing::info!(
                    pid,
                    "worker still running after shutdown; sending SIGTERM to its group"
                );
                worker.conn.group.signal(nix::sys::signal::Signal::SIGTERM);
            }
            Step::Kill => {
                if !immediately {
                    tracing::warn!(
                        pid,
                        "worker not stopped in time; sending SIGKILL to its group"
                    );
                }
                worker.conn.group.kill();
            }
        }
    }

    async fn next_exit(&mut self) -> Option<ExitStatus> {
        let event = self.worker().conn.next().await;
        match event {
            ConnEvent::Exited(status) => return Some(status),
            ConnEvent::Message(message) => self.actor.on_message(message),
            ConnEvent::Stray(_) | ConnEvent::Unknown(_) => self.actor.on_noise(event),
            ConnEvent::StdoutClosed | ConnEvent::Violation(_) => {}
        }
        None
    }
}
