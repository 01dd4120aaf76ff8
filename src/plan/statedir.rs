//! The state directory: where it is by default, and the lock that lets only one supervisor
//! at a time use it.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The lock file inside the state directory. It is never deleted: removing it while another
/// process has it open would let two supervisors lock two different files of the same name.
const LOCK_FILE: &str = "supervisor.lock";

/// A state directory that this process holds exclusively until the value is dropped.
///
/// The lock is an `flock` on `supervisor.lock`, so the kernel releases it when the holder dies,
/// however it dies: a lock file left behind by a supervisor that was `kill -9`ed does not block
/// the next one. Only a live holder does. The file descriptor is close-on-exec, so workers the
/// supervisor starts do not inherit the lock.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    // Held for its Drop, which releases the lock.
    _lock: Flock<File>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error("state directory {dir} is in use by another supervisor (pid {})", pid_text(*.pid))]
    Locked { dir: PathBuf, pid: Option<u32> },
    #[error("cannot prepare state directory {dir}")]
    Io {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn pid_text(pid: Option<u32>) -> String {
    pid.map_or_else(|| "unknown".to_owned(), |pid| pid.to_string())
}

impl StateDir {
    /// Creates the directory (mode 0700, since plans and results may hold private data) if
    /// needed and takes an exclusive, non-blocking lock on it, writing our pid into the lock
    /// file so that a second supervisor can say who holds it.
    pub fn lock(path: &Path) -> Result<StateDir, StateDirError> {
        let io_error = |source| StateDirError::Io {
            dir: path.to_path_buf(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(io_error)?;
        // No truncation on open: until we hold the lock, the pid in the file is the holder's.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path.join(LOCK_FILE))
            .map_err(io_error)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                return Err(StateDirError::Locked {
                    dir: path.to_path_buf(),
                    pid: read_pid(&mut file),
                });
            }
            Err((_, errno)) => return Err(io_error(errno.into())),
        };
        write_pid(&mut lock).map_err(io_error)?;
        Ok(StateDir {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The holder's pid, or `None` if it cannot be read, which happens when the holder has taken
/// the lock but not yet written its pid.
fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

fn write_pid(file: &mut File) -> io::Result<()> {
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    file.sync_data()
}

/// The state directory to use when none is configured: `MNEMOSYNE_STATE_DIR`, else
/// `$XDG_STATE_HOME/mnemosyne`, else `~/.local/state/mnemosyne`, else a per-user temp
/// directory.
pub fn default_state_dir() -> PathBuf {
    let var = |name: &str| std::env::var_os(name);
    resolve_state_dir(
        var("MNEMOSYNE_STATE_DIR"),
        var("XDG_STATE_HOME"),
        var("HOME"),
        || std::env::temp_dir().join(format!("mnemosyne-state-{}", nix::unistd::getuid())),
    )
}

/// The environment lookups of [`default_state_dir`], kept apart so that tests need not change
/// the process environment.
fn resolve_state_dir(
    explicit: Option<OsString>,
    xdg_state_home: Option<OsString>,
    home: Option<OsString>,
    fallback: impl FnOnce() -> PathBuf,
) -> PathBuf {
    let set = |value: Option<OsString>| value.filter(|value| !value.is_empty()).map(PathBuf::from);
    if let Some(dir) = set(explicit) {
        return dir;
    }
    // The XDG base directory specification says relative paths are invalid and to be ignored.
    if let Some(dir) = set(xdg_state_home).filter(|dir| dir.is_absolute()) {
        return dir.join("mnemosyne");
    }
    if let Some(home) = set(home) {
        return home.join(".local").join("state").join("mnemosyne");
    }
    fallback()
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::PermissionsExt;

    use nix::sys::signal::{Signal, kill};
    use nix::sys::wait::waitpid;
    use nix::unistd::{ForkResult, Pid, fork, pipe};

    use super::*;

    fn no_fallback() -> PathBuf {
        panic!("the fallback should not be used")
    }

    #[test]
    fn the_state_dir_is_created_with_mode_0700() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root.path().join("nested").join("state");
        let state = StateDir::lock(&dir).expect("lock");
        assert_eq!(state.path(), dir);
        let mode = fs::metadata(&dir).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn the_lock_file_holds_our_pid() {
        let root = tempfile::tempdir().expect("temp dir");
        let _state = StateDir::lock(root.path()).expect("lock");
        let text = fs::read_to_string(root.path().join(LOCK_FILE)).expect("lock file");
        assert_eq!(text.trim(), std::process::id().to_string());
    }

    #[test]
    fn a_second_lock_on_the_same_dir_fails_naming_our_pid() {
        let root = tempfile::tempdir().expect("temp dir");
        let _first = StateDir::lock(root.path()).expect("first lock");
        let error = StateDir::lock(root.path()).expect_err("second lock must fail");
        let StateDirError::Locked { dir, pid } = &error else {
            panic!("expected Locked, got {error:?}");
        };
        assert_eq!(dir, root.path());
        assert_eq!(*pid, Some(std::process::id()));
        assert_eq!(
            error.to_string(),
            format!(
                "state directory {} is in use by another supervisor (pid {})",
                root.path().display(),
                std::process::id()
            )
        );
    }

    #[test]
    fn a_dropped_state_dir_can_be_locked_again() {
        let root = tempfile::tempdir().expect("temp dir");
        drop(StateDir::lock(root.path()).expect("first lock"));
        StateDir::lock(root.path()).expect("lock again after the first holder let go");
    }

    /// Kills its child on drop, so a failing assertion leaves no process behind.
    struct KillOnDrop(Option<Pid>);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if let Some(pid) = self.0.take() {
                let _ = kill(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
            }
        }
    }

    #[test]
    fn a_lock_held_by_a_killed_process_does_not_block() {
        let root = tempfile::tempdir().expect("temp dir");
        let lock_path = root.path().join(LOCK_FILE);
        let file = File::create(&lock_path).expect("lock file");
        let (ready_read, ready_write) = pipe().expect("pipe");

        // SAFETY: the child makes only async-signal-safe system calls on descriptors it
        // inherited, then waits to be killed; it never returns into the test harness.
        let child = match unsafe { fork() }.expect("fork") {
            ForkResult::Child => unsafe {
                use nix::libc;
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                let locked = libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0;
                let byte = if locked { b'1' } else { b'0' };
                libc::write(ready_write.as_raw_fd(), (&raw const byte).cast(), 1);
                loop {
                    libc::pause();
                }
            },
            ForkResult::Parent { child } => child,
        };
        let mut guard = KillOnDrop(Some(child));
        // Only the child may keep the locked open file description alive.
        drop(file);
        drop(ready_write);
        let mut byte = [0u8];
        File::from(ready_read)
            .read_exact(&mut byte)
            .expect("the child reports");
        assert_eq!(&byte, b"1", "the child took the lock");
        // What a supervisor holding the lock would have written.
        fs::write(&lock_path, format!("{child}\n")).expect("write pid");

        let error = StateDir::lock(root.path()).expect_err("a live holder blocks");
        let StateDirError::Locked { pid, .. } = error else {
            panic!("expected Locked, got {error:?}");
        };
        assert_eq!(pid.map(i64::from), Some(i64::from(child.as_raw())));

        kill(child, Signal::SIGKILL).expect("kill the holder");
        waitpid(child, None).expect("reap the holder");
        guard.0 = None;
        let state = StateDir::lock(root.path()).expect("a dead holder does not block");
        let text = fs::read_to_string(state.path().join(LOCK_FILE)).expect("lock file");
        assert_eq!(text.trim(), std::process::id().to_string());
    }

    #[test]
    fn the_explicit_state_dir_wins() {
        let dir = resolve_state_dir(
            Some("/srv/mn".into()),
            Some("/xdg".into()),
            Some("/home/u".into()),
            no_fallback,
        );
        assert_eq!(dir, PathBuf::from("/srv/mn"));
    }

    #[test]
    fn xdg_state_home_is_used_when_absolute() {
        let dir = resolve_state_dir(
            None,
            Some("/xdg".into()),
            Some("/home/u".into()),
            no_fallback,
        );
        assert_eq!(dir, PathBuf::from("/xdg/mnemosyne"));
        let dir = resolve_state_dir(
            Some("".into()),
            Some("relative".into()),
            Some("/home/u".into()),
            no_fallback,
        );
        assert_eq!(dir, PathBuf::from("/home/u/.local/state/mnemosyne"));
    }

    #[test]
    fn without_home_the_fallback_is_used() {
        let dir = resolve_state_dir(None, None, None, || PathBuf::from("/tmp/x"));
        assert_eq!(dir, PathBuf::from("/tmp/x"));
    }
}
