//! The command line: one module per verb.

mod paths;
pub mod supervise;

pub use paths::cache_dir;
