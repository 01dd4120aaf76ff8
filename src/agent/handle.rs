//! The cloneable handle through which the supervisor and control clients drive one agent.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::actor::AgentSpec;
use super::state::{AgentStatus, StateName};
use crate::config::Role;
use crate::process::LogTail;

#[derive(Debug)]
pub(crate) enum AgentCommand {
    /// Stop the worker and keep the agent stopped until `Start`.
    Stop { reply: oneshot::Sender<()> },
    /// Start a stopped, failed or cooling-down agent now, with a clean restart history.
    Start { reply: oneshot::Sender<()> },
    /// Replace the worker: gracefully (in-flight work finishes or is redelivered) or at once.
    Restart {
        now: bool,
        reply: oneshot::Sender<()>,
    },
    /// Take reloaded settings: they apply to the next worker, and with `replace` the current
    /// worker is replaced gracefully now (an agent stopped by an operator stays stopped).
    Reconfigure {
        spec: Box<AgentSpec>,
        replace: bool,
        reply: oneshot::Sender<()>,
    },
    /// Stop the worker gracefully, handing its work back, and end the agent: a reload shrank
    /// its role.
    Retire { reply: oneshot::Sender<()> },
}

#[derive(Debug, thiserror::Error)]
pub enum AgentCommandError {
    #[error("agent {0} is no longer running")]
    Gone(String),
    #[error("agent {id} did not reach {wanted} within {waited:?}; it is {state}")]
    Timeout {
        id: String,
        wanted: String,
        waited: Duration,
        state: StateName,
    },
}

#[derive(Debug, Clone)]
pub struct AgentHandle {
    pub(crate) id: String,
    pub(crate) role: Role,
    pub(crate) commands: mpsc::Sender<AgentCommand>,
    pub(crate) status: watch::Receiver<AgentStatus>,
    pub(crate) tail: LogTail,
}

impl AgentHandle {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn status(&self) -> AgentStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change of this agent.
    pub fn watch(&self) -> watch::Receiver<AgentStatus> {
        self.status.clone()
    }

    /// The stderr tail of this agent's workers, across restarts.
    pub fn stderr_tail(&self, lines: usize) -> Vec<String> {
        self.tail.last(lines)
    }

    /// The stderr tail and a subscription to every line written after it (`logs --follow`).
    pub fn stderr_follow(&self, lines: usize) -> (Vec<String>, broadcast::Receiver<Arc<str>>) {
        self.tail.last_and_follow(lines)
    }

    pub async fn stop(&self) -> Result<(), AgentCommandError> {
        self.command(|reply| AgentCommand::Stop { reply }).await
    }

    pub async fn start(&self) -> Result<(), AgentCommandError> {
        self.command(|reply| AgentCommand::Start { reply }).await
    }

    pub async fn restart(&self, now: bool) -> Result<(), AgentCommandError> {
        self.command(|reply| AgentCommand::Restart { now, reply })
            .await
    }

    pub(crate) async fn reconfigure(
        &self,
        spec: AgentSpec,
        replace: bool,
    ) -> Result<(), AgentCommandError> {
        let spec = Box::new(spec);
        self.command(|reply| AgentCommand::Reconfigure {
            spec,
            replace,
            reply,
        })
        .await
    }

    pub(crate) async fn retire(&self) -> Result<(), AgentCommandError> {
        self.command(|reply| AgentCommand::Retire { reply }).await
    }

    async fn command(
        &self,
        make: impl FnOnce(oneshot::Sender<()>) -> AgentCommand,
    ) -> Result<(), AgentCommandError> {
        let (reply, done) = oneshot::channel();
        let gone = || AgentCommandError::Gone(self.id.clone());
        self.commands.send(make(reply)).await.map_err(|_| gone())?;
        done.await.map_err(|_| gone())
    }

    /// Waits until the agent's status satisfies `wanted`, at most `limit`.
    pub async fn wait_until(
        &self,
        description: &str,
        limit: Duration,
        wanted: impl FnMut(&AgentStatus) -> bool,
    ) -> Result<AgentStatus, AgentCommandError> {
        let mut status = self.status.clone();
        let found = match tokio::time::timeout(limit, status.wait_for(wanted)).await {
            Ok(Ok(found)) => Some(found.clone()),
            Ok(Err(_)) => return Err(AgentCommandError::Gone(self.id.clone())),
            Err(_) => None,
        };
        found.ok_or_else(|| AgentCommandError::Timeout {
            id: self.id.clone(),
            wanted: description.to_owned(),
            waited: limit,
            state: self.status.borrow().state,
        })
    }
}
