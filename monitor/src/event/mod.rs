//! Decoding of the records the kernel programs put in the ring buffer.
//!
//! The raw records are `#[repr(C)]` structs from `monitor-common`; they are borrowed in place
//! after a length and alignment check (read with `read_unaligned` when not aligned), and the
//! kind is decoded with `TryFrom<u32>`.
//!
//! The bottom layer of the data flow: the records that flow through the daemon and that
//! every other layer may use, and nothing else of the crate. Next to the kernel's events:
//! - [`alert`]: the alert record the rules and the monitor's own checks produce, and [`alert::Rule`];
//! - [`classify`]: what an event means (a write, a probe, a stop signal), shared by the rules
//!   and by learning;
//! - [`clock`]: kernel boot time to wall-clock time.

pub mod alert;
pub mod classify;
pub mod clock;

use std::borrow::Cow;

pub use monitor_common::Decision;
use monitor_common::{
    io_uring_op_name, DeviceEvent, EventHeader, EventKind, ExecEvent, ExitEvent, FileEvent,
    FileOpCode, ForkEvent, IoUringEvent, IoUringOpCode, KnownKey, MemoryAccessEvent, MemoryOpCode,
    NetEvent, NetOpCode, AF_INET, AF_INET6, AF_UNIX, ARGS_CAP, EXEC_ARGS_TRUNCATED, EXEC_FILELESS,
    EXEC_KILLED, EXEC_PATH_FROM_FILENAME, EXEC_PATH_TRUNCATED, EXEC_WOULD_KILL,
    FILE_PATH_TRUNCATED, FILE_PROTECTED, FILE_RAW_TRUNCATED, FILE_RESOLVED, HEADER_WATCHED,
    MEMORY_AT_EXIT, MEMORY_KILLED, MEMORY_WOULD_KILL, NET_EGRESS, NET_UNVERIFIED, O_ACCMODE,
    O_CREAT, O_RDONLY, O_TRUNC, O_WRONLY, PATH_CAP, SOCKADDR_CAP, SOCK_DGRAM, SOCK_STREAM,
};

/// An event from the kernel, owned and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Exec(Exec),
    Fork(Fork),
    Exit(Exit),
    File(File),
    Net(Net),
    Device(Device),
    GpuIoctls(GpuIoctls),
    MemoryAccess(MemoryAccess),
    IoUring(IoUring),
    Tamper(Tamper),
}

/// What another process did to the monitor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TamperOp {
    /// A `bpf()` command on one of the monitor's objects.
    Bpf {
        /// The command (`BPF_LINK_DETACH`, ...).
        cmd: u32,
        object: monitor_common::BpfObjectKind,
        id: u32,
        /// Named by an id in the caller's memory (a `*_GET_FD_BY_ID`), not resolved from
        /// its fd table: suspected.
        unverified: bool,
        /// A map fd asked read-only.
        read_only: bool,
    },
    /// A signal sent to the monitor (to this thread of it).
    Signal { signal: u32, thread: u32 },
}

impl TamperOp {
    /// `monitor.tamper.operation`.
    pub fn name(self) -> &'static str {
        match self {
            TamperOp::Bpf { .. } => "bpf",
            TamperOp::Signal { .. } => "signal",
        }
    }
}

/// Another process reached for the monitor: a `bpf()` call on its objects, or a signal. The
/// header is about the actor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tamper {
    pub header: Header,
    pub op: TamperOp,
    /// The `bpf()` return (fd or 0, `-errno`), or the signal's `TRACE_SIGNAL_*` result.
    pub result: Option<i64>,
}

/// How another process reached a governed process's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemoryOp {
    ProcessVmReadv,
    ProcessVmWritev,
    /// With the request (`PTRACE_ATTACH`, ...).
    Ptrace(u64),
    /// An open of `/proc/PID/mem` (any name for it).
    ProcMemOpen,
    /// `pidfd_getfd` of the target's fd.
    PidfdGetfd,
}

impl MemoryOp {
    /// `monitor.memory.operation`: the syscall (or file) that did it.
    pub fn name(self) -> &'static str {
        match self {
            MemoryOp::ProcessVmReadv => "process_vm_readv",
            MemoryOp::ProcessVmWritev => "process_vm_writev",
            MemoryOp::Ptrace(_) => "ptrace",
            MemoryOp::ProcMemOpen => "proc-pid-mem-open",
            MemoryOp::PidfdGetfd => "pidfd_getfd",
        }
    }

    /// The ptrace request by name.
    pub fn ptrace_request(self) -> Option<&'static str> {
        let MemoryOp::Ptrace(request) = self else {
            return None;
        };
        use monitor_common::{
            PTRACE_ATTACH, PTRACE_PEEKDATA, PTRACE_PEEKTEXT, PTRACE_PEEKUSR, PTRACE_POKEDATA,
            PTRACE_POKETEXT, PTRACE_POKEUSR, PTRACE_SEIZE,
        };
        Some(match request {
            PTRACE_PEEKTEXT => "PTRACE_PEEKTEXT",
            PTRACE_PEEKDATA => "PTRACE_PEEKDATA",
            PTRACE_PEEKUSR => "PTRACE_PEEKUSER",
            PTRACE_POKETEXT => "PTRACE_POKETEXT",
            PTRACE_POKEDATA => "PTRACE_POKEDATA",
            PTRACE_POKEUSR => "PTRACE_POKEUSER",
            PTRACE_ATTACH => "PTRACE_ATTACH",
            PTRACE_SEIZE => "PTRACE_SEIZE",
            _ => "other",
        })
    }
}

/// Another process read, wrote or took control of a governed process's memory. The header
/// is about the accessor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryAccess {
    pub header: Header,
    pub op: MemoryOp,
    pub target_tgid: u32,
    /// 0 when the kernel did not read it (the process table knows it).
    pub target_start_time_ns: u64,
    /// The target's profile id when the kernel saw it.
    pub target_profile: u32,
    /// The fd (open, pidfd_getfd's target fd).
    pub fd: Option<i64>,
    /// The kernel killed the accessor (the target's profile enforces).
    pub killed: bool,
    pub would_kill: bool,
    /// Seen at the syscall's exit (an open) rather than its entry.
    pub at_exit: bool,
    /// The target is the monitor itself.
    pub monitor: bool,
}

/// What a governed process did with io_uring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoUringOp {
    /// Created a ring.
    Create,
    /// Submitted a request with this `IORING_OP_*`.
    Submit(u32),
}

impl IoUringOp {
    /// `monitor.io_uring.operation`: `setup`, or the opcode's name (`openat`, `connect`...).
    pub fn name(self) -> &'static str {
        match self {
            IoUringOp::Create => "setup",
            IoUringOp::Submit(opcode) => io_uring_op_name(opcode),
        }
    }
}

