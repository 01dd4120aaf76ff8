//! The agent table: starts one actor per agent, routes jobs to a role's queue, watches
//! whether each role can take work (the start-up gate, the wait for a role with no usable
//! agent), and runs the shutdown sequence.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::select_all;
use serde_json::Value;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::availability::{
    AgentCondition, AgentFailure, REPORT_STDERR_LINES, RoleCondition, RoleFailure, RoleHealth,
    RoleUnavailable, StartupFailure, agent_condition, last_worker_lines, role_condition,
};
use super::blueprint::Blueprint;
use super::directory::AgentDirectory;
use super::events::{EventBus, EventKind};
use crate::agent::{
    AgentActor, AgentContext, AgentHandle, AgentSpec, AgentStatus, Job, JobError, JobOutcome,
    JobRequest,
};
use crate::config::{Config, Role};
use crate::process::{
    Launcher, LocalLauncher, PackageError, Warden, WorkerEnvironment, unpack_embedded_package,
};

/// How the supervisor is wired to its surroundings; the config says how it behaves.
pub struct SupervisorOptions {
    /// Where the embedded worker package is unpacked.
    pub cache_dir: PathBuf,
    /// The binary to run as the orphan warden (normally the running `mnemosyne` itself).
    /// Without one, workers still die with the supervisor but their children may not.
    pub warden_program: Option<PathBuf>,
    /// Replaces the default launcher (children of this process).
    pub launcher: Option<Arc<dyn Launcher>>,
    /// The environment workers start from (allowlisted, plus secrets set on purpose).
    pub base_env: WorkerEnvironment,
    /// The working directory of workers.
    pub cwd: Option<PathBuf>,
    /// The caller's kill switch (`main`'s second signal): once cancelled, every stop skips the
    /// graces and SIGKILLs at once. The supervisor's own switch is a child of it, so the one
    /// shutdown token tree starts in `main`.
    pub kill_now: CancellationToken,
}

