//! Hostile stdin through `supervise`: every bad line of the corpus in `tests/hostile/` gets
//! its own precise rejection naming its line, and the valid plans around it still succeed.
//!
//! A case is `tests/hostile/NAME.ndjson`, one input line per line, and `NAME.expect`, one line
//! per input line: `ok` for a line that must succeed, or a text that the rejection must hold
//! after its `line N: ` prefix. Inputs too big for a file (a line over the limit, 100 000
//! levels of nesting) are made here. Every case line goes between two valid plans, all in one
//! run, so a case that took a neighbour down, or shifted the line count, shows as a failure of
//! the neighbour.

use std::collections::BTreeMap;
use std::path::Path;

use mnemosyne::cli::supervise::RunOutcome;
use mnemosyne::config::{AgentConfig, Config, Role};
use serde_json::{Value, json};

use crate::common::*;

/// The line limit of these runs; the generated oversize line is far over it.
const MAX_LINE_BYTES: usize = 2 * 1024 * 1024;

/// Every role on the fixture that answers at once: the test is about intake, not agents.
pub fn instant_config() -> Config {
    let mut config = fast_config();
    config.supervisor.max_line_bytes = MAX_LINE_BYTES;
    for role in Role::ALL {
        let args = vec![
            fixture("instant_pipeline.py"),
            "--role".into(),
            role.as_str().into(),
        ];
        config.agents.insert(
            role,
            AgentConfig {
                concurrency: 16,
                args: Some(args),
                ..AgentConfig::default()
            },
        );
    }
    config
}

/// What one input line must come to.
#[derive(Debug, Clone)]
enum Expect {
    Succeeds,
    /// Rejected, with this text after the `line N: ` prefix of its first error.
    Rejected(String),
}

struct Case {
    /// `file:line` or the name of a generated case, for failure messages.
    name: String,
    line: Vec<u8>,
    expect: Expect,
}

fn corpus() -> Vec<Case> {
    let dir = repo_root().join("tests/hostile");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("the corpus directory")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "ndjson"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "the corpus is there: {files:?}");
    let mut cases = Vec::new();
    for path in files {
        cases.extend(cases_of(&path));
    }
    cases.extend(generated());
    cases
}

fn cases_of(path: &Path) -> Vec<Case> {
    let name = path
        .file_stem()
        .and_then(|stem| stem.to_str())
        .expect("a UTF-8 name");
    let input = std::fs::read(path).expect("case file");
    let expect_path = path.with_extension("expect");
    let expected = std::fs::read_to_string(&expect_path)
        .unwrap_or_else(|error| panic!("{}: {error}", expect_path.display()));
    let lines: Vec<&[u8]> = input
        .strip_suffix(b"\n")
        .unwrap_or(&input)
        .split(|&byte| byte == b'\n')
        .collect();
    let expected: Vec<&str> = expected.lines().collect();
    assert_eq!(
        lines.len(),
        expected.len(),
        "{name}: one expectation per input line"
    );
    lines
        .into_iter()
        .zip(expected)
        .enumerate()
        .map(|(index, (line, expect))| Case {
            name: format!("{name}.ndjson:{}", index + 1),
            line: line.to_vec(),
            expect: if expect == "ok" {
                Expect::Succeeds
            } else {
                Expect::Rejected(expect.to_owned())
            },
        })
        .collect()
}

