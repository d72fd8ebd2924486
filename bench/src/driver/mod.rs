//! The driver behind `cargo xtask bench`: runs the workloads side by side under no monitor,
//! the monitor (ungoverned, governed, governed with every event new) and bpftrace, interleaved
//! round by round; then the daemon's footprint, alert latency, the loss ramp and the
//! user-space pipeline; writes `results.md` and `results.json`.
//!
//! Nothing here asserts a threshold: timings on shared machines are noise. The report says
//! which targets were met, and shows what was measured where one was missed.

pub mod report;
pub mod session;
pub mod sys;
pub mod workload;

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;
use serde_json::Value;

use crate::{
    pipeline::{self, Stage},
    stats::{percentile, Summary},
};
use session::{Session, SessionEnd};
use sys::{BenchCgroup, BpfStats, Delta, Machine, Reading};
use workload::{Kind, Runner, Workload};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether SIGINT or SIGTERM arrived: the driver stops at the next step and cleans up.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// What `bench-run` was asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    pub quick: bool,
    pub monitor: PathBuf,
    pub workload: PathBuf,
    pub out_dir: PathBuf,
    /// The command line to show in the report.
    pub command: String,
    /// `None`: bpftrace is not installed; its columns are skipped with a note.
    pub bpftrace: Option<PathBuf>,
}

/// How big everything is.
#[derive(Clone, Debug, Serialize)]
pub struct Sizes {
    pub rounds: usize,
    pub open_iters: u64,
    pub connect_iters: u64,
    pub fork_iters: u64,
    pub sleepers: u64,
    pub latency_count: u64,
    pub latency_interval_us: u64,
    pub ramp_start: u64,
    pub ramp_max: u64,
    pub ramp_step_seconds: f64,
    pub sustained_rate: u64,
    pub sustained_seconds: f64,
    pub rate_threads: u32,
    pub pipeline_events: usize,
    /// Timed opens of a guarded file per run (the permission round trip).
    pub guarded_iters: u64,
    /// Distinct opens per second of the flood beside them.
    pub flood_rate: u64,
}

impl Sizes {
    pub fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                rounds: 3,
                open_iters: 20_000,
                connect_iters: 2_000,
                fork_iters: 200,
                sleepers: 1_000,
                latency_count: 100,
                latency_interval_us: 5_000,
                ramp_start: 125_000,
                ramp_max: 500_000,
                ramp_step_seconds: 1.0,
                sustained_rate: 250_000,
                sustained_seconds: 5.0,
                rate_threads: 2,
                pipeline_events: 100_000,
                guarded_iters: 2_000,
                flood_rate: 100_000,
            }
        } else {
            Sizes {
                rounds: 5,
                open_iters: 1_000_000,
                connect_iters: 50_000,
                fork_iters: 5_000,
                sleepers: 10_000,
                latency_count: 1_000,
                latency_interval_us: 5_000,
                ramp_start: 15_625,
                ramp_max: 2_000_000,
                ramp_step_seconds: 3.0,
                sustained_rate: 250_000,
                sustained_seconds: 60.0,
                rate_threads: 2,
                pipeline_events: 1_000_000,
                guarded_iters: 20_000,
                flood_rate: 100_000,
            }
        }
    }

    pub fn iters(&self, kind: Kind) -> u64 {
        match kind {
            Kind::Open => self.open_iters,
            Kind::Connect => self.connect_iters,
            Kind::Fork => self.fork_iters,
        }
    }
}

/// What runs beside the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Setup {
    /// Nothing.
    Baseline,
    /// `monitor run` on the built-in profiles; the workload is not governed.
    Ungoverned,
    /// `monitor run --config` with a profile selecting the workload, allowing what it does.
    Governed,
    /// bpftrace counting the same tracepoints per comm.
    BpftraceCount,
    /// bpftrace printing every event.
    BpftracePrint,
}

impl Setup {
    pub const ALL: [Setup; 5] = [
        Setup::Baseline,
        Setup::Ungoverned,
        Setup::Governed,
        Setup::BpftraceCount,
        Setup::BpftracePrint,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Setup::Baseline => "no monitor",
            Setup::Ungoverned => "monitor, not governed",
            Setup::Governed => "monitor, governed",
            Setup::BpftraceCount => "bpftrace counting",
            Setup::BpftracePrint => "bpftrace printing",
        }
    }

    /// The workloads measured under this setup.
    pub fn workloads(self) -> &'static [Workload] {
        match self {
            Setup::Ungoverned => &Workload::STEADY,
            _ => &Workload::ALL,
        }
    }

    fn is_bpftrace(self) -> bool {
        matches!(self, Setup::BpftraceCount | Setup::BpftracePrint)
    }
}

/// bpftrace counting the tracepoints the workloads hit, per comm.
pub const BPFTRACE_COUNT: &str = r#"BEGIN { printf("READY\n"); }
tracepoint:syscalls:sys_enter_openat,
tracepoint:syscalls:sys_enter_connect,
tracepoint:syscalls:sys_enter_execve,
tracepoint:sched:sched_process_fork,
tracepoint:sched:sched_process_exit
{ @[comm] = count(); }
"#;

/// bpftrace printing one line per event of the same tracepoints.
pub const BPFTRACE_PRINT: &str = r#"BEGIN { printf("READY\n"); }
tracepoint:syscalls:sys_enter_openat { printf("openat %d %s %s\n", pid, comm, str(args->filename)); }
tracepoint:syscalls:sys_enter_connect { printf("connect %d %s %d\n", pid, comm, args->fd); }
tracepoint:syscalls:sys_enter_execve { printf("execve %d %s %s\n", pid, comm, str(args->filename)); }
tracepoint:sched:sched_process_fork { printf("fork %d %d\n", args->parent_pid, args->child_pid); }
tracepoint:sched:sched_process_exit { printf("exit %d %s\n", pid, comm); }
"#;

