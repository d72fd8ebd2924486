//! Where the configuration comes from, and noticing that it changed: SIGHUP, inotify on the
//! files it is made of (with a short debounce, so a burst of writes ends in one reload of the
//! last content), and a slow poll of their contents as a safety net.
//!
//! Only the files the configuration is made of count: the config file, the profile files,
//! and `*.yaml`/`*.yml` files in the profile directories it names. A log or a ready file
//! written next to a profile is not a change. Files replaced through a symlink swap, as
//! Kubernetes does for a mounted ConfigMap (`config.yaml -> ..data/config.yaml`, then
//! `..data` renamed over to point at a new directory), are followed.

use std::{
    collections::{HashMap, HashSet},
    ffi::{OsStr, OsString},
    hash::{Hash as _, Hasher as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Component, Path, PathBuf},
};

use tokio::io::unix::AsyncFd;
use tracing::{debug, warn};

use crate::config::{load_config, Config, Diagnostic};

/// `--config FILE` (or the built-in defaults) plus `--profiles DIR...`.
#[derive(Clone, Debug, Default)]
pub struct ConfigSource {
    pub path: Option<PathBuf>,
    pub extra_profiles: Vec<PathBuf>,
    /// `--allow-insecure-config`: files that users other than root may change are loaded
    /// anyway (with a warning and a `config-insecure` alert) instead of refused.
    pub allow_insecure: bool,
}

/// The content of every file a configuration was read from: (file, hash of its bytes, or
/// `None` when it cannot be read). Compared by content, not modification time, so that two
/// writes within one timestamp tick are still two versions.
pub type Fingerprint = Vec<(PathBuf, Option<u64>)>;

/// What a configuration is made of.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inputs {
    /// The config file and profile files.
    pub files: Vec<PathBuf>,
    /// Profile directories: their `*.yaml` / `*.yml` files (not hidden) are profiles.
    pub dirs: Vec<PathBuf>,
}

impl ConfigSource {
    /// Loads the configuration; files that users other than root may change are refused
    /// (one diagnostic each, with the fix) unless `allow_insecure`.
    pub fn load(&self) -> Result<Config, Vec<Diagnostic>> {
        let config = match &self.path {
            Some(path) => load_config(path)?,
            None => Config::builtin(),
        };
        let config = if self.extra_profiles.is_empty() {
            config
        } else {
            config.with_extra_profiles(&self.extra_profiles)?
        };
        if !self.allow_insecure {
            let insecure = self.insecure(&config);
            if !insecure.is_empty() {
                return Err(insecure.iter().map(|i| i.diagnostic()).collect());
            }
        }
        Ok(config)
    }

    /// Every file and directory `config` was read from.
    pub fn paths(&self, config: &Config) -> Vec<PathBuf> {
        let inputs = self.inputs(config);
        let mut paths = inputs.files;
        for dir in &inputs.dirs {
            paths.push(dir.clone());
            paths.extend(profile_files(dir));
        }
        paths.sort();
        paths.dedup();
        paths
    }

    /// The files and directories of `config` that users other than root may change.
    pub fn insecure(&self, config: &Config) -> Vec<crate::config::perms::Insecure> {
        crate::config::perms::check(&self.paths(config))
    }

    /// The files and directories `config` (the one in force) was read from.
    pub fn inputs(&self, config: &Config) -> Inputs {
        let mut inputs = Inputs::default();
        let mut named: Vec<PathBuf> = self.extra_profiles.clone();
        if let Some(path) = &self.path {
            inputs.files.push(path.clone());
            named.extend(crate::config::profile_paths(path));
        }
        for path in named {
            if path.is_dir() {
                inputs.dirs.push(path);
            } else {
                inputs.files.push(path);
            }
        }
        for profile in &config.profiles {
            if profile.location.file.is_absolute() {
                inputs.files.push(profile.location.file.clone());
            }
        }
        inputs.files.sort();
        inputs.files.dedup();
        inputs.dirs.sort();
        inputs.dirs.dedup();
        inputs
    }

