//! The `mnemosyne supervise` binary end to end: plans on stdin, results on stdout, exit codes,
//! and surviving its own SIGKILL through the journal.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::common::*;

fn plan(id: &str, prompt_suffix: &str) -> String {
    json!({
        "id": id,
        "prompt": format!("Build a command line tool using Rust that must parse the following log format \
                           because operators need to search all access logs within one second {prompt_suffix}"),
        "tech_stack": "Rust",
        "success_criteria": ["searches a 1 GB log in under a second"],
    })
    .to_string()
}

fn supervise(config: Option<&Path>, state_dir: &Path) -> Command {
    supervise_command(config, state_dir, "info,mnemosyne::plan::service=debug")
}

fn results_of(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("result lines are JSON"))
        .collect()
}

#[test]
fn the_binary_runs_plans_end_to_end_and_exits_zero() {
    let state = tempfile::tempdir().expect("state dir");
    let mut child = supervise(None, state.path())
        .spawn()
        .expect("binary starts");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "{}", plan("one", "")).expect("write");
        writeln!(stdin, "{}", plan("two", "")).expect("write");
    }
    let output = output_within(child, LIMIT * 3);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "stderr: {stderr}");
    assert!(
        stderr.contains("offline provider"),
        "the offline provider announces itself: {stderr}"
    );
    let results = results_of(&output.stdout);
    assert_eq!(results.len(), 2);
    assert!(
        results
            .iter()
            .all(|r| r["status"] == "succeeded" && r["provider"] == "offline"),
        "{results:#?}"
    );
}

#[test]
fn a_bad_config_exits_2_naming_the_key_and_line() {
    let state = tempfile::tempdir().expect("state dir");
    let config = state.path().join("bad.toml");
    std::fs::write(
        &config,
        "[supervisor]\nheartbeat_interval = \"5 parsecs\"\n",
    )
    .expect("config");
    let output = run_within(
        supervise(Some(&config), state.path()).stdin(Stdio::null()),
        LIMIT * 3,
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.toml:2") && stderr.contains("heartbeat_interval"),
        "{stderr}"
    );
}

#[test]
fn a_supervisor_sigkilled_mid_batch_and_started_again_gives_every_plan_exactly_once() {
    let state = tempfile::tempdir().expect("state dir");
    let config = state.path().join("slow.toml");
    // In the first run executors stall on plans marked SLOW (one each; the fifth serves the
    // rest), so the kill lands while those are in flight and no result is being written.
    std::fs::write(
        &config,
        format!(
            "[agents.executor]\ncount = 5\nargs = [{:?}, \"--role\", \"executor\"]\n\
             env = {{ FIXTURE_STALL_MARKER = \"SLOW\" }}\n",
            fixture("stall_on_marker.py")
        ),
    )
    .expect("config");
    let ids: Vec<String> = (1..=8).map(|n| format!("batch-{n}")).collect();
    let mut first = supervise(Some(&config), state.path())
        .spawn()
        .expect("first run starts");
    let _watchdog = Watchdog::arm(&first, LIMIT * 3);
    let stderr_lines = watch_stderr(&mut first);
    {
        let mut stdin = first.stdin.take().expect("stdin");
        for (n, id) in ids.iter().enumerate() {
            writeln!(stdin, "{}", plan(id, if n % 2 == 0 { "" } else { "SLOW" })).expect("write");
        }
        // stdin stays open until the kill: the batch is "mid-way".
        std::mem::forget(stdin);
    }
    let mut stdout = BufReader::new(first.stdout.take().expect("stdout"));
    let mut first_results = Vec::new();
    for _ in 0..4 {
        let mut line = String::new();
        stdout.read_line(&mut line).expect("a result");
        first_results.push(serde_json::from_str::<Value>(&line).expect("JSON"));
    }
    // Wait until those four are marked emitted in the journal, then kill.
    wait_for_line(
        &stderr_lines,
        |line| line.contains("results marked emitted"),
        4,
    );
    first.kill().expect("SIGKILL the supervisor");
    first.wait().expect("reaped");

    let second = run_within(
        supervise(None, state.path()).stdin(Stdio::null()),
        LIMIT * 3,
    );
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let second_results = results_of(&second.stdout);

    let mut seen: HashMap<String, usize> = HashMap::new();
    for result in first_results.iter().chain(&second_results) {
        *seen
            .entry(result["id"].as_str().expect("id").to_owned())
            .or_default() += 1;
        assert_eq!(result["status"], "succeeded", "{result:#}");
    }
    for id in &ids {
        assert_eq!(
            seen.get(id),
            Some(&1),
            "plan {id} appears exactly once across both runs: {seen:?}"
        );
    }
    assert_eq!(second_results.len(), 4);
    assert!(
        second_results
            .iter()
            .all(|r| r["id"].as_str().is_some_and(|id| {
                let n: usize = id.trim_start_matches("batch-").parse().expect("number");
                n % 2 == 0
            }))
    );

    // Submitting the whole batch again runs nothing: every result is a flagged replay.
    let mut third = supervise(None, state.path()).spawn().expect("third run");
    {
        let mut stdin = third.stdin.take().expect("stdin");
        for id in &ids {
            writeln!(stdin, "{}", plan(id, "")).expect("write");
        }
    }
    let third = output_within(third, LIMIT * 3);
    let third_results = results_of(&third.stdout);
    assert_eq!(third_results.len(), ids.len());
    assert!(
        third_results.iter().all(|r| r["replayed"] == true),
        "{third_results:#?}"
    );
}

