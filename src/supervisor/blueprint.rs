//! How a configuration becomes agent specs. The first start and every reload build specs
//! here, so an agent started by a reload is configured exactly like one started at launch.

use std::path::PathBuf;

use super::backoff::Backoff;
use super::restart::RestartRules;
use crate::agent::{AgentSpec, Timing};
use crate::config::{Config, Role};
use crate::process::{LaunchSpec, WorkerEnvironment};

/// What stays fixed for the supervisor's whole run: where the worker package is unpacked and
/// the workers' working directory.
pub(crate) struct Blueprint {
    pub package_dir: PathBuf,
    pub cwd: Option<PathBuf>,
}

impl Blueprint {
    /// The spec of agent `n` (1-based) of `role` under `config`, starting from `base_env`.
    pub fn agent_spec(
        &self,
        config: &Config,
        base_env: &WorkerEnvironment,
        role: Role,
        n: u32,
    ) -> AgentSpec {
        let settings = &config.supervisor;
        let agent_config = config.agents.get(&role).cloned().unwrap_or_default();
        let id = format!("{role}-{n}");
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
        let mut env = base_env.clone();
        for (key, value) in &agent_config.env {
            env.set(key.clone(), value);
        }
        let python_path = match agent_config.env.get("PYTHONPATH") {
            Some(extra) => format!("{}:{extra}", self.package_dir.display()),
            None => self.package_dir.display().to_string(),
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
        AgentSpec {
            id: id.clone(),
            role,
            launch: LaunchSpec {
                agent_id: id,
                program: config.python_for(role),
                args,
                env,
                cwd: self.cwd.clone(),
            },
            rules: RestartRules {
                policy: agent_config.restart,
                backoff: Backoff {
                    base: settings.backoff_base,
                    factor: settings.backoff_factor,
                    max: settings.backoff_max,
                },
                reset_after: settings.backoff_reset_after,
                window: settings.restart_window,
                max_failures_in_window: settings.max_restarts_in_window,
                cooldown_retry: settings.cooldown_retry,
            },
            timing: Timing {
                heartbeat_interval: settings.heartbeat_interval,
                heartbeat_misses: settings.heartbeat_misses,
                start_timeout: settings.start_timeout,
                cancel_grace: settings.cancel_grace,
                stop_grace: settings.stop_grace,
                term_grace: settings.term_grace,
            },
            max_line_bytes: settings.max_line_bytes,
            max_deliveries: settings.max_deliveries,
            concurrency: agent_config.concurrency,
        }
    }
}

/// Whether two specs start different workers: another program, arguments, environment or
/// directory. Anything else (timers, limits, restart rules) applies to the next worker
/// without replacing the current one.
pub(crate) fn launches_differently(old: &AgentSpec, new: &AgentSpec) -> bool {
    let (old, new) = (&old.launch, &new.launch);
    old.program != new.program
        || old.args != new.args
        || old.cwd != new.cwd
        || !old.env.same_as(&new.env)
}
