//! Shared helpers: fast test configs, starting a supervisor, waiting for events and pids.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mnemosyne::agent::{AgentHandle, AgentStatus, JobOutcome, JobRequest};
use mnemosyne::config::{AgentConfig, Config, Role};
use mnemosyne::supervisor::{Event, EventKind, Supervisor, SupervisorOptions};
use serde_json::Value;
use tokio::sync::broadcast;

/// Upper bound for anything a test waits for; never the thing being tested.
pub const LIMIT: Duration = Duration::from_secs(20);

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> String {
    repo_root()
        .join("tests/fixtures/workers")
        .join(name)
        .display()
        .to_string()
}

/// A config with one executor and fast timings, so failures are detected in milliseconds.
pub fn fast_config() -> Config {
    let mut config = Config::default();
    let s = &mut config.supervisor;
    s.heartbeat_interval = Duration::from_millis(100);
    s.heartbeat_misses = 3;
    s.start_timeout = Duration::from_secs(10);
    s.request_timeout = Duration::from_secs(30);
    s.cancel_grace = Duration::from_millis(500);
    s.stop_grace = Duration::from_secs(2);
    s.term_grace = Duration::from_secs(1);
    s.backoff_base = Duration::from_millis(20);
    s.backoff_max = Duration::from_millis(200);
    s.cooldown_retry = Duration::from_secs(3600);
    for role in Role::ALL {
        config.agents.insert(
            role,
            AgentConfig {
                count: 0,
                ..AgentConfig::default()
            },
        );
    }
    config.agents.insert(Role::Executor, AgentConfig::default());
    config
}

/// The same, with the executor running a fixture worker script.
pub fn fixture_config(script: &str, extra_args: &[&str]) -> Config {
    let mut config = fast_config();
    let executor = config
        .agents
        .get_mut(&Role::Executor)
        .expect("executor configured");
    let mut args = vec![fixture(script), "--role".into(), "executor".into()];
    args.extend(extra_args.iter().map(|arg| arg.to_string()));
    executor.args = Some(args);
    config
}

pub fn options() -> SupervisorOptions {
    let mut options = SupervisorOptions::new(Path::new(env!("CARGO_TARGET_TMPDIR")).join("cache"));
    options.warden_program = Some(PathBuf::from(env!("CARGO_BIN_EXE_mnemosyne")));
    options
}

pub struct Running {
    pub supervisor: Supervisor,
    pub events: broadcast::Receiver<Arc<Event>>,
    backlog: std::collections::VecDeque<Arc<Event>>,
}

impl Running {
    pub fn start(config: &Config) -> Self {
        let supervisor = Supervisor::start(config, options()).expect("supervisor starts");
        let (history, events) = supervisor.events().history_and_subscribe();
        Self {
            supervisor,
            events,
            backlog: history.into(),
        }
    }

    pub fn executor(&self) -> AgentHandle {
        self.supervisor
            .agent("executor-1")
            .expect("executor-1 exists")
    }

    pub async fn ready(&self) -> AgentStatus {
        wait_state(&self.executor(), "ready", |s| {
            s.state.to_string() == "ready"
        })
        .await
    }

    pub async fn call(&self, method: &str, params: Value) -> JobOutcome {
        self.call_with_deadline(method, params, Duration::from_secs(30))
            .await
    }

    pub async fn call_with_deadline(
        &self,
        method: &str,
        params: Value,
        deadline: Duration,
    ) -> JobOutcome {
        let request = JobRequest {
            id: self.supervisor.next_job_id(),
            method: method.into(),
            params,
            deadline,
        };
        let outcome = self.supervisor.submit(Role::Executor, request);
        tokio::time::timeout(LIMIT, outcome)
            .await
            .expect("the job ends within the limit")
            .expect("the supervisor answers every job")
    }

    /// The next event (from history first, then live) matching `wanted`.
    pub async fn event(
        &mut self,
        description: &str,
        mut wanted: impl FnMut(&Event) -> bool,
    ) -> Arc<Event> {
        while let Some(event) = self.backlog.pop_front() {
            if wanted(&event) {
                return event;
            }
        }
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Ok(event)) if wanted(&event) => return event,
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    panic!("event stream broke while waiting for {description}: {error}")
                }
                Err(_) => panic!("no {description} event within {LIMIT:?}"),
            }
        }
    }

    pub async fn crash_report(&mut self) -> mnemosyne::agent::CrashReport {
        let event = self
            .event("worker_exited", |e| {
                matches!(e.kind, EventKind::WorkerExited(_))
            })
            .await;
        match &event.kind {
            EventKind::WorkerExited(report) => (**report).clone(),
            _ => unreachable!(),
        }
    }

    pub async fn stop(self) {
        tokio::time::timeout(LIMIT, self.supervisor.shutdown())
            .await
            .expect("shutdown finishes within the limit");
    }
}

pub async fn wait_state(
    agent: impl std::borrow::Borrow<AgentHandle>,
    description: &str,
    wanted: impl FnMut(&AgentStatus) -> bool,
) -> AgentStatus {
    agent
        .borrow()
        .wait_until(description, LIMIT, wanted)
        .await
        .expect("agent reaches the wanted state")
}

