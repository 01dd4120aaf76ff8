//! The `mnemosyne` binary: parses arguments, sets up logging, runs a verb, maps the outcome to
//! an exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mnemosyne::cli::{self, supervise::RunOutcome};
use mnemosyne::config::{Config, ConfigError, ProviderChoice};
use mnemosyne::control::Verb;
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
        /// The model provider: auto (anthropic when ANTHROPIC_API_KEY is set, else offline),
        /// anthropic, or offline. Default: the config's [provider] name, else auto.
        #[arg(long, value_name = "NAME")]
        provider: Option<ProviderChoice>,
    },
    /// Show the agents of a running supervisor, with their state and health.
    ///
    /// One row per agent: state, health, pid, restarts, uptime, requests in flight, last exit,
    /// and why an agent is backing off, cooling down, stopped or failed (with its next retry).
    ///
    /// Health: healthy (ready or busy, no restart in the last 5 minutes), degraded (ready or
    /// busy but restarted within 5 minutes, or starting, or in backoff), unhealthy (cooldown,
    /// failed, stopping), stopped (by an operator or by its restart policy).
    ///
    /// Examples:
    ///   mnemosyne agents
    ///   mnemosyne agents --json | jq '.agents[] | select(.health != "healthy")'
    ///   mnemosyne agents --state-dir /srv/mnemosyne
    #[command(verbatim_doc_comment)]
    Agents {
        #[command(flatten)]
        state: StateDirArg,
        /// Print {"agents": [...]} as one JSON line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Replace the worker of an agent, or of every agent of a role.
    ///
    /// Graceful by default: in-flight requests finish (or are redelivered). Also brings an
    /// agent out of failed, cooldown, backoff or stopped, with a clean restart history.
    /// Returns when the agents are ready again, or fails (exit 1) saying where they went and
    /// why.
    ///
    /// Examples:
    ///   mnemosyne restart executor-1
    ///   mnemosyne restart reviewer            # every reviewer
    ///   mnemosyne restart executor-2 --now    # kill at once, redeliver its work
    #[command(verbatim_doc_comment)]
    Restart {
        /// An agent id (executor-1) or a role (executor: all its agents).
        target: String,
        /// Kill the worker at once and redeliver its requests instead of letting them finish.
        #[arg(long)]
        now: bool,
        #[command(flatten)]
        wait: NoWaitArg,
        #[command(flatten)]
        state: StateDirArg,
    },
    /// Stop an agent, or every agent of a role, until `mnemosyne start`.
    ///
    /// It stays stopped, whatever its restart policy, until `mnemosyne start` (or restart).
    /// In-flight requests finish or are redelivered to a sibling. Returns once stopped.
    ///
    /// Examples:
    ///   mnemosyne stop reviewer-1
    ///   mnemosyne stop optimizer --no-wait
    #[command(verbatim_doc_comment)]
    Stop {
        /// An agent id (reviewer-1) or a role (reviewer: all its agents).
        target: String,
        #[command(flatten)]
        wait: NoWaitArg,
        #[command(flatten)]
        state: StateDirArg,
    },
    /// Start a stopped, failed or cooling-down agent, or every agent of a role.
    ///
    /// The agent gets a clean restart history. Returns when it is ready, or fails (exit 1)
    /// saying where it went and why.
    ///
    /// Examples:
    ///   mnemosyne start reviewer-1
    ///   mnemosyne start executor --no-wait
    #[command(verbatim_doc_comment)]
    Start {
        /// An agent id (reviewer-1) or a role (reviewer: all its agents).
        target: String,
        #[command(flatten)]
        wait: NoWaitArg,
        #[command(flatten)]
        state: StateDirArg,
    },
    /// Print the event stream of a running supervisor.
    ///
    /// State changes with reasons, crash reports, quarantined requests; each event has a
    /// strictly increasing seq. Without --follow, prints the kept history (the last 1024
    /// events) and exits. A reader that falls behind is told how many events it missed
    /// ({"event":"missed","count":N}).
    ///
    /// Examples:
    ///   mnemosyne events
    ///   mnemosyne events --follow
    ///   mnemosyne events --follow --json | jq 'select(.event == "worker_exited")'
    #[command(verbatim_doc_comment)]
    Events {
        /// Keep printing new events until interrupted or the supervisor stops.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Print each event as its JSON line instead of one line for people.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        state: StateDirArg,
    },
    /// Print the captured stderr of an agent's workers.
    ///
    /// The tail spans restarts: each worker's output begins with
    /// "--- worker started (pid N) ---".
    ///
    /// Examples:
    ///   mnemosyne logs executor-1
    ///   mnemosyne logs executor-1 -n 200
    ///   mnemosyne logs reviewer-2 --follow
    #[command(verbatim_doc_comment)]
    Logs {
        /// An agent id, such as executor-1.
        agent: String,
        /// How many of the last lines to print (the supervisor keeps 200 per agent).
        #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = mnemosyne::control::DEFAULT_LOG_LINES)]
        lines: usize,
        /// Keep printing new lines until interrupted or the supervisor stops.
        #[arg(long, short = 'f')]
        follow: bool,
        #[command(flatten)]
        state: StateDirArg,
    },
    /// Pipe work plans into a running supervisor (started with --keep-running) and print
    /// their results as they finish, in the format of `supervise`.
    ///
    /// Exits when every plan it sent has a result: 0 when all succeeded, 1 otherwise. If the
    /// supervisor stops first, exits 1 naming on stderr the plans still unfinished (they resume
    /// on the supervisor's next start) and any it never took.
    ///
    /// Examples:
    ///   mnemosyne submit < more-plans.ndjson
    ///   echo '{"prompt": "...", "tech_stack": "Rust", "success_criteria": "..."}' | mnemosyne submit
    #[command(verbatim_doc_comment)]
    Submit {
        #[command(flatten)]
        state: StateDirArg,
    },
    /// Re-read the configuration file and the secrets of a running supervisor (as SIGHUP).
    ///
    /// Agents whose workers would start differently (interpreter, environment, provider,
    /// arguments) are replaced gracefully, one at a time, each ready again before the next
    /// goes; roles grow or shrink to their new counts; nothing in flight is lost. New
    /// [supervisor] timings apply to workers started afterwards. A file that does not parse is
    /// refused and the running configuration stays. Keys read only at start ([plans], the
    /// request timeout) are reported as needing a restart. Exit 1 if an agent did not come
    /// back ready (the rollout stops there).
    ///
    /// Examples:
    ///   mnemosyne reload
    ///   mnemosyne reload --json
    ///   kill -HUP "$(pgrep -f 'mnemosyne supervise')"
    #[command(verbatim_doc_comment)]
    Reload {
        /// Print the report as one JSON line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        state: StateDirArg,
    },
    /// Print a shell completion script for bash, zsh, fish, elvish or powershell.
    ///
    /// Examples:
    ///   mnemosyne completions bash > ~/.local/share/bash-completion/completions/mnemosyne
    ///   mnemosyne completions zsh > "${fpath[1]}/_mnemosyne"
    ///   mnemosyne completions fish > ~/.config/fish/completions/mnemosyne.fish
    #[command(verbatim_doc_comment)]
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
    #[command(name = WARDEN_SUBCOMMAND, hide = true)]
    Warden,
}

