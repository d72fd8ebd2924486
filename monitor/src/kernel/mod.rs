//! The kernel side as user space drives it: loading and attaching the eBPF programs
//! ([`sensor`]), the running kernel's type information and syscall tables ([`btf`],
//! [`syscalls`]), the filesystems they need ([`mounts`]), the encoding of a configuration
//! into the policy maps ([`policy`]), and the fanotify host guards ([`guard`]).
//!
//! Third layer of the data flow: it uses [`crate::event`], [`crate::host`] and
//! [`crate::config`], and nothing above them.

pub mod btf;
pub mod guard;
pub mod mounts;
pub mod policy;
pub mod sensor;
pub mod syscalls;

/// `BPF_MAP_UPDATE_BATCH` (Linux 5.6): many entries of a hash map written by one `bpf()`
/// call. aya has no batch calls; a call per entry costs a system call each (and the monitor's
/// own `bpf()` hook), which was an eighth of the daemon's CPU under governed fork+exec (two
/// allowed opens of each new program written to `KNOWN` one by one).
///
/// Returns how many of `keys` were written, from the start: fewer on an error, with the error.
pub fn update_batch<K: aya::Pod, V: aya::Pod>(
    map: &aya::maps::MapData,
    keys: &[K],
    values: &[V],
) -> (usize, std::io::Result<()>) {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    /// `union bpf_attr`'s `batch` member.
    #[repr(C)]
    #[derive(Default)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    assert_eq!(keys.len(), values.len(), "one value per key");
    if keys.is_empty() {
        return (0, Ok(()));
    }
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: u32::try_from(keys.len()).unwrap_or(u32::MAX),
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: `attr` is a valid `batch` member of `bpf_attr` (the kernel zero-fills the rest
    // of the union up to the size given); `keys` and `values` hold `count` entries each of
    // the map's key and value size, and outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &mut attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>() as u32,
        )
    };
    let written = (attr.count as usize).min(keys.len());
    if rc < 0 {
        (written, Err(std::io::Error::last_os_error()))
    } else {
        (keys.len(), Ok(()))
    }
}