/// io_uring use by a governed process (reported once per process, exec and opcode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoUring {
    pub header: Header,
    pub op: IoUringOp,
    /// The ring's address in the kernel (which requests share a ring).
    pub ring: u64,
    /// Submitted by the ring's SQPOLL kernel thread (charged to the ring's creator).
    pub sq_thread: bool,
}

/// What a file event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileOp {
    /// open, openat, openat2, creat
    Open,
    /// rename, renameat, renameat2: `path` is the source, `target` the destination
    Rename,
    /// unlink, unlinkat, rmdir
    Unlink,
    /// truncate, ftruncate
    Truncate,
    /// chmod, fchmod, fchmodat (and, from the guards, any attribute change)
    Chmod,
    /// A write to the file's data through any fd (reported by the guards, `FAN_MODIFY`)
    Modify,
}

impl FileOp {
    pub fn name(self) -> &'static str {
        match self {
            FileOp::Open => "open",
            FileOp::Rename => "rename",
            FileOp::Unlink => "unlink",
            FileOp::Truncate => "truncate",
            FileOp::Chmod => "chmod",
            FileOp::Modify => "modify",
        }
    }

    /// Everything but an open changes the file: a write-class event.
    pub fn writes(self) -> bool {
        self != FileOp::Open
    }
}

/// How a file was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Access {
    pub read: bool,
    pub write: bool,
    pub create: bool,
    pub truncate: bool,
}

impl Access {
    /// `read`, `write` or `read-write`.
    pub fn mode(self) -> &'static str {
        match (self.read, self.write) {
            (true, true) => "read-write",
            (false, true) => "write",
            _ => "read",
        }
    }

    /// Whether the open may change the file.
    pub fn modifies(self) -> bool {
        self.write || self.create || self.truncate
    }
}

/// A file opened or changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct File {
    pub header: Header,
    pub op: FileOp,
    /// Absolute path as the kernel resolved it.
    pub path: String,
    pub path_truncated: bool,
    /// Destination of a rename.
    pub target: Option<String>,
    pub access: Access,
    /// The fd (or 0) on success, `-errno` on failure.
    pub result: i64,
    /// Reported because the path is under a protected prefix (host-wide).
    pub protected: bool,
    /// Where to tell the kernel this was judged allowed (governed processes only).
    pub known: Option<KnownKey>,
    /// Exact bytes of `path` or `target` when they are not valid UTF-8.
    pub raw: RawNames,
    /// Raised by the fanotify guards: their verdict on the inode and the open.
    pub guard: Option<GuardHit>,
    /// The path was read from the syscall's arguments in user memory after the kernel took
    /// its own copy (rename, unlink, truncate, chmod, a failed open), not from the kernel's
    /// objects: another thread may have rewritten it in between (`monitor.unverified`).
    pub unverified: bool,
}

/// Names that are not valid UTF-8. Their text form (`path`, `args`) replaces each invalid
/// sequence with U+FFFD, so `bad\xff.bin` and `bad\xfe.bin` read alike; these are the exact
/// bytes, reported next to the text (see `output::raw_name_keys`). Empty, allocating
/// nothing, for the usual all-UTF-8 event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawNames {
    /// (record key of the text form, exact bytes) for each path that is not UTF-8.
    pub paths: Vec<(&'static str, Vec<u8>)>,
    /// Every argument's exact bytes, when one of them is not UTF-8.
    pub args: Option<Vec<Vec<u8>>>,
}

impl RawNames {
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.args.is_none()
    }
}

/// The text form of a name, and its exact bytes when it is not valid UTF-8.
pub fn name_text(bytes: &[u8]) -> (String, Option<Vec<u8>>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_owned(), None),
        Err(_) => (
            String::from_utf8_lossy(bytes).into_owned(),
            Some(bytes.to_vec()),
        ),
    }
}

/// [`name_text`] of bytes that may already be owned (a joined path): not copied again.
fn name_text_of(bytes: Cow<'_, [u8]>) -> (String, Option<Vec<u8>>) {
    match bytes {
        Cow::Borrowed(bytes) => name_text(bytes),
        Cow::Owned(bytes) => match String::from_utf8(bytes) {
            Ok(text) => (text, None),
            Err(err) => {
                let bytes = err.into_bytes();
                (String::from_utf8_lossy(&bytes).into_owned(), Some(bytes))
            }
        },
    }
}

/// What a network event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NetOp {
    Connect,
    Accept,
    Bind,
    Listen,
    /// A UDP datagram to a destination (sendto/sendmsg).
    Send,
}

impl NetOp {
    pub fn name(self) -> &'static str {
        match self {
            NetOp::Connect => "connect",
            NetOp::Accept => "accept",
            NetOp::Bind => "bind",
            NetOp::Listen => "listen",
            NetOp::Send => "send",
        }
    }
}

/// `network.transport`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Tcp,
    Udp,
    Unix,
    Other,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
            Transport::Unix => "unix",
            Transport::Other => "other",
        }
    }
}

/// A socket operation with its addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Net {
    pub header: Header,
    pub op: NetOp,
    pub transport: Transport,
    /// Peer (connect, accept, send). IPv4-mapped IPv6 addresses are given as IPv4.
    pub peer: Option<std::net::SocketAddr>,
    /// Local address (bind, listen).
    pub local: Option<std::net::SocketAddr>,
    /// Unix socket path, or `@name` for the abstract namespace.
    pub unix_path: Option<String>,
    /// 0 (or an fd) on success, `-errno` on failure. A non-blocking connect in progress
    /// (`-EINPROGRESS`) is not a failure. Judged by a cgroup program: `-EPERM` when refused,
    /// else 0 (the operation had not run yet).
    pub result: i64,
    /// What the cgroup program decided on the kernel's copy of the address;
    /// [`Decision::Observed`] when a syscall tracepoint saw it.
    pub decision: Decision,
    /// The address was read from the process's memory after the kernel's copy (a syscall
    /// tracepoint): another thread may have rewritten it in between (`monitor.unverified`).
    pub unverified: bool,
    /// Judged by the cgroup_skb egress program on the packet (a connected UDP socket's
    /// datagram), not by a cgroup sock_addr program on the address (`NET_EGRESS`).
    pub egress: bool,
    /// Where to tell the kernel this was judged allowed (governed processes only).
    pub known: Option<KnownKey>,
}

/// Accelerator device classes: the kernel's own type, decoded with `TryFrom<u32>`.
pub use monitor_common::DeviceClassId as DeviceClass;

