//! The decisions themselves: one event, the process's profile and the host guards in,
//! findings out. No state here; the engine keeps it.

#[cfg(doc)]
use crate::event::GuardHit;
use crate::{
    config::{cidr::is_loopback, profile::Profile, Config},
    event::{Device, File, IoUring, MemoryAccess, Net, NetOp, Transport},
};

use crate::event::classify::{file_use, is_probe, net_use, FileUse, NetUse, SHELLS};

use super::{
    Rule, CONNECT_NOT_ALLOWED, DEVICE_NOT_ALLOWED, EXEC_NOT_ALLOWED, FILE_READ_NOT_ALLOWED,
    FILE_WRITE_NOT_ALLOWED, GPU_UNEXPECTED_PROCESS, IO_URING_NOT_ALLOWED, LISTEN_NOT_ALLOWED,
    MODEL_EXFILTRATION, PROCESS_MEMORY_ACCESS, PROTECTED_FILE_READ, PROTECTED_FILE_WRITE,
};

/// One rule broken by one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Finding {
    pub(crate) rule: Rule,
    /// What the rule is about (path, peer, device class, executable): with the rule and
    /// the process, the deduplication key.
    pub(crate) object: String,
    /// A protected file the alert is about besides the event's own (`model-exfiltration`).
    pub(crate) file_path: Option<String>,
}

fn finding(rule: Rule, object: impl Into<String>) -> Finding {
    Finding {
        rule,
        object: object.into(),
        file_path: None,
    }
}

/// An exec by a process that stays under `profile`.
pub(crate) fn exec(profile: &Profile, path: &str) -> Option<Finding> {
    (!profile.allow.exec(path)).then(|| finding(EXEC_NOT_ALLOWED, path))
}

/// An exec the kernel killed (or would have) although its path matches `allow.exec`: the
/// kernel judged the file by its inode, which no expanded glob named.
pub(crate) fn exec_refused(path: &str) -> Finding {
    finding(EXEC_NOT_ALLOWED, path)
}

/// Whether an exec runs a shell on a command string (`/bin/sh -c CMD`, as `system(3)`,
/// `popen(3)` and Python's `subprocess(..., shell=True)` do): a shell in the options
/// before the command (`-c`, `-ec`, `-xc`), and a command after them.
pub(crate) fn is_shell_command(path: &str, args: &[String]) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    if !SHELLS.contains(&name) {
        return false;
    }
    for (i, arg) in args.iter().enumerate().skip(1) {
        let Some(flags) = arg.strip_prefix('-') else {
            return false;
        };
        if flags.is_empty() || flags.starts_with('-') {
            return false;
        }
        if flags.contains('c') {
            return i + 1 < args.len();
        }
    }
    false
}

/// A `sh -c` started by a governed process that exited having run no program: its command
/// was the shell's own builtins, which no `allow.exec` entry vouches for.
pub(crate) fn shell_ran_nothing(path: &str) -> Finding {
    finding(EXEC_NOT_ALLOWED, path)
}

/// What a file event yields: findings, and the protected file it read, if it did.
#[derive(Debug, Default)]
pub(crate) struct FileOutcome {
    pub(crate) findings: Vec<Finding>,
    pub(crate) protected_read: Option<String>,
}

