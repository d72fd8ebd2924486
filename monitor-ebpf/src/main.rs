//! Kernel programs of the monitor.
//!
//! Every hook is thin: it does the cheapest test that lets it return first, reads kernel
//! structs through offsets the loader took from the running kernel's BTF (rustc emits no CO-RE
//! relocations), and reserves its record in the ring buffer without waking the reader.
//!
//! # `unsafe` here
//!
//! Four uses are routine and carry no comment of their own:
//! - `bpf_probe_read_*` (and `kernel::read`, built on it): the helper checks the address and
//!   returns an error on a fault; the program never dereferences a kernel or user pointer.
//! - Map lookups (`get`): aya marks them unsafe because another CPU may change the value; every
//!   caller copies it at once and tolerates a stale one.
//! - `read_volatile` of a global the loader wrote before load (`CONFIG`, `SYSCALL_ABI`):
//!   read-only after load, volatile only so that the compiler does not fold the zero it was
//!   built with.
//! - Helpers with no pointer argument (`bpf_get_current_task`, `bpf_ktime_get_boot_ns`...).
//!
//! Every other `unsafe` (a write through a map value or a ring reservation, a dereference of
//! a context pointer, a tail call, pointer arithmetic in a buffer) says why it holds in a
//! `// SAFETY:` comment.
#![no_std]
#![no_main]

mod device;
mod emit;
mod enforce;
mod file;
mod io_uring;
mod kernel;
mod memory;
mod net;
mod path;
mod process;
mod syscalls;
mod tamper;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use monitor_common::{
    gate, guard_slot, stats_slot, Config, DeviceOpen, ExecKey, FdKey, InodeKey, IoUringKey,
    IoctlKey, KernelOffsets, KnownKey, NetKey, Pending, PortRanges, ProfilePolicy, SendKey, Stat,
    Suffix, TamperEvent, WatchEntry, STATS_LEN, SUFFIXES_MAX, WATCHED_MAX,
};
use monitor_common::{AllowedFile, ExecInstance, ResolvedExecKey, EXEC_RESOLVED_MAX, SHELLS_MAX};

/// Settings written by the loader before the programs are loaded.
#[no_mangle]
static CONFIG: Config = Config {
    self_tgid: 0,
    watch_all: 0,
    wakeup_bytes: 0,
    protect: 0,
    _pad: 0,
    proc_mem_open: 0,
    io_kiocb_opcode: 0,
    _pad2: 0,
};

/// Struct field offsets written by the loader from the kernel's BTF.
#[no_mangle]
// SAFETY: KernelOffsets is plain u32 fields; all-zero is a valid value.
static OFFSETS: KernelOffsets = unsafe { core::mem::zeroed() };

/// The loader resizes this from `--ring-size`.
#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Events that must not share fate with bulk ones (see `monitor_common::maps::PRIORITY`):
/// tampering with the monitor, kills and denials, reads of governed processes' memory.
#[map(name = "PRIORITY")]
static PRIORITY: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// The monitor's own programs, maps and links (see `tamper`).
#[map(name = "MONITOR_OBJECTS")]
static MONITOR_OBJECTS: HashMap<u64, u32> = HashMap::with_max_entries(1024, 0);

/// `bpf()` calls on the monitor's objects between entry and exit (see `tamper`).
#[map(name = "BPF_PENDING")]
static BPF_PENDING: LruHashMap<u64, TamperEvent> = LruHashMap::with_max_entries(1024, 0);

#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_LEN, 0);

#[map(name = "WATCHED")]
static WATCHED: HashMap<u32, WatchEntry> = HashMap::with_max_entries(WATCHED_MAX, 0);

/// Per-CPU scratch space for path walks (see `path::SCRATCH_SIZE`).
#[map(name = "SCRATCH")]
static SCRATCH: PerCpuArray<[u8; path::SCRATCH_SIZE]> = PerCpuArray::with_max_entries(1, 0);

/// Syscalls in flight (LRU: an entry whose exit never comes, e.g. a device check by
/// access(2), ages out instead of filling the map).
#[map(name = "PENDING")]
static PENDING: LruHashMap<u64, Pending> = LruHashMap::with_max_entries(16384, 0);

/// The last open on each CPU (see `file::stash_open`).
#[map(name = "OPEN_ARGS")]
static OPEN_ARGS: PerCpuArray<OpenArgs> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct OpenArgs {
    pub pid_tgid: u64,
    pub dfd: i64,
    pub name: u64,
}

#[map(name = "ACCEL_MAJORS")]
static ACCEL_MAJORS: HashMap<u32, u32> = HashMap::with_max_entries(64, 0);