/// An open of an accelerator device node (host-wide), failed ones included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    pub header: Header,
    pub path: String,
    pub class: DeviceClass,
    pub major: u32,
    pub minor: u32,
    /// From the device hook (`decision` not `Observed`): `-EPERM` when refused, else 0 (the
    /// driver's open had not run yet). Otherwise the fd on success, `-errno` on failure.
    pub result: i64,
    /// What the device hook decided.
    pub decision: Decision,
}

/// ioctls a process made on accelerator devices since the last summary, counted in the
/// kernel by (class, ioctl type, ioctl number).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuIoctls {
    pub header: Header,
    pub counts: Vec<IoctlCount>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoctlCount {
    pub class: DeviceClass,
    /// `_IOC_TYPE` (e.g. `'F'` for NVIDIA).
    pub ioctl_type: u8,
    /// `_IOC_NR`.
    pub nr: u8,
    pub count: u64,
}

/// The name of an errno value, for `error.type`.
pub fn errno_name(errno: i64) -> String {
    let name = match errno {
        1 => "EPERM",
        2 => "ENOENT",
        3 => "ESRCH",
        4 => "EINTR",
        5 => "EIO",
        6 => "ENXIO",
        9 => "EBADF",
        11 => "EAGAIN",
        12 => "ENOMEM",
        13 => "EACCES",
        14 => "EFAULT",
        16 => "EBUSY",
        17 => "EEXIST",
        18 => "EXDEV",
        19 => "ENODEV",
        20 => "ENOTDIR",
        21 => "EISDIR",
        22 => "EINVAL",
        23 => "ENFILE",
        24 => "EMFILE",
        26 => "ETXTBSY",
        27 => "EFBIG",
        28 => "ENOSPC",
        30 => "EROFS",
        31 => "EMLINK",
        36 => "ENAMETOOLONG",
        39 => "ENOTEMPTY",
        40 => "ELOOP",
        61 => "ENODATA",
        75 => "EOVERFLOW",
        88 => "ENOTSOCK",
        93 => "EPROTONOSUPPORT",
        95 => "EOPNOTSUPP",
        97 => "EAFNOSUPPORT",
        98 => "EADDRINUSE",
        99 => "EADDRNOTAVAIL",
        100 => "ENETDOWN",
        101 => "ENETUNREACH",
        103 => "ECONNABORTED",
        104 => "ECONNRESET",
        106 => "EISCONN",
        107 => "ENOTCONN",
        110 => "ETIMEDOUT",
        111 => "ECONNREFUSED",
        113 => "EHOSTUNREACH",
        114 => "EALREADY",
        115 => "EINPROGRESS",
        _ => return format!("E{errno}"),
    };
    name.to_owned()
}

/// What every event carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: EventKind,
    /// `CLOCK_BOOTTIME` nanoseconds.
    pub time_ns: u64,
    pub tgid: u32,
    pub pid: u32,
    /// Start time of the process (`CLOCK_BOOTTIME` ns): with `tgid`, its identity.
    pub start_time_ns: u64,
    pub watched: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exec {
    pub header: Header,
    pub ppid: u32,
    pub parent_start_time_ns: u64,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub path: String,
    pub path_truncated: bool,
    /// The path is the name given to execve (the kernel could not walk the file's path).
    pub path_from_filename: bool,
    pub args: Vec<String>,
    pub args_truncated: bool,
    /// How many arguments there were (`args` may hold fewer when truncated).
    pub args_count: usize,
    /// The program has no file on disk (a memfd): `path` is the file's name, `memfd:NAME`.
    pub fileless: bool,
    /// The kernel killed it before the new program ran (enforce mode).
    pub killed: bool,
    /// It would have been killed (enforce mode, dry run).
    pub would_kill: bool,
    /// Exact bytes of `path` and `args` when they are not valid UTF-8.
    pub raw: RawNames,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fork {
    /// About the child.
    pub header: Header,
    pub parent_tgid: u32,
    pub parent_start_time_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    pub header: Header,
    pub code: Option<u32>,
    pub signal: Option<u32>,
    pub core_dumped: bool,
}

impl Exec {
    /// What the process table keeps of this exec (`cgroup_path` resolved by the caller).
    pub fn table_info(&self, cgroup_path: Option<String>) -> ExecInfo {
        ExecInfo {
            tgid: self.header.tgid,
            start_time_ns: self.header.start_time_ns,
            ppid: self.ppid,
            parent_start_time_ns: self.parent_start_time_ns,
            exe: self.path.clone(),
            args: self.args.clone(),
            args_truncated: self.args_truncated,
            args_count: Some(self.args_count),
            uid: self.uid,
            cgroup_id: self.cgroup_id,
            cgroup_path,
        }
    }
}

impl Event {
    /// Exact bytes of the event's names that are not UTF-8, if any.
    pub fn raw_names(&self) -> Option<&RawNames> {
        match self {
            Event::Exec(exec) => Some(&exec.raw),
            Event::File(file) => Some(&file.raw),
            _ => None,
        }
        .filter(|raw| !raw.is_empty())
    }

    pub fn header(&self) -> &Header {
        match self {
            Event::Exec(e) => &e.header,
            Event::Fork(e) => &e.header,
            Event::Exit(e) => &e.header,
            Event::File(e) => &e.header,
            Event::Net(e) => &e.header,
            Event::Device(e) => &e.header,
            Event::GpuIoctls(e) => &e.header,
            Event::MemoryAccess(e) => &e.header,
            Event::IoUring(e) => &e.header,
            Event::Tamper(e) => &e.header,
        }
    }
}

/// Why a record could not be decoded. The reader counts it (`monitor.undecodable` in the
/// summary) and goes on: a record from a newer kernel program is never a panic.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    TooShort {
        kind: u32,
        len: usize,
    },
    UnknownKind(u32),
    /// A field (an op, a class, a decision) holds a value its `monitor-common` type does not
    /// know.
    UnknownValue {
        kind: EventKind,
        field: &'static str,
        value: u32,
    },
}

/// Decodes one field of a record of `kind` through its `monitor-common` type.
fn decode_field<T: TryFrom<u32, Error = u32>>(
    kind: EventKind,
    field: &'static str,
    value: u32,
) -> Result<T, DecodeError> {
    T::try_from(value).map_err(|value| DecodeError::UnknownValue { kind, field, value })
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::TooShort { kind, len } => {
                write!(f, "record of kind {kind} is too short ({len} bytes)")
            }
            DecodeError::UnknownKind(kind) => write!(f, "record of unknown kind {kind}"),
            DecodeError::UnknownValue { kind, field, value } => write!(
                f,
                "{} record with unknown {field} {value} (a kernel program newer than this \
                 daemon? rebuild both from one tree)",
                kind.name()
            ),
        }
    }
}

