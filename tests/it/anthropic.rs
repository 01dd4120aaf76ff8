//! `supervise --provider anthropic` end to end: real workers with the official SDK, talking
//! to the fake Messages API on loopback.

use std::path::Path;
use std::time::Duration;

use mnemosyne::cli::supervise::{AnthropicAccess, RunOutcome};
use mnemosyne::config::{Config, ProviderChoice, Role};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::common::*;
use crate::fake_api::FakeApi;
use crate::plans::pipeline_config;

const KEY: &str = "sk-ant-test-key-for-the-fake-api";
/// Only the reviewer's requests contain this, so scripted verdicts reach the reviewer alone.
const REVIEWER: &str = "You are the reviewer agent of Mnemosyne";

fn plan(id: &str, max_review_attempts: u32) -> Value {
    json!({
        "id": id,
        "prompt": format!("Build a command line tool using Rust that must parse the following log format \
                           because operators need to search all access logs within one second ({id})"),
        "tech_stack": "Rust",
        "success_criteria": "searches a 1 GB log in under a second",
        "options": {"max_review_attempts": max_review_attempts},
    })
}

fn config() -> Config {
    let mut config = pipeline_config();
    // Importing the SDK takes seconds, and its first call can hold the event loop for a moment
    // on a loaded machine: timings here are the realistic ones, not the fault-hunting ones.
    config.supervisor.start_timeout = Duration::from_secs(60);
    config.supervisor.heartbeat_interval = Duration::from_secs(1);
    config.supervisor.heartbeat_misses = 5;
    config.plans.provider_retry_base = Duration::from_millis(10);
    for role in Role::ALL {
        let agent = config.agents.get_mut(&role).expect("role");
        // The runner, not the SDK, retries here, so the test can count what reached the API.
        agent
            .env
            .insert("MNEMOSYNE_SDK_MAX_RETRIES".into(), "0".into());
    }
    config
}

async fn supervise(api: &FakeApi, state_dir: &Path, plans: &[Value]) -> (RunOutcome, Vec<Value>) {
    let input: String = plans.iter().map(|plan| plan.to_string() + "\n").collect();
    let mut args = supervise_args(config(), state_dir);
    args.provider = Some(ProviderChoice::Anthropic);
    args.anthropic = AnthropicAccess {
        api_key: Some(SecretString::from(KEY)),
        base_url: Some(api.url.clone()),
    };
    supervise_in_process(args, input, LIMIT * 6).await
}

fn bodies_text(requests: &[Value]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r["path"] == "/v1/messages")
        .map(|r| r["body"].to_string())
        .collect()
}

#[tokio::test]
async fn a_plan_goes_through_all_four_roles_and_carries_the_model_answer_and_usage() {
    let api = FakeApi::start(KEY);
    api.script(&[
        json!({"kind": "text", "text": "FAKE-MODEL-ANSWER: the tool is built", "usage": {"input_tokens": 40, "output_tokens": 9}}),
        json!({"kind": "review", "passed": true, "match": REVIEWER}),
    ]);
    let state = tempfile::tempdir().expect("state dir");
    let (outcome, results) = supervise(&api, state.path(), &[plan("alpha", 3)]).await;
    assert_eq!(outcome, RunOutcome::AllSucceeded, "{results:#?}");
    let result = &results[0];
    assert_eq!(result["status"], "succeeded");
    assert_eq!(result["provider"], "anthropic");
    assert_eq!(result["attempts"], 1);
    assert!(
        result["output"]
            .as_str()
            .expect("output")
            .contains("FAKE-MODEL-ANSWER"),
        "{result:#}"
    );
    assert!(
        result["usage"]["input_tokens"].as_u64().expect("usage") >= 40,
        "{result:#}"
    );
    assert!(
        result["usage"]["output_tokens"].as_u64().expect("usage") >= 9,
        "{result:#}"
    );
    let requests = api.requests();
    let bodies = bodies_text(&requests);
    assert!(
        bodies
            .iter()
            .any(|b| b.contains("(alpha)") && !b.contains(REVIEWER)),
        "the executor sent the task"
    );
    assert!(
        bodies.iter().any(|b| b.contains(REVIEWER)),
        "the reviewer asked the model"
    );
    assert!(
        requests.iter().all(|r| r["auth"].is_string()),
        "every request was authenticated"
    );
    assert!(
        !requests.iter().any(|r| r.to_string().contains(KEY)),
        "the recorded requests never show the key"
    );
}

