//! Accelerator devices, host-wide: the cgroup device hook sees every open of a device node
//! (before the driver's open, so failed opens too) and marks the thread's syscall; the open's
//! exit (file.rs) reports it. ioctls on accelerator fds are counted in the kernel.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{cgroup_device, tracepoint},
    programs::{DeviceContext, TracePointContext},
};
use monitor_common::{FdKey, IoctlKey, Pending, PENDING_DEVICE};

use crate::{config_self_tgid, syscall_arg, ACCEL_FDS, ACCEL_MAJORS, IOCTL_COUNTS, PENDING};

/// `BPF_DEVCG_DEV_CHAR`
const DEV_CHAR: u32 = 2;
/// `BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE`
const ACC_READ_WRITE: u32 = 2 | 4;

/// Observes device access; always allows it (enforcement is a separate program).
#[cgroup_device]
pub fn device_access(ctx: DeviceContext) -> i32 {
    observe(&ctx);
    1
}

#[inline(always)]
fn observe(ctx: &DeviceContext) {
    let dev = unsafe { &*ctx.device };
    let dev_type = dev.access_type & 0xffff;
    let access = dev.access_type >> 16;
    if dev_type != DEV_CHAR || access & ACC_READ_WRITE == 0 {
        return;
    }
    let Some(class) = (unsafe { ACCEL_MAJORS.get(dev.major) }).copied() else {
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == config_self_tgid() {
        return;
    }
    if let Some(pending) = PENDING.get_ptr_mut(pid_tgid) {
        // A watched process's open recorded at entry: add what the hook knows.
        unsafe {
            (*pending).flags |= PENDING_DEVICE;
            (*pending).major = dev.major;
            (*pending).minor = dev.minor;
            (*pending).class = class;
        }
    } else {
        let pending = Pending {
            flags: PENDING_DEVICE,
            major: dev.major,
            minor: dev.minor,
            class,
            dfd: -100,
            ..Pending::default()
        };
        let _ = PENDING.insert(pid_tgid, pending, 0);
    }
}

/// `ioctl(fd, cmd, arg)`: counted per (process, class, type, number) on accelerator fds.
#[tracepoint]
pub fn sys_enter_ioctl(ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let fd = syscall_arg(&ctx, 0) as u32;
    let Some(class) = (unsafe { ACCEL_FDS.get(FdKey { tgid, fd }) }).copied() else {
        return 0;
    };
    let cmd = syscall_arg(&ctx, 1) as u32;
    // _IOC_TYPE and _IOC_NR; the size bits vary between driver versions and are left out.
    let key = IoctlKey {
        tgid,
        class,
        ioctl_type: (cmd >> 8) & 0xff,
        nr: cmd & 0xff,
    };
    count_ioctl(&key);
    0
}

#[inline(always)]
fn count_ioctl(key: &IoctlKey) {
    // Per-CPU values: no other writer, so no atomics; user space sums the CPUs.
    if let Some(counter) = IOCTL_COUNTS.get_ptr_mut(key) {
        unsafe { *counter += 1 };
    } else {
        let _ = IOCTL_COUNTS.insert(key, 1, 0);
    }
}

/// `close(fd)`: an accelerator fd stops being tracked.
#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let key = FdKey {
        tgid,
        fd: syscall_arg(&ctx, 0) as u32,
    };
    if unsafe { ACCEL_FDS.get(key).is_some() } {
        let _ = ACCEL_FDS.remove(key);
    }
    0
}
