//! Another process reaching a governed process's memory (where the model weights live):
//! `process_vm_readv`/`process_vm_writev`, `ptrace` attach/seize/peek/poke, `pidfd_getfd`, and
//! opens of `/proc/PID/mem` however they name it (judged by the opened file, not the path).
//!
//! These hooks run for every process on the host, so each first asks the cheapest question
//! that can end it: is the target governed (one hash lookup by the pid the syscall names)?
//! Under an enforce-mode profile of the target, the accessor is killed at the syscall's entry
//! (for an open: at its exit, before the fd reaches user space).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use monitor_common::{
    gate, EventKind, MemoryAccessEvent, MemoryOpCode, WatchEntry, MEMORY_AT_EXIT, MEMORY_KILLED,
    MEMORY_TARGET_MONITOR, MEMORY_WOULD_KILL, POLICY_DRY_RUN, POLICY_ENFORCE, PTRACE_ATTACH,
    PTRACE_PEEKDATA, PTRACE_PEEKTEXT, PTRACE_PEEKUSR, PTRACE_POKEDATA, PTRACE_POKETEXT,
    PTRACE_POKEUSR, PTRACE_SEIZE, WATCH_CANDIDATE,
};

use crate::{
    config_self_tgid,
    emit::{gave_up, kill_current, reserve},
    kernel::{off, read, Task},
    process::header,
    syscall_arg, syscall_ret, CONFIG, POLICY, WATCHED, WATCHED_THREADS,
};

/// The process whose memory is reached.
#[derive(Clone, Copy)]
struct Target {
    tgid: u32,
    entry: WatchEntry,
    /// 0 when the hook did not read it (user space looks the process up by tgid).
    start_time: u64,
    /// The target is the monitor itself (user space files its threads in
    /// `WATCHED_THREADS` under its tgid): reported, never enforced.
    monitor: bool,
}

/// The monitor as a target.
#[inline(always)]
fn the_monitor(tgid: u32) -> Target {
    Target {
        tgid,
        entry: WatchEntry {
            reason: 0,
            profile: 0,
            generation: 0,
            _pad: 0,
        },
        start_time: 0,
        monitor: true,
    }
}

/// The governed process a pid names (its tgid, or one of its threads). A process that just
/// exec'd a profile's executable counts (user space has not matched its selector yet, and
/// drops the report if it does not govern the process).
#[inline(always)]
fn governed(pid: u32) -> Option<Target> {
    let self_tgid = config_self_tgid();
    if pid == self_tgid {
        return Some(the_monitor(self_tgid));
    }
    let governs = |e: &WatchEntry| e.profile != 0 || e.reason & 0xff == WATCH_CANDIDATE;
    let target = |tgid, entry: &WatchEntry| Target {
        tgid,
        entry: *entry,
        start_time: 0,
        monitor: false,
    };
    if let Some(entry) = unsafe { WATCHED.get(pid) } {
        return governs(entry).then(|| target(pid, entry));
    }
    let tgid = *unsafe { WATCHED_THREADS.get(pid) }?;
    if tgid == self_tgid {
        return Some(the_monitor(self_tgid));
    }
    let entry = unsafe { WATCHED.get(tgid) }?;
    governs(entry).then(|| target(tgid, entry))
}

/// The thread group of the task a `struct pid` names (`pid->tasks[PIDTYPE_PID].first`, a
/// `task_struct::pid_links[PIDTYPE_PID]`): (tgid, start time of the process).
#[inline(always)]
fn pid_task(pid: *const u8) -> Result<(u32, u64), i64> {
    if pid.is_null() {
        return Err(-1);
    }
    let first: *const u8 = unsafe { read(pid, off!(pid_tasks))? };
    if first.is_null() {
        return Err(-1);
    }
    let task = Task(first.wrapping_sub(off!(task_pid_links)));
    Ok((task.tgid()?, task.process_start_time().unwrap_or(0)))
}

/// Reports (and under an enforce-mode profile of the target, kills) the current process for
/// reaching the target's memory.
#[inline(always)]
fn report(op: MemoryOpCode, target: Target, arg: i64, at_exit: bool) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // A process may read its own memory; the monitor and init are never killed.
    if tgid == target.tgid || tgid == config_self_tgid() {
        return;
    }
    let mut flags = if at_exit { MEMORY_AT_EXIT } else { 0 };
    if target.monitor {
        flags |= MEMORY_TARGET_MONITOR;
    } else if let Some(policy) = unsafe { POLICY.get(target.entry.profile) } {
        if policy.flags & POLICY_ENFORCE != 0 {
            flags |= if policy.flags & POLICY_DRY_RUN != 0 || tgid == 1 {
                MEMORY_WOULD_KILL
            } else {
                MEMORY_KILLED
            };
        }
    }
    // The record is reserved before the kill: a full ring still counts the loss, and the
    // kill never waits on user space.
    let entry = reserve::<MemoryAccessEvent>(EventKind::MemoryAccess, true);
    if flags & MEMORY_KILLED != 0 {
        kill_current();
    }
    let Some(mut entry) = entry else {
        return;
    };
    let task = Task(unsafe { bpf_get_current_task() } as *const u8);
    let event = MemoryAccessEvent {
        header: header(
            EventKind::MemoryAccess,
            tgid,
            pid_tgid as u32,
            task.process_start_time().unwrap_or(0),
            unsafe { WATCHED.get(tgid).is_some() },
        ),
        op: op as u32,
        flags,
        target_tgid: target.tgid,
        target_profile: target.entry.profile,
        target_start_time: target.start_time,
        arg,
    };
    entry.write(event);
    entry.submit();
}

