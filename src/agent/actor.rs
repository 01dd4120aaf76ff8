//! The agent actor: one task per agent that owns its state, its current worker, the request
//! that worker holds, and the decision of what to do when the worker dies.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::connection::{ConnEvent, Connection};
use super::handle::{AgentCommand, AgentHandle};
use super::job::{DeliveryFailure, Job, JobError};
use super::state::{AgentState, AgentStatus, CrashReport, LastExit, wall_clock};
use crate::config::Role;
use crate::process::{ExitStatus, LaunchSpec, Launcher, LogTail, Warden};
use crate::protocol::{
    self, Cancel, Heartbeat, Hello, LogLevel, Outcome, PROTOCOL_VERSION, Request, Shutdown,
    SupervisorMessage, WorkerMessage, encode_line, error_codes,
};
use crate::supervisor::{DeathCause, EventBus, EventKind, Next, RestartRules, RestartTracker};

/// After a worker exits, how long its stdout and stderr may take to reach EOF. A grandchild
/// that inherited the pipes could hold them open forever; it gets SIGKILLed with the group
/// first, so this only bounds a pathological case.
const EXIT_DRAIN_GRACE: Duration = Duration::from_secs(2);
/// Between closing a stopping worker's stdin and sending SIGTERM to its group.
const STDIN_CLOSE_GRACE: Duration = Duration::from_secs(1);
/// The exit code (EX_CONFIG) by which a worker says restarting cannot help.
const EX_CONFIG: i32 = 78;
/// Stderr lines attached to each lost delivery of a job.
const FAILURE_TAIL_LINES: usize = 20;

#[derive(Debug, Clone)]
pub(crate) struct Timing {
    pub heartbeat_interval: Duration,
    pub heartbeat_misses: u32,
    pub start_timeout: Duration,
    pub cancel_grace: Duration,
    pub stop_grace: Duration,
    pub term_grace: Duration,
}

#[derive(Debug, Clone)]
pub(crate) struct AgentSpec {
    pub id: String,
    pub role: Role,
    pub launch: LaunchSpec,
    pub rules: RestartRules,
    pub timing: Timing,
    pub max_line_bytes: usize,
    pub max_deliveries: u32,
    /// Requests one worker holds at once; its runtime serves them concurrently.
    pub concurrency: u32,
}

/// What the actor needs from the rest of the supervisor.
pub(crate) struct AgentContext {
    pub launcher: Arc<dyn Launcher>,
    pub warden: Option<Arc<Warden>>,
    pub events: EventBus,
    pub jobs: async_channel::Receiver<Job>,
    pub requeue: async_channel::Sender<Job>,
    /// Jobs to run alone on a worker (see [`Job::isolate`]).
    pub isolated: async_channel::Receiver<Job>,
    pub requeue_isolated: async_channel::Sender<Job>,
    pub shutdown: CancellationToken,
    pub kill_now: CancellationToken,
}

pub(crate) struct AgentActor {
    spec: AgentSpec,
    ctx: AgentContext,
    commands: mpsc::Receiver<AgentCommand>,
    status: watch::Sender<AgentStatus>,
    tail: LogTail,
    state: AgentState,
    worker: Option<Worker>,
    tracker: RestartTracker,
    restarts: u32,
    started_once: bool,
    /// Stopped by an operator: not restarted by the policy and takes no work until `start`.
    held: bool,
    protocol_noise: u64,
    last_exit: Option<LastExit>,
}

/// Bookkeeping for the current worker process.
struct Worker {
    conn: Connection,
    started_at: Instant,
    hello: Option<Hello>,
    ready_at: Option<Instant>,
    next_ping_at: Option<Instant>,
    next_nonce: u64,
    unanswered_pings: u32,
    /// Requests the worker holds, by job id; at most `concurrency` of them.
    in_flight: BTreeMap<String, InFlight>,
    /// Set once the supervisor has decided to kill this worker, with why.
    doom: Option<(DeathCause, String)>,
    /// The job the death is known to be caused by (one that ignored its cancel).
    culprit: Option<String>,
}

struct InFlight {
    job: Job,
    deadline: Instant,
    cancel_sent_at: Option<Instant>,
}

