//! `mnemosyne supervise`: start the agents, wait until every role has a worker ready (or say
//! which role cannot start, and why), run the work plans piped on stdin through them, print one
//! result per plan on stdout, and stop within a bound whatever state the agents are in.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use secrecy::SecretString;

use super::reloader::{ConfigSource, Reloader};
use crate::config::{Config, ProviderChoice};
use crate::control::ControlSocket;
use crate::plan::intake::PlanReader;
use crate::plan::journal::{Journal, JournalSettings};
use crate::plan::runner::{PlanRunner, RunnerSettings};
use crate::plan::service::{ServiceSettings, serve};
use crate::plan::statedir::StateDir;
use crate::process::WorkerEnvironment;
use crate::supervisor::{Supervisor, SupervisorOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    AllSucceeded,
    SomeFailed,
    Interrupted,
}

/// A problem with how the command was called or configured (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct UsageError(#[from] pub anyhow::Error);

pub struct SuperviseArgs {
    pub config: Config,
    /// `--provider`, overriding the config's `[provider] name`.
    pub provider: Option<ProviderChoice>,
    /// The Anthropic credentials found in the environment (or, later, the secrets store).
    pub anthropic: AnthropicAccess,
    pub options: SupervisorOptions,
    pub state_dir: PathBuf,
    pub keep_running: bool,
    /// Where the configuration was read, so `mnemosyne reload` can read it again; `None`
    /// when the caller built it in memory and nothing can be reloaded.
    pub config_source: Option<ConfigSource>,
    /// Also reload on SIGHUP (the binary; not tests running in-process).
    pub reload_on_hangup: bool,
    /// Cancelled on the first SIGINT/SIGTERM.
    pub interrupt: CancellationToken,
    /// Cancelled on the second: every stop goes straight to SIGKILL.
    pub kill_now: CancellationToken,
}

pub async fn run(
    args: SuperviseArgs,
    input: impl AsyncRead + Unpin + Send,
    output: impl AsyncWrite + Unpin + Send + 'static,
) -> anyhow::Result<RunOutcome> {
    let mut args = args;
    let state_dir = StateDir::lock(&args.state_dir).map_err(|error| UsageError(error.into()))?;
    let pristine_env = args.options.base_env.clone();
    args.options.base_env = worker_environment(
        pristine_env.clone(),
        args.provider.unwrap_or(args.config.provider.name),
        &args.anthropic,
        &args.config,
        state_dir.path(),
    )
    .await
    .map_err(|message| UsageError(anyhow::anyhow!(message)))?;
    let journal_settings = JournalSettings {
        retain_finished: args.config.plans.journal_retain,
        ..JournalSettings::default()
    };
    let (journal, recovery) = Journal::open(&state_dir, journal_settings)?;
    if !recovery.unfinished.is_empty() || !recovery.unemitted.is_empty() {
        tracing::info!(
            unfinished = recovery.unfinished.len(),
            unemitted = recovery.unemitted.len(),
            "the journal holds work from an earlier run; resuming it"
        );
    }
    let control =
        ControlSocket::bind(state_dir.path()).map_err(|error| UsageError(error.into()))?;
    let stop_grace = args.config.supervisor.stop_grace;
    let stop_bound = 2 * stop_grace + args.config.supervisor.term_grace + STOP_SLACK;
    args.options.kill_now = args.kill_now.clone();
    let supervisor = Arc::new(Supervisor::start(&args.config, args.options)?);
    let (submissions, submitted) = tokio::sync::mpsc::channel(16);
    let (reload_requests, reloads) = tokio::sync::mpsc::channel(4);
    let reloading = args.config_source.map(|source| {
        let reloader = Reloader {
            source,
            provider: args.provider,
            pristine_env,
            state_dir: state_dir.path().to_path_buf(),
            supervisor: supervisor.clone(),
        };
        let stop = args.interrupt.clone();
        tokio::spawn(reloader.serve(reloads, args.reload_on_hangup, stop))
    });
    let control = control.serve(
        supervisor.directory(),
        supervisor.events().clone(),
        args.keep_running.then_some(submissions),
        reloading.is_some().then_some(reload_requests),
    )?;

    // The start-up gate: no plan is read, resumed or taken from a client before every role
    // has had a worker ready, so a role that cannot start is one clear error now rather than
    // plans waiting for it forever.
    let gate = tokio::select! {
        verdict = supervisor.wait_started() => Some(verdict),
        () = args.interrupt.cancelled() => None,
    };
    let outcome = match gate {
        Some(Ok(())) => {
            tracing::info!("every role has a worker ready; taking plans");
            let runner = PlanRunner::new(
                supervisor.clone(),
                RunnerSettings {
                    step_deadline: args.config.supervisor.request_timeout,
                    provider_retries: args.config.plans.provider_retries,
                    provider_retry_base: args.config.plans.provider_retry_base,
                    agent_wait: args.config.plans.agent_wait,
                },
            );
            let settings = ServiceSettings {
                max_in_flight: args.config.plans.max_in_flight,
                keep_running: args.keep_running,
                drain_grace: stop_grace,
            };
            let source = PlanReader::new(input, args.config.supervisor.max_line_bytes);
            let work = async {
                let outcome = serve(
                    source,
                    runner,
                    journal.clone(),
                    recovery,
                    output,
                    settings,
                    args.interrupt.clone(),
                    args.kill_now.clone(),
                    Some(submitted),
                )
                .await;
                supervisor.shutdown().await;
                outcome
            };
            match bounded_stop(work, &args.interrupt, &args.kill_now, stop_bound).await {
                Some(outcome) => Ok(match (outcome.interrupted, outcome.all_succeeded) {
                    (true, _) => RunOutcome::Interrupted,
                    (false, true) => RunOutcome::AllSucceeded,
                    (false, false) => RunOutcome::SomeFailed,
                }),
                None => Ok(RunOutcome::Interrupted),
            }
        }
        Some(Err(failure)) => {
            tracing::error!("a role cannot start; stopping without reading any plan");
            Err(UsageError(anyhow::Error::new(failure)).into())
        }
        None => Ok(RunOutcome::Interrupted),
    };
    // After a gate failure or an interrupt the agents still run; stopping them is bounded like
    // any stop (and a no-op when the work above already did it).
    let stopping = CancellationToken::new();
    stopping.cancel();
    let stopped = bounded_stop(supervisor.shutdown(), &stopping, &args.kill_now, stop_bound);
    if stopped.await.is_none() {
        tracing::error!("the workers did not stop in time; the orphan warden ends them");
    }
    if tokio::time::timeout(CLEANUP_BOUND, control.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("the control server did not stop in time; leaving it");
    }
    if let Some(reloading) = reloading {
        reloading.abort();
    }
    journal.close().await;
    drop(state_dir);
    if let Some(peak_rss_kib) = peak_rss_kib() {
        tracing::info!(peak_rss_kib, "supervisor finished");
    }
    outcome
}

