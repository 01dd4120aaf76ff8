//! After start-up: plans waiting for a role with no usable agent end `failed` and retryable
//! after `[plans] agent_wait`, their ids run again when resubmitted, and a batch whose plan
//! waits for such a role still stops within a bound on a signal (at once on a second one).

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mnemosyne::cli::supervise::RunOutcome;
use mnemosyne::config::{Config, Role};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::common::*;
use crate::plans::pipeline_config;

const MARKER: &str = "BREAK-THE-REVIEWER";

fn plan(id: &str) -> Value {
    json!({
        "id": id,
        "prompt": format!("Build a command line tool using Rust that must parse the following log \
                           format because operators need to search all access logs within one \
                           second {MARKER}"),
        "tech_stack": ["Rust"],
        "success_criteria": "searches a 1 GB log in under a second",
        "deployment": "a static binary on Linux",
    })
}

/// Every role with one worker; the reviewer becomes unusable once it sees [`MARKER`].
fn breaking_reviewer(mode: &str, flag: &Path) -> Config {
    let mut config = pipeline_config();
    config.plans.agent_wait = Duration::from_secs(1);
    let reviewer = config.agents.get_mut(&Role::Reviewer).expect("reviewer");
    reviewer.args = Some(vec![
        fixture("fail_on_marker.py"),
        "--role".into(),
        "reviewer".into(),
    ]);
    reviewer
        .env
        .insert("FIXTURE_FAIL_MARKER".into(), MARKER.into());
    reviewer.env.insert("FIXTURE_FAIL_MODE".into(), mode.into());
    reviewer
        .env
        .insert("FIXTURE_FAIL_FLAG".into(), flag.display().to_string());
    config
}

fn errors_of(result: &Value) -> String {
    result["errors"].to_string()
}

#[tokio::test]
async fn a_plan_waiting_for_a_failed_role_fails_retryable_after_agent_wait_and_runs_again_when_resubmitted()
 {
    let state = tempfile::tempdir().expect("state dir");
    let flag = state.path().join("broken");
    let input = plan("needs-review").to_string() + "\n";
    let args = supervise_args(breaking_reviewer("fatal", &flag), state.path());
    let (outcome, results) = supervise_in_process(args, input.clone(), LIMIT * 3).await;
    assert_eq!(outcome, RunOutcome::SomeFailed);
    assert_eq!(results.len(), 1, "{results:#?}");
    let result = &results[0];
    assert_eq!(result["status"], "failed", "{result:#}");
    assert_eq!(result["retryable"], true, "{result:#}");
    let errors = errors_of(result);
    for part in [
        "no usable reviewer agent for",
        "reviewer-1 is failed",
        "fixture: the API key was rejected",
    ] {
        assert!(errors.contains(part), "{part:?} missing from {result:#}");
    }

    // The same id again, with a reviewer that works: it runs, it is no replay.
    let args = supervise_args(pipeline_config(), state.path());
    let (outcome, results) = supervise_in_process(args, input, LIMIT * 3).await;
    assert_eq!(outcome, RunOutcome::AllSucceeded, "{results:#?}");
    assert_eq!(results[0]["id"], "needs-review");
    assert_eq!(results[0]["status"], "succeeded", "{results:#?}");
    assert!(results[0].get("replayed").is_none(), "{results:#?}");
    assert!(results[0].get("retryable").is_none(), "{results:#?}");
}

#[tokio::test]
async fn a_plan_waiting_for_a_role_in_cooldown_fails_naming_the_crash_loop() {
    let state = tempfile::tempdir().expect("state dir");
    let flag = state.path().join("broken");
    let mut config = breaking_reviewer("crash", &flag);
    config.supervisor.max_restarts_in_window = 2;
    let args = supervise_args(config, state.path());
    let input = plan("loops").to_string() + "\n";
    let (outcome, results) = supervise_in_process(args, input, LIMIT * 3).await;
    assert_eq!(outcome, RunOutcome::SomeFailed);
    let result = &results[0];
    assert_eq!(result["status"], "failed", "{result:#}");
    assert_eq!(result["retryable"], true, "{result:#}");
    let errors = errors_of(result);
    assert!(
        errors.contains("no usable reviewer agent")
            && errors.contains("reviewer-1 is cooldown: crash loop"),
        "{result:#}"
    );
}

fn supervise(config: Option<&Path>, state_dir: &Path) -> Command {
    supervise_command(config, state_dir, "info")
}

/// A config file whose reviewer fails (fatal) on the marker; plans wait for it an hour.
fn stuck_batch_config(dir: &Path, stop_grace: &str) -> std::path::PathBuf {
    let path = dir.join("stuck.toml");
    std::fs::write(
        &path,
        format!(
            "[supervisor]\nstop_grace = \"{stop_grace}\"\nterm_grace = \"1s\"\n\
             [plans]\nagent_wait = \"1h\"\n\
             [agents.reviewer]\nargs = [{:?}, \"--role\", \"reviewer\"]\n\
             env = {{ FIXTURE_FAIL_MARKER = \"{MARKER}\" }}\n",
            fixture("fail_on_marker.py")
        ),
    )
    .expect("config");
    path
}

/// Starts `supervise < plans` (stdin written, then closed) and returns once the reviewer has
/// died on the plan's marker, so the plan waits for a role with no usable agent.
fn start_stuck_batch(config: &Path, state: &Path) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child = supervise(Some(config), state).spawn().expect("starts");
    let lines = watch_stderr(&mut child);
    {
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "{}", plan("stuck")).expect("write");
    }
    wait_for(&lines, |line| {
        line.contains("reviewer-1") && line.contains("worker died")
    });
    (child, lines)
}

