//! Types shared by the kernel programs (`monitor-ebpf`) and the daemon (`monitor`).
//!
//! Everything here crosses the kernel/user boundary, so every type is `#[repr(C)]`, `Copy`,
//! has no implicit padding (flags are `u32`, never `bool`) and its size is pinned by a
//! `const` assertion. Map and program names live here too so the two sides cannot drift.
#![no_std]

/// Names of the maps, shared by both sides.
pub mod maps {
    /// The ring buffer every event goes through.
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU counters: events emitted and events lost, by kind (see [`super::stats_slot`]).
    pub const STATS: &str = "STATS";
    /// Watched processes: tgid -> [`super::WatchEntry`].
    pub const WATCHED: &str = "WATCHED";
    /// Per-CPU scratch buffers for path walks.
    pub const SCRATCH: &str = "SCRATCH";
}

/// Names of the programs, shared by both sides.
pub mod programs {
    pub const SCHED_PROCESS_EXEC: &str = "sched_process_exec";
    pub const SCHED_PROCESS_FORK: &str = "sched_process_fork";
    pub const SCHED_PROCESS_EXIT: &str = "sched_process_exit";
}

/// Names of the global variables the loader sets before the programs are loaded.
pub mod globals {
    /// [`super::Config`]
    pub const CONFIG: &str = "CONFIG";
    /// [`super::KernelOffsets`]
    pub const OFFSETS: &str = "OFFSETS";
}

/// What an event reports. Decoded with `TryFrom<u32>`, never transmuted.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    Exec = 1,
    Fork = 2,
    Exit = 3,
    /// A file opened or changed.
    File = 4,
    /// A socket connected, accepted, bound, listening, or a datagram sent.
    Net = 5,
    /// An accelerator device node opened.
    Device = 6,
    /// A periodic summary of a process's ioctls on accelerator devices.
    GpuIoctls = 7,
}

impl EventKind {
    pub const ALL: [EventKind; 7] = [
        EventKind::Exec,
        EventKind::Fork,
        EventKind::Exit,
        EventKind::File,
        EventKind::Net,
        EventKind::Device,
        EventKind::GpuIoctls,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            EventKind::Exec => "exec",
            EventKind::Fork => "fork",
            EventKind::Exit => "exit",
            EventKind::File => "file",
            EventKind::Net => "network",
            EventKind::Device => "device",
            EventKind::GpuIoctls => "gpu-ioctls",
        }
    }
}

impl TryFrom<u32> for EventKind {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        match value {
            1 => Ok(EventKind::Exec),
            2 => Ok(EventKind::Fork),
            3 => Ok(EventKind::Exit),
            4 => Ok(EventKind::File),
            5 => Ok(EventKind::Net),
            6 => Ok(EventKind::Device),
            7 => Ok(EventKind::GpuIoctls),
            other => Err(other),
        }
    }
}

/// Number of slots per counter family in [`maps::STATS`]; event kinds index into it.
pub const KIND_SLOTS: u32 = 16;

/// The counter families in [`maps::STATS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Events submitted to the ring buffer.
    Emitted = 0,
    /// Events lost because the ring buffer had no room (reserve failed).
    LostRingFull = 1,
    /// Events sent without a complete payload (a kernel read failed).
    ReadFailed = 2,
}

/// Number of counter families.
pub const STAT_FAMILIES: u32 = 3;

/// Index of a counter in [`maps::STATS`].
pub const fn stats_slot(stat: Stat, kind: u32) -> u32 {
    (stat as u32) * KIND_SLOTS + (kind & (KIND_SLOTS - 1))
}

/// Size of the [`maps::STATS`] array.
pub const STATS_LEN: u32 = STAT_FAMILIES * KIND_SLOTS;

/// [`EventHeader::flags`]: the process was watched when the event happened.
pub const HEADER_WATCHED: u32 = 1;

/// The fixed start of every event.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// [`EventKind`] as `u32`.
    pub kind: u32,
    /// `HEADER_*` bits.
    pub flags: u32,
    /// When it happened: nanoseconds of `CLOCK_BOOTTIME`.
    pub time_ns: u64,
    /// Process id (thread group id) of the process the event is about.
    pub tgid: u32,
    /// Thread id that did it.
    pub pid: u32,
    /// Start time of that process (`CLOCK_BOOTTIME` ns, as /proc/PID/stat counts it):
    /// together with `tgid` an identity that survives pid reuse.
    pub start_time: u64,
}

/// Bound on the executable path carried by an exec event (bytes, power of two).
pub const PATH_CAP: usize = 512;
/// Bound on the argument bytes carried by an exec event (power of two).
pub const ARGS_CAP: usize = 1024;
/// Longest file name component the path walk copies.
pub const NAME_MAX: usize = 255;
/// Most path components the walk follows before it flags the path truncated.
pub const PATH_MAX_COMPONENTS: u32 = 40;

