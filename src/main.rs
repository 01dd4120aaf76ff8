//! The `mnemosyne` binary: parses arguments, sets up logging, runs a verb, maps the outcome to
//! an exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mnemosyne::cli::{self, supervise::RunOutcome};
use mnemosyne::config::{Config, ConfigError};
use mnemosyne::process::{WARDEN_SUBCOMMAND, run_warden};
use mnemosyne::supervisor::SupervisorOptions;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "mnemosyne",
    version,
    about = "Run LLM agents as supervised Python workers"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start one worker per agent, read requests from stdin, write results to stdout.
    ///
    /// Example:
    ///   echo '{"role":"executor","method":"echo","params":{"text":"hi"}}' | mnemosyne supervise
    Supervise {
        /// Config file (TOML). Default: ./mnemosyne.toml if it exists.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    #[command(name = WARDEN_SUBCOMMAND, hide = true)]
    Warden,
}

/// Exit codes: 0 everything succeeded, 1 some work failed, 2 usage or configuration error,
/// 130 interrupted.
fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if let Command::Warden = args.command {
        return match run_warden(std::io::stdin().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("the Tokio runtime starts");
    match runtime.block_on(run(args.command)) {
        Ok(RunOutcome::AllSucceeded) => ExitCode::SUCCESS,
        Ok(RunOutcome::SomeFailed) => ExitCode::from(1),
        Ok(RunOutcome::Interrupted) => ExitCode::from(130),
        Err(error) => {
            eprintln!("mnemosyne: {error:#}");
            if error.downcast_ref::<ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

async fn run(command: Command) -> anyhow::Result<RunOutcome> {
    match command {
        Command::Supervise { config } => {
            let cwd = std::env::current_dir()?;
            let (config, _) = Config::discover(config.as_deref(), &cwd)?;
            let cache_dir = cli::cache_dir();
            let mut options = SupervisorOptions::new(cache_dir.clone());
            options.warden_program = std::env::current_exe().ok();
            let interrupt = CancellationToken::new();
            let kill_now = CancellationToken::new();
            tokio::spawn(forward_signals(interrupt.clone(), kill_now.clone()));
            let args = cli::supervise::SuperviseArgs {
                config,
                options,
                interrupt,
                kill_now,
                cache_dir,
            };
            cli::supervise::run(args, tokio::io::stdin(), tokio::io::stdout()).await
        }
        Command::Warden => unreachable!("handled before the runtime starts"),
    }
}

/// First SIGINT/SIGTERM: stop gracefully. Second: kill at once.
async fn forward_signals(interrupt: CancellationToken, kill_now: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut sigint), Ok(mut sigterm)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("could not install signal handlers");
        return;
    };
    for token in [interrupt, kill_now] {
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
        tracing::warn!("signal received; stopping (a second signal kills the workers at once)");
        token.cancel();
    }
}