enum ActorEvent {
    Shutdown,
    KillNow,
    Conn(ConnEvent),
    Command(AgentCommand),
    Job(Job),
    Tick,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum StopPhase {
    ShutdownSent,
    StdinClosed,
    Terminated,
    Killed,
}

impl AgentActor {
    pub fn new(spec: AgentSpec, ctx: AgentContext) -> (Self, AgentHandle) {
        let (commands_tx, commands) = mpsc::channel(16);
        let state = AgentState::Starting {
            pid: None,
            since: Instant::now(),
        };
        let tail = LogTail::default();
        let initial = AgentStatus {
            id: spec.id.clone(),
            role: spec.role,
            state: state.name(),
            pid: None,
            restarts: 0,
            ready_since: None,
            in_flight: 0,
            current_job: None,
            last_exit: None,
            reason: None,
            next_retry: None,
            protocol_noise: 0,
        };
        let (status, status_rx) = watch::channel(initial);
        let handle = AgentHandle {
            id: spec.id.clone(),
            role: spec.role,
            commands: commands_tx,
            status: status_rx,
            tail: tail.clone(),
        };
        let actor = Self {
            spec,
            ctx,
            commands,
            status,
            tail,
            state,
            worker: None,
            tracker: RestartTracker::default(),
            restarts: 0,
            started_once: false,
            held: false,
            protocol_noise: 0,
            last_exit: None,
        };
        (actor, handle)
    }

