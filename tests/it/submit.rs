//! `mnemosyne submit` against an in-process `supervise --keep-running`: every plan is
//! acknowledged with its id, a supervisor that stops first is reported as such, and a result
//! belongs to its submitter alone, kept in the journal until someone submits its id again.

use std::path::Path;

use mnemosyne::cli::supervise::RunOutcome;
use mnemosyne::config::{AgentConfig, Config, Role};
use mnemosyne::control::{Client, ClientError, ErrorCode, SubmitItem, SubmittedPlan};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream, Lines};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::common::*;

/// Executors stall on plans whose prompt holds this.
const MARKER: &str = "SLOW";

fn plan(id: Option<&str>, suffix: &str) -> Value {
    let mut plan = json!({
        "prompt": format!("Build a command line tool using Rust that must parse the following log \
                           format because operators need to search all access logs within one \
                           second {suffix}"),
        "tech_stack": ["Rust"],
        "success_criteria": "searches a 1 GB log in under a second",
    });
    if let Some(id) = id {
        plan["id"] = json!(id);
    }
    plan
}

fn submitted(plan: Value, line: usize) -> SubmittedPlan {
    SubmittedPlan {
        plan,
        line: Some(line),
        element: None,
    }
}

/// Every role with one worker, fast timings.
fn pipeline_config() -> Config {
    let mut config = fast_config();
    for role in Role::ALL {
        config.agents.insert(role, AgentConfig::default());
    }
    config
}

/// The pipeline, with `executors` executors that stall on [`MARKER`].
fn stalling_config(executors: u32) -> Config {
    let mut config = pipeline_config();
    let executor = config.agents.get_mut(&Role::Executor).expect("executor");
    executor.count = executors;
    executor.args = Some(vec![
        fixture("stall_on_marker.py"),
        "--role".into(),
        "executor".into(),
    ]);
    executor
        .env
        .insert("FIXTURE_STALL_MARKER".into(), MARKER.into());
    config
}

/// `supervise --keep-running`, in process, with its own interrupt and its stdout.
struct Keeper {
    interrupt: CancellationToken,
    run: tokio::task::JoinHandle<anyhow::Result<RunOutcome>>,
    stdout: Lines<BufReader<DuplexStream>>,
}

impl Keeper {
    /// Starts it and waits for the result of one plan of its own on stdin, which proves that
    /// its control socket is listening.
    async fn start(config: Config, state_dir: &Path) -> Self {
        let mut args = supervise_args(config, state_dir);
        args.keep_running = true;
        let interrupt = args.interrupt.clone();
        let (mut input, input_reader) = tokio::io::duplex(1 << 16);
        let line = plan(Some("own-stdin-plan"), "").to_string() + "\n";
        input
            .write_all(line.as_bytes())
            .await
            .expect("plan written");
        drop(input);
        let (output, read_back) = tokio::io::duplex(1 << 20);
        let run = tokio::spawn(mnemosyne::cli::supervise::run(args, input_reader, output));
        let mut stdout = BufReader::new(read_back).lines();
        let first = within("the supervisor's own result", stdout.next_line())
            .await
            .expect("stdout is readable")
            .expect("a result line");
        assert!(first.contains("own-stdin-plan"), "{first}");
        Self {
            interrupt,
            run,
            stdout,
        }
    }

    /// Interrupts it as SIGINT would; returns its outcome and the rest of its stdout.
    async fn stop(self) -> (RunOutcome, String) {
        self.interrupt.cancel();
        let outcome = within("the supervisor stops", self.run)
            .await
            .expect("joins")
            .expect("supervise runs");
        let mut rest = String::new();
        let mut reader = self.stdout.into_inner();
        within("the rest of stdout", reader.read_to_string(&mut rest))
            .await
            .expect("stdout is UTF-8");
        (outcome, rest)
    }
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT * 3, future)
        .await
        .unwrap_or_else(|_| panic!("{what} within {:?}", LIMIT * 3))
}

/// Submits `plans` on a task of its own; its items arrive on the receiver as they come.
fn submit_in_background(
    state_dir: &Path,
    plans: Vec<SubmittedPlan>,
) -> (
    mpsc::UnboundedReceiver<SubmitItem>,
    tokio::task::JoinHandle<Result<(), ClientError>>,
) {
    let (sender, items) = mpsc::unbounded_channel();
    let state_dir = state_dir.to_owned();
    let submission = tokio::spawn(async move {
        let mut client = Client::connect(&state_dir).await?;
        client
            .submit(plans, |item| {
                let _ = sender.send(item);
            })
            .await
    });
    (items, submission)
}

async fn next_item(items: &mut mpsc::UnboundedReceiver<SubmitItem>) -> SubmitItem {
    within("a submit answer", items.recv())
        .await
        .expect("the submission is still answering")
}