/// One measured run of a workload.
#[derive(Clone, Debug, Serialize)]
pub struct RunSample {
    pub round: usize,
    pub setup: Setup,
    pub workload: Workload,
    pub ns_per_op: f64,
    pub ops: u64,
    pub failures: u64,
    /// The tracer's CPU, memory, context switches and BPF program run time over the run.
    pub daemon: Option<Delta>,
}

/// One tracer session and how it ended.
#[derive(Clone, Debug, Serialize)]
pub struct SessionRecord {
    pub phase: String,
    pub round: Option<usize>,
    pub setup: Option<Setup>,
    pub end: SessionEnd,
    /// Alerts on stdout, by `security_rule.name`.
    pub alerts: BTreeMap<String, u64>,
    /// Sum of `monitor.loss.count` over `events-lost` alerts.
    pub lost_in_alerts: u64,
    /// `stage/kind: count` of each `events-lost` alert.
    pub loss_details: Vec<String>,
    /// The tracer's CPU from ready to stop.
    pub cpu_ns: u64,
    pub seconds: f64,
}

impl SessionRecord {
    /// Events the monitor says it received.
    pub fn events(&self) -> u64 {
        self.end.events.iter().map(|(_, n)| n).sum()
    }

    /// Lost events: the larger of what the summary and the alerts say.
    pub fn lost(&self) -> u64 {
        self.end
            .lost_total
            .unwrap_or(0)
            .max(self.lost_in_alerts)
            .max(self.end.bpftrace_lost)
    }
}

/// The daemon's memory, idle and with many processes to track.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Footprint {
    pub idle_rss_kb: u64,
    pub idle_anon_kb: u64,
    pub idle_file_kb: u64,
    pub idle_hwm_kb: u64,
    pub tracked: u64,
    pub tracked_rss_kb: u64,
    pub tracked_anon_kb: u64,
    pub tracked_hwm_kb: u64,
    pub after_kill_rss_kb: u64,
    /// Daemon CPU to take in the sleepers' forks (and their exits).
    pub spawn_cpu_ns: u64,
    pub kill_cpu_ns: u64,
    pub spawn_seconds: f64,
}

/// Alert latency: from the syscall (stamped by the workload) to the alert line on stdout.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub requested: u64,
    pub matched: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// The part inside the daemon: the alert's `observed_time - time` (kernel stamp to rules).
    pub in_daemon_p50_ms: Option<f64>,
    pub in_daemon_p99_ms: Option<f64>,
    pub drain_interval_ms: u64,
    /// Alerts that took longer than twice the drain interval.
    pub slow: u64,
    /// The median gap between the opens of successive slow alerts: a daemon timer shows up
    /// as a period.
    pub slow_gap_ms: Option<f64>,
    /// The slowest alerts: (ms since the first open, latency ms).
    pub slowest: Vec<(f64, f64)>,
    /// Every sample: (ms since the first open, latency ms).
    pub samples: Vec<(f64, f64)>,
}

/// The latency of one open of a file, from the workload's own clock.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct OpenLatency {
    pub p50_ns: f64,
    pub p90_ns: f64,
    pub p99_ns: f64,
    pub max_ns: f64,
}

impl OpenLatency {
    fn of(outcome: &workload::Outcome) -> OpenLatency {
        let get = |key: &str| outcome.raw[key].as_f64().unwrap_or(f64::NAN);
        OpenLatency {
            p50_ns: get("p50_ns"),
            p90_ns: get("p90_ns"),
            p99_ns: get("p99_ns"),
            max_ns: get("max_ns"),
        }
    }
}

/// An allowed open of a guarded file: what the guard's permission round trip adds, idle and
/// beside a flood of other events, one round of each per round, side by side with no monitor.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GuardedOpen {
    pub iters: u64,
    pub flood_rate: u64,
    pub baseline: Vec<OpenLatency>,
    pub guarded: Vec<OpenLatency>,
    pub guarded_flood: Vec<OpenLatency>,
    /// What the flood achieved, per round.
    pub flood_achieved: Vec<f64>,
    /// Alerts the guarded sessions raised, by rule (an allowed open raises none).
    pub alerts: BTreeMap<String, u64>,
}

