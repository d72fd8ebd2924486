//! What the kernel needs to know of a configuration: protected directories and file name
//! suffixes (host-wide guards, by inode), and the executables that may start a governed
//! process (watched from their exec on). Kept in sync on reload: new entries go in before
//! stale ones go out, so there is no moment when nothing is guarded.

use std::{collections::HashSet, path::PathBuf};

use aya::maps::{Array, HashMap, MapData};
use monitor_common::{InodeKey, Suffix, SUFFIXES_MAX};
use tracing::{debug, warn};

use crate::{
    config::Config,
    glob::{expand, Glob},
    sensor::{inode_key, suffixes},
};

/// Directories and suffixes the kernel can check for the guards' path globs. The kernel may
/// report more than a glob covers (`/data/**/*.gguf` is checked as the directory `/data`);
/// the rules engine then decides with the whole glob.
pub fn protection(config: &Config) -> (Vec<PathBuf>, Vec<String>) {
    let mut dirs = Vec::new();
    let mut suffixes = Vec::new();
    for guard in &config.guards.protected_paths {
        for glob in &guard.paths {
            let pattern = glob.as_str();
            // `**/*.ext`: a suffix anywhere.
            if let Some(ext) = pattern.strip_prefix("**/*") {
                if !ext.is_empty() && !ext.contains(['*', '?', '[', '/']) {
                    suffixes.push(ext.to_owned());
                    continue;
                }
            }
            // `**/some/dir/**`: that directory under the usual homes and data roots.
            if let Some(rest) = pattern.strip_prefix("**/") {
                let rest = rest.trim_end_matches("/**");
                if !rest.contains(['*', '?', '[']) {
                    for root in [
                        "/root",
                        "/home/*",
                        "/var/lib/*",
                        "/usr/share/*",
                        "/opt/*",
                        "/srv/*",
                        "/data",
                    ] {
                        dirs.extend(existing_dirs(&format!("{root}/{rest}")));
                    }
                    continue;
                }
                warn!("guard path `{pattern}` cannot be checked in the kernel: only processes that are watched are checked against it");
                continue;
            }
            // Otherwise: the deepest directory without wildcards.
            let wild = pattern.find(['*', '?', '[']).unwrap_or(pattern.len());
            let literal = &pattern[..wild];
            let dir = match literal.rfind('/') {
                Some(0) => "/",
                Some(i) => &literal[..i],
                None => continue,
            };
            if dir == "/" {
                warn!("guard path `{pattern}` would make every file protected in the kernel; it is checked for watched processes only");
                continue;
            }
            dirs.push(PathBuf::from(dir));
        }
    }
    dirs.sort();
    dirs.dedup();
    suffixes.sort();
    suffixes.dedup();
    (dirs, suffixes)
}

/// Directories matching a pattern with `*` in whole components.
fn existing_dirs(pattern: &str) -> Vec<PathBuf> {
    if !pattern.contains('*') {
        let path = PathBuf::from(pattern);
        return if path.is_dir() {
            vec![path]
        } else {
            Vec::new()
        };
    }
    let (head, tail) = pattern.split_once('*').unwrap_or((pattern, ""));
    let parent = head.trim_end_matches('/');
    let Ok(entries) = std::fs::read_dir(if parent.is_empty() { "/" } else { parent }) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .flat_map(|e| existing_dirs(&format!("{}{tail}", e.path().display())))
        .collect()
}

/// Executables on this host that a profile's selector may match.
pub fn exec_candidates(config: &Config) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for profile in &config.profiles {
        for pattern in &profile.selector.executables {
            if let Ok(glob) = Glob::new(pattern.as_str()) {
                found.extend(expand(&glob, 50_000));
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// The kernel maps a configuration fills.
pub struct KernelPolicy {
    pub protected_dirs: HashMap<MapData, InodeKey, u32>,
    pub protected_suffixes: Array<MapData, Suffix>,
    pub exec_candidates: HashMap<MapData, InodeKey, u32>,
}

impl KernelPolicy {
    /// Makes the maps match `config`.
    pub fn apply(&mut self, config: &Config) -> anyhow::Result<()> {
        let (dirs, suffix_list) = protection(config);
        let keys: HashSet<InodeKey> = dirs.iter().filter_map(|d| inode_key(d).ok()).collect();
        sync(&mut self.protected_dirs, &keys)?;
        let entries = suffixes(&suffix_list[..suffix_list.len().min(SUFFIXES_MAX as usize)])?;
        for i in 0..SUFFIXES_MAX {
            let value = entries.get(i as usize).copied().unwrap_or(Suffix {
                len: 0,
                bytes: [0; monitor_common::SUFFIX_CAP],
            });
            self.protected_suffixes.set(i, value, 0)?;
        }
        let candidates: HashSet<InodeKey> = exec_candidates(config)
            .iter()
            .filter_map(|p| inode_key(p).ok())
            .collect();
        sync(&mut self.exec_candidates, &candidates)?;
        debug!(
            dirs = keys.len(),
            suffixes = entries.len(),
            candidates = candidates.len(),
            "kernel policy applied"
        );
        Ok(())
    }
}

/// Inserts what is missing, then removes what is stale.
fn sync(
    map: &mut HashMap<MapData, InodeKey, u32>,
    wanted: &HashSet<InodeKey>,
) -> anyhow::Result<()> {
    for key in wanted {
        map.insert(key, 1, 0)?;
    }
    let stale: Vec<InodeKey> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !wanted.contains(k))
        .collect();
    for key in stale {
        let _ = map.remove(&key);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_guards_become_dirs_and_suffixes() {
        let config = Config::builtin();
        let (dirs, suffixes) = protection(&config);
        assert!(dirs.contains(&PathBuf::from("/models")), "{dirs:?}");
        assert!(dirs.contains(&PathBuf::from("/var/lib/models")), "{dirs:?}");
        assert!(
            suffixes.contains(&".safetensors".to_owned()),
            "{suffixes:?}"
        );
        assert!(suffixes.contains(&".gguf".to_owned()), "{suffixes:?}");
    }

    #[test]
    fn builtin_profiles_have_candidates_here() {
        // python3 exists on this host and several curated profiles run on it.
        let found = exec_candidates(&Config::builtin());
        assert!(
            found
                .iter()
                .any(|p| p.to_string_lossy().contains("python3")),
            "{found:?}"
        );
    }
}
