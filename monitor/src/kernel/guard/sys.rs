//! The fanotify system calls and the records they return, over `libc`.
//!
//! Two groups, because this kernel (6.18) still refuses `FAN_REPORT_DFID_NAME` together with
//! `FAN_CLASS_CONTENT` (`EINVAL`, checked at start-up):
//! - a content group (`FAN_CLASS_CONTENT`, unlimited queue, thread ids) for the permission
//!   events, answered by a dedicated thread;
//! - a notification group (`FAN_REPORT_DFID_NAME | FAN_REPORT_FID`) for directory-entry and
//!   attribute events, which only groups that report file handles receive.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

/// Opens of a guarded file, exec included: answered `FAN_ALLOW` or `FAN_DENY`.
pub const PERM_MASK: u64 = libc::FAN_OPEN_PERM | libc::FAN_OPEN_EXEC_PERM;
/// Changes to a guarded file through any path (hard links and bind mounts included).
pub const FILE_NOTIFY_MASK: u64 =
    libc::FAN_MODIFY | libc::FAN_ATTRIB | libc::FAN_DELETE_SELF | libc::FAN_MOVE_SELF;
/// Changes below a guarded directory: entries created, removed, moved; children changed.
pub const DIR_NOTIFY_MASK: u64 = libc::FAN_CREATE
    | libc::FAN_DELETE
    | libc::FAN_MOVED_FROM
    | libc::FAN_MOVED_TO
    | libc::FAN_MODIFY
    | libc::FAN_ATTRIB
    | libc::FAN_MOVE_SELF
    | libc::FAN_DELETE_SELF
    | libc::FAN_ONDIR
    | libc::FAN_EVENT_ON_CHILD;
/// The directory above a guarded root: the root moved away, replaced or removed.
pub const PARENT_NOTIFY_MASK: u64 = libc::FAN_CREATE
    | libc::FAN_DELETE
    | libc::FAN_MOVED_FROM
    | libc::FAN_MOVED_TO
    | libc::FAN_ONDIR;
/// A whole filesystem: new names appear (discovery for globs that match anywhere).
pub const DISCOVER_MASK: u64 = libc::FAN_CREATE | libc::FAN_MOVED_TO | libc::FAN_ONDIR;

/// A fanotify group.
pub struct Group {
    fd: OwnedFd,
}

impl Group {
    /// The group answering permission events: unlimited queue (an overflowing permission
    /// event would be allowed silently by the kernel), thread ids (the opening thread's
    /// syscall tells the open flags).
    pub fn content() -> io::Result<Group> {
        Self::init(
            libc::FAN_CLASS_CONTENT
                | libc::FAN_UNLIMITED_QUEUE
                | libc::FAN_REPORT_TID
                | libc::FAN_CLOEXEC,
        )
    }

    /// The group told about directory entries and attribute changes, with file handles and
    /// names; its queue is bounded and an overflow is reported (`FAN_Q_OVERFLOW`).
    pub fn notification() -> io::Result<Group> {
        Self::init(
            libc::FAN_CLASS_NOTIF
                | libc::FAN_REPORT_DFID_NAME
                | libc::FAN_REPORT_FID
                | libc::FAN_CLOEXEC,
        )
    }

    /// Whether this kernel takes file-handle reporting in a content group (one group would do).
    pub fn content_with_names_supported() -> bool {
        Self::init(libc::FAN_CLASS_CONTENT | libc::FAN_REPORT_DFID_NAME | libc::FAN_CLOEXEC).is_ok()
    }

