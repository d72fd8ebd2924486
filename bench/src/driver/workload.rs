//! The workloads the driver measures, and running one in the benchmark's cgroup.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;
use serde_json::Value;

use super::sys::join_cgroup;

/// What a workload loops over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Open,
    Connect,
    Fork,
}

/// A workload: a kind, with every operation new to a monitor or the same one repeated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Workload {
    pub kind: Kind,
    pub distinct: bool,
}

impl Workload {
    pub const STEADY: [Workload; 3] = [
        Workload::new(Kind::Open, false),
        Workload::new(Kind::Connect, false),
        Workload::new(Kind::Fork, false),
    ];
    pub const ALL: [Workload; 6] = [
        Workload::new(Kind::Open, false),
        Workload::new(Kind::Connect, false),
        Workload::new(Kind::Fork, false),
        Workload::new(Kind::Open, true),
        Workload::new(Kind::Connect, true),
        Workload::new(Kind::Fork, true),
    ];

    pub const fn new(kind: Kind, distinct: bool) -> Workload {
        Workload { kind, distinct }
    }

    pub fn name(self) -> String {
        let base = match self.kind {
            Kind::Open => "openat+close",
            Kind::Connect => "connect (loopback)",
            Kind::Fork => "fork+exec /bin/true",
        };
        if self.distinct {
            format!("{base}, every event new")
        } else {
            base.to_owned()
        }
    }

    pub fn key(self) -> String {
        let base = match self.kind {
            Kind::Open => "open",
            Kind::Connect => "connect",
            Kind::Fork => "fork",
        };
        if self.distinct {
            format!("{base}-distinct")
        } else {
            base.to_owned()
        }
    }

    /// What "every event new" means for this kind.
    pub fn distinct_note(self) -> &'static str {
        match self.kind {
            Kind::Open => "distinct paths below a missing directory (ENOENT)",
            Kind::Connect => "distinct peers 127.a.b.c (listener on 0.0.0.0)",
            Kind::Fork => "distinct argv",
        }
    }
}

/// What one run of a workload reported about itself.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub ns_per_op: f64,
    pub ops: u64,
    pub elapsed_ns: u64,
    pub failures: u64,
    /// The whole JSON line.
    #[serde(skip)]
    pub raw: Value,
}

/// Runs `bench-workload` in the benchmark's cgroup.
pub struct Runner {
    pub exe: PathBuf,
    pub cgroup_procs: PathBuf,
    /// The file the steady-state opens read.
    pub file: PathBuf,
    /// Below which the distinct opens look for missing files.
    pub distinct_dir: PathBuf,
    salt: AtomicU64,
    /// The CPU that measured workloads ([`Runner::measure`]) are pinned to.
    pub cpu: Option<usize>,
}

impl Runner {
    pub fn new(exe: PathBuf, cgroup_procs: PathBuf, file: PathBuf, distinct_dir: PathBuf) -> Self {
        Runner {
            exe,
            cgroup_procs,
            file,
            distinct_dir,
            salt: AtomicU64::new(1),
            cpu: None,
        }
    }

    /// Pins the measured workloads to `cpu`.
    pub fn pinned(mut self, cpu: usize) -> Self {
        self.cpu = Some(cpu);
        self
    }

    /// A number that makes this run's distinct objects differ from every other run's.
    pub fn salt(&self) -> u64 {
        self.salt.fetch_add(1, Ordering::Relaxed)
    }

    pub fn measure(&self, workload: Workload, iters: u64) -> Result<Outcome> {
        let mut args: Vec<String> = vec![
            match workload.kind {
                Kind::Open => "open",
                Kind::Connect => "connect",
                Kind::Fork => "fork",
            }
            .to_owned(),
            "--iters".into(),
            iters.to_string(),
            "--salt".into(),
            self.salt().to_string(),
        ];
        if workload.distinct {
            args.push("--distinct".into());
        }
        if workload.kind == Kind::Open {
            if workload.distinct {
                args.push("--dir".into());
                args.push(self.distinct_dir.display().to_string());
            } else {
                args.push("--file".into());
                args.push(self.file.display().to_string());
            }
        }
        self.spawn_and_wait(&args, Duration::from_secs(900), self.cpu)
    }

    /// Runs the workload with `args` on the measured workloads' CPU.
    pub fn run_pinned(&self, args: &[String], timeout: Duration) -> Result<Outcome> {
        self.spawn_and_wait(args, timeout, self.cpu)
    }

    /// Runs the workload with `args`; its last stdout line is its JSON record.
    pub fn run(&self, args: &[String], timeout: Duration) -> Result<Outcome> {
        self.spawn_and_wait(args, timeout, None)
    }

    fn spawn_and_wait(
        &self,
        args: &[String],
        timeout: Duration,
        cpu: Option<usize>,
    ) -> Result<Outcome> {
        let mut command = Command::new(&self.exe);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        join_cgroup(&mut command, &self.cgroup_procs)?;
        if let Some(cpu) = cpu {
            pin_to(&mut command, cpu);
        }
        let shown = format!("bench-workload {}", args.join(" "));
        let mut child = command
            .spawn()
            .with_context(|| format!("failed to start {shown}"))?;
        let out = child.stdout.take().context("stdout is piped")?;
        let out_reader = thread::spawn(move || {
            let mut last = String::new();
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if !line.trim().is_empty() {
                    last = line;
                }
            }
            last
        });
        let mut err = child.stderr.take().context("stderr is piped")?;
        let err_reader = thread::spawn(move || {
            use std::io::Read as _;
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            text
        });
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{shown} did not finish within {} s", timeout.as_secs());
            }
            if super::interrupted() {
                let _ = child.kill();
                let _ = child.wait();
                bail!("interrupted");
            }
            thread::sleep(Duration::from_millis(5));
        };
        let stdout = out_reader.join().unwrap_or_default();
        let stderr = err_reader.join().unwrap_or_default();
        if !status.success() {
            bail!("{shown} failed ({status}): {}", stderr.trim());
        }
        let raw: Value = serde_json::from_str(&stdout)
            .with_context(|| format!("{shown} printed no JSON record: {stdout:?}"))?;
        Ok(Outcome {
            ns_per_op: raw["ns_per_op"].as_f64().unwrap_or(f64::NAN),
            ops: raw["ops"].as_u64().unwrap_or(0),
            elapsed_ns: raw["elapsed_ns"].as_u64().unwrap_or(0),
            failures: raw["failures"].as_u64().unwrap_or(0),
            raw,
        })
    }
}

/// Adds a `pre_exec` that pins the child (and so every thread it makes) to `cpu`.
fn pin_to(command: &mut Command, cpu: usize) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: only sched_setaffinity (a system call) between fork and exec, on a set built
    // on the stack.
    unsafe {
        command.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
