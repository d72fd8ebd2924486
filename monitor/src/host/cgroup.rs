//! The cgroup v2 hierarchy: where it is mounted, and the path of a cgroup id.
//!
//! The kernel programs report `bpf_get_current_cgroup_id()`, which is the inode number
//! of the cgroup's directory in the cgroup2 file system (`cgroup_id()` returns the
//! kernfs node id, which is the inode number where `ino_t` is 64 bits wide:
//! <https://elixir.bootlin.com/linux/v6.8/source/include/linux/kernfs.h>). Rules and
//! container lookup want the path, so user space maps one to the other by walking the
//! mounted tree.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long an id that a walk did not find is answered `None` without walking again.
/// Ids come from live events, so an unknown one is mostly a cgroup removed before the
/// walk; walking per event for those would cost a tree walk per event.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// The shortest time between two walks caused by misses: a storm of distinct unknown
/// ids costs at most one walk per interval. A miss inside the interval is not
/// remembered as negative, so the next event with that id walks again.
const MIN_WALK_INTERVAL: Duration = Duration::from_millis(100);

/// Deepest directory level walked below the root; the kernel's own default limit
/// (`cgroup.max.depth`) is unlimited, so the walk bounds itself.
const MAX_DEPTH: usize = 32;

/// Most negative entries remembered; past it they are all forgotten at once, which
/// only costs walks that the rate limit still bounds.
const MAX_NEGATIVE: usize = 65_536;

/// The mount point of the cgroup v2 hierarchy, read from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> io::Result<PathBuf> {
    parse_mountinfo_cgroup2(&read_mountinfo()?).ok_or_else(no_cgroup2)
}

/// `CGROUP2_SUPER_MAGIC` from `<linux/magic.h>`.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Checks that `path` is a directory of the cgroup v2 file system, which is what the
/// kernel's cgroup programs attach to. A directory of a v1 controller, or an ordinary
/// one, is refused by the kernel with a bare EBADF; this says what to give instead.
pub fn check_cgroup2_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    // SAFETY: statfs writes into the zeroed struct it is given and reads a valid C string.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        let err = io::Error::last_os_error();
        return Err(io::Error::new(
            err.kind(),
            format!("failed to open cgroup {}: {err}", path.display()),
        ));
    }
    if stat.f_type as i64 == CGROUP2_SUPER_MAGIC {
        return Ok(());
    }
    let hint = match cgroup2_mount() {
        Ok(mount) => format!(
            "give a directory under the cgroup v2 mount {} (create one with `mkdir`)",
            mount.display()
        ),
        Err(err) => format!("{err}"),
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "cgroup {} is not a cgroup v2 directory (a cgroup v1 controller or an ordinary directory); {hint}",
            path.display()
        ),
    ))
}

/// A cgroup2 mount: where it is, and which cgroup of the hierarchy it shows.
struct Cgroup2Mount {
    mount_point: PathBuf,
    /// The cgroup shown at the mount point, as a path from the root of this process's
    /// cgroup namespace: `/` unless a sub-tree was mounted or bind-mounted.
    root: String,
}

fn find_cgroup2() -> io::Result<Cgroup2Mount> {
    parse_mountinfo_cgroup2_mount(&read_mountinfo()?).ok_or_else(no_cgroup2)
}

fn read_mountinfo() -> io::Result<String> {
    fs::read_to_string("/proc/self/mountinfo").map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("failed to read /proc/self/mountinfo: {e}"),
        )
    })
}

fn no_cgroup2() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        "failed to find a cgroup2 mount in /proc/self/mountinfo: mount one with \
         `mount -t cgroup2 none /sys/fs/cgroup`",
    )
}

/// The mount point of the first cgroup2 file system in the text of
/// `/proc/self/mountinfo`, preferring one that shows the whole hierarchy.
fn parse_mountinfo_cgroup2(text: &str) -> Option<PathBuf> {
    parse_mountinfo_cgroup2_mount(text).map(|mount| mount.mount_point)
}

fn parse_mountinfo_cgroup2_mount(text: &str) -> Option<Cgroup2Mount> {
    let mut first = None;
    for line in text.lines() {
        // `36 35 98:0 /root /mnt/point rw,noatime master:1 - cgroup2 cgroup2 rw`:
        // the optional fields before the lone `-` vary in number, so the file system
        // type is found after the separator, not at a fixed index.
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        let Some(separator) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if separator < 5 || fields.get(separator + 1) != Some(&"cgroup2") {
            continue;
        }
        let root = unescape(fields[3]);
        let mount = Cgroup2Mount {
            mount_point: PathBuf::from(OsString::from_vec(unescape(fields[4]))),
            root: String::from_utf8_lossy(&root).into_owned(),
        };
        if mount.root == "/" {
            return Some(mount);
        }
        first.get_or_insert(mount);
    }
    first
}

