//! A healthy worker's life: handshake, requests, noise on stdout, a clean stop.

use std::time::Duration;

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn a_real_worker_answers_echo_and_its_pid_is_the_python_process() {
    let running = Running::start(&fast_config());
    let status = running.ready().await;
    let pid = status.pid.expect("a ready agent has a pid");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("worker process exists");
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        cmdline.contains("mnemosyne.orchestration.agents --role executor"),
        "{cmdline}"
    );

    let outcome = running.call("echo", json!({"text": "hello", "n": 3})).await;
    assert_eq!(
        outcome.result.expect("echo succeeds"),
        json!({"text": "hello", "n": 3})
    );
    assert_eq!(outcome.deliveries, 1);
    running.stop().await;
    assert!(
        gone_within(pid, LIMIT).await,
        "worker {pid} outlived the stop"
    );
}

#[tokio::test]
async fn print_and_os_system_in_worker_code_leave_the_protocol_intact() {
    let running = Running::start(&fast_config());
    running.ready().await;
    let outcome = running.call("stdout_noise", json!({})).await;
    assert_eq!(
        outcome.result.expect("noise call succeeds"),
        json!({"ok": true})
    );
    let echoed = running.call("echo", json!({"after": "noise"})).await;
    assert_eq!(
        echoed.result.expect("echo still works"),
        json!({"after": "noise"})
    );
    let status = running.executor().status();
    assert_eq!(
        status.protocol_noise, 0,
        "nothing but protocol reached stdout"
    );
    assert_eq!(status.restarts, 0);
    // The noise went to stderr, where the supervisor captured it.
    let tail = running.executor().stderr_tail(50);
    assert!(
        tail.iter().any(|line| line.trim() == "hi"),
        "os.system output not on stderr: {tail:?}"
    );
    running.stop().await;
}

#[tokio::test]
async fn a_worker_busy_with_a_long_request_but_answering_pings_is_not_killed() {
    let running = Running::start(&fast_config());
    running.ready().await;
    // 1.5 s is fifteen heartbeat intervals: a worker that did not answer would be killed 5 times.
    let outcome = running.call("sleep", json!({"seconds": 1.5})).await;
    assert_eq!(
        outcome.result.expect("sleep finishes"),
        json!({"slept": 1.5})
    );
    assert_eq!(outcome.deliveries, 1);
    assert_eq!(running.executor().status().restarts, 0);
    running.stop().await;
}

#[tokio::test]
async fn worker_stderr_is_kept_per_agent_with_restart_markers() {
    let running = Running::start(&fixture_config("misbehave.py", &[]));
    let pid = running.ready().await.pid.expect("pid");
    running
        .call("stderr", json!({"text": "a line for the tail"}))
        .await
        .result
        .expect("stderr call succeeds");
    let tail = running.executor().stderr_tail(200);
    assert!(
        tail.iter()
            .any(|l| l == &format!("--- worker started (pid {pid}) ---")),
        "{tail:?}"
    );
    assert!(tail.iter().any(|l| l == "a line for the tail"), "{tail:?}");
    running.stop().await;
}

#[tokio::test]
async fn stopping_lets_an_in_flight_request_finish_within_the_grace() {
    let mut config = fast_config();
    config.supervisor.stop_grace = Duration::from_secs(10);
    let running = Running::start(&config);
    running.ready().await;
    let request = mnemosyne::agent::JobRequest {
        id: "long".into(),
        method: "sleep".into(),
        params: json!({"seconds": 0.5}),
        deadline: Duration::from_secs(30),
    };
    let outcome = running
        .supervisor
        .submit(mnemosyne::config::Role::Executor, request);
    wait_state(running.executor(), "busy", |s| s.in_flight == 1).await;
    running.stop().await;
    let outcome = outcome.await.expect("answered");
    assert_eq!(
        outcome.result.expect("finished during the grace"),
        json!({"slept": 0.5})
    );
}
