//! The stages between the ring buffer and the output:
//!
//! ```text
//! kernel ring buffer --(drain on timer / byte threshold)--> reader --(bounded queue)-->
//!     processor: core (process table, watch selectors)
//!                -> consumers: trace output | rules + alert sinks | learner
//! ```
//!
//! The reader and the processor are tasks of one thread (the daemon's runtime is
//! single-threaded): handing a batch over wakes no other thread. The reader never blocks:
//! when the queue is full it drops the batch and counts it by kind. The processor reaches
//! kernel maps only through a [`KernelHandle`], so its core runs in unit tests and in the
//! pipeline benchmark without a kernel.
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
    stats_slot, EventKind, KnownKey, Stat, WatchEntry, KIND_SLOTS, WATCH_CANDIDATE, WATCH_EXE,
    WATCH_INHERITED, WATCH_PID, WATCH_PROFILE,
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
    /// Records `monitor trace`'s stdout writer dropped because stdout did not keep up
    /// ([`crate::output::trace_out::TraceOut::dropped`]).
    pub trace_dropped: Arc<AtomicU64>,
}

fn kind_slot(kind: EventKind) -> usize {
    (kind as u32 & (KIND_SLOTS - 1)) as usize
}

/// Drains in a row that found nothing before the reader sleeps without its timer (30 ms at the
/// default interval): a quiet daemon then wakes for the next event, not 100 times a second.
const QUIET_DRAINS: u32 = 3;

/// How often the reader looks at the rings while it sleeps all the same: bounds what a wake-up
/// lost to a race costs (an event committed just as the reader went to sleep).
const ASLEEP_LOOK: Duration = Duration::from_secs(1);

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
///
/// After [`QUIET_DRAINS`] drains that found nothing, the reader stops its timer and opens the
/// kernel's [`monitor_common::gate::READER_IDLE`] gate (`gates`): the next bulk event wakes it
/// at once (as priority events and the guards' events always do), and it drains on its timer
/// again from there. Each timer wake-up cost the idle daemon 50-85 µs of CPU on a VM.
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
    guard_events: Option<mpsc::Receiver<Event>>,
    priority: RingBuf<MapData>,
    urgent: mpsc::Sender<Vec<Event>>,
    gates: Option<aya::maps::Array<MapData, u32>>,
) -> anyhow::Result<()> {
    // SAFETY: the RingBuf owns its map fd, keeps it open while the AsyncFd owns the RingBuf,
    // and as_raw_fd always returns that fd.
    let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|err| err.into_parts().1)
        .context("failed to poll the ring buffer")?;
    // SAFETY: as above.
    let priority =
        unsafe { AsyncFd::register_with_interest(priority, tokio::io::Interest::READABLE) }
            .map_err(|err| err.into_parts().1)
            .context("failed to poll the priority ring buffer")?;
    let mut tick = tokio::time::interval(drain_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reader = Reader {
        queue_capacity: queue.max_capacity(),
        ring,
        priority,
        queue,
        urgent,
        counters,
        guard_events,
        renames: RenameJoiner::default(),
        batch_hint: 64,
    };
    let mut gates = gates;
    let mut quiet = 0u32;
    let mut asleep = false;
    loop {
        let mut woken_by = None;
        let stopping = tokio::select! {
            guard = reader.priority.readable_mut() => {
                guard.context("failed to poll the priority ring buffer")?.clear_ready();
                false
            }
            guard = reader.ring.readable_mut() => {
                guard.context("failed to poll the ring buffer")?.clear_ready();
                false
            }
            _ = tick.tick(), if !asleep => false,
            _ = tokio::time::sleep(ASLEEP_LOOK), if asleep => false,
            // Asleep, a guard event wakes the reader; otherwise it waits for the next drain.
            Some(event) = async {
                match reader.guard_events.as_mut() {
                    Some(events) => events.recv().await,
                    None => std::future::pending().await,
                }
            }, if asleep => {
                woken_by = Some(event);
                false
            }
            _ = stop.changed() => true,
        };
        if asleep {
            asleep = false;
            // Drains every interval from this first event on.
            tick.reset();
        }
        let found = reader.drain(woken_by);
        if stopping {
            return Ok(());
        }
        if found > 0 {
            quiet = 0;
            continue;
        }
        quiet += 1;
        if quiet < QUIET_DRAINS {
            continue;
        }
        quiet = 0;
        let Some(gate) = gates.as_mut() else {
            continue;
        };
        if let Err(err) = gate.set(monitor_common::gate::READER_IDLE, 1, 0) {
            debug!("failed to open the reader's idle gate: {err}; draining on the timer");
            gates = None;
            continue;
        }
        // An event committed before the gate was open woke nobody: one more look.
        asleep = reader.drain(None) == 0;
    }
}

/// The reader's rings and where their events go (see [`read_ring`]).
struct Reader {
    ring: AsyncFd<RingBuf<MapData>>,
    priority: AsyncFd<RingBuf<MapData>>,
    queue: mpsc::Sender<Vec<Event>>,
    queue_capacity: usize,
    urgent: mpsc::Sender<Vec<Event>>,
    counters: Arc<Counters>,
    guard_events: Option<mpsc::Receiver<Event>>,
    renames: RenameJoiner,
    /// The last batch's size: a batch grown one push at a time from empty reallocates (and
    /// moves every event) about log2(n) times; a drain is usually the size of the last one.
    batch_hint: usize,
}