/// One step of the rate ramp.
#[derive(Clone, Debug, Serialize)]
pub struct RateStep {
    pub requested: u64,
    pub achieved: f64,
    pub seconds: f64,
    pub lost: u64,
    pub loss_details: Vec<String>,
    /// Daemon CPU over the step, in percent of one core.
    pub daemon_cpu_pct: f64,
    pub daemon_voluntary_ctxt: u64,
    pub daemon_involuntary_ctxt: u64,
    /// The daemon's RSS and peak RSS after the step (a backlog in its queue shows here).
    pub daemon_rss_kb: u64,
    pub daemon_hwm_kb: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Rates {
    pub steps: Vec<RateStep>,
    /// The highest achieved rate of a step without loss, before the first step with loss.
    pub max_without_loss: Option<f64>,
    /// Why the ramp stopped.
    pub stopped: String,
    pub sustained: Option<RateStep>,
    /// The session summary's loss count for the sustained run.
    pub sustained_lost_summary: Option<u64>,
}

/// The user-space pipeline, per stage: ns per event over the rounds.
#[derive(Clone, Debug, Serialize)]
pub struct PipelineResult {
    pub events: usize,
    pub mix: pipeline::Mix,
    pub stages: Vec<(String, Summary)>,
    pub alerts_per_pass: u64,
    /// The full stage by kind of event, each event timed by itself (one pass).
    pub by_kind: Vec<pipeline::KindCost>,
}

/// Everything measured in one run.
#[derive(Clone, Debug, Serialize)]
pub struct Results {
    pub date: String,
    pub command: String,
    pub quick: bool,
    /// The commit the monitor was built from, and how many files differed from it.
    pub revision: String,
    /// The CPU the side-by-side workloads were pinned to.
    pub workload_cpu: Option<usize>,
    pub machine: Machine,
    pub sizes: Sizes,
    pub bpf_stats: bool,
    pub bpftrace: Option<String>,
    pub neighbours_at_start: Vec<String>,
    pub neighbours_at_end: Vec<String>,
    /// The load average when each phase started.
    pub phase_load: Vec<(String, String)>,
    pub runs: Vec<RunSample>,
    pub sessions: Vec<SessionRecord>,
    pub footprint: Option<Footprint>,
    pub latency: Option<Latency>,
    pub guarded_open: Option<GuardedOpen>,
    pub rates: Option<Rates>,
    pub pipeline: Option<PipelineResult>,
    pub notes: Vec<String>,
    pub failures: Vec<String>,
    pub seconds: f64,
}

/// Paths of the scratch tree under the output directory.
struct Tree {
    work: PathBuf,
    file: PathBuf,
    distinct: PathBuf,
    forbidden: PathBuf,
    governed_config: PathBuf,
    /// A file under a guard that lets the benchmark's profile read it.
    guarded_file: PathBuf,
    /// The governed config plus that guard.
    guarded_config: PathBuf,
    config_dir: PathBuf,
}

impl Tree {
    fn create(out: &Path, workload_exe: &Path) -> Result<Tree> {
        let work = out.join("work");
        let _ = fs::remove_dir_all(&work);
        let _ = fs::remove_dir_all(out.join("forbidden"));
        for dir in ["work/distinct", "forbidden", "config"] {
            fs::create_dir_all(out.join(dir))?;
        }
        let work = fs::canonicalize(&work)?;
        let file = work.join("data.bin");
        fs::write(&file, vec![7u8; 4096])?;
        let config_dir = fs::canonicalize(out.join("config"))?;
        let profile = config_dir.join("bench-workload.yaml");
        sys::write_file(
            &profile,
            &pipeline::profile_yaml(
                &workload_exe.display().to_string(),
                &work.display().to_string(),
            ),
        )?;
        let governed_config = config_dir.join("governed.yaml");
        sys::write_file(&governed_config, &governed_config_yaml(&profile, ""))?;
        let guarded_dir = work.join("guarded");
        fs::create_dir_all(&guarded_dir)?;
        let guarded_file = guarded_dir.join("weights.bin");
        fs::write(&guarded_file, vec![7u8; 4096])?;
        let guarded_config = config_dir.join("guarded.yaml");
        let guard = format!(
            "    - paths: [\"{}/**\"]\n      read: [bench-workload]\n      write: []\n",
            guarded_dir.display()
        );
        sys::write_file(&guarded_config, &governed_config_yaml(&profile, &guard))?;
        Ok(Tree {
            guarded_file,
            guarded_config,
            distinct: work.join("distinct"),
            forbidden: fs::canonicalize(out.join("forbidden"))?,
            work,
            file,
            governed_config,
            config_dir,
        })
    }
}

/// The built-in defaults plus the benchmark's profile: the governed runs differ from the
/// ungoverned ones by that profile only. `extra_guards`: more `protected_paths` entries.
fn governed_config_yaml(profile: &Path, extra_guards: &str) -> String {
    format!(
        r#"builtin_profiles: true
profiles: ["{profile}"]
guards:
  protected_paths:
    - paths:
        - /models/**
        - /var/lib/models/**
        - "**/.cache/huggingface/hub/**"
        - /root/.ollama/models/**
        - /usr/share/ollama/.ollama/models/**
        - "**/*.safetensors"
        - "**/*.gguf"
      read: [vllm, triton, torchserve, llama-cpp, ollama, tgi]
      write: []
{extra_guards}  gpu:
    allow: [vllm, triton, torchserve, llama-cpp, ollama, tgi]
dedup_window_secs: 10
"#,
        profile = profile.display()
    )
}

/// Runs everything and writes the report; an error only when nothing useful could be done.
pub fn run(options: &Options) -> Result<Results> {
    install_signal_handlers();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark loads eBPF programs and needs root; run `sudo -E cargo xtask bench`");
    }
    let started = Instant::now();
    let sizes = Sizes::new(options.quick);
    fs::create_dir_all(&options.out_dir)?;
    let out_dir = fs::canonicalize(&options.out_dir)?;
    let workload_exe = fs::canonicalize(&options.workload)
        .with_context(|| format!("failed to find {}", options.workload.display()))?;
    let monitor = fs::canonicalize(&options.monitor)
        .with_context(|| format!("failed to find {}", options.monitor.display()))?;
    let tree = Tree::create(&out_dir, &workload_exe)?;
    let cgroup = BenchCgroup::create()?;
    let stats = BpfStats::enable();
    let runner = Runner::new(
        workload_exe,
        cgroup.procs_file(),
        tree.file.clone(),
        tree.distinct.clone(),
    );
    let mut results = Results {
        date: monitor::event::clock::rfc3339(sys::unix_now_ns()),
        command: options.command.clone(),
        quick: options.quick,
        revision: sys::revision(),
        workload_cpu: None,
        machine: Machine::describe(),
        sizes: sizes.clone(),
        bpf_stats: stats.enabled(),
        bpftrace: options.bpftrace.as_ref().map(|p| p.display().to_string()),
        neighbours_at_start: sys::busy_neighbours(),
        neighbours_at_end: Vec::new(),
        phase_load: Vec::new(),
        runs: Vec::new(),
        sessions: Vec::new(),
        footprint: None,
        latency: None,
        guarded_open: None,
        rates: None,
        pipeline: None,
        notes: Vec::new(),
        failures: Vec::new(),
        seconds: 0.0,
    };
    if options.bpftrace.is_none() {
        results.notes.push(
            "bpftrace is not installed: its columns are skipped (as root, `apt-get install \
             bpftrace`, or let the full `cargo xtask bench` install it)"
                .into(),
        );
    }
    if !results.bpf_stats {
        results.notes.push(
            "kernel.bpf_stats_enabled could not be turned on: no per-program run times".into(),
        );
    }
    // The side-by-side workloads run on the last CPU: a loopback connect costs ~11 µs when
    // client and acceptor share a CPU and ~50 µs when a wake-up crosses CPUs (an IPI in a
    // VM), and unpinned runs flip between the two.
    let runner = runner.pinned(
        thread::available_parallelism()
            .map_or(0, |n| n.get())
            .saturating_sub(1),
    );
    results.workload_cpu = runner.cpu;
    let ctx = Ctx {
        options,
        sizes: &sizes,
        monitor: &monitor,
        cgroup: &cgroup,
        tree: &tree,
        runner: &runner,
        sessions_started: std::sync::atomic::AtomicU64::new(0),
        pending: std::sync::Mutex::new(Vec::new()),
    };

