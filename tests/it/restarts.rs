//! Crashes, backoff, crash loops, fatal configuration problems, restart policies.

use std::sync::Arc;
use std::time::Duration;

use mnemosyne::agent::JobError;
use mnemosyne::config::{RestartPolicy, Role};
use mnemosyne::process::{ExitStatus, LaunchFuture, LaunchSpec, Launcher, SpawnError};
use mnemosyne::supervisor::{DeathCause, EventKind, Supervisor};
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn a_crash_mid_request_is_reported_restarted_and_the_request_redelivered() {
    let mut running = Running::start(&fixture_config("misbehave.py", &[]));
    let first_pid = running.ready().await.pid.expect("pid");
    let outcome = running
        .call("crash_if_delivery_below", json!({"n": 2}))
        .await;
    assert_eq!(
        outcome.result.expect("second delivery succeeds"),
        json!({"delivery": 2})
    );
    assert_eq!(outcome.deliveries, 2);

    let report = running.crash_report().await;
    assert_eq!(report.pid, first_pid);
    assert_eq!(report.cause, DeathCause::Crash);
    assert_eq!(report.exit, ExitStatus::Code { code: 3 });
    assert_eq!(report.in_flight.len(), 1);
    assert_eq!(report.next, "restart");
    assert!(report.next_retry.is_some());
    assert!(
        report
            .stderr_tail
            .iter()
            .any(|line| line.contains("crashing below delivery")
                || line.contains("crashing on purpose")
                || line.contains("crash")),
        "stderr tail: {:?}",
        report.stderr_tail
    );
    running
        .event("backoff state", |e| matches!(&e.kind, EventKind::StateChanged { to, .. } if to.to_string() == "backoff"))
        .await;
    assert_eq!(running.executor().status().restarts, 1);
    running.stop().await;
}

#[tokio::test]
async fn a_request_that_always_kills_its_worker_is_quarantined_with_each_death() {
    let running = Running::start(&fixture_config("misbehave.py", &[]));
    running.ready().await;
    let outcome = running.call("crash", json!({"exit_code": 5})).await;
    let Err(JobError::Quarantined { failures }) = outcome.result else {
        panic!("quarantined: {outcome:?}");
    };
    assert_eq!(failures.len(), 3);
    for failure in &failures {
        assert_eq!(failure.cause, DeathCause::Crash);
        assert_eq!(failure.exit, Some(ExitStatus::Code { code: 5 }));
        assert!(
            failure
                .stderr_tail
                .iter()
                .any(|l| l.contains("crashing on purpose")),
            "{failure:?}"
        );
    }
    let echoed = running.call("echo", json!({"x": 1})).await;
    assert_eq!(
        echoed.result.expect("other work is unaffected"),
        json!({"x": 1})
    );
    running.stop().await;
}

#[tokio::test]
async fn a_crash_loop_goes_to_cooldown_with_a_visible_reason() {
    let mut config = fixture_config("exit_at_start.py", &["--code", "1"]);
    config.supervisor.max_restarts_in_window = 5;
    let running = Running::start(&config);
    let status = wait_state(running.executor(), "cooldown", |s| {
        s.state.to_string() == "cooldown"
    })
    .await;
    // Five restarts after the first start, then the sixth failure trips the breaker.
    assert_eq!(status.restarts, 5);
    let reason = status.reason.expect("cooldown has a reason");
    assert!(reason.contains("crash loop: 6 failures"), "{reason}");
    assert!(
        status.next_retry.is_some(),
        "cooldown shows when it retries"
    );
    // Cooling down means no tight loop: nothing restarts within the (one hour) retry period.
    let mut watch = running.executor().watch();
    watch.borrow_and_update();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), watch.changed())
            .await
            .is_err(),
        "an agent in cooldown changed state again at once"
    );
    // An operator's restart brings it out at once (it will crash again, which is fine).
    running
        .executor()
        .restart(false)
        .await
        .expect("restart command answered");
    let after = running.executor().status();
    assert_eq!(after.restarts, 6);
    running.stop().await;
}

#[tokio::test]
async fn a_worker_reporting_a_fatal_configuration_problem_fails_and_is_not_restarted() {
    let mut running = Running::start(&fixture_config("fatal_config.py", &[]));
    let report = running.crash_report().await;
    assert_eq!(report.cause, DeathCause::Fatal);
    assert_eq!(report.next, "fail");
    let status = wait_state(running.executor(), "failed", |s| {
        s.state.to_string() == "failed"
    })
    .await;
    assert!(
        status
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("fixture: required setting missing"),
        "{status:?}"
    );
    assert_eq!(status.restarts, 0);
    running.stop().await;
}

#[tokio::test]
async fn exit_code_78_means_a_configuration_problem() {
    let running = Running::start(&fixture_config("exit_at_start.py", &["--code", "78"]));
    let status = wait_state(running.executor(), "failed", |s| {
        s.state.to_string() == "failed"
    })
    .await;
    assert!(
        status.reason.as_deref().unwrap_or("").contains("code 78"),
        "{status:?}"
    );
    assert_eq!(status.restarts, 0);
    running.stop().await;
}

