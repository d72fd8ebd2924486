//! Which inodes are guarded, and the fanotify marks that keep them so.
//!
//! Each guard glob has a root: the deepest directory without wildcards (`/models` for
//! `/models/**`, `/data` for `/data/**/*.gguf`). The root's tree is walked with directory
//! fds (`openat`), so depth and path length are not limited by `PATH_MAX` or a kernel
//! buffer. Every guarded file gets an inode mark in both groups (so an open or a change
//! through a hard link, a bind mount or io_uring is seen); every directory of the tree gets
//! a notification mark (new, removed and moved entries) and, when the glob takes the whole
//! tree (`/models/**`), a permission mark on its children too (a file created a moment ago
//! is guarded before its own mark is in); the root's parent is watched for the root being
//! moved away or replaced.

use std::{
    collections::HashMap,
    ffi::{CStr, CString},
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use tracing::{debug, warn};

use super::sys::{
    self, FsId, Group, DIR_NOTIFY_MASK, FILE_NOTIFY_MASK, PARENT_NOTIFY_MASK, PERM_MASK,
};
use crate::config::Config;

/// Most entries one walk visits; past it the rest of the tree is not guarded (logged).
pub const WALK_BUDGET: usize = 2_000_000;

/// An inode by `(st_dev, st_ino)`.
pub type InodeId = (u64, u64);

/// What the guard subsystem knows of a marked inode.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Its path when it was marked (the kernel's name for it may have changed since).
    pub path: String,
    /// Indices into `config.guards.protected_paths` that cover it (for a directory: the
    /// guards its new children fall under, decided per name).
    pub guards: Vec<u32>,
    pub dir: bool,
}

/// A guard root and how it is followed.
#[derive(Clone, Debug)]
pub struct Root {
    pub path: String,
    /// The inode marked as this root, once it exists.
    pub inode: Option<InodeId>,
}

/// Marked inodes and roots.
#[derive(Default)]
pub struct Table {
    pub inodes: HashMap<InodeId, Entry>,
    /// Parents of roots: directory inode -> (name of the root in it, root path).
    pub parents: HashMap<InodeId, Vec<(Vec<u8>, String)>>,
    pub roots: Vec<Root>,
}

/// A glob's root directory and whether the glob takes that whole tree (`root/**`).
/// `None` for globs that match anywhere (`**/x`): they need discovery, not a tree.
pub fn glob_root(pattern: &str) -> Option<(String, bool)> {
    if pattern.starts_with("**") || !pattern.starts_with('/') {
        return None;
    }
    let wild = pattern.find(['*', '?', '[']).unwrap_or(pattern.len());
    let literal = &pattern[..wild];
    if wild == pattern.len() {
        // A literal path: the file itself (its directory is the root to watch).
        let dir = match literal.rfind('/') {
            Some(0) => "/".to_owned(),
            Some(i) => literal[..i].to_owned(),
            None => return None,
        };
        return Some((dir, false));
    }
    let dir = match literal.rfind('/') {
        Some(0) => "/".to_owned(),
        Some(i) => literal[..i].to_owned(),
        None => return None,
    };
    let whole = pattern.len() == dir.len() + 3 && pattern.ends_with("/**");
    Some((dir, whole))
}

/// Guards covering `path` (by their globs).
pub fn covering(config: &Config, path: &str) -> Vec<u32> {
    config
        .guards
        .protected_paths
        .iter()
        .enumerate()
        .filter(|(_, g)| g.covers(path))
        .map(|(i, _)| i as u32)
        .collect()
}

/// Guards that take every file below `dir` (a `root/**` glob with `root` at or above it).
pub fn whole_tree(config: &Config, dir: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for (i, guard) in config.guards.protected_paths.iter().enumerate() {
        for glob in &guard.paths {
            if let Some((root, true)) = glob_root(glob.as_str()) {
                let inside = dir == root
                    || root == "/"
                    || (dir.starts_with(&root) && dir.as_bytes().get(root.len()) == Some(&b'/'));
                if inside && !out.contains(&(i as u32)) {
                    out.push(i as u32);
                }
            }
        }
    }
    out
}

/// Whether `dir` can hold a path some guard covers (so its tree is worth walking).
pub fn may_hold(config: &Config, dir: &str) -> bool {
    config.guards.protected_paths.iter().any(|g| {
        g.paths.iter().any(|glob| match glob_root(glob.as_str()) {
            Some((root, _)) => {
                root == "/"
                    || dir == root
                    || (dir.starts_with(&root) && dir.as_bytes().get(root.len()) == Some(&b'/'))
            }
            None => true,
        })
    })
}