/// Opens for read are checked against `allow.files.read`, opens that may change the file
/// and every other operation against `allow.files.write`. Guarded files are the guard
/// subsystem's: an event it raised carries its verdict on the inode ([`GuardHit`]), which
/// is trusted as it is (no glob is matched again, so a path cut short in the kernel or one
/// reached through a link is judged all the same); a ring-buffer event of a path a guard
/// covers is left to that subsystem's own event of the same access, so one open makes one
/// alert. One finding per rule: the first path that breaks it.
/// Failed opens of missing paths (`ENOENT`, `ENOTDIR`) are probes, not accesses.
pub(crate) fn file(config: &Config, profile: Option<&Profile>, event: &File) -> FileOutcome {
    let mut outcome = FileOutcome::default();
    if is_probe(event.result) {
        return outcome;
    }
    let FileUse { reads, writes } = file_use(event);
    if let Some(hit) = &event.guard {
        // The answering thread judged a permission event by the profile the kernel held
        // for the process at that moment; the same profile decides the alert.
        let judged = hit
            .judged
            .then(|| hit.profile.and_then(|id| config.profile(id)));
        let profile = judged.unwrap_or(profile);
        let name = profile.map(|p| p.name.as_str());
        let may = |names: &[String]| name.is_some_and(|n| names.iter().any(|m| m == n));
        let guards: Vec<_> = hit
            .guards
            .iter()
            .filter_map(|&i| config.guards.protected_paths.get(i as usize))
            .collect();
        if reads && event.result >= 0 {
            outcome.protected_read = Some(event.path.clone());
        }
        let rule = if writes && guards.iter().any(|g| !may(&g.write)) {
            Some(PROTECTED_FILE_WRITE)
        } else if reads && guards.iter().any(|g| !may(&g.read)) {
            Some(PROTECTED_FILE_READ)
        } else {
            None
        };
        // Distinct changes of one file by one process (a chmod, then an unlink) are distinct
        // alerts; the same change repeated folds into a count.
        let object = if rule == Some(PROTECTED_FILE_WRITE) {
            format!("{}\0{}", event.op.name(), event.path)
        } else {
            event.path.clone()
        };
        outcome
            .findings
            .extend(rule.map(|rule| finding(rule, object)));
        return outcome;
    }
    let paths = std::iter::once(event.path.as_str()).chain(event.target.as_deref());
    for path in paths {
        let found = profile.and_then(|profile| {
            if writes && !profile.allow.write(path) {
                Some(FILE_WRITE_NOT_ALLOWED)
            } else if reads && !profile.allow.read(path) {
                Some(FILE_READ_NOT_ALLOWED)
            } else {
                None
            }
        });
        // A guarded path is judged by its guard (fanotify's event for the same access): the
        // globs are matched only when the profile would alert, not for every allowed event
        // (matching them first cost about 880 ns per file event in the pipeline benchmark).
        let found = found.filter(|_| !config.guards.protected_paths.iter().any(|g| g.covers(path)));
        if let Some(rule) = found {
            if !outcome.findings.iter().any(|f| f.rule == rule) {
                outcome.findings.push(finding(rule, path));
            }
        }
    }
    outcome
}

/// Connects and sends are checked against `allow.network.connect` (or, after a read of a
/// protected file, for `model-exfiltration`); TCP listens and UDP binds against
/// `allow.network.listen`; unix socket paths against `allow.network.unix` when given.
pub(crate) fn net(
    profile: Option<&Profile>,
    protected_read: Option<&str>,
    event: &Net,
) -> Vec<Finding> {
    let Some(asked) = net_use(event) else {
        return Vec::new();
    };
    match asked {
        NetUse::UnixConnect(path) | NetUse::UnixBind(path) => {
            let Some(profile) = profile else {
                return Vec::new();
            };
            let rule = match asked {
                NetUse::UnixBind(_) => LISTEN_NOT_ALLOWED,
                _ => CONNECT_NOT_ALLOWED,
            };
            if profile.allow.unix(path) {
                Vec::new()
            } else {
                vec![finding(rule, path)]
            }
        }
        NetUse::Connect(peer) => {
            let allowed = match profile {
                // A connect on a UDP socket sends nothing: it may name `udp_connect` entries.
                Some(profile)
                    if event.op == NetOp::Connect && event.transport == Transport::Udp =>
                {
                    profile.allow.udp_connect(peer)
                }
                Some(profile) => profile.allow.connect(peer),
                None => is_loopback(peer.ip()),
            };
            match (allowed, protected_read, profile) {
                (true, _, _) => Vec::new(),
                (false, Some(file), _) => vec![Finding {
                    rule: MODEL_EXFILTRATION,
                    object: peer.to_string(),
                    file_path: Some(file.to_owned()),
                }],
                (false, None, Some(_)) => vec![finding(CONNECT_NOT_ALLOWED, peer.to_string())],
                (false, None, None) => Vec::new(),
            }
        }
        NetUse::Listen(local) => match profile {
            Some(profile) if !profile.allow.listen(local) => {
                vec![finding(LISTEN_NOT_ALLOWED, local.to_string())]
            }
            _ => Vec::new(),
        },
    }
}

