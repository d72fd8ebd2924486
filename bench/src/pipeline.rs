//! The user-space pipeline benchmark: the daemon's own decode (`monitor::event::decode`) and
//! processor (`monitor::pipeline::Processor`: its core, the process table and the watched
//! set, then the rules and an alert sink) over a recorded stream of raw ring-buffer records,
//! in batches as the ring reader hands them over, on one thread. The kernel's maps are
//! `MemoryKernel`, plain memory.
//!
//! The recording is what the governed workloads of the benchmark make the kernel send: a
//! governed process (selected by a profile, like `bench-workload` in the side-by-side runs)
//! opening distinct files, connecting to distinct loopback peers and running `/usr/bin/true`
//! (fork, exec, the loader's opens, exit), with one open in a thousand outside its profile
//! (an alert, serialized as the JSON sink does). Records are built from the
//! `monitor-common` structs the kernel programs fill, byte for byte.

use std::{
    hint::black_box,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, Result};
use monitor::{
    config::Config,
    event::{alert::Alert, clock::BootClock, decode, Event},
    host::{process::ProcessTable, procfs::ProcSnapshot},
    output::sink::AlertSink,
    pipeline::{Counters, MemoryKernel, Mode, Processor, WatchSelectors},
    rules::Engine,
};
use monitor_common::{
    EventHeader, EventKind, ExecEvent, ExitEvent, FileEvent, FileOpCode, ForkEvent, NetEvent,
    NetOpCode, ARGS_CAP, FILE_RESOLVED, HEADER_WATCHED, PATH_CAP, SOCKADDR_CAP,
};
use serde::Serialize;

/// The executable the recorded governed process runs.
pub const WORKLOAD_EXE: &str = "/opt/bench/bin/bench-workload";
/// Where it may read.
pub const WORK_DIR: &str = "/srv/bench/work";

/// The profile that governs the recorded process (same shape as the side-by-side runs').
pub fn profile_yaml(exe: &str, work_dir: &str) -> String {
    format!(
        r#"name: bench-workload
description: the benchmark's workload, allowed exactly what it does
selector:
  executables: ["{exe}"]
  args: ["*bench-workload*"]
mode: alert
allow:
  exec: ["/bin/true", "/usr/bin/true"]
  files:
    read: ["{work_dir}/**", "/etc/ld.so.cache", "/lib/**", "/lib64/**", "/usr/lib/**", "/proc/**", "/sys/**"]
    write: []
  network:
    connect: ["127.0.0.0/8"]
    listen: ["127.0.0.1:*", "0.0.0.0:*"]
  devices: []
"#
    )
}

/// A recorded stream and the configuration to judge it with.
pub struct Recording {
    pub records: Vec<Vec<u8>>,
    pub config: Arc<Config>,
    /// The same profiles without the host-wide guards: what the guards cost, by difference.
    pub config_without_guards: Arc<Config>,
    pub seed: Vec<ProcSnapshot>,
    /// How many records of each kind, for the report.
    pub mix: Mix,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Mix {
    pub exec: u64,
    pub fork: u64,
    pub exit: u64,
    pub file: u64,
    pub network: u64,
    pub disallowed: u64,
}

/// What a stage does with each record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// `decode` only.
    Decode,
    /// `decode`, then the process table.
    Table,
    /// `decode`, the process table, then the rules engine (alerts serialized to JSON).
    Rules,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Decode, Stage::Table, Stage::Rules];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Table => "decode + process table",
            Stage::Rules => "decode + process table + rules",
        }
    }
}

fn header(kind: EventKind, time_ns: u64, tgid: u32, start_time: u64) -> EventHeader {
    // SAFETY: a plain-data repr(C) struct of integers: all zeroes is a valid value. Fields
    // added later stay zero.
    let mut header: EventHeader = unsafe { std::mem::zeroed() };
    header.kind = kind as u32;
    header.flags = HEADER_WATCHED;
    header.time_ns = time_ns;
    header.tgid = tgid;
    header.pid = tgid;
    header.start_time = start_time;
    header
}

fn bytes_of<T: Copy>(value: &T) -> Vec<u8> {
    // SAFETY: T is a repr(C) plain-data record; reading its bytes is what the ring buffer
    // hands user space.
    unsafe {
        std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>())
    }
    .to_vec()
}

fn copy_into(dst: &mut [u8], src: &[u8]) -> u32 {
    let n = src.len().min(dst.len());
    dst[..n].copy_from_slice(&src[..n]);
    n as u32
}

struct Recorder {
    records: Vec<Vec<u8>>,
    time_ns: u64,
    mix: Mix,
}

impl Recorder {
    fn tick(&mut self) -> u64 {
        self.time_ns += 1_000;
        self.time_ns
    }