/// `process_vm_readv(pid, ...)` and `process_vm_writev(pid, ...)`.
#[raw_tracepoint]
pub fn process_vm_enter(ctx: RawTracePointContext) -> u32 {
    let pid = syscall_arg(&ctx, 0) as u32;
    let Some(target) = governed(pid) else {
        return 0;
    };
    let op = if crate::syscalls::process_vm_writes(&ctx) {
        MemoryOpCode::ProcessVmWritev
    } else {
        MemoryOpCode::ProcessVmReadv
    };
    report(op, target, 0, false);
    0
}

/// `ptrace(request, pid, addr, data)`: the requests that take control of a process or read or
/// write its memory.
#[raw_tracepoint]
pub fn ptrace_enter(ctx: RawTracePointContext) -> u32 {
    let request = syscall_arg(&ctx, 0);
    if !matches!(
        request,
        PTRACE_ATTACH
            | PTRACE_SEIZE
            | PTRACE_PEEKTEXT
            | PTRACE_PEEKDATA
            | PTRACE_PEEKUSR
            | PTRACE_POKETEXT
            | PTRACE_POKEDATA
            | PTRACE_POKEUSR
    ) {
        return 0;
    }
    let pid = syscall_arg(&ctx, 1) as u32;
    let Some(target) = governed(pid) else {
        return 0;
    };
    report(MemoryOpCode::Ptrace, target, request as i64, false);
    0
}

/// `pidfd_getfd(pidfd, targetfd, flags)`: the pidfd's `struct pid` is the inode's
/// `i_private` on pidfs (6.9+), the file's `private_data` before.
#[raw_tracepoint]
pub fn pidfd_getfd_enter(ctx: RawTracePointContext) -> u32 {
    gave_up(try_pidfd_getfd(&ctx), EventKind::MemoryAccess);
    0
}

fn try_pidfd_getfd(ctx: &RawTracePointContext) -> Result<(), i64> {
    let task = Task(unsafe { bpf_get_current_task() } as *const u8);
    let file = task.file(syscall_arg(ctx, 0) as i64)?;
    let inode = crate::kernel::file_inode(file)?;
    let pidfs: *const u8 = unsafe { read(inode, off!(inode_private)) }.unwrap_or(core::ptr::null());
    let target = match pid_task(pidfs) {
        Ok((tgid, start)) if governed(tgid).is_some() => Some((tgid, start)),
        _ => {
            let legacy: *const u8 = unsafe { read(file, off!(file_private_data))? };
            pid_task(legacy)
                .ok()
                .filter(|(tgid, _)| governed(*tgid).is_some())
        }
    };
    let Some((tgid, start_time)) = target else {
        return Ok(());
    };
    let Some(target) = governed(tgid) else {
        return Ok(());
    };
    report(
        MemoryOpCode::PidfdGetfd,
        Target {
            start_time,
            ..target
        },
        syscall_arg(ctx, 1) as i64,
        false,
    );
    Ok(())
}

/// The exit of `open`, `openat`, `openat2`: was the file opened a `/proc/PID/mem`? Judged by
/// the file (its `f_op->open` is the kernel's `mem_open`), so a symlink, a dirfd on
/// `/proc/PID`, or `/proc/PID/task/TID/mem` are all the same file; the target is the task
/// of the proc inode.
/// Run by `syscalls::sys_exit_opens`.
#[inline(always)]
pub fn proc_mem_open_exit(ctx: RawTracePointContext) -> u32 {
    let fd = syscall_ret(&ctx);
    if fd < 0 {
        return 0;
    }
    gave_up(check_proc_mem_fd(fd), EventKind::MemoryAccess);
    0
}

/// Whether `fd` of the current process is a `/proc/PID/mem` of a governed process; reports
/// it if so (also used for io_uring opens, whose fds the syscall exit never sees).
#[inline(always)]
pub fn check_proc_mem_fd(fd: i64) -> Result<(), i64> {
    // The cheapest test first: with no process governed, no memory is guarded. This hook runs
    // at the exit of every open on the host; the walk below (task -> files -> fd table ->
    // file -> f_op -> open, six kernel reads) cost about 123 ns per open when it ran first.
    if !crate::gate_open(gate::GOVERNED) {
        return Ok(());
    }
    let mem_open = unsafe { core::ptr::read_volatile(&CONFIG.proc_mem_open) };
    if mem_open == 0 {
        return Ok(());
    }
    let task = Task(unsafe { bpf_get_current_task() } as *const u8);
    let file = task.file(fd)?;
    let fops: *const u8 = unsafe { read(file, off!(file_f_op))? };
    let open: u64 = unsafe { read(fops, off!(fop_open))? };
    if open != mem_open {
        return Ok(());
    }
    let inode = crate::kernel::file_inode(file)?;
    let proc_inode = inode.wrapping_sub(off!(proc_inode_vfs_inode));
    let pid: *const u8 = unsafe { read(proc_inode, off!(proc_inode_pid))? };
    let (tgid, start_time) = pid_task(pid)?;
    let Some(target) = governed(tgid) else {
        return Ok(());
    };
    report(
        MemoryOpCode::ProcMemOpen,
        Target {
            start_time,
            ..target
        },
        fd,
        true,
    );
    Ok(())
}
