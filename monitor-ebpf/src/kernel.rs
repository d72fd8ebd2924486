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
///
/// # Safety
///
/// `T` must be valid for any bytes (plain integers and pointers). The address itself may be
/// anything: `bpf_probe_read_kernel` returns an error instead of faulting.
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

impl Task {
    /// The `struct file` behind `fd`, or null.
    #[inline(always)]
    pub fn file(self, fd: i64) -> Result<*const u8, i64> {
        if fd < 0 {
            return Err(-9);
        }
        let files: *const u8 = unsafe { read(self.0, off!(task_files))? };
        let fdt: *const u8 = unsafe { read(files, off!(files_fdt))? };
        let max_fds: u32 = unsafe { read(fdt, off!(fdtable_max_fds))? };
        if fd as u64 >= max_fds as u64 {
            return Err(-9);
        }
        let array: *const u8 = unsafe { read(fdt, off!(fdtable_fd))? };
        let file: *const u8 = unsafe { read(array, (fd as usize) * 8)? };
        if file.is_null() {
            return Err(-9);
        }
        Ok(file)
    }

    /// The current working directory (`fs->pwd`): (vfsmount, dentry).
    #[inline(always)]
    pub fn pwd(self) -> Result<(*const u8, *const u8), i64> {
        let fs: *const u8 = unsafe { read(self.0, off!(task_fs))? };
        if fs.is_null() {
            return Err(-1);
        }
        path_of(fs.wrapping_add(off!(fs_pwd)))
    }
}

/// (vfsmount, dentry) of a `struct path`.
#[inline(always)]
pub fn path_of(path: *const u8) -> Result<(*const u8, *const u8), i64> {
    let mnt = unsafe { read(path, off!(path_mnt))? };
    let dentry = unsafe { read(path, off!(path_dentry))? };
    Ok((mnt, dentry))
}

/// (vfsmount, dentry) of a `struct file`.
#[inline(always)]
pub fn file_path(file: *const u8) -> Result<(*const u8, *const u8), i64> {
    path_of(file.wrapping_add(off!(file_path)))
}

#[inline(always)]
pub fn file_flags(file: *const u8) -> u32 {
    unsafe { read(file, off!(file_flags)) }.unwrap_or(0)
}

/// The inode of a file.
#[inline(always)]
pub fn file_inode(file: *const u8) -> Result<*const u8, i64> {
    unsafe { read(file, off!(file_inode)) }
}

/// `i_rdev` of an inode, as (major, minor) (kernel `dev_t`: 12-bit major, 20-bit minor).
#[inline(always)]
pub fn inode_rdev(inode: *const u8) -> Result<(u32, u32), i64> {
    let rdev: u32 = unsafe { read(inode, off!(inode_rdev))? };
    Ok((rdev >> 20, rdev & 0xfffff))
}

/// The socket behind a file (`file->private_data`), trusting the caller that it is one.
#[inline(always)]
pub fn file_socket(file: *const u8) -> Result<*const u8, i64> {
    unsafe { read(file, off!(file_private_data)) }
}
