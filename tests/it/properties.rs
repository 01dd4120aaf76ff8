//! Property tests of the three parsers that take outside input: the plan reader (stdin), the
//! protocol codec (worker stdout) and the config parser (TOML).
//!
//! Each property runs `PROPTEST_CASES` cases, by default a number small enough that all of
//! them take a few seconds, so they run with every `cargo test`. For a long run:
//!
//! ```sh
//! PROPTEST_CASES=100000 cargo test --release --test it properties::
//! ```
//!
//! A failure prints the smallest input proptest could shrink it to; that input becomes a
//! regression test below (see `regressions`), not a file proptest keeps on its own.

use std::path::Path;

use bytes::BytesMut;
use mnemosyne::config::Config;
use mnemosyne::plan::intake::{Origin, PlanReader};
use mnemosyne::plan::model::{Plan, PlanOptions, StringList, TaskSpec};
use mnemosyne::protocol::{
    Heartbeat, Inbound, LineCodec, LineError, LogLevel, LogRecord, Outcome, Response,
    WorkerMessage, classify, encode_line,
};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, FileFailurePersistence};
use serde_json::Value;
use tokio_util::codec::Decoder;

/// A name for `b'{'`, which the proptest assertion macros would read as a format string.
const OPEN_BRACE: u8 = b'{';

/// A preview is 200 bytes of the line, each invalid byte of which may become a three-byte
/// U+FFFD, and an ellipsis.
const MAX_PREVIEW_BYTES: usize = 3 * 200 + 3;

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 256;

/// The longest error a plan or a protocol line may produce, whatever the input.
const MAX_ERROR_CHARS: usize = 2_100;

fn proptest_config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    ProptestConfig {
        cases,
        // Found failures become tests in `regressions`, written by hand.
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..ProptestConfig::default()
    }
}

/// Every item the plan reader makes of `input`, read in one go.
fn read_plans(input: &[u8], max_line_bytes: usize) -> Vec<(Origin, Result<Plan, String>)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let mut reader = PlanReader::new(input, max_line_bytes).with_max_document_bytes(1 << 20);
        let mut items = Vec::new();
        while let Some(item) = reader.next().await {
            items.push((item.origin, item.plan.map_err(|error| error.to_string())));
        }
        items
    })
}

/// Bytes that look like JSON often enough to reach deep into the parser.
fn jsonish_bytes() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(b"{".to_vec()),
        Just(b"}".to_vec()),
        Just(b"[".to_vec()),
        Just(b"]".to_vec()),
        Just(b":".to_vec()),
        Just(b",".to_vec()),
        Just(b"\"".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\"id\"".to_vec()),
        Just(b"\"prompt\"".to_vec()),
        Just(b"\"tasks\"".to_vec()),
        Just(b"\"depends_on\"".to_vec()),
        Just(b"\"priority\"".to_vec()),
        Just(b"\"options\"".to_vec()),
        Just(b"NaN".to_vec()),
        Just(b"1e999".to_vec()),
        Just(b"-0".to_vec()),
        Just(b"null".to_vec()),
        Just(b"\\u0000".to_vec()),
        Just(vec![0xff]),
        Just(vec![0]),
        prop::collection::vec(any::<u8>(), 0..8),
        "[a-z0-9 ]{0,8}".prop_map(String::into_bytes),
    ];
    prop::collection::vec(token, 0..64).prop_map(|tokens| tokens.concat())
}

fn short_text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[a-z ]{0,20}"]
}

fn id() -> impl Strategy<Value = String> {
    // Any characters but controls, 1 to 20 of them: the ids intake accepts.
    prop::collection::vec(
        any::<char>().prop_filter("no control", |c| !c.is_control()),
        1..20,
    )
    .prop_map(String::from_iter)
}

fn string_list() -> impl Strategy<Value = StringList> {
    prop::collection::vec(short_text(), 0..4).prop_map(StringList::from)
}