/// The record in `bytes`, borrowed where it is aligned (always, in the kernel's ring buffer:
/// records start on 8 bytes): an exec record is 1.6 KB and a file record 1.1 KB, and copying
/// them by value was a measurable share of decoding. Copied only when unaligned.
fn read<T: Copy>(bytes: &[u8], kind: u32) -> Result<Cow<'_, T>, DecodeError> {
    if bytes.len() < std::mem::size_of::<T>() {
        return Err(DecodeError::TooShort {
            kind,
            len: bytes.len(),
        });
    }
    let ptr = bytes.as_ptr().cast::<T>();
    if ptr.is_aligned() {
        // SAFETY: length and alignment checked above; T is a repr(C) plain-data type valid
        // for any bytes; the reference borrows `bytes`, which outlives it.
        Ok(Cow::Borrowed(unsafe { &*ptr }))
    } else {
        // SAFETY: length checked above; T is a repr(C) plain-data type valid for any bytes.
        Ok(Cow::Owned(unsafe { std::ptr::read_unaligned(ptr) }))
    }
}

/// The kind of a raw record, if it has a header.
pub fn raw_kind(bytes: &[u8]) -> Option<u32> {
    bytes
        .get(..4)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

fn header(raw: &EventHeader, kind: EventKind) -> Header {
    Header {
        kind,
        time_ns: raw.time_ns,
        tgid: raw.tgid,
        pid: raw.pid,
        start_time_ns: raw.start_time,
        watched: raw.flags & HEADER_WATCHED != 0,
    }
}

/// Splits NUL-separated argv as in /proc/PID/cmdline.
pub fn split_args(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|&b| b == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect()
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let raw_kind = raw_kind(bytes).ok_or(DecodeError::TooShort {
        kind: 0,
        len: bytes.len(),
    })?;
    let kind = EventKind::try_from(raw_kind).map_err(DecodeError::UnknownKind)?;
    match kind {
        EventKind::Exec => {
            let raw = read::<ExecEvent>(bytes, raw_kind)?;
            let path_len = (raw.path_len as usize).min(PATH_CAP);
            let args_len = (raw.args_len as usize).min(ARGS_CAP);
            let (path, path_bytes) = name_text(&raw.path[..path_len]);
            let mut names = RawNames::default();
            if let Some(bytes) = path_bytes {
                names.paths.push(("process.executable.path", bytes));
            }
            let args_bytes = &raw.args[..args_len];
            let args = match std::str::from_utf8(args_bytes) {
                // The usual case: validated once, each argument copied once.
                Ok(text) => {
                    let text = text.strip_suffix('\0').unwrap_or(text);
                    if text.is_empty() {
                        Vec::new()
                    } else {
                        text.split('\0').map(str::to_owned).collect()
                    }
                }
                Err(_) => {
                    let bytes = args_bytes.strip_suffix(&[0]).unwrap_or(args_bytes);
                    names.args = Some(bytes.split(|&b| b == 0).map(<[u8]>::to_vec).collect());
                    split_args(args_bytes)
                }
            };
            // The kernel's count; what was copied when it could not read it.
            let args_count = (raw.argc as usize).max(args.len());
            Ok(Event::Exec(Exec {
                header: header(&raw.header, kind),
                ppid: raw.ppid,
                parent_start_time_ns: raw.parent_start_time,
                uid: raw.uid,
                gid: raw.gid,
                cgroup_id: raw.cgroup_id,
                path,
                path_truncated: raw.flags & EXEC_PATH_TRUNCATED != 0,
                path_from_filename: raw.flags & EXEC_PATH_FROM_FILENAME != 0,
                args,
                args_truncated: raw.flags & EXEC_ARGS_TRUNCATED != 0,
                args_count,
                fileless: raw.flags & EXEC_FILELESS != 0,
                killed: raw.flags & EXEC_KILLED != 0,
                would_kill: raw.flags & EXEC_WOULD_KILL != 0,
                raw: names,
            }))
        }
        EventKind::Fork => {
            let raw = read::<ForkEvent>(bytes, raw_kind)?;
            Ok(Event::Fork(Fork {
                header: header(&raw.header, kind),
                parent_tgid: raw.parent_tgid,
                parent_start_time_ns: raw.parent_start_time,
            }))
        }
        EventKind::Exit => {
            let raw = read::<ExitEvent>(bytes, raw_kind)?;
            Ok(Event::Exit(Exit {
                header: header(&raw.header, kind),
                code: raw.status(),
                signal: raw.signal(),
                core_dumped: raw.core_dumped(),
            }))
        }
        EventKind::File => {
            let raw = read::<FileEvent>(bytes, raw_kind)?;
            let op = decode_field::<FileOpCode>(kind, "op", raw.op)?;
            let (path_bytes, path_truncated) =
                file_path_bytes(raw.flags, &raw.path, raw.path_len, &raw.raw, raw.raw_len);
            let (path, path_bytes) = name_text_of(path_bytes);
            let access = Access {
                read: raw.open_flags & O_ACCMODE != O_WRONLY,
                write: raw.open_flags & O_ACCMODE != O_RDONLY,
                create: raw.open_flags & O_CREAT != 0,
                truncate: raw.open_flags & O_TRUNC != 0,
            };
            let header = header(&raw.header, kind);
            let (op, target) = match op {
                FileOpCode::Open => (FileOp::Open, None),
                FileOpCode::Rename => (FileOp::Rename, None),
                // Joined with the rename it follows by `RenameJoiner`.
                FileOpCode::RenameTarget => (FileOp::Rename, Some(path.clone())),
                FileOpCode::Unlink => (FileOp::Unlink, None),
                FileOpCode::Truncate => (FileOp::Truncate, None),
                FileOpCode::Chmod => (FileOp::Chmod, None),
            };
            let is_target = target.is_some();
            let mut names = RawNames::default();
            if let Some(bytes) = path_bytes {
                let key = if is_target {
                    "monitor.file.target.path"
                } else {
                    "file.path"
                };
                names.paths.push((key, bytes));
            }
            Ok(Event::File(File {
                header,
                op,
                path: if is_target { String::new() } else { path },
                path_truncated,
                target,
                access: if op == FileOp::Open {
                    access
                } else {
                    Access::default()
                },
                result: raw.result,
                protected: raw.flags & FILE_PROTECTED != 0,
                known: (raw.known.tgid != 0).then_some(raw.known),
                raw: names,
                guard: None,
                unverified: raw.flags & FILE_RESOLVED == 0 || op == FileOp::Rename,
            }))
        }
        EventKind::Net => {
            let raw = read::<NetEvent>(bytes, raw_kind)?;
            let op = match decode_field::<NetOpCode>(kind, "op", raw.op)? {
                NetOpCode::Connect => NetOp::Connect,
                NetOpCode::Accept => NetOp::Accept,
                NetOpCode::Bind => NetOp::Bind,
                NetOpCode::Listen => NetOp::Listen,
                NetOpCode::Send => NetOp::Send,
            };
            let len = (raw.addr_len as usize).min(SOCKADDR_CAP);
            let address = decode_sockaddr(&raw.addr[..len]);
            let transport = match (&address, raw.sock_type) {
                (SockAddr::Unix(_), _) => Transport::Unix,
                (_, SOCK_STREAM) => Transport::Tcp,
                (_, SOCK_DGRAM) => Transport::Udp,
                (_, _) => Transport::Other,
            };
            let decision = decode_field::<Decision>(kind, "decision", raw.decision)?;
            let (ip, unix_path) = match address {
                SockAddr::Ip(addr) => (Some(addr), None),
                SockAddr::Unix(path) => (None, Some(path)),
                SockAddr::None => (None, None),
            };
            let local = matches!(op, NetOp::Bind | NetOp::Listen);
            Ok(Event::Net(Net {
                header: header(&raw.header, kind),
                op,
                transport,
                peer: if local { None } else { ip },
                local: if local { ip } else { None },
                unix_path,
                result: raw.result,
                decision,
                unverified: raw.flags & NET_UNVERIFIED != 0,
                egress: raw.flags & NET_EGRESS != 0,
                known: (raw.known.tgid != 0).then_some(raw.known),
            }))
        }
        EventKind::Device => {
            let raw = read::<DeviceEvent>(bytes, raw_kind)?;
            let (path, _) = file_path(raw.flags, &raw.path, raw.path_len, &raw.raw, raw.raw_len);
            let class = decode_field::<DeviceClass>(kind, "class", raw.class)?;
            let decision = decode_field::<Decision>(kind, "decision", raw.decision)?;
            Ok(Event::Device(Device {
                header: header(&raw.header, kind),
                path,
                class,
                major: raw.major,
                minor: raw.minor,
                result: raw.result,
                decision,
            }))
        }
        // Summaries are built in user space from the kernel's counters, never sent.
        EventKind::GpuIoctls => Err(DecodeError::UnknownKind(raw_kind)),
        EventKind::MemoryAccess => {
            let raw = read::<MemoryAccessEvent>(bytes, raw_kind)?;
            let op = match decode_field::<MemoryOpCode>(kind, "op", raw.op)? {
                MemoryOpCode::ProcessVmReadv => MemoryOp::ProcessVmReadv,
                MemoryOpCode::ProcessVmWritev => MemoryOp::ProcessVmWritev,
                MemoryOpCode::Ptrace => MemoryOp::Ptrace(raw.arg as u64),
                MemoryOpCode::ProcMemOpen => MemoryOp::ProcMemOpen,
                MemoryOpCode::PidfdGetfd => MemoryOp::PidfdGetfd,
            };
            Ok(Event::MemoryAccess(MemoryAccess {
                header: header(&raw.header, kind),
                op,
                target_tgid: raw.target_tgid,
                target_start_time_ns: raw.target_start_time,
                target_profile: raw.target_profile,
                fd: matches!(op, MemoryOp::ProcMemOpen | MemoryOp::PidfdGetfd).then_some(raw.arg),
                killed: raw.flags & MEMORY_KILLED != 0,
                would_kill: raw.flags & MEMORY_WOULD_KILL != 0,
                at_exit: raw.flags & MEMORY_AT_EXIT != 0,
                monitor: raw.flags & monitor_common::MEMORY_TARGET_MONITOR != 0,
            }))
        }
        EventKind::Tamper => {
            use monitor_common::{TamperEvent, TamperOpCode, TAMPER_READ_ONLY, TAMPER_RESULT};
            let raw = read::<TamperEvent>(bytes, raw_kind)?;
            let op = match decode_field::<TamperOpCode>(kind, "op", raw.op)? {
                TamperOpCode::Bpf => TamperOp::Bpf {
                    cmd: raw.cmd,
                    object: decode_field::<monitor_common::BpfObjectKind>(
                        kind,
                        "object_kind",
                        raw.object_kind,
                    )?,
                    id: raw.object_id,
                    unverified: raw.flags & monitor_common::TAMPER_UNVERIFIED != 0,
                    read_only: raw.flags & TAMPER_READ_ONLY != 0,
                },
                TamperOpCode::Signal => TamperOp::Signal {
                    signal: raw.cmd,
                    thread: raw.object_id,
                },
            };
            Ok(Event::Tamper(Tamper {
                header: header(&raw.header, kind),
                op,
                result: (raw.flags & TAMPER_RESULT != 0).then_some(raw.result),
            }))
        }
        EventKind::IoUring => {
            let raw = read::<IoUringEvent>(bytes, raw_kind)?;
            let op = match decode_field::<IoUringOpCode>(kind, "op", raw.op)? {
                IoUringOpCode::Create => IoUringOp::Create,
                IoUringOpCode::Submit => IoUringOp::Submit(raw.opcode),
            };
            Ok(Event::IoUring(IoUring {
                header: header(&raw.header, kind),
                op,
                ring: raw.ring,
                sq_thread: raw.sq_thread != 0,
            }))
        }
    }
}

/// The path of a file record: the kernel's walk of the file itself, or the base directory it
/// walked joined with the name the process gave, with `.` and `..` removed lexically.
fn file_path(
    flags: u32,
    path: &[u8; PATH_CAP],
    path_len: u32,
    raw: &[u8; PATH_CAP],
    raw_len: u32,
) -> (String, bool) {
    let (bytes, truncated) = file_path_bytes(flags, path, path_len, raw, raw_len);
    (name_text_of(bytes).0, truncated)
}

/// [`file_path`], as the exact bytes.
fn file_path_bytes<'a>(
    flags: u32,
    path: &'a [u8; PATH_CAP],
    path_len: u32,
    raw: &[u8; PATH_CAP],
    raw_len: u32,
) -> (Cow<'a, [u8]>, bool) {
    let walked = &path[..(path_len as usize).min(PATH_CAP)];
    let truncated = flags & (FILE_PATH_TRUNCATED | FILE_RAW_TRUNCATED) != 0;
    if flags & FILE_RESOLVED != 0 {
        return (Cow::Borrowed(walked), truncated);
    }
    let name = &raw[..(raw_len as usize).min(PATH_CAP)];
    if name.is_empty() {
        return (Cow::Borrowed(walked), truncated);
    }
    let joined = if name.starts_with(b"/") || walked.is_empty() {
        name.to_vec()
    } else {
        [walked, b"/", name].concat()
    };
    (Cow::Owned(normalize_bytes(&joined)), truncated)
}

