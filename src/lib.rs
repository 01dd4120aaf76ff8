//! Mnemosyne supervises LLM agents that run as isolated Python worker processes.
//!
//! # Architecture
//!
//! **Agents and workers.** An *agent* (`executor-1`, `reviewer-2`, …) is a slot that always
//! wants one live *worker*: a `python -m mnemosyne.orchestration.agents --role ROLE` process.
//! Each agent is run by one actor task ([`agent`]) that owns everything about it: its state
//! (`starting`, `ready`, `busy`, `backoff`, `cooldown`, `stopping`, `stopped`, `failed`), its
//! current worker's connection, the one request that worker holds, its heartbeat and deadline
//! timers, and its restart history. Nothing else mutates that state; the rest of the program
//! reads it through a `watch` channel (the agent table) and the event stream, and drives it
//! through an [`agent::AgentHandle`] whose commands the actor answers on a oneshot.
//!
//! **Talking to a worker.** The supervisor and a worker speak NDJSON over the worker's stdin
//! and stdout ([`protocol`], specified in `protocol/README.md`). A writer task feeds stdin, a
//! reader task frames and classifies stdout with a bounded line length, and a drain task turns
//! stderr into `tracing` records and a crash-report tail ([`process`]).
//!
//! **Work.** A caller submits a job for a role to [`supervisor::Supervisor`]; it waits in that
//! role's queue until a ready, idle agent of the role pulls it. If the worker holding it dies,
//! hangs or overruns its deadline, the actor puts the job back in the queue (a sibling or the
//! restarted worker takes it), counting deliveries, and quarantines it after `max_deliveries`
//! lost deliveries. Every job ends with exactly one outcome.
//!
//! **Plans.** [`plan::service`] takes plans from stdin (and, with `--keep-running`, from
//! `mnemosyne submit` clients), journals each one in SQLite before work starts, runs it through
//! [`plan::runner`] (one job per pipeline step) and writes its result once. Nothing is read
//! before every role has had a worker ready (the start-up gate in `cli/supervise.rs`); a role
//! that cannot start ends the run with exit 2 and the reason. After start-up a step whose role
//! has had no usable agent for `agent_wait` fails its plan as `retryable`. Within one run, a
//! copy of a plan whose id is already being worked on follows that run and gets its result
//! (`plan/claims.rs`); across runs the journal replays finished results.
//!
//! **Processes.** Workers are launched behind the [`process::Launcher`] interface ("start a
//! worker, learn of its exit"). The default launcher forks from one long-lived thread, puts
//! each worker in its own process group, and sets a parent-death signal; the orphan warden (a
//! tiny `mnemosyne __warden` process) kills every worker's group if the supervisor itself is
//! killed. A worker's exit is learnt without reaping it (a pidfd, then `waitid` with
//! `WNOWAIT`); the actor SIGKILLs what is left of the group and only then reaps, so a group is
//! never signalled after its id could have been reused. The worker package is embedded in the binary and unpacked into a cache directory
//! that goes on the worker's `PYTHONPATH`, so users never set it and versions always match.
//!
//! **Restarts.** When a worker dies, [`supervisor::RestartTracker`] decides: restart after an
//! exponential backoff with jitter, cool down after a crash loop (slow retries, never a silent
//! permanent stop), stay stopped by policy, or fail on a configuration problem. Every death
//! publishes a crash report event with the exit status, cause, stderr tail and next retry.
//!
//! **Control.** `mnemosyne supervise` serves a Unix socket, `control.sock` in the state
//! directory ([`control`], protocol in `protocol/control/README.md`). Each client connection
//! is its own task that reads the agent table through the agent handles, sends operator
//! commands (`start`, `stop`, `restart`) to the actors, and relays the event stream and
//! stderr tails; a client that reads too slowly misses events (and is told so) instead of
//! slowing anything down.
//!
//! **Shutdown.** `main` owns the cancellation tokens: the interrupt (first SIGINT/SIGTERM) and
//! the kill switch (second), of which the supervisor's and every actor's switch are children.
//! The interrupt stops reading input and gives plans in flight `stop_grace`; then every actor,
//! in parallel, sends `shutdown`, waits `stop_grace`, closes stdin, SIGTERMs the group, waits
//! `term_grace`, SIGKILLs the group and reaps ([`process::escalation`]). The kill switch sends
//! every stop straight to SIGKILL. Jobs still queued are answered as "supervisor stopped" at
//! once, so no plan waits for an agent that will never come; the whole stop is bounded and
//! exits 130 with unfinished plans left in the journal. The warden exits last.

pub mod agent;
pub mod cli;
pub mod config;
pub mod control;
pub mod plan;
pub mod process;
pub mod protocol;
pub mod supervisor;
