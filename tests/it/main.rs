//! Integration tests: real `python3` workers under a real supervisor.

mod anthropic;
mod availability;
mod chaos;
mod common;
mod completions;
mod control;
mod fake_api;
mod flood;
mod hangs;
mod hostile_input;
mod leaks;
mod lifecycle;
mod orphans;
mod plans;
mod properties;
mod protocol_faults;
mod reload;
mod restarts;
mod sandbox;
mod scale;
mod startup;
mod submit;
mod supervise_cli;