    fn init(flags: libc::c_uint) -> io::Result<Group> {
        let event_flags = (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as libc::c_uint;
        // SAFETY: plain system call; the fd it returns is owned below.
        let fd = unsafe { libc::fanotify_init(flags, event_flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new fd that nothing else owns.
        Ok(Group {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Adds `mask` to the mark on `name` relative to `dir` (not following a last symlink).
    /// `name` is raw bytes: a name that is not UTF-8 is marked as it is on disk.
    pub fn mark(&self, dir: RawFd, name: &[u8], mask: u64, filesystem: bool) -> io::Result<()> {
        let mut flags = libc::FAN_MARK_ADD | libc::FAN_MARK_DONT_FOLLOW;
        if filesystem {
            flags |= libc::FAN_MARK_FILESYSTEM;
        }
        let name = CString::new(if name.is_empty() { &b"."[..] } else { name })
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: a valid fd and a NUL-terminated name.
        let rc =
            unsafe { libc::fanotify_mark(self.fd.as_raw_fd(), flags, mask, dir, name.as_ptr()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads whatever events wait (blocks until one does). `Ok(0)` never happens on a live
    /// group; `EINTR` is retried by the caller.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: writing into our own buffer of that length.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Answers a permission event.
    pub fn respond(&self, event_fd: RawFd, allow: bool) -> io::Result<()> {
        let response = libc::fanotify_response {
            fd: event_fd,
            response: if allow {
                libc::FAN_ALLOW
            } else {
                libc::FAN_DENY
            },
        };
        let size = std::mem::size_of::<libc::fanotify_response>();
        // SAFETY: writing a fully initialised fanotify_response.
        let n = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&response as *const libc::fanotify_response).cast(),
                size,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// One record from a group's read.
#[derive(Debug, Default, Clone)]
pub struct Record {
    pub mask: u64,
    /// The event's open file (permission events), or -1.
    pub fd: RawFd,
    /// Process (tgid) or, in the content group, thread that caused it.
    pub pid: i32,
    /// Directory-entry info: file system id, the directory's handle and the entry's name.
    pub dir: Option<(FsId, Vec<u8>, Vec<u8>)>,
    /// The object's own handle.
    pub object: Option<(FsId, Vec<u8>)>,
}

/// `__kernel_fsid_t` as two words.
pub type FsId = [i32; 2];

/// Splits a read buffer into records. A malformed record ends the parse (the rest of the
/// buffer cannot be trusted); the caller counts it.
pub fn parse(buf: &[u8]) -> (Vec<Record>, bool) {
    const META: usize = std::mem::size_of::<libc::fanotify_event_metadata>();
    let mut records = Vec::new();
    let mut at = 0;
    while buf.len() - at >= META {
        // SAFETY: at least META bytes remain; read_unaligned copies them out.
        let meta: libc::fanotify_event_metadata =
            unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
        let len = meta.event_len as usize;
        if meta.vers != libc::FANOTIFY_METADATA_VERSION || len < META || at + len > buf.len() {
            return (records, false);
        }
        let mut record = Record {
            mask: meta.mask,
            fd: meta.fd,
            pid: meta.pid,
            ..Record::default()
        };
        let mut info = at + meta.metadata_len as usize;
        while info + 4 <= at + len {
            let kind = buf[info];
            let info_len = u16::from_ne_bytes([buf[info + 2], buf[info + 3]]) as usize;
            if info_len < 4 || info + info_len > at + len {
                break;
            }
            let body = &buf[info + 4..info + info_len];
            if body.len() >= 16 {
                let fsid = [
                    i32::from_ne_bytes(body[0..4].try_into().unwrap_or_default()),
                    i32::from_ne_bytes(body[4..8].try_into().unwrap_or_default()),
                ];
                // struct file_handle: handle_bytes (u32), handle_type (i32), f_handle[].
                let bytes = u32::from_ne_bytes(body[8..12].try_into().unwrap_or_default()) as usize;
                let end = (16 + bytes).min(body.len());
                let handle = body[8..end].to_vec();
                match kind {
                    libc::FAN_EVENT_INFO_TYPE_DFID_NAME => {
                        let name = &body[end..];
                        let mut name = name.split(|b| *b == 0).next().unwrap_or_default().to_vec();
                        // The object itself (FAN_MOVE_SELF, FAN_DELETE_SELF on a directory).
                        if name == b"." {
                            name.clear();
                        }
                        record.dir = Some((fsid, handle, name));
                    }
                    libc::FAN_EVENT_INFO_TYPE_FID => record.object = Some((fsid, handle)),
                    libc::FAN_EVENT_INFO_TYPE_DFID => record.dir = Some((fsid, handle, Vec::new())),
                    _ => {}
                }
            }
            info += info_len;
        }
        records.push(record);
        at += len;
    }
    (records, true)
}

/// Opens a file handle as the kernel reported it (`struct file_handle` bytes), relative to
/// any fd on the same file system.
pub fn open_handle(mount_fd: RawFd, handle: &[u8], flags: libc::c_int) -> io::Result<OwnedFd> {
    // Aligned copy: struct file_handle starts with two 4-byte fields.
    let mut words = vec![0u32; handle.len().div_ceil(4).max(2)];
    // SAFETY: the destination holds at least handle.len() bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(
            handle.as_ptr(),
            words.as_mut_ptr().cast::<u8>(),
            handle.len(),
        )
    };
    // SAFETY: a file_handle laid out as the kernel gave it; the kernel reads handle_bytes.
    let fd = unsafe {
        libc::open_by_handle_at(mount_fd, words.as_mut_ptr().cast(), flags | libc::O_CLOEXEC)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `(st_dev, st_ino, is_dir)` of an open fd.
pub fn fstat(fd: RawFd) -> io::Result<(u64, u64, bool)> {
    // SAFETY: an all-zero stat is valid; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to our stat.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((
        st.st_dev,
        st.st_ino,
        st.st_mode & libc::S_IFMT == libc::S_IFDIR,
    ))
}

/// The file system id of an open fd (`statfs.f_fsid`), to match event handles to mounts.
pub fn fsid(fd: RawFd) -> io::Result<FsId> {
    // SAFETY: an all-zero statfs is valid; fstatfs fills it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to our statfs.
    if unsafe { libc::fstatfs(fd, &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: __fsid_t is two ints.
    Ok(unsafe { std::mem::transmute::<libc::fsid_t, FsId>(st.f_fsid) })
}

/// The path of an open fd as the kernel names it now (`/proc/self/fd`); `None` when it has
/// none the kernel can print (longer than a page, or deleted).
pub fn fd_path(fd: RawFd) -> Option<String> {
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
    let text = link.to_string_lossy().into_owned();
    (!text.ends_with(" (deleted)") && text.starts_with('/')).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as the kernel lays it out: metadata, then a DFID_NAME info record.
    #[test]
    fn parses_a_directory_entry_record() {
        let handle = [8u32.to_ne_bytes(), 1i32.to_ne_bytes()].concat();
        let mut info = Vec::new();
        info.push(libc::FAN_EVENT_INFO_TYPE_DFID_NAME);
        info.push(0);
        let body_len = 4 + 8 + handle.len() + 8 + b"model.bin\0".len();
        let padded = body_len.div_ceil(8) * 8;
        info.extend_from_slice(&(padded as u16).to_ne_bytes());
        info.extend_from_slice(&7i32.to_ne_bytes());
        info.extend_from_slice(&9i32.to_ne_bytes());
        info.extend_from_slice(&handle);
        info.extend_from_slice(&[0xaa; 8]);
        info.extend_from_slice(b"model.bin\0");
        info.resize(padded, 0);
        let meta_len = std::mem::size_of::<libc::fanotify_event_metadata>();
        let meta = libc::fanotify_event_metadata {
            event_len: (meta_len + info.len()) as u32,
            vers: libc::FANOTIFY_METADATA_VERSION,
            reserved: 0,
            metadata_len: meta_len as u16,
            mask: libc::FAN_CREATE,
            fd: libc::FAN_NOFD,
            pid: 42,
        };
        // SAFETY: viewing a plain C struct as bytes.
        let mut buf = unsafe {
            std::slice::from_raw_parts(
                (&meta as *const libc::fanotify_event_metadata).cast::<u8>(),
                meta_len,
            )
        }
        .to_vec();
        buf.extend_from_slice(&info);
        let (records, whole) = parse(&buf);
        assert!(whole);
        assert_eq!(records.len(), 1);
        let record = &records[0];
        assert_eq!(
            (record.mask, record.pid, record.fd),
            (libc::FAN_CREATE, 42, -1)
        );
        let (fsid, handle, name) = record.dir.clone().unwrap();
        assert_eq!(fsid, [7, 9]);
        assert_eq!(handle.len(), 16);
        assert_eq!(name, b"model.bin");
        // A record cut short is not trusted.
        assert!(!parse(&buf[..buf.len() - 4]).1);
    }
}