    fn exec(&mut self, tgid: u32, start: u64, ppid: u32, parent_start: u64, argv: &[&str]) {
        let time = self.tick();
        // SAFETY: plain-data record, see `header`.
        let mut raw: ExecEvent = unsafe { std::mem::zeroed() };
        raw.header = header(EventKind::Exec, time, tgid, start);
        raw.ppid = ppid;
        raw.parent_start_time = parent_start;
        raw.path_len = copy_into(&mut raw.path[..PATH_CAP], argv[0].as_bytes());
        let mut args = Vec::new();
        for arg in argv {
            args.extend_from_slice(arg.as_bytes());
            args.push(0);
        }
        raw.args_len = copy_into(&mut raw.args[..ARGS_CAP], &args);
        self.records.push(bytes_of(&raw));
        self.mix.exec += 1;
    }

    fn fork(&mut self, tgid: u32, start: u64, parent: u32, parent_start: u64) {
        let time = self.tick();
        // SAFETY: plain-data record, see `header`.
        let mut raw: ForkEvent = unsafe { std::mem::zeroed() };
        raw.header = header(EventKind::Fork, time, tgid, start);
        raw.parent_tgid = parent;
        raw.parent_start_time = parent_start;
        self.records.push(bytes_of(&raw));
        self.mix.fork += 1;
    }

    fn exit(&mut self, tgid: u32, start: u64) {
        let time = self.tick();
        // SAFETY: plain-data record, see `header`.
        let mut raw: ExitEvent = unsafe { std::mem::zeroed() };
        raw.header = header(EventKind::Exit, time, tgid, start);
        self.records.push(bytes_of(&raw));
        self.mix.exit += 1;
    }

    fn open(&mut self, tgid: u32, start: u64, path: &str) {
        let time = self.tick();
        // SAFETY: plain-data record, see `header`.
        let mut raw: FileEvent = unsafe { std::mem::zeroed() };
        raw.header = header(EventKind::File, time, tgid, start);
        raw.op = FileOpCode::Open as u32;
        raw.flags = FILE_RESOLVED;
        raw.open_flags = libc::O_RDONLY as u32;
        raw.path_len = copy_into(&mut raw.path[..PATH_CAP], path.as_bytes());
        raw.result = 3;
        self.records.push(bytes_of(&raw));
        self.mix.file += 1;
    }

