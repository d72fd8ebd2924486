//! File sensor: opens and changes to files by watched processes, and (`monitor trace
//! --protect`) opens of protected files by any process. `monitor run` guards files with
//! fanotify instead (monitor/src/guard): the open hooks of unwatched processes judge nothing
//! there.
//!
//! Entry programs only record the arguments of watched processes (one map lookup for the
//! others). Exit programs resolve the path in the kernel: a successful open by walking the
//! opened file's dentries and mounts; anything else as the directory the name is relative to
//! (the cwd or the dirfd, walked) plus the name as given.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use monitor_common::{
    guard_slot, EventKind, FileEvent, FileOpCode, InodeKey, KnownKey, Pending, Stat,
    FILE_PATH_TRUNCATED, FILE_PROTECTED, FILE_RAW_TRUNCATED, FILE_RESOLVED, KNOWN_OPEN, O_ACCMODE,
    O_CREAT, O_TRUNC, O_WRONLY, PATH_CAP, PENDING_FILE, SUFFIXES_MAX, SUFFIX_CAP,
};

use crate::{
    config_protect, config_self_tgid, count, is_watched,
    kernel::{file_flags, file_inode, file_path, off, read, Task},
    known, known_key,
    path::{write_path, write_user_str},
    process::header,
    syscall_arg, syscall_ret, ProtKey, GUARDS, OPEN_ARGS, PENDING, PROTECTED_DIRS, PROTECTED_SEEN,
    PROTECTED_SUFFIXES,
};

const AT_FDCWD: i32 = -100;

/// Remembers the name of every open on this CPU (a per-CPU slot: no hashing, no locking), so
/// that a device open by an unwatched process, seen by the device hook, can still be named
/// at its exit. A thread that moved CPUs in between is named from /dev by user space instead.
#[inline(always)]
fn stash_open(dfd: i32, name: u64) {
    if let Some(slot) = OPEN_ARGS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU array, valid for the program's run; no other
        // writer while the program runs on this CPU.
        unsafe {
            (*slot).pid_tgid = bpf_get_current_pid_tgid();
            (*slot).dfd = dfd as i64;
            (*slot).name = name;
        }
    }
}

/// Records a file syscall of a watched process for its exit.
#[inline(always)]
fn record(op: FileOpCode, dfd: i32, name: u64, dfd2: i32, name2: u64, open_flags: u32, fd: i32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // The cheapest test first: nothing else happens for unwatched processes.
    if !is_watched(tgid) || tgid == config_self_tgid() {
        return;
    }
    let pending = Pending {
        flags: PENDING_FILE,
        op: op as u32,
        dfd,
        dfd2,
        name,
        name2,
        open_flags,
        fd,
        ..Pending::default()
    };
    if PENDING.insert(pid_tgid, pending, 0).is_err() {
        count(Stat::MapFull, EventKind::File as u32);
    }
}

/// `open(filename, flags, mode)`
#[raw_tracepoint]
pub fn sys_enter_open(ctx: RawTracePointContext) -> u32 {
    let flags = syscall_arg(&ctx, 1) as u32;
    stash_open(AT_FDCWD, syscall_arg(&ctx, 0));
    record(
        FileOpCode::Open,
        AT_FDCWD,
        syscall_arg(&ctx, 0),
        0,
        0,
        flags,
        -1,
    );
    0
}

/// `openat(dfd, filename, flags, mode)`
#[raw_tracepoint]
pub fn sys_enter_openat(ctx: RawTracePointContext) -> u32 {
    let flags = syscall_arg(&ctx, 2) as u32;
    stash_open(syscall_arg(&ctx, 0) as i32, syscall_arg(&ctx, 1));
    record(
        FileOpCode::Open,
        syscall_arg(&ctx, 0) as i32,
        syscall_arg(&ctx, 1),
        0,
        0,
        flags,
        -1,
    );
    0
}

/// `openat2(dfd, filename, struct open_how *how, size)`
#[raw_tracepoint]
pub fn sys_enter_openat2(ctx: RawTracePointContext) -> u32 {
    // open_how.flags is the first u64 of the struct.
    let how = syscall_arg(&ctx, 2) as *const u64;
    let flags = unsafe { aya_ebpf::helpers::bpf_probe_read_user(how) }.unwrap_or(0) as u32;
    stash_open(syscall_arg(&ctx, 0) as i32, syscall_arg(&ctx, 1));
    record(
        FileOpCode::Open,
        syscall_arg(&ctx, 0) as i32,
        syscall_arg(&ctx, 1),
        0,
        0,
        flags,
        -1,
    );
    0
}

