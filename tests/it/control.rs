//! Controlling a running supervisor over `control.sock`: `agents`, `start`/`stop`/`restart`,
//! `events` and `logs`, against real workers, in process and through the binary.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use mnemosyne::agent::JobRequest;
use mnemosyne::config::{AgentConfig, Config, Role};
use mnemosyne::control::{
    AgentOutcome, AgentRow, Client, ClientError, ControlAnswer, ControlServer, ErrorCode, Health,
    SOCKET_FILE, StreamItem, Verb, socket_path,
};
use mnemosyne::supervisor::EventKind;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::common::*;

/// A supervisor in this process with its control server on a temporary state directory.
struct Controlled {
    running: Running,
    server: ControlServer,
    dir: tempfile::TempDir,
}

impl Controlled {
    fn start(config: &Config) -> Self {
        let dir = tempfile::tempdir().expect("state dir");
        Self::start_in(config, dir)
    }

    fn start_in(config: &Config, dir: tempfile::TempDir) -> Self {
        let running = Running::start(config);
        let server =
            ControlServer::start(dir.path(), &running.supervisor).expect("control server starts");
        Self {
            running,
            server,
            dir,
        }
    }

    async fn client(&self) -> Client {
        within("connecting", Client::connect(self.dir.path()))
            .await
            .expect("the control socket accepts")
    }

    async fn control(&self, verb: Verb, target: &str) -> AgentOutcome {
        let answer = within("the command's answer", async {
            self.client().await.control(verb, target, true).await
        })
        .await
        .expect("the command is answered");
        let ControlAnswer::Done(mut results) = answer else {
            panic!("waited for, so answered with outcomes: {answer:?}");
        };
        assert_eq!(results.len(), 1, "{results:?}");
        results.remove(0)
    }

    async fn row(&self, id: &str) -> AgentRow {
        let rows = within("agents", async { self.client().await.agents().await })
            .await
            .expect("agents answered");
        rows.into_iter()
            .find(|row| row.id == id)
            .unwrap_or_else(|| panic!("{id} is listed"))
    }

    async fn stop(self) {
        self.running.stop().await;
        within("control shutdown", self.server.shutdown()).await;
    }
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what} within {LIMIT:?}"))
}

async fn next_item(stream: &mut mnemosyne::control::Stream) -> Option<StreamItem> {
    within("the next stream item", stream.next())
        .await
        .expect("the stream reads")
}

fn sigkill(pid: u32) {
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("SIGKILL the worker");
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .unwrap_or_default()
}

fn with_reviewer(mut config: Config) -> Config {
    config.agents.insert(Role::Reviewer, AgentConfig::default());
    config
}

#[tokio::test]
async fn a_graceful_restart_lets_the_held_request_finish_once_and_returns_when_ready() {
    let ctl = Controlled::start(&fast_config());
    let old_pid = ctl.running.ready().await.pid.expect("pid");
    let request = JobRequest {
        id: "held".into(),
        method: "sleep".into(),
        params: json!({"seconds": 0.5}),
        deadline: Duration::from_secs(30),
    };
    let outcome = ctl.running.supervisor.submit(Role::Executor, request);
    wait_state(ctl.running.executor(), "busy", |s| {
        s.current_job.as_deref() == Some("held")
    })
    .await;

    let result = ctl
        .control(Verb::Restart { now: false }, "executor-1")
        .await;
    // Answered only once the new worker is ready.
    let status = ctl.running.executor().status();
    assert!(result.ok, "{result:?}");
    assert_eq!(result.state, "ready");
    assert_eq!(status.state.to_string(), "ready");
    assert_eq!(result.restarts, 1);
    let new_pid = result.pid.expect("a new worker");
    assert_ne!(new_pid, old_pid);
    assert_eq!(status.pid, Some(new_pid));
    assert!(alive(new_pid) && !alive(old_pid));

    let outcome = within("the held request", outcome)
        .await
        .expect("the request is answered");
    assert_eq!(outcome.result.expect("it succeeded"), json!({"slept": 0.5}));
    assert_eq!(
        outcome.deliveries, 1,
        "finished by the old worker, not redelivered"
    );
    ctl.stop().await;
}