    fn connect(&mut self, tgid: u32, start: u64, ip: [u8; 4], port: u16) {
        let time = self.tick();
        // SAFETY: plain-data record, see `header`.
        let mut raw: NetEvent = unsafe { std::mem::zeroed() };
        raw.header = header(EventKind::Net, time, tgid, start);
        raw.op = NetOpCode::Connect as u32;
        raw.sock_type = libc::SOCK_STREAM as u32;
        let mut addr = [0u8; 16];
        addr[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        addr[2..4].copy_from_slice(&port.to_be_bytes());
        addr[4..8].copy_from_slice(&ip);
        raw.addr_len = copy_into(&mut raw.addr[..SOCKADDR_CAP], &addr);
        self.records.push(bytes_of(&raw));
        self.mix.network += 1;
    }
}

fn snapshot(tgid: u32, ppid: u32, start_time_ns: u64, exe: &str, args: &[&str]) -> ProcSnapshot {
    ProcSnapshot {
        tgid,
        ppid,
        start_time_ns,
        exe: Some(exe.to_owned()),
        exe_deleted: false,
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        uid: 0,
        cgroup_path: Some("/system.slice/bench.service".to_owned()),
    }
}

/// Records about `events` records (whole cycles of the workloads' behaviour) and loads the
/// built-in configuration plus the benchmark's profile. `scratch` holds the profile file.
pub fn record(events: usize, scratch: &Path) -> Result<Recording> {
    std::fs::create_dir_all(scratch)?;
    let profile: PathBuf = scratch.join("bench-workload.yaml");
    std::fs::write(&profile, profile_yaml(WORKLOAD_EXE, WORK_DIR))?;
    let config = Config::builtin()
        .with_extra_profiles(&[profile])
        .map_err(|d| {
            let text: Vec<String> = d.iter().map(ToString::to_string).collect();
            anyhow!("the benchmark profile does not load: {}", text.join("; "))
        })?;

    // A host with a few hundred processes, like the machines the daemon seeds from /proc.
    let base_ns = 1_000_000_000_000u64;
    let mut seed = vec![snapshot(
        1,
        0,
        0,
        "/usr/lib/systemd/systemd",
        &["/sbin/init"],
    )];
    for i in 0..300u32 {
        seed.push(snapshot(
            100 + i,
            1,
            1_000_000 * u64::from(i + 1),
            "/usr/bin/sleep",
            &["sleep", "infinity"],
        ));
    }
    let mut rec = Recorder {
        records: Vec::with_capacity(events + 16),
        time_ns: base_ns,
        mix: Mix::default(),
    };
    // The shell that starts the workload, then the workload's exec: the profile selects it.
    let (shell, shell_start) = (500u32, 500_000_000u64);
    seed.push(snapshot(shell, 1, shell_start, "/usr/bin/bash", &["bash"]));
    let (tgid, start) = (1000u32, base_ns - 1_000_000);
    rec.fork(tgid, start, shell, shell_start);
    rec.exec(
        tgid,
        start,
        shell,
        shell_start,
        &[WORKLOAD_EXE, "open", "--distinct", "bench-workload"],
    );

    let mut i = 0u64;
    let mut opens = 0u64;
    let mut child = 20_000u32;
    while rec.records.len() < events {
        // Three opens of distinct files it may read; one in a thousand elsewhere.
        for _ in 0..3 {
            i += 1;
            opens += 1;
            if opens.is_multiple_of(1000) {
                rec.open(tgid, start, &format!("/var/lib/secret/f-{i}"));
                rec.mix.disallowed += 1;
            } else {
                rec.open(tgid, start, &format!("{WORK_DIR}/f-{i}"));
            }
        }
        // Two connects to distinct loopback peers.
        for _ in 0..2 {
            i += 1;
            let ip = [
                127,
                1 + (i / 62_500 % 250) as u8,
                1 + (i / 250 % 250) as u8,
                1 + (i % 250) as u8,
            ];
            rec.connect(tgid, start, ip, 8000 + (i % 1000) as u16);
        }
        // fork + exec of /usr/bin/true (which loads its libraries) + exit.
        child = if child >= 4_000_000 {
            20_000
        } else {
            child + 1
        };
        let child_start = rec.tick();
        rec.fork(child, child_start, tgid, start);
        rec.exec(child, child_start, tgid, start, &["/usr/bin/true", "x"]);
        rec.open(child, child_start, "/etc/ld.so.cache");
        rec.open(child, child_start, "/usr/lib/x86_64-linux-gnu/libc.so.6");
        rec.exit(child, child_start);
    }
    let mut without_guards = config.clone();
    without_guards.guards = Default::default();
    Ok(Recording {
        records: rec.records,
        config: Arc::new(config),
        config_without_guards: Arc::new(without_guards),
        seed,
        mix: rec.mix,
    })
}

/// Records per batch, as the ring reader hands them to the processor (what one drain of a
/// busy ring holds is far more; small batches are the costlier case).
pub const BATCH: usize = 256;

/// Alerts serialized as the JSON-lines sinks do (a buffer cleared as it goes), counted.
struct JsonCount {
    out: Vec<u8>,
    alerts: Arc<AtomicU64>,
}

impl AlertSink for JsonCount {
    fn send(&mut self, alert: &Alert) -> anyhow::Result<()> {
        self.alerts.fetch_add(1, Ordering::Relaxed);
        serde_json::to_writer(&mut self.out, &alert.to_json())?;
        self.out.push(b'\n');
        if self.out.len() > 1 << 15 {
            black_box(&self.out);
            self.out.clear();
        }
        Ok(())
    }
}

/// The daemon's processing state for one pass over a recording.
pub struct Pipeline {
    /// The daemon's processor, without an engine (the core alone).
    core: Processor<std::io::Sink, MemoryKernel>,
    /// The daemon's processor with the engine and a JSON sink: core, rules, sinks.
    full: Processor<std::io::Sink, MemoryKernel>,
    table: ProcessTable,
    engine: Engine,
    clock: BootClock,
    out: Vec<u8>,
    raised: Arc<AtomicU64>,
    pub alerts: u64,
}

impl Pipeline {
    /// A fresh table seeded like the daemon's, and a fresh engine.
    pub fn new(recording: &Recording) -> Pipeline {
        Pipeline::with_config(recording, recording.config.clone())
    }

    /// [`Pipeline::new`] with another configuration.
    pub fn with_config(recording: &Recording, config: Arc<Config>) -> Pipeline {
        let processor = || {
            let mut processor = Processor::new(
                Mode::Run,
                WatchSelectors::default(),
                MemoryKernel::default(),
                Arc::new(Counters::default()),
                None,
                BootClock::new(),
                std::io::sink(),
            );
            processor.table_mut().seed(recording.seed.clone());
            processor
        };
        let core = processor();
        let mut full = processor();
        full.set_engine(Engine::new(config.clone()));
        full.govern_running();
        let raised = Arc::new(AtomicU64::new(0));
        full.add_sink(Box::new(JsonCount {
            out: Vec::with_capacity(1 << 16),
            alerts: raised.clone(),
        }));
        let mut table = ProcessTable::new();
        table.seed(recording.seed.clone());
        let mut engine = Engine::new(config);
        engine.seed(&table);
        Pipeline {
            core,
            full,
            table,
            engine,
            clock: BootClock::new(),
            out: Vec::with_capacity(1 << 16),
            raised,
            alerts: 0,
        }
    }

