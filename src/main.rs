//! The `mnemosyne` binary: parses arguments, sets up logging, runs a verb, maps the outcome to
//! an exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mnemosyne::cli::{self, supervise::RunOutcome};
use mnemosyne::config::{Config, ConfigError};
use mnemosyne::plan::statedir::default_state_dir;
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
    /// Start the agents, run the work plans piped on stdin, print one result per plan.
    ///
    /// Input is NDJSON (one plan per line), a single JSON plan, or a JSON array of plans.
    /// Results are NDJSON on stdout, in completion order; logs go to stderr (RUST_LOG).
    ///
    /// Examples:
    ///   mnemosyne supervise < plans.ndjson > results.ndjson
    ///   echo '{"prompt": "...", "tech_stack": "Rust", "success_criteria": "..."}' | mnemosyne supervise
    #[command(verbatim_doc_comment)]
    Supervise {
        /// Config file (TOML). Default: ./mnemosyne.toml if it exists.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Where the journal and the lock live. Default: $MNEMOSYNE_STATE_DIR, else
        /// $XDG_STATE_HOME/mnemosyne, else ~/.local/state/mnemosyne.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Keep running after stdin ends, until SIGINT/SIGTERM.
        #[arg(long)]
        keep_running: bool,
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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
        Command::Supervise {
            config,
            state_dir,
            keep_running,
        } => {
            let cwd = std::env::current_dir()?;
            let (config, _) = Config::discover(config.as_deref(), &cwd)?;
            let mut options = SupervisorOptions::new(cli::cache_dir());
            options.warden_program = std::env::current_exe().ok();
            let interrupt = CancellationToken::new();
            let kill_now = CancellationToken::new();
            tokio::spawn(forward_signals(interrupt.clone(), kill_now.clone()));
            let args = cli::supervise::SuperviseArgs {
                config,
                options,
                state_dir: state_dir.unwrap_or_else(default_state_dir),
                keep_running,
                interrupt,
                kill_now,
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
