//! Leaks: an API key that must appear nowhere the supervisor writes, and file descriptors or
//! children that must not pile up over a thousand worker restarts.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mnemosyne::agent::AgentStatus;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::common::*;
use crate::fake_api::FakeApi;

/// Only the reviewer's requests contain this, so scripted verdicts reach the reviewer alone.
const REVIEWER: &str = "You are the reviewer agent of Mnemosyne";

fn mnemosyne(cache: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mnemosyne"));
    command
        .current_dir(env!("CARGO_TARGET_TMPDIR"))
        .env("MNEMOSYNE_CACHE_DIR", cache)
        .env_remove("MNEMOSYNE_STATE_DIR")
        .env_remove("ANTHROPIC_API_KEY");
    command
}

/// Kills the supervisor if the test fails before it stops it.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn plan(id: &str) -> String {
    json!({
        "id": id,
        "prompt": format!("Build a command line tool using Rust that must parse the following log \
                           format because operators need to search all access logs within one \
                           second (marker {id})"),
        "tech_stack": "Rust",
        "success_criteria": "searches a 1 GB log in under a second",
        "options": {"max_review_attempts": 1},
    })
    .to_string()
}

/// Every file under `dir`, depth first.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable directory") {
            let path = entry.expect("directory entry").path();
            let kind = std::fs::symlink_metadata(&path)
                .expect("metadata")
                .file_type();
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                files.push(path);
            }
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// A random key in the shape of a real one, so a leak of it cannot be a coincidence.
fn canary_key() -> String {
    let tail: String = (0..24)
        .map(|_| fastrand::alphanumeric())
        .collect::<String>();
    format!("sk-ant-canary-{tail}")
}

