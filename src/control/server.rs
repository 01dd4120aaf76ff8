//! The control server: accepts connections on `control.sock` inside `mnemosyne supervise`,
//! one task per client, and answers requests from the agent handles and the event stream.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use futures_util::future::join_all;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Semaphore, broadcast};
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::protocol::{
    AgentOutcome, AgentRow, ErrorCode, MAX_REQUEST_BYTES, Request, Response, ResultAnswer,
    SubmittedPlan, Verb, decode_request, encode_line,
};
use super::socket::{self, ControlError, SocketFile};
use crate::agent::{AgentHandle, AgentStatus, StateName};
use crate::config::Role;
use crate::plan::intake::{Origin, check_plan};
use crate::plan::model::Plan;
use crate::plan::result::PlanResult;
use crate::plan::service::{Submission, SubmitEvent};
use crate::supervisor::{AgentDirectory, EventBus, ReloadReport, Supervisor};

/// How long one line may take to reach a client. A client that reads nothing for this long
/// is dropped; one that reads slowly misses events instead of holding anything up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Clients connected at once; more are told `busy` and closed.
const MAX_CLIENTS: usize = 64;
/// An upper bound on waiting for an agent to settle after a command. The agent's own timers
/// (start timeout, stop graces) settle it long before; this only guards against a bug.
const SETTLE_LIMIT: Duration = Duration::from_secs(15 * 60);
/// How long shutdown waits for connection tasks, which all watch the cancellation token.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(5);
/// After a failed `accept` (for example out of file descriptors), before the next one.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// What the plan service may tell one submitter before the connection task catches up.
const SUBMIT_EVENT_BUFFER: usize = 64;

/// A bound control socket, not yet served. Binding first lets `supervise` fail before any
/// worker starts if the socket cannot be created. Dropping it removes the socket file.
#[derive(Debug)]
pub struct ControlSocket {
    listener: std::os::unix::net::UnixListener,
    file: SocketFile,
}