/// Waits until log lines matching `wanted` account for `count` (summing their `count=N`).
fn wait_for_line(
    lines: &std::sync::mpsc::Receiver<String>,
    wanted: impl Fn(&str) -> bool,
    count: usize,
) {
    let deadline = std::time::Instant::now() + LIMIT;
    let mut total = 0;
    while total < count {
        let remaining = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines
            .recv_timeout(remaining)
            .expect("the awaited log line arrives within the limit");
        if wanted(&line) {
            total += line
                .split("count=")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(1);
        }
    }
}

#[test]
fn sigterm_stops_reading_journals_unfinished_plans_and_the_next_run_finishes_them() {
    let state = tempfile::tempdir().expect("state dir");
    let config = state.path().join("slow.toml");
    std::fs::write(
        &config,
        format!(
            "[supervisor]\nstop_grace = \"500ms\"\n[agents.executor]\ncount = 3\nargs = [{:?}, \"--role\", \"executor\"]\n\
             env = {{ FIXTURE_STALL_MARKER = \"SLOW\" }}\n",
            fixture("stall_on_marker.py")
        ),
    )
    .expect("config");
    let mut first = supervise(Some(&config), state.path())
        .spawn()
        .expect("first run starts");
    let _watchdog = Watchdog::arm(&first, LIMIT * 3);
    let stderr_lines = watch_stderr(&mut first);
    let mut stdin = first.stdin.take().expect("stdin");
    for (id, suffix) in [("fast-1", ""), ("slow-1", "SLOW"), ("slow-2", "SLOW")] {
        writeln!(stdin, "{}", plan(id, suffix)).expect("write");
    }
    stdin.flush().expect("flush");
    let mut stdout = BufReader::new(first.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("the fast plan's result");
    assert!(line.contains("\"fast-1\""), "{line}");
    // Both slow plans are being executed (and so journalled) before the signal.
    wait_for_line(&stderr_lines, |line| line.contains("stalling on marker"), 2);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let status = wait_within(&mut first, LIMIT);
    assert_eq!(status.code(), Some(130), "an interrupted run exits 130");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).expect("rest of stdout");
    assert!(
        rest.trim().is_empty(),
        "unfinished plans print nothing: {rest}"
    );
    drop(stdin);

    let second = run_within(
        supervise(None, state.path()).stdin(Stdio::null()),
        LIMIT * 3,
    );
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let mut ids: Vec<String> = results_of(&second.stdout)
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["slow-1", "slow-2"]);
}

