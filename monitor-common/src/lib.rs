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
    /// Syscalls in flight: pid_tgid -> [`super::Pending`], from entry (and the device hook) to exit.
    pub const PENDING: &str = "PENDING";
    /// Accelerator device majors: major -> [`super::DeviceClassId`] as u32.
    pub const ACCEL_MAJORS: &str = "ACCEL_MAJORS";
    /// Protected directories, host-wide: [`super::InodeKey`] -> 1.
    pub const PROTECTED_DIRS: &str = "PROTECTED_DIRS";
    /// Protected file name suffixes (e.g. `.safetensors`): index -> [`super::Suffix`].
    pub const PROTECTED_SUFFIXES: &str = "PROTECTED_SUFFIXES";
    /// Open accelerator fds: [`super::FdKey`] -> class.
    pub const ACCEL_FDS: &str = "ACCEL_FDS";
    /// ioctl counts: [`super::IoctlKey`] -> count.
    pub const IOCTL_COUNTS: &str = "IOCTL_COUNTS";
    /// UDP destinations a process already reported: [`super::SendKey`] -> 1 (LRU).
    pub const SENT: &str = "SENT";
    /// Behaviour already judged allowed: [`super::KnownKey`] -> 1 (LRU).
    pub const KNOWN: &str = "KNOWN";
    /// Executables that may start a governed process: [`super::InodeKey`] -> 1. An exec of
    /// one is watched from its first instruction, until user space has matched its selector.
    pub const EXEC_CANDIDATES: &str = "EXEC_CANDIDATES";
    /// Enforcement settings per profile: profile id -> [`super::ProfilePolicy`].
    pub const POLICY: &str = "POLICY";
    /// Allowed connect/send destinations: LPM trie of [`super::NetKey`] -> [`super::PortRanges`].
    pub const NET_CONNECT: &str = "NET_CONNECT";
    /// Allowed listen/bind addresses, likewise.
    pub const NET_LISTEN: &str = "NET_LISTEN";
    /// Executables a profile allows: [`super::ExecKey`] -> 1.
    pub const EXEC_ALLOWED: &str = "EXEC_ALLOWED";
    /// Profiles the GPU guard allows: profile id -> 1.
    pub const GPU_ALLOWED: &str = "GPU_ALLOWED";
    /// Host guard settings: index 0 = GPU guard `POLICY_*` bits; index 1 unused (protected
    /// paths are guarded with fanotify in user space); index 2 = the configuration epoch
    /// ([`super::KnownKey`]).
    pub const GUARDS: &str = "GUARDS";
    /// Each watched process's program generation: tgid -> a value the kernel changes at every
    /// exec (and sets fresh at fork), read into [`super::KnownKey`]. Written by the kernel
    /// only: user space rewrites [`super::WatchEntry`] whole, and a generation kept there
    /// could be rolled back to the previous program's by a write racing an exec.
    pub const EXEC_GENERATION: &str = "EXEC_GENERATION";
    /// Cheap switches the hot hooks test first, by slot ([`super::gate`]).
    pub const GATES: &str = "GATES";
    /// Accelerator opens the device hook let through, until the open's exit files the fd in
    /// [`ACCEL_FDS`]: pid_tgid -> [`super::DeviceOpen`] (LRU).
    pub const DEVICE_OPENS: &str = "DEVICE_OPENS";
    /// Threads of watched processes: thread id -> tgid, so that a syscall naming a thread of
    /// a governed process (ptrace, process_vm_readv) finds its process.
    pub const WATCHED_THREADS: &str = "WATCHED_THREADS";
    /// io_uring rings of governed processes: ring ctx address -> creator tgid, so that a
    /// submission by the ring's SQPOLL kernel thread is charged to the process.
    pub const IO_URING_RINGS: &str = "IO_URING_RINGS";
    /// io_uring opcodes a governed process already reported: [`super::IoUringKey`] -> 1 (LRU).
    pub const IO_URING_SEEN: &str = "IO_URING_SEEN";
    /// The ring buffer of the events that must not share fate with bulk ones: tampering with
    /// the monitor, enforcement (kills, denials) and accesses to governed processes' memory.
    /// Drained first; a flood of file or exec events cannot fill it.
    pub const PRIORITY: &str = "PRIORITY";
    /// The monitor's own BPF objects: [`super::monitor_object_key`] -> 1, filled by user
    /// space after load and attach, so the `bpf()` hook can tell them.
    pub const MONITOR_OBJECTS: &str = "MONITOR_OBJECTS";
    /// `bpf()` calls aimed at the monitor's objects, from entry to exit: pid_tgid ->
    /// [`super::TamperEvent`] (LRU).
    pub const BPF_PENDING: &str = "BPF_PENDING";
    /// Allowed UDP connect destinations (`allow.network.udp_connect`), besides
    /// [`NET_CONNECT`]: LPM trie of [`super::NetKey`] -> [`super::PortRanges`].
    pub const NET_UDP_CONNECT: &str = "NET_UDP_CONNECT";
    /// Shells whose `-c` command is judged by what it runs: [`super::InodeKey`] -> 1.
    pub const SHELLS: &str = "SHELLS";
    /// The resolved-profile instance of a governed process whose profile names `${variables}`
    /// in `allow.exec`: tgid -> [`super::ExecInstance`]. Inherited at fork, dropped at exit.
    pub const EXEC_INSTANCE: &str = "EXEC_INSTANCE";
    /// Executables the templated `allow.exec` globs of an instance resolve to:
    /// [`super::ResolvedExecKey`] -> 1.
    pub const EXEC_RESOLVED: &str = "EXEC_RESOLVED";
}

/// Slots of [`maps::GUARDS`].
pub mod guard_slot {
    /// The GPU guard's `POLICY_*` bits.
    pub const GPU: u32 = 0;
    /// The configuration epoch ([`super::KnownKey`]): bumped at every reload.
    pub const EPOCH: u32 = 2;
    /// Entries of [`super::maps::GUARDS`].
    pub const LEN: u32 = 4;
}

/// Slots of [`maps::GATES`]: non-zero opens a gate.
pub mod gate {
    /// Some process's memory is guarded: a governed one (a profile's, or a candidate the
    /// kernel marked at exec), or the monitor's own under `monitor run`. Until then the
    /// host-wide `/proc/PID/mem` check of every open returns at this one lookup (`monitor
    /// trace` and `learn` with nothing governed). Set by the kernel when it marks a candidate
    /// and by user space when it governs a running process or starts `monitor run`; never
    /// cleared (a process governed once may be again).
    pub const GOVERNED: u32 = 0;
    /// The ring-buffer reader sleeps without its drain timer (the ring has been quiet): the
    /// next bulk event wakes it at once and closes this gate, so a quiet daemon does not
    /// wake 100 times a second and the first event after quiet waits for no timer. Set by
    /// the reader, cleared by the kernel.
    pub const READER_IDLE: u32 = 1;
    /// Entries of [`super::maps::GATES`].
    pub const LEN: u32 = 2;
}

