//! The chaos soak: the real `mnemosyne supervise --provider anthropic` binary against the fake
//! Messages API answering at random (latency, 429, 500, 529, hangs), while a fault injector
//! SIGKILLs and SIGSTOPs random workers and makes others write garbage on their wire, and the
//! supervisor itself is `kill -9`ed mid-batch and started again on the same state directory.
//!
//! The checks are the reliability contract: every plan id gets exactly one result across both
//! runs (a result flagged `replayed` is not a duplicate), every `failed` result says why, every
//! injected fault shows up as a worker death with the matching cause, no process of the run
//! survives it, and the supervisor's memory stays bounded.
//!
//! CI runs a few hundred plans (`every_plan_ends_under_chaos_and_across_a_supervisor_kill`);
//! `scripts/soak` runs ten thousand through the ignored
//! `a_long_soak_loses_and_duplicates_no_plan` and prints the figures.
//! Both print their seed; `MNEMOSYNE_CHAOS_SEED=N` replays the same faults and API answers (the
//! interleaving with the scheduler still varies).

mod faults;
mod observe;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{LIMIT, alive, repo_root};
use faults::{FaultKind, Injector, InjectorSettings};
use observe::{EventFollower, Observed};

const KEY: &str = "sk-ant-chaos-key-for-the-fake-api";
/// Only the reviewer's requests contain this, so the passing verdicts reach the reviewer alone.
const REVIEWER: &str = "You are the reviewer agent of Mnemosyne";
/// The environment variable that marks every process of one soak run, so that a survivor can
/// be found in /proc whatever its parent or pid.
const MARKER: &str = "MNEMOSYNE_CHAOS_RUN";
/// Workers a run starts: two executors and two reviewers (the roles that call the model most),
/// one orchestrator, one optimizer.
const AGENTS: usize = 6;
/// The supervisor's resident memory may not pass this, at any size of batch.
const RSS_LIMIT_KIB: u64 = 256 * 1024;

/// How big a soak is and how hard it is hit.
#[derive(Debug, Clone)]
struct Soak {
    plans: usize,
    /// Plans piped to the first run, which is `kill -9`ed mid-way; the rest go to the second.
    first_run_plans: usize,
    seed: u64,
    faults: InjectorSettings,
    /// Upper bound of one run's wall time: a stuck batch fails the test instead of hanging it.
    run_limit: Duration,
}

/// What a soak did and found; printed one figure a line.
#[derive(Debug, Default)]
struct Report {
    plans: usize,
    faults: BTreeMap<String, u64>,
    api_answers: BTreeMap<String, u64>,
    restarts: u64,
    redeliveries: u64,
    quarantines: u64,
    deaths_by_cause: BTreeMap<String, u64>,
    failed: u64,
    replayed: u64,
    /// Replays of a result the killed run had printed already: its crash window.
    replayed_after_print: u64,
    lost: Vec<String>,
    duplicated: Vec<String>,
    peak_rss_kib: u64,
    early_rss_kib: u64,
    faults_overtaken_by_shutdown: u64,
    wall: Duration,
}

impl Report {
    fn print(&self, seed: u64) {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        let api: Vec<String> = self
            .api_answers
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        let deaths: Vec<String> = self
            .deaths_by_cause
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        println!("soak seed: {seed}");
        println!("plans: {}", self.plans);
        println!("worker faults injected: {}", faults.join(" "));
        println!("api answers: {}", api.join(" "));
        println!("worker deaths by cause: {}", deaths.join(" "));
        println!(
            "faults overtaken by shutdown: {}",
            self.faults_overtaken_by_shutdown
        );
        println!("restarts: {}", self.restarts);
        println!("redeliveries: {}", self.redeliveries);
        println!("quarantines: {}", self.quarantines);
        println!("failed: {}", self.failed);
        println!(
            "replayed: {} ({} printed before the kill too)",
            self.replayed, self.replayed_after_print
        );
        println!("lost: {}", self.lost.len());
        println!("duplicated: {}", self.duplicated.len());
        println!(
            "peak RSS: {} KiB (after the first tenth of the batch: {} KiB)",
            self.peak_rss_kib, self.early_rss_kib
        );
        println!("wall time: {:.1} s", self.wall.as_secs_f64());
    }
}

