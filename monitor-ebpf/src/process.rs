//! Process sensor: exec, fork (new processes only) and exit (the last thread), for every
//! process on the host: the daemon's process table needs all of them to know ancestry.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_current_uid_gid, bpf_ktime_get_boot_ns, bpf_probe_read_kernel_str_bytes,
        bpf_probe_read_user_buf,
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use monitor_common::{
    gate, EventHeader, EventKind, ExecEvent, ExecKey, ExitEvent, ForkEvent, InodeKey, Stat,
    WatchEntry, ARGS_CAP, EXEC_ARGS_TRUNCATED, EXEC_FILELESS, EXEC_KILLED, EXEC_PATH_FROM_FILENAME,
    EXEC_PATH_TRUNCATED, EXEC_WOULD_KILL, HEADER_WATCHED, PATH_CAP, WATCH_CANDIDATE,
    WATCH_INHERITED,
};
use monitor_common::{AllowedFile, ExecInstance, ResolvedExecKey, EXEC_INSTANCE_START_SLACK_NS};

use crate::{
    config_self_tgid, count,
    emit::{emit, gave_up, inode_or_count, inserted, kill_current},
    is_watched,
    kernel::{off, read, Task},
    path, EXEC_ALLOWED, EXEC_CANDIDATES, EXEC_GENERATION, WATCHED, WATCHED_THREADS,
};
use crate::{EXEC_INSTANCE, EXEC_RESOLVED, SHELLS};

#[inline(always)]
pub(crate) fn header(
    kind: EventKind,
    tgid: u32,
    pid: u32,
    start_time: u64,
    watched: bool,
) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        flags: if watched { HEADER_WATCHED } else { 0 },
        time_ns: unsafe { bpf_ktime_get_boot_ns() },
        tgid,
        pid,
        start_time,
    }
}

/// Sets a watched process's generation ([`monitor_common::maps::EXEC_GENERATION`], which
/// only the kernel writes) to `next(current)`, or to a fresh one when it has none.
#[inline(always)]
fn new_generation(tgid: u32, next: impl Fn(u32) -> u32) {
    if let Some(generation) = EXEC_GENERATION.get_ptr_mut(tgid) {
        // SAFETY: a map value valid for the program's run. Only the kernel writes this map
        // (user space never does), and a process's exec and fork hooks do not race.
        unsafe { *generation = next(*generation) };
    } else if EXEC_GENERATION.insert(tgid, fresh_generation(), 0).is_err() {
        count(Stat::MapFull, EventKind::Exec as u32);
    }
}

/// A generation no earlier process with the same pid is likely to have had.
#[inline(always)]
fn fresh_generation() -> u32 {
    (unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() } >> 10) as u32 | 1
}

/// `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`
#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(ctx: BtfTracePointContext) -> u32 {
    gave_up(try_exec(&ctx), EventKind::Exec);
    0
}