#[tokio::test]
async fn restart_now_kills_at_once_and_redelivers_the_held_request() {
    let ctl = Controlled::start(&fast_config());
    ctl.running.ready().await;
    let request = JobRequest {
        id: "held".into(),
        method: "sleep".into(),
        params: json!({"seconds": 1}),
        deadline: Duration::from_secs(30),
    };
    let outcome = ctl.running.supervisor.submit(Role::Executor, request);
    wait_state(ctl.running.executor(), "busy", |s| s.in_flight == 1).await;
    let result = ctl.control(Verb::Restart { now: true }, "executor-1").await;
    assert!(result.ok && result.restarts == 1, "{result:?}");
    let outcome = within("the held request", outcome)
        .await
        .expect("the request is answered");
    assert_eq!(outcome.result.expect("it succeeded"), json!({"slept": 1}));
    assert_eq!(outcome.deliveries, 2, "redelivered to the new worker");
    let row = ctl.row("executor-1").await;
    let exit = row.last_exit.expect("the killed worker's exit");
    assert_eq!(exit.status.signal, Some(9), "{exit:?}");
    ctl.stop().await;
}

#[tokio::test]
async fn a_stopped_agent_stays_stopped_until_start_brings_it_back() {
    let ctl = Controlled::start(&with_reviewer(fast_config()));
    let reviewer = ctl
        .running
        .supervisor
        .agent("reviewer-1")
        .expect("reviewer-1");
    let first_pid = wait_state(&reviewer, "ready", |s| s.state.to_string() == "ready")
        .await
        .pid
        .expect("pid");
    let healthy = ctl.row("reviewer-1").await;
    assert_eq!(healthy.health, Health::Healthy);

    let result = ctl.control(Verb::Stop, "reviewer-1").await;
    assert!(result.ok, "{result:?}");
    assert_eq!((result.state.as_str(), result.pid), ("stopped", None));
    assert!(!alive(first_pid));
    let row = ctl.row("reviewer-1").await;
    assert_eq!(row.state, "stopped");
    assert_eq!(row.health, Health::Stopped);
    assert_eq!(row.reason.as_deref(), Some("stopped by operator"));
    // The restart policy restarts a dead worker after 20 ms of backoff; a stopped agent is
    // left alone. (A bound on a negative, not a synchronisation.)
    let mut watch = reviewer.watch();
    watch.borrow_and_update();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), watch.changed())
            .await
            .is_err(),
        "a stopped agent changed state: {:?}",
        reviewer.status()
    );

    let result = ctl.control(Verb::Start, "reviewer-1").await;
    assert!(result.ok, "{result:?}");
    assert_eq!(result.state, "ready");
    let pid = result.pid.expect("a new worker");
    assert!(alive(pid) && pid != first_pid);
    let row = ctl.row("reviewer-1").await;
    assert_eq!(
        row.health,
        Health::Degraded,
        "restarted within five minutes"
    );
    ctl.stop().await;
}

#[tokio::test]
async fn a_role_names_all_its_agents_and_no_wait_answers_at_once() {
    let mut config = fast_config();
    config
        .agents
        .get_mut(&Role::Executor)
        .expect("executor")
        .count = 2;
    let ctl = Controlled::start(&config);
    let agents: Vec<_> = ctl.running.supervisor.agents().to_vec();
    for agent in &agents {
        wait_state(agent, "ready", |s| s.state.to_string() == "ready").await;
    }
    let answer = within("restart --no-wait", async {
        ctl.client()
            .await
            .control(Verb::Restart { now: false }, "executor", false)
            .await
    })
    .await
    .expect("answered");
    assert_eq!(
        answer,
        ControlAnswer::Accepted(vec!["executor-1".into(), "executor-2".into()])
    );
    for agent in &agents {
        wait_state(agent, "restarted and ready", |s| {
            s.restarts == 1 && s.state.to_string() == "ready"
        })
        .await;
    }
    ctl.stop().await;
}