/// Whether `pid` is a live process (a zombie left for a non-reaping init counts as dead).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next());
            state != Some("Z") && state != Some("X")
        }
        Err(_) => false,
    }
}

pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Waits (bounded by `limit`) until `pid` is gone. There is no event for the death of a process
/// that is not our child, so this checks /proc; the limit is an upper bound only.
pub async fn gone_within(pid: u32, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    !alive(pid)
}

/// Arguments for an in-process `supervise` with the test options and no provider override.
pub fn supervise_args(
    config: Config,
    state_dir: &Path,
) -> mnemosyne::cli::supervise::SuperviseArgs {
    mnemosyne::cli::supervise::SuperviseArgs {
        config,
        provider: None,
        anthropic: Default::default(),
        options: options(),
        state_dir: state_dir.to_owned(),
        keep_running: false,
        config_source: None,
        reload_on_hangup: false,
        interrupt: tokio_util::sync::CancellationToken::new(),
        kill_now: tokio_util::sync::CancellationToken::new(),
    }
}

/// Runs `supervise` in-process on `input`, at most `limit`, and returns its outcome and
/// result lines.
pub async fn supervise_in_process(
    args: mnemosyne::cli::supervise::SuperviseArgs,
    input: impl Into<Vec<u8>>,
    limit: Duration,
) -> (mnemosyne::cli::supervise::RunOutcome, Vec<Value>) {
    let (output, mut read_back) = tokio::io::duplex(1 << 20);
    let reader = tokio::spawn(async move {
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut read_back, &mut text)
            .await
            .expect("output is UTF-8");
        text
    });
    let run = mnemosyne::cli::supervise::run(args, std::io::Cursor::new(input.into()), output);
    let outcome = tokio::time::timeout(limit, run)
        .await
        .expect("supervise finishes within the limit")
        .expect("supervise runs");
    let text = reader.await.expect("reader finishes");
    let results = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("each result is JSON"))
        .collect();
    (outcome, results)
}

/// Kills a child process still running after a limit, so that a test blocked on its pipes
/// (`read_line`, `read_to_string`) or on its exit gets an EOF or an exit instead of hanging.
/// Dropping it disarms it.
pub struct Watchdog {
    _disarm: std::sync::mpsc::Sender<()>,
    fired: Arc<std::sync::atomic::AtomicBool>,
}

impl Watchdog {
    pub fn arm(child: &std::process::Child, limit: Duration) -> Self {
        let pid = child.id();
        let (disarm, armed) = std::sync::mpsc::channel::<()>();
        let fired = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&fired);
        std::thread::spawn(move || {
            let timed_out = matches!(
                armed.recv_timeout(limit),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout)
            );
            // Only while it is still our child: a reaped pid may belong to someone else.
            if timed_out && parent_of(pid) == Some(std::process::id()) {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                eprintln!("watchdog: pid {pid} still running after {limit:?}; killing it");
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        });
        Self {
            _disarm: disarm,
            fired,
        }
    }

    pub fn fired(&self) -> bool {
        self.fired.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// `child.wait()`, at most `limit`: past it the child is killed and the test fails.
pub fn wait_within(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let watchdog = Watchdog::arm(child, limit);
    let status = child.wait().expect("the child is waited for");
    assert!(
        !watchdog.fired(),
        "pid {} did not exit within {limit:?}",
        child.id()
    );
    status
}

/// `child.wait_with_output()`, at most `limit`.
pub fn output_within(child: std::process::Child, limit: Duration) -> std::process::Output {
    let pid = child.id();
    let watchdog = Watchdog::arm(&child, limit);
    let output = child.wait_with_output().expect("the child is waited for");
    assert!(!watchdog.fired(), "pid {pid} did not exit within {limit:?}");
    output
}

/// `command.output()`, at most `limit`. Unlike `output()` it leaves stdin as the command
/// sets it (inherited if unset), so callers set it.
pub fn run_within(command: &mut std::process::Command, limit: Duration) -> std::process::Output {
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("{command:?} starts: {error}"));
    output_within(child, limit)
}

/// Runs a client command (`agents`, `events`, ...) with no stdin to completion, bounded by
/// [`LIMIT`].
pub fn run_client(command: &mut std::process::Command) -> std::process::Output {
    run_within(command.stdin(std::process::Stdio::null()), LIMIT)
}

/// `mnemosyne supervise` on `state_dir` (with `config`, if given), its pipes captured and its
/// log at `rust_log`, run from the test target's scratch directory.
pub fn supervise_command(
    config: Option<&Path>,
    state_dir: &Path,
    rust_log: &str,
) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_mnemosyne"));
    command.arg("supervise").arg("--state-dir").arg(state_dir);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    command
        .current_dir(env!("CARGO_TARGET_TMPDIR"))
        .env(
            "MNEMOSYNE_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("cache"),
        )
        .env("RUST_LOG", rust_log)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    command
}

/// Forwards the child's stderr lines to a channel, so a test can wait for a log event.
pub fn watch_stderr(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let stderr = child.stderr.take().expect("stderr is piped");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}
