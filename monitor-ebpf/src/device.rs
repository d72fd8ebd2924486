//! Accelerator devices, host-wide: the cgroup device hook sees every open of a device node
//! (before the driver's open, so failed opens too, and io_uring's opens, which no syscall
//! tracepoint sees), decides it, and reports it with the process that asked, once per open.
//! ioctls on accelerator fds are counted in the kernel: the open's exit files the fd.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::{cgroup_device, raw_tracepoint},
    programs::{DeviceContext, RawTracePointContext},
};
use monitor_common::{
    guard_slot, Decision, DeviceEvent, DeviceOpen, EventKind, FdKey, FileOpCode, IoctlKey, Stat,
    EPERM, PENDING_FILE, POLICY_ENFORCE,
};

use crate::{
    config_self_tgid, count,
    enforce::{enforced_policy, refusal, verdict, ALLOW},
    is_watched,
    kernel::{file_inode, inode_rdev, Task},
    path::write_user_str,
    process::header,
    syscall_arg, syscall_ret, ACCEL_FDS, ACCEL_MAJORS, DEVICE_OPENS, GPU_ALLOWED, GUARDS,
    IOCTL_COUNTS, OPEN_ARGS, PENDING, WATCHED,
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
    // SAFETY: the kernel's `bpf_cgroup_dev_ctx` for this call, valid while the program runs.
    let dev = unsafe { &*ctx.device };
    // The cheapest tests first: a read or write of a character device of an accelerator class.
    let dev_type = dev.access_type & 0xffff;
    let access = dev.access_type >> 16;
    if dev_type != DEV_CHAR || access & ACC_READ_WRITE == 0 {
        return ALLOW;
    }
    let Some(class) = (unsafe { ACCEL_MAJORS.get(dev.major) }).copied() else {
        return ALLOW;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == config_self_tgid() {
        return ALLOW;
    }
    let decision = decide(tgid, class);
    report(pid_tgid, dev.major, dev.minor, class, decision);
    verdict(decision)
}

/// Whether an accelerator open is allowed, refused, or would be (dry run).
#[inline(always)]
fn decide(tgid: u32, class: u32) -> Decision {
    if tgid == 1 {
        return Decision::Allowed;
    }
    if let Some((_, policy)) = enforced_policy() {
        if policy.devices & monitor_common::device_policy_bit(class) == 0 {
            return refusal(policy.flags);
        }
    }
    let guard = GUARDS.get(guard_slot::GPU).copied().unwrap_or(0);
    if guard & POLICY_ENFORCE != 0 {
        let profile = unsafe { WATCHED.get(tgid) }.map_or(0, |w| w.profile);
        if profile == 0 || unsafe { GPU_ALLOWED.get(profile).is_none() } {
            return refusal(guard);
        }
    }
    Decision::Allowed
}

/// Sends the attempt, and prepares what the open's exit needs. The event is the open's only
/// report: a watched process's open syscall in flight is told not to report a file open too.
#[inline(always)]
fn report(pid_tgid: u64, major: u32, minor: u32, class: u32, decision: Decision) {
    let tgid = (pid_tgid >> 32) as u32;
    if let Some(pending) = PENDING.get_ptr_mut(pid_tgid) {
        // SAFETY: a map value of this thread's syscall, valid for the program's run; only
        // this thread's hooks write it, and they run one after another.
        unsafe {
            if (*pending).flags & PENDING_FILE != 0 && (*pending).op == FileOpCode::Open as u32 {
                (*pending).flags = 0;
            }
        }
    }
    if decision != Decision::Denied {
        let open = DeviceOpen {
            major,
            minor,
            class,
            _pad: 0,
        };
        if DEVICE_OPENS.insert(pid_tgid, open, 0).is_err() {
            // Its ioctls go uncounted: count that.
            count(Stat::MapFull, EventKind::GpuIoctls as u32);
        }
    }
    // A refusal is enforcement: it must not be lost in a flood of bulk events.
    let priority = matches!(decision, Decision::Denied | Decision::WouldDeny);
    let Some(mut entry) = crate::emit::reserve::<DeviceEvent>(EventKind::Device, priority) else {
        return;
    };
    let task = Task(unsafe { bpf_get_current_task() } as *const u8);
    // SAFETY (every `(*event)` below): a ring reservation of the event's size, owned by
    // this program until it submits it; fields are written before user space can read.
    let event = entry.as_mut_ptr();
    unsafe {
        (*event).header = header(
            EventKind::Device,
            tgid,
            pid_tgid as u32,
            task.process_start_time().unwrap_or(0),
            is_watched(tgid),
        );
        (*event).class = class;
        (*event).major = major;
        (*event).minor = minor;
        (*event).flags = 0;
        (*event).result = if decision == Decision::Denied {
            -EPERM
        } else {
            0
        };
        (*event).decision = decision as u32;
        (*event)._pad = 0;
        (*event).path_len = 0;
        (*event).raw_len = 0;
    }
    // The name, when this thread's last open syscall on this CPU is the one in flight (io_uring
    // opens have none): an absolute name only, and user space checks that it is this node.
    if let Some(slot) = OPEN_ARGS.get(0) {
        if slot.pid_tgid == pid_tgid {
            let raw = unsafe { &mut (*event).raw };
            if let Ok((len, _)) = write_user_str(raw, slot.name) {
                if raw[0] == b'/' {
                    unsafe { (*event).raw_len = len };
                }
            }
        }
    }
    entry.submit();
}

/// Exit of open, openat, openat2 and creat: an accelerator fd the device hook let through is
/// filed for ioctl counting (io_uring's opens have no exit here: their fds go uncounted).
/// Run by `syscalls::sys_exit_opens`.
#[inline(always)]
pub fn sys_exit_open_device(ctx: RawTracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(open) = (unsafe { DEVICE_OPENS.get(pid_tgid) }).copied() else {
        return 0;
    };
    let _ = DEVICE_OPENS.remove(pid_tgid);
    let ret = syscall_ret(&ctx);
    if ret < 0 {
        return 0;
    }
    let task = Task(unsafe { bpf_get_current_task() } as *const u8);
    // The hook may have seen another access by this thread (access(2), say): only file the
    // fd of that very device.
    let Ok((major, minor)) = task.file(ret).and_then(file_inode).and_then(inode_rdev) else {
        // A successful open whose file could not be read: its ioctls go uncounted.
        count(Stat::ReadDropped, EventKind::GpuIoctls as u32);
        return 0;
    };
    if major == open.major && minor == open.minor {
        let key = FdKey {
            tgid: (pid_tgid >> 32) as u32,
            fd: ret as u32,
        };
        if ACCEL_FDS.insert(key, open.class, 0).is_err() {
            count(Stat::MapFull, EventKind::GpuIoctls as u32);
        }
    }
    0
}

/// `ioctl(fd, cmd, arg)`: counted per (process, class, type, number) on accelerator fds.
#[raw_tracepoint]
pub fn sys_enter_ioctl(ctx: RawTracePointContext) -> u32 {
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
        // SAFETY: this CPU's copy of a per-CPU map value, valid for the program's run.
        unsafe { *counter += 1 };
    } else {
        if IOCTL_COUNTS.insert(key, 1, 0).is_err() {
            count(Stat::MapFull, EventKind::GpuIoctls as u32);
        }
    }
}

/// `close(fd)`: an accelerator fd stops being tracked.
#[raw_tracepoint]
pub fn sys_enter_close(ctx: RawTracePointContext) -> u32 {
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