/// Submits `plans` and waits for the whole answer.
async fn submit(state_dir: &Path, plans: Vec<SubmittedPlan>) -> Vec<SubmitItem> {
    let (mut items, submission) = submit_in_background(state_dir, plans);
    within("the submission ends", submission)
        .await
        .expect("joins")
        .expect("every plan gets a result");
    let mut all = Vec::new();
    while let Ok(item) = items.try_recv() {
        all.push(item);
    }
    all
}

/// The `emitted` flag of a plan's row, read after its supervisor has stopped.
fn emitted(state_dir: &Path, id: &str) -> bool {
    let journal = rusqlite::Connection::open(state_dir.join("journal.sqlite3")).expect("journal");
    journal
        .query_row("SELECT emitted FROM plans WHERE id = ?1", [id], |row| {
            row.get::<_, i64>(0)
        })
        .expect("the plan has a row")
        == 1
}

#[tokio::test]
async fn a_supervisor_stopped_with_submitted_plans_unfinished_answers_shutting_down_naming_them() {
    let state = tempfile::tempdir().expect("state dir");
    let keeper = Keeper::start(stalling_config(3), state.path()).await;
    let (mut items, submission) = submit_in_background(
        state.path(),
        vec![
            submitted(plan(Some("quick"), ""), 1),
            submitted(plan(Some("stuck"), MARKER), 2),
            submitted(plan(None, MARKER), 3),
        ],
    );
    let mut admitted = Vec::new();
    let mut results = Vec::new();
    while admitted.len() < 3 || results.is_empty() {
        match next_item(&mut items).await {
            SubmitItem::Admitted { id, line, element } => {
                assert!(results.is_empty(), "every plan is admitted before it runs");
                assert_eq!(element, None);
                admitted.push((line.expect("the line it was sent with"), id));
            }
            SubmitItem::Result(result) => results.push(result),
        }
    }
    assert_eq!(admitted[0], (1, "quick".to_owned()));
    assert_eq!(admitted[1], (2, "stuck".to_owned()));
    let (line, generated) = admitted[2].clone();
    assert_eq!(line, 3);
    assert!(
        generated.starts_with("plan-") && generated.ends_with("-submitted-1"),
        "a generated id: {generated}"
    );
    assert_eq!(results[0]["id"], "quick");
    assert_eq!(results[0]["status"], "succeeded");

    let (outcome, rest) = keeper.stop().await;
    assert_eq!(outcome, RunOutcome::Interrupted);
    let answer = within("the submission ends", submission)
        .await
        .expect("joins");
    match answer {
        Err(ClientError::Refused {
            code: ErrorCode::ShuttingDown,
            message,
            ..
        }) => {
            assert!(
                message.contains("resume on its next start")
                    && message.contains("stuck")
                    && message.contains(&generated),
                "{message}"
            );
            assert!(!message.contains("quick"), "{message}");
        }
        other => panic!("a shutting_down error, not {other:?}"),
    }
    assert!(items.try_recv().is_err(), "no result after the error");
    assert!(
        rest.trim().is_empty(),
        "nothing submitted on stdout: {rest}"
    );

    // The next run finishes both, printing neither: their results belong to their submitter.
    let (outcome, printed) = supervise_in_process(
        supervise_args(pipeline_config(), state.path()),
        String::new(),
        LIMIT * 3,
    )
    .await;
    assert_eq!(outcome, RunOutcome::AllSucceeded);
    assert!(printed.is_empty(), "{printed:#?}");
    assert!(!emitted(state.path(), "stuck"));

    // Whoever submits their ids again gets their results as replays.
    let keeper = Keeper::start(pipeline_config(), state.path()).await;
    let answers = submit(
        state.path(),
        vec![
            submitted(plan(Some("stuck"), ""), 1),
            submitted(plan(Some(&generated), ""), 2),
        ],
    )
    .await;
    let replays: Vec<&Value> = answers
        .iter()
        .filter_map(|item| match item {
            SubmitItem::Result(result) => Some(result),
            SubmitItem::Admitted { .. } => None,
        })
        .collect();
    assert_eq!(replays.len(), 2, "{answers:#?}");
    for (line, id) in [(1, "stuck"), (2, generated.as_str())] {
        let replay = replays
            .iter()
            .find(|result| result["id"] == id)
            .unwrap_or_else(|| panic!("a result for {id}: {answers:#?}"));
        assert_eq!(replay["replayed"], true, "{replay:#}");
        assert_eq!(replay["status"], "succeeded", "{replay:#}");
        assert_eq!(replay["line"], line, "{replay:#}");
    }
    let (_, rest) = keeper.stop().await;
    assert!(
        rest.trim().is_empty(),
        "nothing submitted on stdout: {rest}"
    );
    assert!(emitted(state.path(), "stuck") && emitted(state.path(), &generated));
}

