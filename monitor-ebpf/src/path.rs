//! Resolves a `struct path` (vfsmount + dentry) into the absolute path the process would name,
//! by walking dentries and mounts up to the process's root, in the kernel, while the objects
//! are alive. Reading /proc afterwards races with processes that already exited.

use aya_ebpf::helpers::generated::bpf_probe_read_kernel;
use monitor_common::{KERNEL_LOG_TARGET, NAME_MAX, PATH_CAP, PATH_MAX_COMPONENTS};

use crate::kernel::{off, read};

/// Size of the scratch buffer: offsets are masked with `2 * PATH_CAP - 1`, and a name of up to
/// `NAME_MAX` bytes plus its `/` written at such an offset must stay inside.
pub const SCRATCH_SIZE: usize = 4 * PATH_CAP;
const POS_MASK: usize = 2 * PATH_CAP - 1;

/// Where a resolved path lies in the scratch buffer: `buf[start..PATH_CAP]`.
pub struct Resolved {
    pub start: usize,
    pub truncated: bool,
}

/// Writes the path of (`vfsmount`, `dentry`) backwards into `buf`, ending at `PATH_CAP`.
/// Stops at the process root (`root_mnt`, `root_dentry`) or at the root of the mount tree.
/// When the path does not fit, it is cut at a component boundary and flagged.
#[inline(always)]
///
/// # Safety
///
/// The pointers are kernel addresses, only read through `bpf_probe_read_kernel` (a bad one
/// is an error, not a fault); `unsafe` for the raw writes into `buf`, which stay inside it.
pub unsafe fn resolve(
    buf: &mut [u8; SCRATCH_SIZE],
    vfsmount: *const u8,
    mut dentry: *const u8,
    root_mnt: *const u8,
    root_dentry: *const u8,
) -> Result<Resolved, i64> {
    // `struct mount` embeds the `struct vfsmount` the path points to.
    let mut mount = vfsmount.wrapping_sub(off!(mount_mnt));
    let mut pos = PATH_CAP;
    let mut truncated = true;
    for _ in 0..PATH_MAX_COMPONENTS {
        // Without this the verifier tracks `pos` exactly, no two loop states compare equal,
        // and it gives up after a million instructions ("BPF program is too large").
        // black_box hides the value from LLVM so that it keeps the mask; the mask gives the
        // verifier one range for every iteration, so it can prune.
        pos = core::hint::black_box(pos) & POS_MASK;
        let mnt = mount.wrapping_add(off!(mount_mnt));
        if dentry == root_dentry && mnt == root_mnt {
            truncated = false;
            break;
        }
        let mnt_root: *const u8 = unsafe { read(mnt, off!(vfsmount_root))? };
        if dentry == mnt_root {
            let parent: *const u8 = unsafe { read(mount, off!(mount_parent))? };
            if parent == mount {
                truncated = false;
                break;
            }
            // Cross into the parent mount at the mountpoint.
            dentry = unsafe { read(mount, off!(mount_mountpoint))? };
            mount = parent;
            continue;
        }
        let parent: *const u8 = unsafe { read(dentry, off!(dentry_parent))? };
        if parent == dentry {
            truncated = false;
            break;
        }
        let qstr = dentry.wrapping_add(off!(dentry_name));
        let name: *const u8 = unsafe { read(qstr, off!(qstr_name))? };
        let len = (unsafe { read::<u32>(qstr, off!(qstr_len))? } as usize) & NAME_MAX;
        if len + 1 > pos {
            break;
        }
        // The verifier does not carry `len < pos` through the subtraction; the mask (which
        // changes nothing, the check above made it non-negative) tells it the range again.
        pos = core::hint::black_box(pos - (len + 1)) & POS_MASK;
        // Raw pointers, not indexing: a bounds check LLVM cannot elide becomes a call to a
        // panic function that never returns, which the verifier refuses ("last insn is not
        // an exit or jmp"). `pos <= POS_MASK` and `len <= NAME_MAX` keep this inside the
        // buffer of SCRATCH_SIZE bytes.
        // SAFETY: `pos <= POS_MASK` and `len <= NAME_MAX`, so `at .. at + 1 + len` lies in
        // the SCRATCH_SIZE bytes of `buf` (see SCRATCH_SIZE).
        let at = unsafe { buf.as_mut_ptr().add(pos) };
        unsafe { *at = b'/' };
        let ret =
            unsafe { bpf_probe_read_kernel(at.add(1) as *mut _, len as u32, name as *const _) };
        if ret < 0 {
            return Err(ret);
        }
        dentry = parent;
    }
    if pos == PATH_CAP {
        pos -= 1;
        // SAFETY: `pos` is PATH_CAP - 1, inside `buf`.
        unsafe { *buf.as_mut_ptr().add(pos) = b'/' };
    }
    Ok(Resolved {
        start: pos,
        truncated,
    })
}

/// Walks (`vfsmount`, `dentry`) and copies the path into `out`: (bytes used, truncated).
#[inline(always)]
pub fn write_path(
    out: &mut [u8; PATH_CAP],
    vfsmount: *const u8,
    dentry: *const u8,
) -> Result<(u32, bool), i64> {
    let task =
        crate::kernel::Task(unsafe { aya_ebpf::helpers::bpf_get_current_task() } as *const u8);
    let (root_mnt, root_dentry) = task.root()?;
    let scratch = crate::SCRATCH.get_ptr_mut(0).ok_or(-1i64)?;
    // SAFETY: this CPU's scratch buffer, valid for the program's run; nothing else on this
    // CPU uses it until the program ends.
    let scratch = unsafe { &mut *scratch };
    let resolved = match unsafe { resolve(scratch, vfsmount, dentry, root_mnt, root_dentry) } {
        Ok(resolved) => resolved,
        Err(error) => {
            aya_log_ebpf::debug!(
                &(),
                target: KERNEL_LOG_TARGET,
                "path walk gave up: a kernel read failed ({})",
                error
            );
            return Err(error);
        }
    };
    if resolved.truncated {
        // Logged once per walk, after the loop: a statement inside it would multiply what
        // the verifier explores.
        aya_log_ebpf::debug!(
            &(),
            target: KERNEL_LOG_TARGET,
            "path walk cut: deeper than {} components or longer than {} bytes (flagged truncated)",
            PATH_MAX_COMPONENTS,
            PATH_CAP as u32
        );
    }
    let start = resolved.start & POS_MASK;
    let len = PATH_CAP.wrapping_sub(start);
    if len == 0 || len > PATH_CAP {
        return Err(-1);
    }
    // Raw pointers: see the note on indexing in `resolve`.
    let ret = unsafe {
        bpf_probe_read_kernel(
            out.as_mut_ptr() as *mut _,
            len as u32,
            scratch.as_ptr().add(start) as *const _,
        )
    };
    if ret < 0 {
        return Err(ret);
    }
    Ok((len as u32, resolved.truncated))
}

/// Copies a NUL-terminated user string into `out`: (bytes used without the NUL, truncated).
#[inline(always)]
pub fn write_user_str(out: &mut [u8; PATH_CAP], src: u64) -> Result<(u32, bool), i64> {
    let n = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_user_str(
            out.as_mut_ptr() as *mut _,
            PATH_CAP as u32,
            src as *const _,
        )
    };
    if n <= 0 {
        return Err(n);
    }
    let n = n as u32 - 1;
    // A string that filled the whole buffer was cut.
    Ok((n, n as usize == PATH_CAP - 1))
}
