//! The control protocol, version 1: the NDJSON requests that `mnemosyne` commands send over
//! `control.sock` and the supervisor's answers. Specified in `protocol/control/README.md`.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::health::{Health, health};
use crate::agent::{AgentStatus, LastExit};
use crate::process::ExitStatus;
use crate::supervisor::ReloadReport;

/// The version every line carries in its `v` field, both ways.
pub const CONTROL_PROTOCOL_VERSION: u32 = 1;
/// The longest request line the server reads: a `submit` carries plans (the client sends at
/// most 4 MiB of them per request); the other requests are a few dozen bytes.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;
/// The longest answer line a client reads. A crash report carries a stderr tail of up to
/// 200 lines of up to 16 KiB each.
pub const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;
/// Stderr lines `logs` sends when the request does not say.
pub const DEFAULT_LOG_LINES: usize = 50;

/// What a client asks. Each line also carries `"v": 1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// One row per agent (`agents`).
    Agents,
    /// Replace the worker of an agent, or of every agent of a role.
    Restart {
        target: String,
        /// Kill the worker at once (its requests are redelivered) instead of letting it finish.
        #[serde(default)]
        now: bool,
        /// Answer once the agents are ready again (or have failed), not at once.
        #[serde(default = "yes")]
        wait: bool,
    },
    Stop {
        target: String,
        #[serde(default = "yes")]
        wait: bool,
    },
    Start {
        target: String,
        #[serde(default = "yes")]
        wait: bool,
    },
    /// Re-read the configuration file and the secrets, and apply what changed.
    Reload,
    /// The kept event history, then (with `follow`) every new event.
    Events {
        #[serde(default)]
        follow: bool,
    },
    /// The last `lines` stderr lines of one agent, then (with `follow`) every new line.
    Logs {
        agent: String,
        #[serde(default = "default_log_lines")]
        lines: usize,
        #[serde(default)]
        follow: bool,
    },
    /// Work plans to run (`mnemosyne submit`); answered with an `admitted` line per plan the
    /// journal took and a `result` line per plan, then `end` (or a `shutting_down` error if
    /// the supervisor stops first).
    Submit { plans: Vec<SubmittedPlan> },
}

/// One plan of a `submit`, with where it stood in the submitter's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmittedPlan {
    pub plan: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub element: Option<usize>,
}

impl Request {
    /// Every request `type`, to tell an unknown type from a malformed request.
    pub const TYPES: &'static [&'static str] = &[
        "agents", "restart", "stop", "start", "events", "logs", "submit", "reload",
    ];

    /// The request for `verb` on `target`.
    pub fn control(verb: Verb, target: impl Into<String>, wait: bool) -> Self {
        let target = target.into();
        match verb {
            Verb::Start => Request::Start { target, wait },
            Verb::Stop => Request::Stop { target, wait },
            Verb::Restart { now } => Request::Restart { target, now, wait },
        }
    }
}

fn yes() -> bool {
    true
}

fn default_log_lines() -> usize {
    DEFAULT_LOG_LINES
}

/// The operator commands that change an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Start,
    Stop,
    Restart { now: bool },
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Start => "start",
            Verb::Stop => "stop",
            Verb::Restart { .. } => "restart",
        }
    }
}