impl ControlSocket {
    /// Binds `control.sock` in `state_dir`, replacing a stale one. The caller must hold the
    /// state directory's lock.
    pub fn bind(state_dir: &Path) -> Result<Self, ControlError> {
        let (listener, file) = socket::bind(state_dir)?;
        Ok(Self { listener, file })
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Starts answering clients about `agents` and `events`. Must be called inside a Tokio
    /// runtime.
    pub fn serve(
        self,
        agents: AgentDirectory,
        events: EventBus,
        submissions: Option<tokio::sync::mpsc::Sender<Submission>>,
        reloads: Option<tokio::sync::mpsc::Sender<ReloadRequest>>,
    ) -> Result<ControlServer, ControlError> {
        let listen_error = |source| ControlError::Listen {
            path: self.file.path().to_path_buf(),
            source,
        };
        self.listener.set_nonblocking(true).map_err(listen_error)?;
        let listener = tokio::net::UnixListener::from_std(self.listener).map_err(listen_error)?;
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let shared = Arc::new(Shared {
            agents,
            events,
            submissions,
            reloads,
            tasks: tasks.clone(),
            cancel: cancel.clone(),
            clients: Arc::new(Semaphore::new(MAX_CLIENTS)),
        });
        tasks.spawn(accept_loop(listener, shared));
        tracing::info!(path = %self.file.path().display(), "control socket listening");
        Ok(ControlServer {
            file: self.file,
            cancel,
            tasks,
        })
    }
}

/// The running control server. Dropping it stops accepting and removes the socket file;
/// [`ControlServer::shutdown`] also waits for the connections to end.
#[derive(Debug)]
pub struct ControlServer {
    file: SocketFile,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl ControlServer {
    /// Binds the socket in `state_dir` and serves `supervisor`'s agents and events.
    pub fn start(state_dir: &Path, supervisor: &Supervisor) -> Result<Self, ControlError> {
        ControlSocket::bind(state_dir)?.serve(
            supervisor.directory(),
            supervisor.events().clone(),
            None,
            None,
        )
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Stops accepting, ends every connection (followers get `end`), and removes the socket.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_LIMIT, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("control connections did not end in time; leaving them");
        }
        self.file.remove();
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        // The socket file goes with `file`.
        self.cancel.cancel();
    }
}

/// A `reload` asked for by a client; whoever owns the configuration answers it.
#[derive(Debug)]
pub struct ReloadRequest {
    pub reply: tokio::sync::oneshot::Sender<Result<ReloadReport, String>>,
}

struct Shared {
    agents: AgentDirectory,
    events: EventBus,
    /// Where submitted plans go; `None` when the supervisor takes no submissions.
    submissions: Option<tokio::sync::mpsc::Sender<Submission>>,
    /// Where reloads go; `None` when nothing owns a configuration to re-read.
    reloads: Option<tokio::sync::mpsc::Sender<ReloadRequest>>,
    tasks: TaskTracker,
    cancel: CancellationToken,
    clients: Arc<Semaphore>,
}

async fn accept_loop(listener: tokio::net::UnixListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            () = shared.cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => match shared.clients.clone().try_acquire_owned() {
                Ok(permit) => {
                    let shared_for_task = shared.clone();
                    shared.tasks.spawn(async move {
                        serve_connection(stream, shared_for_task).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    shared.tasks.spawn(async move {
                        let (_, write) = stream.into_split();
                        let mut out = Writer { write };
                        let _ = out
                            .send(&error(
                                ErrorCode::Busy,
                                format!("too many control clients (at most {MAX_CLIENTS})"),
                            ))
                            .await;
                    });
                }
            },
            Err(error) => {
                tracing::warn!(%error, "accepting a control connection failed");
                // Not a timer for anything: a pause so that a persistent error (no file
                // descriptors left) does not spin.
                tokio::select! {
                    () = shared.cancel.cancelled() => return,
                    () = tokio::time::sleep(ACCEPT_RETRY) => {}
                }
            }
        }
    }
}

type Requests = FramedRead<OwnedReadHalf, LinesCodec>;

/// The client is gone or too slow; the connection ends.
struct Gone;

struct Writer {
    write: OwnedWriteHalf,
}

impl Writer {
    /// Sends one answer: a [`Response`], or a [`ResultAnswer`] that reads back as one.
    async fn send(&mut self, response: &impl serde::Serialize) -> Result<(), Gone> {
        let line = match encode_line(response) {
            Ok(line) => line,
            Err(error) => {
                tracing::error!(%error, "could not encode a control answer");
                return Err(Gone);
            }
        };
        // A write is never abandoned half-way for a shutdown: a follower must get whole lines
        // and then `end`. The timeout alone bounds a client that stopped reading.
        match tokio::time::timeout(WRITE_TIMEOUT, self.write.write_all(&line)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Gone),
            Err(_) => {
                tracing::info!("dropping a control client that stopped reading");
                Err(Gone)
            }
        }
    }

    /// Sends `end`, even while the server is stopping, so a follower learns the stream ended
    /// on purpose.
    async fn finish(&mut self) {
        if let Ok(line) = encode_line(&Response::End) {
            let _ = tokio::time::timeout(WRITE_TIMEOUT, self.write.write_all(&line)).await;
        }
    }
}

async fn serve_connection(stream: UnixStream, shared: Arc<Shared>) {
    let (read, write) = stream.into_split();
    let mut requests = FramedRead::new(read, LinesCodec::new_with_max_length(MAX_REQUEST_BYTES));
    let mut out = Writer { write };
    loop {
        let next = tokio::select! {
            () = shared.cancel.cancelled() => return,
            next = requests.next() => next,
        };
        let line = match next {
            None | Some(Err(LinesCodecError::Io(_))) => return,
            Some(Err(LinesCodecError::MaxLineLengthExceeded)) => {
                let message = format!("a request line is at most {MAX_REQUEST_BYTES} bytes");
                let _ = out.send(&error(ErrorCode::TooLong, message)).await;
                return;
            }
            Some(Ok(line)) => line,
        };
        if line.trim().is_empty() {
            continue;
        }
        let handled = match decode_request(line.as_bytes()) {
            Ok(request) => handle(request, &shared, &mut out, &mut requests).await,
            Err(refused) => out.send(&error(refused.code, refused.message)).await,
        };
        if handled.is_err() {
            return;
        }
    }
}