/// [`ExecEvent::flags`]: argv was longer than [`ARGS_CAP`].
pub const EXEC_ARGS_TRUNCATED: u32 = 1;
/// [`ExecEvent::flags`]: the path was cut at a component boundary.
pub const EXEC_PATH_TRUNCATED: u32 = 2;
/// [`ExecEvent::flags`]: the path could not be walked; `path` holds the name passed to exec.
pub const EXEC_PATH_FROM_FILENAME: u32 = 4;

/// A successful exec (`sched_process_exec`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecEvent {
    pub header: EventHeader,
    /// Parent's tgid and start time.
    pub ppid: u32,
    pub uid: u32,
    pub parent_start_time: u64,
    /// cgroup v2 id (the inode number of the cgroup's directory).
    pub cgroup_id: u64,
    /// `EXEC_*` bits.
    pub flags: u32,
    /// Bytes used in `path` (no terminating NUL).
    pub path_len: u32,
    /// Bytes used in `args` (NUL-separated argv, as in `/proc/PID/cmdline`).
    pub args_len: u32,
    pub gid: u32,
    pub path: [u8; PATH_CAP],
    pub args: [u8; ARGS_CAP],
}

/// A new process (not a new thread): `sched_process_fork`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkEvent {
    /// About the child.
    pub header: EventHeader,
    pub parent_tgid: u32,
    pub _pad: u32,
    pub parent_start_time: u64,
}

/// [`ExitEvent::flags`]: the process died by a signal (`signal` is set).
pub const EXIT_SIGNALED: u32 = 1;
/// [`ExitEvent::flags`]: it dumped core.
pub const EXIT_CORE_DUMPED: u32 = 2;

/// The last thread of a process ended: `sched_process_exit` with the group dead.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEvent {
    pub header: EventHeader,
    /// The raw `task_struct::exit_code` (status as `wait(2)` reports it).
    pub exit_code: u32,
    pub flags: u32,
}

impl ExitEvent {
    /// The exit status when the process exited normally.
    pub const fn status(&self) -> Option<u32> {
        if self.exit_code & 0x7f == 0 {
            Some((self.exit_code >> 8) & 0xff)
        } else {
            None
        }
    }

    /// The signal that killed the process, if one did.
    pub const fn signal(&self) -> Option<u32> {
        let sig = self.exit_code & 0x7f;
        if sig != 0 {
            Some(sig)
        } else {
            None
        }
    }

    pub const fn core_dumped(&self) -> bool {
        self.exit_code & 0x80 != 0
    }
}

/// Why a process is watched. Stored in [`maps::WATCHED`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchEntry {
    /// `WATCH_*`
    pub reason: u32,
    /// Profile id, 0 when none.
    pub profile: u32,
}

pub const WATCH_PID: u32 = 1;
pub const WATCH_EXE: u32 = 2;
pub const WATCH_ALL: u32 = 3;
pub const WATCH_PROFILE: u32 = 4;
/// Inherited from the parent at fork.
pub const WATCH_INHERITED: u32 = 0x100;

/// Most entries in [`maps::WATCHED`].
pub const WATCHED_MAX: u32 = 65536;

/// Settings the loader writes into the programs before loading them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// The monitor's own tgid: never traced.
    pub self_tgid: u32,
    /// Non-zero: every process counts as watched.
    pub watch_all: u32,
    /// Wake the reader when this many bytes wait in the ring buffer; otherwise it drains on
    /// its timer. Never per event.
    pub wakeup_bytes: u64,
}

/// Byte offsets of the kernel struct fields the programs read, taken from the running
/// kernel's BTF at load time (rustc emits no CO-RE relocations). Zero means unknown.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_tgid: u32,
    pub task_pid: u32,
    pub task_group_leader: u32,
    pub task_real_parent: u32,
    pub task_start_boottime: u32,
    pub task_exit_code: u32,
    pub task_signal: u32,
    pub task_mm: u32,
    pub task_fs: u32,
    pub signal_live: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub fs_root: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub dentry_parent: u32,
    pub dentry_name: u32,
    pub qstr_len: u32,
    pub qstr_name: u32,
    pub mount_mnt: u32,
    pub mount_parent: u32,
    pub mount_mountpoint: u32,
    pub vfsmount_root: u32,
    pub binprm_file: u32,
    pub binprm_filename: u32,
    pub file_path: u32,
}

const _: () = assert!(core::mem::size_of::<EventHeader>() == 32);
const _: () = assert!(core::mem::size_of::<ExecEvent>() == 32 + 40 + PATH_CAP + ARGS_CAP);
const _: () = assert!(core::mem::size_of::<ForkEvent>() == 48);
const _: () = assert!(core::mem::size_of::<ExitEvent>() == 40);
const _: () = assert!(core::mem::size_of::<WatchEntry>() == 8);
const _: () = assert!(core::mem::size_of::<Config>() == 16);
const _: () = assert!(PATH_CAP.is_power_of_two() && ARGS_CAP.is_power_of_two());

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are repr(C), Copy, with no padding and valid for every bit pattern.
    unsafe impl aya::Pod for super::WatchEntry {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::KernelOffsets {}
}
