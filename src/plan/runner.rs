//! One work plan's way through the agents: validate (executor) → orchestrate (orchestrator) →
//! for each task, in dependency order and in parallel where the graph allows: optimize
//! (optimizer) → execute (executor) → review (reviewer), executing again with the reviewer's
//! feedback until the review passes or `max_review_attempts` is spent.
//!
//! Every step is a job for a worker of that role. Losing a worker is handled below this level
//! (the job is redelivered); here a failed step is either a provider hiccup to retry or the
//! plan's outcome.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde_json::{Value, json};

use super::graph::TaskGraph;
use super::model::{Plan, TaskSpec};
use super::result::{PlanResult, PlanStatus, TaskOutcome, Usage};
use crate::agent::{DeliveryFailure, JobError, JobRequest};
use crate::config::Role;
use crate::protocol::error_codes;
use crate::supervisor::{Backoff, EventKind, Supervisor};

/// The longest wait between two tries of a step the model provider turned away.
const PROVIDER_RETRY_CAP: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct RunnerSettings {
    pub step_deadline: Duration,
    /// Extra tries of a step after a retryable provider error (rate limit, overload, 5xx).
    pub provider_retries: u32,
    pub provider_retry_base: Duration,
    /// How long a step waits for a role with no usable agent before the plan fails.
    pub agent_wait: Duration,
}

#[derive(Clone)]
pub struct PlanRunner {
    supervisor: Arc<Supervisor>,
    settings: RunnerSettings,
}

/// How a run ended: with a result, or cut short because the supervisor is stopping (the plan
/// stays unfinished in the journal and is resumed by the next run).
#[derive(Debug)]
pub enum RunEnd {
    Finished(Box<PlanResult>),
    Interrupted,
}

#[derive(Debug)]
enum StepError {
    /// The plan's own outcome: final.
    Failed {
        message: String,
        failures: Vec<DeliveryFailure>,
    },
    /// The surroundings failed the step (no usable agent, a rejected key, a provider that
    /// stayed unavailable): the plan may run again when submitted again.
    Environment {
        message: String,
    },
    Interrupted,
}

/// Worker error codes that say the surroundings failed, not the request: a rejected key or a
/// configuration problem (`config`), or a provider that stayed unavailable after every retry.
const ENVIRONMENT_CODES: [&str; 3] = [
    error_codes::CONFIG,
    error_codes::RATE_LIMITED,
    error_codes::PROVIDER_UNAVAILABLE,
];

struct StepOk {
    value: Value,
    deliveries: u32,
}

/// What one task contributes to its plan's result.
struct TaskRun {
    outcome: TaskOutcome,
    usage: Usage,
    provider: Option<String>,
    failures: Vec<DeliveryFailure>,
    /// The task failed because of its surroundings (see [`StepError::Environment`]).
    retryable: bool,
}

impl PlanRunner {
    pub fn new(supervisor: Arc<Supervisor>, settings: RunnerSettings) -> Self {
        Self {
            supervisor,
            settings,
        }
    }

    /// Stops the agents: jobs still waiting are answered as interrupted, so every run ends.
    pub async fn stop_agents(&self) {
        self.supervisor.shutdown().await;
    }

    pub async fn run(&self, plan: &Plan) -> RunEnd {
        let started = Instant::now();
        let mut result = match self.run_steps(plan).await {
            Ok(result) => result,
            Err(()) => return RunEnd::Interrupted,
        };
        result.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        RunEnd::Finished(Box::new(result))
    }

