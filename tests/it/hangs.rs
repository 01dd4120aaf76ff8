//! Workers that stop answering: stopped processes, blocked event loops, overdue requests.

use std::time::Duration;

use mnemosyne::agent::JobError;
use mnemosyne::supervisor::DeathCause;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn a_sigstopped_worker_is_detected_as_hung_and_replaced() {
    let mut running = Running::start(&fast_config());
    let pid = running.ready().await.pid.expect("pid");
    kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).expect("SIGSTOP the worker");
    let report = running.crash_report().await;
    assert_eq!(report.pid, pid);
    assert_eq!(report.cause, DeathCause::Hang);
    assert!(report.detail.contains("heartbeats"), "{}", report.detail);
    let replacement = wait_state(running.executor(), "ready again", |s| {
        s.state.to_string() == "ready" && s.pid.is_some_and(|p| p != pid)
    })
    .await;
    assert_eq!(replacement.restarts, 1);
    assert!(!alive(pid));
    running.stop().await;
}

#[tokio::test]
async fn a_busy_loop_blocking_the_event_loop_is_detected_and_its_request_quarantined() {
    let running = Running::start(&fixture_config("misbehave.py", &[]));
    running.ready().await;
    let outcome = running.call("spin", json!({})).await;
    let Err(JobError::Quarantined { failures }) = outcome.result else {
        panic!("a request that always hangs its worker is quarantined: {outcome:?}");
    };
    assert_eq!(failures.len(), 3);
    assert!(
        failures.iter().all(|f| f.cause == DeathCause::Hang),
        "{failures:?}"
    );
    assert_eq!(outcome.deliveries, 3);
    // The agent itself recovers for the next request.
    let echoed = running.call("echo", json!({"still": "alive"})).await;
    assert_eq!(
        echoed.result.expect("echo after quarantine"),
        json!({"still": "alive"})
    );
    running.stop().await;
}

#[tokio::test]
async fn a_request_past_its_deadline_is_cancelled_and_redelivered_without_killing_the_worker() {
    let mut config = fast_config();
    // Generous, so a loaded machine cannot turn the worker's answer into a kill.
    config.supervisor.cancel_grace = Duration::from_secs(5);
    let running = Running::start(&config);
    let pid = running.ready().await.pid.expect("pid");
    let outcome = running
        .call_with_deadline("sleep", json!({"seconds": 30}), Duration::from_millis(200))
        .await;
    let Err(JobError::Quarantined { failures }) = outcome.result else {
        panic!("a request that always overruns is quarantined: {outcome:?}");
    };
    assert!(
        failures
            .iter()
            .all(|f| f.cause == DeathCause::Deadline && f.exit.is_none()),
        "{failures:?}"
    );
    let status = running.executor().status();
    assert_eq!(
        status.restarts, 0,
        "the worker answered the cancel, so it was not killed"
    );
    assert_eq!(status.pid, Some(pid));
    running.stop().await;
}

#[tokio::test]
async fn a_worker_ignoring_a_cancel_is_killed_at_the_deadline() {
    // Heartbeats would catch the spin too; a slow heartbeat leaves the deadline to act first.
    let mut config = fixture_config("misbehave.py", &[]);
    config.supervisor.heartbeat_interval = Duration::from_secs(60);
    let mut running = Running::start(&config);
    running.ready().await;
    let outcome = running
        .call_with_deadline("spin", json!({}), Duration::from_millis(200))
        .await;
    let Err(JobError::Quarantined { failures }) = outcome.result else {
        panic!("quarantined: {outcome:?}");
    };
    assert!(
        failures
            .iter()
            .all(|f| f.cause == DeathCause::Deadline && f.exit.is_some()),
        "{failures:?}"
    );
    let report = running.crash_report().await;
    assert_eq!(report.cause, DeathCause::Deadline);
    assert!(
        report.detail.contains("did not answer the cancel"),
        "{}",
        report.detail
    );
    running.stop().await;
}

#[tokio::test]
async fn a_worker_that_never_becomes_ready_is_killed_at_the_start_timeout() {
    let mut config = fixture_config("slow_start.py", &["--delay", "30"]);
    config.supervisor.start_timeout = Duration::from_millis(300);
    let mut running = Running::start(&config);
    let report = running.crash_report().await;
    assert_eq!(report.cause, DeathCause::StartTimeout);
    assert_eq!(report.next, "restart");
    assert!(report.next_retry.is_some());
    running.stop().await;
}

#[tokio::test]
async fn a_slow_starting_worker_within_the_timeout_becomes_ready() {
    let running = Running::start(&fixture_config("slow_start.py", &["--delay", "0.3"]));
    running.ready().await;
    assert_eq!(running.executor().status().restarts, 0);
    running.stop().await;
}