/// Names of the programs, shared by both sides.
pub mod programs {
    pub const SCHED_PROCESS_EXEC: &str = "sched_process_exec";
    pub const SCHED_PROCESS_FORK: &str = "sched_process_fork";
    pub const SCHED_PROCESS_EXIT: &str = "sched_process_exit";
    pub const DEVICE_ACCESS: &str = "device_access";
    pub const CONNECT4: &str = "connect4";
    pub const CONNECT6: &str = "connect6";
    pub const SENDMSG4: &str = "sendmsg4";
    pub const SENDMSG6: &str = "sendmsg6";
    pub const BIND4: &str = "bind4";
    pub const BIND6: &str = "bind6";
    /// `cgroup_skb/egress`: datagrams of connected UDP sockets, which no sendmsg program sees.
    pub const UDP_EGRESS: &str = "udp_egress";
    pub const LSM_PROBE: &str = "lsm_probe";
    /// Exit of the open syscalls: files an accelerator fd the device hook saw for ioctl counting.
    pub const SYS_EXIT_OPEN_DEVICE: &str = "sys_exit_open_device";
    pub const PROCESS_VM_ENTER: &str = "process_vm_enter";
    pub const PTRACE_ENTER: &str = "ptrace_enter";
    pub const PIDFD_GETFD_ENTER: &str = "pidfd_getfd_enter";
    pub const PROC_MEM_OPEN_EXIT: &str = "proc_mem_open_exit";
    pub const IO_URING_CREATE: &str = "io_uring_create";
    pub const IO_URING_SUBMIT: &str = "io_uring_submit";
    pub const IO_URING_COMPLETE: &str = "io_uring_complete";
    /// `syscalls/sys_enter_bpf`: calls of other processes aimed at the monitor's objects.
    pub const BPF_ENTER: &str = "bpf_enter";
    /// `syscalls/sys_exit_bpf`: their result.
    pub const BPF_EXIT: &str = "bpf_exit";
    /// `tp_btf/signal_generate`: signals sent to the monitor.
    pub const SIGNAL_GENERATE: &str = "signal_generate";
}

/// The `log` target of the kernel programs' own messages (`aya-log`): why a hook or a path
/// walk gave up. Off unless the log filter enables it, e.g. `--log monitor::kernel=debug`;
/// the loader writes the level into the programs, which test it before anything else.
pub const KERNEL_LOG_TARGET: &str = "monitor::kernel";

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
    /// Another process reads or writes a governed process's memory.
    MemoryAccess = 8,
    /// A governed process creates an io_uring ring or submits a request to one.
    IoUring = 9,
    /// Another process reached for the monitor itself: its BPF objects, or a signal.
    Tamper = 10,
}

impl EventKind {
    pub const ALL: [EventKind; 10] = [
        EventKind::Exec,
        EventKind::Fork,
        EventKind::Exit,
        EventKind::File,
        EventKind::Net,
        EventKind::Device,
        EventKind::GpuIoctls,
        EventKind::MemoryAccess,
        EventKind::IoUring,
        EventKind::Tamper,
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
            EventKind::MemoryAccess => "memory-access",
            EventKind::IoUring => "io-uring",
            EventKind::Tamper => "tamper",
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
            8 => Ok(EventKind::MemoryAccess),
            9 => Ok(EventKind::IoUring),
            10 => Ok(EventKind::Tamper),
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
    /// Events not sent because user space already judged the same behaviour allowed.
    Known = 3,
    /// Events (or what an event needed later: a syscall's arguments for its exit, an
    /// accelerator fd for ioctl counting) lost because a kernel map insert failed (full).
    MapFull = 4,
    /// Events not sent because a kernel read the hook needed failed (a `try_*` gave up on a
    /// `bpf_probe_read` error or a missing kernel object): lost, unlike [`Stat::ReadFailed`].
    ReadDropped = 5,
    /// Execs the kernel could not judge because it could not read the executable's inode
    /// (`exec_inode`): sent, but without the enforce verdict (not killed) or the candidate
    /// check (not watched from its first instruction) that needed the inode.
    InodeUnread = 6,
}

impl Stat {
    /// The families that count lost events, each its own reason.
    pub const LOSSES: [Stat; 4] = [
        Stat::LostRingFull,
        Stat::MapFull,
        Stat::ReadDropped,
        Stat::InodeUnread,
    ];

    /// The reason of a loss, as the `events-lost` alert and the loss metric name it.
    pub const fn reason(self) -> &'static str {
        match self {
            Stat::Emitted => "emitted",
            Stat::LostRingFull => "ring-buffer-full",
            Stat::ReadFailed => "incomplete",
            Stat::Known => "known",
            Stat::MapFull => "map-full",
            Stat::ReadDropped => "read-failed",
            Stat::InodeUnread => "inode-unread",
        }
    }
}

/// Number of counter families.
pub const STAT_FAMILIES: u32 = 7;
const _: () = assert!(Stat::InodeUnread as u32 + 1 == STAT_FAMILIES);

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
    /// The number of arguments (`linux_binprm::argc`), also when `args` was cut.
    pub argc: u32,
    pub _pad: u32,
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

/// [`EventHeader::flags`] bits beyond `HEADER_WATCHED` are per kind.
///
/// A file event: `open` and friends, or a change to a file.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FileEvent {
    pub header: EventHeader,
    /// [`FileOpCode`] as u32.
    pub op: u32,
    /// `FILE_*` bits.
    pub flags: u32,
    /// The open flags (`O_*`), or the new mode for chmod.
    pub open_flags: u32,
    /// Bytes used in `path`.
    pub path_len: u32,
    /// The fd (or 0) on success, `-errno` on failure.
    pub result: i64,
    /// Bytes used in `raw`.
    pub raw_len: u32,
    pub _pad: u32,
    /// The key under which user space may tell the kernel "allowed, do not send again"
    /// (`tgid` 0: not cacheable).
    pub known: KnownKey,
    /// With `FILE_RESOLVED`: the absolute path of the file, walked in the kernel. Otherwise the
    /// directory the name in `raw` is relative to (the cwd or the dirfd's directory).
    pub path: [u8; PATH_CAP],
    /// Without `FILE_RESOLVED`: the name as the process passed it.
    pub raw: [u8; PATH_CAP],
}

/// File operations, as [`FileEvent::op`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileOpCode {
    Open = 1,
    /// The source of a rename; a `RenameTarget` record from the same thread follows.
    Rename = 2,
    RenameTarget = 3,
    Unlink = 4,
    Truncate = 5,
    Chmod = 6,
}

