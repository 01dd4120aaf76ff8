//! Work plans: the input format, the task graph, the journal, and running plans through the agents.

mod claims;
pub mod graph;
pub mod intake;
pub mod journal;
pub mod model;
pub mod result;
pub mod runner;
pub mod service;
pub mod statedir;
