//! Learning that a worker has exited without reaping it, and reaping it later.
//!
//! A process's pid, and with it the id of the process group it leads, stays reserved while the
//! process is an unreaped zombie. So the agent first learns of the exit (a pidfd becomes
//! readable; `waitid` with `WNOWAIT` reads the status and leaves the zombie), then SIGKILLs
//! what is left of the group (grandchildren), and only then reaps. Signalling a group after
//! its leader was reaped could hit an unrelated group that reused the id.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

use super::group::ExitStatus;

/// The exit of one child process: awaited without reaping, reaped on request, and killed and
/// reaped on drop if nobody did (so no zombie is ever left behind).
pub struct ExitWatch {
    pid: Pid,
    source: Source,
    status: Option<ExitStatus>,
    reaped: bool,
}

enum Source {
    PidFd(AsyncFd<OwnedFd>),
    /// Kernels before 5.3 have no pidfd; a thread blocks in `waitid(WNOWAIT)` instead.
    Thread(oneshot::Receiver<ExitStatus>),
}

impl ExitWatch {
    /// Watches `pid`, which must be an unreaped child of this process. Must be called inside a
    /// Tokio runtime.
    pub fn new(pid: u32) -> io::Result<Self> {
        let raw = i32::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let pid = Pid::from_raw(raw);
        let source = match pidfd_open(pid) {
            Ok(fd) => {
                // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open and the
                // same for as long as it is registered.
                let registered = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) };
                Source::PidFd(registered.map_err(|error| error.into_parts().1)?)
            }
            Err(Errno::ENOSYS) => {
                let (tx, rx) = oneshot::channel();
                std::thread::Builder::new()
                    .name("mnemosyne-exit-wait".into())
                    .spawn(move || {
                        let status = loop {
                            match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)
                            {
                                Err(Errno::EINTR) => continue,
                                other => break to_exit_status(other),
                            }
                        };
                        let _ = tx.send(status);
                    })?;
                Source::Thread(rx)
            }
            Err(errno) => return Err(errno.into()),
        };
        Ok(Self {
            pid,
            source,
            status: None,
            reaped: false,
        })
    }

    /// Resolves once the process has exited. It is left a zombie until [`ExitWatch::reap`], so
    /// its pid and process-group id cannot be reused meanwhile. Cancel-safe; once resolved it
    /// resolves at once with the same status.
    pub async fn exited(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let status = match &mut self.source {
            Source::PidFd(fd) => loop {
                let mut guard = match fd.readable().await {
                    Ok(guard) => guard,
                    Err(error) => {
                        // Only if the runtime is shutting down; then nobody is waiting anyway.
                        tracing::error!(%error, "watching a worker's pidfd failed");
                        break ExitStatus::Code { code: -1 };
                    }
                };
                let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG;
                match waitid(Id::Pid(self.pid), flags) {
                    Ok(WaitStatus::StillAlive) => guard.clear_ready(),
                    Err(Errno::EINTR) => {}
                    other => break to_exit_status(other),
                }
            },
            Source::Thread(rx) => rx.await.unwrap_or(ExitStatus::Code { code: -1 }),
        };
        self.status = Some(status);
        status
    }

    /// Reaps the process once [`ExitWatch::exited`] has resolved; before that it does nothing
    /// (dropping the watch then kills and reaps).
    pub fn reap(&mut self) {
        if self.reaped || self.status.is_none() {
            return;
        }
        loop {
            match waitid(Id::Pid(self.pid), WaitPidFlag::WEXITED) {
                Err(Errno::EINTR) => continue,
                Ok(_) => break,
                Err(error) => {
                    tracing::error!(pid = self.pid.as_raw(), %error, "reaping a worker failed");
                    break;
                }
            }
        }
        self.reaped = true;
    }

    /// Whether the process has been reaped (its pid may now belong to someone else).
    pub fn is_reaped(&self) -> bool {
        self.reaped
    }
}

impl Drop for ExitWatch {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        // Unreaped, the pid is still ours, so this cannot hit another process.
        if self.status.is_none() {
            let _ = kill(self.pid, Signal::SIGKILL);
        }
        let pid = self.pid;
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG) {
            Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => {
                // SIGKILL takes a moment to land; reap it off this thread.
                let _ = std::thread::Builder::new()
                    .name("mnemosyne-reaper".into())
                    .spawn(move || {
                        while let Err(Errno::EINTR) = waitid(Id::Pid(pid), WaitPidFlag::WEXITED) {}
                    });
            }
            _ => {}
        }
    }
}

fn pidfd_open(pid: Pid) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    let fd = i32::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: the syscall just returned this descriptor and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    debug_assert!(fd.as_raw_fd() >= 0);
    Ok(fd)
}

fn to_exit_status(status: nix::Result<WaitStatus>) -> ExitStatus {
    match status {
        Ok(WaitStatus::Exited(_, code)) => ExitStatus::Code { code },
        Ok(WaitStatus::Signaled(_, signal, _)) => ExitStatus::Signal {
            signal: signal as i32,
        },
        other => {
            // Waiting only fails if the child was reaped elsewhere, which nothing does.
            tracing::error!(?other, "waiting for a worker gave no exit status");
            ExitStatus::Code { code: -1 }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};
    use std::time::Duration;

    use super::*;

    /// Starts a child and hands back only its pid: the watch under test is what reaps it.
    fn spawn(program: &str, args: &[&str]) -> u32 {
        Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .expect("the program starts")
            .id()
    }

    fn is_zombie(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let state = stat.rsplit(')').next()?.split_whitespace().next()?;
                Some(state == "Z")
            })
            .unwrap_or(false)
    }

    fn exists(pid: u32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    #[tokio::test]
    async fn an_exit_is_seen_without_reaping_and_reaped_on_request() {
        let pid = spawn("sh", &["-c", "exit 7"]);
        let mut watch = ExitWatch::new(pid).expect("watch");
        let status = tokio::time::timeout(Duration::from_secs(20), watch.exited())
            .await
            .expect("exit seen within the limit");
        assert_eq!(status, ExitStatus::Code { code: 7 });
        assert!(is_zombie(pid), "still a zombie before the reap");
        assert_eq!(watch.exited().await, status, "resolves again at once");
        watch.reap();
        assert!(watch.is_reaped());
        assert!(!exists(pid), "reaped");
    }

    #[tokio::test]
    async fn a_dropped_watch_kills_and_reaps_its_process() {
        let pid = spawn("sleep", &["1000"]);
        let watch = ExitWatch::new(pid).expect("watch");
        drop(watch);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while exists(pid) && std::time::Instant::now() < deadline {
            // The reaper thread has no event to wait on from here; poll /proc, bounded.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!exists(pid), "killed and reaped");
    }

    #[tokio::test]
    async fn a_signal_death_reports_the_signal() {
        let pid = spawn("sleep", &["1000"]);
        let mut watch = ExitWatch::new(pid).expect("watch");
        kill(Pid::from_raw(pid as i32), Signal::SIGTERM).expect("signal");
        let status = tokio::time::timeout(Duration::from_secs(20), watch.exited())
            .await
            .expect("exit seen within the limit");
        assert_eq!(status, ExitStatus::Signal { signal: 15 });
        watch.reap();
    }
}