fn wait_for(lines: &std::sync::mpsc::Receiver<String>, wanted: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(remaining)
            .expect("the awaited log line arrives within the limit");
        if wanted(&line) {
            return;
        }
    }
}

/// Waits for the child's exit in a thread, at most `limit`; SIGKILLs it if it overstays.
fn exit_within(child: Child, limit: Duration) -> (std::process::Output, Duration) {
    let started = Instant::now();
    let pid = child.id();
    let (sender, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait_with_output());
    });
    match finished.recv_timeout(limit) {
        Ok(output) => (output.expect("output"), started.elapsed()),
        Err(_) => {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            panic!("supervise did not exit within {limit:?} of the signal");
        }
    }
}

fn sigterm(child: &Child) {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
}

/// The next run on the same state directory, with working agents, finishes the plan.
fn next_run_finishes_the_plan(state: &Path) {
    let second = supervise(None, state)
        .stdin(Stdio::null())
        .output()
        .expect("second run");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{stderr}");
    let results: Vec<Value> = String::from_utf8_lossy(&second.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON"))
        .collect();
    assert_eq!(results.len(), 1, "{results:#?}");
    assert_eq!(results[0]["id"], "stuck");
    assert_eq!(results[0]["status"], "succeeded", "{results:#?}");
}

#[test]
fn sigterm_stops_a_batch_whose_stdin_ended_while_a_plan_waits_for_a_failed_role() {
    let dir = tempfile::tempdir().expect("dir");
    let state = dir.path().join("state");
    let config = stuck_batch_config(dir.path(), "1s");
    let (child, _lines) = start_stuck_batch(&config, &state);
    sigterm(&child);
    // stop_grace (1 s) for the plans, then the workers' stop sequence: idle workers exit on
    // the shutdown message. The bound is stop_grace twice, term_grace and the slack (7 s).
    let (output, took) = exit_within(child, Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(
        took < Duration::from_secs(10),
        "took {took:?} to stop:\n{stderr}"
    );
    assert!(output.stdout.is_empty(), "the waiting plan has no result");
    next_run_finishes_the_plan(&state);
}

#[test]
fn a_second_signal_exits_at_once_with_the_journal_intact() {
    let dir = tempfile::tempdir().expect("dir");
    let state = dir.path().join("state");
    // A grace far longer than the test's bound: only the second signal can end it in time.
    let config = stuck_batch_config(dir.path(), "60s");
    let (child, lines) = start_stuck_batch(&config, &state);
    sigterm(&child);
    wait_for(&lines, |line| line.contains("signal received"));
    sigterm(&child);
    let (output, took) = exit_within(child, LIMIT);
    assert_eq!(output.status.code(), Some(130));
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} after the second signal"
    );
    next_run_finishes_the_plan(&state);
}

#[tokio::test]
async fn a_rejected_api_key_fails_the_plan_retryable() {
    let api = crate::fake_api::FakeApi::start("sk-ant-the-key-the-api-accepts");
    let mut config = pipeline_config();
    // Importing the SDK takes seconds on a loaded machine: realistic timings, as in the
    // anthropic tests.
    config.supervisor.start_timeout = Duration::from_secs(60);
    config.supervisor.heartbeat_interval = Duration::from_secs(1);
    config.supervisor.heartbeat_misses = 5;
    let state = tempfile::tempdir().expect("state dir");
    let mut args = supervise_args(config, state.path());
    args.provider = Some(mnemosyne::config::ProviderChoice::Anthropic);
    args.anthropic = mnemosyne::cli::supervise::AnthropicAccess {
        api_key: Some(secrecy::SecretString::from("sk-ant-a-key-the-api-rejects")),
        base_url: Some(api.url.clone()),
    };
    let mut input = plan("rejected-key");
    input["prompt"] = json!(
        "Build a command line tool using Rust that must parse the following log format \
         because operators need to search all access logs within one second"
    );
    let (outcome, results) = supervise_in_process(args, input.to_string() + "\n", LIMIT * 6).await;
    assert_eq!(outcome, RunOutcome::SomeFailed);
    let result = &results[0];
    assert_eq!(result["status"], "failed", "{result:#}");
    assert_eq!(result["retryable"], true, "{result:#}");
    assert!(errors_of(result).contains("config"), "{result:#}");
}

#[tokio::test]
async fn plans_wait_for_a_role_an_operator_stopped_however_long_it_stays_stopped() {
    let state = tempfile::tempdir().expect("state dir");
    let mut config = pipeline_config();
    config.plans.agent_wait = Duration::from_millis(300);
    let pipeline = crate::plans::Pipeline::start_with(&config, state.path(), options());
    let reviewer = pipeline.supervisor.agent("reviewer-1").expect("reviewer-1");
    wait_state(&reviewer, "ready", |s| s.state.to_string() == "ready").await;
    tokio::time::timeout(LIMIT, reviewer.stop())
        .await
        .expect("stops within the limit")
        .expect("stopped");
    let mut waiting = plan("held");
    waiting["prompt"] = json!(
        "Build a command line tool using Rust that must parse the following log format \
         because operators need to search all access logs within one second"
    );
    pipeline.send(&waiting);
    // The period under test: many times agent_wait with the reviewer held. A plan that gave up
    // on the role would have its (failed) result by now and not run again below.
    tokio::time::sleep(config.plans.agent_wait * 5).await;
    tokio::time::timeout(LIMIT, reviewer.start())
        .await
        .expect("starts within the limit")
        .expect("started");
    let (outcome, results) = pipeline.finish().await;
    assert!(outcome.all_succeeded, "{results:#?}");
    assert_eq!(results.len(), 1, "{results:#?}");
    assert_eq!(results[0]["status"], "succeeded", "{results:#?}");
}
