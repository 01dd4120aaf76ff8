//! The start-up gate: `supervise` takes no plan until every role has had a worker ready, and a
//! role that cannot start ends the run with exit 2 before stdin is read, naming the role, the
//! cause, the worker's last stderr lines and the fix.

use std::path::Path;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use mnemosyne::cli::supervise::{RunOutcome, UsageError, run};
use mnemosyne::config::{Config, Role};
use tokio::io::{AsyncRead, ReadBuf};

use crate::common::*;

/// An input that records whether anything tried to read it, and never yields a byte: a run
/// that got past the gate would wait on it (and the test would fail on its bound).
struct Untouched(Arc<AtomicBool>);

impl AsyncRead for Untouched {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.0.store(true, Ordering::SeqCst);
        Poll::Pending
    }
}

/// Runs `supervise` in-process on an input nobody may read, and returns the exit-2 message.
async fn refused(config: Config) -> String {
    let state = tempfile::tempdir().expect("state dir");
    let read = Arc::new(AtomicBool::new(false));
    let args = supervise_args(config, state.path());
    let outcome =
        tokio::time::timeout(LIMIT, run(args, Untouched(read.clone()), tokio::io::sink()))
            .await
            .expect("supervise ends within the limit instead of waiting for plans");
    let error = match outcome {
        Ok(outcome) => panic!("expected a start-up failure, got {outcome:?}"),
        Err(error) => error,
    };
    assert!(
        error.downcast_ref::<UsageError>().is_some(),
        "a role that cannot start is a usage error (exit 2): {error:#}"
    );
    assert!(!read.load(Ordering::SeqCst), "stdin was read: {error:#}");
    format!("{error:#}")
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "{part:?} missing from:\n{message}");
    }
}

#[tokio::test]
async fn a_worker_reporting_a_fatal_configuration_problem_stops_supervise_before_any_plan() {
    let message = refused(fixture_config("fatal_config.py", &[])).await;
    assert_mentions(
        &message,
        &[
            "the executor role cannot start: executor-1 is failed",
            "fixture: required setting missing",
            "fix: ",
            "last stderr of executor-1:",
            "| fatal (config): fixture: required setting missing",
        ],
    );
}

#[tokio::test]
async fn a_missing_interpreter_is_named_with_the_fix() {
    let mut config = fast_config();
    let executor = config.agents.get_mut(&Role::Executor).expect("executor");
    executor.python = Some("/nonexistent/bin/python3".into());
    let message = refused(config).await;
    assert_mentions(
        &message,
        &[
            "the executor role cannot start",
            "python interpreter not found: /nonexistent/bin/python3",
            "fix: /nonexistent/bin/python3 does not exist",
            "[agents.executor] python",
            "executor-1 wrote nothing on stderr",
        ],
    );
}

#[tokio::test]
async fn a_worker_speaking_another_protocol_version_stops_supervise() {
    let message = refused(fixture_config("wrong_protocol.py", &[])).await;
    assert_mentions(
        &message,
        &[
            "the executor role cannot start",
            "protocol version mismatch: supervisor speaks 1, worker speaks 999",
            "fix: the worker runs other code than this supervisor's embedded package",
            // The fixture writes nothing on stderr; the report says so rather than omit it.
            "executor-1 wrote nothing on stderr",
        ],
    );
}

#[tokio::test]
async fn a_worker_that_crashes_at_every_start_stops_supervise_once_the_breaker_trips() {
    let mut config = fixture_config("exit_at_start.py", &["--code", "1"]);
    config.supervisor.max_restarts_in_window = 2;
    let message = refused(config).await;
    assert_mentions(
        &message,
        &[
            "the executor role cannot start: executor-1 is cooldown: crash loop: 3 failures",
            "fix: the worker crashes before it is ready",
            "| exiting at start with 1",
        ],
    );
}

#[tokio::test]
async fn a_worker_that_never_gets_ready_in_time_stops_supervise_naming_the_start_timeout() {
    let mut config = fixture_config("slow_start.py", &["--delay", "30"]);
    config.supervisor.start_timeout = Duration::from_millis(300);
    config.supervisor.max_restarts_in_window = 1;
    let message = refused(config).await;
    assert_mentions(
        &message,
        &[
            "the executor role cannot start: executor-1 is cooldown",
            "start timeout",
            "[supervisor] start_timeout",
        ],
    );
}

