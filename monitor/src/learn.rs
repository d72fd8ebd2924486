//! Learning mode (`monitor learn`): watch what selected processes and their descendants
//! really do, then write a profile that allows exactly that, in the format `monitor run`
//! reads.
//!
//! ```text
//! monitor learn --select 'exe=/usr/bin/python3*,args=*vllm*' --duration 10m --out vllm.yaml
//! monitor learn --pid 4242 --out server.yaml              # until Ctrl-C
//! monitor learn --merge vllm.yaml --duration 1h --out vllm.yaml   # extend a profile
//! ```
//!
//! The daemon runs in [`Mode::Observe`] with a `Learner` as its observer: the learner
//! picks the processes (those already running that match, those that exec into a match
//! later, `--pid`), follows their descendants by identity (tgid and start time), and counts
//! what they do. What it counts is generalised into rules by [`generalise`] and written by
//! [`render`] with a comment header and each rule's number of observations.
//!
//! What becomes a rule is what `monitor run` checks: each event is classified by the rules'
//! own classifier ([`crate::event::classify`]): an open is a read unless it may change the
//! file, and also a read when it reads; every other file operation is a write; failed opens
//! of missing paths are probes; TCP listens and UDP binds are `listen`; connects and UDP
//! sends `connect`; unix socket connects, sends and binds `unix`; execs that leave the
//! selector `exec`; any io_uring use `io_uring`.
//!
//! Learning then widens a little, so that the profile survives the next run: a path the
//! processes wrote is also readable (a cache written on the first run is read on the
//! second), and a listening port is widened to the ephemeral range only when the kernel
//! chose it (a `bind` to port 0, or none), never when the process asked for it.

pub mod generalise;
pub mod render;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context as _};
use clap::Args;
use tracing::{info, warn};

use crate::{
    config::{
        glob::Glob,
        profile::{self, join_args, ArgsGlob, PathGlob, Profile, Selector, Subject},
    },
    daemon::{CommonArgs, Plan},
    event::{
        alert::Alert,
        classify::{file_use, is_probe, net_use, FileUse, NetUse},
        Device, DeviceClass, Event, File, Net, NetOp,
    },
    host::process::{same_start, Process, ProcessTable},
    output::sink::AlertSink,
    pipeline::{Mode, Observer, WatchSelectors},
};
use generalise::{Counted, PathContext};
use render::{Draft, Item, SelectorText};

/// Most distinct paths (or addresses) kept per list; past it, a new path is kept as its
/// directory's `dir/**`, so that a process that makes endless new names cannot exhaust memory.
const MAX_DISTINCT: usize = 100_000;