/// What the supervisor answers. Each line also carries `"v": 1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// The answer to `agents`.
    Agents { agents: Vec<AgentRow> },
    /// The answer to `start`, `stop` or `restart` with `wait`: how each agent ended up.
    Outcome { results: Vec<AgentOutcome> },
    /// The answer to `start`, `stop` or `restart` without `wait`: the command was handed over.
    Accepted { agents: Vec<String> },
    /// One event of the event stream, as the supervisor publishes it.
    Event { event: Value },
    /// One stderr line of the agent asked about.
    Log { line: String },
    /// A submitted plan is in the journal under `id` (generated when the plan had none) and
    /// will have a result, in this run or the supervisor's next. `line` and `element` are as
    /// the submitter sent them.
    Admitted {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        line: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        element: Option<usize>,
    },
    /// The result line of one submitted plan, exactly as `supervise` prints results.
    Result { result: Value },
    /// The answer to `reload`: what changed and what was done about it.
    Reloaded { report: Box<ReloadReport> },
    /// This reader fell behind and `count` events (or log lines) were skipped for it.
    Missed { count: u64 },
    /// The end of a stream: the history without `follow`, or the supervisor stopping.
    End,
    /// The request was refused; the connection stays usable.
    Error {
        code: ErrorCode,
        message: String,
        /// For `unknown_agent`: the agent ids that exist.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        known: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// `v` is missing or not the version the supervisor speaks.
    Version,
    /// Not a JSON object, or a known type with missing or mistyped fields.
    BadRequest,
    UnknownType,
    /// No agent (or role) of that name; `known` lists the agent ids.
    UnknownAgent,
    /// The request line is longer than [`MAX_REQUEST_BYTES`]; the connection is closed.
    TooLong,
    /// Too many clients are connected; the connection is closed.
    Busy,
    /// The supervisor is stopping.
    ShuttingDown,
    /// `reload` found a configuration that does not parse or is invalid; the running one stays.
    InvalidConfig,
    /// A code from a newer supervisor.
    #[serde(other)]
    Other,
}

/// A `result` answer as the server writes it: the typed result serialised straight into the
/// line. It reads back as [`Response::Result`].
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename = "result")]
pub(crate) struct ResultAnswer<'a, T: Serialize> {
    pub result: &'a T,
}

/// One agent as `mnemosyne agents --json` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRow {
    pub id: String,
    pub role: String,
    pub state: String,
    pub health: Health,
    pub pid: Option<u32>,
    pub restarts: u32,
    /// Seconds since the current worker became ready, while it is ready or busy.
    pub uptime_s: Option<u64>,
    pub in_flight: u32,
    pub last_exit: Option<ExitRecord>,
    /// Why the agent is in its state, for `backoff`, `cooldown`, `stopping`, `stopped` and
    /// `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When a `backoff` or `cooldown` agent tries again (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry: Option<String>,
}

impl AgentRow {
    pub fn from_status(status: &AgentStatus, now: SystemTime) -> Self {
        Self {
            id: status.id.clone(),
            role: status.role.to_string(),
            state: status.state.to_string(),
            health: health(
                status.state,
                status.last_exit.as_ref().map(|exit| exit.at),
                now,
            ),
            pid: status.pid,
            restarts: status.restarts,
            uptime_s: status
                .ready_since
                .map(|since| now.duration_since(since).unwrap_or_default().as_secs()),
            in_flight: status.in_flight,
            last_exit: status.last_exit.as_ref().map(ExitRecord::from),
            reason: status.reason.clone(),
            next_retry: status.next_retry.map(rfc3339),
        }
    }
}

/// How the previous worker of an agent ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub status: ExitCodeRecord,
    /// `crash`, `exited`, `hang`, `deadline`, `protocol`, `start_timeout`, `fatal`, ...
    pub cause: String,
    pub at: String,
}

impl From<&LastExit> for ExitRecord {
    fn from(exit: &LastExit) -> Self {
        let cause = serde_json::to_value(exit.cause)
            .ok()
            .and_then(|value| value.as_str().map(str::to_owned))
            .unwrap_or_else(|| exit.cause.to_string());
        Self {
            status: ExitCodeRecord::from(exit.status),
            cause,
            at: rfc3339(exit.at),
        }
    }
}

/// An exit code, or the signal that ended the process, as in crash reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitCodeRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal_name: Option<String>,
}

impl From<ExitStatus> for ExitCodeRecord {
    fn from(status: ExitStatus) -> Self {
        match status {
            ExitStatus::Code { code } => Self {
                code: Some(code),
                signal: None,
                signal_name: None,
            },
            ExitStatus::Signal { signal } => Self {
                code: None,
                signal: Some(signal),
                signal_name: nix::sys::signal::Signal::try_from(signal)
                    .ok()
                    .map(|name| name.as_str().to_owned()),
            },
        }
    }
}

impl std::fmt::Display for ExitCodeRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal, &self.signal_name) {
            (Some(code), _, _) => write!(f, "code {code}"),
            (None, Some(_), Some(name)) => f.write_str(name),
            (None, Some(signal), None) => write!(f, "signal {signal}"),
            (None, None, _) => f.write_str("unknown"),
        }
    }
}

