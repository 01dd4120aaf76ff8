//! The agent actor: one task per agent that owns its state and its current worker, turns its
//! sources (cancellation, timers, commands, jobs, the worker's connection) into events, and
//! hands each to the module that owns that concern.
//!
//! The clocks live in [`super::timers`], the held requests in [`super::in_flight`], the
//! worker's messages in [`super::messages`], its death and stop in [`super::death`], and the
//! stop escalation itself in [`crate::process::escalation`].

use std::ops::ControlFlow;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::connection::{ConnEvent, Connection};
use super::handle::{AgentCommand, AgentHandle};
use super::in_flight::InFlight;
use super::job::Job;
use super::noise::NoiseGate;
use super::state::{AgentState, AgentStatus, LastExit, wall_clock};
use super::timers::{ClockDue, Timing, WorkerClock, earliest};
use crate::config::Role;
use crate::process::{LaunchSpec, Launcher, LogTail, Warden};
use crate::protocol::{Heartbeat, Hello, SupervisorMessage, encode_line};
use crate::supervisor::{DeathCause, EventBus, EventKind, RestartRules, RestartTracker};

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
    pub(super) spec: AgentSpec,
    pub(super) ctx: AgentContext,
    commands: mpsc::Receiver<AgentCommand>,
    status: watch::Sender<AgentStatus>,
    pub(super) tail: LogTail,
    pub(super) state: AgentState,
    pub(super) worker: Option<Worker>,
    pub(super) tracker: RestartTracker,
    pub(super) restarts: u32,
    started_once: bool,
    /// Stopped by an operator: not restarted by the policy and takes no work until `start`.
    held: bool,
    pub(super) protocol_noise: u64,
    pub(super) noise: NoiseGate,
    pub(super) last_exit: Option<LastExit>,
}

/// Bookkeeping for the current worker process.
pub(super) struct Worker {
    pub conn: Connection,
    pub hello: Option<Hello>,
    pub clock: WorkerClock,
    /// Requests the worker holds, by job id; at most `concurrency` of them.
    pub in_flight: InFlight,
    /// Set once the supervisor has decided to kill this worker, with why.
    pub doom: Option<(DeathCause, String)>,
    /// The job the death is known to be caused by (one that ignored its cancel).
    pub culprit: Option<String>,
}