impl TryFrom<u32> for FileOpCode {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Ok(match value {
            1 => FileOpCode::Open,
            2 => FileOpCode::Rename,
            3 => FileOpCode::RenameTarget,
            4 => FileOpCode::Unlink,
            5 => FileOpCode::Truncate,
            6 => FileOpCode::Chmod,
            other => return Err(other),
        })
    }
}

/// Open flags as [`FileEvent::open_flags`] carries them (the generic Linux values, which
/// x86_64 and aarch64 share), decoded the same way on both sides.
pub const O_ACCMODE: u32 = 0o3;
pub const O_RDONLY: u32 = 0o0;
pub const O_WRONLY: u32 = 0o1;
pub const O_CREAT: u32 = 0o100;
pub const O_TRUNC: u32 = 0o1000;

/// [`FileEvent::flags`]: `path` is the file's own path (else: base directory + `raw`).
pub const FILE_RESOLVED: u32 = 1;
/// [`FileEvent::flags`]: `path` was cut at a component boundary.
pub const FILE_PATH_TRUNCATED: u32 = 2;
/// [`FileEvent::flags`]: `raw` was longer than its buffer.
pub const FILE_RAW_TRUNCATED: u32 = 4;
/// [`FileEvent::flags`]: reported because the file is protected (host-wide guard).
pub const FILE_PROTECTED: u32 = 8;

/// A socket operation.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NetEvent {
    pub header: EventHeader,
    /// [`NetOpCode`] as u32.
    pub op: u32,
    /// `SOCK_STREAM`, `SOCK_DGRAM`, ... (0 when unknown).
    pub sock_type: u32,
    /// 0 or the new fd on success, `-errno` on failure. From a cgroup program (`decision`
    /// set): `-EPERM` when refused, else 0 (the operation had not run yet).
    pub result: i64,
    /// Bytes used in `addr`.
    pub addr_len: u32,
    /// [`Decision`] as u32: what the cgroup program decided, on the kernel's copy of the
    /// address; [`Decision::Observed`] when a syscall tracepoint saw it instead.
    pub decision: u32,
    /// `NET_*` bits.
    pub flags: u32,
    /// The socket's protocol (`IPPROTO_TCP`, `IPPROTO_UDP`, ...; 0 when unknown).
    pub protocol: u32,
    /// As in [`FileEvent::known`].
    pub known: KnownKey,
    /// A `struct sockaddr_*`: the peer (connect, accept, send) or the local address (bind,
    /// listen), as the process gave it or as the kernel's socket holds it.
    pub addr: [u8; SOCKADDR_CAP],
}

/// [`NetEvent::flags`]: the address was read from the process's memory after the kernel
/// copied it (a syscall tracepoint): another thread may have rewritten it in between.
pub const NET_UNVERIFIED: u32 = 1;
/// [`NetEvent::flags`]: judged by the cgroup_skb egress program on the packet (a datagram of
/// a connected UDP socket), not by a cgroup sock_addr program on the address.
pub const NET_EGRESS: u32 = 2;

/// What a cgroup program decided about the operation it reports.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Seen after the fact by a syscall tracepoint: nothing was decided.
    Observed = 0,
    /// Let through.
    Allowed = 1,
    /// Refused (`EPERM`).
    Denied = 2,
    /// It would have been refused (dry run).
    WouldDeny = 3,
}

impl TryFrom<u32> for Decision {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Ok(match value {
            0 => Decision::Observed,
            1 => Decision::Allowed,
            2 => Decision::Denied,
            3 => Decision::WouldDeny,
            other => return Err(other),
        })
    }
}

/// Address families, as in `struct sockaddr::sa_family` (both sides decode them).
pub const AF_UNIX: u16 = 1;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
/// Socket types, as in [`NetEvent::sock_type`].
pub const SOCK_STREAM: u32 = 1;
pub const SOCK_DGRAM: u32 = 2;
/// The errno a cgroup program's refusal gives the process.
pub const EPERM: i64 = 1;

/// Room for any `struct sockaddr` we decode (`sockaddr_un` is 110 bytes).
pub const SOCKADDR_CAP: usize = 128;

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetOpCode {
    Connect = 1,
    Accept = 2,
    Bind = 3,
    Listen = 4,
    Send = 5,
}

impl TryFrom<u32> for NetOpCode {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Ok(match value {
            1 => NetOpCode::Connect,
            2 => NetOpCode::Accept,
            3 => NetOpCode::Bind,
            4 => NetOpCode::Listen,
            5 => NetOpCode::Send,
            other => return Err(other),
        })
    }
}

/// Accelerator device classes, as the kernel stores them (`ACCEL_MAJORS` values) and as
/// profiles and alerts name them ([`DeviceClassId::name`]): the one spelling of a class.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceClassId {
    Nvidia = 1,
    NvidiaUvm = 2,
    NvidiaCaps = 3,
    Dri = 4,
    Kfd = 5,
    Accel = 6,
}

impl DeviceClassId {
    pub const ALL: [DeviceClassId; 6] = [
        DeviceClassId::Nvidia,
        DeviceClassId::NvidiaUvm,
        DeviceClassId::NvidiaCaps,
        DeviceClassId::Dri,
        DeviceClassId::Kfd,
        DeviceClassId::Accel,
    ];

    /// The class as profiles (`devices:`) and alerts (`device.class`) name it.
    pub const fn name(self) -> &'static str {
        match self {
            DeviceClassId::Nvidia => "nvidia",
            DeviceClassId::NvidiaUvm => "nvidia-uvm",
            DeviceClassId::NvidiaCaps => "nvidia-caps",
            DeviceClassId::Dri => "dri",
            DeviceClassId::Kfd => "kfd",
            DeviceClassId::Accel => "accel",
        }
    }

    pub fn from_name(name: &str) -> Option<DeviceClassId> {
        let mut i = 0;
        while i < Self::ALL.len() {
            if Self::ALL[i].name().as_bytes() == name.as_bytes() {
                return Some(Self::ALL[i]);
            }
            i += 1;
        }
        None
    }

    /// The bit of this class in [`ProfilePolicy::devices`].
    pub const fn policy_bit(self) -> u32 {
        device_policy_bit(self as u32)
    }
}

impl TryFrom<u32> for DeviceClassId {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Ok(match value {
            1 => DeviceClassId::Nvidia,
            2 => DeviceClassId::NvidiaUvm,
            3 => DeviceClassId::NvidiaCaps,
            4 => DeviceClassId::Dri,
            5 => DeviceClassId::Kfd,
            6 => DeviceClassId::Accel,
            other => return Err(other),
        })
    }
}

/// The bit of a class ([`DeviceClassId`] as u32, as `ACCEL_MAJORS` holds it) in
/// [`ProfilePolicy::devices`].
pub const fn device_policy_bit(class: u32) -> u32 {
    1 << (class & 31)
}