/// `creat(pathname, mode)`
#[raw_tracepoint]
pub fn sys_enter_creat(ctx: RawTracePointContext) -> u32 {
    let flags = O_CREAT | O_WRONLY | O_TRUNC;
    stash_open(AT_FDCWD, syscall_arg(&ctx, 0));
    record(
        FileOpCode::Open,
        AT_FDCWD,
        syscall_arg(&ctx, 0),
        0,
        0,
        flags,
        -1,
    );
    0
}

/// `rename(oldname, newname)`
#[raw_tracepoint]
pub fn sys_enter_rename(ctx: RawTracePointContext) -> u32 {
    let (old, new) = (syscall_arg(&ctx, 0), syscall_arg(&ctx, 1));
    record(FileOpCode::Rename, AT_FDCWD, old, AT_FDCWD, new, 0, -1);
    0
}

/// `renameat(olddfd, oldname, newdfd, newname)` and `renameat2(..., flags)`
#[raw_tracepoint]
pub fn sys_enter_renameat(ctx: RawTracePointContext) -> u32 {
    record(
        FileOpCode::Rename,
        syscall_arg(&ctx, 0) as i32,
        syscall_arg(&ctx, 1),
        syscall_arg(&ctx, 2) as i32,
        syscall_arg(&ctx, 3),
        0,
        -1,
    );
    0
}

/// `unlink(pathname)`, `rmdir(pathname)`
#[raw_tracepoint]
pub fn sys_enter_unlink(ctx: RawTracePointContext) -> u32 {
    record(
        FileOpCode::Unlink,
        AT_FDCWD,
        syscall_arg(&ctx, 0),
        0,
        0,
        0,
        -1,
    );
    0
}

/// `unlinkat(dfd, pathname, flag)`
#[raw_tracepoint]
pub fn sys_enter_unlinkat(ctx: RawTracePointContext) -> u32 {
    let dfd = syscall_arg(&ctx, 0) as i32;
    record(FileOpCode::Unlink, dfd, syscall_arg(&ctx, 1), 0, 0, 0, -1);
    0
}

/// `truncate(path, length)`
#[raw_tracepoint]
pub fn sys_enter_truncate(ctx: RawTracePointContext) -> u32 {
    record(
        FileOpCode::Truncate,
        AT_FDCWD,
        syscall_arg(&ctx, 0),
        0,
        0,
        0,
        -1,
    );
    0
}

/// `ftruncate(fd, length)`
#[raw_tracepoint]
pub fn sys_enter_ftruncate(ctx: RawTracePointContext) -> u32 {
    let fd = syscall_arg(&ctx, 0) as i32;
    record(FileOpCode::Truncate, AT_FDCWD, 0, 0, 0, 0, fd);
    0
}

/// `chmod(filename, mode)`
#[raw_tracepoint]
pub fn sys_enter_chmod(ctx: RawTracePointContext) -> u32 {
    let mode = syscall_arg(&ctx, 1) as u32;
    record(
        FileOpCode::Chmod,
        AT_FDCWD,
        syscall_arg(&ctx, 0),
        0,
        0,
        mode,
        -1,
    );
    0
}

/// `fchmodat(dfd, filename, mode)` and `fchmodat2(dfd, filename, mode, flags)`
#[raw_tracepoint]
pub fn sys_enter_fchmodat(ctx: RawTracePointContext) -> u32 {
    let mode = syscall_arg(&ctx, 2) as u32;
    let dfd = syscall_arg(&ctx, 0) as i32;
    record(FileOpCode::Chmod, dfd, syscall_arg(&ctx, 1), 0, 0, mode, -1);
    0
}

/// `fchmod(fd, mode)`
#[raw_tracepoint]
pub fn sys_enter_fchmod(ctx: RawTracePointContext) -> u32 {
    let mode = syscall_arg(&ctx, 1) as u32;
    record(
        FileOpCode::Chmod,
        AT_FDCWD,
        0,
        0,
        0,
        mode,
        syscall_arg(&ctx, 0) as i32,
    );
    0
}