fn try_exec(ctx: &BtfTracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == config_self_tgid() {
        return Ok(());
    }
    let task = Task(unsafe { bpf_get_current_task() } as *const u8);
    let start_time = task.process_start_time()?;
    let parent = task.real_parent()?;
    let ppid = parent.tgid()?;
    let parent_start_time = parent.process_start_time().unwrap_or(0);
    let bprm: *const u8 = ctx.arg(2);
    // A new program: what user space judged of the old one no longer holds.
    if unsafe { WATCHED.get(tgid).is_some() } {
        new_generation(tgid, |generation| generation.wrapping_add(1));
    }
    let mut watched = is_watched(tgid);
    if !watched && is_candidate(bprm) {
        // Watched before the new program runs: no window for a fast process to act unseen.
        let entry = WatchEntry {
            reason: WATCH_CANDIDATE,
            profile: 0,
            generation: 0,
            _pad: 0,
        };
        watched = WATCHED.insert(tgid, entry, 0).is_ok();
        if watched {
            new_generation(tgid, |_| fresh_generation());
            crate::open_gate(gate::GOVERNED);
        } else {
            count(Stat::MapFull, EventKind::Exec as u32);
        }
    }

    // The verdict first, with no side effect; then the record is reserved (in the priority
    // ring when it reports enforcement, which must not be lost in a flood of bulk events);
    // only then the kill is sent, so a kill is never without its report's room being
    // asked for, and a kill whose report finds no room is still counted as a loss.
    let verdict = exec_verdict(bprm, task, tgid, start_time);
    let priority = verdict != 0;
    let reserved = crate::emit::reserve::<ExecEvent>(EventKind::Exec, priority);
    if verdict == EXEC_KILLED {
        kill_current();
    }
    let Some(mut entry) = reserved else {
        return Ok(());
    };
    // SAFETY (every `(*event)` below): a ring reservation of the event's size, owned by
    // this program until it submits it; fields are written before user space can read.
    let event = entry.as_mut_ptr();
    let uid_gid = bpf_get_current_uid_gid();
    unsafe {
        (*event).header = header(EventKind::Exec, tgid, pid_tgid as u32, start_time, watched);
        (*event).ppid = ppid;
        (*event).uid = uid_gid as u32;
        (*event).gid = (uid_gid >> 32) as u32;
        (*event).parent_start_time = parent_start_time;
        (*event).cgroup_id = bpf_get_current_cgroup_id();
        (*event).flags = 0;
        (*event).path_len = 0;
        (*event).args_len = 0;
        // The real count, also when argv is cut at ARGS_CAP: the kernel counted it for exec.
        (*event).argc = read::<i32>(bprm, off!(binprm_argc)).unwrap_or(0).max(0) as u32;
        (*event)._pad = 0;
    }
    let mut complete = true;

    // argv as the new program sees it: [arg_start, arg_end) of the new mm, NUL-separated.
    let args = unsafe { &mut (*event).args };
    match read_args(task, args) {
        Ok((len, truncated)) => unsafe {
            (*event).args_len = len;
            if truncated {
                (*event).flags |= EXEC_ARGS_TRUNCATED;
            }
        },
        Err(_) => complete = false,
    }

    let path_buf = unsafe { &mut (*event).path };
    match exec_path(bprm, path_buf) {
        Ok((len, truncated)) => unsafe {
            (*event).path_len = len;
            if truncated {
                (*event).flags |= EXEC_PATH_TRUNCATED;
            }
        },
        Err(_) => {
            // Fall back to the name given to execve, so the event still says what ran.
            let filename: *const u8 =
                unsafe { read(bprm, off!(binprm_filename)) }.unwrap_or(core::ptr::null());
            match unsafe { bpf_probe_read_kernel_str_bytes(filename, path_buf) } {
                Ok(name) => unsafe {
                    (*event).path_len = name.len() as u32;
                    (*event).flags |= EXEC_PATH_FROM_FILENAME;
                },
                Err(_) => complete = false,
            }
        }
    }
    // A program with no file on disk (memfd_create + execveat/fexecve, or a file unlinked
    // while open): its path walk ends at "/", so the file's own name (`memfd:NAME`) says it.
    if let Ok(Some(dentry)) = fileless_dentry(bprm) {
        unsafe { (*event).flags |= EXEC_FILELESS };
        if unsafe { (*event).path_len } <= 1 {
            let qstr = dentry.wrapping_add(off!(dentry_name));
            let name: *const u8 =
                unsafe { read(qstr, off!(qstr_name)) }.unwrap_or(core::ptr::null());
            if let Ok(name) = unsafe { bpf_probe_read_kernel_str_bytes(name, path_buf) } {
                unsafe { (*event).path_len = name.len() as u32 };
            }
        }
    }
    if !complete {
        entry.incomplete();
    }
    unsafe { (*event).flags |= verdict };
    entry.submit();
    Ok(())
}

/// For a process governed by an enforce-mode profile: whether an exec of a program the profile
/// does not allow is to be killed (`EXEC_KILLED`; the caller sends the signal here, before the
/// new program runs a single instruction: it is delivered on the way back to user space), or
/// would be in a dry run. Returns the `EXEC_*` verdict flag; sends nothing itself.
#[inline(always)]
fn exec_verdict(bprm: *const u8, task: Task, tgid: u32, start_time: u64) -> u32 {
    let Some((profile, policy)) = crate::enforce::enforced_policy() else {
        return 0;
    };
    // A process that just exec'd a candidate has no profile yet; one with a profile is a
    // governed server or its child.
    // Unread (counted): not judged, not killed; user space still judges the exec event.
    let Some((dev, ino)) = inode_or_count(exec_inode(bprm), EventKind::Exec) else {
        return 0;
    };
    let key = ExecKey { profile, dev, ino };
    let seen = exec_file(bprm);
    // Only what `allow.exec` allows (and the executables of the profiles that `allow.transitions`
    // names, which user space puts here too): another profile's selector executable is no
    // exemption, or a compromised server could re-exec itself into a laxer profile.
    if unsafe { EXEC_ALLOWED.get(key) }.is_some_and(|allowed| same_file(allowed, &seen)) {
        return 0;
    }
    // ... or what its templated `allow.exec` globs (`${python.prefix}/bin/python*`) resolved
    // to for this process's facts.
    if resolved_allows(tgid, profile, start_time, dev, ino, &seen) {
        return 0;
    }
    // `sh -c CMD` is judged by what the shell runs: the shell keeps this process's profile,
    // so every program it (or a subshell) execs comes back here.
    if is_shell_command(task, dev, ino) {
        return 0;
    }
    if crate::enforce::refuse(&policy) == 1 {
        return EXEC_WOULD_KILL;
    }
    EXEC_KILLED
}

