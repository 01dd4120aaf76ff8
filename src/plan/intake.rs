//! Intake: turning the bytes of the input into work plans, one at a time, each checked for
//! structure, with errors that name the line, array element and field they are about.
//!
//! # Input formats
//!
//! The first non-blank line decides:
//!
//! - If it is a complete JSON value, the input is **NDJSON**: one plan per line. Blank lines
//!   are skipped but still counted, so `line N` is the line an editor shows. A line holding a
//!   JSON array yields one item per element (origin `line N, element I`), on the first line or
//!   any later one, so a one-line array of plans works as well as a multi-line one.
//! - If it is the start of a JSON value that goes on (`{` or `[` alone, or an object broken
//!   over lines), the whole input is read, up to a size limit, as **one JSON document**: an
//!   object is one plan (origin `document`), an array one plan per element (origin
//!   `element I`), anything else one error.
//! - Anything else (not JSON at all, or a line over `max_line_bytes`) is a bad NDJSON line,
//!   and the input stays NDJSON.
//!
//! A truncated NDJSON first line (`{"prompt": "ab` and no more) therefore looks like the start
//! of a document. When that document does not parse, the first line holds more than an
//! opening bracket, and the next non-blank line is a complete JSON value on its own, the input
//! was NDJSON after all: the first line is an error of its own and the lines after it are read
//! as NDJSON, so one cut-off line cannot take the whole batch down. Otherwise the whole input
//! is one error. Later truncated lines are errors of their own line. An empty array yields no
//! items.
//!
//! NDJSON is read one line per [`PlanReader::next`], so a caller that stops asking stops the
//! reading: at most one read buffer and one line (bounded by `max_line_bytes`) are held.

use std::collections::VecDeque;
use std::fmt;
use std::io;

use bytes::{Buf, BytesMut};
use futures_util::StreamExt;
use serde::de::IgnoredAny;
use serde_json::Value;
use serde_json::error::Category;
use serde_path_to_error::Segment;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::codec::{Decoder, FramedRead};

use super::graph::TaskGraph;
use super::model::{MAX_REVIEW_ATTEMPTS_RANGE, PRIORITY_RANGE, Plan, out_of_range};
use super::result::InputPosition;
use crate::protocol::{LineCodec, LineError};

/// The largest input read as one JSON document (64 MiB); NDJSON input has no total limit.
pub const DEFAULT_MAX_DOCUMENT_BYTES: usize = 64 * 1024 * 1024;

/// The longest plan or task id, in characters.
pub const MAX_ID_CHARS: usize = 256;

/// Where in the input a plan came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// A line of NDJSON input, counted from 1, blank lines included.
    Line(usize),
    /// An element of a JSON array, counted from 1: of an array on NDJSON line `line`, or of
    /// an array that is the whole input (`line: None`).
    Element { line: Option<usize>, index: usize },
    /// The whole input, holding one plan (or not valid as a whole).
    Document,
}

impl Origin {
    /// The input line, for a line of NDJSON or an element of an array on one.
    pub fn line(&self) -> Option<usize> {
        match *self {
            Origin::Line(line) => Some(line),
            Origin::Element { line, .. } => line,
            Origin::Document => None,
        }
    }

    /// The index of the array element, counted from 1.
    pub fn element(&self) -> Option<usize> {
        match *self {
            Origin::Element { index, .. } => Some(index),
            Origin::Line(_) | Origin::Document => None,
        }
    }

    /// The inverse of [`Origin::line`] and [`Origin::element`], for an origin that travelled
    /// as those two numbers (a plan submitted over the control socket).
    pub fn from_parts(line: Option<usize>, element: Option<usize>) -> Self {
        match (line, element) {
            (line, Some(index)) => Origin::Element { line, index },
            (Some(line), None) => Origin::Line(line),
            (None, None) => Origin::Document,
        }
    }

    /// Where a result says its plan came from.
    pub fn position(&self) -> InputPosition {
        InputPosition {
            line: self.line(),
            element: self.element(),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Origin::Line(line) => write!(formatter, "line {line}"),
            Origin::Element {
                line: Some(line),
                index,
            } => write!(formatter, "line {line}, element {index}"),
            Origin::Element { line: None, index } => write!(formatter, "element {index}"),
            Origin::Document => formatter.write_str("document"),
        }
    }
}

/// Why one input item is not a usable plan.
///
/// Displays as `field `tasks[2].depends_on`: invalid type: ...` when the problem is one field
/// (the path uses `.` between keys and `[i]` for list positions, from 0), otherwise as the bare
/// message (`not valid JSON: expected value (column 5)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError {
    pub field: Option<String>,
    pub message: String,
}

impl PlanError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            field: None,
            message: bounded(message.into()),
        }
    }

    pub fn at(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(bounded(field.into())),
            message: bounded(message.into()),
        }
    }
}

/// The longest message or field path of a [`PlanError`], in characters.
///
/// serde's messages quote the offending value (`invalid type: string "..."`, `unknown field
/// `...``) and a cycle lists its tasks, so without a bound one line of input could make a
/// result line of the same size.
pub const MAX_ERROR_CHARS: usize = 1000;

fn bounded(mut text: String) -> String {
    if let Some((cut, _)) = text.char_indices().nth(MAX_ERROR_CHARS) {
        text.truncate(cut);
        text.push('…');
    }
    text
}

impl fmt::Display for PlanError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(formatter, "field `{field}`: {}", self.message),
            None => formatter.write_str(&self.message),
        }
    }
}