/// Beyond `stop_grace` twice (plans draining, then workers finishing) and `term_grace`, what a
/// stop may take: closing stdin (1 s), reading a dead worker's last output and stderr (2 s
/// each), and room to spare. Past it the supervisor exits anyway.
const STOP_SLACK: Duration = Duration::from_secs(7);
/// After the second signal, how long SIGKILLing and reaping the workers may take.
const KILL_BOUND: Duration = Duration::from_secs(1);
/// How long the control server may take to say goodbye to its clients.
const CLEANUP_BOUND: Duration = Duration::from_secs(2);

/// Runs `work` to its end unless signals say otherwise: after `interrupt` it gets `stop_bound`
/// more, after `kill_now` only [`KILL_BOUND`]. `None` when it was abandoned; the journal keeps
/// every plan that had no result yet, and the orphan warden kills any worker left.
async fn bounded_stop<T>(
    work: impl std::future::Future<Output = T>,
    interrupt: &CancellationToken,
    kill_now: &CancellationToken,
    stop_bound: Duration,
) -> Option<T> {
    tokio::pin!(work);
    tokio::select! {
        out = &mut work => return Some(out),
        () = interrupt.cancelled() => {}
        () = kill_now.cancelled() => {}
    }
    if !kill_now.is_cancelled() {
        tokio::select! {
            out = &mut work => return Some(out),
            () = tokio::time::sleep(stop_bound) => {
                tracing::error!(?stop_bound, "the stop is taking too long; exiting with the journal as it is");
                return None;
            }
            () = kill_now.cancelled() => {}
        }
    }
    tokio::select! {
        out = &mut work => Some(out),
        () = tokio::time::sleep(KILL_BOUND) => {
            tracing::warn!("killed: exiting without waiting any longer");
            None
        }
    }
}

/// The supervisor's own peak resident memory (VmHWM), for the record of what a run cost.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// How to reach the Anthropic API, as far as the environment says.
#[derive(Debug, Clone, Default)]
pub struct AnthropicAccess {
    pub api_key: Option<SecretString>,
    pub base_url: Option<String>,
}

impl AnthropicAccess {
    /// Reads `ANTHROPIC_API_KEY` and `ANTHROPIC_BASE_URL`; an empty value counts as unset.
    pub fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|value| !value.trim().is_empty())
        };
        Self {
            api_key: var("ANTHROPIC_API_KEY").map(SecretString::from),
            base_url: var("ANTHROPIC_BASE_URL"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvedProvider {
    Anthropic,
    Offline,
}

impl ResolvedProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            ResolvedProvider::Anthropic => "anthropic",
            ResolvedProvider::Offline => "offline",
        }
    }
}

