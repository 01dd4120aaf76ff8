//! Starting a worker and learning of its exit, behind one small interface, so a later launcher
//! (a pre-imported zygote forking workers that are not our children) can replace this one.

use std::future::Future;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::mpsc as std_mpsc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use super::environment::WorkerEnvironment;
use super::exit::ExitWatch;
use super::group::ProcessGroup;

/// What to start.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub agent_id: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: WorkerEnvironment,
    pub cwd: Option<PathBuf>,
}

/// A started worker: its pipes, its process group, and the watch on its exit (which reports
/// the exit without reaping, so the group can still be signalled safely, and kills and reaps
/// the worker if dropped).
pub struct LaunchedWorker {
    pub pid: u32,
    pub group: ProcessGroup,
    pub stdin: Pin<Box<dyn AsyncWrite + Send>>,
    pub stdout: Pin<Box<dyn AsyncRead + Send>>,
    pub stderr: Pin<Box<dyn AsyncRead + Send>>,
    pub exit: ExitWatch,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("python interpreter not found: {program}")]
    ProgramNotFound {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not start {program}")]
    Io {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the launcher has shut down")]
    LauncherGone,
}

impl SpawnError {
    /// Whether retrying cannot help until the configuration changes.
    pub fn is_configuration_problem(&self) -> bool {
        matches!(self, SpawnError::ProgramNotFound { .. })
    }
}

pub type LaunchFuture<'a> =
    Pin<Box<dyn Future<Output = Result<LaunchedWorker, SpawnError>> + Send + 'a>>;

pub trait Launcher: Send + Sync + 'static {
    fn launch(&self, spec: LaunchSpec) -> LaunchFuture<'_>;
}

type SpawnRequest = (
    LaunchSpec,
    oneshot::Sender<Result<LaunchedWorker, SpawnError>>,
);

/// Launches workers as children of this process, each leading its own process group and
/// carrying a parent-death signal.
///
/// Linux delivers the parent-death signal when the *thread* that forked the child exits, not
/// the process. Tokio may retire the thread a task happens to run on, so every fork happens on
/// one dedicated thread that lives exactly as long as this launcher.
pub struct LocalLauncher {
    requests: std_mpsc::Sender<SpawnRequest>,
}

impl LocalLauncher {
    /// Must be called inside a Tokio runtime; the spawner thread registers children with it.
    pub fn new() -> io::Result<Self> {
        let runtime = tokio::runtime::Handle::current();
        let (requests, incoming) = std_mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("mnemosyne-spawner".into())
            .spawn(move || {
                let _guard = runtime.enter();
                for (spec, reply) in incoming {
                    let _ = reply.send(spawn_child(spec));
                }
            })?;
        Ok(Self { requests })
    }
}

impl Launcher for LocalLauncher {
    fn launch(&self, spec: LaunchSpec) -> LaunchFuture<'_> {
        let (reply, answer) = oneshot::channel();
        let sent = self.requests.send((spec, reply));
        Box::pin(async move {
            sent.map_err(|_| SpawnError::LauncherGone)?;
            answer.await.map_err(|_| SpawnError::LauncherGone)?
        })
    }
}

fn spawn_child(spec: LaunchSpec) -> Result<LaunchedWorker, SpawnError> {
    // A std command, not tokio's: tokio would reap the child itself, and the agent must reap
    // only after it has signalled the group (see `ExitWatch`).
    let mut command = std::process::Command::new(&spec.program);
    command
        .args(&spec.args)
        .env_clear()
        .envs(spec.env.exposed())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    let supervisor_pid = nix::unistd::getpid();
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls
    // (prctl, getppid, raise).
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            // The supervisor may have died between fork and prctl; then nobody would send the
            // signal, so send it now.
            if nix::unistd::getppid() != supervisor_pid {
                nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL)?;
            }
            Ok(())
        });
    }
    let program = spec.program.clone();
    let mut child = command.spawn().map_err(|source| {
        let program = program.clone();
        if source.kind() == io::ErrorKind::NotFound {
            SpawnError::ProgramNotFound { program, source }
        } else {
            SpawnError::Io { program, source }
        }
    })?;
    let pid = child.id();
    let io_error = |source| SpawnError::Io {
        program: program.clone(),
        source,
    };
    // The watch first: from here on, any early return drops it, which kills and reaps.
    let exit = match ExitWatch::new(pid) {
        Ok(exit) => exit,
        Err(source) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io_error(source));
        }
    };
    let stdin = tokio::process::ChildStdin::from_std(child.stdin.take().expect("stdin was piped"))
        .map_err(io_error)?;
    let stdout =
        tokio::process::ChildStdout::from_std(child.stdout.take().expect("stdout was piped"))
            .map_err(io_error)?;
    let stderr =
        tokio::process::ChildStderr::from_std(child.stderr.take().expect("stderr was piped"))
            .map_err(io_error)?;
    Ok(LaunchedWorker {
        pid,
        group: ProcessGroup(pid as i32),
        stdin: Box::pin(stdin),
        stdout: Box::pin(stdout),
        stderr: Box::pin(stderr),
        exit,
    })
}
