//! `mnemosyne supervise`: start the agents, run the work plans piped on stdin through them,
//! print one result per plan on stdout.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::plan::intake::PlanReader;
use crate::plan::journal::{Journal, JournalSettings};
use crate::plan::runner::{PlanRunner, RunnerSettings};
use crate::plan::service::{ServiceSettings, serve};
use crate::plan::statedir::StateDir;
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
    let state_dir = StateDir::lock(&args.state_dir).map_err(|error| UsageError(error.into()))?;
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
    let supervisor = Arc::new(Supervisor::start(&args.config, args.options)?);
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
    )
    .await;
    supervisor.shutdown().await;
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