/// How one agent ended up after `start`, `stop` or `restart`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentOutcome {
    pub id: String,
    /// Whether it reached what was asked: `ready`/`busy` for start and restart, `stopped`
    /// for stop.
    pub ok: bool,
    pub state: String,
    pub pid: Option<u32>,
    pub restarts: u32,
    /// Why it did not get there: the state's reason, or what went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A request the server refuses, with the code it answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    pub code: ErrorCode,
    pub message: String,
}

impl RequestError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Reads one request line: the version first, then the type, then the fields.
pub fn decode_request(line: &[u8]) -> Result<Request, RequestError> {
    let value: Value = serde_json::from_slice(line).map_err(|error| {
        RequestError::new(ErrorCode::BadRequest, format!("not a JSON line: {error}"))
    })?;
    let Value::Object(object) = &value else {
        return Err(RequestError::new(
            ErrorCode::BadRequest,
            "a request is a JSON object",
        ));
    };
    match object.get("v") {
        Some(v) if v.as_u64() == Some(u64::from(CONTROL_PROTOCOL_VERSION)) => {}
        Some(v) => {
            return Err(RequestError::new(
                ErrorCode::Version,
                format!(
                    "control protocol version mismatch: the supervisor speaks \
                     {CONTROL_PROTOCOL_VERSION}, the request says {v}"
                ),
            ));
        }
        None => {
            return Err(RequestError::new(
                ErrorCode::Version,
                format!(
                    "the request has no protocol version `v`; the supervisor speaks \
                     {CONTROL_PROTOCOL_VERSION}"
                ),
            ));
        }
    }
    let Some(kind) = object
        .get("type")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return Err(RequestError::new(
            ErrorCode::BadRequest,
            "the request has no string `type`",
        ));
    };
    if !Request::TYPES.contains(&kind.as_str()) {
        return Err(RequestError::new(
            ErrorCode::UnknownType,
            format!(
                "unknown request type `{kind}`; known: {}",
                Request::TYPES.join(", ")
            ),
        ));
    }
    serde_json::from_value(value).map_err(|error| {
        RequestError::new(
            ErrorCode::BadRequest,
            format!("bad `{kind}` request: {error}"),
        )
    })
}

/// Why an answer line could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    #[error("not a JSON object with a known `type`")]
    Malformed(#[source] serde_json::Error),
    #[error(
        "control protocol version mismatch: this client speaks {CONTROL_PROTOCOL_VERSION}, \
         the supervisor speaks {}", .0.map_or_else(|| "no version".to_owned(), |v| v.to_string())
    )]
    Version(Option<u64>),
}

/// Reads one answer line, checking its version first.
pub fn decode_response(line: &[u8]) -> Result<Response, ResponseError> {
    let value: Value = serde_json::from_slice(line).map_err(ResponseError::Malformed)?;
    let version = value.get("v").and_then(Value::as_u64);
    if version != Some(u64::from(CONTROL_PROTOCOL_VERSION)) {
        return Err(ResponseError::Version(version));
    }
    serde_json::from_value(value).map_err(ResponseError::Malformed)
}

