//! Where the configuration comes from, and noticing that it changed (SIGHUP, or a changed
//! file: polled, so it works for files replaced by editors and config-management tools).

use std::{path::PathBuf, time::SystemTime};

use crate::config::{load_config, Config, Diagnostic};

/// `--config FILE` (or the built-in defaults) plus `--profiles DIR...`.
#[derive(Clone, Debug, Default)]
pub struct ConfigSource {
    pub path: Option<PathBuf>,
    pub extra_profiles: Vec<PathBuf>,
}

/// Modification times of every file a configuration was read from.
pub type Fingerprint = Vec<(PathBuf, Option<SystemTime>)>;

impl ConfigSource {
    pub fn load(&self) -> Result<Config, Vec<Diagnostic>> {
        let config = match &self.path {
            Some(path) => load_config(path)?,
            None => Config::builtin(),
        };
        if self.extra_profiles.is_empty() {
            Ok(config)
        } else {
            config.with_extra_profiles(&self.extra_profiles)
        }
    }

    /// The files to watch for `config`: the config file, every profile file, and the
    /// directories that may gain profile files.
    pub fn fingerprint(&self, config: &Config) -> Fingerprint {
        let mut paths: Vec<PathBuf> = self.path.iter().cloned().collect();
        paths.extend(self.extra_profiles.iter().cloned());
        for profile in &config.profiles {
            if profile.location.file.is_absolute() {
                paths.push(profile.location.file.clone());
                if let Some(dir) = profile.location.file.parent() {
                    paths.push(dir.to_path_buf());
                }
            }
        }
        paths.sort();
        paths.dedup();
        paths
            .into_iter()
            .map(|p| {
                let mtime = std::fs::metadata(&p).and_then(|m| m.modified()).ok();
                (p, mtime)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_changes_with_the_file() {
        let dir = std::env::temp_dir().join(format!("reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let profile = dir.join("p.yaml");
        std::fs::write(
            &profile,
            "name: p\nselector:\n  executables: [\"/usr/bin/p\"]\nallow:\n  exec: []\n",
        )
        .unwrap();
        let source = ConfigSource {
            path: None,
            extra_profiles: vec![dir.clone()],
        };
        let config = source.load().unwrap();
        assert!(config.profile_by_name("p").is_some());
        let before = source.fingerprint(&config);
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(
            &profile,
            "name: p\nselector:\n  executables: [\"/usr/bin/q\"]\n",
        )
        .unwrap();
        let after = source.fingerprint(&config);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_ne!(before, after);
    }
}
