//! Overhead benchmarks of the monitor (`cargo xtask bench`).
//!
//! - `bench-workload` (a binary): the timed system-call loops the monitor is measured on.
//! - `bench-run` (a binary, [`driver`]): runs them side by side, interleaved, under no monitor,
//!   the monitor and bpftrace, and writes `target/bench/results.{md,json}`.
//! - [`pipeline`]: the daemon's user-space decode + process table + rules on recorded events
//!   (also a criterion benchmark: `cargo bench -p bench`).

pub mod driver;
pub mod pipeline;
pub mod stats;