async fn handle(
    request: Request,
    shared: &Shared,
    out: &mut Writer,
    requests: &mut Requests,
) -> Result<(), Gone> {
    match request {
        Request::Agents => {
            let now = SystemTime::now();
            let agents = shared
                .agents
                .current()
                .iter()
                .map(|agent| AgentRow::from_status(&agent.status(), now))
                .collect();
            out.send(&Response::Agents { agents }).await
        }
        Request::Start { target, wait } => control(shared, out, Verb::Start, &target, wait).await,
        Request::Stop { target, wait } => control(shared, out, Verb::Stop, &target, wait).await,
        Request::Restart { target, now, wait } => {
            control(shared, out, Verb::Restart { now }, &target, wait).await
        }
        Request::Submit { plans } => submit(shared, out, plans).await,
        Request::Reload => reload(shared, out).await,
        Request::Events { follow } => {
            let (history, live) = shared.events.history_and_subscribe();
            for event in history {
                out.send(&event_response(&event)).await?;
            }
            if follow {
                stream(live, out, requests, &shared.cancel, |event| {
                    event_response(&event)
                })
                .await
            } else {
                out.send(&Response::End).await
            }
        }
        Request::Logs {
            agent,
            lines,
            follow,
        } => {
            let Some(handle) = shared.agents.find(&agent) else {
                let agents = shared.agents.current();
                let message = format!(
                    "no agent named `{agent}`; the agents are: {}",
                    ids(&agents).join(", ")
                );
                return out.send(&unknown_agent(message, &agents)).await;
            };
            let (past, live) = handle.stderr_follow(lines);
            for line in past {
                out.send(&Response::Log { line }).await?;
            }
            if follow {
                stream(live, out, requests, &shared.cancel, |line| Response::Log {
                    line: line.to_string(),
                })
                .await
            } else {
                out.send(&Response::End).await
            }
        }
    }
}

