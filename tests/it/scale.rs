//! A large input through echo-speed workers: every plan gets exactly one result, and the
//! supervisor's memory stays flat as the input grows tenfold.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::*;

/// Writes `count` small plans, runs them through a supervisor whose workers answer at once,
/// and returns the number of distinct succeeded ids and the supervisor's peak RSS in KiB.
fn run_batch(dir: &Path, count: usize) -> (usize, u64) {
    let input_path = dir.join(format!("plans-{count}.ndjson"));
    let mut input =
        std::io::BufWriter::new(std::fs::File::create(&input_path).expect("input file"));
    for n in 0..count {
        writeln!(
            input,
            r#"{{"id":"p{n}","prompt":"small plan {n}","tech_stack":"Rust","success_criteria":"done","options":{{"challenge_vague_requirements":false}}}}"#
        )
        .expect("write plan");
    }
    drop(input);
    let config_path = dir.join("instant.toml");
    let mut config = String::from("[plans]\nmax_in_flight = 512\n");
    for role in ["executor", "orchestrator", "optimizer", "reviewer"] {
        config.push_str(&format!(
            "[agents.{role}]\nconcurrency = 64\nargs = [{:?}, \"--role\", \"{role}\"]\n",
            fixture("instant_pipeline.py")
        ));
    }
    std::fs::write(&config_path, config).expect("config");
    let output = run_within(
        Command::new(env!("CARGO_BIN_EXE_mnemosyne"))
            .args(["supervise", "--config"])
            .arg(&config_path)
            .arg("--state-dir")
            .arg(dir.join(format!("state-{count}")))
            .env(
                "MNEMOSYNE_CACHE_DIR",
                Path::new(env!("CARGO_TARGET_TMPDIR")).join("cache"),
            )
            .env("RUST_LOG", "warn,mnemosyne::cli::supervise=info")
            .stdin(Stdio::from(
                std::fs::File::open(&input_path).expect("input"),
            ))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        // A bound for a slow machine, far above the minute or two the run takes.
        std::time::Duration::from_secs(1200),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "supervisor failed: {}",
        stderr.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    let mut ids = HashSet::new();
    let mut lines = 0;
    for line in BufReader::new(&output.stdout[..]).lines() {
        let line = line.expect("UTF-8");
        lines += 1;
        let result: serde_json::Value = serde_json::from_str(&line).expect("result JSON");
        assert_eq!(result["status"], "succeeded", "{line}");
        ids.insert(result["id"].as_str().expect("id").to_owned());
    }
    assert_eq!(lines, count, "one result line per plan");
    let peak = stderr
        .lines()
        .find_map(|line| line.split("peak_rss_kib=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the supervisor reports its peak RSS");
    (ids.len(), peak)
}

#[test]
fn a_hundred_thousand_plans_each_get_one_result_with_flat_memory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (small_ids, small_peak) = run_batch(dir.path(), 10_000);
    assert_eq!(small_ids, 10_000);
    let (large_ids, large_peak) = run_batch(dir.path(), 100_000);
    assert_eq!(large_ids, 100_000);
    let ratio = large_peak as f64 / small_peak as f64;
    println!(
        "peak RSS of the supervisor: {small_peak} KiB for 10 000 plans, {large_peak} KiB for 100 000 plans \
         (ratio {ratio:.2} for 10x the input)"
    );
    assert!(
        ratio < 2.0,
        "memory grew with the input: {small_peak} KiB -> {large_peak} KiB"
    );
}