/// An open of an accelerator device node.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DeviceEvent {
    pub header: EventHeader,
    /// [`DeviceClassId`] as u32.
    pub class: u32,
    pub major: u32,
    pub minor: u32,
    /// `FILE_*` bits for `path`/`raw`, as in [`FileEvent`].
    pub flags: u32,
    /// From the device hook: `-EPERM` when refused, else 0 (the driver's open had not run).
    pub result: i64,
    pub path_len: u32,
    pub raw_len: u32,
    /// [`Decision`] as u32: what the device hook decided.
    pub decision: u32,
    pub _pad: u32,
    pub path: [u8; PATH_CAP],
    pub raw: [u8; PATH_CAP],
}

/// Value of [`maps::DEVICE_OPENS`]: the device node the hook let a thread open.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceOpen {
    pub major: u32,
    pub minor: u32,
    /// [`DeviceClassId`] as u32.
    pub class: u32,
    pub _pad: u32,
}

/// A syscall in flight, from its entry (and the device hook) to its exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Pending {
    /// `PENDING_*` bits.
    pub flags: u32,
    /// [`FileOpCode`] / [`NetOpCode`] of the syscall.
    pub op: u32,
    pub dfd: i32,
    pub dfd2: i32,
    /// User pointers to the names (or the sockaddr).
    pub name: u64,
    pub name2: u64,
    pub open_flags: u32,
    pub fd: i32,
    /// Set by the device hook.
    pub major: u32,
    pub minor: u32,
    pub class: u32,
    /// Bytes of the sockaddr at `name`.
    pub addr_len: u32,
}

/// [`Pending::flags`]: a file syscall of a watched process.
pub const PENDING_FILE: u32 = 1;
/// [`Pending::flags`]: a network syscall of a watched process.
pub const PENDING_NET: u32 = 2;
/// [`Pending::flags`]: a cgroup sock_addr program judged (and reported, unless already
/// known) this syscall's address from the kernel's copy: its exit reports nothing more.
pub const PENDING_NET_JUDGED: u32 = 8;

/// Key of [`maps::PROTECTED_DIRS`]: a directory by device and inode number.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InodeKey {
    /// The kernel's `s_dev` (`MKDEV(major, minor)` with a 20-bit minor).
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
}

/// A protected file name suffix, right-aligned: `bytes[SUFFIX_CAP - len..]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Suffix {
    pub len: u32,
    pub bytes: [u8; SUFFIX_CAP],
}

pub const SUFFIX_CAP: usize = 28;
/// Most protected suffixes.
pub const SUFFIXES_MAX: u32 = 8;

/// Key of [`maps::ACCEL_FDS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FdKey {
    pub tgid: u32,
    pub fd: u32,
}

/// Key of [`maps::IOCTL_COUNTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IoctlKey {
    pub tgid: u32,
    pub class: u32,
    /// `_IOC_TYPE(cmd)`
    pub ioctl_type: u32,
    /// `_IOC_NR(cmd)`
    pub nr: u32,
}

/// Key of [`maps::SENT`]: a UDP destination already reported for a process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SendKey {
    pub tgid: u32,
    pub port: u32,
    pub addr: [u8; 16],
}

/// [`ProfilePolicy::flags`] and the GPU guard: refuse what is not allowed.
pub const POLICY_ENFORCE: u32 = 1;
/// ... but only say what would have been refused.
pub const POLICY_DRY_RUN: u32 = 2;

/// Enforcement settings of one profile.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProfilePolicy {
    /// `POLICY_*`
    pub flags: u32,
    /// Allowed device classes: bit `1 << DeviceClassId`.
    pub devices: u32,
}

/// Data of an LPM key in [`maps::NET_CONNECT`]/[`maps::NET_LISTEN`]: the profile id (big
/// endian, so that it is the first 32 bits of every prefix), then the address as IPv6
/// (IPv4 as `::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NetKey {
    pub profile_be: u32,
    pub addr: [u8; 16],
}

/// Most port ranges one network rule carries (after merging the rules that cover it).
pub const PORT_RANGES_MAX: usize = 8;

/// Allowed ports of a network prefix: `ranges[..count]`, inclusive.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRanges {
    pub count: u32,
    pub ranges: [[u16; 2]; PORT_RANGES_MAX],
}

/// Key of [`maps::EXEC_ALLOWED`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExecKey {
    pub profile: u32,
    pub dev: u32,
    pub ino: u64,
}

/// A governed process's resolved-profile instance ([`maps::EXEC_INSTANCE`]): its templated
/// `allow.exec` globs made concrete with its facts, by user space, under `instance` in
/// [`maps::EXEC_RESOLVED`]. `profile` and `start_time` must be the process's own for the
/// entry to count: a profile switch or a reused pid does not inherit what it allows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecInstance {
    pub instance: u32,
    pub profile: u32,
    /// The process's start time (`CLOCK_BOOTTIME` ns, as in [`EventHeader::start_time`]).
    pub start_time: u64,
}

/// Key of [`maps::EXEC_RESOLVED`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResolvedExecKey {
    pub instance: u32,
    pub dev: u32,
    pub ino: u64,
}

/// How far a process's start time may be from [`ExecInstance::start_time`]: a process
/// found by the `/proc` scan has its start time in clock ticks (10 ms at 100 Hz), one tick
/// off at most. A pid reused this soon after its first process started cannot happen short
/// of a tiny `pid_max`.
pub const EXEC_INSTANCE_START_SLACK_NS: u64 = 20_000_000;

/// Entries of [`maps::EXEC_RESOLVED`].
pub const EXEC_RESOLVED_MAX: u32 = 65536;
/// Entries of [`maps::SHELLS`].
pub const SHELLS_MAX: u32 = 64;

// `FileEvent::flags` 16 and 32 were "killed at open entry" and its dry run: no program has
// set them since guards moved to fanotify, and user space no longer decodes them. Not to be
// reused before a record format change.

/// Behaviour of a governed process that user space judged allowed: the kernel does not send
/// it again. Keyed by process, its exec generation and the configuration epoch, so an exec
/// or a reload forgets every judgment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct KnownKey {
    pub tgid: u32,
    pub generation: u32,
    /// `KNOWN_*` in the low 4 bits, the configuration epoch above.
    pub kind: u32,
    /// Open: the access bits of the flags. Network: the operation, and the port << 16.
    pub aux: u32,
    /// Open: inode number and device. Network: the IPv6 address (IPv4 mapped).
    pub a: u64,
    pub b: u64,
}

pub const KNOWN_OPEN: u32 = 1;
pub const KNOWN_NET: u32 = 2;
/// Bits of [`KnownKey::kind`] that hold the `KNOWN_*` kind; the epoch is above them.
pub const KNOWN_KIND_BITS: u32 = 4;
/// The configuration epoch ([`guard_slot::EPOCH`]) wraps within what fits above the kind.
pub const EPOCH_MASK: u32 = u32::MAX >> KNOWN_KIND_BITS;