/// Whether the process's resolved-profile instance ([`EXEC_INSTANCE`], written by user space
/// when it resolved the process's facts, or inherited at fork) allows the executable.
#[inline(always)]
fn resolved_allows(
    tgid: u32,
    profile: u32,
    start_time: u64,
    dev: u32,
    ino: u64,
    seen: &Option<AllowedFile>,
) -> bool {
    let Some(instance) = (unsafe { EXEC_INSTANCE.get(tgid) }) else {
        return false;
    };
    // Another profile's instance (a transition), or one of an earlier process with this pid.
    if instance.profile != profile
        || instance.start_time.abs_diff(start_time) > EXEC_INSTANCE_START_SLACK_NS
    {
        return false;
    }
    let key = ResolvedExecKey {
        instance: instance.instance,
        dev,
        ino,
    };
    unsafe { EXEC_RESOLVED.get(key) }.is_some_and(|allowed| same_file(allowed, seen))
}

/// Whether the exec'd file is the one user space allowed ([`AllowedFile`]): the same change
/// time, and the same generation where user space could read it. A file whose identity
/// cannot be read here is not that file: refused.
#[inline(always)]
fn same_file(allowed: &AllowedFile, seen: &Option<AllowedFile>) -> bool {
    let Some(seen) = seen else {
        return false;
    };
    seen.ctime_sec == allowed.ctime_sec
        && seen.ctime_nsec == allowed.ctime_nsec
        && (allowed.generation == monitor_common::INODE_GENERATION_UNKNOWN
            || seen.generation == allowed.generation)
}

/// The bits of `i_ctime_nsec` that hold nanoseconds.
const CTIME_NSEC_MASK: u32 = (1 << 30) - 1;

/// The exec'd file's generation and change time (see [`same_file`]).
#[inline(always)]
fn exec_file(bprm: *const u8) -> Option<AllowedFile> {
    let file: *const u8 = unsafe { read(bprm, off!(binprm_file)) }.ok()?;
    if file.is_null() {
        return None;
    }
    let inode = crate::kernel::file_inode(file).ok()?;
    let generation: u32 = unsafe { read(inode, off!(inode_generation)) }.ok()?;
    let ctime_sec: i64 = unsafe { read(inode, off!(inode_ctime_sec)) }.ok()?;
    let ctime_nsec: u32 = unsafe { read(inode, off!(inode_ctime_nsec)) }.ok()?;
    Some(AllowedFile {
        generation,
        ctime_sec: ctime_sec as u32,
        // Below 10^9 < 2^30; the top bit is a flag of multigrain timestamps (6.13+,
        // `I_CTIME_QUERIED`), which `inode_get_ctime_nsec` masks off too.
        ctime_nsec: ctime_nsec & CTIME_NSEC_MASK,
    })
}

/// Bytes of the new program's argv read to find a shell's `-c`: argv[0] and the options
/// before the command. A longer argv[0] (or options) is not seen as `sh -c`: refused as any
/// other program.
const SHELL_ARGS_PEEK: usize = 128;