impl std::error::Error for PlanError {}

/// One plan of the input, or why that part of the input is not one.
#[derive(Debug)]
pub struct InputItem {
    pub origin: Origin,
    pub plan: Result<Plan, PlanError>,
}

impl InputItem {
    fn error(origin: Origin, message: impl Into<String>) -> Self {
        Self {
            origin,
            plan: Err(PlanError::new(message)),
        }
    }
}

/// Reads plans from a byte stream, one item per call to [`PlanReader::next`].
pub struct PlanReader<R> {
    input: Input<R>,
    /// Elements of an array already read, not yet turned into plans.
    pending: VecDeque<(Origin, Value)>,
    max_line_bytes: usize,
    max_document_bytes: usize,
    /// Lines taken from the input so far, blank and over-long ones included.
    lines_read: usize,
    /// Whether the input has shown itself to be NDJSON or a document.
    format_known: bool,
}

enum Input<R> {
    Lines(FramedRead<R, PlanLines>),
    /// The rest of an input first taken for a document, read again as NDJSON.
    Replay(FramedRead<std::io::Cursor<Vec<u8>>, PlanLines>),
    Finished,
}

impl<R: AsyncRead + Unpin> Input<R> {
    async fn next_frame(&mut self) -> Option<io::Result<Frame>> {
        match self {
            Input::Lines(lines) => lines.next().await,
            Input::Replay(lines) => lines.next().await,
            Input::Finished => None,
        }
    }
}

impl<R: AsyncRead + Unpin> PlanReader<R> {
    /// Reads `reader`, with NDJSON lines of at most `max_line_bytes` (without the newline).
    pub fn new(reader: R, max_line_bytes: usize) -> Self {
        Self {
            input: Input::Lines(FramedRead::new(reader, PlanLines::new(max_line_bytes))),
            pending: VecDeque::new(),
            max_line_bytes,
            max_document_bytes: DEFAULT_MAX_DOCUMENT_BYTES,
            lines_read: 0,
            format_known: false,
        }
    }

    /// Sets the size limit of an input read as one JSON document (default
    /// [`DEFAULT_MAX_DOCUMENT_BYTES`]).
    pub fn with_max_document_bytes(mut self, max_document_bytes: usize) -> Self {
        self.max_document_bytes = max_document_bytes;
        self
    }

    /// The next plan or error, or `None` at the end of the input.
    ///
    /// Reading fails only with the input itself: an I/O error is one last error item.
    pub async fn next(&mut self) -> Option<InputItem> {
        loop {
            if let Some((origin, value)) = self.pending.pop_front() {
                return Some(InputItem {
                    origin,
                    plan: plan_from_value(value),
                });
            }
            let frame = match self.input.next_frame().await {
                Some(Ok(frame)) => frame,
                Some(Err(error)) => {
                    self.input = Input::Finished;
                    let origin = Origin::Line(self.lines_read + 1);
                    return Some(InputItem::error(
                        origin,
                        format!("reading the input failed: {error}"),
                    ));
                }
                None => {
                    self.input = Input::Finished;
                    return None;
                }
            };
            self.lines_read += 1;
            let origin = Origin::Line(self.lines_read);
            let line = match frame {
                Frame::Line(line) => line,
                Frame::TooLong => {
                    self.format_known = true;
                    return Some(InputItem::error(
                        origin,
                        format!("longer than the limit of {} bytes", self.max_line_bytes),
                    ));
                }
            };
            if line.trim_ascii().is_empty() {
                continue;
            }
            if !self.format_known {
                self.format_known = true;
                if opens_a_document(&line) {
                    match self.read_document(line).await {
                        Some(item) => return Some(item),
                        None => continue,
                    }
                }
            }
            match parse(&line, Position::Column) {
                Parsed::One(plan) => return Some(InputItem { origin, plan }),
                Parsed::Many(values) => self.queue(values, Some(self.lines_read)),
            }
        }
    }

    /// Reads the rest of the input as one document that begins with `first_line`; returns its
    /// item, or `None` after queueing the elements of an array.
    async fn read_document(&mut self, first_line: BytesMut) -> Option<InputItem> {
        let Input::Lines(lines) = std::mem::replace(&mut self.input, Input::Finished) else {
            unreachable!("a document is detected while reading lines");
        };
        let parts = lines.into_parts();
        // The blank lines before the first line are put back (as bare newlines) so that the
        // positions in JSON errors are the positions in the input.
        let mut document = vec![b'\n'; self.lines_read - 1];
        document.extend_from_slice(&first_line);
        document.push(b'\n');
        document.extend_from_slice(&parts.read_buf);
        let limit = self.max_document_bytes;
        let room = u64::try_from(limit.saturating_sub(document.len())).unwrap_or(u64::MAX);
        // One byte more than the room tells "exactly at the limit" from "over it".
        let mut rest = parts.io.take(room.saturating_add(1));
        if let Err(error) = rest.read_to_end(&mut document).await {
            return Some(InputItem::error(
                Origin::Document,
                format!("reading the input failed: {error}"),
            ));
        }
        if document.len() > limit {
            return Some(InputItem::error(
                Origin::Document,
                format!("a JSON document longer than the limit of {limit} bytes"),
            ));
        }
        match parse(&document, Position::LineAndColumn) {
            Parsed::One(Err(error)) => {
                // `document` is the blank lines, the first line and its newline, then the rest.
                let rest_starts = self.lines_read - 1 + first_line.len() + 1;
                let rest = &document[rest_starts.min(document.len())..];
                if !ndjson_after_all(&first_line, rest) {
                    return Some(InputItem {
                        origin: Origin::Document,
                        plan: Err(error),
                    });
                }
                let rest = rest.to_vec();
                self.input = Input::Replay(FramedRead::new(
                    std::io::Cursor::new(rest),
                    PlanLines::new(self.max_line_bytes),
                ));
                let origin = Origin::Line(self.lines_read);
                match parse(&first_line, Position::Column) {
                    Parsed::One(plan) => Some(InputItem { origin, plan }),
                    Parsed::Many(values) => {
                        self.queue(values, Some(self.lines_read));
                        None
                    }
                }
            }
            Parsed::One(plan) => Some(InputItem {
                origin: Origin::Document,
                plan,
            }),
            Parsed::Many(values) => {
                self.queue(values, None);
                None
            }
        }
    }