    /// The contents `config` is made of now.
    pub fn fingerprint(&self, config: &Config) -> Fingerprint {
        let inputs = self.inputs(config);
        let mut files = inputs.files;
        for dir in &inputs.dirs {
            files.extend(profile_files(dir));
        }
        files.sort();
        files.dedup();
        files
            .into_iter()
            .map(|path| {
                let hash = std::fs::read(&path).ok().map(|bytes| {
                    let mut hasher = std::collections::hash_map::DefaultHasher::new();
                    bytes.hash(&mut hasher);
                    hasher.finish()
                });
                (path, hash)
            })
            .collect()
    }
}

/// The profile files of a directory, as the loader picks them.
fn profile_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| is_profile_name(p.file_name().unwrap_or_default()))
        .collect()
}

fn is_profile_name(name: &OsStr) -> bool {
    let name = name.as_bytes();
    !name.starts_with(b".") && (name.ends_with(b".yaml") || name.ends_with(b".yml"))
}

/// One watched directory and the entries in it that count.
#[derive(Debug, Default)]
struct WatchedDir {
    path: PathBuf,
    names: HashSet<OsString>,
    /// A profile directory: any profile file in it counts.
    profiles: bool,
}

impl WatchedDir {
    fn counts(&self, name: &OsStr) -> bool {
        self.names.contains(name) || (self.profiles && is_profile_name(name))
    }
}

/// inotify on the directories holding a configuration's inputs.
pub struct Watcher {
    fd: AsyncFd<OwnedFd>,
    /// Watch descriptor -> directory.
    watches: HashMap<i32, WatchedDir>,
}

/// What inotify reports that can change a file's content or which file a name points to.
const MASK: u32 = libc::IN_CLOSE_WRITE
    | libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_ONLYDIR;

impl Watcher {
    pub fn new() -> std::io::Result<Watcher> {
        // SAFETY: plain syscall; the fd is owned below.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the OwnedFd moves into the AsyncFd and stays open, the same fd, until the
        // AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register(fd) }?;
        Ok(Watcher {
            fd,
            watches: HashMap::new(),
        })
    }