#[tokio::test]
async fn a_missing_interpreter_fails_the_agent_with_its_path() {
    let mut config = fast_config();
    config
        .agents
        .get_mut(&Role::Executor)
        .expect("executor")
        .python = Some("/nonexistent/python3".into());
    let running = Running::start(&config);
    let status = wait_state(running.executor(), "failed", |s| {
        s.state.to_string() == "failed"
    })
    .await;
    assert!(
        status
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("/nonexistent/python3"),
        "{status:?}"
    );
    running.stop().await;
}

#[tokio::test]
async fn restart_policies_decide_what_happens_after_a_clean_exit() {
    for (policy, expected) in [
        (RestartPolicy::Transient, "stopped"),
        (RestartPolicy::Temporary, "stopped"),
    ] {
        let mut config = fixture_config("exit_at_start.py", &["--code", "0"]);
        config
            .agents
            .get_mut(&Role::Executor)
            .expect("executor")
            .restart = policy;
        let running = Running::start(&config);
        let status = wait_state(running.executor(), expected, |s| {
            s.state.to_string() == expected
        })
        .await;
        assert_eq!(status.restarts, 0, "{policy:?}");
        running.stop().await;
    }
    let mut config = fixture_config("exit_at_start.py", &["--code", "0"]);
    config
        .agents
        .get_mut(&Role::Executor)
        .expect("executor")
        .restart = RestartPolicy::Permanent;
    let running = Running::start(&config);
    wait_state(running.executor(), "restarted", |s| s.restarts >= 1).await;
    running.stop().await;
}

#[tokio::test]
async fn stop_keeps_an_agent_down_until_start() {
    let running = Running::start(&fast_config());
    let pid = running.ready().await.pid.expect("pid");
    running.executor().stop().await.expect("stop answered");
    assert_eq!(running.executor().status().state.to_string(), "stopped");
    assert!(gone_within(pid, LIMIT).await);
    // A job for the role waits for a worker instead of failing.
    let request = mnemosyne::agent::JobRequest {
        id: "waits".into(),
        method: "echo".into(),
        params: json!({"waited": true}),
        deadline: Duration::from_secs(30),
    };
    let mut outcome = running.supervisor.submit(Role::Executor, request);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut outcome)
            .await
            .is_err(),
        "stopped agent took work"
    );
    running.executor().start().await.expect("start answered");
    let outcome = tokio::time::timeout(LIMIT, outcome)
        .await
        .expect("answered")
        .expect("outcome");
    assert_eq!(outcome.result.expect("echo"), json!({"waited": true}));
    running.stop().await;
}

/// A launcher whose every launch fails, to observe the restart schedule without real time.
struct NoInterpreter;

impl Launcher for NoInterpreter {
    fn launch(&self, spec: LaunchSpec) -> LaunchFuture<'_> {
        Box::pin(async move {
            Err(SpawnError::Io {
                program: spec.program,
                source: std::io::Error::other("resource busy"),
            })
        })
    }
}

#[tokio::test(start_paused = true)]
async fn the_first_restart_is_immediate_then_backoff_doubles_up_to_the_cap_in_virtual_time() {
    let mut config = fast_config();
    config.supervisor.backoff_base = Duration::from_millis(500);
    config.supervisor.backoff_max = Duration::from_secs(4);
    config.supervisor.max_restarts_in_window = 100;
    config.supervisor.restart_window = Duration::from_secs(60);
    let mut options = options();
    options.launcher = Some(Arc::new(NoInterpreter));
    options.warden_program = None;
    let supervisor = Supervisor::start(&config, options).expect("starts");
    let mut events = supervisor.events().subscribe();
    let mut entered_backoff = Vec::new();
    while entered_backoff.len() < 7 {
        // Time is paused, so this bound is virtual: far above the seven backoffs awaited.
        let event = tokio::time::timeout(Duration::from_secs(600), events.recv())
            .await
            .expect("backoffs within the bound")
            .expect("events flow");
        if let EventKind::StateChanged { to, .. } = &event.kind
            && to.to_string() == "backoff"
        {
            entered_backoff.push(tokio::time::Instant::now());
        }
    }
    let gaps: Vec<Duration> = entered_backoff.windows(2).map(|w| w[1] - w[0]).collect();
    // The first restart is immediate; each later gap is one backoff delay, spread over the
    // upper half of 500 ms × 2^n, capped at 4 s.
    let full = [0u64, 500, 1000, 2000, 4000, 4000];
    for (gap, full_ms) in gaps.iter().zip(full) {
        let full = Duration::from_millis(full_ms);
        assert!(
            *gap >= full / 2 && *gap <= full,
            "gap {gap:?} outside [{:?}, {full:?}]",
            full / 2
        );
    }
    supervisor.shutdown().await;
}
