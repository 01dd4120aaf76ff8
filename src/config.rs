//! Owns the supervisor's TOML configuration: its types, defaults, discovery, parsing and validation.
//!
//! Loading is pure and synchronous. A file is first parsed into toml's spanned document tree, then
//! deserialized into [`Config`], then validated; every error carries the file it came from and,
//! when the key is written in the file, the line. The spanned tree is kept only to turn byte
//! offsets back into key names and lines for error messages.
//!
//! The one piece of ambient state is the `MNEMOSYNE_PYTHON` environment variable, read by
//! [`Config::python_for`] and nowhere else; [`Config::python_for_with_env`] takes it as an argument
//! so tests never touch the process environment.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::de::{DeTable, DeValue};

/// Name of the config file looked up in the working directory when none is given explicitly.
pub const DEFAULT_FILE_NAME: &str = "mnemosyne.toml";

/// Environment variable naming the interpreter when neither the role nor `[supervisor]` set one.
pub const PYTHON_ENV_VAR: &str = "MNEMOSYNE_PYTHON";

/// Interpreter used when nothing else names one; looked up on `PATH` at spawn time.
pub const DEFAULT_PYTHON: &str = "python3";

/// Upper bound on `count` per role. A typo such as `count = 1000` would otherwise fork a
/// thousand interpreters before anyone noticed.
pub const MAX_WORKERS_PER_ROLE: u32 = 64;

/// Upper bound on `concurrency` per worker.
pub const MAX_CONCURRENCY: u32 = 256;

/// Lower bound on `max_line_bytes`: below this even a heartbeat with its envelope may not fit.
pub const MIN_LINE_BYTES: usize = 1024;

/// The whole configuration. After loading, `agents` holds an entry for every [`Role`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub supervisor: SupervisorConfig,
    pub plans: PlansConfig,
    pub provider: ProviderConfig,
    pub executor: ExecutorConfig,
    pub agents: BTreeMap<Role, AgentConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            supervisor: SupervisorConfig::default(),
            plans: PlansConfig::default(),
            provider: ProviderConfig::default(),
            executor: ExecutorConfig::default(),
            agents: Role::ALL
                .into_iter()
                .map(|role| (role, AgentConfig::default()))
                .collect(),
        }
    }
}

/// The `[supervisor]` table: timers, limits and restart policy shared by all agents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisorConfig {
    /// How often the supervisor pings a ready worker.
    #[serde(with = "duration")]
    pub heartbeat_interval: Duration,
    /// Consecutive missed heartbeats after which a worker counts as hung.
    pub heartbeat_misses: u32,
    /// How long a freshly spawned worker has to report ready.
    #[serde(with = "duration")]
    pub start_timeout: Duration,
    /// Default deadline of a request that does not carry its own.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// After a cancel for an overdue request, how long before the worker is killed.
    #[serde(with = "duration")]
    pub cancel_grace: Duration,
    /// After the shutdown message, how long before stdin is closed.
    #[serde(with = "duration")]
    pub stop_grace: Duration,
    /// After SIGTERM to the process group, how long before SIGKILL.
    #[serde(with = "duration")]
    pub term_grace: Duration,
    /// First restart delay.
    #[serde(with = "duration")]
    pub backoff_base: Duration,
    /// Multiplier applied to the restart delay after each consecutive failure.
    pub backoff_factor: f64,
    /// Ceiling of the restart delay.
    #[serde(with = "duration")]
    pub backoff_max: Duration,
    /// A worker ready for this long resets the backoff attempt count.
    #[serde(with = "duration")]
    pub backoff_reset_after: Duration,
    /// Sliding window in which failures are counted for the cooldown.
    #[serde(with = "duration")]
    pub restart_window: Duration,
    /// More failures than this inside `restart_window` put the role into cooldown.
    pub max_restarts_in_window: u32,
    /// How long a role stays in cooldown before the next restart attempt.
    #[serde(with = "duration")]
    pub cooldown_retry: Duration,
    /// Worker deaths while holding the same request before that request is quarantined.
    pub max_deliveries: u32,
    /// Longest protocol line, in bytes, accepted from a worker.
    pub max_line_bytes: usize,
    /// Interpreter for every role that does not set its own. `None` means "not set in the
    /// file", which lets `MNEMOSYNE_PYTHON` and then [`DEFAULT_PYTHON`] apply; resolve it with
    /// [`Config::python_for`] rather than reading this field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub python: Option<PathBuf>,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_misses: 3,
            start_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10 * 60),
            cancel_grace: Duration::from_secs(2),
            stop_grace: Duration::from_secs(10),
            term_grace: Duration::from_secs(5),
            backoff_base: Duration::from_millis(500),
            backoff_factor: 2.0,
            backoff_max: Duration::from_secs(30),
            backoff_reset_after: Duration::from_secs(60),
            restart_window: Duration::from_secs(60),
            max_restarts_in_window: 5,
            cooldown_retry: Duration::from_secs(5 * 60),
            max_deliveries: 3,
            max_line_bytes: 16 * 1024 * 1024,
            python: None,
        }
    }
}

/// The `[plans]` table: how work plans are run and journalled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlansConfig {
    /// Plans worked on at once; reading stdin pauses at this bound, so memory stays flat.
    pub max_in_flight: usize,
    /// Extra tries of a step the model provider turned away (rate limit, overload, 5xx).
    pub provider_retries: u32,
    /// Retry `n` waits a random time in [0, base × 2ⁿ), after any wait the provider names.
    #[serde(with = "duration")]
    pub provider_retry_base: Duration,
    /// Finished plans whose ids the journal remembers, so a resubmitted id is replayed.
    pub journal_retain: usize,
    /// How long a plan waits for a role none of whose agents is usable (every one failed or
    /// cooling down) before it ends `failed`, marked retryable.
    #[serde(with = "duration")]
    pub agent_wait: Duration,
}

impl Default for PlansConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 64,
            provider_retries: 4,
            provider_retry_base: Duration::from_secs(1),
            journal_retain: 100_000,
            agent_wait: Duration::from_secs(120),
        }
    }
}

/// Which model provider the agents use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderChoice {
    /// Anthropic when a key is configured, otherwise offline (with a warning).
    #[default]
    Auto,
    Anthropic,
    Offline,
}

