//! Control of a running supervisor from another terminal: the `control.sock` server that runs
//! inside `mnemosyne supervise`, its client, the versioned NDJSON protocol between them
//! (`protocol/control/`), and agent health.

mod client;
#[cfg(test)]
mod conformance;
mod health;
mod protocol;
mod server;
mod socket;

pub use client::{Client, ClientError, ControlAnswer, Stream, StreamItem, SubmitItem};
pub use health::{Health, RECENT_RESTART, health};
pub use protocol::{
    AgentOutcome, AgentRow, CONTROL_PROTOCOL_VERSION, DEFAULT_LOG_LINES, ErrorCode, ExitCodeRecord,
    ExitRecord, Request, RequestError, Response, ResponseError, SubmittedPlan, Verb,
    decode_request, decode_response, encode_line,
};
pub use server::{ControlServer, ControlSocket, ReloadRequest};
pub use socket::{ControlError, SOCKET_FILE, socket_path};
