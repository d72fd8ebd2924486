//! The rules engine: decides which profile governs each process, checks events against
//! profiles and host guards, correlates a read of a protected file with a later outbound
//! connection, and folds repeated alerts.
//!
//! Governance:
//! - It is decided at exec: the first profile (in load order) whose selector matches the new
//!   executable, argv and cgroup governs the process. That exec is never an alert.
//! - A child inherits its parent's profile at fork, and keeps it across every exec (checked
//!   against `allow.exec`), unless its profile's `allow.transitions` names a profile whose
//!   selector the exec matches: then it switches to that one, without an alert. A governed
//!   process cannot hop to another profile by choosing its path and argv.
//! - It ends at exit.
//!
//! Call [`Engine::handle`] after the process table has applied the event (`on_exec`,
//! `on_fork`, `on_exit`), so that the table describes the process as the event left it.

mod checks;
mod dedup;

use opentelemetry_semantic_conventions::attribute as semconv;
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use serde_json::{Map, Value};

use crate::event::alert::Rule;
use crate::event::tgid::TgidMap;
use crate::{
    config::{
        profile::{
            facts::{self, Facts},
            join_args, Profile, Subject,
        },
        Config,
    },
    event::{
        alert::{new_uid, Action, Alert, Severity},
        clock::BootClock,
        Event, Exec, Fork, Header,
    },
    host::process::{same_start, Process, ProcessTable},
    output::event_record,
};
use checks::Finding;
use dedup::{Dedup, Key};

const fn rule(id: &'static str, severity: Severity) -> Rule {
    Rule { id, severity }
}

/// A governed process executed something its profile does not allow.
pub const EXEC_NOT_ALLOWED: Rule = rule("exec-not-allowed", Severity::High);
/// A governed process opened for reading a file its profile does not allow.
pub const FILE_READ_NOT_ALLOWED: Rule = rule("file-read-not-allowed", Severity::Medium);
/// A governed process changed (or opened to change) a file its profile does not allow.
pub const FILE_WRITE_NOT_ALLOWED: Rule = rule("file-write-not-allowed", Severity::High);
/// A governed process connected (or sent a datagram) to a destination not allowed.
pub const CONNECT_NOT_ALLOWED: Rule = rule("connect-not-allowed", Severity::High);
/// A governed process listened (TCP) or bound (UDP) on an address not allowed.
pub const LISTEN_NOT_ALLOWED: Rule = rule("listen-not-allowed", Severity::Medium);
/// A governed process opened an accelerator device class its profile does not allow.
pub const DEVICE_NOT_ALLOWED: Rule = rule("device-not-allowed", Severity::High);
/// Any process read a protected file without a profile the guard lets read it.
pub const PROTECTED_FILE_READ: Rule = rule("protected-file-read", Severity::High);
/// Any process changed a protected file without a profile the guard lets write it.
pub const PROTECTED_FILE_WRITE: Rule = rule("protected-file-write", Severity::Critical);
/// Any process opened an accelerator device without a profile the GPU guard allows.
pub const GPU_UNEXPECTED_PROCESS: Rule = rule("gpu-unexpected-process", Severity::High);
/// A process that read a protected file connected to a destination its profile does not
/// allow (anything but loopback without a profile).
pub const MODEL_EXFILTRATION: Rule = rule("model-exfiltration", Severity::Critical);
/// Another process read, wrote or took control of a governed process's memory
/// (process_vm_readv/writev, ptrace, /proc/PID/mem, pidfd_getfd).
pub const PROCESS_MEMORY_ACCESS: Rule = rule("process-memory-access", Severity::Critical);
/// A governed process used io_uring (created a ring, or submitted a request that opens,
/// changes files or reaches the network) without `allow.io_uring`.
pub const IO_URING_NOT_ALLOWED: Rule = rule("io-uring-not-allowed", Severity::High);
/// Events were lost (kernel ring buffer or user-space queue full).
pub const EVENTS_LOST: Rule = rule("events-lost", Severity::High);
/// A new configuration failed to load; the previous one stays in force.
pub const CONFIG_RELOAD_FAILED: Rule = rule("config-reload-failed", Severity::Medium);

