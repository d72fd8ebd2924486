//! Host-wide guards on the objects themselves, with fanotify.
//!
//! A guard (`guards.protected_paths`) names files by glob; this module turns the globs into
//! fanotify marks on the inodes they cover and keeps the marks in step with the tree (see
//! [`marks`]). The kernel then raises an event for every open of a guarded file, whatever
//! path, mount, link or interface (io_uring, `open_by_handle_at`) it came through, and for
//! every change to it or to its directory.
//!
//! Threads, none of them a tokio task:
//! - `guard-perm` answers permission events (`FAN_OPEN_PERM`, `FAN_OPEN_EXEC_PERM`) from the
//!   in-memory table and the kernel's WATCHED map: a few system calls per open, never behind
//!   the ring-buffer pipeline. What it decided goes to `guard-report` through a bounded
//!   queue; a full queue loses the report (counted), never the answer.
//! - `guard-report` names the file and the process and hands the event to the pipeline.
//! - `guard-notify` reads the notification group: marks new files and directories, follows
//!   a root that is moved or replaced, reports changes, counts queue overflows.
//!
//! Events go to the pipeline's reader ([`crate::pipeline::read_ring`]), which takes them
//! before each ring-buffer drain: the exec that started a process reaches the process table
//! before the guard event that process caused.

pub mod marks;
mod sys;

use std::{
    collections::HashMap,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError},
        Arc, Mutex, RwLock,
    },
    thread::JoinHandle,
    time::Instant,
};

use aya::maps::{HashMap as BpfHashMap, IterableMap, Map, MapData};
use monitor_common::{EventKind, WatchEntry, WATCH_CANDIDATE, WATCH_GUARD_READER};
use tracing::{debug, info, warn};

use crate::event::GuardHit;
use crate::{
    config::{
        glob::Glob,
        profile::{join_args, Subject},
        Config,
    },
    event::{clock::BootClock, Access, Event, File, FileOp, Header},
    host::procfs,
};
use marks::{covering, join, open_at, InodeId, Marker, Table};
use sys::{FsId, Group, Record, DISCOVER_MASK};

/// `monitor.enforcement.mechanism` of what the guards do.
pub const MECHANISM: &str = "fanotify";

/// Reports waiting between the answering thread and the reporting thread.
const REPORT_QUEUE: usize = 8192;
/// Guard events waiting for the pipeline's reader.
pub const EVENT_QUEUE: usize = 16384;

/// Where the guards' events go: the ring-buffer reader, which takes them at its drains and,
/// while it sleeps without its timer, wakes for them (a tokio channel: a send from a guard
/// thread wakes the reader only when it waits on it).
pub type GuardEvents = tokio::sync::mpsc::Sender<Event>;
/// Most entries the start-up discovery visits below each of [`DISCOVERY_ROOTS`].
const DISCOVERY_BUDGET: usize = 500_000;
/// Allowed reads remembered as reported, before the set starts over.
const REPORTED_MAX: usize = 65_536;
/// How often the threads look at the stop flag while idle.
const POLL_MS: libc::c_int = 200;

/// Counters the pipeline reports as losses.
#[derive(Default)]
pub struct GuardCounters {
    /// `FAN_Q_OVERFLOW` records: the kernel dropped notification events.
    pub overflow: AtomicU64,
    /// Guard events dropped because a queue towards the pipeline was full.
    pub queue_full: AtomicU64,
    /// Permission events answered, and the time spent answering them (ns).
    pub answered: AtomicU64,
    pub answer_ns: AtomicU64,
}

/// A glob that matches anywhere (`**/*.gguf`), found by the names files get.
struct Discovery {
    glob: Glob,
    /// One glob per literal or wildcard component: a new name matching none of them cannot
    /// start or complete a match.
    components: Vec<Glob>,
}

struct Shared {
    config: Arc<Config>,
    content: Group,
    notify: Group,
    table: RwLock<Table>,
    mounts: Mutex<HashMap<FsId, OwnedFd>>,
    discovery: Vec<Discovery>,
    stop: AtomicBool,
    /// When the answering thread last read each refused process from /proc.
    snapshots: Mutex<HashMap<u32, Instant>>,
    counters: Arc<GuardCounters>,
    dry_run: bool,
    self_tgid: u32,
    events: GuardEvents,
}