    fn queue(&mut self, values: Vec<Value>, line: Option<usize>) {
        self.pending
            .extend(values.into_iter().enumerate().map(|(position, value)| {
                let origin = Origin::Element {
                    line,
                    index: position + 1,
                };
                (origin, value)
            }));
    }
}

/// Checks what the types cannot: id lengths and characters, value ranges and the task graph.
///
/// [`PlanReader::next`] calls it on every plan it parses; call it on plans made any other way.
pub fn check_plan(plan: &Plan) -> Result<(), PlanError> {
    if let Some(id) = &plan.id {
        check_id(id).map_err(|message| PlanError::at("id", message))?;
    }
    if let Some(priority) = plan.priority {
        if !PRIORITY_RANGE.contains(&priority) {
            return Err(PlanError::at(
                "priority",
                out_of_range(
                    (*PRIORITY_RANGE.start()).into(),
                    (*PRIORITY_RANGE.end()).into(),
                    priority.into(),
                ),
            ));
        }
    }
    let attempts = plan.options.max_review_attempts;
    if !MAX_REVIEW_ATTEMPTS_RANGE.contains(&attempts) {
        return Err(PlanError::at(
            "options.max_review_attempts",
            out_of_range(
                (*MAX_REVIEW_ATTEMPTS_RANGE.start()).into(),
                (*MAX_REVIEW_ATTEMPTS_RANGE.end()).into(),
                attempts.into(),
            ),
        ));
    }
    for (position, task) in plan.tasks.iter().enumerate() {
        check_id(&task.id)
            .map_err(|message| PlanError::at(format!("tasks[{position}].id"), message))?;
    }
    TaskGraph::new(&plan.tasks).map_err(|error| PlanError::at("tasks", error.to_string()))?;
    Ok(())
}

fn check_id(id: &str) -> Result<(), String> {
    let chars = id.chars().count();
    if chars == 0 {
        return Err("must not be empty".into());
    }
    if chars > MAX_ID_CHARS {
        return Err(format!(
            "must be at most {MAX_ID_CHARS} characters long, got {chars}"
        ));
    }
    if let Some(control) = id.chars().find(|c| c.is_control()) {
        return Err(format!(
            "must not contain control characters, found U+{:04X}",
            u32::from(control)
        ));
    }
    Ok(())
}

/// Whether an input that opened with `first_line` and does not parse as one document is
/// NDJSON with a broken first line: that line holds more than an opening bracket (the first
/// line of a pretty-printed document rarely does), and the next non-blank line is a complete
/// JSON value on its own (a line inside a pretty-printed document rarely is).
fn ndjson_after_all(first_line: &[u8], rest: &[u8]) -> bool {
    let opener_only = matches!(first_line.trim_ascii(), b"{" | b"[");
    let next = rest
        .split(|&byte| byte == b'\n')
        .map(<[u8]>::trim_ascii)
        .find(|line| !line.is_empty());
    !opener_only && next.is_some_and(|line| serde_json::from_slice::<IgnoredAny>(line).is_ok())
}

/// Whether `line` is the start of a JSON value that it does not finish.
fn opens_a_document(line: &[u8]) -> bool {
    matches!(
        serde_json::from_slice::<IgnoredAny>(line),
        Err(error) if error.classify() == Category::Eof
    )
}

/// How a JSON error gives its position: a line of NDJSON has only columns.
#[derive(Debug, Clone, Copy)]
enum Position {
    Column,
    LineAndColumn,
}

impl Position {
    fn describe(self, line: usize, column: usize) -> String {
        match self {
            Position::Column => format!("column {column}"),
            Position::LineAndColumn => format!("line {line}, column {column}"),
        }
    }
}

enum Parsed {
    One(Result<Plan, PlanError>),
    /// A JSON array, each element to become an item of its own.
    Many(Vec<Value>),
}

fn parse(text: &[u8], position: Position) -> Parsed {
    if let Err(error) = std::str::from_utf8(text) {
        let valid = &text[..error.valid_up_to()];
        let line = valid.iter().filter(|&&byte| byte == b'\n').count() + 1;
        let line_start = valid
            .iter()
            .rposition(|&byte| byte == b'\n')
            .map_or(0, |newline| newline + 1);
        let column = valid.len() - line_start + 1;
        let byte = text[error.valid_up_to()];
        return Parsed::One(Err(PlanError::new(format!(
            "not valid UTF-8: byte 0x{byte:02X} ({})",
            position.describe(line, column)
        ))));
    }
    // An object is parsed straight into a plan, which keeps serde_json's own checks (such as
    // duplicate fields) that going through a `Value` would lose.
    if text.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&b'{') {
        let mut deserializer = serde_json::Deserializer::from_slice(text);
        let plan = serde_path_to_error::deserialize::<_, Plan>(&mut deserializer)
            .map_err(|error| path_error(error, text, position))
            .and_then(|plan| {
                deserializer
                    .end()
                    .map_err(|error| json_error(None, &error, text, position))?;
                Ok(plan)
            })
            .and_then(checked);
        return Parsed::One(plan);
    }
    match serde_json::from_slice::<Value>(text) {
        Ok(Value::Array(values)) => Parsed::Many(values),
        Ok(other) => Parsed::One(Err(not_an_object(&other))),
        Err(error) => Parsed::One(Err(json_error(None, &error, text, position))),
    }
}

