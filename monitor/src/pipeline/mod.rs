//! The stages between the ring buffer and the output:
//!
//! ```text
//! kernel ring buffer --(drain on timer / byte threshold)--> reader --(bounded queue)-->
//!     processor: process table, watch selectors, output
//! ```
//!
//! The reader never blocks: when the queue is full it drops the batch and counts it by kind.
//!
//! The pipeline layer sits on everything below it (event, host, config, kernel, telemetry,
//! output, rules); [`tamper`] is its part that watches attacks on the monitor itself.

pub mod tamper;

use std::{
    io::Write,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::{HashMap, MapData, PerCpuArray, RingBuf};
use monitor_common::{
    stats_slot, EventKind, Stat, WatchEntry, KIND_SLOTS, WATCH_CANDIDATE, WATCH_EXE, WATCH_PID,
    WATCH_PROFILE,
};
use serde_json::Value;
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, watch},
};
use tracing::{debug, info, warn};

use crate::{
    config::glob::Glob,
    event::{alert::Alert, clock::BootClock, decode, Event, File, GpuIoctls, Header, RenameJoiner},
    host::{cgroup::CgroupResolver, ioctls::IoctlTracker, process::ProcessTable, procfs},
    output::{self, sink::AlertSink, LossStage},
    rules::Engine,
};

/// Counters shared between stages, by event kind.
#[derive(Default)]
pub struct Counters {
    /// Events dropped because the processing queue was full.
    pub user_lost: [AtomicU64; KIND_SLOTS as usize],
    /// Records that could not be decoded.
    pub undecodable: AtomicU64,
    /// Events received by the processor.
    pub received: [AtomicU64; KIND_SLOTS as usize],
    /// The fanotify guards' losses (reported as file events lost).
    pub guard: Arc<crate::kernel::guard::GuardCounters>,
}

fn kind_slot(kind: EventKind) -> usize {
    (kind as u32 & (KIND_SLOTS - 1)) as usize
}