/// The running guard subsystem for one configuration.
pub struct Guards {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// Where discovery for globs that match anywhere looks at start-up (the usual homes and
/// data roots); afterwards, new names anywhere on their file systems are seen.
const DISCOVERY_ROOTS: &[&str] = &[
    "/root",
    "/home",
    "/var/lib",
    "/opt",
    "/srv",
    "/data",
    "/models",
    "/mnt",
    "/usr/share",
];

impl Guards {
    /// Marks what `config` guards and starts the threads. `watched` is a second handle on
    /// the kernel's WATCHED map (profile ids by tgid).
    pub fn start(
        config: Arc<Config>,
        watched: &BpfHashMap<MapData, u32, WatchEntry>,
        events: GuardEvents,
        counters: Arc<GuardCounters>,
        dry_run: bool,
    ) -> anyhow::Result<Guards> {
        use anyhow::Context as _;
        let started = Instant::now();
        let content = Group::content().context(
            "failed to start fanotify for the guards (fanotify_init FAN_CLASS_CONTENT): the kernel needs CONFIG_FANOTIFY_ACCESS_PERMISSIONS and the monitor CAP_SYS_ADMIN",
        )?;
        let notify = Group::notification().context(
            "failed to start fanotify for the guards (fanotify_init FAN_REPORT_DFID_NAME): the kernel needs 5.9 or later",
        )?;
        let watched = second_handle(watched)?;
        let discovery = discovery_globs(&config);
        let shared = Arc::new(Shared {
            config,
            content,
            notify,
            table: RwLock::new(Table::default()),
            mounts: Mutex::new(HashMap::new()),
            discovery,
            stop: AtomicBool::new(false),
            snapshots: Mutex::new(HashMap::new()),
            counters,
            dry_run,
            self_tgid: std::process::id(),
            events,
        });
        let failures = shared.mark_all();
        {
            let table = shared.table.read().unwrap_or_else(|e| e.into_inner());
            info!(
                inodes = table.inodes.len(),
                roots = table.roots.len(),
                failures,
                discovery = shared.discovery.len(),
                elapsed = ?started.elapsed(),
                one_group = Group::content_with_names_supported(),
                "guards marked with fanotify"
            );
        }
        let (report_tx, report_rx) = std::sync::mpsc::sync_channel(REPORT_QUEUE);
        let mut threads = Vec::new();
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("guard-perm".into())
                .spawn(move || s.answer_loop(&mut { watched }, &report_tx))?,
        );
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("guard-report".into())
                .spawn(move || s.report_loop(&report_rx))?,
        );
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("guard-notify".into())
                .spawn(move || s.notify_loop())?,
        );
        Ok(Guards { shared, threads })
    }

    /// Roots that were replaced or appeared since they were marked (an ancestor moved, a
    /// root created later): marks them. Call it every few seconds.
    pub fn verify(&self) {
        self.shared.verify();
    }

    /// Stops the threads and closes the groups: opens waiting for an answer are allowed by
    /// the kernel when the group's fd closes.
    pub fn stop(self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// A handle of our own on a map the pipeline also uses (the answering thread reads it).
fn second_handle(
    map: &BpfHashMap<MapData, u32, WatchEntry>,
) -> anyhow::Result<BpfHashMap<MapData, u32, WatchEntry>> {
    use std::os::fd::AsFd as _;
    let fd = map.map().fd().as_fd().try_clone_to_owned()?;
    let data = MapData::from_fd(fd)?;
    Ok(BpfHashMap::try_from(Map::HashMap(data))?)
}

fn discovery_globs(config: &Config) -> Vec<Discovery> {
    let mut out = Vec::new();
    for guard in &config.guards.protected_paths {
        for glob in &guard.paths {
            if marks::glob_root(glob.as_str()).is_some() {
                continue;
            }
            let Ok(whole) = Glob::new(glob.as_str()) else {
                continue;
            };
            let components = glob
                .as_str()
                .split('/')
                .filter(|c| !c.is_empty() && *c != "**")
                .filter_map(|c| Glob::new(c).ok())
                .collect();
            out.push(Discovery {
                glob: whole,
                components,
            });
        }
    }
    out
}

/// Puts the answering thread ahead of ordinary work (every open of a guarded file waits for
/// it): `SCHED_FIFO` priority 1 where allowed, else the lowest nice value allowed. Its work
/// per event is bounded and it sleeps between events, so it cannot starve the host.
fn raise_priority() {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: this thread (0), a valid sched_param.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } == 0 {
        debug!("guard-perm runs SCHED_FIFO 1");
        return;
    }
    // SAFETY: this thread's nice value.
    let tid = unsafe { libc::gettid() } as libc::id_t;
    // SAFETY: plain system call on this thread.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, -10) } != 0 {
        debug!(
            "failed to raise the answering thread's priority: {}",
            io::Error::last_os_error()
        );
    }
}