fn plan_from_value(value: Value) -> Result<Plan, PlanError> {
    if !value.is_object() {
        return Err(not_an_object(&value));
    }
    serde_path_to_error::deserialize::<_, Plan>(value)
        .map_err(|error| path_error(error, b"", Position::Column))
        .and_then(checked)
}

fn checked(plan: Plan) -> Result<Plan, PlanError> {
    check_plan(&plan)?;
    Ok(plan)
}

fn not_an_object(value: &Value) -> PlanError {
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    PlanError::new(format!("expected a JSON object (a work plan), got {kind}"))
}

fn path_error(
    error: serde_path_to_error::Error<serde_json::Error>,
    text: &[u8],
    position: Position,
) -> PlanError {
    let mut segments: Vec<&Segment> = error.path().iter().collect();
    // The path of an unknown field ends with that field, which serde's message names already
    // ("unknown field `x`, expected one of ..."); the object that holds it is the news.
    if error.inner().to_string().starts_with("unknown field `") {
        segments.pop();
    }
    json_error(field_path(&segments), error.inner(), text, position)
}

/// Writes a path as `tasks[2].depends_on`, the way `serde_path_to_error::Path` does.
fn field_path(segments: &[&Segment]) -> Option<String> {
    if segments.is_empty() {
        return None;
    }
    let mut path = String::new();
    for segment in segments {
        if !path.is_empty() && !matches!(segment, Segment::Seq { .. }) {
            path.push('.');
        }
        path.push_str(&segment.to_string());
    }
    Some(path)
}

/// Turns a serde_json error into a plan error. A syntax error gets its position (and no
/// field), and a hint when `text` shows a cause serde_json does not name; a data error gets
/// its field path (and no position, which would only point past the offending value).
fn json_error(
    field: Option<String>,
    error: &serde_json::Error,
    text: &[u8],
    position: Position,
) -> PlanError {
    // serde_json appends " at line L column C" to every message that has a position; on a
    // line of NDJSON "line 1" is wrong, so the suffix goes and the position is given anew.
    let full = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    let message = full.strip_suffix(&suffix).unwrap_or(&full);
    match error.classify() {
        Category::Syntax | Category::Eof => {
            let mut described = format!(
                "not valid JSON: {message} ({})",
                position.describe(error.line(), error.column())
            );
            if let Some(hint) = syntax_hint(text, error.line(), error.column()) {
                described.push_str("; ");
                described.push_str(&hint);
            }
            PlanError::new(described)
        }
        Category::Data => match field {
            Some(field) => PlanError::at(field, message),
            None => PlanError::new(message),
        },
        Category::Io => PlanError::new(format!("reading the input failed: {message}")),
    }
}

/// What a reader would not guess from serde_json's message about the syntax error at `line`
/// and `column` (both from 1) of `text`: a NaN or Infinity, a control character such as NUL,
/// or a carriage return taken for a line end.
fn syntax_hint(text: &[u8], line: usize, column: usize) -> Option<String> {
    let line_text = text
        .split(|&byte| byte == b'\n')
        .nth(line.checked_sub(1)?)?;
    let at = column.checked_sub(1)?;
    let &byte = line_text.get(at)?;
    if byte.is_ascii_control() && !byte.is_ascii_whitespace() {
        return Some(format!("found the control character U+{byte:04X}"));
    }
    let in_word = |byte: &u8| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'+' | b'.');
    let start = line_text[..at]
        .iter()
        .rposition(|byte| !in_word(byte))
        .map_or(0, |before| before + 1);
    let end = line_text[at..]
        .iter()
        .position(|byte| !in_word(byte))
        .map_or(line_text.len(), |after| at + after);
    let word = String::from_utf8_lossy(&line_text[start..end]).to_ascii_lowercase();
    if matches!(
        word.trim_start_matches(['-', '+']),
        "nan" | "infinity" | "inf"
    ) {
        return Some("NaN and Infinity are not numbers in JSON".into());
    }
    if line_text[..at].contains(&b'\r') {
        return Some("a carriage return alone does not end a line".into());
    }
    None
}

/// One line of input as the plan reader sees it.
#[derive(Debug)]
enum Frame {
    Line(BytesMut),
    /// A line over the limit, already dropped.
    TooLong,
}

/// [`LineCodec`] adapted to plans: a line over the limit is a frame of its own rather than a
/// stream error, so reading goes on with the next line; and a last line without a newline is
/// a line like any other.
#[derive(Debug)]
struct PlanLines {
    lines: LineCodec,
    max_line_bytes: usize,
    /// Skipping the rest of an over-long line that has already been reported.
    discarding: bool,
}

impl PlanLines {
    fn new(max_line_bytes: usize) -> Self {
        Self {
            lines: LineCodec::new(max_line_bytes),
            max_line_bytes,
            discarding: false,
        }
    }
}

