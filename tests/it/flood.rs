//! Workers that flood their stdout cannot starve heartbeats, the stop escalation, the kill
//! switch, or the noticing of their own exit; noise they make is reported merged.

use std::time::Duration;

use mnemosyne::process::ExitStatus;
use mnemosyne::supervisor::{DeathCause, EventKind};

use crate::common::*;

/// Long enough never to fire during a test.
const NEVER: Duration = Duration::from_secs(3600);

fn state_is(name: &'static str) -> impl FnMut(&mnemosyne::agent::AgentStatus) -> bool {
    move |status| status.state.to_string() == name
}

#[tokio::test]
async fn a_flooding_worker_that_answers_no_ping_is_killed_as_hung() {
    let mut running = Running::start(&fixture_config("flood.py", &[]));
    let report = running.crash_report().await;
    assert_eq!(report.cause, DeathCause::Hang, "{report:?}");
    assert_eq!(report.exit, ExitStatus::Signal { signal: 9 });
    assert!(!alive(report.pid));
    running.stop().await;
}

#[tokio::test]
async fn stopping_a_flooding_worker_that_ignores_sigterm_escalates_to_sigkill() {
    let mut config = fixture_config("flood.py", &["--ignore-sigterm"]);
    config.supervisor.heartbeat_interval = NEVER;
    config.supervisor.stop_grace = Duration::from_millis(200);
    config.supervisor.term_grace = Duration::from_millis(300);
    let running = Running::start(&config);
    let pid = running.ready().await.pid.expect("pid");
    let agent = running.executor().clone();
    let started = tokio::time::Instant::now();
    running.stop().await;
    let elapsed = started.elapsed();
    let last_exit = agent
        .status()
        .last_exit
        .expect("the stop recorded the exit");
    assert_eq!(last_exit.status, ExitStatus::Signal { signal: 9 });
    assert!(!alive(pid));
    // shutdown, stop grace, stdin closed, 1 s, SIGTERM, term grace, SIGKILL: no step skipped.
    assert!(
        elapsed >= Duration::from_millis(1500),
        "the escalation took only {elapsed:?}"
    );
}

#[tokio::test]
async fn the_kill_switch_kills_a_flooding_worker_at_once() {
    let mut config = fixture_config("flood.py", &["--ignore-sigterm"]);
    config.supervisor.heartbeat_interval = NEVER;
    config.supervisor.stop_grace = NEVER;
    config.supervisor.term_grace = NEVER;
    let running = Running::start(&config);
    let pid = running.ready().await.pid.expect("pid");
    let agent = running.executor().clone();
    let kill_switch = running.supervisor.kill_switch();
    let stop = tokio::spawn(running.stop());
    wait_state(&agent, "stopping", state_is("stopping")).await;
    kill_switch.cancel();
    // The graces are an hour; only the kill switch can end this within the limit.
    tokio::time::timeout(LIMIT, stop)
        .await
        .expect("the kill switch ends the stop within the limit")
        .expect("the stop task finishes");
    let last_exit = agent
        .status()
        .last_exit
        .expect("the stop recorded the exit");
    assert_eq!(last_exit.status, ExitStatus::Signal { signal: 9 });
    assert!(!alive(pid));
}

#[tokio::test]
async fn a_worker_that_dies_while_its_child_floods_the_pipe_is_noticed() {
    let mut config = fixture_config("flood.py", &["--crash-leaving-flooder"]);
    config.supervisor.heartbeat_interval = NEVER;
    let mut running = Running::start(&config);
    let report = running.crash_report().await;
    assert_eq!(report.exit, ExitStatus::Code { code: 3 }, "{report:?}");
    assert_eq!(report.cause, DeathCause::Crash);
    running.stop().await;
}

#[tokio::test]
async fn a_burst_of_stray_lines_makes_few_merged_noise_events() {
    const LINES: u64 = 3000;
    let mut running = Running::start(&fixture_config(
        "flood.py",
        &["--lines", "stray", "--count", &LINES.to_string()],
    ));
    let started = running
        .event("worker_started", |e| {
            matches!(e.kind, EventKind::WorkerStarted { .. })
        })
        .await
        .seq;
    wait_state(running.executor(), "all noise counted", |s| {
        s.protocol_noise == LINES
    })
    .await;
    let mut reported = 0;
    let mut events = 0;
    while reported < LINES {
        let event = running
            .event("protocol_noise", |e| {
                matches!(e.kind, EventKind::ProtocolNoise { .. })
            })
            .await;
        let EventKind::ProtocolNoise { kind, count, .. } = &event.kind else {
            unreachable!()
        };
        assert_eq!(kind, "stray_line");
        reported += count;
        events += 1;
    }
    assert_eq!(reported, LINES, "every line counted exactly once");
    // At most one a second: the burst takes seconds, not thousands of events.
    assert!(events <= 20, "{events} noise events for {LINES} lines");
    let (history, _) = running.supervisor.events().history_and_subscribe();
    assert!(
        history.iter().any(|e| e.seq == started),
        "the worker_started event is still in the history"
    );
    running.stop().await;
}
