//! One agent: a slot that always wants a live worker of its role, run by one actor task and
//! driven through a cloneable handle.

mod actor;
mod connection;
mod death;
mod handle;
mod in_flight;
mod job;
mod messages;
mod noise;
mod state;
mod timers;

pub(crate) use actor::{AgentActor, AgentContext, AgentSpec};
pub use handle::{AgentCommandError, AgentHandle};
pub use job::{DeliveryFailure, Job, JobError, JobOutcome, JobRequest};
pub use state::{AgentState, AgentStatus, CrashReport, LastExit, StateName};
pub(crate) use timers::Timing;
