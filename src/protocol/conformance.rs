//! Checks this crate's decoder against the shared examples in `protocol/examples`, which the
//! Python tests check too, and the codec against framing edge cases.

use std::path::{Path, PathBuf};

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use super::*;

fn examples(kind: &str) -> Vec<(PathBuf, usize, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("protocol/examples")
        .join(kind);
    let mut lines = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("{} is readable: {error}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "ndjson"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("example file is UTF-8");
        for (index, line) in text.lines().enumerate() {
            if !line.trim().is_empty() {
                lines.push((file.clone(), index + 1, line.to_owned()));
            }
        }
    }
    assert!(!lines.is_empty(), "no examples in {}", dir.display());
    lines
}

fn direction(file: &Path) -> &'static str {
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .expect("file name");
    if name.starts_with("worker-") {
        "worker"
    } else if name.starts_with("supervisor-") {
        "supervisor"
    } else {
        panic!("example file {name} must start with worker- or supervisor-")
    }
}

#[test]
fn the_version_file_matches_the_crate_constant() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("protocol/VERSION");
    let text = std::fs::read_to_string(path).expect("protocol/VERSION exists");
    assert_eq!(
        text.trim().parse::<u32>().expect("a number"),
        PROTOCOL_VERSION
    );
}

#[test]
fn every_valid_example_decodes_and_survives_a_round_trip() {
    for (file, line_number, line) in examples("valid") {
        let place = format!("{}:{line_number}", file.display());
        match direction(&file) {
            "worker" => match classify::<WorkerMessage>(line.as_bytes(), WorkerMessage::TYPES) {
                Inbound::Message(message) => {
                    let encoded = encode_line(&message, DEFAULT_MAX_LINE_BYTES).expect("encodes");
                    let again = classify::<WorkerMessage>(&encoded, WorkerMessage::TYPES);
                    assert!(
                        matches!(again, Inbound::Message(m) if m == message),
                        "{place}: round trip"
                    );
                }
                other => panic!("{place}: valid worker example rejected: {other:?}"),
            },
            _ => match classify::<SupervisorMessage>(line.as_bytes(), SupervisorMessage::TYPES) {
                Inbound::Message(message) => {
                    let encoded = encode_line(&message, DEFAULT_MAX_LINE_BYTES).expect("encodes");
                    let again = classify::<SupervisorMessage>(&encoded, SupervisorMessage::TYPES);
                    assert!(
                        matches!(again, Inbound::Message(m) if m == message),
                        "{place}: round trip"
                    );
                }
                other => panic!("{place}: valid supervisor example rejected: {other:?}"),
            },
        }
    }
}

#[test]
fn every_invalid_example_is_a_protocol_violation() {
    for (file, line_number, line) in examples("invalid") {
        let place = format!("{}:{line_number}", file.display());
        let violation = match direction(&file) {
            "worker" => {
                matches!(
                    classify::<WorkerMessage>(line.as_bytes(), WorkerMessage::TYPES),
                    Inbound::Violation { .. }
                )
            }
            _ => matches!(
                classify::<SupervisorMessage>(line.as_bytes(), SupervisorMessage::TYPES),
                Inbound::Violation { .. }
            ),
        };
        assert!(violation, "{place}: invalid example accepted: {line}");
    }
}

