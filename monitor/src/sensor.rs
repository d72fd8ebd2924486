//! Loading and attaching the kernel programs, and the handles on their maps.

use std::time::Instant;

use anyhow::{bail, Context as _};
use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::BtfTracePoint,
    Ebpf, EbpfLoader,
};
use monitor_common::{globals, maps, programs, Config, KernelOffsets, WatchEntry};
use tracing::{debug, info};

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
}

impl Default for SensorOptions {
    fn default() -> Self {
        SensorOptions {
            ring_size: 8 << 20,
            wakeup_bytes: 1 << 20,
            watch_all: false,
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
];

/// The loaded (and, after [`Sensor::attach`], attached) programs. Dropping it detaches
/// everything: nothing is pinned.
pub struct Sensor {
    ebpf: Ebpf,
    btf: aya::Btf,
}

/// Handles on the maps, taken out of the [`Sensor`] so stages can own them.
pub struct SensorMaps {
    pub events: RingBuf<MapData>,
    pub stats: PerCpuArray<MapData, u64>,
    pub watched: HashMap<MapData, u32, WatchEntry>,
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
        let kernel_btf = crate::btf::Btf::from_sys_fs()
            .context("failed to read the kernel's BTF (needed for struct offsets)")?;
        let offsets: KernelOffsets = crate::btf::kernel_offsets(&kernel_btf)
            .context("failed to find the kernel struct fields the programs read")?;
        debug!(?offsets, "kernel struct offsets from BTF");
        let config = Config {
            self_tgid: std::process::id(),
            watch_all: u32::from(options.watch_all),
            wakeup_bytes: options.wakeup_bytes,
        };
        let btf = aya::Btf::from_sys_fs().context("failed to load the kernel's BTF")?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .override_global(globals::CONFIG, &config, true)
            .override_global(globals::OFFSETS, &offsets, true)
            .map_max_entries(maps::EVENTS, options.ring_size)
            .load(OBJECT)
            .context("failed to load the kernel programs")?;
        for hook in HOOKS {
            let program: &mut BtfTracePoint = ebpf
                .program_mut(hook.program)
                .with_context(|| format!("program {} missing from the object", hook.program))?
                .try_into()?;
            program.load(hook.tracepoint, &btf).with_context(|| {
                format!(
                    "failed to load program {} (BTF tracepoint, kernel {}+)",
                    hook.program, hook.min_kernel
                )
            })?;
        }
        let maps = SensorMaps {
            events: RingBuf::try_from(take_map(&mut ebpf, maps::EVENTS)?)?,
            stats: PerCpuArray::try_from(take_map(&mut ebpf, maps::STATS)?)?,
            watched: HashMap::try_from(take_map(&mut ebpf, maps::WATCHED)?)?,
        };
        debug!(elapsed = ?started.elapsed(), "kernel programs loaded");
        Ok((Sensor { ebpf, btf }, maps))
    }

    /// Attaches every program; says which hook serves each sensor.
    pub fn attach(&mut self) -> anyhow::Result<()> {
        let _ = &self.btf;
        for hook in HOOKS {
            let program: &mut BtfTracePoint = self
                .ebpf
                .program_mut(hook.program)
                .with_context(|| format!("program {} missing from the object", hook.program))?
                .try_into()?;
            program
                .attach()
                .with_context(|| format!("failed to attach program {}", hook.program))?;
            info!(
                program = hook.program,
                hook = format!("tp_btf/{}", hook.tracepoint),
                fallback = hook.fallback,
                "attached"
            );
        }
        Ok(())
    }
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
