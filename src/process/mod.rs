//! Worker processes: launching, process groups and signals, stderr capture, the orphan warden,
//! the embedded Python package, and the sandbox for the executor's commands.

mod environment;
pub mod escalation;
mod exit;
mod group;
mod launcher;
mod python_package;
pub mod sandbox;
mod stderr;
mod warden;

pub use environment::{ENV_ALLOWLIST, WorkerEnvironment};
pub use exit::ExitWatch;
pub use group::{ExitStatus, ProcessGroup};
pub use launcher::{LaunchFuture, LaunchSpec, LaunchedWorker, Launcher, LocalLauncher, SpawnError};
pub use python_package::{PackageError, unpack_embedded_package};
pub use stderr::{LogTail, STDERR_TAIL_LINES, drain_stderr};
pub use warden::{WARDEN_SUBCOMMAND, Warden, run_warden};
