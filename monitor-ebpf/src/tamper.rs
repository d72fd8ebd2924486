//! Other processes reaching for the monitor itself: `bpf()` commands aimed at its programs,
//! maps and links, and signals sent to it.
//!
//! An attacker reaches a BPF object through an fd: `*_GET_FD_BY_ID` (bpftool's way), an
//! `OBJ_GET` of a pin, or an fd passed on. Whatever the way, the command that changes the
//! object (`LINK_DETACH`, `MAP_DELETE_ELEM`, ...) names the fd, and the hook resolves that fd
//! in the caller's fd table to the kernel's object and its id: the target is identified, not
//! guessed. A `*_GET_FD_BY_ID` names an id written in the caller's memory: reported as
//! suspected (`TAMPER_UNVERIFIED`). The ids of the monitor's objects are in
//! [`MONITOR_OBJECTS`], filled by user space after attach.
//!
//! The bpf() hook runs for every `bpf()` call on the host; its first test is the command (a
//! compare), the second the caller (not the monitor), before any memory is read.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_user},
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use monitor_common::{
    monitor_object_key, BpfObjectKind, EventKind, TamperEvent, TamperOpCode, BPF_LINK_DETACH,
    BPF_LINK_GET_FD_BY_ID, BPF_LINK_UPDATE, BPF_MAP_DELETE_BATCH, BPF_MAP_DELETE_ELEM,
    BPF_MAP_FREEZE, BPF_MAP_GET_FD_BY_ID, BPF_MAP_LOOKUP_AND_DELETE_BATCH,
    BPF_MAP_LOOKUP_AND_DELETE_ELEM, BPF_MAP_UPDATE_BATCH, BPF_MAP_UPDATE_ELEM, BPF_PROG_DETACH,
    BPF_PROG_GET_FD_BY_ID, TAMPER_READ_ONLY, TAMPER_RESULT, TAMPER_UNVERIFIED,
};

use crate::{
    config_self_tgid,
    emit::gave_up,
    kernel::{off, read, Task},
    process::header,
    syscall_arg, syscall_ret, BPF_PENDING, MONITOR_OBJECTS,
};

/// How a command names its object: by an fd at this offset of `union bpf_attr`, or by an id
/// at offset 0.
#[derive(Clone, Copy)]
enum Names {
    Fd(BpfObjectKind, usize),
    // The offset is unused, but always set: an enum whose variants leave a field undefined
    // lets LLVM spill an uninitialised register, which the verifier refuses (`!read_ok`).
    Id(
        BpfObjectKind,
        #[expect(dead_code, reason = "set to 0 so that no variant leaves it undefined")] usize,
    ),
}

/// `BPF_F_RDONLY` in `bpf_attr.open_flags` of `BPF_MAP_GET_FD_BY_ID`.
const BPF_F_RDONLY: u32 = 1 << 3;

/// The commands that change one of the monitor's objects or take a handle on it.
#[inline(always)]
fn names(cmd: u32) -> Option<Names> {
    Some(match cmd {
        // `map_fd` first in the element commands and in `MAP_FREEZE`.
        BPF_MAP_UPDATE_ELEM
        | BPF_MAP_DELETE_ELEM
        | BPF_MAP_LOOKUP_AND_DELETE_ELEM
        | BPF_MAP_FREEZE => Names::Fd(BpfObjectKind::Map, 0),
        // The batch commands: in_batch, out_batch, keys, values (u64 each), count, map_fd.
        BPF_MAP_LOOKUP_AND_DELETE_BATCH | BPF_MAP_UPDATE_BATCH | BPF_MAP_DELETE_BATCH => {
            Names::Fd(BpfObjectKind::Map, 36)
        }
        // `target_fd`, then `attach_bpf_fd`: the program to detach.
        BPF_PROG_DETACH => Names::Fd(BpfObjectKind::Program, 4),
        BPF_LINK_UPDATE | BPF_LINK_DETACH => Names::Fd(BpfObjectKind::Link, 0),
        BPF_PROG_GET_FD_BY_ID => Names::Id(BpfObjectKind::Program, 0),
        BPF_MAP_GET_FD_BY_ID => Names::Id(BpfObjectKind::Map, 0),
        BPF_LINK_GET_FD_BY_ID => Names::Id(BpfObjectKind::Link, 0),
        _ => return None,
    })
}