/// Drains the ring buffer on a timer, or earlier when the kernel wakes it (byte threshold),
/// and hands batches to the processor without ever blocking. Events of the fanotify guards
/// (`guard_events`) join each batch after the ring's: those that arrived before a drain
/// started come after every ring record written before them (an exec is in the kernel's
/// ring before the open that process makes next is seen by fanotify).
///
/// Events that must not share fate with bulk ones (the kernel's priority ring: tampering,
/// kills and denials, memory accesses; and the guards' events) come first: the priority ring
/// is drained before the bulk one, and when the processing queue is more than half full
/// they skip it through `urgent`, which the processor takes before the queue.
#[expect(
    clippy::too_many_arguments,
    reason = "wires the reader once at start-up"
)]
pub async fn read_ring(
    ring: RingBuf<MapData>,
    queue: mpsc::Sender<Vec<Event>>,
    drain_interval: Duration,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
    guard_events: Option<std::sync::mpsc::Receiver<Event>>,
    priority: RingBuf<MapData>,
    urgent: mpsc::Sender<Vec<Event>>,
) -> anyhow::Result<()> {
    // SAFETY: the RingBuf owns its map fd, keeps it open while the AsyncFd owns the RingBuf,
    // and as_raw_fd always returns that fd.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|err| err.into_parts().1)
        .context("failed to poll the ring buffer")?;
    // SAFETY: as above.
    let mut priority =
        unsafe { AsyncFd::register_with_interest(priority, tokio::io::Interest::READABLE) }
            .map_err(|err| err.into_parts().1)
            .context("failed to poll the priority ring buffer")?;
    let queue_capacity = queue.max_capacity();
    let mut tick = tokio::time::interval(drain_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renames = RenameJoiner::default();
    loop {
        let stopping = tokio::select! {
            guard = priority.readable_mut() => {
                guard.context("failed to poll the priority ring buffer")?.clear_ready();
                false
            }
            guard = ring.readable_mut() => {
                guard.context("failed to poll the ring buffer")?.clear_ready();
                false
            }
            _ = tick.tick() => false,
            _ = stop.changed() => true,
        };
        // The priority ring first: a flood in the bulk ring cannot delay it.
        let mut first = Vec::new();
        let buffer = priority.get_mut();
        while let Some(record) = buffer.next() {
            match decode(&record) {
                Ok(event) => first.push(event),
                Err(err) => {
                    counters.undecodable.fetch_add(1, Ordering::Relaxed);
                    debug!("dropped a record: {err}");
                }
            }
        }
        let mut guarded: Vec<Event> = guard_events
            .as_ref()
            .map(|rx| rx.try_iter().collect())
            .unwrap_or_default();
        // A processor falling behind (the queue more than half full): what matters skips it.
        if queue.capacity() < queue_capacity / 2 {
            first.append(&mut guarded);
            first.sort_by_key(|e| e.header().time_ns);
            send_urgent(&urgent, first, &counters);
            first = Vec::new();
        } else {
            // In time order with the guards' events (see the merge below).
            guarded.append(&mut first);
            guarded.sort_by_key(|e| e.header().time_ns);
        }
        let mut batch = Vec::new();
        let buffer = ring.get_mut();
        while let Some(record) = buffer.next() {
            match decode(&record) {
                Ok(event) => batch.extend(renames.push(event)),
                Err(err) => {
                    counters.undecodable.fetch_add(1, Ordering::Relaxed);
                    debug!("dropped a record: {err}");
                }
            }
        }
        // In time order: a guard event goes before the ring's records that came after it
        // (a connect right after the read it follows); the ring's own order is kept.
        if !guarded.is_empty() {
            let mut merged = Vec::with_capacity(batch.len() + guarded.len());
            let mut ring_events = batch.into_iter().peekable();
            for event in guarded {
                let time = event.header().time_ns;
                while let Some(earlier) = ring_events.next_if(|e| e.header().time_ns <= time) {
                    merged.push(earlier);
                }
                merged.push(event);
            }
            merged.extend(ring_events);
            batch = merged;
        }
        if !batch.is_empty() {
            if let Err(
                mpsc::error::TrySendError::Full(batch) | mpsc::error::TrySendError::Closed(batch),
            ) = queue.try_send(batch)
            {
                // Bulk events are lost (and counted); the others take the urgent way.
                let (keep, lost): (Vec<Event>, Vec<Event>) =
                    batch.into_iter().partition(is_priority);
                for event in &lost {
                    counters.user_lost[kind_slot(event.header().kind)]
                        .fetch_add(1, Ordering::Relaxed);
                }
                send_urgent(&urgent, keep, &counters);
            }
        }
        if stopping {
            return Ok(());
        }
    }
}

/// Whether an event must not share fate with bulk events: tampering with the monitor,
/// enforcement, memory accesses, guard hits.
pub fn is_priority(event: &Event) -> bool {
    use crate::event::Decision;
    match event {
        Event::Tamper(_) | Event::MemoryAccess(_) => true,
        Event::File(file) => file.guard.is_some(),
        Event::Exec(exec) => exec.killed || exec.would_kill,
        Event::Net(net) => matches!(net.decision, Decision::Denied | Decision::WouldDeny),
        Event::Device(device) => matches!(device.decision, Decision::Denied | Decision::WouldDeny),
        _ => false,
    }
}

/// Hands events to the processor ahead of the queue; counts them lost if even that is full.
fn send_urgent(urgent: &mpsc::Sender<Vec<Event>>, events: Vec<Event>, counters: &Counters) {
    if events.is_empty() {
        return;
    }
    if let Err(
        mpsc::error::TrySendError::Full(events) | mpsc::error::TrySendError::Closed(events),
    ) = urgent.try_send(events)
    {
        for event in &events {
            counters.user_lost[kind_slot(event.header().kind)].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Which processes `monitor trace` watches.
#[derive(Clone, Debug, Default)]
pub struct WatchSelectors {
    pub all: bool,
    pub pids: Vec<u32>,
    pub exes: Vec<Glob>,
}

/// Something that watches events go by (`monitor learn`): it sees every event after the
/// process table applied it, and names processes to put in the kernel's watched set.
pub trait Observer: Send {
    /// Processes already running that it wants watched (after the /proc scan).
    fn seed(&mut self, table: &ProcessTable) -> Vec<u32>;
    /// One event; returns processes to watch from now on.
    fn observe(&mut self, event: &Event, table: &ProcessTable) -> Vec<u32>;
    /// Events observed so far (for progress).
    fn events(&self) -> u64;
}

/// What the processor prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every watched event as a JSON line (`monitor trace`).
    Trace,
    /// Events go to an observer only (`monitor learn`).
    Observe,
    /// Alerts only (`monitor run`).
    Run,
}

/// Loss counters already reported, to report only what is new.
#[derive(Default)]
struct Reported {
    /// By kernel counter family ([`Stat`]) and kind.
    kernel: [[u64; KIND_SLOTS as usize]; monitor_common::STAT_FAMILIES as usize],
    guard_overflow: u64,
    user: [u64; KIND_SLOTS as usize],
}

impl Reported {
    /// The count of `stage` for the kind in `slot` already reported.
    fn of(&mut self, stage: LossStage, slot: usize) -> &mut u64 {
        match stage {
            LossStage::Kernel(stat) => &mut self.kernel[stat as usize][slot],
            LossStage::GuardOverflow => &mut self.guard_overflow,
            LossStage::User => &mut self.user[slot],
        }
    }
}

/// Totals for the summary at exit.
#[derive(Default, Debug)]
pub struct Summary {
    pub events: [u64; KIND_SLOTS as usize],
    pub printed: u64,
    pub kernel_lost: [u64; KIND_SLOTS as usize],
    pub user_lost: [u64; KIND_SLOTS as usize],
}

/// The processing stage: owns the process table and the output.
pub struct Processor<W: Write> {
    pub mode: Mode,
    pub clock: BootClock,
    pub table: ProcessTable,
    pub cgroups: Option<CgroupResolver>,
    pub selectors: WatchSelectors,
    pub watched: HashMap<MapData, u32, WatchEntry>,
    pub stats: PerCpuArray<MapData, u64>,
    pub counters: Arc<Counters>,
    pub out: W,
    /// Where alerts go (`monitor run`).
    pub sinks: Vec<Box<dyn AlertSink>>,
    /// GPU ioctl counters, when the sensor has them.
    pub ioctls: Option<IoctlTracker>,
    /// Profiles, guards and rules (`monitor run`).
    pub engine: Option<Engine>,
    /// `monitor learn`.
    pub observer: Option<Box<dyn Observer>>,
    /// `--dry-run`: enforce decisions are reported as `would-*`.
    pub dry_run: bool,
    /// Counters exported over OTLP (`monitor run`).
    pub metrics: Option<Arc<crate::telemetry::metrics::Metrics>>,
    /// Behaviour judged allowed, which the kernel then does not send (`monitor run`).
    pub known: Option<HashMap<MapData, monitor_common::KnownKey, u32>>,
    /// Threads of watched processes (tid -> tgid), for the memory sensor (`monitor run`).
    pub watched_threads: Option<HashMap<MapData, u32, u32>>,
    /// Stops of the monitor, and its objects' names (see [`crate::pipeline::tamper`]).
    pub pauses: crate::pipeline::tamper::Pauses,
    /// The kernel's gates ([`monitor_common::gate`]) (`monitor run`).
    pub gates: Option<aya::maps::Array<MapData, u32>>,
    /// Governed processes' resolved `allow.exec` templates in the kernel (`monitor run`).
    pub resolved_exec: Option<crate::kernel::policy::ResolvedExec>,
    /// /dev node names by (major, minor), for device opens the kernel could not name.
    device_nodes: std::collections::HashMap<(u32, u32), Option<String>>,
    reported: Reported,
    summary: Summary,
    /// Processes user space put in the kernel's watched set. Between an exec that matches a
    /// selector and the map update, the kernel does not flag the process's events yet; this
    /// set covers that window for its fork and exit events.
    watching: std::collections::HashSet<u32>,
}

impl<W: Write> Processor<W> {
    #[expect(
        clippy::too_many_arguments,
        reason = "wires the stage once at start-up"
    )]
    pub fn new(
        mode: Mode,
        selectors: WatchSelectors,
        watched: HashMap<MapData, u32, WatchEntry>,
        stats: PerCpuArray<MapData, u64>,
        counters: Arc<Counters>,
        cgroups: Option<CgroupResolver>,
        clock: BootClock,
        out: W,
    ) -> Self {
        Processor {
            mode,
            clock,
            table: ProcessTable::new(),
            cgroups,
            selectors,
            watched,
            stats,
            counters,
            out,
            sinks: Vec::new(),
            ioctls: None,
            engine: None,
            observer: None,
            dry_run: false,
            metrics: None,
            known: None,
            watched_threads: None,
            pauses: crate::pipeline::tamper::Pauses::default(),
            gates: None,
            resolved_exec: None,
            device_nodes: std::collections::HashMap::new(),
            reported: Reported::default(),
            summary: Summary::default(),
            watching: std::collections::HashSet::new(),
        }
    }

    /// Seeds the table from /proc (after the programs are attached, so nothing falls between)
    /// and applies the watch selectors to what already runs.
    pub fn seed(&mut self) -> anyhow::Result<usize> {
        let snapshots = procfs::scan();
        let count = snapshots.len();
        self.table.seed(snapshots);
        self.govern_running();
        if let Some(observer) = &mut self.observer {
            for tgid in observer.seed(&self.table) {
                self.watch_tree(tgid, WATCH_EXE);
            }
        }
        for &pid in &self.selectors.pids.clone() {
            if self.table.get_by_tgid(pid).is_none() {
                anyhow::bail!("failed to watch pid {pid}: no such process");
            }
            self.watch_tree(pid, WATCH_PID);
        }
        if !self.selectors.exes.is_empty() {
            let matching: Vec<u32> = self
                .table
                .iter()
                .filter(|p| {
                    p.exe
                        .as_deref()
                        .is_some_and(|exe| self.selectors.exes.iter().any(|g| g.matches(exe)))
                })
                .map(|p| p.tgid)
                .collect();
            for tgid in matching {
                self.watch_tree(tgid, WATCH_EXE);
            }
        }
        Ok(count)
    }

    /// Puts the processes the profiles select (and their children) in the kernel's watched
    /// set: after the /proc scan, and after a reload.
    pub fn govern_running(&mut self) {
        let Some(engine) = &mut self.engine else {
            return;
        };
        for (tgid, profile) in engine.seed(&self.table) {
            self.watch_profile(tgid, profile);
        }
        self.give_resolved_execs();
    }

    /// Gives every governed process whose profile resolved templated `allow.exec` globs its
    /// instance in the kernel ([`crate::kernel::policy::ResolvedExec`]).
    fn give_resolved_execs(&mut self) {
        let (Some(engine), Some(resolved)) = (&self.engine, &mut self.resolved_exec) else {
            return;
        };
        for (tgid, start_time_ns, profile, globs) in engine.resolved_execs() {
            resolved.assign(tgid, start_time_ns, profile, globs);
        }
    }

    /// Opens the kernel's gate in front of the memory sensor's host-wide checks
    /// ([`monitor_common::gate::GOVERNED`]): some process's memory is guarded now.
    pub fn open_governed_gate(&mut self) {
        if let Some(gates) = &mut self.gates {
            if let Err(err) = gates.set(monitor_common::gate::GOVERNED, 1, 0) {
                warn!(
                    "failed to open the governed gate: {err}; the memory sensor may miss accesses"
                );
            }
        }
    }

    fn watch_profile(&mut self, tgid: u32, profile: u32) {
        // Before the entry: the memory hooks must not skip a process already governed.
        self.open_governed_gate();
        // The generation is the kernel's own (`EXEC_GENERATION`): not read, not written here.
        let entry = WatchEntry {
            reason: WATCH_PROFILE,
            profile,
            generation: 0,
            _pad: 0,
        };
        if let Err(err) = self.watched.insert(tgid, entry, 0) {
            warn!("failed to watch pid {tgid}: {err}");
        }
        // Threads it started before it was governed: the kernel records only later ones.
        if let Some(threads) = &mut self.watched_threads {
            let tids = std::fs::read_dir(format!("/proc/{tgid}/task"))
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok());
            for tid in tids.filter(|&tid| tid != tgid) {
                if let Err(err) = threads.insert(tid, tgid, 0) {
                    debug!("failed to record thread {tid} of pid {tgid}: {err}");
                }
            }
        }
    }

    /// Swaps in a new configuration; processes it no longer governs stop being watched.
    pub fn reload(&mut self, config: std::sync::Arc<crate::config::Config>) {
        let Some(engine) = &mut self.engine else {
            return;
        };
        let before: Vec<(u32, u32)> = engine.governed();
        engine.reload(config);
        // New profile ids, maybe new globs, and executables installed since: expanded anew.
        if let Some(resolved) = &mut self.resolved_exec {
            resolved.reassign(engine.resolved_execs());
        }
        // A profile's id is its place in the configuration: one added before it moves it.
        // The kernel must judge a process by the id its profile has now.
        let moved: Vec<(u32, u32)> = engine
            .governed()
            .into_iter()
            .filter(|governed| {
                before
                    .iter()
                    .any(|(tgid, id)| *tgid == governed.0 && *id != governed.1)
            })
            .collect();
        for (tgid, id) in moved {
            self.watch_profile(tgid, id);
        }
        self.govern_running();
        let Some(engine) = &self.engine else {
            return;
        };
        let now: std::collections::HashSet<u32> = engine
            .governed()
            .into_iter()
            .map(|(tgid, _)| tgid)
            .collect();
        for (tgid, _) in before {
            if !now.contains(&tgid) && !self.watching.contains(&tgid) {
                let _ = self.watched.remove(&tgid);
            }
        }
    }

    /// Folded alerts whose window closed, and processes whose exit was lost.
    pub fn flush_alerts(&mut self) {
        let Some(engine) = &mut self.engine else {
            return;
        };
        let alerts = engine.flush(BootClock::boot_now_ns(), &self.clock);
        engine.sweep(&self.table);
        if let Some(resolved) = self.resolved_exec.as_mut().filter(|r| !r.is_empty()) {
            let live = engine
                .resolved_execs()
                .into_iter()
                .map(|(_, _, profile, globs)| (profile, globs))
                .collect();
            resolved.sweep(&live);
        }
        for alert in alerts {
            self.raise(&alert);
        }
        self.flush_sinks();
    }

    /// Runs the rules over an event the table has applied, raises what they find, and keeps
    /// the kernel's watched set equal to the governed processes.
    fn judge(&mut self, event: &Event) {
        if self.engine.is_none() {
            return;
        }
        self.note_tamper(event);
        let Some(engine) = &mut self.engine else {
            return;
        };
        let verdict = engine.handle(event, &self.table, &self.clock);
        let header = *event.header();
        let governed = match event {
            Event::Exec(_) => Some(
                engine
                    .governing(header.tgid, header.start_time_ns)
                    .map(|p| p.id),
            ),
            Event::Fork(_) => verdict.governed.map(|(_, id)| Some(id)),
            _ => None,
        };
        let profile = engine.governing(header.tgid, header.start_time_ns);
        let enforce = profile.filter(|p| p.mode == crate::config::profile::Mode::Enforce);
        let dry_run = self.dry_run || enforce.is_some_and(|p| p.dry_run);
        let gpu_enforce = engine
            .config()
            .guards
            .gpu
            .as_ref()
            .is_some_and(|g| g.enforce);
        let findings = verdict.findings;
        let mut alerts = verdict.alerts;
        for alert in &mut alerts {
            alert.action =
                enforcement_action(event, &alert.rule, enforce.is_some(), gpu_enforce, dry_run);
            if let Some(mechanism) = enforcement_mechanism(event, alert.action) {
                alert
                    .attributes
                    .insert("monitor.enforcement.mechanism".into(), mechanism.into());
            }
            // The actor of a guard event is the process fanotify named, as it was then.
            if let Event::File(File {
                guard: Some(hit), ..
            }) = event
            {
                if let Some(exe) = &hit.exe {
                    alert
                        .attributes
                        .entry("process.executable.path")
                        .or_insert_with(|| exe.clone().into());
                }
                if alert.profile.is_none() && hit.judged {
                    alert.profile = hit
                        .profile
                        .and_then(|id| engine.config().profile(id))
                        .map(|p| p.name.clone());
                }
            }
        }
        // Only what broke no rule: a repeat folded by deduplication is still a violation.
        if findings == 0 {
            self.remember_allowed(event);
        }
        for alert in &mut alerts {
            self.name_object(event, alert);
        }
        for alert in &alerts {
            self.raise(alert);
        }
        if let (Some(Some(_)), Some(engine), Some(resolved)) =
            (governed, &self.engine, &mut self.resolved_exec)
        {
            if let Some((profile, globs)) = engine.resolved_exec(header.tgid, header.start_time_ns)
            {
                resolved.assign(header.tgid, header.start_time_ns, profile, globs);
            }
        }
        match governed {
            Some(Some(profile)) => self.watch_profile(header.tgid, profile),
            // An exec that left the profiles (or a candidate the selectors did not take).
            Some(None) if header.watched && !self.watching.contains(&header.tgid) => {
                let _ = self.watched.remove(&header.tgid);
            }
            _ => {}
        }
    }

    /// Tells the kernel not to send this behaviour again: the rules found nothing wrong with
    /// it. Only governed processes' events carry a key; the kernel forgets the judgment at
    /// the process's next exec and at a reload.
    fn remember_allowed(&mut self, event: &Event) {
        let key = match event {
            Event::File(file) => file.known,
            // An address read from user memory is never remembered (the kernel sends no key
            // for one either).
            Event::Net(net) if !net.unverified => net.known,
            _ => None,
        };
        if let (Some(key), Some(known)) = (key, &mut self.known) {
            if let Err(err) = known.insert(key, 1, 0) {
                debug!("failed to remember allowed behaviour: {err}");
            }
        }
    }

    /// Watches a process and its descendants that already run (later ones inherit in the kernel).
    fn watch_tree(&mut self, root: u32, reason: u32) {
        let mut tgids = vec![root];
        tgids.extend(self.table.descendants(root));
        for tgid in tgids {
            self.watch(tgid, reason);
        }
    }

    /// Whether the kernel put this process in the watched set at its last exec, for its
    /// executable (`WATCH_CANDIDATE`, neither inherited nor watched before: the kernel bumps
    /// the generation of an entry that existed at exec).
    fn fresh_candidate(&self, tgid: u32) -> bool {
        self.watched
            .get(&tgid, 0)
            .is_ok_and(|entry| entry.reason == WATCH_CANDIDATE && entry.generation == 0)
    }

    /// Puts a process in the kernel's watched set.
    fn watch(&mut self, tgid: u32, reason: u32) {
        let entry = WatchEntry {
            reason,
            profile: 0,
            generation: 0,
            _pad: 0,
        };
        match self.watched.insert(tgid, entry, 0) {
            Ok(()) => {
                self.watching.insert(tgid);
            }
            Err(err) => warn!("failed to watch pid {tgid}: {err}"),
        }
    }

    /// Handles one batch from the reader.
    pub fn handle_batch(&mut self, batch: Vec<Event>) -> std::io::Result<()> {
        for event in batch {
            self.handle(event)?;
        }
        self.flush_sinks();
        self.out.flush()
    }

    fn handle(&mut self, event: Event) -> std::io::Result<()> {
        let kind = event.header().kind;
        self.summary.events[kind_slot(kind)] += 1;
        if let Some(metrics) = &self.metrics {
            metrics.event(kind.name());
        }
        self.counters.received[kind_slot(kind)].fetch_add(1, Ordering::Relaxed);
        let tgid = event.header().tgid;
        let mut event = event;
        // A guard event of a process that was gone before /proc could be read: the table
        // still knows it (exited processes are kept a while).
        // Otherwise the table's exact start time replaces /proc's tick-grained one, so that
        // the alerts of one process have one identity (deduplication keys on it).
        if let Event::File(file) = &mut event {
            if file.guard.is_some() {
                let start = file.header.start_time_ns;
                let known = if start == 0 {
                    self.table.latest_by_tgid(tgid)
                } else {
                    self.table.get(tgid, start)
                };
                if let Some(process) = known {
                    file.header.start_time_ns = process.start_time_ns;
                }
            }
        }
        // Host-wide sensors: device opens, GPU ioctls and protected files, whoever does them.
        let host_wide = match &mut event {
            Event::Device(device) => {
                if let Some(ioctls) = &mut self.ioctls {
                    ioctls.note(tgid);
                }
                // The kernel's name is the one the process passed (possibly rewritten since,
                // or another open's): kept only if it is this very node.
                if device.path.is_empty()
                    || !crate::host::devices::is_node(
                        std::path::Path::new(&device.path),
                        device.major,
                        device.minor,
                    )
                {
                    device.path = self.device_node(device.major, device.minor);
                }
                true
            }
            Event::GpuIoctls(_) => true,
            // The accessor may be any process; the target is governed.
            Event::MemoryAccess(_) => true,
            Event::File(file) => file.protected,
            _ => false,
        };
        if let Event::Exit(_) = event {
            // The last ioctl counts of the process come before its exit.
            self.report_ioctls(Some(tgid))?;
        }
        // The JSON record is built only when it is printed (`monitor trace`): in `monitor run`
        // it was built, with a parent lookup, for every governed or host-wide event and
        // thrown away.
        let tracing = self.mode == Mode::Trace;
        let mut print = self.selectors.all
            || host_wide
            || event.header().watched
            || self.watching.contains(&tgid);
        // The core: the process table applies the event; every consumer below (trace output,
        // rules and sinks, the learner) sees it applied.
        let cgroups = &mut self.cgroups;
        self.table.apply(&event, |id| {
            cgroups.as_mut().and_then(|resolver| resolver.path(id))
        });
        match &event {
            Event::Exec(exec) => {
                let selected = self.selectors.exes.iter().any(|g| g.matches(&exec.path));
                if !print && selected {
                    self.watch(tgid, WATCH_EXE);
                    print = true;
                }
                // Only `--exe` fills the candidate map in `monitor trace`.
                let candidates = self.mode == Mode::Trace && !self.selectors.exes.is_empty();
                if print && !selected && candidates && self.fresh_candidate(tgid) {
                    // The kernel watched it at this exec for its executable's inode, which
                    // `--exe` matched under another name (a hard link): not traced.
                    if let Err(err) = self.watched.remove(&tgid) {
                        debug!("failed to stop watching pid {tgid}: {err}");
                    }
                    print = self.selectors.all;
                }
            }
            Event::Fork(fork) => {
                // Forked before user space watched the parent: the kernel did not inherit.
                if !print && self.watching.contains(&fork.parent_tgid) {
                    self.watch(fork.header.tgid, WATCH_EXE);
                    print = true;
                }
            }
            Event::Exit(_) => {
                self.watching.remove(&tgid);
                if let Some(ioctls) = &mut self.ioctls {
                    ioctls.forget(tgid);
                }
            }
            Event::File(_)
            | Event::Net(_)
            | Event::Device(_)
            | Event::GpuIoctls(_)
            | Event::MemoryAccess(_)
            | Event::IoUring(_)
            | Event::Tamper(_) => {}
        }
        let record = (print && tracing).then(|| {
            let process = match &event {
                // Exited now: found by its identity among the exited.
                Event::Exit(exit) => self.table.get(tgid, exit.header.start_time_ns),
                _ => self.table.get_by_tgid(tgid),
            };
            output::event_record(&self.clock, &self.table, &event, process)
        });
        self.judge(&event);
        if let Some(observer) = &mut self.observer {
            for tgid in observer.observe(&event, &self.table) {
                self.watch(tgid, WATCH_EXE);
            }
        }
        if let (Mode::Trace, Some(record)) = (self.mode, record) {
            self.emit(&record)?;
        }
        Ok(())
    }

    /// Reports GPU ioctls counted since the last report (of one process, or all).
    pub fn report_ioctls(&mut self, only: Option<u32>) -> std::io::Result<()> {
        let Some(ioctls) = &mut self.ioctls else {
            return Ok(());
        };
        let now = BootClock::boot_now_ns();
        for (tgid, counts) in ioctls.collect(only) {
            let start_time_ns = self.table.get_by_tgid(tgid).map_or(0, |p| p.start_time_ns);
            let summary = Event::GpuIoctls(GpuIoctls {
                header: Header {
                    kind: EventKind::GpuIoctls,
                    time_ns: now,
                    tgid,
                    pid: tgid,
                    start_time_ns,
                    watched: true,
                },
                counts,
            });
            self.handle(summary)?;
        }
        Ok(())
    }

    fn device_node(&mut self, major: u32, minor: u32) -> String {
        self.device_nodes
            .entry((major, minor))
            .or_insert_with(|| {
                crate::host::devices::find_node(std::path::Path::new("/dev"), major, minor)
            })
            .clone()
            .unwrap_or_default()
    }

    fn emit(&mut self, record: &Value) -> std::io::Result<()> {
        self.summary.printed += 1;
        serde_json::to_writer(&mut self.out, record)?;
        self.out.write_all(b"\n")
    }

    /// Reads the kernel's and the reader's loss counters and reports what is new.
    pub fn report_losses(&mut self) -> std::io::Result<()> {
        let now = BootClock::boot_now_ns();
        let mut pending = Vec::new();
        for kind in EventKind::ALL {
            let slot = kind_slot(kind);
            // A full ring, a full map (an event's arguments or fd that could not be kept for
            // it) and a failed kernel read each lose the event in the kernel, each counted
            // and reported under its own reason.
            let mut losses: Vec<(LossStage, u64)> = Stat::LOSSES
                .into_iter()
                .map(|stat| {
                    let total = self
                        .stats
                        .get(&stats_slot(stat, kind as u32), 0)
                        .map_or(0, |values| values.iter().sum::<u64>());
                    (LossStage::Kernel(stat), total)
                })
                .collect();
            let mut user = self.counters.user_lost[slot].load(Ordering::Relaxed);
            if kind == EventKind::File {
                let overflow = self.counters.guard.overflow.load(Ordering::Relaxed);
                losses.push((LossStage::GuardOverflow, overflow));
                user += self.counters.guard.queue_full.load(Ordering::Relaxed);
            }
            losses.push((LossStage::User, user));
            let mut kernel_lost = 0;
            for (stage, total) in losses {
                let reported = self.reported.of(stage, slot);
                if stage != LossStage::User {
                    kernel_lost += total.max(*reported);
                }
                if total > *reported {
                    let count = total - *reported;
                    *reported = total;
                    warn!(
                        stage = stage.name(),
                        kind = kind.name(),
                        count,
                        "events lost"
                    );
                    if let Some(metrics) = &self.metrics {
                        metrics.loss(stage.name(), kind.name(), stage.reason(), count);
                    }
                    match self.mode {
                        Mode::Trace => {
                            let record =
                                output::loss_record(&self.clock, now, stage, kind.name(), count);
                            self.summary.printed += 1;
                            serde_json::to_writer(&mut self.out, &record)?;
                            self.out.write_all(b"\n")?;
                        }
                        // Learning from an incomplete record is said in the learn output; the
                        // loss is also logged above.
                        Mode::Run | Mode::Observe => {
                            pending.push(output::loss_alert(
                                &self.clock,
                                now,
                                stage,
                                kind.name(),
                                count,
                            ));
                        }
                    }
                }
            }
            self.summary.kernel_lost[slot] = kernel_lost;
            self.summary.user_lost[slot] = self.reported.user[slot];
        }
        for alert in pending {
            self.raise(&alert);
        }
        self.flush_sinks();
        self.out.flush()
    }

    /// Sends an alert to every sink. A failing sink is logged and does not stop the others.
    pub fn raise(&mut self, alert: &Alert) {
        if let Some(metrics) = &self.metrics {
            metrics.alert(&alert.rule, alert.severity);
        }
        for sink in &mut self.sinks {
            if let Err(err) = sink.send(alert) {
                warn!("failed to send alert {}: {err:#}", alert.rule);
            }
        }
    }

    fn flush_sinks(&mut self) {
        for sink in &mut self.sinks {
            if let Err(err) = sink.flush() {
                warn!("failed to flush alerts: {err:#}");
            }
        }
    }

    /// Drops exited processes past their grace period.
    pub fn sweep(&mut self) {
        self.table.sweep(BootClock::boot_now_ns());
        if let Some(metrics) = &self.metrics {
            metrics.set_processes(self.table.len() as u64);
        }
    }

    /// Writes the summary record (trace mode) and logs it.
    pub fn finish(&mut self) -> std::io::Result<()> {
        self.report_losses()?;
        let mut events = serde_json::Map::new();
        let mut kernel_lost = serde_json::Map::new();
        let mut user_lost = serde_json::Map::new();
        for kind in EventKind::ALL {
            let slot = kind_slot(kind);
            events.insert(kind.name().into(), self.summary.events[slot].into());
            kernel_lost.insert(kind.name().into(), self.summary.kernel_lost[slot].into());
            user_lost.insert(kind.name().into(), self.summary.user_lost[slot].into());
        }
        let total_lost: u64 = self.summary.kernel_lost.iter().sum::<u64>()
            + self.summary.user_lost.iter().sum::<u64>();
        // Events the kernel did not send because user space had judged the same behaviour.
        let known: u64 = EventKind::ALL
            .iter()
            .filter_map(|kind| {
                self.stats
                    .get(&stats_slot(Stat::Known, *kind as u32), 0)
                    .ok()
            })
            .map(|values| values.iter().sum::<u64>())
            .sum();
        info!(
            events = ?events,
            lost = total_lost,
            known,
            processes = self.table.len(),
            "summary"
        );
        if self.mode == Mode::Trace {
            let record = serde_json::json!({
                "time": self.clock.rfc3339(BootClock::boot_now_ns()),
                "event.kind": "summary",
                "monitor.events": events,
                "monitor.lost.kernel": kernel_lost,
                "monitor.lost.user": user_lost,
                "monitor.lost.total": total_lost,
                "monitor.undecodable": self.counters.undecodable.load(Ordering::Relaxed),
                "monitor.processes": self.table.len(),
            });
            self.emit(&record)?;
        }
        for sink in &mut self.sinks {
            if let Err(err) = sink.close() {
                warn!("failed to close an alert output: {err:#}");
            }
        }
        self.out.flush()
    }
}