/// How a thread blocked in an open syscall asked for the file, from `/proc/TID/syscall`.
/// `None` when it cannot be told (io_uring workers, a thread gone).
fn open_access(tid: u32) -> Option<Access> {
    let text = std::fs::read_to_string(format!("/proc/{tid}/syscall")).ok()?;
    let mut fields = text.split_whitespace();
    let nr: i64 = fields.next()?.parse().ok()?;
    let args: Vec<u64> = fields
        .take(6)
        .filter_map(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16).ok())
        .collect();
    let flags = match nr {
        libc::SYS_openat | libc::SYS_open_by_handle_at => *args.get(2)?,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_open => *args.get(1)?,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_creat => (libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC) as u64,
        libc::SYS_openat2 => read_u64(tid, *args.get(2)?)?,
        libc::SYS_execve | libc::SYS_execveat => 0,
        _ => return None,
    } as i32;
    let mode = flags & libc::O_ACCMODE;
    Some(Access {
        read: mode == libc::O_RDONLY || mode == libc::O_RDWR,
        write: mode == libc::O_WRONLY || mode == libc::O_RDWR,
        create: flags & libc::O_CREAT != 0,
        truncate: flags & libc::O_TRUNC != 0,
    })
}

/// Eight bytes of a thread's memory (the `open_how.flags` of an openat2).
fn read_u64(tid: u32, addr: u64) -> Option<u64> {
    use std::os::unix::fs::FileExt as _;
    let mem = std::fs::File::open(format!("/proc/{tid}/mem")).ok()?;
    let mut buf = [0u8; 8];
    mem.read_exact_at(&mut buf, addr).ok()?;
    Some(u64::from_ne_bytes(buf))
}

