//! `cargo xtask bench [--quick]`: builds the monitor and the `bench` crate in release, installs
//! bpftrace (the peer) when it is missing, then runs `bench-run` as root, which measures
//! everything side by side and writes `target/bench/results.{md,json}`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{bail, Result};

use crate::{
    cmd::{describe, exit_code, is_root, which, Cmd, Workspace},
    setup::setup,
};

const BUILD_HINT: &str = "; see the compiler output above";

pub fn bench(ws: &Workspace, quick: bool) -> Result<ExitCode> {
    setup(ws)?;
    ws.cargo()
        .args(["build", "--release", "-p", "monitor"])
        .run("build monitor", BUILD_HINT)?;
    ws.cargo()
        .args(["build", "--release", "-p", "bench", "--bins"])
        .run("build the benchmark workloads and driver", BUILD_HINT)?;
    let release = ws.target_dir.join("release");
    let bpftrace = bpftrace(quick);
    let driver = release.join("bench-run");
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    if quick {
        args.push("--quick".into());
    }
    args.push("--monitor".into());
    args.push(release.join("monitor").into());
    args.push("--workload".into());
    args.push(release.join("bench-workload").into());
    args.push("--out".into());
    args.push(ws.target_dir.join("bench").into());
    args.push("--command".into());
    args.push(
        if quick {
            "cargo xtask bench --quick"
        } else {
            "cargo xtask bench"
        }
        .into(),
    );
    if let Some(bpftrace) = &bpftrace {
        args.push("--bpftrace".into());
        args.push(bpftrace.into());
    }
    let cmd = if is_root() {
        Cmd::new(&driver).args(&args)
    } else if let Some(sudo) = which("sudo") {
        eprintln!("==> the benchmark loads eBPF programs and needs root; running it through sudo");
        Cmd::new(sudo).arg("-E").arg(&driver).args(&args)
    } else {
        bail!(
            "failed to run the benchmark: it loads eBPF programs and needs root, and sudo was \
             not found; run `cargo xtask bench` as root"
        );
    };
    let status = cmd.status_ignoring_sigint()?;
    if !status.success() {
        eprintln!("==> bench-run {}", describe(status));
    }
    Ok(ExitCode::from(exit_code(status)))
}

/// bpftrace, installed with apt-get for a full run when it is missing (as root); `None` (the
/// report says its columns were skipped) when it cannot be had.
fn bpftrace(quick: bool) -> Option<PathBuf> {
    eprintln!("==> checking bpftrace (the peer the monitor is compared with)");
    if let Some(path) = which("bpftrace") {
        eprintln!("    already present ({})", path.display());
        return Some(path);
    }
    if quick {
        eprintln!("    missing; a quick run skips it (a full run installs it)");
        return None;
    }
    let Some(apt_get) = which("apt-get") else {
        eprintln!("    missing, and apt-get was not found: its columns will be skipped");
        return None;
    };
    if !is_root() {
        eprintln!(
            "    missing, and not running as root: its columns will be skipped (install it with \
             `apt-get install -y bpftrace`)"
        );
        return None;
    }
    eprintln!("    missing; installing it with apt-get");
    let installed = Cmd::new(&apt_get)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .arg("update")
        .run("update the apt package lists", "")
        .and_then(|()| {
            Cmd::new(&apt_get)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "bpftrace"])
                .run("install bpftrace", "")
        });
    match installed {
        Ok(()) => which("bpftrace"),
        Err(err) => {
            eprintln!("    {err:#}; its columns will be skipped");
            None
        }
    }
}