/// What the kernel did about an event that broke a rule: `monitor.action`.
fn enforcement_action(
    event: &Event,
    rule: &str,
    profile_enforces: bool,
    gpu_guard_enforces: bool,
    dry_run: bool,
) -> crate::event::alert::Action {
    use crate::event::{alert::Action, Decision};
    // What the kernel decided, where a cgroup program judged the operation itself; otherwise
    // (a syscall tracepoint saw it) what its result says.
    let refused = |decision: Decision, result: i64| match decision {
        Decision::Denied => Action::Denied,
        Decision::WouldDeny => Action::WouldDeny,
        Decision::Allowed => Action::Alert,
        Decision::Observed if result == -monitor_common::EPERM => Action::Denied,
        Decision::Observed if dry_run => Action::WouldDeny,
        Decision::Observed => Action::Alert,
    };
    match event {
        Event::Exec(exec) if exec.killed => Action::Killed,
        Event::Exec(exec) if exec.would_kill => Action::WouldKill,
        Event::File(File {
            guard: Some(hit), ..
        }) if hit.denied => Action::Denied,
        Event::File(File {
            guard: Some(hit), ..
        }) if hit.would_deny => Action::WouldDeny,
        Event::MemoryAccess(access) if access.killed => Action::Killed,
        Event::MemoryAccess(access) if access.would_kill => Action::WouldKill,
        Event::Net(net)
            if profile_enforces
                && matches!(
                    rule,
                    "connect-not-allowed" | "listen-not-allowed" | "model-exfiltration"
                ) =>
        {
            refused(net.decision, net.result)
        }
        Event::Device(device)
            if (profile_enforces && rule == "device-not-allowed")
                || (gpu_guard_enforces && rule == "gpu-unexpected-process") =>
        {
            refused(device.decision, device.result)
        }
        _ => Action::Alert,
    }
}

