//! Agent states, the status snapshot readers see, and crash reports.

use std::time::SystemTime;

use serde::{Serialize, Serializer};
use tokio::time::Instant;

use crate::config::Role;
use crate::process::ExitStatus;
use crate::supervisor::DeathCause;

/// Where an agent is in its life. Each state carries what is true only in it.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentState {
    Starting {
        pid: Option<u32>,
        since: Instant,
    },
    Ready {
        pid: u32,
        since: Instant,
    },
    Busy {
        pid: u32,
        job: String,
        since: Instant,
    },
    Backoff {
        until: Instant,
        attempt: u32,
        reason: String,
    },
    Cooldown {
        until: Instant,
        reason: String,
    },
    Stopping {
        pid: u32,
        reason: String,
    },
    Stopped {
        reason: String,
    },
    Failed {
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StateName {
    Starting,
    Ready,
    Busy,
    Backoff,
    Cooldown,
    Stopping,
    Stopped,
    Failed,
}

impl std::fmt::Display for StateName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let json = serde_json::to_value(self).expect("state names serialise");
        f.write_str(json.as_str().expect("state names serialise as strings"))
    }
}

impl AgentState {
    pub fn name(&self) -> StateName {
        match self {
            AgentState::Starting { .. } => StateName::Starting,
            AgentState::Ready { .. } => StateName::Ready,
            AgentState::Busy { .. } => StateName::Busy,
            AgentState::Backoff { .. } => StateName::Backoff,
            AgentState::Cooldown { .. } => StateName::Cooldown,
            AgentState::Stopping { .. } => StateName::Stopping,
            AgentState::Stopped { .. } => StateName::Stopped,
            AgentState::Failed { .. } => StateName::Failed,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        match self {
            AgentState::Starting { pid, .. } => *pid,
            AgentState::Ready { pid, .. }
            | AgentState::Busy { pid, .. }
            | AgentState::Stopping { pid, .. } => Some(*pid),
            _ => None,
        }
    }

    /// Why the agent is here, for the states where a reason matters to an operator.
    pub fn reason(&self) -> Option<&str> {
        match self {
            AgentState::Backoff { reason, .. }
            | AgentState::Cooldown { reason, .. }
            | AgentState::Stopping { reason, .. }
            | AgentState::Stopped { reason }
            | AgentState::Failed { reason } => Some(reason),
            _ => None,
        }
    }

    pub fn retry_at(&self) -> Option<Instant> {
        match self {
            AgentState::Backoff { until, .. } | AgentState::Cooldown { until, .. } => Some(*until),
            _ => None,
        }
    }
}

/// How the previous worker of an agent ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LastExit {
    pub status: ExitStatus,
    pub cause: DeathCause,
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
}

/// A snapshot of one agent, as the agent table, `mnemosyne agents` and the dashboard see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentStatus {
    pub id: String,
    pub role: Role,
    pub state: StateName,
    pub pid: Option<u32>,
    pub restarts: u32,
    #[serde(serialize_with = "rfc3339_opt")]
    pub ready_since: Option<SystemTime>,
    pub in_flight: u32,
    /// The id of the request the worker holds, while busy.
    pub current_job: Option<String>,
    pub last_exit: Option<LastExit>,
    pub reason: Option<String>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub next_retry: Option<SystemTime>,
    /// Lines on stdout that were not protocol messages, and messages of unknown type.
    pub protocol_noise: u64,
}

/// Everything known about one worker death, published as an event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CrashReport {
    pub pid: u32,
    pub exit: ExitStatus,
    pub cause: DeathCause,
    pub detail: String,
    pub in_flight: Vec<String>,
    pub restarts: u32,
    /// What the supervisor does next: `restart`, `cooldown`, `stop` or `fail`.
    pub next: &'static str,
    #[serde(serialize_with = "rfc3339_opt")]
    pub next_retry: Option<SystemTime>,
    pub stderr_tail: Vec<String>,
}

/// Converts a monotonic deadline into wall-clock time for people to read.
pub fn wall_clock(at: Instant) -> SystemTime {
    let now = Instant::now();
    if at >= now {
        SystemTime::now() + (at - now)
    } else {
        SystemTime::now() - (now - at)
    }
}

fn rfc3339<S: Serializer>(at: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_rfc3339_millis(*at))
}

fn rfc3339_opt<S: Serializer>(at: &Option<SystemTime>, serializer: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => rfc3339(at, serializer),
        None => serializer.serialize_none(),
    }
}
