//! Syscall dispatch through the raw tracepoints `sys_enter(regs, id)` and `sys_exit(regs, ret)`.
//!
//! The per-syscall perf tracepoints (`syscalls/sys_enter_*`) skip compat syscalls (a 64-bit
//! process can make ia32 ones with `int $0x80`), and each costs the kernel a synchronous RCU
//! grace period under a global mutex to detach. The raw tracepoints see every syscall and
//! detach at once. Every syscall on the host passes through them, so the path of one nobody
//! watches is one context load (or one register read at exit) and one tail call into an empty
//! slot. Numbers that a handler serves in either ABI get a route program, which tells the ABI
//! (the kernel's own flag: x86's `TS_COMPAT` in `thread_info.status`) and tail-calls into
//! that ABI's handler. The handlers read their arguments from `pt_regs` at offsets the loader
//! took from BTF ([`SyscallAbi`]).

use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_probe_read_kernel},
    macros::{map, raw_tracepoint},
    maps::{PerCpuArray, ProgramArray},
    programs::RawTracePointContext,
    EbpfContext as _,
};
use monitor_common::{syscalls::SLOTS, SyscallAbi};

use crate::kernel::loaded;

/// Register offsets and the compat test, written by the loader.
#[no_mangle]
static SYSCALL_ABI: SyscallAbi = SyscallAbi {
    native_args: [0; 6],
    compat_args: [0; 6],
    nr: 0,
    task_status: 0,
    compat_bit: 0,
    process_vm_writev: [0; 2],
    _pad: 0,
    enter_traced: [0; 8],
    exit_traced: [0; 8],
};

#[map(name = "SYS_ENTER_ROUTES")]
static SYS_ENTER_ROUTES: ProgramArray = ProgramArray::with_max_entries(SLOTS, 0);
#[map(name = "SYS_EXIT_ROUTES")]
static SYS_EXIT_ROUTES: ProgramArray = ProgramArray::with_max_entries(SLOTS, 0);
#[map(name = "SYS_ENTER_NATIVE")]
static SYS_ENTER_NATIVE: ProgramArray = ProgramArray::with_max_entries(SLOTS, 0);
#[map(name = "SYS_ENTER_COMPAT")]
static SYS_ENTER_COMPAT: ProgramArray = ProgramArray::with_max_entries(SLOTS, 0);
#[map(name = "SYS_EXIT_NATIVE")]
static SYS_EXIT_NATIVE: ProgramArray = ProgramArray::with_max_entries(SLOTS, 0);
#[map(name = "SYS_EXIT_COMPAT")]
static SYS_EXIT_COMPAT: ProgramArray = ProgramArray::with_max_entries(SLOTS, 0);

/// Whether the syscall entering on this CPU is a compat one: set by the enter route, read by
/// [`syscall_arg`] in the handler it tail-calls (the chain runs on one CPU, not preempted).
#[map(name = "SYS_COMPAT")]
static SYS_COMPAT: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn abi(value: &u32) -> usize {
    loaded(value)
}

/// Whether the current syscall is a compat one (x86: `TS_COMPAT`, set by the ia32 entry
/// paths for the length of the syscall).
#[inline(always)]
fn in_compat_syscall() -> bool {
    let status = abi(&SYSCALL_ABI.task_status);
    if status == 0 {
        return false;
    }
    let task = unsafe { bpf_get_current_task() } as *const u8;
    match unsafe { bpf_probe_read_kernel(task.wrapping_add(status) as *const u32) } {
        Ok(flags) => flags as usize & abi(&SYSCALL_ABI.compat_bit) != 0,
        Err(_) => false,
    }
}

/// The syscall number at exit (`sys_exit` passes only the return value).
#[inline(always)]
fn exit_nr(ctx: &RawTracePointContext) -> Option<u32> {
    let regs: u64 = ctx.arg(0);
    let at = (regs as *const u8).wrapping_add(abi(&SYSCALL_ABI.nr));
    unsafe { bpf_probe_read_kernel(at as *const u32) }.ok()
}

/// Whether some handler serves `nr` (a negative or out-of-table number, such as x32's with
/// bit 30, is not).
#[inline(always)]
fn traced(bits: &[u64; 8], nr: u64) -> bool {
    if nr >= SLOTS as u64 {
        return false;
    }
    // SAFETY: in bounds (nr < 512); volatile: patched by the loader.
    let word = unsafe { core::ptr::read_volatile(bits.as_ptr().add((nr >> 6) as usize)) };
    (word >> (nr & 63)) & 1 != 0
}