/// [`KnownKey::kind`] of a `KNOWN_*` kind under a configuration epoch.
pub const fn known_kind(kind: u32, epoch: u32) -> u32 {
    kind | (epoch << KNOWN_KIND_BITS)
}

/// [`ExecEvent::flags`]: the kernel killed the process before the new program ran.
pub const EXEC_KILLED: u32 = 8;
/// [`ExecEvent::flags`]: it would have (dry run).
pub const EXEC_WOULD_KILL: u32 = 16;

/// [`ExecEvent::flags`]: the program has no file on disk (a memfd, or a file unlinked before
/// the exec): `path` holds the file's own name (`memfd:NAME`).
pub const EXEC_FILELESS: u32 = 32;

/// Why a process is watched. Stored in [`maps::WATCHED`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchEntry {
    /// `WATCH_*`
    pub reason: u32,
    /// Profile id, 0 when none.
    pub profile: u32,
    /// Unused, always 0: the generation lives in [`maps::EXEC_GENERATION`], which only the
    /// kernel writes (kept so the layout does not change).
    pub generation: u32,
    pub _pad: u32,
}

pub const WATCH_PID: u32 = 1;
pub const WATCH_EXE: u32 = 2;
pub const WATCH_ALL: u32 = 3;
pub const WATCH_PROFILE: u32 = 4;
/// Exec'd a candidate executable: watched until user space decides.
pub const WATCH_CANDIDATE: u32 = 5;
/// Read a guarded file (set by the fanotify guards before the open returns): its connects
/// are checked for model exfiltration.
pub const WATCH_GUARD_READER: u32 = 6;
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
    /// Non-zero: protected paths are configured (dirs or suffixes); check successful opens of
    /// unwatched processes against them.
    pub protect: u32,
    pub _pad: u32,
    /// The address of the kernel's `mem_open` (from /proc/kallsyms): a file whose
    /// `f_op->open` is it is a `/proc/PID/mem` (`proc_mem_operations` is a data symbol,
    /// absent from kallsyms without CONFIG_KALLSYMS_ALL). 0: unknown, not checked.
    pub proc_mem_open: u64,
    /// Offset of `io_kiocb::opcode` (an io_uring request), from BTF: lets the io_uring
    /// completion hook tell opens (whose fds may be a `/proc/PID/mem`). 0: unknown.
    pub io_kiocb_opcode: u32,
    pub _pad2: u32,
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
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,
    pub file_flags: u32,
    pub file_inode: u32,
    pub file_private_data: u32,
    pub inode_mode: u32,
    pub inode_rdev: u32,
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub sb_dev: u32,
    pub fs_pwd: u32,
    pub socket_type: u32,
    pub socket_sk: u32,
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_num: u32,
    pub skc_family: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    pub dentry_inode: u32,
    pub binprm_argc: u32,
    pub inode_nlink: u32,
    pub inode_private: u32,
    pub file_f_op: u32,
    pub fop_open: u32,
    pub proc_inode_pid: u32,
    pub proc_inode_vfs_inode: u32,
    pub pid_tasks: u32,
    pub task_pid_links: u32,
    pub bpf_map_id: u32,
    pub bpf_link_id: u32,
    pub bpf_prog_aux: u32,
    pub bpf_prog_aux_id: u32,
    /// `inode.i_generation`: with the inode number, what tells a file from a later one that
    /// reused its number ([`AllowedFile`]).
    pub inode_generation: u32,
    /// The seconds of `inode`'s change time: `i_ctime_sec` (6.11+), else the first member
    /// (`tv_sec`) of `__i_ctime` (6.6+) or `i_ctime` ([`AllowedFile`]).
    pub inode_ctime_sec: u32,
    /// Its nanoseconds: `i_ctime_nsec` (6.11+), else the `tv_nsec` of the `timespec64`
    /// (read as its low 32 bits: little-endian hosts only before 6.11).
    pub inode_ctime_nsec: u32,
}

/// The value of an [`maps::EXEC_ALLOWED`] or [`maps::EXEC_RESOLVED`] entry: what tells the
/// allowed file from a later one with its inode number, compared by the kernel at exec. ext4
/// gives a deleted file's inode number to the next file made, so a disallowed program written
/// where an allowed one was deleted would otherwise pass for it; its owner may even set the
/// old generation on it (`FS_IOC_SETVERSION`), but not an old change time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowedFile {
    /// The inode's generation (`FS_IOC_GETVERSION`); [`INODE_GENERATION_UNKNOWN`] where the
    /// file system does not say (tmpfs, overlayfs): not compared.
    pub generation: u32,
    /// The low 32 bits of the inode's change time in seconds (`st_ctime`), when the entry
    /// was written: any change since (a new file, a write, chmod, a new link, a rename)
    /// refuses the exec until the globs are expanded again.
    pub ctime_sec: u32,
    /// Its nanoseconds (`st_ctime_nsec`): a file made in the same second is another file.
    pub ctime_nsec: u32,
}

/// [`AllowedFile::generation`] of a file system that does not say (not compared).
pub const INODE_GENERATION_UNKNOWN: u32 = 0;

const _: () = assert!(core::mem::size_of::<EventHeader>() == 32);
const _: () = assert!(core::mem::size_of::<ExecEvent>() == 32 + 48 + PATH_CAP + ARGS_CAP);
const _: () = assert!(core::mem::size_of::<ForkEvent>() == 48);
const _: () = assert!(core::mem::size_of::<ExitEvent>() == 40);
const _: () = assert!(core::mem::size_of::<WatchEntry>() == 16);
const _: () = assert!(core::mem::size_of::<KnownKey>() == 32);
const _: () = assert!(core::mem::size_of::<Config>() == 40);
const _: () = assert!(core::mem::size_of::<FileEvent>() == 32 + 32 + 32 + 2 * PATH_CAP);
const _: () = assert!(core::mem::size_of::<NetEvent>() == 32 + 32 + 32 + SOCKADDR_CAP);
const _: () = assert!(core::mem::size_of::<DeviceEvent>() == 32 + 40 + 2 * PATH_CAP);
const _: () = assert!(core::mem::size_of::<DeviceOpen>() == 16);
const _: () = assert!(core::mem::size_of::<Pending>() == 56);
const _: () = assert!(core::mem::size_of::<InodeKey>() == 16);
const _: () = assert!(core::mem::size_of::<Suffix>() == 32);
const _: () = assert!(core::mem::size_of::<SendKey>() == 24);
const _: () = assert!(core::mem::size_of::<NetKey>() == 20);
const _: () = assert!(core::mem::size_of::<PortRanges>() == 36);
const _: () = assert!(core::mem::size_of::<ExecKey>() == 16);
const _: () = assert!(core::mem::size_of::<ExecInstance>() == 16);
const _: () = assert!(core::mem::size_of::<ResolvedExecKey>() == 16);
const _: () = assert!(core::mem::size_of::<AllowedFile>() == 12);
const _: () = assert!(PATH_CAP.is_power_of_two() && ARGS_CAP.is_power_of_two());

