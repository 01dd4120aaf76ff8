//! The worker protocol: wire types and line framing, as specified in `protocol/README.md`.

mod codec;
mod message;

pub use codec::{Inbound, LineCodec, LineError, classify, encode_line};
pub use message::{
    Cancel, ErrorBody, Fatal, Heartbeat, Hello, LogLevel, LogRecord, Outcome, Progress, Ready,
    Request, Response, Shutdown, SupervisorMessage, WorkerMessage, error_codes,
};

/// The protocol version this supervisor speaks; `protocol/VERSION` holds the same number.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default bound on one line in either direction (16 MiB), as the protocol README states.
pub const DEFAULT_MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

#[cfg(test)]
mod conformance;
