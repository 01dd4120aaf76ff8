//! The supervisor: the agent table, restart decisions, backoff, the event stream, and whether
//! each role can take work.

mod availability;
mod backoff;
mod blueprint;
mod directory;
mod events;
mod reload;
mod restart;
mod table;

pub use availability::{
    AgentCondition, AgentFailure, RoleCondition, RoleFailure, RoleHealth, RoleUnavailable,
    StartupFailure, agent_condition, role_condition,
};
pub use backoff::Backoff;
pub use directory::AgentDirectory;
pub use events::{Event, EventBus, EventKind};
pub use reload::{ReloadError, ReloadReport};
pub use restart::{DeathCause, Next, RestartRules, RestartTracker};
pub use table::{StartError, Supervisor, SupervisorOptions};
