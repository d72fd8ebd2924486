//! Loading and attaching the kernel programs, and the handles on their maps.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{bail, Context as _};
use aya::{
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuHashMap, ProgramArray, RingBuf},
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupDevice, CgroupSkb, CgroupSkbAttachType,
        CgroupSockAddr, RawTracePoint, TracePoint,
    },
    Ebpf, EbpfLoader,
};
use monitor_common::{
    globals, maps, programs, syscalls, Config, FdKey, InodeKey, IoctlKey, KernelOffsets, KnownKey,
    Suffix, WatchEntry, SUFFIXES_MAX, SUFFIX_CAP,
};
use tracing::{debug, info, warn};

use crate::{host::devices::AccelMajors, kernel::policy::kernel_dev};

/// The level the kernel programs log at (`aya-log`): the most verbose one the log filter
/// enables for [`monitor_common::KERNEL_LOG_TARGET`], e.g. `--log monitor::kernel=debug`;
/// 0 (off) by default. The programs test it before anything else, and as it is a read-only
/// global the verifier drops their log statements altogether when it is 0: measured with
/// `bpftool prog dump xlated`, no instruction of any loaded program refers to the log ring
/// when it is off (`sched_process_exec` translates to 8,992 bytes off, 21,360 on).
fn kernel_log_level() -> u8 {
    use aya_log::Level as Kernel;
    use tracing::Level;
    // `enabled!` needs the target as a literal; a unit test checks it is KERNEL_LOG_TARGET.
    if tracing::enabled!(target: "monitor::kernel", Level::TRACE) {
        Kernel::Trace as u8
    } else if tracing::enabled!(target: "monitor::kernel", Level::DEBUG) {
        Kernel::Debug as u8
    } else {
        // The programs log only at debug: why a hook or a path walk gave up.
        0
    }
}

/// Forwards the kernel programs' log records to the daemon's log, from a thread of its own
/// (they are rare and never on the event path). A kernel or object without the log map only
/// loses these messages: warned, and the start goes on.
fn start_kernel_log(ebpf: &mut Ebpf) {
    let mut logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(err) => {
            warn!("failed to start the kernel programs' log: {err}; their messages are not shown");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("kernel-log".into())
        .spawn(move || {
            use std::os::fd::AsRawFd as _;
            let mut poll = libc::pollfd {
                fd: logger.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            loop {
                // SAFETY: one valid pollfd, which outlives the call.
                let ready = unsafe { libc::poll(&mut poll, 1, 1000) };
                if ready < 0
                    && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                {
                    warn!(
                        "failed to poll the kernel programs' log: {}; it stops",
                        std::io::Error::last_os_error()
                    );
                    return;
                }
                logger.flush();
            }
        });
    match spawned {
        Ok(_) => info!(
            target = monitor_common::KERNEL_LOG_TARGET,
            "kernel programs log why a hook or a path walk gives up"
        ),
        Err(err) => {
            warn!("failed to start the kernel log thread: {err}; its messages are not shown")
        }
    }
}

/// The kernel object built by `build.rs`, embedded so that `monitor` is one file to install.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/monitor"));

/// What the loader needs to know.
#[derive(Clone, Debug)]
pub struct SensorOptions {
    /// Ring buffer size in bytes: a power of two, at least one page.
    pub ring_size: u32,
    /// Wake the reader when this many bytes wait (otherwise it drains on its timer).
    pub wakeup_bytes: u64,
    /// Every process counts as watched.
    pub watch_all: bool,
    /// Protected directories: opens of files below them are reported for every process.
    pub protect_dirs: Vec<PathBuf>,
    /// Protected file name suffixes (e.g. `.safetensors`), likewise.
    pub protect_suffixes: Vec<String>,
    /// Check opens against protected inodes even when none are configured yet (a later
    /// reload may add some).
    pub protect_always: bool,
    /// Executables whose exec is watched at once (they may start a governed process).
    pub exec_candidates: Vec<PathBuf>,
    /// How many executables the configuration's selectors match: the candidate map is sized
    /// from it (see [`crate::kernel::policy::candidate_capacity`]).
    pub exec_candidates_expected: usize,
    /// Accelerator device majors (from /proc/devices plus the fixed ones and overrides).
    pub accel_majors: AccelMajors,
    /// The cgroup (v2) whose processes the device hook sees; the whole host by default.
    pub cgroup: Option<PathBuf>,
    /// Enforce-mode decisions are only reported (`would-deny`, `would-kill`).
    pub dry_run: bool,
}

impl Default for SensorOptions {
    fn default() -> Self {
        SensorOptions {
            ring_size: 8 << 20,
            wakeup_bytes: 1 << 20,
            watch_all: false,
            protect_dirs: Vec::new(),
            protect_suffixes: Vec::new(),
            protect_always: false,
            exec_candidates: Vec::new(),
            exec_candidates_expected: 0,
            accel_majors: AccelMajors::default(),
            cgroup: None,
            dry_run: false,
        }
    }
}

/// One hook: which program, where it attaches, since which kernel, and what replaces it.
struct Hook {
    program: &'static str,
    tracepoint: &'static str,
    min_kernel: &'static str,
    fallback: &'static str,
}

/// Every hook the process sensor uses. BTF tracepoints exist from 5.5 on; no fallback is
/// needed on the kernels we support (5.8+).
const HOOKS: &[Hook] = &[
    Hook {
        program: programs::SCHED_PROCESS_EXEC,
        tracepoint: "sched_process_exec",
        min_kernel: "5.5",
        fallback: "none needed",
    },
    Hook {
        program: programs::SCHED_PROCESS_FORK,
        tracepoint: "sched_process_fork",
        min_kernel: "5.5",
        fallback: "none needed",
    },
    Hook {
        program: programs::SCHED_PROCESS_EXIT,
        tracepoint: "sched_process_exit",
        min_kernel: "5.5",
        fallback: "none needed",
    },
    // Signals sent to the monitor, with their sender (the BTF form gives the target task,
    // so a signal to any thread of the monitor is seen).
    Hook {
        program: programs::SIGNAL_GENERATE,
        tracepoint: "signal_generate",
        min_kernel: "5.5",
        fallback: "none needed",
    },
];

/// io_uring tracepoints (`io_uring/<name>`, 5.5+; absent when io_uring is not built):
/// a program and its tracepoint. Without them io_uring use is not reported (say so).
const IO_URING_HOOKS: [(&str, &str); 3] = [
    (programs::IO_URING_CREATE, "io_uring_create"),
    (programs::IO_URING_SUBMIT, "io_uring_submit_req"),
    // Opens through io_uring (by any process) of a /proc/PID/mem of a governed one.
    (programs::IO_URING_COMPLETE, "io_uring_complete"),
];

/// The address of the kernel's `mem_open` in /proc/kallsyms (0 when it cannot be read, e.g.
/// not as root or with `kptr_restrict`): what tells a `/proc/PID/mem` file in the kernel.
fn proc_mem_open_address() -> u64 {
    let text = match std::fs::read_to_string("/proc/kallsyms") {
        Ok(text) => text,
        Err(err) => {
            warn!("failed to read /proc/kallsyms: {err}; opens of /proc/PID/mem are not reported");
            return 0;
        }
    };
    let found: Vec<u64> = text
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let address = fields.next()?;
            let _kind = fields.next()?;
            (fields.next()? == "mem_open" && fields.next().is_none())
                .then(|| u64::from_str_radix(address, 16).ok())
                .flatten()
        })
        .collect();
    match found.as_slice() {
        [address] if *address != 0 => *address,
        [0] => {
            warn!("/proc/kallsyms hides addresses (kptr_restrict); opens of /proc/PID/mem are not reported: run as root with kernel.kptr_restrict=0 or 1");
            0
        }
        [] => {
            warn!("failed to find mem_open in /proc/kallsyms; opens of /proc/PID/mem are not reported");
            0
        }
        _ => {
            warn!(
                "mem_open is ambiguous in /proc/kallsyms; opens of /proc/PID/mem are not reported"
            );
            0
        }
    }
}