/// The seed from `MNEMOSYNE_CHAOS_SEED`, else a fresh one; printed so a failure can be replayed.
fn seed() -> u64 {
    let seed = std::env::var("MNEMOSYNE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("chaos seed: {seed} (set MNEMOSYNE_CHAOS_SEED={seed} to replay it)");
    seed
}

fn plan(id: &str) -> Value {
    json!({
        "id": id,
        "prompt": format!("Build a command line tool using Rust that must parse the following log format \
                           because operators need to search all access logs within one second ({id})"),
        "tech_stack": "Rust",
        "success_criteria": "searches a 1 GB log in under a second",
        "options": {"max_review_attempts": 2},
    })
}

/// The API's answers: faults often enough that every retry path runs, rarely enough that every
/// plan has a way through (the SDK retries twice, the runner four times).
fn api_script() -> Value {
    let chaos = |then: Value, matching: Option<&str>| {
        let mut entry = json!({
            "kind": "chaos", "repeat": true,
            "p_429": 0.04, "p_500": 0.03, "p_529": 0.04, "p_hang": 0.005,
            "p_delay": 0.3, "max_delay_s": 0.15, "retry_after_ms": 5,
            "then": then,
        });
        if let Some(text) = matching {
            entry["match"] = json!(text);
        }
        entry
    };
    json!([
        chaos(json!({"kind": "review", "passed": true}), Some(REVIEWER)),
        chaos(
            json!({"kind": "text", "text": "CHAOS-ANSWER: the tool is built"}),
            None
        ),
    ])
}

fn config_toml(soak: &Soak, marker: &str) -> String {
    let worker = repo_root().join("tests/fixtures/workers/chaos_worker.py");
    let worker = worker.display();
    let max_in_flight = soak.first_run_plans.max(64);
    // Heartbeats of 1 s x 5: the SDK's first call can hold a worker's loop for a moment on a
    // loaded machine. Restarts are fast and a crash loop cools down for a second only, so the
    // injector's pace never parks a role for minutes. The breaker reopens after a second for
    // the same reason.
    let mut toml = format!(
        r#"[supervisor]
heartbeat_interval = "1s"
heartbeat_misses = 5
start_timeout = "90s"
stop_grace = "1s"
term_grace = "500ms"
cancel_grace = "500ms"
backoff_base = "20ms"
backoff_max = "500ms"
max_restarts_in_window = 1000
cooldown_retry = "1s"
max_deliveries = 3

[plans]
max_in_flight = {max_in_flight}
provider_retries = 4
provider_retry_base = "10ms"

[provider]
name = "anthropic"
request_timeout = "2s"
sdk_max_retries = 2
"#
    );
    for (role, count) in [
        ("executor", 2),
        ("reviewer", 2),
        ("orchestrator", 1),
        ("optimizer", 1),
    ] {
        toml.push_str(&format!(
            "\n[agents.{role}]\ncount = {count}\nconcurrency = 16\n\
             args = [\"{worker}\", \"--role\", \"{role}\"]\n\
             env = {{ {MARKER} = \"{marker}\", MNEMOSYNE_BREAKER_OPEN_S = \"1\" }}\n"
        ));
    }
    toml
}

/// The fake API, started with a seed and without a request log (a soak makes tens of
/// thousands of requests).
struct ChaosApi {
    url: String,
    child: Child,
}

impl ChaosApi {
    fn start(dir: &Path, seed: u64) -> Self {
        let script = dir.join("api-script.json");
        std::fs::write(&script, api_script().to_string()).expect("script written");
        let python = std::env::var("MNEMOSYNE_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(python)
            .arg(repo_root().join("tests/fake_anthropic/server.py"))
            .args(["--key", KEY, "--port", "0", "--no-record"])
            .arg("--seed")
            .arg(seed.to_string())
            .arg("--script")
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the fake API starts");
        let mut first = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut first)
            .expect("it prints its URL");
        let announced: Value = serde_json::from_str(&first).expect("the first line is JSON");
        let url = announced["url"].as_str().expect("url").to_owned();
        Self { url, child }
    }

    /// How often the chaos entries answered each way.
    fn answers(&self) -> BTreeMap<String, u64> {
        let address = self.url.trim_start_matches("http://");
        let mut stream = TcpStream::connect(address).expect("the fake API accepts connections");
        write!(
            stream,
            "GET /_fake/chaos HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
        )
        .expect("request written");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("response read");
        let (_, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        serde_json::from_str(body).expect("the counts are JSON")
    }
}

impl Drop for ChaosApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one `supervise` run left behind.
struct RunRecord {
    results: Vec<Value>,
    status: ExitStatus,
    observed: Observed,
    injected: faults::Injected,
    killed: bool,
    log: PathBuf,
}

impl RunRecord {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// Runs `supervise` on `plans` until every result is out (at most `soak.run_limit`); with
/// `kill_after`, SIGKILLs it as soon as that many results are out. `expected` is how many
/// results the run should print, for pacing the faults.
#[expect(
    clippy::too_many_arguments,
    reason = "one run of the soak and its knobs"
)]
fn run_supervisor(
    soak: &Soak,
    dir: &Path,
    api: &ChaosApi,
    marker: &str,
    run: usize,
    plans: &[Value],
    expected: usize,
    kill_after: Option<usize>,
) -> RunRecord {
    let config = dir.join("chaos.toml");
    std::fs::write(&config, config_toml(soak, marker)).expect("config written");
    let state = dir.join("state");
    let log = dir.join(format!("supervise-{run}.log"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_mnemosyne"))
        .arg("supervise")
        .arg("--state-dir")
        .arg(&state)
        .arg("--config")
        .arg(&config)
        .current_dir(dir)
        .env("ANTHROPIC_API_KEY", KEY)
        .env("ANTHROPIC_BASE_URL", &api.url)
        .env(
            "MNEMOSYNE_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("cache"),
        )
        .env(MARKER, marker)
        .env("RUST_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("supervise starts");

    // Plans go in from a thread: reading pauses at max_in_flight, and results must be read
    // meanwhile. Closing stdin (the thread's end) ends the batch once every plan has a result.
    let mut stdin = child.stdin.take().expect("stdin");
    let input: Vec<String> = plans.iter().map(|p| p.to_string() + "\n").collect();
    std::thread::spawn(move || {
        for line in input {
            if stdin.write_all(line.as_bytes()).is_err() {
                break;
            }
        }
    });
    let (lines, results_in) = mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        loop {
            let mut line = String::new();
            match stdout.read_line(&mut line) {
                // Only whole lines count: a line cut by the kill was never a printed result.
                Ok(0) | Err(_) => break,
                Ok(_) if !line.ends_with('\n') => break,
                Ok(_) => {
                    if lines.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });

    let observed = Arc::new(Mutex::new(Observed::default()));
    let follower = EventFollower::start(&state, observed.clone());
    let results_count = Arc::new(AtomicUsize::new(0));
    // No new fault near the end of a run: its death could race the supervisor's shutdown.
    let faults_until = match kill_after {
        Some(kill_after) => kill_after,
        None => expected.saturating_sub((expected / 5).max(16)),
    };
    let injector = Injector::start(
        soak.faults.clone(),
        soak.seed ^ (run as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        observed.clone(),
        child.id(),
        results_count.clone(),
        faults_until,
    );

    let deadline = Instant::now() + soak.run_limit;
    let mut results = Vec::new();
    let mut killed = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match results_in.recv_timeout(left) {
            Ok(line) => {
                let result: Value = serde_json::from_str(&line).expect("result lines are JSON");
                results.push(result);
                results_count.store(results.len(), Ordering::SeqCst);
                if kill_after.is_some_and(|k| results.len() >= k) && !killed {
                    child.kill().expect("SIGKILL the supervisor");
                    killed = true;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                let injected = injector.finish();
                let observed = observed.lock().expect("observer lock").clone();
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(60).collect();
                panic!(
                    "run {run} did not finish within {:?}: {} of {expected} results; seed {}; \
                     {} faults; agents {:#?}; log tail:\n{}",
                    soak.run_limit,
                    results.len(),
                    soak.seed,
                    injected.faults.len(),
                    observed.agents,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
    }
    let status = child.wait().expect("supervise is reaped");
    follower.finish(LIMIT);
    let injected = injector.finish();
    let observed = observed.lock().expect("observer lock").clone();
    RunRecord {
        results,
        status,
        observed,
        injected,
        killed,
        log,
    }
}

/// Processes (other than zombies) whose environment carries this run's marker.
fn marked_processes(marker: &str) -> Vec<u32> {
    let needle = format!("{MARKER}={marker}");
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ
            .split(|b| *b == 0)
            .any(|var| var == needle.as_bytes())
            && alive(pid)
        {
            found.push(pid);
        }
    }
    found
}

/// Waits (at most `limit`) until no worker of the run and no marked process is left. There is
/// no event for the death of a process that is not our child, so this polls /proc.
fn survivors_after(run: &RunRecord, marker: &str, limit: Duration) -> Vec<u32> {
    let deadline = Instant::now() + limit;
    loop {
        let mut left: Vec<u32> = run
            .observed
            .started
            .iter()
            .map(|(_, pid)| *pid)
            .filter(|pid| alive(*pid))
            .collect();
        left.extend(marked_processes(marker));
        left.sort_unstable();
        left.dedup();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Faults whose death is missing from the events or carries the wrong cause; faults the run's
/// end overtook (the supervisor was killed, or was stopping that agent) are counted apart.
fn check_faults(run: &RunRecord, problems: &mut Vec<String>) -> u64 {
    let mut overtaken = 0;
    for fault in &run.injected.faults {
        match run.observed.exits.get(&fault.pid) {
            Some(exit) => {
                let cause_ok = exit.cause == fault.kind.expected_cause()
                    && (fault.kind != FaultKind::Kill || exit.signal == Some(9));
                if !cause_ok {
                    problems.push(format!(
                        "{} of {} (pid {}) was reported as cause {:?}, exit signal {:?}",
                        fault.kind, fault.agent, fault.pid, exit.cause, exit.signal
                    ));
                }
            }
            None if run.killed || run.observed.shutting_down.contains(&fault.agent) => {
                overtaken += 1
            }
            None => problems.push(format!(
                "{} of {} (pid {}) has no worker_exited event",
                fault.kind, fault.agent, fault.pid
            )),
        }
    }
    // Every worker that is not its agent's last one died, and each death must be an event.
    let mut last: HashMap<&str, u32> = HashMap::new();
    for (agent, pid) in &run.observed.started {
        last.insert(agent, *pid);
    }
    for (agent, pid) in &run.observed.started {
        if last.get(agent.as_str()) != Some(pid) && !run.observed.exits.contains_key(pid) {
            problems.push(format!(
                "worker {pid} of {agent} was replaced without a worker_exited event"
            ));
        }
    }
    if run.observed.missed > 0 {
        problems.push(format!(
            "the event follower missed {} events, so deaths cannot all be checked",
            run.observed.missed
        ));
    }
    overtaken
}

fn run_soak(soak: &Soak) -> Report {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let marker = format!("{}-{}", std::process::id(), soak.seed);
    let api = ChaosApi::start(dir.path(), soak.seed);
    let plans: Vec<Value> = (0..soak.plans)
        .map(|n| plan(&format!("chaos-{n:05}")))
        .collect();
    let (first_plans, second_plans) = plans.split_at(soak.first_run_plans);
    let mut rng = fastrand::Rng::with_seed(soak.seed);
    let kill_after = rng.usize(first_plans.len() / 3..=(2 * first_plans.len() / 3).max(1));
    eprintln!(
        "chaos soak: {} plans, {} to the first run, killed after {kill_after} results",
        soak.plans, soak.first_run_plans
    );

    let mut problems = Vec::new();
    let first = run_supervisor(
        soak,
        dir.path(),
        &api,
        &marker,
        1,
        first_plans,
        first_plans.len(),
        Some(kill_after),
    );
    assert!(first.killed, "the first run was killed mid-batch");
    assert_eq!(
        first.status.signal(),
        Some(9),
        "the first run died of the SIGKILL: {:?}",
        first.status
    );
    // The warden's job: nothing of the killed supervisor outlives it.
    let orphans = survivors_after(&first, &marker, LIMIT);
    if !orphans.is_empty() {
        problems.push(format!(
            "after the supervisor's kill -9, processes survived: {orphans:?}"
        ));
    }

    let first_ids: HashSet<&str> = first
        .results
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    let expected = plans.len() - first_ids.len();
    let second = run_supervisor(
        soak,
        dir.path(),
        &api,
        &marker,
        2,
        second_plans,
        expected,
        None,
    );
    if !matches!(second.status.code(), Some(0 | 1)) {
        problems.push(format!(
            "the second run ended with {:?}; log tail:\n{}",
            second.status,
            second.log_tail()
        ));
    }
    let survivors = survivors_after(&second, &marker, LIMIT);
    if !survivors.is_empty() {
        problems.push(format!(
            "after the second run, processes survived: {survivors:?}"
        ));
    }

    let mut report = Report {
        plans: soak.plans,
        wall: Duration::ZERO,
        ..Report::default()
    };
    for run in [&first, &second] {
        for fault in &run.injected.faults {
            *report.faults.entry(fault.kind.to_string()).or_default() += 1;
        }
        for exit in run.observed.exits.values() {
            *report
                .deaths_by_cause
                .entry(exit.cause.clone())
                .or_default() += 1;
            report.redeliveries += exit.in_flight as u64;
        }
        report.restarts += run.observed.started.len().saturating_sub(AGENTS) as u64;
        report.quarantines += run.observed.quarantines;
        report.faults_overtaken_by_shutdown += check_faults(run, &mut problems);
    }
    // Requests quarantined were not delivered again.
    report.redeliveries = report.redeliveries.saturating_sub(report.quarantines);
    report.api_answers = api.answers();
    let rss: Vec<u64> = first
        .injected
        .rss_kib
        .iter()
        .chain(&second.injected.rss_kib)
        .copied()
        .collect();
    report.peak_rss_kib = rss.iter().copied().max().unwrap_or(0);
    report.early_rss_kib = rss[..rss.len() / 10].iter().copied().max().unwrap_or(0);

    // Exactly one result per plan across both runs; a replayed copy is not a duplicate.
    let mut printed: HashMap<&str, (u32, u32)> = HashMap::new();
    for result in first.results.iter().chain(&second.results) {
        let id = result["id"].as_str().unwrap_or("<no id>");
        let counts = printed.entry(id).or_default();
        if result["replayed"] == true {
            counts.1 += 1;
            report.replayed += 1;
        } else {
            counts.0 += 1;
        }
        match result["status"].as_str() {
            Some("succeeded") => {}
            Some("failed") => {
                report.failed += 1;
                let has_reason = result["errors"].as_array().is_some_and(|errors| {
                    errors
                        .iter()
                        .any(|e| e.as_str().is_some_and(|e| !e.trim().is_empty()))
                });
                if !has_reason {
                    problems.push(format!("a failed result carries no reason: {result}"));
                }
            }
            _ => problems.push(format!(
                "a result is neither succeeded nor failed: {result}"
            )),
        }
    }
    let ids: HashSet<String> = plans
        .iter()
        .map(|p| p["id"].as_str().expect("id").to_owned())
        .collect();
    for id in printed.keys() {
        if !ids.contains(*id) {
            problems.push(format!("a result for a plan never submitted: {id}"));
        }
    }
    let mut ids: Vec<&String> = ids.iter().collect();
    ids.sort();
    for id in ids {
        match printed.get(id.as_str()) {
            None => report.lost.push(id.clone()),
            Some((fresh, _)) if *fresh > 1 => report.duplicated.push(id.clone()),
            Some((1, replays)) => report.replayed_after_print += u64::from(*replays),
            Some(_) => {}
        }
    }
    report.wall = started.elapsed();
    report.print(soak.seed);

    if !report.lost.is_empty() {
        problems.push(format!("lost plans: {:?}", report.lost));
    }
    if !report.duplicated.is_empty() {
        problems.push(format!("duplicated plans: {:?}", report.duplicated));
    }
    if report.peak_rss_kib > RSS_LIMIT_KIB {
        problems.push(format!(
            "the supervisor's RSS reached {} KiB (limit {RSS_LIMIT_KIB} KiB)",
            report.peak_rss_kib
        ));
    }
    assert!(
        problems.is_empty(),
        "the chaos soak (seed {}) found {} problems:\n- {}\nlogs: {} and {}",
        soak.seed,
        problems.len(),
        problems.join("\n- "),
        first.log_tail(),
        second.log_tail()
    );
    report
}

/// The CI soak: a few hundred plans, every kind of fault, a `kill -9` of the supervisor.
#[test]
fn every_plan_ends_under_chaos_and_across_a_supervisor_kill() {
    let soak = Soak {
        plans: 240,
        first_run_plans: 120,
        seed: seed(),
        faults: InjectorSettings::default(),
        run_limit: Duration::from_secs(150),
    };
    let report = run_soak(&soak);
    assert!(
        report.faults.values().sum::<u64>() >= 3,
        "the soak injected worker faults: {report:?}"
    );
}

/// The long soak behind `scripts/soak`: `MNEMOSYNE_SOAK_PLANS` plans (10 000 by default).
#[test]
#[ignore = "a soak of minutes; run it with scripts/soak"]
fn a_long_soak_loses_and_duplicates_no_plan() {
    let plans = std::env::var("MNEMOSYNE_SOAK_PLANS")
        .ok()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(10_000usize);
    let soak = Soak {
        plans,
        first_run_plans: (plans / 10).clamp(2, 1000),
        seed: seed(),
        faults: InjectorSettings::default(),
        run_limit: Duration::from_secs(3 * 3600),
    };
    run_soak(&soak);
}

/// Piping the same batch again after a `kill -9` is how an operator restarts a batch that did
/// not finish: which of its plans the killed run had read is unknown to them. Each plan must
/// still end with exactly one result: the restarted supervisor resumes a plan the killed run
/// left unfinished, and the piped copy follows that run instead of being refused as already
/// in progress.
#[test]
fn a_batch_piped_again_after_a_kill_gets_exactly_one_result_per_plan() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let config = dir.path().join("stall.toml");
    std::fs::write(
        &config,
        format!(
            "[agents.executor]\ncount = 3\nargs = [{:?}, \"--role\", \"executor\"]\n\
             env = {{ FIXTURE_STALL_MARKER = \"STALL\" }}\n",
            crate::common::fixture("stall_on_marker.py")
        ),
    )
    .expect("config");
    let batch: String = (1..=4)
        .map(|n| {
            let mut plan = plan(&format!("again-{n}"));
            if n % 2 == 0 {
                plan["prompt"] = json!(format!(
                    "{} STALL",
                    plan["prompt"].as_str().expect("prompt")
                ));
            }
            plan.to_string() + "\n"
        })
        .collect();
    let supervise = |config: Option<&Path>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mnemosyne"));
        command.arg("supervise").arg("--state-dir").arg(&state);
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        command
            .current_dir(dir.path())
            .env(
                "MNEMOSYNE_CACHE_DIR",
                Path::new(env!("CARGO_TARGET_TMPDIR")).join("cache"),
            )
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    };

    // First run: the unmarked plans finish, the marked ones stall in flight; then kill -9.
    let mut first = supervise(Some(&config)).spawn().expect("first run starts");
    let mut stdin = first.stdin.take().expect("stdin");
    stdin.write_all(batch.as_bytes()).expect("batch written");
    let stderr = BufReader::new(first.stderr.take().expect("stderr"));
    let (stalls, stalled) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains("stalling on marker") && stalls.send(()).is_err() {
                break;
            }
        }
    });
    for _ in 0..2 {
        stalled
            .recv_timeout(LIMIT)
            .expect("each marked plan reaches its executor, so it is journalled");
    }
    let mut stdout = BufReader::new(first.stdout.take().expect("stdout"));
    let mut printed = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        stdout.read_line(&mut line).expect("a result");
        printed.push(serde_json::from_str::<Value>(&line).expect("JSON"));
    }
    first.kill().expect("SIGKILL the supervisor");
    first.wait().expect("reaped");
    drop(stdin);

    // Second run, the same batch piped again.
    let mut second = supervise(None).spawn().expect("second run starts");
    second
        .stdin
        .take()
        .expect("stdin")
        .write_all(batch.as_bytes())
        .expect("batch written");
    let output = second.wait_with_output().expect("second run finishes");
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        printed.push(serde_json::from_str(line).expect("JSON"));
    }
    let mut fresh: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for result in &printed {
        if result["replayed"] != true {
            fresh
                .entry(result["id"].as_str().expect("id").to_owned())
                .or_default()
                .push(result["status"].as_str().expect("status").to_owned());
        }
    }
    let duplicated: Vec<_> = fresh.iter().filter(|(_, s)| s.len() > 1).collect();
    assert!(
        duplicated.is_empty(),
        "plans with more than one result that is not a replay: {duplicated:?}"
    );
    assert_eq!(fresh.len(), 4, "every plan has a result: {fresh:?}");
    assert_eq!(
        output.status.code(),
        Some(0),
        "every plan succeeded, so the second run exits 0"
    );
}