    async fn run_steps(&self, plan: &Plan) -> Result<PlanResult, ()> {
        let id = plan.id().to_owned();
        let plan_json = serde_json::to_value(plan).expect("plans serialise");
        let mut result = PlanResult::new(Some(id.clone()), PlanStatus::Succeeded);

        let validation = match self
            .step(
                &format!("{id}/validate"),
                Role::Executor,
                "validate_plan",
                json!({ "plan": plan_json }),
            )
            .await
        {
            Ok(step) => step,
            Err(error) => return fail_plan(result, error),
        };
        result.deliveries = result.deliveries.max(validation.deliveries);
        if validation.value["valid"] != Value::Bool(true) {
            result.status = PlanStatus::Rejected;
            result.issues = strings(&validation.value["issues"]);
            result.questions = strings(&validation.value["questions"]);
            result.errors = result
                .issues
                .iter()
                .map(|issue| format!("validation: {issue}"))
                .collect();
            return Ok(result);
        }

        let orchestration = match self
            .step(
                &format!("{id}/orchestrate"),
                Role::Orchestrator,
                "orchestrate",
                json!({ "plan": plan_json }),
            )
            .await
        {
            Ok(step) => step,
            Err(error) => return fail_plan(result, error),
        };
        result.deliveries = result.deliveries.max(orchestration.deliveries);
        let tasks: Vec<TaskSpec> =
            match serde_json::from_value(known_task_fields(&orchestration.value["tasks"])) {
                Ok(tasks) => tasks,
                Err(error) => {
                    result.status = PlanStatus::Failed;
                    result.errors.push(format!(
                        "orchestrator returned an unusable task list: {error}"
                    ));
                    return Ok(result);
                }
            };
        let graph = match TaskGraph::new(&tasks) {
            Ok(graph) => graph,
            Err(error) => {
                result.status = PlanStatus::Failed;
                result.errors.push(format!(
                    "orchestrator returned an invalid task graph: {error}"
                ));
                return Ok(result);
            }
        };
        let runs = self
            .run_graph(
                &id,
                &plan_json,
                &tasks,
                &graph,
                plan.options.max_review_attempts,
            )
            .await?;
        Ok(assemble(result, runs, &graph))
    }

    /// Runs every task once its dependencies have succeeded; a task whose dependency failed
    /// fails without running, naming the dependency.
    async fn run_graph(
        &self,
        plan_id: &str,
        plan_json: &Value,
        tasks: &[TaskSpec],
        graph: &TaskGraph,
        max_attempts: u32,
    ) -> Result<HashMap<String, TaskRun>, ()> {
        let by_id: HashMap<&str, &TaskSpec> =
            tasks.iter().map(|task| (task.id.as_str(), task)).collect();
        let order = graph.topological_order();
        let mut done: HashMap<String, TaskRun> = HashMap::new();
        let mut started: HashSet<String> = HashSet::new();
        let mut running = FuturesUnordered::new();
        loop {
            let mut progressed = true;
            while progressed {
                progressed = false;
                for task_id in &order {
                    if started.contains(task_id) {
                        continue;
                    }
                    let dependencies = graph.dependencies(task_id);
                    if !dependencies.iter().all(|dep| done.contains_key(dep)) {
                        continue;
                    }
                    started.insert(task_id.clone());
                    progressed = true;
                    let failed_dependency = dependencies
                        .iter()
                        .find(|dep| done[*dep].outcome.status != PlanStatus::Succeeded);
                    if let Some(dependency) = failed_dependency {
                        done.insert(task_id.clone(), skipped(task_id, dependency));
                        continue;
                    }
                    let task = by_id[task_id.as_str()];
                    running.push(self.run_task(plan_id, plan_json, task, max_attempts));
                }
            }
            match running.next().await {
                Some(Ok(run)) => {
                    done.insert(run.outcome.id.clone(), run);
                }
                Some(Err(())) => return Err(()),
                None => return Ok(done),
            }
        }
    }

