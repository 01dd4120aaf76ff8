//! Applying a changed configuration to running agents without losing work: roles grow first,
//! then agents whose workers would start differently are replaced one at a time (each must be
//! ready again before the next goes, so a role with two or more agents always has one up),
//! then roles shrink. Stopped workers hand their requests back to the role's queue, as on any
//! graceful stop.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::blueprint::launches_differently;
use super::events::EventKind;
use super::table::Supervisor;
use crate::agent::{AgentHandle, AgentSpec, AgentStatus, StateName};
use crate::config::{Config, Role};
use crate::process::WorkerEnvironment;

/// Beyond the new `start_timeout`, how long a replaced agent may take to be ready again
/// (its old worker's graceful stop comes first).
const SETTLE_SLACK: Duration = Duration::from_secs(10);

/// Config keys (dotted prefixes) a running supervisor applies; every other changed key takes
/// effect at the next start.
const LIVE_KEYS: &[&str] = &["supervisor.", "provider.", "executor.", "agents."];
/// Keys under a live prefix that are read once at start (by the plan runner).
const START_ONLY_KEYS: &[&str] = &["supervisor.request_timeout"];

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// Every config key whose value changed, dotted (`agents.executor.count`).
    pub changed: Vec<String>,
    /// The changed keys that only take effect when the supervisor is restarted.
    pub needs_restart: Vec<String>,
    /// Agents whose worker was replaced to take the new settings.
    pub restarted: Vec<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Set when a replaced agent did not come back ready: the agents after it were left
    /// running with their previous settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halted: Option<Halted>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Halted {
    pub agent: String,
    pub reason: String,
    /// Agents that kept their previous settings.
    pub kept: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the supervisor is stopping; nothing was reloaded")]
    ShuttingDown,
}

impl Supervisor {
    /// Brings the agents in line with `config`, their workers starting from `base_env` (the
    /// allowlisted environment with the provider's settings and secrets, which the caller
    /// builds from the same configuration).
    pub async fn reload(
        &self,
        config: Config,
        base_env: WorkerEnvironment,
    ) -> Result<ReloadReport, ReloadError> {
        if self.wiring.shutdown.is_cancelled() {
            return Err(ReloadError::ShuttingDown);
        }
        let mut applied = self.applied.lock().await;
        let changed = changed_keys(&applied.config, &config);
        let mut report = ReloadReport {
            needs_restart: changed
                .iter()
                .filter(|key| !applies_live(key))
                .cloned()
                .collect(),
            changed,
            ..ReloadReport::default()
        };

        let counts: BTreeMap<Role, (u32, u32)> = self
            .queues
            .keys()
            .map(|&role| {
                let count = |config: &Config| config.agents.get(&role).map_or(0, |a| a.count);
                (role, (count(&applied.config), count(&config)))
            })
            .collect();

        for (&role, &(old, new)) in &counts {
            let queue = &self.queues[&role];
            *queue
                .python
                .lock()
                .expect("the interpreter lock is never poisoned") = config.python_for(role);
            if new > old {
                let added: Vec<AgentHandle> = (old + 1..=new)
                    .map(|n| {
                        let spec = self.blueprint.agent_spec(&config, &base_env, role, n);
                        self.wiring.spawn_agent(spec, queue)
                    })
                    .collect();
                report
                    .added
                    .extend(added.iter().map(|agent| agent.id().to_owned()));
                self.agents.send_modify(|agents| {
                    Arc::make_mut(agents).extend(added);
                });
                queue.agents.store(new as usize, Ordering::Relaxed);
                self.watch_role_health(role);
            }
        }

        let mut pending: Vec<(AgentHandle, AgentSpec, bool)> = Vec::new();
        for (&role, &(old, new)) in &counts {
            for n in 1..=old.min(new) {
                let before = self
                    .blueprint
                    .agent_spec(&applied.config, &applied.base_env, role, n);
                let after = self.blueprint.agent_spec(&config, &base_env, role, n);
                let replace = launches_differently(&before, &after);
                if !replace && settings_equal(&before, &after) {
                    continue;
                }
                if let Some(agent) = self.agent(&after.id) {
                    pending.push((agent, after, replace));
                }
            }
        }
        let mut rollout = pending.into_iter();
        while let Some((agent, spec, replace)) = rollout.next() {
            let limit = spec.timing.start_timeout + spec.timing.stop_grace + SETTLE_SLACK;
            let outcome = match agent.reconfigure(spec, replace).await {
                Ok(()) if replace => settle(&agent, limit).await,
                Ok(()) => Ok(()),
                Err(error) => Err(error.to_string()),
            };
            match outcome {
                Ok(()) if replace => report.restarted.push(agent.id().to_owned()),
                Ok(()) => {}
                Err(reason) => {
                    report.halted = Some(Halted {
                        agent: agent.id().to_owned(),
                        reason,
                        kept: rollout
                            .by_ref()
                            .map(|(agent, ..)| agent.id().to_owned())
                            .collect(),
                    });
                    break;
                }
            }
        }

        for (&role, &(old, new)) in &counts {
            if new >= old {
                continue;
            }
            let queue = &self.queues[&role];
            // New work for a role shrunk to nothing is refused at once rather than queued.
            queue.agents.store(new as usize, Ordering::Relaxed);
            for n in (new + 1..=old).rev() {
                let id = format!("{role}-{n}");
                let Some(agent) = self.agent(&id) else {
                    continue;
                };
                // Only the actor ends; an agent already gone has nothing left to stop.
                let _ = agent.retire().await;
                self.agents.send_modify(|agents| {
                    Arc::make_mut(agents).retain(|agent| agent.id() != id);
                });
                report.removed.push(id);
            }
            self.watch_role_health(role);
        }

        applied.config = config;
        applied.base_env = base_env;
        self.wiring.events.publish(
            None,
            EventKind::ConfigReloaded {
                changed: report.changed.clone(),
                needs_restart: report.needs_restart.clone(),
                restarted: report.restarted.clone(),
                added: report.added.clone(),
                removed: report.removed.clone(),
                halted: report.halted.as_ref().map(|halted| halted.agent.clone()),
            },
        );
        Ok(report)
    }
}