#[tokio::test]
async fn a_review_that_fails_twice_then_passes_succeeds_on_the_third_attempt_with_feedback() {
    let api = FakeApi::start(KEY);
    api.script(&[
        json!({"kind": "review", "passed": false, "issues": ["FIRST-ISSUE: no tests"], "match": REVIEWER}),
        json!({"kind": "review", "passed": false, "issues": ["SECOND-ISSUE: no docs"], "match": REVIEWER}),
        json!({"kind": "review", "passed": true, "match": REVIEWER}),
    ]);
    let state = tempfile::tempdir().expect("state dir");
    let (_, results) = supervise(&api, state.path(), &[plan("beta", 3)]).await;
    let result = &results[0];
    assert_eq!(result["status"], "succeeded", "{result:#}");
    assert_eq!(result["attempts"], 3);
    // The executor's later attempts carry the reviewer's feedback to the model.
    let bodies = bodies_text(&api.requests());
    let executor_bodies: Vec<&String> = bodies.iter().filter(|b| !b.contains(REVIEWER)).collect();
    assert!(
        executor_bodies.iter().any(|b| b.contains("FIRST-ISSUE")),
        "feedback of review 1 reached the executor"
    );
    assert!(
        executor_bodies.iter().any(|b| b.contains("SECOND-ISSUE")),
        "feedback of review 2 reached the executor"
    );
}

#[tokio::test]
async fn a_review_that_never_passes_fails_the_plan_after_max_review_attempts() {
    let api = FakeApi::start(KEY);
    api.script(&[json!({"kind": "review", "passed": false, "issues": ["never good enough"], "match": REVIEWER, "repeat": true})]);
    let state = tempfile::tempdir().expect("state dir");
    let (outcome, results) = supervise(&api, state.path(), &[plan("gamma", 2)]).await;
    assert_eq!(outcome, RunOutcome::SomeFailed);
    let result = &results[0];
    assert_eq!(result["status"], "failed", "{result:#}");
    assert_eq!(result["attempts"], 2);
    assert!(
        result["errors"]
            .to_string()
            .contains("review failed after 2 attempts"),
        "{result:#}"
    );
}

#[tokio::test]
async fn an_overloaded_api_is_retried_by_the_runner_and_never_counted_as_a_worker_death() {
    let api = FakeApi::start(KEY);
    api.script(&[
        json!({"kind": "status", "status": 529, "error_type": "overloaded_error", "times": 2}),
        json!({"kind": "review", "passed": true, "match": REVIEWER}),
    ]);
    let state = tempfile::tempdir().expect("state dir");
    let (outcome, results) = supervise(&api, state.path(), &[plan("delta", 3)]).await;
    assert_eq!(outcome, RunOutcome::AllSucceeded, "{results:#?}");
    assert_eq!(
        results[0]["deliveries"], 1,
        "no worker was lost: {:#}",
        results[0]
    );
    let tries: Vec<u64> = api
        .requests()
        .iter()
        .filter(|r| r["path"] == "/v1/messages")
        .map(|r| r["status"].as_u64().unwrap_or(200))
        .collect();
    assert!(
        tries.len() >= 4,
        "two refused tries, then execute and review: {tries:?}"
    );
}

#[tokio::test]
async fn a_model_call_filling_most_of_the_context_raises_one_pressure_event() {
    let api = FakeApi::start(KEY);
    // 160 000 of a 200 000-token window: past the 75 % "preserve" line, short of 90 %.
    api.script(&[
        json!({"kind": "text", "text": "a long answer", "usage": {"input_tokens": 160000, "output_tokens": 100}}),
        json!({"kind": "review", "passed": true, "match": REVIEWER}),
    ]);
    let state = tempfile::tempdir().expect("state dir");
    let mut options = options();
    options.base_env.set("MNEMOSYNE_PROVIDER", "anthropic");
    options
        .base_env
        .set_secret("ANTHROPIC_API_KEY", SecretString::from(KEY));
    options.base_env.set("ANTHROPIC_BASE_URL", &api.url);
    let pipeline = crate::plans::Pipeline::start_with(&config(), state.path(), options);
    let (_, mut events) = pipeline.supervisor.events().history_and_subscribe();
    pipeline.send(&plan("epsilon", 3));
    let (outcome, results) = pipeline.finish().await;
    assert!(outcome.all_succeeded, "{results:#?}");
    let mut pressure = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let mnemosyne::supervisor::EventKind::ContextPressure {
            plan,
            level,
            utilisation,
            ..
        } = &event.kind
        {
            pressure.push((plan.clone(), level.clone(), *utilisation));
        }
    }
    assert_eq!(pressure.len(), 1, "one crossing, one event: {pressure:?}");
    assert_eq!(pressure[0].0, "epsilon");
    assert_eq!(pressure[0].1, "preserve");
    assert!(pressure[0].2 > 0.75 && pressure[0].2 < 0.9, "{pressure:?}");
}

#[tokio::test]
async fn the_same_plans_run_offline_with_no_key_and_every_result_says_offline() {
    let state = tempfile::tempdir().expect("state dir");
    let plans: String = ["alpha", "beta", "gamma"]
        .iter()
        .map(|id| plan(id, 3).to_string() + "\n")
        .collect();
    let mut args = supervise_args(config(), state.path());
    args.provider = Some(ProviderChoice::Auto);
    let (outcome, results) = supervise_in_process(args, plans, LIMIT * 6).await;
    assert_eq!(outcome, RunOutcome::AllSucceeded);
    let text = format!("{results:#?}");
    assert_eq!(results.len(), 3);
    assert!(
        results
            .iter()
            .all(|r| r["provider"] == "offline" && r["status"] == "succeeded"),
        "{text}"
    );
}
