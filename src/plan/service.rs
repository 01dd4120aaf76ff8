//! The plan service: takes plans from a source, journals them before work starts, runs them
//! with bounded concurrency, journals and prints each result exactly once, and resumes what an
//! earlier run left unfinished.
//!
//! Where plans come from is behind [`PlanSource`]: stdin today, a Redis stream later, through
//! this same code path.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::intake::{InputItem, PlanReader};
use super::journal::{Admission, Journal, Recovery};
use super::model::Plan;
use super::result::{InputPosition, PlanResult, PlanStatus};
use super::runner::{PlanRunner, RunEnd};

/// Results buffered between the runs and the writer.
const RESULT_BUFFER: usize = 1024;

/// Anything plans can come from, one at a time, pulled only when there is room for more work.
pub trait PlanSource: Send {
    fn next(&mut self) -> impl Future<Output = Option<InputItem>> + Send;
}

impl<R: tokio::io::AsyncRead + Unpin + Send> PlanSource for PlanReader<R> {
    fn next(&mut self) -> impl Future<Output = Option<InputItem>> + Send {
        PlanReader::next(self)
    }
}

#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// Plans being worked on at once; reading the source pauses at this bound.
    pub max_in_flight: usize,
    /// After the source ends, keep serving (for plans submitted later) until interrupted.
    pub keep_running: bool,
    /// On interrupt, how long in-flight plans may take to finish before the workers stop.
    pub drain_grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOutcome {
    pub all_succeeded: bool,
    /// Stopped by a signal with work unfinished (input unread or plans still running).
    pub interrupted: bool,
}

struct Emit {
    /// Set for results that are in the journal and must be marked emitted once written.
    id: Option<String>,
    line: String,
    succeeded: bool,
    /// Where the line goes: the client that submitted the plan, or stdout when `None`.
    to: Option<mpsc::Sender<String>>,
}

/// Plans handed in through the control socket (`mnemosyne submit`), with the channel their
/// results go back on.
pub struct Submission {
    pub plans: Vec<(Plan, InputPosition)>,
    pub results: mpsc::Sender<String>,
}

/// The emit channel, tagged with where its results belong.
#[derive(Clone)]
struct Sink {
    emit: mpsc::Sender<Emit>,
    to: Option<mpsc::Sender<String>>,
}

impl Sink {
    async fn send(&self, mut emit: Emit) -> Result<(), mpsc::error::SendError<Emit>> {
        emit.to = self.to.clone();
        self.emit.send(emit).await
    }
}

impl Emit {
    fn result(id: Option<String>, result: &PlanResult) -> Self {
        Self {
            id,
            line: result.to_line(),
            succeeded: result.status == PlanStatus::Succeeded,
            to: None,
        }
    }

    /// A stored result from the journal, flagged as a replay.
    fn replay(id: Option<String>, stored: &str, position: Option<&InputPosition>) -> Self {
        let (line, succeeded) = mark_replayed(stored, position);
        Self {
            id,
            line,
            succeeded,
            to: None,
        }
    }
}

