//! `mnemosyne events`: the event stream of a running supervisor (state changes, crash reports,
//! quarantines), its kept history and, with `--follow`, every new event.

use std::io::Write;
use std::path::Path;

use serde_json::Value;

use super::stdout::write_line;
use super::supervise::RunOutcome;
use crate::control::{Client, StreamItem};

pub async fn run(
    state_dir: &Path,
    follow: bool,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<RunOutcome> {
    let mut stream = Client::connect(state_dir).await?.events(follow).await?;
    while let Some(item) = stream.next().await? {
        let line = match item {
            StreamItem::Event(event) if json => event.to_string(),
            StreamItem::Event(event) => summarize(&event),
            StreamItem::Missed(count) if json => {
                serde_json::json!({ "event": "missed", "count": count }).to_string()
            }
            StreamItem::Missed(count) => format!(
                "{}  missed {count} events: this reader fell behind",
                humantime::format_rfc3339_millis(std::time::SystemTime::now())
            ),
            StreamItem::Line(_) => continue,
        };
        if !write_line(out, &line)? {
            return Ok(RunOutcome::AllSucceeded);
        }
    }
    if follow {
        eprintln!("mnemosyne: the supervisor stopped; the event stream ended");
    }
    Ok(RunOutcome::AllSucceeded)
}

/// One line for people: time, `#seq`, agent, and what happened.
pub fn summarize(event: &Value) -> String {
    let text = |key: &str| event.get(key).and_then(Value::as_str).unwrap_or("?");
    let number = |key: &str| event.get(key).map_or("?".to_owned(), Value::to_string);
    let summary = match text("event") {
        "state_changed" => format!("{} -> {}: {}", text("from"), text("to"), text("reason")),
        "worker_started" => format!("worker started (pid {})", number("pid")),
        "worker_exited" => {
            let mut line = format!(
                "worker {} died ({}, {}): {}; next: {}",
                number("pid"),
                exit_text(event.get("exit")),
                text("cause"),
                text("detail"),
                text("next"),
            );
            if let Some(retry) = event.get("next_retry").and_then(Value::as_str) {
                line.push_str(&format!(" at {retry}"));
            }
            let in_flight = event
                .get("in_flight")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            if in_flight > 0 {
                line.push_str(&format!("; {in_flight} request(s) in flight redelivered"));
            }
            let last_stderr = event
                .get("stderr_tail")
                .and_then(Value::as_array)
                .and_then(|tail| tail.last())
                .and_then(Value::as_str);
            if let Some(last) = last_stderr {
                line.push_str(&format!("; stderr: {last}"));
            }
            line
        }
        "protocol_noise" => format!(
            "protocol noise ({}, {} since the last report): {}",
            text("kind"),
            number("count"),
            text("detail")
        ),
        "job_quarantined" => format!(
            "job {} quarantined after {} deliveries",
            text("job"),
            number("deliveries")
        ),
        _ => {
            let mut rest = event.clone();
            if let Some(object) = rest.as_object_mut() {
                for key in ["seq", "at", "agent"] {
                    object.remove(key);
                }
            }
            rest.to_string()
        }
    };
    format!(
        "{}  #{}  {}  {summary}",
        text("at"),
        number("seq"),
        event.get("agent").and_then(Value::as_str).unwrap_or("-")
    )
}

fn exit_text(exit: Option<&Value>) -> String {
    let Some(exit) = exit else {
        return "?".to_owned();
    };
    if let Some(code) = exit.get("code") {
        return format!("exit code {code}");
    }
    match (
        exit.get("signal_name").and_then(Value::as_str),
        exit.get("signal"),
    ) {
        (Some(name), _) => name.to_owned(),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => exit.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_crash_report_reads_as_one_line() {
        let event = json!({
            "seq": 8, "at": "2025-01-01T12:00:01.000Z", "agent": "executor-1",
            "event": "worker_exited", "pid": 4242,
            "exit": {"signal": 9, "signal_name": "SIGKILL"}, "cause": "crash",
            "detail": "killed by SIGKILL", "in_flight": ["job-1"], "restarts": 0,
            "next": "restart", "next_retry": "2025-01-01T12:00:01.200Z",
            "stderr_tail": ["--- worker started (pid 4242) ---", "last words"],
        });
        assert_eq!(
            summarize(&event),
            "2025-01-01T12:00:01.000Z  #8  executor-1  worker 4242 died (SIGKILL, crash): \
             killed by SIGKILL; next: restart at 2025-01-01T12:00:01.200Z; \
             1 request(s) in flight redelivered; stderr: last words"
        );
    }

    #[test]
    fn state_changes_and_unknown_kinds_are_readable() {
        let event = json!({"seq": 3, "at": "T", "agent": "reviewer-1", "event": "state_changed",
                           "from": "ready", "to": "stopping", "reason": "stopped by operator"});
        assert_eq!(
            summarize(&event),
            "T  #3  reviewer-1  ready -> stopping: stopped by operator"
        );
        let event = json!({"seq": 4, "at": "T", "event": "brand_new", "x": 1});
        assert_eq!(
            summarize(&event),
            r#"T  #4  -  {"event":"brand_new","x":1}"#
        );
    }
}
