//! The monitor daemon: loads the kernel sensors, keeps the process table, and reports.
pub mod cli;
pub mod config;
pub mod daemon;
pub mod event;
pub mod host;
pub mod kernel;
pub mod learn;
pub mod output;
pub mod pipeline;
pub mod rules;
pub mod telemetry;
#[cfg(test)]
pub(crate) mod test_support;
