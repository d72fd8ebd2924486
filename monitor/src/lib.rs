//! The monitor daemon: loads the kernel sensors, keeps the process table, and reports.
pub mod alert;
pub mod btf;
pub mod cgroup;
pub mod cli;
pub mod clock;
pub mod container;
pub mod daemon;
pub mod events;
pub mod glob;
pub mod logging;
pub mod output;
pub mod pipeline;
pub mod process;
pub mod procfs;
pub mod sensor;
pub mod sink;
