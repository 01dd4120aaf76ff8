//! Integration tests: real `python3` workers under a real supervisor.

mod anthropic;
mod availability;
mod common;
mod control;
mod fake_api;
mod hangs;
mod lifecycle;
mod orphans;
mod plans;
mod protocol_faults;
mod restarts;
mod scale;
mod startup;
mod supervise_cli;