    /// Watches what `inputs` needs (and stops watching what it no longer needs).
    pub fn arm(&mut self, inputs: &Inputs) {
        let mut wanted: HashMap<PathBuf, WatchedDir> = HashMap::new();
        let mut add = |dir: &Path, name: Option<&OsStr>, profiles: bool| {
            let entry = wanted
                .entry(dir.to_path_buf())
                .or_insert_with(|| WatchedDir {
                    path: dir.to_path_buf(),
                    ..WatchedDir::default()
                });
            if let Some(name) = name {
                entry.names.insert(name.to_owned());
            }
            entry.profiles |= profiles;
        };
        let mut files = inputs.files.clone();
        for dir in &inputs.dirs {
            add(dir, None, true);
            // The directory itself replaced or swapped.
            if let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) {
                add(parent, Some(name), false);
                if let Some(first) = relative_link_head(dir) {
                    add(parent, Some(&first), false);
                }
            }
            files.extend(profile_files(dir));
        }
        for file in &files {
            let (Some(parent), Some(name)) = (file.parent(), file.file_name()) else {
                continue;
            };
            add(parent, Some(name), false);
            // `config.yaml -> ..data/config.yaml`: a new `..data` is a new config.yaml.
            if let Some(first) = relative_link_head(file) {
                add(parent, Some(&first), false);
            }
            // Edits of the real file behind a symlink.
            if let Ok(real) = std::fs::canonicalize(file) {
                if real != *file {
                    if let (Some(parent), Some(name)) = (real.parent(), real.file_name()) {
                        add(parent, Some(name), false);
                    }
                }
            }
        }
        let mut watches = HashMap::new();
        for (path, dir) in wanted {
            let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
                continue;
            };
            // SAFETY: a valid fd and NUL-terminated path. Watching a directory again returns
            // its watch descriptor and replaces the mask.
            let wd = unsafe {
                libc::inotify_add_watch(self.fd.get_ref().as_raw_fd(), c_path.as_ptr(), MASK)
            };
            if wd < 0 {
                debug!(
                    "failed to watch {} for configuration changes: {}; the poll still sees them",
                    path.display(),
                    std::io::Error::last_os_error()
                );
                continue;
            }
            watches.insert(wd, dir);
        }
        for wd in self.watches.keys() {
            if !watches.contains_key(wd) {
                // SAFETY: a valid fd; an already gone watch only returns EINVAL.
                unsafe { libc::inotify_rm_watch(self.fd.get_ref().as_raw_fd(), *wd) };
            }
        }
        self.watches = watches;
        debug!(
            dirs = ?self.watches.values().map(|d| d.path.display().to_string()).collect::<Vec<_>>(),
            "watching the configuration's files"
        );
    }

    /// Waits for a change that counts; returns what changed, for the log.
    pub async fn changed(&mut self) -> std::io::Result<String> {
        // Made when there is something to read: the daemon's loop starts this future at every
        // turn and drops it unfinished, and a 64 KiB zeroed buffer at each was 4 % of its CPU
        // under a fork load.
        let mut buffer = Vec::new();
        loop {
            let mut guard = self.fd.readable().await?;
            if buffer.is_empty() {
                buffer = vec![0u8; 64 * 1024];
            }
            // SAFETY: reading into a buffer of the length given.
            let n = unsafe {
                libc::read(
                    guard.get_inner().as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                )
            };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::WouldBlock {
                    guard.clear_ready();
                    continue;
                }
                return Err(err);
            }
            if let Some(what) = self.relevant(&buffer[..n as usize]) {
                return Ok(what);
            }
        }
    }

    /// The first event in `bytes` that counts.
    fn relevant(&self, bytes: &[u8]) -> Option<String> {
        const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
        let mut found = None;
        let mut offset = 0;
        while offset + HEADER <= bytes.len() {
            // SAFETY: the kernel writes whole events; read_unaligned copes with any offset.
            let event: libc::inotify_event =
                unsafe { std::ptr::read_unaligned(bytes[offset..].as_ptr().cast()) };
            let name_bytes =
                &bytes[offset + HEADER..(offset + HEADER + event.len as usize).min(bytes.len())];
            let name = OsStr::from_bytes(name_bytes.split(|&b| b == 0).next().unwrap_or(&[]));
            offset += HEADER + event.len as usize;
            if found.is_some() {
                continue;
            }
            if event.mask & libc::IN_Q_OVERFLOW != 0 {
                warn!("too many file events to follow: reading the configuration again");
                found = Some("(event queue overflow)".to_owned());
                continue;
            }
            let Some(dir) = self.watches.get(&event.wd) else {
                continue;
            };
            if event.mask & (libc::IN_DELETE_SELF | libc::IN_MOVE_SELF) != 0 {
                found = Some(dir.path.display().to_string());
            } else if dir.counts(name) {
                found = Some(dir.path.join(name).display().to_string());
            }
        }
        found
    }
}

