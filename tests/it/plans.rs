//! Work plans end to end with real workers (offline provider): one result per input line,
//! redelivery, quarantine, resuming after a SIGKILL, and the journal's replays.

use std::path::Path;
use std::time::Duration;

use mnemosyne::cli::supervise::{RunOutcome, run};
use mnemosyne::config::{AgentConfig, Config, Role};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::common::*;

const GOOD_PROMPT: &str = "Build a command line tool using Rust that must parse the following \
    log format because operators need to search all access logs within one second";

fn good_plan(id: &str) -> Value {
    json!({
        "id": id,
        "prompt": GOOD_PROMPT,
        "tech_stack": ["Rust"],
        "success_criteria": "searches a 1 GB log in under a second",
        "deployment": "a static binary on Linux",
    })
}

/// Every role with one worker, fast timings.
pub fn pipeline_config() -> Config {
    let mut config = fast_config();
    for role in Role::ALL {
        config.agents.insert(role, AgentConfig::default());
    }
    config
}

/// Runs `supervise` in-process on `input` and returns its outcome and result lines.
async fn supervise(config: Config, state_dir: &Path, input: String) -> (RunOutcome, Vec<Value>) {
    supervise_in_process(supervise_args(config, state_dir), input, LIMIT * 3).await
}

fn by_id<'a>(results: &'a [Value], id: &str) -> &'a Value {
    let matching: Vec<&Value> = results.iter().filter(|r| r["id"] == id).collect();
    assert_eq!(
        matching.len(),
        1,
        "exactly one result for {id}: {results:#?}"
    );
    matching[0]
}

fn by_line(results: &[Value], line: usize) -> &Value {
    let matching: Vec<&Value> = results.iter().filter(|r| r["line"] == line).collect();
    assert_eq!(
        matching.len(),
        1,
        "exactly one result for line {line}: {results:#?}"
    );
    matching[0]
}