/// One line of the protocol: the message's JSON object with `"v": 1` first, and a newline.
pub fn encode_line<T: Serialize>(message: &T) -> Result<Vec<u8>, serde_json::Error> {
    let body = serde_json::to_vec(message)?;
    let mut line = format!("{{\"v\":{CONTROL_PROTOCOL_VERSION}").into_bytes();
    match body.as_slice() {
        // Internally tagged messages always serialise as an object with at least `type`.
        [b'{', b'}'] => line.push(b'}'),
        [b'{', rest @ ..] => {
            line.push(b',');
            line.extend_from_slice(rest);
        }
        _ => {
            return Err(serde::ser::Error::custom(
                "a control message must serialise as a JSON object",
            ));
        }
    }
    line.push(b'\n');
    Ok(line)
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::agent::StateName;
    use crate::config::Role;
    use crate::supervisor::DeathCause;

    #[test]
    fn lines_start_with_the_version_and_end_with_a_newline() {
        let line = encode_line(&Request::Agents).expect("encodes");
        assert_eq!(line, b"{\"v\":1,\"type\":\"agents\"}\n");
        let line = encode_line(&Response::Missed { count: 3 }).expect("encodes");
        assert_eq!(line, b"{\"v\":1,\"type\":\"missed\",\"count\":3}\n");
    }

    #[test]
    fn a_typed_result_answer_reads_back_as_a_result_line() {
        #[derive(Serialize)]
        struct Typed {
            id: &'static str,
            status: &'static str,
            line: usize,
        }
        let typed = Typed {
            id: "p1",
            status: "succeeded",
            line: 3,
        };
        let line = encode_line(&ResultAnswer { result: &typed }).expect("encodes");
        assert_eq!(
            decode_response(&line).expect("decodes"),
            Response::Result {
                result: serde_json::json!({"id": "p1", "status": "succeeded", "line": 3})
            }
        );
    }

    #[test]
    fn requests_round_trip_and_defaults_apply() {
        for request in [
            Request::Agents,
            Request::control(Verb::Restart { now: true }, "executor-1", false),
            Request::control(Verb::Stop, "reviewer", true),
            Request::Events { follow: true },
            Request::Logs {
                agent: "executor-1".into(),
                lines: 7,
                follow: false,
            },
        ] {
            let line = encode_line(&request).expect("encodes");
            assert_eq!(decode_request(&line), Ok(request));
        }
        assert_eq!(
            decode_request(br#"{"v":1,"type":"restart","target":"executor"}"#),
            Ok(Request::Restart {
                target: "executor".into(),
                now: false,
                wait: true
            })
        );
    }

    #[test]
    fn a_version_mismatch_is_named() {
        let error = decode_request(br#"{"v":2,"type":"agents"}"#).expect_err("refused");
        assert_eq!(error.code, ErrorCode::Version);
        assert_eq!(
            error.message,
            "control protocol version mismatch: the supervisor speaks 1, the request says 2"
        );
        let error = decode_request(br#"{"type":"agents"}"#).expect_err("refused");
        assert_eq!(error.code, ErrorCode::Version);
    }

    #[test]
    fn unknown_types_and_bad_fields_get_different_codes() {
        let error = decode_request(br#"{"v":1,"type":"reboot"}"#).expect_err("refused");
        assert_eq!(error.code, ErrorCode::UnknownType);
        let error = decode_request(br#"{"v":1,"type":"stop"}"#).expect_err("refused");
        assert_eq!(error.code, ErrorCode::BadRequest);
        assert!(error.message.contains("target"), "{}", error.message);
        let error = decode_request(b"[1]").expect_err("refused");
        assert_eq!(error.code, ErrorCode::BadRequest);
    }

    #[test]
    fn an_answer_from_another_version_is_refused() {
        let error = decode_response(br#"{"v":2,"type":"end"}"#).expect_err("refused");
        assert!(matches!(error, ResponseError::Version(Some(2))), "{error}");
        assert_eq!(
            decode_response(br#"{"v":1,"type":"end","extra":true}"#).expect("decodes"),
            Response::End
        );
    }

    #[test]
    fn a_row_shows_uptime_last_exit_and_health() {
        let now = SystemTime::now();
        let status = AgentStatus {
            id: "executor-1".into(),
            role: Role::Executor,
            state: StateName::Ready,
            pid: Some(42),
            restarts: 1,
            ready_since: Some(now - Duration::from_secs(90)),
            in_flight: 0,
            current_job: None,
            last_exit: Some(LastExit {
                status: ExitStatus::Signal { signal: 9 },
                cause: DeathCause::StartTimeout,
                at: now - Duration::from_secs(91),
            }),
            reason: None,
            next_retry: None,
            protocol_noise: 0,
        };
        let row = AgentRow::from_status(&status, now);
        assert_eq!(row.uptime_s, Some(90));
        assert_eq!(row.health, Health::Degraded);
        let exit = row.last_exit.as_ref().expect("last exit");
        assert_eq!(exit.cause, "start_timeout");
        assert_eq!(exit.status.to_string(), "SIGKILL");
        let json = serde_json::to_value(&row).expect("serialises");
        assert_eq!(json["last_exit"]["status"]["signal"], 9);
        assert_eq!(json["last_exit"]["status"]["signal_name"], "SIGKILL");
        assert!(json.get("reason").is_none() && json.get("next_retry").is_none());
    }
}