impl SupervisorOptions {
    pub fn new(cache_dir: PathBuf) -> Self {
        Self {
            cache_dir,
            warden_program: None,
            launcher: None,
            base_env: WorkerEnvironment::from_allowlist(std::env::vars_os()),
            cwd: None,
            kill_now: CancellationToken::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Package(#[from] PackageError),
    #[error("could not start the worker launcher")]
    Launcher(#[source] std::io::Error),
    #[error("could not start the orphan warden {program}")]
    Warden {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub(super) struct RoleQueue {
    sender: async_channel::Sender<Job>,
    /// Kept so jobs still queued at shutdown can be answered instead of silently dropped.
    receiver: async_channel::Receiver<Job>,
    isolated_sender: async_channel::Sender<Job>,
    isolated_receiver: async_channel::Receiver<Job>,
    /// How many agents the role has; a reload may change it.
    pub(super) agents: AtomicUsize,
    /// How long the role has gone without a usable agent, kept by the role's watcher task.
    health: watch::Sender<RoleHealth>,
    /// Ends the role's watcher task, which a reload replaces when the role's agents change.
    watcher: Mutex<CancellationToken>,
    /// The interpreter of the role's workers, named in start-up reports.
    pub(super) python: Mutex<PathBuf>,
}

impl RoleQueue {
    fn new(agents: usize, python: PathBuf) -> Self {
        let (sender, receiver) = async_channel::unbounded();
        let (isolated_sender, isolated_receiver) = async_channel::unbounded();
        Self {
            sender,
            receiver,
            isolated_sender,
            isolated_receiver,
            agents: AtomicUsize::new(agents),
            health: watch::Sender::new(RoleHealth::unknown()),
            watcher: Mutex::new(CancellationToken::new()),
            python: Mutex::new(python),
        }
    }
}

/// What every agent's actor is connected to.
pub(super) struct Wiring {
    launcher: Arc<dyn Launcher>,
    warden: Option<Arc<Warden>>,
    pub(super) events: EventBus,
    tasks: TaskTracker,
    pub(super) shutdown: CancellationToken,
    kill_now: CancellationToken,
}

impl Wiring {
    /// Starts the actor of `spec`, taking work from `queue`.
    pub(super) fn spawn_agent(&self, spec: AgentSpec, queue: &RoleQueue) -> AgentHandle {
        let ctx = AgentContext {
            launcher: self.launcher.clone(),
            warden: self.warden.clone(),
            events: self.events.clone(),
            jobs: queue.receiver.clone(),
            requeue: queue.sender.clone(),
            isolated: queue.isolated_receiver.clone(),
            requeue_isolated: queue.isolated_sender.clone(),
            shutdown: self.shutdown.child_token(),
            kill_now: self.kill_now.child_token(),
        };
        let (actor, handle) = AgentActor::new(spec, ctx);
        self.tasks.spawn(actor.run());
        handle
    }
}

/// The configuration the agents currently run with; its lock also keeps reloads one at a
/// time.
pub(super) struct Applied {
    pub(super) config: Config,
    pub(super) base_env: WorkerEnvironment,
}

pub struct Supervisor {
    /// Every agent, in order; replaced as a whole when a reload adds or removes agents.
    pub(super) agents: watch::Sender<Arc<Vec<AgentHandle>>>,
    pub(super) queues: BTreeMap<Role, RoleQueue>,
    pub(super) wiring: Wiring,
    pub(super) blueprint: Blueprint,
    pub(super) applied: tokio::sync::Mutex<Applied>,
    request_timeout: Duration,
    next_job: AtomicU64,
}

impl Supervisor {
    /// Starts every agent. Must be called inside a Tokio runtime.
    pub fn start(config: &Config, options: SupervisorOptions) -> Result<Self, StartError> {
        let package_dir = unpack_embedded_package(&options.cache_dir)?;
        let launcher: Arc<dyn Launcher> = match options.launcher {
            Some(launcher) => launcher,
            None => Arc::new(LocalLauncher::new().map_err(StartError::Launcher)?),
        };
        let warden = match &options.warden_program {
            Some(program) => Some(Arc::new(Warden::start(program).map_err(|source| {
                StartError::Warden {
                    program: program.clone(),
                    source,
                }
            })?)),
            None => None,
        };
        let settings = &config.supervisor;
        let shutdown = CancellationToken::new();
        let wiring = Wiring {
            launcher,
            warden,
            events: EventBus::new(),
            tasks: TaskTracker::new(),
            kill_now: options.kill_now.child_token(),
            shutdown,
        };
        let blueprint = Blueprint {
            package_dir,
            cwd: options.cwd.clone(),
        };
        let mut agents = Vec::new();
        let mut queues = BTreeMap::new();
        for (&role, agent_config) in &config.agents {
            let queue = RoleQueue::new(agent_config.count as usize, config.python_for(role));
            for n in 1..=agent_config.count {
                let spec = blueprint.agent_spec(config, &options.base_env, role, n);
                agents.push(wiring.spawn_agent(spec, &queue));
            }
            queues.insert(role, queue);
        }
        let supervisor = Self {
            agents: watch::Sender::new(Arc::new(agents)),
            queues,
            wiring,
            blueprint,
            applied: tokio::sync::Mutex::new(Applied {
                config: config.clone(),
                base_env: options.base_env,
            }),
            request_timeout: settings.request_timeout,
            next_job: AtomicU64::new(1),
        };
        for role in supervisor.queues.keys() {
            supervisor.watch_role_health(*role);
        }
        Ok(supervisor)
    }

    /// (Re)starts the task that keeps `role`'s health up to date from its current agents.
    pub(super) fn watch_role_health(&self, role: Role) {
        let Some(queue) = self.queues.get(&role) else {
            return;
        };
        let statuses: Vec<_> = self
            .agents()
            .iter()
            .filter(|agent| agent.role() == role)
            .map(AgentHandle::watch)
            .collect();
        let token = self.wiring.shutdown.child_token();
        let previous = std::mem::replace(
            &mut *queue
                .watcher
                .lock()
                .expect("the watcher lock is never poisoned"),
            token.clone(),
        );
        previous.cancel();
        if !statuses.is_empty() {
            self.wiring
                .tasks
                .spawn(watch_role(statuses, queue.health.clone(), token));
        }
    }

    /// The agents as they are now. A reload may add or remove agents; [`Supervisor::directory`]
    /// follows such changes.
    pub fn agents(&self) -> Arc<Vec<AgentHandle>> {
        self.agents.borrow().clone()
    }

    /// A live view of the agents for long-lived readers (the control server, the dashboard).
    pub fn directory(&self) -> AgentDirectory {
        AgentDirectory::new(self.agents.subscribe())
    }

    pub fn agent(&self, id: &str) -> Option<AgentHandle> {
        self.agents().iter().find(|agent| agent.id() == id).cloned()
    }

    pub fn statuses(&self) -> Vec<AgentStatus> {
        self.agents().iter().map(AgentHandle::status).collect()
    }

    pub fn events(&self) -> &EventBus {
        &self.wiring.events
    }

    /// The default deadline of a request.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// A fresh job id, unique within this supervisor.
    pub fn next_job_id(&self) -> String {
        format!("job-{}", self.next_job.fetch_add(1, Ordering::Relaxed))
    }

    /// Queues a request for any worker of `role`; the receiver resolves when it is finished,
    /// failed, or quarantined. A worker lost while holding it does not lose the job.
    pub fn submit(&self, role: Role, request: JobRequest) -> oneshot::Receiver<JobOutcome> {
        let (job, outcome) = Job::new(request);
        match self.queues.get(&role) {
            Some(queue) if queue.agents.load(Ordering::Relaxed) > 0 => {
                if let Err(closed) = queue.sender.try_send(job) {
                    closed.into_inner().finish(Err(JobError::SupervisorStopped));
                }
            }
            _ => job.finish(Err(JobError::NoWorkers { role })),
        }
        outcome
    }

    /// Calls `method` on a worker of `role` with the default deadline and waits for the outcome.
    pub async fn call(&self, role: Role, method: &str, params: Value) -> JobOutcome {
        let request = JobRequest {
            id: self.next_job_id(),
            method: method.to_owned(),
            params,
            deadline: self.request_timeout,
        };
        let outcome = self.submit(role, request);
        outcome.await.unwrap_or(JobOutcome {
            result: Err(JobError::SupervisorStopped),
            deliveries: 0,
        })
    }

    /// A token that, once cancelled, makes every stop skip the graces and SIGKILL at once
    /// (the second Ctrl-C).
    pub fn kill_switch(&self) -> CancellationToken {
        self.wiring.kill_now.clone()
    }

    /// The start-up gate: waits until every role with agents has had a worker ready, or
    /// fails naming each role none of whose agents ever became ready before all of them went
    /// down (failed, cooling down after a crash loop, or stopped by policy), with the cause,
    /// the last stderr lines of its worker, and the fix.
    ///
    /// Waits as long as a role is still trying, which the crash-loop breaker bounds
    /// (`restart_window`, `max_restarts_in_window`), or an operator holds it stopped; callers
    /// race it against their interrupt.
    pub async fn wait_started(&self) -> Result<(), StartupFailure> {
        // The event stream catches an agent that was ready only briefly, between two looks at
        // its status; the status watches catch the final state, published after its event.
        let (history, mut events) = self.wiring.events.history_and_subscribe();
        let mut ever_ready: BTreeSet<Role> = BTreeSet::new();
        let mark_ready = |ever_ready: &mut BTreeSet<Role>, kind: &EventKind, agent: &str| {
            if let EventKind::StateChanged { to, .. } = kind
                && matches!(to, crate::agent::StateName::Ready)
                && let Some(handle) = self.agent(agent)
            {
                ever_ready.insert(handle.role());
            }
        };
        for event in &history {
            if let Some(agent) = &event.agent {
                mark_ready(&mut ever_ready, &event.kind, agent);
            }
        }
        let mut watches: Vec<watch::Receiver<AgentStatus>> =
            self.agents().iter().map(AgentHandle::watch).collect();
        if watches.is_empty() {
            return Ok(());
        }
        loop {
            let mut by_role: BTreeMap<Role, Vec<AgentStatus>> = BTreeMap::new();
            for watch in &mut watches {
                let status = watch.borrow_and_update().clone();
                by_role.entry(status.role).or_default().push(status);
            }
            for (role, statuses) in &by_role {
                if statuses
                    .iter()
                    .any(|status| agent_condition(status) == AgentCondition::Usable)
                {
                    ever_ready.insert(*role);
                }
            }
            let unresolved = by_role.iter().any(|(role, statuses)| {
                !ever_ready.contains(role) && role_condition(statuses) != RoleCondition::Down
            });
            if !unresolved {
                let roles: Vec<RoleFailure> = by_role
                    .iter()
                    .filter(|(role, _)| !ever_ready.contains(role))
                    .map(|(role, statuses)| self.role_failure(*role, statuses))
                    .collect();
                return if roles.is_empty() {
                    Ok(())
                } else {
                    Err(StartupFailure { roles })
                };
            }
            let changed = select_all(watches.iter_mut().map(|watch| Box::pin(watch.changed())));
            tokio::select! {
                (result, _, _) = changed => {
                    if result.is_err() {
                        // An actor ended, which happens only when the supervisor stops; the
                        // caller's interrupt decides what comes next.
                        return Ok(());
                    }
                }
                event = events.recv() => match event {
                    Ok(event) => {
                        if let Some(agent) = &event.agent {
                            mark_ready(&mut ever_ready, &event.kind, agent);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
            }
        }
    }

    fn role_failure(&self, role: Role, statuses: &[AgentStatus]) -> RoleFailure {
        let agents = statuses
            .iter()
            .map(|status| AgentFailure {
                id: status.id.clone(),
                state: status.state,
                reason: status
                    .reason
                    .clone()
                    .unwrap_or_else(|| "no reason given".to_owned()),
                cause: status.last_exit.as_ref().map(|exit| exit.cause),
                stderr_tail: self
                    .agent(&status.id)
                    .map(|agent| {
                        last_worker_lines(
                            &agent.stderr_tail(crate::process::STDERR_TAIL_LINES),
                            REPORT_STDERR_LINES,
                        )
                    })
                    .unwrap_or_default(),
            })
            .collect();
        RoleFailure {
            role,
            python: self
                .queues
                .get(&role)
                .map(|queue| {
                    queue
                        .python
                        .lock()
                        .expect("the interpreter lock is never poisoned")
                        .clone()
                })
                .unwrap_or_default(),
            agents,
        }
    }

    /// Resolves once `role` has had no usable agent for `limit`: every agent failed, cooling
    /// down, or stopped by its restart policy, with none ready in between. Never resolves for
    /// a role an operator holds stopped, nor for one without agents (a job for it fails at
    /// once).
    pub async fn role_unavailable(&self, role: Role, limit: Duration) -> RoleUnavailable {
        let Some(queue) = self.queues.get(&role) else {
            return std::future::pending().await;
        };
        let mut health = queue.health.subscribe();
        loop {
            let current = health.borrow_and_update().clone();
            let now = Instant::now();
            if current.gives_up(limit, now) {
                let since = current
                    .down_since
                    .expect("a role that gives up has been down");
                return RoleUnavailable {
                    role,
                    waited: Duration::from_secs((now - since).as_secs()),
                    agents: current.agents,
                };
            }
            let deadline = current
                .down_since
                .filter(|_| current.down_now)
                .map(|since| since + limit);
            tokio::select! {
                changed = health.changed() => {
                    if changed.is_err() {
                        // The watcher ended with the supervisor; the job's own answer ends
                        // the wait instead.
                        return std::future::pending().await;
                    }
                }
                () = sleep_until(deadline) => {}
            }
        }
    }

    /// Drops the jobs of `role` still waiting in its queue whose callers gave up on them
    /// (see [`Supervisor::role_unavailable`]), so a worker that comes back later does not run
    /// work nobody waits for.
    pub fn forget_abandoned(&self, role: Role) {
        let Some(queue) = self.queues.get(&role) else {
            return;
        };
        for (sender, receiver) in [
            (&queue.sender, &queue.receiver),
            (&queue.isolated_sender, &queue.isolated_receiver),
        ] {
            // Each job is looked at once; those still wanted go to the back of the queue.
            for _ in 0..receiver.len() {
                let Ok(job) = receiver.try_recv() else { break };
                if job.reply.is_closed() {
                    tracing::debug!(job = %job.request.id, %role, "dropping a job nobody waits for");
                    continue;
                }
                if let Err(closed) = sender.try_send(job) {
                    closed.into_inner().finish(Err(JobError::SupervisorStopped));
                }
            }
        }
    }

    /// Stops every agent in parallel (shutdown message, graces, signals), answers any job
    /// still queued, and waits for the warden. Calling it again is harmless.
    ///
    /// Jobs waiting in a queue are answered at once, before the workers are stopped: when a
    /// role has no usable agent nobody would ever pull them, and their callers (plans being
    /// interrupted) must not wait for every worker's stop sequence to learn that.
    pub async fn shutdown(&self) {
        self.wiring.shutdown.cancel();
        self.answer_queued_jobs();
        self.wiring.tasks.close();
        self.wiring.tasks.wait().await;
        // Jobs that stopping workers gave back found the queues closed and were answered
        // then; this only catches what raced with the first pass.
        self.answer_queued_jobs();
        if let Some(warden) = &self.wiring.warden {
            warden.finish();
        }
    }

    fn answer_queued_jobs(&self) {
        for queue in self.queues.values() {
            queue.sender.close();
            queue.isolated_sender.close();
            while let Ok(job) = queue
                .isolated_receiver
                .try_recv()
                .or_else(|_| queue.receiver.try_recv())
            {
                job.finish(Err(JobError::SupervisorStopped));
            }
        }
    }
}

/// Keeps a role's health up to date from its agents' statuses until the supervisor stops.
async fn watch_role(
    mut statuses: Vec<watch::Receiver<AgentStatus>>,
    health: watch::Sender<RoleHealth>,
    shutdown: CancellationToken,
) {
    loop {
        let current: Vec<AgentStatus> = statuses
            .iter_mut()
            .map(|status| status.borrow_and_update().clone())
            .collect();
        // Plans waiting for the role watch this; they are woken only when it really changes.
        health.send_if_modified(|health| {
            let next = health.next(&current, Instant::now());
            let changed = next != *health;
            *health = next;
            changed
        });
        let changed = select_all(statuses.iter_mut().map(|status| Box::pin(status.changed())));
        tokio::select! {
            () = shutdown.cancelled() => return,
            (result, _, _) = changed => if result.is_err() { return },
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