/// Removes `.`, `..` and repeated slashes from an absolute path, lexically.
pub fn normalize(path: &str) -> String {
    // Splitting at `/` keeps every UTF-8 sequence whole.
    String::from_utf8_lossy(&normalize_bytes(path.as_bytes())).into_owned()
}

/// [`normalize`] on bytes, for names that are not UTF-8.
pub fn normalize_bytes(path: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    let mut out = Vec::with_capacity(path.len() + 1);
    for part in parts {
        out.push(b'/');
        out.extend_from_slice(part);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

/// A decoded `struct sockaddr`.
#[derive(Debug, PartialEq, Eq)]
enum SockAddr {
    Ip(std::net::SocketAddr),
    Unix(String),
    None,
}

fn decode_sockaddr(bytes: &[u8]) -> SockAddr {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    let Some(family) = bytes.get(..2).map(|b| u16::from_ne_bytes([b[0], b[1]])) else {
        return SockAddr::None;
    };
    let port = || {
        bytes
            .get(2..4)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .unwrap_or(0)
    };
    match family {
        // A path, or a name in the abstract namespace (leading NUL), shown as @name.
        AF_UNIX => {
            let path = &bytes[2..];
            if path.first() == Some(&0) {
                let name = &path[1..];
                let name = name.split(|&b| b == 0).next().unwrap_or(name);
                SockAddr::Unix(format!("@{}", String::from_utf8_lossy(name)))
            } else {
                let path = path.split(|&b| b == 0).next().unwrap_or(path);
                SockAddr::Unix(String::from_utf8_lossy(path).into_owned())
            }
        }
        AF_INET if bytes.len() >= 8 => {
            let ip = Ipv4Addr::new(bytes[4], bytes[5], bytes[6], bytes[7]);
            SockAddr::Ip(SocketAddr::new(ip.into(), port()))
        }
        AF_INET6 if bytes.len() >= 24 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&bytes[8..24]);
            let ip = Ipv6Addr::from(octets);
            // IPv4-mapped IPv6 (::ffff:a.b.c.d) is shown as IPv4.
            let ip = match ip.to_ipv4_mapped() {
                Some(v4) => std::net::IpAddr::V4(v4),
                None => std::net::IpAddr::V6(ip),
            };
            SockAddr::Ip(SocketAddr::new(ip, port()))
        }
        _ => SockAddr::None,
    }
}