/// A plan intake must accept: unique task ids, dependencies only on earlier tasks.
fn valid_plan() -> impl Strategy<Value = Plan> {
    let tasks = prop::collection::vec(
        (
            short_text(),
            prop::collection::vec(any::<prop::sample::Index>(), 0..3),
            prop::option::of(string_list()),
        ),
        0..6,
    )
    .prop_map(|tasks| {
        tasks
            .into_iter()
            .enumerate()
            .map(|(position, (prompt, depends, tech_stack))| {
                let mut depends_on: Vec<String> = if position == 0 {
                    Vec::new()
                } else {
                    depends
                        .iter()
                        .map(|index| format!("t{}", index.index(position)))
                        .collect()
                };
                depends_on.sort();
                depends_on.dedup();
                TaskSpec {
                    id: format!("t{position}"),
                    prompt,
                    depends_on,
                    tech_stack,
                    ..TaskSpec::default()
                }
            })
            .collect::<Vec<_>>()
    });
    (
        prop::option::of(id()),
        prop::option::of(short_text()),
        prop::option::of(string_list()),
        prop::option::of(string_list()),
        prop::option::of(short_text()),
        prop::option::of(0u8..=10),
        tasks,
        any::<bool>(),
        1u32..=10,
    )
        .prop_map(
            |(
                id,
                prompt,
                tech_stack,
                success_criteria,
                scope,
                priority,
                tasks,
                challenge,
                attempts,
            )| {
                Plan {
                    id,
                    prompt,
                    tech_stack,
                    success_criteria,
                    scope,
                    priority,
                    tasks,
                    options: PlanOptions {
                        challenge_vague_requirements: challenge,
                        max_review_attempts: attempts,
                    },
                    ..Plan::default()
                }
            },
        )
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn the_plan_reader_never_panics_and_its_errors_are_bounded(input in jsonish_bytes()) {
        for (origin, plan) in read_plans(&input, 256) {
            if let Err(error) = plan {
                prop_assert!(error.chars().count() <= MAX_ERROR_CHARS, "{origin}: {error}");
                prop_assert!(!error.is_empty());
            }
        }
    }

    /// Once the first line is a plan, the input is NDJSON: every item, good or bad, names a
    /// line that exists and is not blank, in order; no line yields more than one item unless
    /// it holds an array, and none yields nothing unless it is an empty array.
    #[test]
    fn every_rejection_names_a_line_of_the_input(lines in prop::collection::vec(jsonish_bytes(), 0..8)) {
        let mut input = b"{\"id\": \"first\"}\n".to_vec();
        for line in &lines {
            input.extend(line.iter().copied().filter(|&byte| byte != b'\n'));
            input.push(b'\n');
        }
        let text_lines: Vec<&[u8]> = input.split(|&byte| byte == b'\n').collect();
        let items = read_plans(&input, 256);
        prop_assert!(matches!(items.first(), Some((Origin::Line(1), Ok(_)))), "{items:?}");
        let mut last = 0;
        for (origin, plan) in &items {
            let line = origin.line();
            prop_assert!(line.is_some(), "{origin} has no line: {plan:?}");
            let line = line.expect("checked");
            prop_assert!(line >= last, "{origin} after line {last}");
            let text = text_lines[line - 1];
            prop_assert!(!text.trim_ascii().is_empty(), "{origin} is blank");
            if origin.element().is_none() {
                prop_assert!(line > last || line == 1 && last == 0, "two items for {origin}");
            }
            last = line;
        }
        // And no line is lost: each non-blank line has an item, unless it is an empty array.
        for (index, text) in text_lines.iter().enumerate() {
            let line = index + 1;
            if text.trim_ascii().is_empty() || items.iter().any(|(origin, _)| origin.line() == Some(line)) {
                continue;
            }
            let empty_array = serde_json::from_slice::<Vec<Value>>(text).is_ok_and(|v| v.is_empty());
            prop_assert!(empty_array, "line {line} yielded nothing: {:?}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn a_valid_plan_reads_back_as_itself(plans in prop::collection::vec(valid_plan(), 1..5)) {
        let input: String = plans
            .iter()
            .map(|plan| serde_json::to_string(plan).expect("plans serialise") + "\n")
            .collect();
        let items = read_plans(input.as_bytes(), 1 << 20);
        prop_assert_eq!(items.len(), plans.len());
        for (number, ((origin, read), plan)) in items.into_iter().zip(&plans).enumerate() {
            prop_assert_eq!(origin, Origin::Line(number + 1));
            prop_assert_eq!(&read.expect("a valid plan"), plan);
        }
    }

    /// However the bytes are split into reads, the codec yields the same lines, none over
    /// the limit, and without an oversize line they are the input's own lines.
    #[test]
    fn the_line_codec_is_independent_of_how_the_bytes_arrive(
        input in jsonish_bytes(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        max in 1usize..64,
    ) {
        let whole = decode_all(&[&input[..]], max);
        let mut offsets: Vec<usize> = cuts.iter().map(|cut| cut.index(input.len() + 1)).collect();
        offsets.sort_unstable();
        let mut pieces = Vec::new();
        let mut start = 0;
        for offset in offsets {
            pieces.push(&input[start..offset]);
            start = offset;
        }
        pieces.push(&input[start..]);
        let chunked = decode_all(&pieces, max);
        // An oversize line fails as soon as the limit is passed, which depends on how much
        // has arrived; everything before the first failure is the same either way.
        let agreed = whole.iter().zip(&chunked).take_while(|(a, b)| a == b).count();
        let first_failure = whole.iter().position(Result::is_err).unwrap_or(whole.len());
        prop_assert!(agreed >= first_failure, "{whole:?} vs {chunked:?}");
        for line in whole.iter().flatten() {
            prop_assert!(line.len() <= max);
        }
        if whole.iter().all(Result::is_ok) {
            let expected: Vec<Vec<u8>> = input
                .split(|&byte| byte == b'\n')
                .map(|line| line.strip_suffix(b"\r").unwrap_or(line).to_vec())
                .collect();
            let lines: Vec<Vec<u8>> = whole.into_iter().flatten().collect();
            // Without a trailing newline the last piece is a partial line, an error; with
            // one, split leaves an empty last piece that is no line.
            prop_assert_eq!(&lines[..], &expected[..expected.len() - 1]);
        }
    }

    #[test]
    fn classify_never_panics_and_bounds_what_it_reports(line in jsonish_bytes()) {
        let first = line.trim_ascii().first().copied();
        match classify::<WorkerMessage>(&line, WorkerMessage::TYPES) {
            Inbound::Blank => prop_assert_eq!(first, None),
            Inbound::Stray { preview } => {
                prop_assert!(first.is_some_and(|byte| byte != OPEN_BRACE));
                prop_assert!(preview.len() <= MAX_PREVIEW_BYTES);
            }
            Inbound::Unknown { kind } => prop_assert!(kind.chars().count() <= MAX_ERROR_CHARS),
            Inbound::Message(_) => prop_assert_eq!(first, Some(OPEN_BRACE)),
            Inbound::Violation { reason, preview } => {
                prop_assert_eq!(first, Some(OPEN_BRACE));
                prop_assert!(reason.chars().count() <= MAX_ERROR_CHARS, "{reason}");
                prop_assert!(preview.len() <= MAX_PREVIEW_BYTES);
            }
        }
    }

    #[test]
    fn an_encoded_message_classifies_as_itself(message in worker_message()) {
        let line = encode_line(&message, 1 << 20).expect("fits");
        let Inbound::Message(decoded) = classify::<WorkerMessage>(&line, WorkerMessage::TYPES) else {
            return Err(TestCaseError::fail(format!("not a message: {}", String::from_utf8_lossy(&line))));
        };
        prop_assert_eq!(decoded, message);
    }

    #[test]
    fn the_config_parser_never_panics_and_names_a_line(
        text in prop::collection::vec(config_token(), 0..24).prop_map(|tokens| tokens.concat()),
    ) {
        if let Err(error) = Config::from_toml_str(&text, Path::new("fuzz.toml")) {
            let message = error.to_string();
            prop_assert!(message.starts_with("fuzz.toml"), "{message}");
            prop_assert!(message.chars().count() <= MAX_ERROR_CHARS + text.len(), "{message}");
        }
    }

    #[test]
    fn a_valid_config_reads_back_as_itself(config in valid_config()) {
        let text = toml::to_string(&config).expect("configs serialise");
        let read = Config::from_toml_str(&text, Path::new("round-trip.toml"))
            .map_err(|error| TestCaseError::fail(format!("{error}\n{text}")))?;
        prop_assert_eq!(read, config);
    }
}

fn decode_all(pieces: &[&[u8]], max: usize) -> Vec<Result<Vec<u8>, String>> {
    let mut codec = LineCodec::new(max);
    let mut buffer = BytesMut::new();
    let mut out = Vec::new();
    for piece in pieces {
        buffer.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buffer) {
                Ok(Some(line)) => out.push(Ok(line.to_vec())),
                Ok(None) => break,
                Err(error @ LineError::TooLong { .. }) => out.push(Err(error.to_string())),
                Err(error) => {
                    out.push(Err(error.to_string()));
                    break;
                }
            }
        }
    }
    loop {
        match codec.decode_eof(&mut buffer) {
            Ok(Some(line)) => out.push(Ok(line.to_vec())),
            Ok(None) => break,
            Err(error) => {
                out.push(Err(error.to_string()));
                break;
            }
        }
    }
    out
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // Finite only, as JSON has no NaN; and exactly representable in few digits, since
        // serde_json without its `float_roundtrip` feature may read the last digit of a long
        // float back one ulp off.
        any::<i32>().prop_map(|n| Value::from(f64::from(n) / 8.0)),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn worker_message() -> impl Strategy<Value = WorkerMessage> {
    prop_oneof![
        any::<u64>().prop_map(|nonce| WorkerMessage::Ping(Heartbeat { nonce })),
        any::<u64>().prop_map(|nonce| WorkerMessage::Pong(Heartbeat { nonce })),
        (any::<String>(), json_value()).prop_map(|(id, result)| {
            WorkerMessage::Response(Response {
                id,
                outcome: Outcome::Result(result),
            })
        }),
        (
            prop_oneof![
                Just(LogLevel::Debug),
                Just(LogLevel::Info),
                Just(LogLevel::Warning),
                Just(LogLevel::Error),
            ],
            any::<String>(),
            prop::option::of(any::<String>()),
        )
            .prop_map(|(level, message, logger)| {
                WorkerMessage::Log(LogRecord {
                    level,
                    message,
                    logger,
                    fields: None,
                })
            }),
    ]
}

/// Pieces of TOML, valid and not, that the config parser knows or chokes on.
fn config_token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("[supervisor]\n".to_owned()),
        Just("[plans]\n".to_owned()),
        Just("[agents.executor]\n".to_owned()),
        Just("[agents.nobody]\n".to_owned()),
        Just("[provider]\n".to_owned()),
        Just("heartbeat_interval = \"1s\"\n".to_owned()),
        Just("heartbeat_interval = 5\n".to_owned()),
        Just("backoff_factor = nan\n".to_owned()),
        Just("backoff_factor = 1e400\n".to_owned()),
        Just("max_line_bytes = 18446744073709551616\n".to_owned()),
        Just("max_line_bytes = -1\n".to_owned()),
        Just("count = 3\n".to_owned()),
        Just("count = \"three\"\n".to_owned()),
        Just("max_in_flight = 0\n".to_owned()),
        Just("args = [\"a\", 1]\n".to_owned()),
        Just("env = { A = \"b\" }\n".to_owned()),
        Just("name = \"anthropic\"\n".to_owned()),
        Just("x = \"".to_owned()),
        Just("\u{0}".to_owned()),
        Just("\r\n".to_owned()),
        Just("=".to_owned()),
        Just("[".to_owned()),
        "[a-z_ =\"\\[\\]\n0-9.]{0,12}",
    ]
}