/// Whether the executable is a shell ([`SHELLS`]) run on a command string: options before
/// the command (`-c`, `-ec`, `-xc`), one of which holds `c`, and an argument after them (as
/// `is_shell_command` in user space decides).
#[inline(always)]
fn is_shell_command(task: Task, dev: u32, ino: u64) -> bool {
    let key = InodeKey { dev, _pad: 0, ino };
    if unsafe { SHELLS.get(key).is_none() } {
        return false;
    }
    let Ok(mm) = task.mm() else {
        return false;
    };
    let (Ok(start), Ok(end)) = (unsafe { read::<u64>(mm, off!(mm_arg_start)) }, unsafe {
        read::<u64>(mm, off!(mm_arg_end))
    }) else {
        return false;
    };
    let len = end.saturating_sub(start) as usize;
    let len = if len > SHELL_ARGS_PEEK {
        SHELL_ARGS_PEEK
    } else {
        len
    };
    let mut buf = [0u8; SHELL_ARGS_PEEK];
    if unsafe { bpf_probe_read_user_buf(start as *const u8, &mut buf[..len]) }.is_err() {
        return false;
    }
    // argv[0], then each option: '-' and flags (not "-", not "--..."); a flag 'c' ends the
    // options, and the command must follow.
    const ARG0: u8 = 0;
    const OPTION: u8 = 1;
    const DASH: u8 = 2;
    const FLAGS: u8 = 3;
    const COMMAND_FLAG: u8 = 4;
    const COMMAND: u8 = 5;
    let mut state = ARG0;
    for (i, &byte) in buf.iter().enumerate() {
        if i >= len {
            break;
        }
        state = match (state, byte) {
            (ARG0, 0) => OPTION,
            (ARG0, _) => ARG0,
            (OPTION, b'-') => DASH,
            (OPTION, _) => return false,
            (DASH, 0 | b'-') => return false,
            (DASH | FLAGS, b'c') => COMMAND_FLAG,
            (FLAGS, 0) => OPTION,
            (DASH | FLAGS, _) => FLAGS,
            (COMMAND_FLAG, 0) => COMMAND,
            (COMMAND_FLAG, _) => COMMAND_FLAG,
            // A byte after the option that holds `c`: the command is there.
            _ => return true,
        };
    }
    false
}

#[inline(always)]
fn exec_inode(bprm: *const u8) -> Result<Option<(u32, u64)>, i64> {
    let file: *const u8 = unsafe { read(bprm, off!(binprm_file))? };
    if file.is_null() {
        return Ok(None);
    }
    let inode = crate::kernel::file_inode(file)?;
    let ino: u64 = unsafe { read(inode, off!(inode_ino))? };
    let sb: *const u8 = unsafe { read(inode, off!(inode_sb))? };
    let dev: u32 = unsafe { read(sb, off!(sb_dev))? };
    Ok(Some((dev, ino)))
}

/// The dentry of the executable when it has no link on disk (`i_nlink == 0`).
#[inline(always)]
fn fileless_dentry(bprm: *const u8) -> Result<Option<*const u8>, i64> {
    let file: *const u8 = unsafe { read(bprm, off!(binprm_file))? };
    if file.is_null() {
        return Ok(None);
    }
    let inode = crate::kernel::file_inode(file)?;
    let nlink: u32 = unsafe { read(inode, off!(inode_nlink))? };
    if nlink != 0 {
        return Ok(None);
    }
    let (_, dentry) = crate::kernel::file_path(file)?;
    Ok(Some(dentry))
}

#[inline(always)]
fn read_args(task: Task, args: &mut [u8; ARGS_CAP]) -> Result<(u32, bool), i64> {
    let mm = task.mm()?;
    let start: u64 = unsafe { read(mm, off!(mm_arg_start))? };
    let end: u64 = unsafe { read(mm, off!(mm_arg_end))? };
    let len = end.saturating_sub(start) as usize;
    let truncated = len > ARGS_CAP;
    let len = if truncated { ARGS_CAP } else { len };
    unsafe { bpf_probe_read_user_buf(start as *const u8, &mut args[..len]).map_err(|e| e as i64)? };
    Ok((len as u32, truncated))
}

/// Whether the executable (the interpreter, for a script) is a candidate for a profile.
#[inline(always)]
fn is_candidate(bprm: *const u8) -> bool {
    // Unread (counted): not watched at exec; user space still sees the exec event.
    match inode_or_count(exec_inode(bprm), EventKind::Exec) {
        Some((dev, ino)) => {
            let key = InodeKey { dev, _pad: 0, ino };
            unsafe { EXEC_CANDIDATES.get(key).is_some() }
        }
        None => false,
    }
}

#[inline(always)]
fn exec_path(bprm: *const u8, out: &mut [u8; PATH_CAP]) -> Result<(u32, bool), i64> {
    let file: *const u8 = unsafe { read(bprm, off!(binprm_file))? };
    if file.is_null() {
        return Err(-1);
    }
    let (mnt, dentry) = crate::kernel::file_path(file)?;
    path::write_path(out, mnt, dentry)
}

/// `sched_process_fork(struct task_struct *parent, struct task_struct *child)`
#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> u32 {
    gave_up(try_fork(&ctx), EventKind::Fork);
    0
}