    async fn run_task(
        &self,
        plan_id: &str,
        plan_json: &Value,
        task: &TaskSpec,
        max_attempts: u32,
    ) -> Result<TaskRun, ()> {
        let task_json = serde_json::to_value(task).expect("tasks serialise");
        let prefix = format!("{plan_id}/{}", task.id);
        let mut run = TaskRun {
            outcome: TaskOutcome {
                id: task.id.clone(),
                status: PlanStatus::Failed,
                attempts: 0,
                output: None,
                review: None,
                error: None,
                deliveries: 0,
            },
            usage: Usage::default(),
            provider: None,
            failures: Vec::new(),
            retryable: false,
        };
        let params = json!({ "plan": plan_json, "task": task_json });
        let context = match self
            .step(
                &format!("{prefix}/optimize"),
                Role::Optimizer,
                "optimize",
                params,
            )
            .await
        {
            Ok(step) => run.absorb(step),
            Err(error) => return run.fail(error),
        };
        let mut feedback: Vec<String> = Vec::new();
        for attempt in 1..=max_attempts.max(1) {
            run.outcome.attempts = attempt;
            let params = json!({
                "plan": plan_json, "task": task_json, "attempt": attempt,
                "feedback": feedback, "context": context,
            });
            let execution = match self
                .step(
                    &format!("{prefix}/execute/{attempt}"),
                    Role::Executor,
                    "execute",
                    params,
                )
                .await
            {
                Ok(step) => run.absorb(step),
                Err(error) => return run.fail(error),
            };
            if let Some(provider) = execution["provider"].as_str() {
                run.provider = Some(provider.to_owned());
            }
            let params = json!({ "plan": plan_json, "task": task_json, "execution": execution, "attempt": attempt });
            let review = match self
                .step(
                    &format!("{prefix}/review/{attempt}"),
                    Role::Reviewer,
                    "review",
                    params,
                )
                .await
            {
                Ok(step) => run.absorb(step),
                Err(error) => return run.fail(error),
            };
            self.track_context(plan_id, &task.id, &execution, &context)
                .await;
            run.outcome.output = execution["output"].as_str().map(str::to_owned);
            let passed = review["passed"] == Value::Bool(true);
            feedback = strings(&review["issues"]);
            run.outcome.review = Some(review);
            if passed {
                run.outcome.status = PlanStatus::Succeeded;
                return Ok(run);
            }
        }
        run.outcome.error = Some(format!(
            "review failed after {} attempts: {}",
            run.outcome.attempts,
            if feedback.is_empty() {
                "no issues given".to_owned()
            } else {
                feedback.join("; ")
            }
        ));
        Ok(run)
    }

    /// Tells the orchestrator how full the last execution's context was; it answers with the
    /// thresholds crossed, which become events. Best effort: a plan never fails over this.
    async fn track_context(
        &self,
        plan_id: &str,
        task_id: &str,
        execution: &Value,
        context: &Value,
    ) {
        let used = execution["usage"]["input_tokens"].as_u64().unwrap_or(0)
            + execution["usage"]["output_tokens"].as_u64().unwrap_or(0);
        let Some(window) = context["context_window"]
            .as_u64()
            .filter(|window| *window > 0)
        else {
            return;
        };
        let params = json!({ "plan_id": plan_id, "used_tokens": used, "window": window });
        let request = JobRequest {
            id: format!("{plan_id}/{task_id}/context/{}", fastrand::u32(..)),
            method: "track_context".to_owned(),
            params,
            deadline: self.settings.step_deadline,
        };
        let Ok(outcome) = self.submit(Role::Orchestrator, request).await else {
            return;
        };
        let Ok(answer) = outcome.result else { return };
        for event in answer["events"].as_array().into_iter().flatten() {
            let level = event["level"].as_str().unwrap_or("unknown").to_owned();
            let utilisation = event["utilisation"].as_f64().unwrap_or(0.0);
            tracing::warn!(plan = plan_id, task = task_id, %level, utilisation, "context utilisation crossed a threshold");
            self.supervisor.events().publish(
                None,
                EventKind::ContextPressure {
                    plan: plan_id.to_owned(),
                    task: task_id.to_owned(),
                    level,
                    utilisation,
                },
            );
        }
    }

