//! `mnemosyne reload`: ask a running supervisor to re-read its configuration and secrets, and
//! say what changed and what was done about it.

use std::io::Write;
use std::path::Path;

use super::stdout::write_line;
use super::supervise::RunOutcome;
use crate::control::Client;
use crate::supervisor::ReloadReport;

/// Exit 0 when everything changed was applied or reported as needing a restart; 1 when the
/// rollout halted (an agent did not come back ready); an error when the file was refused.
pub async fn run(state_dir: &Path, json: bool, out: &mut impl Write) -> anyhow::Result<RunOutcome> {
    let report = Client::connect(state_dir).await?.reload().await?;
    if json {
        write_line(out, &serde_json::to_string(&report)?)?;
    } else {
        for line in describe(&report) {
            if !write_line(out, &line)? {
                break;
            }
        }
    }
    Ok(if report.halted.is_some() {
        RunOutcome::SomeFailed
    } else {
        RunOutcome::AllSucceeded
    })
}

/// The report for people, one line per kind of change.
pub fn describe(report: &ReloadReport) -> Vec<String> {
    if report.changed.is_empty() {
        return vec!["configuration unchanged; nothing to do".to_owned()];
    }
    let mut lines = vec![format!("changed: {}", report.changed.join(", "))];
    let named = [
        ("restarted", &report.restarted),
        ("added", &report.added),
        ("removed", &report.removed),
    ];
    for (what, agents) in named {
        if !agents.is_empty() {
            lines.push(format!("{what}: {}", agents.join(", ")));
        }
    }
    if !report.needs_restart.is_empty() {
        lines.push(format!(
            "needs a supervisor restart to take effect: {}",
            report.needs_restart.join(", ")
        ));
    }
    if let Some(halted) = &report.halted {
        let mut line = format!("halted at {}: {}", halted.agent, halted.reason);
        if !halted.kept.is_empty() {
            line.push_str(&format!(
                "; still on the previous settings: {}",
                halted.kept.join(", ")
            ));
        }
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unchanged_configuration_says_so_and_a_change_names_keys_and_agents() {
        assert_eq!(
            describe(&ReloadReport::default()),
            vec!["configuration unchanged; nothing to do"]
        );
        let report = ReloadReport {
            changed: vec!["agents.executor.count".into(), "plans.max_in_flight".into()],
            needs_restart: vec!["plans.max_in_flight".into()],
            added: vec!["executor-2".into()],
            ..ReloadReport::default()
        };
        assert_eq!(
            describe(&report),
            vec![
                "changed: agents.executor.count, plans.max_in_flight",
                "added: executor-2",
                "needs a supervisor restart to take effect: plans.max_in_flight",
            ]
        );
    }
}