enum ActorEvent {
    Shutdown,
    KillNow,
    Conn(ConnEvent),
    Command(AgentCommand),
    Job(Job),
    Tick,
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
            noise: NoiseGate::default(),
            last_exit: None,
        };
        (actor, handle)
    }

    pub async fn run(mut self) {
        let span = tracing::info_span!("agent", id = %self.spec.id);
        async move {
            self.start_worker().await;
            loop {
                let (reason, immediately) = match self.next_event().await {
                    ActorEvent::Shutdown => ("supervisor stopped", false),
                    ActorEvent::KillNow => ("supervisor killed", true),
                    ActorEvent::Conn(event) => {
                        self.on_conn_event(event).await;
                        continue;
                    }
                    ActorEvent::Command(command) => {
                        if self.on_command(command).await.is_break() {
                            break;
                        }
                        continue;
                    }
                    ActorEvent::Job(job) => {
                        self.dispatch(job);
                        continue;
                    }
                    ActorEvent::Tick => {
                        self.on_tick().await;
                        continue;
                    }
                };
                let stopping = if immediately {
                    "supervisor killed"
                } else {
                    "supervisor stopping"
                };
                self.stop_worker(stopping, immediately).await;
                self.flush_noise(Instant::now(), true);
                self.set_state(
                    AgentState::Stopped {
                        reason: reason.into(),
                    },
                    reason,
                );
                break;
            }
        }
        .instrument(span)
        .await
    }

    /// The next event. Cancellation and timers come before the worker's output, so a worker
    /// flooding its stdout cannot delay a stop, a heartbeat or a deadline; commands and jobs
    /// are bounded (a few operators, `concurrency` jobs), so they cannot starve the worker.
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
            () = sleep_until(wake) => ActorEvent::Tick,
            Some(command) = self.commands.recv() => ActorEvent::Command(command),
            Ok(job) = self.ctx.isolated.recv(), if take_isolated => ActorEvent::Job(job),
            Ok(job) = self.ctx.jobs.recv(), if take_jobs => ActorEvent::Job(job),
            event = conn_event => ActorEvent::Conn(event),
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
                    && !w.in_flight.holds_isolated()
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
        let noise = self.noise.next_flush();
        let Some(worker) = &self.worker else {
            let retry = if self.held {
                None
            } else {
                self.state.retry_at()
            };
            return earliest([retry, noise]);
        };
        if worker.doom.is_some() {
            return noise;
        }
        let timing = &self.spec.timing;
        earliest([
            worker.clock.next_wakeup(timing),
            worker.in_flight.next_wakeup(timing.cancel_grace),
            noise,
        ])
    }

    async fn on_tick(&mut self) {
        let now = Instant::now();
        self.flush_noise(now, false);
        let timing = self.spec.timing.clone();
        let max_line = self.spec.max_line_bytes;
        let Some(worker) = self.worker.as_mut() else {
            if !self.held && self.state.retry_at().is_some_and(|at| now >= at) {
                self.start_worker().await;
            }
            return;
        };
        if worker.doom.is_some() {
            return;
        }
        match worker.clock.due(now, &timing) {
            ClockDue::Nothing => {}
            ClockDue::Ping(nonce) => {
                send(
                    worker,
                    &SupervisorMessage::Ping(Heartbeat { nonce }),
                    max_line,
                );
            }
            ClockDue::Kill(cause, detail) => {
                kill(worker, cause, detail);
                return;
            }
        }
        let due = worker.in_flight.due(now, timing.cancel_grace);
        for cancel in &due.cancels {
            send(worker, cancel, max_line);
        }
        if let Some((culprit, detail)) = due.overdue {
            worker.culprit = Some(culprit);
            kill(worker, DeathCause::Deadline, detail);
        }
    }

    /// Breaks when the agent has ended.
    async fn on_command(&mut self, command: AgentCommand) -> ControlFlow<()> {
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
            AgentCommand::Reconfigure {
                spec,
                replace,
                reply,
            } => {
                self.spec = *spec;
                let given_up = matches!(
                    self.state,
                    AgentState::Failed { .. } | AgentState::Cooldown { .. }
                );
                if replace && !self.held && (self.worker.is_some() || given_up) {
                    // The failures counted so far were those of the old configuration.
                    self.tracker.reset();
                    self.stop_worker("configuration reloaded", false).await;
                    self.start_worker().await;
                }
                let _ = reply.send(());
            }
            AgentCommand::Retire { reply } => {
                let reason = "removed by a reload";
                self.stop_worker(reason, false).await;
                self.flush_noise(Instant::now(), true);
                self.set_state(
                    AgentState::Stopped {
                        reason: reason.into(),
                    },
                    reason,
                );
                let _ = reply.send(());
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }

    pub(super) async fn start_worker(&mut self) {
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
                    hello: None,
                    clock: WorkerClock::new(now),
                    in_flight: InFlight::default(),
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

    pub(super) fn set_state(&mut self, state: AgentState, reason: impl Into<String>) {
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

    pub(super) fn publish_status(&self) {
        let ready_since = match &self.state {
            AgentState::Ready { .. } | AgentState::Busy { .. } => self
                .worker
                .as_ref()
                .and_then(|w| w.clock.ready_at())
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
                .and_then(|w| w.in_flight.first_id().map(str::to_owned)),
            last_exit: self.last_exit.clone(),
            reason: self.state.reason().map(str::to_owned),
            next_retry: self.state.retry_at().map(wall_clock),
            protocol_noise: self.protocol_noise,
        };
        self.status.send_replace(status);
    }
}

/// Marks the worker doomed (the first cause wins) and SIGKILLs its group; the exit, noticed
/// as usual, then ends it. Its leader is not reaped before the exit is handled, so the group
/// id is still this worker's.
pub(super) fn kill(worker: &mut Worker, cause: DeathCause, detail: String) {
    if worker.doom.is_none() {
        tracing::warn!(pid = worker.conn.pid, %cause, %detail, "killing worker");
        worker.doom = Some((cause, detail));
    }
    worker.conn.group.kill();
}

pub(super) fn send(worker: &mut Worker, message: &SupervisorMessage, max_line_bytes: usize) {
    match encode_line(message, max_line_bytes) {
        Ok(line) => worker.conn.send_line(line),
        Err(error) => tracing::error!(%error, "could not encode a message for the worker"),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
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
