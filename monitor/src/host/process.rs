//! The process table: what user space knows about every process, kept up to date by
//! the fork, exec and exit events of the kernel programs and seeded from `/proc`.
//!
//! A process is identified by its tgid and its start time (`start_boottime` of the
//! thread-group leader), because tgids are reused: an event whose start time differs
//! from the stored one is about another process, which replaces the stored one and
//! never inherits its executable or arguments.
//!
//! Start times read from `/proc` count clock ticks, not nanoseconds; such a coarse
//! time matches an event's exact time in the same tick, and the event's time then
//! replaces it.

use std::collections::btree_map::{BTreeMap, Entry};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, LazyLock};

use serde::Serialize;

use crate::event::tgid::TgidMap;
use crate::event::ExecInfo;
use crate::host::container::{container_id, ContainerRef};
use crate::host::procfs::{self, ProcSnapshot};

/// How long an exited process stays findable, so that the late events of its
/// children (from other CPUs, or queued behind it) still find their parent.
pub const EXIT_GRACE_NS: u64 = 30 * 1_000_000_000;

/// Most exited processes kept; past it the oldest exits are forgotten first.
pub const MAX_EXITED: usize = 4096;

/// What is known about one process. Its image (what it runs, as which user, in which
/// cgroup) is read through [`Deref`](std::ops::Deref) as if its fields were the process's own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Process {
    pub tgid: u32,
    /// Start time in nanoseconds of `CLOCK_BOOTTIME`; a whole number of clock ticks
    /// while it is only known from `/proc`.
    pub start_time_ns: u64,
    pub ppid: u32,
    /// The parent's start time; 0 when unknown.
    pub parent_start_time_ns: u64,
    /// Shared with the parent it was forked from and the children it forks until one of them
    /// execs: a fork, the table's most frequent change, copies a pointer rather than the
    /// strings and the argument vector (about 2,900 instructions per fork, and as many to
    /// free them again at the exit's eviction).
    #[serde(flatten, serialize_with = "serialize_image")]
    image: Arc<Image>,
    pub exited: Option<Exit>,
    /// Created by the `/proc` scan at start-up rather than from a fork or exec event.
    pub from_scan: bool,
}

/// What a process runs, as which user and in which cgroup: set by its exec (or the `/proc`
/// scan) and inherited at fork.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Image {
    pub exe: Option<String>,
    pub args: Vec<String>,
    pub args_truncated: bool,
    /// The number of arguments when `args` holds fewer (truncated); `None`: `args.len()`.
    pub args_count: Option<usize>,
    pub uid: Option<u32>,
    pub cgroup_id: Option<u64>,
    pub cgroup_path: Option<String>,
    pub container: Option<ContainerRef>,
}

/// Serde's `Arc` support is behind its `rc` feature; the image is written as it was before
/// it was shared, its fields among the process's own.
fn serialize_image<S: serde::Serializer>(
    image: &Arc<Image>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    Image::serialize(image, serializer)
}

/// The image of a process known so far only from a fork or an exit: one for all, so that
/// making such a process allocates nothing.
fn empty_image() -> Arc<Image> {
    static EMPTY: LazyLock<Arc<Image>> = LazyLock::new(Arc::default);
    Arc::clone(&EMPTY)
}

impl std::ops::Deref for Process {
    type Target = Image;

