//! `bench-run`: the driver behind `cargo xtask bench` (run that instead: it builds what this
//! needs and installs bpftrace).

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "bench-run",
    about = "Runs the overhead benchmarks side by side (as root)"
)]
struct Cli {
    /// Tiny sizes and 3 rounds: proves the harness works, in about a minute.
    #[arg(long)]
    quick: bool,
    /// The monitor binary (release build).
    #[arg(long)]
    monitor: PathBuf,
    /// The bench-workload binary.
    #[arg(long)]
    workload: PathBuf,
    /// Where results.md and results.json go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// bpftrace, when installed.
    #[arg(long)]
    bpftrace: Option<PathBuf>,
    /// The command line to show in the report.
    #[arg(long, default_value = "cargo xtask bench")]
    command: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let options = bench::driver::Options {
        quick: cli.quick,
        monitor: cli.monitor,
        workload: cli.workload,
        out_dir: cli.out,
        command: cli.command,
        bpftrace: cli.bpftrace,
    };
    let outcome = bench::driver::run(&options);
    bench::driver::flush();
    match outcome {
        Ok(results) if results.failures.is_empty() => ExitCode::SUCCESS,
        Ok(results) => {
            for failure in &results.failures {
                eprintln!("bench: failed: {failure}");
            }
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("bench-run: {err:#}");
            ExitCode::FAILURE
        }
    }
}
