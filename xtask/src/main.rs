//! `cargo xtask`: sets up the eBPF toolchain, then builds, runs, tests and lints the monitor.
//!
//! Every task prints each command before running it (`$ cargo build ...`) and says in a
//! lowercase `failed to ...` error what went wrong and what to do about it.

mod bench;
mod cmd;
mod realserve;
mod setup;
mod tasks;

use std::{ffi::OsString, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::cmd::Workspace;

#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
#[command(about = "Development tasks for the monitor workspace")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building the eBPF programs needs (idempotent): the nightly toolchain with
    /// rust-src, the LLVM 22 development files and bpf-linker
    Setup,
    /// Set up, then build the monitor
    Build {
        /// Build with the release profile
        #[arg(long)]
        release: bool,
    },
    /// Set up, build the monitor in release, and run it as root (through sudo if needed)
    Run {
        /// Build and run the debug profile instead of release
        #[arg(long)]
        debug: bool,
        /// Arguments for the monitor (default: `run`)
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Set up, run the unit tests, build in release, then run the end-to-end tests as root
    Test {
        /// Extra arguments for the end-to-end test binary (e.g. a test name filter)
        #[arg(last = true)]
        extra: Vec<OsString>,
    },
    /// Check formatting (rustfmt) and lints (clippy, warnings denied)
    Lint,
    /// Set up, build in release, and measure the monitor's overhead side by side with no
    /// monitor and bpftrace (as root); writes target/bench/results.{md,json}
    Bench {
        /// 3 rounds of tiny sizes: proves the harness works (about a minute)
        #[arg(long)]
        quick: bool,
    },
    /// Run the real inference servers (vLLM CPU build, llama.cpp llama-server) under the
    /// release monitor's built-in profiles (as root): installs them into a cache outside the
    /// repository ($MONITOR_REALSERVE_CACHE, default /var/cache/monitor-realserve), drives a
    /// realistic load cold and warm, reports false alerts, and checks planted attacks are caught
    Realserve {
        /// Only this server: vllm, llama-cpp, or vLLM installed another way: vllm-uv,
        /// vllm-system, vllm-container
        name: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.task) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<ExitCode> {
    cmd::add_cargo_bin_to_path()?;
    let ws = Workspace::locate()?;
    match task {
        Task::Setup => setup::setup(&ws).map(|()| ExitCode::SUCCESS),
        Task::Build { release } => tasks::build(&ws, release).map(|()| ExitCode::SUCCESS),
        Task::Run { debug, args } => tasks::run(&ws, debug, args),
        Task::Test { extra } => Ok(tasks::test(&ws, &extra)),
        Task::Lint => Ok(tasks::lint(&ws)),
        Task::Bench { quick } => bench::bench(&ws, quick),
        Task::Realserve { name } => realserve::realserve(&ws, name),
    }
}