/// Runs the service until the source ends and every plan has a result (or until interrupted).
#[expect(
    clippy::too_many_arguments,
    reason = "the service wires together its collaborators once, here"
)]
pub async fn serve(
    mut source: impl PlanSource,
    runner: PlanRunner,
    journal: Journal,
    recovery: Recovery,
    output: impl AsyncWrite + Unpin + Send + 'static,
    settings: ServiceSettings,
    interrupt: CancellationToken,
    kill_now: CancellationToken,
    submissions: Option<mpsc::Receiver<Submission>>,
) -> ServeOutcome {
    let all_succeeded = Arc::new(AtomicBool::new(true));
    let (emit_sender, emitted) = mpsc::channel::<Emit>(RESULT_BUFFER);
    let emit = Sink {
        emit: emit_sender,
        to: None,
    };
    let writer = tokio::spawn(write_results(
        emitted,
        output,
        journal.clone(),
        all_succeeded.clone(),
    ));
    let slots = Arc::new(Semaphore::new(settings.max_in_flight));
    let runs = TaskTracker::new();
    let run_id = format!("{:08x}", fastrand::u32(..));

    for stored in recovery.unemitted {
        let _ = emit
            .send(Emit::replay(Some(stored.id.clone()), &stored.result, None))
            .await;
    }
    // A signal while resuming (more unfinished plans than slots, waiting for agents) stops the
    // run like one while reading input; what is not resumed stays in the journal.
    let mut interrupted = false;
    for stored in recovery.unfinished {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = interrupt.cancelled() => { interrupted = true; break; }
        };
        match serde_json::from_str::<Plan>(&stored.body) {
            Ok(plan) => {
                tracing::info!(plan = %stored.id, "resuming a plan left unfinished by an earlier run");
                runs.spawn(run_plan(
                    plan,
                    InputPosition::default(),
                    runner.clone(),
                    journal.clone(),
                    emit.clone(),
                    permit,
                ));
            }
            Err(error) => {
                let mut result = PlanResult::new(Some(stored.id.clone()), PlanStatus::Failed);
                result.errors.push(format!(
                    "the journalled plan could not be read back: {error}"
                ));
                finish(&journal, &emit, result).await;
            }
        }
    }

    // Submitted plans are taken only by a supervisor that keeps running; they share the bound
    // on plans in flight and the journal with stdin's.
    if let (Some(submissions), true) = (submissions, settings.keep_running) {
        runs.spawn(take_submissions(
            submissions,
            slots.clone(),
            runs.clone(),
            runner.clone(),
            journal.clone(),
            emit.emit.clone(),
            interrupt.clone(),
            run_id.clone(),
        ));
    }

    let mut accepted = 0u64;
    while !interrupted {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = interrupt.cancelled() => { interrupted = true; break; }
        };
        let item = tokio::select! {
            item = source.next() => item,
            () = interrupt.cancelled() => { interrupted = true; break; }
        };
        let Some(item) = item else { break };
        let position = item.origin.position();
        match item.plan {
            Err(error) => {
                let result =
                    PlanResult::rejected(None, position, vec![format!("{}: {error}", item.origin)]);
                let _ = emit.send(Emit::result(None, &result)).await;
            }
            Ok(mut plan) => {
                accepted += 1;
                if plan.id.is_none() {
                    plan.id = Some(format!("plan-{run_id}-{accepted}"));
                }
                runs.spawn(admit_and_run(
                    plan,
                    position,
                    runner.clone(),
                    journal.clone(),
                    emit.clone(),
                    permit,
                ));
            }
        }
    }

    // Interrupted with input left unread: the run was cut short whatever happens next.
    let mut cut_short = interrupted;
    if !interrupted && settings.keep_running {
        tracing::info!("input ended; keeping the supervisor running until interrupted");
        interrupt.cancelled().await;
        interrupted = true;
    }
    runs.close();
    if !interrupted {
        // Input ended; the plans in flight finish, but a signal still stops the batch: a plan
        // waiting for a role with no usable agent must not make the supervisor unstoppable.
        tokio::select! {
            () = runs.wait() => {}
            () = interrupt.cancelled() => interrupted = true,
        }
    }
    if interrupted {
        tracing::warn!(grace = ?settings.drain_grace, "interrupted: finishing in-flight plans within the grace");
        tokio::select! {
            () = runs.wait() => {}
            () = tokio::time::sleep(settings.drain_grace) => {
                tracing::warn!("grace over; unfinished plans stay in the journal for the next run");
                cut_short = true;
            }
            () = kill_now.cancelled() => cut_short = true,
        }
        // Runs still waiting for a worker end as interrupted once the agents stop: jobs in a
        // queue are answered at once, jobs on a worker when that worker has stopped.
        runner.stop_agents().await;
        runs.wait().await;
    }
    drop(emit);
    let _ = writer.await;
    ServeOutcome {
        all_succeeded: all_succeeded.load(Ordering::SeqCst),
        interrupted: cut_short,
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "the pump shares the service's collaborators"
)]
async fn take_submissions(
    mut submissions: mpsc::Receiver<Submission>,
    slots: Arc<Semaphore>,
    runs: TaskTracker,
    runner: PlanRunner,
    journal: Journal,
    emit: mpsc::Sender<Emit>,
    interrupt: CancellationToken,
    run_id: String,
) {
    let mut accepted = 0u64;
    loop {
        let submission = tokio::select! {
            submission = submissions.recv() => match submission {
                Some(submission) => submission,
                None => return,
            },
            () = interrupt.cancelled() => return,
        };
        let sink = Sink {
            emit: emit.clone(),
            to: Some(submission.results),
        };
        for (mut plan, position) in submission.plans {
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                () = interrupt.cancelled() => return,
            };
            accepted += 1;
            if plan.id.is_none() {
                plan.id = Some(format!("plan-{run_id}-submitted-{accepted}"));
            }
            runs.spawn(admit_and_run(
                plan,
                position,
                runner.clone(),
                journal.clone(),
                sink.clone(),
                permit,
            ));
        }
    }
}