#[map(name = "PROTECTED_DIRS")]
static PROTECTED_DIRS: HashMap<InodeKey, u32> = HashMap::with_max_entries(1024, 0);

#[map(name = "PROTECTED_SUFFIXES")]
static PROTECTED_SUFFIXES: Array<Suffix> = Array::with_max_entries(SUFFIXES_MAX, 0);

#[map(name = "ACCEL_FDS")]
static ACCEL_FDS: LruHashMap<FdKey, u32> = LruHashMap::with_max_entries(16384, 0);

#[map(name = "DEVICE_OPENS")]
static DEVICE_OPENS: LruHashMap<u64, DeviceOpen> = LruHashMap::with_max_entries(4096, 0);

#[map(name = "IOCTL_COUNTS")]
static IOCTL_COUNTS: PerCpuHashMap<IoctlKey, u64> = PerCpuHashMap::with_max_entries(16384, 0);

#[map(name = "EXEC_CANDIDATES")]
static EXEC_CANDIDATES: HashMap<InodeKey, u32> = HashMap::with_max_entries(4096, 0);

#[map(name = "POLICY")]
static POLICY: HashMap<u32, ProfilePolicy> = HashMap::with_max_entries(1024, 0);

#[map(name = "NET_CONNECT")]
static NET_CONNECT: LpmTrie<NetKey, PortRanges> = LpmTrie::with_max_entries(16384, 0);

#[map(name = "NET_LISTEN")]
static NET_LISTEN: LpmTrie<NetKey, PortRanges> = LpmTrie::with_max_entries(4096, 0);

#[map(name = "EXEC_ALLOWED")]
static EXEC_ALLOWED: HashMap<ExecKey, AllowedFile> = HashMap::with_max_entries(65536, 0);

/// UDP connect destinations (`allow.network.udp_connect`; see `enforce::judge`).
#[map(name = "NET_UDP_CONNECT")]
static NET_UDP_CONNECT: LpmTrie<NetKey, PortRanges> = LpmTrie::with_max_entries(4096, 0);

/// Shells let through with `-c` (see `process::exec_verdict`).
#[map(name = "SHELLS")]
static SHELLS: HashMap<InodeKey, u32> = HashMap::with_max_entries(SHELLS_MAX, 0);

/// Resolved-profile instances of governed processes (see `process::exec_verdict`).
#[map(name = "EXEC_INSTANCE")]
static EXEC_INSTANCE: HashMap<u32, ExecInstance> = HashMap::with_max_entries(WATCHED_MAX, 0);

#[map(name = "EXEC_RESOLVED")]
static EXEC_RESOLVED: HashMap<ResolvedExecKey, AllowedFile> =
    HashMap::with_max_entries(EXEC_RESOLVED_MAX, 0);

#[map(name = "GPU_ALLOWED")]
static GPU_ALLOWED: HashMap<u32, u32> = HashMap::with_max_entries(1024, 0);

#[map(name = "GUARDS")]
static GUARDS: Array<u32> = Array::with_max_entries(guard_slot::LEN, 0);

#[map(name = "EXEC_GENERATION")]
static EXEC_GENERATION: HashMap<u32, u32> = HashMap::with_max_entries(WATCHED_MAX, 0);

#[map(name = "GATES")]
static GATES: Array<u32> = Array::with_max_entries(gate::LEN, 0);

/// Whether a gate is open ([`gate`]).
#[inline(always)]
fn gate_open(slot: u32) -> bool {
    GATES.get(slot).is_some_and(|&value| value != 0)
}

/// Opens a gate (from the kernel's side; user space opens them too).
#[inline(always)]
fn open_gate(slot: u32) {
    if let Some(value) = GATES.get_ptr_mut(slot) {
        // SAFETY: a pointer to an element of an array map, valid for the program's run; a
        // racing writer writes the same 1.
        unsafe { *value = 1 };
    }
}

/// Whether the reader sleeps without its timer ([`gate::READER_IDLE`]); closes the gate, so
/// only the first event after quiet wakes it.
#[inline(always)]
fn take_reader_idle() -> bool {
    let Some(value) = GATES.get_ptr_mut(gate::READER_IDLE) else {
        return false;
    };
    // SAFETY: a pointer to an element of an array map, valid for the program's run; a racing
    // CPU may wake the reader a second time, which costs one wake-up.
    unsafe {
        if core::ptr::read_volatile(value) == 0 {
            return false;
        }
        core::ptr::write_volatile(value, 0);
    }
    true
}