/// `monitor learn` arguments.
#[derive(Args, Debug)]
pub struct LearnArgs {
    /// Which processes to learn, as `exe=GLOB,args=GLOB,cgroup=GLOB`: keys are ANDed, a key
    /// given twice is ORed, any may be left out (the profile's selector is made of them).
    /// Processes running now that match are learned, and those that start later.
    #[arg(long, value_name = "exe=GLOB,args=GLOB,cgroup=GLOB")]
    pub select: Option<String>,
    /// Learn this running process and its descendants (repeatable). Without --select the
    /// selector is made from its executable and a distinctive argument.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// How long to learn: `30s`, `10m`, `1h`, `1h30m`. Without it, until Ctrl-C (which also
    /// ends a timed learning early; the profile is written either way).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,
    /// Write the profile here.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// The profile's name (default: the --merge profile's, else the --out file's stem).
    #[arg(long)]
    pub name: Option<String>,
    /// Extend this profile: keep its selector, mode and rules, add what is learned. Without
    /// --select, the processes it selects are learned (and the --pid ones).
    #[arg(long, value_name = "PROFILE")]
    pub merge: Option<PathBuf>,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Parses `30s`, `10m`, `1h` and sums like `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!("invalid duration \"{text}\": expected a number and a unit (s, m, h), e.g. 30s, 10m, 1h, 1h30m")
    };
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(invalid()),
        };
        let value: u64 = digits.parse().map_err(|_| invalid())?;
        total = value
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(invalid)?;
        digits.clear();
    }
    if !digits.is_empty() || text.trim().is_empty() {
        return Err(invalid());
    }
    if total == 0 {
        return Err(format!(
            "invalid duration \"{text}\": it must be longer than 0s"
        ));
    }
    Ok(Duration::from_secs(total))
}

/// `1h 2m 3s`.
fn human(duration: Duration) -> String {
    let secs = duration.as_secs();
    match (secs / 3600, secs % 3600 / 60, secs % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m {s}s"),
        (h, m, s) => format!("{h}h {m}m {s}s"),
    }
}

/// Parses `--select`: `key=GLOB` items separated by `,`; a `,` not followed by a key belongs
/// to the glob.
pub fn parse_select(text: &str) -> Result<SelectorText, String> {
    const KEYS: [&str; 3] = ["exe=", "args=", "cgroup="];
    let mut items: Vec<String> = Vec::new();
    for piece in text.split(',') {
        match items.last_mut() {
            Some(last) if !KEYS.iter().any(|k| piece.starts_with(k)) => {
                last.push(',');
                last.push_str(piece);
            }
            _ => items.push(piece.to_owned()),
        }
    }
    let mut selector = SelectorText::default();
    for item in items {
        let Some((key, glob)) = item.split_once('=') else {
            return Err(format!(
                "invalid --select \"{text}\": expected exe=GLOB, args=GLOB or cgroup=GLOB, got \"{item}\""
            ));
        };
        if glob.is_empty() {
            return Err(format!("invalid --select \"{text}\": {key}= has no glob"));
        }
        match key {
            "exe" => selector.executables.push(glob.to_owned()),
            "args" => selector.args.push(glob.to_owned()),
            "cgroup" => selector.cgroups.push(glob.to_owned()),
            _ => {
                return Err(format!(
                "invalid --select \"{text}\": unknown key \"{key}\" (expected exe, args or cgroup)"
            ))
            }
        }
    }
    compile(&selector).map_err(|err| format!("invalid --select \"{text}\": {err}"))?;
    Ok(selector)
}

/// The selector as `monitor run` will compile it.
pub fn compile(text: &SelectorText) -> Result<Selector, String> {
    let path = |key: &str, glob: &str| {
        if !(glob.starts_with('/') || glob.starts_with("**")) {
            return Err(format!(
                "{key} glob \"{glob}\" must start with \"/\" or \"**\": paths are absolute"
            ));
        }
        PathGlob::new(glob).map_err(|err| format!("invalid {key} glob: {err}"))
    };
    Ok(Selector {
        executables: text
            .executables
            .iter()
            .map(|g| path("exe", g))
            .collect::<Result<_, _>>()?,
        args: text
            .args
            .iter()
            .map(|g| ArgsGlob::new(g).map_err(|err| format!("invalid args glob: {err}")))
            .collect::<Result<_, _>>()?,
        cgroups: text
            .cgroups
            .iter()
            .map(|g| path("cgroup", g))
            .collect::<Result<_, _>>()?,
        ..Selector::default()
    })
}

/// An argument glob that tells this program apart: `*-m MODULE*` for `python -m MODULE`,
/// else the first argument that is not an option (its file name when it is a path), as in
/// `*fake_server.py*`. `None` when there is none.
pub fn distinctive_args(args: &[String]) -> Option<String> {
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        if arg == "-m" {
            return rest
                .next()
                .map(|module| format!("*-m {}*", generalise::escape(module)));
        }
        // Python's options that take a value.
        if matches!(arg.as_str(), "-W" | "-X" | "-Q") {
            rest.next();
            continue;
        }
        if arg.starts_with('-') {
            continue;
        }
        let name = arg.rsplit('/').next().unwrap_or(arg);
        let stable = !name.is_empty()
            && !name.bytes().all(|b| b.is_ascii_digit())
            && generalise::path_pattern(
                name,
                &PathContext {
                    tgid: 0,
                    tid: 0,
                    pids: &HashSet::new(),
                },
            ) == generalise::escape(name);
        if stable {
            return Some(format!("*{}*", generalise::escape(name)));
        }
    }
    None
}

/// A process picked for learning.
#[derive(Clone, Debug)]
pub struct Selected {
    pub tgid: u32,
    pub exe: Option<String>,
}

/// What the learned processes did, as generalised patterns with counts.
#[derive(Debug, Default)]
pub struct Seen {
    pub reads: HashMap<String, u64>,
    pub writes: HashMap<String, u64>,
    pub execs: HashMap<String, u64>,
    pub unix: HashMap<String, u64>,
    pub listen: HashMap<SocketAddr, u64>,
    pub connect: HashMap<SocketAddr, u64>,
    pub devices: BTreeMap<DeviceClass, u64>,
    /// Ports the processes asked for by name in a `bind` (not 0): a listen on one of them is
    /// the server's own port, never widened to the ephemeral range.
    pub bound_ports: BTreeSet<u16>,
    /// io_uring uses (rings created, requests submitted).
    pub io_uring: u64,
    /// Failed opens of missing paths (not rules).
    pub probes: u64,
    /// Paths the kernel could not resolve to an absolute path (not rules).
    pub unresolved: u64,
}

/// Counts one path pattern; past [`MAX_DISTINCT`], a new one counts as its directory's `/**`.
fn count_path(map: &mut HashMap<String, u64>, pattern: String) {
    if map.len() >= MAX_DISTINCT && !map.contains_key(&pattern) {
        let dir = match pattern.rfind('/') {
            Some(0) | None => pattern.clone(),
            Some(i) => format!("{}/**", &pattern[..i]),
        };
        *map.entry(dir).or_default() += 1;
        return;
    }
    *map.entry(pattern).or_default() += 1;
}

fn count_addr(map: &mut HashMap<SocketAddr, u64>, addr: SocketAddr) {
    // Past the bound, a new peer counts as its address on any port (port 0).
    let key = if map.len() >= MAX_DISTINCT && !map.contains_key(&addr) {
        SocketAddr::new(addr.ip(), 0)
    } else {
        addr
    };
    *map.entry(key).or_default() += 1;
}

/// The learning state: which processes are followed, and what they did.
#[derive(Debug)]
pub struct Learning {
    /// Selects processes to learn, also those that start later (`--select`, or the merged
    /// profile's selector).
    selector: Option<Selector>,
    /// `--pid`.
    pids: Vec<u32>,
    /// Made from the `--pid` processes when no selector is given.
    derived: Option<(SelectorText, Selector)>,
    /// Followed processes: tgid to start time.
    followed: HashMap<u32, u64>,
    /// Every tgid followed so far (a name that carries one is per-run).
    tgids: HashSet<u32>,
    pub selected: Vec<Selected>,
    pub descendants: u64,
    pub events: u64,
    pub seen: Seen,
    /// When learning started: the sensors attached and /proc scanned.
    pub started: Option<SystemTime>,
}

impl Learning {
    pub fn new(selector: Option<Selector>, pids: Vec<u32>) -> Learning {
        Learning {
            selector,
            pids,
            derived: None,
            followed: HashMap::new(),
            tgids: HashSet::new(),
            selected: Vec::new(),
            descendants: 0,
            events: 0,
            seen: Seen::default(),
            started: None,
        }
    }

    /// The selector the profile will have: the one given, or the one made from `--pid`.
    pub fn derived_selector(&self) -> Option<&SelectorText> {
        self.derived.as_ref().map(|(text, _)| text)
    }

    fn profile_selector(&self) -> Option<&Selector> {
        self.selector
            .as_ref()
            .or(self.derived.as_ref().map(|(_, s)| s))
    }

    fn follow(&mut self, tgid: u32, start_time_ns: u64) {
        self.followed.insert(tgid, start_time_ns);
        self.tgids.insert(tgid);
    }

    fn is_followed(&self, tgid: u32, start_time_ns: u64) -> bool {
        self.followed
            .get(&tgid)
            .is_some_and(|&start| same_start(start, start_time_ns))
    }

    /// Follows a process the table says is the child of a followed one (its fork event was
    /// not seen, or is this event).
    fn adopt(&mut self, tgid: u32, start_time_ns: u64, table: &ProcessTable) -> bool {
        let Some(process) = table.get(tgid, start_time_ns) else {
            return false;
        };
        let Some(parent) = table.parent(process) else {
            return false;
        };
        if !self.is_followed(parent.tgid, parent.start_time_ns) {
            return false;
        }
        self.follow(process.tgid, process.start_time_ns);
        self.descendants += 1;
        true
    }

    fn select(&mut self, process: &Process) {
        if self.is_followed(process.tgid, process.start_time_ns) {
            return;
        }
        self.follow(process.tgid, process.start_time_ns);
        self.selected.push(Selected {
            tgid: process.tgid,
            exe: process.exe.clone(),
        });
    }

    /// The processes running now to learn (`--pid`, and those the selector matches), with
    /// their descendants.
    pub fn seed(&mut self, table: &ProcessTable) -> Vec<u32> {
        self.started.get_or_insert_with(SystemTime::now);
        let mut roots: Vec<&Process> = Vec::new();
        for &pid in &self.pids {
            match table.get_by_tgid(pid) {
                Some(process) => roots.push(process),
                None => warn!("failed to learn pid {pid}: no such process"),
            }
        }
        if self.selector.is_none() {
            self.derived = derive_selector(&roots);
        }
        if let Some(selector) = &self.selector {
            roots.extend(
                table
                    .iter()
                    .filter(|p| p.exited.is_none() && selects(selector, p)),
            );
        }
        let mut tgids = Vec::new();
        for root in roots {
            if self.is_followed(root.tgid, root.start_time_ns) {
                continue;
            }
            self.select(root);
            tgids.push(root.tgid);
            for tgid in table.descendants(root.tgid) {
                if let Some(child) = table.get_by_tgid(tgid) {
                    if !self.is_followed(child.tgid, child.start_time_ns) {
                        self.follow(child.tgid, child.start_time_ns);
                        self.descendants += 1;
                    }
                }
            }
        }
        tgids
    }

    /// One event (after the table applied it); returns processes the kernel must watch.
    pub fn observe(&mut self, event: &Event, table: &ProcessTable) -> Vec<u32> {
        let header = *event.header();
        let followed = self.is_followed(header.tgid, header.start_time_ns)
            || self.adopt(header.tgid, header.start_time_ns, table);
        match event {
            Event::Exec(exec) => {
                let args = join_args(&exec.args);
                let process = table.get(header.tgid, header.start_time_ns);
                let subject = Subject {
                    exe: Some(&exec.path),
                    args: &args,
                    cgroup: process.and_then(|p| p.cgroup_path.as_deref()),
                    container: process
                        .and_then(|p| p.container.as_ref())
                        .and_then(|c| c.metadata.get()),
                };
                let matches = self.profile_selector().is_some_and(|s| s.matches(&subject));
                if followed {
                    self.events += 1;
                    // An exec that the selector matches starts a governed process: `monitor
                    // run` does not check it against `allow.exec`.
                    if !matches {
                        let pattern = generalise::path_pattern(&exec.path, &self.context(&header));
                        count_path(&mut self.seen.execs, pattern);
                    }
                    return Vec::new();
                }
                if matches && self.selector.is_some() {
                    if let Some(process) = table.get(header.tgid, header.start_time_ns) {
                        let process = process.clone();
                        self.select(&process);
                        self.events += 1;
                        return vec![header.tgid];
                    }
                }
                Vec::new()
            }
            _ if !followed => Vec::new(),
            Event::Fork(_) => {
                self.events += 1;
                // Forked before the kernel watched the parent: it did not inherit.
                if header.watched {
                    Vec::new()
                } else {
                    vec![header.tgid]
                }
            }
            Event::Exit(_) => {
                self.events += 1;
                self.followed.remove(&header.tgid);
                Vec::new()
            }
            Event::File(file) => {
                self.events += 1;
                self.file(file);
                Vec::new()
            }
            Event::Net(net) => {
                self.events += 1;
                self.net(net);
                Vec::new()
            }
            Event::Device(device) => {
                self.events += 1;
                self.device(device);
                Vec::new()
            }
            Event::GpuIoctls(_) => {
                self.events += 1;
                Vec::new()
            }
            // Another process's deed on this one (memory), or a deed against the monitor:
            // nothing this one's profile allows.
            Event::MemoryAccess(_) | Event::Tamper(_) => {
                self.events += 1;
                Vec::new()
            }
            // `monitor run` judges every io_uring use against `allow.io_uring`.
            Event::IoUring(_) => {
                self.events += 1;
                self.seen.io_uring += 1;
                Vec::new()
            }
        }
    }

    fn context(&self, header: &crate::event::Header) -> PathContext<'_> {
        PathContext {
            tgid: header.tgid,
            tid: header.pid,
            pids: &self.tgids,
        }
    }

    fn file(&mut self, file: &File) {
        if is_probe(file.result) {
            self.seen.probes += 1;
            return;
        }
        let FileUse { reads, writes } = file_use(file);
        // What the processes wrote they may read back: a cache first written on this run is
        // only read on the next.
        let reads = reads || writes;
        let paths = std::iter::once(file.path.as_str()).chain(file.target.as_deref());
        let mut patterns = Vec::new();
        for path in paths {
            if !path.starts_with('/') {
                self.seen.unresolved += 1;
                continue;
            }
            let mut pattern = generalise::path_pattern(path, &self.context(&file.header));
            if file.path_truncated {
                // The path was cut at the kernel's bound: allow what is below what is known.
                pattern = match pattern.rfind('/') {
                    Some(0) | None => continue,
                    Some(i) => format!("{}/**", &pattern[..i]),
                };
            }
            patterns.push(pattern);
        }
        for pattern in patterns {
            if reads {
                count_path(&mut self.seen.reads, pattern.clone());
            }
            if writes {
                count_path(&mut self.seen.writes, pattern);
            }
        }
    }

    fn net(&mut self, net: &Net) {
        // A port asked for by name (a TCP bind is no rule of its own: its listen is).
        if let (NetOp::Bind, Some(local)) = (net.op, net.local) {
            if local.port() != 0 {
                self.seen.bound_ports.insert(local.port());
            }
        }
        match net_use(net) {
            Some(NetUse::UnixConnect(path) | NetUse::UnixBind(path)) => {
                let pattern = generalise::path_pattern(path, &self.context(&net.header));
                count_path(&mut self.seen.unix, pattern);
            }
            Some(NetUse::Connect(peer)) => count_addr(&mut self.seen.connect, peer),
            Some(NetUse::Listen(local)) => count_addr(&mut self.seen.listen, local),
            None => {}
        }
    }

    fn device(&mut self, device: &Device) {
        if is_probe(device.result) {
            return;
        }
        *self.seen.devices.entry(device.class).or_default() += 1;
    }

    /// The profile the learned behaviour makes. Ports in `ephemeral` are never rules of
    /// their own.
    pub fn draft(&self, name: &str, selector: SelectorText, ephemeral: (u16, u16)) -> Draft {
        let sorted = |map: &HashMap<String, u64>| -> BTreeMap<String, u64> {
            map.iter().map(|(k, v)| (k.clone(), *v)).collect()
        };
        let addrs = |map: &HashMap<SocketAddr, u64>| -> BTreeMap<SocketAddr, u64> {
            map.iter().map(|(k, v)| (*k, *v)).collect()
        };
        let items = |rules: Vec<Counted>| -> Vec<Item> {
            rules
                .into_iter()
                .map(|r| Item::learned(r.rule, r.count))
                .collect()
        };
        let files = |map: &HashMap<String, u64>| {
            items(generalise::proc_self_as_run_sees_it(
                generalise::file_rules(&sorted(map)),
            ))
        };
        Draft {
            name: name.to_owned(),
            description: Some("learned by monitor learn".to_owned()),
            selector,
            mode: profile::Mode::Alert,
            dry_run: false,
            exec: items(generalise::prune(sorted(&self.seen.execs))),
            read: files(&self.seen.reads),
            write: files(&self.seen.writes),
            connect: items(generalise::connect_rules(
                &addrs(&self.seen.connect),
                ephemeral,
            )),
            listen: items(generalise::listen_rules(
                &addrs(&self.seen.listen),
                ephemeral,
                &self.seen.bound_ports,
            )),
            unix: Some(items(generalise::prune(sorted(&self.seen.unix)))),
            devices: self
                .seen
                .devices
                .iter()
                .map(|(class, count)| Item::learned(class.name(), *count))
                .collect(),
            io_uring: (self.seen.io_uring > 0).then(|| Item::learned("true", self.seen.io_uring)),
            transitions: Vec::new(),
        }
    }
}

fn selects(selector: &Selector, process: &Process) -> bool {
    let args = join_args(&process.args);
    selector.matches(&Subject {
        exe: process.exe.as_deref(),
        args: &args,
        cgroup: process.cgroup_path.as_deref(),
        container: process.container.as_ref().and_then(|c| c.metadata.get()),
    })
}

/// A selector for the `--pid` processes: their executables, and a distinctive argument each.
fn derive_selector(roots: &[&Process]) -> Option<(SelectorText, Selector)> {
    let mut text = SelectorText::default();
    for root in roots {
        if let Some(exe) = &root.exe {
            let glob = generalise::escape(exe);
            if !text.executables.contains(&glob) {
                text.executables.push(glob);
            }
        }
        if let Some(args) = distinctive_args(&root.args) {
            if !text.args.contains(&args) {
                text.args.push(args);
            }
        }
    }
    if text.is_empty() {
        return None;
    }
    let selector = compile(&text).ok()?;
    Some((text, selector))
}

/// The observer handed to the daemon; the state stays reachable from [`run`] after the
/// daemon returns.
struct Learner(Arc<Mutex<Learning>>);

impl Learner {
    fn state(&self) -> std::sync::MutexGuard<'_, Learning> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Observer for Learner {
    fn seed(&mut self, table: &ProcessTable) -> Vec<u32> {
        self.state().seed(table)
    }

    fn observe(&mut self, event: &Event, table: &ProcessTable) -> Vec<u32> {
        self.state().observe(event, table)
    }

    fn events(&self) -> u64 {
        self.state().events
    }
}

/// Counts the events lost while learning (the daemon reports them as `events-lost` alerts).
struct LossCounter(Arc<AtomicU64>);

impl AlertSink for LossCounter {
    fn send(&mut self, alert: &Alert) -> anyhow::Result<()> {
        if alert.rule == crate::rules::EVENTS_LOST.id {
            let count = alert
                .attributes
                .get("monitor.loss.count")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(1);
            self.0.fetch_add(count, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The host's ephemeral port range (`net.ipv4.ip_local_port_range`), or the kernel default.
fn ephemeral_ports() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut parts = text.split_whitespace().map(str::parse::<u16>);
            match (parts.next(), parts.next()) {
                (Some(Ok(first)), Some(Ok(last))) if first <= last => Some((first, last)),
                _ => None,
            }
        })
        .unwrap_or(generalise::DEFAULT_EPHEMERAL)
}

/// A valid profile name from a file name: up to 64 letters, digits, `.`, `_` and `-`,
/// starting with a letter or digit.
fn name_from(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .skip_while(|c| !c.is_ascii_alphanumeric())
        .take(64)
        .collect();
    if name.is_empty() {
        "learned".to_owned()
    } else {
        name
    }
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !valid {
        bail!(
            "invalid --name \"{name}\": use up to 64 letters, digits, '.', '_' and '-', starting with a letter or digit"
        );
    }
    Ok(())
}

/// The command line as typed, for the header (quoted where a shell would need it).
fn command_line() -> String {
    let quote = |arg: String| {
        let plain = !arg.is_empty()
            && arg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-=:,@+%".contains(c));
        if plain {
            arg
        } else {
            format!("'{}'", arg.replace('\'', r"'\''"))
        }
    };
    let mut args = std::env::args();
    let program = args
        .next()
        .map(|p| p.rsplit('/').next().unwrap_or("monitor").to_owned())
        .unwrap_or_else(|| "monitor".to_owned());
    std::iter::once(program)
        .chain(args.map(quote))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `1 event`, `2 events`.
fn plural(count: u64, one: &str, many: &str) -> String {
    if count == 1 {
        format!("1 {one}")
    } else {
        format!("{count} {many}")
    }
}

/// RFC 3339 to the second.
fn timestamp(time: SystemTime) -> String {
    let ns = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    let text = crate::event::clock::rfc3339(ns);
    match text.split_once('.') {
        Some((seconds, _)) => format!("{seconds}Z"),
        None => text,
    }
}

/// What the header says about a learning session.
pub struct Session {
    pub started: SystemTime,
    pub ended: SystemTime,
    pub requested: Option<Duration>,
    pub command: String,
    pub lost: u64,
    pub merged_from: Option<PathBuf>,
}

/// The comment header: when and how long, how, how much was seen, and how to read it.
pub fn header(session: &Session, learning: &Learning) -> Vec<String> {
    let took = session
        .ended
        .duration_since(session.started)
        .unwrap_or_default();
    // `ended` includes the shutdown (a few seconds): a timed learning that ran its course
    // says its duration.
    let (took, ended) = match session.requested {
        Some(requested) if took >= requested => (requested, session.started + requested),
        _ => (took, session.ended),
    };
    let how_long = match session.requested {
        Some(requested) if took < requested => {
            format!(
                "{}; ended early by Ctrl-C, of --duration {}",
                human(took),
                human(requested)
            )
        }
        Some(_) => human(took),
        None => format!("{}; until Ctrl-C", human(took)),
    };
    let mut lines = vec![
        format!(
            "Learned by `monitor learn` from {} to {} ({how_long}).",
            timestamp(session.started),
            timestamp(ended)
        ),
        format!("Command: {}", session.command),
        format!(
            "Observed {} of {}: {} selected, {}.",
            plural(learning.events, "event", "events"),
            plural(
                learning.selected.len() as u64 + learning.descendants,
                "process",
                "processes"
            ),
            learning.selected.len(),
            plural(learning.descendants, "descendant", "descendants")
        ),
    ];
    for selected in learning.selected.iter().take(5) {
        lines.push(format!(
            "  selected: pid {} {}",
            selected.tgid,
            selected.exe.as_deref().unwrap_or("(executable unknown)")
        ));
    }
    if learning.selected.len() > 5 {
        lines.push(format!("  and {} more", learning.selected.len() - 5));
    }
    if learning.selected.is_empty() {
        lines.push("No process was selected: this profile allows nothing.".to_owned());
    }
    let mut not_rules = format!(
        "Not rules: {} of missing paths (probes)",
        plural(learning.seen.probes, "failed open", "failed opens")
    );
    if learning.seen.unresolved > 0 {
        not_rules.push_str(&format!(
            ", {} the kernel could not resolve",
            plural(learning.seen.unresolved, "path", "paths")
        ));
    }
    lines.push(format!("{not_rules}."));
    if session.lost > 0 {
        lines.push(format!(
            "WARNING: {} events were lost (ring buffer or queue full): rules may be missing; \
             learn again with a larger --ring-size.",
            session.lost
        ));
    }
    if let Some(path) = &session.merged_from {
        lines.push(format!(
            "Extends {}: its selector, mode and rules are kept (\"kept\"), its comments are not.",
            path.display()
        ));
    }
    lines.push(
        "Each rule ends with the number of events it rests on: review those seen once or twice."
            .to_owned(),
    );
    lines
}

/// What `monitor learn` decided before it starts.
struct Setup {
    selector: Option<SelectorText>,
    merge: Option<(PathBuf, Profile)>,
    name: String,
}

impl Setup {
    fn new(args: &LearnArgs) -> anyhow::Result<Setup> {
        if args.select.is_none() && args.pids.is_empty() && args.merge.is_none() {
            bail!(
                "nothing to learn: give --select exe=GLOB,args=GLOB, --pid PID or --merge PROFILE"
            );
        }
        let mut selector = args
            .select
            .as_deref()
            .map(parse_select)
            .transpose()
            .map_err(|err| anyhow::anyhow!(err))?;
        let merge = match &args.merge {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!(
                        "failed to read the profile to merge into {}",
                        path.display()
                    )
                })?;
                let profiles = profile::parse_profiles(path, &text).map_err(|diagnostics| {
                    let lines: Vec<String> = diagnostics.iter().map(|d| d.to_string()).collect();
                    anyhow::anyhow!(
                        "failed to load the profile to merge into:\n{}",
                        lines.join("\n")
                    )
                })?;
                let existing = render::pick(path, &profiles, args.name.as_deref())
                    .map_err(|err| anyhow::anyhow!(err))?
                    .clone();
                Some((path.clone(), existing))
            }
            None => None,
        };
        // Without --select, learn what the merged profile selects (and the --pid processes).
        if let (None, Some((_, existing))) = (&selector, &merge) {
            selector = Some(SelectorText::of(existing));
        }
        let name = match (&args.name, &merge) {
            (Some(name), _) => name.clone(),
            (None, Some((_, existing))) => existing.name.clone(),
            (None, None) => name_from(&args.out),
        };
        check_name(&name)?;
        for &pid in &args.pids {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                bail!("failed to learn pid {pid}: no such process");
            }
        }
        let dir = match args.out.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            bail!(
                "failed to find the directory of --out {}: create it first",
                args.out.display()
            );
        }
        Ok(Setup {
            selector,
            merge,
            name,
        })
    }
}

/// What was asked for, for the error when nothing was seen: `--select exe=…`, `--pid N`.
fn what_was_selected(args: &LearnArgs, selector: Option<&SelectorText>) -> String {
    let mut parts = Vec::new();
    if let Some(selector) = selector {
        let keys = [
            ("exe", &selector.executables),
            ("args", &selector.args),
            ("cgroup", &selector.cgroups),
        ];
        let items: Vec<String> = keys
            .iter()
            .flat_map(|(key, globs)| globs.iter().map(move |glob| format!("{key}={glob}")))
            .collect();
        if !items.is_empty() {
            parts.push(format!("selector {}", items.join(",")));
        }
    }
    if !args.pids.is_empty() {
        let pids: Vec<String> = args.pids.iter().map(u32::to_string).collect();
        parts.push(format!("--pid {}", pids.join(", ")));
    }
    parts.join(" and ")
}

/// Writes `text` to `path` through a temporary file in the same directory.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".tmp-{}", std::process::id()));
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, text)
        .with_context(|| format!("failed to write {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| {
        format!(
            "failed to rename {} to {}",
            temporary.display(),
            path.display()
        )
    })
}

/// Runs `monitor learn`.
pub async fn run(args: LearnArgs) -> anyhow::Result<()> {
    let setup = Setup::new(&args)?;
    let compiled = setup
        .selector
        .as_ref()
        .map(compile)
        .transpose()
        .map_err(|err| anyhow::anyhow!("invalid selector: {err}"))?;
    let learning = Arc::new(Mutex::new(Learning::new(compiled, args.pids.clone())));
    let lost = Arc::new(AtomicU64::new(0));
    let mut sensor = args.common.sensor_options(false);
    if let Some(selector) = &setup.selector {
        // The kernel watches the executables the selector may match from their exec on.
        let globs: Vec<Glob> = selector
            .executables
            .iter()
            .filter_map(|pattern| Glob::new(pattern).ok())
            .collect();
        sensor.exec_candidates = crate::kernel::policy::executables_matching(&globs);
    }
    let started = SystemTime::now();
    info!(out = %args.out.display(), "learning");
    let observer = crate::daemon::run(Plan {
        mode: Mode::Observe,
        sensor,
        pipeline: args.common.pipeline_options(),
        selectors: WatchSelectors::default(),
        out: std::io::sink(),
        sinks: vec![Box::new(LossCounter(lost.clone()))],
        config: None,
        metrics: None,
        observer: Some((Box::new(Learner(learning.clone())), args.duration)),
        out_dropped: None,
    })
    .await?;
    drop(observer);
    let ended = SystemTime::now();

    let learning = learning.lock().unwrap_or_else(|p| p.into_inner());
    let started = learning.started.unwrap_or(started);
    if learning.selected.is_empty() {
        // A profile of nothing would raise an alert for everything the server does.
        let took = ended.duration_since(started).unwrap_or_default();
        // `ended` includes the shutdown: a timed learning that ran its course says its duration.
        let took = match args.duration {
            Some(requested) if took >= requested => requested,
            _ => took,
        };
        bail!(
            "failed to learn: no selected process was seen in {} ({}); start the server while \
             `monitor learn` runs, or check the selector against `ps -eo pid,args`; {} was not \
             written",
            human(took),
            what_was_selected(&args, setup.selector.as_ref()),
            args.out.display()
        );
    }
    let selector = setup
        .selector
        .clone()
        .or_else(|| learning.derived_selector().cloned())
        .unwrap_or_default();
    if selector.is_empty() {
        bail!("failed to make a selector: the --pid processes have no known executable or arguments; give --select");
    }
    let mut draft = learning.draft(&setup.name, selector, ephemeral_ports());
    if let Some((_, existing)) = &setup.merge {
        draft = render::merge(draft, existing, args.name.as_deref());
    }
    let session = Session {
        started,
        ended,
        requested: args.duration,
        command: command_line(),
        lost: lost.load(Ordering::Relaxed),
        merged_from: setup.merge.as_ref().map(|(path, _)| path.clone()),
    };
    let text = render::render(&header(&session, &learning), &draft);
    write_atomically(&args.out, &text)?;
    if let Err(diagnostics) = profile::parse_profiles(&args.out, &text) {
        let lines: Vec<String> = diagnostics.iter().map(|d| d.to_string()).collect();
        bail!(
            "the learned profile was written to {} but does not load (a bug in monitor learn; please report it):\n{}",
            args.out.display(),
            lines.join("\n")
        );
    }
    let rules = draft.exec.len()
        + draft.read.len()
        + draft.write.len()
        + draft.connect.len()
        + draft.listen.len()
        + draft.unix.as_ref().map_or(0, Vec::len)
        + draft.devices.len()
        + usize::from(draft.io_uring.is_some());
    eprintln!(
        "learned profile \"{}\" written to {}: {rules} rules from {} events of {} processes",
        draft.name,
        args.out.display(),
        learning.events,
        learning.selected.len() as u64 + learning.descendants
    );
    Ok(())
}

#[cfg(test)]
mod tests;