    /// One request to a worker of `role`, retried with backoff while the model provider is
    /// rate limiting or unavailable. Those retries are not worker failures.
    async fn step(
        &self,
        job_id: &str,
        role: Role,
        method: &str,
        params: Value,
    ) -> Result<StepOk, StepError> {
        let mut retry = 0u32;
        let mut deliveries = 0;
        loop {
            let id = if retry == 0 {
                job_id.to_owned()
            } else {
                format!("{job_id}#{retry}")
            };
            let request = JobRequest {
                id,
                method: method.to_owned(),
                params: params.clone(),
                deadline: self.settings.step_deadline,
            };
            let outcome = match self.submit(role, request).await {
                Ok(outcome) => outcome,
                Err(StepError::Environment { message }) => {
                    return Err(StepError::Environment {
                        message: format!("{role}.{method}: {message}"),
                    });
                }
                Err(other) => return Err(other),
            };
            deliveries = deliveries.max(outcome.deliveries);
            let error = match outcome.result {
                Ok(value) => return Ok(StepOk { value, deliveries }),
                Err(error) => error,
            };
            let message = |text: String| StepError::Failed {
                message: format!("{role}.{method}: {text}"),
                failures: Vec::new(),
            };
            match error {
                JobError::Worker(body)
                    if body.retryable
                        && [error_codes::RATE_LIMITED, error_codes::PROVIDER_UNAVAILABLE]
                            .contains(&body.code.as_str())
                        && retry < self.settings.provider_retries =>
                {
                    let hinted = body
                        .details
                        .as_ref()
                        .and_then(|details| details.get("retry_after_ms"))
                        .and_then(Value::as_u64)
                        .map(Duration::from_millis);
                    let delay = provider_retry_delay(
                        self.settings.provider_retry_base,
                        retry,
                        hinted,
                        fastrand::f64(),
                    );
                    tracing::info!(job = job_id, code = %body.code, ?delay, "provider turned the request away; retrying");
                    retry += 1;
                    tokio::time::sleep(delay).await;
                }
                JobError::Worker(body) if ENVIRONMENT_CODES.contains(&body.code.as_str()) => {
                    return Err(StepError::Environment {
                        message: format!("{role}.{method}: {}: {}", body.code, body.message),
                    });
                }
                JobError::Worker(body) => {
                    return Err(message(format!("{}: {}", body.code, body.message)));
                }
                JobError::Quarantined { failures } => {
                    let causes: Vec<String> = failures
                        .iter()
                        .map(|f| {
                            let shared = if f.shared { ", shared" } else { "" };
                            format!("{} on {}{shared}", f.cause, f.agent)
                        })
                        .collect();
                    return Err(StepError::Failed {
                        message: format!(
                            "{role}.{method}: quarantined after {} lost deliveries ({})",
                            failures.len(),
                            causes.join(", ")
                        ),
                        failures,
                    });
                }
                JobError::SupervisorStopped => return Err(StepError::Interrupted),
                error @ JobError::NoWorkers { .. } => {
                    return Err(StepError::Environment {
                        message: format!("{role}.{method}: {error}"),
                    });
                }
                other => return Err(message(other.to_string())),
            }
        }
    }

    /// Submits one request and waits for its outcome, or until `role` has had no usable agent
    /// for `agent_wait`: then the request is withdrawn and the step fails, naming the role and
    /// why each of its agents is out.
    async fn submit(
        &self,
        role: Role,
        request: JobRequest,
    ) -> Result<crate::agent::JobOutcome, StepError> {
        let outcome = self.supervisor.submit(role, request);
        let unavailable = tokio::select! {
            biased;
            outcome = outcome => return outcome.map_err(|_| StepError::Interrupted),
            unavailable = self.supervisor.role_unavailable(role, self.settings.agent_wait) => unavailable,
        };
        // The receiver is gone now, so the job still in the queue is recognisably abandoned.
        self.supervisor.forget_abandoned(role);
        tracing::warn!(%role, reason = %unavailable, "giving up on a role with no usable agent");
        Err(StepError::Environment {
            message: unavailable.to_string(),
        })
    }
}

/// How long to wait before retry number `retry` of a call the provider turned away.
///
/// Full jitter spreads the plans that were refused together (one outage refuses them all at
/// once) over the whole backoff, so they do not come back in lockstep. A `retry-after` from
/// the API is a floor: nothing retries earlier than asked, and the jitter spreads the retries
/// out after it.
fn provider_retry_delay(
    base: Duration,
    retry: u32,
    hinted: Option<Duration>,
    jitter: f64,
) -> Duration {
    let backoff = Backoff {
        base,
        factor: 2.0,
        max: PROVIDER_RETRY_CAP,
    };
    let spread = backoff.full_jitter(retry, jitter);
    (hinted.unwrap_or_default() + spread).min(PROVIDER_RETRY_CAP)
}

impl TaskRun {
    fn absorb(&mut self, step: StepOk) -> Value {
        self.outcome.deliveries = self.outcome.deliveries.max(step.deliveries);
        self.usage.add_from(&step.value);
        step.value
    }

    fn fail(mut self, error: StepError) -> Result<TaskRun, ()> {
        match error {
            StepError::Interrupted => Err(()),
            StepError::Failed { message, failures } => {
                self.outcome.status = PlanStatus::Failed;
                self.outcome.error = Some(message);
                self.failures = failures;
                Ok(self)
            }
            StepError::Environment { message } => {
                self.outcome.status = PlanStatus::Failed;
                self.outcome.error = Some(message);
                self.retryable = true;
                Ok(self)
            }
        }
    }
}