/// Everything but how the worker is launched: timers, restart rules, limits.
fn settings_equal(before: &AgentSpec, after: &AgentSpec) -> bool {
    before.timing == after.timing
        && before.rules == after.rules
        && before.max_line_bytes == after.max_line_bytes
        && before.max_deliveries == after.max_deliveries
        && before.concurrency == after.concurrency
}

/// Waits until a replaced agent is usable again, or says where it went instead.
async fn settle(agent: &AgentHandle, limit: Duration) -> Result<(), String> {
    let settled = |status: &AgentStatus| {
        matches!(
            status.state,
            StateName::Ready
                | StateName::Busy
                | StateName::Backoff
                | StateName::Cooldown
                | StateName::Failed
                | StateName::Stopped
        )
    };
    let status = agent
        .wait_until("ready", limit, settled)
        .await
        .map_err(|error| error.to_string())?;
    match status.state {
        StateName::Ready | StateName::Busy => Ok(()),
        state => Err(format!(
            "{} is {state} after the reload: {}",
            status.id,
            status.reason.as_deref().unwrap_or("no reason given")
        )),
    }
}

fn applies_live(key: &str) -> bool {
    LIVE_KEYS.iter().any(|prefix| key.starts_with(prefix))
        && !START_ONLY_KEYS
            .iter()
            .any(|start_only| key == *start_only || key.starts_with(&format!("{start_only}.")))
}

/// The dotted keys whose values differ between two configurations.
pub(crate) fn changed_keys(before: &Config, after: &Config) -> Vec<String> {
    let mut left = BTreeMap::new();
    let mut right = BTreeMap::new();
    flatten(
        "",
        &serde_json::to_value(before).unwrap_or(Value::Null),
        &mut left,
    );
    flatten(
        "",
        &serde_json::to_value(after).unwrap_or(Value::Null),
        &mut right,
    );
    let mut keys: Vec<String> = left
        .keys()
        .chain(right.keys())
        .filter(|key| left.get(*key) != right.get(*key))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, value) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&path, value, out);
            }
        }
        leaf => {
            out.insert(prefix.to_owned(), leaf.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_toml_str(text, std::path::Path::new("test.toml")).expect("valid config")
    }

    #[test]
    fn changed_keys_name_each_leaf_that_differs_and_nothing_else() {
        let before = config("[agents.executor]\ncount = 1\nenv = { A = \"1\" }\n");
        let after = config(
            "[agents.executor]\ncount = 2\nenv = { A = \"2\", B = \"x\" }\n\
             [plans]\nmax_in_flight = 3\n",
        );
        assert_eq!(
            changed_keys(&before, &after),
            vec![
                "agents.executor.count",
                "agents.executor.env.A",
                "agents.executor.env.B",
                "plans.max_in_flight",
            ]
        );
        assert!(changed_keys(&after, &after).is_empty());
    }

    #[test]
    fn agent_provider_and_timing_keys_apply_live_and_plan_keys_need_a_restart() {
        assert!(applies_live("agents.executor.count"));
        assert!(applies_live("supervisor.heartbeat_interval"));
        assert!(applies_live("provider.model"));
        assert!(!applies_live("plans.max_in_flight"));
        assert!(!applies_live("supervisor.request_timeout"));
        assert!(!applies_live("dashboard.listen"));
    }
}