    /// Runs `stage` over every record, in batches of [`BATCH`]; returns the number of events
    /// handled.
    pub fn run(&mut self, records: &[Vec<u8>], stage: Stage) -> u64 {
        let mut handled = 0;
        for chunk in records.chunks(BATCH) {
            // Sized up front, as the reader does: grown one push at a time, the batch's
            // reallocations were a tenth of the pass.
            let mut batch: Vec<Event> = Vec::with_capacity(chunk.len());
            batch.extend(chunk.iter().filter_map(|r| decode(r).ok()));
            handled += batch.len() as u64;
            let result = match stage {
                Stage::Decode => {
                    black_box(&batch);
                    Ok(())
                }
                Stage::Table => self.core.handle_batch(batch),
                Stage::Rules => self.full.handle_batch(batch),
            };
            if let Err(err) = result {
                panic!("failed to handle a batch: {err}");
            }
        }
        self.alerts = self.raised.load(Ordering::Relaxed);
        handled
    }

    /// Runs the full stage timing each event by itself: where the time goes, by kind (the
    /// clock reads add some tens of ns to each).
    pub fn run_by_kind(&mut self, records: &[Vec<u8>]) -> Vec<KindCost> {
        let mut costs: Vec<KindCost> = Vec::new();
        for record in records {
            let start = Instant::now();
            let Ok(event) = decode(record) else {
                continue;
            };
            self.apply(&event);
            let verdict = self.engine.handle(&event, &self.table, &self.clock);
            for alert in &verdict.alerts {
                self.alerts += 1;
                let _ = serde_json::to_writer(&mut self.out, &alert.to_json());
                self.out.push(b'\n');
            }
            if self.out.len() > 1 << 15 {
                black_box(&self.out);
                self.out.clear();
            }
            let ns = start.elapsed().as_nanos() as u64;
            let kind = match &event {
                Event::File(_) if !verdict.alerts.is_empty() => "file (alert)",
                _ => event.header().kind.name(),
            };
            match costs.iter_mut().find(|c| c.kind == kind) {
                Some(cost) => {
                    cost.events += 1;
                    cost.total_ns += ns;
                }
                None => costs.push(KindCost {
                    kind,
                    events: 1,
                    total_ns: ns,
                }),
            }
        }
        costs.sort_by_key(|c| std::cmp::Reverse(c.total_ns));
        costs
    }

    /// What the daemon's processor does to the table for each event: the same call.
    fn apply(&mut self, event: &Event) {
        self.table.apply(event, |_| None);
    }
}

/// The full stage's cost for one kind of event.
#[derive(Clone, Debug, Serialize)]
pub struct KindCost {
    pub kind: &'static str,
    pub events: u64,
    pub total_ns: u64,
}

/// One timed pass: events per second, and the alerts raised.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Pass {
    pub events: u64,
    pub seconds: f64,
    pub events_per_second: f64,
    pub alerts: u64,
}

/// Times one pass of `stage` over the recording, with a fresh pipeline (set up untimed).
pub fn timed_pass(recording: &Recording, stage: Stage) -> Pass {
    timed_pass_with(recording, stage, recording.config.clone())
}

/// [`timed_pass`] with another configuration.
pub fn timed_pass_with(recording: &Recording, stage: Stage, config: Arc<Config>) -> Pass {
    let mut pipeline = Pipeline::with_config(recording, config);
    let start = Instant::now();
    let events = pipeline.run(&recording.records, stage);
    let elapsed = start.elapsed().max(Duration::from_nanos(1));
    Pass {
        events,
        seconds: elapsed.as_secs_f64(),
        events_per_second: events as f64 / elapsed.as_secs_f64(),
        alerts: pipeline.alerts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recording_decodes_and_governs_the_workload() {
        let dir = std::env::temp_dir().join(format!("bench-pipeline-test-{}", std::process::id()));
        let recording = record(10_000, &dir).unwrap();
        assert!(recording.records.len() >= 10_000);
        assert!(recording.records.iter().all(|r| decode(r).is_ok()));
        let mut pipeline = Pipeline::new(&recording);
        let handled = pipeline.run(&recording.records, Stage::Rules);
        assert_eq!(handled as usize, recording.records.len());
        // Only the opens outside the profile are alerts: the rest is allowed behaviour.
        assert_eq!(pipeline.alerts, recording.mix.disallowed);
        assert!(recording.mix.disallowed > 0);
        let _ = std::fs::remove_dir_all(dir);
    }
}
