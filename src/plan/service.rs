//! The plan service: takes plans from a source, journals them before work starts, runs them
//! with bounded concurrency, journals and prints each result exactly once, and resumes what an
//! earlier run left unfinished.
//!
//! Where plans come from is behind [`PlanSource`]: stdin today, a Redis stream later, through
//! this same code path. Plans handed in through the control socket ([`Submission`]) share the
//! journal and the bound on plans in flight, but their results go back to their submitter only:
//! never to stdout, not even in a later run.
//!
//! Results stay typed ([`PlanOutput`]) until they are written out: to stdout by the one writer
//! task here, to a submitter by the control server.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Serialize, Serializer};
use serde_json::Value;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::claims::{Claim, Claims};
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

/// A result for stdout.
struct Emit {
    /// Set for results that are in the journal and must be marked emitted once written.
    id: Option<String>,
    output: PlanOutput,
}

/// A plan's result on its way out, typed until it is written.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanOutput {
    /// Run by this supervisor (or rejected by it).
    Ran(Box<PlanResult>),
    /// Stored by an earlier run and read back from the journal, flagged `"replayed": true`.
    Replayed(Value),
}

impl PlanOutput {
    /// A stored result as a replay, placed at `position` in the input that asked for it again.
    fn replay(stored: &str, position: Option<&InputPosition>) -> Self {
        let Ok(mut value) = serde_json::from_str::<Value>(stored) else {
            // The journal holds what this code wrote; pass anything else on rather than lose it.
            return Self::Replayed(Value::String(stored.to_owned()));
        };
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
        Self::Replayed(value)
    }

    pub fn succeeded(&self) -> bool {
        match self {
            Self::Ran(result) => result.status == PlanStatus::Succeeded,
            Self::Replayed(value) => value["status"] == "succeeded",
        }
    }
}

impl Serialize for PlanOutput {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Ran(result) => result.serialize(serializer),
            Self::Replayed(value) => value.serialize(serializer),
        }
    }
}

/// Plans handed in through the control socket (`mnemosyne submit`), with the channel that
/// tells their submitter what became of them.
pub struct Submission {
    pub plans: Vec<(Plan, InputPosition)>,
    pub events: mpsc::Sender<SubmitEvent>,
}

/// What a submitter hears about its plans, in order: `Admitted` for a plan before its result.
#[derive(Debug)]
pub enum SubmitEvent {
    /// The plan is in the journal under `id` (generated when it had none), so it gets a
    /// result: in this run, or in the next one if the supervisor stops first.
    Admitted { id: String, position: InputPosition },
    /// A plan's result.
    Finished(Delivery),
}

/// A result for a submitter. Until [`Delivery::delivered`] is called, the journal keeps the
/// result as unemitted, for a replay to whoever submits the same id again.
#[derive(Debug)]
pub struct Delivery {
    pub output: PlanOutput,
    receipt: Option<Receipt>,
}

#[derive(Debug)]
struct Receipt {
    journal: Journal,
    id: String,
}

impl Delivery {
    /// The id of a result the journal holds, which is one of a plan acknowledged with
    /// [`SubmitEvent::Admitted`]; `None` for a plan refused before the journal took it.
    pub fn admitted_id(&self) -> Option<&str> {
        self.receipt.as_ref().map(|receipt| receipt.id.as_str())
    }

    /// Records that the result was written to its submitter's connection.
    pub async fn delivered(self) {
        let Some(Receipt { journal, id }) = self.receipt else {
            return;
        };
        if let Err(error) = journal.mark_emitted(vec![id.clone()]).await {
            tracing::error!(plan = %id, %error, "could not mark a submitted result as emitted");
        }
    }
}

/// Where the results of a run go.
#[derive(Clone)]
enum Sink {
    /// To the writer of stdout.
    Stdout(mpsc::Sender<Emit>),
    /// To the client that submitted the plan.
    Submitter {
        events: mpsc::Sender<SubmitEvent>,
        journal: Journal,
    },
    /// A submitted plan resumed from an earlier run: its submitter is gone, so the result
    /// waits in the journal until its id is submitted again.
    Journal,
}

