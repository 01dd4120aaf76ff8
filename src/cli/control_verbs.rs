//! `mnemosyne start`, `stop` and `restart`: send an operator command to an agent (or to every
//! agent of a role) of a running supervisor and report how each one ended up.

use std::io::Write;
use std::path::Path;

use super::stdout::write_line;
use super::supervise::RunOutcome;
use crate::control::{AgentOutcome, Client, ControlAnswer, Verb};

pub async fn run(
    state_dir: &Path,
    verb: Verb,
    target: &str,
    wait: bool,
    out: &mut impl Write,
) -> anyhow::Result<RunOutcome> {
    let answer = Client::connect(state_dir)
        .await?
        .control(verb, target, wait)
        .await?;
    let mut outcome = RunOutcome::AllSucceeded;
    match answer {
        ControlAnswer::Done(results) => {
            for result in &results {
                if !result.ok {
                    outcome = RunOutcome::SomeFailed;
                }
                if !write_line(out, &describe(verb, result))? {
                    break;
                }
            }
        }
        ControlAnswer::Accepted(agents) => {
            for agent in agents {
                if !write_line(out, &format!("{agent}: {} requested", verb.as_str()))? {
                    break;
                }
            }
        }
    }
    Ok(outcome)
}

/// One line per agent: where it is now, or why the command did not get it there.
pub fn describe(verb: Verb, result: &AgentOutcome) -> String {
    if !result.ok {
        let reason = result
            .reason
            .clone()
            .unwrap_or_else(|| format!("it is {}", result.state));
        return format!("{}: {} failed: {reason}", result.id, verb.as_str());
    }
    match result.pid {
        Some(pid) => format!(
            "{}: {} (pid {pid}, restarts {})",
            result.id, result.state, result.restarts
        ),
        None => format!("{}: {}", result.id, result.state),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successes_show_the_new_worker_and_failures_the_reason() {
        let mut result = AgentOutcome {
            id: "executor-1".into(),
            ok: true,
            state: "ready".into(),
            pid: Some(77),
            restarts: 2,
            reason: None,
        };
        assert_eq!(
            describe(Verb::Restart { now: false }, &result),
            "executor-1: ready (pid 77, restarts 2)"
        );
        result.ok = false;
        result.state = "backoff".into();
        result.pid = None;
        result.reason = Some("went to backoff: crash: exit code 1".into());
        assert_eq!(
            describe(Verb::Start, &result),
            "executor-1: start failed: went to backoff: crash: exit code 1"
        );
    }
}