    let phases: [(&str, PhaseFn); 6] = [
        ("user-space pipeline", phase_pipeline),
        ("side-by-side rounds", phase_rounds),
        ("daemon footprint", phase_footprint),
        ("guarded open round trip", phase_guarded_open),
        ("alert latency and loss ramp", phase_latency_and_ramp),
        ("sustained rate", phase_sustained),
    ];
    for (name, phase) in phases {
        if interrupted() {
            results.failures.push(format!("{name}: interrupted"));
            continue;
        }
        eprintln!("==> bench: {name}");
        results.phase_load.push((name.to_owned(), sys::loadavg()));
        let phase_start = Instant::now();
        if let Err(err) = phase(&ctx, &mut results) {
            eprintln!("bench: {name} failed: {err:#}");
            results.failures.push(format!("{name}: {err:#}"));
        }
        eprintln!(
            "    {name} took {:.1}s",
            phase_start.elapsed().as_secs_f64()
        );
    }
    let pending = std::mem::take(&mut *ctx.pending.lock().unwrap());
    for handle in pending {
        if let Ok(record) = handle.join() {
            results.sessions.push(record);
        }
    }
    if let Some(rates) = &mut results.rates {
        if rates.sustained_lost_summary.is_none() {
            rates.sustained_lost_summary = results
                .sessions
                .iter()
                .find(|s| s.phase == "sustained")
                .and_then(|s| s.end.lost_total);
        }
    }
    drop(stats);
    drop(cgroup);
    let _ = fs::remove_dir_all(&tree.forbidden);
    let _ = fs::remove_dir_all(&tree.work);
    results.machine.loadavg_end = sys::loadavg();
    results.neighbours_at_end = sys::busy_neighbours();
    results.seconds = started.elapsed().as_secs_f64();
    let markdown = report::markdown(&results);
    sys::write_file(&out_dir.join("results.md"), &markdown)?;
    sys::write_file(
        &out_dir.join("results.json"),
        &serde_json::to_string_pretty(&report::json(&results))?,
    )?;
    println!("{markdown}");
    eprintln!(
        "==> bench: wrote {} and {} in {:.1}s",
        out_dir.join("results.md").display(),
        out_dir.join("results.json").display(),
        results.seconds
    );
    Ok(results)
}

struct Ctx<'a> {
    options: &'a Options,
    sizes: &'a Sizes,
    monitor: &'a Path,
    cgroup: &'a BenchCgroup,
    tree: &'a Tree,
    runner: &'a Runner,
    sessions_started: std::sync::atomic::AtomicU64,
    /// Sessions still stopping (quick runs do not wait for them).
    pending: std::sync::Mutex<Vec<JoinHandle<SessionRecord>>>,
}

type PhaseFn = fn(&Ctx, &mut Results) -> Result<()>;