/// How the kernel acted (`monitor.enforcement.mechanism`), when it did or would have.
fn enforcement_mechanism(
    event: &Event,
    action: crate::event::alert::Action,
) -> Option<&'static str> {
    use crate::event::alert::Action;
    if action == Action::Alert {
        return None;
    }
    Some(match event {
        Event::Exec(_) => "sigkill-before-exec",
        Event::File(File { guard: Some(_), .. }) => crate::kernel::guard::MECHANISM,
        Event::Net(_) => "cgroup-sock-addr",
        Event::Device(_) => "cgroup-device",
        Event::MemoryAccess(access) if access.at_exit => "sigkill-at-open-exit",
        Event::MemoryAccess(_) => "sigkill-at-syscall-entry",
        _ => return None,
    })
}

/// Options of the pipeline around the sensor.
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    pub drain_interval: Duration,
    pub queue_batches: usize,
    pub ready_file: Option<PathBuf>,
    /// How often per-process GPU ioctl counts are reported.
    pub ioctl_summary: Duration,
    /// Container metadata lookups and `k8s.node.name`.
    pub workload: crate::host::workload::WorkloadOptions,
    /// How often the self-check verifies the monitor's links and policy maps.
    pub self_check: Duration,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            drain_interval: Duration::from_millis(10),
            queue_batches: 4096,
            ready_file: None,
            ioctl_summary: Duration::from_secs(5),
            workload: crate::host::workload::WorkloadOptions::default(),
            self_check: crate::pipeline::tamper::SELF_CHECK_INTERVAL,
        }
    }
}