/// The process a thread belongs to.
fn tgid_of(tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The records one read of `group` returns, once it is readable; `None` when nothing came
/// (the poll timed out, a signal) or the read failed (logged: `what` names the group).
fn read_records(group: &Group, buf: &mut [u8], what: &str) -> Option<Vec<sys::Record>> {
    if !poll_readable(group.raw()) {
        return None;
    }
    let n = match group.read(buf) {
        Ok(n) => n,
        Err(err) if err.kind() == io::ErrorKind::Interrupted => return None,
        Err(err) => {
            warn!("failed to read fanotify {what} events: {err}");
            return None;
        }
    };
    let (records, whole) = sys::parse(&buf[..n]);
    if !whole {
        warn!("a malformed fanotify {what} record: the rest of the read was skipped");
    }
    Some(records)
}

fn poll_readable(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
    rc > 0 && pfd.revents & libc::POLLIN != 0
}

/// What the answering thread tells the reporting thread.
struct PermReport {
    /// The event's fd (set by the loop once the answer is written).
    fd: Option<OwnedFd>,
    time_ns: u64,
    tgid: u32,
    tid: u32,
    path: Option<String>,
    access: Access,
    /// The process, read before the answer when the open breaks a guard.
    process: Option<procfs::ProcSnapshot>,
    inode: Option<InodeId>,
    /// Some guard forbids this open: reported every time (the alert counts repeats).
    alerting: bool,
    hit: GuardHit,
}

impl Shared {
    /// A marker over the guards' configuration and inode table, with the mount table the
    /// caller locked.
    fn marker<'a>(&'a self, mounts: &'a mut HashMap<FsId, OwnedFd>) -> Marker<'a> {
        Marker {
            config: &self.config,
            content: &self.content,
            notify: &self.notify,
            mounts,
            table: &self.table,
            failures: 0,
        }
    }

    fn mark_all(&self) -> usize {
        let mut mounts = self.mounts.lock().unwrap_or_else(|e| e.into_inner());
        let mut marker = self.marker(&mut mounts);
        let mut roots: Vec<String> = self
            .config
            .guards
            .protected_paths
            .iter()
            .flat_map(|g| g.paths.iter())
            .filter_map(|glob| marks::glob_root(glob.as_str()).map(|(root, _)| root))
            .collect();
        roots.sort();
        roots.dedup();
        // A root inside another root is walked with it.
        let nested: Vec<String> = roots
            .iter()
            .filter(|r| {
                roots
                    .iter()
                    .any(|o| o != *r && (o == "/" || r.starts_with(&format!("{o}/"))))
            })
            .cloned()
            .collect();
        for root in &roots {
            if root == "/" {
                warn!("a guard glob rooted at / would mark every file: give a directory");
                continue;
            }
            if nested.contains(root) {
                let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
                table.roots.push(marks::Root {
                    path: root.clone(),
                    inode: None,
                });
                continue;
            }
            marker.mark_root(root);
        }
        if !self.discovery.is_empty() {
            let mut marked_fs = Vec::new();
            for root in DISCOVERY_ROOTS {
                let Ok(dir) = std::fs::File::open(root) else {
                    continue;
                };
                let dir = OwnedFd::from(dir);
                if let Ok(fsid) = sys::fsid(dir.as_raw_fd()) {
                    if !marked_fs.contains(&fsid) {
                        match self.notify.mark(dir.as_raw_fd(), b"", DISCOVER_MASK, true) {
                            Ok(()) => marked_fs.push(fsid),
                            Err(err) => warn!("failed to watch the file system of {root} for new guarded names: {err}"),
                        }
                    }
                    if let (std::collections::hash_map::Entry::Vacant(slot), Ok(copy)) =
                        (marker.mounts.entry(fsid), dir.try_clone())
                    {
                        slot.insert(copy);
                    }
                }
                self.discover_tree(&mut marker, dir, (*root).to_owned());
            }
        }
        marker.failures
    }

    /// Start-up discovery below one root: marks what an anywhere-glob covers.
    fn discover_tree(&self, marker: &mut Marker, dir: OwnedFd, path: String) {
        let mut stack = vec![(dir, path, 0usize)];
        let mut visited = 0usize;
        while let Some((dir, path, depth)) = stack.pop() {
            let fd = dir.as_raw_fd();
            let Ok(list) = dir_entries(fd) else {
                continue;
            };
            for (name, is_dir, is_file) in list {
                visited += 1;
                if visited > DISCOVERY_BUDGET {
                    warn!("start-up discovery below {path} stopped after {DISCOVERY_BUDGET} entries; files there that match a guard glob are guarded once a name below them changes");
                    return;
                }
                let child = join(&path, &name);
                if self.discovery.iter().any(|d| d.glob.matches(&child)) {
                    if is_dir {
                        if let Ok(sub) = open_at(fd, &name, libc::O_RDONLY | libc::O_DIRECTORY) {
                            marker.mark_tree(sub, child.clone());
                        }
                        continue;
                    }
                    if is_file {
                        marker.mark_file(fd, &name, &child);
                    }
                }
                if is_dir && depth < 64 {
                    if let Ok(sub) = open_at(fd, &name, libc::O_RDONLY | libc::O_DIRECTORY) {
                        stack.push((sub, child, depth + 1));
                    }
                }
            }
        }
    }

    fn verify(&self) {
        let roots: Vec<marks::Root> = {
            let table = self.table.read().unwrap_or_else(|e| e.into_inner());
            table.roots.clone()
        };
        for root in roots {
            let Ok(dir) = std::fs::File::open(&root.path) else {
                continue;
            };
            let Ok((dev, ino, true)) = sys::fstat(dir.as_raw_fd()) else {
                continue;
            };
            let known = {
                let table = self.table.read().unwrap_or_else(|e| e.into_inner());
                table.inodes.get(&(dev, ino)).is_some_and(|e| e.dir)
            };
            if !known {
                info!(root = %root.path, "guard root is new or was replaced: marking it");
                let mut mounts = self.mounts.lock().unwrap_or_else(|e| e.into_inner());
                let mut marker = self.marker(&mut mounts);
                marker.mark_root(&root.path);
            }
        }
    }

    /// The `guard-perm` thread.
    fn answer_loop(
        &self,
        watched: &mut BpfHashMap<MapData, u32, WatchEntry>,
        reports: &SyncSender<PermReport>,
    ) {
        let mut buf = vec![0u8; 64 * 1024];
        raise_priority();
        // Allowed reads already reported, per process and inode: the rules need the first
        // (a later connect may be exfiltration), not every reopen of a model shard.
        let mut reported: std::collections::HashSet<(u32, InodeId)> =
            std::collections::HashSet::new();
        while !self.stop.load(Ordering::Relaxed) {
            let Some(records) = read_records(&self.content, &mut buf, "permission") else {
                continue;
            };
            for record in records {
                if record.fd < 0 {
                    continue;
                }
                // SAFETY: the kernel gave us this fd with the event; we own it now.
                let fd = unsafe { OwnedFd::from_raw_fd(record.fd) };
                let started = Instant::now();
                // A bug here must not leave the opener waiting forever (the kernel only
                // gives up on the event when the group closes): a panic answers ALLOW, as
                // the kernel would if the daemon died, and is logged.
                let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.answer(&fd, &record, watched)
                }));
                let answered = match answered {
                    Ok(report) => report,
                    Err(_) => {
                        warn!("the guard's answering code panicked: this open was allowed");
                        let _ = self.content.respond(fd.as_raw_fd(), true);
                        None
                    }
                };
                let report = answered.map(|report| PermReport {
                    fd: Some(fd),
                    ..report
                });
                let report = report.filter(|report| {
                    let quiet = !report.alerting;
                    match report.inode {
                        Some(inode) if quiet => {
                            if reported.len() >= REPORTED_MAX {
                                reported.clear();
                            }
                            reported.insert((report.tgid, inode))
                        }
                        _ => true,
                    }
                });
                let spent = started.elapsed().as_nanos() as u64;
                self.counters.answered.fetch_add(1, Ordering::Relaxed);
                self.counters.answer_ns.fetch_add(spent, Ordering::Relaxed);
                if let Some(report) = report {
                    if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
                        reports.try_send(report)
                    {
                        self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    /// Decides one permission event and answers it; returns what to report.
    fn answer(
        &self,
        fd: &OwnedFd,
        record: &Record,
        watched: &mut BpfHashMap<MapData, u32, WatchEntry>,
    ) -> Option<PermReport> {
        let time_ns = BootClock::boot_now_ns();
        let tid = record.pid.max(0) as u32;
        let allow = |fd: &OwnedFd| {
            if let Err(err) = self.content.respond(fd.as_raw_fd(), true) {
                warn!("failed to answer a fanotify permission event: {err}");
            }
        };
        if tid == 0 {
            allow(fd);
            return None;
        }
        let tgid = tgid_of(tid).unwrap_or(tid);
        if tgid == self.self_tgid {
            allow(fd);
            return None;
        }
        let key = sys::fstat(fd.as_raw_fd()).ok().map(|(d, i, _)| (d, i));
        let entry = key.and_then(|key| {
            let table = self.table.read().unwrap_or_else(|e| e.into_inner());
            table.inodes.get(&key).filter(|e| !e.dir).cloned()
        });
        let (guards, path) = match entry {
            Some(entry) => (entry.guards, Some(entry.path)),
            // A file created below a whole-tree guard before its own mark went in.
            None => {
                let path = sys::fd_path(fd.as_raw_fd());
                (
                    path.as_deref()
                        .map(|p| covering(&self.config, p))
                        .unwrap_or_default(),
                    path,
                )
            }
        };
        if guards.is_empty() {
            allow(fd);
            return None;
        }
        let exec = record.mask & libc::FAN_OPEN_EXEC_PERM != 0;
        let (access, unknown) = if exec {
            (
                Access {
                    read: true,
                    ..Access::default()
                },
                false,
            )
        } else {
            // Unknown (an io_uring open, done by the submitting task or an io-wq worker,
            // whose flags are in the ring, not in a syscall): judged as a read, so that a
            // profile allowed to read keeps working through io_uring; a write through
            // that fd still raises FAN_MODIFY, reported as `protected-file-write`.
            match open_access(tid) {
                Some(access) => (access, false),
                None => (
                    Access {
                        read: true,
                        ..Access::default()
                    },
                    true,
                ),
            }
        };
        let profile = self.profile_of(tgid, watched);
        let name = profile
            .and_then(|id| self.config.profile(id))
            .map(|p| p.name.as_str());
        let may = |names: &[String]| name.is_some_and(|n| names.iter().any(|m| m == n));
        let writes = access.modifies();
        let reads = access.read || !writes;
        let forbidding: Vec<bool> = guards
            .iter()
            .filter_map(|&i| self.config.guards.protected_paths.get(i as usize))
            .filter(|g| (writes && !may(&g.write)) || (reads && !may(&g.read)))
            .map(|g| g.enforce)
            .collect();
        let enforcing = forbidding.iter().any(|e| *e);
        let deny = enforcing && !self.dry_run;
        // A process that reads a guarded file is watched from now on (before its open
        // returns, so its next connect is seen): `model-exfiltration` needs its connects.
        // Only where it has no entry: a governed process keeps its own.
        if reads && !deny && profile.is_none() {
            let entry = WatchEntry {
                reason: WATCH_GUARD_READER,
                profile: 0,
                generation: 0,
                _pad: 0,
            };
            const BPF_NOEXIST: u64 = 1;
            if let Err(err) = watched.insert(tgid, entry, BPF_NOEXIST) {
                debug!("failed to watch reader {tgid} of a guarded file: {err}");
            }
        }
        // The alert names the process: read it while it waits for this answer (a refused
        // process may be gone by the time the report is written).
        // A process refused again within a second is in the process table by now: the
        // repeat costs no /proc reads (a reader hammering a guarded file must not slow the
        // answers to everyone else).
        let fresh = !forbidding.is_empty() && {
            let mut seen = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
            if seen.len() >= REPORTED_MAX {
                seen.clear();
            }
            let now = Instant::now();
            match seen.insert(tgid, now) {
                Some(then) => now.duration_since(then) > std::time::Duration::from_secs(1),
                None => true,
            }
        };
        let process = fresh.then(|| procfs::read_process(tgid).ok()).flatten();
        if let Err(err) = self.content.respond(fd.as_raw_fd(), !deny) {
            warn!("failed to answer a fanotify permission event: {err}");
        }
        Some(PermReport {
            fd: None,
            time_ns,
            tgid,
            tid,
            path,
            access,
            process,
            inode: key,
            alerting: !forbidding.is_empty(),
            hit: GuardHit {
                guards,
                profile,
                judged: true,
                denied: deny,
                would_deny: enforcing && self.dry_run,
                access_unknown: unknown,
                exe: None,
            },
        })
    }

    /// The profile governing a process now. The kernel's WATCHED entry holds it from the
    /// moment user space governs the process, and a child inherits it at fork in the
    /// kernel, so it is right without waiting for the pipeline. One gap: a process that
    /// just exec'd a candidate executable (reason `WATCH_CANDIDATE`) has no profile there
    /// until user space has read its exec; for it (and its children meanwhile) the selector
    /// is applied here to what `/proc` shows, which is the process as it is at this open.
    fn profile_of(&self, tgid: u32, watched: &BpfHashMap<MapData, u32, WatchEntry>) -> Option<u32> {
        let entry = watched.get(&tgid, 0).ok()?;
        if entry.profile != 0 {
            return Some(entry.profile);
        }
        if entry.reason & 0xff != WATCH_CANDIDATE {
            return None;
        }
        let mut pid = tgid;
        for _ in 0..8 {
            let process = procfs::read_process(pid).ok()?;
            let args = join_args(&process.args);
            let subject = Subject {
                exe: process.exe.as_deref(),
                args: &args,
                cgroup: process.cgroup_path.as_deref(),
                // The guard thread reads /proc, not the table: workload keys match nothing
                // here, and the pipeline governs such a process once its metadata arrives.
                container: None,
            };
            if let Some(profile) = self.config.select(&subject) {
                return Some(profile.id);
            }
            let parent = watched.get(&process.ppid, 0).ok()?;
            if parent.profile != 0 {
                return Some(parent.profile);
            }
            pid = process.ppid;
        }
        None
    }

    /// The `guard-report` thread.
    fn report_loop(&self, reports: &Receiver<PermReport>) {
        while !self.stop.load(Ordering::Relaxed) {
            let Ok(report) = reports.recv_timeout(std::time::Duration::from_millis(POLL_MS as u64))
            else {
                continue;
            };
            let path = report
                .fd
                .as_ref()
                .and_then(|fd| sys::fd_path(fd.as_raw_fd()));
            drop(report.fd);
            let (path, truncated) = match (path, report.path) {
                (Some(now), _) => (now, false),
                (None, Some(marked)) => (marked, false),
                (None, None) => (String::new(), true),
            };
            let result = if report.hit.denied { -1 } else { 0 };
            // An allowed open raises no alert: the table names the process, no /proc reads.
            let process = report.process;
            self.send(
                report.time_ns,
                (report.tgid, report.tid, process),
                FileOp::Open,
                path,
                truncated,
                report.access,
                result,
                report.hit,
            );
        }
    }

    #[expect(clippy::too_many_arguments, reason = "one event's fields")]
    fn send(
        &self,
        time_ns: u64,
        (tgid, tid, process): (u32, u32, Option<procfs::ProcSnapshot>),
        op: FileOp,
        path: String,
        path_truncated: bool,
        access: Access,
        result: i64,
        mut hit: GuardHit,
    ) {
        hit.exe = process.as_ref().and_then(|p| p.exe.clone());
        let event = Event::File(File {
            header: Header {
                kind: EventKind::File,
                time_ns,
                tgid,
                pid: tid,
                start_time_ns: process.map_or(0, |p| p.start_time_ns),
                watched: false,
            },
            op,
            path,
            path_truncated,
            target: None,
            access,
            result,
            protected: true,
            known: None,
            raw: crate::event::RawNames::default(),
            guard: Some(hit),
            unverified: false,
        });
        if self.events.try_send(event).is_err() {
            self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The `guard-notify` thread.
    fn notify_loop(&self) {
        let mut buf = vec![0u8; 64 * 1024];
        while !self.stop.load(Ordering::Relaxed) {
            let Some(records) = read_records(&self.notify, &mut buf, "notification") else {
                continue;
            };
            for record in records {
                if record.fd >= 0 {
                    // SAFETY: an fd the kernel gave us with the event: closed here.
                    drop(unsafe { OwnedFd::from_raw_fd(record.fd) });
                }
                if record.mask & libc::FAN_Q_OVERFLOW != 0 {
                    self.counters.overflow.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                self.on_notify(&record);
            }
        }
    }

    fn open_handle(&self, fsid: &FsId, handle: &[u8]) -> Option<OwnedFd> {
        let mounts = self.mounts.lock().unwrap_or_else(|e| e.into_inner());
        let mount = mounts.get(fsid)?;
        sys::open_handle(mount.as_raw_fd(), handle, libc::O_PATH).ok()
    }

    fn on_notify(&self, record: &Record) {
        let time_ns = BootClock::boot_now_ns();
        let mask = record.mask;
        let mut child_path = None;
        let mut dir_fd = None;
        if let Some((fsid, handle, name)) = &record.dir {
            let dir = self.open_handle(fsid, handle);
            let dir_key = dir
                .as_ref()
                .and_then(|fd| sys::fstat(fd.as_raw_fd()).ok())
                .map(|(d, i, _)| (d, i));
            let (dir_entry, roots) = {
                let table = self.table.read().unwrap_or_else(|e| e.into_inner());
                (
                    dir_key.and_then(|k| table.inodes.get(&k).cloned()),
                    dir_key
                        .and_then(|k| table.parents.get(&k).cloned())
                        .unwrap_or_default(),
                )
            };
            // Discovery events come for every new name on a file system: the name must
            // fit some anywhere-glob before anything costs a system call more.
            let interesting = dir_entry.is_some()
                || roots.iter().any(|(n, _)| n == name)
                || (!name.is_empty() && self.discovery_name(name));
            if !interesting {
                return;
            }
            let dir_path = match &dir_entry {
                Some(entry) => Some(entry.path.clone()),
                None => dir.as_ref().and_then(|fd| sys::fd_path(fd.as_raw_fd())),
            };
            if let Some(dir_path) = dir_path {
                child_path = Some(if name.is_empty() {
                    dir_path
                } else {
                    join(&dir_path, name)
                });
            }
            if mask & (libc::FAN_CREATE | libc::FAN_MOVED_TO) != 0 && !name.is_empty() {
                if let (Some(dir), Some(child)) = (&dir, &child_path) {
                    self.follow_new(
                        dir.as_raw_fd(),
                        name,
                        child,
                        mask,
                        &roots,
                        dir_entry.is_some(),
                    );
                }
            }
            dir_fd = dir;
        }
        drop(dir_fd);
        if record.pid as u32 == self.self_tgid || record.pid <= 0 {
            return;
        }
        let object_key: Option<InodeId> = record
            .object
            .as_ref()
            .and_then(|(fsid, handle)| self.open_handle(fsid, handle))
            .and_then(|fd| sys::fstat(fd.as_raw_fd()).ok())
            .map(|(d, i, _)| (d, i));
        let entry = object_key.and_then(|k| {
            let table = self.table.read().unwrap_or_else(|e| e.into_inner());
            table.inodes.get(&k).cloned()
        });
        let (path, guards) = match (&child_path, &entry) {
            (Some(path), _) => {
                let mut guards = covering(&self.config, path);
                if guards.is_empty() && mask & (libc::FAN_MODIFY | libc::FAN_ATTRIB) != 0 {
                    guards = entry.as_ref().map(|e| e.guards.clone()).unwrap_or_default();
                }
                (path.clone(), guards)
            }
            (None, Some(entry)) => (entry.path.clone(), entry.guards.clone()),
            (None, None) => return,
        };
        // A directory's own entry guards its children, not itself: changes to a directory
        // count when a guard covers the directory's path.
        let guards = if entry.as_ref().is_some_and(|e| e.dir) && child_path.is_none() {
            covering(&self.config, &path)
        } else {
            guards
        };
        if guards.is_empty() {
            return;
        }
        // The kernel merges events of one process on one name (a directory moved away and
        // one made in its place is one record, FAN_MOVED_FROM | FAN_CREATE): the move or
        // removal of what was guarded is what the alert names.
        let op = if mask & (libc::FAN_MOVED_FROM | libc::FAN_MOVED_TO | libc::FAN_MOVE_SELF) != 0 {
            FileOp::Rename
        } else if mask & (libc::FAN_DELETE | libc::FAN_DELETE_SELF) != 0 {
            FileOp::Unlink
        } else if mask & libc::FAN_CREATE != 0 {
            FileOp::Open
        } else if mask & libc::FAN_MODIFY != 0 {
            FileOp::Modify
        } else if mask & libc::FAN_ATTRIB != 0 {
            FileOp::Chmod
        } else {
            return;
        };
        let access = Access {
            read: false,
            write: true,
            create: op == FileOp::Open,
            truncate: false,
        };
        let hit = GuardHit {
            guards,
            profile: None,
            judged: false,
            denied: false,
            would_deny: false,
            access_unknown: false,
            exe: None,
        };
        let tgid = record.pid as u32;
        let process = procfs::read_process(tgid).ok();
        self.send(
            time_ns,
            (tgid, tgid, process),
            op,
            path,
            false,
            access,
            0,
            hit,
        );
    }

    fn discovery_name(&self, name: &[u8]) -> bool {
        let name = String::from_utf8_lossy(name);
        self.discovery
            .iter()
            .any(|d| d.components.iter().any(|c| c.matches(&name)))
    }

    /// A name that appeared in a watched directory: mark it if it is guarded (a file), walk
    /// it (a directory), or mark it as the new root it replaces.
    fn follow_new(
        &self,
        dir: RawFd,
        name: &[u8],
        child: &str,
        mask: u64,
        roots: &[(Vec<u8>, String)],
        in_tree: bool,
    ) {
        let mut mounts = self.mounts.lock().unwrap_or_else(|e| e.into_inner());
        let mut marker = self.marker(&mut mounts);
        if let Some((_, root)) = roots.iter().find(|(n, _)| n == name) {
            debug!(%root, "a guard root was created or moved in: marking it");
            marker.mark_root(root);
            return;
        }
        if mask & libc::FAN_ONDIR != 0 {
            let discovered = self.discovery.iter().any(|d| d.glob.matches(child));
            if in_tree && marks::may_hold(&self.config, child) || discovered {
                if let Ok(sub) = open_at(dir, name, libc::O_RDONLY | libc::O_DIRECTORY) {
                    marker.mark_tree(sub, child.to_owned());
                }
            }
        } else {
            marker.mark_file(dir, name, child);
        }
    }
}

/// Entries of a directory (shared with [`marks`]).
fn dir_entries(fd: RawFd) -> io::Result<Vec<(Vec<u8>, bool, bool)>> {
    marks::entries(fd)
}

/// The guards of the configuration in force, replaced whole at a reload (the new marks are
/// in before the old groups close, so nothing is unguarded in between).
pub struct GuardService {
    events: GuardEvents,
    counters: Arc<GuardCounters>,
    dry_run: bool,
    current: Option<Guards>,
}

impl GuardService {
    pub fn new(events: GuardEvents, counters: Arc<GuardCounters>, dry_run: bool) -> Self {
        GuardService {
            events,
            counters,
            dry_run,
            current: None,
        }
    }

    /// Guards what `config` guards. On failure the guards in force stay.
    pub fn apply(
        &mut self,
        config: Arc<Config>,
        watched: &BpfHashMap<MapData, u32, WatchEntry>,
    ) -> anyhow::Result<()> {
        if config.guards.protected_paths.is_empty() {
            if let Some(old) = self.current.take() {
                old.stop();
            }
            return Ok(());
        }
        let new = Guards::start(
            config,
            watched,
            self.events.clone(),
            self.counters.clone(),
            self.dry_run,
        )?;
        if let Some(old) = self.current.replace(new) {
            old.stop();
        }
        Ok(())
    }

    pub fn verify(&self) {
        if let Some(guards) = &self.current {
            guards.verify();
        }
    }

    /// Permission events answered so far and their mean answer time.
    pub fn answered(&self) -> (u64, u64) {
        let n = self.counters.answered.load(Ordering::Relaxed);
        let ns = self.counters.answer_ns.load(Ordering::Relaxed);
        (n, ns.checked_div(n).unwrap_or(0))
    }

    pub fn stop(&mut self) {
        if let Some(old) = self.current.take() {
            old.stop();
        }
    }
}
