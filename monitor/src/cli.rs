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
}

impl CommonArgs {
    pub fn sensor_options(&self, watch_all: bool) -> SensorOptions {
        SensorOptions {
            ring_size: self.ring_size,
            wakeup_bytes: self.wakeup_bytes,
            watch_all,
        }
    }

    pub fn pipeline_options(&self) -> PipelineOptions {
        PipelineOptions {
            drain_interval: Duration::from_millis(self.drain_interval_ms.max(1)),
            ready_file: self.ready_file.clone(),
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
            crate::daemon::run(
                Mode::Trace,
                args.common.sensor_options(args.all),
                args.common.pipeline_options(),
                selectors,
                stdout,
                Vec::new(),
            )
            .await
        }
    }
}
