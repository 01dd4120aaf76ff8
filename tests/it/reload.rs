//! `mnemosyne reload` and SIGHUP against the real binary and real workers: a changed count and
//! environment are applied while plans run, with no plan lost; a file that does not parse is
//! refused and the running configuration stays; keys read only at start are reported.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

const MARK: &str = "MNEMOSYNE_TEST_RELOAD_MARK";

fn config_text(executors: u32, mark: &str, extra: &str) -> String {
    format!(
        "[supervisor]\nheartbeat_interval = \"200ms\"\nbackoff_base = \"20ms\"\n\
         stop_grace = \"2s\"\nterm_grace = \"1s\"\n\n\
         [agents.executor]\ncount = {executors}\nenv = {{ {MARK} = \"{mark}\" }}\n\n{extra}"
    )
}

struct Supervised {
    child: Child,
    state: tempfile::TempDir,
    config: PathBuf,
    stderr: Receiver<String>,
}

impl Supervised {
    fn start(text: &str) -> Self {
        let state = tempfile::tempdir().expect("state dir");
        let config = state.path().join("mnemosyne.toml");
        std::fs::write(&config, text).expect("config written");
        let mut child = supervise_command(Some(&config), &state.path().join("state"), "info")
            .arg("--keep-running")
            .arg("--provider")
            .arg("offline")
            .spawn()
            .expect("supervise starts");
        let stderr = watch_stderr(&mut child);
        let supervised = Self {
            child,
            state,
            config,
            stderr,
        };
        supervised.wait_log("taking plans");
        supervised
    }

    fn state_dir(&self) -> PathBuf {
        self.state.path().join("state")
    }

    fn rewrite(&self, text: &str) {
        std::fs::write(&self.config, text).expect("config rewritten");
    }

    fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line containing {needle:?} within {LIMIT:?}"),
            }
        }
    }

    fn client(&self, args: &[&str]) -> std::process::Output {
        run_client(
            Command::new(env!("CARGO_BIN_EXE_mnemosyne"))
                .args(args)
                .arg("--state-dir")
                .arg(self.state_dir()),
        )
    }

    fn agents(&self) -> Vec<Value> {
        let output = self.client(&["agents", "--json"]);
        assert!(output.status.success(), "agents --json: {output:?}");
        let answer: Value = serde_json::from_slice(&output.stdout).expect("agents JSON");
        answer["agents"].as_array().expect("agents array").clone()
    }

    fn reload(&self) -> (std::process::ExitStatus, Value, String) {
        let output = run_within(
            Command::new(env!("CARGO_BIN_EXE_mnemosyne"))
                .args(["reload", "--json", "--state-dir"])
                .arg(self.state_dir())
                .stdin(Stdio::null()),
            Duration::from_secs(60),
        );
        let report = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status, report, stderr)
    }

    fn stop(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM sent");
        wait_within(&mut self.child, LIMIT);
    }
}

fn executor_pids(agents: &[Value]) -> Vec<(String, u32)> {
    agents
        .iter()
        .filter(|agent| agent["role"] == "executor")
        .filter_map(|agent| {
            let pid = agent["pid"].as_u64()?;
            Some((agent["id"].as_str()?.to_owned(), pid as u32))
        })
        .collect()
}

fn environment_of(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    String::from_utf8_lossy(&raw).replace('\0', "\n")
}

fn plans(count: usize) -> String {
    (0..count)
        .map(|n| {
            serde_json::json!({
                "id": format!("reload-{n}"),
                "prompt": format!("Build a command line tool using Rust that must parse the \
                                   following log format because operators need to search all \
                                   access logs within one second, variant {n}"),
                "tech_stack": ["Rust"],
                "success_criteria": "searches a 1 GB log in under a second",
            })
            .to_string()
                + "\n"
        })
        .collect()
}