fn valid_config() -> impl Strategy<Value = Config> {
    (
        1u64..10_000,
        1u32..10,
        1u64..600_000,
        1024usize..(1 << 30),
        1usize..512,
        0u32..4,
        1u32..8,
    )
        .prop_map(
            |(heartbeat_ms, misses, start_ms, max_line, in_flight, count, concurrency)| {
                let mut config = Config::default();
                let s = &mut config.supervisor;
                s.heartbeat_interval = std::time::Duration::from_millis(heartbeat_ms);
                s.heartbeat_misses = misses;
                s.start_timeout = std::time::Duration::from_millis(start_ms);
                s.max_line_bytes = max_line;
                config.plans.max_in_flight = in_flight;
                for agent in config.agents.values_mut() {
                    agent.count = count;
                    agent.concurrency = concurrency;
                }
                config
            },
        )
}

/// Inputs that once broke one of the properties above, kept as plain tests.
mod regressions {
    use super::decode_all;

    /// A line exactly at the limit whose `\r` and `\n` came in different reads was failed as
    /// too long (the `\r` was counted as part of the line).
    #[test]
    fn a_line_at_the_limit_with_its_crlf_split_across_reads() {
        let whole = decode_all(&[b"abcd\r\nxy\n"], 4);
        let split = decode_all(&[b"abcd\r", b"\nxy\n"], 4);
        assert_eq!(whole, [Ok(b"abcd".to_vec()), Ok(b"xy".to_vec())]);
        assert_eq!(split, whole);
    }
}
