//! What the actor does with what its worker says (the handshake, responses, heartbeats, logs,
//! protocol noise) and with the jobs it hands the worker (dispatch and redelivery).

use tokio::time::Instant;

use super::actor::{AgentActor, kill, send};
use super::connection::ConnEvent;
use super::in_flight::{InFlight, Redelivery, redelivery};
use super::job::{DeliveryFailure, Job, JobError};
use super::noise::{NOISE_STRAY_LINE, NOISE_UNKNOWN_RESPONSE, NOISE_UNKNOWN_TYPE};
use super::state::AgentState;
use crate::protocol::{
    self, LogLevel, Outcome, PROTOCOL_VERSION, SupervisorMessage, WorkerMessage, encode_line,
    error_codes,
};
use crate::supervisor::{DeathCause, EventKind};

/// Stderr lines attached to each lost delivery of a job.
pub(super) const FAILURE_TAIL_LINES: usize = 20;

impl AgentActor {
    pub(super) async fn on_conn_event(&mut self, event: ConnEvent) {
        match event {
            ConnEvent::Exited(status) => self.on_worker_exit(status).await,
            ConnEvent::Message(message) => self.on_message(message),
            ConnEvent::StdoutClosed => tracing::debug!("worker closed its stdout"),
            ConnEvent::Stray(_) | ConnEvent::Unknown(_) => self.on_noise(event),
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

    /// A stray line or a message of unknown type: counted, logged, and reported in merged
    /// `protocol_noise` events (see [`super::noise`]).
    pub(super) fn on_noise(&mut self, event: ConnEvent) {
        let (kind, detail) = match event {
            ConnEvent::Stray(preview) => {
                tracing::warn!(line = %preview, "worker wrote a non-protocol line to stdout; ignored");
                (NOISE_STRAY_LINE, preview)
            }
            ConnEvent::Unknown(kind) => {
                tracing::warn!(%kind, "worker sent a message of unknown type; ignored");
                (NOISE_UNKNOWN_TYPE, kind)
            }
            _ => return,
        };
        self.note_noise(kind, detail);
    }

    fn note_noise(&mut self, kind: &'static str, detail: String) {
        self.protocol_noise += 1;
        if let Some(report) = self.noise.record(kind, detail, Instant::now()) {
            self.ctx
                .events
                .publish(Some(&self.spec.id), report.into_event());
        }
        self.publish_status();
    }

    /// Publishes the noise held back by the rate limit once it is due (or now, if `force`).
    pub(super) fn flush_noise(&mut self, now: Instant, force: bool) {
        if let Some(report) = self.noise.flush(now, force) {
            self.ctx
                .events
                .publish(Some(&self.spec.id), report.into_event());
        }
    }

    pub(super) fn on_message(&mut self, message: WorkerMessage) {
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
                let now = Instant::now();
                if worker.clock.ready(now, &self.spec.timing) {
                    let pid = worker.conn.pid;
                    if matches!(self.state, AgentState::Starting { .. }) {
                        self.set_state(AgentState::Ready { pid, since: now }, "worker ready");
                    }
                }
            }
            WorkerMessage::Response(response) => {
                let Some(held) = worker.in_flight.remove(&response.id) else {
                    // Counted like other noise (protocol/README.md): a late answer to a request
                    // already redelivered elsewhere must not finish it twice.
                    tracing::warn!(id = %response.id, "response for a request this worker does not hold; ignored");
                    self.note_noise(NOISE_UNKNOWN_RESPONSE, response.id);
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
            WorkerMessage::Pong(pong) => worker.clock.pong(pong.nonce),
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

    pub(super) fn dispatch(&mut self, mut job: Job) {
        if job.reply.is_closed() {
            // Its caller gave up (a plan that waited `agent_wait` for the role, or one that
            // was stopped): running it would only cost a worker's time and the provider's.
            tracing::debug!(job = %job.request.id, "job abandoned by its caller; not dispatched");
            return;
        }
        let max_line = self.spec.max_line_bytes;
        let Some(worker) = self.worker.as_mut() else {
            self.redeliver(job, None);
            return;
        };
        let request = InFlight::request_for(&mut job);
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
        worker.in_flight.insert(job, now);
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
    pub(super) fn redeliver(&self, job: Job, failure: Option<DeliveryFailure>) {
        match redelivery(job, failure, self.spec.max_deliveries) {
            Redelivery::Quarantine(job) => {
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
            }
            Redelivery::Requeue { job, isolated } => {
                let queue = if isolated {
                    &self.ctx.requeue_isolated
                } else {
                    &self.ctx.requeue
                };
                if let Err(closed) = queue.try_send(job) {
                    closed.into_inner().finish(Err(JobError::SupervisorStopped));
                }
            }
        }
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