#[tokio::test]
async fn an_interpreter_older_than_3_11_is_a_configuration_problem_naming_both_versions() {
    let real_python = std::env::var("MNEMOSYNE_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut config = fast_config();
    let executor = config.agents.get_mut(&Role::Executor).expect("executor");
    // The fixture is the real interpreter made to report version 3.9.18 (see its comment).
    executor.python = Some(fixture("python_3_9.sh").into());
    executor
        .env
        .insert("FIXTURE_REAL_PYTHON".into(), real_python);
    let message = refused(config).await;
    assert_mentions(
        &message,
        &[
            "the executor role cannot start: executor-1 is failed",
            "Python 3.9.18 is too old: the Mnemosyne worker needs Python 3.11 or newer",
            "python_3_9.sh is too old: set [agents.executor] python",
            "| fatal (config): Python 3.9.18 is too old",
        ],
    );
}

#[tokio::test]
async fn a_signal_while_waiting_for_the_first_workers_stops_supervise_as_interrupted() {
    let state = tempfile::tempdir().expect("state dir");
    let read = Arc::new(AtomicBool::new(false));
    let args = supervise_args(
        fixture_config("slow_start.py", &["--delay", "30"]),
        state.path(),
    );
    let interrupt = args.interrupt.clone();
    let supervisor = tokio::spawn(run(args, Untouched(read.clone()), tokio::io::sink()));
    // The worker spends 30 s before its hello: the gate is closed for the whole test.
    interrupt.cancel();
    let outcome = tokio::time::timeout(LIMIT, supervisor)
        .await
        .expect("stops within the limit")
        .expect("joins")
        .expect("an interrupt is no error");
    assert_eq!(outcome, RunOutcome::Interrupted);
    assert!(!read.load(Ordering::SeqCst), "stdin was not read");
}

/// The older design's most common support question, end to end: an API key in the
/// environment, and an interpreter (a fresh venv) without the `anthropic` package.
#[test]
fn a_key_and_an_interpreter_without_the_anthropic_sdk_exit_2_with_one_clear_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let venv = dir.path().join("venv");
    let real_python = std::env::var("MNEMOSYNE_PYTHON").unwrap_or_else(|_| "python3".into());
    // No pip, no packages: the worker package is embedded and needs nothing else.
    let created = Command::new(&real_python)
        .args(["-m", "venv", "--without-pip"])
        .arg(&venv)
        .output()
        .expect("python runs");
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let python = venv.join("bin/python");
    let state = dir.path().join("state");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mnemosyne"))
        .arg("supervise")
        .arg("--state-dir")
        .arg(&state)
        .current_dir(env!("CARGO_TARGET_TMPDIR"))
        .env(
            "MNEMOSYNE_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("cache"),
        )
        .env("MNEMOSYNE_PYTHON", &python)
        .env("ANTHROPIC_API_KEY", "sk-ant-fixture-key")
        // Nothing listens there; no worker gets far enough to call it.
        .env("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    // stdin stays open and empty: the supervisor must decide without it.
    let stdin = child.stdin.take().expect("stdin");
    let pid = child.id();
    let (sender, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait_with_output());
    });
    let output = match finished.recv_timeout(LIMIT) {
        Ok(output) => output.expect("output"),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("supervise still runs after {LIMIT:?}: the hang is back");
        }
    };
    drop(stdin);
    let status = output.status;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(output.stdout.is_empty(), "no result without a plan");
    let headline = stderr
        .lines()
        .find(|line| line.starts_with("mnemosyne: "))
        .unwrap_or_else(|| panic!("no error line in:\n{stderr}"));
    assert_mentions(
        headline,
        &[
            "the executor, orchestrator, optimizer, reviewer roles cannot start",
            "anthropic package not installed",
        ],
    );
    assert_mentions(
        &stderr,
        &[
            &format!(
                "fix: install the Anthropic SDK into the workers' interpreter: {}",
                python.display()
            ),
            "-m pip install 'anthropic>=0.75,<3'",
            "--provider offline",
            "| fatal (config): anthropic package not installed",
        ],
    );
    assert!(!stderr.contains("sk-ant-fixture-key"), "the key leaked");
}