/// Where to find the running supervisor's control socket.
#[derive(clap::Args)]
struct StateDirArg {
    /// The state directory of the supervisor to talk to. Default: $MNEMOSYNE_STATE_DIR, else
    /// $XDG_STATE_HOME/mnemosyne, else ~/.local/state/mnemosyne.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

impl StateDirArg {
    fn resolve(self) -> PathBuf {
        self.state_dir.unwrap_or_else(default_state_dir)
    }
}

#[derive(clap::Args)]
struct NoWaitArg {
    /// Return as soon as the command is handed over, without waiting for the outcome.
    #[arg(long)]
    no_wait: bool,
}

/// The command line as a user types it. The completion generators offer hidden subcommands
/// too, and the internal warden is not something to type.
fn completable_command() -> clap::Command {
    use clap::CommandFactory;
    let full = Args::command();
    let visible = full
        .get_subcommands()
        .filter(|subcommand| !subcommand.is_hide_set())
        .cloned();
    clap::Command::new("mnemosyne")
        .version(env!("CARGO_PKG_VERSION"))
        .subcommands(visible)
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
    match args.command {
        Command::Warden => {
            return match run_warden(std::io::stdin().lock()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::FAILURE,
            };
        }
        Command::Completions { shell } => {
            let mut command = completable_command();
            clap_complete::generate(shell, &mut command, "mnemosyne", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        _ => {}
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
    let outcome = runtime.block_on(run(args.command));
    // Everything is stopped by now; only a blocked read of stdin may remain, and waiting for it
    // would keep the process alive as long as whoever holds the other end of the pipe.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match outcome {
        Ok(RunOutcome::AllSucceeded) => ExitCode::SUCCESS,
        Ok(RunOutcome::SomeFailed) => ExitCode::from(1),
        Ok(RunOutcome::Interrupted) => ExitCode::from(130),
        Err(error) => {
            eprintln!("mnemosyne: {error:#}");
            let usage = error
                .downcast_ref::<mnemosyne::control::ClientError>()
                .is_some_and(mnemosyne::control::ClientError::is_usage);
            let usage = usage
                || error.downcast_ref::<ConfigError>().is_some()
                || error.downcast_ref::<cli::supervise::UsageError>().is_some();
            if usage {
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
            provider,
        } => {
            let cwd = std::env::current_dir()?;
            let (loaded, _) = Config::discover(config.as_deref(), &cwd)?;
            let config_source = cli::ConfigSource {
                explicit: config,
                cwd,
            };
            let mut options = SupervisorOptions::new(cli::cache_dir());
            options.warden_program = std::env::current_exe().ok();
            let interrupt = CancellationToken::new();
            let kill_now = CancellationToken::new();
            tokio::spawn(forward_signals(interrupt.clone(), kill_now.clone()));
            let args = cli::supervise::SuperviseArgs {
                config: loaded,
                provider,
                anthropic: cli::supervise::AnthropicAccess::from_env(),
                options,
                state_dir: state_dir.unwrap_or_else(default_state_dir),
                keep_running,
                config_source: Some(config_source),
                reload_on_hangup: true,
                interrupt,
                kill_now,
            };
            cli::supervise::run(args, tokio::io::stdin(), tokio::io::stdout()).await
        }
        Command::Agents { state, json } => {
            cli::agents::run(&state.resolve(), json, &mut std::io::stdout()).await
        }
        Command::Restart {
            target,
            now,
            wait,
            state,
        } => {
            let verb = Verb::Restart { now };
            control(verb, &target, wait, state).await
        }
        Command::Stop {
            target,
            wait,
            state,
        } => control(Verb::Stop, &target, wait, state).await,
        Command::Start {
            target,
            wait,
            state,
        } => control(Verb::Start, &target, wait, state).await,
        Command::Events {
            follow,
            json,
            state,
        } => cli::events::run(&state.resolve(), follow, json, &mut std::io::stdout()).await,
        Command::Logs {
            agent,
            lines,
            follow,
            state,
        } => {
            let out = &mut std::io::stdout();
            cli::logs::run(&state.resolve(), &agent, lines, follow, out).await
        }
        Command::Reload { json, state } => {
            cli::reload::run(&state.resolve(), json, &mut std::io::stdout()).await
        }
        Command::Submit { state } => {
            let max_line_bytes = mnemosyne::protocol::DEFAULT_MAX_LINE_BYTES;
            let out = &mut std::io::stdout();
            cli::submit::run(&state.resolve(), tokio::io::stdin(), max_line_bytes, out).await
        }
        Command::Warden | Command::Completions { .. } => {
            unreachable!("handled before the runtime starts")
        }
    }
}

async fn control(
    verb: Verb,
    target: &str,
    wait: NoWaitArg,
    state: StateDirArg,
) -> anyhow::Result<RunOutcome> {
    let out = &mut std::io::stdout();
    cli::control_verbs::run(&state.resolve(), verb, target, !wait.no_wait, out).await
}

/// First SIGINT/SIGTERM: stop gracefully, within a bound. Second: kill the workers and exit at
/// once; the journal keeps every plan without a result for the next run.
async fn forward_signals(interrupt: CancellationToken, kill_now: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut sigint), Ok(mut sigterm)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("could not install signal handlers");
        return;
    };
    let messages = [
        "signal received; stopping: plans in flight get stop_grace, the rest stay in the \
         journal (a second signal kills the workers and exits at once)",
        "second signal received; killing the workers and exiting at once",
    ];
    for (token, message) in [interrupt, kill_now].into_iter().zip(messages) {
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
        tracing::warn!("{message}");
        token.cancel();
    }
}