/// Another process changed the monitor's BPF objects (detached a link, changed or emptied a
/// policy map), or reached its memory; or the self-check found an object not as the monitor
/// left it (and says what it repaired).
pub const MONITOR_TAMPERED: Rule = rule("monitor-tampered", Severity::Critical);
/// Another process took a handle on one of the monitor's BPF objects by its id (`bpftool
/// prog show` does it too): the first step of tampering, or an inspection.
pub const MONITOR_OBJECT_OPENED: Rule = rule("monitor-object-opened", Severity::Medium);
/// A signal that ends or interrupts the monitor was sent to it (SIGTERM, SIGINT, SIGKILL...):
/// by whom.
pub const MONITOR_SIGNALED: Rule = rule("monitor-signaled", Severity::High);
/// The monitor was stopped (SIGSTOP, or a gap its clock saw) and has resumed: for how long,
/// and by whom.
pub const MONITOR_PAUSED: Rule = rule("monitor-paused", Severity::High);

/// Every rule, for documentation and exporters: those the rules raise on events, and those
/// about the monitor itself, its configuration and its outputs (defined beside the code
/// that raises them).
pub const RULES: [Rule; 26] = [
    EXEC_NOT_ALLOWED,
    FILE_READ_NOT_ALLOWED,
    FILE_WRITE_NOT_ALLOWED,
    CONNECT_NOT_ALLOWED,
    LISTEN_NOT_ALLOWED,
    DEVICE_NOT_ALLOWED,
    PROTECTED_FILE_READ,
    PROTECTED_FILE_WRITE,
    GPU_UNEXPECTED_PROCESS,
    MODEL_EXFILTRATION,
    PROCESS_MEMORY_ACCESS,
    IO_URING_NOT_ALLOWED,
    EVENTS_LOST,
    CONFIG_RELOAD_FAILED,
    MONITOR_TAMPERED,
    MONITOR_OBJECT_OPENED,
    MONITOR_SIGNALED,
    MONITOR_PAUSED,
    crate::config::diff::CONFIG_CHANGED,
    crate::config::diff::CONFIG_CHANGE_REFUSED,
    crate::config::diff::CONFIG_INSECURE,
    crate::telemetry::liveness::MONITOR_UNCLEAN_EXIT,
    crate::output::sink::ALERTS_FILE_REPAIRED,
    crate::output::sink::EXPORT_REJECTED,
    crate::output::sink::SPOOL_WRITE_FAILED,
    crate::output::sink::OUTPUT_FAILED,
];

/// Most distinct alerts being folded at once; past it the oldest window is closed early.
pub const MAX_DEDUP_KEYS: usize = 10_000;

/// What one event led to.
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    /// Alerts to raise now.
    pub alerts: Vec<Alert>,
    /// `(tgid, profile id)` when the event put a process under a profile or changed its
    /// profile (an exec that matched a selector, a fork whose child inherits a profile), so
    /// the caller can update the kernel's watched set.
    pub governed: Option<(u32, u32)>,
    /// Rules the event broke, whether their alerts go out now or are folded into a later
    /// count: 0 means the behaviour is allowed.
    pub findings: usize,
}

/// What the engine remembers of a process.
#[derive(Clone, Debug)]
struct ProcessState {
    start_time_ns: u64,
    profile: Option<u32>,
    /// When it came under its profile (`CLOCK_BOOTTIME` ns): a child that started before
    /// cannot have inherited it.
    since_ns: u64,
    /// The last protected file it (or its parent, before the fork) read.
    protected_read: Option<String>,
    /// Its facts and its profile made concrete with them, when the profile names
    /// `${variables}`; passed down by fork and exec like the profile.
    resolved: Option<Resolved>,
    /// A `sh -c` started by a governed process, judged by what it runs (see [`Shell`]).
    shell: Option<Shell>,
}

/// A process's facts and its profile resolved with them.
#[derive(Clone, Debug)]
struct Resolved {
    facts: Arc<Facts>,
    profile: Arc<Profile>,
}