    pub async fn run(mut self) {
        let span = tracing::info_span!("agent", id = %self.spec.id);
        async move {
            self.start_worker().await;
            loop {
                match self.next_event().await {
                    ActorEvent::Shutdown => {
                        self.stop_worker("supervisor stopping", false).await;
                        self.set_state(
                            AgentState::Stopped {
                                reason: "supervisor stopped".into(),
                            },
                            "supervisor stopped",
                        );
                        break;
                    }
                    ActorEvent::KillNow => {
                        self.stop_worker("supervisor killed", true).await;
                        self.set_state(
                            AgentState::Stopped {
                                reason: "supervisor killed".into(),
                            },
                            "supervisor killed",
                        );
                        break;
                    }
                    ActorEvent::Conn(event) => self.on_conn_event(event).await,
                    ActorEvent::Command(command) => self.on_command(command).await,
                    ActorEvent::Job(job) => self.dispatch(job),
                    ActorEvent::Tick => self.on_tick().await,
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn next_event(&mut self) -> ActorEvent {
        let wake = self.next_wakeup();
        let take_jobs = self.can_take_job();
        let take_isolated = self.can_take_isolated_job();
        let worker = self.worker.as_mut();
        let conn_event = async move {
            match worker {
                Some(worker) => worker.conn.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = self.ctx.kill_now.cancelled() => ActorEvent::KillNow,
            () = self.ctx.shutdown.cancelled() => ActorEvent::Shutdown,
            event = conn_event => ActorEvent::Conn(event),
            Some(command) = self.commands.recv() => ActorEvent::Command(command),
            Ok(job) = self.ctx.isolated.recv(), if take_isolated => ActorEvent::Job(job),
            Ok(job) = self.ctx.jobs.recv(), if take_jobs => ActorEvent::Job(job),
            () = sleep_until(wake) => ActorEvent::Tick,
        }
    }

    fn can_take_job(&self) -> bool {
        !self.held
            && matches!(
                self.state,
                AgentState::Ready { .. } | AgentState::Busy { .. }
            )
            && self.worker.as_ref().is_some_and(|w| {
                w.in_flight.len() < self.spec.concurrency as usize
                    && w.doom.is_none()
                    && !w.in_flight.values().any(|held| held.job.isolate)
            })
            // A waiting isolated job needs an idle worker; stop filling this one so it drains.
            && self.ctx.isolated.is_empty()
    }

    /// An isolated job runs only on a worker that holds nothing else.
    fn can_take_isolated_job(&self) -> bool {
        !self.held
            && matches!(self.state, AgentState::Ready { .. })
            && self
                .worker
                .as_ref()
                .is_some_and(|w| w.in_flight.is_empty() && w.doom.is_none())
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let Some(worker) = &self.worker else {
            return if self.held {
                None
            } else {
                self.state.retry_at()
            };
        };
        if worker.doom.is_some() {
            return None;
        }
        let timing = &self.spec.timing;
        let start_deadline = worker
            .ready_at
            .is_none()
            .then(|| worker.started_at + timing.start_timeout);
        let request_deadline = worker
            .in_flight
            .values()
            .map(|held| match held.cancel_sent_at {
                None => held.deadline,
                Some(sent) => sent + timing.cancel_grace,
            })
            .min();
        [start_deadline, worker.next_ping_at, request_deadline]
            .into_iter()
            .flatten()
            .min()
    }

    async fn on_tick(&mut self) {
        let now = Instant::now();
        let timing = self.spec.timing.clone();
        let Some(worker) = self.worker.as_mut() else {
            if !self.held && self.state.retry_at().is_some_and(|at| now >= at) {
                self.start_worker().await;
            }
            return;
        };
        if worker.doom.is_some() {
            return;
        }
        if worker.ready_at.is_none() && now >= worker.started_at + timing.start_timeout {
            let detail = format!(
                "not ready within the start timeout of {}",
                human(timing.start_timeout)
            );
            kill(worker, DeathCause::StartTimeout, detail);
            return;
        }
        if worker.next_ping_at.is_some_and(|at| now >= at) {
            if worker.unanswered_pings >= timing.heartbeat_misses {
                let detail = format!(
                    "{} heartbeats in a row unanswered ({} apart)",
                    worker.unanswered_pings,
                    human(timing.heartbeat_interval)
                );
                kill(worker, DeathCause::Hang, detail);
                return;
            }
            worker.next_nonce += 1;
            let ping = SupervisorMessage::Ping(Heartbeat {
                nonce: worker.next_nonce,
            });
            send(worker, &ping, self.spec.max_line_bytes);
            worker.unanswered_pings += 1;
            worker.next_ping_at = Some(now + timing.heartbeat_interval);
        }
        let mut cancels = Vec::new();
        let mut overdue: Option<(String, String)> = None;
        for held in worker.in_flight.values_mut() {
            match held.cancel_sent_at {
                None if now >= held.deadline => {
                    held.cancel_sent_at = Some(now);
                    cancels.push(SupervisorMessage::Cancel(Cancel {
                        id: held.job.request.id.clone(),
                        reason: Some("deadline".into()),
                    }));
                }
                Some(sent) if now >= sent + timing.cancel_grace && overdue.is_none() => {
                    let detail = format!(
                        "request {} overran its deadline of {} and did not answer the cancel within {}",
                        held.job.request.id,
                        human(held.job.request.deadline),
                        human(timing.cancel_grace)
                    );
                    overdue = Some((held.job.request.id.clone(), detail));
                }
                _ => {}
            }
        }
        for cancel in &cancels {
            send(worker, cancel, self.spec.max_line_bytes);
        }
        if let Some((culprit, detail)) = overdue {
            worker.culprit = Some(culprit);
            kill(worker, DeathCause::Deadline, detail);
        }
    }

    async fn on_conn_event(&mut self, event: ConnEvent) {
        match event {
            ConnEvent::Exited(status) => self.on_worker_exit(status).await,
            ConnEvent::Message(message) => self.on_message(message),
            ConnEvent::StdoutClosed => tracing::debug!("worker closed its stdout"),
            ConnEvent::Stray(preview) => {
                self.protocol_noise += 1;
                tracing::warn!(line = %preview, "worker wrote a non-protocol line to stdout; ignored");
                self.publish_status();
            }
            ConnEvent::Unknown(kind) => {
                self.protocol_noise += 1;
                tracing::warn!(%kind, "worker sent a message of unknown type; ignored");
                self.publish_status();
            }
            ConnEvent::Violation(reason) => {
                if let Some(worker) = self.worker.as_mut() {
                    kill(
                        worker,
                        DeathCause::Protocol,
                        format!("protocol violation: {reason}"),
                    );
                }
            }
        }
    }

    fn on_message(&mut self, message: WorkerMessage) {
        let max_line = self.spec.max_line_bytes;
        let Some(worker) = self.worker.as_mut() else {
            return;
        };
        let handshake_message = matches!(
            message,
            WorkerMessage::Hello(_) | WorkerMessage::Fatal(_) | WorkerMessage::Log(_)
        );
        if worker.hello.is_none() && !handshake_message {
            let detail = format!(
                "protocol violation: first message was `{}`, expected `hello`",
                kind_of(&message)
            );
            kill(worker, DeathCause::Protocol, detail);
            return;
        }
        match message {
            WorkerMessage::Hello(hello) => {
                if worker.hello.is_some() {
                    kill(
                        worker,
                        DeathCause::Protocol,
                        "protocol violation: a second `hello`".into(),
                    );
                } else if hello.protocol != PROTOCOL_VERSION {
                    let detail = format!(
                        "protocol version mismatch: supervisor speaks {PROTOCOL_VERSION}, worker speaks {}",
                        hello.protocol
                    );
                    kill(worker, DeathCause::Fatal, detail);
                } else {
                    if hello.provider.as_deref() == Some("offline") {
                        tracing::warn!(
                            "OFFLINE provider: this worker calls no model; its answers are canned, \
                             not from Claude (configure an Anthropic key to use Claude)"
                        );
                    }
                    tracing::info!(
                        python = %hello.python,
                        package = %hello.package,
                        anthropic = hello.anthropic.as_deref().unwrap_or("none"),
                        provider = hello.provider.as_deref().unwrap_or("none"),
                        "worker said hello"
                    );
                    worker.hello = Some(hello);
                }
            }
            WorkerMessage::Ready(_) => {
                if worker.ready_at.is_none() {
                    let now = Instant::now();
                    worker.ready_at = Some(now);
                    worker.next_ping_at = Some(now + self.spec.timing.heartbeat_interval);
                    let pid = worker.conn.pid;
                    if matches!(self.state, AgentState::Starting { .. }) {
                        self.set_state(AgentState::Ready { pid, since: now }, "worker ready");
                    }
                }
            }
            WorkerMessage::Response(response) => {
                let Some(held) = worker.in_flight.remove(&response.id) else {
                    tracing::warn!(id = %response.id, "response for a request this worker does not hold; ignored");
                    return;
                };
                let pid = worker.conn.pid;
                let idle = worker.in_flight.is_empty();
                match response.outcome {
                    Outcome::Result(value) => held.job.finish(Ok(value)),
                    Outcome::Error(error)
                        if error.code == error_codes::CANCELLED
                            && held.cancel_sent_at.is_some() =>
                    {
                        let failure = DeliveryFailure {
                            agent: self.spec.id.clone(),
                            pid,
                            cause: DeathCause::Deadline,
                            exit: None,
                            shared: false,
                            stderr_tail: self.tail.last(FAILURE_TAIL_LINES),
                        };
                        self.redeliver(held.job, Some(failure));
                    }
                    Outcome::Error(error)
                        if matches!(self.state, AgentState::Stopping { .. })
                            && [error_codes::CANCELLED, error_codes::SHUTTING_DOWN]
                                .contains(&error.code.as_str()) =>
                    {
                        // The worker gave the job up because it is being stopped, not because
                        // the job failed: a sibling or the next worker takes it.
                        self.redeliver(held.job, None);
                    }
                    Outcome::Error(error) => held.job.finish(Err(JobError::Worker(error))),
                }
                // While stopping, the state already says what happens next.
                if matches!(self.state, AgentState::Busy { .. }) {
                    if idle {
                        let ready = AgentState::Ready {
                            pid,
                            since: Instant::now(),
                        };
                        self.set_state(ready, "request finished");
                    } else {
                        self.publish_status();
                    }
                }
            }
            WorkerMessage::Progress(progress) => {
                tracing::debug!(id = %progress.id, message = progress.message.as_deref(), fraction = progress.fraction, "progress");
            }
            WorkerMessage::Ping(ping) => send(worker, &SupervisorMessage::Pong(ping), max_line),
            WorkerMessage::Pong(pong) => {
                if pong.nonce <= worker.next_nonce {
                    worker.unanswered_pings = 0;
                }
            }
            WorkerMessage::Log(record) => emit_worker_log(&record),
            WorkerMessage::Fatal(fatal) => {
                kill(
                    worker,
                    DeathCause::Fatal,
                    format!("{} ({})", fatal.message, fatal.code),
                );
            }
        }
    }

    fn dispatch(&mut self, mut job: Job) {
        let max_line = self.spec.max_line_bytes;
        let Some(worker) = self.worker.as_mut() else {
            self.redeliver(job, None);
            return;
        };
        job.deliveries += 1;
        let request = SupervisorMessage::Request(Request {
            id: job.request.id.clone(),
            method: job.request.method.clone(),
            params: job.request.params.clone(),
            deadline_ms: u64::try_from(job.request.deadline.as_millis()).unwrap_or(u64::MAX),
            delivery: NonZeroU32::new(job.deliveries),
        });
        let line = match encode_line(&request, max_line) {
            Ok(line) => line,
            Err(_) => {
                job.finish(Err(JobError::TooLarge { limit: max_line }));
                return;
            }
        };
        worker.conn.send_line(line);
        let now = Instant::now();
        let pid = worker.conn.pid;
        let id = job.request.id.clone();
        let held = InFlight {
            deadline: now + job.request.deadline,
            cancel_sent_at: None,
            job,
        };
        worker.in_flight.insert(id.clone(), held);
        if matches!(self.state, AgentState::Busy { .. }) {
            self.publish_status();
        } else {
            let busy = AgentState::Busy {
                pid,
                job: id.clone(),
                since: now,
            };
            self.set_state(busy, format!("request {id}"));
        }
    }

    /// Puts a job back in its role's queue after a lost delivery, or quarantines it once it has
    /// been lost `max_deliveries` times.
    fn redeliver(&mut self, mut job: Job, failure: Option<DeliveryFailure>) {
        if let Some(failure) = failure {
            job.failures.push(failure);
        }
        if job.attributed_failures() >= self.spec.max_deliveries as usize {
            tracing::warn!(job = %job.request.id, deliveries = job.deliveries, "job quarantined");
            self.ctx.events.publish(
                Some(&self.spec.id),
                EventKind::JobQuarantined {
                    job: job.request.id.clone(),
                    deliveries: job.deliveries,
                },
            );
            let failures = job.failures.clone();
            job.finish(Err(JobError::Quarantined { failures }));
            return;
        }
        let queue = if job.isolate {
            &self.ctx.requeue_isolated
        } else {
            &self.ctx.requeue
        };
        if let Err(closed) = queue.try_send(job) {
            closed.into_inner().finish(Err(JobError::SupervisorStopped));
        }
    }

    async fn on_worker_exit(&mut self, status: ExitStatus) {
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
        tracing::warn!(pid = worker.conn.pid, %status, %cause, %detail, "worker died");
        let in_flight: Vec<String> = worker.in_flight.keys().cloned().collect();
        let culprit = worker.culprit.take();
        let shared = in_flight.len() > 1 && culprit.is_none();
        for (id, held) in std::mem::take(&mut worker.in_flight) {
            let mut job = held.job;
            // A death with a known culprit is not the bystanders' fault: they just go again.
            let blamed = culprit.as_ref().is_none_or(|culprit| *culprit == id);
            let failure = blamed.then(|| DeliveryFailure {
                agent: self.spec.id.clone(),
                pid: worker.conn.pid,
                cause,
                exit: Some(status),
                shared,
                stderr_tail: self.tail.last(FAILURE_TAIL_LINES),
            });
            job.isolate |= shared;
            self.redeliver(job, failure);
        }
        let now = Instant::now();
        let ready_for = worker.ready_at.map(|at| now - at);
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
            pid: worker.conn.pid,
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

    fn state_after(
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

    /// After the worker has exited: reads what it wrote last, kills what is left of its process
    /// group (grandchildren), and hands back its bookkeeping.
    async fn collect_exited_worker(&mut self) -> Worker {
        let group = self
            .worker
            .as_ref()
            .expect("an exited worker exists")
            .conn
            .group;
        group.kill();
        let remaining = self
            .worker
            .as_mut()
            .expect("an exited worker exists")
            .conn
            .remaining_events(EXIT_DRAIN_GRACE)
            .await;
        for event in remaining {
            if let ConnEvent::Message(message) = event {
                self.on_message(message);
            }
        }
        let mut worker = self.worker.take().expect("an exited worker exists");
        worker.conn.finish_stderr(EXIT_DRAIN_GRACE).await;
        if let Some(warden) = &self.ctx.warden {
            warden.release(group);
        }
        worker
    }

    /// The stop sequence: `shutdown` → grace → close stdin → SIGTERM to the group → grace →
    /// SIGKILL to the group → reap. `immediately` (or a second signal) skips to SIGKILL.
    /// Keeps reading the worker's stdout throughout, so work that finishes in the grace period
    /// is answered and a worker blocked writing to us can still exit.
    async fn stop_worker(&mut self, reason: &str, immediately: bool) {
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
        let timing = self.spec.timing.clone();
        let max_line = self.spec.max_line_bytes;
        let worker = self.worker.as_mut().expect("checked above");
        let (mut phase, mut deadline) = if immediately {
            worker.conn.group.kill();
            (StopPhase::Killed, None)
        } else {
            let grace_ms = u64::try_from(timing.stop_grace.as_millis()).unwrap_or(u64::MAX);
            let shutdown = SupervisorMessage::Shutdown(Shutdown {
                grace_ms,
                reason: Some(reason.to_owned()),
            });
            send(worker, &shutdown, max_line);
            (
                StopPhase::ShutdownSent,
                Some(Instant::now() + timing.stop_grace),
            )
        };
        let status = loop {
            let worker = self
                .worker
                .as_mut()
                .expect("the stopping worker exists until it exits");
            let kill_now = &self.ctx.kill_now;
            enum Step {
                Conn(ConnEvent),
                KillNow,
                Timer,
            }
            let step = tokio::select! {
                biased;
                event = worker.conn.next() => Step::Conn(event),
                () = kill_now.cancelled(), if phase != StopPhase::Killed => Step::KillNow,
                () = sleep_until(deadline) => Step::Timer,
            };
            match step {
                Step::Conn(ConnEvent::Exited(status)) => break status,
                Step::Conn(ConnEvent::Message(message)) => self.on_message(message),
                Step::Conn(_) => {}
                Step::KillNow => {
                    worker.conn.group.kill();
                    (phase, deadline) = (StopPhase::Killed, None);
                }
                Step::Timer => match phase {
                    StopPhase::ShutdownSent => {
                        worker.conn.close_stdin();
                        (phase, deadline) = (
                            StopPhase::StdinClosed,
                            Some(Instant::now() + STDIN_CLOSE_GRACE),
                        );
                    }
                    StopPhase::StdinClosed => {
                        tracing::info!(
                            pid,
                            "worker still running after shutdown; sending SIGTERM to its group"
                        );
                        worker.conn.group.signal(nix::sys::signal::Signal::SIGTERM);
                        (phase, deadline) = (
                            StopPhase::Terminated,
                            Some(Instant::now() + timing.term_grace),
                        );
                    }
                    StopPhase::Terminated => {
                        tracing::warn!(pid, "worker ignored SIGTERM; sending SIGKILL to its group");
                        worker.conn.group.kill();
                        (phase, deadline) = (StopPhase::Killed, None);
                    }
                    StopPhase::Killed => deadline = None,
                },
            }
        };
        let mut worker = self.collect_exited_worker().await;
        tracing::info!(pid, %status, "worker stopped");
        self.last_exit = Some(LastExit {
            status,
            cause: DeathCause::Exited,
            at: std::time::SystemTime::now(),
        });
        for (_, held) in std::mem::take(&mut worker.in_flight) {
            // The worker was stopped on purpose; that is not the job's fault, so no failure is
            // recorded and a sibling (or the next worker) takes it.
            self.redeliver(held.job, None);
        }
    }

    async fn on_command(&mut self, command: AgentCommand) {
        match command {
            AgentCommand::Stop { reply } => {
                self.held = true;
                self.stop_worker("stopped by operator", false).await;
                self.set_state(
                    AgentState::Stopped {
                        reason: "stopped by operator".into(),
                    },
                    "stopped by operator",
                );
                let _ = reply.send(());
            }
            AgentCommand::Start { reply } => {
                self.held = false;
                self.tracker.reset();
                if self.worker.is_none() {
                    self.start_worker().await;
                }
                let _ = reply.send(());
            }
            AgentCommand::Restart { now, reply } => {
                self.held = false;
                self.tracker.reset();
                self.stop_worker("restart requested", now).await;
                self.start_worker().await;
                let _ = reply.send(());
            }
        }
    }

    async fn start_worker(&mut self) {
        let launch = self.spec.launch.clone();
        match self.ctx.launcher.launch(launch).await {
            Ok(launched) => {
                if self.started_once {
                    self.restarts += 1;
                }
                self.started_once = true;
                let pid = launched.pid;
                if let Some(warden) = &self.ctx.warden {
                    warden.watch(launched.group);
                }
                self.tail.mark_start(pid);
                let span = tracing::info_span!("worker", pid);
                let conn =
                    Connection::start(launched, self.tail.clone(), self.spec.max_line_bytes, span);
                let now = Instant::now();
                self.worker = Some(Worker {
                    conn,
                    started_at: now,
                    hello: None,
                    ready_at: None,
                    next_ping_at: None,
                    next_nonce: 0,
                    unanswered_pings: 0,
                    in_flight: BTreeMap::new(),
                    doom: None,
                    culprit: None,
                });
                self.ctx
                    .events
                    .publish(Some(&self.spec.id), EventKind::WorkerStarted { pid });
                self.set_state(
                    AgentState::Starting {
                        pid: Some(pid),
                        since: now,
                    },
                    "worker launched",
                );
            }
            Err(error) => {
                let detail = error_chain(&error);
                tracing::error!(%detail, "could not start a worker");
                if error.is_configuration_problem() {
                    self.set_state(
                        AgentState::Failed {
                            reason: detail.clone(),
                        },
                        detail,
                    );
                    return;
                }
                let now = Instant::now();
                let next = self.tracker.after_death(
                    &self.spec.rules,
                    DeathCause::SpawnFailed,
                    None,
                    now,
                    fastrand::f64(),
                );
                let (state, _) = self.state_after(next, DeathCause::SpawnFailed, &detail, now);
                let reason = state.reason().unwrap_or("spawn failed").to_owned();
                self.set_state(state, reason);
            }
        }
    }

    fn set_state(&mut self, state: AgentState, reason: impl Into<String>) {
        let from = self.state.name();
        let to = state.name();
        // Backoff after backoff (a failed start) is a new attempt with a new retry time, so
        // it is reported like any other transition.
        let reported = from != to
            || matches!(
                state,
                AgentState::Backoff { .. } | AgentState::Cooldown { .. }
            );
        self.state = state;
        if reported {
            let reason = reason.into();
            tracing::debug!(%from, %to, %reason, "state changed");
            self.ctx.events.publish(
                Some(&self.spec.id),
                EventKind::StateChanged { from, to, reason },
            );
        }
        self.publish_status();
    }

    fn publish_status(&self) {
        let ready_since = match &self.state {
            AgentState::Ready { .. } | AgentState::Busy { .. } => self
                .worker
                .as_ref()
                .and_then(|w| w.ready_at)
                .map(wall_clock),
            _ => None,
        };
        let status = AgentStatus {
            id: self.spec.id.clone(),
            role: self.spec.role,
            state: self.state.name(),
            pid: self.state.pid(),
            restarts: self.restarts,
            ready_since,
            in_flight: self.worker.as_ref().map_or(0, |w| w.in_flight.len() as u32),
            current_job: self
                .worker
                .as_ref()
                .and_then(|w| w.in_flight.keys().next().cloned()),
            last_exit: self.last_exit.clone(),
            reason: self.state.reason().map(str::to_owned),
            next_retry: self.state.retry_at().map(wall_clock),
            protocol_noise: self.protocol_noise,
        };
        self.status.send_replace(status);
    }
}

fn kill(worker: &mut Worker, cause: DeathCause, detail: String) {
    if worker.doom.is_none() {
        tracing::warn!(pid = worker.conn.pid, %cause, %detail, "killing worker");
        worker.doom = Some((cause, detail));
    }
    worker.conn.group.kill();
}

fn send(worker: &mut Worker, message: &SupervisorMessage, max_line_bytes: usize) {
    match encode_line(message, max_line_bytes) {
        Ok(line) => worker.conn.send_line(line),
        Err(error) => tracing::error!(%error, "could not encode a message for the worker"),
    }
}

fn kind_of(message: &WorkerMessage) -> &'static str {
    match message {
        WorkerMessage::Hello(_) => "hello",
        WorkerMessage::Ready(_) => "ready",
        WorkerMessage::Response(_) => "response",
        WorkerMessage::Progress(_) => "progress",
        WorkerMessage::Ping(_) => "ping",
        WorkerMessage::Pong(_) => "pong",
        WorkerMessage::Log(_) => "log",
        WorkerMessage::Fatal(_) => "fatal",
    }
}

fn emit_worker_log(record: &protocol::LogRecord) {
    let logger = record.logger.as_deref().unwrap_or("worker");
    match record.level {
        LogLevel::Debug => tracing::debug!(target: "worker", logger, "{}", record.message),
        LogLevel::Info => tracing::info!(target: "worker", logger, "{}", record.message),
        LogLevel::Warning => tracing::warn!(target: "worker", logger, "{}", record.message),
        LogLevel::Error => tracing::error!(target: "worker", logger, "{}", record.message),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn human(duration: Duration) -> String {
    // Whole milliseconds read better than humantime's nanosecond precision.
    humantime::format_duration(Duration::from_millis(duration.as_millis() as u64)).to_string()
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
