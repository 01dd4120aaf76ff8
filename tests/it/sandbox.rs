//! The executor's tools through the real supervisor: commands the model asks for run in a
//! sandbox that cannot reach the key or the state directory, and the `[executor]` settings
//! (workspace, skill directories, tool-turn limit) reach the workers.

use std::path::Path;
use std::time::Duration;

use mnemosyne::cli::supervise::{AnthropicAccess, RunOutcome};
use mnemosyne::config::{Config, ProviderChoice, Role};
use mnemosyne::process::sandbox::{SandboxProbe, probe_sandbox};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::common::*;
use crate::fake_api::FakeApi;
use crate::plans::pipeline_config;

/// The key the fake API accepts; it must appear in nothing a command returned.
const CANARY: &str = "sk-ant-CANARY-5d1f0c9e-the-sandbox-must-keep-this-in";
/// Only the executor's requests contain this, so scripted tool calls reach the executor alone.
const EXECUTOR: &str = "You are the executor agent of Mnemosyne";
const REVIEWER: &str = "You are the reviewer agent of Mnemosyne";

fn config() -> Config {
    let mut config = pipeline_config();
    config.supervisor.start_timeout = Duration::from_secs(60);
    config.supervisor.heartbeat_interval = Duration::from_secs(1);
    config.supervisor.heartbeat_misses = 5;
    for role in Role::ALL {
        let agent = config.agents.get_mut(&role).expect("role");
        agent
            .env
            .insert("MNEMOSYNE_SDK_MAX_RETRIES".into(), "0".into());
    }
    config
}

fn plan(id: &str) -> Value {
    json!({
        "id": id,
        "prompt": format!("Build a command line tool using Rust that must search access logs \
                           because operators need answers within one second ({id})"),
        "tech_stack": "Rust",
        "success_criteria": "finds a line in a 1 GB log in under a second",
        "options": {"max_review_attempts": 1},
    })
}

async fn supervise(
    api: &FakeApi,
    config: Config,
    state_dir: &Path,
    plan: Value,
) -> (RunOutcome, Vec<Value>) {
    let mut args = supervise_args(config, state_dir);
    args.provider = Some(ProviderChoice::Anthropic);
    args.anthropic = AnthropicAccess {
        api_key: Some(SecretString::from(CANARY)),
        base_url: Some(api.url.clone()),
    };
    supervise_in_process(args, format!("{plan}\n"), LIMIT * 6).await
}

fn tool_call(name: &str, input: Value) -> Value {
    json!({"kind": "tool_use", "name": name, "input": input, "match": EXECUTOR})
}

fn executor_bodies(requests: &[Value]) -> Vec<Value> {
    requests
        .iter()
        .filter(|r| r["path"] == "/v1/messages" && r["body"].to_string().contains(EXECUTOR))
        .map(|r| r["body"].clone())
        .collect()
}

/// The text of every tool result in a request body.
fn tool_results(body: &Value) -> Vec<String> {
    body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|message| message["content"].as_array())
        .flatten()
        .filter(|block| block["type"] == "tool_result")
        .map(|block| block["content"].to_string())
        .collect()
}

#[tokio::test]
async fn the_models_commands_never_yield_the_key_or_the_state_directory() {
    if let SandboxProbe::Unavailable { reason } =
        probe_sandbox(std::env::var_os("PATH").as_deref()).await
    {
        eprintln!("skipped: no command sandbox on this machine: {reason}");
        return;
    }
    let state = tempfile::tempdir().expect("state dir");
    // The workspace is <state>/workspaces/<plan>, so the state directory is two levels up
    // from where the commands start; they must not see it.
    std::fs::write(
        state.path().join("planted-secret"),
        format!("ANTHROPIC_API_KEY={CANARY}\n"),
    )
    .expect("plant a secret in the state directory");
    let commands = [
        "cat /proc/$PPID/environ".to_owned(),
        "cat /proc/*/environ".to_owned(),
        "for p in /proc/[0-9]*; do cat $p/environ $p/cmdline; echo; done".to_owned(),
        format!(
            "ls -la {0}; cat {0}/*; cat ../../planted-secret",
            state.path().display()
        ),
        "env; ls -la $HOME/.config/mnemosyne ${XDG_CONFIG_HOME:-$HOME/.config}".to_owned(),
        "echo reached > proof.txt; pwd".to_owned(),
    ];
    let api = FakeApi::start(CANARY);
    let mut script: Vec<Value> = commands
        .iter()
        .map(|command| tool_call("run_command", json!({"command": command})))
        .collect();
    script.push(json!({"kind": "text", "text": "DONE-LOOKING", "match": EXECUTOR}));
    script.push(json!({"kind": "review", "passed": true, "match": REVIEWER}));
    api.script(&script);

    let (outcome, results) = supervise(&api, config(), state.path(), plan("leak")).await;
    assert_eq!(outcome, RunOutcome::AllSucceeded, "{results:#?}");

    let requests = api.requests();
    let bodies = executor_bodies(&requests);
    let last = bodies.last().expect("the executor asked the model");
    let answered = tool_results(last);
    assert_eq!(answered.len(), commands.len(), "{answered:#?}");
    assert!(
        answered.iter().all(|text| text.contains("exit code:")),
        "every command ran, none was refused: {answered:#?}"
    );
    // The commands ran in the workspace under the state directory, which they could write.
    let proof = state.path().join("workspaces/leak/proof.txt");
    assert_eq!(
        std::fs::read_to_string(&proof).expect("the command wrote its workspace"),
        "reached\n"
    );
    let everything = serde_json::to_string(&requests).expect("requests serialise")
        + &serde_json::to_string(&results).expect("results serialise");
    assert!(
        !everything.contains(CANARY),
        "a command's output carried the key"
    );
}