    fn deref(&self) -> &Image {
        &self.image
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Exit {
    /// When, in nanoseconds of `CLOCK_BOOTTIME`. For a process found replaced by
    /// another with its tgid, whose exit was not seen, the start of the replacement:
    /// the latest it can have exited.
    pub at_ns: u64,
    pub code: Option<u32>,
    pub signal: Option<u32>,
}

impl Process {
    fn new(tgid: u32, start_time_ns: u64) -> Self {
        Self {
            tgid,
            start_time_ns,
            ppid: 0,
            parent_start_time_ns: 0,
            image: empty_image(),
            exited: None,
            from_scan: false,
        }
    }

    fn from_snapshot(snapshot: ProcSnapshot, parent_start_time_ns: u64) -> Self {
        let container = snapshot.cgroup_path.as_deref().and_then(container_id);
        Self {
            tgid: snapshot.tgid,
            start_time_ns: snapshot.start_time_ns,
            ppid: snapshot.ppid,
            parent_start_time_ns,
            image: Arc::new(Image {
                exe: snapshot.exe,
                args: snapshot.args,
                args_truncated: false,
                args_count: None,
                uid: Some(snapshot.uid),
                cgroup_id: None,
                cgroup_path: snapshot.cgroup_path,
                container,
            }),
            exited: None,
            from_scan: true,
        }
    }

    /// Takes what a child inherits at fork: the image, the user and the cgroup (shared).
    fn inherit(&mut self, parent: &Process) {
        self.image = Arc::clone(&parent.image);
    }

    /// The image to change: this process's own, copied first if it is shared.
    fn image_mut(&mut self) -> &mut Image {
        Arc::make_mut(&mut self.image)
    }

    fn apply_exec(&mut self, info: ExecInfo) {
        // The parent seen at fork is the process that created this one; a parent
        // reported later may be the reaper it was handed to, so it only fills a gap.
        if self.ppid == 0 || self.parent_start_time_ns == 0 {
            self.ppid = info.ppid;
            self.parent_start_time_ns = info.parent_start_time_ns;
        }
        // A new image, not the old one changed: the old one is usually shared with the
        // parent this process was forked from.
        let cgroup_path = if info.cgroup_path.is_some() || self.cgroup_id != Some(info.cgroup_id) {
            info.cgroup_path
        } else {
            self.cgroup_path.clone()
        };
        let container = cgroup_path.as_deref().and_then(container_id);
        self.image = Arc::new(Image {
            exe: Some(info.exe),
            args: info.args,
            args_truncated: info.args_truncated,
            args_count: info.args_count,
            uid: Some(info.uid),
            cgroup_id: Some(info.cgroup_id),
            cgroup_path,
            container,
        });
    }

    fn identity(&self) -> (u32, u64) {
        (self.tgid, self.start_time_ns)
    }
}

/// Whether two start times are the same process's: equal, or, when one of them is a
/// whole number of clock ticks (read from `/proc`), in the same tick, allowing one
/// tick of difference for rounding.
pub fn same_start(a_ns: u64, b_ns: u64) -> bool {
    same_start_at(a_ns, b_ns, procfs::clock_ticks_per_second())
}

fn same_start_at(a_ns: u64, b_ns: u64, hz: u64) -> bool {
    if a_ns == b_ns {
        return true;
    }
    if !is_coarse(a_ns, hz) && !is_coarse(b_ns, hz) {
        return false;
    }
    procfs::ns_to_ticks(a_ns, hz).abs_diff(procfs::ns_to_ticks(b_ns, hz)) <= 1
}

/// Whether a time is a whole number of clock ticks, as converted from `/proc`. An
/// exact time is one by chance once in ten million (at 100 ticks per second).
fn is_coarse(ns: u64, hz: u64) -> bool {
    let ticks = procfs::ns_to_ticks(ns, hz);
    // The conversion from ticks rounds down, so the tick can read one too low when a
    // tick is not a whole number of nanoseconds.
    procfs::ticks_to_ns(ticks, hz) == ns || procfs::ticks_to_ns(ticks + 1, hz) == ns
}

/// Where the process an event is about is, or is to be.
enum Slot {
    /// In the live map under its tgid (found, or a place made for it).
    Live,
    /// Already among the exited, under this key.
    Exited((u32, u64)),
    /// Not known, and older than the live process with its tgid: it has exited,
    /// at the latest when that one started.
    NewExited(u64),
}

/// All processes known, live and recently exited.
#[derive(Debug)]
pub struct ProcessTable {
    /// Keyed with the tgid hash: SipHash was most of each of the several look-ups of a fork
    /// or an exit.
    live: TgidMap<Process>,
    /// Keyed by identity, so that a reused tgid in `live` does not evict them.
    exited: BTreeMap<(u32, u64), Process>,
    /// How many keys of `exited` are coarse start times (from `/proc`): while there are none,
    /// an exact start time can only be found under its own key, and the search of the keys
    /// around it (half the cost of a fork) is skipped.
    coarse_exited: usize,
    /// Keys of `exited` in the order they were added, oldest first.
    exited_order: VecDeque<(u32, u64)>,
    grace_ns: u64,
    max_exited: usize,
    /// Container metadata from the runtime ([`crate::host::workload`]): every container a process
    /// is found in gets its shared slot, and its lookup is queued the first time.
    pub containers: Option<std::sync::Arc<crate::host::workload::Registry>>,
}

impl Default for ProcessTable {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessTable {
    pub fn new() -> Self {
        Self::with_limits(EXIT_GRACE_NS, MAX_EXITED)
    }

    /// A table that keeps exited processes `grace_ns` and at most `max_exited` of them.
    pub fn with_limits(grace_ns: u64, max_exited: usize) -> Self {
        Self {
            live: TgidMap::default(),
            exited: BTreeMap::new(),
            coarse_exited: 0,
            exited_order: VecDeque::new(),
            grace_ns,
            max_exited: max_exited.max(1),
            containers: None,
        }
    }

    /// Adds the processes of a `/proc` scan. A process that events already reported
    /// keeps what they said; one whose exit was already seen stays exited.
    pub fn seed(&mut self, snapshots: Vec<ProcSnapshot>) {
        let starts: HashMap<u32, u64> = snapshots
            .iter()
            .map(|s| (s.tgid, s.start_time_ns))
            .collect();
        for snapshot in snapshots {
            let (tgid, start) = (snapshot.tgid, snapshot.start_time_ns);
            let parent_start = starts
                .get(&snapshot.ppid)
                .copied()
                .or_else(|| self.live.get(&snapshot.ppid).map(|p| p.start_time_ns))
                // A parent starts before its child; a later start is a reused pid.
                .filter(|parent| *parent <= start || same_start(*parent, start))
                .unwrap_or(0);
            let mut process = Process::from_snapshot(snapshot, parent_start);
            if let (Some(registry), Some(container)) =
                (&self.containers, &mut process.image_mut().container)
            {
                registry.attach(container);
            }
            if tgid == 0 || self.exited_key(tgid, start).is_some() {
                continue;
            }
            match self.live.get_mut(&tgid) {
                Some(existing) if same_start(existing.start_time_ns, start) => {
                    // Events came first and are exact; /proc only fills what they
                    // could not know (a fork whose parent was unknown).
                    if existing.exe.is_none() && existing.uid.is_none() {
                        existing.inherit(&process);
                    }
                    continue;
                }
                Some(existing) if existing.start_time_ns > start => {
                    // The scan saw a process that has since been replaced.
                    process.exited = Some(Exit {
                        at_ns: existing.start_time_ns,
                        code: None,
                        signal: None,
                    });
                    self.insert_exited(process);
                    continue;
                }
                _ => {}
            }
            if let Some(old) = self.live.remove(&tgid) {
                self.retire(old, start);
            }
            self.live.insert(tgid, process);
        }
    }

    /// Applies one kernel event: the one place events change the table, called by the
    /// daemon's processor and by the pipeline benchmark alike. `cgroup_path` names an exec's
    /// cgroup by id (the daemon's resolver; `None` without one). Other kinds leave the table
    /// as it is.
    pub fn apply(
        &mut self,
        event: &crate::event::Event,
        cgroup_path: impl FnOnce(u64) -> Option<String>,
    ) {
        use crate::event::Event;
        match event {
            Event::Exec(exec) => {
                self.on_exec(exec.table_info(cgroup_path(exec.cgroup_id)));
            }
            Event::Fork(fork) => {
                self.on_fork(
                    fork.header.tgid,
                    fork.header.start_time_ns,
                    fork.parent_tgid,
                    fork.parent_start_time_ns,
                );
            }
            Event::Exit(exit) => {
                self.on_exit(
                    exit.header.tgid,
                    exit.header.start_time_ns,
                    exit.header.time_ns,
                    exit.code,
                    exit.signal,
                );
            }
            Event::File(_)
            | Event::Net(_)
            | Event::Device(_)
            | Event::GpuIoctls(_)
            | Event::MemoryAccess(_)
            | Event::IoUring(_)
            | Event::Tamper(_) => {}
        }
    }

    /// A fork: the child starts with its parent's image, user and cgroup.
    pub fn on_fork(
        &mut self,
        child: u32,
        child_start: u64,
        parent: u32,
        parent_start: u64,
    ) -> &Process {
        self.refine_live(parent, parent_start);
        let slot = self.place(child, child_start);
        let known = match slot {
            // Found, or a place made for it after moving a replaced process away.
            Slot::Live => self.live_matches(child, child_start),
            Slot::Exited(_) => true,
            Slot::NewExited(_) => false,
        };
        let parent_image = if known {
            None
        } else {
            self.get(parent, parent_start).map(|p| Arc::clone(&p.image))
        };
        let process = self.slot_mut(child, child_start, slot);
        // A child already known (its exec or exit came first, or the scan saw it)
        // keeps its own image.
        if let Some(parent_image) = parent_image {
            process.image = parent_image;
        }
        process.ppid = parent;
        process.parent_start_time_ns = parent_start;
        process
    }

    /// An exec: the same process with a new image.
    pub fn on_exec(&mut self, info: ExecInfo) -> &Process {
        let (tgid, start) = (info.tgid, info.start_time_ns);
        let slot = self.place(tgid, start);
        let registry = self.containers.clone();
        let process = self.slot_mut(tgid, start, slot);
        process.apply_exec(info);
        if let Some(registry) = registry {
            if let Some(container) = &mut process.image_mut().container {
                registry.attach(container);
            }
        }
        process
    }

    /// An exit: the process moves to the exited, where it stays for the grace period.
    /// `None` when the process was not known.
    pub fn on_exit(
        &mut self,
        tgid: u32,
        start: u64,
        at_ns: u64,
        code: Option<u32>,
        signal: Option<u32>,
    ) -> Option<&Process> {
        let exit = Exit {
            at_ns,
            code,
            signal,
        };
        if self.live_matches(tgid, start) {
            self.refine_live(tgid, start);
            let mut process = self.live.remove(&tgid)?;
            process.exited = Some(exit);
            let process = self.insert_exited(process);
            // Kept only if an entry with this identity was there already.
            process.exited = Some(exit);
            return Some(process);
        }
        if let Some(key) = self.exited_key(tgid, start) {
            // A replaced process, whose exit was only inferred, or one whose exit
            // arrived twice: the event is authoritative.
            let process = self.exited.get_mut(&key)?;
            process.exited = Some(exit);
            return Some(process);
        }
        // An unknown process; if it is younger than the live one with its tgid, that
        // one has exited unseen.
        if self
            .live
            .get(&tgid)
            .is_some_and(|live| live.start_time_ns < start)
        {
            if let Some(old) = self.live.remove(&tgid) {
                self.retire(old, start);
            }
        }
        None
    }

    /// The process with this identity, live or recently exited.
    pub fn get(&self, tgid: u32, start_time_ns: u64) -> Option<&Process> {
        self.live
            .get(&tgid)
            .filter(|p| same_start(p.start_time_ns, start_time_ns))
            .or_else(|| {
                self.exited_key(tgid, start_time_ns)
                    .and_then(|key| self.exited.get(&key))
            })
    }

    /// The live process with this tgid, whatever its start time.
    pub fn get_by_tgid(&self, tgid: u32) -> Option<&Process> {
        self.live.get(&tgid)
    }

    /// The process with this tgid: the live one, else the one of that tgid that exited last
    /// (an event that names only a pid, such as fanotify's, of a process already gone).
    pub fn latest_by_tgid(&self, tgid: u32) -> Option<&Process> {
        self.live.get(&tgid).or_else(|| {
            self.exited
                .range((tgid, 0)..=(tgid, u64::MAX))
                .next_back()
                .map(|(_, process)| process)
        })
    }

    /// The live processes, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Process> {
        self.live.values()
    }

    /// The tgids of the live descendants of the live process `root`, nearest first,
    /// without `root` itself. A child counts only if its parent identity is the live
    /// `root` (or descendant), not an older process that had the same tgid.
    pub fn descendants(&self, root: u32) -> Vec<u32> {
        let mut children: HashMap<u32, Vec<&Process>> = HashMap::new();
        for process in self.live.values() {
            children.entry(process.ppid).or_default().push(process);
        }
        let mut found = Vec::new();
        let Some(root) = self.live.get(&root) else {
            return found;
        };
        let mut seen = HashSet::from([root.identity()]);
        let mut queue = VecDeque::from([root]);
        while let Some(parent) = queue.pop_front() {
            for child in children.get(&parent.tgid).into_iter().flatten() {
                let is_child = self
                    .parent(child)
                    .is_some_and(|p| p.identity() == parent.identity());
                if is_child && seen.insert(child.identity()) {
                    found.push(child.tgid);
                    queue.push_back(child);
                }
            }
        }
        found
    }

    /// The parent of `p`, when known. Without the parent's start time, the live
    /// process with its tgid counts only if it started before `p`.
    pub fn parent(&self, p: &Process) -> Option<&Process> {
        if p.ppid == 0 {
            return None;
        }
        if p.parent_start_time_ns != 0 {
            return self.get(p.ppid, p.parent_start_time_ns);
        }
        self.live.get(&p.ppid).filter(|parent| {
            parent.start_time_ns <= p.start_time_ns
                || same_start(parent.start_time_ns, p.start_time_ns)
        })
    }

    /// The ancestors of `p`, parent first, at most `max`. Stops at the first process
    /// seen twice: a loop can only come from wrong data, but must not hang the caller.
    pub fn ancestry(&self, p: &Process, max: usize) -> Vec<&Process> {
        let mut ancestors = Vec::new();
        let mut seen = HashSet::from([p.identity()]);
        let mut current = self.parent(p);
        while let Some(ancestor) = current {
            if ancestors.len() >= max || !seen.insert(ancestor.identity()) {
                break;
            }
            ancestors.push(ancestor);
            current = self.parent(ancestor);
        }
        ancestors
    }

    /// Forgets the processes that exited more than the grace period before `now_ns`
    /// (nanoseconds of `CLOCK_BOOTTIME`), oldest first: it stops at the first one still within
    /// its grace, so it costs what it drops, not a walk over up to [`MAX_EXITED`] processes at
    /// every call (that walk was a tenth of the idle daemon's CPU). Exits are added about in
    /// time order; one added after a younger exit (a process the `/proc` scan found replaced)
    /// waits for that one, at most a grace period more.
    pub fn sweep(&mut self, now_ns: u64) {
        let grace_ns = self.grace_ns;
        while let Some(key) = self.exited_order.front() {
            let expired = match self.exited.get(key) {
                Some(process) => process
                    .exited
                    .is_some_and(|exit| now_ns.saturating_sub(exit.at_ns) > grace_ns),
                // Already forgotten: nothing to keep its place for.
                None => true,
            };
            if !expired {
                break;
            }
            if let Some(key) = self.exited_order.pop_front() {
                self.remove_exited(key);
            }
        }
    }

    /// The number of live processes.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// The number of exited processes still kept.
    pub fn exited_len(&self) -> usize {
        self.exited.len()
    }

    fn live_matches(&self, tgid: u32, start: u64) -> bool {
        self.live
            .get(&tgid)
            .is_some_and(|p| same_start(p.start_time_ns, start))
    }

    /// Replaces the coarse start time of a live process from `/proc` with an event's
    /// exact one for the same process.
    fn refine_live(&mut self, tgid: u32, start: u64) {
        let hz = procfs::clock_ticks_per_second();
        if let Some(p) = self.live.get_mut(&tgid) {
            if p.start_time_ns != start
                && is_coarse(p.start_time_ns, hz)
                && !is_coarse(start, hz)
                && same_start_at(p.start_time_ns, start, hz)
            {
                p.start_time_ns = start;
            }
        }
    }

    /// The key of the exited process with this identity. Exited processes are kept
    /// under the start time they had, possibly coarse, so nearby keys are looked at.
    fn exited_key(&self, tgid: u32, start: u64) -> Option<(u32, u64)> {
        if self.exited.contains_key(&(tgid, start)) {
            return Some((tgid, start));
        }
        let hz = procfs::clock_ticks_per_second();
        if self.coarse_exited == 0 && !is_coarse(start, hz) {
            // Two exact start times are the same process's only when equal.
            return None;
        }
        let window = 2 * (procfs::ticks_to_ns(1, hz) + 1);
        self.exited
            .range((tgid, start.saturating_sub(window))..=(tgid, start.saturating_add(window)))
            .map(|(key, _)| *key)
            .find(|(_, stored)| same_start_at(*stored, start, hz))
    }

    /// Finds where the process of an event belongs, making room in the live map when
    /// it replaces an older process with the same tgid.
    fn place(&mut self, tgid: u32, start: u64) -> Slot {
        if self.live_matches(tgid, start) {
            self.refine_live(tgid, start);
            return Slot::Live;
        }
        if let Some(key) = self.exited_key(tgid, start) {
            return Slot::Exited(key);
        }
        match self.live.get(&tgid).map(|p| p.start_time_ns) {
            // A late event of a process already replaced: it must have exited.
            Some(live_start) if live_start > start => Slot::NewExited(live_start),
            Some(_) => {
                // pid reuse: the stored process exited unseen before this one started.
                if let Some(old) = self.live.remove(&tgid) {
                    self.retire(old, start);
                }
                Slot::Live
            }
            None => Slot::Live,
        }
    }

    fn slot_mut(&mut self, tgid: u32, start: u64, slot: Slot) -> &mut Process {
        match slot {
            Slot::Live => self
                .live
                .entry(tgid)
                .or_insert_with(|| Process::new(tgid, start)),
            Slot::Exited(key) => self
                .exited
                .entry(key)
                .or_insert_with(|| Process::new(tgid, start)),
            Slot::NewExited(at_ns) => {
                let mut process = Process::new(tgid, start);
                process.exited = Some(Exit {
                    at_ns,
                    code: None,
                    signal: None,
                });
                self.insert_exited(process)
            }
        }
    }

    /// Moves a process replaced by a newer one with its tgid to the exited; if its
    /// exit was not seen, it happened at the latest at `replaced_at_ns`.
    fn retire(&mut self, mut process: Process, replaced_at_ns: u64) {
        process.exited.get_or_insert(Exit {
            at_ns: replaced_at_ns,
            code: None,
            signal: None,
        });
        self.insert_exited(process);
    }

    /// Adds an exited process, forgetting the oldest when full. An entry with the same
    /// identity already there is kept.
    fn insert_exited(&mut self, process: Process) -> &mut Process {
        let key = process.identity();
        // One search of the map while there is room; when full, an entry already there must
        // not cost an eviction, so it is looked for first.
        if self.exited.len() >= self.max_exited && !self.exited.contains_key(&key) {
            while self.exited.len() >= self.max_exited {
                match self.exited_order.pop_front() {
                    Some(oldest) => self.remove_exited(oldest),
                    None => break,
                }
            }
        }
        match self.exited.entry(key) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                self.exited_order.push_back(key);
                if is_coarse(key.1, procfs::clock_ticks_per_second()) {
                    self.coarse_exited += 1;
                }
                entry.insert(process)
            }
        }
    }