/// A governed process opening a class its profile does not allow: `device-not-allowed`;
/// otherwise, any process not governed by a profile the GPU guard allows:
/// `gpu-unexpected-process`. Opens of absent nodes are ignored; a failed open of a node that
/// exists (ENXIO or ENODEV: no driver behind it) is still the attempt, and counts.
pub(crate) fn device(
    config: &Config,
    profile: Option<&Profile>,
    event: &Device,
) -> Option<Finding> {
    if is_probe(event.result) {
        return None;
    }
    let class = event.class.name();
    if let Some(profile) = profile {
        if !profile.allow.device(event.class) {
            return Some(finding(DEVICE_NOT_ALLOWED, class));
        }
    }
    let guard = config.guards.gpu.as_ref()?;
    let allowed = profile.is_some_and(|p| guard.allow.contains(&p.name));
    (!allowed).then(|| finding(GPU_UNEXPECTED_PROCESS, class))
}

/// Any process reaching a governed process's memory (the kernel only reports those whose
/// target is governed, and never a process's access to itself). One alert per accessor,
/// operation (ptrace: request) and target.
pub(crate) fn memory(event: &MemoryAccess) -> Finding {
    let operation = event.op.ptrace_request().unwrap_or(event.op.name());
    finding(
        PROCESS_MEMORY_ACCESS,
        format!("{operation}:{}", event.target_tgid),
    )
}

/// Another process reading, writing or taking control of the monitor's memory.
pub(crate) fn monitor_memory(event: &MemoryAccess) -> Finding {
    let operation = event.op.ptrace_request().unwrap_or(event.op.name());
    finding(super::MONITOR_TAMPERED, format!("memory:{operation}"))
}

/// A deed against the monitor. A stop (and the SIGCONT that ends it) is reported once it is
/// over, as `monitor-paused`, by [`crate::pipeline::tamper::Pauses`]; SIGCONT alone is no alert.
pub(crate) fn tamper(event: &crate::event::Tamper) -> Option<Finding> {
    use crate::event::TamperOp;
    match event.op {
        TamperOp::Bpf {
            cmd,
            object,
            id,
            unverified,
            ..
        } => {
            let command = monitor_common::bpf_cmd_name(cmd);
            Some(if unverified {
                // One alert per actor and command (`bpftool map show` opens every map), the
                // others folded into its count.
                finding(super::MONITOR_OBJECT_OPENED, command)
            } else {
                finding(
                    super::MONITOR_TAMPERED,
                    format!("{command}:{object:?}:{id}"),
                )
            })
        }
        TamperOp::Signal { signal, .. }
            if crate::event::classify::is_stop(signal) || signal == 18 =>
        {
            None
        }
        // The process that started the monitor (its service manager, container runtime or
        // supervisor) stopping it is its life cycle, not an attack: logged, not alerted.
        TamperOp::Signal { .. } if event.header.tgid == std::os::unix::process::parent_id() => None,
        TamperOp::Signal { signal, .. } => Some(finding(
            super::MONITOR_SIGNALED,
            crate::output::signal_name(signal).map_or_else(|| signal.to_string(), str::to_owned),
        )),
    }
}

/// io_uring use by a governed process whose profile does not set `allow.io_uring`.
pub(crate) fn io_uring(profile: Option<&Profile>, event: &IoUring) -> Option<Finding> {
    let profile = profile?;
    let op = event.op.name();
    let allowed = profile.allow.io_uring || profile.allow.io_uring_ops.iter().any(|o| o == op);
    (!allowed).then(|| finding(IO_URING_NOT_ALLOWED, op))
}