fn try_fork(ctx: &BtfTracePointContext) -> Result<(), i64> {
    let parent = Task(ctx.arg(0));
    let child = Task(ctx.arg(1));
    let child_tgid = child.tgid()?;
    // A new thread is not a new process; a thread of a watched one is remembered, so that a
    // syscall naming it (ptrace, process_vm_readv take any thread id) finds its process.
    let child_pid = child.pid()?;
    if child_pid != child_tgid {
        if unsafe { WATCHED.get(child_tgid).is_some() } {
            // A full map loses the thread's memory accesses (their target is not found).
            inserted(
                WATCHED_THREADS.insert(child_pid, child_tgid, 0),
                EventKind::MemoryAccess,
            );
        }
        return Ok(());
    }
    let parent_tgid = parent.tgid()?;
    if parent_tgid == config_self_tgid() {
        return Ok(());
    }
    // Watching is inherited: a watched server's children are watched from their first
    // instruction, with no round trip to user space.
    let inherited = unsafe { WATCHED.get(parent_tgid).copied() };
    if let Some(watch) = inherited {
        let entry = WatchEntry {
            reason: watch.reason | WATCH_INHERITED,
            profile: watch.profile,
            generation: 0,
            _pad: 0,
        };
        if WATCHED.insert(child_tgid, entry, 0).is_ok() {
            // A fresh generation: judgments of an earlier process that had this pid (the
            // kernel's cache keys on pid and generation) are not the child's.
            new_generation(child_tgid, |_| fresh_generation());
            inherit_instance(parent, parent_tgid, child, child_tgid);
        } else {
            count(Stat::MapFull, EventKind::Fork as u32);
        }
    } else if unsafe { WATCHED.get(child_tgid).is_some() } {
        // A new process cannot be watched yet: an entry under its pid is an earlier
        // process's that outlived it (user space wrote it for a governed child after the
        // kernel dropped it at that child's exit). Left, it would put this unrelated process
        // under the old profile.
        let _ = WATCHED.remove(child_tgid);
    }
    let watched = inherited.is_some() || is_watched(child_tgid);
    let event = ForkEvent {
        header: header(
            EventKind::Fork,
            child_tgid,
            child_tgid,
            child.start_time().unwrap_or(0),
            watched,
        ),
        parent_tgid,
        _pad: 0,
        parent_start_time: parent.process_start_time().unwrap_or(0),
    };
    emit(EventKind::Fork, false, event);
    Ok(())
}

/// A child keeps its parent's resolved-profile instance (the facts are passed down by fork,
/// as in user space), if that entry is the parent's own.
#[inline(always)]
fn inherit_instance(parent: Task, parent_tgid: u32, child: Task, child_tgid: u32) {
    let Some(instance) = (unsafe { EXEC_INSTANCE.get(parent_tgid).copied() }) else {
        return;
    };
    let Ok(parent_start) = parent.process_start_time() else {
        return;
    };
    if instance.start_time.abs_diff(parent_start) > EXEC_INSTANCE_START_SLACK_NS {
        return;
    }
    let entry = ExecInstance {
        start_time: child.start_time().unwrap_or(0),
        ..instance
    };
    if EXEC_INSTANCE.insert(child_tgid, entry, 0).is_err() {
        count(Stat::MapFull, EventKind::Fork as u32);
    }
}

/// `sched_process_exit(struct task_struct *p, ...)`: one per thread; we report the last.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> u32 {
    gave_up(try_exit(&ctx), EventKind::Exit);
    0
}

fn try_exit(ctx: &BtfTracePointContext) -> Result<(), i64> {
    let task = Task(ctx.arg(0));
    let tgid = task.tgid()?;
    let pid = task.pid()?;
    if pid != tgid {
        // Its id may be reused by another process's thread.
        let _ = WATCHED_THREADS.remove(pid);
    }
    // `signal->live` reached 0 before this tracepoint when the whole group is dead.
    if task.live_threads()? != 0 {
        return Ok(());
    }
    if tgid == config_self_tgid() {
        return Ok(());
    }
    let watched = is_watched(tgid);
    if unsafe { WATCHED.get(tgid).is_some() } {
        // Absent keys are not errors here: only a watched process has entries to drop.
        let _ = WATCHED.remove(tgid);
        let _ = EXEC_GENERATION.remove(tgid);
        let _ = EXEC_INSTANCE.remove(tgid);
    }
    let event = ExitEvent {
        header: header(
            EventKind::Exit,
            tgid,
            task.pid().unwrap_or(0),
            task.process_start_time().unwrap_or(0),
            watched,
        ),
        exit_code: task.exit_code().unwrap_or(0),
        flags: 0,
    };
    emit(EventKind::Exit, false, event);
    Ok(())
}