/// `bpf(cmd, attr, size)`: remembers a call aimed at one of the monitor's objects until its
/// exit reports it with its result.
#[raw_tracepoint]
pub fn bpf_enter(ctx: RawTracePointContext) -> u32 {
    let cmd = syscall_arg(&ctx, 0) as u32;
    let Some(names) = names(cmd) else {
        return 0;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == config_self_tgid() {
        return 0;
    }
    gave_up(try_bpf_enter(&ctx, cmd, names, pid_tgid), EventKind::Tamper);
    0
}

fn try_bpf_enter(
    ctx: &RawTracePointContext,
    cmd: u32,
    names: Names,
    pid_tgid: u64,
) -> Result<(), i64> {
    let attr = syscall_arg(ctx, 1) as *const u8;
    let task = Task(unsafe { bpf_get_current_task() } as *const u8);
    let (kind, id, flags) = match names {
        Names::Id(kind, _) => {
            let id: u32 = unsafe { bpf_probe_read_user(attr as *const u32)? };
            let mut flags = TAMPER_UNVERIFIED;
            if matches!(kind, BpfObjectKind::Map) {
                // `map_id`, `next_id`, `open_flags`.
                let open: u32 = unsafe { bpf_probe_read_user(attr.add(8) as *const u32) }?;
                if open & BPF_F_RDONLY != 0 {
                    flags |= TAMPER_READ_ONLY;
                }
            }
            (kind, id, flags)
        }
        Names::Fd(kind, offset) => {
            let fd: u32 = unsafe { bpf_probe_read_user(attr.add(offset) as *const u32)? };
            let file = task.file(fd as i32 as i64)?;
            let object: *const u8 = unsafe { read(file, off!(file_private_data))? };
            if object.is_null() {
                return Ok(());
            }
            let id: u32 = match kind {
                BpfObjectKind::Map => unsafe { read(object, off!(bpf_map_id))? },
                BpfObjectKind::Link => unsafe { read(object, off!(bpf_link_id))? },
                BpfObjectKind::Program => {
                    let aux: *const u8 = unsafe { read(object, off!(bpf_prog_aux))? };
                    unsafe { read(aux, off!(bpf_prog_aux_id))? }
                }
            };
            (kind, id, 0)
        }
    };
    if unsafe { MONITOR_OBJECTS.get(monitor_object_key(kind, id)) }.is_none() {
        return Ok(());
    }
    let event = TamperEvent {
        header: header(
            EventKind::Tamper,
            (pid_tgid >> 32) as u32,
            pid_tgid as u32,
            task.process_start_time().unwrap_or(0),
            false,
        ),
        op: TamperOpCode::Bpf as u32,
        cmd,
        object_kind: kind as u32,
        object_id: id,
        flags,
        _pad: 0,
        result: 0,
    };
    if BPF_PENDING.insert(pid_tgid, event, 0).is_err() {
        // Reported at once, without its result, rather than not at all.
        emit(&event);
    }
    Ok(())
}

/// The exit of `bpf()`: the result of a call the entry remembered.
#[raw_tracepoint]
pub fn bpf_exit(ctx: RawTracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(pending) = (unsafe { BPF_PENDING.get(pid_tgid) }) else {
        return 0;
    };
    let mut event = *pending;
    let _ = BPF_PENDING.remove(pid_tgid);
    event.result = syscall_ret(&ctx);
    event.flags |= TAMPER_RESULT;
    emit(&event);
    0
}

/// Signals that do not stop, end or reconfigure a process: not reported. (SIGHUP reloads
/// the configuration; what a reload changes is reported on its own.)
#[inline(always)]
fn harmless(sig: i32) -> bool {
    // SIGHUP 1, SIGCHLD 17, SIGURG 23, SIGWINCH 28.
    matches!(sig, 1 | 17 | 23 | 28)
}

/// `signal_generate(int sig, struct kernel_siginfo *info, struct task_struct *task,
/// int group, int result)`, in the sender's context: a signal sent to the monitor. SIGCONT
/// too, so that user space can measure a stop.
#[btf_tracepoint(function = "signal_generate")]
pub fn signal_generate(ctx: BtfTracePointContext) -> u32 {
    let sig: i32 = ctx.arg(0);
    if harmless(sig) {
        return 0;
    }
    gave_up(try_signal(&ctx, sig), EventKind::Tamper);
    0
}

fn try_signal(ctx: &BtfTracePointContext, sig: i32) -> Result<(), i64> {
    let target = Task(ctx.arg::<*const u8>(2));
    let self_tgid = config_self_tgid();
    if target.tgid()? != self_tgid {
        return Ok(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // The monitor's own faults (SIGPIPE, SIGSEGV) are no attack.
    if tgid == self_tgid {
        return Ok(());
    }
    let result: i32 = ctx.arg(4);
    let task = Task(unsafe { bpf_get_current_task() } as *const u8);
    let event = TamperEvent {
        header: header(
            EventKind::Tamper,
            tgid,
            pid_tgid as u32,
            task.process_start_time().unwrap_or(0),
            false,
        ),
        op: TamperOpCode::Signal as u32,
        cmd: sig as u32,
        object_kind: 0,
        object_id: target.pid().unwrap_or(self_tgid),
        flags: TAMPER_RESULT,
        _pad: 0,
        result: result as i64,
    };
    emit(&event);
    Ok(())
}

/// Tampering goes to the priority ring: a flood of bulk events must not hide it.
#[inline(always)]
fn emit(event: &TamperEvent) {
    crate::emit::emit(EventKind::Tamper, true, *event);
}