#[tokio::test]
async fn a_mixed_input_yields_exactly_one_result_per_line_with_the_expected_status() {
    let state = tempfile::tempdir().expect("state dir");
    let mut vague = good_plan("vague");
    vague["prompt"] = json!("just make it simple");
    let mut bypassed = good_plan("bypassed");
    bypassed["prompt"] = json!("just make it simple");
    bypassed["options"] = json!({"challenge_vague_requirements": false});
    let mut no_stack = good_plan("no-stack");
    no_stack
        .as_object_mut()
        .expect("object")
        .remove("tech_stack");
    no_stack["options"] = json!({"challenge_vague_requirements": false});
    let mut cyclic = good_plan("cyclic");
    cyclic["tasks"] = json!([
        {"id": "a", "prompt": "first part", "depends_on": ["c"]},
        {"id": "b", "prompt": "second part", "depends_on": ["a"]},
        {"id": "c", "prompt": "third part", "depends_on": ["b"]},
    ]);
    let mut dag = good_plan("dag");
    dag["tasks"] = json!([
        {"id": "schema", "prompt": "design the log schema", "depends_on": []},
        {"id": "parser", "prompt": "write the parser", "depends_on": ["schema"]},
        {"id": "index", "prompt": "write the index", "depends_on": ["schema"]},
        {"id": "cli", "prompt": "write the command line", "depends_on": ["parser", "index"]},
    ]);
    let lines = [
        good_plan("good").to_string(),
        vague.to_string(),
        bypassed.to_string(),
        "{\"id\": \"broken\", \"prompt\": ".to_owned(),
        json!({"id": "typed", "prompt": GOOD_PROMPT, "priority": "high"}).to_string(),
        cyclic.to_string(),
        dag.to_string(),
        no_stack.to_string(),
    ];
    let (outcome, results) =
        supervise(pipeline_config(), state.path(), lines.join("\n") + "\n").await;
    assert_eq!(outcome, RunOutcome::SomeFailed);
    assert_eq!(results.len(), lines.len(), "{results:#?}");

    let good = by_id(&results, "good");
    assert_eq!(good["status"], "succeeded", "{good:#}");
    assert_eq!(good["line"], 1);
    assert_eq!(good["provider"], "offline");
    assert_eq!(good["attempts"], 1);
    assert!(
        good["output"].as_str().is_some_and(|o| !o.is_empty()),
        "{good:#}"
    );
    assert_eq!(good["review"]["passed"], true);
    assert!(good["usage"]["output_tokens"].as_u64().unwrap_or(0) > 0);

    let vague = by_id(&results, "vague");
    assert_eq!(vague["status"], "rejected");
    let issues: Vec<&str> = vague["issues"]
        .as_array()
        .expect("issues")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(issues.contains(&"Vague requirement: 'just'"), "{issues:?}");
    assert!(
        issues.contains(&"Vague requirement: 'simple'"),
        "{issues:?}"
    );
    assert!(
        issues
            .iter()
            .any(|i| i.starts_with("Requirement too brief")),
        "{issues:?}"
    );
    assert!(!vague["questions"].as_array().expect("questions").is_empty());

    assert_eq!(by_id(&results, "bypassed")["status"], "succeeded");
    let no_stack = by_id(&results, "no-stack");
    assert_eq!(
        no_stack["status"], "rejected",
        "the bypass never skips required fields"
    );
    assert!(
        no_stack["issues"]
            .to_string()
            .contains("Tech stack not specified"),
        "{no_stack:#}"
    );

    let broken = by_line(&results, 4);
    assert_eq!(broken["status"], "rejected");
    assert!(
        broken["errors"][0]
            .as_str()
            .expect("error")
            .starts_with("line 4: not valid JSON"),
        "{broken:#}"
    );

    let typed = by_line(&results, 5);
    assert_eq!(typed["status"], "rejected");
    assert!(
        typed["errors"][0]
            .as_str()
            .expect("error")
            .contains("priority"),
        "{typed:#}"
    );

    let cyclic = by_line(&results, 6);
    assert_eq!(cyclic["status"], "rejected");
    assert!(
        cyclic["errors"][0]
            .as_str()
            .expect("error")
            .contains("a -> c -> b -> a"),
        "{cyclic:#}"
    );

    let dag = by_id(&results, "dag");
    assert_eq!(dag["status"], "succeeded", "{dag:#}");
    let tasks: Vec<&str> = dag["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(tasks.len(), 4);
    assert_eq!(tasks.first(), Some(&"schema"));
    assert_eq!(tasks.last(), Some(&"cli"));
}

#[tokio::test]
async fn a_failed_task_fails_its_dependents_with_a_reason() {
    let state = tempfile::tempdir().expect("state dir");
    let mut config = pipeline_config();
    let executor = config.agents.get_mut(&Role::Executor).expect("executor");
    executor.args = Some(vec![
        fixture("crash_on_marker.py"),
        "--role".into(),
        "executor".into(),
    ]);
    let mut plan = good_plan("deps");
    plan["tasks"] = json!([
        {"id": "base", "prompt": "CRASH-THE-WORKER while building the base", "depends_on": []},
        {"id": "top", "prompt": "build on the base", "depends_on": ["base"]},
        {"id": "side", "prompt": "an independent part", "depends_on": []},
    ]);
    let (_, results) = supervise(config, state.path(), plan.to_string() + "\n").await;
    let result = by_id(&results, "deps");
    assert_eq!(result["status"], "failed");
    let task = |id: &str| {
        result["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .find(|t| t["id"] == id)
            .cloned()
            .expect("task")
    };
    assert_eq!(task("side")["status"], "succeeded");
    assert_eq!(task("base")["status"], "failed");
    assert!(
        task("base")["error"]
            .as_str()
            .expect("error")
            .contains("quarantined"),
        "{result:#}"
    );
    assert_eq!(task("top")["status"], "failed");
    assert!(
        task("top")["error"]
            .as_str()
            .expect("error")
            .contains("dependency \"base\" failed"),
        "{result:#}"
    );
}

#[tokio::test]
async fn a_worker_sigkilled_while_holding_a_request_still_gives_one_success_with_two_deliveries() {
    let state = tempfile::tempdir().expect("state dir");
    let mut config = pipeline_config();
    let executor = config.agents.get_mut(&Role::Executor).expect("executor");
    // The offline model "thinks" long enough for the test to kill the worker mid-request; the
    // redelivery goes to a worker started without that delay below.
    executor
        .env
        .insert("MNEMOSYNE_OFFLINE_LATENCY_MS".into(), "2000".into());
    let pipeline = Pipeline::start(&config, state.path());
    let executor = pipeline.supervisor.agent("executor-1").expect("executor-1");
    pipeline.send(&good_plan("survivor"));
    let busy = wait_state(&executor, "busy executing", |s| {
        s.current_job
            .as_deref()
            .is_some_and(|job| job.contains("/execute/"))
    })
    .await;
    let pid = busy.pid.expect("a busy agent has a pid");
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("SIGKILL the executor");
    let (outcome, results) = pipeline.finish().await;
    assert_eq!(results.len(), 1, "{results:#?}");
    assert!(outcome.all_succeeded, "{results:#?}");
    assert_eq!(results[0]["status"], "succeeded");
    assert_eq!(results[0]["deliveries"], 2, "{results:#?}");
    assert_eq!(executor.status().restarts, 1);
}

#[tokio::test]
async fn a_request_that_always_kills_its_worker_is_quarantined_and_other_plans_are_unaffected() {
    let state = tempfile::tempdir().expect("state dir");
    let mut config = pipeline_config();
    let executor = config.agents.get_mut(&Role::Executor).expect("executor");
    executor.args = Some(vec![
        fixture("crash_on_marker.py"),
        "--role".into(),
        "executor".into(),
    ]);
    let mut poison = good_plan("poison");
    poison["prompt"] = json!(format!("{GOOD_PROMPT} CRASH-THE-WORKER"));
    let input = [good_plan("before"), poison, good_plan("after")]
        .map(|p| p.to_string())
        .join("\n")
        + "\n";
    let (outcome, results) = supervise(config, state.path(), input).await;
    assert_eq!(outcome, RunOutcome::SomeFailed);
    assert_eq!(results.len(), 3);
    assert_eq!(by_id(&results, "before")["status"], "succeeded");
    assert_eq!(by_id(&results, "after")["status"], "succeeded");
    let poison = by_id(&results, "poison");
    assert_eq!(poison["status"], "failed");
    assert!(
        poison["errors"].to_string().contains("quarantined after"),
        "{poison:#}"
    );
    // A death while the worker also held other plans' requests is not blamed on any of them;
    // the request then runs alone, where each death is its own, until the third.
    let failures = poison["failures"].as_array().expect("failures");
    let blamed = failures.iter().filter(|f| f["shared"] == false).count();
    assert_eq!(blamed, 3, "{poison:#}");
    assert!(
        failures
            .iter()
            .all(|f| f["stderr_tail"].to_string().contains("crashing on marker")),
        "{poison:#}"
    );
}

#[tokio::test]
async fn a_finished_plan_id_is_replayed_not_run_again() {
    let state = tempfile::tempdir().expect("state dir");
    let (_, first) = supervise(
        pipeline_config(),
        state.path(),
        good_plan("once").to_string() + "\n",
    )
    .await;
    assert_eq!(by_id(&first, "once")["status"], "succeeded");
    assert!(by_id(&first, "once").get("replayed").is_none());
    let (outcome, second) = supervise(
        pipeline_config(),
        state.path(),
        good_plan("once").to_string() + "\n",
    )
    .await;
    assert_eq!(outcome, RunOutcome::AllSucceeded);
    let replay = by_id(&second, "once");
    assert_eq!(replay["replayed"], true);
    assert_eq!(replay["output"], by_id(&first, "once")["output"]);
}

#[tokio::test]
async fn a_second_supervisor_on_the_same_state_directory_is_refused_naming_the_holder() {
    let state = tempfile::tempdir().expect("state dir");
    let _held = mnemosyne::plan::statedir::StateDir::lock(state.path()).expect("first lock");
    let args = supervise_args(pipeline_config(), state.path());
    let error = run(args, tokio::io::empty(), tokio::io::sink())
        .await
        .expect_err("refused");
    let text = format!("{error:#}");
    assert!(
        text.contains(&format!("pid {}", std::process::id())),
        "{text}"
    );
    assert!(
        error
            .downcast_ref::<mnemosyne::cli::supervise::UsageError>()
            .is_some()
    );
}

/// A supervisor with the plan service running in the background, fed through a pipe.
pub struct Pipeline {
    pub supervisor: std::sync::Arc<mnemosyne::supervisor::Supervisor>,
    input: std::sync::Mutex<Option<tokio::io::DuplexStream>>,
    service: tokio::task::JoinHandle<mnemosyne::plan::service::ServeOutcome>,
    output: tokio::io::DuplexStream,
    _journal: mnemosyne::plan::journal::Journal,
    _state: mnemosyne::plan::statedir::StateDir,
}

impl Pipeline {
    fn start(config: &Config, state_dir: &Path) -> Self {
        Self::start_with(config, state_dir, options())
    }

    pub fn start_with(
        config: &Config,
        state_dir: &Path,
        options: mnemosyne::supervisor::SupervisorOptions,
    ) -> Self {
        use mnemosyne::plan::{intake::PlanReader, journal, runner, service, statedir};
        let state = statedir::StateDir::lock(state_dir).expect("state dir");
        let (journal, recovery) =
            journal::Journal::open(&state, journal::JournalSettings::default()).expect("journal");
        let supervisor = std::sync::Arc::new(
            mnemosyne::supervisor::Supervisor::start(config, options).expect("supervisor"),
        );
        let runner = runner::PlanRunner::new(
            supervisor.clone(),
            runner::RunnerSettings {
                step_deadline: Duration::from_secs(60),
                provider_retries: 2,
                provider_retry_base: Duration::from_millis(10),
                agent_wait: config.plans.agent_wait,
            },
        );
        let (input, input_reader) = tokio::io::duplex(1 << 16);
        let (output_writer, output) = tokio::io::duplex(1 << 20);
        let settings = service::ServiceSettings {
            max_in_flight: 16,
            keep_running: false,
            drain_grace: Duration::from_secs(5),
        };
        let service = tokio::spawn(service::serve(
            PlanReader::new(input_reader, 1 << 20),
            runner,
            journal.clone(),
            recovery,
            output_writer,
            settings,
            CancellationToken::new(),
            CancellationToken::new(),
            None,
        ));
        Self {
            supervisor,
            input: std::sync::Mutex::new(Some(input)),
            service,
            output,
            _journal: journal,
            _state: state,
        }
    }

    pub fn send(&self, plan: &Value) {
        let mut input = self.input.lock().expect("input lock");
        let stream = input.as_mut().expect("input still open");
        let line = plan.to_string() + "\n";
        futures_util::FutureExt::now_or_never(tokio::io::AsyncWriteExt::write_all(
            stream,
            line.as_bytes(),
        ))
        .expect("the pipe has room")
        .expect("plan written");
    }

    pub async fn finish(mut self) -> (mnemosyne::plan::service::ServeOutcome, Vec<Value>) {
        self.input.lock().expect("input lock").take();
        let outcome = tokio::time::timeout(LIMIT * 3, self.service)
            .await
            .expect("service finishes")
            .expect("joins");
        tokio::time::timeout(LIMIT, self.supervisor.shutdown())
            .await
            .expect("shutdown finishes");
        let mut text = String::new();
        tokio::time::timeout(LIMIT, self.output.read_to_string(&mut text))
            .await
            .expect("the output ends")
            .expect("output");
        (
            outcome,
            text.lines()
                .map(|l| serde_json::from_str(l).expect("JSON"))
                .collect(),
        )
    }
}