/// Exit of open, openat, openat2 and creat.
/// Run by `syscalls::sys_exit_opens`.
#[inline(always)]
pub fn sys_exit_open(ctx: RawTracePointContext) -> u32 {
    crate::emit::gave_up(try_exit_open(&ctx), EventKind::File);
    0
}

fn try_exit_open(ctx: &RawTracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let ret = syscall_ret(ctx);
    let pending = unsafe { PENDING.get(pid_tgid).copied() };
    let task = Task(unsafe { bpf_get_current_task() } as *const u8);
    let Some(pending) = pending else {
        // Unwatched: only a successful open of a protected file matters.
        if ret < 0 || !config_protect() {
            return Ok(());
        }
        let tgid = (pid_tgid >> 32) as u32;
        if tgid == config_self_tgid() {
            return Ok(());
        }
        let file = task.file(ret)?;
        if !is_protected(file)? {
            return Ok(());
        }
        let open_flags = file_flags(file);
        return emit_file(
            task,
            pid_tgid,
            FileOpCode::Open,
            ret,
            open_flags,
            FILE_PROTECTED,
            Some(file),
            AT_FDCWD,
            0,
            false,
            KnownKey::default(),
        );
    };
    let _ = PENDING.remove(pid_tgid);
    if pending.flags & PENDING_FILE == 0 {
        return Ok(());
    }
    let file = if ret >= 0 { task.file(ret).ok() } else { None };
    let protected = match file {
        Some(file) if config_protect() => is_protected(file).unwrap_or(false),
        _ => false,
    };
    let flags = if protected { FILE_PROTECTED } else { 0 };
    // The same file opened the same way again: user space already judged it.
    let key = match file {
        Some(file) => open_key(pid_tgid, file, pending.open_flags),
        None => None,
    };
    if known(&key, EventKind::File as u32) {
        return Ok(());
    }
    emit_file(
        task,
        pid_tgid,
        FileOpCode::Open,
        ret,
        pending.open_flags,
        flags,
        file,
        pending.dfd,
        pending.name,
        true,
        key.unwrap_or_default(),
    )
}

/// The cache key of an open: the file's inode and the access asked for.
#[inline(always)]
fn open_key(pid_tgid: u64, file: *const u8, open_flags: u32) -> Option<KnownKey> {
    let inode = file_inode(file).ok()?;
    let ino: u64 = unsafe { read(inode, off!(inode_ino)) }.ok()?;
    let sb: *const u8 = unsafe { read(inode, off!(inode_sb)) }.ok()?;
    let dev: u32 = unsafe { read(sb, off!(sb_dev)) }.ok()?;
    let access = open_flags & (O_ACCMODE | O_CREAT | O_TRUNC);
    known_key((pid_tgid >> 32) as u32, KNOWN_OPEN, access, ino, dev as u64)
}

/// Exit of rename*, unlink*, rmdir, truncate, ftruncate, chmod, fchmod, fchmodat*.
#[raw_tracepoint]
pub fn sys_exit_file(ctx: RawTracePointContext) -> u32 {
    crate::emit::gave_up(try_exit_file(&ctx), EventKind::File);
    0
}

fn try_exit_file(ctx: &RawTracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(pending) = (unsafe { PENDING.get(pid_tgid).copied() }) else {
        return Ok(());
    };
    let _ = PENDING.remove(pid_tgid);
    if pending.flags & PENDING_FILE == 0 {
        return Ok(());
    }
    let ret = syscall_ret(ctx);
    let task = Task(unsafe { bpf_get_current_task() } as *const u8);
    // The ops the entry hooks file for this exit; an open has its own exit.
    let op = match FileOpCode::try_from(pending.op) {
        Ok(
            op @ (FileOpCode::Rename
            | FileOpCode::Unlink
            | FileOpCode::Truncate
            | FileOpCode::Chmod),
        ) => op,
        _ => return Ok(()),
    };
    // fd-based calls (ftruncate, fchmod): the file's own path.
    let file = if pending.fd >= 0 {
        task.file(pending.fd as i64).ok()
    } else {
        None
    };
    emit_file(
        task,
        pid_tgid,
        op,
        ret,
        pending.open_flags,
        0,
        file,
        pending.dfd,
        pending.name,
        true,
        KnownKey::default(),
    )?;
    if op == FileOpCode::Rename {
        emit_file(
            task,
            pid_tgid,
            FileOpCode::RenameTarget,
            ret,
            0,
            0,
            None,
            pending.dfd2,
            pending.name2,
            true,
            KnownKey::default(),
        )?;
    }
    Ok(())
}

