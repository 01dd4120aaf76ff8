//! `mnemosyne supervise` end to end: requests on stdin, one result line each on stdout.

use std::process::{Command, Stdio};

use mnemosyne::cli::supervise::{RunOutcome, SuperviseArgs, run};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::common::*;

#[tokio::test]
async fn every_input_line_yields_exactly_one_result_line() {
    let input = concat!(
        r#"{"id":"a","role":"executor","method":"echo","params":{"n":1}}"#,
        "\n",
        "this is not json\n",
        "\n",
        r#"{"id":"b","role":"wizard","method":"echo"}"#,
        "\n",
        r#"{"id":"c","role":"executor","method":"no_such_method"}"#,
        "\n",
        r#"{"id":"d","role":"executor","method":"echo","params":{"n":4}}"#,
        "\n",
    );
    let (output, mut read_back) = tokio::io::duplex(1 << 20);
    let args = SuperviseArgs {
        config: fast_config(),
        options: options(),
        interrupt: CancellationToken::new(),
        kill_now: CancellationToken::new(),
        cache_dir: std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cache"),
    };
    let outcome = tokio::time::timeout(LIMIT, run(args, input.as_bytes(), output))
        .await
        .expect("finishes")
        .expect("runs");
    assert_eq!(outcome, RunOutcome::SomeFailed);
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut read_back, &mut text)
        .await
        .expect("output readable");
    let results: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON"))
        .collect();
    assert_eq!(results.len(), 5, "{text}");
    let by = |key: &str, value: &str| {
        results
            .iter()
            .find(|r| r[key] == value)
            .unwrap_or_else(|| panic!("no result with {key}={value}: {text}"))
    };
    assert_eq!(by("id", "a")["status"], "succeeded");
    assert_eq!(by("id", "a")["result"]["n"], 1);
    assert_eq!(by("id", "d")["status"], "succeeded");
    assert_eq!(by("id", "c")["status"], "failed");
    assert_eq!(by("id", "c")["worker_error"]["code"], "method_not_found");
    let rejected: Vec<&Value> = results
        .iter()
        .filter(|r| r["status"] == "rejected")
        .collect();
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[0]["line"], 2);
    assert_eq!(rejected[1]["line"], 4);
    assert!(
        rejected[1]["error"]
            .as_str()
            .expect("error text")
            .contains("wizard"),
        "{}",
        rejected[1]
    );
}

#[test]
fn the_binary_runs_requests_end_to_end_and_exits_zero() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mnemosyne"))
        .arg("supervise")
        .current_dir(env!("CARGO_TARGET_TMPDIR"))
        .env(
            "MNEMOSYNE_CACHE_DIR",
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cache"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        for role in ["executor", "orchestrator", "optimizer", "reviewer"] {
            writeln!(
                stdin,
                r#"{{"id":"{role}","role":"{role}","method":"echo","params":{{"role":"{role}"}}}}"#
            )
            .expect("write");
        }
    }
    let output = child.wait_with_output().expect("binary finishes");
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    let results: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON"))
        .collect();
    assert_eq!(results.len(), 4);
    assert!(
        results
            .iter()
            .all(|r| r["status"] == "succeeded" && r["result"]["role"] == r["id"]),
        "{stdout}"
    );
}