/// cgroup sock_addr programs: name and hook.
const SOCK_ADDR_HOOKS: [(&str, &str); 6] = [
    (programs::CONNECT4, "cgroup/connect4"),
    (programs::CONNECT6, "cgroup/connect6"),
    (programs::SENDMSG4, "cgroup/sendmsg4"),
    (programs::SENDMSG6, "cgroup/sendmsg6"),
    (programs::BIND4, "cgroup/bind4"),
    (programs::BIND6, "cgroup/bind6"),
];

/// The loaded (and, after [`Sensor::attach`], attached) programs. Dropping it detaches
/// everything: nothing is pinned. [`Sensor::detach`] does it quicker.
pub struct Sensor {
    /// Every attachment, owned here rather than by its program, so that a stop can detach
    /// them all at once (see [`Sensor::detach`]). The flag says whether it is a perf
    /// tracepoint (`tracepoint/io_uring/...`), which the kernel releases one at a time.
    links: Vec<(bool, Box<dyn Send>)>,
    /// The cgroup attachments, which another process can detach (`BPF_LINK_DETACH`): the
    /// self-check verifies them and attaches again.
    cgroup_links: Vec<CgroupLink>,
    /// The maps' names and ids, taken before the maps went to their stages.
    map_ids: Vec<(String, u32)>,
    /// The programs loaded, by name, and their ids.
    program_ids: Vec<(String, u32)>,
    ebpf: Ebpf,
    tracefs: PathBuf,
    cgroup: PathBuf,
    /// Whether this host loads BPF-LSM programs.
    pub lsm: bool,
}

/// Loads (does not attach) a BPF-LSM program to learn whether the host allows them, and says
/// which mechanism stops writes to guarded files.
fn probe_lsm(ebpf: &mut Ebpf, btf: &aya::Btf) -> bool {
    let result = ebpf
        .program_mut(programs::LSM_PROBE)
        .context("program missing from the object")
        .and_then(|p| -> anyhow::Result<&mut aya::programs::Lsm> { Ok(p.try_into()?) })
        .and_then(|p| Ok(p.load("file_open", btf)?));
    match result {
        Ok(()) => {
            info!("BPF-LSM programs load on this host (not used to deny yet: enforcing guards answer fanotify permission events)");
            true
        }
        Err(err) => {
            info!(
                "BPF-LSM unavailable ({err:#}); enforcing guards answer fanotify permission events"
            );
            false
        }
    }
}