impl Sink {
    /// Hands `output` on. `id` is set for results in the journal, which are marked emitted once
    /// they reach their reader.
    async fn deliver(&self, id: Option<String>, output: PlanOutput) {
        match self {
            Sink::Stdout(emit) => {
                // The writer only ends when stdout is closed; the result stays in the journal.
                let _ = emit.send(Emit { id, output }).await;
            }
            Sink::Submitter { events, journal } => {
                let plan = id.clone();
                let receipt = id.map(|id| Receipt {
                    journal: journal.clone(),
                    id,
                });
                let delivery = Delivery { output, receipt };
                if events.send(SubmitEvent::Finished(delivery)).await.is_err() {
                    tracing::info!(
                        plan = plan.as_deref().unwrap_or("-"),
                        "the submitter went away; the result waits in the journal for its id \
                         to be submitted again"
                    );
                }
            }
            Sink::Journal => tracing::info!(
                plan = id.as_deref().unwrap_or("-"),
                "a plan submitted to an earlier run finished; its result waits in the journal \
                 for its id to be submitted again"
            ),
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
    let emit = Sink::Stdout(emit_sender);
    let writer = tokio::spawn(write_results(
        emitted,
        output,
        journal.clone(),
        all_succeeded.clone(),
    ));
    let slots = Arc::new(Semaphore::new(settings.max_in_flight));
    let runs = TaskTracker::new();
    let run_id = format!("{:08x}", fastrand::u32(..));
    let claims = Claims::default();

    for stored in recovery.unemitted {
        emit.deliver(Some(stored.id), PlanOutput::replay(&stored.result, None))
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
        let sink = if stored.submitted {
            Sink::Journal
        } else {
            emit.clone()
        };
        claims.claim_resumed(&stored.id);
        match serde_json::from_str::<Plan>(&stored.body) {
            Ok(plan) => {
                tracing::info!(plan = %stored.id, "resuming a plan left unfinished by an earlier run");
                runs.spawn(run_plan(
                    plan,
                    InputPosition::default(),
                    runner.clone(),
                    journal.clone(),
                    sink,
                    claims.clone(),
                    permit,
                ));
            }
            Err(error) => {
                let mut result = PlanResult::new(Some(stored.id.clone()), PlanStatus::Failed);
                result.errors.push(format!(
                    "the journalled plan could not be read back: {error}"
                ));
                finish(&journal, &sink, &claims, result).await;
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
            claims.clone(),
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
                emit.deliver(None, PlanOutput::Ran(Box::new(result))).await;
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
                    claims.clone(),
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

/// Takes submissions one at a time. Each submission's plans are journalled in one commit and
/// acknowledged to the submitter before any of them waits for a slot, so that a supervisor
/// stopping from then on leaves every one of them to the next run.
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
    claims: Claims<Sink>,
    interrupt: CancellationToken,
    run_id: String,
) {
    let mut generated = 0u64;
    loop {
        let Submission { mut plans, events } = tokio::select! {
            submission = submissions.recv() => match submission {
                Some(submission) => submission,
                None => return,
            },
            () = interrupt.cancelled() => return,
        };
        for (plan, _) in &mut plans {
            if plan.id.is_none() {
                generated += 1;
                plan.id = Some(format!("plan-{run_id}-submitted-{generated}"));
            }
        }
        let sink = Sink::Submitter {
            events: events.clone(),
            journal: journal.clone(),
        };
        // A copy of a plan this run already works on follows that run instead of being
        // journalled again; it is acknowledged like any admitted plan.
        let mut claimed = Vec::with_capacity(plans.len());
        for (plan, position) in plans {
            let id = plan.id().to_owned();
            match claims.claim(&id, sink.clone(), position.clone()) {
                Claim::Run => claimed.push((plan, position)),
                Claim::Follow => {
                    tracing::info!(plan = %id, "submitted while this run works on the same id; it gets that result");
                    let _ = events.send(SubmitEvent::Admitted { id, position }).await;
                }
            }
        }
        let plans = claimed;
        if plans.is_empty() {
            continue;
        }
        let bodies = plans
            .iter()
            .map(|(plan, _)| {
                let body = serde_json::to_string(plan).expect("plans serialise");
                (plan.id().to_owned(), body)
            })
            .collect();
        let admissions = match journal.accept_submitted(bodies).await {
            Ok(admissions) if admissions.len() == plans.len() => admissions,
            refused => {
                let reason = match refused {
                    Err(error) => format!("the journal refused the plan: {error}"),
                    Ok(_) => "the journal gave no answer".to_owned(),
                };
                for (plan, position) in plans {
                    let result = not_accepted(plan.id(), position, &reason);
                    sink.deliver(None, result).await;
                    answer_followers(&claims, plan.id(), |position| {
                        not_accepted(plan.id(), position, &reason)
                    })
                    .await;
                }
                continue;
            }
        };
        let mut admitted = Vec::new();
        for ((plan, position), admission) in plans.into_iter().zip(admissions) {
            let id = plan.id().to_owned();
            let acknowledge = SubmitEvent::Admitted {
                id: id.clone(),
                position: position.clone(),
            };
            match admission {
                Admission::New => {
                    // A submitter that went away still gets its plan run; the result waits in
                    // the journal for a resubmission.
                    let _ = events.send(acknowledge).await;
                    admitted.push((plan, position));
                }
                Admission::AlreadyFinished { result } => {
                    tracing::info!(plan = %id, "submitted plan already finished; replaying its result");
                    let _ = events.send(acknowledge).await;
                    let replay = PlanOutput::replay(&result, Some(&position));
                    sink.deliver(Some(id.clone()), replay).await;
                    answer_followers(&claims, &id, |position| {
                        PlanOutput::replay(&result, Some(&position))
                    })
                    .await;
                }
                Admission::InProgress => {
                    sink.deliver(None, in_progress(&id, position)).await;
                    answer_followers(&claims, &id, |position| in_progress(&id, position)).await;
                }
            }
        }
        for (plan, position) in admitted {
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                // The rest are journalled; the next run resumes them.
                () = interrupt.cancelled() => return,
            };
            runs.spawn(run_plan(
                plan,
                position,
                runner.clone(),
                journal.clone(),
                sink.clone(),
                claims.clone(),
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
    claims: Claims<Sink>,
    permit: OwnedSemaphorePermit,
) {
    let id = plan.id().to_owned();
    if claims.claim(&id, emit.clone(), position.clone()) == Claim::Follow {
        tracing::info!(plan = %id, "this run already works on a plan with this id; this copy gets its result");
        return;
    }
    let body = serde_json::to_string(&plan).expect("plans serialise");
    let admission = journal
        .accept(vec![(id.clone(), body)])
        .await
        .map(|mut admissions| admissions.pop());
    match admission {
        Ok(Some(Admission::New)) => {
            run_plan(plan, position, runner, journal, emit, claims, permit).await;
        }
        Ok(Some(Admission::AlreadyFinished { result })) => {
            tracing::info!(plan = %id, "plan already finished in an earlier run; replaying its result");
            let replay = PlanOutput::replay(&result, Some(&position));
            emit.deliver(None, replay).await;
            answer_followers(&claims, &id, |position| {
                PlanOutput::replay(&result, Some(&position))
            })
            .await;
        }
        Ok(Some(Admission::InProgress)) => {
            emit.deliver(None, in_progress(&id, position)).await;
            answer_followers(&claims, &id, |position| in_progress(&id, position)).await;
        }
        Ok(None) | Err(_) => {
            let reason = match admission {
                Err(error) => format!("the journal refused the plan: {error}"),
                _ => "the journal gave no answer".to_owned(),
            };
            emit.deliver(None, not_accepted(&id, position, &reason))
                .await;
            answer_followers(&claims, &id, |position| {
                not_accepted(&id, position, &reason)
            })
            .await;
        }
    }
}

fn in_progress(id: &str, position: InputPosition) -> PlanOutput {
    let result = PlanResult::rejected(
        Some(id.to_owned()),
        position,
        vec![format!("a plan with id {id:?} is already in progress")],
    );
    PlanOutput::Ran(Box::new(result))
}

fn not_accepted(id: &str, position: InputPosition, reason: &str) -> PlanOutput {
    tracing::error!(plan = %id, %reason, "plan not accepted");
    let mut result = PlanResult::new(Some(id.to_owned()), PlanStatus::Failed);
    result.position = position;
    result.errors.push(reason.to_owned());
    PlanOutput::Ran(Box::new(result))
}

async fn run_plan(
    plan: Plan,
    position: InputPosition,
    runner: PlanRunner,
    journal: Journal,
    emit: Sink,
    claims: Claims<Sink>,
    _permit: OwnedSemaphorePermit,
) {
    match runner.run(&plan).await {
        RunEnd::Finished(mut result) => {
            result.position = position;
            finish(&journal, &emit, &claims, *result).await;
        }
        RunEnd::Interrupted => {
            let followers = claims.release(plan.id()).len();
            tracing::info!(plan = %plan.id(), followers, "plan interrupted; it stays in the journal");
        }
    }
}

/// Answers the copies that followed the run of `id`, each at its own place in its input.
async fn answer_followers(
    claims: &Claims<Sink>,
    id: &str,
    output_at: impl Fn(InputPosition) -> PlanOutput,
) {
    for follower in claims.release(id) {
        let output = output_at(follower.position);
        follower.sink.deliver(Some(id.to_owned()), output).await;
    }
}

/// Records the result durably, then hands it on: a crash between the two replays the result
/// on the next run instead of losing it.
async fn finish(journal: &Journal, emit: &Sink, claims: &Claims<Sink>, result: PlanResult) {
    let id = result.id.clone().expect("finished plans have ids");
    let line = result.to_line();
    let finished = journal.finish(id.clone(), line.clone(), result.retryable);
    if let Err(error) = finished.await {
        tracing::error!(plan = %id, %error, "could not journal a result; printing it anyway");
    }
    emit.deliver(Some(id.clone()), PlanOutput::Ran(Box::new(result)))
        .await;
    answer_followers(claims, &id, |position| {
        PlanOutput::replay(&line, Some(&position))
    })
    .await;
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
        for Emit { id, output } in batch.drain(..) {
            ids.extend(id);
            if !output.succeeded() {
                all_succeeded.store(false, Ordering::SeqCst);
            }
            serde_json::to_writer(&mut bytes, &output).expect("results always serialise");
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