/// Joins each rename record with the target record that follows it from the same thread.
#[derive(Default)]
pub struct RenameJoiner {
    pending: std::collections::HashMap<u32, File>,
}

impl RenameJoiner {
    /// Returns the event to pass on, if any.
    pub fn push(&mut self, event: Event) -> Option<Event> {
        match event {
            Event::File(file) if file.op == FileOp::Rename => {
                if file.target.is_some() && file.path.is_empty() {
                    let mut source = self.pending.remove(&file.header.pid)?;
                    source.target = file.target;
                    source.raw.paths.extend(file.raw.paths);
                    Some(Event::File(source))
                } else {
                    // A source whose target record was lost is replaced by the next one.
                    self.pending.insert(file.header.pid, file);
                    None
                }
            }
            other => Some(other),
        }
    }
}

/// The guard subsystem's verdict, carried by the file event it raised. The rules trust it:
/// they do not match the path against the guards' globs again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardHit {
    /// Indices into `config.guards.protected_paths` that cover the file.
    pub guards: Vec<u32>,
    /// The profile the answering thread judged the process by (permission events).
    pub profile: Option<u32>,
    /// Whether `profile` was decided (permission events) or is left to the rules engine.
    pub judged: bool,
    /// The open was refused (`FAN_DENY`: the process got EPERM).
    pub denied: bool,
    /// It would have been (dry run).
    pub would_deny: bool,
    /// The open's flags could not be read (io_uring, or the thread was gone): judged as a
    /// read (a write through the fd is reported by `FAN_MODIFY`).
    pub access_unknown: bool,
    /// The process's executable when the event happened.
    pub exe: Option<String>,
}