/// How a process reached another's memory, as [`MemoryAccessEvent::op`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemoryOpCode {
    ProcessVmReadv = 1,
    ProcessVmWritev = 2,
    /// `ptrace(PTRACE_ATTACH)`, `PTRACE_SEIZE`, `PTRACE_PEEK*` or `PTRACE_POKE*`: the
    /// request is in [`MemoryAccessEvent::arg`].
    Ptrace = 3,
    /// An open of `/proc/PID/mem` (or `/proc/PID/task/TID/mem`), however it was named.
    ProcMemOpen = 4,
    /// `pidfd_getfd`: the target's fd number is in [`MemoryAccessEvent::arg`].
    PidfdGetfd = 5,
}

impl TryFrom<u32> for MemoryOpCode {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Ok(match value {
            1 => MemoryOpCode::ProcessVmReadv,
            2 => MemoryOpCode::ProcessVmWritev,
            3 => MemoryOpCode::Ptrace,
            4 => MemoryOpCode::ProcMemOpen,
            5 => MemoryOpCode::PidfdGetfd,
            other => return Err(other),
        })
    }
}

/// `ptrace` requests that read or write another process's memory, or take control of it.
pub const PTRACE_PEEKTEXT: u64 = 1;
pub const PTRACE_PEEKDATA: u64 = 2;
pub const PTRACE_PEEKUSR: u64 = 3;
pub const PTRACE_POKETEXT: u64 = 4;
pub const PTRACE_POKEDATA: u64 = 5;
pub const PTRACE_POKEUSR: u64 = 6;
pub const PTRACE_ATTACH: u64 = 16;
pub const PTRACE_SEIZE: u64 = 0x4206;

/// [`MemoryAccessEvent::flags`]: the kernel killed the accessor (the target's profile
/// enforces) before the syscall went on.
pub const MEMORY_KILLED: u32 = 1;
/// [`MemoryAccessEvent::flags`]: it would have (dry run).
pub const MEMORY_WOULD_KILL: u32 = 2;
/// [`MemoryAccessEvent::flags`]: seen at the exit of the syscall (an open): the kill came
/// after the open, before the process could use the fd.
pub const MEMORY_AT_EXIT: u32 = 4;
/// [`MemoryAccessEvent::flags`]: the target is the monitor itself (its profile is 0).
pub const MEMORY_TARGET_MONITOR: u32 = 8;

/// Another process reached a governed process's memory. The header is about the accessor.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MemoryAccessEvent {
    pub header: EventHeader,
    /// [`MemoryOpCode`] as u32.
    pub op: u32,
    /// `MEMORY_*` bits.
    pub flags: u32,
    /// The governed process.
    pub target_tgid: u32,
    /// Its profile id.
    pub target_profile: u32,
    pub target_start_time: u64,
    /// The ptrace request, the target fd of pidfd_getfd, or the fd opened.
    pub arg: i64,
}

/// What a governed process did with io_uring, as [`IoUringEvent::op`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoUringOpCode {
    /// `io_uring_setup`: a ring was created.
    Create = 1,
    /// A request was submitted (`opcode` says which).
    Submit = 2,
}

impl TryFrom<u32> for IoUringOpCode {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Ok(match value {
            1 => IoUringOpCode::Create,
            2 => IoUringOpCode::Submit,
            other => return Err(other),
        })
    }
}

/// io_uring use by a governed process (the ring's creator for SQPOLL submissions).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IoUringEvent {
    pub header: EventHeader,
    /// [`IoUringOpCode`] as u32.
    pub op: u32,
    /// The request's `IORING_OP_*` (0 for a create).
    pub opcode: u32,
    /// The ring (`struct io_ring_ctx` address): which submissions belong together.
    pub ring: u64,
    /// Submitted by the ring's SQPOLL kernel thread.
    pub sq_thread: u32,
    /// The ring's setup flags (create) or the request's flags (submit), low 32 bits.
    pub flags: u32,
}

/// Key of [`maps::IO_URING_SEEN`]: one report per process, exec generation and opcode
/// (`opcode` 0x100: the ring creation).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IoUringKey {
    pub tgid: u32,
    pub generation: u32,
    pub opcode: u32,
    pub _pad: u32,
}

/// [`IoUringKey::opcode`] of a ring creation.
pub const IO_URING_KEY_CREATE: u32 = 0x100;

/// `IORING_OP_OPENAT`: an io_uring open (its completion's `res` is the new fd).
pub const IORING_OP_OPENAT: u32 = 18;
/// `IORING_OP_OPENAT2`, likewise.
pub const IORING_OP_OPENAT2: u32 = 28;

/// `IORING_OP_*` whose use is reported: those that open, change or remove files, reach the
/// network or install fds, i.e. what the syscall sensors would have seen (bit `1 << opcode`).
/// Reads and writes on fds already open are not (the open was).
pub const IO_URING_REPORTED_OPS: u64 = (1 << 9) // SENDMSG
    | (1 << 13) // ACCEPT
    | (1 << 16) // CONNECT
    | (1 << 17) // FALLOCATE
    | (1 << 18) // OPENAT
    | (1 << 26) // SEND
    | (1 << 28) // OPENAT2
    | (1 << 30) // SPLICE
    | (1 << 35) // RENAMEAT
    | (1 << 36) // UNLINKAT
    | (1 << 37) // MKDIRAT
    | (1 << 38) // SYMLINKAT
    | (1 << 39) // LINKAT
    | (1 << 40) // MSG_RING
    | (1 << 41) // FSETXATTR
    | (1 << 42) // SETXATTR
    | (1 << 45) // SOCKET
    | (1 << 46) // URING_CMD
    | (1 << 47) // SEND_ZC
    | (1 << 48) // SENDMSG_ZC
    | (1 << 54) // FIXED_FD_INSTALL
    | (1 << 55) // FTRUNCATE
    | (1 << 56) // BIND
    | (1 << 57); // LISTEN