impl std::str::FromStr for ProviderChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(Self::Auto),
            "anthropic" => Ok(Self::Anthropic),
            "offline" => Ok(Self::Offline),
            other => Err(format!(
                "unknown provider {other:?}, expected auto, anthropic or offline"
            )),
        }
    }
}

/// The `[provider]` table: the model the agents call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: ProviderChoice,
    /// The Claude model id the anthropic provider asks for.
    pub model: String,
    /// The answer length limit of one model call.
    pub max_tokens: u32,
    /// How long one model call may wait for the API before it counts as failed.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// Retries the SDK makes itself before a call fails (the runner retries on top).
    pub sdk_max_retries: u32,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            name: ProviderChoice::Auto,
            model: "claude-sonnet-5-5".into(),
            max_tokens: 4096,
            request_timeout: Duration::from_secs(120),
            sdk_max_retries: 2,
        }
    }
}

/// Upper bound on `plans.max_in_flight`.
pub const MAX_PLANS_IN_FLIGHT: usize = 100_000;

fn plans_problem(plans: &PlansConfig) -> Option<Problem> {
    let problem = |name: &str, message: &str| Some(Problem::new(&["plans", name], message));
    if plans.max_in_flight < 1 || plans.max_in_flight > MAX_PLANS_IN_FLIGHT {
        return problem(
            "max_in_flight",
            &format!("must be between 1 and {MAX_PLANS_IN_FLIGHT}"),
        );
    }
    if plans.journal_retain < 1 {
        return problem("journal_retain", "must be at least 1");
    }
    if plans.agent_wait.is_zero() {
        return problem("agent_wait", "must be greater than zero");
    }
    None
}

fn provider_problem(provider: &ProviderConfig) -> Option<Problem> {
    let problem = |name: &str, message: &str| Some(Problem::new(&["provider", name], message));
    if provider.model.trim().is_empty() {
        return problem("model", "must not be empty");
    }
    if provider.max_tokens < 1 {
        return problem("max_tokens", "must be at least 1");
    }
    if provider.request_timeout < Duration::from_secs(1) {
        return problem("request_timeout", "must be at least 1s");
    }
    None
}

/// The `[executor]` table: where the executor works and what its tools may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutorConfig {
    /// The directory holding one workspace per plan. `None` means `<state-dir>/workspaces`;
    /// a relative path is taken relative to the supervisor's working directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workspace_dir: Option<PathBuf>,
    /// Skill directories searched before the global `~/.mnemosyne/skills`, in this order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skill_dirs: Vec<PathBuf>,
    /// Model turns one execution may spend calling tools.
    pub max_tool_turns: u32,
    /// Run the model's shell commands without a sandbox when none can be made. Off, commands
    /// are then refused: unsandboxed, a command can read the API key from `/proc`.
    pub allow_unsandboxed_commands: bool,
}

/// Upper bound on `executor.max_tool_turns`: every turn resends the whole conversation.
pub const MAX_TOOL_TURNS: u32 = 1000;

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            workspace_dir: None,
            skill_dirs: Vec::new(),
            max_tool_turns: 16,
            allow_unsandboxed_commands: false,
        }
    }
}

fn executor_problem(executor: &ExecutorConfig) -> Option<Problem> {
    let problem = |name: &str, message: &str| Some(Problem::new(&["executor", name], message));
    if executor
        .workspace_dir
        .as_ref()
        .is_some_and(|dir| dir.as_os_str().is_empty())
    {
        return problem(
            "workspace_dir",
            "must not be empty; leave it out to use <state-dir>/workspaces",
        );
    }
    for dir in &executor.skill_dirs {
        let text = dir.as_os_str().as_encoded_bytes();
        if text.is_empty() {
            return problem("skill_dirs", "must not contain an empty path");
        }
        // Workers receive the list joined with ':', as PATH is.
        if text.contains(&b':') {
            return problem(
                "skill_dirs",
                &format!("{}: a path must not contain ':'", dir.display()),
            );
        }
    }
    if !(1..=MAX_TOOL_TURNS).contains(&executor.max_tool_turns) {
        return problem(
            "max_tool_turns",
            &format!("must be between 1 and {MAX_TOOL_TURNS}"),
        );
    }
    None
}

/// One `[agents.ROLE]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Number of workers for this role; 0 runs none.
    pub count: u32,
    /// Requests one worker of this role holds at once (model calls wait on the network, so a
    /// worker can usefully run several).
    pub concurrency: u32,
    /// Interpreter for this role, overriding `supervisor.python`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub python: Option<PathBuf>,
    /// Extra environment for this role's workers.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// What to do when one of this role's workers exits.
    pub restart: RestartPolicy,
    /// Interpreter arguments replacing the default `-m mnemosyne.orchestration.agents --role ROLE`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            count: 1,
            concurrency: 4,
            python: None,
            env: BTreeMap::new(),
            restart: RestartPolicy::default(),
            args: None,
        }
    }
}

/// The kinds of agent the supervisor runs. Ordered as listed, which is also the order of
/// [`Role::ALL`] and of `Config::agents`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum Role {
    Executor,
    Orchestrator,
    Optimizer,
    Reviewer,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::Executor,
        Role::Orchestrator,
        Role::Optimizer,
        Role::Reviewer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Executor => "executor",
            Role::Orchestrator => "orchestrator",
            Role::Optimizer => "optimizer",
            Role::Reviewer => "reviewer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| UnknownRole { name: s.to_owned() })
    }
}

// Serde goes through `FromStr` so that an unknown `[agents.NAME]` table gets the same message,
// listing the valid roles, as an unknown role on the command line.
impl TryFrom<String> for Role {
    type Error = UnknownRole;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// A string that names no [`Role`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown role {name:?}, expected one of {valid}",
    valid = Role::ALL.map(Role::as_str).join(", ")
)]
pub struct UnknownRole {
    pub name: String,
}

/// What the supervisor does when a worker exits, after Erlang/OTP's child restart types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RestartPolicy {
    /// Always restart.
    #[default]
    Permanent,
    /// Restart only after an abnormal exit.
    Transient,
    /// Never restart.
    Temporary,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Permanent => "permanent",
            RestartPolicy::Transient => "transient",
            RestartPolicy::Temporary => "temporary",
        }
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, a directory, no permission, not UTF-8).
    #[error("{}: cannot read config file", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file is not valid TOML, or a value has the wrong type, or a key or role is unknown.
    /// `line` and `column` are 1-based; both are 0 in the unlikely case toml reports no position.
    #[error("{}: {message}", Location::new(.path, *.line, Some(*.column)))]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// The file parsed but a value is out of range. `key` is dotted (`agents.executor.count`);
    /// `line` is where that key is written, `None` when it is not in the file.
    #[error(
        "{}: {key}: {message}",
        Location::new(.path, .line.unwrap_or(0), None)
    )]
    Invalid {
        path: PathBuf,
        key: String,
        line: Option<usize>,
        message: String,
    },
}