/// Cases too big to keep as files.
fn generated() -> Vec<Case> {
    const DEPTH: usize = 100_000;
    let rejected = |name: &str, line: Vec<u8>, expect: &str| Case {
        name: name.to_owned(),
        line,
        expect: Expect::Rejected(expect.to_owned()),
    };
    let nested_arrays = format!("{}{}", "[".repeat(DEPTH), "]".repeat(DEPTH));
    let nested_objects = format!("{}1{}", "{\"a\":".repeat(DEPTH), "}".repeat(DEPTH));
    let nested_in_field = format!(
        "{{\"tech_stack\": {}{}}}",
        "[".repeat(DEPTH),
        "]".repeat(DEPTH)
    );
    let unclosed = "[".repeat(DEPTH);
    let oversize = format!(
        "{{\"id\": \"oversize\", \"prompt\": \"{}\"}}",
        "x".repeat(2 * MAX_LINE_BYTES)
    );
    let many_keys = format!(
        "{{{}}}",
        (0..DEPTH)
            .map(|n| format!("\"k{n}\": {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    vec![
        rejected(
            "100 000 nested arrays",
            nested_arrays.into_bytes(),
            "not valid JSON: recursion limit exceeded (column 128)",
        ),
        rejected(
            "100 000 nested objects",
            nested_objects.into_bytes(),
            "unknown field `a`, expected one of",
        ),
        rejected(
            "100 000 nested arrays in a field",
            nested_in_field.into_bytes(),
            "field `tech_stack[0]`: invalid type: sequence, expected a string",
        ),
        rejected(
            "100 000 unclosed arrays",
            unclosed.into_bytes(),
            "not valid JSON: recursion limit exceeded (column 128)",
        ),
        rejected(
            "an oversize line",
            oversize.into_bytes(),
            "longer than the limit of 2097152 bytes",
        ),
        rejected(
            "100 000 keys",
            many_keys.into_bytes(),
            "unknown field `k0`, expected one of",
        ),
    ]
}

fn valid_plan(n: usize) -> String {
    json!({
        "id": format!("neighbour-{n}"),
        "prompt": format!("neighbour plan {n}"),
        "tech_stack": "Rust",
        "success_criteria": "done",
        "options": {"challenge_vague_requirements": false},
    })
    .to_string()
}

#[tokio::test]
async fn every_hostile_line_gets_its_own_rejection_and_its_neighbours_succeed() {
    let cases = corpus();
    // Line 1 is a valid plan, then each case is followed by another, so every case sits
    // between two valid plans and the input is NDJSON from its first line.
    let mut input = Vec::new();
    let mut expected: BTreeMap<usize, (String, Expect)> = BTreeMap::new();
    let mut line = 0;
    let mut push = |input: &mut Vec<u8>, bytes: &[u8], name: String, expect: Expect| {
        line += 1;
        input.extend_from_slice(bytes);
        input.push(b'\n');
        expected.insert(line, (name, expect));
    };
    push(
        &mut input,
        valid_plan(0).as_bytes(),
        "first".into(),
        Expect::Succeeds,
    );
    for (n, case) in cases.into_iter().enumerate() {
        push(&mut input, &case.line, case.name, case.expect);
        let neighbour = format!("neighbour-{}", n + 1);
        push(
            &mut input,
            valid_plan(n + 1).as_bytes(),
            neighbour,
            Expect::Succeeds,
        );
    }

    let state = tempfile::tempdir().expect("state dir");
    let (outcome, results) = supervise_in_process(
        supervise_args(instant_config(), state.path()),
        input,
        LIMIT * 3,
    )
    .await;
    assert_eq!(outcome, RunOutcome::SomeFailed);

    let mut by_line: BTreeMap<usize, Vec<&Value>> = BTreeMap::new();
    for result in &results {
        let line = result["line"]
            .as_u64()
            .unwrap_or_else(|| panic!("every result names its line: {result}"));
        by_line
            .entry(usize::try_from(line).expect("a line number"))
            .or_default()
            .push(result);
    }
    let mut problems = Vec::new();
    for (line, (name, expect)) in &expected {
        let Some(found) = by_line.remove(line) else {
            problems.push(format!("line {line} ({name}): no result"));
            continue;
        };
        if found.len() != 1 {
            problems.push(format!("line {line} ({name}): {} results", found.len()));
            continue;
        }
        let result = found[0];
        match expect {
            Expect::Succeeds => {
                if result["status"] != "succeeded" {
                    problems.push(format!("line {line} ({name}): expected success: {result}"));
                }
            }
            Expect::Rejected(text) => {
                let error = result["errors"][0].as_str().unwrap_or_default();
                // `line N: ` or, for an element of an array on the line, `line N, element I: `.
                let prefix = format!("line {line}");
                let ok = result["status"] == "rejected"
                    && result["errors"].as_array().map(Vec::len) == Some(1)
                    && error.strip_prefix(&prefix).is_some_and(|rest| {
                        (rest.starts_with(": ") || rest.starts_with(", element "))
                            && rest.contains(text.as_str())
                    });
                if !ok {
                    let shown: String = error.chars().take(300).collect();
                    problems.push(format!(
                        "line {line} ({name}): expected rejection `{prefix}…{text}…`, got {} `{shown}`",
                        result["status"]
                    ));
                }
            }
        }
    }
    for (line, extra) in by_line {
        problems.push(format!("line {line}: unexpected results {extra:?}"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A plan id given twice in one input: each line still gets exactly one result, and the id
/// runs once. A later copy follows the first (or replays its stored result once it finished),
/// so it gets that result flagged replayed, at its own line; never a refusal.
#[tokio::test]
async fn a_repeated_plan_id_runs_once_and_every_line_gets_its_result() {
    let input = [valid_plan(1), valid_plan(1), valid_plan(2), valid_plan(1)].join("\n") + "\n";
    let state = tempfile::tempdir().expect("state dir");
    let (outcome, results) = supervise_in_process(
        supervise_args(instant_config(), state.path()),
        input,
        LIMIT * 3,
    )
    .await;
    assert_eq!(outcome, RunOutcome::AllSucceeded, "{results:#?}");
    let mut lines: Vec<u64> = results.iter().filter_map(|r| r["line"].as_u64()).collect();
    lines.sort_unstable();
    assert_eq!(lines, [1, 2, 3, 4], "{results:#?}");
    let copies: Vec<&Value> = results
        .iter()
        .filter(|r| r["id"] == "neighbour-1")
        .collect();
    assert_eq!(copies.len(), 3, "{results:#?}");
    let first_runs = copies.iter().filter(|r| r["replayed"].is_null()).count();
    assert_eq!(first_runs, 1, "{results:#?}");
    for result in copies {
        assert_eq!(result["status"], "succeeded", "{result:#}");
    }
}

/// A cut-off first line looks like the start of a pretty-printed document; it must not take
/// the plans after it down with it.
#[tokio::test]
async fn a_truncated_first_line_loses_none_of_the_plans_after_it() {
    let input = format!(
        "{{\"id\": \"cut\", \"prompt\": \"ab\n{}\n{}\n",
        valid_plan(1),
        valid_plan(2)
    );
    let state = tempfile::tempdir().expect("state dir");
    let (outcome, results) = supervise_in_process(
        supervise_args(instant_config(), state.path()),
        input,
        LIMIT * 3,
    )
    .await;
    assert_eq!(outcome, RunOutcome::SomeFailed);
    assert_eq!(results.len(), 3, "{results:#?}");
    for result in &results {
        match result["line"].as_u64() {
            Some(1) => {
                assert_eq!(result["status"], "rejected", "{result:#}");
                assert_eq!(
                    result["errors"][0],
                    "line 1: not valid JSON: EOF while parsing a string (column 27)"
                );
            }
            Some(2 | 3) => assert_eq!(result["status"], "succeeded", "{result:#}"),
            _ => panic!("unexpected {result:#}"),
        }
    }
}
