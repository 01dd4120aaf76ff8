//! Whether a role can take work: the classification of its agents' states, the start-up
//! gate's verdict with the report a person reads when a role cannot start, and the clock of
//! how long a role has had no usable agent. Pure logic, no clocks of its own.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use super::restart::DeathCause;
use crate::agent::{AgentStatus, StateName};
use crate::config::Role;

/// Lines of a worker's stderr quoted in a start-up failure.
pub const REPORT_STDERR_LINES: usize = 12;

/// The prefix the stderr tail puts before each worker's output.
const WORKER_START_MARK: &str = "--- worker started";

/// Words that [`super::RestartTracker`] puts in the reason of an agent its restart policy
/// stopped. Such an agent stays stopped until an operator starts it, unlike one an operator
/// stopped on purpose, so it counts as down (a test ties the two together).
const POLICY_STOP_WORDS: &str = "by policy";

/// What one agent means for its role's ability to take work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentCondition {
    /// Ready or busy: it takes work.
    Usable,
    /// Failed, cooling down after a crash loop, or stopped by its restart policy: it will not
    /// take work soon without a fix or a long wait.
    Down,
    /// Stopped by an operator (or by the supervisor stopping): waiting for it is intended.
    Held,
    /// Starting, backing off between restarts, or being stopped: it may be usable soon.
    Transitional,
}

pub fn agent_condition(status: &AgentStatus) -> AgentCondition {
    match status.state {
        StateName::Ready | StateName::Busy => AgentCondition::Usable,
        StateName::Failed | StateName::Cooldown => AgentCondition::Down,
        StateName::Stopped
            if status
                .reason
                .as_deref()
                .is_some_and(|reason| reason.contains(POLICY_STOP_WORDS)) =>
        {
            AgentCondition::Down
        }
        StateName::Stopped => AgentCondition::Held,
        StateName::Starting | StateName::Backoff | StateName::Stopping => {
            AgentCondition::Transitional
        }
    }
}

/// What the agents of one role add up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleCondition {
    /// At least one agent takes work.
    Usable,
    /// Every agent is down.
    Down,
    /// An operator holds some agent stopped, and none takes work: plans wait on purpose.
    Held,
    /// None takes work yet, but some agent is on its way.
    Waiting,
}

pub fn role_condition<'a>(statuses: impl IntoIterator<Item = &'a AgentStatus>) -> RoleCondition {
    let mut all_down = true;
    let mut any = false;
    let mut held = false;
    for status in statuses {
        any = true;
        match agent_condition(status) {
            AgentCondition::Usable => return RoleCondition::Usable,
            AgentCondition::Down => {}
            AgentCondition::Held => {
                held = true;
                all_down = false;
            }
            AgentCondition::Transitional => all_down = false,
        }
    }
    match (any && all_down, held) {
        (true, _) => RoleCondition::Down,
        (false, true) => RoleCondition::Held,
        (false, false) => RoleCondition::Waiting,
    }
}

/// How long a role has gone without a usable agent, as the plans waiting for it see it.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleHealth {
    /// When every agent of the role was last found down with none usable since. A cooldown
    /// agent's periodic retry (starting, then down again) does not restart this clock; only
    /// a usable agent, or an operator holding one, does.
    pub down_since: Option<Instant>,
    /// Every agent is down right now (not in the middle of a retry).
    pub down_now: bool,
    /// `id is state: reason` for each agent, for the failure a waiting plan ends with.
    pub agents: Vec<String>,
}

impl RoleHealth {
    pub fn unknown() -> Self {
        Self {
            down_since: None,
            down_now: false,
            agents: Vec::new(),
        }
    }

    /// The health after the agents' statuses changed to `statuses`, at `now`.
    pub fn next(&self, statuses: &[AgentStatus], now: Instant) -> Self {
        let condition = role_condition(statuses);
        let (down_since, down_now) = match condition {
            RoleCondition::Usable | RoleCondition::Held => (None, false),
            RoleCondition::Down => (Some(self.down_since.unwrap_or(now)), true),
            RoleCondition::Waiting => (self.down_since, false),
        };
        // Described only while the clock runs: a busy role changes status with every request,
        // and a healthy role's health should then stay equal, waking nobody.
        let agents = match down_since {
            Some(_) => statuses.iter().map(describe_agent).collect(),
            None => Vec::new(),
        };
        Self {
            down_since,
            down_now,
            agents,
        }
    }