fn skipped(task_id: &str, dependency: &str) -> TaskRun {
    TaskRun {
        outcome: TaskOutcome {
            id: task_id.to_owned(),
            status: PlanStatus::Failed,
            attempts: 0,
            output: None,
            review: None,
            error: Some(format!("not run: dependency {dependency:?} failed")),
            deliveries: 0,
        },
        usage: Usage::default(),
        provider: None,
        failures: Vec::new(),
        retryable: false,
    }
}

fn fail_plan(mut result: PlanResult, error: StepError) -> Result<PlanResult, ()> {
    match error {
        StepError::Interrupted => Err(()),
        StepError::Failed { message, failures } => {
            result.status = PlanStatus::Failed;
            result.errors.push(message);
            result.failures = failures;
            result.deliveries = result.deliveries.max(result.failures.len() as u32);
            Ok(result)
        }
        StepError::Environment { message } => {
            result.status = PlanStatus::Failed;
            result.errors.push(message);
            result.retryable = true;
            Ok(result)
        }
    }
}

/// Folds task outcomes into the plan result, in the graph's execution order.
fn assemble(
    mut result: PlanResult,
    mut runs: HashMap<String, TaskRun>,
    graph: &TaskGraph,
) -> PlanResult {
    let order = graph.topological_order();
    let mut outputs = Vec::new();
    for task_id in &order {
        let Some(run) = runs.remove(task_id) else {
            continue;
        };
        result.usage.input_tokens += run.usage.input_tokens;
        result.usage.output_tokens += run.usage.output_tokens;
        result.deliveries = result
            .deliveries
            .max(run.outcome.deliveries)
            .max(run.failures.len() as u32);
        result.attempts = result.attempts.max(run.outcome.attempts);
        if run.provider.is_some() {
            result.provider = run.provider;
        }
        result.failures.extend(run.failures);
        // A plan cut short by its surroundings may run again, even if another of its tasks
        // failed on its own: that task's outcome may differ in a complete run.
        result.retryable |= run.retryable;
        if let Some(error) = &run.outcome.error {
            result
                .errors
                .push(format!("task {}: {error}", run.outcome.id));
        }
        if run.outcome.status != PlanStatus::Succeeded {
            result.status = PlanStatus::Failed;
        }
        if let Some(output) = &run.outcome.output {
            outputs.push((run.outcome.id.clone(), output.clone()));
        }
        if run.outcome.review.is_some() {
            result.review = run.outcome.review.clone();
        }
        result.tasks.push(run.outcome);
    }
    result.output = match outputs.len() {
        0 => None,
        1 => outputs.pop().map(|(_, output)| output),
        _ => Some(
            outputs
                .iter()
                .map(|(id, output)| format!("## {id}\n{output}"))
                .collect::<Vec<_>>()
                .join("\n\n"),
        ),
    };
    result
}

/// The orchestrator may annotate tasks with fields of its own; the runner needs only these.
fn known_task_fields(tasks: &Value) -> Value {
    const KNOWN: [&str; 6] = [
        "id",
        "prompt",
        "depends_on",
        "tech_stack",
        "success_criteria",
        "constraints",
    ];
    match tasks {
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| match item {
                    Value::Object(fields) => Value::Object(
                        fields
                            .iter()
                            .filter(|(key, _)| KNOWN.contains(&key.as_str()))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    ),
                    other => other.clone(),
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_refused_together_retry_spread_over_the_whole_backoff() {
        let base = Duration::from_secs(1);
        let delays: Vec<Duration> = (0..64)
            .map(|n| provider_retry_delay(base, 2, None, f64::from(n) / 64.0))
            .collect();
        assert_eq!(delays[0], Duration::ZERO);
        assert_eq!(delays[32], Duration::from_secs(2));
        assert!(delays.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(delays.iter().all(|delay| *delay < Duration::from_secs(4)));
    }

    #[test]
    fn a_retry_after_from_the_api_is_a_floor_that_the_jitter_spreads_beyond() {
        let base = Duration::from_secs(1);
        let hinted = Some(Duration::from_millis(1500));
        assert_eq!(
            provider_retry_delay(base, 0, hinted, 0.0),
            Duration::from_millis(1500)
        );
        assert_eq!(
            provider_retry_delay(base, 0, hinted, 0.5),
            Duration::from_secs(2)
        );
        assert_eq!(
            provider_retry_delay(base, 0, Some(Duration::from_secs(3600)), 0.5),
            PROVIDER_RETRY_CAP
        );
    }
}