/// Undoes the octal escapes (`\040` for a space, `\011`, `\012`, `\134`) with which
/// the kernel writes white space and backslashes in mountinfo paths.
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && is_octal_escape(&bytes[i + 1..i + 4]) {
            let digits = &bytes[i + 1..i + 4];
            let value = digits
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            // Three octal digits reach 0o777; only byte values are meaningful.
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

fn is_octal_escape(digits: &[u8]) -> bool {
    digits.len() == 3 && digits.iter().all(|d| (b'0'..=b'7').contains(d))
}

/// The cgroup id of a cgroup directory: its inode number.
pub fn id_of(path: impl AsRef<Path>) -> io::Result<u64> {
    let path = path.as_ref();
    fs::symlink_metadata(path)
        .map(|metadata| metadata.ino())
        .map_err(|e| io::Error::new(e.kind(), format!("failed to stat {}: {e}", path.display())))
}

/// Maps cgroup ids to cgroup paths (`/` for the root, `/system.slice/foo.service`
/// below it, as in `/proc/PID/cgroup`), caching what one walk of the tree found.
#[derive(Debug)]
pub struct CgroupResolver {
    root: PathBuf,
    /// Prepended to paths below `root`: the cgroup that `root` shows, empty for `/`.
    prefix: String,
    paths: HashMap<u64, String>,
    /// Ids a walk did not find, with the time of that walk.
    missing: HashMap<u64, Instant>,
    last_walk: Option<Instant>,
    walks: u64,
}

impl CgroupResolver {
    /// A resolver for the cgroup2 hierarchy mounted on this host.
    pub fn new() -> io::Result<Self> {
        let mount = find_cgroup2()?;
        let mut resolver = Self::with_root(mount.mount_point);
        if mount.root != "/" {
            resolver.prefix = mount.root;
        }
        Ok(resolver)
    }

    /// A resolver for the tree below `root`, whose paths start at `/`.
    pub fn with_root(root: PathBuf) -> Self {
        Self {
            root,
            prefix: String::new(),
            paths: HashMap::new(),
            missing: HashMap::new(),
            last_walk: None,
            walks: 0,
        }
    }

    /// The directory this resolver walks.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How many times the tree was walked, for metrics and tests.
    pub fn walks(&self) -> u64 {
        self.walks
    }

    /// The path of cgroup `id`, or `None` when no cgroup of the tree has that id.
    pub fn path(&mut self, id: u64) -> Option<String> {
        self.path_at(id, Instant::now())
    }

    fn path_at(&mut self, id: u64, now: Instant) -> Option<String> {
        if let Some(path) = self.paths.get(&id) {
            return Some(path.clone());
        }
        if let Some(seen) = self.missing.get(&id) {
            if now.saturating_duration_since(*seen) < NEGATIVE_TTL {
                return None;
            }
        }
        if let Some(last) = self.last_walk {
            if now.saturating_duration_since(last) < MIN_WALK_INTERVAL {
                return None;
            }
        }
        self.refresh(now);
        match self.paths.get(&id) {
            Some(path) => Some(path.clone()),
            None => {
                if self.missing.len() >= MAX_NEGATIVE {
                    self.missing.clear();
                }
                self.missing.insert(id, now);
                None
            }
        }
    }

    /// Replaces the cache with what one walk of the tree finds now. Cgroup ids are not
    /// reused while the system runs, so dropping removed cgroups only saves memory.
    fn refresh(&mut self, now: Instant) {
        self.walks += 1;
        self.last_walk = Some(now);
        self.missing
            .retain(|_, seen| now.saturating_duration_since(*seen) < NEGATIVE_TTL);
        let mut paths = HashMap::with_capacity(self.paths.len());
        let root_path = if self.prefix.is_empty() {
            "/".to_owned()
        } else {
            self.prefix.clone()
        };
        match id_of(&self.root) {
            Ok(id) => {
                paths.insert(id, root_path);
            }
            Err(e) => {
                tracing::debug!("failed to walk the cgroup tree: {e}");
                return;
            }
        }
        let mut stack = vec![(self.root.clone(), self.prefix.clone(), 0usize)];
        while let Some((dir, path, depth)) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                // Removed between being listed and being read.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    tracing::debug!("failed to read cgroup directory {}: {e}", dir.display());
                    continue;
                }
            };
            for entry in entries {
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(e) => {
                        tracing::debug!("failed to read cgroup directory {}: {e}", dir.display());
                        break;
                    }
                };
                // `DirEntry::file_type` and `metadata` do not follow symbolic links.
                match entry.file_type() {
                    Ok(kind) if kind.is_dir() => {}
                    _ => continue,
                }
                let id = match entry.metadata() {
                    Ok(metadata) => metadata.ino(),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        tracing::debug!("failed to stat {}: {e}", entry.path().display());
                        continue;
                    }
                };
                // Cgroup names are UTF-8 in practice; a name that is not would not
                // match `/proc/PID/cgroup` either way.
                let child = format!("{path}/{}", entry.file_name().to_string_lossy());
                if depth + 1 < MAX_DEPTH {
                    stack.push((entry.path(), child.clone(), depth + 1));
                }
                paths.insert(id, child);
            }
        }
        self.paths = paths;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    /// A directory removed, with everything below it, when the test ends or panics.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(parent: &Path, tag: &str) -> io::Result<Self> {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let path = parent.join(format!("monitor-test-{tag}-{}-{nanos}", std::process::id()));
            fs::create_dir(&path)?;
            Ok(Self(path))
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            // A cgroup directory cannot be removed recursively: cgroupfs refuses to
            // unlink its control files, so child cgroups go first with `rmdir`.
            remove_dirs(&self.0);
        }
    }

    fn remove_dirs(dir: &Path) {
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_dirs(&entry.path());
                }
            }
        }
        if fs::remove_dir(dir).is_err() {
            let _ = fs::remove_dir_all(dir);
        }
    }

    #[test]
    fn an_ordinary_directory_is_refused_as_a_cgroup_with_the_fix() {
        let dir = std::env::temp_dir();
        let err = check_cgroup2_dir(&dir).unwrap_err().to_string();
        assert!(err.contains("is not a cgroup v2 directory"), "{err}");
        if let Ok(mount) = cgroup2_mount() {
            assert!(err.contains(&mount.display().to_string()), "{err}");
            check_cgroup2_dir(&mount).unwrap();
        }
        let missing = check_cgroup2_dir(Path::new("/nonexistent/cgroup")).unwrap_err();
        assert!(
            missing.to_string().contains("failed to open cgroup"),
            "{missing}"
        );
    }

    #[test]
    fn mountinfo_finds_cgroup2() {
        let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
";
        assert_eq!(
            parse_mountinfo_cgroup2(text),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn mountinfo_without_optional_fields() {
        let text = "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_mountinfo_cgroup2(text),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn mountinfo_escaped_spaces() {
        let text = "50 24 0:30 / /mnt/my\\040cgroup\\134dir rw - cgroup2 none rw\n";
        assert_eq!(
            parse_mountinfo_cgroup2(text),
            Some(PathBuf::from("/mnt/my cgroup\\dir"))
        );
    }

    #[test]
    fn mountinfo_prefers_whole_hierarchy() {
        let text = "\
60 24 0:30 /system.slice /mnt/sub rw - cgroup2 cgroup2 rw
61 24 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
";
        assert_eq!(
            parse_mountinfo_cgroup2(text),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let only_sub = "60 24 0:30 /system.slice /mnt/sub rw - cgroup2 cgroup2 rw\n";
        let mount = parse_mountinfo_cgroup2_mount(only_sub);
        assert_eq!(
            mount.as_ref().map(|m| m.root.as_str()),
            Some("/system.slice")
        );
    }

    #[test]
    fn mountinfo_without_cgroup2() {
        let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /cgroup2 rw,relatime - cgroup cgroup rw,cpu
garbage
";
        assert_eq!(parse_mountinfo_cgroup2(text), None);
        assert_eq!(parse_mountinfo_cgroup2(""), None);
    }

    #[test]
    fn unescape_leaves_other_backslashes() {
        assert_eq!(unescape("a\\b\\04"), b"a\\b\\04".to_vec());
        assert_eq!(unescape("\\011x\\012"), b"\tx\n".to_vec());
    }

    #[test]
    fn resolver_walks_plain_directories() -> io::Result<()> {
        let top = TempDir::new(&std::env::temp_dir(), "walk")?;
        fs::create_dir_all(top.0.join("a/b"))?;
        fs::create_dir(top.0.join("c"))?;
        fs::write(top.0.join("c/file"), b"")?;
        std::os::unix::fs::symlink(top.0.join("a"), top.0.join("link"))?;

        let mut resolver = CgroupResolver::with_root(top.0.clone());
        assert_eq!(resolver.path(id_of(&top.0)?), Some("/".to_owned()));
        assert_eq!(
            resolver.path(id_of(top.0.join("a/b"))?),
            Some("/a/b".to_owned())
        );
        assert_eq!(
            resolver.path(id_of(top.0.join("c"))?),
            Some("/c".to_owned())
        );
        assert_eq!(resolver.path(id_of(top.0.join("c/file"))?), None);
        // One walk filled the cache for every directory; the file miss was a walk of
        // its own only if the rate limit allowed it.
        assert!(resolver.walks() <= 2);
        // The symbolic link was not followed: `a` is known by its real path only.
        assert_eq!(
            resolver.path(id_of(top.0.join("a"))?),
            Some("/a".to_owned())
        );
        Ok(())
    }

    #[test]
    fn resolver_remembers_misses() -> io::Result<()> {
        let top = TempDir::new(&std::env::temp_dir(), "miss")?;
        let mut resolver = CgroupResolver::with_root(top.0.clone());
        let start = Instant::now();
        let unknown = u64::MAX - 7;

        assert_eq!(resolver.path_at(unknown, start), None);
        assert_eq!(resolver.walks(), 1);
        // The same unknown id inside the negative period: no walk.
        let later = start + NEGATIVE_TTL / 2;
        assert_eq!(resolver.path_at(unknown, later), None);
        assert_eq!(resolver.walks(), 1);
        // Other unknown ids right after a walk: rate limited, no walk.
        for id in 1..1000 {
            assert_eq!(
                resolver.path_at(unknown - id, start + Duration::from_millis(1)),
                None
            );
        }
        assert_eq!(resolver.walks(), 1);
        // A new directory found once the rate limit allows a walk.
        fs::create_dir(top.0.join("new"))?;
        let new_id = id_of(top.0.join("new"))?;
        assert_eq!(
            resolver.path_at(new_id, start + Duration::from_millis(1)),
            None
        );
        let allowed = start + MIN_WALK_INTERVAL;
        assert_eq!(resolver.path_at(new_id, allowed), Some("/new".to_owned()));
        assert_eq!(resolver.walks(), 2);
        // After the negative period the unknown id is looked for again.
        assert_eq!(resolver.path_at(unknown, start + NEGATIVE_TTL), None);
        assert_eq!(resolver.walks(), 3);
        Ok(())
    }

    #[test]
    fn resolver_bounds_depth() -> io::Result<()> {
        let top = TempDir::new(&std::env::temp_dir(), "depth")?;
        let mut deep = top.0.clone();
        for _ in 0..MAX_DEPTH + 2 {
            deep.push("d");
        }
        fs::create_dir_all(&deep)?;
        let mut resolver = CgroupResolver::with_root(top.0.clone());
        let mut at_limit = top.0.clone();
        for _ in 0..MAX_DEPTH {
            at_limit.push("d");
        }
        let expected = "/d".repeat(MAX_DEPTH);
        assert_eq!(resolver.path(id_of(&at_limit)?), Some(expected));
        assert_eq!(resolver.path(id_of(&deep)?), None);
        Ok(())
    }

    #[test]
    fn resolver_maps_real_cgroup() -> io::Result<()> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            println!("skipped: creating a cgroup needs root");
            return Ok(());
        }
        let mount = match cgroup2_mount() {
            Ok(mount) => mount,
            Err(e) => {
                println!("skipped: {e}");
                return Ok(());
            }
        };
        let group = TempDir::new(&mount, "cgroup")?;
        let child = group.0.join("child");
        fs::create_dir(&child)?;

        let mut resolver = CgroupResolver::new()?;
        assert_eq!(resolver.root(), mount.as_path());
        let name = group
            .0
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let name = name.unwrap_or_default();
        let expected = format!("{}/{name}", resolver.prefix);
        assert_eq!(resolver.path(id_of(&group.0)?), Some(expected.clone()));
        assert_eq!(
            resolver.path(id_of(&child)?),
            Some(format!("{expected}/child"))
        );
        let root = if resolver.prefix.is_empty() {
            "/".to_owned()
        } else {
            resolver.prefix.clone()
        };
        assert_eq!(resolver.path(id_of(&mount)?), Some(root));
        Ok(())
    }
}