#[test]
fn keep_running_serves_after_stdin_ends_and_a_signal_then_exits_cleanly() {
    let state = tempfile::tempdir().expect("state dir");
    let mut child = supervise(None, state.path())
        .arg("--keep-running")
        .spawn()
        .expect("starts");
    let _watchdog = Watchdog::arm(&child, LIMIT * 3);
    let stderr_lines = watch_stderr(&mut child);
    {
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "{}", plan("kept", "")).expect("write");
    }
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("a result");
    assert!(line.contains("\"succeeded\""), "{line}");
    wait_for_line(
        &stderr_lines,
        |line| line.contains("keeping the supervisor running"),
        1,
    );
    assert!(
        child.try_wait().expect("status").is_none(),
        "still running after stdin ended"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let status = wait_within(&mut child, LIMIT);
    assert_eq!(
        status.code(),
        Some(0),
        "nothing was cut short, and every plan succeeded"
    );
}

#[test]
fn the_anthropic_provider_without_a_key_is_refused_before_any_worker_starts() {
    let state = tempfile::tempdir().expect("state dir");
    let output = run_within(
        supervise(None, state.path())
            .args(["--provider", "anthropic"])
            .env_remove("ANTHROPIC_API_KEY")
            .stdin(Stdio::null()),
        LIMIT * 3,
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("needs an API key") && stderr.contains("ANTHROPIC_API_KEY"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("worker said hello"),
        "no worker was started: {stderr}"
    );
}

#[test]
fn submit_into_a_keep_running_supervisor_gets_exactly_its_own_results() {
    let state = tempfile::tempdir().expect("state dir");
    let mut supervisor = supervise(None, state.path())
        .arg("--keep-running")
        .spawn()
        .expect("starts");
    let _watchdog = Watchdog::arm(&supervisor, LIMIT * 3);
    let mut stdin = supervisor.stdin.take().expect("stdin");
    writeln!(stdin, "{}", plan("own-1", "")).expect("write");
    stdin.flush().expect("flush");
    let mut stdout = BufReader::new(supervisor.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout
        .read_line(&mut line)
        .expect("the supervisor's own result");
    assert!(line.contains("\"own-1\""), "{line}");

    let mut submit = Command::new(env!("CARGO_BIN_EXE_mnemosyne"))
        .arg("submit")
        .env("MNEMOSYNE_STATE_DIR", state.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("submit starts");
    {
        let mut input = submit.stdin.take().expect("stdin");
        writeln!(input, "{}", plan("sub-1", "")).expect("write");
        writeln!(input, "{}", plan("sub-2", "")).expect("write");
        writeln!(input, "{{\"id\": \"broken\", ").expect("write");
    }
    let submitted = output_within(submit, LIMIT * 3);
    assert_eq!(
        submitted.status.code(),
        Some(1),
        "one line was rejected: {}",
        String::from_utf8_lossy(&submitted.stderr)
    );
    let results = results_of(&submitted.stdout);
    assert_eq!(results.len(), 3, "{results:#?}");
    let status_of = |id: &str| {
        results
            .iter()
            .find(|r| r["id"] == id)
            .map(|r| r["status"].clone())
    };
    assert_eq!(status_of("sub-1"), Some(json!("succeeded")));
    assert_eq!(status_of("sub-2"), Some(json!("succeeded")));
    let rejected: Vec<&Value> = results
        .iter()
        .filter(|r| r["status"] == "rejected")
        .collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["line"], 3);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(supervisor.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).expect("rest of stdout");
    assert!(
        !rest.contains("sub-"),
        "submitted results go to the submitter only: {rest}"
    );
    wait_within(&mut supervisor, LIMIT);
}
