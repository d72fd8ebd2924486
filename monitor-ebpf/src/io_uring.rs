//! io_uring use by governed processes. A request submitted to a ring does not go through the
//! syscall tracepoints the file and network sensors use, so each ring a governed process
//! creates and each security-relevant opcode it submits is reported, once per process, exec
//! and opcode. Offsets are those of the tracefs format files (checked by the loader).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::tracepoint,
    programs::TracePointContext,
    EbpfContext as _,
};
use monitor_common::{
    EventKind, IoUringEvent, IoUringKey, IoUringOpCode, Stat, WatchEntry, IORING_OP_OPENAT,
    IORING_OP_OPENAT2, IO_URING_KEY_CREATE, IO_URING_REPORTED_OPS, WATCH_CANDIDATE, WATCH_EXE,
    WATCH_PID,
};

use crate::{
    config_self_tgid, count,
    emit::{gave_up, inserted, reserve},
    kernel::Task,
    process::header,
    CONFIG, IO_URING_RINGS, IO_URING_SEEN, WATCHED,
};

/// Governed, or about to be: a process that just exec'd a profile's executable is watched
/// with no profile until user space has matched its selector, and a fast program can set up
/// its ring before then. User space drops what an ungoverned process did. Also a process
/// `monitor learn` or `monitor trace` follows (`--pid`, `--exe`, a selector): learning
/// records io_uring use as `allow.io_uring`. Not the readers of guarded files, which are
/// watched only for where they connect.
#[inline(always)]
fn governed(tgid: u32) -> Option<WatchEntry> {
    let entry = unsafe { WATCHED.get(tgid) }?;
    let reason = entry.reason & 0xff;
    (entry.profile != 0 || reason == WATCH_CANDIDATE || reason == WATCH_PID || reason == WATCH_EXE)
        .then_some(*entry)
}

/// Who created a ring (a governed process).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RingOwner {
    pub tgid: u32,
    pub _pad: u32,
    pub start_time: u64,
}

#[inline(always)]
unsafe fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: within the tracepoint record (offsets from the format file).
    unsafe { *(ctx.as_ptr().add(offset) as *const T) }
}

/// `io_uring:io_uring_create`: fd at 8, ctx at 16, flags at 32.
#[tracepoint]
pub fn io_uring_create(ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let ring: u64 = unsafe { field(&ctx, 16) };
    if governed(tgid).is_none() {
        // A ring at an address a governed process's ring once had is not its.
        let _ = IO_URING_RINGS.remove(&ring);
        return 0;
    };
    if tgid == config_self_tgid() {
        return 0;
    }
    let task = Task(unsafe { bpf_get_current_task() } as *const u8);
    let start_time = task.process_start_time().unwrap_or(0);
    let owner = RingOwner {
        tgid,
        _pad: 0,
        start_time,
    };
    // A full map loses the ring's SQPOLL submissions (their owner is not found).
    inserted(IO_URING_RINGS.insert(&ring, &owner, 0), EventKind::IoUring);
    emit(
        owner,
        crate::exec_generation(tgid),
        IoUringRecord {
            op: IoUringOpCode::Create,
            opcode: 0,
            ring,
            sq_thread: false,
            flags: unsafe { field(&ctx, 32) },
        },
    );
    0
}

/// `io_uring:io_uring_submit_req`: ctx at 8, opcode (u8) at 32, flags at 40, sq_thread
/// (bool) at 48. Runs in the submitter, or in the ring's SQPOLL thread.
#[tracepoint]
pub fn io_uring_submit(ctx: TracePointContext) -> u32 {
    let opcode = unsafe { field::<u8>(&ctx, 32) } as u32;
    if opcode >= 64 || (IO_URING_REPORTED_OPS >> opcode) & 1 == 0 {
        return 0;
    }
    let ring: u64 = unsafe { field(&ctx, 8) };
    let sq_thread = unsafe { field::<u8>(&ctx, 48) } != 0;
    let owner = if sq_thread {
        match unsafe { IO_URING_RINGS.get(&ring) } {
            Some(owner) => *owner,
            None => return 0,
        }
    } else {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        if governed(tgid).is_none() {
            return 0;
        }
        let task = Task(unsafe { bpf_get_current_task() } as *const u8);
        RingOwner {
            tgid,
            _pad: 0,
            start_time: task.process_start_time().unwrap_or(0),
        }
    };
    if governed(owner.tgid).is_none() {
        return 0;
    }
    emit(
        owner,
        crate::exec_generation(owner.tgid),
        IoUringRecord {
            op: IoUringOpCode::Submit,
            opcode,
            ring,
            sq_thread,
            flags: unsafe { field::<u64>(&ctx, 40) } as u32,
        },
    );
    0
}

/// `io_uring:io_uring_complete`: req at 16, res at 32. Runs for every process's completions
/// (in the submitter, an io-wq worker or the SQPOLL thread, all threads of the process that
/// owns the fd table), so it asks the cheapest questions first: a success, of an open.
#[tracepoint]
pub fn io_uring_complete(ctx: TracePointContext) -> u32 {
    let res: i32 = unsafe { field(&ctx, 32) };
    if res < 0 {
        return 0;
    }
    let offset = unsafe { core::ptr::read_volatile(&CONFIG.io_kiocb_opcode) } as usize;
    if offset == 0 {
        return 0;
    }
    let req: *const u8 = unsafe { field(&ctx, 16) };
    let Ok(opcode) = (unsafe { crate::kernel::read::<u8>(req, offset) }) else {
        // Whether it was an open of a `/proc/PID/mem` is not known.
        count(Stat::ReadDropped, EventKind::MemoryAccess as u32);
        return 0;
    };
    // An open: `res` is the new fd (0 for a fixed-file slot, which no read can use without
    // the ring: checked as fd 0, harmlessly).
    if u32::from(opcode) == IORING_OP_OPENAT || u32::from(opcode) == IORING_OP_OPENAT2 {
        gave_up(
            crate::memory::check_proc_mem_fd(res as i64),
            EventKind::MemoryAccess,
        );
    }
    0
}

/// What one record says besides its header.
struct IoUringRecord {
    op: IoUringOpCode,
    /// `IORING_OP_*` of a submission (0 for a creation).
    opcode: u32,
    ring: u64,
    sq_thread: bool,
    flags: u32,
}

/// Sends one record per (process, exec generation, opcode).
#[inline(always)]
fn emit(owner: RingOwner, generation: u32, record: IoUringRecord) {
    let key = IoUringKey {
        tgid: owner.tgid,
        generation,
        opcode: if record.op == IoUringOpCode::Create {
            IO_URING_KEY_CREATE
        } else {
            record.opcode
        },
        _pad: 0,
    };
    let kind = EventKind::IoUring as u32;
    if unsafe { IO_URING_SEEN.get(&key).is_some() } {
        count(Stat::Known, kind);
        return;
    }
    let Some(mut entry) = reserve::<IoUringEvent>(EventKind::IoUring, false) else {
        return;
    };
    // A full map only means the next use of this opcode is reported again (LRU: it evicts
    // rather than fails; a failure is counted all the same).
    inserted(IO_URING_SEEN.insert(&key, &1, 0), EventKind::IoUring);
    let event = IoUringEvent {
        header: header(
            EventKind::IoUring,
            owner.tgid,
            bpf_get_current_pid_tgid() as u32,
            owner.start_time,
            true,
        ),
        op: record.op as u32,
        opcode: record.opcode,
        ring: record.ring,
        sq_thread: u32::from(record.sq_thread),
        flags: record.flags,
    };
    entry.write(event);
    entry.submit();
}
