//! Workers that break the wire: stray output, oversize lines, bad JSON, wrong versions.

use mnemosyne::agent::JobError;
use mnemosyne::supervisor::DeathCause;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn a_stray_line_on_stdout_is_counted_and_not_fatal() {
    let running = Running::start(&fixture_config("misbehave.py", &[]));
    running.ready().await;
    let outcome = running.call("garbage", json!({})).await;
    assert_eq!(
        outcome.result.expect("garbage call succeeds"),
        json!({"ok": true})
    );
    let status = running.executor().status();
    assert_eq!(status.protocol_noise, 1);
    assert_eq!(status.restarts, 0);
    running.stop().await;
}

#[tokio::test]
async fn a_banner_printed_before_the_handshake_is_skipped() {
    let running = Running::start(&fixture_config("noisy_start.py", &[]));
    let status = running.ready().await;
    assert!(status.protocol_noise >= 1, "{status:?}");
    let outcome = running.call("echo", json!({"ok": 1})).await;
    assert_eq!(outcome.result.expect("echo"), json!({"ok": 1}));
    running.stop().await;
}

#[tokio::test]
async fn an_oversize_line_is_a_protocol_violation() {
    let mut config = fixture_config("misbehave.py", &[]);
    config.supervisor.max_line_bytes = 64 * 1024;
    let mut running = Running::start(&config);
    running.ready().await;
    let outcome = running.call("oversize", json!({})).await;
    let Err(JobError::Quarantined { failures }) = outcome.result else {
        panic!("quarantined: {outcome:?}");
    };
    assert!(
        failures.iter().all(|f| f.cause == DeathCause::Protocol),
        "{failures:?}"
    );
    let report = running.crash_report().await;
    assert!(
        report
            .detail
            .contains("longer than the limit of 65536 bytes"),
        "{}",
        report.detail
    );
    running.stop().await;
}

#[tokio::test]
async fn an_unparseable_json_line_is_a_protocol_violation() {
    let mut running = Running::start(&fixture_config("misbehave.py", &[]));
    running.ready().await;
    // The worker writes its answer right after the broken line, so the answer may arrive
    // before the kill lands and still count; either way the job ends and the worker is replaced.
    let outcome = running.call("broken_json", json!({})).await;
    assert!(
        matches!(outcome.result, Ok(_) | Err(JobError::Quarantined { .. })),
        "{outcome:?}"
    );
    let report = running.crash_report().await;
    assert_eq!(report.cause, DeathCause::Protocol);
    assert!(
        report.detail.contains("not a valid JSON object"),
        "{}",
        report.detail
    );
    running.stop().await;
}

#[tokio::test]
async fn a_protocol_version_mismatch_fails_the_agent_naming_both_versions() {
    let running = Running::start(&fixture_config("wrong_protocol.py", &[]));
    let status = wait_state(running.executor(), "failed", |s| {
        s.state.to_string() == "failed"
    })
    .await;
    let reason = status.reason.expect("failed has a reason");
    assert!(
        reason.contains("protocol version mismatch: supervisor speaks 1, worker speaks 999"),
        "{reason}"
    );
    assert_eq!(status.restarts, 0);
    running.stop().await;
}

#[tokio::test]
async fn stray_lines_of_any_bytes_and_unknown_types_are_counted_and_not_fatal() {
    let running = Running::start(&fixture_config("misbehave.py", &[]));
    running.ready().await;
    let counted = [
        "invalid_utf8_stray",
        "nul_stray",
        "deep_nesting_stray",
        "unknown_type",
    ];
    for kind in counted {
        let outcome = running.call("bad_line", json!({"kind": kind})).await;
        assert_eq!(
            outcome.result.expect("the call succeeds"),
            json!({"ok": true}),
            "{kind}"
        );
    }
    // A response for a request the worker does not hold is counted and ignored, and the
    // worker stays.
    let noise_before = running.executor().status().protocol_noise;
    let outcome = running
        .call("bad_line", json!({"kind": "unknown_id_response"}))
        .await;
    assert_eq!(
        outcome.result.expect("the call succeeds"),
        json!({"ok": true})
    );
    let status = running.executor().status();
    assert!(
        noise_before >= counted.len() as u64,
        "{counted:?} each counted: {status:?}"
    );
    assert_eq!(status.protocol_noise, noise_before + 1, "{status:?}");
    assert_eq!(status.restarts, 0, "{status:?}");
    assert_eq!(outcome.deliveries, 1);
    running.stop().await;
}

#[tokio::test]
async fn every_kind_of_broken_line_is_a_violation_then_a_restart_and_a_redelivery() {
    let mut config = fixture_config("misbehave.py", &[]);
    config.supervisor.max_restarts_in_window = 100;
    let mut running = Running::start(&config);
    let cases = [
        (
            "invalid_utf8_object",
            "invalid `log` message: invalid unicode code point",
        ),
        (
            "nul_in_object",
            "not a valid JSON object: control character",
        ),
        ("deep_nesting_object", "recursion limit exceeded"),
        ("nan_response", "not a valid JSON object: expected value"),
        ("huge_number", "number out of range"),
        (
            "missing_field",
            "invalid `pong` message: missing field `nonce`",
        ),
        (
            "wrong_type",
            "invalid `log` message: invalid type: integer `42`",
        ),
        ("no_type", "message has no string field `type`"),
        ("second_hello", "a second `hello`"),
    ];
    let mut mismatches = Vec::new();
    for (kind, expected) in cases {
        running.ready().await;
        let outcome = running
            .call("bad_line", json!({"kind": kind, "once": true}))
            .await;
        assert_eq!(
            outcome.result.expect("the redelivery succeeds"),
            json!({"delivery": 2}),
            "{kind}"
        );
        let report = running.crash_report().await;
        assert_eq!(report.cause, DeathCause::Protocol, "{kind}: {report:?}");
        if !report.detail.contains(expected) {
            mismatches.push(format!(
                "{kind}: expected `{expected}` in `{}`",
                report.detail
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    let status = running.ready().await;
    assert_eq!(status.restarts, cases.len() as u32, "{status:?}");
    running.stop().await;
}
