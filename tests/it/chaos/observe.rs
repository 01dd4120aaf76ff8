//! What the soak learns from the supervisor's own event stream (`mnemosyne events --follow
//! --json` on the run's state directory): which worker each agent runs and in what state,
//! every worker death with its cause, quarantines, and events a slow reader missed.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long the follower keeps trying to reach a supervisor that has not opened its socket yet.
const CONNECT_LIMIT: Duration = Duration::from_secs(90);
/// Pause between two tries to connect; the socket appears once, early in a run.
const CONNECT_RETRY: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Default)]
pub struct AgentView {
    pub pid: Option<u32>,
    pub state: String,
}

/// A `worker_exited` event: a death, with the cause the supervisor gave it.
#[derive(Debug, Clone)]
pub struct Exit {
    pub cause: String,
    pub signal: Option<i64>,
    pub in_flight: usize,
}

#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub agents: HashMap<String, AgentView>,
    /// Every worker started, in order: (agent, pid).
    pub started: Vec<(String, u32)>,
    pub exits: HashMap<u32, Exit>,
    /// Agents the supervisor began to stop because it was shutting down.
    pub shutting_down: HashSet<String>,
    pub quarantines: u64,
    /// Events the follower was told it missed; the event checks need none.
    pub missed: u64,
    pub events: u64,
}

impl Observed {
    pub fn apply(&mut self, event: &Value) {
        self.events += 1;
        let agent = event["agent"].as_str().unwrap_or_default().to_owned();
        match event["event"].as_str().unwrap_or_default() {
            "worker_started" => {
                let pid = event["pid"].as_u64().expect("worker_started has a pid") as u32;
                self.started.push((agent.clone(), pid));
                self.agents.entry(agent).or_default().pid = Some(pid);
            }
            "state_changed" => {
                let to = event["to"].as_str().unwrap_or_default();
                if to == "stopping"
                    && event["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("supervisor stopping"))
                {
                    self.shutting_down.insert(agent.clone());
                }
                self.agents.entry(agent).or_default().state = to.to_owned();
            }
            "worker_exited" => {
                let pid = event["pid"].as_u64().expect("worker_exited has a pid") as u32;
                let exit = Exit {
                    cause: event["cause"].as_str().unwrap_or_default().to_owned(),
                    signal: event["exit"]["signal"].as_i64(),
                    in_flight: event["in_flight"].as_array().map_or(0, Vec::len),
                };
                self.exits.insert(pid, exit);
            }
            "job_quarantined" => self.quarantines += 1,
            "missed" => self.missed += event["count"].as_u64().unwrap_or(1),
            _ => {}
        }
    }
}

/// A thread running `mnemosyne events --follow --json` against one state directory until the
/// supervisor there is gone, feeding every event into the shared [`Observed`].
pub struct EventFollower {
    done: mpsc::Receiver<()>,
    give_up: Arc<AtomicBool>,
}

impl EventFollower {
    pub fn start(state_dir: &Path, observed: Arc<Mutex<Observed>>) -> Self {
        let state_dir = state_dir.to_owned();
        let (finished, done) = mpsc::channel();
        let give_up = Arc::new(AtomicBool::new(false));
        let stop = give_up.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + CONNECT_LIMIT;
            // Until the supervisor's socket exists the command fails at once; then it streams
            // until the supervisor exits.
            while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
                let mut child = Command::new(env!("CARGO_BIN_EXE_mnemosyne"))
                    .args(["events", "--follow", "--json", "--state-dir"])
                    .arg(&state_dir)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("mnemosyne events starts");
                let stdout = child.stdout.take().expect("stdout");
                let mut lines = 0;
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    lines += 1;
                    let event: Value = serde_json::from_str(&line).expect("events are JSON");
                    observed
                        .lock()
                        .expect("the observer lock is never poisoned")
                        .apply(&event);
                }
                let _ = child.wait();
                if lines > 0 {
                    break;
                }
                std::thread::sleep(CONNECT_RETRY);
            }
            let _ = finished.send(());
        });
        Self { done, give_up }
    }

    /// Waits (at most `limit`) for the stream to end, which it does when the supervisor exits.
    pub fn finish(self, limit: Duration) {
        self.give_up.store(true, Ordering::SeqCst);
        self.done
            .recv_timeout(limit)
            .expect("the event stream ends once the supervisor is gone");
    }
}
