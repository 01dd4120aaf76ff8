//! Jobs: requests waiting for, or held by, a worker of a role, and how each one ended.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::process::ExitStatus;
use crate::protocol::ErrorBody;
use crate::supervisor::DeathCause;

/// What the caller asks a worker of some role to do.
#[derive(Debug, Clone)]
pub struct JobRequest {
    /// Unique among live jobs; it is the request id on the wire.
    pub id: String,
    pub method: String,
    pub params: Value,
    pub deadline: Duration,
}

/// A request on its way through the role's queue, with its delivery history.
#[derive(Debug)]
pub struct Job {
    pub request: JobRequest,
    pub deliveries: u32,
    pub failures: Vec<DeliveryFailure>,
    /// Set after this job was on a worker that died holding other jobs too: which one killed
    /// it is unknown, so the next delivery goes to a worker holding nothing else, where a death
    /// can be blamed on this job alone.
    pub isolate: bool,
    pub(crate) reply: oneshot::Sender<JobOutcome>,
}

impl Job {
    pub fn new(request: JobRequest) -> (Self, oneshot::Receiver<JobOutcome>) {
        let (reply, outcome) = oneshot::channel();
        (
            Self {
                request,
                deliveries: 0,
                failures: Vec::new(),
                isolate: false,
                reply,
            },
            outcome,
        )
    }

    pub(crate) fn finish(self, result: Result<Value, JobError>) {
        // A caller that stopped waiting no longer needs the answer.
        let _ = self.reply.send(JobOutcome {
            result,
            deliveries: self.deliveries,
        });
    }
}

/// One delivery that ended without an answer because the worker was lost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryFailure {
    pub agent: String,
    pub pid: u32,
    pub cause: DeathCause,
    pub exit: Option<ExitStatus>,
    /// The worker held other jobs too, so this death is not blamed on this job and does not
    /// count towards its quarantine.
    pub shared: bool,
    pub stderr_tail: Vec<String>,
}

impl Job {
    /// Lost deliveries that can be blamed on this job.
    pub fn attributed_failures(&self) -> usize {
        self.failures
            .iter()
            .filter(|failure| !failure.shared)
            .count()
    }
}

#[derive(Debug)]
pub struct JobOutcome {
    pub result: Result<Value, JobError>,
    /// How many times the request was sent to a worker.
    pub deliveries: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("the worker answered with an error: {}", .0.message)]
    Worker(ErrorBody),
    #[error("quarantined after {} lost deliveries", failures.len())]
    Quarantined { failures: Vec<DeliveryFailure> },
    #[error("the supervisor stopped before the job finished")]
    SupervisorStopped,
    #[error("no agent of role {role} is configured (count = 0)")]
    NoWorkers { role: crate::config::Role },
    #[error("the request does not fit in one protocol line of {limit} bytes")]
    TooLarge { limit: usize },
}