#[tokio::test]
async fn restart_brings_an_agent_out_of_cooldown_and_reports_where_it_went() {
    let mut config = fixture_config("exit_at_start.py", &["--code", "1"]);
    config.supervisor.max_restarts_in_window = 2;
    let ctl = Controlled::start(&config);
    let cooling = wait_state(ctl.running.executor(), "cooldown", |s| {
        s.state.to_string() == "cooldown"
    })
    .await;
    let row = ctl.row("executor-1").await;
    assert_eq!(row.health, Health::Unhealthy);
    assert!(row.next_retry.is_some() && row.reason.is_some(), "{row:?}");

    let result = ctl
        .control(Verb::Restart { now: false }, "executor-1")
        .await;
    // Out of cooldown (whose next retry is an hour away) at once: a new worker was started.
    // It crashes again, so the command fails, saying where the agent went and why.
    assert!(result.restarts > cooling.restarts, "{result:?}");
    assert!(!result.ok, "{result:?}");
    assert!(
        result.state == "backoff" || result.state == "cooldown",
        "{result:?}"
    );
    let reason = result.reason.expect("a reason");
    assert!(
        reason.starts_with(&format!("went to {}: ", result.state)) && reason.contains("crash"),
        "{reason}"
    );
    ctl.stop().await;
}

#[tokio::test]
async fn restart_brings_a_cooling_down_agent_back_to_ready() {
    let mut config = fixture_config("misbehave.py", &[]);
    config.supervisor.max_restarts_in_window = 2;
    let ctl = Controlled::start(&config);
    ctl.running.ready().await;
    // The same request kills each worker it reaches: three deaths trip the breaker (and
    // quarantine the request).
    let outcome = ctl.running.call("crash", json!({"exit_code": 4})).await;
    assert!(outcome.result.is_err(), "{outcome:?}");
    wait_state(ctl.running.executor(), "cooldown", |s| {
        s.state.to_string() == "cooldown"
    })
    .await;
    let result = ctl
        .control(Verb::Restart { now: false }, "executor-1")
        .await;
    assert!(result.ok, "{result:?}");
    assert_eq!(result.state, "ready");
    assert!(alive(result.pid.expect("pid")));
    ctl.stop().await;
}

#[tokio::test]
async fn restart_brings_an_agent_out_of_failed_and_says_why_it_failed_again() {
    let ctl = Controlled::start(&fixture_config("fatal_config.py", &[]));
    let failed = wait_state(ctl.running.executor(), "failed", |s| {
        s.state.to_string() == "failed"
    })
    .await;
    assert_eq!(ctl.row("executor-1").await.health, Health::Unhealthy);
    let result = ctl
        .control(Verb::Restart { now: false }, "executor-1")
        .await;
    assert_eq!(
        result.restarts,
        failed.restarts + 1,
        "a new worker was started"
    );
    assert!(!result.ok);
    assert_eq!(result.state, "failed");
    let reason = result.reason.expect("a reason");
    assert!(
        reason.contains("configuration problem") && reason.contains("required setting missing"),
        "{reason}"
    );
    ctl.stop().await;
}

