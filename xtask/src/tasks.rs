//! `cargo xtask build|run|test|lint`.

use std::{ffi::OsString, process::ExitCode, time::Instant};

use anyhow::{bail, Result};

use crate::{
    cmd::{describe, exit_code, fmt_duration, is_root, which, Cmd, Workspace},
    setup::setup,
};

const BUILD_HINT: &str = "; see the compiler output above";

pub fn build(ws: &Workspace, release: bool) -> Result<()> {
    setup(ws)?;
    build_monitor(ws, release)
}

fn build_monitor(ws: &Workspace, release: bool) -> Result<()> {
    let mut cargo = ws.cargo().args(["build", "-p", "monitor"]);
    if release {
        cargo = cargo.arg("--release");
    }
    cargo.run("build monitor", BUILD_HINT)
}

/// Builds the monitor and runs it as root, forwarding its exit code.
pub fn run(ws: &Workspace, debug: bool, args: Vec<OsString>) -> Result<ExitCode> {
    setup(ws)?;
    build_monitor(ws, !debug)?;
    let profile = if debug { "debug" } else { "release" };
    let monitor = ws.target_dir.join(profile).join("monitor");
    let args = if args.is_empty() {
        vec![OsString::from("run")]
    } else {
        args
    };
    let cmd = if is_root() {
        Cmd::new(&monitor).args(&args)
    } else if let Some(sudo) = which("sudo") {
        eprintln!("==> monitor loads eBPF programs and needs root; running it through sudo");
        Cmd::new(sudo).arg("-E").arg(&monitor).args(&args)
    } else {
        bail!(
            "failed to run monitor: it loads eBPF programs and needs root, and sudo was not \
             found; run `cargo xtask run` as root"
        );
    };
    let status = cmd.status_ignoring_sigint()?;
    if !status.success() {
        eprintln!("==> monitor {}", describe(status));
    }
    Ok(ExitCode::from(exit_code(status)))
}

/// How one phase of `test` or `lint` ended.
enum Outcome {
    Passed,
    Failed(String),
    Skipped(&'static str),
}

struct Phase {
    name: &'static str,
    outcome: Outcome,
    seconds: Option<String>,
}

/// Records phases, prints each failure as it happens and a one-line summary at the end.
#[derive(Default)]
struct Phases(Vec<Phase>);

impl Phases {
    /// Runs `phase` under a `==> name` header and records how it ended; returns whether it passed.
    fn run(&mut self, name: &'static str, phase: impl FnOnce() -> Result<()>) -> bool {
        eprintln!("==> {name}");
        let start = Instant::now();
        let outcome = match phase() {
            Ok(()) => Outcome::Passed,
            Err(err) => {
                eprintln!("error: {err:#}");
                Outcome::Failed(format!("{err:#}"))
            }
        };
        let passed = matches!(outcome, Outcome::Passed);
        self.0.push(Phase {
            name,
            outcome,
            seconds: Some(fmt_duration(start.elapsed())),
        });
        passed
    }

    fn skip(&mut self, name: &'static str, why: &'static str) {
        eprintln!("==> {name}: skipped, {why}");
        self.0.push(Phase {
            name,
            outcome: Outcome::Skipped(why),
            seconds: None,
        });
    }

