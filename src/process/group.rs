//! Process groups: every worker leads its own group, so one signal reaches its whole tree.

use std::fmt;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::Serialize;

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code { code: i32 },
    Signal { signal: i32 },
}

impl Serialize for ExitStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(2))?;
        match self {
            ExitStatus::Code { code } => map.serialize_entry("code", code)?,
            ExitStatus::Signal { signal } => {
                map.serialize_entry("signal", signal)?;
                map.serialize_entry("signal_name", &signal_name(*signal))?;
            }
        }
        map.end()
    }
}

fn signal_name(signal: i32) -> String {
    Signal::try_from(signal)
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|_| format!("signal {signal}"))
}

impl ExitStatus {
    pub fn from_std(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => ExitStatus::Code { code },
            (None, Some(signal)) => ExitStatus::Signal { signal },
            (None, None) => ExitStatus::Code { code: -1 },
        }
    }

    pub fn is_success(&self) -> bool {
        matches!(self, ExitStatus::Code { code: 0 })
    }

    pub fn code(&self) -> Option<i32> {
        match self {
            ExitStatus::Code { code } => Some(*code),
            ExitStatus::Signal { .. } => None,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code { code } => write!(f, "exit code {code}"),
            ExitStatus::Signal { signal } => write!(f, "killed by {}", signal_name(*signal)),
        }
    }
}

/// The process group a worker leads (its pgid equals its pid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcessGroup(pub i32);

impl ProcessGroup {
    /// Sends `signal` to every process in the group. A group that no longer exists is not an
    /// error: the point of the call is that nothing in it runs afterwards.
    pub fn signal(&self, signal: Signal) {
        match killpg(Pid::from_raw(self.0), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(error) => {
                tracing::warn!(pgid = self.0, %signal, %error, "signalling a process group failed")
            }
        }
    }

    pub fn kill(&self) {
        self.signal(Signal::SIGKILL);
    }
}
