//! Which kernel program handles which syscall, by number, and where the syscall's number and
//! arguments are in `struct pt_regs` (see `monitor-ebpf/src/syscalls.rs` for the dispatch).
//!
//! Native numbers come from libc for the architecture this binary is built for. The compat
//! numbers are x86's ia32 table (`arch/x86/entry/syscalls/syscall_32.tbl`), which a 64-bit
//! process reaches with `int $0x80` when the kernel has ia32 emulation: the per-syscall perf
//! tracepoints never see those. Not covered in ia32: `socketcall` (102), which multiplexes
//! the socket calls with their arguments in user memory, and `sendmsg` (370), whose compat
//! `msghdr` has another layout (the cgroup programs judge connects, binds and datagrams of
//! both anyway); x32 syscalls (kernels built with `CONFIG_X86_X32_ABI`), whose numbers carry
//! bit 30 and have no slot.

use anyhow::Context as _;
use monitor_common::{programs, syscalls, SyscallAbi};

/// A handler program and the syscall numbers it serves, per ABI.
pub struct Handler {
    pub program: &'static str,
    /// At the syscall's exit (else at its entry).
    pub exit: bool,
    pub native: &'static [i64],
    /// Legacy syscalls that only some architectures have (x86_64's `open`, `rename`...).
    pub legacy: &'static [i64],
    /// ia32 numbers (x86_64 only).
    pub compat: &'static [u32],
}

#[cfg(target_arch = "x86_64")]
mod legacy {
    pub const OPEN: &[i64] = &[libc::SYS_open];
    pub const CREAT: &[i64] = &[libc::SYS_creat];
    pub const RENAME: &[i64] = &[libc::SYS_rename];
    pub const UNLINK: &[i64] = &[libc::SYS_unlink, libc::SYS_rmdir];
    pub const CHMOD: &[i64] = &[libc::SYS_chmod];
    pub const OPEN_EXIT: &[i64] = &[libc::SYS_open, libc::SYS_creat];
    pub const FILE_EXIT: &[i64] = &[
        libc::SYS_rename,
        libc::SYS_unlink,
        libc::SYS_rmdir,
        libc::SYS_chmod,
    ];
}

#[cfg(not(target_arch = "x86_64"))]
mod legacy {
    pub const OPEN: &[i64] = &[];
    pub const CREAT: &[i64] = &[];
    pub const RENAME: &[i64] = &[];
    pub const UNLINK: &[i64] = &[];
    pub const CHMOD: &[i64] = &[];
    pub const OPEN_EXIT: &[i64] = &[];
    pub const FILE_EXIT: &[i64] = &[];
}

/// The ia32 numbers, checked against `syscall_32.tbl`.
pub mod ia32 {
    pub const OPEN: u32 = 5;
    pub const CLOSE: u32 = 6;
    pub const CREAT: u32 = 8;
    pub const UNLINK: u32 = 10;
    pub const CHMOD: u32 = 15;
    pub const PTRACE: u32 = 26;
    pub const RENAME: u32 = 38;
    pub const RMDIR: u32 = 40;
    pub const IOCTL: u32 = 54;
    pub const TRUNCATE: u32 = 92;
    pub const FTRUNCATE: u32 = 93;
    pub const FCHMOD: u32 = 94;
    pub const TRUNCATE64: u32 = 193;
    pub const FTRUNCATE64: u32 = 194;
    pub const OPENAT: u32 = 295;
    pub const UNLINKAT: u32 = 301;
    pub const RENAMEAT: u32 = 302;
    pub const FCHMODAT: u32 = 306;
    pub const PROCESS_VM_READV: u32 = 347;
    pub const PROCESS_VM_WRITEV: u32 = 348;
    pub const RENAMEAT2: u32 = 353;
    pub const BPF: u32 = 357;
    pub const BIND: u32 = 361;
    pub const CONNECT: u32 = 362;
    pub const LISTEN: u32 = 363;
    pub const ACCEPT4: u32 = 364;
    pub const SENDTO: u32 = 369;
    pub const OPENAT2: u32 = 437;
    pub const PIDFD_GETFD: u32 = 438;
    pub const FCHMODAT2: u32 = 452;
}

use libc::{
    SYS_accept, SYS_accept4, SYS_bind, SYS_bpf, SYS_close, SYS_connect, SYS_fchmod, SYS_fchmodat,
    SYS_fchmodat2, SYS_ftruncate, SYS_ioctl, SYS_listen, SYS_openat, SYS_openat2, SYS_pidfd_getfd,
    SYS_process_vm_readv, SYS_process_vm_writev, SYS_ptrace, SYS_renameat, SYS_renameat2,
    SYS_sendmsg, SYS_sendto, SYS_truncate, SYS_unlinkat,
};