/// Opens `name` in `dir` without following a last symlink.
pub fn open_at(dir: RawFd, name: &[u8], flags: libc::c_int) -> io::Result<OwnedFd> {
    let name = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid fd and NUL-terminated name; the fd returned is owned below.
    let fd = unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `(name, is_dir, is_file)` of each entry of an open directory.
pub fn entries(dir: RawFd) -> io::Result<Vec<(Vec<u8>, bool, bool)>> {
    // SAFETY: dup of a valid fd; fdopendir takes ownership of the copy.
    let copy = unsafe { libc::fcntl(dir, libc::F_DUPFD_CLOEXEC, 0) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd of a directory; closed by closedir.
    let stream = unsafe { libc::fdopendir(copy) };
    if stream.is_null() {
        let err = io::Error::last_os_error();
        // SAFETY: fdopendir failed and did not take the fd.
        unsafe { libc::close(copy) };
        return Err(err);
    }
    // SAFETY: rewind the shared offset: the directory may have been read before.
    unsafe { libc::rewinddir(stream) };
    let mut out = Vec::new();
    loop {
        // SAFETY: a valid stream; the entry is read before the next call.
        let entry = unsafe { libc::readdir64(stream) };
        if entry.is_null() {
            break;
        }
        // SAFETY: readdir returned a valid entry with a NUL-terminated name.
        let (name, kind) = unsafe {
            (
                CStr::from_ptr((*entry).d_name.as_ptr()).to_bytes().to_vec(),
                (*entry).d_type,
            )
        };
        if name == b"." || name == b".." {
            continue;
        }
        let (is_dir, is_file) = match kind {
            libc::DT_DIR => (true, false),
            libc::DT_REG => (false, true),
            libc::DT_UNKNOWN => {
                // SAFETY: an all-zero stat is valid; fstatat fills it.
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                let c = CString::new(name.clone()).unwrap_or_default();
                // SAFETY: valid fd, name and stat pointer.
                let rc =
                    unsafe { libc::fstatat(dir, c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
                let fmt = st.st_mode & libc::S_IFMT;
                (
                    rc == 0 && fmt == libc::S_IFDIR,
                    rc == 0 && fmt == libc::S_IFREG,
                )
            }
            _ => (false, false),
        };
        out.push((name, is_dir, is_file));
    }
    // SAFETY: closes the stream and its fd.
    unsafe { libc::closedir(stream) };
    Ok(out)
}

pub fn join(dir: &str, name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// Marks what a configuration guards and records it.
pub struct Marker<'a> {
    pub config: &'a Config,
    pub content: &'a Group,
    pub notify: &'a Group,
    /// One open directory per file system, for `open_by_handle_at`.
    pub mounts: &'a mut HashMap<FsId, OwnedFd>,
    pub table: &'a std::sync::RwLock<Table>,
    /// Marks that failed (logged once each walk).
    pub failures: usize,
}

impl Marker<'_> {
    /// Marks one inode in both groups, named by `name` in `dir` ("" for `dir` itself).
    fn mark(&mut self, dir: RawFd, name: &[u8], perm: u64, notify: u64) -> bool {
        let mut ok = true;
        if perm != 0 {
            if let Err(err) = self.content.mark(dir, name, perm, false) {
                self.failure(&String::from_utf8_lossy(name), &err);
                ok = false;
            }
        }
        if notify != 0 {
            if let Err(err) = self.notify.mark(dir, name, notify, false) {
                self.failure(&String::from_utf8_lossy(name), &err);
                ok = false;
            }
        }
        ok
    }

    fn failure(&mut self, name: &str, err: &io::Error) {
        self.failures += 1;
        if self.failures <= 3 {
            warn!("failed to mark {name} for fanotify: {err}; it is not guarded");
        }
    }

    fn remember_mount(&mut self, fd: &OwnedFd) {
        if let Ok(fsid) = sys::fsid(fd.as_raw_fd()) {
            if let (std::collections::hash_map::Entry::Vacant(slot), Ok(copy)) =
                (self.mounts.entry(fsid), fd.try_clone())
            {
                slot.insert(copy);
            }
        }
    }

    /// Marks a root (when it exists) and its parent, then its tree.
    pub fn mark_root(&mut self, root: &str) {
        let parent_path = match root.rfind('/') {
            Some(0) => "/",
            Some(i) => &root[..i],
            None => return,
        };
        let name = root
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .as_bytes()
            .to_vec();
        if let Ok(parent) = std::fs::File::open(parent_path) {
            let parent = OwnedFd::from(parent);
            if root != "/" && self.mark(parent.as_raw_fd(), b"", 0, PARENT_NOTIFY_MASK) {
                if let Ok((dev, ino, _)) = sys::fstat(parent.as_raw_fd()) {
                    let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
                    let list = table.parents.entry((dev, ino)).or_default();
                    if !list.iter().any(|(n, r)| *n == name && r == root) {
                        list.push((name.clone(), root.to_owned()));
                    }
                }
            }
            self.remember_mount(&parent);
        }
        let Ok(dir) = std::fs::File::open(root) else {
            debug!("guard root {root} does not exist yet: followed when it appears");
            let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
            if !table.roots.iter().any(|r| r.path == root) {
                table.roots.push(Root {
                    path: root.to_owned(),
                    inode: None,
                });
            }
            return;
        };
        let dir = OwnedFd::from(dir);
        let Ok((dev, ino, true)) = sys::fstat(dir.as_raw_fd()) else {
            return;
        };
        {
            let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
            if let Some(r) = table.roots.iter_mut().find(|r| r.path == root) {
                r.inode = Some((dev, ino));
            } else {
                table.roots.push(Root {
                    path: root.to_owned(),
                    inode: Some((dev, ino)),
                });
            }
        }
        self.remember_mount(&dir);
        self.mark_tree(dir, root.to_owned());
    }

    /// Marks a directory (open as `dir`, named `path`) and everything below it.
    pub fn mark_tree(&mut self, dir: OwnedFd, path: String) {
        let mut stack = vec![(dir, path)];
        let mut visited = 0usize;
        while let Some((dir, path)) = stack.pop() {
            let fd = dir.as_raw_fd();
            let tree = whole_tree(self.config, &path);
            let perm = if tree.is_empty() {
                0
            } else {
                PERM_MASK | libc::FAN_EVENT_ON_CHILD
            };
            if !self.mark(fd, b"", perm, DIR_NOTIFY_MASK) {
                continue;
            }
            if let Ok((dev, ino, _)) = sys::fstat(fd) {
                let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
                table.inodes.insert(
                    (dev, ino),
                    Entry {
                        path: path.clone(),
                        guards: tree,
                        dir: true,
                    },
                );
            }
            let Ok(list) = entries(fd) else {
                continue;
            };
            for (name, is_dir, is_file) in list {
                visited += 1;
                if visited > WALK_BUDGET {
                    warn!("guard tree {path}: more than {WALK_BUDGET} entries; the rest is not guarded");
                    return;
                }
                let child = join(&path, &name);
                if is_dir {
                    if !may_hold(self.config, &child) {
                        continue;
                    }
                    if let Ok(sub) = open_at(fd, &name, libc::O_RDONLY | libc::O_DIRECTORY) {
                        stack.push((sub, child));
                    }
                } else if is_file {
                    self.mark_file(fd, &name, &child);
                }
            }
        }
    }

    /// Marks one file (`name` in `dir`) when a guard covers its path.
    pub fn mark_file(&mut self, dir: RawFd, name: &[u8], path: &str) -> bool {
        let guards = covering(self.config, path);
        if guards.is_empty() {
            return false;
        }
        if !self.mark(dir, name, PERM_MASK, FILE_NOTIFY_MASK) {
            return false;
        }
        // SAFETY: an all-zero stat is valid; fstatat fills it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let c = CString::new(name).unwrap_or_default();
        // SAFETY: valid fd, name and stat pointer.
        if unsafe { libc::fstatat(dir, c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } == 0 {
            let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
            table.inodes.insert(
                (st.st_dev, st.st_ino),
                Entry {
                    path: path.to_owned(),
                    guards,
                    dir: false,
                },
            );
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_roots() {
        assert_eq!(glob_root("/models/**"), Some(("/models".into(), true)));
        assert_eq!(glob_root("/data/**/*.gguf"), Some(("/data".into(), false)));
        assert_eq!(
            glob_root("/srv/m/weights.bin"),
            Some(("/srv/m".into(), false))
        );
        assert_eq!(glob_root("**/*.safetensors"), None);
        assert_eq!(glob_root("**/.cache/huggingface/hub/**"), None);
    }

    #[test]
    fn whole_trees_and_what_may_hold_a_match() {
        let config = Config::builtin();
        assert!(!whole_tree(&config, "/models/llama").is_empty());
        assert!(!whole_tree(&config, "/models").is_empty());
        assert!(whole_tree(&config, "/modelsx").is_empty());
        assert!(
            may_hold(&config, "/anything"),
            "anywhere globs may match below any dir"
        );
        assert_eq!(join("/a", b"b"), "/a/b");
        assert_eq!(join("/", b"b"), "/b");
    }
}