#[tokio::test]
async fn events_follow_shows_a_crash_report_after_a_worker_is_sigkilled() {
    let ctl = Controlled::start(&fast_config());
    let pid = ctl.running.ready().await.pid.expect("pid");
    let mut stream = within("events", async { ctl.client().await.events(true).await })
        .await
        .expect("events requested");
    sigkill(pid);
    let mut last_seq = 0;
    let report = loop {
        let Some(StreamItem::Event(event)) = next_item(&mut stream).await else {
            panic!("the stream goes on with events");
        };
        let seq = event["seq"].as_u64().expect("seq");
        assert!(seq > last_seq, "seq {seq} after {last_seq}");
        last_seq = seq;
        if event["event"] == "worker_exited" && event["pid"] == pid {
            break event;
        }
    };
    assert_eq!(report["agent"], "executor-1");
    assert_eq!(report["cause"], "crash");
    assert_eq!(report["exit"]["signal"], 9);
    assert_eq!(report["exit"]["signal_name"], "SIGKILL");
    assert_eq!(report["next"], "restart");
    assert!(report["stderr_tail"].is_array());

    // Without --follow: the history, which now holds the report, then the end.
    let mut history = within("events", async { ctl.client().await.events(false).await })
        .await
        .expect("events requested");
    let mut seqs = Vec::new();
    let mut saw_report = false;
    while let Some(item) = next_item(&mut history).await {
        let StreamItem::Event(event) = item else {
            panic!("history holds events: {item:?}");
        };
        seqs.push(event["seq"].as_u64().expect("seq"));
        saw_report |= event["event"] == "worker_exited" && event["pid"] == pid;
    }
    assert!(saw_report);
    assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "{seqs:?}");
    ctl.stop().await;
}

#[tokio::test]
async fn a_reader_that_falls_behind_is_told_what_it_missed_and_holds_nothing_up() {
    let ctl = Controlled::start(&fast_config());
    ctl.running.ready().await;
    let stream = within(
        "connecting",
        tokio::net::UnixStream::connect(ctl.server.path()),
    )
    .await
    .expect("connects");
    let (read, mut write) = stream.into_split();
    write
        .write_all(b"{\"v\":1,\"type\":\"events\",\"follow\":true}\n")
        .await
        .expect("request sent");
    let mut lines = tokio::io::BufReader::new(read).lines();
    // The first history line proves the server has subscribed.
    let first: Value = serde_json::from_str(
        &within("the first event", lines.next_line())
            .await
            .expect("reads")
            .expect("a line"),
    )
    .expect("JSON");
    assert_eq!(first["type"], "event");

    // Far more than the broadcast keeps, each too big for the socket buffer to absorb, while
    // this reader reads nothing. Publishing never waits for readers.
    let bus = ctl.running.supervisor.events();
    let mut last = 0;
    for n in 0..6000 {
        let event = bus.publish(
            Some("test"),
            EventKind::ProtocolNoise {
                kind: "flood".into(),
                detail: format!("{n} {}", "x".repeat(1000)),
                count: 1,
            },
        );
        last = event.seq;
    }
    let mut previous = first["event"]["seq"].as_u64().expect("seq");
    let mut missed = 0;
    loop {
        let line = within("the flood", lines.next_line())
            .await
            .expect("reads")
            .expect("a line");
        let answer: Value = serde_json::from_str(&line).expect("JSON");
        match answer["type"].as_str() {
            Some("missed") => {
                let count = answer["count"].as_u64().expect("count");
                missed += count;
                previous += count;
            }
            Some("event") => {
                let seq = answer["event"]["seq"].as_u64().expect("seq");
                assert_eq!(seq, previous + 1, "every event is delivered or counted");
                previous = seq;
                if seq == last {
                    break;
                }
            }
            other => panic!("unexpected answer {other:?}: {line}"),
        }
    }
    assert!(
        missed > 0,
        "a reader that stalled through 6000 events missed some"
    );
    ctl.stop().await;
}

