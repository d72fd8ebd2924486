//! `cargo xtask setup`: installs what building the eBPF programs needs, idempotently.
//!
//! The nightly toolchain with `rust-src` (aya-build builds `monitor-ebpf` with it), the LLVM 22
//! development files, and bpf-linker built against them (it must use rustc's LLVM major).

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{bail, Result};

use crate::cmd::{
    cargo_home, describe, fmt_duration, is_executable, is_root, which, Cmd, Workspace,
};

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const LLVM_PACKAGES: [&str; 4] = [
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
];

/// Runs every set-up step, printing what each does and how long it took.
pub fn setup(ws: &Workspace) -> Result<()> {
    let start = Instant::now();
    let rustup = rustup()?;
    nightly_toolchain(&rustup)?;
    nightly_rust_src(&rustup)?;
    llvm()?;
    bpf_linker(ws)?;
    eprintln!("==> setup finished in {}", fmt_duration(start.elapsed()));
    Ok(())
}

/// Prints the step header; the returned timer prints how the step ended.
fn step(what: &str) -> Step {
    eprintln!("==> {what}");
    Step {
        start: Instant::now(),
    }
}

struct Step {
    start: Instant,
}

impl Step {
    fn present(self, detail: &str) {
        if detail.is_empty() {
            eprintln!("    already present");
        } else {
            eprintln!("    already present ({detail})");
        }
    }

    fn installing(&self, note: &str) {
        eprintln!("    missing; {note}");
    }

    fn done(self) {
        eprintln!("    done in {}", fmt_duration(self.start.elapsed()));
    }
}

fn rustup() -> Result<PathBuf> {
    let step = step("checking for rustup");
    // `PATH` already includes cargo's bin directory (see `add_cargo_bin_to_path`).
    let Some(rustup) = which("rustup") else {
        bail!(
            "failed to find rustup: it is neither in PATH nor in ~/.cargo/bin; install it from \
             https://rustup.rs (`curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh`), \
             then run `cargo xtask setup` again"
        );
    };
    step.present(&rustup.display().to_string());
    Ok(rustup)
}