impl Reader {
    /// One drain of both rings and the guards' queue (`first`: a guard event already taken);
    /// returns how many events it found.
    fn drain(&mut self, first_guard: Option<Event>) -> usize {
        let counters = &self.counters;
        // The priority ring first: a flood in the bulk ring cannot delay it.
        let mut first = Vec::new();
        let buffer = self.priority.get_mut();
        while let Some(record) = buffer.next() {
            match decode(&record) {
                Ok(event) => first.push(event),
                Err(err) => {
                    counters.undecodable.fetch_add(1, Ordering::Relaxed);
                    debug!("dropped a record: {err}");
                }
            }
        }
        let mut guarded: Vec<Event> = first_guard.into_iter().collect();
        if let Some(events) = self.guard_events.as_mut() {
            while let Ok(event) = events.try_recv() {
                guarded.push(event);
            }
        }
        let mut found = first.len() + guarded.len();
        // A processor falling behind (the queue more than half full): what matters skips it.
        if self.queue.capacity() < self.queue_capacity / 2 {
            first.append(&mut guarded);
            first.sort_by_key(|e| e.header().time_ns);
            send_urgent(&self.urgent, first, counters);
        } else {
            // In time order with the guards' events (see the merge below).
            guarded.append(&mut first);
            guarded.sort_by_key(|e| e.header().time_ns);
        }
        // Allocated at the first record: an idle drain allocates nothing.
        let mut batch = Vec::new();
        let buffer = self.ring.get_mut();
        while let Some(record) = buffer.next() {
            if batch.capacity() == 0 {
                batch.reserve(self.batch_hint);
            }
            found += 1;
            match decode(&record) {
                Ok(event) => batch.extend(self.renames.push(event)),
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
            self.batch_hint = batch.len().clamp(64, 1 << 16);
        }
        self.send(batch);
        found
    }

    /// Hands a batch to the processor; when the queue is full, bulk events are lost (and
    /// counted) and the others take the urgent way.
    fn send(&self, batch: Vec<Event>) {
        if batch.is_empty() {
            return;
        }
        if let Err(
            mpsc::error::TrySendError::Full(batch) | mpsc::error::TrySendError::Closed(batch),
        ) = self.queue.try_send(batch)
        {
            let (keep, lost): (Vec<Event>, Vec<Event>) = batch.into_iter().partition(is_priority);
            for event in &lost {
                self.counters.user_lost[kind_slot(event.header().kind)]
                    .fetch_add(1, Ordering::Relaxed);
            }
            send_urgent(&self.urgent, keep, &self.counters);
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
    undecodable: u64,
    trace_output: u64,
    resolved_exec: u64,
}

impl Reported {
    /// The count of `stage` for the kind in `slot` already reported.
    fn of(&mut self, stage: LossStage, slot: usize) -> &mut u64 {
        match stage {
            LossStage::Kernel(stat) => &mut self.kernel[stat as usize][slot],
            LossStage::GuardOverflow => &mut self.guard_overflow,
            LossStage::User => &mut self.user[slot],
            LossStage::Undecodable => &mut self.undecodable,
            LossStage::TraceOutput => &mut self.trace_output,
            LossStage::ResolvedExec => &mut self.resolved_exec,
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

/// The kernel maps the processor changes as events go by (the watched set, the allowed
/// behaviour the kernel need not send again, the threads of governed processes, the gates)
/// and the kernel's counters it reads. Behind a handle so that the pipeline core holds no
/// kernel map: the daemon gives it [`KernelMaps`]; unit tests and the pipeline benchmark
/// give it [`MemoryKernel`], and run without root.
pub trait KernelHandle: Send {
    /// The process's entry in the kernel's watched set.
    fn watched(&self, tgid: u32) -> Option<WatchEntry>;
    /// Puts a process in the watched set (its entry replaced).
    fn watch(&mut self, tgid: u32, entry: WatchEntry) -> anyhow::Result<()>;
    /// Takes a process out of the watched set.
    fn unwatch(&mut self, tgid: u32) -> anyhow::Result<()>;
    /// Tells the kernel not to send this behaviour again (nothing where it cannot be told).
    /// May be kept until [`KernelHandle::flush`].
    fn remember_allowed(&mut self, key: KnownKey) -> anyhow::Result<()>;
    /// Writes what was kept for the end of a batch.
    fn flush(&mut self) {}
    /// A process exited: what was kept for it until the end of the batch is of no use (its
    /// judgments die with it) and is not written.
    fn exited(&mut self, _tgid: u32) {}
    /// Whether threads of governed processes are filed under their process (`monitor run`).
    fn files_threads(&self) -> bool;
    /// Files a thread under its process, for the memory sensor.
    fn file_thread(&mut self, tid: u32, tgid: u32) -> anyhow::Result<()>;
    /// Opens a gate ([`monitor_common::gate`]) (nothing where there are none).
    fn open_gate(&mut self, gate: u32) -> anyhow::Result<()>;
    /// The governed processes' resolved `allow.exec` templates in the kernel (`monitor run`
    /// on a kernel that has the maps; none elsewhere).
    fn resolved_exec(&mut self) -> Option<&mut crate::kernel::policy::ResolvedExec> {
        None
    }
    /// Resolved `allow.exec` executables (and process instances) that could not be written
    /// to the kernel since the last call, by profile id.
    fn take_resolved_exec_losses(&mut self) -> Vec<(u32, u64)> {
        self.resolved_exec()
            .map(crate::kernel::policy::ResolvedExec::take_lost)
            .unwrap_or_default()
    }
    /// A kernel counter of `kind`, summed over CPUs; 0 when it cannot be read.
    fn stat(&self, stat: Stat, kind: EventKind) -> u64;
}

/// Most `KNOWN` keys kept for one batch write.
const KNOWN_BATCH_MAX: usize = 1024;

/// `KNOWN` keys kept until the end of a batch, less those of processes that exited meanwhile:
/// a short-lived governed program (each fork+exec of `/bin/true`: the loader's two opens)
/// never needs its judgments again, and each key written is an LRU map update in the kernel.
#[derive(Debug, Default)]
struct PendingKnown {
    keys: Vec<KnownKey>,
    /// Processes that exited, with how many keys were pending then: their keys before that
    /// point are theirs (a later key of the same tgid is a new process's).
    gone: std::collections::HashMap<u32, usize>,
}

impl PendingKnown {
    fn push(&mut self, key: KnownKey) {
        self.keys.push(key);
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    fn exited(&mut self, tgid: u32) {
        // Nothing pending: nothing to drop, and nothing to remember until a flush.
        if !self.keys.is_empty() {
            self.gone.insert(tgid, self.keys.len());
        }
    }

    /// The keys still worth writing, in order; empties the set.
    fn take(&mut self) -> Vec<KnownKey> {
        let mut keys = std::mem::take(&mut self.keys);
        let gone = std::mem::take(&mut self.gone);
        if !gone.is_empty() {
            let mut index = 0;
            keys.retain(|key| {
                let dead = gone.get(&key.tgid).is_some_and(|&until| index < until);
                index += 1;
                !dead
            });
        }
        keys
    }
}

/// The daemon's kernel maps.
pub struct KernelMaps {
    pub watched: HashMap<MapData, u32, WatchEntry>,
    pub stats: PerCpuArray<MapData, u64>,
    /// Behaviour judged allowed, which the kernel then does not send (`monitor run`).
    pub known: Option<HashMap<MapData, KnownKey, u32>>,
    /// Keys for `known`, written at the end of the batch in one `bpf()` call.
    known_pending: PendingKnown,
    /// The kernel refused a batch write (older than 5.6): one call per key from then on.
    known_unbatched: bool,
    /// Threads of watched processes (tid -> tgid), for the memory sensor (`monitor run`).
    pub threads: Option<HashMap<MapData, u32, u32>>,
    /// The kernel's gates ([`monitor_common::gate`]) (`monitor run`).
    pub gates: Option<aya::maps::Array<MapData, u32>>,
    /// Governed processes' resolved `allow.exec` templates in the kernel (`monitor run`).
    pub resolved_exec: Option<crate::kernel::policy::ResolvedExec>,
}

impl KernelMaps {
    pub fn new(
        watched: HashMap<MapData, u32, WatchEntry>,
        stats: PerCpuArray<MapData, u64>,
    ) -> KernelMaps {
        KernelMaps {
            watched,
            stats,
            known: None,
            known_pending: PendingKnown::default(),
            known_unbatched: false,
            threads: None,
            gates: None,
            resolved_exec: None,
        }
    }
}

impl KernelHandle for KernelMaps {
    fn watched(&self, tgid: u32) -> Option<WatchEntry> {
        self.watched.get(&tgid, 0).ok()
    }

    fn watch(&mut self, tgid: u32, entry: WatchEntry) -> anyhow::Result<()> {
        Ok(self.watched.insert(tgid, entry, 0)?)
    }

    fn unwatch(&mut self, tgid: u32) -> anyhow::Result<()> {
        Ok(self.watched.remove(&tgid)?)
    }

    fn remember_allowed(&mut self, key: KnownKey) -> anyhow::Result<()> {
        match &mut self.known {
            Some(known) if self.known_unbatched => Ok(known.insert(key, 1, 0)?),
            Some(_) => {
                self.known_pending.push(key);
                if self.known_pending.len() >= KNOWN_BATCH_MAX {
                    self.flush();
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn flush(&mut self) {
        let Some(known) = &mut self.known else {
            return;
        };
        let keys = self.known_pending.take();
        if keys.is_empty() {
            return;
        }
        let values = vec![1u32; keys.len()];
        let (written, result) = {
            use aya::maps::IterableMap as _;
            crate::kernel::update_batch(known.map(), &keys, &values)
        };
        if let Err(err) = result {
            if matches!(err.raw_os_error(), Some(libc::EINVAL | libc::ENOTSUP | 524))
                && written == 0
            {
                // ENOTSUPP (524): a kernel without batch calls for this map.
                debug!("failed to write allowed behaviour in one call ({err}); one call per key from now on");
                self.known_unbatched = true;
            } else {
                debug!("failed to remember allowed behaviour: {err}");
            }
            for key in &keys[written..] {
                if let Err(err) = known.insert(key, 1, 0) {
                    debug!("failed to remember allowed behaviour: {err}");
                }
            }
        }
    }

    fn exited(&mut self, tgid: u32) {
        self.known_pending.exited(tgid);
    }

    fn files_threads(&self) -> bool {
        self.threads.is_some()
    }

    fn file_thread(&mut self, tid: u32, tgid: u32) -> anyhow::Result<()> {
        match &mut self.threads {
            Some(threads) => Ok(threads.insert(tid, tgid, 0)?),
            None => Ok(()),
        }
    }

    fn open_gate(&mut self, gate: u32) -> anyhow::Result<()> {
        match &mut self.gates {
            Some(gates) => Ok(gates.set(gate, 1, 0)?),
            None => Ok(()),
        }
    }

    fn resolved_exec(&mut self) -> Option<&mut crate::kernel::policy::ResolvedExec> {
        self.resolved_exec.as_mut()
    }

    fn stat(&self, stat: Stat, kind: EventKind) -> u64 {
        self.stats
            .get(&stats_slot(stat, kind as u32), 0)
            .map_or(0, |values| values.iter().sum())
    }
}

/// The kernel maps as plain memory: for unit tests and the pipeline benchmark, which run the
/// pipeline core without a kernel.
#[derive(Debug, Default)]
pub struct MemoryKernel {
    pub watched: std::collections::HashMap<u32, WatchEntry>,
    pub known: std::collections::HashSet<KnownKey>,
    pub threads: std::collections::HashMap<u32, u32>,
    /// Whether threads are filed (off by default: filing scans /proc/PID/task).
    pub files_threads: bool,
    pub gates: std::collections::HashSet<u32>,
    /// Counters by (stat, kind) slot.
    pub stats: std::collections::HashMap<u32, u64>,
    /// What [`KernelHandle::take_resolved_exec_losses`] returns next (tests).
    pub resolved_exec_losses: Vec<(u32, u64)>,
}

impl KernelHandle for MemoryKernel {
    fn watched(&self, tgid: u32) -> Option<WatchEntry> {
        self.watched.get(&tgid).copied()
    }

    fn watch(&mut self, tgid: u32, entry: WatchEntry) -> anyhow::Result<()> {
        self.watched.insert(tgid, entry);
        Ok(())
    }

    fn unwatch(&mut self, tgid: u32) -> anyhow::Result<()> {
        self.watched
            .remove(&tgid)
            .map(|_| ())
            .ok_or_else(|| anyhow::anyhow!("pid {tgid} is not watched"))
    }

    fn remember_allowed(&mut self, key: KnownKey) -> anyhow::Result<()> {
        self.known.insert(key);
        Ok(())
    }

    fn files_threads(&self) -> bool {
        self.files_threads
    }

    fn file_thread(&mut self, tid: u32, tgid: u32) -> anyhow::Result<()> {
        self.threads.insert(tid, tgid);
        Ok(())
    }

    fn open_gate(&mut self, gate: u32) -> anyhow::Result<()> {
        self.gates.insert(gate);
        Ok(())
    }

    fn take_resolved_exec_losses(&mut self) -> Vec<(u32, u64)> {
        std::mem::take(&mut self.resolved_exec_losses)
    }

    fn stat(&self, stat: Stat, kind: EventKind) -> u64 {
        self.stats
            .get(&stats_slot(stat, kind as u32))
            .copied()
            .unwrap_or(0)
    }
}

/// The processing stage. Its core (`apply`) completes each event, applies it to the process
/// table and keeps the kernel's watched set to the watch selectors; then each consumer sees
/// the applied event in turn: the trace output (`monitor trace`), the rules and the alert
/// sinks (`monitor run`), the learner (`monitor learn`). Kernel maps are reached only
/// through the [`KernelHandle`].
pub struct Processor<W: Write, K: KernelHandle = KernelMaps> {
    mode: Mode,
    pub(crate) clock: BootClock,
    pub(crate) table: ProcessTable,
    cgroups: Option<CgroupResolver>,
    selectors: WatchSelectors,
    kernel: K,
    counters: Arc<Counters>,
    out: W,
    /// Where alerts go (`monitor run`).
    pub(crate) sinks: Vec<Box<dyn AlertSink>>,
    /// GPU ioctl counters, when the sensor has them.
    pub(crate) ioctls: Option<IoctlTracker>,
    /// Profiles, guards and rules (`monitor run`).
    pub(crate) engine: Option<Engine>,
    /// `monitor learn`.
    pub(crate) observer: Option<Box<dyn Observer>>,
    /// `--dry-run`: enforce decisions are reported as `would-*`.
    pub(crate) dry_run: bool,
    /// Counters exported over OTLP (`monitor run`).
    pub(crate) metrics: Option<Arc<crate::telemetry::metrics::Metrics>>,
    /// Stops of the monitor, and its objects' names (see [`crate::pipeline::tamper`]).
    pub(crate) pauses: crate::pipeline::tamper::Pauses,
    /// /dev node names by (major, minor), for device opens the kernel could not name.
    device_nodes: std::collections::HashMap<(u32, u32), Option<String>>,
    reported: Reported,
    summary: Summary,
    /// The governed gate is open (see [`Processor::open_governed_gate`]).
    gate_open: bool,
    /// Processes the rules put under a profile during this batch (tgid -> profile), written
    /// to the kernel's watched set at its end: a short-lived governed child (fork, exec, exit
    /// in one batch) then costs no map write and no /proc scan, and is not written back after
    /// the kernel dropped its entry at its exit (which left a stale entry for its pid).
    pending_watch: std::collections::HashMap<u32, u32>,
    /// Processes user space put in the kernel's watched set. Between an exec that matches a
    /// selector and the map update, the kernel does not flag the process's events yet; this
    /// set covers that window for its fork and exit events.
    watching: std::collections::HashSet<u32>,
}

impl<W: Write, K: KernelHandle> Processor<W, K> {
    pub fn new(
        mode: Mode,
        selectors: WatchSelectors,
        kernel: K,
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
            kernel,
            counters,
            out,
            sinks: Vec::new(),
            ioctls: None,
            engine: None,
            observer: None,
            dry_run: false,
            metrics: None,
            pauses: crate::pipeline::tamper::Pauses::default(),
            device_nodes: std::collections::HashMap::new(),
            reported: Reported::default(),
            summary: Summary::default(),
            gate_open: false,
            pending_watch: std::collections::HashMap::new(),
            watching: std::collections::HashSet::new(),
        }
    }

    /// The kernel maps (the daemon's reload hands the watched set to the guards).
    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    /// The kernel maps, to change.
    pub fn kernel_mut(&mut self) -> &mut K {
        &mut self.kernel
    }

    /// The process table.
    pub fn table(&self) -> &ProcessTable {
        &self.table
    }

    /// The process table, to seed (the pipeline benchmark, tests) or to give container look-ups.
    pub fn table_mut(&mut self) -> &mut ProcessTable {
        &mut self.table
    }

    /// Profiles, guards and rules judge each event (`monitor run`).
    pub fn set_engine(&mut self, engine: Engine) {
        self.engine = Some(engine);
    }

    /// Alerts go to `sink` too.
    pub fn add_sink(&mut self, sink: Box<dyn AlertSink>) {
        self.sinks.push(sink);
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
        let (Some(engine), Some(resolved)) = (&self.engine, self.kernel.resolved_exec()) else {
            return;
        };
        for (tgid, start_time_ns, profile, globs) in engine.resolved_execs() {
            resolved.assign(tgid, start_time_ns, profile, globs);
        }
    }

    /// Opens the kernel's gate in front of the memory sensor's host-wide checks
    /// ([`monitor_common::gate::GOVERNED`]): some process's memory is guarded now.
    /// Once: nothing closes it, and each governed fork and exec came here (a `bpf()` call).
    pub fn open_governed_gate(&mut self) {
        if self.gate_open {
            return;
        }
        match self.kernel.open_gate(monitor_common::gate::GOVERNED) {
            Ok(()) => self.gate_open = true,
            Err(err) => {
                warn!(
                    "failed to open the governed gate: {err}; the memory sensor may miss accesses"
                )
            }
        }
    }

    fn watch_profile(&mut self, tgid: u32, profile: u32) {
        // Before the entry: the memory hooks must not skip a process already governed.
        self.open_governed_gate();
        // Already governed by this profile in the kernel (a child the kernel made watched at
        // its fork, an exec of the same profile's program): nothing to write, and no thread
        // to file (the kernel records the threads of a watched process). This was a map
        // update and a /proc/PID/task scan at every governed fork and exec.
        if self.kernel.watched(tgid).is_some_and(|entry| {
            entry.reason & !WATCH_INHERITED == WATCH_PROFILE && entry.profile == profile
        }) {
            return;
        }
        // The generation is the kernel's own (`EXEC_GENERATION`): not read, not written here.
        let entry = WatchEntry {
            reason: WATCH_PROFILE,
            profile,
            generation: 0,
            _pad: 0,
        };
        if let Err(err) = self.kernel.watch(tgid, entry) {
            warn!("failed to watch pid {tgid}: {err}");
        }
        // Threads it started before it was governed: the kernel records only later ones.
        if self.kernel.files_threads() {
            let tids = std::fs::read_dir(format!("/proc/{tgid}/task"))
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok());
            for tid in tids.filter(|&tid| tid != tgid) {
                if let Err(err) = self.kernel.file_thread(tid, tgid) {
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
        if let Some(resolved) = self.kernel.resolved_exec() {
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
                // Already gone when the process exited meanwhile.
                let _ = self.kernel.unwatch(tgid);
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
        if let Some(resolved) = self.kernel.resolved_exec().filter(|r| !r.is_empty()) {
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
            (governed, &self.engine, self.kernel.resolved_exec())
        {
            if let Some((profile, globs)) = engine.resolved_exec(header.tgid, header.start_time_ns)
            {
                resolved.assign(header.tgid, header.start_time_ns, profile, globs);
            }
        }
        match governed {
            // At the end of the batch (see `pending_watch`).
            Some(Some(profile)) => {
                self.pending_watch.insert(header.tgid, profile);
            }
            // An exec that left the profiles (or a candidate the selectors did not take).
            Some(None) if header.watched && !self.watching.contains(&header.tgid) => {
                self.pending_watch.remove(&header.tgid);
                if let Err(err) = self.kernel.unwatch(header.tgid) {
                    debug!("failed to stop watching pid {}: {err}", header.tgid);
                }
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
        if let Some(key) = key {
            if let Err(err) = self.kernel.remember_allowed(key) {
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
    /// executable (`WATCH_CANDIDATE`, not inherited). A candidate entry user space has seen
    /// an exec of is not fresh: [`Processor::apply`] makes it `WATCH_EXE` at that exec (the
    /// entry's `generation` cannot tell: it is always 0, the kernel keeps generations in
    /// `EXEC_GENERATION`).
    fn fresh_candidate(&self, tgid: u32) -> bool {
        self.kernel
            .watched(tgid)
            .is_some_and(|entry| entry.reason == WATCH_CANDIDATE)
    }

    /// Puts a process in the kernel's watched set.
    fn watch(&mut self, tgid: u32, reason: u32) {
        let entry = WatchEntry {
            reason,
            profile: 0,
            generation: 0,
            _pad: 0,
        };
        match self.kernel.watch(tgid, entry) {
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
        let pending: Vec<(u32, u32)> = self.pending_watch.drain().collect();
        for (tgid, profile) in pending {
            self.watch_profile(tgid, profile);
        }
        self.kernel.flush();
        self.flush_sinks();
        self.out.flush()
    }

    /// One event: the core applies it, then each consumer sees it applied.
    fn handle(&mut self, event: Event) -> std::io::Result<()> {
        let mut event = event;
        let watched = self.apply(&mut event)?;
        self.trace(&event, watched)?;
        self.judge(&event);
        self.learn(&event);
        Ok(())
    }

    /// The core: counts the event, completes what the kernel could not know (a guard event's
    /// exact start time, a device's node), applies it to the process table, and keeps the
    /// kernel's watched set to the watch selectors. Returns whether the event is one of the
    /// watched (or host-wide) ones that `monitor trace` prints.
    fn apply(&mut self, event: &mut Event) -> std::io::Result<bool> {
        let kind = event.header().kind;
        self.summary.events[kind_slot(kind)] += 1;
        if let Some(metrics) = &self.metrics {
            metrics.event(kind.name());
        }
        self.counters.received[kind_slot(kind)].fetch_add(1, Ordering::Relaxed);
        let tgid = event.header().tgid;
        // A guard event of a process that was gone before /proc could be read: the table
        // still knows it (exited processes are kept a while).
        // Otherwise the table's exact start time replaces /proc's tick-grained one, so that
        // the alerts of one process have one identity (deduplication keys on it).
        if let Event::File(file) = &mut *event {
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
        let host_wide = match &mut *event {
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
        if let Event::Exit(_) = *event {
            // The last ioctl counts of the process come before its exit.
            self.report_ioctls(Some(tgid))?;
        }
        let mut print = self.selectors.all
            || host_wide
            || event.header().watched
            || self.watching.contains(&tgid);
        let cgroups = &mut self.cgroups;
        self.table.apply(event, |id| {
            cgroups.as_mut().and_then(|resolver| resolver.path(id))
        });
        match &*event {
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
                    if let Err(err) = self.kernel.unwatch(tgid) {
                        debug!("failed to stop watching pid {tgid}: {err}");
                    }
                    print = self.selectors.all;
                } else if selected && candidates && self.fresh_candidate(tgid) {
                    // Taken: watched as `--exe` watches, so that its next exec (of another
                    // program) does not find a candidate entry and take it for a fresh one.
                    self.watch(tgid, WATCH_EXE);
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
                // Gone: the kernel dropped its entry at the exit.
                self.pending_watch.remove(&tgid);
                self.kernel.exited(tgid);
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
        Ok(print)
    }

    /// The trace consumer (`monitor trace`): a watched event as a JSON line. The record (with
    /// a parent look-up) is built only here, when it is printed.
    fn trace(&mut self, event: &Event, watched: bool) -> std::io::Result<()> {
        if self.mode != Mode::Trace || !watched {
            return Ok(());
        }
        let tgid = event.header().tgid;
        let process = match event {
            // Exited now: found by its identity among the exited.
            Event::Exit(exit) => self.table.get(tgid, exit.header.start_time_ns),
            _ => self.table.get_by_tgid(tgid),
        };
        let record = output::event_record(&self.clock, &self.table, event, process);
        self.emit(&record)
    }

    /// The learner consumer (`monitor learn`): sees every event, names processes to watch.
    fn learn(&mut self, event: &Event) {
        let Some(observer) = &mut self.observer else {
            return;
        };
        for tgid in observer.observe(event, &self.table) {
            self.watch(tgid, WATCH_EXE);
        }
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
                .map(|stat| (LossStage::Kernel(stat), self.kernel.stat(stat, kind)))
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
                    self.report_loss(now, stage, kind.name(), count, None, &mut pending)?;
                }
            }
            self.summary.kernel_lost[slot] = kernel_lost;
            self.summary.user_lost[slot] = self.reported.user[slot];
        }
        // Losses whose kind is not known where they are counted: records the reader could not
        // decode, trace records stdout did not take.
        for (stage, total) in [
            (
                LossStage::Undecodable,
                self.counters.undecodable.load(Ordering::Relaxed),
            ),
            (
                LossStage::TraceOutput,
                self.counters.trace_dropped.load(Ordering::Relaxed),
            ),
        ] {
            let reported = self.reported.of(stage, 0);
            if total > *reported {
                let count = total - *reported;
                *reported = total;
                self.report_loss(now, stage, output::UNKNOWN_KIND, count, None, &mut pending)?;
            }
        }
        // A profile whose resolved exec globs the kernel could not be given: named, for its
        // kernel exec check refuses what only those globs allow.
        for (profile, count) in self.kernel.take_resolved_exec_losses() {
            let name = self
                .engine
                .as_ref()
                .and_then(|engine| engine.config().profile(profile))
                .map_or_else(|| format!("#{profile}"), |p| p.name.clone());
            self.reported.resolved_exec += count;
            let stage = LossStage::ResolvedExec;
            self.report_loss(
                now,
                stage,
                EventKind::Exec.name(),
                count,
                Some(name),
                &mut pending,
            )?;
        }
        for alert in pending {
            self.raise(&alert);
        }
        self.flush_sinks();
        self.out.flush()
    }

    /// Reports `count` new losses: logged, counted in the loss metric, and written as a loss
    /// record (`monitor trace`) or raised as an `events-lost` alert, with the profile that
    /// lost enforcement when there is one.
    fn report_loss(
        &mut self,
        now: u64,
        stage: LossStage,
        kind: &str,
        count: u64,
        profile: Option<String>,
        pending: &mut Vec<Alert>,
    ) -> std::io::Result<()> {
        warn!(
            stage = stage.name(),
            reason = stage.reason(),
            kind,
            count,
            profile = profile.as_deref(),
            "events lost"
        );
        if let Some(metrics) = &self.metrics {
            metrics.loss(stage.name(), kind, stage.reason(), count);
        }
        match self.mode {
            Mode::Trace => {
                let mut record = output::loss_record(&self.clock, now, stage, kind, count);
                if let (Some(profile), Value::Object(map)) = (profile, &mut record) {
                    map.insert("monitor.profile".into(), profile.into());
                }
                self.emit(&record)?;
            }
            // Learning from an incomplete record is said in the learn output; the loss is also
            // logged above.
            Mode::Run | Mode::Observe => {
                let mut alert = output::loss_alert(&self.clock, now, stage, kind, count);
                alert.profile = profile;
                pending.push(alert);
            }
        }
        Ok(())
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
        // Records lost whatever their kind: undecodable ones, and trace records stdout did
        // not take (until the summary: it is the newest record, which the writer keeps).
        let total_lost: u64 = self.summary.kernel_lost.iter().sum::<u64>()
            + self.summary.user_lost.iter().sum::<u64>()
            + self.reported.undecodable
            + self.reported.trace_output;
        // Events the kernel did not send because user space had judged the same behaviour.
        let known: u64 = EventKind::ALL
            .iter()
            .map(|&kind| self.kernel.stat(Stat::Known, kind))
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
                "monitor.lost.stdout": self.reported.trace_output,
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
        // A connected UDP socket's datagram, refused on the packet (`udp_egress`).
        Event::Net(net) if net.egress => "cgroup-skb-egress",
        // connect4/6, sendmsg4/6, bind4/6, on the address.
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
            egress: false,
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

    /// A datagram refused on the packet (the cgroup_skb `udp_egress` program) says so; one
    /// refused on its address (sendmsg4/6) names the sock_addr hook.
    #[test]
    fn the_mechanism_names_the_hook_that_refused() {
        let datagram = |egress| {
            let Event::Net(mut net) = connect(Decision::Denied, -1) else {
                unreachable!()
            };
            net.op = NetOp::Send;
            net.transport = Transport::Udp;
            net.egress = egress;
            Event::Net(net)
        };
        assert_eq!(
            enforcement_mechanism(&datagram(true), Action::Denied),
            Some("cgroup-skb-egress")
        );
        assert_eq!(
            enforcement_mechanism(&datagram(true), Action::WouldDeny),
            Some("cgroup-skb-egress")
        );
        assert_eq!(
            enforcement_mechanism(&datagram(false), Action::Denied),
            Some("cgroup-sock-addr")
        );
        assert_eq!(enforcement_mechanism(&datagram(true), Action::Alert), None);
    }
}

#[cfg(test)]
mod core_tests {
    //! The pipeline core and its consumers, without a kernel: [`MemoryKernel`] stands for the
    //! kernel's maps.
    use std::sync::Mutex;

    use super::*;
    use crate::event::{Access, Exec, Exit, Fork, Header, RawNames};

    const SECOND: u64 = 1_000_000_000;

    fn header(kind: EventKind, tgid: u32, start: u64, watched: bool) -> Header {
        Header {
            kind,
            time_ns: start + 1_000,
            tgid,
            pid: tgid,
            start_time_ns: start,
            watched,
        }
    }

    fn fork(tgid: u32, start: u64, parent: u32, parent_start: u64, watched: bool) -> Event {
        Event::Fork(Fork {
            header: header(EventKind::Fork, tgid, start, watched),
            parent_tgid: parent,
            parent_start_time_ns: parent_start,
        })
    }

    fn exec(tgid: u32, start: u64, ppid: u32, argv: &[&str], watched: bool) -> Event {
        Event::Exec(Exec {
            header: header(EventKind::Exec, tgid, start, watched),
            ppid,
            parent_start_time_ns: 0,
            uid: 0,
            gid: 0,
            cgroup_id: 0,
            path: argv[0].to_owned(),
            path_truncated: false,
            path_from_filename: false,
            args: argv.iter().map(|a| (*a).to_owned()).collect(),
            args_truncated: false,
            args_count: argv.len(),
            fileless: false,
            killed: false,
            would_kill: false,
            raw: RawNames::default(),
        })
    }

    fn exit(tgid: u32, start: u64, watched: bool) -> Event {
        Event::Exit(Exit {
            header: header(EventKind::Exit, tgid, start, watched),
            code: Some(0),
            signal: None,
            core_dumped: false,
        })
    }

    fn open(tgid: u32, start: u64, path: &str, known: Option<KnownKey>) -> Event {
        Event::File(File {
            header: header(EventKind::File, tgid, start, true),
            op: crate::event::FileOp::Open,
            path: path.to_owned(),
            path_truncated: false,
            target: None,
            access: Access {
                read: true,
                ..Access::default()
            },
            result: 3,
            protected: false,
            known,
            raw: RawNames::default(),
            guard: None,
            unverified: false,
        })
    }

    fn processor(mode: Mode, selectors: WatchSelectors) -> Processor<Vec<u8>, MemoryKernel> {
        Processor::new(
            mode,
            selectors,
            MemoryKernel::default(),
            Arc::new(Counters::default()),
            None,
            BootClock::new(),
            Vec::new(),
        )
    }

    /// The JSON lines `monitor trace` printed.
    fn printed(processor: &Processor<Vec<u8>, MemoryKernel>) -> Vec<Value> {
        String::from_utf8(processor.out.clone())
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    #[test]
    fn the_table_follows_fork_exec_and_exit() {
        let mut p = processor(Mode::Run, WatchSelectors::default());
        p.handle_batch(vec![
            fork(10, SECOND, 1, 0, false),
            exec(10, SECOND, 1, &["/usr/bin/env", "true"], false),
        ])
        .unwrap();
        let process = p.table().get_by_tgid(10).unwrap();
        assert_eq!(process.exe.as_deref(), Some("/usr/bin/env"));
        assert_eq!(process.args, ["/usr/bin/env", "true"]);
        assert!(process.exited.is_none());
        p.handle_batch(vec![exit(10, SECOND, false)]).unwrap();
        let gone = p.table().get(10, SECOND).unwrap();
        assert_eq!(gone.exited.map(|e| e.code), Some(Some(0)));
        assert_eq!(p.summary.events[kind_slot(EventKind::Exec)], 1);
        assert_eq!(
            p.counters.received[kind_slot(EventKind::Exit)].load(Ordering::Relaxed),
            1
        );
        // `monitor run` prints no event records.
        assert!(p.out.is_empty());
    }

    #[test]
    fn a_reused_pid_is_another_process() {
        let mut p = processor(Mode::Run, WatchSelectors::default());
        p.handle_batch(vec![
            fork(20, SECOND, 1, 0, false),
            exec(20, SECOND, 1, &["/usr/bin/python3", "serve.py"], false),
            exit(20, SECOND, false),
            // The same pid, a later start: a child of another process, which has not exec'd.
            exec(30, SECOND / 2, 1, &["/usr/bin/bash"], false),
            fork(20, 5 * SECOND, 30, SECOND / 2, false),
        ])
        .unwrap();
        let now = p.table().get_by_tgid(20).unwrap();
        assert_eq!(now.start_time_ns, 5 * SECOND);
        assert_eq!(now.ppid, 30);
        // Its parent's image, never the previous holder's.
        assert_eq!(now.exe.as_deref(), Some("/usr/bin/bash"));
        let before = p.table().get(20, SECOND).unwrap();
        assert_eq!(before.exe.as_deref(), Some("/usr/bin/python3"));
    }

    #[test]
    fn an_exe_selector_watches_the_process_and_its_children() {
        let selectors = WatchSelectors {
            exes: vec![crate::config::glob::Glob::new("/opt/app/*").unwrap()],
            ..WatchSelectors::default()
        };
        let mut p = processor(Mode::Trace, selectors);
        p.handle_batch(vec![
            exec(40, SECOND, 1, &["/usr/bin/bash"], false),
            exec(41, SECOND, 1, &["/opt/app/server"], false),
        ])
        .unwrap();
        // Not selected: neither watched nor printed.
        assert!(p.kernel().watched(40).is_none());
        let entry = p.kernel().watched(41).unwrap();
        assert_eq!(entry.reason, WATCH_EXE);
        // Forked before the kernel saw the entry: not flagged, watched by user space.
        p.handle_batch(vec![
            fork(42, 2 * SECOND, 41, SECOND, false),
            exit(42, 2 * SECOND, false),
        ])
        .unwrap();
        assert_eq!(p.kernel().watched(42).map(|e| e.reason), Some(WATCH_EXE));
        let kinds: Vec<(String, u64)> = printed(&p)
            .iter()
            .map(|r| {
                (
                    r["event.kind"].as_str().unwrap_or_default().to_owned(),
                    r["process.pid"].as_u64().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("exec".to_owned(), 41),
                ("fork".to_owned(), 42),
                ("exit".to_owned(), 42)
            ],
            "{kinds:?}"
        );
        assert!(!p.watching.contains(&42), "forgotten at its exit");
    }

    #[test]
    fn known_keys_of_a_process_that_exited_in_the_batch_are_not_written() {
        let key = |tgid: u32, a: u64| KnownKey {
            tgid,
            generation: 1,
            kind: monitor_common::KNOWN_OPEN,
            aux: 0,
            a,
            b: 0,
        };
        let mut pending = PendingKnown::default();
        // Nothing pending: an exit remembers nothing.
        pending.exited(9);
        assert!(pending.gone.is_empty());
        pending.push(key(1, 1));
        pending.push(key(2, 1));
        pending.push(key(1, 2));
        pending.exited(1);
        // The same tgid again after its exit: another process (pid reuse), kept.
        pending.push(key(1, 3));
        pending.push(key(3, 1));
        assert_eq!(pending.len(), 5);
        assert_eq!(pending.take(), vec![key(2, 1), key(1, 3), key(3, 1)]);
        assert_eq!(pending.len(), 0);
        assert!(pending.gone.is_empty());
        // What was gone in the last batch does not reach into the next.
        pending.push(key(1, 4));
        assert_eq!(pending.take(), vec![key(1, 4)]);
    }

    #[test]
    fn a_kernel_candidate_the_selector_did_not_name_is_dropped() {
        let selectors = WatchSelectors {
            exes: vec![crate::config::glob::Glob::new("/opt/app/server").unwrap()],
            ..WatchSelectors::default()
        };
        let mut p = processor(Mode::Trace, selectors);
        // The kernel watched it at exec for the inode `--exe` named, under another name
        // (a hard link).
        p.kernel_mut()
            .watch(
                50,
                WatchEntry {
                    reason: WATCH_CANDIDATE,
                    profile: 0,
                    generation: 0,
                    _pad: 0,
                },
            )
            .unwrap();
        p.handle_batch(vec![exec(50, SECOND, 1, &["/tmp/link"], true)])
            .unwrap();
        assert!(p.kernel().watched(50).is_none());
        assert!(printed(&p).is_empty());
    }

    /// A process the kernel watched as a candidate at an exec that `--exe` names (by path) is
    /// taken at that exec: its next exec, of another program, is traced, not mistaken for a
    /// fresh candidate of another name and dropped.
    #[test]
    fn a_candidate_taken_at_its_exec_stays_traced_across_its_next_exec() {
        let selectors = WatchSelectors {
            exes: vec![crate::config::glob::Glob::new("/opt/app/server").unwrap()],
            ..WatchSelectors::default()
        };
        let mut p = processor(Mode::Trace, selectors);
        let candidate = WatchEntry {
            reason: WATCH_CANDIDATE,
            profile: 0,
            generation: 0,
            _pad: 0,
        };
        p.kernel_mut().watch(51, candidate).unwrap();
        p.handle_batch(vec![exec(51, SECOND, 1, &["/opt/app/server"], true)])
            .unwrap();
        assert_eq!(p.kernel().watched(51).map(|e| e.reason), Some(WATCH_EXE));
        // It execs another program: the kernel keeps the entry (no new candidate).
        p.handle_batch(vec![exec(51, SECOND, 1, &["/usr/bin/env", "true"], true)])
            .unwrap();
        assert!(p.kernel().watched(51).is_some(), "still watched");
        let execs: Vec<Value> = printed(&p)
            .into_iter()
            .filter(|v| v["event.kind"] == "exec")
            .collect();
        assert_eq!(execs.len(), 2, "{execs:?}");
        assert_eq!(execs[1]["process.executable.path"], "/usr/bin/env");
    }

    /// Losses counted where their kind is not known (records the reader could not decode,
    /// trace records stdout did not take) and execs the kernel could not judge are reported
    /// once each, under their own reasons, and counted in the summary.
    #[test]
    fn every_loss_reaches_the_trace_once_with_its_reason() {
        let mut p = processor(Mode::Trace, WatchSelectors::default());
        p.counters.undecodable.store(3, Ordering::Relaxed);
        p.counters.trace_dropped.store(5, Ordering::Relaxed);
        p.kernel_mut()
            .stats
            .insert(stats_slot(Stat::InodeUnread, EventKind::Exec as u32), 2);
        p.report_losses().unwrap();
        p.report_losses().unwrap();
        let losses: Vec<(String, String, String, u64)> = printed(&p)
            .iter()
            .filter(|v| v["event.kind"] == "loss")
            .map(|v| {
                (
                    v["monitor.loss.stage"].as_str().unwrap().to_owned(),
                    v["monitor.loss.event_kind"].as_str().unwrap().to_owned(),
                    v["monitor.loss.reason"].as_str().unwrap().to_owned(),
                    v["monitor.loss.count"].as_u64().unwrap(),
                )
            })
            .collect();
        let loss = |stage: &str, kind: &str, reason: &str, n| {
            (stage.to_owned(), kind.to_owned(), reason.to_owned(), n)
        };
        assert_eq!(
            losses,
            [
                loss("kernel", "exec", "inode-unread", 2),
                loss("user", "unknown", "undecodable", 3),
                loss("user", "unknown", "stdout-full", 5),
            ]
        );
        p.counters.trace_dropped.store(6, Ordering::Relaxed);
        p.finish().unwrap();
        let printed = printed(&p);
        let last_loss = &printed[printed.len() - 2];
        assert_eq!(last_loss["monitor.loss.reason"], "stdout-full");
        assert_eq!(last_loss["monitor.loss.count"], 1, "only what is new");
        let summary = printed.last().unwrap();
        assert_eq!(summary["event.kind"], "summary");
        assert_eq!(summary["monitor.lost.total"], 2 + 3 + 6);
        assert_eq!(summary["monitor.lost.stdout"], 6);
        assert_eq!(summary["monitor.lost.kernel"]["exec"], 2);
    }

    /// Alerts a sink received.
    struct Captured(Arc<Mutex<Vec<Alert>>>);

    impl AlertSink for Captured {
        fn send(&mut self, alert: &Alert) -> anyhow::Result<()> {
            self.0.lock().unwrap().push(alert.clone());
            Ok(())
        }
    }

    #[test]
    fn the_rules_consumer_governs_judges_and_remembers() {
        let dir = std::env::temp_dir().join(format!("pipeline-core-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let profile = dir.join("app.yaml");
        std::fs::write(
            &profile,
            r#"name: app
description: a test server
selector:
  executables: ["/opt/app/server"]
mode: alert
allow:
  exec: []
  files:
    read: ["/srv/app/**"]
    write: []
  network:
    connect: []
    listen: []
  devices: []
"#,
        )
        .unwrap();
        let config = crate::config::Config::builtin()
            .with_extra_profiles(&[profile])
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let mut p = processor(Mode::Run, WatchSelectors::default());
        p.set_engine(Engine::new(Arc::new(config)));
        let alerts = Arc::new(Mutex::new(Vec::new()));
        p.add_sink(Box::new(Captured(alerts.clone())));
        p.handle_batch(vec![exec(60, SECOND, 1, &["/opt/app/server"], false)])
            .unwrap();
        // Governed: in the watched set under its profile, and the memory gate is open.
        let entry = p.kernel().watched(60).unwrap();
        assert_eq!(entry.reason, WATCH_PROFILE);
        assert!(p.kernel().gates.contains(&monitor_common::gate::GOVERNED));
        let key = KnownKey {
            tgid: 60,
            ..KnownKey::default()
        };
        p.handle_batch(vec![
            open(60, SECOND, "/srv/app/model.bin", Some(key)),
            open(60, SECOND, "/etc/shadow", None),
        ])
        .unwrap();
        // A child the kernel made watched at its fork, with the profile: left as it is (no
        // second write, the kernel's inherited entry kept).
        let inherited = WatchEntry {
            reason: WATCH_PROFILE | WATCH_INHERITED,
            profile: entry.profile,
            generation: 9,
            _pad: 0,
        };
        p.kernel_mut().watch(61, inherited).unwrap();
        p.handle_batch(vec![fork(61, 2 * SECOND, 60, SECOND, true)])
            .unwrap();
        assert_eq!(p.kernel().watched(61), Some(inherited));
        // One the kernel did not make watched (forked before the parent was governed).
        p.handle_batch(vec![fork(62, 2 * SECOND, 60, SECOND, false)])
            .unwrap();
        assert_eq!(
            p.kernel().watched(62).map(|e| (e.reason, e.profile)),
            Some((WATCH_PROFILE, entry.profile))
        );
        // A governed child that forked and exited within one batch: nothing written for it
        // (the kernel dropped its entry at its exit; writing it back would leave it stale).
        p.handle_batch(vec![
            fork(63, 2 * SECOND, 60, SECOND, false),
            exit(63, 2 * SECOND, false),
        ])
        .unwrap();
        assert!(p.kernel().watched(63).is_none());
        // Allowed: the kernel is told not to send it again.
        assert!(p.kernel().known.contains(&key));
        let alerts = alerts.lock().unwrap();
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].profile.as_deref(), Some("app"));
        assert_eq!(
            alerts[0]
                .attributes
                .get("file.path")
                .and_then(Value::as_str),
            Some("/etc/shadow")
        );
    }

    /// A profile whose resolved exec globs could not be written to the kernel is named in an
    /// `events-lost` alert and counted in the loss metric; so is an undecodable record.
    #[test]
    fn lost_enforcement_names_its_profile_in_an_alert_and_a_metric() {
        let config = crate::config::Config::builtin();
        let profile = config.profiles.first().expect("a built-in profile");
        let (id, name) = (profile.id, profile.name.clone());
        let mut p = processor(Mode::Run, WatchSelectors::default());
        p.set_engine(Engine::new(Arc::new(config)));
        let metrics = Arc::new(crate::telemetry::metrics::Metrics::new());
        p.metrics = Some(metrics.clone());
        let alerts = Arc::new(Mutex::new(Vec::new()));
        p.add_sink(Box::new(Captured(alerts.clone())));
        p.kernel_mut().resolved_exec_losses = vec![(id, 4)];
        p.counters.undecodable.store(1, Ordering::Relaxed);
        p.report_losses().unwrap();
        p.report_losses().unwrap();
        let alerts = alerts.lock().unwrap();
        let json: Vec<Value> = alerts.iter().map(Alert::to_json).collect();
        assert_eq!(json.len(), 2, "{json:?}");
        let resolved = json
            .iter()
            .find(|a| a["monitor.loss.reason"] == "resolved-exec-not-written")
            .expect("the resolved exec loss");
        assert_eq!(resolved["security_rule.name"], "events-lost");
        assert_eq!(resolved["monitor.profile"], name.as_str());
        assert_eq!(resolved["monitor.loss.count"], 4);
        assert_eq!(resolved["monitor.loss.event_kind"], "exec");
        assert_eq!(resolved["monitor.loss.stage"], "kernel");
        assert!(json
            .iter()
            .any(|a| a["monitor.loss.reason"] == "undecodable" && a["monitor.loss.count"] == 1));
        let lost = |reason: &str| {
            metrics
                .snapshot()
                .into_iter()
                .find(|point| {
                    point.name == "monitor.events.lost"
                        && point
                            .labels
                            .iter()
                            .any(|(key, value)| *key == "monitor.loss.reason" && value == reason)
                })
                .map(|point| point.value)
        };
        assert_eq!(lost("resolved-exec-not-written"), Some(4));
        assert_eq!(lost("undecodable"), Some(1));
    }

    /// Names every process whose executable it is told to, and counts what it saw.
    struct Learner {
        exe: &'static str,
        seen: u64,
    }

    impl Observer for Learner {
        fn seed(&mut self, _: &ProcessTable) -> Vec<u32> {
            Vec::new()
        }
        fn observe(&mut self, event: &Event, table: &ProcessTable) -> Vec<u32> {
            self.seen += 1;
            let tgid = event.header().tgid;
            match event {
                Event::Exec(_)
                    if table.get_by_tgid(tgid).and_then(|p| p.exe.as_deref()) == Some(self.exe) =>
                {
                    vec![tgid]
                }
                _ => Vec::new(),
            }
        }
        fn events(&self) -> u64 {
            self.seen
        }
    }

    #[test]
    fn the_learner_sees_every_event_applied_and_names_whom_to_watch() {
        let mut p = processor(Mode::Observe, WatchSelectors::default());
        p.observer = Some(Box::new(Learner {
            exe: "/opt/app/server",
            seen: 0,
        }));
        p.handle_batch(vec![
            fork(70, SECOND, 1, 0, false),
            exec(70, SECOND, 1, &["/opt/app/server"], false),
            exec(71, SECOND, 1, &["/usr/bin/ls"], false),
        ])
        .unwrap();
        assert_eq!(p.observer.as_ref().unwrap().events(), 3);
        assert_eq!(p.kernel().watched(70).map(|e| e.reason), Some(WATCH_EXE));
        assert!(p.kernel().watched(71).is_none());
        assert!(p.out.is_empty(), "learning prints no event records");
    }
}