/// A shell that a governed process ran with `-c` although `allow.exec` does not name the
/// shell: the shell itself is not an alert; each program it (or a subshell it forks) runs
/// is judged against `allow.exec` instead, and a shell that ran no program at all (its
/// command was builtins only: `sh -c 'echo x > f'`) is `exec-not-allowed` when it exits.
#[derive(Clone, Debug)]
struct Shell {
    /// Set when any process of the shell ran a program.
    ran: Arc<AtomicBool>,
    /// The shell process itself (not a subshell it forked): its exit is the verdict.
    owner: bool,
    path: String,
}

impl ProcessState {
    fn is_useful(&self) -> bool {
        self.profile.is_some() || self.protected_read.is_some()
    }
}

/// The rules engine. See the module documentation.
pub struct Engine {
    config: Arc<Config>,
    /// By tgid; only governed processes and those that read a protected file.
    processes: TgidMap<ProcessState>,
    dedup: Dedup,
    /// The profiles each executable's path selects, so an exec matches no glob twice.
    selectors: crate::config::profile::SelectorCache,
}

fn window_ns(config: &Config) -> u64 {
    u64::try_from(config.dedup_window.as_nanos()).unwrap_or(u64::MAX)
}

impl Engine {
    pub fn new(config: Arc<Config>) -> Engine {
        let dedup = Dedup::new(window_ns(&config), MAX_DEDUP_KEYS);
        Engine {
            config,
            processes: TgidMap::default(),
            dedup,
            selectors: Default::default(),
        }
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// Takes a new configuration, keeping what is known of processes: a process keeps the
    /// profile of the same name (with its new id), or becomes ungoverned when the profile is
    /// gone. Call [`Engine::seed`] after it to govern running processes that a new profile
    /// selects, and [`Engine::governed`] to resynchronise the kernel's watched set.
    pub fn reload(&mut self, config: Arc<Config>) {
        let old = std::mem::replace(&mut self.config, config);
        self.selectors.clear();
        for state in self.processes.values_mut() {
            state.profile = state
                .profile
                .and_then(|id| old.profile(id))
                .and_then(|p| self.config.profile_by_name(&p.name))
                .map(|p| p.id);
            // The same facts, with the new profile's globs.
            state.resolved = match (state.profile, state.resolved.take()) {
                (Some(id), Some(resolved)) => self.config.profile(id).and_then(|p| {
                    Some(Resolved {
                        profile: Arc::new(p.resolve(&resolved.facts)?),
                        facts: resolved.facts,
                    })
                }),
                _ => None,
            };
        }
        self.processes.retain(|_, state| state.is_useful());
        self.dedup.set_window(window_ns(&self.config));
    }

    /// The profile governing a process, if any.
    pub fn governing(&self, tgid: u32, start_time_ns: u64) -> Option<&Profile> {
        let id = self.state(tgid, start_time_ns)?.profile?;
        self.config.profile(id)
    }

    /// Every governed process: `(tgid, profile id)`, by tgid.
    pub fn governed(&self) -> Vec<(u32, u32)> {
        let mut governed: Vec<(u32, u32)> = self
            .processes
            .iter()
            .filter_map(|(tgid, state)| state.profile.map(|id| (*tgid, id)))
            .collect();
        governed.sort_unstable();
        governed
    }

    /// The templated `allow.exec` globs of a process's enforce-mode profile made concrete
    /// with its facts: `(profile id, globs)`, for the kernel's exec check
    /// ([`crate::kernel::policy::ResolvedExec`]). `None` when its profile names no such glob.
    pub fn resolved_exec(&self, tgid: u32, start_time_ns: u64) -> Option<(u32, Vec<String>)> {
        let state = self.state(tgid, start_time_ns)?;
        self.resolved_exec_of(state)
    }

    /// [`Engine::resolved_exec`] of every governed process: `(tgid, start time, profile id,
    /// globs)`.
    pub fn resolved_execs(&self) -> Vec<(u32, u64, u32, Vec<String>)> {
        self.processes
            .iter()
            .filter_map(|(tgid, state)| {
                let (id, globs) = self.resolved_exec_of(state)?;
                Some((*tgid, state.start_time_ns, id, globs))
            })
            .collect()
    }

    fn resolved_exec_of(&self, state: &ProcessState) -> Option<(u32, Vec<String>)> {
        let id = state.profile?;
        let resolved = state.resolved.as_ref().filter(|r| r.profile.id == id)?;
        let profile = self.config.profile(id)?;
        if profile.mode != crate::config::profile::Mode::Enforce {
            return None;
        }
        let globs: Vec<String> = profile
            .allow
            .templates
            .iter()
            .filter(|(list, _)| *list == crate::config::profile::TemplateList::Exec)
            .filter_map(|(_, template)| template.resolve(&resolved.facts))
            .collect();
        (!globs.is_empty()).then_some((id, globs))
    }

    /// Governs the processes found by the `/proc` scan: each live process that the engine
    /// does not know yet gets the profile of its oldest governed ancestor, as exec and fork
    /// would have passed it down (a selector match below a governed ancestor switches only
    /// where the ancestor's profile names that transition), else the one its own selector
    /// matches. Returns the processes governed, by tgid.
    pub fn seed(&mut self, table: &ProcessTable) -> Vec<(u32, u32)> {
        let direct: HashMap<(u32, u64), u32> = table
            .iter()
            .filter_map(|p| Some(((p.tgid, p.start_time_ns), self.select(p)?.id)))
            .collect();
        let mut governed = Vec::new();
        for process in table.iter() {
            if self
                .state(process.tgid, process.start_time_ns)
                .is_some_and(|s| s.profile.is_some())
            {
                continue;
            }
            let mut chain = table.ancestry(process, 64);
            chain.reverse();
            chain.push(process);
            let mut effective = None;
            for p in chain {
                if let Some(known) = self.state(p.tgid, p.start_time_ns).and_then(|s| s.profile) {
                    effective = Some(known);
                    continue;
                }
                let own = direct.get(&(p.tgid, p.start_time_ns)).copied();
                effective = match (effective, own) {
                    (None, own) => own,
                    (Some(current), Some(own)) if self.may_switch(current, own) => Some(own),
                    (current, _) => current,
                };
            }
            if let Some(id) = effective {
                governed.push((process.tgid, id));
            }
        }
        for &(tgid, id) in &governed {
            let Some(process) = table.get_by_tgid(tgid) else {
                continue;
            };
            let resolved = process
                .exe
                .as_deref()
                .and_then(|exe| self.resolve_facts(id, tgid, exe, &process.args, process.uid));
            let state = self.state_entry(tgid, process.start_time_ns);
            state.profile = Some(id);
            state.since_ns = process.start_time_ns;
            state.resolved = resolved;
        }
        governed.sort_unstable();
        governed
    }

    /// Evaluates one event (after the process table applied it).
    pub fn handle(&mut self, event: &Event, table: &ProcessTable, clock: &BootClock) -> Verdict {
        let mut verdict = Verdict::default();
        let header = *event.header();
        let findings: Vec<Finding> = match event {
            Event::Exec(exec) => {
                let (finding, governed) = self.on_exec(exec, table);
                verdict.governed = governed;
                finding.into_iter().collect()
            }
            Event::Fork(fork) => {
                verdict.governed = self.on_fork(fork);
                Vec::new()
            }
            Event::Exit(exit) => {
                let h = &exit.header;
                let mut findings = Vec::new();
                if let Some(state) = self.state(h.tgid, h.start_time_ns) {
                    if let Some(shell) = state.shell.as_ref().filter(|s| s.owner) {
                        if !shell.ran.load(Ordering::Relaxed) {
                            findings.push(checks::shell_ran_nothing(&shell.path));
                        }
                    }
                    // Forgotten once its alert (if any) has named its profile.
                    if findings.is_empty() {
                        self.processes.remove(&h.tgid);
                    }
                }
                findings
            }
            Event::File(file) => {
                let state = self.resolve(&header, table);
                let profile = self.profile_of(state.as_ref());
                let outcome = checks::file(&self.config, profile, file);
                if let Some(path) = outcome.protected_read {
                    self.state_entry(header.tgid, header.start_time_ns)
                        .protected_read = Some(path);
                }
                outcome.findings
            }
            Event::Net(net) => {
                let state = self.resolve(&header, table);
                let profile = self.profile_of(state.as_ref());
                let read = state.as_ref().and_then(|s| s.protected_read.as_deref());
                checks::net(profile, read, net)
            }
            Event::Device(device) => {
                let state = self.resolve(&header, table);
                let profile = self.profile_of(state.as_ref());
                checks::device(&self.config, profile, device)
                    .into_iter()
                    .collect()
            }
            Event::GpuIoctls(_) => Vec::new(),
            // The monitor's own memory: tampering with it, whoever the accessor.
            Event::MemoryAccess(access) if access.monitor => vec![checks::monitor_memory(access)],
            Event::Tamper(tamper) => checks::tamper(tamper).into_iter().collect(),
            Event::MemoryAccess(access) => {
                // The kernel also reports targets that had just exec'd a profile's executable,
                // before user space matched the selector: only governed targets count.
                let governed = access.target_profile != 0
                    || self
                        .processes
                        .get(&access.target_tgid)
                        .is_some_and(|s| s.profile.is_some());
                if governed {
                    vec![checks::memory(access)]
                } else {
                    Vec::new()
                }
            }
            Event::IoUring(uring) => {
                let state = self.resolve(&header, table);
                let profile = self.profile_of(state.as_ref());
                checks::io_uring(profile, uring).into_iter().collect()
            }
        };
        if findings.is_empty() {
            return verdict;
        }
        verdict.findings = findings.len();
        let profile = self
            .governing(header.tgid, header.start_time_ns)
            .map(|p| p.name.clone());
        let process = table.get(header.tgid, header.start_time_ns);
        let mut attributes = attributes(clock, table, event, process);
        if let Event::MemoryAccess(access) = event {
            // The target's profile as the engine knows it, else as the kernel saw it.
            let target = self
                .processes
                .get(&access.target_tgid)
                .and_then(|s| s.profile)
                .unwrap_or(access.target_profile);
            if let Some(target) = self.config.profile(target) {
                attributes.insert(
                    "monitor.target.profile".into(),
                    Value::from(target.name.clone()),
                );
            }
        }
        let observed = clock.unix_ns(BootClock::boot_now_ns());
        for finding in findings {
            let mut attributes = attributes.clone();
            if let Some(path) = finding.file_path {
                attributes.insert(semconv::FILE_PATH.into(), Value::from(path));
            }
            let alert = Alert {
                rule: finding.rule.id.to_owned(),
                severity: finding.rule.severity,
                action: Action::Alert,
                profile: profile.clone(),
                time_unix_ns: clock.unix_ns(header.time_ns),
                observed_unix_ns: observed,
                count: 1,
                uid: new_uid(),
                attributes,
            };
            let key = Key {
                rule: finding.rule.id,
                tgid: header.tgid,
                start_time_ns: header.start_time_ns,
                // Names that differ only in bytes that are not UTF-8 read alike as text: the
                // exact bytes keep two such files two alerts.
                object: match event.raw_names() {
                    Some(raw) => format!("{}\0{raw:?}", finding.object),
                    None => finding.object,
                },
            };
            self.dedup
                .admit(key, header.time_ns, alert, &mut verdict.alerts);
        }
        if let Event::Exit(exit) = event {
            self.processes.remove(&exit.header.tgid);
        }
        verdict
    }

    /// Called every second: the alerts folded by deduplication whose window closed by
    /// `now_boot_ns`, each with its count of repeats (`monitor.count`).
    pub fn flush(&mut self, now_boot_ns: u64, clock: &BootClock) -> Vec<Alert> {
        self.dedup.flush(now_boot_ns, clock.unix_ns(now_boot_ns))
    }

    /// Forgets processes the table no longer knows (their exit was lost). Call it after
    /// the table's own sweep.
    pub fn sweep(&mut self, table: &ProcessTable) {
        self.processes
            .retain(|tgid, state| table.get(*tgid, state.start_time_ns).is_some());
    }

    fn select(&self, process: &Process) -> Option<&Profile> {
        let args = join_args(&process.args);
        self.config.select(&Subject {
            exe: process.exe.as_deref(),
            args: &args,
            cgroup: process.cgroup_path.as_deref(),
            container: process.container.as_ref().and_then(|c| c.metadata.get()),
        })
    }

    /// Whether a process under profile `from` may switch to `to` by an exec that `to`'s
    /// selector matches: only when `from` names it in `allow.transitions`.
    fn may_switch(&self, from: u32, to: u32) -> bool {
        match (self.config.profile(from), self.config.profile(to)) {
            (Some(from), Some(to)) => from.id == to.id || from.allow.transition(&to.name),
            _ => false,
        }
    }

    fn state(&self, tgid: u32, start_time_ns: u64) -> Option<&ProcessState> {
        self.processes
            .get(&tgid)
            .filter(|s| same_start(s.start_time_ns, start_time_ns))
    }

    /// The state of a process, created empty (or replacing a stale one of a reused tgid).
    fn state_entry(&mut self, tgid: u32, start_time_ns: u64) -> &mut ProcessState {
        let state = self.processes.entry(tgid).or_insert(ProcessState {
            start_time_ns,
            profile: None,
            since_ns: start_time_ns,
            protected_read: None,
            resolved: None,
            shell: None,
        });
        if !same_start(state.start_time_ns, start_time_ns) {
            *state = ProcessState {
                start_time_ns,
                profile: None,
                since_ns: start_time_ns,
                protected_read: None,
                resolved: None,
                shell: None,
            };
        }
        state
    }

    /// The state of the event's process; when unknown, its parent's profile if the parent
    /// was governed before the process started (its fork event was lost).
    fn resolve(&mut self, header: &Header, table: &ProcessTable) -> Option<ProcessState> {
        if let Some(state) = self.state(header.tgid, header.start_time_ns) {
            return Some(state.clone());
        }
        let process = table.get(header.tgid, header.start_time_ns)?;
        let parent = table.parent(process)?;
        let parent_state = self.state(parent.tgid, parent.start_time_ns)?;
        let id = parent_state.profile?;
        if process.start_time_ns < parent_state.since_ns {
            return None;
        }
        let state = ProcessState {
            start_time_ns: header.start_time_ns,
            profile: Some(id),
            since_ns: process.start_time_ns,
            protected_read: None,
            resolved: parent_state.resolved.clone(),
            shell: None,
        };
        self.processes.insert(header.tgid, state.clone());
        Some(state)
    }

    /// The profile a process is judged by: its profile made concrete with its facts when
    /// the profile names variables.
    fn profile_of<'a>(&'a self, state: Option<&'a ProcessState>) -> Option<&'a Profile> {
        let state = state?;
        let id = state.profile?;
        match &state.resolved {
            Some(resolved) if resolved.profile.id == id => Some(&resolved.profile),
            _ => self.config.profile(id),
        }
    }

    /// The facts of a process coming under profile `id`, when that profile names variables.
    fn resolve_facts(
        &self,
        id: u32,
        tgid: u32,
        exe: &str,
        args: &[String],
        uid: Option<u32>,
    ) -> Option<Resolved> {
        let profile = self.config.profile(id)?;
        if profile.allow.templates.is_empty() {
            return None;
        }
        let facts = facts::resolve(&facts::view_of_live(tgid, exe, args, uid));
        let concrete = profile.resolve(&facts)?;
        Some(Resolved {
            facts: Arc::new(facts),
            profile: Arc::new(concrete),
        })
    }

    fn on_exec(
        &mut self,
        exec: &Exec,
        table: &ProcessTable,
    ) -> (Option<Finding>, Option<(u32, u32)>) {
        let header = &exec.header;
        let prior = self.resolve(header, table).and_then(|state| state.profile);
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
        let selected = match prior.and_then(|id| self.config.profile(id)) {
            // Governed: it keeps its profile unless the profile names the transition (argv
            // is the process's own to choose, so a selector match alone proves nothing).
            Some(current) => self
                .config
                .profiles
                .iter()
                .find(|p| {
                    p.id != current.id && current.allow.transition(&p.name) && p.selects(&subject)
                })
                .map(|p| p.id),
            None => self
                .selectors
                .select(&self.config.profiles, &subject)
                .map(|p| p.id),
        };
        // A program run by a shell that stands for it (see [`Shell`]): the shell ran something.
        let shell = self
            .state(header.tgid, header.start_time_ns)
            .and_then(|s| s.shell.clone());
        if let Some(shell) = &shell {
            shell.ran.store(true, Ordering::Relaxed);
        }
        match selected {
            Some(id) => {
                let resolved = if prior == Some(id) {
                    None
                } else {
                    self.resolve_facts(id, header.tgid, &exec.path, &exec.args, Some(exec.uid))
                };
                let state = self.state_entry(header.tgid, header.start_time_ns);
                state.profile = Some(id);
                state.shell = None;
                if prior == Some(id) {
                    return (None, None);
                }
                state.resolved = resolved;
                state.since_ns = header.time_ns;
                (None, Some((header.tgid, id)))
            }
            None => {
                let state = self.state(header.tgid, header.start_time_ns);
                let finding = self
                    .profile_of(state)
                    .filter(|_| prior.is_some())
                    .and_then(|profile| checks::exec(profile, &exec.path))
                    // The kernel judges the file, not its name (a link made in an allowed
                    // directory after the globs were expanded): its kill is reported too.
                    .or_else(|| {
                        (prior.is_some() && (exec.killed || exec.would_kill))
                            .then(|| checks::exec_refused(&exec.path))
                    });
                // A shell the kernel killed (or would have, in a dry run) ran nothing: the
                // kill is the fact to report, not deferred to what the shell would have run.
                let deferred = finding.is_some()
                    && !exec.killed
                    && !exec.would_kill
                    && checks::is_shell_command(&exec.path, &exec.args);
                if let Some(state) = self.processes.get_mut(&header.tgid) {
                    if same_start(state.start_time_ns, header.start_time_ns) {
                        state.shell = deferred.then(|| Shell {
                            ran: Arc::new(AtomicBool::new(false)),
                            owner: true,
                            path: exec.path.clone(),
                        });
                    }
                }
                (finding.filter(|_| !deferred), None)
            }
        }
    }

    fn on_fork(&mut self, fork: &Fork) -> Option<(u32, u32)> {
        let child = &fork.header;
        let inherited = self
            .state(fork.parent_tgid, fork.parent_start_time_ns)
            .filter(|parent| parent.is_useful())
            .map(|parent| ProcessState {
                start_time_ns: child.start_time_ns,
                profile: parent.profile,
                since_ns: child.time_ns,
                protected_read: parent.protected_read.clone(),
                resolved: parent.resolved.clone(),
                shell: parent.shell.clone().map(|shell| Shell {
                    owner: false,
                    ..shell
                }),
            });
        match inherited {
            Some(state) => {
                let governed = state.profile.map(|id| (child.tgid, id));
                self.processes.insert(child.tgid, state);
                governed
            }
            None => {
                // A state left by an earlier process with this tgid is stale.
                if self
                    .processes
                    .get(&child.tgid)
                    .is_some_and(|s| !same_start(s.start_time_ns, child.start_time_ns))
                {
                    self.processes.remove(&child.tgid);
                }
                None
            }
        }
    }
}

/// The event's record as alert attributes: the same keys as `monitor trace`, without the
/// record's `time` and `event.kind` (the alert has its own), with `monitor.event.kind`.
fn attributes(
    clock: &BootClock,
    table: &ProcessTable,
    event: &Event,
    process: Option<&Process>,
) -> Map<String, Value> {
    let mut map = match event_record(clock, table, event, process) {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    map.remove("time");
    map.remove("event.kind");
    map.insert(
        "monitor.event.kind".into(),
        Value::from(event.header().kind.name()),
    );
    map
}

#[cfg(test)]
mod tests;
