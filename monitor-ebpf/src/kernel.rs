//! Reads of kernel structs at offsets the loader took from the running kernel's BTF.

use aya_ebpf::helpers::bpf_probe_read_kernel;

/// The byte offset of a field, as the loader wrote it.
macro_rules! off {
    ($field:ident) => {
        $crate::kernel::loaded(&$crate::OFFSETS.$field)
    };
}
pub(crate) use off;

/// A value the loader patched into the object: read it volatile so the compiler cannot fold
/// the compile-time zero into the code.
#[inline(always)]
pub fn loaded(value: &u32) -> usize {
    // SAFETY: a valid reference to an immutable static.
    unsafe { core::ptr::read_volatile(value) as usize }
}

/// Reads a `T` at `base + offset` from kernel memory.
#[inline(always)]
pub unsafe fn read<T>(base: *const u8, offset: usize) -> Result<T, i64> {
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset) as *const T).map_err(|e| e as i64) }
}

/// A `task_struct` pointer.
#[derive(Clone, Copy)]
pub struct Task(pub *const u8);

impl Task {
    #[inline(always)]
    pub fn tgid(self) -> Result<u32, i64> {
        unsafe { read(self.0, off!(task_tgid)) }
    }

    #[inline(always)]
    pub fn pid(self) -> Result<u32, i64> {
        unsafe { read(self.0, off!(task_pid)) }
    }

    #[inline(always)]
    pub fn group_leader(self) -> Result<Task, i64> {
        unsafe { read::<*const u8>(self.0, off!(task_group_leader)).map(Task) }
    }

    #[inline(always)]
    pub fn real_parent(self) -> Result<Task, i64> {
        unsafe { read::<*const u8>(self.0, off!(task_real_parent)).map(Task) }
    }

    /// Start time of the thread group (its leader's `start_boottime`): with the tgid, an
    /// identity that survives pid reuse, and the value /proc/PID/stat reports.
    #[inline(always)]
    pub fn process_start_time(self) -> Result<u64, i64> {
        let leader = self.group_leader()?;
        unsafe { read(leader.0, off!(task_start_boottime)) }
    }

    #[inline(always)]
    pub fn start_time(self) -> Result<u64, i64> {
        unsafe { read(self.0, off!(task_start_boottime)) }
    }

    #[inline(always)]
    pub fn exit_code(self) -> Result<u32, i64> {
        unsafe { read(self.0, off!(task_exit_code)) }
    }

    /// Threads of this process still alive (`signal->live`), 0 once the last one exits.
    #[inline(always)]
    pub fn live_threads(self) -> Result<i32, i64> {
        let signal: *const u8 = unsafe { read(self.0, off!(task_signal))? };
        unsafe { read(signal, off!(signal_live)) }
    }

    #[inline(always)]
    pub fn mm(self) -> Result<*const u8, i64> {
        unsafe { read(self.0, off!(task_mm)) }
    }

    /// The process's root directory (`fs->root`): where its own paths start.
    #[inline(always)]
    pub fn root(self) -> Result<(*const u8, *const u8), i64> {
        let fs: *const u8 = unsafe { read(self.0, off!(task_fs))? };
        if fs.is_null() {
            return Err(-1);
        }
        let root = fs.wrapping_add(off!(fs_root));
        let mnt = unsafe { read(root, off!(path_mnt))? };
        let dentry = unsafe { read(root, off!(path_dentry))? };
        Ok((mnt, dentry))
    }
}