#[test]
fn stray_blank_and_unknown_lines_are_not_violations() {
    let classify_worker =
        |line: &str| classify::<WorkerMessage>(line.as_bytes(), WorkerMessage::TYPES);
    assert!(matches!(classify_worker("   "), Inbound::Blank));
    assert!(
        matches!(classify_worker("Loading model..."), Inbound::Stray { preview } if preview == "Loading model...")
    );
    assert!(
        matches!(classify_worker(r#"{"type":"telemetry","x":1}"#), Inbound::Unknown { kind } if kind == "telemetry")
    );
    assert!(matches!(
        classify_worker(r#"{"no_type":1}"#),
        Inbound::Violation { .. }
    ));
}

#[test]
fn reasons_and_type_names_quoting_huge_values_are_cut_short() {
    let huge = "x".repeat(1_000_000);
    let classify_worker =
        |line: String| classify::<WorkerMessage>(line.as_bytes(), WorkerMessage::TYPES);
    let Inbound::Violation { reason, preview } =
        classify_worker(format!(r#"{{"type":"pong","nonce":"{huge}"}}"#))
    else {
        panic!("a string nonce is a violation");
    };
    assert!(
        reason.starts_with("invalid `pong` message: invalid type: string"),
        "{reason}"
    );
    assert!(
        reason.chars().count() <= codec::MAX_REASON_CHARS + 1,
        "{}",
        reason.len()
    );
    assert!(preview.len() < 300, "{}", preview.len());
    let Inbound::Unknown { kind } = classify_worker(format!(r#"{{"type":"{huge}"}}"#)) else {
        panic!("an unknown type");
    };
    assert!(
        kind.chars().count() <= codec::MAX_REASON_CHARS + 1,
        "{}",
        kind.len()
    );
}

#[test]
fn a_response_must_carry_exactly_one_of_result_and_error() {
    let decode = |line: &str| classify::<WorkerMessage>(line.as_bytes(), WorkerMessage::TYPES);
    let null_result = decode(r#"{"type":"response","id":"a","result":null}"#);
    assert!(matches!(
        null_result,
        Inbound::Message(WorkerMessage::Response(Response {
            outcome: Outcome::Result(serde_json::Value::Null),
            ..
        }))
    ));
    assert!(matches!(
        decode(r#"{"type":"response","id":"a"}"#),
        Inbound::Violation { .. }
    ));
    let both = r#"{"type":"response","id":"a","result":1,"error":{"code":"internal","message":"x","retryable":false}}"#;
    assert!(matches!(decode(both), Inbound::Violation { .. }));
}

#[test]
fn the_codec_splits_lines_strips_crlf_and_reports_partial_lines_at_eof() {
    let mut codec = LineCodec::new(1024);
    let mut buf = BytesMut::from(&b"one\r\ntwo\nthr"[..]);
    assert_eq!(
        codec.decode(&mut buf).expect("ok").as_deref(),
        Some(&b"one"[..])
    );
    assert_eq!(
        codec.decode(&mut buf).expect("ok").as_deref(),
        Some(&b"two"[..])
    );
    assert_eq!(codec.decode(&mut buf).expect("ok"), None);
    buf.extend_from_slice(b"ee\n");
    assert_eq!(
        codec.decode(&mut buf).expect("ok").as_deref(),
        Some(&b"three"[..])
    );
    buf.extend_from_slice(b"cut");
    assert!(matches!(
        codec.decode_eof(&mut buf),
        Err(LineError::PartialLineAtEof { bytes: 3 })
    ));
    assert!(matches!(codec.decode_eof(&mut BytesMut::new()), Ok(None)));
}

/// Found by the property test of the codec: a line at the limit whose `\r` arrived in one
/// read and its `\n` in the next was taken for a line over the limit.
#[test]
fn a_line_at_the_limit_ending_in_crlf_split_between_reads_is_accepted() {
    let mut codec = LineCodec::new(4);
    let mut buf = BytesMut::from(&b"abcd\r"[..]);
    assert!(codec.decode(&mut buf).expect("no error yet").is_none());
    buf.extend_from_slice(b"\nef\r");
    assert_eq!(
        &codec.decode(&mut buf).expect("a line").expect("a line")[..],
        b"abcd"
    );
    assert!(codec.decode(&mut buf).expect("no error yet").is_none());
    buf.extend_from_slice(b"x");
    assert!(matches!(
        codec.decode(&mut buf),
        Err(LineError::TooLong { limit: 4 }) | Ok(None)
    ));
    let mut buf = BytesMut::from(&b"abcd\rx"[..]);
    assert!(matches!(
        LineCodec::new(4).decode(&mut buf),
        Err(LineError::TooLong { limit: 4 })
    ));
}

#[test]
fn the_codec_fails_an_oversize_line_before_its_newline_arrives() {
    let mut codec = LineCodec::new(8);
    let mut buf = BytesMut::from(&b"0123456789"[..]);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(LineError::TooLong { limit: 8 })
    ));
    let mut codec = LineCodec::new(8);
    let mut buf = BytesMut::from(&b"012345678\n"[..]);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(LineError::TooLong { limit: 8 })
    ));
    assert!(encode_line(&SupervisorMessage::Ping(Heartbeat { nonce: 1 }), 8).is_err());
}

#[test]
fn required_nullable_fields_must_be_present_as_the_schema_says() {
    let decode = |line: &str| classify::<WorkerMessage>(line.as_bytes(), WorkerMessage::TYPES);
    let hello = r#"{"type":"hello","protocol":1,"role":"executor","pid":7,"python":"3.11","package":"0.1.0""#;
    assert!(matches!(
        decode(&format!(r#"{hello},"anthropic":null,"provider":null}}"#)),
        Inbound::Message(_)
    ));
    assert!(matches!(
        decode(&format!(r#"{hello},"provider":null}}"#)),
        Inbound::Violation { .. }
    ));
    assert!(matches!(
        decode(r#"{"type":"ready"}"#),
        Inbound::Violation { .. }
    ));
    let result_beside_null_error = r#"{"type":"response","id":"a","result":1,"error":null}"#;
    assert!(matches!(
        decode(result_beside_null_error),
        Inbound::Violation { .. }
    ));
}
