//! Who may change the configuration. Whoever can write the config file, a profile file, or
//! a directory above them can turn the guards off at the next reload: they must be owned by
//! root and writable by nobody else. A directory with the sticky bit (`/tmp`) is fine above
//! them: others may add names there, not replace root's.

use std::{
    collections::BTreeSet,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use super::Diagnostic;

/// One file or directory that a non-root user may change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Insecure {
    pub path: PathBuf,
    /// What is wrong and how to fix it.
    pub reason: String,
}

impl Insecure {
    /// As a configuration problem, for the start-up error and `config-reload-failed`.
    pub fn diagnostic(&self) -> Diagnostic {
        Diagnostic::file(
            &self.path,
            format!(
                "{}; a user who can change it can turn the guards off (or start with --allow-insecure-config)",
                self.reason
            ),
        )
    }
}

impl std::fmt::Display for Insecure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

/// Whether `uid` is one the monitor trusts: root, or the monitor's own user.
fn trusted(uid: u32) -> bool {
    // SAFETY: geteuid cannot fail.
    uid == 0 || uid == unsafe { libc::geteuid() }
}

/// What is wrong with one path itself (not its directories), if anything.
fn judge(path: &Path, directory: bool) -> Option<Insecure> {
    let metadata = std::fs::metadata(path).ok()?;
    let mode = metadata.mode() & 0o7777;
    let what = if metadata.is_dir() {
        "directory"
    } else {
        "file"
    };
    if !trusted(metadata.uid()) {
        return Some(Insecure {
            path: path.to_owned(),
            reason: format!(
                "the {what} is owned by uid {}, not root: fix with `chown root {}`",
                metadata.uid(),
                path.display()
            ),
        });
    }
    let sticky = directory && mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky {
        let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
            (true, true) => "its group and others",
            (true, false) => "its group",
            _ => "others",
        };
        return Some(Insecure {
            path: path.to_owned(),
            reason: format!(
                "the {what} is writable by {who} (mode {mode:04o}): fix with `chmod go-w {}`",
                path.display()
            ),
        });
    }
    None
}

/// The files and directories among `paths` (and the directories above them, through
/// symlinks too) that someone other than root may change; empty when all is well.
pub fn check(paths: &[PathBuf]) -> Vec<Insecure> {
    let mut seen = BTreeSet::new();
    let mut found = Vec::new();
    let mut visit = |path: &Path, found: &mut Vec<Insecure>| {
        // The path as named (a symlink's directory decides where it points) and the real
        // file behind it.
        let mut chain: Vec<PathBuf> = Vec::new();
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        chain.push(absolute.clone());
        if let Ok(real) = std::fs::canonicalize(&absolute) {
            if real != absolute {
                chain.push(real);
            }
        }
        for start in chain {
            let mut current = Some(start.as_path());
            let mut first = true;
            while let Some(at) = current {
                if seen.insert(at.to_owned()) {
                    // The path itself is judged on what it points to; a directory above it
                    // is judged as a directory (the sticky bit counts there).
                    let is_link = std::fs::symlink_metadata(at)
                        .map(|m| m.file_type().is_symlink())
                        .unwrap_or(false);
                    if first || !is_link {
                        if let Some(insecure) = judge(at, !first || at.is_dir()) {
                            found.push(insecure);
                        }
                    }
                }
                first = false;
                current = at.parent();
            }
        }
    };
    for path in paths {
        visit(path, &mut found);
    }
    found
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("perms-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn group_or_world_writable_files_and_directories_are_named_with_the_fix() {
        let dir = scratch("writable");
        let config = dir.join("config.yaml");
        std::fs::write(&config, "dedup_window_secs: 1\n").unwrap();
        chmod(&config, 0o644);
        assert_eq!(check(std::slice::from_ref(&config)), []);

        chmod(&config, 0o666);
        let found = check(std::slice::from_ref(&config));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, config);
        assert!(
            found[0]
                .reason
                .contains("writable by its group and others (mode 0666)")
                && found[0]
                    .reason
                    .contains(&format!("chmod go-w {}", config.display())),
            "{found:?}"
        );

        chmod(&config, 0o644);
        chmod(&dir, 0o775);
        let found = check(std::slice::from_ref(&config));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, dir);
        assert!(found[0]
            .reason
            .contains("directory is writable by its group"));

        // The sticky bit above (as on /tmp) is fine.
        chmod(&dir, 0o1777);
        assert_eq!(check(std::slice::from_ref(&config)), []);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_owned_by_another_user_is_named_and_a_symlink_target_is_checked() {
        // SAFETY: plain syscall.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let dir = scratch("owner");
        let real = dir.join("real.yaml");
        std::fs::write(&real, "name: p\n").unwrap();
        std::os::unix::fs::chown(&real, Some(65534), None).unwrap();
        let link = dir.join("link.yaml");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let found = check(std::slice::from_ref(&link));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            found.iter().any(|f| f.reason
                == format!(
                    "the file is owned by uid 65534, not root: fix with `chown root {}`",
                    link.display()
                )),
            "{found:?}"
        );
    }
}