/// Runs a probe and returns its stdout, or an error that says which command failed.
fn probe(cmd: Cmd, what: &str) -> Result<String> {
    let shown = cmd.shown();
    let output = match cmd.output_quiet() {
        Ok(output) => output,
        Err(err) => bail!("failed to {what}: could not start `{shown}`: {err}"),
    };
    if !output.status.success() {
        bail!(
            "failed to {what}: `{shown}` {}: {}",
            describe(output.status),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn nightly_toolchain(rustup: &Path) -> Result<()> {
    let step = step("checking the nightly toolchain (builds the eBPF programs)");
    let list = probe(
        Cmd::new(rustup).args(["toolchain", "list"]),
        "list the rustup toolchains",
    )?;
    // "nightly-x86_64-unknown-linux-gnu (default)"; a dated "nightly-2025-01-01-..." is not the
    // `nightly` channel that aya-build runs.
    let present = list.lines().any(|line| {
        let name = line.split_whitespace().next().unwrap_or_default();
        name == "nightly"
            || name
                .strip_prefix("nightly-")
                .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
    });
    if present {
        step.present("");
        return Ok(());
    }
    step.installing("installing it");
    let args = ["toolchain", "install", "nightly", "--profile", "minimal"];
    Cmd::new(rustup)
        .args(args)
        .run("install the nightly toolchain", &rustup_hint(&args))?;
    step.done();
    Ok(())
}

/// What to do when a rustup download fails.
fn rustup_hint(args: &[&str]) -> String {
    format!(
        "; most likely the network or the Rust distribution server (static.rust-lang.org) could \
         not be reached; check the connection and any proxy, then run `cargo xtask setup` again, \
         or run `rustup {}` yourself",
        args.join(" ")
    )
}

fn nightly_rust_src(rustup: &Path) -> Result<()> {
    let step = step("checking the nightly rust-src component (builds core for the bpf target)");
    let list = probe(
        Cmd::new(rustup).args(["component", "list", "--installed", "--toolchain", "nightly"]),
        "list the components of the nightly toolchain",
    )?;
    if list.lines().any(|line| line.trim().starts_with("rust-src")) {
        step.present("");
        return Ok(());
    }
    step.installing("installing it");
    let args = ["component", "add", "rust-src", "--toolchain", "nightly"];
    Cmd::new(rustup).args(args).run(
        "install rust-src for the nightly toolchain",
        &rustup_hint(&args),
    )?;
    step.done();
    Ok(())
}

fn llvm() -> Result<()> {
    let step = step("checking the LLVM 22 development files (bpf-linker is built against them)");
    let llvm_config = Path::new(LLVM_PREFIX).join("bin/llvm-config");
    if llvm_config.is_file() {
        step.present(&llvm_config.display().to_string());
        return Ok(());
    }
    let packages = LLVM_PACKAGES.join(" ");
    let Some(apt_get) = which("apt-get") else {
        bail!(
            "failed to install llvm-22-dev: apt-get was not found (not a Debian or Ubuntu host); \
             install LLVM 22 with its development files, Polly, zlib and zstd (Debian: {packages}) \
             so that {} exists, then run `cargo xtask setup` again",
            llvm_config.display()
        );
    };
    if !is_root() {
        bail!(
            "failed to install llvm-22-dev: not running as root; run `cargo xtask setup` as root, \
             or install it yourself: apt-get install -y {packages}"
        );
    }
    step.installing("installing it with apt-get");
    Cmd::new(&apt_get)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .arg("update")
        .run(
            "update the apt package lists",
            "; the network or the Debian archive could not be reached; check the connection and \
             any proxy in /etc/apt, then run `cargo xtask setup` again",
        )?;
    Cmd::new(&apt_get)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y"])
        .args(LLVM_PACKAGES)
        .run(
            "install llvm-22-dev",
            &format!(
                "; either the network or the Debian archive could not be reached, or the \
                 archive has no llvm-22-dev (Debian 12 has it in bookworm-security; elsewhere \
                 add https://apt.llvm.org); then run `apt-get install -y {packages}` or `cargo xtask setup` again"
            ),
        )?;
    if !llvm_config.is_file() {
        bail!(
            "failed to install llvm-22-dev: apt-get succeeded but {} is still missing; check \
             `dpkg -L llvm-22-dev` and install LLVM 22 under {LLVM_PREFIX}",
            llvm_config.display()
        );
    }
    step.done();
    Ok(())
}

/// The output of `<program> --version`, or `None` when it is missing or does not run.
fn bpf_linker_version(program: &Path) -> Option<String> {
    let output = Cmd::new(program).arg("--version").output_quiet().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn bpf_linker(ws: &Workspace) -> Result<()> {
    let step = step("checking bpf-linker (links the eBPF programs)");
    let installed = cargo_home().map(|home| home.join("bin/bpf-linker"));
    let candidates = which("bpf-linker").into_iter().chain(installed.clone());
    for candidate in candidates {
        if let Some(version) = bpf_linker_version(&candidate) {
            step.present(&format!("{version}, {}", candidate.display()));
            return Ok(());
        }
    }
    // A binary that exists but does not run (e.g. its LLVM library is gone) must be replaced:
    // `cargo install` would otherwise call it up to date.
    let broken = installed.as_deref().is_some_and(is_executable);
    step.installing(if broken {
        "it does not run; reinstalling it with cargo install (builds from source, about 1-2 minutes)"
    } else {
        "installing it with cargo install (builds from source, about 1-2 minutes)"
    });
    let mut install = ws.cargo().env("LLVM_PREFIX", LLVM_PREFIX).args([
        "install",
        "bpf-linker",
        "--no-default-features",
        "--features",
        "llvm-22",
    ]);
    if broken {
        install = install.arg("--force");
    }
    let shown = install.shown();
    install.run(
        "install bpf-linker",
        &format!(
            "; if the output above shows a download error, the network or the crates.io \
             registry could not be reached: check the connection and any proxy; if it shows a build error, check that {} are installed; \
             then run `{shown}` or `cargo xtask setup` again",
            LLVM_PACKAGES.join(" ")
        ),
    )?;
    let found = which("bpf-linker")
        .into_iter()
        .chain(installed)
        .find_map(|candidate| bpf_linker_version(&candidate));
    if found.is_none() {
        bail!(
            "failed to install bpf-linker: `{shown}` succeeded but `bpf-linker --version` does \
             not run; make sure cargo's bin directory (~/.cargo/bin) is in PATH"
        );
    }
    step.done();
    Ok(())
}

/// What the container end-to-end tests (`tests/tests/containers.rs`) run: podman, runc (crun
/// fails on `setrlimit` in sandboxes without CAP_SYS_RESOURCE) and busybox-static (their
/// images are built from it: nothing is pulled). About 35 MB of archives, a minute or so on a
/// fresh Debian 12 machine.
const CONTAINER_PACKAGES: [&str; 3] = ["podman", "runc", "busybox-static"];

/// Installs the container test tools when missing (`cargo xtask test`). Never fails the run:
/// without them the container tests skip and say why.
pub fn container_tools() {
    let step = step("checking podman, runc and busybox (the container end-to-end tests)");
    let missing: Vec<&str> = CONTAINER_PACKAGES
        .into_iter()
        .filter(|package| {
            let program = if *package == "busybox-static" {
                Path::new("/bin/busybox").exists()
            } else {
                which(package).is_some()
            };
            !program
        })
        .collect();
    if missing.is_empty() {
        step.present("");
        return;
    }
    let (Some(apt_get), true) = (which("apt-get"), is_root()) else {
        eprintln!(
            "    missing: {}; the container tests will be skipped (install them: apt-get install -y {})",
            missing.join(", "),
            CONTAINER_PACKAGES.join(" ")
        );
        return;
    };
    step.installing(&format!("installing {} with apt-get", missing.join(", ")));
    let install = || {
        Cmd::new(&apt_get)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y"])
            .args(CONTAINER_PACKAGES)
            .run("install podman, runc and busybox-static", "")
    };
    // The package lists are usually fresh (set-up updated them for LLVM); update only if the
    // install cannot find the packages.
    let installed = install().or_else(|_| {
        Cmd::new(&apt_get)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .arg("update")
            .run("update the apt package lists", "")
            .and_then(|()| install())
    });
    match installed {
        Ok(()) => step.done(),
        Err(err) => {
            eprintln!("    failed to install them ({err:#}); the container tests will be skipped")
        }
    }
}