const fn enter(
    program: &'static str,
    native: &'static [i64],
    legacy: &'static [i64],
    compat: &'static [u32],
) -> Handler {
    Handler {
        program,
        exit: false,
        native,
        legacy,
        compat,
    }
}

const fn exit(
    program: &'static str,
    native: &'static [i64],
    legacy: &'static [i64],
    compat: &'static [u32],
) -> Handler {
    Handler {
        program,
        exit: true,
        native,
        legacy,
        compat,
    }
}

/// Every syscall handler. A number has one slot per ABI and direction (the unit tests check).
pub const HANDLERS: &[Handler] = &[
    enter(syscalls::ENTER_OPEN, &[], legacy::OPEN, &[ia32::OPEN]),
    enter(syscalls::ENTER_OPENAT, &[SYS_openat], &[], &[ia32::OPENAT]),
    enter(
        syscalls::ENTER_OPENAT2,
        &[SYS_openat2],
        &[],
        &[ia32::OPENAT2],
    ),
    enter(syscalls::ENTER_CREAT, &[], legacy::CREAT, &[ia32::CREAT]),
    exit(
        monitor_common::syscalls::EXIT_OPENS,
        &[SYS_openat, SYS_openat2],
        legacy::OPEN_EXIT,
        &[ia32::OPEN, ia32::OPENAT, ia32::OPENAT2, ia32::CREAT],
    ),
    enter(syscalls::ENTER_RENAME, &[], legacy::RENAME, &[ia32::RENAME]),
    enter(
        syscalls::ENTER_RENAMEAT,
        &[SYS_renameat, SYS_renameat2],
        &[],
        &[ia32::RENAMEAT, ia32::RENAMEAT2],
    ),
    enter(
        syscalls::ENTER_UNLINK,
        &[],
        legacy::UNLINK,
        &[ia32::UNLINK, ia32::RMDIR],
    ),
    enter(
        syscalls::ENTER_UNLINKAT,
        &[SYS_unlinkat],
        &[],
        &[ia32::UNLINKAT],
    ),
    // truncate64/ftruncate64 split the length over two registers; the path or fd is first.
    enter(
        syscalls::ENTER_TRUNCATE,
        &[SYS_truncate],
        &[],
        &[ia32::TRUNCATE, ia32::TRUNCATE64],
    ),
    enter(
        syscalls::ENTER_FTRUNCATE,
        &[SYS_ftruncate],
        &[],
        &[ia32::FTRUNCATE, ia32::FTRUNCATE64],
    ),
    enter(syscalls::ENTER_CHMOD, &[], legacy::CHMOD, &[ia32::CHMOD]),
    enter(
        syscalls::ENTER_FCHMODAT,
        &[SYS_fchmodat, SYS_fchmodat2],
        &[],
        &[ia32::FCHMODAT, ia32::FCHMODAT2],
    ),
    enter(syscalls::ENTER_FCHMOD, &[SYS_fchmod], &[], &[ia32::FCHMOD]),
    exit(
        syscalls::EXIT_FILE,
        &[
            SYS_renameat,
            SYS_renameat2,
            SYS_unlinkat,
            SYS_truncate,
            SYS_ftruncate,
            SYS_fchmodat,
            SYS_fchmodat2,
            SYS_fchmod,
        ],
        legacy::FILE_EXIT,
        &[
            ia32::RENAME,
            ia32::RENAMEAT,
            ia32::RENAMEAT2,
            ia32::UNLINK,
            ia32::UNLINKAT,
            ia32::RMDIR,
            ia32::TRUNCATE,
            ia32::TRUNCATE64,
            ia32::FTRUNCATE,
            ia32::FTRUNCATE64,
            ia32::CHMOD,
            ia32::FCHMODAT,
            ia32::FCHMODAT2,
            ia32::FCHMOD,
        ],
    ),
    enter(
        syscalls::ENTER_CONNECT,
        &[SYS_connect],
        &[],
        &[ia32::CONNECT],
    ),
    enter(syscalls::ENTER_BIND, &[SYS_bind], &[], &[ia32::BIND]),
    enter(syscalls::ENTER_LISTEN, &[SYS_listen], &[], &[ia32::LISTEN]),
    // ia32 has no accept of its own (only through socketcall).
    enter(
        syscalls::ENTER_ACCEPT,
        &[SYS_accept, SYS_accept4],
        &[],
        &[ia32::ACCEPT4],
    ),
    enter(syscalls::ENTER_SENDTO, &[SYS_sendto], &[], &[ia32::SENDTO]),
    // Not in ia32: the compat msghdr has another layout than the one the handler reads.
    enter(syscalls::ENTER_SENDMSG, &[SYS_sendmsg], &[], &[]),
    exit(
        syscalls::EXIT_NET,
        &[
            SYS_connect,
            SYS_bind,
            SYS_listen,
            SYS_accept,
            SYS_accept4,
            SYS_sendto,
            SYS_sendmsg,
        ],
        &[],
        &[
            ia32::CONNECT,
            ia32::BIND,
            ia32::LISTEN,
            ia32::ACCEPT4,
            ia32::SENDTO,
        ],
    ),
    enter(syscalls::ENTER_IOCTL, &[SYS_ioctl], &[], &[ia32::IOCTL]),
    enter(syscalls::ENTER_CLOSE, &[SYS_close], &[], &[ia32::CLOSE]),
    enter(
        programs::PROCESS_VM_ENTER,
        &[SYS_process_vm_readv, SYS_process_vm_writev],
        &[],
        &[ia32::PROCESS_VM_READV, ia32::PROCESS_VM_WRITEV],
    ),
    enter(programs::PTRACE_ENTER, &[SYS_ptrace], &[], &[ia32::PTRACE]),
    // The monitor's own objects (tamper): bpf() by another process.
    enter(programs::BPF_ENTER, &[SYS_bpf], &[], &[ia32::BPF]),
    exit(programs::BPF_EXIT, &[SYS_bpf], &[], &[ia32::BPF]),
    enter(
        programs::PIDFD_GETFD_ENTER,
        &[SYS_pidfd_getfd],
        &[],
        &[ia32::PIDFD_GETFD],
    ),
];