#[cfg(test)]
mod enforcement_tests {
    use super::*;
    use crate::event::{alert::Action, Decision, Header, Net, NetOp, Transport};

    fn connect(decision: Decision, result: i64) -> Event {
        Event::Net(Net {
            header: Header {
                kind: EventKind::Net,
                time_ns: 1,
                tgid: 2,
                pid: 2,
                start_time_ns: 3,
                watched: true,
            },
            op: NetOp::Connect,
            transport: Transport::Tcp,
            peer: Some("127.0.0.2:80".parse().unwrap()),
            local: None,
            unix_path: None,
            result,
            decision,
            unverified: false,
            known: None,
        })
    }

    #[test]
    fn denials_and_deeds_against_the_monitor_skip_a_full_queue() {
        assert!(is_priority(&connect(Decision::Denied, -1)));
        assert!(is_priority(&connect(Decision::WouldDeny, 0)));
        assert!(!is_priority(&connect(Decision::Allowed, 0)));
        assert!(!is_priority(&connect(Decision::Observed, 0)));
    }

    #[test]
    fn the_kernels_decision_is_the_action() {
        let rule = "connect-not-allowed";
        let act = |event: &Event, dry_run| enforcement_action(event, rule, true, false, dry_run);
        assert_eq!(act(&connect(Decision::Denied, -1), false), Action::Denied);
        assert_eq!(
            act(&connect(Decision::WouldDeny, 0), false),
            Action::WouldDeny
        );
        // Let through by the kernel (the profile was not enforcing yet, say): only an alert,
        // whatever user space thinks of dry runs.
        assert_eq!(act(&connect(Decision::Allowed, 0), true), Action::Alert);
        // Seen by a syscall tracepoint: what its result says.
        assert_eq!(act(&connect(Decision::Observed, -1), false), Action::Denied);
        assert_eq!(
            act(&connect(Decision::Observed, 0), true),
            Action::WouldDeny
        );
        assert_eq!(act(&connect(Decision::Observed, 0), false), Action::Alert);
        let denied = connect(Decision::Denied, -1);
        assert_eq!(
            enforcement_mechanism(&denied, Action::Denied),
            Some("cgroup-sock-addr")
        );
    }
}