impl Ctx<'_> {
    /// Stops a session: waits for it in a full run; a quick run (which only proves the
    /// harness) goes on meanwhile and collects it at the end.
    fn finish(
        &self,
        session: Session,
        phase: &str,
        setup: Option<Setup>,
        round: Option<usize>,
        started: (Instant, Option<Reading>),
        results: &mut Results,
    ) {
        let handle = finish_session(session, phase, round, setup, started);
        if self.options.quick {
            self.pending.lock().unwrap().push(handle);
        } else {
            match handle.join() {
                Ok(record) => results.sessions.push(record),
                Err(_) => results
                    .failures
                    .push(format!("{phase}: stopping the tracer panicked")),
            }
        }
    }

    fn start_monitor(&self, governed: bool) -> Result<Session> {
        let config = governed.then_some(self.tree.governed_config.as_path());
        let name = if governed {
            "monitor (governed config)"
        } else {
            "monitor (built-in)"
        };
        self.start_monitor_with(name, config)
    }

    fn start_monitor_with(&self, name: &str, config: Option<&Path>) -> Result<Session> {
        // A ready file per session: a monitor still stopping removes its own at exit.
        let n = self.sessions_started.fetch_add(1, Ordering::Relaxed);
        let ready_file = self
            .tree
            .config_dir
            .join(format!("ready-{}-{n}", std::process::id()));
        let session = Session::monitor(name, self.monitor, config, &self.cgroup.path, &ready_file)?;
        // Let start-up work (seeding, the first housekeeping tick) pass.
        thread::sleep(Duration::from_millis(300));
        Ok(session)
    }

    fn start(&self, setup: Setup) -> Result<Option<Session>> {
        Ok(match setup {
            Setup::Baseline => None,
            Setup::Ungoverned => Some(self.start_monitor(false)?),
            Setup::Governed => Some(self.start_monitor(true)?),
            Setup::BpftraceCount | Setup::BpftracePrint => {
                let Some(bpftrace) = &self.options.bpftrace else {
                    return Ok(None);
                };
                let script = if setup == Setup::BpftraceCount {
                    BPFTRACE_COUNT
                } else {
                    BPFTRACE_PRINT
                };
                let session = Session::bpftrace(setup.name(), bpftrace, script)?;
                // bpftrace 0.17 runs BEGIN before its last probes are attached.
                thread::sleep(Duration::from_millis(1000));
                Some(session)
            }
        })
    }
}

/// Waits until a daemon's CPU time stops growing (it has caught up with what the workload
/// made it do); at most `max`.
fn settle(pid: u32, max: Duration) {
    let deadline = Instant::now() + max;
    let mut names = BTreeMap::new();
    thread::sleep(Duration::from_millis(30));
    let mut last = Reading::of(pid, &mut names).map(|r| r.cpu_ns).ok();
    let mut quiet = 0;
    while Instant::now() < deadline && quiet < 2 {
        thread::sleep(Duration::from_millis(60));
        let now = Reading::of(pid, &mut names).map(|r| r.cpu_ns).ok();
        if now == last {
            quiet += 1;
        } else {
            quiet = 0;
        }
        last = now;
    }
}

/// Alerts seen on a monitor's stdout: counts by rule, and the `events-lost` details.
fn tally_alerts(lines: &[(u64, String)]) -> (BTreeMap<String, u64>, u64, Vec<String>) {
    let mut alerts = BTreeMap::new();
    let mut lost = 0;
    let mut details = Vec::new();
    for (_, line) in lines {
        let Ok(value) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let Some(rule) = value["security_rule.name"].as_str() else {
            continue;
        };
        *alerts.entry(rule.to_owned()).or_insert(0) += 1;
        if rule == "events-lost" {
            let count = value["monitor.loss.count"].as_u64().unwrap_or(0);
            lost += count;
            details.push(format!(
                "{}/{}: {count}",
                value["monitor.loss.stage"].as_str().unwrap_or("?"),
                value["monitor.loss.event_kind"].as_str().unwrap_or("?"),
            ));
        }
    }
    (alerts, lost, details)
}

/// Stops a session (in the background) and returns a handle that makes its record.
fn finish_session(
    session: Session,
    phase: &str,
    round: Option<usize>,
    setup: Option<Setup>,
    started: (Instant, Option<Reading>),
) -> JoinHandle<SessionRecord> {
    let mut names = BTreeMap::new();
    let cpu_ns = match (&started.1, Reading::of(session.pid, &mut names)) {
        (Some(before), Ok(after)) => after.cpu_ns.saturating_sub(before.cpu_ns),
        _ => 0,
    };
    let seconds = started.0.elapsed().as_secs_f64();
    let output = session.output.clone();
    let stopping = session.stop();
    let phase = phase.to_owned();
    thread::spawn(move || {
        let end = stopping.join().unwrap_or_default();
        let lines = std::mem::take(&mut output.lock().unwrap().lines);
        let (alerts, lost_in_alerts, loss_details) = tally_alerts(&lines);
        SessionRecord {
            phase,
            round,
            setup,
            end,
            alerts,
            lost_in_alerts,
            loss_details,
            cpu_ns,
            seconds,
        }
    })
}

fn session_start(session: &Session) -> (Instant, Option<Reading>) {
    let mut names = BTreeMap::new();
    (Instant::now(), Reading::of(session.pid, &mut names).ok())
}

fn phase_pipeline(ctx: &Ctx, results: &mut Results) -> Result<()> {
    let scratch = ctx.tree.work.join("pipeline");
    let recording = pipeline::record(ctx.sizes.pipeline_events, &scratch)?;
    let mut per_stage: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut alerts = 0;
    // One warm-up pass, then the rounds, stages interleaved.
    let _ = pipeline::timed_pass(&recording, Stage::Rules);
    for _ in 0..ctx.sizes.rounds {
        check_interrupted()?;
        for (i, stage) in Stage::ALL.into_iter().enumerate() {
            let pass = pipeline::timed_pass(&recording, stage);
            if stage == Stage::Rules {
                alerts = pass.alerts;
            }
            per_stage
                .entry(i)
                .or_default()
                .push(pass.seconds * 1e9 / pass.events.max(1) as f64);
        }
    }
    // The guards' share, by difference: the same profiles without the host-wide guards.
    let mut without_guards = Vec::new();
    for _ in 0..ctx.sizes.rounds {
        check_interrupted()?;
        let pass = pipeline::timed_pass_with(
            &recording,
            Stage::Rules,
            recording.config_without_guards.clone(),
        );
        without_guards.push(pass.seconds * 1e9 / pass.events.max(1) as f64);
    }
    let mut stages: Vec<(String, Summary)> = Stage::ALL
        .into_iter()
        .enumerate()
        .filter_map(|(i, stage)| {
            Summary::of(per_stage.get(&i)?).map(|s| (stage.name().to_owned(), s))
        })
        .collect();
    if let Some(summary) = Summary::of(&without_guards) {
        // Kept apart from the stages: the last stage is the one the target is about.
        stages.insert(
            stages.len().saturating_sub(1),
            (
                "decode + process table + rules without the host guards".to_owned(),
                summary,
            ),
        );
    }
    let by_kind = pipeline::Pipeline::new(&recording).run_by_kind(&recording.records);
    results.pipeline = Some(PipelineResult {
        events: recording.records.len(),
        mix: recording.mix,
        stages,
        alerts_per_pass: alerts,
        by_kind,
    });
    Ok(())
}

