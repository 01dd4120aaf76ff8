//! The control client: connects to a running supervisor's `control.sock` and speaks the
//! control protocol for the `agents`, `start`, `stop`, `restart`, `events` and `logs` commands.

use std::io;
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};

use super::protocol::{
    AgentOutcome, AgentRow, ErrorCode, MAX_RESPONSE_BYTES, Request, Response, ResponseError,
    SubmittedPlan, Verb, decode_response, encode_line,
};
use super::socket::socket_path;
use crate::supervisor::ReloadReport;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket: it does not exist, or a dead supervisor left it behind.
    #[error("no supervisor is running: nothing listens on {}", .path.display())]
    NotRunning {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot connect to the supervisor at {}", .path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("lost the connection to the supervisor")]
    Io(#[source] io::Error),
    #[error("the supervisor closed the connection")]
    Closed,
    #[error("the supervisor sent an answer this client cannot read")]
    Unreadable(#[source] ResponseError),
    #[error("the supervisor sent an answer line longer than {MAX_RESPONSE_BYTES} bytes")]
    TooLong,
    #[error("the supervisor answered `{0}`, which does not fit the request")]
    Unexpected(&'static str),
    /// The supervisor refused the request.
    #[error("{message}")]
    Refused {
        code: ErrorCode,
        message: String,
        /// For [`ErrorCode::UnknownAgent`], the agent ids that exist.
        known: Vec<String>,
    },
}

impl ClientError {
    /// Whether the command was called wrongly (an unknown agent, a refused request), as
    /// opposed to the supervisor being unreachable or the work failing.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            ClientError::Refused {
                code: ErrorCode::UnknownAgent | ErrorCode::BadRequest | ErrorCode::UnknownType,
                ..
            }
        )
    }
}

/// The answer to `start`, `stop` or `restart`.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlAnswer {
    /// Waited: how each agent ended up.
    Done(Vec<AgentOutcome>),
    /// Not waited (`--no-wait`): the agents the command was handed to.
    Accepted(Vec<String>),
}

/// One item of an `events` or `logs` stream.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// An event as the supervisor publishes it (`seq`, `at`, `agent`, `event`, ...).
    Event(Value),
    /// A stderr line.
    Line(String),
    /// This reader fell behind; this many events or lines were skipped.
    Missed(u64),
}

/// One answer to `submit`, before its `end`.
#[derive(Debug, Clone, PartialEq)]
pub enum SubmitItem {
    /// The plan sent with this `line` and `element` is in the supervisor's journal under `id`:
    /// it gets a result, in this run of the supervisor or, if that stops first, in its next.
    Admitted {
        id: String,
        line: Option<usize>,
        element: Option<usize>,
    },
    /// A plan's result line, as `supervise` prints it.
    Result(Value),
}

/// A connection to the supervisor's control socket.
pub struct Client {
    answers: FramedRead<OwnedReadHalf, LinesCodec>,
    requests: OwnedWriteHalf,
}