/// Decides the provider before any worker starts, so a missing key is one clear error here
/// rather than every worker failing on its own.
pub fn resolve_provider(
    choice: ProviderChoice,
    access: &AnthropicAccess,
) -> Result<ResolvedProvider, String> {
    match (choice, access.api_key.is_some()) {
        (ProviderChoice::Offline, _) => Ok(ResolvedProvider::Offline),
        (ProviderChoice::Anthropic | ProviderChoice::Auto, true) => Ok(ResolvedProvider::Anthropic),
        (ProviderChoice::Anthropic, false) => Err(
            "the anthropic provider needs an API key: set ANTHROPIC_API_KEY \
             in the environment, or choose --provider offline to run without a model"
                .into(),
        ),
        (ProviderChoice::Auto, false) => {
            tracing::warn!(
                "no Anthropic API key configured (ANTHROPIC_API_KEY): using the OFFLINE provider; \
                 no model is called and answers are canned"
            );
            Ok(ResolvedProvider::Offline)
        }
    }
}

/// The environment workers start from under `config`: `pristine` plus the provider's settings
/// and key and the executor's sandbox and workspace. Built the same way at start and on every
/// reload.
pub(crate) async fn worker_environment(
    pristine: WorkerEnvironment,
    choice: ProviderChoice,
    access: &AnthropicAccess,
    config: &Config,
    state_dir: &std::path::Path,
) -> Result<WorkerEnvironment, String> {
    let provider = resolve_provider(choice, access)?;
    let mut env = pristine;
    configure_provider(&mut env, provider, access, config);
    crate::process::sandbox::prepare_executor(&mut env, &config.executor, state_dir).await;
    Ok(env)
}

/// Puts the provider's settings into the workers' environment. The key travels only there:
/// never in arguments, logs or status output.
fn configure_provider(
    env: &mut WorkerEnvironment,
    provider: ResolvedProvider,
    access: &AnthropicAccess,
    config: &Config,
) {
    env.set("MNEMOSYNE_PROVIDER", provider.as_str());
    env.set("MNEMOSYNE_MODEL", &config.provider.model);
    env.set(
        "MNEMOSYNE_MAX_TOKENS",
        config.provider.max_tokens.to_string(),
    );
    env.set(
        "MNEMOSYNE_REQUEST_TIMEOUT_S",
        config.provider.request_timeout.as_secs().to_string(),
    );
    env.set(
        "MNEMOSYNE_SDK_MAX_RETRIES",
        config.provider.sdk_max_retries.to_string(),
    );
    if provider == ResolvedProvider::Anthropic {
        if let Some(key) = &access.api_key {
            env.set_secret("ANTHROPIC_API_KEY", key.clone());
        }
        if let Some(url) = &access.base_url {
            env.set("ANTHROPIC_BASE_URL", url);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_key() -> AnthropicAccess {
        AnthropicAccess {
            api_key: Some(SecretString::from("sk-ant-test")),
            base_url: None,
        }
    }

    #[test]
    fn auto_uses_anthropic_only_when_a_key_is_configured() {
        assert_eq!(
            resolve_provider(ProviderChoice::Auto, &with_key()),
            Ok(ResolvedProvider::Anthropic)
        );
        assert_eq!(
            resolve_provider(ProviderChoice::Auto, &AnthropicAccess::default()),
            Ok(ResolvedProvider::Offline)
        );
        assert_eq!(
            resolve_provider(ProviderChoice::Offline, &with_key()),
            Ok(ResolvedProvider::Offline)
        );
    }

    #[test]
    fn anthropic_without_a_key_is_an_error_naming_the_ways_to_configure_one() {
        let error = resolve_provider(ProviderChoice::Anthropic, &AnthropicAccess::default())
            .expect_err("no key");
        assert!(
            error.contains("ANTHROPIC_API_KEY") && error.contains("--provider offline"),
            "{error}"
        );
    }

    #[test]
    fn the_key_reaches_the_worker_environment_but_not_its_debug_output() {
        let mut env = WorkerEnvironment::default();
        configure_provider(
            &mut env,
            ResolvedProvider::Anthropic,
            &with_key(),
            &Config::default(),
        );
        assert_eq!(
            env.get("MNEMOSYNE_PROVIDER").and_then(|v| v.to_str()),
            Some("anthropic")
        );
        assert!(!format!("{env:?}").contains("sk-ant-test"));
        assert!(
            env.exposed()
                .any(|(key, value)| key == "ANTHROPIC_API_KEY" && value == "sk-ant-test")
        );
    }
}
