//! Kernel filesystems the sensors need, mounted when missing.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tracing::info;

/// Where tracefs is mounted. When it is not, mounts it at /sys/kernel/tracing (root only)
/// and says so: syscall tracepoints are attached through it.
pub fn tracefs() -> anyhow::Result<PathBuf> {
    for candidate in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(candidate).join("events").is_dir() {
            return Ok(PathBuf::from(candidate));
        }
    }
    let target = Path::new("/sys/kernel/tracing");
    let source = c"tracefs";
    let fstype = c"tracefs";
    let target_c = c"/sys/kernel/tracing";
    // SAFETY: valid NUL-terminated strings; no data argument.
    let ret = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if ret != 0 {
        let err = std::io::Error::last_os_error();
        return Err(err).with_context(|| {
            format!(
                "failed to mount tracefs at {}; mount it yourself: mount -t tracefs tracefs {}",
                target.display(),
                target.display()
            )
        });
    }
    info!(
        "tracefs was not mounted: mounted it at {}",
        target.display()
    );
    Ok(target.to_path_buf())
}