/// Whether this build tables a compat ABI (x86_64's ia32).
pub const COMPAT: bool = cfg!(target_arch = "x86_64");

impl Handler {
    /// The native numbers on this architecture.
    pub fn native_numbers(&self) -> impl Iterator<Item = u32> + '_ {
        self.native.iter().chain(self.legacy).map(|&nr| nr as u32)
    }

    /// The compat numbers this build fills (none without a compat ABI).
    pub fn compat_numbers(&self) -> &'static [u32] {
        if COMPAT {
            self.compat
        } else {
            &[]
        }
    }
}

/// The bitmap of syscall numbers some handler serves, in either ABI ([`SyscallAbi`]'s
/// `enter_traced` / `exit_traced`).
pub fn traced(exit: bool) -> [u64; 8] {
    let mut bits = [0u64; 8];
    for handler in HANDLERS.iter().filter(|h| h.exit == exit) {
        for nr in handler
            .native_numbers()
            .chain(handler.compat_numbers().iter().copied())
        {
            bits[(nr / 64) as usize] |= 1 << (nr % 64);
        }
    }
    bits
}

/// `TS_COMPAT` in x86's `thread_info.status` (arch/x86/include/asm/thread_info.h).
#[cfg(target_arch = "x86_64")]
const TS_COMPAT: u32 = 0x0002;

/// Register offsets from the kernel's BTF for this architecture's syscall ABIs.
#[cfg(target_arch = "x86_64")]
pub fn abi(btf: &crate::kernel::btf::Btf) -> anyhow::Result<SyscallAbi> {
    let reg = |name: &str| {
        btf.member_offset("pt_regs", name)
            .with_context(|| format!("failed to find pt_regs.{name} in the kernel's BTF"))
    };
    let regs = |names: [&str; 6]| -> anyhow::Result<[u32; 6]> {
        let mut out = [0; 6];
        for (slot, name) in out.iter_mut().zip(names) {
            *slot = reg(name)?;
        }
        Ok(out)
    };
    // No ia32 emulation or no thread_info in task_struct: compat syscalls then cannot
    // happen (or cannot be told apart, and are read as native; the start-up log says so).
    let task_status = btf
        .member_offset("task_struct", "thread_info")
        .and_then(|ti| Ok(ti + btf.member_offset("thread_info", "status")?))
        .unwrap_or(0);
    Ok(SyscallAbi {
        native_args: regs(["di", "si", "dx", "r10", "r8", "r9"])?,
        compat_args: regs(["bx", "cx", "dx", "si", "di", "bp"])?,
        nr: reg("orig_ax")?,
        task_status,
        compat_bit: TS_COMPAT,
        process_vm_writev: [SYS_process_vm_writev as u32, ia32::PROCESS_VM_WRITEV],
        _pad: 0,
        enter_traced: traced(false),
        exit_traced: traced(true),
    })
}