#[test]
fn the_api_key_appears_in_no_output_log_event_or_state_file() {
    let canary = canary_key();
    let api = FakeApi::start(&canary);
    // Errors first, so they take their plans' requests before the verdict that matches any
    // reviewer request; both repeat so every retry sees them.
    api.script(&[
        json!({"kind": "status", "status": 401, "match": "marker leak-401", "repeat": true}),
        json!({"kind": "status", "status": 500, "match": "marker leak-500", "repeat": true}),
        json!({"kind": "review", "passed": true, "match": REVIEWER, "repeat": true}),
    ]);
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let cache = dir.path().join("cache");
    let config = dir.path().join("mnemosyne.toml");
    let mut toml = String::from(
        "[supervisor]\nstart_timeout = \"60s\"\nheartbeat_interval = \"1s\"\nheartbeat_misses = 5\n\
         [plans]\nprovider_retries = 1\nprovider_retry_base = \"10ms\"\n",
    );
    for role in ["executor", "orchestrator", "optimizer", "reviewer"] {
        // The runner, not the SDK, retries, so failures come back quickly.
        toml.push_str(&format!(
            "[agents.{role}]\nenv = {{ MNEMOSYNE_SDK_MAX_RETRIES = \"0\" }}\n"
        ));
    }
    std::fs::write(&config, toml).expect("config written");

    let stderr_path = dir.path().join("supervise.stderr");
    let mut supervise = ChildGuard(
        mnemosyne(&cache)
            .args(["supervise", "--provider", "anthropic", "--keep-running"])
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .env("ANTHROPIC_API_KEY", &canary)
            .env("ANTHROPIC_BASE_URL", &api.url)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
            .spawn()
            .expect("supervise starts"),
    );
    let plans = ["leak-ok", "leak-401", "leak-500"];
    let mut stdin = supervise.0.stdin.take().expect("stdin");
    for id in plans {
        writeln!(stdin, "{}", plan(id)).expect("plan written");
    }
    drop(stdin);
    let stdout = supervise.0.stdout.take().expect("stdout");
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let mut results = Vec::new();
    let deadline = Instant::now() + LIMIT * 6;
    while results.len() < plans.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = received
            .recv_timeout(left)
            .unwrap_or_else(|error| panic!("{} of 3 results, then {error}", results.len()));
        results.push(line);
    }
    let parsed: Vec<Value> = results
        .iter()
        .map(|line| serde_json::from_str(line).expect("a result"))
        .collect();
    let status_of = |id: &str| {
        parsed
            .iter()
            .find(|r| r["id"] == id)
            .map(|r| r["status"].clone())
    };
    // The fake API answers only the canary key, so a success means it was sent and seen.
    assert_eq!(
        status_of("leak-ok"),
        Some(json!("succeeded")),
        "{parsed:#?}"
    );
    assert_eq!(status_of("leak-401"), Some(json!("failed")), "{parsed:#?}");
    assert_eq!(status_of("leak-500"), Some(json!("failed")), "{parsed:#?}");
    let requests = api.requests();
    let messages: Vec<&Value> = requests
        .iter()
        .filter(|r| r["path"] == "/v1/messages")
        .collect();
    assert!(
        messages.len() >= 4 && messages.iter().all(|r| r["auth"].is_string()),
        "the fake API received the key with every request: {messages:#?}"
    );

    // Everything an operator can ask a running supervisor.
    let mut outputs: Vec<(String, Vec<u8>)> = results
        .iter()
        .map(|line| ("a result line".to_owned(), line.clone().into_bytes()))
        .collect();
    let mut ask = |label: &str, args: &[&str]| -> Vec<u8> {
        let output = run_client(mnemosyne(&cache).args(args).arg("--state-dir").arg(&state));
        assert!(
            output.status.success(),
            "{label}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        outputs.push((format!("{label} stdout"), output.stdout.clone()));
        outputs.push((format!("{label} stderr"), output.stderr));
        output.stdout
    };
    let agents: Value =
        serde_json::from_slice(&ask("agents --json", &["agents", "--json"])).expect("JSON");
    ask("agents", &["agents"]);
    ask("events --json", &["events", "--json"]);
    ask("events", &["events"]);
    let agents = agents["agents"].as_array().expect("agents").clone();
    assert_eq!(agents.len(), 4, "{agents:#?}");
    for agent in &agents {
        let id = agent["id"].as_str().expect("an agent id");
        ask(&format!("logs {id}"), &["logs", id, "-n", "200"]);
        // A worker's argv is readable by every user of the machine.
        let pid = agent["pid"].as_u64().expect("a live worker");
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("worker cmdline");
        assert!(!contains(&cmdline, canary.as_bytes()), "{id}'s argv");
        // Where the key belongs; this also shows the search would find it.
        let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("worker environ");
        assert!(contains(&environ, canary.as_bytes()), "{id}'s environment");
    }

    kill(
        Pid::from_raw(i32::try_from(supervise.0.id()).expect("a pid")),
        Signal::SIGINT,
    )
    .expect("SIGINT sent");
    let (exited, exit) = mpsc::channel();
    let mut child = std::mem::replace(
        &mut supervise.0,
        Command::new("true").spawn().expect("a placeholder child"),
    );
    std::thread::spawn(move || {
        let _ = exited.send(child.wait());
    });
    let status = exit
        .recv_timeout(LIMIT)
        .expect("the supervisor stops within the limit")
        .expect("waited");
    assert!(status.code().is_some(), "exited on its own: {status:?}");

    let stderr = std::fs::read(&stderr_path).expect("stderr");
    assert!(
        contains(&stderr, b"DEBUG"),
        "debug logging was on, so a leak had every chance to show"
    );
    outputs.push(("supervise stderr".into(), stderr));
    let state_files = files_under(&state);
    assert!(
        state_files.iter().any(|path| path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with("journal"))),
        "the journal is among the files searched: {state_files:?}"
    );
    for path in state_files {
        let bytes = std::fs::read(&path).expect("state file");
        outputs.push((path.display().to_string(), bytes));
    }
    let leaks: Vec<&String> = outputs
        .iter()
        .filter(|(_, bytes)| contains(bytes, canary.as_bytes()))
        .map(|(label, _)| label)
        .collect();
    assert!(leaks.is_empty(), "the key leaked into: {leaks:?}");
}

/// Open file descriptors of this process, with what each refers to (read_dir's own
/// descriptor shows up as a dangling entry of the same number each time).
fn open_fds() -> Vec<String> {
    let mut fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let target = std::fs::read_link(entry.path()).ok()?;
            Some(format!(
                "{} -> {}",
                entry.file_name().to_string_lossy(),
                target.display()
            ))
        })
        .collect();
    fds.sort();
    fds
}

/// Children of this process, zombies included: a child never reaped is a leak too.
fn children() -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| parent_of(pid) == Some(me))
        .collect()
}

const RESTARTS: u32 = 1_000;