fn submit_in_background(state_dir: &Path, input: String) -> Child {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_mnemosyne"))
        .args(["submit", "--state-dir"])
        .arg(state_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("submit starts");
    let mut stdin = child.stdin.take().expect("stdin piped");
    stdin.write_all(input.as_bytes()).expect("plans written");
    drop(stdin);
    child
}

#[test]
fn reload_grows_a_role_and_replaces_workers_with_the_new_environment_losing_no_plan() {
    let supervised = Supervised::start(&config_text(1, "before", ""));
    let before = executor_pids(&supervised.agents());
    assert_eq!(before.len(), 1, "one executor before: {before:?}");
    assert!(environment_of(before[0].1).contains(&format!("{MARK}=before")));

    let plan_count = 40;
    let mut submitter = submit_in_background(&supervised.state_dir(), plans(plan_count));
    // The reload happens mid-batch: one plan has finished, most have not.
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stdout = submitter.stdout.take().expect("stdout piped");
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut results: Vec<Value> = Vec::new();
    let first = lines.recv_timeout(LIMIT).expect("a first result");
    results.push(serde_json::from_str(&first).expect("result line"));
    supervised.rewrite(&config_text(2, "after", ""));
    let (status, report, stderr) = supervised.reload();
    assert!(status.success(), "reload succeeds: {stderr}");
    assert_eq!(report["added"], serde_json::json!(["executor-2"]));
    assert_eq!(report["restarted"], serde_json::json!(["executor-1"]));
    let changed = report["changed"].as_array().expect("changed keys");
    for key in [
        "agents.executor.count",
        &format!("agents.executor.env.{MARK}"),
    ] {
        assert!(changed.iter().any(|k| k == key), "{key} in {changed:?}");
    }
    assert!(report["needs_restart"].as_array().expect("list").is_empty());

    let after = executor_pids(&supervised.agents());
    let ids: Vec<&str> = after.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["executor-1", "executor-2"]);
    for (id, pid) in &after {
        assert_ne!(*pid, before[0].1, "{id} runs a new worker");
        assert!(
            environment_of(*pid).contains(&format!("{MARK}=after")),
            "{id} has the new environment"
        );
    }

    let status = wait_within(&mut submitter, LIMIT * 3);
    results.extend(
        lines
            .iter()
            .map(|line| serde_json::from_str::<Value>(&line).expect("result line")),
    );
    assert_eq!(results.len(), plan_count, "every plan has a result");
    for result in &results {
        assert_eq!(result["status"], "succeeded", "{result}");
    }
    assert!(status.success());
    supervised.stop();
}

#[test]
fn a_config_that_does_not_parse_is_refused_and_the_running_one_stays() {
    let supervised = Supervised::start(&config_text(1, "kept", ""));
    let before = executor_pids(&supervised.agents());
    supervised.rewrite("[agents.executor]\ncount = \"two\"\n");
    let (status, _, stderr) = supervised.reload();
    assert!(!status.success(), "a broken file is refused");
    assert!(
        stderr.contains("mnemosyne.toml"),
        "names the file: {stderr}"
    );
    assert!(stderr.contains("running configuration stays"), "{stderr}");
    assert_eq!(
        executor_pids(&supervised.agents()),
        before,
        "nothing restarted"
    );
    supervised.stop();
}

#[test]
fn sighup_shrinks_a_role_and_start_only_keys_are_reported_as_needing_a_restart() {
    let supervised = Supervised::start(&config_text(2, "same", ""));
    let before = executor_pids(&supervised.agents());
    assert_eq!(before.len(), 2);
    supervised.rewrite(&config_text(1, "same", "[plans]\nmax_in_flight = 3\n"));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(supervised.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP sent");
    let line = supervised.wait_log("configuration reloaded");
    assert!(
        line.contains("executor-2"),
        "names the removed agent: {line}"
    );
    assert!(line.contains("plans.max_in_flight"), "{line}");
    let after = executor_pids(&supervised.agents());
    assert_eq!(after, before[..1].to_vec(), "executor-1 kept its worker");
    let removed_pid = before[1].1;
    assert!(!alive(removed_pid), "the removed agent's worker has exited");

    // Reloading the same file again changes nothing.
    let (status, report, stderr) = supervised.reload();
    assert!(status.success(), "{stderr}");
    assert!(report["changed"].as_array().expect("list").is_empty());
    supervised.stop();
}