async fn admit_and_run(
    plan: Plan,
    position: InputPosition,
    runner: PlanRunner,
    journal: Journal,
    emit: Sink,
    permit: OwnedSemaphorePermit,
) {
    let id = plan.id().to_owned();
    let body = serde_json::to_string(&plan).expect("plans serialise");
    let admission = journal
        .accept(vec![(id.clone(), body)])
        .await
        .map(|mut admissions| admissions.pop());
    match admission {
        Ok(Some(Admission::New)) => run_plan(plan, position, runner, journal, emit, permit).await,
        Ok(Some(Admission::AlreadyFinished { result })) => {
            tracing::info!(plan = %id, "plan already finished in an earlier run; replaying its result");
            let _ = emit
                .send(Emit::replay(None, &result, Some(&position)))
                .await;
        }
        Ok(Some(Admission::InProgress)) => {
            let result = PlanResult::rejected(
                Some(id.clone()),
                position,
                vec![format!("a plan with id {id:?} is already in progress")],
            );
            let _ = emit.send(Emit::result(None, &result)).await;
        }
        Ok(None) | Err(_) => {
            let reason = match admission {
                Err(error) => format!("the journal refused the plan: {error}"),
                _ => "the journal gave no answer".to_owned(),
            };
            tracing::error!(plan = %id, %reason, "plan not accepted");
            let mut result = PlanResult::new(Some(id), PlanStatus::Failed);
            result.position = position;
            result.errors.push(reason);
            let _ = emit.send(Emit::result(None, &result)).await;
        }
    }
}

async fn run_plan(
    plan: Plan,
    position: InputPosition,
    runner: PlanRunner,
    journal: Journal,
    emit: Sink,
    _permit: OwnedSemaphorePermit,
) {
    match runner.run(&plan).await {
        RunEnd::Finished(mut result) => {
            result.position = position;
            finish(&journal, &emit, *result).await;
        }
        RunEnd::Interrupted => {
            tracing::info!(plan = %plan.id(), "plan interrupted; it stays in the journal")
        }
    }
}

/// Records the result durably, then hands it to the writer: a crash between the two replays
/// the result on the next run instead of losing it.
async fn finish(journal: &Journal, emit: &Sink, result: PlanResult) {
    let id = result.id.clone().expect("finished plans have ids");
    let emit_line = Emit::result(Some(id.clone()), &result);
    let finished = journal.finish(id.clone(), emit_line.line.clone(), result.retryable);
    if let Err(error) = finished.await {
        tracing::error!(plan = %id, %error, "could not journal a result; printing it anyway");
    }
    let _ = emit.send(emit_line).await;
}

/// The only writer of stdout. Marks results emitted right after writing them, in batches.
async fn write_results(
    mut emitted: mpsc::Receiver<Emit>,
    mut output: impl AsyncWrite + Unpin,
    journal: Journal,
    all_succeeded: Arc<AtomicBool>,
) {
    let mut batch = Vec::new();
    while emitted.recv_many(&mut batch, RESULT_BUFFER).await > 0 {
        let mut bytes = Vec::new();
        let mut ids = Vec::new();
        for Emit {
            id,
            line,
            succeeded,
            to,
        } in batch.drain(..)
        {
            ids.extend(id);
            if let Some(client) = to {
                // A submitter that went away still has its result in the journal.
                let _ = client.send(line).await;
                continue;
            }
            if !succeeded {
                all_succeeded.store(false, Ordering::SeqCst);
            }
            bytes.extend_from_slice(line.as_bytes());
            bytes.push(b'\n');
        }
        if output.write_all(&bytes).await.is_err() || output.flush().await.is_err() {
            tracing::error!(
                "stdout is closed; results stay in the journal and are emitted by the next run"
            );
            return;
        }
        if !ids.is_empty() {
            let count = ids.len();
            match journal.mark_emitted(ids).await {
                Ok(()) => tracing::debug!(count, "results marked emitted"),
                Err(error) => tracing::error!(%error, "could not mark results as emitted"),
            }
        }
    }
}

fn mark_replayed(stored: &str, position: Option<&InputPosition>) -> (String, bool) {
    let Ok(mut value) = serde_json::from_str::<Value>(stored) else {
        return (stored.to_owned(), false);
    };
    let succeeded = value["status"] == "succeeded";
    if let Some(object) = value.as_object_mut() {
        object.insert("replayed".into(), Value::Bool(true));
        if let Some(position) = position {
            object.remove("line");
            object.remove("element");
            if let Ok(Value::Object(fields)) = serde_json::to_value(position) {
                object.extend(fields);
            }
        }
    }
    (value.to_string(), succeeded)
}
