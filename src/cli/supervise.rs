//! `mnemosyne supervise`: start the agents, feed them requests from stdin, print results.
//!
//! Each stdin line is a request for one agent role,
//! `{"id": "optional", "role": "executor", "method": "echo", "params": {...}}`, and yields
//! exactly one NDJSON result line on stdout. Work plans (issue 3) will arrive through the same
//! reading loop.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::agent::{JobError, JobOutcome, JobRequest};
use crate::config::{Config, Role};
use crate::protocol::{LineCodec, LineError};
use crate::supervisor::{Supervisor, SupervisorOptions};

/// Requests read ahead of the workers; reading stdin pauses beyond this, so memory stays flat
/// however long the input is.
const MAX_IN_FLIGHT: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    AllSucceeded,
    SomeFailed,
    Interrupted,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestLine {
    #[serde(default)]
    id: Option<String>,
    role: Role,
    method: String,
    #[serde(default)]
    params: Option<Value>,
    #[serde(default, with = "humantime_serde")]
    deadline: Option<Duration>,
}

pub struct SuperviseArgs {
    pub config: Config,
    pub options: SupervisorOptions,
    /// Cancelled on the first SIGINT/SIGTERM.
    pub interrupt: CancellationToken,
    /// Cancelled on the second: every stop goes straight to SIGKILL.
    pub kill_now: CancellationToken,
    pub cache_dir: PathBuf,
}

pub async fn run(
    args: SuperviseArgs,
    input: impl tokio::io::AsyncRead + Unpin,
    output: impl tokio::io::AsyncWrite + Unpin + Send + 'static,
) -> anyhow::Result<RunOutcome> {
    let max_line_bytes = args.config.supervisor.max_line_bytes;
    let supervisor = Arc::new(Supervisor::start(&args.config, args.options)?);
    let kill_switch = supervisor.kill_switch();
    let forward_kill = tokio::spawn({
        let kill_now = args.kill_now.clone();
        async move {
            kill_now.cancelled().await;
            kill_switch.cancel();
        }
    });
    let (results, mut pending_results) = mpsc::channel::<Value>(MAX_IN_FLIGHT);
    let writer = tokio::spawn(async move {
        let mut output = output;
        let mut all_ok = true;
        while let Some(result) = pending_results.recv().await {
            all_ok &= result["status"] == "succeeded";
            let mut line = serde_json::to_vec(&result).expect("results serialise");
            line.push(b'\n');
            if output.write_all(&line).await.is_err() || output.flush().await.is_err() {
                tracing::error!("stdout closed; results can no longer be written");
            }
        }
        all_ok
    });

    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut lines = FramedRead::new(input, LineCodec::new(max_line_bytes));
    let mut line_number = 0usize;
    let mut interrupted = false;
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = args.interrupt.cancelled() => { interrupted = true; break; }
        };
        let line = tokio::select! {
            line = lines.next() => line,
            () = args.interrupt.cancelled() => { interrupted = true; break; }
        };
        let Some(line) = line else { break };
        line_number += 1;
        let line = match line {
            Ok(line) => line,
            Err(LineError::TooLong { limit }) => {
                let _ = results
                    .send(rejected(
                        line_number,
                        format!("line is longer than {limit} bytes"),
                    ))
                    .await;
                continue;
            }
            Err(LineError::PartialLineAtEof { .. }) => {
                // The last line of a file often lacks its newline; that is not an error for input.
                break;
            }
            Err(LineError::Io(error)) => {
                return Err(anyhow::Error::new(error).context("reading stdin failed"));
            }
        };
        if line.trim_ascii().is_empty() {
            continue;
        }
        let request: RequestLine = match serde_json::from_slice(&line) {
            Ok(request) => request,
            Err(error) => {
                let _ = results
                    .send(rejected(line_number, describe_json_error(&error)))
                    .await;
                continue;
            }
        };
        let id = request.id.unwrap_or_else(|| supervisor.next_job_id());
        let outcome = supervisor.submit(
            request.role,
            JobRequest {
                id: id.clone(),
                method: request.method,
                params: request.params.unwrap_or_else(|| json!({})),
                deadline: request.deadline.unwrap_or(supervisor.request_timeout()),
            },
        );
        let results = results.clone();
        tokio::spawn(async move {
            let outcome = outcome.await.unwrap_or(JobOutcome {
                result: Err(JobError::SupervisorStopped),
                deliveries: 0,
            });
            let _ = results.send(result_line(&id, request.role, outcome)).await;
            drop(permit);
        });
    }
    // Wait for every accepted request: each holds a slot until its result is sent.
    if !interrupted {
        let _all = slots
            .acquire_many(MAX_IN_FLIGHT as u32)
            .await
            .expect("the semaphore is never closed");
    }
    let supervisor = Arc::into_inner(supervisor).expect("no other owner of the supervisor remains");
    supervisor.shutdown().await;
    forward_kill.abort();
    drop(results);
    let all_ok = writer.await.unwrap_or(false);
    Ok(match (interrupted, all_ok) {
        (true, _) => RunOutcome::Interrupted,
        (false, true) => RunOutcome::AllSucceeded,
        (false, false) => RunOutcome::SomeFailed,
    })
}

/// serde_json appends "at line 1 column N", which misleads for input that is one line of many.
fn describe_json_error(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let text = text.split(" at line ").next().unwrap_or(&text).to_owned();
    match error.classify() {
        serde_json::error::Category::Data => format!("{text} (column {})", error.column()),
        _ => format!("not valid JSON: {text} (column {})", error.column()),
    }
}

fn rejected(line: usize, error: String) -> Value {
    json!({ "line": line, "status": "rejected", "error": format!("line {line}: {error}") })
}

fn result_line(id: &str, role: Role, outcome: JobOutcome) -> Value {
    let mut line = json!({ "id": id, "role": role, "deliveries": outcome.deliveries });
    match outcome.result {
        Ok(result) => {
            line["status"] = json!("succeeded");
            line["result"] = result;
        }
        Err(error) => {
            line["status"] = json!("failed");
            line["error"] = json!(error.to_string());
            match error {
                JobError::Worker(body) => line["worker_error"] = json!(body),
                JobError::Quarantined { failures } => line["failures"] = json!(failures),
                _ => {}
            }
        }
    }
    line
}