/// Answers `reload` with what the reload did, or why the configuration was refused. The reload
/// itself is bounded by the agents' own timers; a client that disconnects meanwhile does not
/// stop it.
async fn reload(shared: &Shared, out: &mut Writer) -> Result<(), Gone> {
    let Some(reloads) = &shared.reloads else {
        let message = "this supervisor has no configuration to reload";
        return out.send(&error(ErrorCode::BadRequest, message)).await;
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let stopping = || error(ErrorCode::ShuttingDown, "the supervisor is stopping");
    if reloads.send(ReloadRequest { reply }).await.is_err() {
        return out.send(&stopping()).await;
    }
    let answer = tokio::select! {
        answer = answer => answer,
        () = shared.cancel.cancelled() => return out.send(&stopping()).await,
    };
    match answer {
        Ok(Ok(report)) => {
            let report = Box::new(report);
            out.send(&Response::Reloaded { report }).await
        }
        Ok(Err(message)) => out.send(&error(ErrorCode::InvalidConfig, message)).await,
        Err(_) => out.send(&stopping()).await,
    }
}

/// Runs submitted plans through the plan service and streams back an `admitted` line for each
/// plan the journal took and a `result` line for each plan, then `end`. If the supervisor stops
/// first, the answer is a `shutting_down` error naming the plans left unfinished.
async fn submit(shared: &Shared, out: &mut Writer, plans: Vec<SubmittedPlan>) -> Result<(), Gone> {
    let Some(submissions) = &shared.submissions else {
        let message = "this supervisor takes no submitted plans: start it with --keep-running";
        return out.send(&error(ErrorCode::BadRequest, message)).await;
    };
    let (events, mut received) = tokio::sync::mpsc::channel(SUBMIT_EVENT_BUFFER);
    let mut taken = Vec::new();
    for submitted in plans {
        let origin = Origin::from_parts(submitted.line, submitted.element);
        let position = origin.position();
        let checked = serde_json::from_value::<Plan>(submitted.plan)
            .map_err(|error| error.to_string())
            .and_then(|plan| {
                check_plan(&plan)
                    .map(|()| plan)
                    .map_err(|error| error.to_string())
            });
        match checked {
            Ok(plan) => taken.push((plan, position)),
            Err(message) => {
                let result =
                    PlanResult::rejected(None, position, vec![format!("{origin}: {message}")]);
                out.send(&ResultAnswer { result: &result }).await?;
            }
        }
    }
    if taken.is_empty() {
        return out.send(&Response::End).await;
    }
    let mut expected = taken.len();
    let submission = Submission {
        plans: taken,
        events,
    };
    if submissions.send(submission).await.is_err() {
        let message = format!("the supervisor is stopping; none of the {expected} plans was taken");
        return out.send(&error(ErrorCode::ShuttingDown, message)).await;
    }
    // Admitted plans without a result yet, in the order they were admitted.
    let mut unfinished: Vec<String> = Vec::new();
    while expected > 0 {
        let event = tokio::select! {
            event = received.recv() => event,
            () = shared.cancel.cancelled() => None,
        };
        match event {
            // The service let go of this submission without a result for every plan: the
            // supervisor is stopping.
            None => {
                let message = stopped_before_results(&unfinished, expected - unfinished.len());
                return out.send(&error(ErrorCode::ShuttingDown, message)).await;
            }
            Some(SubmitEvent::Admitted { id, position }) => {
                let admitted = Response::Admitted {
                    id: id.clone(),
                    line: position.line,
                    element: position.element,
                };
                unfinished.push(id);
                out.send(&admitted).await?;
            }
            Some(SubmitEvent::Finished(delivery)) => {
                let admitted = delivery
                    .admitted_id()
                    .and_then(|id| unfinished.iter().position(|pending| pending == id));
                if let Some(index) = admitted {
                    unfinished.remove(index);
                }
                // A client gone before this write leaves the result unemitted in the journal.
                let written = out
                    .send(&ResultAnswer {
                        result: &delivery.output,
                    })
                    .await;
                if written.is_err() {
                    tracing::info!(
                        plan = delivery.admitted_id().unwrap_or("-"),
                        "the submitter went away; its result waits in the journal for its id to \
                         be submitted again"
                    );
                    return Err(Gone);
                }
                delivery.delivered().await;
                expected -= 1;
            }
        }
    }
    out.send(&Response::End).await
}

/// The `shutting_down` message for a submission cut short.
fn stopped_before_results(unfinished: &[String], not_taken: usize) -> String {
    let mut message = "the supervisor is stopping".to_owned();
    if !unfinished.is_empty() {
        message.push_str(&format!(
            "; {} submitted plans are unfinished and resume on its next start: {}",
            unfinished.len(),
            unfinished.join(", ")
        ));
    }
    if not_taken > 0 {
        message.push_str(&format!("; {not_taken} plans were not taken"));
    }
    message
}

fn event_response(event: &crate::supervisor::Event) -> Response {
    match serde_json::to_value(event) {
        Ok(event) => Response::Event { event },
        Err(error) => {
            // Events are plain data; this would be a bug, and the reader still learns of it.
            tracing::error!(%error, seq = event.seq, "could not serialise an event");
            Response::Missed { count: 1 }
        }
    }
}

/// Sends what `live` yields until the client goes away or the server stops. A reader that
/// falls behind the broadcast is told how much it missed; the publisher never waits for it.
async fn stream<T: Clone>(
    mut live: broadcast::Receiver<T>,
    out: &mut Writer,
    requests: &mut Requests,
    cancel: &CancellationToken,
    to_response: impl Fn(T) -> Response,
) -> Result<(), Gone> {
    loop {
        let response = tokio::select! {
            biased;
            () = cancel.cancelled() => Response::End,
            // A follower sends nothing more; anything, or the end of its input, ends the stream.
            _ = requests.next() => return Err(Gone),
            received = live.recv() => match received {
                Ok(item) => to_response(item),
                Err(broadcast::error::RecvError::Lagged(count)) => Response::Missed { count },
                Err(broadcast::error::RecvError::Closed) => Response::End,
            },
        };
        if response == Response::End {
            out.finish().await;
            return Ok(());
        }
        out.send(&response).await?;
    }
}

async fn control(
    shared: &Shared,
    out: &mut Writer,
    verb: Verb,
    target: &str,
    wait: bool,
) -> Result<(), Gone> {
    let agents = match resolve(&shared.agents.current(), target) {
        Ok(agents) => agents,
        Err(refusal) => return out.send(&refusal).await,
    };
    if !wait {
        for agent in &agents {
            let agent = agent.clone();
            shared.tasks.spawn(async move {
                if let Err(error) = command(&agent, verb).await {
                    tracing::warn!(agent = agent.id(), %error, "control command failed");
                }
            });
        }
        let agents = agents.iter().map(|agent| agent.id().to_owned()).collect();
        return out.send(&Response::Accepted { agents }).await;
    }
    tracing::info!(verb = verb.as_str(), target, "control command");
    let results = tokio::select! {
        () = shared.cancel.cancelled() => {
            return out
                .send(&error(ErrorCode::ShuttingDown, "the supervisor is stopping"))
                .await;
        }
        results = join_all(agents.iter().map(|agent| carry_out(agent, verb))) => results,
    };
    out.send(&Response::Outcome { results }).await
}

async fn command(agent: &AgentHandle, verb: Verb) -> Result<(), crate::agent::AgentCommandError> {
    match verb {
        Verb::Start => agent.start().await,
        Verb::Stop => agent.stop().await,
        Verb::Restart { now } => agent.restart(now).await,
    }
}

/// Runs `verb` on `agent` and waits until it has settled: serving again (or stopped, for
/// `stop`), or somewhere that says why not.
async fn carry_out(agent: &AgentHandle, verb: Verb) -> AgentOutcome {
    if let Err(error) = command(agent, verb).await {
        return outcome(&agent.status(), false, Some(error.to_string()));
    }
    let settled = agent
        .wait_until("a settled state", SETTLE_LIMIT, |status| {
            settled(verb, status.state)
        })
        .await;
    match settled {
        Ok(status) => {
            let ok = succeeded(verb, status.state);
            let reason = if ok {
                None
            } else {
                Some(match &status.reason {
                    Some(reason) => format!("went to {}: {reason}", status.state),
                    None => format!("went to {}", status.state),
                })
            };
            outcome(&status, ok, reason)
        }
        Err(error) => outcome(&agent.status(), false, Some(error.to_string())),
    }
}

fn settled(verb: Verb, state: StateName) -> bool {
    match verb {
        Verb::Stop => state == StateName::Stopped,
        Verb::Start | Verb::Restart { .. } => {
            !matches!(state, StateName::Starting | StateName::Stopping)
        }
    }
}

fn succeeded(verb: Verb, state: StateName) -> bool {
    match verb {
        Verb::Stop => state == StateName::Stopped,
        Verb::Start | Verb::Restart { .. } => {
            matches!(state, StateName::Ready | StateName::Busy)
        }
    }
}

fn outcome(status: &AgentStatus, ok: bool, reason: Option<String>) -> AgentOutcome {
    AgentOutcome {
        id: status.id.clone(),
        ok,
        state: status.state.to_string(),
        pid: status.pid,
        restarts: status.restarts,
        reason,
    }
}

/// An agent id names that agent; a role names all of its agents.
fn resolve(agents: &[AgentHandle], target: &str) -> Result<Vec<AgentHandle>, Response> {
    if let Some(agent) = agents.iter().find(|agent| agent.id() == target) {
        return Ok(vec![agent.clone()]);
    }
    let known = ids(agents).join(", ");
    match target.parse::<Role>() {
        Ok(role) => {
            let of_role: Vec<AgentHandle> = agents
                .iter()
                .filter(|agent| agent.role() == role)
                .cloned()
                .collect();
            if of_role.is_empty() {
                Err(unknown_agent(
                    format!("no agents of role `{role}` run here; the agents are: {known}"),
                    agents,
                ))
            } else {
                Ok(of_role)
            }
        }
        Err(_) => Err(unknown_agent(
            format!("no agent or role named `{target}`; the agents are: {known}"),
            agents,
        )),
    }
}

fn ids(agents: &[AgentHandle]) -> Vec<String> {
    agents.iter().map(|agent| agent.id().to_owned()).collect()
}

fn unknown_agent(message: String, agents: &[AgentHandle]) -> Response {
    Response::Error {
        code: ErrorCode::UnknownAgent,
        message,
        known: ids(agents),
    }
}

fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error {
        code,
        message: message.into(),
        known: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::decode_response;

    #[test]
    fn start_and_restart_settle_anywhere_but_starting_and_stopping() {
        let restart = Verb::Restart { now: false };
        assert!(!settled(restart, StateName::Starting));
        assert!(!settled(restart, StateName::Stopping));
        for state in [
            StateName::Ready,
            StateName::Busy,
            StateName::Backoff,
            StateName::Cooldown,
            StateName::Failed,
            StateName::Stopped,
        ] {
            assert!(settled(restart, state), "{state}");
            assert!(settled(Verb::Start, state), "{state}");
        }
        assert!(succeeded(restart, StateName::Busy));
        assert!(!succeeded(Verb::Start, StateName::Backoff));
        assert!(settled(Verb::Stop, StateName::Stopped));
        assert!(!settled(Verb::Stop, StateName::Ready));
    }

    #[tokio::test]
    async fn a_reader_that_falls_behind_gets_a_missed_marker_then_the_newest() {
        let (sender, live) = broadcast::channel::<u64>(4);
        for n in 0..10 {
            sender.send(n).expect("a receiver exists");
        }
        let (server_end, client_end) = UnixStream::pair().expect("socket pair");
        let (read, write) = server_end.into_split();
        let mut requests =
            FramedRead::new(read, LinesCodec::new_with_max_length(MAX_REQUEST_BYTES));
        let cancel = CancellationToken::new();
        let mut out = Writer { write };
        let streaming = tokio::spawn(async move {
            let _ = stream(live, &mut out, &mut requests, &cancel, |n| Response::Log {
                line: format!("line {n}"),
            })
            .await;
        });
        drop(sender);
        let (client_read, _client_write) = client_end.into_split();
        let mut answers = FramedRead::new(
            client_read,
            LinesCodec::new_with_max_length(MAX_REQUEST_BYTES),
        );
        let mut seen = Vec::new();
        while let Some(line) = tokio::time::timeout(Duration::from_secs(5), answers.next())
            .await
            .expect("answers arrive")
        {
            let response = decode_response(line.expect("a line").as_bytes()).expect("decodes");
            let end = response == Response::End;
            seen.push(response);
            if end {
                break;
            }
        }
        streaming.await.expect("the stream task ends");
        assert_eq!(
            seen,
            vec![
                Response::Missed { count: 6 },
                Response::Log {
                    line: "line 6".into()
                },
                Response::Log {
                    line: "line 7".into()
                },
                Response::Log {
                    line: "line 8".into()
                },
                Response::Log {
                    line: "line 9".into()
                },
                Response::End,
            ]
        );
    }
}