    /// Whether a plan that waits at most `limit` for this role must give up at `now`.
    pub fn gives_up(&self, limit: Duration, now: Instant) -> bool {
        self.down_now && self.down_since.is_some_and(|since| now >= since + limit)
    }
}

fn describe_agent(status: &AgentStatus) -> String {
    match &status.reason {
        Some(reason) => format!("{} is {}: {reason}", status.id, status.state),
        None => format!("{} is {}", status.id, status.state),
    }
}

/// Why plans that needed a role gave up on it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("no usable {role} agent for {}: {}", human(*waited), agents.join("; "))]
pub struct RoleUnavailable {
    pub role: Role,
    pub waited: Duration,
    pub agents: Vec<String>,
}

/// One agent of a role that could not start, as the start-up report shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentFailure {
    pub id: String,
    pub state: StateName,
    pub reason: String,
    /// How its last worker ended; `None` when no worker could even be started.
    pub cause: Option<DeathCause>,
    /// The last stderr lines of its last worker.
    pub stderr_tail: Vec<String>,
}

/// A role none of whose agents ever became ready.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleFailure {
    pub role: Role,
    /// The interpreter the role's workers run on, for the fix.
    pub python: PathBuf,
    pub agents: Vec<AgentFailure>,
}

/// The start-up gate's verdict against running any plan: the roles that cannot start, each
/// with the cause, its worker's last words and the fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct StartupFailure {
    pub roles: Vec<RoleFailure>,
}

impl RoleFailure {
    /// The agent whose story the report tells: the first one, as they all share a config.
    fn lead(&self) -> &AgentFailure {
        &self.agents[0]
    }

    fn fix(&self) -> String {
        let lead = self.lead();
        let python = self.python.display();
        let role = self.role;
        let choose_python = format!(
            "set [agents.{role}] python (or [supervisor] python, or MNEMOSYNE_PYTHON) to a Python \
             3.11 or newer interpreter"
        );
        let reason = lead.reason.as_str();
        if reason.contains("python interpreter not found") {
            return format!(
                "{python} does not exist: install Python 3.11 or newer, or {choose_python}"
            );
        }
        if reason.contains("anthropic package not installed") {
            return format!(
                "install the Anthropic SDK into the workers' interpreter: {python} -m pip install \
                 'anthropic>=0.75,<3'; or run without a model: --provider offline"
            );
        }
        if reason.contains("needs Python") {
            return format!("{python} is too old: {choose_python}");
        }
        if reason.contains("protocol version mismatch") {
            return format!(
                "the worker runs other code than this supervisor's embedded package: remove \
                 [agents.{role}] args and any PYTHONPATH in [agents.{role}] env, or point them \
                 at the package of this mnemosyne release"
            );
        }
        if reason.contains("API key") {
            return "configure a valid key in ANTHROPIC_API_KEY, or run without a model: \
                    --provider offline"
                .to_owned();
        }
        match (lead.state, lead.cause) {
            (_, Some(DeathCause::StartTimeout)) => {
                "the worker did not report ready in time: if it is only slow, raise \
                 [supervisor] start_timeout; otherwise see its stderr above"
                    .to_owned()
            }
            (StateName::Failed, _) => format!(
                "fix the configuration problem the worker reports above (its interpreter is \
                 {python}), then start the supervisor again"
            ),
            _ => format!(
                "the worker crashes before it is ready: see its stderr above, and check that \
                 `{python} -m mnemosyne.orchestration.agents --role {role}` can run"
            ),
        }
    }
}

impl fmt::Display for StartupFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Roles that fail for the same reason (one interpreter without the SDK, say) are one
        // paragraph, so the most common mistake reads as one line, not four.
        let mut groups: Vec<(Vec<Role>, &RoleFailure, String)> = Vec::new();
        for role in &self.roles {
            let fix = role.fix();
            match groups.iter_mut().find(|(_, first, first_fix)| {
                first.lead().reason == role.lead().reason && *first_fix == fix
            }) {
                Some((roles, _, _)) => roles.push(role.role),
                None => groups.push((vec![role.role], role, fix)),
            }
        }
        for (n, (roles, failure, fix)) in groups.iter().enumerate() {
            if n > 0 {
                writeln!(f)?;
            }
            let lead = failure.lead();
            let names: Vec<&str> = roles.iter().map(|role| role.as_str()).collect();
            let noun = if names.len() == 1 { "role" } else { "roles" };
            write!(
                f,
                "the {} {noun} cannot start: {} is {}: {}",
                names.join(", "),
                lead.id,
                lead.state,
                lead.reason
            )?;
            if lead.stderr_tail.is_empty() {
                write!(f, "\n  {} wrote nothing on stderr", lead.id)?;
            } else {
                write!(f, "\n  last stderr of {}:", lead.id)?;
                for line in &lead.stderr_tail {
                    write!(f, "\n    | {line}")?;
                }
            }
            write!(f, "\n  fix: {fix}")?;
        }
        Ok(())
    }
}