    fn remove_exited(&mut self, key: (u32, u64)) {
        if self.exited.remove(&key).is_some() && is_coarse(key.1, procfs::clock_ticks_per_second())
        {
            self.coarse_exited -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn hz() -> u64 {
        procfs::clock_ticks_per_second()
    }

    /// A start time as `/proc` gives it: tick `tick`.
    fn coarse(tick: u64) -> u64 {
        procfs::ticks_to_ns(tick, hz())
    }

    /// An exact start time inside tick `tick`.
    fn exact(tick: u64) -> u64 {
        coarse(tick) + procfs::ticks_to_ns(1, hz()) / 3 + 7
    }

    fn exec(tgid: u32, start: u64, exe: &str, args: &[&str]) -> ExecInfo {
        ExecInfo {
            tgid,
            start_time_ns: start,
            exe: exe.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            uid: 1000,
            cgroup_id: 77,
            cgroup_path: Some("/system.slice/inference.service".to_owned()),
            ..ExecInfo::default()
        }
    }

    fn snapshot(tgid: u32, ppid: u32, start: u64, exe: &str, args: &[&str]) -> ProcSnapshot {
        ProcSnapshot {
            tgid,
            ppid,
            start_time_ns: start,
            exe: Some(exe.to_owned()),
            exe_deleted: false,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            uid: 0,
            cgroup_path: Some("/".to_owned()),
        }
    }

    fn header(
        kind: monitor_common::EventKind,
        tgid: u32,
        start: u64,
        time: u64,
    ) -> crate::event::Header {
        crate::event::Header {
            kind,
            time_ns: time,
            tgid,
            pid: tgid,
            start_time_ns: start,
            watched: false,
        }
    }

    #[test]
    fn apply_runs_a_process_from_fork_to_exit() {
        use crate::event::{Event, Exec, Fork};
        use monitor_common::EventKind;
        let mut table = ProcessTable::new();
        table.on_exec(exec(
            100,
            exact(10),
            "/usr/bin/python3",
            &["python3", "serve.py"],
        ));
        let fork = Event::Fork(Fork {
            header: header(EventKind::Fork, 200, exact(20), exact(20)),
            parent_tgid: 100,
            parent_start_time_ns: exact(10),
        });
        table.apply(&fork, |_| unreachable!("a fork names no cgroup"));
        let child = table
            .get(200, exact(20))
            .expect("the child is in the table");
        assert_eq!(child.ppid, 100);
        assert_eq!(child.exe.as_deref(), Some("/usr/bin/python3"));
        let exec = Event::Exec(Exec {
            header: header(EventKind::Exec, 200, exact(20), exact(21)),
            ppid: 100,
            parent_start_time_ns: exact(10),
            uid: 1000,
            gid: 1000,
            cgroup_id: 7,
            path: "/usr/bin/true".into(),
            path_truncated: false,
            path_from_filename: false,
            args: vec!["true".into()],
            args_truncated: false,
            args_count: 1,
            fileless: false,
            killed: false,
            would_kill: false,
            raw: Default::default(),
        });
        table.apply(&exec, |id| Some(format!("/cgroup-{id}")));
        let child = table.get_by_tgid(200).expect("still live");
        assert_eq!(child.exe.as_deref(), Some("/usr/bin/true"));
        assert_eq!(child.args, ["true"]);
        assert_eq!(child.cgroup_path.as_deref(), Some("/cgroup-7"));
        let exit = Event::Exit(crate::event::Exit {
            header: header(EventKind::Exit, 200, exact(20), exact(22)),
            code: Some(0),
            signal: None,
            core_dumped: false,
        });
        table.apply(&exit, |_| unreachable!("an exit names no cgroup"));
        assert!(table.get_by_tgid(200).is_none(), "no longer live");
        let gone = table
            .get(200, exact(20))
            .expect("kept while in its grace period");
        assert_eq!(gone.exited.map(|e| e.code), Some(Some(0)));
        // Kinds that do not change the table leave it as it was.
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn same_start_rules() {
        // Exact times must be equal.
        assert!(same_start_at(exact(5), exact(5), 100));
        assert!(!same_start_at(exact(5), exact(5) + 1, 100));
        // A coarse time matches exact times in its tick, or one tick off.
        assert!(same_start_at(coarse(5), exact(5), 100));
        assert!(same_start_at(exact(5), coarse(5), 100));
        assert!(same_start_at(coarse(5), exact(6), 100));
        assert!(same_start_at(coarse(6), exact(5), 100));
        assert!(!same_start_at(coarse(5), exact(7), 100));
        assert!(!same_start_at(coarse(5), coarse(8), 100));
        // A tick that is not a whole number of nanoseconds.
        let tick_3 = procfs::ticks_to_ns(3, 1024);
        assert!(is_coarse(tick_3, 1024));
        assert!(same_start_at(tick_3, tick_3 + 500_000, 1024));
    }

    #[test]
    fn fork_inherits_parent_exe() {
        let mut table = ProcessTable::new();
        table.on_exec(exec(
            100,
            exact(10),
            "/usr/bin/python3",
            &["python3", "serve.py"],
        ));
        let child = table.on_fork(101, exact(20), 100, exact(10)).clone();
        assert_eq!(child.exe.as_deref(), Some("/usr/bin/python3"));
        assert_eq!(child.args, ["python3", "serve.py"]);
        assert_eq!(child.uid, Some(1000));
        assert_eq!(child.cgroup_id, Some(77));
        assert_eq!(child.ppid, 100);
        assert_eq!(child.parent_start_time_ns, exact(10));
        assert!(!child.from_scan);
        let parent = table.parent(&child).map(|p| p.tgid);
        assert_eq!(parent, Some(100));
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn fork_of_unknown_parent() {
        let mut table = ProcessTable::new();
        let child = table.on_fork(101, exact(20), 100, exact(10));
        assert_eq!(child.exe, None);
        assert_eq!(child.ppid, 100);
    }

    #[test]
    fn exec_updates_in_place() {
        let mut table = ProcessTable::new();
        table.on_exec(exec(100, exact(10), "/bin/bash", &["bash"]));
        table.on_fork(101, exact(20), 100, exact(10));
        let mut info = exec(101, exact(20), "/usr/bin/curl", &["curl", "http://x"]);
        info.cgroup_id = 78;
        info.cgroup_path = Some(
            "/system.slice/docker-4f1e2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8.scope"
                .to_owned(),
        );
        info.ppid = 1;
        info.parent_start_time_ns = exact(1);
        let after = table.on_exec(info).clone();
        assert_eq!(after.exe.as_deref(), Some("/usr/bin/curl"));
        assert_eq!(after.args, ["curl", "http://x"]);
        assert_eq!(after.cgroup_id, Some(78));
        assert_eq!(after.container.as_ref().map(|c| c.runtime), Some("docker"));
        // The fork's parent is the creator and stays.
        assert_eq!((after.ppid, after.parent_start_time_ns), (100, exact(10)));
        assert_eq!(table.len(), 2);
        assert_eq!(table.exited_len(), 0);
    }

    #[test]
    fn pid_reuse_replaces_and_old_args_never_leak() {
        let mut table = ProcessTable::new();
        table.on_exec(exec(1, exact(1), "/sbin/init", &["init"]));
        table.on_exec(exec(
            200,
            exact(10),
            "/usr/bin/secret",
            &["secret", "--token=abc"],
        ));

        // An exec for the same tgid with another start time: another process.
        let new = table
            .on_exec(exec(200, exact(5000), "/bin/ls", &["ls"]))
            .clone();
        assert_eq!(new.args, ["ls"]);
        assert_eq!(new.start_time_ns, exact(5000));
        let old = table.get(200, exact(10)).cloned();
        assert_eq!(
            old.as_ref().map(|p| p.args.clone()),
            Some(vec!["secret".to_owned(), "--token=abc".to_owned()])
        );
        assert_eq!(
            old.and_then(|p| p.exited).map(|e| e.at_ns),
            Some(exact(5000))
        );

        // A fork reusing the tgid again takes its parent's image, not the old one's.
        let forked = table.on_fork(200, exact(9000), 1, exact(1)).clone();
        assert_eq!(forked.exe.as_deref(), Some("/sbin/init"));
        assert_eq!(forked.args, ["init"]);
        assert!(table
            .get(200, exact(5000))
            .is_some_and(|p| p.exited.is_some()));
        assert_eq!(table.len(), 2);
        assert_eq!(table.exited_len(), 2);
    }

    #[test]
    fn fork_with_unknown_parent_on_reused_pid_does_not_leak() {
        let mut table = ProcessTable::new();
        table.on_exec(exec(
            300,
            exact(10),
            "/usr/bin/secret",
            &["secret", "--key"],
        ));
        let new = table.on_fork(300, exact(700), 299, exact(600)).clone();
        assert_eq!(new.exe, None);
        assert!(new.args.is_empty());
        assert_eq!(new.uid, None);
    }

    #[test]
    fn exit_then_reuse() {
        let mut table = ProcessTable::new();
        table.on_exec(exec(100, exact(10), "/bin/bash", &["bash"]));
        table.on_fork(101, exact(20), 100, exact(10));
        let exited = table
            .on_exit(100, exact(10), exact(30), Some(0), None)
            .cloned();
        assert_eq!(exited.and_then(|p| p.exited).and_then(|e| e.code), Some(0));
        assert_eq!(table.len(), 1);

        // The child still finds its exited parent.
        let child = table.get(101, exact(20)).cloned();
        let parent = child
            .as_ref()
            .and_then(|c| table.parent(c))
            .map(|p| p.exe.clone());
        assert_eq!(parent, Some(Some("/bin/bash".to_owned())));

        // The tgid is reused: the new process is live, the old one still findable.
        table.on_exec(exec(100, exact(40), "/bin/sleep", &["sleep", "1"]));
        assert_eq!(table.len(), 2);
        assert_eq!(table.get(100, exact(40)).map(|p| p.args.len()), Some(2));
        assert!(table
            .get(100, exact(10))
            .is_some_and(|p| p.exited.is_some()));
        // The child's parent is still the old bash, not the new sleep.
        let parent = child
            .as_ref()
            .and_then(|c| table.parent(c))
            .and_then(|p| p.exe.clone());
        assert_eq!(parent.as_deref(), Some("/bin/bash"));
    }

    #[test]
    fn latest_by_tgid_finds_a_process_that_already_exited() {
        let mut table = ProcessTable::new();
        table.on_exec(exec(300, exact(10), "/usr/bin/python3", &["python3"]));
        table.on_exit(300, exact(10), exact(20), Some(0), None);
        table.on_exec(exec(300, exact(30), "/usr/bin/truncate", &["truncate"]));
        table.on_exit(300, exact(30), exact(40), Some(0), None);
        // Gone from the live map: the one that exited last is named.
        assert!(table.get_by_tgid(300).is_none());
        let latest = table.latest_by_tgid(300).and_then(|p| p.exe.clone());
        assert_eq!(latest.as_deref(), Some("/usr/bin/truncate"));
        // A live one wins.
        table.on_exec(exec(300, exact(50), "/usr/bin/cat", &["cat"]));
        let latest = table.latest_by_tgid(300).and_then(|p| p.exe.clone());
        assert_eq!(latest.as_deref(), Some("/usr/bin/cat"));
        assert!(table.latest_by_tgid(301).is_none());
    }

    #[test]
    fn exit_before_fork_does_not_revive() {
        let mut table = ProcessTable::new();
        table.on_exec(exec(100, exact(10), "/bin/bash", &["bash"]));
        table.on_fork(101, exact(20), 100, exact(10));
        table.on_exit(101, exact(20), exact(21), None, Some(9));
        // A late exec of the exited child is recorded on the exited entry.
        let late = table
            .on_exec(exec(101, exact(20), "/bin/true", &["true"]))
            .clone();
        assert_eq!(late.exited.and_then(|e| e.signal), Some(9));
        assert_eq!(late.exe.as_deref(), Some("/bin/true"));
        assert_eq!(table.len(), 1);
        // A late fork event too.
        let late = table.on_fork(101, exact(20), 100, exact(10)).clone();
        assert!(late.exited.is_some());
        assert_eq!(late.exe.as_deref(), Some("/bin/true"));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn late_event_of_replaced_process_keeps_the_new_one() {
        let mut table = ProcessTable::new();
        table.on_exec(exec(100, exact(500), "/bin/new", &["new"]));
        // An exec of an older process with this tgid, arriving late.
        let late = table
            .on_exec(exec(100, exact(10), "/bin/old", &["old"]))
            .clone();
        assert!(late.exited.is_some());
        assert_eq!(
            table
                .get_by_tgid(100)
                .and_then(|p| p.exe.clone())
                .as_deref(),
            Some("/bin/new")
        );
        // Its exit, arriving late too, completes the exited entry.
        let exit = table
            .on_exit(100, exact(10), exact(400), Some(1), None)
            .and_then(|p| p.exited);
        assert_eq!(exit.map(|e| (e.at_ns, e.code)), Some((exact(400), Some(1))));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn exit_of_unknown_younger_process_retires_the_stale_one() {
        let mut table = ProcessTable::new();
        table.on_exec(exec(100, exact(10), "/bin/old", &["old"]));
        assert!(table
            .on_exit(100, exact(50), exact(60), Some(0), None)
            .is_none());
        assert_eq!(table.len(), 0);
        assert!(table
            .get(100, exact(10))
            .is_some_and(|p| p.exited.is_some()));
    }

    #[test]
    fn ancestry_parent_first_and_bounded() {
        let mut table = ProcessTable::new();
        table.on_exec(exec(1, exact(1), "/sbin/init", &["init"]));
        table.on_fork(10, exact(10), 1, exact(1));
        table.on_fork(20, exact(20), 10, exact(10));
        let leaf = table.on_fork(30, exact(30), 20, exact(20)).clone();
        let chain: Vec<u32> = table.ancestry(&leaf, 10).iter().map(|p| p.tgid).collect();
        assert_eq!(chain, [20, 10, 1]);
        let chain: Vec<u32> = table.ancestry(&leaf, 2).iter().map(|p| p.tgid).collect();
        assert_eq!(chain, [20, 10]);
    }

    #[test]
    fn ancestry_stops_at_loops() {
        let mut table = ProcessTable::new();
        table.on_fork(10, exact(10), 20, exact(20));
        table.on_fork(20, exact(20), 30, exact(30));
        table.on_fork(30, exact(30), 10, exact(10));
        let p = table.get(10, exact(10)).cloned();
        let chain: Vec<u32> = p
            .map(|p| table.ancestry(&p, 100).iter().map(|a| a.tgid).collect())
            .unwrap_or_default();
        assert_eq!(chain, [20, 30]);

        // A process that is its own parent.
        let own = table.on_fork(40, exact(40), 40, exact(40)).clone();
        assert!(table.ancestry(&own, 100).is_empty());
    }

    #[test]
    fn descendants_of_live_process() {
        let mut table = ProcessTable::new();
        table.on_exec(exec(1, exact(1), "/sbin/init", &["init"]));
        table.on_fork(10, exact(10), 1, exact(1));
        table.on_fork(11, exact(11), 10, exact(10));
        table.on_fork(12, exact(12), 11, exact(11));
        table.on_fork(20, exact(20), 1, exact(1));
        // A child of an older process 10, which a reused tgid replaced.
        table.on_fork(30, exact(30), 10, exact(5));
        let mut below = table.descendants(10);
        below.sort_unstable();
        assert_eq!(below, [11, 12]);
        assert_eq!(table.descendants(1).len(), 4);
        assert!(table.descendants(99).is_empty());
        assert_eq!(table.iter().count(), 6);

        // Loops end.
        let mut looped = ProcessTable::new();
        looped.on_fork(40, exact(40), 41, exact(41));
        looped.on_fork(41, exact(41), 40, exact(40));
        assert_eq!(looped.descendants(40), [41]);
    }

    #[test]
    fn seeded_entry_upgraded_by_matching_event() {
        let mut table = ProcessTable::new();
        table.seed(vec![
            snapshot(1, 0, coarse(1), "/sbin/init", &["init"]),
            snapshot(500, 1, coarse(100), "/usr/bin/vllm", &["vllm", "serve"]),
        ]);
        assert_eq!(table.len(), 2);
        let seeded = table.get(500, coarse(100)).cloned();
        assert!(seeded
            .as_ref()
            .is_some_and(|p| p.from_scan && p.parent_start_time_ns == coarse(1)));
        assert_eq!(seeded.as_ref().and_then(|p| p.uid), Some(0));

        // A fork by the seeded process, with exact times, finds and refines it.
        let child = table.on_fork(501, exact(200), 500, exact(100)).clone();
        assert_eq!(child.exe.as_deref(), Some("/usr/bin/vllm"));
        let parent = table.get_by_tgid(500).cloned();
        assert_eq!(parent.as_ref().map(|p| p.start_time_ns), Some(exact(100)));
        assert!(parent.is_some_and(|p| p.from_scan));
        // Both the coarse and the exact time find it now.
        assert!(table.get(500, coarse(100)).is_some());
        assert!(table.get(500, exact(100)).is_some());

        // An exec of the seeded init refines it too.
        let init = table
            .on_exec(exec(1, exact(1), "/sbin/init", &["init", "splash"]))
            .clone();
        assert_eq!(init.start_time_ns, exact(1));
        assert_eq!(init.args, ["init", "splash"]);
        assert_eq!(table.len(), 3);
        assert_eq!(table.exited_len(), 0);
    }

    #[test]
    fn seeded_entry_replaced_by_non_matching_event() {
        let mut table = ProcessTable::new();
        table.seed(vec![snapshot(
            500,
            1,
            coarse(100),
            "/usr/bin/secret",
            &["secret", "--pw"],
        )]);
        let new = table.on_fork(500, exact(103), 1, exact(1)).clone();
        assert_eq!(new.start_time_ns, exact(103));
        assert_eq!(new.exe, None);
        assert!(new.args.is_empty());
        assert!(!new.from_scan);
        let old = table.get(500, coarse(100)).cloned();
        assert!(old.is_some_and(|p| p.exited.is_some() && p.args == ["secret", "--pw"]));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn seeded_exit_is_refined_and_found() {
        let mut table = ProcessTable::new();
        table.seed(vec![snapshot(500, 1, coarse(100), "/usr/bin/x", &["x"])]);
        let gone = table
            .on_exit(500, exact(100), exact(300), Some(0), None)
            .cloned();
        assert_eq!(gone.map(|p| p.start_time_ns), Some(exact(100)));
        assert!(table.get(500, coarse(100)).is_some());
        assert!(table.is_empty());
    }

    #[test]
    fn seed_fills_container() {
        let mut table = ProcessTable::new();
        let mut s = snapshot(7, 1, coarse(5), "/app", &["app"]);
        s.cgroup_path = Some(
            "/kubepods/besteffort/pod0a1b2c3d-4e5f-6789-abcd-ef0123456789/\
             4f1e2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8"
                .to_owned(),
        );
        table.seed(vec![s]);
        let container = table.get_by_tgid(7).and_then(|p| p.container.clone());
        assert_eq!(container.map(|c| c.runtime), Some("containerd"));
    }

    #[test]
    fn seed_keeps_what_events_said() {
        let mut table = ProcessTable::new();
        table.on_exec(exec(600, exact(100), "/bin/exact", &["exact"]));
        table.on_exec(exec(601, exact(400), "/bin/newer", &["newer"]));
        table.seed(vec![
            snapshot(600, 1, coarse(100), "/bin/scan", &["scan"]),
            snapshot(601, 1, coarse(100), "/bin/older", &["older"]),
        ]);
        assert_eq!(
            table
                .get_by_tgid(600)
                .and_then(|p| p.exe.clone())
                .as_deref(),
            Some("/bin/exact")
        );
        assert_eq!(
            table
                .get_by_tgid(601)
                .and_then(|p| p.exe.clone())
                .as_deref(),
            Some("/bin/newer")
        );
        assert!(table
            .get(601, coarse(100))
            .is_some_and(|p| p.exited.is_some()));
    }

    #[test]
    fn sweep_drops_old_exited() {
        let mut table = ProcessTable::new();
        table.on_exec(exec(100, exact(10), "/bin/a", &["a"]));
        table.on_exec(exec(101, exact(10), "/bin/b", &["b"]));
        table.on_exit(100, exact(10), 100 * SECOND, Some(0), None);
        table.on_exit(101, exact(10), 120 * SECOND, Some(0), None);
        table.sweep(100 * SECOND + EXIT_GRACE_NS);
        assert_eq!(table.exited_len(), 2);
        table.sweep(100 * SECOND + EXIT_GRACE_NS + 1);
        assert_eq!(table.exited_len(), 1);
        assert!(table.get(100, exact(10)).is_none());
        assert!(table.get(101, exact(10)).is_some());
        table.sweep(200 * SECOND);
        assert_eq!(table.exited_len(), 0);
    }

    #[test]
    fn sweep_drops_exactly_what_expired_in_exit_order() {
        let mut table = ProcessTable::new();
        for tgid in 1..=100u32 {
            table.on_exec(exec(tgid, exact(10), "/bin/x", &["x"]));
            table.on_exit(tgid, exact(10), u64::from(tgid) * SECOND, Some(0), None);
        }
        // Exactly at the grace's end a process is still kept; a nanosecond later it goes.
        table.sweep(40 * SECOND + EXIT_GRACE_NS);
        assert_eq!(table.exited_len(), 61);
        assert!(table.get(39, exact(10)).is_none());
        assert!(table.get(40, exact(10)).is_some());
        table.sweep(40 * SECOND + EXIT_GRACE_NS + 1);
        assert_eq!(table.exited_len(), 60);
        assert!(table.get(40, exact(10)).is_none());
        assert!(table.get(41, exact(10)).is_some());
        assert!(table.get(100, exact(10)).is_some());
        // The same instant again drops nothing more.
        table.sweep(40 * SECOND + EXIT_GRACE_NS + 1);
        assert_eq!(table.exited_len(), 60);
        // An exit event for a process already exited moves its time: it is kept for it.
        table.on_exit(41, exact(10), 90 * SECOND, Some(0), None);
        table.sweep(60 * SECOND + EXIT_GRACE_NS + 1);
        assert!(
            table.get(41, exact(10)).is_some(),
            "within its later exit's grace"
        );
        // Those that exited after it in the order wait for it (at most a grace period more).
        assert_eq!(table.exited_len(), 60);
        table.sweep(90 * SECOND + EXIT_GRACE_NS + 1);
        assert_eq!(table.exited_len(), 10);
        assert!(table.get(41, exact(10)).is_none());
        assert!(table.get(90, exact(10)).is_none());
        assert!(table.get(91, exact(10)).is_some());
        table.sweep(200 * SECOND);
        assert_eq!(table.exited_len(), 0);
        assert!(table.exited_order.is_empty());
    }

    #[test]
    fn exited_set_is_bounded() {
        let mut table = ProcessTable::with_limits(EXIT_GRACE_NS, 3);
        for tgid in 1..=5 {
            table.on_exec(exec(tgid, exact(10), "/bin/x", &["x"]));
            table.on_exit(tgid, exact(10), u64::from(tgid) * SECOND, Some(0), None);
        }
        assert_eq!(table.exited_len(), 3);
        assert!(table.get(1, exact(10)).is_none());
        assert!(table.get(2, exact(10)).is_none());
        assert!(table.get(5, exact(10)).is_some());
        // Sweeping keeps the order list consistent with the map.
        table.sweep(4 * SECOND + EXIT_GRACE_NS + 1);
        assert_eq!(table.exited_len(), 1);
        table.on_exec(exec(6, exact(10), "/bin/x", &["x"]));
        table.on_exit(6, exact(10), 6 * SECOND, Some(0), None);
        assert_eq!(table.exited_len(), 2);
    }

    #[test]
    fn coarse_exited_keys_counted_until_forgotten() {
        let mut table = ProcessTable::with_limits(SECOND, 1);
        table.seed(vec![snapshot(5, 1, coarse(10), "/bin/a", &["a"])]);
        // A younger process with its tgid retires the scanned one under its coarse start.
        table.on_exec(exec(5, exact(20), "/bin/b", &["b"]));
        assert_eq!(table.coarse_exited, 1);
        // Found by its exact start time: the keys around it are searched.
        assert_eq!(
            table.get(5, exact(10)).and_then(|p| p.exe.as_deref()),
            Some("/bin/a")
        );
        // Evicted by the next exit: no coarse key left, the exact look-up alone answers.
        table.on_exit(5, exact(20), exact(30), Some(0), None);
        assert_eq!(table.coarse_exited, 0);
        assert!(table.get(5, exact(10)).is_none());
        assert_eq!(
            table.get(5, exact(20)).and_then(|p| p.exe.as_deref()),
            Some("/bin/b")
        );
    }
}
