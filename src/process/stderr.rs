//! Worker stderr: always drained (an unread pipe would block the worker), re-emitted through
//! `tracing` under the agent's span, and kept as a bounded tail for crash reports and
//! `mnemosyne logs`, with a broadcast of new lines for `mnemosyne logs --follow`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::broadcast;

/// Lines of stderr kept per agent, across its restarts.
pub const STDERR_TAIL_LINES: usize = 200;

/// A stderr line longer than this is cut into pieces, so one runaway line cannot grow memory.
const STDERR_MAX_LINE_BYTES: usize = 16 * 1024;

/// How far a `logs --follow` reader may fall behind before it misses lines (it is told how
/// many). Sending never waits for readers, so a slow reader cannot stall a worker's drain.
const FOLLOW_CAPACITY: usize = 256;

/// The last lines an agent's workers wrote to stderr. Shared between the drain task of the
/// current worker and the agent, which reads it when a worker dies.
#[derive(Debug, Clone)]
pub struct LogTail {
    lines: Arc<Mutex<VecDeque<String>>>,
    live: broadcast::Sender<Arc<str>>,
}

impl Default for LogTail {
    fn default() -> Self {
        Self {
            lines: Arc::default(),
            live: broadcast::channel(FOLLOW_CAPACITY).0,
        }
    }
}

impl LogTail {
    pub fn push(&self, line: String) {
        let mut lines = self.lines.lock().expect("log tail lock is never poisoned");
        if lines.len() == STDERR_TAIL_LINES {
            lines.pop_front();
        }
        // Sent under the lock, so a reader of `last_and_follow` sees every line exactly once.
        if self.live.receiver_count() > 0 {
            let _ = self.live.send(Arc::from(line.as_str()));
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

    /// The last `n` lines and a subscription to every line pushed after them.
    pub fn last_and_follow(&self, n: usize) -> (Vec<String>, broadcast::Receiver<Arc<str>>) {
        let lines = self.lines.lock().expect("log tail lock is never poisoned");
        let tail = lines
            .iter()
            .skip(lines.len().saturating_sub(n))
            .cloned()
            .collect();
        (tail, self.live.subscribe())
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

    #[test]
    fn a_follower_gets_the_tail_then_every_new_line_once() {
        let tail = LogTail::default();
        tail.push("before".into());
        let (past, mut live) = tail.last_and_follow(10);
        tail.push("after".into());
        assert_eq!(past, vec!["before".to_owned()]);
        assert_eq!(
            &*live.try_recv().expect("the new line is broadcast"),
            "after"
        );
        assert!(live.try_recv().is_err(), "nothing else was sent");
    }
}
