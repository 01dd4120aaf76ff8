//! The supervisor's side of `mnemosyne reload` and SIGHUP: re-read the configuration file and
//! the secrets, build the workers' environment from them exactly as at start, and hand both
//! to [`Supervisor::reload`]. A file that does not parse, or a provider that can no longer be
//! used, is refused and the running configuration stays.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::supervise::{AnthropicAccess, worker_environment};
use crate::config::{Config, ProviderChoice};
use crate::control::ReloadRequest;
use crate::process::WorkerEnvironment;
use crate::supervisor::{ReloadReport, Supervisor};

/// Where the configuration came from, so a reload reads the same place: the `--config` path,
/// or the default file in the directory `supervise` started in (which may appear later).
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub explicit: Option<PathBuf>,
    pub cwd: PathBuf,
}

impl ConfigSource {
    fn read(&self) -> Result<Config, String> {
        Config::discover(self.explicit.as_deref(), &self.cwd)
            .map(|(config, _)| config)
            .map_err(|error| format!("{error}; the running configuration stays"))
    }
}

/// Everything a reload needs besides the file.
pub(crate) struct Reloader {
    pub source: ConfigSource,
    /// `--provider`, which outranks the file on every reload as it did at start.
    pub provider: Option<ProviderChoice>,
    /// The environment workers start from before any provider or executor setting.
    pub pristine_env: WorkerEnvironment,
    pub state_dir: PathBuf,
    pub supervisor: Arc<Supervisor>,
}

impl Reloader {
    /// Answers reload requests, and SIGHUP when `hangup` is set, until `stop`.
    pub async fn serve(
        self,
        mut requests: mpsc::Receiver<ReloadRequest>,
        hangup: bool,
        stop: CancellationToken,
    ) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = if hangup {
            match signal(SignalKind::hangup()) {
                Ok(hangups) => Some(hangups),
                Err(error) => {
                    tracing::warn!(%error, "could not listen for SIGHUP; use `mnemosyne reload`");
                    None
                }
            }
        } else {
            None
        };
        loop {
            let hangup = async {
                match &mut hangups {
                    Some(hangups) => hangups.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                request = requests.recv() => {
                    let Some(request) = request else { return };
                    let _ = request.reply.send(self.reload_once().await);
                }
                Some(()) = hangup => {
                    tracing::info!("SIGHUP received; reloading the configuration");
                    // The outcome is logged by `reload_once`; nobody waits for an answer.
                    let _ = self.reload_once().await;
                }
            }
        }
    }

    async fn reload_once(&self) -> Result<ReloadReport, String> {
        let refused = |message: String| {
            tracing::error!("reload refused: {message}");
            message
        };
        let config = self.source.read().map_err(refused)?;
        let choice = self.provider.unwrap_or(config.provider.name);
        let env = worker_environment(
            self.pristine_env.clone(),
            choice,
            &AnthropicAccess::from_env(),
            &config,
            &self.state_dir,
        )
        .await
        .map_err(|message| refused(format!("{message}; the running configuration stays")))?;
        let report = self
            .supervisor
            .reload(config, env)
            .await
            .map_err(|error| refused(error.to_string()))?;
        tracing::info!(
            changed = report.changed.len(),
            restarted = ?report.restarted,
            added = ?report.added,
            removed = ?report.removed,
            needs_restart = ?report.needs_restart,
            "configuration reloaded"
        );
        if let Some(halted) = &report.halted {
            tracing::error!(
                agent = %halted.agent,
                kept = ?halted.kept,
                "the reload stopped replacing agents: {}",
                halted.reason
            );
        }
        Ok(report)
    }
}