fn phase_rounds(ctx: &Ctx, results: &mut Results) -> Result<()> {
    let setups: Vec<Setup> = Setup::ALL
        .into_iter()
        .filter(|s| !s.is_bpftrace() || ctx.options.bpftrace.is_some())
        .collect();
    for round in 0..ctx.sizes.rounds {
        // Rotate the order each round so that no setup always follows the same one.
        let mut order = setups.clone();
        order.rotate_left(round % setups.len());
        eprintln!(
            "    round {}/{}: {}",
            round + 1,
            ctx.sizes.rounds,
            order
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(" | ")
        );
        for setup in order {
            check_interrupted()?;
            let session = match ctx.start(setup) {
                Ok(session) => session,
                Err(err) => {
                    results.failures.push(format!(
                        "round {}: {}: {err:#}",
                        round + 1,
                        setup.name()
                    ));
                    continue;
                }
            };
            let started = session.as_ref().map(session_start);
            let mut names = BTreeMap::new();
            for &workload in setup.workloads() {
                check_interrupted()?;
                let before = session
                    .as_ref()
                    .and_then(|s| Reading::of(s.pid, &mut names).ok());
                let outcome = ctx.runner.measure(workload, ctx.sizes.iters(workload.kind));
                let daemon = match (&session, before) {
                    (Some(s), Some(before)) => {
                        settle(s.pid, Duration::from_secs(60));
                        Reading::of(s.pid, &mut names)
                            .ok()
                            .map(|after| before.delta_to(&after))
                    }
                    _ => None,
                };
                match outcome {
                    Ok(outcome) => results.runs.push(RunSample {
                        round,
                        setup,
                        workload,
                        ns_per_op: outcome.ns_per_op,
                        ops: outcome.ops,
                        failures: outcome.failures,
                        daemon,
                    }),
                    Err(err) => results.failures.push(format!(
                        "round {}: {} under {}: {err:#}",
                        round + 1,
                        workload.name(),
                        setup.name()
                    )),
                }
            }
            if let (Some(session), Some(started)) = (session, started) {
                ctx.finish(
                    session,
                    "rounds",
                    Some(setup),
                    Some(round),
                    started,
                    results,
                );
            }
        }
    }
    Ok(())
}