/// Reserves and sends one file record. With `file`, its walked path; otherwise the base
/// directory (`dfd` or the cwd) walked plus the name at user address `name`.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "one record builder for every file syscall"
)]
fn emit_file(
    task: Task,
    pid_tgid: u64,
    op: FileOpCode,
    result: i64,
    open_flags: u32,
    flags: u32,
    file: Option<*const u8>,
    dfd: i32,
    name: u64,
    watched: bool,
    known: KnownKey,
) -> Result<(), i64> {
    let Some(mut entry) = crate::emit::reserve::<FileEvent>(EventKind::File, false) else {
        return Ok(());
    };
    // SAFETY (every `(*event)` below): a ring reservation of the event's size, owned by
    // this program until it submits it; fields are written before user space can read.
    let event = entry.as_mut_ptr();
    let tgid = (pid_tgid >> 32) as u32;
    let start_time = task.process_start_time().unwrap_or(0);
    unsafe {
        (*event).header = header(EventKind::File, tgid, pid_tgid as u32, start_time, watched);
        (*event).op = op as u32;
        (*event).flags = flags;
        (*event).open_flags = open_flags;
        (*event).result = result;
        (*event).path_len = 0;
        (*event).raw_len = 0;
        (*event)._pad = 0;
        (*event).known = known;
    }
    let complete = fill_paths(
        task,
        file,
        dfd,
        name,
        unsafe { &mut (*event).path },
        unsafe { &mut (*event).raw },
        unsafe { &mut (*event).path_len },
        unsafe { &mut (*event).raw_len },
        unsafe { &mut (*event).flags },
    );
    if !complete {
        entry.incomplete();
    }
    entry.submit();
    Ok(())
}

/// Fills the path fields of a file or device record; false when something could not be read.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "shared by file and device records"
)]
fn fill_paths(
    task: Task,
    file: Option<*const u8>,
    dfd: i32,
    name: u64,
    path: &mut [u8; PATH_CAP],
    raw: &mut [u8; PATH_CAP],
    path_len: &mut u32,
    raw_len: &mut u32,
    flags: &mut u32,
) -> bool {
    if let Some(file) = file {
        let Ok((mnt, dentry)) = file_path(file) else {
            return false;
        };
        return match write_path(path, mnt, dentry) {
            Ok((len, truncated)) => {
                *path_len = len;
                *flags |= FILE_RESOLVED;
                if truncated {
                    *flags |= FILE_PATH_TRUNCATED;
                }
                true
            }
            Err(_) => false,
        };
    }
    if name == 0 {
        return false;
    }
    let mut complete = true;
    match write_user_str(raw, name) {
        Ok((len, truncated)) => {
            *raw_len = len;
            if truncated {
                *flags |= FILE_RAW_TRUNCATED;
            }
        }
        Err(_) => return false,
    }
    // An absolute name needs no base directory.
    if raw[0] == b'/' {
        return true;
    }
    let base = if dfd == AT_FDCWD {
        task.pwd()
    } else {
        task.file(dfd as i64).and_then(file_path)
    };
    match base {
        Ok((mnt, dentry)) => match write_path(path, mnt, dentry) {
            Ok((len, truncated)) => {
                *path_len = len;
                if truncated {
                    *flags |= FILE_PATH_TRUNCATED;
                }
            }
            Err(_) => complete = false,
        },
        Err(_) => complete = false,
    }
    complete
}

