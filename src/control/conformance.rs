//! Checks the control protocol's decoders against the example lines in
//! `protocol/control/examples`, which `tests/it/control.rs` also checks against the schemas.

use std::path::{Path, PathBuf};

use super::protocol::{
    CONTROL_PROTOCOL_VERSION, Request, Response, decode_request, decode_response, encode_line,
};

fn protocol_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("protocol/control")
}

/// Every non-blank line of the example files of `kind` (`valid`, `invalid`) whose names start
/// with `direction` (`client`, `server`), with its place.
fn examples(kind: &str, direction: &str) -> Vec<(String, String)> {
    let dir = protocol_dir().join("examples").join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("{} is readable: {error}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| {
            path.extension().is_some_and(|ext| ext == "ndjson")
                && path
                    .file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with(&format!("{direction}-")))
        })
        .collect();
    files.sort();
    let mut lines = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("example file is UTF-8");
        for (index, line) in text.lines().enumerate() {
            if !line.trim().is_empty() {
                lines.push((format!("{}:{}", file.display(), index + 1), line.to_owned()));
            }
        }
    }
    assert!(
        !lines.is_empty(),
        "no {kind} {direction} examples in {}",
        dir.display()
    );
    lines
}

#[test]
fn every_valid_request_decodes_and_survives_a_round_trip() {
    for (place, line) in examples("valid", "client") {
        let request = decode_request(line.as_bytes())
            .unwrap_or_else(|error| panic!("{place}: valid request refused: {error}"));
        let encoded = encode_line(&request).expect("encodes");
        assert_eq!(decode_request(&encoded), Ok(request), "{place}: round trip");
    }
}

#[test]
fn every_invalid_request_is_refused() {
    for (place, line) in examples("invalid", "client") {
        if let Ok(request) = decode_request(line.as_bytes()) {
            panic!("{place}: invalid request accepted as {request:?}");
        }
    }
}

#[test]
fn every_valid_answer_decodes_and_survives_a_round_trip() {
    for (place, line) in examples("valid", "server") {
        let response = decode_response(line.as_bytes())
            .unwrap_or_else(|error| panic!("{place}: valid answer refused: {error}"));
        let encoded = encode_line(&response).expect("encodes");
        let again = decode_response(&encoded).expect("decodes again");
        assert_eq!(again, response, "{place}: round trip");
    }
}

#[test]
fn every_invalid_answer_is_refused() {
    for (place, line) in examples("invalid", "server") {
        if let Ok(response) = decode_response(line.as_bytes()) {
            panic!("{place}: invalid answer accepted as {response:?}");
        }
    }
}

#[test]
fn every_request_type_has_a_valid_example_and_is_in_the_schema() {
    let valid = examples("valid", "client");
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(protocol_dir().join("request.schema.json"))
            .expect("request schema"),
    )
    .expect("the request schema is JSON");
    for kind in Request::TYPES {
        let tag = format!("\"type\":\"{kind}\"");
        assert!(
            valid.iter().any(|(_, line)| line.contains(&tag)),
            "no valid example of `{kind}`"
        );
        assert_eq!(
            schema["$defs"][kind]["properties"]["type"]["const"], *kind,
            "`{kind}` is missing from request.schema.json"
        );
    }
    assert_eq!(
        schema["$defs"]["version"]["const"],
        CONTROL_PROTOCOL_VERSION
    );
}

#[test]
fn every_answer_type_has_a_valid_example() {
    let valid: Vec<Response> = examples("valid", "server")
        .iter()
        .map(|(_, line)| decode_response(line.as_bytes()).expect("valid"))
        .collect();
    let kinds = [
        "agents", "outcome", "accepted", "admitted", "event", "log", "result", "missed", "end",
        "error",
    ];
    for kind in kinds {
        assert!(
            valid.iter().any(|response| {
                serde_json::to_value(response).expect("serialises")["type"] == kind
            }),
            "no valid example of `{kind}`"
        );
    }
}