/// Formats `path:line:column`, leaving out the parts that are unknown (0 or `None`).
struct Location<'a> {
    path: &'a Path,
    line: usize,
    column: Option<usize>,
}

impl<'a> Location<'a> {
    fn new(path: &'a Path, line: usize, column: Option<usize>) -> Self {
        Self { path, line, column }
    }
}

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
            if let Some(column) = self.column.filter(|&column| column > 0) {
                write!(f, ":{column}")?;
            }
        }
        Ok(())
    }
}

impl Config {
    /// Parses and validates `text`; `origin` is only used to name the file in errors.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let document = DeTable::parse(text).map_err(|error| {
            let (line, column) = error
                .span()
                .map_or((0, 0), |span| line_column(text, span.start));
            ConfigError::Parse {
                path: origin.to_owned(),
                line,
                column,
                message: error.message().to_owned(),
            }
        })?;
        let mut config = Config::deserialize(toml::de::Deserializer::from(document.clone()))
            .map_err(|error| deserialize_error(text, document.get_ref(), origin, &error))?;
        for role in Role::ALL {
            config.agents.entry(role).or_default();
        }
        if let Some(problem) = config.first_problem() {
            let line = problem
                .line_paths
                .iter()
                .find_map(|path| key_span(document.get_ref(), path))
                .map(|span| line_column(text, span.start).0);
            return Err(ConfigError::Invalid {
                path: origin.to_owned(),
                key: dotted(&problem.key),
                line,
                message: problem.message,
            });
        }
        Ok(config)
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml_str(&text, path)
    }

    /// Finds the configuration: the `explicit` path if given (it must exist), else
    /// [`DEFAULT_FILE_NAME`] in `cwd` if present, else the defaults. Relative paths are taken
    /// relative to `cwd`. Returns the file that was used, if any.
    pub fn discover(
        explicit: Option<&Path>,
        cwd: &Path,
    ) -> Result<(Config, Option<PathBuf>), ConfigError> {
        if let Some(explicit) = explicit {
            let path = cwd.join(explicit);
            return Ok((Config::load(&path)?, Some(path)));
        }
        let path = cwd.join(DEFAULT_FILE_NAME);
        // Reading directly rather than checking for existence first leaves no window in which
        // the file could vanish, and still reports a file that exists but cannot be read.
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok((Config::from_toml_str(&text, &path)?, Some(path))),
            Err(source) if source.kind() == io::ErrorKind::NotFound => {
                Ok((Config::default(), None))
            }
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    /// The interpreter for `role`'s workers: the role's `python`, else `supervisor.python`, else
    /// the `MNEMOSYNE_PYTHON` environment variable, else [`DEFAULT_PYTHON`].
    pub fn python_for(&self, role: Role) -> PathBuf {
        self.python_for_with_env(role, std::env::var_os(PYTHON_ENV_VAR).as_deref())
    }

    /// [`Config::python_for`] with the value of `MNEMOSYNE_PYTHON` passed in. An empty value
    /// counts as unset, as shells make `VAR= cmd` the usual way to clear a variable.
    pub fn python_for_with_env(&self, role: Role, env_python: Option<&OsStr>) -> PathBuf {
        self.agents
            .get(&role)
            .and_then(|agent| agent.python.clone())
            .or_else(|| self.supervisor.python.clone())
            .or_else(|| {
                env_python
                    .filter(|value| !value.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PYTHON))
    }

    /// The first value out of range, in the order the keys are documented.
    fn first_problem(&self) -> Option<Problem> {
        supervisor_problem(&self.supervisor)
            .or_else(|| plans_problem(&self.plans))
            .or_else(|| provider_problem(&self.provider))
            .or_else(|| executor_problem(&self.executor))
            .or_else(|| {
                self.agents
                    .iter()
                    .find_map(|(role, agent)| agent_problem(*role, agent))
            })
    }
}

/// A validation failure before it is tied to a file.
struct Problem {
    /// The key the message is about.
    key: Vec<String>,
    /// Keys whose line to report, first one written in the file wins.
    line_paths: Vec<Vec<String>>,
    message: String,
}

impl Problem {
    fn new(key: &[&str], message: impl Into<String>) -> Self {
        let key: Vec<String> = key.iter().map(|&part| part.to_owned()).collect();
        Self {
            line_paths: vec![key.clone()],
            key,
            message: message.into(),
        }
    }
}

fn supervisor_problem(supervisor: &SupervisorConfig) -> Option<Problem> {
    let problem = |name: &str, message: &str| Some(Problem::new(&["supervisor", name], message));
    if supervisor.heartbeat_interval.is_zero() {
        return problem("heartbeat_interval", "must be greater than zero");
    }
    if supervisor.heartbeat_misses < 1 {
        return problem("heartbeat_misses", "must be at least 1");
    }
    if supervisor.start_timeout.is_zero() {
        return problem("start_timeout", "must be greater than zero");
    }
    if supervisor.request_timeout.is_zero() {
        return problem("request_timeout", "must be greater than zero");
    }
    if !(supervisor.backoff_factor.is_finite() && supervisor.backoff_factor >= 1.0) {
        return problem("backoff_factor", "must be a finite number of at least 1.0");
    }
    if supervisor.backoff_base > supervisor.backoff_max {
        let message = format!(
            "{} must not exceed supervisor.backoff_max ({})",
            humantime::format_duration(supervisor.backoff_base),
            humantime::format_duration(supervisor.backoff_max)
        );
        let mut base_too_large = Problem::new(&["supervisor", "backoff_base"], message);
        // When only backoff_max is in the file, that is the line the user has to look at.
        base_too_large
            .line_paths
            .push(vec!["supervisor".to_owned(), "backoff_max".to_owned()]);
        return Some(base_too_large);
    }
    if supervisor.max_restarts_in_window < 1 {
        return problem("max_restarts_in_window", "must be at least 1");
    }
    if supervisor.max_deliveries < 1 {
        return problem("max_deliveries", "must be at least 1");
    }
    if supervisor.max_line_bytes < MIN_LINE_BYTES {
        return problem(
            "max_line_bytes",
            &format!("must be at least {MIN_LINE_BYTES}"),
        );
    }
    if supervisor
        .python
        .as_ref()
        .is_some_and(|python| python.as_os_str().is_empty())
    {
        return problem("python", "must not be empty");
    }
    None
}

fn agent_problem(role: Role, agent: &AgentConfig) -> Option<Problem> {
    let problem =
        |name: &str, message: &str| Some(Problem::new(&["agents", role.as_str(), name], message));
    if agent.count > MAX_WORKERS_PER_ROLE {
        return problem("count", &format!("must be at most {MAX_WORKERS_PER_ROLE}"));
    }
    if !(1..=MAX_CONCURRENCY).contains(&agent.concurrency) {
        return problem(
            "concurrency",
            &format!("must be between 1 and {MAX_CONCURRENCY}"),
        );
    }
    if agent
        .python
        .as_ref()
        .is_some_and(|python| python.as_os_str().is_empty())
    {
        return problem("python", "must not be empty");
    }
    if agent.args.as_ref().is_some_and(Vec::is_empty) {
        // An interpreter with no arguments would start a REPL on the protocol pipe.
        return problem("args", "must not be empty; leave it out to use the default");
    }
    for (name, value) in &agent.env {
        let message = if name.is_empty() {
            "variable name must not be empty"
        } else if name.contains('=') {
            "variable name must not contain '='"
        } else if name.contains('\0') {
            "variable name must not contain NUL"
        } else if value.contains('\0') {
            "value must not contain NUL"
        } else {
            continue;
        };
        return Some(Problem::new(
            &["agents", role.as_str(), "env", name],
            message,
        ));
    }
    None
}

/// Turns a deserialization error into [`ConfigError::Parse`]. When the error points at a value
/// (a bad duration, a wrong type) toml's message does not say which key it belongs to, so the
/// dotted key is put in front; errors pointing at a key (unknown field or role) already name it.
fn deserialize_error(
    text: &str,
    document: &DeTable<'_>,
    origin: &Path,
    error: &toml::de::Error,
) -> ConfigError {
    let span = error.span();
    let (line, column) = span
        .clone()
        .map_or((0, 0), |span| line_column(text, span.start));
    let message = match span.and_then(|span| key_of_value(document, &span)) {
        Some(key) => format!("{}: {}", dotted(&key), error.message()),
        None => error.message().to_owned(),
    };
    ConfigError::Parse {
        path: origin.to_owned(),
        line,
        column,
        message,
    }
}

/// The dotted path of the innermost key whose (non-table) value contains `span`.
fn key_of_value(table: &DeTable<'_>, span: &Range<usize>) -> Option<Vec<String>> {
    table.iter().find_map(|(key, value)| {
        let found = match value.get_ref() {
            // Tables opened with a `[header]` have no span covering their body, so look inside
            // every table instead of testing its span.
            DeValue::Table(inner) => key_of_value(inner, span),
            _ => None,
        };
        let found = found.or_else(|| {
            let value_span = value.span();
            (!value.get_ref().is_table()
                && value_span.start <= span.start
                && span.end <= value_span.end)
                .then(Vec::new)
        })?;
        let mut path = vec![key.get_ref().to_string()];
        path.extend(found);
        Some(path)
    })
}

/// The span of the key at `path`, if it is written in the file.
fn key_span(table: &DeTable<'_>, path: &[String]) -> Option<Range<usize>> {
    let (first, rest) = path.split_first()?;
    let (key, value) = table.get_key_value(first.as_str())?;
    if rest.is_empty() {
        return Some(key.span());
    }
    match value.get_ref() {
        DeValue::Table(inner) => key_span(inner, rest),
        _ => None,
    }
}

/// Joins key parts with dots, quoting the parts TOML would need quoted.
fn dotted(path: &[String]) -> String {
    path.iter()
        .map(|part| {
            let bare = !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if bare {
                part.clone()
            } else {
                format!("{part:?}")
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// 1-based line and column (in characters, as editors count) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Durations as humantime strings (`"500ms"`, `"1m 30s"`). Unlike `humantime_serde`, the error
/// keeps humantime's explanation of what is wrong with the string.
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de};

    pub(super) fn serialize<S: Serializer>(
        value: &Duration,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(*value))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer).map_err(|_| {
            de::Error::custom("expected a duration string such as \"5s\" or \"500ms\"")
        })?;
        humantime::parse_duration(&text)
            .map_err(|error| de::Error::custom(format!("invalid duration {text:?}: {error}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, Path::new("mnemosyne.toml"))
    }

    fn parse_ok(text: &str) -> Config {
        match parse(text) {
            Ok(config) => config,
            Err(error) => panic!("expected {text:?} to parse, got: {error}"),
        }
    }

    /// Asserts a parse error at `line:column` whose message contains `needle`.
    fn assert_parse_error(text: &str, line: usize, column: usize, needle: &str) -> String {
        match parse(text) {
            Err(ConfigError::Parse {
                line: got_line,
                column: got_column,
                message,
                ..
            }) => {
                assert_eq!(
                    (got_line, got_column),
                    (line, column),
                    "position of {message:?}"
                );
                assert!(
                    message.contains(needle),
                    "{message:?} should contain {needle:?}"
                );
                message
            }
            other => panic!("expected a parse error for {text:?}, got {other:?}"),
        }
    }

    /// Asserts a validation error about `key` on `line` whose message contains `needle`.
    fn assert_invalid(text: &str, key: &str, line: Option<usize>, needle: &str) {
        match parse(text) {
            Err(ConfigError::Invalid {
                key: got_key,
                line: got_line,
                message,
                ..
            }) => {
                assert_eq!(got_key, key);
                assert_eq!(got_line, line, "line of {key}");
                assert!(
                    message.contains(needle),
                    "{message:?} should contain {needle:?}"
                );
            }
            other => panic!("expected a validation error for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_the_documented_values() {
        let supervisor = SupervisorConfig::default();
        assert_eq!(supervisor.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(supervisor.heartbeat_misses, 3);
        assert_eq!(supervisor.start_timeout, Duration::from_secs(30));
        assert_eq!(supervisor.request_timeout, Duration::from_secs(600));
        assert_eq!(supervisor.cancel_grace, Duration::from_secs(2));
        assert_eq!(supervisor.stop_grace, Duration::from_secs(10));
        assert_eq!(supervisor.term_grace, Duration::from_secs(5));
        assert_eq!(supervisor.backoff_base, Duration::from_millis(500));
        assert_eq!(supervisor.backoff_factor, 2.0);
        assert_eq!(supervisor.backoff_max, Duration::from_secs(30));
        assert_eq!(supervisor.backoff_reset_after, Duration::from_secs(60));
        assert_eq!(supervisor.restart_window, Duration::from_secs(60));
        assert_eq!(supervisor.max_restarts_in_window, 5);
        assert_eq!(supervisor.cooldown_retry, Duration::from_secs(300));
        assert_eq!(supervisor.max_deliveries, 3);
        assert_eq!(supervisor.max_line_bytes, 16_777_216);
        assert_eq!(supervisor.python, None);

        let agent = AgentConfig::default();
        assert_eq!(agent.count, 1);
        assert_eq!(agent.python, None);
        assert!(agent.env.is_empty());
        assert_eq!(agent.restart, RestartPolicy::Permanent);
        assert_eq!(agent.args, None);

        let config = Config::default();
        assert_eq!(config.agents.keys().copied().collect::<Vec<_>>(), Role::ALL);
        assert!(config.first_problem().is_none(), "defaults must validate");
    }

    #[test]
    fn empty_file_gives_the_defaults_with_all_four_roles() {
        assert_eq!(parse_ok(""), Config::default());
        assert_eq!(parse_ok("# nothing here\n"), Config::default());
    }

    #[test]
    fn example_file_parses_to_the_defaults() {
        let example = include_str!("../mnemosyne.example.toml");
        let config = match Config::from_toml_str(example, Path::new("mnemosyne.example.toml")) {
            Ok(config) => config,
            Err(error) => panic!("example file does not parse: {error}"),
        };
        assert_eq!(config, Config::default());
    }

    #[test]
    fn example_file_mentions_every_key() {
        let example = include_str!("../mnemosyne.example.toml");
        let keys = [
            "heartbeat_interval",
            "heartbeat_misses",
            "start_timeout",
            "request_timeout",
            "cancel_grace",
            "stop_grace",
            "term_grace",
            "backoff_base",
            "backoff_factor",
            "backoff_max",
            "backoff_reset_after",
            "restart_window",
            "max_restarts_in_window",
            "cooldown_retry",
            "max_deliveries",
            "max_line_bytes",
            "python",
            "count",
            "concurrency",
            "env",
            "restart",
            "args",
            "max_in_flight",
            "provider_retries",
            "provider_retry_base",
            "journal_retain",
            "agent_wait",
            "name",
            "model",
            "max_tokens",
            "sdk_max_retries",
            "workspace_dir",
            "skill_dirs",
            "max_tool_turns",
            "allow_unsandboxed_commands",
        ];
        for key in keys {
            assert!(
                example.contains(&format!("{key} = ")),
                "example lacks {key}"
            );
        }
        for role in Role::ALL {
            assert!(
                example.contains(&format!("[agents.{role}]")),
                "example lacks [agents.{role}]"
            );
        }
    }

    const FULL: &str = r#"
[supervisor]
heartbeat_interval = "1s"
heartbeat_misses = 4
start_timeout = "45s"
request_timeout = "1h 30m"
cancel_grace = "3s"
stop_grace = "20s"
term_grace = "7s"
backoff_base = "200ms"
backoff_factor = 1.5
backoff_max = "1m"
backoff_reset_after = "2m"
restart_window = "90s"
max_restarts_in_window = 10
cooldown_retry = "10m"
max_deliveries = 2
max_line_bytes = 1048576
python = "/opt/python/bin/python3.12"

[plans]
max_in_flight = 8
provider_retries = 1
provider_retry_base = "250ms"
journal_retain = 50
agent_wait = "30s"

[agents.executor]
count = 4
concurrency = 8
python = "/usr/bin/python3"
env = { FOO = "bar", "WITH SPACE" = "ok" }
restart = "transient"
args = ["tests/fixtures/workers/misbehave.py", "--role", "executor"]

[agents.orchestrator]
count = 0

[agents.reviewer]
restart = "temporary"
"#;

    fn full_expected() -> Config {
        let mut expected = Config {
            supervisor: SupervisorConfig {
                heartbeat_interval: Duration::from_secs(1),
                heartbeat_misses: 4,
                start_timeout: Duration::from_secs(45),
                request_timeout: Duration::from_secs(90 * 60),
                cancel_grace: Duration::from_secs(3),
                stop_grace: Duration::from_secs(20),
                term_grace: Duration::from_secs(7),
                backoff_base: Duration::from_millis(200),
                backoff_factor: 1.5,
                backoff_max: Duration::from_secs(60),
                backoff_reset_after: Duration::from_secs(120),
                restart_window: Duration::from_secs(90),
                max_restarts_in_window: 10,
                cooldown_retry: Duration::from_secs(600),
                max_deliveries: 2,
                max_line_bytes: 1_048_576,
                python: Some(PathBuf::from("/opt/python/bin/python3.12")),
            },
            plans: PlansConfig {
                max_in_flight: 8,
                provider_retries: 1,
                provider_retry_base: Duration::from_millis(250),
                journal_retain: 50,
                agent_wait: Duration::from_secs(30),
            },
            ..Config::default()
        };
        expected.agents.insert(
            Role::Executor,
            AgentConfig {
                count: 4,
                concurrency: 8,
                python: Some(PathBuf::from("/usr/bin/python3")),
                env: BTreeMap::from([
                    ("FOO".to_owned(), "bar".to_owned()),
                    ("WITH SPACE".to_owned(), "ok".to_owned()),
                ]),
                restart: RestartPolicy::Transient,
                args: Some(vec![
                    "tests/fixtures/workers/misbehave.py".to_owned(),
                    "--role".to_owned(),
                    "executor".to_owned(),
                ]),
            },
        );
        expected.agents.insert(
            Role::Orchestrator,
            AgentConfig {
                count: 0,
                ..AgentConfig::default()
            },
        );
        expected.agents.insert(
            Role::Reviewer,
            AgentConfig {
                restart: RestartPolicy::Temporary,
                ..AgentConfig::default()
            },
        );
        expected
    }

    #[test]
    fn full_file_sets_every_key() {
        assert_eq!(parse_ok(FULL), full_expected());
    }

    #[test]
    fn serialized_config_parses_back_to_itself() {
        for config in [Config::default(), full_expected()] {
            let text = toml::to_string(&config).expect("a config always serializes to toml");
            assert_eq!(parse_ok(&text), config, "round trip through:\n{text}");
        }
    }

    #[test]
    fn durations_accept_humantime_forms() {
        let cases = [
            ("200ms", Duration::from_millis(200)),
            ("5s", Duration::from_secs(5)),
            ("1m 30s", Duration::from_secs(90)),
            ("2min", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("250us", Duration::from_micros(250)),
        ];
        for (text, expected) in cases {
            let config = parse_ok(&format!("[supervisor]\ncancel_grace = \"{text}\"\n"));
            assert_eq!(config.supervisor.cancel_grace, expected, "{text}");
        }
    }

    #[test]
    fn integer_backoff_factor_is_accepted_as_a_float() {
        let config = parse_ok("[supervisor]\nbackoff_factor = 3\n");
        assert_eq!(config.supervisor.backoff_factor, 3.0);
    }

    #[test]
    fn bad_duration_names_the_key_and_line() {
        let message = assert_parse_error(
            "[supervisor]\nheartbeat_misses = 3\nheartbeat_interval = \"5 parsecs\"\n",
            3,
            22,
            "supervisor.heartbeat_interval: invalid duration \"5 parsecs\"",
        );
        assert!(message.contains("parsecs"), "{message}");
    }

    #[test]
    fn number_where_a_duration_belongs_names_the_key() {
        assert_parse_error(
            "[supervisor]\nstop_grace = 10\n",
            2,
            14,
            "supervisor.stop_grace: expected a duration string",
        );
    }

    #[test]
    fn wrong_type_names_the_key_and_line() {
        assert_parse_error(
            "[agents.optimizer]\n\ncount = \"three\"\n",
            3,
            9,
            "agents.optimizer.count: invalid type: string \"three\"",
        );
        assert_parse_error(
            "[supervisor]\nmax_deliveries = -1\n",
            2,
            18,
            "supervisor.max_deliveries: invalid value: integer `-1`",
        );
        assert_parse_error(
            "[agents.executor]\nenv = { GOOD = \"x\", \"BAD KEY\" = 1 }\n",
            2,
            33,
            "agents.executor.env.\"BAD KEY\": invalid type: integer `1`",
        );
    }

    #[test]
    fn unknown_restart_policy_lists_the_valid_ones() {
        assert_parse_error(
            "[agents.reviewer]\nrestart = \"always\"\n",
            2,
            11,
            "agents.reviewer.restart: unknown variant `always`, expected one of `permanent`, `transient`, `temporary`",
        );
    }

    #[test]
    fn unknown_supervisor_key_is_an_error_at_its_line() {
        let message = assert_parse_error(
            "# comment\n\n[supervisor]\nheartbeat_misses = 3\n\n\nheartbeat_intervall = \"5s\"\n",
            7,
            1,
            "unknown field `heartbeat_intervall`",
        );
        assert!(message.contains("heartbeat_interval"), "{message}");
    }

    #[test]
    fn unknown_agent_key_is_an_error_at_its_line() {
        assert_parse_error(
            "[agents.executor]\ncount = 1\n  counts = 2\n",
            3,
            3,
            "unknown field `counts`",
        );
        assert_parse_error(
            "[agents]\nexecutor = { count = 1, retsart = \"temporary\" }\n",
            2,
            25,
            "unknown field `retsart`",
        );
    }

    #[test]
    fn unknown_top_level_key_or_table_is_an_error() {
        assert_parse_error("supervisr = 1\n", 1, 1, "unknown field `supervisr`");
        assert_parse_error("\n[agent.executor]\n", 2, 2, "unknown field `agent`");
    }

    #[test]
    fn unknown_role_table_names_the_valid_roles_and_line() {
        let expected = "unknown role \"executer\", expected one of executor, orchestrator, optimizer, reviewer";
        let message = assert_parse_error(
            "[supervisor]\n\n[agents.executer]\ncount = 2\n",
            3,
            9,
            expected,
        );
        assert_eq!(message, expected);
        assert_parse_error("[agents]\nexecuter = { count = 2 }\n", 2, 1, expected);
    }

    #[test]
    fn syntax_error_reports_line_and_column() {
        assert_parse_error(
            "[supervisor]\nheartbeat_misses = 3\n[agents\n",
            3,
            8,
            "unclosed table",
        );
        assert_parse_error(
            "[agents.executor]\ncount = 1\n[agents.executor]\n",
            3,
            9,
            "duplicate key",
        );
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        assert_parse_error(
            "[agents.executor]\nenv = { \"ÄÖÜ\" = 1 }\n",
            2,
            17,
            "invalid type",
        );
    }

    #[test]
    fn out_of_range_supervisor_values_are_named_with_their_line() {
        let cases = [
            (
                "heartbeat_interval = \"0s\"",
                "heartbeat_interval",
                "greater than zero",
            ),
            ("heartbeat_misses = 0", "heartbeat_misses", "at least 1"),
            (
                "start_timeout = \"0ms\"",
                "start_timeout",
                "greater than zero",
            ),
            (
                "request_timeout = \"0s\"",
                "request_timeout",
                "greater than zero",
            ),
            ("backoff_factor = 0.5", "backoff_factor", "at least 1.0"),
            ("backoff_factor = nan", "backoff_factor", "finite"),
            ("backoff_factor = inf", "backoff_factor", "finite"),
            (
                "max_restarts_in_window = 0",
                "max_restarts_in_window",
                "at least 1",
            ),
            ("max_deliveries = 0", "max_deliveries", "at least 1"),
            ("max_line_bytes = 1023", "max_line_bytes", "at least 1024"),
            ("python = \"\"", "python", "must not be empty"),
        ];
        for (line, key, needle) in cases {
            assert_invalid(
                &format!("[supervisor]\nterm_grace = \"1s\"\n{line}\n"),
                &format!("supervisor.{key}"),
                Some(3),
                needle,
            );
        }
    }

    #[test]
    fn smallest_allowed_values_pass_validation() {
        let config = parse_ok(
            "[supervisor]\nheartbeat_misses = 1\nbackoff_factor = 1.0\nmax_line_bytes = 1024\n\
             max_restarts_in_window = 1\nmax_deliveries = 1\nbackoff_base = \"0s\"\n\
             backoff_max = \"0s\"\n[agents.executor]\ncount = 64\n[agents.reviewer]\ncount = 0\n",
        );
        assert_eq!(config.agents[&Role::Executor].count, 64);
        assert_eq!(config.agents[&Role::Reviewer].count, 0);
    }

    #[test]
    fn backoff_base_above_backoff_max_points_at_whichever_is_written() {
        assert_invalid(
            "[supervisor]\nbackoff_max = \"1s\"\nbackoff_base = \"2s\"\n",
            "supervisor.backoff_base",
            Some(3),
            "2s must not exceed supervisor.backoff_max (1s)",
        );
        assert_invalid(
            "[supervisor]\nbackoff_max = \"100ms\"\n",
            "supervisor.backoff_base",
            Some(2),
            "500ms must not exceed supervisor.backoff_max (100ms)",
        );
    }

    #[test]
    fn out_of_range_agent_values_are_named_with_their_line() {
        assert_invalid(
            "[agents.optimizer]\nrestart = \"transient\"\ncount = 65\n",
            "agents.optimizer.count",
            Some(3),
            "at most 64",
        );
        assert_invalid(
            "[agents]\nreviewer = { args = [] }\n",
            "agents.reviewer.args",
            Some(2),
            "must not be empty",
        );
        assert_invalid(
            "[agents.executor]\npython = \"\"\n",
            "agents.executor.python",
            Some(2),
            "must not be empty",
        );
    }

    #[test]
    fn bad_environment_entries_are_named_with_their_line() {
        assert_invalid(
            "[agents.executor]\ncount = 1\nenv = { \"\" = \"x\" }\n",
            "agents.executor.env.\"\"",
            Some(3),
            "name must not be empty",
        );
        assert_invalid(
            "[agents.executor]\n[agents.executor.env]\nOK = \"1\"\n\"A=B\" = \"x\"\n",
            "agents.executor.env.\"A=B\"",
            Some(4),
            "must not contain '='",
        );
        assert_invalid(
            "[agents.executor]\nenv = { \"A\\u0000B\" = \"x\" }\n",
            "agents.executor.env.\"A\\0B\"",
            Some(2),
            "name must not contain NUL",
        );
        assert_invalid(
            "[agents.executor]\nenv = { A = \"x\\u0000y\" }\n",
            "agents.executor.env.A",
            Some(2),
            "value must not contain NUL",
        );
    }

    #[test]
    fn the_executor_table_sets_workspace_skills_turns_and_the_unsandboxed_switch() {
        let config = parse_ok(
            "[executor]\nworkspace_dir = \"/srv/ws\"\nskill_dirs = [\"./skills\", \"/opt/skills\"]\n\
             max_tool_turns = 40\nallow_unsandboxed_commands = true\n",
        );
        assert_eq!(
            config.executor,
            ExecutorConfig {
                workspace_dir: Some(PathBuf::from("/srv/ws")),
                skill_dirs: vec![PathBuf::from("./skills"), PathBuf::from("/opt/skills")],
                max_tool_turns: 40,
                allow_unsandboxed_commands: true,
            }
        );
        let text = toml::to_string(&config).expect("a config always serializes to toml");
        assert_eq!(parse_ok(&text), config, "round trip through:\n{text}");
    }

    #[test]
    fn executor_defaults_keep_commands_sandboxed_and_workspaces_in_the_state_dir() {
        let executor = ExecutorConfig::default();
        assert_eq!(executor.workspace_dir, None);
        assert!(executor.skill_dirs.is_empty());
        assert_eq!(executor.max_tool_turns, 16);
        assert!(!executor.allow_unsandboxed_commands);
    }

    #[test]
    fn bad_executor_values_are_named_with_their_key_and_line() {
        assert_invalid(
            "[executor]\nskill_dirs = []\nmax_tool_turns = 0\n",
            "executor.max_tool_turns",
            Some(3),
            "between 1 and 1000",
        );
        assert_invalid(
            "[executor]\nmax_tool_turns = 1001\n",
            "executor.max_tool_turns",
            Some(2),
            "between 1 and 1000",
        );
        assert_invalid(
            "[executor]\n\nworkspace_dir = \"\"\n",
            "executor.workspace_dir",
            Some(3),
            "must not be empty",
        );
        assert_invalid(
            "[executor]\nskill_dirs = [\"a\", \"\"]\n",
            "executor.skill_dirs",
            Some(2),
            "empty path",
        );
        assert_invalid(
            "[executor]\nskill_dirs = [\"/a:/b\"]\n",
            "executor.skill_dirs",
            Some(2),
            "must not contain ':'",
        );
        assert_parse_error(
            "[executor]\nallow_unsandboxed_commands = \"yes\"\n",
            2,
            30,
            "executor.allow_unsandboxed_commands: invalid type: string \"yes\"",
        );
        assert_parse_error(
            "[executor]\nmax_tool_turn = 3\n",
            2,
            1,
            "unknown field `max_tool_turn`",
        );
    }

    #[test]
    fn error_messages_read_as_file_line_column_key_message() {
        let parse_error = parse("[supervisor]\nheartbeat_intervall = \"5s\"\n")
            .expect_err("unknown key must fail");
        assert!(
            parse_error.to_string().starts_with(
                "mnemosyne.toml:2:1: unknown field `heartbeat_intervall`, expected one of"
            ),
            "{parse_error}"
        );

        let invalid =
            parse("[supervisor]\nheartbeat_misses = 0\n").expect_err("0 misses must fail");
        assert_eq!(
            invalid.to_string(),
            "mnemosyne.toml:2: supervisor.heartbeat_misses: must be at least 1"
        );

        let without_line = ConfigError::Invalid {
            path: PathBuf::from("mnemosyne.toml"),
            key: "supervisor.heartbeat_misses".to_owned(),
            line: None,
            message: "must be at least 1".to_owned(),
        };
        assert_eq!(
            without_line.to_string(),
            "mnemosyne.toml: supervisor.heartbeat_misses: must be at least 1"
        );

        let read = ConfigError::Read {
            path: PathBuf::from("/etc/mnemosyne.toml"),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert_eq!(
            read.to_string(),
            "/etc/mnemosyne.toml: cannot read config file"
        );
        assert!(std::error::Error::source(&read).is_some());
    }

    #[test]
    fn python_precedence_is_role_then_supervisor_then_environment_then_python3() {
        let env = Some(OsStr::new("/from/env/python"));
        let mut config = Config::default();
        assert_eq!(
            config.python_for_with_env(Role::Executor, None),
            PathBuf::from("python3")
        );
        assert_eq!(
            config.python_for_with_env(Role::Executor, Some(OsStr::new(""))),
            PathBuf::from("python3"),
            "an empty variable counts as unset"
        );
        assert_eq!(
            config.python_for_with_env(Role::Executor, env),
            PathBuf::from("/from/env/python")
        );

        config.supervisor.python = Some(PathBuf::from("/supervisor/python"));
        assert_eq!(
            config.python_for_with_env(Role::Executor, env),
            PathBuf::from("/supervisor/python")
        );

        config
            .agents
            .get_mut(&Role::Executor)
            .expect("all roles are present")
            .python = Some(PathBuf::from("/role/python"));
        assert_eq!(
            config.python_for_with_env(Role::Executor, env),
            PathBuf::from("/role/python")
        );
        assert_eq!(
            config.python_for_with_env(Role::Reviewer, env),
            PathBuf::from("/supervisor/python"),
            "a role's python applies to that role only"
        );
    }

    #[test]
    fn supervisor_python_written_as_python3_still_overrides_the_environment() {
        let config = parse_ok("[supervisor]\npython = \"python3\"\n");
        assert_eq!(
            config.python_for_with_env(Role::Optimizer, Some(OsStr::new("/from/env/python"))),
            PathBuf::from("python3")
        );
    }

    #[test]
    fn roles_parse_display_and_sort_in_the_listed_order() {
        let names = ["executor", "orchestrator", "optimizer", "reviewer"];
        assert_eq!(Role::ALL.map(Role::as_str), names);
        for role in Role::ALL {
            assert_eq!(role.to_string().parse::<Role>(), Ok(role));
        }
        let mut shuffled = vec![
            Role::Reviewer,
            Role::Executor,
            Role::Optimizer,
            Role::Orchestrator,
        ];
        shuffled.sort();
        assert_eq!(shuffled, Role::ALL);

        let error = "Executor".parse::<Role>().expect_err("roles are lowercase");
        assert_eq!(
            error.to_string(),
            "unknown role \"Executor\", expected one of executor, orchestrator, optimizer, reviewer"
        );
    }

    #[test]
    fn roles_and_restart_policies_serialize_in_lowercase() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Both {
            role: Role,
            restart: RestartPolicy,
        }
        let both = Both {
            role: Role::Orchestrator,
            restart: RestartPolicy::Transient,
        };
        let text = toml::to_string(&both).expect("plain enums serialize");
        assert_eq!(text, "role = \"orchestrator\"\nrestart = \"transient\"\n");
        assert_eq!(toml::from_str::<Both>(&text).expect("and parse back"), both);
        assert_eq!(RestartPolicy::default(), RestartPolicy::Permanent);
        assert_eq!(RestartPolicy::Temporary.to_string(), "temporary");
    }

    #[test]
    fn load_reads_a_file_and_names_it_in_errors() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("custom.toml");
        std::fs::write(&path, "[agents.executor]\ncount = 2\n").expect("write config");
        let config = Config::load(&path).expect("valid file loads");
        assert_eq!(config.agents[&Role::Executor].count, 2);

        std::fs::write(&path, "[supervisor]\nmax_deliveries = 0\n").expect("write config");
        let error = Config::load(&path).expect_err("invalid file fails");
        assert!(
            error
                .to_string()
                .starts_with(&format!("{}:2: ", path.display())),
            "{error}"
        );

        let missing = dir.path().join("missing.toml");
        match Config::load(&missing) {
            Err(ConfigError::Read { path, source }) => {
                assert_eq!(path, missing);
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("expected a read error, got {other:?}"),
        }
    }

    #[test]
    fn discover_uses_the_explicit_path_even_when_the_working_directory_has_a_file() {
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::write(
            dir.path().join(DEFAULT_FILE_NAME),
            "[agents.executor]\ncount = 2\n",
        )
        .expect("write default config");
        std::fs::write(
            dir.path().join("other.toml"),
            "[agents.executor]\ncount = 3\n",
        )
        .expect("write explicit config");

        let (config, used) = Config::discover(Some(Path::new("other.toml")), dir.path())
            .expect("explicit file loads");
        assert_eq!(config.agents[&Role::Executor].count, 3);
        assert_eq!(used, Some(dir.path().join("other.toml")));
    }

    #[test]
    fn discover_fails_naming_a_missing_explicit_file() {
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::write(dir.path().join(DEFAULT_FILE_NAME), "").expect("write default config");
        let error = Config::discover(Some(Path::new("absent.toml")), dir.path())
            .expect_err("a missing explicit file is an error, not a fallback");
        match &error {
            ConfigError::Read { path, source } => {
                assert_eq!(path, &dir.path().join("absent.toml"));
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("expected a read error, got {other:?}"),
        }
        assert!(error.to_string().contains("absent.toml"), "{error}");
    }

    #[test]
    fn discover_falls_back_to_the_working_directory_file_then_to_defaults() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (config, used) = Config::discover(None, dir.path()).expect("no file means defaults");
        assert_eq!(config, Config::default());
        assert_eq!(used, None);

        let default_path = dir.path().join(DEFAULT_FILE_NAME);
        std::fs::write(&default_path, "[agents.reviewer]\ncount = 0\n").expect("write config");
        let (config, used) = Config::discover(None, dir.path()).expect("file in cwd loads");
        assert_eq!(config.agents[&Role::Reviewer].count, 0);
        assert_eq!(used, Some(default_path.clone()));

        std::fs::write(&default_path, "[agents.reviewer]\ncount = 100\n").expect("write config");
        let error = Config::discover(None, dir.path()).expect_err("an invalid file is not skipped");
        assert!(matches!(error, ConfigError::Invalid { .. }), "{error}");
    }

    #[test]
    fn discover_reports_a_directory_named_like_the_config_file() {
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::create_dir(dir.path().join(DEFAULT_FILE_NAME)).expect("create directory");
        let error = Config::discover(None, dir.path()).expect_err("a directory is not a config");
        assert!(matches!(error, ConfigError::Read { .. }), "{error}");
    }
}