/// The name of an `IORING_OP_*` (as the kernel's `io_uring_get_opcode` spells it, lower case).
pub const fn io_uring_op_name(opcode: u32) -> &'static str {
    match opcode {
        0 => "nop",
        1 => "readv",
        2 => "writev",
        3 => "fsync",
        4 => "read_fixed",
        5 => "write_fixed",
        6 => "poll_add",
        7 => "poll_remove",
        8 => "sync_file_range",
        9 => "sendmsg",
        10 => "recvmsg",
        11 => "timeout",
        12 => "timeout_remove",
        13 => "accept",
        14 => "async_cancel",
        15 => "link_timeout",
        16 => "connect",
        17 => "fallocate",
        18 => "openat",
        19 => "close",
        20 => "files_update",
        21 => "statx",
        22 => "read",
        23 => "write",
        24 => "fadvise",
        25 => "madvise",
        26 => "send",
        27 => "recv",
        28 => "openat2",
        29 => "epoll_ctl",
        30 => "splice",
        31 => "provide_buffers",
        32 => "remove_buffers",
        33 => "tee",
        34 => "shutdown",
        35 => "renameat",
        36 => "unlinkat",
        37 => "mkdirat",
        38 => "symlinkat",
        39 => "linkat",
        40 => "msg_ring",
        41 => "fsetxattr",
        42 => "setxattr",
        43 => "fgetxattr",
        44 => "getxattr",
        45 => "socket",
        46 => "uring_cmd",
        47 => "send_zc",
        48 => "sendmsg_zc",
        49 => "read_multishot",
        50 => "waitid",
        51 => "futex_wait",
        52 => "futex_wake",
        53 => "futex_waitv",
        54 => "fixed_fd_install",
        55 => "ftruncate",
        56 => "bind",
        57 => "listen",
        58 => "recv_zc",
        59 => "epoll_wait",
        60 => "readv_fixed",
        61 => "writev_fixed",
        62 => "pipe",
        _ => "unknown",
    }
}

const _: () = assert!(core::mem::size_of::<MemoryAccessEvent>() == 32 + 32);
const _: () = assert!(core::mem::size_of::<IoUringEvent>() == 32 + 24);
const _: () = assert!(core::mem::size_of::<IoUringKey>() == 16);

/// What another process did to the monitor, as [`TamperEvent::op`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TamperOpCode {
    /// A `bpf()` command on one of the monitor's objects (`cmd`, `object_kind`, `object_id`).
    Bpf = 1,
    /// A signal sent to the monitor (`cmd` is its number).
    Signal = 2,
}

impl TryFrom<u32> for TamperOpCode {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Ok(match value {
            1 => TamperOpCode::Bpf,
            2 => TamperOpCode::Signal,
            other => return Err(other),
        })
    }
}

/// The kind of a BPF object, as [`TamperEvent::object_kind`] and in [`monitor_object_key`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BpfObjectKind {
    Program = 1,
    Map = 2,
    Link = 3,
}

impl TryFrom<u32> for BpfObjectKind {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Ok(match value {
            1 => BpfObjectKind::Program,
            2 => BpfObjectKind::Map,
            3 => BpfObjectKind::Link,
            other => return Err(other),
        })
    }
}

/// The key of [`maps::MONITOR_OBJECTS`].
pub const fn monitor_object_key(kind: BpfObjectKind, id: u32) -> u64 {
    ((kind as u64) << 32) | id as u64
}

/// `bpf()` commands, as the kernel numbers them (`enum bpf_cmd`), that the hook looks at.
pub const BPF_MAP_UPDATE_ELEM: u32 = 2;
pub const BPF_MAP_DELETE_ELEM: u32 = 3;
pub const BPF_PROG_DETACH: u32 = 9;
pub const BPF_PROG_GET_FD_BY_ID: u32 = 13;
pub const BPF_MAP_GET_FD_BY_ID: u32 = 14;
pub const BPF_MAP_LOOKUP_AND_DELETE_ELEM: u32 = 21;
pub const BPF_MAP_FREEZE: u32 = 22;
pub const BPF_MAP_LOOKUP_AND_DELETE_BATCH: u32 = 25;
pub const BPF_MAP_UPDATE_BATCH: u32 = 26;
pub const BPF_MAP_DELETE_BATCH: u32 = 27;
pub const BPF_LINK_UPDATE: u32 = 29;
pub const BPF_LINK_GET_FD_BY_ID: u32 = 30;
pub const BPF_LINK_DETACH: u32 = 34;

/// The name of a `bpf()` command the hook reports.
pub const fn bpf_cmd_name(cmd: u32) -> &'static str {
    match cmd {
        BPF_MAP_UPDATE_ELEM => "BPF_MAP_UPDATE_ELEM",
        BPF_MAP_DELETE_ELEM => "BPF_MAP_DELETE_ELEM",
        BPF_PROG_DETACH => "BPF_PROG_DETACH",
        BPF_PROG_GET_FD_BY_ID => "BPF_PROG_GET_FD_BY_ID",
        BPF_MAP_GET_FD_BY_ID => "BPF_MAP_GET_FD_BY_ID",
        BPF_MAP_LOOKUP_AND_DELETE_ELEM => "BPF_MAP_LOOKUP_AND_DELETE_ELEM",
        BPF_MAP_FREEZE => "BPF_MAP_FREEZE",
        BPF_MAP_LOOKUP_AND_DELETE_BATCH => "BPF_MAP_LOOKUP_AND_DELETE_BATCH",
        BPF_MAP_UPDATE_BATCH => "BPF_MAP_UPDATE_BATCH",
        BPF_MAP_DELETE_BATCH => "BPF_MAP_DELETE_BATCH",
        BPF_LINK_UPDATE => "BPF_LINK_UPDATE",
        BPF_LINK_GET_FD_BY_ID => "BPF_LINK_GET_FD_BY_ID",
        BPF_LINK_DETACH => "BPF_LINK_DETACH",
        _ => "other",
    }
}

/// [`TamperEvent::flags`]: the object was named by an id the caller wrote in its own memory
/// (a `*_GET_FD_BY_ID`): suspected, not resolved from the kernel's fd table.
pub const TAMPER_UNVERIFIED: u32 = 1;
/// [`TamperEvent::flags`]: `result` holds the syscall's return (seen at its exit).
pub const TAMPER_RESULT: u32 = 2;
/// [`TamperEvent::flags`]: a map fd asked read-only (`BPF_F_RDONLY`).
pub const TAMPER_READ_ONLY: u32 = 4;

/// Another process reached for the monitor. The header is about the actor (the caller of
/// `bpf()`, the sender of the signal).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TamperEvent {
    pub header: EventHeader,
    /// [`TamperOpCode`] as u32.
    pub op: u32,
    /// The `bpf()` command, or the signal number.
    pub cmd: u32,
    /// [`BpfObjectKind`] as u32 (0 for a signal).
    pub object_kind: u32,
    /// The object's id (for a signal: the monitor's thread it was sent to).
    pub object_id: u32,
    /// `TAMPER_*` bits.
    pub flags: u32,
    pub _pad: u32,
    /// The syscall's return (with [`TAMPER_RESULT`]); for a signal, the kernel's
    /// `TRACE_SIGNAL_*` result (0: delivered).
    pub result: i64,
}