/// Register offsets from the kernel's BTF for this architecture's syscall ABI (no compat
/// table: AArch32 tasks' syscalls are not told apart).
#[cfg(target_arch = "aarch64")]
pub fn abi(btf: &crate::kernel::btf::Btf) -> anyhow::Result<SyscallAbi> {
    let regs = btf
        .member_offset("pt_regs", "regs")
        .context("failed to find pt_regs.regs in the kernel's BTF")?;
    let nr = btf
        .member_offset("pt_regs", "syscallno")
        .context("failed to find pt_regs.syscallno in the kernel's BTF")?;
    let args = core::array::from_fn(|n| regs + 8 * n as u32);
    Ok(SyscallAbi {
        native_args: args,
        compat_args: args,
        nr,
        task_status: 0,
        compat_bit: 0,
        process_vm_writev: [SYS_process_vm_writev as u32, 0],
        _pad: 0,
        enter_traced: traced(false),
        exit_traced: traced(true),
    })
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub fn abi(_btf: &crate::kernel::btf::Btf) -> anyhow::Result<SyscallAbi> {
    anyhow::bail!("failed to set up the syscall sensors: this architecture's syscall registers are not tabled yet (x86_64 and aarch64 are); please report it")
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor_common::syscalls::SLOTS;

    /// One handler per number, ABI and direction: a slot holds one program.
    #[test]
    fn one_handler_per_slot() {
        for exit in [false, true] {
            let mut native = std::collections::HashSet::new();
            let mut compat = std::collections::HashSet::new();
            for h in HANDLERS.iter().filter(|h| h.exit == exit) {
                for nr in h.native_numbers() {
                    assert!(nr < SLOTS, "{} {nr}", h.program);
                    assert!(native.insert(nr), "{} native {nr} twice", h.program);
                }
                for &nr in h.compat_numbers() {
                    assert!(nr < SLOTS, "{} {nr}", h.program);
                    assert!(compat.insert(nr), "{} compat {nr} twice", h.program);
                }
            }
        }
    }

    /// An entry that records a syscall for its exit has that exit tabled, in both ABIs
    /// (the file and network sensors report at exit).
    #[test]
    fn recorded_entries_have_exits() {
        let exits = |compat: bool| -> std::collections::HashSet<u32> {
            HANDLERS
                .iter()
                .filter(|h| h.exit)
                .flat_map(|h| -> Vec<u32> {
                    if compat {
                        h.compat_numbers().to_vec()
                    } else {
                        h.native_numbers().collect()
                    }
                })
                .collect()
        };
        let (native_exits, compat_exits) = (exits(false), exits(true));
        let no_exit = [
            syscalls::ENTER_IOCTL,
            syscalls::ENTER_CLOSE,
            programs::PROCESS_VM_ENTER,
            programs::PTRACE_ENTER,
            programs::PIDFD_GETFD_ENTER,
        ];
        for h in HANDLERS
            .iter()
            .filter(|h| !h.exit && !no_exit.contains(&h.program))
        {
            for nr in h.native_numbers() {
                assert!(native_exits.contains(&nr), "{} native {nr}", h.program);
            }
            for nr in h.compat_numbers() {
                assert!(compat_exits.contains(nr), "{} compat {nr}", h.program);
            }
        }
    }

    #[test]
    fn the_bitmaps_hold_every_tabled_number() {
        for h in HANDLERS {
            let bits = traced(h.exit);
            for nr in h.native_numbers().chain(h.compat_numbers().iter().copied()) {
                assert_ne!(
                    bits[nr as usize / 64] & (1 << (nr % 64)),
                    0,
                    "{} {nr}",
                    h.program
                );
            }
        }
        // getppid is traced by nobody.
        let nr = libc::SYS_getppid as usize;
        assert_eq!(traced(false)[nr / 64] & (1 << (nr % 64)), 0);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn ia32_numbers_match_the_kernel_table() {
        // From arch/x86/entry/syscalls/syscall_32.tbl (and the generic numbers from 403 on).
        assert_eq!(
            (ia32::OPEN, ia32::OPENAT, ia32::OPENAT2, ia32::PTRACE),
            (5, 295, 437, 26)
        );
        assert_eq!(
            (
                ia32::PROCESS_VM_READV,
                ia32::PROCESS_VM_WRITEV,
                ia32::CONNECT
            ),
            (347, 348, 362)
        );
        // The generic numbers are shared by every ABI from 424 on.
        assert_eq!(ia32::PIDFD_GETFD as i64, SYS_pidfd_getfd);
        assert_eq!(ia32::OPENAT2 as i64, SYS_openat2);
        assert_eq!(ia32::FCHMODAT2 as i64, SYS_fchmodat2);
    }
}