impl Decoder for PlanLines {
    type Item = Frame;
    type Error = io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, io::Error> {
        if self.discarding {
            match buf.iter().position(|&byte| byte == b'\n') {
                Some(newline) => {
                    buf.advance(newline + 1);
                    self.discarding = false;
                }
                None => {
                    buf.clear();
                    return Ok(None);
                }
            }
        }
        let ends_with_newline = buf.last() == Some(&b'\n');
        match self.lines.decode(buf) {
            Ok(line) => Ok(line.map(Frame::Line)),
            Err(LineError::TooLong { .. }) => {
                // `LineCodec` drops an over-long line as soon as it has more than the limit,
                // emptying the buffer, and the rest of that line is still to come. It empties
                // a buffer that ends in a newline only when that newline ended the long line.
                self.discarding = buf.is_empty() && !ends_with_newline;
                Ok(Some(Frame::TooLong))
            }
            Err(LineError::Io(error)) => Err(error),
            Err(error @ LineError::PartialLineAtEof { .. }) => Err(io::Error::other(error)),
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, io::Error> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        if buf.is_empty() {
            return Ok(None);
        }
        // `decode` found no newline and no excess, so this is a last line within the limit.
        let mut line = buf.split();
        if line.last() == Some(&b'\r') {
            line.truncate(line.len() - 1);
        }
        // The inner codec remembers how far it scanned the bytes just taken; start afresh.
        self.lines = LineCodec::new(self.max_line_bytes);
        Ok(Some(Frame::Line(line)))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};
    use std::time::Duration;

    use tokio::io::ReadBuf;

    use super::*;

    const LIMIT: usize = 1024;

    /// Every item of `input`, as `(origin, Ok(plan id or "-") or Err(error text))`.
    async fn read_all(
        input: &[u8],
        max_line_bytes: usize,
    ) -> Vec<(String, Result<String, String>)> {
        collect(PlanReader::new(input, max_line_bytes)).await
    }

    async fn collect<R: AsyncRead + Unpin>(
        mut reader: PlanReader<R>,
    ) -> Vec<(String, Result<String, String>)> {
        let mut items = Vec::new();
        let reading = async {
            while let Some(item) = reader.next().await {
                let plan = item
                    .plan
                    .map(|plan| plan.id.unwrap_or_else(|| "-".into()))
                    .map_err(|error| error.to_string());
                items.push((item.origin.to_string(), plan));
            }
        };
        tokio::time::timeout(Duration::from_secs(10), reading)
            .await
            .expect("reading finishes");
        items
    }

    fn ok(origin: &str, id: &str) -> (String, Result<String, String>) {
        (origin.to_owned(), Ok(id.to_owned()))
    }

    fn err(origin: &str, error: &str) -> (String, Result<String, String>) {
        (origin.to_owned(), Err(error.to_owned()))
    }

    async fn only_error(input: &str) -> String {
        let items = read_all(input.as_bytes(), LIMIT).await;
        assert_eq!(items.len(), 1, "{items:?}");
        items[0].1.clone().expect_err("an error")
    }

    /// A reader that hands out at most `chunk` bytes per read and counts what it handed out.
    struct Trickle {
        data: Vec<u8>,
        chunk: usize,
        served: Arc<AtomicUsize>,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let at = self.served.load(Ordering::SeqCst);
            let end = self
                .data
                .len()
                .min(at.saturating_add(self.chunk))
                .min(at + buf.remaining());
            buf.put_slice(&self.data[at..end]);
            self.served.store(end, Ordering::SeqCst);
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn ndjson_with_good_bad_and_blank_lines_reports_exact_line_numbers() {
        let input = concat!(
            "{\"id\": \"one\", \"prompt\": \"a\"}\n",
            "\n",
            "   \n",
            "{\"id\": \"two\", \"prompt\": 5}\n",
            "{\"prompt\": \"no id\"}\n",
            "not json\n",
            "\n",
            "{\"id\": \"three\"}\n",
        );
        assert_eq!(
            read_all(input.as_bytes(), LIMIT).await,
            [
                ok("line 1", "one"),
                err(
                    "line 4",
                    "field `prompt`: invalid type: integer `5`, expected a string"
                ),
                ok("line 5", "-"),
                err("line 6", "not valid JSON: expected ident (column 2)"),
                ok("line 8", "three"),
            ]
        );
    }

    #[tokio::test]
    async fn crlf_line_endings_are_accepted() {
        let input = b"{\"id\": \"a\"}\r\n\r\n{\"id\": \"b\"}\r\n";
        assert_eq!(
            read_all(input, LIMIT).await,
            [ok("line 1", "a"), ok("line 3", "b")]
        );
    }

    #[tokio::test]
    async fn a_pretty_printed_object_is_one_plan_from_the_document() {
        let input = "\n{\n  \"id\": \"pretty\",\n  \"prompt\": \"build\",\n  \"tasks\": [\n    {\"id\": \"a\", \"prompt\": \"x\"}\n  ]\n}\n";
        let mut reader = PlanReader::new(input.as_bytes(), LIMIT);
        let item = reader.next().await.expect("one item");
        assert_eq!(item.origin, Origin::Document);
        let plan = item.plan.expect("a valid plan");
        assert_eq!(plan.id(), "pretty");
        assert_eq!(plan.tasks[0].id, "a");
        assert!(reader.next().await.is_none());
    }

    #[tokio::test]
    async fn a_syntax_error_in_a_document_gives_its_line_and_column() {
        let input = "\n{\n  \"id\": \"pretty\"\n  \"prompt\": \"build\"\n}\n";
        assert_eq!(
            only_error(input).await,
            "not valid JSON: expected `,` or `}` (line 4, column 3)"
        );
        assert_eq!(
            only_error("{\n").await,
            "not valid JSON: EOF while parsing an object (line 2, column 0)"
        );
    }

    #[tokio::test]
    async fn an_array_document_yields_one_item_per_element() {
        let input = "[\n  {\"id\": \"a\"},\n  {\"id\": \"b\", \"priority\": \"high\"},\n  {\"id\": \"c\"}\n]\n";
        assert_eq!(
            read_all(input.as_bytes(), LIMIT).await,
            [
                ok("element 1", "a"),
                err(
                    "element 2",
                    "field `priority`: invalid type: string \"high\", expected an integer between 0 and 10"
                ),
                ok("element 3", "c"),
            ]
        );
    }

    #[tokio::test]
    async fn a_one_line_array_yields_its_elements_and_later_lines_are_ndjson_again() {
        let input =
            "[{\"id\": \"a\"}, 7, {\"id\": \"c\"}]\n{\"id\": \"d\"}\n[]\n[{\"id\": \"e\"}]\n";
        assert_eq!(
            read_all(input.as_bytes(), LIMIT).await,
            [
                ok("line 1, element 1", "a"),
                err(
                    "line 1, element 2",
                    "expected a JSON object (a work plan), got a number"
                ),
                ok("line 1, element 3", "c"),
                ok("line 2", "d"),
                ok("line 4, element 1", "e"),
            ]
        );
    }

    #[tokio::test]
    async fn a_value_that_is_not_an_object_is_named() {
        assert_eq!(
            only_error("\"just a prompt\"\n").await,
            "expected a JSON object (a work plan), got a string"
        );
        let items = read_all(b"{\"id\": \"a\"}\nnull\n42\n", LIMIT).await;
        assert_eq!(
            items[1..],
            [
                err("line 2", "expected a JSON object (a work plan), got null"),
                err(
                    "line 3",
                    "expected a JSON object (a work plan), got a number"
                ),
            ]
        );
        assert_eq!(
            only_error("true\n").await,
            "expected a JSON object (a work plan), got a boolean"
        );
    }

    #[tokio::test]
    async fn wrong_types_name_the_field_path() {
        let cases = [
            (
                r#"{"tasks": [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "p"}, {"id": "c", "prompt": "p", "depends_on": "a"}]}"#,
                "field `tasks[2].depends_on`: invalid type: string \"a\", expected a list of strings",
            ),
            (
                r#"{"tech_stack": ["rust", 5]}"#,
                "field `tech_stack[1]`: invalid type: integer `5`, expected a string",
            ),
            (
                r#"{"success_criteria": {"a": 1}}"#,
                "field `success_criteria`: invalid type: map, expected a string or a list of strings",
            ),
            (
                r#"{"options": {"max_review_attempts": 11}}"#,
                "field `options.max_review_attempts`: must be between 1 and 10, got 11",
            ),
            (
                r#"{"priority": 12}"#,
                "field `priority`: must be between 0 and 10, got 12",
            ),
            (
                r#"{"tasks": [{"id": "a"}]}"#,
                "field `tasks[0]`: missing field `prompt`",
            ),
            (
                r#"{"tasks": {"id": "a"}}"#,
                "field `tasks`: invalid type: map, expected a sequence",
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(only_error(&format!("{line}\n")).await, expected, "{line}");
        }
    }

    #[tokio::test]
    async fn an_unknown_field_is_named_with_the_allowed_ones() {
        assert_eq!(
            only_error("{\"prompt\": \"p\", \"sucess_criteria\": \"x\"}\n").await,
            "unknown field `sucess_criteria`, expected one of `id`, `prompt`, `tech_stack`, \
             `success_criteria`, `constraints`, `scope`, `deployment`, `priority`, `tasks`, \
             `options`"
        );
        assert_eq!(
            only_error("{\"tasks\": [{\"id\": \"a\", \"prompt\": \"p\", \"needs\": []}]}\n").await,
            "field `tasks[0]`: unknown field `needs`, expected one of `id`, `prompt`, \
             `depends_on`, `tech_stack`, `success_criteria`, `constraints`"
        );
    }

    #[tokio::test]
    async fn a_duplicate_field_and_trailing_garbage_are_rejected() {
        assert_eq!(
            only_error("{\"id\": \"a\", \"id\": \"b\"}\n").await,
            "duplicate field `id`"
        );
        assert_eq!(
            only_error("{\"id\": \"a\"} x\n").await,
            "not valid JSON: trailing characters (column 13)"
        );
    }

    #[tokio::test]
    async fn cycles_are_rejected_naming_the_cycle() {
        let line = r#"{"tasks": [{"id": "b", "prompt": "p", "depends_on": ["a"]}, {"id": "a", "prompt": "p", "depends_on": ["b"]}]}"#;
        assert_eq!(
            only_error(&format!("{line}\n")).await,
            "field `tasks`: tasks form a cycle: a -> b -> a"
        );
    }

    #[tokio::test]
    async fn bad_ids_are_rejected_naming_the_field() {
        let long = "x".repeat(MAX_ID_CHARS + 1);
        assert_eq!(
            only_error(&format!("{{\"id\": \"{long}\"}}\n")).await,
            "field `id`: must be at most 256 characters long, got 257"
        );
        assert_eq!(
            only_error("{\"id\": \"\"}\n").await,
            "field `id`: must not be empty"
        );
        assert_eq!(
            only_error("{\"tasks\": [{\"id\": \"a\\tb\", \"prompt\": \"p\"}]}\n").await,
            "field `tasks[0].id`: must not contain control characters, found U+0009"
        );
        let ok_long = "é".repeat(MAX_ID_CHARS);
        let items = read_all(format!("{{\"id\": \"{ok_long}\"}}\n").as_bytes(), LIMIT).await;
        assert!(items[0].1.is_ok(), "256 characters (512 bytes) are allowed");
        assert_eq!(
            only_error(r#"{"tasks": [{"id": "a", "prompt": "p"}, {"id": "a", "prompt": "q"}]}"#)
                .await,
            "field `tasks`: duplicate task id \"a\""
        );
    }

    #[test]
    fn check_plan_catches_values_that_did_not_come_through_parsing() {
        let mut plan = Plan {
            priority: Some(12),
            ..Plan::default()
        };
        assert_eq!(
            check_plan(&plan).expect_err("out of range").to_string(),
            "field `priority`: must be between 0 and 10, got 12"
        );
        plan.priority = None;
        plan.options.max_review_attempts = 0;
        assert_eq!(
            check_plan(&plan).expect_err("out of range").to_string(),
            "field `options.max_review_attempts`: must be between 1 and 10, got 0"
        );
        plan.options.max_review_attempts = 10;
        assert_eq!(check_plan(&plan), Ok(()));
    }

    #[tokio::test]
    async fn an_oversize_line_is_an_error_and_reading_goes_on_with_the_next_line() {
        let long = format!("{{\"id\": \"{}\"}}", "x".repeat(100));
        let input = format!("{{\"id\": \"a\"}}\n{long}\n{{\"id\": \"b\"}}\n{long}\n{long}");
        let expected = [
            ok("line 1", "a"),
            err("line 2", "longer than the limit of 40 bytes"),
            ok("line 3", "b"),
            err("line 4", "longer than the limit of 40 bytes"),
            err("line 5", "longer than the limit of 40 bytes"),
        ];
        assert_eq!(read_all(input.as_bytes(), 40).await, expected);
        // Read in small pieces, the long lines are dropped before their newline arrives.
        for chunk in [1, 7, 39, 41, 64] {
            let reader = Trickle {
                data: input.clone().into_bytes(),
                chunk,
                served: Arc::default(),
            };
            assert_eq!(
                collect(PlanReader::new(reader, 40)).await,
                expected,
                "chunks of {chunk}"
            );
        }
    }

    #[tokio::test]
    async fn a_line_exactly_at_the_limit_is_accepted() {
        let line = "{\"id\": \"abcdef\"}";
        let input = format!("{line}\n{line}");
        assert_eq!(
            read_all(input.as_bytes(), line.len()).await,
            [ok("line 1", "abcdef"), ok("line 2", "abcdef")]
        );
    }

    #[tokio::test]
    async fn a_final_line_without_a_newline_is_a_plan() {
        assert_eq!(
            read_all(b"{\"id\": \"a\"}\n{\"id\": \"b\"}", LIMIT).await,
            [ok("line 1", "a"), ok("line 2", "b")]
        );
        assert_eq!(
            read_all(b"{\"id\": \"only\"}", LIMIT).await,
            [ok("line 1", "only")]
        );
        assert_eq!(read_all(b"", LIMIT).await, []);
        assert_eq!(read_all(b"\n \n", LIMIT).await, []);
    }

    #[tokio::test]
    async fn invalid_utf8_is_an_error_for_that_line_only() {
        let input = b"{\"id\": \"a\"}\n{\"id\": \"\xff\"}\n{\"id\": \"c\"}\n";
        assert_eq!(
            read_all(input, LIMIT).await,
            [
                ok("line 1", "a"),
                err("line 2", "not valid UTF-8: byte 0xFF (column 9)"),
                ok("line 3", "c"),
            ]
        );
    }

    #[tokio::test]
    async fn syntax_errors_with_an_unobvious_cause_say_what_it_is() {
        for (line, expected) in [
            (
                "{\"priority\": NaN}",
                "not valid JSON: expected value (column 14); NaN and Infinity are not numbers in JSON",
            ),
            (
                "{\"priority\": -Infinity}",
                "not valid JSON: invalid number (column 15); NaN and Infinity are not numbers in JSON",
            ),
            (
                "{\"priority\": nan}",
                "not valid JSON: expected ident (column 15); NaN and Infinity are not numbers in JSON",
            ),
            (
                "\u{0}{\"id\": \"a\"}",
                "not valid JSON: expected value (column 1); found the control character U+0000",
            ),
            (
                "{\"id\": \"a\"}\r{\"id\": \"b\"}",
                "not valid JSON: trailing characters (column 13); a carriage return alone does not end a line",
            ),
            // Ordinary mistakes get no hint.
            (
                "{\"id\": nope}",
                "not valid JSON: expected ident (column 9)",
            ),
        ] {
            assert_eq!(only_error(&format!("{line}\n")).await, expected, "{line:?}");
        }
        assert_eq!(
            only_error("{\n  \"priority\": Infinity\n}\n").await,
            "not valid JSON: expected value (line 2, column 15); NaN and Infinity are not numbers in JSON"
        );
    }

    #[tokio::test]
    async fn an_error_quoting_a_huge_value_is_cut_short() {
        let huge = "v".repeat(100_000);
        for line in [
            format!("{{\"priority\": \"{huge}\"}}"),
            format!("{{\"{huge}\": 1}}"),
        ] {
            let items = read_all(format!("{line}\n").as_bytes(), 1 << 20).await;
            let error = items[0].1.clone().expect_err("an error");
            assert!(
                error.chars().count() <= 2 * MAX_ERROR_CHARS + 20,
                "{}",
                error.len()
            );
            assert!(error.ends_with('…'), "{error}");
        }
    }

    #[tokio::test]
    async fn a_truncated_first_line_is_its_own_error_and_the_lines_after_it_still_count() {
        let input = "\n{\"id\": \"cut\", \"prompt\": \"ab\n\n{\"id\": \"b\"}\nnot json\n[{\"id\": \"c\"}]\n";
        assert_eq!(
            read_all(input.as_bytes(), LIMIT).await,
            [
                err(
                    "line 2",
                    "not valid JSON: EOF while parsing a string (column 27)"
                ),
                ok("line 4", "b"),
                err("line 5", "not valid JSON: expected ident (column 2)"),
                ok("line 6, element 1", "c"),
            ]
        );
        // A pretty-printed document with a mistake stays one document: its first line is a
        // lone bracket, or the line after it is no complete value.
        assert_eq!(
            only_error("{\n\"id\": \"a\" \"b\"\n}\n").await,
            "not valid JSON: expected `,` or `}` (line 2, column 11)"
        );
        assert_eq!(
            only_error("{\"id\": \"a\",\n\"prompt\" \"x\"}\n").await,
            "not valid JSON: expected `:` (line 2, column 10)"
        );
    }

    #[tokio::test]
    async fn a_document_over_the_size_limit_is_one_error() {
        let input = format!("{{\n\"prompt\": \"{}\"\n}}\n", "x".repeat(200));
        let reader = PlanReader::new(input.as_bytes(), LIMIT).with_max_document_bytes(100);
        assert_eq!(
            collect(reader).await,
            [err(
                "document",
                "a JSON document longer than the limit of 100 bytes"
            )]
        );
        let reader = PlanReader::new(input.as_bytes(), LIMIT).with_max_document_bytes(input.len());
        assert_eq!(collect(reader).await, [ok("document", "-")]);
    }

    #[tokio::test]
    async fn a_thousand_lines_are_read_only_as_far_as_they_are_asked_for() {
        let line = format!("{{\"prompt\": \"{}\"}}\n", "p".repeat(100));
        let input = line.repeat(1000);
        let served = Arc::new(AtomicUsize::new(0));
        let reader = Trickle {
            data: input.clone().into_bytes(),
            chunk: usize::MAX,
            served: Arc::clone(&served),
        };
        let mut reader = PlanReader::new(reader, 4096);
        let first = reader.next().await.expect("a first item");
        assert_eq!(first.origin, Origin::Line(1));
        let read = served.load(Ordering::SeqCst);
        assert!(read < 16 * 1024, "read {read} of {} bytes", input.len());
        let mut count = 1;
        while let Some(item) = reader.next().await {
            count += 1;
            assert_eq!(item.origin, Origin::Line(count));
            assert!(item.plan.is_ok());
        }
        assert_eq!(count, 1000);
        assert_eq!(served.load(Ordering::SeqCst), input.len());
    }

    /// The shared examples in `protocol/examples/plans`: every `valid-*` file yields only
    /// plans, and every `invalid-*` file yields exactly the errors its README row states.
    #[tokio::test]
    async fn the_example_plans_read_as_their_readme_says() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("protocol/examples/plans");
        let readme = std::fs::read_to_string(dir.join("README.md")).expect("README.md");
        let mut expected: Vec<(String, String)> = readme
            .lines()
            .filter_map(|row| {
                let row = row.strip_prefix("| `")?.strip_suffix(" |")?;
                let mut cells = row.splitn(3, " | ");
                let file = cells.next()?.strip_suffix('`')?;
                let origin = cells.next()?;
                let error = cells.next()?;
                Some((file.to_owned(), format!("{origin}: {error}")))
            })
            .collect();
        expected.sort();
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("examples directory")
            .map(|entry| entry.expect("directory entry").path())
            .filter(|path| path.extension().is_some_and(|ext| ext != "md"))
            .collect();
        files.sort();
        let mut valid_plans = 0;
        let mut seen = Vec::new();
        for path in files {
            let name = path
                .file_name()
                .and_then(|name| name.to_str())
                .expect("a UTF-8 file name")
                .to_owned();
            let file = tokio::fs::File::open(&path).await.expect("example opens");
            let items = collect(PlanReader::new(file, LIMIT)).await;
            assert!(!items.is_empty(), "{name} holds no plan");
            for (origin, plan) in items {
                match plan {
                    Ok(_) if name.starts_with("valid-") => valid_plans += 1,
                    Err(error) if name.starts_with("invalid-") => {
                        seen.push((name.clone(), format!("{origin}: {error}")));
                    }
                    other => panic!("{name} {origin}: unexpected {other:?}"),
                }
            }
        }
        seen.sort();
        assert_eq!(seen, expected);
        assert!(valid_plans >= 3);
    }

    #[test]
    fn an_origin_survives_travelling_as_line_and_element() {
        for origin in [
            Origin::Line(7),
            Origin::Element {
                line: Some(3),
                index: 2,
            },
            Origin::Element {
                line: None,
                index: 5,
            },
            Origin::Document,
        ] {
            let position = origin.position();
            assert_eq!(Origin::from_parts(position.line, position.element), origin);
        }
    }
}
