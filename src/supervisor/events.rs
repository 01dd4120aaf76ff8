//! The event stream: every agent state change, crash report and notable occurrence, numbered
//! in order, broadcast to any number of readers and kept in a bounded history.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Serialize, Serializer};
use tokio::sync::broadcast;

use crate::agent::{CrashReport, StateName};

/// Events kept for readers that connect late (`mnemosyne events` without `--follow`).
const HISTORY_LEN: usize = 1024;
/// How far a live reader may fall behind before it misses events (it is told how many).
const BROADCAST_CAPACITY: usize = 4096;

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub seq: u64,
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    StateChanged {
        from: StateName,
        to: StateName,
        reason: String,
    },
    WorkerStarted {
        pid: u32,
    },
    WorkerExited(Box<CrashReport>),
    /// Stray lines or unknown message types from a worker, merged: `count` of them since the
    /// previous such event for the agent (at most one a second), `kind` and `detail` of the
    /// latest.
    ProtocolNoise {
        kind: String,
        detail: String,
        count: u64,
    },
    JobQuarantined {
        job: String,
        deliveries: u32,
    },
    /// A changed configuration was applied (`mnemosyne reload` or SIGHUP); `halted` names the
    /// agent whose replacement did not come back ready, if one did not.
    ConfigReloaded {
        changed: Vec<String>,
        needs_restart: Vec<String>,
        restarted: Vec<String>,
        added: Vec<String>,
        removed: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        halted: Option<String>,
    },
    /// A plan's model calls crossed a context-utilisation threshold (`preserve` at 75 %,
    /// `critical` at 90 %); raised once per upward crossing.
    ContextPressure {
        plan: String,
        task: String,
        level: String,
        utilisation: f64,
    },
}

fn rfc3339<S: Serializer>(at: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_rfc3339_millis(*at))
}

/// Hands out sequence numbers and fans events out. Cloning shares the same stream.
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<Mutex<BusState>>,
    sender: broadcast::Sender<Arc<Event>>,
}

struct BusState {
    next_seq: u64,
    history: VecDeque<Arc<Event>>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    pub fn new() -> Self {
        let (sender, _) = broadcast::channel(BROADCAST_CAPACITY);
        Self {
            inner: Arc::new(Mutex::new(BusState {
                next_seq: 1,
                history: VecDeque::new(),
            })),
            sender,
        }
    }

    pub fn publish(&self, agent: Option<&str>, kind: EventKind) -> Arc<Event> {
        // Numbering and sending under one lock keeps sequence order and delivery order equal.
        let mut state = self.inner.lock().expect("event bus lock is never poisoned");
        let event = Arc::new(Event {
            seq: state.next_seq,
            at: SystemTime::now(),
            agent: agent.map(str::to_owned),
            kind,
        });
        state.next_seq += 1;
        if state.history.len() == HISTORY_LEN {
            state.history.pop_front();
        }
        state.history.push_back(event.clone());
        let _ = self.sender.send(event.clone());
        event
    }

    /// A live subscription. Lagging readers get `RecvError::Lagged(n)` with the number missed.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.sender.subscribe()
    }

    /// The kept history and a subscription that continues exactly after it.
    pub fn history_and_subscribe(&self) -> (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>) {
        let state = self.inner.lock().expect("event bus lock is never poisoned");
        (
            state.history.iter().cloned().collect(),
            self.sender.subscribe(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_increase_strictly_and_history_matches_live_stream() {
        let bus = EventBus::new();
        let mut live = bus.subscribe();
        for n in 0..3 {
            bus.publish(Some("executor-1"), EventKind::WorkerStarted { pid: n });
        }
        let (history, _) = bus.history_and_subscribe();
        let seqs: Vec<u64> = history.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        for expected in 1..=3 {
            assert_eq!(live.try_recv().expect("event was broadcast").seq, expected);
        }
    }

    #[test]
    fn events_serialise_flat_with_a_timestamp() {
        let bus = EventBus::new();
        let event = bus.publish(Some("reviewer-1"), EventKind::WorkerStarted { pid: 42 });
        let json = serde_json::to_value(&*event).expect("events serialise");
        assert_eq!(json["event"], "worker_started");
        assert_eq!(json["agent"], "reviewer-1");
        assert_eq!(json["pid"], 42);
        assert!(json["at"].as_str().expect("timestamp").ends_with('Z'));
    }
}