/// Set in the copy of the test binary that runs the restarts alone.
const ISOLATED: &str = "MNEMOSYNE_LEAKS_ISOLATED";

/// A worker that says hello and ready, then exits at once: `sh` starts in about a
/// millisecond, where a Python worker takes 25 to 100 ms on a loaded machine, which would
/// make a thousand restarts take minutes.
const CRASHING_WORKER: &str = r#"printf '{"type":"hello","protocol":1,"role":"executor","pid":%d,"python":"none","package":"0","anthropic":null,"provider":null}\n{"type":"ready","methods":[]}\n' $$; exit 3"#;

/// Runs in a process of its own (this test binary again, this test alone), since
/// /proc/self/fd and the list of children are shared by every test running in parallel.
#[test]
fn a_thousand_worker_restarts_leave_no_file_descriptors_or_children_behind() {
    if std::env::var_os(ISOLATED).is_some() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(restart_a_thousand_times());
        return;
    }
    let limit = Duration::from_secs(120);
    let mut command = Command::new(std::env::current_exe().expect("the test binary"));
    command
        .args([
            "leaks::a_thousand_worker_restarts_leave_no_file_descriptors_or_children_behind",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ISOLATED, "1");
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the test binary starts");
    let pid = child.id();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait_with_output());
    });
    let output = match receiver.recv_timeout(limit) {
        Ok(output) => output.expect("the isolated test finishes"),
        Err(_) => {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            panic!("the isolated test did not finish within {limit:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn restart_a_thousand_times() {
    let mut config = fast_config();
    let s = &mut config.supervisor;
    s.backoff_base = Duration::from_millis(1);
    s.backoff_max = Duration::from_millis(1);
    s.max_restarts_in_window = RESTARTS * 10;
    let executor = config
        .agents
        .get_mut(&mnemosyne::config::Role::Executor)
        .expect("executor configured");
    executor.python = Some(PathBuf::from("/bin/sh"));
    executor.args = Some(vec!["-c".into(), CRASHING_WORKER.into()]);
    let running = Running::start(&config);
    let agent = &running.executor();
    // A few restarts first, so that everything made once (the launcher thread, the warden,
    // buffers) exists before the baseline.
    wait_restarts(agent, 5, LIMIT).await;
    let stopped = |s: &AgentStatus| s.state.to_string() == "stopped";
    tokio::time::timeout(LIMIT, agent.stop())
        .await
        .expect("stop returns within the limit")
        .expect("the agent stops");
    let baseline = wait_state(agent, "stopped", stopped).await;
    let fds_before = open_fds();
    let children_before = children();

    let started = Instant::now();
    tokio::time::timeout(LIMIT, agent.start())
        .await
        .expect("start returns within the limit")
        .expect("the agent starts");
    let target = baseline.restarts + RESTARTS;
    wait_restarts(agent, target, Duration::from_secs(90)).await;
    let elapsed = started.elapsed();
    tokio::time::timeout(LIMIT, agent.stop())
        .await
        .expect("stop returns within the limit")
        .expect("the agent stops");
    let after = wait_state(agent, "stopped", stopped).await;
    println!(
        "{} restarts in {elapsed:?} ({:?} each)",
        after.restarts - baseline.restarts,
        elapsed / RESTARTS
    );
    // The last worker's pipes close and it is reaped as it stops, but the drain tasks that
    // hold its pipes may finish a moment after the state says stopped: so this waits, bounded,
    // for the count to come back down. A leak never does.
    let deadline = Instant::now() + LIMIT;
    let (fds_after, children_after) = loop {
        let (fds, children) = (open_fds(), children());
        let settled = fds.len() <= fds_before.len() && children == children_before;
        if settled || Instant::now() > deadline {
            break (fds, children);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        fds_after.len() <= fds_before.len(),
        "open fds grew from {fds_before:#?}\nto {fds_after:#?}"
    );
    assert_eq!(
        children_after, children_before,
        "children before and after (the warden only)"
    );
    running.stop().await;
}

async fn wait_restarts(agent: &mnemosyne::agent::AgentHandle, restarts: u32, limit: Duration) {
    agent
        .wait_until(&format!("{restarts} restarts"), limit, |s| {
            s.restarts >= restarts
        })
        .await
        .expect("the restarts happen within the limit");
}