/// Files already checked against the protected directories (see `file::is_protected`).
#[map(name = "PROTECTED_SEEN")]
static PROTECTED_SEEN: LruHashMap<ProtKey, u32> = LruHashMap::with_max_entries(16384, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProtKey {
    pub dentry: u64,
    pub parent: u64,
    pub inode: u64,
    pub epoch: u64,
}

/// Threads of watched processes: thread id -> tgid (see `memory::governed`).
#[map(name = "WATCHED_THREADS")]
static WATCHED_THREADS: LruHashMap<u32, u32> = LruHashMap::with_max_entries(65536, 0);

/// Rings created by governed processes (see `io_uring::io_uring_submit`).
#[map(name = "IO_URING_RINGS")]
static IO_URING_RINGS: LruHashMap<u64, io_uring::RingOwner> = LruHashMap::with_max_entries(4096, 0);

#[map(name = "IO_URING_SEEN")]
static IO_URING_SEEN: LruHashMap<IoUringKey, u32> = LruHashMap::with_max_entries(16384, 0);

#[map(name = "KNOWN")]
static KNOWN: LruHashMap<KnownKey, u32> = LruHashMap::with_max_entries(65536, 0);

/// The key for behaviour of a watched process, or `None` when it is not watched (only
/// governed processes' judgments are cached).
#[inline(always)]
fn known_key(tgid: u32, kind: u32, aux: u32, a: u64, b: u64) -> Option<KnownKey> {
    let entry = unsafe { WATCHED.get(tgid) }?;
    if entry.profile == 0 {
        return None;
    }
    let epoch = GUARDS.get(guard_slot::EPOCH).copied().unwrap_or(0);
    let generation = exec_generation(tgid);
    Some(KnownKey {
        tgid,
        generation,
        kind: monitor_common::known_kind(kind, epoch),
        aux,
        a,
        b,
    })
}

/// A watched process's program generation ([`EXEC_GENERATION`], which only the kernel
/// writes; `WatchEntry::generation` is always 0).
#[inline(always)]
fn exec_generation(tgid: u32) -> u32 {
    // SAFETY: a map value read by copy; the kernel may change it meanwhile, which only makes
    // the key that of the next program (a judgement not found, sent again).
    unsafe { EXEC_GENERATION.get(tgid) }.copied().unwrap_or(0)
}

/// Whether user space already judged this behaviour allowed; counts it when so.
#[inline(always)]
fn known(key: &Option<KnownKey>, event_kind: u32) -> bool {
    match key {
        Some(key) if unsafe { KNOWN.get(key).is_some() } => {
            count(Stat::Known, event_kind);
            true
        }
        _ => false,
    }
}

#[map(name = "SENT")]
static SENT: LruHashMap<SendKey, u32> = LruHashMap::with_max_entries(16384, 0);

/// Syscall arguments and return values, read from the raw `sys_enter`/`sys_exit`
/// tracepoints' `pt_regs` (see `syscalls`).
pub(crate) use syscalls::{syscall_arg, syscall_ret};

#[inline(always)]
fn config_protect() -> bool {
    unsafe { core::ptr::read_volatile(&CONFIG.protect) != 0 }
}

#[inline(always)]
fn config_self_tgid() -> u32 {
    // read_volatile: the value is patched by the loader, the compiler must not fold it.
    unsafe { core::ptr::read_volatile(&CONFIG.self_tgid) }
}

#[inline(always)]
fn config_watch_all() -> bool {
    unsafe { core::ptr::read_volatile(&CONFIG.watch_all) != 0 }
}

/// Submit flags: wake the reader only when enough bytes wait, or when it sleeps without its
/// timer ([`gate::READER_IDLE`]); otherwise it drains on its timer.
#[inline(always)]
fn submit_flags() -> u64 {
    let threshold = unsafe { core::ptr::read_volatile(&CONFIG.wakeup_bytes) };
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= threshold || take_reader_idle() {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// The ring an event goes to: [`PRIORITY`] for what must not be lost in a flood, else
/// [`EVENTS`].
#[inline(always)]
fn ring(priority: bool) -> &'static RingBuf {
    if priority {
        &PRIORITY
    } else {
        &EVENTS
    }
}

/// Submit flags for [`ring`]: priority events are rare and wake the reader at once.
#[inline(always)]
fn ring_flags(priority: bool) -> u64 {
    if priority {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        submit_flags()
    }
}

#[inline(always)]
fn count(stat: Stat, kind: u32) {
    if let Some(counter) = STATS.get_ptr_mut(stats_slot(stat, kind)) {
        // SAFETY: a pointer to this CPU's slot of a per-CPU array, valid for the program's run;
        // a program is not preempted on its CPU, so there is no other writer.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
fn is_watched(tgid: u32) -> bool {
    config_watch_all() || unsafe { WATCHED.get(tgid).is_some() }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