    /// Prints the failures again, then the summary line last; the exit code says if all passed.
    fn finish(self, task: &str) -> ExitCode {
        let failures: Vec<_> = self
            .0
            .iter()
            .filter_map(|phase| match &phase.outcome {
                Outcome::Failed(err) => Some(err.as_str()),
                _ => None,
            })
            .collect();
        if !failures.is_empty() {
            eprintln!();
            for failure in &failures {
                eprintln!("error: {failure}");
            }
        }
        let summary: Vec<String> = self
            .0
            .iter()
            .map(|phase| {
                let outcome = match phase.outcome {
                    Outcome::Passed => "ok".to_owned(),
                    Outcome::Failed(_) => "FAILED".to_owned(),
                    Outcome::Skipped(why) => format!("skipped ({why})"),
                };
                match &phase.seconds {
                    Some(seconds) => format!("{} {outcome} in {seconds}", phase.name),
                    None => format!("{} {outcome}", phase.name),
                }
            })
            .collect();
        let verdict = if failures.is_empty() {
            "passed"
        } else {
            "FAILED"
        };
        eprintln!("==> {task} {verdict}: {}", summary.join(", "));
        if failures.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

/// Unit tests, the release build, then the end-to-end tests (as root).
pub fn test(ws: &Workspace, extra: &[OsString]) -> ExitCode {
    let mut phases = Phases::default();
    if !phases.run("setup", || setup(ws)) {
        return phases.finish("test");
    }
    phases.run("unit tests", || {
        ws.cargo()
            .args([
                "test",
                "--workspace",
                "--exclude",
                "tests",
                "--exclude",
                "monitor-ebpf",
            ])
            .run("pass the unit tests", "; see the test output above")
    });
    let built = phases.run("release build", || build_monitor(ws, true));
    if !built {
        phases.skip("end-to-end tests", "the release build failed");
        return phases.finish("test");
    }
    phases.run("end-to-end tests", || {
        if !is_root() {
            bail!(
                "failed to run the end-to-end tests: end-to-end tests load eBPF programs and \
                 need root; run `sudo -E cargo xtask test`"
            );
        }
        // Podman for tests/tests/containers.rs (they skip, saying why, without it).
        crate::setup::container_tools();
        let monitor = ws.target_dir.join("release").join("monitor");
        let monitor = std::path::absolute(&monitor).unwrap_or(monitor);
        ws.cargo()
            .env("MONITOR_BIN", &monitor)
            // --tests: the harness library has no doc tests, and an empty doc-test run as
            // the last output would read as "no test ran".
            .args([
                "test",
                "--release",
                "-p",
                "tests",
                "--tests",
                // Every suite runs, so one failing binary does not hide the others' results.
                "--no-fail-fast",
                "--",
                "--test-threads=1",
            ])
            .args(extra)
            .run("pass the end-to-end tests", "; see the test output above")
    });
    // The real servers under the built-in profiles (issue 13): vLLM and llama-server cold and
    // warm, no false alert, every planted attack caught. Installs are cached outside the
    // repository; a first run installs them (about 20 minutes on a fresh machine), later
    // runs take about 5. Not with a test filter (`cargo xtask test -- NAME`), nor with
    // MONITOR_SKIP_REALSERVE=1 (for a quick local run; CI runs it).
    if extra.is_empty() && std::env::var_os("MONITOR_SKIP_REALSERVE").is_none() {
        phases.run("real servers (cargo xtask realserve)", || {
            if crate::realserve::realserve(ws, None)? == std::process::ExitCode::SUCCESS {
                Ok(())
            } else {
                bail!(
                    "failed to pass realserve: false alerts or a missed attack; see its summary \
                     above and the alerts it saved under its cache"
                )
            }
        });
    } else {
        phases.skip(
            "real servers (cargo xtask realserve)",
            "a test filter or MONITOR_SKIP_REALSERVE was given",
        );
    }
    phases.finish("test")
}

/// rustfmt and clippy over the workspace.
pub fn lint(ws: &Workspace) -> ExitCode {
    let mut phases = Phases::default();
    phases.run("rustfmt", || {
        ws.cargo()
            .args(["fmt", "--all", "--check"])
            .run("check the formatting", "; run `cargo fmt --all` to fix it")
    });
    // Clippy compiles `monitor`, whose build script builds the eBPF programs.
    if phases.run("setup", || setup(ws)) {
        phases.run("clippy", || {
            ws.cargo()
                .args([
                    "clippy",
                    "--workspace",
                    "--exclude",
                    "monitor-ebpf",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ])
                .run("pass clippy", "; fix the warnings above")
        });
        // monitor/src is layered by data flow, without import cycles between its folders.
        phases.run("layering", || {
            ws.cargo()
                .args(["test", "-p", "monitor", "--test", "layering"])
                .run(
                    "check the layering of monitor/src",
                    "; move the item named above down to the layer of its users",
                )
        });
    } else {
        phases.skip("clippy", "setup failed");
        phases.skip("layering", "setup failed");
    }
    phases.finish("lint")
}