fn phase_footprint(ctx: &Ctx, results: &mut Results) -> Result<()> {
    let session = ctx.start_monitor(false)?;
    let started = session_start(&session);
    let mut names = BTreeMap::new();
    thread::sleep(Duration::from_secs(2));
    let idle = Reading::of(session.pid, &mut names)?;
    let mut footprint = Footprint {
        idle_rss_kb: idle.rss_kb,
        idle_anon_kb: idle.rss_anon_kb,
        idle_file_kb: idle.rss_file_kb,
        idle_hwm_kb: idle.hwm_kb,
        tracked: ctx.sizes.sleepers,
        ..Footprint::default()
    };
    let spawn_start = Instant::now();
    let mut command = Command::new(&ctx.runner.exe);
    command
        .args(["sleepers", "--count", &ctx.sizes.sleepers.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    sys::join_cgroup(&mut command, &ctx.runner.cgroup_procs)?;
    let mut helper = command.spawn().context("failed to start the sleepers")?;
    let stdin = helper.stdin.take();
    let mut stdout = BufReader::new(helper.stdout.take().context("piped")?);
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    if !line.contains("ready") {
        let _ = helper.kill();
        let _ = helper.wait();
        bail!("the sleepers helper did not start: {line:?}");
    }
    footprint.spawn_seconds = spawn_start.elapsed().as_secs_f64();
    settle(session.pid, Duration::from_secs(30));
    thread::sleep(Duration::from_secs(1));
    let loaded = Reading::of(session.pid, &mut names)?;
    footprint.tracked_rss_kb = loaded.rss_kb;
    footprint.tracked_anon_kb = loaded.rss_anon_kb;
    footprint.tracked_hwm_kb = loaded.hwm_kb;
    footprint.spawn_cpu_ns = loaded.cpu_ns.saturating_sub(idle.cpu_ns);
    drop(stdin);
    let _ = helper.wait();
    settle(session.pid, Duration::from_secs(30));
    thread::sleep(Duration::from_secs(1));
    let after = Reading::of(session.pid, &mut names)?;
    footprint.after_kill_rss_kb = after.rss_kb;
    footprint.kill_cpu_ns = after.cpu_ns.saturating_sub(loaded.cpu_ns);
    ctx.finish(
        session,
        "footprint",
        Some(Setup::Ungoverned),
        None,
        started,
        results,
    );
    results.footprint = Some(footprint);
    Ok(())
}

fn phase_latency_and_ramp(ctx: &Ctx, results: &mut Results) -> Result<()> {
    let count = ctx.sizes.latency_count;
    for i in 0..count {
        fs::write(ctx.tree.forbidden.join(format!("lat-{i}")), b"x")?;
    }
    let session = ctx.start_monitor(true)?;
    let started = session_start(&session);
    let (_, from) = session.lines_since(usize::MAX);
    let dir = ctx.tree.forbidden.display().to_string();
    let outcome = ctx.runner.run(
        &[
            "latency".into(),
            "--dir".into(),
            dir.clone(),
            "--count".into(),
            count.to_string(),
            "--interval-us".into(),
            ctx.sizes.latency_interval_us.to_string(),
        ],
        Duration::from_secs(600),
    );
    let latency = match outcome {
        Ok(outcome) => {
            let stamps: Vec<u64> = outcome.raw["opened_at_monotonic_ns"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default();
            // Wait for the last alerts (a few drain intervals), at most 5 s.
            let deadline = Instant::now() + Duration::from_secs(5);
            let prefix = format!("{dir}/lat-");
            let mut lines;
            loop {
                (lines, _) = session.lines_since(from);
                let seen = lines.iter().filter(|(_, l)| l.contains(&prefix)).count();
                if seen as u64 >= count || Instant::now() > deadline {
                    break;
                }
                thread::sleep(Duration::from_millis(50));
            }
            Some(measure_latency(&lines, &stamps, &prefix, count))
        }
        Err(err) => {
            results.failures.push(format!("alert latency: {err:#}"));
            None
        }
    };
    results.latency = latency;

    // The ramp, in the same governed session.
    let mut rates = Rates::default();
    let mut rate = ctx.sizes.ramp_start;
    let mut names = BTreeMap::new();
    loop {
        check_interrupted()?;
        let step = rate_step(ctx, &session, rate, ctx.sizes.ramp_step_seconds, &mut names)?;
        eprintln!(
            "    ramp: {} /s requested, {:.0} /s achieved, {} lost, daemon {:.0}% CPU",
            step.requested, step.achieved, step.lost, step.daemon_cpu_pct
        );
        let lost = step.lost > 0;
        let mut saturated = step.achieved < 0.9 * step.requested as f64;
        let step = if saturated && !lost {
            // Once more: another process may have taken the CPU for a moment.
            let again = rate_step(ctx, &session, rate, ctx.sizes.ramp_step_seconds, &mut names)?;
            eprintln!(
                "    ramp (again): {} /s requested, {:.0} /s achieved, {} lost",
                again.requested, again.achieved, again.lost
            );
            saturated = again.achieved < 0.9 * again.requested as f64;
            if again.lost > 0 || again.achieved > step.achieved {
                again
            } else {
                step
            }
        } else {
            step
        };
        let lost = step.lost > 0;
        if !lost {
            rates.max_without_loss = Some(rates.max_without_loss.unwrap_or(0.0).max(step.achieved));
        }
        rates.steps.push(step);
        if lost {
            rates.stopped = format!("first loss at {rate} /s requested");
            break;
        }
        if saturated {
            rates.stopped = format!(
                "the workload could not reach {rate} /s on this machine (no loss up to there)"
            );
            break;
        }
        if rate * 2 > ctx.sizes.ramp_max {
            rates.stopped = format!("no loss up to the ramp's end ({rate} /s)");
            break;
        }
        rate *= 2;
    }
    results.rates = Some(rates);
    ctx.finish(
        session,
        "latency and ramp",
        Some(Setup::Governed),
        None,
        started,
        results,
    );
    Ok(())
}

/// Opens a guarded file that the workload's profile may read, timing each open: with no
/// monitor, under a monitor whose fanotify guard covers the file (every open is a permission
/// event the daemon answers), and the same beside a flood of distinct opens.
fn phase_guarded_open(ctx: &Ctx, results: &mut Results) -> Result<()> {
    let iters = ctx.sizes.guarded_iters;
    let file = ctx.tree.guarded_file.display().to_string();
    let timed = || -> Result<OpenLatency> {
        let outcome = ctx.runner.run_pinned(
            &[
                "open-timed".into(),
                "--file".into(),
                file.clone(),
                "--iters".into(),
                iters.to_string(),
            ],
            Duration::from_secs(300),
        )?;
        Ok(OpenLatency::of(&outcome))
    };
    let mut measured = GuardedOpen {
        iters,
        flood_rate: ctx.sizes.flood_rate,
        ..GuardedOpen::default()
    };
    for round in 0..ctx.sizes.rounds {
        check_interrupted()?;
        measured.baseline.push(timed()?);
        let session =
            ctx.start_monitor_with("monitor (guarded file)", Some(&ctx.tree.guarded_config))?;
        let started = session_start(&session);
        let (_, from) = session.lines_since(usize::MAX);
        let run = (|| -> Result<()> {
            measured.guarded.push(timed()?);
            // The flood: a governed process opening distinct missing paths (each one an
            // event for the daemon) for longer than the timed opens take.
            let seconds = 4.0;
            let flood_args = vec![
                "open".to_owned(),
                "--distinct".into(),
                "--dir".into(),
                ctx.tree.distinct.display().to_string(),
                "--salt".into(),
                ctx.runner.salt().to_string(),
                "--rate".into(),
                ctx.sizes.flood_rate.to_string(),
                "--seconds".into(),
                seconds.to_string(),
                "--threads".into(),
                "1".into(),
            ];
            let flood = thread::scope(|scope| -> Result<f64> {
                let handle = scope.spawn(|| {
                    ctx.runner
                        .run(&flood_args, Duration::from_secs_f64(seconds + 120.0))
                });
                thread::sleep(Duration::from_millis(300));
                let latency = timed();
                let flood = handle
                    .join()
                    .map_err(|_| anyhow::anyhow!("the flood panicked"))??;
                measured.guarded_flood.push(latency?);
                Ok(flood.raw["achieved_rate"].as_f64().unwrap_or(0.0))
            })?;
            measured.flood_achieved.push(flood);
            Ok(())
        })();
        let (lines, _) = session.lines_since(from);
        let (alerts, _, _) = tally_alerts(&lines);
        for (rule, count) in alerts {
            *measured.alerts.entry(rule).or_insert(0) += count;
        }
        ctx.finish(session, "guarded open", None, Some(round), started, results);
        run?;
    }
    results.guarded_open = Some(measured);
    Ok(())
}

/// Matches `file-read-not-allowed` alerts for `<prefix>N` to the stamps of the opens.
fn measure_latency(lines: &[(u64, String)], stamps: &[u64], prefix: &str, count: u64) -> Latency {
    let mut end_to_end = Vec::new();
    let mut in_daemon = Vec::new();
    let mut samples = Vec::new();
    let first = stamps.first().copied().unwrap_or(0);
    let mut seen = std::collections::HashSet::new();
    for (arrived, line) in lines {
        let Ok(value) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let Some(path) = value["file.path"].as_str() else {
            continue;
        };
        let Some(index) = path
            .strip_prefix(prefix)
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        let Some(&opened) = stamps.get(index) else {
            continue;
        };
        if !seen.insert(index) {
            continue;
        }
        let latency = arrived.saturating_sub(opened) as f64 / 1e6;
        end_to_end.push(latency);
        samples.push((opened.saturating_sub(first) as f64 / 1e6, latency));
        if let (Some(time), Some(observed)) = (
            value["time"].as_str().and_then(sys::parse_rfc3339),
            value["observed_time"].as_str().and_then(sys::parse_rfc3339),
        ) {
            in_daemon.push((observed - time) as f64 / 1e6);
        }
    }
    let drain_interval_ms = 10;
    samples.sort_by(|a, b| a.0.total_cmp(&b.0));
    let slow_at: Vec<f64> = samples
        .iter()
        .filter(|(_, l)| *l > 2.0 * drain_interval_ms as f64)
        .map(|(at, _)| *at)
        .collect();
    let gaps: Vec<f64> = slow_at.windows(2).map(|w| w[1] - w[0]).collect();
    let mut slowest = samples.clone();
    slowest.sort_by(|a, b| b.1.total_cmp(&a.1));
    slowest.truncate(8);
    Latency {
        requested: count,
        matched: end_to_end.len() as u64,
        slow: slow_at.len() as u64,
        slow_gap_ms: Summary::of(&gaps).map(|s| s.median),
        slowest,
        samples,
        p50_ms: percentile(&end_to_end, 50.0),
        p99_ms: percentile(&end_to_end, 99.0),
        max_ms: percentile(&end_to_end, 100.0),
        in_daemon_p50_ms: percentile(&in_daemon, 50.0),
        in_daemon_p99_ms: percentile(&in_daemon, 99.0),
        drain_interval_ms,
    }
}

/// Runs the rate-limited open loop of a governed process and watches for `events-lost`.
fn rate_step(
    ctx: &Ctx,
    session: &Session,
    rate: u64,
    seconds: f64,
    names: &mut BTreeMap<u32, String>,
) -> Result<RateStep> {
    let (_, from) = session.lines_since(usize::MAX);
    let before = Reading::of(session.pid, names)?;
    let start = Instant::now();
    let outcome = ctx.runner.run(
        &[
            "open".into(),
            "--distinct".into(),
            "--dir".into(),
            ctx.tree.distinct.display().to_string(),
            "--salt".into(),
            ctx.runner.salt().to_string(),
            "--rate".into(),
            rate.to_string(),
            "--seconds".into(),
            seconds.to_string(),
            "--threads".into(),
            ctx.sizes.rate_threads.to_string(),
        ],
        Duration::from_secs_f64(seconds + 120.0),
    )?;
    let wall = start.elapsed().as_secs_f64();
    let after = Reading::of(session.pid, names)?;
    // The daemon reports losses every second: wait for the next report.
    thread::sleep(Duration::from_millis(1300));
    let (lines, _) = session.lines_since(from);
    let (_, lost, loss_details) = tally_alerts(&lines);
    let delta = before.delta_to(&after);
    Ok(RateStep {
        requested: rate,
        achieved: outcome.raw["achieved_rate"].as_f64().unwrap_or(0.0),
        seconds,
        lost,
        loss_details,
        daemon_cpu_pct: delta.cpu_ns as f64 / (wall * 1e9) * 100.0,
        daemon_voluntary_ctxt: delta.voluntary_ctxt,
        daemon_involuntary_ctxt: delta.involuntary_ctxt,
        daemon_rss_kb: after.rss_kb,
        daemon_hwm_kb: after.hwm_kb,
    })
}

fn phase_sustained(ctx: &Ctx, results: &mut Results) -> Result<()> {
    let session = ctx.start_monitor(true)?;
    let started = session_start(&session);
    let mut names = BTreeMap::new();
    let step = rate_step(
        ctx,
        &session,
        ctx.sizes.sustained_rate,
        ctx.sizes.sustained_seconds,
        &mut names,
    )?;
    eprintln!(
        "    sustained: {} /s requested for {} s, {:.0} /s achieved, {} lost",
        step.requested, step.seconds, step.achieved, step.lost
    );
    ctx.finish(
        session,
        "sustained",
        Some(Setup::Governed),
        None,
        started,
        results,
    );
    results.rates.get_or_insert_with(Rates::default).sustained = Some(step);
    Ok(())
}

/// Flushes stdout (the report goes there too).
pub fn flush() {
    let _ = std::io::stdout().flush();
}