#[tokio::test]
async fn logs_show_what_the_worker_wrote_to_stderr_and_follow_new_lines() {
    let ctl = Controlled::start(&fixture_config("misbehave.py", &[]));
    let pid = ctl.running.ready().await.pid.expect("pid");
    let marker = format!("--- worker started (pid {pid}) ---");
    let mut follow = within("logs", async {
        ctl.client().await.logs("executor-1", 200, true).await
    })
    .await
    .expect("logs requested");
    loop {
        if next_item(&mut follow).await == Some(StreamItem::Line(marker.clone())) {
            break;
        }
    }
    let text = "a line for the operator 7d3f";
    let outcome = ctl.running.call("stderr", json!({ "text": text })).await;
    assert_eq!(outcome.result.expect("ok"), json!({"ok": true}));
    loop {
        if next_item(&mut follow).await == Some(StreamItem::Line(text.into())) {
            break;
        }
    }

    let mut tail = within("logs", async {
        ctl.client().await.logs("executor-1", 200, false).await
    })
    .await
    .expect("logs requested");
    let mut lines = Vec::new();
    while let Some(item) = next_item(&mut tail).await {
        let StreamItem::Line(line) = item else {
            panic!("logs are lines: {item:?}");
        };
        lines.push(line);
    }
    assert!(
        lines.contains(&marker) && lines.contains(&text.to_owned()),
        "{lines:?}"
    );

    let mut unknown = within("logs", async {
        ctl.client().await.logs("executor-7", 10, false).await
    })
    .await
    .expect("logs requested");
    let error = within("the refusal", unknown.next())
        .await
        .expect_err("no such agent");
    assert!(error.is_usage());
    assert!(
        error.to_string().contains("executor-1"),
        "the error lists the agents: {error}"
    );
    ctl.stop().await;
}

#[tokio::test]
async fn an_unknown_agent_or_role_is_an_error_listing_the_agents() {
    let ctl = Controlled::start(&fast_config());
    for (target, says) in [
        ("executor-9", "no agent or role named `executor-9`"),
        ("reviewer", "no agents of role `reviewer`"),
    ] {
        let error = within("the refusal", async {
            ctl.client()
                .await
                .control(Verb::Restart { now: false }, target, true)
                .await
        })
        .await
        .expect_err("refused");
        let ClientError::Refused {
            code,
            message,
            known,
        } = &error
        else {
            panic!("refused by the server: {error:?}");
        };
        assert_eq!(*code, ErrorCode::UnknownAgent);
        assert_eq!(known, &vec!["executor-1".to_owned()]);
        assert!(
            message.contains(says) && message.ends_with("the agents are: executor-1"),
            "{message}"
        );
        assert!(error.is_usage());
    }
    ctl.stop().await;
}