/// Handles on the maps, taken out of the [`Sensor`] so stages can own them.
pub struct SensorMaps {
    pub events: RingBuf<MapData>,
    pub stats: PerCpuArray<MapData, u64>,
    pub watched: HashMap<MapData, u32, WatchEntry>,
    pub ioctl_counts: PerCpuHashMap<MapData, IoctlKey, u64>,
    pub accel_fds: HashMap<MapData, FdKey, u32>,
    /// What a configuration fills (guards, profiles' enforcement).
    pub policy: crate::kernel::policy::PolicyMaps,
    pub known: HashMap<MapData, KnownKey, u32>,
    /// Threads of watched processes: tid -> tgid.
    pub watched_threads: HashMap<MapData, u32, u32>,
    /// The monitor's own objects, for the kernel's `bpf()` hook.
    pub objects: SensorObjects,
    /// Events that must not be lost in a flood (tampering, enforcement), drained first.
    pub priority: RingBuf<MapData>,
    /// Switches the hot hooks test first ([`monitor_common::gate`]).
    pub gates: Array<MapData, u32>,
    /// Governed processes' resolved `allow.exec` templates, for the kernel's exec check.
    pub resolved_exec: crate::kernel::policy::ResolvedExec,
}

/// [`maps::MONITOR_OBJECTS`]: the ids of the monitor's programs, maps and links.
pub struct SensorObjects {
    pub map: HashMap<MapData, u64, u32>,
}

/// A cgroup program's attachment, as the self-check follows it.
struct CgroupLink {
    program: &'static str,
    /// Attaches the program again (the self-check's repair), by its program type.
    attach: AttachCgroup,
    /// The aya link (dropping it detaches).
    link: Box<dyn Send>,
    /// The kernel's id of the link (0: not found, an attachment without a link before 5.7).
    id: u32,
}

/// A cgroup link the self-check found detached, and what re-attaching it gave.
pub struct LinkCheck {
    pub program: &'static str,
    pub id: u32,
    pub cgroup: String,
    /// The new link's id.
    pub reattached: anyhow::Result<u32>,
}

/// Attaches one of the object's cgroup programs to a cgroup; returns the link (dropping it
/// detaches).
type AttachCgroup = fn(&mut Ebpf, &str, &std::fs::File) -> anyhow::Result<Box<dyn Send>>;

/// One of the object's programs as its program type; the error names it.
fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    Ok(ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?
        .try_into()?)
}

/// The program types whose load needs nothing but the program.
trait PlainLoad {
    fn load_plain(&mut self) -> Result<(), aya::programs::ProgramError>;
}

macro_rules! plain_load {
    ($($program:ty),*) => {$(
        impl PlainLoad for $program {
            fn load_plain(&mut self) -> Result<(), aya::programs::ProgramError> {
                self.load()
            }
        }
    )*};
}
plain_load!(
    TracePoint,
    RawTracePoint,
    CgroupDevice,
    CgroupSockAddr,
    CgroupSkb
);

/// Loads one of the object's programs (`what`: its hook, for the error).
fn load_program<'a, P: PlainLoad>(
    ebpf: &'a mut Ebpf,
    name: &str,
    what: &str,
) -> anyhow::Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program: &mut P = program_mut(ebpf, name)?;
    program
        .load_plain()
        .with_context(|| format!("failed to load program {name} ({what})"))?;
    Ok(program)
}

/// The cgroup program types, attached alike: through a BPF link, which on 5.7+ always runs
/// alongside other programs (a link takes no flags: `BPF_F_ALLOW_MULTI` makes it fail with
/// EINVAL). Nothing is pinned: the link goes away with the daemon.
trait CgroupProgram {
    fn attach_link(&mut self, cgroup: &std::fs::File) -> anyhow::Result<Box<dyn Send>>;
}

impl CgroupProgram for CgroupDevice {
    fn attach_link(&mut self, cgroup: &std::fs::File) -> anyhow::Result<Box<dyn Send>> {
        let id = self.attach(cgroup, CgroupAttachMode::Single)?;
        Ok(Box::new(self.take_link(id)?))
    }
}

impl CgroupProgram for CgroupSockAddr {
    fn attach_link(&mut self, cgroup: &std::fs::File) -> anyhow::Result<Box<dyn Send>> {
        let id = self.attach(cgroup, CgroupAttachMode::Single)?;
        Ok(Box::new(self.take_link(id)?))
    }
}

/// The one socket-buffer program is [`programs::UDP_EGRESS`], on the egress side.
impl CgroupProgram for CgroupSkb {
    fn attach_link(&mut self, cgroup: &std::fs::File) -> anyhow::Result<Box<dyn Send>> {
        let id = self.attach(
            cgroup,
            CgroupSkbAttachType::Egress,
            CgroupAttachMode::Single,
        )?;
        Ok(Box::new(self.take_link(id)?))
    }
}

/// [`AttachCgroup`] for a program of type `P`.
fn attach_cgroup<P: CgroupProgram>(
    ebpf: &mut Ebpf,
    name: &str,
    cgroup: &std::fs::File,
) -> anyhow::Result<Box<dyn Send>>
where
    for<'a> &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    program_mut::<P>(ebpf, name)?.attach_link(cgroup)
}

