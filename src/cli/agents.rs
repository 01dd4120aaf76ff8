//! `mnemosyne agents`: one row per agent of a running supervisor, as an aligned table or as
//! JSON.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::stdout::write_line;
use super::supervise::RunOutcome;
use crate::control::{AgentRow, Client};

pub async fn run(state_dir: &Path, json: bool, out: &mut impl Write) -> anyhow::Result<RunOutcome> {
    let rows = Client::connect(state_dir).await?.agents().await?;
    let text = if json {
        // A struct rather than `json!`, which would sort the fields of each row.
        #[derive(serde::Serialize)]
        struct Agents<'a> {
            agents: &'a [AgentRow],
        }
        serde_json::to_string(&Agents { agents: &rows })?
    } else {
        render_table(&rows, SystemTime::now())
    };
    write_line(out, text.trim_end())?;
    Ok(RunOutcome::AllSucceeded)
}

const HEADERS: [&str; 10] = [
    "ID",
    "ROLE",
    "STATE",
    "HEALTH",
    "PID",
    "RESTARTS",
    "UPTIME",
    "IN FLIGHT",
    "LAST EXIT",
    "REASON",
];

/// The rows as a table with aligned columns; the last column (the reason) is not padded.
pub fn render_table(rows: &[AgentRow], now: SystemTime) -> String {
    let cells: Vec<[String; 10]> = rows.iter().map(|row| cells(row, now)).collect();
    let mut widths = HEADERS.map(str::len);
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let header = HEADERS.map(str::to_owned);
    for row in std::iter::once(&header).chain(&cells) {
        let mut line = String::new();
        for (index, cell) in row.iter().enumerate() {
            if index + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[index] - cell.chars().count();
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

fn cells(row: &AgentRow, now: SystemTime) -> [String; 10] {
    let dash = || "-".to_owned();
    let last_exit = row.last_exit.as_ref().map_or_else(dash, |exit| {
        let ago = humantime::parse_rfc3339(&exit.at)
            .ok()
            .and_then(|at| now.duration_since(at).ok())
            .map(|since| format!(", {} ago", short_duration(since)))
            .unwrap_or_default();
        format!("{} ({}{ago})", exit.status, exit.cause)
    });
    let mut reason = row.reason.clone().unwrap_or_default();
    if let Some(next_retry) = &row.next_retry {
        let when = humantime::parse_rfc3339(next_retry)
            .ok()
            .map(|at| at.duration_since(now).unwrap_or_default())
            .map_or_else(
                || next_retry.clone(),
                |wait| format!("in {}", short_duration(wait)),
            );
        if !reason.is_empty() {
            reason.push_str("; ");
        }
        reason.push_str(&format!("next retry {when}"));
    }
    [
        row.id.clone(),
        row.role.clone(),
        row.state.clone(),
        row.health.to_string(),
        row.pid.map_or_else(dash, |pid| pid.to_string()),
        row.restarts.to_string(),
        row.uptime_s
            .map_or_else(dash, |s| short_duration(Duration::from_secs(s))),
        row.in_flight.to_string(),
        last_exit,
        reason,
    ]
}

/// `42s`, `3m12s`, `2h05m`, `3d04h`: precise enough for a glance, short enough for a column.
pub fn short_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86400, secs % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{ExitCodeRecord, ExitRecord, Health};

    fn row(id: &str, state: &str, health: Health) -> AgentRow {
        AgentRow {
            id: id.into(),
            role: "executor".into(),
            state: state.into(),
            health,
            pid: Some(4242),
            restarts: 0,
            uptime_s: Some(75),
            in_flight: 1,
            last_exit: None,
            reason: None,
            next_retry: None,
        }
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(short_duration(Duration::from_secs(42)), "42s");
        assert_eq!(short_duration(Duration::from_secs(192)), "3m12s");
        assert_eq!(short_duration(Duration::from_secs(7500)), "2h05m");
        assert_eq!(
            short_duration(Duration::from_secs(3 * 86400 + 4 * 3600)),
            "3d04h"
        );
    }

    #[test]
    fn the_table_is_aligned_and_says_why_and_when() {
        let now = humantime::parse_rfc3339("2025-01-01T12:00:00Z").expect("time");
        let mut cooling = row("reviewer-10", "cooldown", Health::Unhealthy);
        cooling.role = "reviewer".into();
        cooling.pid = None;
        cooling.uptime_s = None;
        cooling.in_flight = 0;
        cooling.restarts = 6;
        cooling.last_exit = Some(ExitRecord {
            status: ExitCodeRecord {
                code: Some(1),
                signal: None,
                signal_name: None,
            },
            cause: "crash".into(),
            at: "2025-01-01T11:59:30Z".into(),
        });
        cooling.reason = Some("crash loop".into());
        cooling.next_retry = Some("2025-01-01T12:05:00Z".into());
        let table = render_table(&[row("executor-1", "busy", Health::Healthy), cooling], now);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with("ID           ROLE      STATE     HEALTH"),
            "{table}"
        );
        let health_column = lines[0].find("HEALTH").expect("header");
        assert_eq!(lines[1].find("healthy"), Some(health_column), "{table}");
        assert_eq!(lines[2].find("unhealthy"), Some(health_column), "{table}");
        assert!(lines[1].contains("1m15s"), "{table}");
        assert!(
            lines[2].ends_with("code 1 (crash, 30s ago)  crash loop; next retry in 5m00s"),
            "{table}"
        );
    }
}