#[tokio::test]
async fn submit_fails_naming_the_unfinished_plans_when_the_supervisor_stops_first() {
    let state = tempfile::tempdir().expect("state dir");
    let keeper = Keeper::start(stalling_config(2), state.path()).await;
    let input = format!("{}\n{}\n", plan(Some("quick"), ""), plan(None, MARKER));
    // Result lines reach this writer one by one, so the test knows when `quick` is done.
    let (lines, mut printed) = mpsc::unbounded_channel::<String>();
    let state_dir = state.path().to_owned();
    let submit = tokio::spawn(async move {
        let mut out = LineSender(lines, Vec::new());
        mnemosyne::cli::submit::run(&state_dir, input.as_bytes(), 1 << 20, &mut out).await
    });
    let quick = within("the result of quick", printed.recv())
        .await
        .expect("a result line");
    assert!(quick.contains("\"quick\""), "{quick}");
    // Both plans were admitted together before either ran, so the stalled one is in the
    // journal now.
    let _ = keeper.stop().await;
    let error = within("submit ends", submit)
        .await
        .expect("joins")
        .expect_err("submit fails when plans are left unfinished");
    // What `main` prints on stderr before exiting 1.
    let stderr = format!("{error:#}");
    assert!(
        stderr.contains("the supervisor stopped before every submitted plan had a result")
            && stderr.contains("resume on the supervisor's next start")
            && stderr.contains("-submitted-1 (line 2)"),
        "{stderr}"
    );
    assert!(!stderr.contains("quick"), "{stderr}");
}

#[tokio::test]
async fn a_result_whose_submitter_went_away_waits_in_the_journal_for_a_resubmission() {
    let state = tempfile::tempdir().expect("state dir");
    let mut config = pipeline_config();
    config.supervisor.stop_grace = LIMIT;
    // The offline executor "thinks" for a while, so the submitter is surely gone by the time
    // the result is ready.
    config
        .agents
        .get_mut(&Role::Executor)
        .expect("executor")
        .env
        .insert("MNEMOSYNE_OFFLINE_LATENCY_MS".into(), "500".into());
    let keeper = Keeper::start(config, state.path()).await;
    {
        let stream = tokio::net::UnixStream::connect(mnemosyne::control::socket_path(state.path()))
            .await
            .expect("connect");
        let (read, mut write) = stream.into_split();
        let request = json!({"v": 1, "type": "submit", "plans": [{"plan": plan(Some("orphan"), ""), "line": 1}]});
        write
            .write_all(format!("{request}\n").as_bytes())
            .await
            .expect("request sent");
        let mut answers = BufReader::new(read).lines();
        let admitted = within("admitted", answers.next_line())
            .await
            .expect("readable")
            .expect("a line");
        assert!(
            admitted.contains("\"admitted\"") && admitted.contains("\"orphan\""),
            "{admitted}"
        );
        // The submitter goes away here, before its result.
    }
    // Stopping lets the in-flight plan finish within the grace; its result finds no one.
    let (_, rest) = keeper.stop().await;
    assert!(!rest.contains("orphan"), "{rest}");
    assert!(!emitted(state.path(), "orphan"));

    // Not printed by the next run either, which replays it to a resubmitter.
    let keeper = Keeper::start(pipeline_config(), state.path()).await;
    let answers = submit(state.path(), vec![submitted(plan(Some("orphan"), ""), 4)]).await;
    assert_eq!(
        answers.first(),
        Some(&SubmitItem::Admitted {
            id: "orphan".into(),
            line: Some(4),
            element: None
        }),
        "{answers:#?}"
    );
    let Some(SubmitItem::Result(replay)) = answers.get(1) else {
        panic!("a result: {answers:#?}");
    };
    assert_eq!(replay["id"], "orphan");
    assert_eq!(replay["replayed"], true);
    assert_eq!(replay["line"], 4);
    let (_, rest) = keeper.stop().await;
    assert!(!rest.contains("orphan"), "{rest}");
    assert!(emitted(state.path(), "orphan"));
}

/// A `Write` that sends each complete line to a channel.
struct LineSender(mpsc::UnboundedSender<String>, Vec<u8>);

impl std::io::Write for LineSender {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.1.extend_from_slice(bytes);
        while let Some(end) = self.1.iter().position(|&byte| byte == b'\n') {
            let line: Vec<u8> = self.1.drain(..=end).collect();
            let _ = self
                .0
                .send(String::from_utf8_lossy(&line).trim_end().to_owned());
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