/// Every syscall entry on the host: the untraced ones end at the bit test.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter_dispatch(ctx: RawTracePointContext) -> u32 {
    let nr: u64 = ctx.arg(1);
    if traced(&SYSCALL_ABI.enter_traced, nr) {
        // SAFETY: a tail call with this program's own context; it does not return when it
        // succeeds, and an empty slot falls through to `0` (nothing traced).
        unsafe { SYS_ENTER_ROUTES.tail_call(&ctx, nr as u32) };
    }
    0
}

/// Every syscall exit on the host, likewise (after one register read: `sys_exit` passes no
/// number).
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_dispatch(ctx: RawTracePointContext) -> u32 {
    if let Some(nr) = exit_nr(&ctx) {
        if traced(&SYSCALL_ABI.exit_traced, nr as u64) {
            // SAFETY: as in `sys_enter_dispatch`.
            unsafe { SYS_EXIT_ROUTES.tail_call(&ctx, nr) };
        }
    }
    0
}

/// A traced syscall number: which ABI's handler, if that ABI has one.
#[raw_tracepoint]
pub fn sys_enter_route(ctx: RawTracePointContext) -> u32 {
    let nr = ctx.arg::<u64>(1) as u32;
    let compat = in_compat_syscall();
    if let Some(slot) = SYS_COMPAT.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU array, valid for the program's run; no other
        // writer while the program runs on this CPU.
        unsafe { *slot = u32::from(compat) };
    }
    // SAFETY (both tail calls): this program's own context; an empty slot falls through.
    if compat {
        unsafe { SYS_ENTER_COMPAT.tail_call(&ctx, nr) };
    } else {
        unsafe { SYS_ENTER_NATIVE.tail_call(&ctx, nr) };
    }
    0
}

#[raw_tracepoint]
pub fn sys_exit_route(ctx: RawTracePointContext) -> u32 {
    let Some(nr) = exit_nr(&ctx) else {
        return 0;
    };
    // SAFETY (both tail calls): this program's own context; an empty slot falls through.
    if in_compat_syscall() {
        unsafe { SYS_EXIT_COMPAT.tail_call(&ctx, nr) };
    } else {
        unsafe { SYS_EXIT_NATIVE.tail_call(&ctx, nr) };
    }
    0
}

/// Exit of open, openat, openat2 and creat: one slot per number, so one program runs the
/// file sensor, the accelerator fd filing and the `/proc/PID/mem` check, in that order.
#[raw_tracepoint]
pub fn sys_exit_opens(ctx: RawTracePointContext) -> u32 {
    crate::file::sys_exit_open(RawTracePointContext::new(ctx.as_ptr()));
    crate::device::sys_exit_open_device(RawTracePointContext::new(ctx.as_ptr()));
    crate::memory::proc_mem_open_exit(RawTracePointContext::new(ctx.as_ptr()));
    0
}

/// The `n`th argument (0..6) of the syscall entering, in its ABI: a compat argument is the
/// low 32 bits of its register, as the kernel's compat entry reads it.
#[inline(always)]
pub fn syscall_arg(ctx: &RawTracePointContext, n: usize) -> u64 {
    let regs: u64 = ctx.arg(0);
    let compat = SYS_COMPAT.get(0).copied().unwrap_or(0) != 0;
    let offset = if compat {
        abi(&SYSCALL_ABI.compat_args[n])
    } else {
        abi(&SYSCALL_ABI.native_args[n])
    };
    let value =
        unsafe { bpf_probe_read_kernel((regs as *const u8).wrapping_add(offset) as *const u64) }
            .unwrap_or(0);
    if compat {
        value as u32 as u64
    } else {
        value
    }
}

/// The return value of the syscall exiting (`sys_exit`'s second argument).
#[inline(always)]
pub fn syscall_ret(ctx: &RawTracePointContext) -> i64 {
    ctx.arg(1)
}

/// Whether the `process_vm_*` syscall entering is `process_vm_writev` (its handler serves both).
#[inline(always)]
pub fn process_vm_writes(ctx: &RawTracePointContext) -> bool {
    let nr = ctx.arg::<u64>(1) as u32;
    let compat = SYS_COMPAT.get(0).copied().unwrap_or(0) != 0;
    let writev = if compat {
        abi(&SYSCALL_ABI.process_vm_writev[1])
    } else {
        abi(&SYSCALL_ABI.process_vm_writev[0])
    };
    nr as usize == writev
}
