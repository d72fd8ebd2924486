//! Command-line interface.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    glob::Glob,
    pipeline::{Mode, PipelineOptions, WatchSelectors},
    sensor::SensorOptions,
    sink::{AlertSink, JsonLines},
};

/// eBPF runtime security monitor for AI inference hosts.
#[derive(Parser, Debug)]
#[command(name = "monitor", version, about)]
pub struct Cli {
    /// Log filter (also RUST_LOG), e.g. `info`, `monitor=debug`.
    #[arg(long, global = true, default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the monitor as a daemon: keep the process table, report alerts as JSON lines.
    Run(RunArgs),
    /// Print every event of the watched processes as one JSON object per line.
    Trace(TraceArgs),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct TraceArgs {
    /// Watch this process and its descendants (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Watch processes whose executable matches this glob (repeatable; `*` stays within a
    /// path component, `**` crosses them).
    #[arg(long = "exe", value_name = "GLOB")]
    pub exes: Vec<String>,
    /// Watch every process.
    #[arg(long)]
    pub all: bool,
    /// Report opens of files below this directory by any process (repeatable).
    #[arg(long = "protect", value_name = "DIR")]
    pub protect: Vec<PathBuf>,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct CommonArgs {
    /// Ring buffer size in bytes (a power of two, at least 4096).
    #[arg(long, default_value_t = 8 << 20, value_name = "BYTES")]
    pub ring_size: u32,
    /// How often the reader drains the ring buffer.
    #[arg(long, default_value_t = 10, value_name = "MS")]
    pub drain_interval_ms: u64,
    /// Wake the reader early once this many bytes wait in the ring buffer.
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    pub wakeup_bytes: u64,
    /// Create this file (containing the pid) once all programs are attached and /proc is
    /// scanned; removed at exit.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
    /// The cgroup (v2) whose processes the device hook sees (default: the cgroup v2 root,
    /// i.e. the whole host).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Treat character-device major N as an accelerator class (repeatable), e.g. 1=accel.
    #[arg(long = "accel-major", value_name = "N=CLASS", value_parser = crate::devices::parse_accel_major)]
    pub accel_majors: Vec<(u32, crate::events::DeviceClass)>,
    /// How often per-process GPU ioctl counts are reported.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub ioctl_summary_secs: u64,
}

impl CommonArgs {
    pub fn sensor_options(&self, watch_all: bool) -> SensorOptions {
        let mut accel_majors = crate::devices::AccelMajors::detect();
        for &(major, class) in &self.accel_majors {
            accel_majors.insert(major, class);
        }
        SensorOptions {
            ring_size: self.ring_size,
            wakeup_bytes: self.wakeup_bytes,
            watch_all,
            protect_dirs: Vec::new(),
            protect_suffixes: Vec::new(),
            protect_always: false,
            exec_candidates: Vec::new(),
            accel_majors,
            cgroup: self.cgroup.clone(),
        }
    }

    pub fn pipeline_options(&self) -> PipelineOptions {
        PipelineOptions {
            drain_interval: Duration::from_millis(self.drain_interval_ms.max(1)),
            ready_file: self.ready_file.clone(),
            ioctl_summary: Duration::from_secs(self.ioctl_summary_secs.max(1)),
            ..PipelineOptions::default()
        }
    }
}

impl TraceArgs {
    pub fn selectors(&self) -> anyhow::Result<WatchSelectors> {
        if !self.all && self.pids.is_empty() && self.exes.is_empty() {
            anyhow::bail!("nothing to trace: give --pid PID, --exe GLOB or --all");
        }
        let exes = self
            .exes
            .iter()
            .map(|g| Glob::new(g).map_err(|e| anyhow::anyhow!("invalid --exe: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(WatchSelectors {
            all: self.all,
            pids: self.pids.clone(),
            exes,
        })
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let stdout = std::io::BufWriter::new(std::io::stdout().lock());
    match cli.command {
        Command::Run(args) => {
            let sinks: Vec<Box<dyn AlertSink>> = vec![Box::new(JsonLines::new(
                std::io::BufWriter::new(std::io::stdout()),
            ))];
            crate::daemon::run(
                Mode::Run,
                args.common.sensor_options(false),
                args.common.pipeline_options(),
                WatchSelectors::default(),
                std::io::sink(),
                sinks,
            )
            .await
        }
        Command::Trace(args) => {
            let selectors = args.selectors()?;
            let mut sensor_options = args.common.sensor_options(args.all);
            sensor_options.protect_dirs = args.protect.clone();
            crate::daemon::run(
                Mode::Trace,
                sensor_options,
                args.common.pipeline_options(),
                selectors,
                stdout,
                Vec::new(),
            )
            .await
        }
    }
}