/// Whether a file is protected: its name ends with a protected suffix, or one of its
/// directories (up to the root of its mount tree) is a protected directory. Inodes, not
/// names: symlinks, relative paths and renames of the directory do not get around it.
#[inline(always)]
fn is_protected(file: *const u8) -> Result<bool, i64> {
    let (vfsmount, dentry) = file_path(file)?;
    // The walk costs tens of kernel reads; a file opened again (the common case on a busy
    // host) is answered by one lookup. The key holds the dentry, its parent (a rename into a
    // protected directory changes it), its inode (a freed dentry reused for another file) and
    // the configuration epoch (a reload changes what is protected).
    let parent: u64 = unsafe { read(dentry, off!(dentry_parent))? };
    let inode: u64 = unsafe { read(dentry, off!(dentry_inode))? };
    let key = ProtKey {
        dentry: dentry as u64,
        parent,
        inode,
        epoch: GUARDS.get(guard_slot::EPOCH).copied().unwrap_or(0) as u64,
    };
    if let Some(&cached) = unsafe { PROTECTED_SEEN.get(key) } {
        return Ok(cached != 0);
    }
    let protected = walk_protected(vfsmount, dentry)?;
    // A failed insert only means the walk is done again next time (LRU: it evicts rather
    // than fails; counted all the same).
    crate::emit::inserted(
        PROTECTED_SEEN.insert(key, u32::from(protected), 0),
        EventKind::File,
    );
    Ok(protected)
}

#[inline(always)]
fn walk_protected(vfsmount: *const u8, mut dentry: *const u8) -> Result<bool, i64> {
    if has_protected_suffix(dentry)? {
        return Ok(true);
    }
    let mut mount = vfsmount.wrapping_sub(off!(mount_mnt));
    for _ in 0..24 {
        let inode: *const u8 = unsafe { read(dentry, off!(dentry_inode))? };
        if !inode.is_null() {
            let ino: u64 = unsafe { read(inode, off!(inode_ino))? };
            let sb: *const u8 = unsafe { read(inode, off!(inode_sb))? };
            let dev: u32 = unsafe { read(sb, off!(sb_dev))? };
            let key = InodeKey { dev, _pad: 0, ino };
            if unsafe { PROTECTED_DIRS.get(key).is_some() } {
                return Ok(true);
            }
        }
        let mnt = mount.wrapping_add(off!(mount_mnt));
        let mnt_root: *const u8 = unsafe { read(mnt, off!(vfsmount_root))? };
        if dentry == mnt_root {
            let parent: *const u8 = unsafe { read(mount, off!(mount_parent))? };
            if parent == mount {
                return Ok(false);
            }
            dentry = unsafe { read(mount, off!(mount_mountpoint))? };
            mount = parent;
            continue;
        }
        let parent: *const u8 = unsafe { read(dentry, off!(dentry_parent))? };
        if parent == dentry {
            return Ok(false);
        }
        dentry = parent;
    }
    Ok(false)
}

#[inline(always)]
fn has_protected_suffix(dentry: *const u8) -> Result<bool, i64> {
    let first = PROTECTED_SUFFIXES.get(0);
    if first.is_none_or(|s| s.len == 0) {
        return Ok(false);
    }
    let qstr = dentry.wrapping_add(off!(dentry_name));
    let name: *const u8 = unsafe { read(qstr, off!(qstr_name))? };
    let len = unsafe { read::<u32>(qstr, off!(qstr_len))? } as usize;
    if len < 2 {
        return Ok(false);
    }
    // The last SUFFIX_CAP bytes of the name (all of it when shorter), right-aligned.
    let take = if len < SUFFIX_CAP { len } else { SUFFIX_CAP };
    let mut tail = [0u8; SUFFIX_CAP];
    let ret = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            tail.as_mut_ptr() as *mut _,
            SUFFIX_CAP as u32,
            name.wrapping_add(len).wrapping_sub(SUFFIX_CAP) as *const _,
        )
    };
    // Reading before a short name is fine: the bytes before it are ignored below, and the
    // read is of kernel memory next to the name (a failure just means no match).
    if ret < 0 {
        return Ok(false);
    }
    for i in 0..SUFFIXES_MAX {
        let Some(suffix) = PROTECTED_SUFFIXES.get(i) else {
            break;
        };
        let n = suffix.len as usize;
        if n == 0 {
            break;
        }
        if n > take {
            continue;
        }
        let mut equal = true;
        for (j, (a, b)) in tail.iter().zip(suffix.bytes.iter()).enumerate() {
            if j >= SUFFIX_CAP - n && a != b {
                equal = false;
            }
        }
        if equal {
            return Ok(true);
        }
    }
    Ok(false)
}