/// What an exec event says about the process after the exec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecInfo {
    pub tgid: u32,
    pub start_time_ns: u64,
    pub ppid: u32,
    pub parent_start_time_ns: u64,
    pub exe: String,
    pub args: Vec<String>,
    pub args_truncated: bool,
    /// The kernel's count of arguments (`None`: `args.len()`).
    pub args_count: Option<usize>,
    pub uid: u32,
    pub cgroup_id: u64,
    pub cgroup_path: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(value: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain-data value.
        unsafe {
            std::slice::from_raw_parts(value as *const T as *const u8, std::mem::size_of::<T>())
        }
        .to_vec()
    }

    fn raw_header(kind: EventKind) -> EventHeader {
        EventHeader {
            kind: kind as u32,
            flags: HEADER_WATCHED,
            time_ns: 5,
            tgid: 42,
            pid: 43,
            start_time: 7,
        }
    }

    #[test]
    fn decodes_exec_with_bounds_and_flags() {
        let mut raw = ExecEvent {
            header: raw_header(EventKind::Exec),
            ppid: 1,
            uid: 1000,
            parent_start_time: 3,
            cgroup_id: 99,
            flags: EXEC_ARGS_TRUNCATED,
            path_len: 12,
            args_len: 9,
            gid: 100,
            argc: 103,
            _pad: 0,
            path: [0; PATH_CAP],
            args: [0; ARGS_CAP],
        };
        raw.path[..12].copy_from_slice(b"/usr/bin/cat");
        raw.args[..9].copy_from_slice(b"cat\0-n\0x\0");
        let Event::Exec(exec) = decode(&bytes_of(&raw)).unwrap() else {
            panic!("not an exec")
        };
        assert_eq!(exec.path, "/usr/bin/cat");
        assert_eq!(exec.args, ["cat", "-n", "x"]);
        assert!(exec.args_truncated);
        assert_eq!(
            exec.args_count, 103,
            "the kernel's count, not the copied arguments'"
        );
        assert!(!exec.fileless);
        assert!(!exec.path_truncated);
        assert!(exec.header.watched);
        assert_eq!(exec.header.tgid, 42);
        assert_eq!(exec.cgroup_id, 99);

        // Lengths beyond the buffers are clamped, never trusted.
        raw.path_len = u32::MAX;
        raw.args_len = u32::MAX;
        assert!(decode(&bytes_of(&raw)).is_ok());
    }

    #[test]
    fn names_that_are_not_utf8_keep_their_exact_bytes() {
        let mut raw = ExecEvent {
            header: raw_header(EventKind::Exec),
            ppid: 1,
            uid: 0,
            parent_start_time: 3,
            cgroup_id: 9,
            flags: 0,
            path_len: 10,
            args_len: 11,
            gid: 0,
            argc: 3,
            _pad: 0,
            path: [0; PATH_CAP],
            args: [0; ARGS_CAP],
        };
        raw.path[..10].copy_from_slice(b"/tmp/x\xffrun");
        raw.args[..11].copy_from_slice(b"run\0a\xfeb\0ok\0");
        let Event::Exec(exec) = decode(&bytes_of(&raw)).unwrap() else {
            panic!("not an exec")
        };
        assert_eq!(exec.path, "/tmp/x\u{fffd}run");
        assert_eq!(exec.args, ["run", "a\u{fffd}b", "ok"]);
        assert_eq!(
            exec.raw.paths,
            [("process.executable.path", b"/tmp/x\xffrun".to_vec())]
        );
        assert_eq!(
            exec.raw.args,
            Some(vec![b"run".to_vec(), b"a\xfeb".to_vec(), b"ok".to_vec()])
        );
        // All UTF-8: nothing extra.
        raw.path[6] = b'y';
        raw.args[5] = b'c';
        let Event::Exec(exec) = decode(&bytes_of(&raw)).unwrap() else {
            panic!("not an exec")
        };
        assert!(exec.raw.is_empty(), "{:?}", exec.raw);
        // A joined name is normalised on its bytes.
        let mut walked = [0u8; PATH_CAP];
        walked[..4].copy_from_slice(b"/srv");
        let mut name = [0u8; PATH_CAP];
        name[..10].copy_from_slice(b"./a/../\xfe.b");
        let (bytes, _) = file_path_bytes(0, &walked, 4, &name, 10);
        assert_eq!(&*bytes, b"/srv/\xfe.b");
    }

    #[test]
    fn decodes_exit_status_and_signal() {
        let mut raw = ExitEvent {
            header: raw_header(EventKind::Exit),
            exit_code: 3 << 8,
            flags: 0,
        };
        let Event::Exit(exit) = decode(&bytes_of(&raw)).unwrap() else {
            panic!()
        };
        assert_eq!((exit.code, exit.signal), (Some(3), None));
        raw.exit_code = 9 | 0x80;
        let Event::Exit(exit) = decode(&bytes_of(&raw)).unwrap() else {
            panic!()
        };
        assert_eq!(
            (exit.code, exit.signal, exit.core_dumped),
            (None, Some(9), true)
        );
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        let raw = ForkEvent {
            header: raw_header(EventKind::Fork),
            parent_tgid: 1,
            _pad: 0,
            parent_start_time: 2,
        };
        let bytes = bytes_of(&raw);
        assert!(matches!(
            decode(&bytes[..20]),
            Err(DecodeError::TooShort { .. })
        ));
        assert!(matches!(decode(&[]), Err(DecodeError::TooShort { .. })));
        let mut unknown = bytes.clone();
        unknown[..4].copy_from_slice(&77u32.to_ne_bytes());
        assert_eq!(decode(&unknown), Err(DecodeError::UnknownKind(77)));
        assert!(matches!(decode(&bytes), Ok(Event::Fork(_))));
    }

    #[test]
    fn normalizes_lexically() {
        assert_eq!(normalize("/a/./b/../c//d"), "/a/c/d");
        assert_eq!(normalize("/../x"), "/x");
        assert_eq!(normalize("/"), "/");
    }

    fn raw_net(decision: Decision, flags: u32, addr: &[u8]) -> NetEvent {
        let mut raw = NetEvent {
            header: raw_header(EventKind::Net),
            op: NetOpCode::Connect as u32,
            sock_type: SOCK_STREAM,
            result: 0,
            addr_len: addr.len() as u32,
            decision: decision as u32,
            flags,
            protocol: 6,
            known: KnownKey::default(),
            addr: [0; SOCKADDR_CAP],
        };
        raw.addr[..addr.len()].copy_from_slice(addr);
        raw
    }

    #[test]
    fn decodes_the_decision_of_a_cgroup_program() {
        // The kernel's copy of an IPv4-mapped IPv6 address: shown, and judged, as IPv4.
        let mut mapped = vec![10, 0, 0x1f, 0x90, 0, 0, 0, 0];
        mapped.extend([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 2]);
        mapped.extend([0; 4]);
        let mut raw = raw_net(Decision::Denied, 0, &mapped);
        raw.result = -monitor_common::EPERM;
        let Event::Net(net) = decode(&bytes_of(&raw)).unwrap() else {
            panic!("not a network event")
        };
        assert_eq!(net.decision, Decision::Denied);
        assert!(!net.unverified);
        assert_eq!(net.peer, Some("127.0.0.2:8080".parse().unwrap()));
        assert_eq!(net.transport, Transport::Tcp);
        assert!(!net.egress, "a sock_addr program's decision");
        // Refused on the packet by the egress program (a connected UDP socket's datagram).
        let mut egress = raw_net(Decision::Denied, NET_EGRESS, &mapped);
        egress.op = NetOpCode::Send as u32;
        let Event::Net(net) = decode(&bytes_of(&egress)).unwrap() else {
            panic!("not a network event")
        };
        assert!(net.egress);
        assert_eq!((net.op, net.decision), (NetOp::Send, Decision::Denied));

        let unverified = raw_net(Decision::Observed, NET_UNVERIFIED, &[1, 0, b'/', b'x', 0]);
        let Event::Net(net) = decode(&bytes_of(&unverified)).unwrap() else {
            panic!("not a network event")
        };
        assert_eq!(
            (net.decision, net.unverified, net.transport),
            (Decision::Observed, true, Transport::Unix)
        );

        // A decision this build does not know is refused, not guessed.
        let mut unknown = raw_net(Decision::Allowed, 0, &[]);
        unknown.decision = 9;
        assert_eq!(
            decode(&bytes_of(&unknown)),
            Err(DecodeError::UnknownValue {
                kind: EventKind::Net,
                field: "decision",
                value: 9
            })
        );
    }

    /// Every op field goes through its `monitor-common` type: a value this build does not
    /// know is an error that names the kind, the field and the value (the reader counts it),
    /// never a panic and never a guess.
    #[test]
    fn unknown_ops_are_errors_naming_the_field() {
        let mut net = raw_net(Decision::Observed, 0, &[]);
        net.op = 42;
        let err = decode(&bytes_of(&net)).unwrap_err();
        assert_eq!(
            err,
            DecodeError::UnknownValue {
                kind: EventKind::Net,
                field: "op",
                value: 42
            }
        );
        assert!(err
            .to_string()
            .contains("network record with unknown op 42"));

        let mut file: FileEvent = unsafe { std::mem::zeroed() };
        file.header = raw_header(EventKind::File);
        file.op = 0;
        assert!(matches!(
            decode(&bytes_of(&file)),
            Err(DecodeError::UnknownValue {
                kind: EventKind::File,
                field: "op",
                value: 0
            })
        ));
        file.op = FileOpCode::Chmod as u32;
        assert!(matches!(decode(&bytes_of(&file)), Ok(Event::File(_))));

        let mut memory: MemoryAccessEvent = unsafe { std::mem::zeroed() };
        memory.header = raw_header(EventKind::MemoryAccess);
        memory.op = 77;
        assert!(matches!(
            decode(&bytes_of(&memory)),
            Err(DecodeError::UnknownValue {
                field: "op",
                value: 77,
                ..
            })
        ));

        let mut tamper: monitor_common::TamperEvent = unsafe { std::mem::zeroed() };
        tamper.header = raw_header(EventKind::Tamper);
        tamper.op = monitor_common::TamperOpCode::Bpf as u32;
        tamper.object_kind = 12;
        assert!(matches!(
            decode(&bytes_of(&tamper)),
            Err(DecodeError::UnknownValue {
                kind: EventKind::Tamper,
                field: "object_kind",
                value: 12
            })
        ));

        let mut io_uring: IoUringEvent = unsafe { std::mem::zeroed() };
        io_uring.header = raw_header(EventKind::IoUring);
        io_uring.op = 3;
        assert!(matches!(
            decode(&bytes_of(&io_uring)),
            Err(DecodeError::UnknownValue {
                kind: EventKind::IoUring,
                field: "op",
                value: 3
            })
        ));
        io_uring.op = IoUringOpCode::Create as u32;
        assert!(matches!(
            decode(&bytes_of(&io_uring)),
            Ok(Event::IoUring(_))
        ));
    }

    /// A device class has one spelling: the kernel's number, the profile's and the alert's
    /// name are the same `monitor-common` type.
    #[test]
    fn device_classes_are_spelled_once() {
        for class in DeviceClass::ALL {
            assert_eq!(DeviceClass::try_from(class as u32), Ok(class));
            assert_eq!(DeviceClass::from_name(class.name()), Some(class));
            assert_eq!(class.policy_bit(), 1 << class as u32);
        }
        assert_eq!(
            DeviceClass::from_name("nvidia-uvm"),
            Some(DeviceClass::NvidiaUvm)
        );
        assert_eq!(DeviceClass::from_name("gpu"), None);
        assert_eq!(DeviceClass::try_from(0), Err(0));
    }

    #[test]
    fn decodes_device_classes_and_decisions() {
        let mut raw = DeviceEvent {
            header: raw_header(EventKind::Device),
            class: DeviceClass::Nvidia as u32,
            major: 195,
            minor: 0,
            flags: 0,
            result: 0,
            path_len: 0,
            raw_len: 12,
            decision: Decision::WouldDeny as u32,
            _pad: 0,
            path: [0; PATH_CAP],
            raw: [0; PATH_CAP],
        };
        raw.raw[..12].copy_from_slice(b"/dev/nvidia0");
        let Event::Device(device) = decode(&bytes_of(&raw)).unwrap() else {
            panic!("not a device event")
        };
        assert_eq!(device.class, DeviceClass::Nvidia);
        assert_eq!(device.decision, Decision::WouldDeny);
        assert_eq!(device.path, "/dev/nvidia0");
        raw.class = 99;
        assert!(matches!(
            decode(&bytes_of(&raw)),
            Err(DecodeError::UnknownValue {
                field: "class",
                value: 99,
                ..
            })
        ));
    }

    #[test]
    fn decodes_sockaddrs() {
        use std::net::SocketAddr;
        let mut v4 = vec![2, 0, 0x1f, 0x90, 127, 0, 0, 1];
        v4.extend([0; 8]);
        assert_eq!(
            decode_sockaddr(&v4),
            SockAddr::Ip("127.0.0.1:8080".parse::<SocketAddr>().unwrap())
        );
        let mut mapped = vec![10, 0, 0, 53, 0, 0, 0, 0];
        mapped.extend([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3]);
        assert_eq!(
            decode_sockaddr(&mapped),
            SockAddr::Ip("10.1.2.3:53".parse::<SocketAddr>().unwrap())
        );
        let mut v6 = vec![10, 0, 0x01, 0xbb, 0, 0, 0, 0];
        v6.extend([0; 15]);
        v6.push(1);
        assert_eq!(
            decode_sockaddr(&v6),
            SockAddr::Ip("[::1]:443".parse::<SocketAddr>().unwrap())
        );
        let unix = [1, 0, b'/', b'r', b'u', b'n', 0, 0];
        assert_eq!(decode_sockaddr(&unix), SockAddr::Unix("/run".into()));
        let abstract_ = [1, 0, 0, b'x', b'y'];
        assert_eq!(decode_sockaddr(&abstract_), SockAddr::Unix("@xy".into()));
        assert_eq!(decode_sockaddr(&[2]), SockAddr::None);
    }

    #[test]
    fn joins_renames() {
        let header = Header {
            kind: EventKind::File,
            time_ns: 1,
            tgid: 5,
            pid: 6,
            start_time_ns: 2,
            watched: true,
        };
        let source = File {
            header,
            op: FileOp::Rename,
            path: "/a".into(),
            path_truncated: false,
            target: None,
            access: Access::default(),
            result: 0,
            protected: false,
            known: None,
            raw: Default::default(),
            guard: None,
            unverified: false,
        };
        let target = File {
            path: String::new(),
            target: Some("/b".into()),
            ..source.clone()
        };
        let mut joiner = RenameJoiner::default();
        assert!(joiner.push(Event::File(source)).is_none());
        let Some(Event::File(joined)) = joiner.push(Event::File(target.clone())) else {
            panic!("joined")
        };
        assert_eq!(
            (joined.path.as_str(), joined.target.as_deref()),
            ("/a", Some("/b"))
        );
        // A target without its source is dropped.
        assert!(joiner.push(Event::File(target)).is_none());
    }

    #[test]
    fn splits_args_like_cmdline() {
        assert_eq!(split_args(b"a\0b c\0"), ["a", "b c"]);
        assert_eq!(split_args(b"a\0\0b"), ["a", "", "b"]);
        assert!(split_args(b"").is_empty());
        // Truncated in the middle of an argument: the partial argument is kept.
        assert_eq!(split_args(b"a\0bc"), ["a", "bc"]);
    }
}
