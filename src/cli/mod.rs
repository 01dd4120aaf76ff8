//! The command line: one module per verb.

pub mod agents;
pub mod control_verbs;
pub mod events;
pub mod logs;
mod paths;
pub mod reload;
mod reloader;
mod stdout;
pub mod submit;
pub mod supervise;

pub use paths::cache_dir;
pub use reloader::ConfigSource;