/// The first component of a symlink's relative target (`..data` for
/// `config.yaml -> ..data/config.yaml`).
fn relative_link_head(path: &Path) -> Option<OsString> {
    let target = std::fs::read_link(path).ok()?;
    match target.components().next()? {
        Component::Normal(first) => Some(first.to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("reload-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn fingerprint_follows_the_content_not_the_folder() {
        let dir = scratch("content");
        let profile = dir.join("p.yaml");
        std::fs::write(
            &profile,
            "name: p\nselector:\n  executables: [\"/usr/bin/p\"]\nallow:\n  exec: []\n",
        )
        .unwrap();
        let source = ConfigSource {
            path: None,
            extra_profiles: vec![dir.clone()],
            ..ConfigSource::default()
        };
        let config = source.load().unwrap();
        assert!(config.profile_by_name("p").is_some());
        let before = source.fingerprint(&config);
        // An unrelated file next to the profile is no change.
        std::fs::write(dir.join("server.log"), "x").unwrap();
        std::fs::write(dir.join(".ready"), "x").unwrap();
        assert_eq!(before, source.fingerprint(&config));
        // The same size and (likely) the same timestamp tick: still a change.
        std::fs::write(
            &profile,
            "name: p\nselector:\n  executables: [\"/usr/bin/q\"]\nallow:\n  exec: []\n",
        )
        .unwrap();
        let after = source.fingerprint(&config);
        // A new profile file in the directory is a change too.
        std::fs::write(dir.join("q.yml"), "name: q\n").unwrap();
        let added = source.fingerprint(&config);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_ne!(before, after);
        assert_ne!(after, added);
    }

    #[tokio::test]
    async fn only_the_inputs_wake_the_watcher() {
        let dir = scratch("watch");
        let profiles = dir.join("profiles");
        std::fs::create_dir_all(&profiles).unwrap();
        let config = dir.join("config.yaml");
        std::fs::write(&config, "profiles: [profiles]\n").unwrap();
        let source = ConfigSource {
            path: Some(config.clone()),
            extra_profiles: Vec::new(),
            ..ConfigSource::default()
        };
        let loaded = source.load().unwrap();
        let inputs = source.inputs(&loaded);
        assert_eq!(inputs.files, std::slice::from_ref(&config));
        assert_eq!(inputs.dirs, std::slice::from_ref(&profiles));
        let mut watcher = Watcher::new().unwrap();
        watcher.arm(&inputs);
        std::fs::write(profiles.join("server.log"), "x").unwrap();
        std::fs::write(dir.join("ready"), "x").unwrap();
        let woke =
            tokio::time::timeout(std::time::Duration::from_millis(200), watcher.changed()).await;
        assert!(
            woke.is_err(),
            "an unrelated file woke the watcher: {woke:?}"
        );
        std::fs::write(profiles.join("p.yaml"), "name: p\n").unwrap();
        let what = watcher.changed().await.unwrap();
        assert!(what.ends_with("p.yaml"), "{what}");
        std::fs::write(&config, "profiles: [profiles]\n").unwrap();
        let what = watcher.changed().await.unwrap();
        assert!(what.ends_with("config.yaml"), "{what}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_configmap_symlink_swap_wakes_the_watcher() {
        use std::os::unix::fs::symlink;
        let dir = scratch("configmap");
        std::fs::create_dir_all(dir.join("..v1")).unwrap();
        std::fs::write(dir.join("..v1/config.yaml"), "dedup_window_secs: 1\n").unwrap();
        symlink("..v1", dir.join("..data")).unwrap();
        symlink("..data/config.yaml", dir.join("config.yaml")).unwrap();
        let source = ConfigSource {
            path: Some(dir.join("config.yaml")),
            extra_profiles: Vec::new(),
            ..ConfigSource::default()
        };
        let loaded = source.load().unwrap();
        let before = source.fingerprint(&loaded);
        let mut watcher = Watcher::new().unwrap();
        watcher.arm(&source.inputs(&loaded));
        // What the kubelet does: a new directory, a new link, renamed over `..data`.
        std::fs::create_dir_all(dir.join("..v2")).unwrap();
        std::fs::write(dir.join("..v2/config.yaml"), "dedup_window_secs: 2\n").unwrap();
        symlink("..v2", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        let what = tokio::time::timeout(std::time::Duration::from_secs(2), watcher.changed())
            .await
            .expect("the swap woke nothing")
            .unwrap();
        assert!(what.contains("..data") || what.contains("..v1"), "{what}");
        assert_ne!(before, source.fingerprint(&loaded));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
