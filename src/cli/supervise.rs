//! `mnemosyne supervise`: start the agents, run the work plans piped on stdin through them,
//! print one result per plan on stdout.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use secrecy::SecretString;

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
    let provider = resolve_provider(
        args.provider.unwrap_or(args.config.provider.name),
        &args.anthropic,
    )
    .map_err(|message| UsageError(anyhow::anyhow!(message)))?;
    configure_provider(
        &mut args.options.base_env,
        provider,
        &args.anthropic,
        &args.config,
    );
    let state_dir = StateDir::lock(&args.state_dir).map_err(|error| UsageError(error.into()))?;
    crate::process::sandbox::prepare_executor(
        &mut args.options.base_env,
        &args.config.executor,
        state_dir.path(),
    )
    .await;
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
    let supervisor = Arc::new(Supervisor::start(&args.config, args.options)?);
    let (submissions, submitted) = tokio::sync::mpsc::channel(16);
    let control = control.serve(
        supervisor.agents().to_vec(),
        supervisor.events().clone(),
        args.keep_running.then_some(submissions),
    )?;
    let kill_switch = supervisor.kill_switch();
    let forward_kill = tokio::spawn({
        let kill_now = args.kill_now.clone();
        async move {
            kill_now.cancelled().await;
            kill_switch.cancel();
        }
    });
    let runner = PlanRunner::new(
        supervisor.clone(),
        RunnerSettings {
            step_deadline: args.config.supervisor.request_timeout,
            provider_retries: args.config.plans.provider_retries,
            provider_retry_base: args.config.plans.provider_retry_base,
        },
    );
    let settings = ServiceSettings {
        max_in_flight: args.config.plans.max_in_flight,
        keep_running: args.keep_running,
        drain_grace: args.config.supervisor.stop_grace,
    };
    let source = PlanReader::new(input, args.config.supervisor.max_line_bytes);
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
    control.shutdown().await;
    forward_kill.abort();
    journal.close().await;
    drop(state_dir);
    if let Some(peak_rss_kib) = peak_rss_kib() {
        tracing::info!(peak_rss_kib, "supervisor finished");
    }
    Ok(match (outcome.interrupted, outcome.all_succeeded) {
        (true, _) => RunOutcome::Interrupted,
        (false, true) => RunOutcome::AllSucceeded,
        (false, false) => RunOutcome::SomeFailed,
    })
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
