//! Wire types of protocol v1: every message a worker or the supervisor may send.

use std::num::NonZeroU32;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// Messages a worker writes to its stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerMessage {
    Hello(Hello),
    Ready(Ready),
    Response(Response),
    Progress(Progress),
    Ping(Heartbeat),
    Pong(Heartbeat),
    Log(LogRecord),
    Fatal(Fatal),
}

impl WorkerMessage {
    /// The `type` tags this version knows; anything else is an unknown (counted, not fatal).
    pub const TYPES: &'static [&'static str] = &[
        "hello", "ready", "response", "progress", "ping", "pong", "log", "fatal",
    ];
}

/// Messages the supervisor writes to a worker's stdin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SupervisorMessage {
    Request(Request),
    Cancel(Cancel),
    Ping(Heartbeat),
    Pong(Heartbeat),
    Shutdown(Shutdown),
}

impl SupervisorMessage {
    pub const TYPES: &'static [&'static str] = &["request", "cancel", "ping", "pong", "shutdown"];
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    pub role: String,
    pub pid: u32,
    pub python: String,
    pub package: String,
    // Required but nullable, as the schema says: an absent field is a broken worker, while null
    // means "none".
    #[serde(deserialize_with = "nullable")]
    pub anthropic: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub provider: Option<String>,
}

fn nullable<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(deserializer)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    pub methods: Vec<String>,
}

/// The answer to one request. On the wire it carries exactly one of `result` or `error`,
/// which serde cannot express on its own, so it goes through [`RawResponse`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawResponse", into = "RawResponse")]
pub struct Response {
    pub id: String,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Result(Value),
    Error(ErrorBody),
}

#[derive(Serialize, Deserialize)]
struct RawResponse {
    id: String,
    // `"result": null` is a legitimate result, so absence and null must differ.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    result: Option<Value>,
    // Present-but-null counts as present too, so `"result": 1, "error": null` is refused.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    error: Option<Value>,
}

fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

impl TryFrom<RawResponse> for Response {
    type Error = String;

    fn try_from(raw: RawResponse) -> Result<Self, String> {
        let outcome = match (raw.result, raw.error) {
            (Some(result), None) => Outcome::Result(result),
            (None, Some(error)) => Outcome::Error(
                serde_json::from_value(error)
                    .map_err(|error| format!("invalid error object: {error}"))?,
            ),
            (Some(_), Some(_)) => return Err("response carries both result and error".into()),
            (None, None) => return Err("response carries neither result nor error".into()),
        };
        Ok(Response {
            id: raw.id,
            outcome,
        })
    }
}

impl From<Response> for RawResponse {
    fn from(response: Response) -> Self {
        let (result, error) = match response.outcome {
            Outcome::Result(value) => (Some(value), None),
            Outcome::Error(body) => (
                None,
                Some(serde_json::to_value(body).expect("error bodies serialise")),
            ),
        };
        RawResponse {
            id: response.id,
            result,
            error,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    pub retryable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Map<String, Value>>,
}

/// Error codes of protocol v1 (see the table in `protocol/README.md`).
pub mod error_codes {
    pub const INVALID_REQUEST: &str = "invalid_request";
    pub const METHOD_NOT_FOUND: &str = "method_not_found";
    pub const INVALID_PARAMS: &str = "invalid_params";
    pub const CANCELLED: &str = "cancelled";
    pub const DEADLINE_EXCEEDED: &str = "deadline_exceeded";
    pub const SHUTTING_DOWN: &str = "shutting_down";
    pub const RATE_LIMITED: &str = "rate_limited";
    pub const PROVIDER_UNAVAILABLE: &str = "provider_unavailable";
    pub const PROVIDER_ERROR: &str = "provider_error";
    pub const CONFIG: &str = "config";
    pub const INTERNAL: &str = "internal";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub nonce: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Debug,
    Info,
    Warning,
    Error,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    pub level: LogLevel,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<serde_json::Map<String, Value>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fatal {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: String,
    pub method: String,
    #[serde(default = "empty_params")]
    pub params: Value,
    pub deadline_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<NonZeroU32>,
}

fn empty_params() -> Value {
    Value::Object(serde_json::Map::new())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shutdown {
    pub grace_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
