//! No process outlives the supervisor: escalation, grandchildren, SIGKILL of the supervisor.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use mnemosyne::process::ExitStatus;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn a_worker_ignoring_shutdown_and_sigterm_is_sigkilled() {
    let mut config = fixture_config("ignore_sigterm.py", &[]);
    config.supervisor.stop_grace = std::time::Duration::from_millis(200);
    config.supervisor.term_grace = std::time::Duration::from_millis(300);
    let running = Running::start(&config);
    let pid = running.ready().await.pid.expect("pid");
    let agent = running.executor().clone();
    running.stop().await;
    let last_exit = agent
        .status()
        .last_exit
        .expect("the stop recorded how the worker ended");
    assert_eq!(last_exit.status, ExitStatus::Signal { signal: 9 });
    assert!(!alive(pid));
}

#[tokio::test]
async fn no_grandchild_survives_a_stop() {
    let running = Running::start(&fixture_config("misbehave.py", &[]));
    running.ready().await;
    let outcome = running.call("spawn_grandchild", json!({})).await;
    let grandchild = outcome.result.expect("spawned")["pid"]
        .as_u64()
        .expect("pid") as u32;
    assert!(alive(grandchild));
    running.stop().await;
    assert!(
        gone_within(grandchild, LIMIT).await,
        "grandchild {grandchild} survived the stop"
    );
}

#[tokio::test]
async fn no_grandchild_survives_its_worker_crashing() {
    let running = Running::start(&fixture_config("misbehave.py", &[]));
    running.ready().await;
    let outcome = running.call("spawn_grandchild", json!({})).await;
    let grandchild = outcome.result.expect("spawned")["pid"]
        .as_u64()
        .expect("pid") as u32;
    let _ = running
        .call("crash_if_delivery_below", json!({"n": 2}))
        .await;
    assert!(
        gone_within(grandchild, LIMIT).await,
        "grandchild {grandchild} outlived its worker"
    );
    running.stop().await;
}

#[tokio::test]
async fn no_worker_or_grandchild_survives_a_sigkill_of_the_supervisor() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = dir.path().join("mnemosyne.toml");
    let mut config = String::new();
    for role in ["executor", "orchestrator", "optimizer", "reviewer"] {
        config.push_str(&format!(
            "[agents.{role}]\nargs = [{:?}, \"--role\", \"{role}\"]\nenv = {{ FIXTURE_SPAWN_GRANDCHILD = \"1\" }}\n",
            fixture("instant_pipeline.py")
        ));
    }
    std::fs::write(&config_path, config).expect("write config");
    let mut supervisor = Command::new(env!("CARGO_BIN_EXE_mnemosyne"))
        .args(["supervise", "--config"])
        .arg(&config_path)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env(
            "MNEMOSYNE_CACHE_DIR",
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cache"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("supervisor starts");
    let _watchdog = Watchdog::arm(&supervisor, LIMIT * 3);
    let mut stdin = supervisor.stdin.take().expect("stdin");
    let plan =
        r#"{"id":"spawner","prompt":"spawn","tech_stack":"sh","success_criteria":"a grandchild"}"#;
    writeln!(stdin, "{plan}").expect("plan written");
    stdin.flush().expect("flushed");
    let mut stdout = BufReader::new(supervisor.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("a result line");
    let result: serde_json::Value = serde_json::from_str(&line).expect("result is JSON");
    let grandchild: u32 = result["output"]
        .as_str()
        .and_then(|pid| pid.parse().ok())
        .expect("grandchild pid");
    let worker = parent_of(grandchild).expect("grandchild has a parent");
    let workers: Vec<u32> = children_of(supervisor.id());
    assert!(
        workers.contains(&worker),
        "worker {worker} is a child of the supervisor: {workers:?}"
    );

    supervisor.kill().expect("SIGKILL the supervisor");
    supervisor.wait().expect("reaped");
    for pid in workers.iter().copied().chain([grandchild]) {
        assert!(
            gone_within(pid, Duration::from_secs(2)).await,
            "process {pid} outlived the supervisor by 2 s"
        );
    }
    drop(stdin);
}

fn children_of(parent: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc")
        .expect("/proc is readable")
        .flatten()
    {
        if let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
            && parent_of(pid) == Some(parent)
            && alive(pid)
        {
            children.push(pid);
        }
    }
    children
}

#[tokio::test]
async fn a_dead_workers_grandchild_is_killed_and_the_worker_reaped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pids = dir.path().join("pids");
    let pids_arg = pids.display().to_string();
    let mut running = Running::start(&fixture_config(
        "exit_leaving_grandchild.py",
        &["--pids", &pids_arg],
    ));
    let report = running.crash_report().await;
    let text = std::fs::read_to_string(&pids).expect("the worker wrote its pids");
    let first: Vec<u32> = text
        .lines()
        .next()
        .expect("a line")
        .split_whitespace()
        .map(|pid| pid.parse().expect("a pid"))
        .collect();
    let (worker, grandchild) = (first[0], first[1]);
    assert_eq!(report.pid, worker);
    // The crash report goes out after the reap: no zombie is left.
    assert!(
        !std::path::Path::new(&format!("/proc/{worker}")).exists(),
        "worker {worker} was not reaped"
    );
    assert!(
        gone_within(grandchild, LIMIT).await,
        "grandchild {grandchild} outlived its worker"
    );
    running.stop().await;
}
