//! The fault injector: at random moments it picks a random worker that is up (ready or busy)
//! and SIGKILLs it, SIGSTOPs it (a hang the heartbeat must find), or SIGUSR1s it, which makes
//! the `chaos_worker.py` fixture write garbage on its protocol stream. Each worker is hit at
//! most once, so each fault has exactly one death to answer for. Faults are paced by recovery,
//! not by the clock alone: a fault waits until fewer than `max_down` agents are down (not up,
//! or hit and not yet replaced). A restart costs seconds of importing the SDK on a loaded
//! machine, and a purely clock-paced injector there keeps every worker down and the batch
//! from moving at all. The same thread samples the supervisor's resident memory.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::observe::Observed;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    Kill,
    Stop,
    Garbage,
}

impl FaultKind {
    fn signal(self) -> Signal {
        match self {
            FaultKind::Kill => Signal::SIGKILL,
            FaultKind::Stop => Signal::SIGSTOP,
            FaultKind::Garbage => Signal::SIGUSR1,
        }
    }

    /// The cause the supervisor must give the death this fault brings.
    pub fn expected_cause(self) -> &'static str {
        match self {
            FaultKind::Kill => "crash",
            FaultKind::Stop => "hang",
            FaultKind::Garbage => "protocol",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultKind::Kill => "sigkill",
            FaultKind::Stop => "sigstop",
            FaultKind::Garbage => "garbage",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Fault {
    pub kind: FaultKind,
    pub agent: String,
    pub pid: u32,
}

#[derive(Debug, Clone)]
pub struct InjectorSettings {
    /// A fault waits until fewer agents than this are down.
    pub max_down: usize,
    /// The gap before the next try to inject, drawn from this range of milliseconds.
    pub gap_ms: (u64, u64),
    /// Relative weights of SIGKILL, SIGSTOP and garbage.
    pub weights: [(FaultKind, u32); 3],
}

impl Default for InjectorSettings {
    fn default() -> Self {
        Self {
            max_down: 3,
            gap_ms: (100, 700),
            // A stopped worker costs five heartbeats before it is found, so fewer of those.
            weights: [
                (FaultKind::Kill, 4),
                (FaultKind::Stop, 2),
                (FaultKind::Garbage, 4),
            ],
        }
    }
}

/// What the injector did, once stopped.
pub struct Injected {
    pub faults: Vec<Fault>,
    pub rss_kib: Vec<u64>,
}

pub struct Injector {
    thread: JoinHandle<Injected>,
    end: Arc<AtomicBool>,
}

impl Injector {
    /// Starts injecting while `results` is below `faults_until` (so late faults do not race
    /// the supervisor's own shutdown), sampling `supervisor`'s memory until stopped.
    pub fn start(
        settings: InjectorSettings,
        seed: u64,
        observed: Arc<Mutex<Observed>>,
        supervisor: u32,
        results: Arc<AtomicUsize>,
        faults_until: usize,
    ) -> Self {
        let end = Arc::new(AtomicBool::new(false));
        let stop = end.clone();
        let thread = std::thread::spawn(move || {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut faults = Vec::new();
            let mut hit = std::collections::HashSet::new();
            let mut rss_kib = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                // A random moment, not a wait for anything: a sleep is what is meant here.
                std::thread::sleep(Duration::from_millis(
                    rng.u64(settings.gap_ms.0..=settings.gap_ms.1),
                ));
                if let Some(rss) = rss_of(supervisor) {
                    rss_kib.push(rss);
                }
                if results.load(Ordering::SeqCst) >= faults_until {
                    continue;
                }
                let observed = observed
                    .lock()
                    .expect("the observer lock is never poisoned");
                let down = observed
                    .agents
                    .values()
                    .filter(|view| {
                        !matches!(view.state.as_str(), "ready" | "busy")
                            || view.pid.is_some_and(|pid| hit.contains(&pid))
                    })
                    .count();
                if observed.agents.is_empty() || down >= settings.max_down {
                    continue;
                }
                let mut up: Vec<(&String, u32)> = observed
                    .agents
                    .iter()
                    .filter(|(agent, view)| {
                        matches!(view.state.as_str(), "ready" | "busy")
                            && !observed.shutting_down.contains(*agent)
                    })
                    .filter_map(|(agent, view)| view.pid.map(|pid| (agent, pid)))
                    .filter(|(_, pid)| !hit.contains(pid))
                    .collect();
                if up.is_empty() {
                    continue;
                }
                // Sorted, so that a seed picks the same victims from the same table.
                up.sort();
                let (agent, pid) = up[rng.usize(..up.len())];
                let kind = pick(&mut rng, &settings.weights);
                // The worker may have died a moment ago, its death not yet read: then the
                // signal fails (or hits a zombie, and the cause check reports the mix-up).
                if kill(Pid::from_raw(pid as i32), kind.signal()).is_ok() {
                    hit.insert(pid);
                    faults.push(Fault {
                        kind,
                        agent: agent.clone(),
                        pid,
                    });
                }
            }
            Injected { faults, rss_kib }
        });
        Self { thread, end }
    }

    pub fn finish(self) -> Injected {
        self.end.store(true, Ordering::SeqCst);
        self.thread.join().expect("the injector does not panic")
    }
}

fn pick(rng: &mut fastrand::Rng, weights: &[(FaultKind, u32); 3]) -> FaultKind {
    let total: u32 = weights.iter().map(|(_, w)| w).sum();
    let mut roll = rng.u32(..total);
    for (kind, weight) in weights {
        if roll < *weight {
            return *kind;
        }
        roll -= weight;
    }
    unreachable!("the roll is below the total of the weights")
}

/// Resident memory of `pid` in KiB, while it lives.
pub fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