impl Client {
    /// Connects to the supervisor that uses `state_dir`.
    pub async fn connect(state_dir: &Path) -> Result<Self, ClientError> {
        let path = socket_path(state_dir);
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|source| match source.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                    ClientError::NotRunning { path, source }
                }
                _ => ClientError::Connect { path, source },
            })?;
        let (read, write) = stream.into_split();
        Ok(Self {
            answers: FramedRead::new(read, LinesCodec::new_with_max_length(MAX_RESPONSE_BYTES)),
            requests: write,
        })
    }

    /// One row per agent.
    pub async fn agents(&mut self) -> Result<Vec<AgentRow>, ClientError> {
        self.send(&Request::Agents).await?;
        match self.receive().await? {
            Response::Agents { agents } => Ok(agents),
            other => Err(unexpected(&other)),
        }
    }

    /// Runs `verb` on an agent id or on every agent of a role. With `wait`, answers once each
    /// agent has settled.
    pub async fn control(
        &mut self,
        verb: Verb,
        target: &str,
        wait: bool,
    ) -> Result<ControlAnswer, ClientError> {
        self.send(&Request::control(verb, target, wait)).await?;
        match self.receive().await? {
            Response::Outcome { results } => Ok(ControlAnswer::Done(results)),
            Response::Accepted { agents } => Ok(ControlAnswer::Accepted(agents)),
            other => Err(unexpected(&other)),
        }
    }

    /// Asks the supervisor to re-read its configuration and secrets and apply what changed;
    /// answers once the agents have settled. A refused configuration comes back as
    /// [`ClientError::Refused`] with [`ErrorCode::InvalidConfig`].
    pub async fn reload(&mut self) -> Result<ReloadReport, ClientError> {
        self.send(&Request::Reload).await?;
        match self.receive().await? {
            Response::Reloaded { report } => Ok(*report),
            other => Err(unexpected(&other)),
        }
    }

    /// The kept event history, then with `follow` every new event.
    pub async fn events(mut self, follow: bool) -> Result<Stream, ClientError> {
        self.send(&Request::Events { follow }).await?;
        Ok(Stream { client: self })
    }

    /// The last `lines` stderr lines of `agent`, then with `follow` every new line.
    pub async fn logs(
        mut self,
        agent: &str,
        lines: usize,
        follow: bool,
    ) -> Result<Stream, ClientError> {
        self.send(&Request::Logs {
            agent: agent.to_owned(),
            lines,
            follow,
        })
        .await?;
        Ok(Stream { client: self })
    }

    /// Submits plans to run; `on_item` hears of each plan the journal took and gets each
    /// plan's result line as it finishes. Returns at `end`, once every plan of this submission
    /// has a result. If the supervisor stops first, the answer is
    /// [`ClientError::Refused`] with [`ErrorCode::ShuttingDown`].
    pub async fn submit(
        &mut self,
        plans: Vec<SubmittedPlan>,
        mut on_item: impl FnMut(SubmitItem),
    ) -> Result<(), ClientError> {
        self.send(&Request::Submit { plans }).await?;
        loop {
            match self.receive().await? {
                Response::Admitted { id, line, element } => {
                    on_item(SubmitItem::Admitted { id, line, element })
                }
                Response::Result { result } => on_item(SubmitItem::Result(result)),
                Response::End => return Ok(()),
                other => return Err(unexpected(&other)),
            }
        }
    }

    async fn send(&mut self, request: &Request) -> Result<(), ClientError> {
        let line = encode_line(request)
            .map_err(|error| ClientError::Io(io::Error::new(io::ErrorKind::InvalidData, error)))?;
        self.requests
            .write_all(&line)
            .await
            .map_err(ClientError::Io)
    }

    /// The next answer line; a refusal becomes [`ClientError::Refused`].
    async fn receive(&mut self) -> Result<Response, ClientError> {
        loop {
            let line = match self.answers.next().await {
                None => return Err(ClientError::Closed),
                Some(Err(LinesCodecError::MaxLineLengthExceeded)) => {
                    return Err(ClientError::TooLong);
                }
                Some(Err(LinesCodecError::Io(error))) => return Err(ClientError::Io(error)),
                Some(Ok(line)) => line,
            };
            if line.trim().is_empty() {
                continue;
            }
            return match decode_response(line.as_bytes()).map_err(ClientError::Unreadable)? {
                Response::Error {
                    code,
                    message,
                    known,
                } => Err(ClientError::Refused {
                    code,
                    message,
                    known,
                }),
                response => Ok(response),
            };
        }
    }
}

/// The answers to `events` or `logs`, read one at a time.
pub struct Stream {
    client: Client,
}

impl Stream {
    /// The next item, or `None` once the stream has ended (the end of the history without
    /// follow, or the supervisor stopping).
    pub async fn next(&mut self) -> Result<Option<StreamItem>, ClientError> {
        match self.client.receive().await? {
            Response::Event { event } => Ok(Some(StreamItem::Event(event))),
            Response::Log { line } => Ok(Some(StreamItem::Line(line))),
            Response::Missed { count } => Ok(Some(StreamItem::Missed(count))),
            Response::End => Ok(None),
            other => Err(unexpected(&other)),
        }
    }
}

fn unexpected(response: &Response) -> ClientError {
    ClientError::Unexpected(match response {
        Response::Agents { .. } => "agents",
        Response::Outcome { .. } => "outcome",
        Response::Accepted { .. } => "accepted",
        Response::Admitted { .. } => "admitted",
        Response::Event { .. } => "event",
        Response::Log { .. } => "log",
        Response::Result { .. } => "result",
        Response::Missed { .. } => "missed",
        Response::Reloaded { .. } => "reloaded",
        Response::End => "end",
        Response::Error { .. } => "error",
    })
}