#[tokio::test]
async fn bad_lines_get_clear_errors_and_the_connection_stays_usable() {
    let ctl = Controlled::start(&fast_config());
    let stream = within(
        "connecting",
        tokio::net::UnixStream::connect(ctl.server.path()),
    )
    .await
    .expect("connects");
    let (read, mut write) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(read).lines();
    let mut ask = async |line: &str| -> Value {
        write
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("sent");
        let answer = within("the answer", lines.next_line())
            .await
            .expect("reads")
            .expect("a line");
        serde_json::from_str(&answer).expect("answers are JSON")
    };
    let answer = ask(r#"{"v":2,"type":"agents"}"#).await;
    assert_eq!(
        (answer["type"].as_str(), answer["code"].as_str()),
        (Some("error"), Some("version"))
    );
    assert_eq!(
        answer["message"],
        "control protocol version mismatch: the supervisor speaks 1, the request says 2"
    );
    assert_eq!(answer["v"], 1);
    let answer = ask("this is not json").await;
    assert_eq!(answer["code"], "bad_request");
    let answer = ask(r#"{"v":1,"type":"reboot"}"#).await;
    assert_eq!(answer["code"], "unknown_type");
    let answer = ask(r#"{"v":1,"type":"agents"}"#).await;
    assert_eq!(answer["type"], "agents");
    assert_eq!(answer["agents"][0]["id"], "executor-1");
    ctl.stop().await;
}

#[tokio::test]
async fn many_clients_at_once_are_each_answered() {
    let ctl = Controlled::start(&fast_config());
    ctl.running.ready().await;
    let mut follower = within("events", async { ctl.client().await.events(true).await })
        .await
        .expect("a follower that never finishes");
    let answers = futures_util::future::join_all((0..20).map(|_| async {
        within("agents", async { ctl.client().await.agents().await })
            .await
            .expect("answered")
    }))
    .await;
    assert!(
        answers
            .iter()
            .all(|rows| rows.len() == 1 && rows[0].state == "ready")
    );
    assert!(matches!(
        next_item(&mut follower).await,
        Some(StreamItem::Event(_))
    ));
    // Stopping the server ends the follower's stream cleanly.
    let Controlled {
        running, server, ..
    } = ctl;
    within("control shutdown", server.shutdown()).await;
    loop {
        match within("the end", follower.next()).await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(error) => panic!("the stream ends with `end`: {error}"),
        }
    }
    running.stop().await;
}

#[tokio::test]
async fn without_a_supervisor_the_client_names_the_socket_it_tried() {
    let dir = tempfile::tempdir().expect("state dir");
    let path = dir.path().join(SOCKET_FILE);
    let expected = format!(
        "no supervisor is running: nothing listens on {}",
        path.display()
    );
    let Err(error) = Client::connect(dir.path()).await else {
        panic!("nothing listens");
    };
    assert_eq!(error.to_string(), expected);
    // A socket left by a supervisor that was killed: the file exists, nothing listens.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
    let Err(error) = Client::connect(dir.path()).await else {
        panic!("nothing listens on a stale socket");
    };
    assert!(matches!(error, ClientError::NotRunning { .. }), "{error:?}");
    assert_eq!(error.to_string(), expected);
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_the_new_one_is_private() {
    let dir = tempfile::tempdir().expect("state dir");
    let path = socket_path(dir.path());
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
    let ctl = Controlled::start_in(&fast_config(), dir);
    let metadata = std::fs::symlink_metadata(&path).expect("socket");
    assert!(metadata.file_type().is_socket());
    assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
    // The stale socket refused connections; this one answers. (Inode numbers cannot tell
    // the two apart: a freed inode is often reused at once.)
    ctl.client().await.agents().await.expect("answers");
    let Controlled {
        running,
        server,
        dir,
    } = ctl;
    running.stop().await;
    within("control shutdown", server.shutdown()).await;
    assert!(dir.path().is_dir());
    assert!(!path.exists(), "a clean exit removes the socket");
}

/// The JSON Schemas agree with the example lines, checked with Python's `jsonschema` (which
/// `scripts/test` installs in `.venv`).
#[test]
fn the_control_examples_agree_with_the_json_schemas() {
    let python = std::env::var("MNEMOSYNE_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = r#"
import json, pathlib, sys
import jsonschema
root = pathlib.Path(sys.argv[1])
schemas = {}
for direction, name in (("client", "request"), ("server", "response")):
    schema = json.loads((root / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    schemas[direction] = jsonschema.Draft202012Validator(schema)
problems, checked = [], 0
for kind in ("valid", "invalid"):
    for path in sorted((root / "examples" / kind).glob("*.ndjson")):
        validator = schemas[path.name.split("-")[0]]
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            checked += 1
            try:
                document = json.loads(line)
            except ValueError:
                if kind == "valid":
                    problems.append(f"{path.name}:{number}: not JSON")
                continue
            errors = [e.message for e in validator.iter_errors(document)]
            if kind == "valid" and errors:
                problems.append(f"{path.name}:{number}: {errors}")
            if kind == "invalid" and not errors:
                problems.append(f"{path.name}:{number}: accepted by the schema")
print(checked)
if problems:
    sys.exit("\n".join(problems))
"#;
    let output = run_within(
        Command::new(&python)
            .arg("-c")
            .arg(script)
            .arg(repo_root().join("protocol/control"))
            .stdin(Stdio::null()),
        LIMIT,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named 'jsonschema'"),
        "{python} lacks jsonschema; run scripts/test, which installs it in .venv"
    );
    assert!(output.status.success(), "{stderr}");
    let checked: usize = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("a count");
    assert!(checked > 40, "only {checked} example lines checked");
}

// ---- through the binary ----------------------------------------------------------------------

/// A child that is SIGKILLed on drop, so a failing test leaves no supervisor behind.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lines of a child's pipe, read on a thread so that every wait is bounded.
struct Lines(mpsc::Receiver<String>);

impl Lines {
    fn of(pipe: impl Read + Send + 'static) -> Self {
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self(receiver)
    }

    fn next(&self, what: &str) -> Option<String> {
        match self.0.recv_timeout(LIMIT) {
            Ok(line) => Some(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("no {what} within {LIMIT:?}"),
        }
    }

    fn find_json(&self, what: &str, mut wanted: impl FnMut(&Value) -> bool) -> Value {
        loop {
            let line = self
                .next(what)
                .unwrap_or_else(|| panic!("the stream ended before {what}"));
            let value: Value = serde_json::from_str(&line).expect("JSON lines");
            if wanted(&value) {
                return value;
            }
        }
    }
}

fn mnemosyne() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mnemosyne"));
    command
        .current_dir(env!("CARGO_TARGET_TMPDIR"))
        .env(
            "MNEMOSYNE_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("cache"),
        )
        .env_remove("MNEMOSYNE_STATE_DIR");
    command
}

fn agents_json(state: &Path) -> Vec<Value> {
    let output = run_client(
        mnemosyne()
            .args(["agents", "--json", "--state-dir"])
            .arg(state),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(text.lines().count(), 1, "one JSON line: {text}");
    let value: Value = serde_json::from_str(&text).expect("JSON");
    value["agents"].as_array().expect("an agents list").clone()
}

fn plan() -> String {
    json!({
        "id": "control-test",
        "prompt": "Build a command line tool using Rust that must parse the following log format \
                   because operators need to search all access logs within one second",
        "tech_stack": "Rust",
        "success_criteria": ["searches a 1 GB log in under a second"],
    })
    .to_string()
}

#[test]
fn the_binary_lists_real_workers_and_counts_a_restart_after_a_sigkill() {
    let state = tempfile::tempdir().expect("state dir");
    let path = socket_path(state.path());
    // Left by a supervisor that was killed: it must not stop the next one, and the answers
    // below come through its replacement.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
    let log = std::fs::File::create(state.path().join("supervise.log")).expect("log file");
    let mut supervise = ChildGuard(
        mnemosyne()
            .args(["supervise", "--keep-running", "--state-dir"])
            .arg(state.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("supervise starts"),
    );
    let log_text =
        || std::fs::read_to_string(state.path().join("supervise.log")).unwrap_or_default();
    let mut stdin = supervise.0.stdin.take().expect("stdin");
    writeln!(stdin, "{}", plan()).expect("plan written");
    stdin.flush().expect("flushed");
    let results = Lines::of(supervise.0.stdout.take().expect("stdout"));
    let result = results.find_json("the plan's result", |_| true);
    assert_eq!(result["id"], "control-test", "{}", log_text());

    let socket = std::fs::symlink_metadata(&path).expect("the socket exists");
    assert!(socket.file_type().is_socket());
    assert_eq!(socket.permissions().mode() & 0o777, 0o600);

    let agents = agents_json(state.path());
    let ids: Vec<&str> = agents
        .iter()
        .map(|a| a["id"].as_str().expect("id"))
        .collect();
    assert_eq!(
        ids,
        ["executor-1", "orchestrator-1", "optimizer-1", "reviewer-1"]
    );
    let fields = [
        "id",
        "role",
        "state",
        "health",
        "pid",
        "restarts",
        "uptime_s",
        "in_flight",
        "last_exit",
    ];
    for agent in &agents {
        let keys: BTreeSet<&str> = agent
            .as_object()
            .expect("a row is an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, fields.into_iter().collect(), "{agent}");
        let role = agent["role"].as_str().expect("role");
        assert!(agent["id"].as_str().expect("id").starts_with(role));
        assert_eq!(agent["state"], "ready", "{agent}");
        assert_eq!(agent["health"], "healthy", "{agent}");
        assert_eq!(agent["restarts"], 0);
        assert_eq!(agent["in_flight"], 0);
        assert!(agent["uptime_s"].is_u64());
        assert!(agent["last_exit"].is_null());
        let pid = agent["pid"].as_u64().expect("a pid") as u32;
        let command = cmdline(pid);
        assert!(
            command.contains("mnemosyne.orchestration.agents")
                && command.contains(&format!("--role {role}")),
            "pid {pid} is {role}'s worker: {command}"
        );
    }
    let old_pid = agents[0]["pid"].as_u64().expect("pid") as u32;

    // The state directory also comes from MNEMOSYNE_STATE_DIR.
    let mut follower = ChildGuard(
        mnemosyne()
            .args(["events", "--follow", "--json"])
            .env("MNEMOSYNE_STATE_DIR", state.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("events --follow starts"),
    );
    let events = Lines::of(follower.0.stdout.take().expect("stdout"));
    let follower_stderr = Lines::of(follower.0.stderr.take().expect("stderr"));
    events.find_json("the history", |event| event["event"] == "worker_started");
    sigkill(old_pid);
    let report = events.find_json("the crash report", |event| {
        event["event"] == "worker_exited" && event["pid"] == old_pid
    });
    assert_eq!(report["agent"], "executor-1");
    assert_eq!(report["exit"]["signal"], 9);
    let report_seq = report["seq"].as_u64().expect("seq");
    let ready = events.find_json("executor-1 ready again", |event| {
        event["agent"] == "executor-1"
            && event["event"] == "state_changed"
            && event["to"] == "ready"
    });
    assert!(ready["seq"].as_u64().expect("seq") > report_seq);

    let agents = agents_json(state.path());
    let executor = &agents[0];
    assert_eq!(executor["restarts"], 1, "{executor}");
    assert_eq!(executor["state"], "ready");
    assert_eq!(
        executor["health"], "degraded",
        "restarted within five minutes"
    );
    assert_eq!(executor["last_exit"]["cause"], "crash");
    assert_eq!(executor["last_exit"]["status"]["signal"], 9);
    assert_eq!(executor["last_exit"]["status"]["signal_name"], "SIGKILL");
    let new_pid = executor["pid"].as_u64().expect("pid") as u32;
    assert_ne!(new_pid, old_pid);
    assert!(cmdline(new_pid).contains("--role executor"));

    // An unknown agent is a usage error (2) that lists the agents.
    let output = run_client(
        mnemosyne()
            .args(["restart", "executor-9", "--state-dir"])
            .arg(state.path()),
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("executor-1, orchestrator-1, optimizer-1, reviewer-1"),
        "{stderr}"
    );

    // SIGTERM: the supervisor stops, the follower's stream ends, the socket goes away.
    kill(Pid::from_raw(supervise.0.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    drop(stdin);
    while results.next("the supervisor's exit").is_some() {}
    let status = wait_within(&mut supervise.0, LIMIT);
    assert!(status.code().is_some(), "exited, not killed: {status:?}");
    assert!(!path.exists(), "a clean exit removes the socket");
    while events.next("the end of the event stream").is_some() {}
    let follower_status = wait_within(&mut follower.0, LIMIT);
    let mut follower_said = Vec::new();
    while let Some(line) = follower_stderr.next("the follower's stderr") {
        follower_said.push(line);
    }
    assert!(
        follower_status.success(),
        "{follower_status:?}: {follower_said:?}"
    );
    assert!(
        follower_said
            .iter()
            .any(|line| line.contains("the supervisor stopped")),
        "{follower_said:?}"
    );
}

#[test]
fn without_a_supervisor_the_commands_exit_1_naming_the_socket() {
    let state = tempfile::tempdir().expect("state dir");
    let expected = format!(
        "no supervisor is running: nothing listens on {}",
        socket_path(state.path()).display()
    );
    for args in [
        vec!["agents"],
        vec!["restart", "executor-1"],
        vec!["events", "--follow"],
        vec!["logs", "executor-1"],
    ] {
        let output = run_client(mnemosyne().args(&args).arg("--state-dir").arg(state.path()));
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&expected), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty());
    }
}
