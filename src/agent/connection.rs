//! The live link to one worker process: a writer task for its stdin, a reader task that frames
//! and classifies its stdout, a stderr drain, and its exit.

use std::pin::Pin;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::codec::FramedRead;
use tracing::Instrument;

use crate::process::{ExitStatus, ExitWatch, LaunchedWorker, LogTail, ProcessGroup, drain_stderr};
use crate::protocol::{Inbound, LineCodec, LineError, WorkerMessage, classify};

/// Lines read ahead of the agent; beyond this the reader stops reading and the worker's writes
/// block, so a flood of output cannot grow memory.
const INBOX_CAPACITY: usize = 64;

#[derive(Debug)]
pub(crate) enum ConnEvent {
    Message(WorkerMessage),
    Stray(String),
    Unknown(String),
    Violation(String),
    /// The worker closed its stdout (normally because it is exiting).
    StdoutClosed,
    Exited(ExitStatus),
}

pub(crate) struct Connection {
    pub pid: u32,
    pub group: ProcessGroup,
    outbox: Option<mpsc::UnboundedSender<Vec<u8>>>,
    inbox: mpsc::Receiver<ConnEvent>,
    inbox_open: bool,
    exit: ExitWatch,
    exit_reported: bool,
    stderr_drain: JoinHandle<()>,
}

impl Connection {
    pub fn start(
        worker: LaunchedWorker,
        tail: LogTail,
        max_line_bytes: usize,
        span: tracing::Span,
    ) -> Self {
        let LaunchedWorker {
            pid,
            group,
            mut stdin,
            stdout,
            stderr,
            exit,
        } = worker;
        let (outbox, mut outgoing) = mpsc::unbounded_channel::<Vec<u8>>();
        // A dedicated writer means a worker that stops reading its stdin can never block the
        // agent; the heartbeat notices it instead.
        tokio::spawn(
            async move {
                while let Some(line) = outgoing.recv().await {
                    if let Err(error) = stdin.write_all(&line).await {
                        tracing::debug!(%error, "worker stdin closed");
                        return;
                    }
                    if stdin.flush().await.is_err() {
                        return;
                    }
                }
                // Dropping stdin here is how "close stdin" reaches the worker.
            }
            .instrument(span.clone()),
        );
        let (events, inbox) = mpsc::channel(INBOX_CAPACITY);
        tokio::spawn(read_stdout(stdout, max_line_bytes, events).instrument(span.clone()));
        let stderr_drain = tokio::spawn(drain_stderr(stderr, tail).instrument(span));
        Self {
            pid,
            group,
            outbox: Some(outbox),
            inbox,
            inbox_open: true,
            exit,
            exit_reported: false,
            stderr_drain,
        }
    }

    /// Queues one encoded line (with its newline) for the worker's stdin.
    pub fn send_line(&self, line: Vec<u8>) {
        if let Some(outbox) = &self.outbox {
            let _ = outbox.send(line);
        }
    }

    pub fn close_stdin(&mut self) {
        self.outbox = None;
    }

    /// The next thing that happens on this connection. Cancel-safe.
    ///
    /// The exit comes first, so a worker flooding its stdout cannot hide its own death; the
    /// lines it wrote before exiting are still read afterwards ([`Connection::remaining_events`]),
    /// so a response written just before a crash still counts. The exit is reported once; the
    /// worker stays an unreaped zombie until [`Connection::reap`].
    pub async fn next(&mut self) -> ConnEvent {
        enum Got {
            Line(Option<ConnEvent>),
            Exit(ExitStatus),
        }
        let exit_reported = self.exit_reported;
        let exit_watch = &mut self.exit;
        let exit = async move {
            if exit_reported {
                std::future::pending().await
            } else {
                exit_watch.exited().await
            }
        };
        let inbox = &mut self.inbox;
        let got = tokio::select! {
            biased;
            status = exit => Got::Exit(status),
            event = inbox.recv(), if self.inbox_open => Got::Line(event),
        };
        match got {
            Got::Line(Some(event)) => event,
            Got::Line(None) => {
                self.inbox_open = false;
                ConnEvent::StdoutClosed
            }
            Got::Exit(status) => {
                self.exit_reported = true;
                ConnEvent::Exited(status)
            }
        }
    }

    /// Reaps the exited worker, after its group has been signalled: until now its pid kept the
    /// group id from being reused.
    pub fn reap(&mut self) {
        self.exit.reap();
    }

    /// After the worker has exited: the events still buffered, waiting at most `grace` for the
    /// stdout reader to finish (a grandchild holding the pipe open must not stall us).
    pub async fn remaining_events(&mut self, grace: Duration) -> Vec<ConnEvent> {
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + grace;
        while self.inbox_open {
            match tokio::time::timeout_at(deadline, self.inbox.recv()).await {
                Ok(Some(event)) => events.push(event),
                Ok(None) | Err(_) => self.inbox_open = false,
            }
        }
        events
    }

    /// Waits (bounded) until the stderr drain has captured everything, so crash reports end
    /// with the worker's last words, usually a traceback.
    pub async fn finish_stderr(&mut self, grace: Duration) {
        if tokio::time::timeout(grace, &mut self.stderr_drain)
            .await
            .is_err()
        {
            self.stderr_drain.abort();
        }
    }
}

async fn read_stdout(
    stdout: Pin<Box<dyn tokio::io::AsyncRead + Send>>,
    max_line_bytes: usize,
    events: mpsc::Sender<ConnEvent>,
) {
    let mut lines = FramedRead::new(stdout, LineCodec::new(max_line_bytes));
    while let Some(line) = lines.next().await {
        let event = match line {
            Ok(line) => match classify::<WorkerMessage>(&line, WorkerMessage::TYPES) {
                Inbound::Blank => continue,
                Inbound::Stray { preview } => ConnEvent::Stray(preview),
                Inbound::Unknown { kind } => ConnEvent::Unknown(kind),
                Inbound::Message(message) => ConnEvent::Message(message),
                Inbound::Violation { reason, preview } => {
                    ConnEvent::Violation(format!("{reason} (line starts: {preview})"))
                }
            },
            Err(error @ (LineError::TooLong { .. } | LineError::PartialLineAtEof { .. })) => {
                let _ = events.send(ConnEvent::Violation(error.to_string())).await;
                return;
            }
            Err(LineError::Io(error)) => {
                tracing::debug!(%error, "reading worker stdout failed");
                return;
            }
        };
        if events.send(event).await.is_err() {
            return;
        }
    }
}
