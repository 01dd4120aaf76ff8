//! The supervisor: the agent table, restart decisions, backoff and the event stream.

mod backoff;
mod events;
mod restart;
mod table;

pub use backoff::Backoff;
pub use events::{Event, EventBus, EventKind};
pub use restart::{DeathCause, Next, RestartRules, RestartTracker};
pub use table::{StartError, Supervisor, SupervisorOptions};
