//! The agent table: starts one actor per agent, routes jobs to a role's queue, and runs the
//! shutdown sequence.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::backoff::Backoff;
use super::events::EventBus;
use super::restart::RestartRules;
use crate::agent::{
    AgentActor, AgentContext, AgentHandle, AgentSpec, AgentStatus, Job, JobError, JobOutcome,
    JobRequest, Timing,
};
use crate::config::{Config, Role};
use crate::process::{
    LaunchSpec, Launcher, LocalLauncher, PackageError, Warden, WorkerEnvironment,
    unpack_embedded_package,
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
}

impl SupervisorOptions {
    pub fn new(cache_dir: PathBuf) -> Self {
        Self {
            cache_dir,
            warden_program: None,
            launcher: None,
            base_env: WorkerEnvironment::from_allowlist(std::env::vars_os()),
            cwd: None,
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

struct RoleQueue {
    sender: async_channel::Sender<Job>,
    /// Kept so jobs still queued at shutdown can be answered instead of silently dropped.
    receiver: async_channel::Receiver<Job>,
    isolated_sender: async_channel::Sender<Job>,
    isolated_receiver: async_channel::Receiver<Job>,
    agents: usize,
}

pub struct Supervisor {
    agents: Vec<AgentHandle>,
    queues: BTreeMap<Role, RoleQueue>,
    events: EventBus,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    kill_now: CancellationToken,
    warden: Option<Arc<Warden>>,
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
        let events = EventBus::new();
        let tasks = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let kill_now = CancellationToken::new();
        let timing = Timing {
            heartbeat_interval: settings.heartbeat_interval,
            heartbeat_misses: settings.heartbeat_misses,
            start_timeout: settings.start_timeout,
            cancel_grace: settings.cancel_grace,
            stop_grace: settings.stop_grace,
            term_grace: settings.term_grace,
        };
        let backoff = Backoff {
            base: settings.backoff_base,
            factor: settings.backoff_factor,
            max: settings.backoff_max,
        };
        let mut agents = Vec::new();
        let mut queues = BTreeMap::new();
        for (&role, agent_config) in &config.agents {
            let (sender, receiver) = async_channel::unbounded();
            let (isolated_sender, isolated_receiver) = async_channel::unbounded();
            queues.insert(
                role,
                RoleQueue {
                    sender: sender.clone(),
                    receiver: receiver.clone(),
                    isolated_sender: isolated_sender.clone(),
                    isolated_receiver: isolated_receiver.clone(),
                    agents: agent_config.count as usize,
                },
            );
            let args = agent_config.args.clone().unwrap_or_else(|| {
                [
                    "-m",
                    "mnemosyne.orchestration.agents",
                    "--role",
                    role.as_str(),
                ]
                .map(str::to_owned)
                .to_vec()
            });
            for n in 1..=agent_config.count {
                let id = format!("{role}-{n}");
                let mut env = options.base_env.clone();
                for (key, value) in &agent_config.env {
                    env.set(key.clone(), value);
                }
                let python_path = match agent_config.env.get("PYTHONPATH") {
                    Some(extra) => format!("{}:{extra}", package_dir.display()),
                    None => package_dir.display().to_string(),
                };
                env.set("PYTHONPATH", python_path);
                env.set("PYTHONUNBUFFERED", "1");
                env.set("PYTHONUTF8", "1");
                env.set("PYTHONIOENCODING", "utf-8");
                env.set("MNEMOSYNE_AGENT_ID", &id);
                env.set(
                    "MNEMOSYNE_MAX_LINE_BYTES",
                    settings.max_line_bytes.to_string(),
                );
                env.set("MNEMOSYNE_SUPERVISOR_PID", std::process::id().to_string());
                let spec = AgentSpec {
                    id: id.clone(),
                    role,
                    launch: LaunchSpec {
                        agent_id: id,
                        program: config.python_for(role),
                        args: args.clone(),
                        env,
                        cwd: options.cwd.clone(),
                    },
                    rules: RestartRules {
                        policy: agent_config.restart,
                        backoff,
                        reset_after: settings.backoff_reset_after,
                        window: settings.restart_window,
                        max_failures_in_window: settings.max_restarts_in_window,
                        cooldown_retry: settings.cooldown_retry,
                    },
                    timing: timing.clone(),
                    max_line_bytes: settings.max_line_bytes,
                    max_deliveries: settings.max_deliveries,
                    concurrency: agent_config.concurrency,
                };
                let ctx = AgentContext {
                    launcher: launcher.clone(),
                    warden: warden.clone(),
                    events: events.clone(),
                    jobs: receiver.clone(),
                    requeue: sender.clone(),
                    isolated: isolated_receiver.clone(),
                    requeue_isolated: isolated_sender.clone(),
                    shutdown: shutdown.child_token(),
                    kill_now: kill_now.child_token(),
                };
                let (actor, handle) = AgentActor::new(spec, ctx);
                tasks.spawn(actor.run());
                agents.push(handle);
            }
        }
        Ok(Self {
            agents,
            queues,
            events,
            tasks,
            shutdown,
            kill_now,
            warden,
            request_timeout: settings.request_timeout,
            next_job: AtomicU64::new(1),
        })
    }

    pub fn agents(&self) -> &[AgentHandle] {
        &self.agents
    }

    pub fn agent(&self, id: &str) -> Option<&AgentHandle> {
        self.agents.iter().find(|agent| agent.id() == id)
    }

    pub fn statuses(&self) -> Vec<AgentStatus> {
        self.agents.iter().map(AgentHandle::status).collect()
    }

    pub fn events(&self) -> &EventBus {
        &self.events
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
            Some(queue) if queue.agents > 0 => {
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
        self.kill_now.clone()
    }

    /// Stops every agent in parallel (shutdown message, graces, signals), answers any job
    /// still queued, and waits for the warden. Calling it again is harmless.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
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
        if let Some(warden) = &self.warden {
            warden.finish();
        }
    }
}
