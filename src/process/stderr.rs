//! Worker stderr: always drained (an unread pipe would block the worker), re-emitted through
//! `tracing` under the agent's span, and kept as a bounded tail for crash reports.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};

/// Lines of stderr kept per agent, across its restarts.
pub const STDERR_TAIL_LINES: usize = 200;

/// A stderr line longer than this is cut into pieces, so one runaway line cannot grow memory.
const STDERR_MAX_LINE_BYTES: usize = 16 * 1024;

/// The last lines an agent's workers wrote to stderr. Shared between the drain task of the
/// current worker and the agent, which reads it when a worker dies.
#[derive(Debug, Clone, Default)]
pub struct LogTail {
    lines: Arc<Mutex<VecDeque<String>>>,
}

impl LogTail {
    pub fn push(&self, line: String) {
        let mut lines = self.lines.lock().expect("log tail lock is never poisoned");
        if lines.len() == STDERR_TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// Marks where one worker's output ends and the next one's begins.
    pub fn mark_start(&self, pid: u32) {
        self.push(format!("--- worker started (pid {pid}) ---"));
    }

    /// The last `n` lines, oldest first.
    pub fn last(&self, n: usize) -> Vec<String> {
        let lines = self.lines.lock().expect("log tail lock is never poisoned");
        lines
            .iter()
            .skip(lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }
}

/// Reads `stderr` to EOF. Each line goes to `tracing` (target `worker`) and into `tail`.
/// The caller runs this inside a span carrying the agent id and pid.
pub async fn drain_stderr(mut stderr: impl AsyncRead + Unpin, tail: LogTail) {
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 8192];
    loop {
        let read = match stderr.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) => {
                tracing::debug!(%error, "reading worker stderr failed");
                break;
            }
        };
        pending.extend_from_slice(&chunk[..read]);
        while let Some(newline) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=newline).collect();
            emit(&line[..line.len() - 1], &tail);
        }
        while pending.len() > STDERR_MAX_LINE_BYTES {
            let piece: Vec<u8> = pending.drain(..STDERR_MAX_LINE_BYTES).collect();
            emit(&piece, &tail);
        }
    }
    if !pending.is_empty() {
        emit(&pending, &tail);
    }
}

fn emit(line: &[u8], tail: &LogTail) {
    for piece in line.chunks(STDERR_MAX_LINE_BYTES) {
        let text = String::from_utf8_lossy(piece);
        let text = text.trim_end_matches('\r');
        tracing::info!(target: "worker", "{text}");
        tail.push(text.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tail_keeps_only_the_newest_lines() {
        let tail = LogTail::default();
        let input: String = (0..250).map(|i| format!("line {i}\n")).collect();
        drain_stderr(input.as_bytes(), tail.clone()).await;
        let lines = tail.last(usize::MAX);
        assert_eq!(lines.len(), STDERR_TAIL_LINES);
        assert_eq!(lines.first().map(String::as_str), Some("line 50"));
        assert_eq!(lines.last().map(String::as_str), Some("line 249"));
    }

    #[tokio::test]
    async fn a_runaway_line_is_cut_and_a_final_unterminated_line_is_kept() {
        let tail = LogTail::default();
        let mut input = vec![b'x'; STDERR_MAX_LINE_BYTES * 2 + 10];
        input.extend_from_slice(b"\nTraceback without newline");
        drain_stderr(&input[..], tail.clone()).await;
        let lines = tail.last(10);
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0].len(), STDERR_MAX_LINE_BYTES);
        assert_eq!(lines[3], "Traceback without newline");
    }
}
