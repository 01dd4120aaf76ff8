//! The orphan warden: a tiny helper process that outlives a supervisor killed with SIGKILL just
//! long enough to kill every worker process group, grandchildren included.
//!
//! A parent-death signal kills a worker but not the processes the worker started, and nothing
//! runs in the supervisor after SIGKILL. So the supervisor starts `mnemosyne __warden` on a
//! pipe and tells it each process group it creates and reaps. When the pipe reaches EOF, which
//! happens however the supervisor ends, the warden SIGKILLs the groups it still knows and exits.

use std::collections::BTreeSet;
use std::io::{self, BufRead, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;

use nix::sys::signal::{SigHandler, Signal, signal};

use super::group::ProcessGroup;

/// The hidden subcommand that runs [`run_warden`].
pub const WARDEN_SUBCOMMAND: &str = "__warden";

pub struct Warden {
    pipe: Mutex<Option<ChildStdin>>,
    child: Mutex<Option<Child>>,
}

impl Warden {
    /// Starts `program __warden`. `program` is normally the running binary itself.
    pub fn start(program: &Path) -> io::Result<Self> {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(program)
            .arg(WARDEN_SUBCOMMAND)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            // Its own group, so killing the supervisor's group (a terminal's Ctrl-C, a test
            // harness) does not take the warden down before it has cleaned up.
            .process_group(0)
            .spawn()?;
        let pipe = child.stdin.take();
        Ok(Self {
            pipe: Mutex::new(pipe),
            child: Mutex::new(Some(child)),
        })
    }

    pub fn watch(&self, group: ProcessGroup) {
        self.send(&format!("+{}\n", group.0));
    }

    pub fn release(&self, group: ProcessGroup) {
        self.send(&format!("-{}\n", group.0));
    }

    fn send(&self, line: &str) {
        let mut pipe = self
            .pipe
            .lock()
            .expect("warden pipe lock is never poisoned");
        if let Some(stdin) = pipe.as_mut()
            && let Err(error) = stdin.write_all(line.as_bytes())
        {
            tracing::warn!(%error, "the orphan warden is gone; workers may outlive a crash");
            *pipe = None;
        }
    }

    /// Closes the pipe (the warden kills what is left and exits) and reaps the warden.
    pub fn finish(&self) {
        self.pipe
            .lock()
            .expect("warden pipe lock is never poisoned")
            .take();
        if let Some(mut child) = self
            .child
            .lock()
            .expect("warden lock is never poisoned")
            .take()
        {
            let _ = child.wait();
        }
    }
}

impl Drop for Warden {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The warden's main loop. Reads `+pgid` / `-pgid` lines until EOF, then kills what is left.
pub fn run_warden(input: impl BufRead) -> io::Result<()> {
    // Terminal signals meant for the supervisor must not stop the warden; only EOF does.
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGPIPE,
    ] {
        // SAFETY: installing SIG_IGN has no handler code that could be unsafe.
        unsafe { signal(sig, SigHandler::SigIgn) }.map_err(io::Error::from)?;
    }
    let mut groups = BTreeSet::new();
    for line in input.lines() {
        let line = match line {
            Ok(line) => line,
            Err(_) => break,
        };
        match (
            line.get(..1),
            line.get(1..).and_then(|n| n.parse::<i32>().ok()),
        ) {
            (Some("+"), Some(pgid)) if pgid > 1 => {
                groups.insert(pgid);
            }
            (Some("-"), Some(pgid)) => {
                groups.remove(&pgid);
            }
            _ => {}
        }
    }
    for pgid in groups {
        ProcessGroup(pgid).kill();
    }
    Ok(())
}