const _: () = assert!(core::mem::size_of::<TamperEvent>() == 32 + 32);

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are repr(C), Copy, with no padding and valid for every bit pattern.
    unsafe impl aya::Pod for super::WatchEntry {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::InodeKey {}
    unsafe impl aya::Pod for super::AllowedFile {}
    unsafe impl aya::Pod for super::Suffix {}
    unsafe impl aya::Pod for super::FdKey {}
    unsafe impl aya::Pod for super::IoctlKey {}
    unsafe impl aya::Pod for super::SendKey {}
    unsafe impl aya::Pod for super::Pending {}
    unsafe impl aya::Pod for super::ProfilePolicy {}
    unsafe impl aya::Pod for super::NetKey {}
    unsafe impl aya::Pod for super::PortRanges {}
    unsafe impl aya::Pod for super::ExecKey {}
    unsafe impl aya::Pod for super::ExecInstance {}
    unsafe impl aya::Pod for super::ResolvedExecKey {}
    unsafe impl aya::Pod for super::KnownKey {}
    unsafe impl aya::Pod for super::DeviceOpen {}
    unsafe impl aya::Pod for super::IoUringKey {}
}

/// The syscall sensors hang off the two raw tracepoints `sys_enter` and `sys_exit`, not
/// the per-syscall perf tracepoints: those skip compat (ia32) syscalls, and each costs the
/// kernel a synchronous RCU grace period under a global mutex to detach (about 35 ms).
/// A dispatcher on each raw tracepoint tail-calls, by syscall number, into a route program
/// that tells the ABI (native or compat) and tail-calls into that ABI's handler.
pub mod syscalls {
    /// Slots per program array: above every syscall number of the ABIs we table (x86_64
    /// and ia32 end below 470, aarch64 likewise). A number past the end has no slot.
    pub const SLOTS: u32 = 512;
    /// Dispatchers, attached to raw `sys_enter` / `sys_exit`.
    pub const ENTER_DISPATCH: &str = "sys_enter_dispatch";
    pub const EXIT_DISPATCH: &str = "sys_exit_dispatch";
    /// Route programs: the ABI test, then the tail call into that ABI's handler.
    pub const ENTER_ROUTE: &str = "sys_enter_route";
    pub const EXIT_ROUTE: &str = "sys_exit_route";
    /// Exit of the open syscalls: the file, device and /proc/PID/mem checks in one program
    /// (a syscall number has one slot).
    pub const EXIT_OPENS: &str = "sys_exit_opens";
    /// Handlers, tail-called by syscall number (each the name of its function in
    /// `monitor-ebpf`, which the `raw_tracepoint` macro makes the program's name).
    pub const ENTER_OPEN: &str = "sys_enter_open";
    pub const ENTER_OPENAT: &str = "sys_enter_openat";
    pub const ENTER_OPENAT2: &str = "sys_enter_openat2";
    pub const ENTER_CREAT: &str = "sys_enter_creat";
    pub const ENTER_RENAME: &str = "sys_enter_rename";
    pub const ENTER_RENAMEAT: &str = "sys_enter_renameat";
    pub const ENTER_UNLINK: &str = "sys_enter_unlink";
    pub const ENTER_UNLINKAT: &str = "sys_enter_unlinkat";
    pub const ENTER_TRUNCATE: &str = "sys_enter_truncate";
    pub const ENTER_FTRUNCATE: &str = "sys_enter_ftruncate";
    pub const ENTER_CHMOD: &str = "sys_enter_chmod";
    pub const ENTER_FCHMODAT: &str = "sys_enter_fchmodat";
    pub const ENTER_FCHMOD: &str = "sys_enter_fchmod";
    pub const EXIT_FILE: &str = "sys_exit_file";
    pub const ENTER_CONNECT: &str = "sys_enter_connect";
    pub const ENTER_BIND: &str = "sys_enter_bind";
    pub const ENTER_LISTEN: &str = "sys_enter_listen";
    pub const ENTER_ACCEPT: &str = "sys_enter_accept";
    pub const ENTER_SENDTO: &str = "sys_enter_sendto";
    pub const ENTER_SENDMSG: &str = "sys_enter_sendmsg";
    pub const EXIT_NET: &str = "sys_exit_net";
    pub const ENTER_IOCTL: &str = "sys_enter_ioctl";
    pub const ENTER_CLOSE: &str = "sys_enter_close";
    /// Program arrays: syscall number -> route program, where either ABI has a handler.
    pub const ENTER_ROUTES: &str = "SYS_ENTER_ROUTES";
    pub const EXIT_ROUTES: &str = "SYS_EXIT_ROUTES";
    /// Program arrays: syscall number -> handler, per ABI and direction.
    pub const ENTER_NATIVE: &str = "SYS_ENTER_NATIVE";
    pub const ENTER_COMPAT: &str = "SYS_ENTER_COMPAT";
    pub const EXIT_NATIVE: &str = "SYS_EXIT_NATIVE";
    pub const EXIT_COMPAT: &str = "SYS_EXIT_COMPAT";
    /// The global holding [`super::SyscallAbi`].
    pub const ABI_GLOBAL: &str = "SYSCALL_ABI";
}

/// Where a syscall's number and arguments are in its `struct pt_regs`, per ABI, written by
/// the loader: register offsets from the kernel's BTF, the registers from the architecture's
/// calling convention (x86_64: di, si, dx, r10, r8, r9; ia32: bx, cx, dx, si, di, bp;
/// aarch64: regs[0..5]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallAbi {
    pub native_args: [u32; 6],
    /// Compat arguments are 32 bits wide: the upper halves are whatever user space left there.
    pub compat_args: [u32; 6],
    /// The syscall number at exit (x86_64 `orig_ax`, aarch64 `syscallno`).
    pub nr: u32,
    /// `task_struct.thread_info.status` (x86), whose `compat_bit` marks a compat syscall in
    /// progress. 0: this architecture's compat syscalls are not told apart (none tabled).
    pub task_status: u32,
    pub compat_bit: u32,
    /// `process_vm_writev`'s number, native then compat: tells it from `process_vm_readv`,
    /// which shares the handler.
    pub process_vm_writev: [u32; 2],
    pub _pad: u32,
    /// One bit per syscall number ([`syscalls::SLOTS`]) that some handler serves, in either
    /// ABI, at entry and at exit: the dispatchers test it before the tail call, because an
    /// indirect tail call (a retpoline on mitigated CPUs) costs more than the bit test, and
    /// nearly every syscall on the host is untraced.
    pub enter_traced: [u64; 8],
    pub exit_traced: [u64; 8],
}

const _: () = assert!(core::mem::size_of::<SyscallAbi>() == 72 + 128);
const _: () = assert!(syscalls::SLOTS == 8 * 64);

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, u32 fields only, no padding.
unsafe impl aya::Pod for SyscallAbi {}
