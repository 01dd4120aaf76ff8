//! `mnemosyne logs`: the captured stderr of one agent's workers (across restarts) from a
//! running supervisor and, with `--follow`, every new line.

use std::io::Write;
use std::path::Path;

use super::stdout::write_line;
use super::supervise::RunOutcome;
use crate::control::{Client, StreamItem};

pub async fn run(
    state_dir: &Path,
    agent: &str,
    lines: usize,
    follow: bool,
    out: &mut impl Write,
) -> anyhow::Result<RunOutcome> {
    let mut stream = Client::connect(state_dir)
        .await?
        .logs(agent, lines, follow)
        .await?;
    while let Some(item) = stream.next().await? {
        let line = match item {
            StreamItem::Line(line) => line,
            StreamItem::Missed(count) => {
                format!("--- missed {count} lines: this reader fell behind ---")
            }
            StreamItem::Event(_) => continue,
        };
        if !write_line(out, &line)? {
            return Ok(RunOutcome::AllSucceeded);
        }
    }
    if follow {
        eprintln!("mnemosyne: the supervisor stopped; the log stream ended");
    }
    Ok(RunOutcome::AllSucceeded)
}