#[tokio::test]
async fn the_executor_table_sets_the_workspace_the_skills_and_the_turn_limit_of_workers() {
    let state = tempfile::tempdir().expect("state dir");
    let elsewhere = tempfile::tempdir().expect("workspace and skills");
    let workspaces = elsewhere.path().join("workspaces");
    let skills = elsewhere.path().join("skills");
    std::fs::create_dir(&skills).expect("skills dir");
    std::fs::write(
        skills.join("rust-log-search.md"),
        "# Rust access log search\n\nSKILL-MARKER-7731: search access logs in Rust with memchr.\n",
    )
    .expect("write a skill");
    let mut config = config();
    config.executor.workspace_dir = Some(workspaces.clone());
    config.executor.skill_dirs = vec![skills];
    config.executor.max_tool_turns = 2;

    let api = FakeApi::start(CANARY);
    api.script(&[
        tool_call(
            "create_file",
            json!({"path": "made.txt", "content": "made by turn 1"}),
        ),
        // The second turn is the last: its call is not run, and the attempt ends with a note.
        tool_call(
            "create_file",
            json!({"path": "never.txt", "content": "turn 2 has no turn after it"}),
        ),
    ]);
    let (outcome, results) = supervise(&api, config, state.path(), plan("settings")).await;
    // An attempt cut short by the turn limit, with no answer, fails its review.
    assert_eq!(outcome, RunOutcome::SomeFailed, "{results:#?}");
    assert!(
        results[0]["errors"]
            .to_string()
            .contains("ran out of tool turns"),
        "{results:#?}"
    );

    assert_eq!(
        std::fs::read_to_string(workspaces.join("settings/made.txt"))
            .expect("the file is in the configured workspace"),
        "made by turn 1"
    );
    assert!(!workspaces.join("settings/never.txt").exists());
    assert!(
        !state.path().join("workspaces").exists(),
        "the default workspace was not used"
    );
    let bodies = executor_bodies(&api.requests());
    assert_eq!(bodies.len(), 2, "max_tool_turns = 2 allows two model turns");
    assert!(
        bodies[0].to_string().contains("SKILL-MARKER-7731"),
        "the skill from the configured directory reached the executor's prompt"
    );
}

/// Runs one `run_command` call through the supervisor, with workers whose `PATH` has no
/// bwrap, and returns what the model was told.
async fn command_without_a_sandbox(allow_unsandboxed: bool) -> String {
    let state = tempfile::tempdir().expect("state dir");
    let no_bwrap = tempfile::tempdir().expect("an empty PATH directory");
    let mut config = config();
    config.executor.allow_unsandboxed_commands = allow_unsandboxed;
    let api = FakeApi::start(CANARY);
    api.script(&[
        tool_call(
            "run_command",
            json!({"command": "echo ran > ran.txt; echo RAN"}),
        ),
        json!({"kind": "text", "text": "finished", "match": EXECUTOR}),
        json!({"kind": "review", "passed": true, "match": REVIEWER}),
    ]);
    let mut args = supervise_args(config, state.path());
    args.options
        .base_env
        .set("PATH", no_bwrap.path().as_os_str());
    args.provider = Some(ProviderChoice::Anthropic);
    args.anthropic = AnthropicAccess {
        api_key: Some(SecretString::from(CANARY)),
        base_url: Some(api.url.clone()),
    };
    let (outcome, results) =
        supervise_in_process(args, format!("{}\n", plan("bare")), LIMIT * 6).await;
    assert_eq!(outcome, RunOutcome::AllSucceeded, "{results:#?}");
    let bodies = executor_bodies(&api.requests());
    let answered = tool_results(bodies.last().expect("the executor asked the model"));
    assert_eq!(answered.len(), 1, "{answered:#?}");
    let ran = state.path().join("workspaces/bare/ran.txt").exists();
    assert_eq!(
        ran, allow_unsandboxed,
        "the command ran only when allowed: {answered:?}"
    );
    answered[0].clone()
}

#[tokio::test]
async fn without_a_sandbox_commands_are_refused_by_default() {
    let told = command_without_a_sandbox(false).await;
    assert!(told.contains("run_command is disabled"), "{told}");
}

#[tokio::test]
async fn without_a_sandbox_commands_run_when_the_config_allows_it() {
    let told = command_without_a_sandbox(true).await;
    assert!(
        told.contains("exit code: 0") && told.contains("RAN"),
        "{told}"
    );
}
