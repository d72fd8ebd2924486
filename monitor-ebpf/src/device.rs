//! Accelerator devices, host-wide: the cgroup device hook sees every open of a device node
//! (before the driver's open, so failed opens too) and marks the thread's syscall; the open's
//! exit (file.rs) reports it. ioctls on accelerator fds are counted in the kernel.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{cgroup_device, tracepoint},
    programs::{DeviceContext, TracePointContext},
};
use monitor_common::{FdKey, IoctlKey, Pending, PENDING_DEVICE, POLICY_DRY_RUN, POLICY_ENFORCE};

use crate::{
    config_self_tgid,
    enforce::{enforced_policy, refuse},
    syscall_arg, ACCEL_FDS, ACCEL_MAJORS, GPU_ALLOWED, GUARDS, IOCTL_COUNTS, PENDING, WATCHED,
};

/// `BPF_DEVCG_DEV_CHAR`
const DEV_CHAR: u32 = 2;
/// `BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE`
const ACC_READ_WRITE: u32 = 2 | 4;

/// Observes accelerator device access, and refuses it where an enforce-mode profile or the
/// GPU guard says so. Every other device is always allowed: a wrong 0 here would cut
/// processes off /dev/null.
#[cgroup_device]
pub fn device_access(ctx: DeviceContext) -> i32 {
    match observe(&ctx) {
        Some(class) => decide(class),
        None => 1,
    }
}

/// Whether an accelerator open is allowed (1) or refused (0).
#[inline(always)]
fn decide(class: u32) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == config_self_tgid() || tgid == 1 {
        return 1;
    }
    if let Some((_, policy)) = enforced_policy() {
        if policy.devices & (1 << (class & 31)) == 0 {
            return refuse(&policy);
        }
    }
    let guard = GUARDS.get(0).copied().unwrap_or(0);
    if guard & POLICY_ENFORCE != 0 {
        let profile = unsafe { WATCHED.get(tgid) }.map_or(0, |w| w.profile);
        if profile == 0 || unsafe { GPU_ALLOWED.get(profile).is_none() } {
            return if guard & POLICY_DRY_RUN != 0 { 1 } else { 0 };
        }
    }
    1
}

/// Marks the thread's syscall when it opens an accelerator device; returns its class.
#[inline(always)]
fn observe(ctx: &DeviceContext) -> Option<u32> {
    let dev = unsafe { &*ctx.device };
    let dev_type = dev.access_type & 0xffff;
    let access = dev.access_type >> 16;
    if dev_type != DEV_CHAR || access & ACC_READ_WRITE == 0 {
        return None;
    }
    let class = (unsafe { ACCEL_MAJORS.get(dev.major) }).copied()?;
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == config_self_tgid() {
        return None;
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
    Some(class)
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