/// `bpf(2)`, for what aya does not expose: the cgroup of a link.
fn sys_bpf(cmd: u32, attr: &mut [u64]) -> std::io::Result<i64> {
    // SAFETY: `attr` is a valid, writable buffer of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The cgroup id a cgroup link is attached to: 0 once detached (`BPF_LINK_DETACH` clears it).
fn link_cgroup_id(link_id: u32) -> std::io::Result<u64> {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    const BPF_OBJ_GET_INFO_BY_FD: u32 = 15;
    // `link_id`, `next_id`, `open_flags`.
    let mut attr = [u64::from(link_id), 0];
    let fd = sys_bpf(monitor_common::BPF_LINK_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: a new fd the kernel just returned, owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // `struct bpf_link_info`: type, id, prog_id (u32), then the union at 16; for a cgroup
    // link `cgroup_id` (u64) first.
    let mut info = [0u64; 16];
    let fd_raw = std::os::fd::AsRawFd::as_raw_fd(&fd) as u32 as u64;
    let mut attr = [
        fd_raw | ((std::mem::size_of_val(&info) as u64) << 32),
        info.as_mut_ptr() as u64,
    ];
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info[2])
}

/// The newest link of a program (a cgroup program has one: the daemon's), by the kernel's
/// list of links; 0 when there is none (before 5.7 cgroup programs attach without a link).
fn newest_link_of(program_id: u32) -> u32 {
    aya::programs::loaded_links()
        .filter_map(Result::ok)
        .filter(|info| info.program_id() == program_id)
        .map(|info| info.id())
        .max()
        .unwrap_or(0)
}

impl Sensor {
    /// Loads the programs into the kernel, not yet attached.
    pub fn load(options: &SensorOptions) -> anyhow::Result<(Sensor, SensorMaps)> {
        if OBJECT.is_empty() {
            bail!("failed to load the kernel programs: this binary was built with AYA_BUILD_SKIP and embeds none; rebuild with `cargo xtask build`");
        }
        if !options.ring_size.is_power_of_two() || options.ring_size < 4096 {
            bail!(
                "invalid ring size {}: it must be a power of two of at least 4096 bytes",
                options.ring_size
            );
        }
        bump_memlock_rlimit();
        let started = Instant::now();
        let kernel_btf = crate::kernel::btf::Btf::from_sys_fs()
            .context("failed to read the kernel's BTF (needed for struct offsets)")?;
        let offsets: KernelOffsets = crate::kernel::btf::kernel_offsets(&kernel_btf)
            .context("failed to find the kernel struct fields the programs read")?;
        debug!(?offsets, "kernel struct offsets from BTF");
        let tracefs = crate::kernel::mounts::tracefs()?;
        let syscall_abi = crate::kernel::syscalls::abi(&kernel_btf)?;
        debug!(?syscall_abi, "syscall registers from BTF");
        let cgroup = match &options.cgroup {
            Some(path) => path.clone(),
            None => crate::host::cgroup::cgroup2_mount().context(
                "failed to find the cgroup v2 mount for the device hook; give --cgroup PATH",
            )?,
        };
        crate::host::cgroup::check_cgroup2_dir(&cgroup)?;
        let protected = protected_inodes(&options.protect_dirs);
        let suffixes = suffixes(&options.protect_suffixes)?;
        let config = Config {
            self_tgid: std::process::id(),
            watch_all: u32::from(options.watch_all),
            wakeup_bytes: options.wakeup_bytes,
            protect: u32::from(
                options.protect_always || !protected.is_empty() || !suffixes.is_empty(),
            ),
            _pad: 0,
            proc_mem_open: proc_mem_open_address(),
            // Absent when io_uring is not built: its completions are then not checked.
            io_kiocb_opcode: kernel_btf.member_offset("io_kiocb", "opcode").unwrap_or(0),
            _pad2: 0,
        };
        let btf = aya::Btf::from_sys_fs().context("failed to load the kernel's BTF")?;
        let kernel_log_level = kernel_log_level();
        let exec_capacity = crate::kernel::policy::candidate_capacity(
            options
                .exec_candidates
                .len()
                .max(options.exec_candidates_expected),
        );
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .override_global(globals::CONFIG, &config, true)
            .override_global(globals::OFFSETS, &offsets, true)
            .override_global(syscalls::ABI_GLOBAL, &syscall_abi, true)
            // Not required: an object built without any log statement has no such global.
            .override_global(aya_log::LEVEL, &kernel_log_level, false)
            .map_max_entries(maps::EVENTS, options.ring_size)
            .map_max_entries(maps::EXEC_CANDIDATES, exec_capacity)
            .load(OBJECT)
            .context("failed to load the kernel programs")?;
        for hook in HOOKS {
            let program: &mut BtfTracePoint = program_mut(&mut ebpf, hook.program)?;
            program.load(hook.tracepoint, &btf).with_context(|| {
                format!(
                    "failed to load program {} (BTF tracepoint, kernel {}+)",
                    hook.program, hook.min_kernel
                )
            })?;
        }
        load_syscall_programs(&mut ebpf)?;
        for (name, tracepoint) in IO_URING_HOOKS {
            load_program::<TracePoint>(&mut ebpf, name, tracepoint)?;
        }
        load_program::<CgroupDevice>(&mut ebpf, programs::DEVICE_ACCESS, "cgroup/dev")?;
        let lsm = probe_lsm(&mut ebpf, &btf);
        for (name, attach) in SOCK_ADDR_HOOKS {
            load_program::<CgroupSockAddr>(&mut ebpf, name, attach)?;
        }
        load_program::<CgroupSkb>(&mut ebpf, programs::UDP_EGRESS, "cgroup_skb/egress")?;

        let mut majors: HashMap<_, u32, u32> = HashMap::try_from(
            ebpf.map_mut(maps::ACCEL_MAJORS)
                .context("map ACCEL_MAJORS missing")?,
        )?;
        for (major, class) in options.accel_majors.iter() {
            majors.insert(major, class as u32, 0)?;
        }
        let mut protected_dirs: HashMap<_, InodeKey, u32> =
            HashMap::try_from(take_map(&mut ebpf, maps::PROTECTED_DIRS)?)?;
        for key in &protected {
            protected_dirs.insert(key, 1, 0)?;
        }
        let mut protected_suffixes: Array<_, Suffix> =
            Array::try_from(take_map(&mut ebpf, maps::PROTECTED_SUFFIXES)?)?;
        for (i, suffix) in suffixes.iter().enumerate() {
            protected_suffixes.set(i as u32, suffix, 0)?;
        }
        let mut exec_candidates: HashMap<_, InodeKey, u32> =
            HashMap::try_from(take_map(&mut ebpf, maps::EXEC_CANDIDATES)?)?;
        for key in protected_inodes(&options.exec_candidates)
            .into_iter()
            .take(exec_capacity as usize)
        {
            exec_candidates.insert(key, 1, 0)?;
        }

        let map_ids: Vec<(String, u32)> = ebpf
            .maps()
            .filter_map(|(name, map)| Some((name.to_owned(), map_id(map)?)))
            .collect();
        let program_ids: Vec<(String, u32)> = ebpf
            .programs()
            .filter_map(|(name, program)| Some((name.to_owned(), program.info().ok()?.id())))
            .collect();
        let maps = SensorMaps {
            objects: SensorObjects {
                map: HashMap::try_from(take_map(&mut ebpf, maps::MONITOR_OBJECTS)?)?,
            },
            priority: RingBuf::try_from(take_map(&mut ebpf, maps::PRIORITY)?)?,
            events: RingBuf::try_from(take_map(&mut ebpf, maps::EVENTS)?)?,
            stats: PerCpuArray::try_from(take_map(&mut ebpf, maps::STATS)?)?,
            watched: HashMap::try_from(take_map(&mut ebpf, maps::WATCHED)?)?,
            ioctl_counts: PerCpuHashMap::try_from(take_map(&mut ebpf, maps::IOCTL_COUNTS)?)?,
            accel_fds: HashMap::try_from(take_map(&mut ebpf, maps::ACCEL_FDS)?)?,
            policy: crate::kernel::policy::PolicyMaps {
                exec_candidates,
                protected_dirs,
                protected_suffixes,
                policy: HashMap::try_from(take_map(&mut ebpf, maps::POLICY)?)?,
                net_connect: LpmTrie::try_from(take_map(&mut ebpf, maps::NET_CONNECT)?)?,
                net_listen: LpmTrie::try_from(take_map(&mut ebpf, maps::NET_LISTEN)?)?,
                exec_allowed: HashMap::try_from(take_map(&mut ebpf, maps::EXEC_ALLOWED)?)?,
                net_udp_connect: LpmTrie::try_from(take_map(&mut ebpf, maps::NET_UDP_CONNECT)?)?,
                shells: HashMap::try_from(take_map(&mut ebpf, maps::SHELLS)?)?,
                gpu_allowed: HashMap::try_from(take_map(&mut ebpf, maps::GPU_ALLOWED)?)?,
                guards: Array::try_from(take_map(&mut ebpf, maps::GUARDS)?)?,
                exec_candidates_capacity: exec_capacity,
            },
            known: HashMap::try_from(take_map(&mut ebpf, maps::KNOWN)?)?,
            watched_threads: HashMap::try_from(take_map(&mut ebpf, maps::WATCHED_THREADS)?)?,
            gates: Array::try_from(take_map(&mut ebpf, maps::GATES)?)?,
            resolved_exec: crate::kernel::policy::ResolvedExec::new(
                HashMap::try_from(take_map(&mut ebpf, maps::EXEC_INSTANCE)?)?,
                HashMap::try_from(take_map(&mut ebpf, maps::EXEC_RESOLVED)?)?,
            ),
        };
        if kernel_log_level != 0 {
            start_kernel_log(&mut ebpf);
        }
        debug!(elapsed = ?started.elapsed(), "kernel programs loaded");
        Ok((
            Sensor {
                links: Vec::new(),
                cgroup_links: Vec::new(),
                map_ids,
                program_ids,
                ebpf,
                tracefs,
                cgroup,
                lsm,
            },
            maps,
        ))
    }

    /// Attaches every program; says which hook serves each sensor.
    pub fn attach(&mut self) -> anyhow::Result<()> {
        for hook in HOOKS {
            let program: &mut BtfTracePoint = program_mut(&mut self.ebpf, hook.program)?;
            let id = program
                .attach()
                .with_context(|| format!("failed to attach program {}", hook.program))?;
            self.links.push((false, Box::new(program.take_link(id)?)));
            info!(
                program = hook.program,
                hook = format!("tp_btf/{}", hook.tracepoint),
                fallback = hook.fallback,
                "attached"
            );
        }
        for (name, tracepoint) in [
            (syscalls::ENTER_DISPATCH, "sys_enter"),
            (syscalls::EXIT_DISPATCH, "sys_exit"),
        ] {
            let program: &mut RawTracePoint = program_mut(&mut self.ebpf, name)?;
            let id = program.attach(tracepoint).with_context(|| {
                format!("failed to attach program {name} to raw tracepoint {tracepoint}")
            })?;
            // A raw tracepoint detaches without waiting for a grace period: not a perf link.
            self.links.push((false, Box::new(program.take_link(id)?)));
        }
        info!(
            handlers = crate::kernel::syscalls::HANDLERS.len(),
            hooks = "raw_tp/sys_enter,sys_exit",
            compat = if crate::kernel::syscalls::COMPAT { "ia32 syscalls of 64-bit processes too" } else { "no compat table on this architecture" },
            "file, network, memory-access and ioctl sensors attached to the raw syscall tracepoints (dispatch by syscall number)"
        );
        let io_uring = self.tracefs.join("events/io_uring");
        let layout = io_uring_layout(&io_uring);
        for (name, tracepoint) in IO_URING_HOOKS {
            if let Err(err) = &layout {
                warn!(
                    program = name,
                    "{err}; io_uring use by governed processes is not reported"
                );
                continue;
            }
            if !io_uring.join(tracepoint).exists() {
                warn!(
                    program = name,
                    "io_uring/{tracepoint} is not on this kernel; io_uring use by governed processes is not reported"
                );
                continue;
            }
            let program: &mut TracePoint = program_mut(&mut self.ebpf, name)?;
            let id = program.attach("io_uring", tracepoint).with_context(|| {
                format!("failed to attach program {name} to io_uring/{tracepoint}")
            })?;
            self.links.push((true, Box::new(program.take_link(id)?)));
            debug!(
                program = name,
                hook = format!("tracepoint/io_uring/{tracepoint}"),
                "attached"
            );
        }
        self.attach_to_cgroup(programs::DEVICE_ACCESS, attach_cgroup::<CgroupDevice>)?;
        info!(
            program = programs::DEVICE_ACCESS,
            hook = "cgroup/dev",
            cgroup = %self.cgroup.display(),
            "attached (accelerator device opens on every path, io_uring included, failed ones too; reported from the hook; enforcement)"
        );
        for (name, attach) in SOCK_ADDR_HOOKS {
            self.attach_to_cgroup(name, attach_cgroup::<CgroupSockAddr>)?;
            debug!(program = name, hook = attach, "attached");
        }
        // `udp_egress` is attached by `set_udp_egress`, only while a profile needs it.
        info!(
            hooks = "cgroup/connect4,connect6,sendmsg4,sendmsg6,bind4,bind6",
            cgroup = %self.cgroup.display(),
            "network sensor and enforcement attached: connects, binds and datagrams of watched processes in this cgroup are reported from the kernel's copy of the address (io_uring and sendmmsg included); the syscall tracepoints report unix sockets, listen, accept and processes outside it (flagged monitor.unverified)"
        );
        Ok(())
    }
}

impl Sensor {
    /// Attaches one cgroup program to the cgroup, and follows its link for the self-check.
    fn attach_to_cgroup(
        &mut self,
        program: &'static str,
        attach: AttachCgroup,
    ) -> anyhow::Result<()> {
        let cgroup = std::fs::File::open(&self.cgroup)
            .with_context(|| format!("failed to open cgroup {}", self.cgroup.display()))?;
        let link = attach(&mut self.ebpf, program, &cgroup).with_context(|| {
            format!(
                "failed to attach {program} to cgroup {}",
                self.cgroup.display()
            )
        })?;
        let id = self.newest_link(program);
        self.cgroup_links.push(CgroupLink {
            program,
            attach,
            link,
            id,
        });
        Ok(())
    }

    /// Attaches [`programs::UDP_EGRESS`] (`cgroup_skb/egress`) when `wanted` and detaches it
    /// when not; returns whether that changed anything. It judges every packet that leaves
    /// the cgroup (about 70 ns each, TCP included: BENCHMARKS.md), and is needed only to
    /// refuse the datagrams of a UDP socket connected under an enforcing profile's
    /// `udp_connect` ([`crate::kernel::policy::judges_connected_udp`]). Detached on purpose,
    /// it has no link the self-check could find missing.
    pub fn set_udp_egress(&mut self, wanted: bool) -> anyhow::Result<bool> {
        let attached = self
            .cgroup_links
            .iter()
            .position(|link| link.program == programs::UDP_EGRESS);
        match (attached, wanted) {
            (None, true) => {
                self.attach_to_cgroup(programs::UDP_EGRESS, attach_cgroup::<CgroupSkb>)?;
                info!(
                    program = programs::UDP_EGRESS,
                    hook = "cgroup_skb/egress",
                    cgroup = %self.cgroup.display(),
                    "attached: a profile enforces udp_connect, so the datagrams of connected UDP sockets of watched processes are judged against connect"
                );
                Ok(true)
            }
            (Some(index), false) => {
                // Dropping the link detaches the program.
                drop(self.cgroup_links.remove(index));
                info!(
                    program = programs::UDP_EGRESS,
                    hook = "cgroup_skb/egress",
                    cgroup = %self.cgroup.display(),
                    "detached: no profile enforces udp_connect"
                );
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Files the monitor's programs, maps and links in [`maps::MONITOR_OBJECTS`], so that the
    /// kernel's `bpf()` hook can tell calls aimed at them. Call after attach, and again after
    /// a link was attached anew. Returns the names by (kind, id), for the alerts.
    pub fn register(
        &self,
        objects: &mut SensorObjects,
    ) -> anyhow::Result<std::collections::HashMap<(monitor_common::BpfObjectKind, u32), String>>
    {
        use monitor_common::{monitor_object_key, BpfObjectKind};
        let mut names = std::collections::HashMap::new();
        for (name, id) in &self.program_ids {
            names.insert((BpfObjectKind::Program, *id), name.clone());
        }
        for (name, id) in &self.map_ids {
            names.insert((BpfObjectKind::Map, *id), name.clone());
        }
        for link in &self.cgroup_links {
            names.insert((BpfObjectKind::Link, link.id), link.program.to_owned());
        }
        // The tracepoint links, found by their programs.
        let programs: std::collections::HashMap<u32, &str> = self
            .program_ids
            .iter()
            .map(|(name, id)| (*id, name.as_str()))
            .collect();
        for info in aya::programs::loaded_links().filter_map(Result::ok) {
            if let Some(name) = programs.get(&info.program_id()) {
                names.insert((BpfObjectKind::Link, info.id()), (*name).to_owned());
            }
        }
        for (kind, id) in names.keys() {
            objects
                .map
                .insert(monitor_object_key(*kind, *id), 1, 0)
                .with_context(|| {
                    format!("failed to file {kind:?} {id} in {}", maps::MONITOR_OBJECTS)
                })?;
        }
        Ok(names)
    }

    /// Programs that were loaded and are no longer (their info cannot be read by their fd).
    pub fn unloaded_programs(&self) -> Vec<String> {
        self.program_ids
            .iter()
            .filter(|(name, id)| {
                self.ebpf
                    .program(name)
                    .and_then(|p| p.info().ok())
                    .is_none_or(|info| info.id() != *id)
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The cgroup links that another process detached, each attached anew.
    pub fn check_cgroup_links(&mut self) -> Vec<LinkCheck> {
        let mut checks = Vec::new();
        let cgroup_name = self.cgroup.display().to_string();
        for index in 0..self.cgroup_links.len() {
            let (program, id) = (
                self.cgroup_links[index].program,
                self.cgroup_links[index].id,
            );
            if id == 0 {
                continue;
            }
            match link_cgroup_id(id) {
                Ok(cgroup) if cgroup != 0 => continue,
                Ok(_) => {}
                Err(err) => {
                    // Not found: the link is gone altogether (it cannot be while its fd is
                    // held, but say so rather than guess).
                    debug!(
                        program,
                        link = id,
                        "failed to read the link's cgroup: {err}"
                    );
                }
            }
            let reattached = self.reattach(index);
            checks.push(LinkCheck {
                program,
                id,
                cgroup: cgroup_name.clone(),
                reattached,
            });
        }
        checks
    }

    /// Attaches a cgroup program again; the new link replaces the detached one.
    fn reattach(&mut self, index: usize) -> anyhow::Result<u32> {
        let program = self.cgroup_links[index].program;
        let cgroup = std::fs::File::open(&self.cgroup)
            .with_context(|| format!("failed to open cgroup {}", self.cgroup.display()))?;
        let link = (self.cgroup_links[index].attach)(&mut self.ebpf, program, &cgroup)?;
        // The detached link's fd closes here: nothing is attached by it any more.
        drop(std::mem::replace(&mut self.cgroup_links[index].link, link));
        let id = self.newest_link(program);
        self.cgroup_links[index].id = id;
        Ok(id)
    }

    /// The newest link of one of the daemon's programs (see [`newest_link_of`]).
    fn newest_link(&self, program: &str) -> u32 {
        self.program_ids
            .iter()
            .find(|(name, _)| name == program)
            .map_or(0, |(_, id)| newest_link_of(*id))
    }

    /// Detaches every program and unloads them; returns how many attachments there were.
    ///
    /// The cgroup programs, BTF and raw tracepoints (the syscall sensors hang off raw
    /// `sys_enter`/`sys_exit`) go first, all at once: their release waits for nothing. Each
    /// perf tracepoint (only `tracepoint/io_uring/...` now) costs a
    /// synchronous RCU grace period in the kernel, taken under the global `event_mutex`
    /// (`perf_trace_destroy` → `tracepoint_synchronize_unregister`), so however many
    /// threads close them, they are released one after the other: about 35 ms each
    /// measured here. Closing them from threads of their own still overlaps what can
    /// overlap (the fput of each link, and the program unloads).
    pub fn detach(mut self) -> usize {
        let mut links = std::mem::take(&mut self.links);
        for link in std::mem::take(&mut self.cgroup_links) {
            links.push((false, link.link));
        }
        let count = links.len();
        let (perf, quick): (Vec<_>, Vec<_>) = links.into_iter().partition(|(perf, _)| *perf);
        close_timed(quick, "cgroup programs, BTF and raw tracepoints detached");
        if !perf.is_empty() {
            info!(
                links = perf.len(),
                "detaching the io_uring perf tracepoints: the kernel releases them one at a time (an RCU grace period each)"
            );
        }
        close_timed(perf, "io_uring perf tracepoints detached");
        drop(self);
        count
    }
}

/// Closes these links in parallel and logs how many and how long it took.
fn close_timed(links: Vec<(bool, Box<dyn Send>)>, what: &str) {
    let started = Instant::now();
    let count = links.len();
    close_in_parallel(links.into_iter().map(|(_, link)| link));
    debug!(
        links = count,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "{what}"
    );
}

/// Drops every link from a thread of its own and waits for all of them.
fn close_in_parallel(links: impl Iterator<Item = Box<dyn Send>>) {
    std::thread::scope(|scope| {
        for link in links {
            let spawned = std::thread::Builder::new()
                .name("detach".into())
                .spawn_scoped(scope, move || drop(link));
            if let Err(err) = spawned {
                // The link moved into the closure that failed to start: it was dropped
                // (detached) right here, only not in parallel.
                debug!("failed to start a detach thread ({err}); detached in line");
            }
        }
    });
}

/// Inodes of the protected directories that exist.
fn protected_inodes(dirs: &[PathBuf]) -> Vec<InodeKey> {
    let mut keys = Vec::new();
    for dir in dirs {
        match std::fs::metadata(dir) {
            Ok(meta) => keys.push(InodeKey {
                dev: kernel_dev(meta.dev()),
                _pad: 0,
                ino: meta.ino(),
            }),
            Err(err) => warn!(
                "protected directory {} is not guarded in the kernel: {err}; it is checked again at the next reload",
                dir.display()
            ),
        }
    }
    keys
}

pub fn suffixes(list: &[String]) -> anyhow::Result<Vec<Suffix>> {
    if list.len() > SUFFIXES_MAX as usize {
        bail!(
            "too many protected file suffixes ({}): at most {SUFFIXES_MAX}; guard directories instead",
            list.len()
        );
    }
    list.iter()
        .map(|suffix| {
            let bytes = suffix.as_bytes();
            if bytes.is_empty() || bytes.len() > SUFFIX_CAP {
                bail!("invalid protected suffix `{suffix}`: 1 to {SUFFIX_CAP} bytes");
            }
            let mut out = Suffix {
                len: bytes.len() as u32,
                bytes: [0; SUFFIX_CAP],
            };
            out.bytes[SUFFIX_CAP - bytes.len()..].copy_from_slice(bytes);
            Ok(out)
        })
        .collect()
}

/// The io_uring programs read these fields at fixed offsets (the tracepoints' records are
/// no stable ABI): check this kernel's format files agree.
fn io_uring_layout(events: &Path) -> anyhow::Result<()> {
    for (name, field, offset) in [
        ("io_uring_create", "void * ctx", 16),
        ("io_uring_create", "u32 flags", 32),
        ("io_uring_submit_req", "void * ctx", 8),
        ("io_uring_submit_req", "u8 opcode", 32),
        ("io_uring_submit_req", "unsigned long long flags", 40),
        ("io_uring_submit_req", "bool sq_thread", 48),
        ("io_uring_complete", "void * req", 16),
        ("io_uring_complete", "int res", 32),
    ] {
        let path = events.join(name).join("format");
        if !path.exists() {
            // Absent tracepoints are reported by the caller.
            continue;
        }
        let format = std::fs::read_to_string(&path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        if !format.contains(&format!("field:{field};\toffset:{offset};")) {
            bail!(
                "unexpected layout of io_uring/{name} (wanted `{field}` at offset {offset}, see {})",
                path.display()
            );
        }
    }
    Ok(())
}

/// Loads the syscall dispatchers, routes and handlers, and fills the program arrays: each
/// handler at its syscall numbers in its ABI's array, the route at every number that either
/// ABI serves. Numbers this kernel lacks get a slot that is never reached.
fn load_syscall_programs(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    use crate::kernel::syscalls::HANDLERS;
    let mut fds = std::collections::HashMap::new();
    let names = [
        syscalls::ENTER_DISPATCH,
        syscalls::EXIT_DISPATCH,
        syscalls::ENTER_ROUTE,
        syscalls::EXIT_ROUTE,
    ]
    .into_iter()
    .chain(HANDLERS.iter().map(|h| h.program));
    for name in names {
        if fds.contains_key(name) {
            continue;
        }
        let program: &mut RawTracePoint = load_program(ebpf, name, "raw tracepoint")?;
        let fd = program
            .fd()
            .and_then(|fd| Ok(fd.try_clone()?))
            .with_context(|| format!("failed to take the fd of program {name}"))?;
        fds.insert(name, fd);
    }
    let mut set = |array: &str, nr: u32, program: &str| -> anyhow::Result<()> {
        let mut map: ProgramArray<_> = ProgramArray::try_from(
            ebpf.map_mut(array)
                .with_context(|| format!("map {array} missing from the object"))?,
        )?;
        map.set(nr, &fds[program], 0)
            .with_context(|| format!("failed to put program {program} at syscall {nr} of {array}"))
    };
    let mut slots = 0;
    for handler in HANDLERS {
        let (routes, route, native, compat) = if handler.exit {
            (
                syscalls::EXIT_ROUTES,
                syscalls::EXIT_ROUTE,
                syscalls::EXIT_NATIVE,
                syscalls::EXIT_COMPAT,
            )
        } else {
            (
                syscalls::ENTER_ROUTES,
                syscalls::ENTER_ROUTE,
                syscalls::ENTER_NATIVE,
                syscalls::ENTER_COMPAT,
            )
        };
        for nr in handler.native_numbers() {
            set(native, nr, handler.program)?;
            set(routes, nr, route)?;
            slots += 1;
        }
        for &nr in handler.compat_numbers() {
            set(compat, nr, handler.program)?;
            set(routes, nr, route)?;
            slots += 1;
        }
    }
    debug!(slots, "syscall handlers in place");
    Ok(())
}

/// The id of a map of the object (the kinds it uses).
fn map_id(map: &aya::maps::Map) -> Option<u32> {
    use aya::maps::Map;
    let data = match map {
        Map::Array(m)
        | Map::HashMap(m)
        | Map::LpmTrie(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuHashMap(m)
        | Map::ProgramArray(m)
        | Map::RingBuf(m) => m,
        _ => return None,
    };
    data.info().ok().map(|info| info.id())
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<aya::maps::Map> {
    ebpf.take_map(name)
        .with_context(|| format!("map {name} missing from the object"))
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones to the cgroup, where
/// raising the limit may be refused and does not matter.
fn bump_memlock_rlimit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    if ret != 0 {
        debug!(
            "failed to raise RLIMIT_MEMLOCK ({}); fine on kernels from 5.11, which charge BPF memory to the cgroup",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod kernel_log_tests {
    /// `kernel_log_level` spells the target as a literal (`tracing::enabled!` needs one).
    #[test]
    fn kernel_log_target_is_the_shared_one() {
        assert_eq!(monitor_common::KERNEL_LOG_TARGET, "monitor::kernel");
    }
}
