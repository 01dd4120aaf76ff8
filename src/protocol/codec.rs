//! Line framing: splitting a byte stream into bounded lines and classifying each line.

use bytes::{Buf, BytesMut};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio_util::codec::Decoder;

/// How many bytes of a stray or malformed line go into logs and errors.
const PREVIEW_BYTES: usize = 200;

/// The longest violation reason or unknown type name, in characters. serde_json quotes the
/// offending value in its messages, and a type name is whatever the peer sent, so without a
/// bound one line could put megabytes into a crash report or a log record.
pub const MAX_REASON_CHARS: usize = 500;

/// Splits a stream into `\n`-terminated lines no longer than `max_line_bytes`.
///
/// Unlike `LinesCodec` it yields raw bytes, so a stray line that is not UTF-8 is still
/// reported (lossily) instead of failing the stream, and a partial line at EOF is an error.
#[derive(Debug)]
pub struct LineCodec {
    max_line_bytes: usize,
    /// Bytes already searched for a newline, so a long line is scanned once, not quadratically.
    scanned: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("line longer than the limit of {limit} bytes")]
    TooLong { limit: usize },
    #[error("stream ended in the middle of a line ({bytes} bytes without a newline)")]
    PartialLineAtEof { bytes: usize },
    #[error("reading the stream failed")]
    Io(#[from] std::io::Error),
}

impl LineCodec {
    pub fn new(max_line_bytes: usize) -> Self {
        Self {
            max_line_bytes,
            scanned: 0,
        }
    }
}

impl Decoder for LineCodec {
    type Item = BytesMut;
    type Error = LineError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, LineError> {
        let newline = buf[self.scanned..].iter().position(|&b| b == b'\n');
        match newline {
            Some(offset) => {
                let end = self.scanned + offset;
                self.scanned = 0;
                let mut line = buf.split_to(end + 1);
                line.truncate(end);
                if line.last() == Some(&b'\r') {
                    line.truncate(end - 1);
                }
                if line.len() > self.max_line_bytes {
                    return Err(LineError::TooLong {
                        limit: self.max_line_bytes,
                    });
                }
                Ok(Some(line))
            }
            // A line exactly at the limit may be followed by a `\r` whose `\n` has not
            // arrived yet; that `\r` belongs to the line ending, not to the line.
            None if buf.len() > self.max_line_bytes + usize::from(buf.last() == Some(&b'\r')) => {
                // Failing here, before the newline arrives, keeps memory bounded by the limit.
                buf.advance(buf.len());
                self.scanned = 0;
                Err(LineError::TooLong {
                    limit: self.max_line_bytes,
                })
            }
            None => {
                self.scanned = buf.len();
                Ok(None)
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, LineError> {
        match self.decode(buf)? {
            Some(line) => Ok(Some(line)),
            None if buf.is_empty() => Ok(None),
            None => {
                let bytes = buf.len();
                buf.clear();
                self.scanned = 0;
                Err(LineError::PartialLineAtEof { bytes })
            }
        }
    }
}

/// What one received line turned out to be.
#[derive(Debug)]
pub enum Inbound<M> {
    Blank,
    /// Not a JSON object: logged and counted, never fatal.
    Stray {
        preview: String,
    },
    /// A JSON object with a `type` this version does not know: counted, never fatal.
    Unknown {
        kind: String,
    },
    Message(M),
    /// A malformed JSON object or a known message with bad fields.
    Violation {
        reason: String,
        preview: String,
    },
}

#[derive(Deserialize)]
struct TypeTag<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
}

/// Classifies one line against the message enum `M`, whose known tags are `known_types`.
pub fn classify<M: DeserializeOwned>(line: &[u8], known_types: &[&str]) -> Inbound<M> {
    let trimmed = line.trim_ascii();
    if trimmed.is_empty() {
        return Inbound::Blank;
    }
    if trimmed[0] != b'{' {
        return Inbound::Stray {
            preview: preview(trimmed),
        };
    }
    let violation = |reason: String| Inbound::Violation {
        reason: bounded(reason),
        preview: preview(trimmed),
    };
    let tag: TypeTag<'_> = match serde_json::from_slice(trimmed) {
        Ok(tag) => tag,
        Err(error) => return violation(format!("not a valid JSON object: {error}")),
    };
    let Some(kind) = tag.kind else {
        return violation("message has no string field `type`".into());
    };
    if !known_types.contains(&kind.as_ref()) {
        return Inbound::Unknown {
            kind: bounded(kind.into_owned()),
        };
    }
    match serde_json::from_slice(trimmed) {
        Ok(message) => Inbound::Message(message),
        Err(error) => violation(format!("invalid `{kind}` message: {error}")),
    }
}

fn bounded(mut text: String) -> String {
    if let Some((cut, _)) = text.char_indices().nth(MAX_REASON_CHARS) {
        text.truncate(cut);
        text.push('…');
    }
    text
}

fn preview(line: &[u8]) -> String {
    let cut = line.len().min(PREVIEW_BYTES);
    let mut text = String::from_utf8_lossy(&line[..cut]).into_owned();
    if cut < line.len() {
        text.push('…');
    }
    text
}

/// Serialises one message as a line (with its newline), refusing lines over the limit.
pub fn encode_line<M: Serialize>(message: &M, max_line_bytes: usize) -> Result<Vec<u8>, LineError> {
    let mut line = serde_json::to_vec(message).expect("wire types always serialise to JSON");
    if line.len() > max_line_bytes {
        return Err(LineError::TooLong {
            limit: max_line_bytes,
        });
    }
    line.push(b'\n');
    Ok(line)
}