/// The last lines the most recent worker wrote, without the markers between workers.
pub fn last_worker_lines(tail: &[String], lines: usize) -> Vec<String> {
    let start = tail
        .iter()
        .rposition(|line| line.starts_with(WORKER_START_MARK))
        .map_or(0, |mark| mark + 1);
    let own = &tail[start..];
    own[own.len().saturating_sub(lines)..].to_vec()
}

fn human(duration: Duration) -> String {
    humantime::format_duration(Duration::from_millis(duration.as_millis() as u64)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RestartPolicy;
    use crate::supervisor::{Backoff, Next, RestartRules, RestartTracker};

    fn status(id: &str, state: StateName, reason: Option<&str>) -> AgentStatus {
        AgentStatus {
            id: id.into(),
            role: Role::Reviewer,
            state,
            pid: None,
            restarts: 0,
            ready_since: None,
            in_flight: 0,
            current_job: None,
            last_exit: None,
            reason: reason.map(str::to_owned),
            next_retry: None,
            protocol_noise: 0,
        }
    }

    #[test]
    fn one_usable_agent_makes_the_role_usable_whatever_the_others_do() {
        let statuses = [
            status("r-1", StateName::Failed, Some("bad")),
            status("r-2", StateName::Busy, None),
        ];
        assert_eq!(role_condition(&statuses), RoleCondition::Usable);
    }

    #[test]
    fn a_role_is_down_only_when_every_agent_is_failed_or_cooling_down() {
        let down = [
            status("r-1", StateName::Failed, Some("bad")),
            status("r-2", StateName::Cooldown, Some("crash loop")),
        ];
        assert_eq!(role_condition(&down), RoleCondition::Down);
        let retrying = [
            status("r-1", StateName::Failed, Some("bad")),
            status("r-2", StateName::Starting, None),
        ];
        assert_eq!(role_condition(&retrying), RoleCondition::Waiting);
        assert_eq!(role_condition(&[]), RoleCondition::Waiting);
    }

    #[test]
    fn an_operator_stop_holds_the_role_but_a_policy_stop_is_down() {
        let operator = [
            status("r-1", StateName::Stopped, Some("stopped by operator")),
            status("r-2", StateName::Failed, Some("bad")),
        ];
        assert_eq!(role_condition(&operator), RoleCondition::Held);
        let rules = RestartRules {
            policy: RestartPolicy::Temporary,
            backoff: Backoff {
                base: Duration::from_millis(1),
                factor: 2.0,
                max: Duration::from_millis(10),
            },
            reset_after: Duration::from_secs(1),
            window: Duration::from_secs(1),
            max_failures_in_window: 1,
            cooldown_retry: Duration::from_secs(1),
        };
        let Next::Stop { reason } = RestartTracker::default().after_death(
            &rules,
            DeathCause::Crash,
            None,
            Instant::now(),
            0.0,
        ) else {
            panic!("a temporary agent is stopped by its policy");
        };
        let policy = status("r-1", StateName::Stopped, Some(&reason));
        assert_eq!(agent_condition(&policy), AgentCondition::Down);
    }

    #[test]
    fn the_down_clock_survives_cooldown_retries_and_resets_on_a_usable_agent() {
        let t0 = Instant::now();
        let limit = Duration::from_secs(120);
        let down = [status("r-1", StateName::Cooldown, Some("crash loop"))];
        let retrying = [status("r-1", StateName::Starting, None)];
        let ready = [status("r-1", StateName::Ready, None)];

        let health = RoleHealth::unknown().next(&down, t0);
        assert_eq!(health.down_since, Some(t0));
        assert!(!health.gives_up(limit, t0 + Duration::from_secs(119)));
        let health = health.next(&retrying, t0 + Duration::from_secs(60));
        assert_eq!(
            health.down_since,
            Some(t0),
            "a retry does not restart the clock"
        );
        assert!(
            !health.gives_up(limit, t0 + Duration::from_secs(121)),
            "a retry in progress is waited for"
        );
        let health = health.next(&down, t0 + Duration::from_secs(122));
        assert!(health.gives_up(limit, t0 + Duration::from_secs(122)));
        assert_eq!(
            health.agents,
            ["r-1 is cooldown: crash loop".to_owned()],
            "the reason names the agent and its state"
        );
        let health = health.next(&ready, t0 + Duration::from_secs(130));
        assert_eq!(health.down_since, None);
    }

    #[test]
    fn a_starting_role_has_no_down_clock() {
        let starting = [status("r-1", StateName::Starting, None)];
        let health = RoleHealth::unknown().next(&starting, Instant::now());
        assert_eq!(health.down_since, None);
    }

    #[test]
    fn a_usable_role_keeps_an_unchanged_health_whatever_its_agents_do() {
        let busy = [status("r-1", StateName::Busy, None)];
        let ready = [status("r-1", StateName::Ready, None)];
        let health = RoleHealth::unknown().next(&busy, Instant::now());
        assert_eq!(health, RoleHealth::unknown());
        assert_eq!(health.next(&ready, Instant::now()), RoleHealth::unknown());
    }

    #[test]
    fn only_the_last_workers_stderr_is_quoted() {
        let tail: Vec<String> = [
            "--- worker started (pid 1) ---",
            "old",
            "--- worker started (pid 2) ---",
            "a",
            "b",
            "c",
        ]
        .map(str::to_owned)
        .to_vec();
        assert_eq!(last_worker_lines(&tail, 2), ["b", "c"]);
        assert_eq!(last_worker_lines(&tail, 10), ["a", "b", "c"]);
        assert_eq!(last_worker_lines(&["x".to_owned()], 10), ["x"]);
    }

    fn failure(role: Role, reason: &str) -> RoleFailure {
        RoleFailure {
            role,
            python: PathBuf::from("/usr/bin/python3"),
            agents: vec![AgentFailure {
                id: format!("{role}-1"),
                state: StateName::Failed,
                reason: reason.to_owned(),
                cause: Some(DeathCause::Fatal),
                stderr_tail: vec!["fatal (config): something".into()],
            }],
        }
    }

    #[test]
    fn roles_failing_alike_are_reported_once_with_cause_stderr_and_fix() {
        let reason = "the worker reported a configuration problem: anthropic package not \
                      installed; install it with: pip install 'anthropic>=0.75,<3' (config)";
        let report = StartupFailure {
            roles: vec![
                failure(Role::Executor, reason),
                failure(Role::Reviewer, reason),
            ],
        }
        .to_string();
        let first = report.lines().next().expect("a first line");
        assert!(
            first.starts_with("the executor, reviewer roles cannot start: executor-1 is failed:"),
            "{report}"
        );
        assert!(
            first.contains("anthropic package not installed"),
            "{report}"
        );
        assert!(
            report.contains("fix: install the Anthropic SDK into the workers' interpreter: /usr/bin/python3 -m pip install"),
            "{report}"
        );
        assert!(report.contains("--provider offline"), "{report}");
        assert!(report.contains("| fatal (config): something"), "{report}");
        assert_eq!(report.matches("cannot start").count(), 1, "{report}");
    }

    #[test]
    fn each_known_cause_has_its_own_fix() {
        let fix = |reason: &str| failure(Role::Executor, reason).fix();
        assert!(
            fix("could not start: python interpreter not found: /nope")
                .contains("/usr/bin/python3 does not exist")
        );
        assert!(
            fix("... Python 3.9.18 is too old: the worker needs Python 3.11 or newer")
                .contains("[agents.executor] python")
        );
        assert!(
            fix("protocol version mismatch: supervisor speaks 1, worker speaks 999")
                .contains("[agents.executor] args")
        );
        let mut timeout = failure(Role::Executor, "crash loop: ...");
        timeout.agents[0].state = StateName::Cooldown;
        timeout.agents[0].cause = Some(DeathCause::StartTimeout);
        assert!(timeout.fix().contains("start_timeout"));
        timeout.agents[0].cause = Some(DeathCause::Crash);
        assert!(timeout.fix().contains("crashes before it is ready"));
    }
}
