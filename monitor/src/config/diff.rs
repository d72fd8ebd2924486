//! What a reload changes, in words: profiles added, removed or changed, guards added, removed
//! or weakened, modes and other settings. A change that lowers protection (a guard removed or
//! opened to more profiles, enforcement turned off, an enforcing profile removed) is
//! "weakening": the `config-changed` alert is then high severity, so that rewriting the
//! configuration without its guards is on the record, however it was done.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::Config;
use crate::{
    config::profile::Profile,
    event::alert::{Rule, Severity},
};

/// A configuration was reloaded: what changed (high when it lowers protection).
pub const CONFIG_CHANGED: Rule = Rule {
    id: "config-changed",
    severity: Severity::Low,
};
/// `locked: true`: a change of the files was refused until a restart.
pub const CONFIG_CHANGE_REFUSED: Rule = Rule {
    id: "config-change-refused",
    severity: Severity::High,
};
/// `--allow-insecure-config`: the configuration is in files that users other than root may
/// change.
pub const CONFIG_INSECURE: Rule = Rule {
    id: "config-insecure",
    severity: Severity::Medium,
};

/// The difference between the configuration in force and a new one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    pub profiles_added: Vec<String>,
    pub profiles_removed: Vec<String>,
    pub profiles_changed: Vec<String>,
    /// Guards by path glob (`gpu` for the GPU guard).
    pub guards_added: Vec<String>,
    pub guards_removed: Vec<String>,
    pub guards_weakened: Vec<String>,
    /// Every change, one sentence each.
    pub changes: Vec<String>,
    /// The changes that lower protection (also in `changes`).
    pub weakened: Vec<String>,
}

/// One protected glob's rule: who may read, who may write, whether writes are stopped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct GuardRule {
    read: BTreeSet<String>,
    write: BTreeSet<String>,
    enforce: bool,
}

fn guard_rules(config: &Config) -> BTreeMap<String, GuardRule> {
    let mut rules: BTreeMap<String, GuardRule> = BTreeMap::new();
    for guard in &config.guards.protected_paths {
        for glob in &guard.paths {
            // A glob listed by several guards: each of them lets its profiles in.
            let rule = rules.entry(glob.as_str().to_owned()).or_default();
            rule.read.extend(guard.read.iter().cloned());
            rule.write.extend(guard.write.iter().cloned());
            rule.enforce |= guard.enforce;
        }
    }
    rules
}

fn list(items: &BTreeSet<String>) -> String {
    format!(
        "[{}]",
        items
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A profile's settings by key, each as a set of strings, for a key-by-key comparison.
fn profile_fields(profile: &Profile) -> BTreeMap<&'static str, BTreeSet<String>> {
    fn strings<'a>(items: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
        items.into_iter().map(str::to_owned).collect()
    }
    let allow = &profile.allow;
    let mut fields = BTreeMap::new();
    fields.insert(
        "selector.executables",
        strings(profile.selector.executables.iter().map(|g| g.as_str())),
    );
    fields.insert(
        "selector.args",
        strings(profile.selector.args.iter().map(|g| g.as_str())),
    );
    fields.insert(
        "selector.cgroups",
        strings(profile.selector.cgroups.iter().map(|g| g.as_str())),
    );
    fields.insert("allow.exec", strings(allow.exec.iter().map(|g| g.as_str())));
    fields.insert(
        "allow.files.read",
        strings(allow.files_read.iter().map(|g| g.as_str())),
    );
    fields.insert(
        "allow.files.write",
        strings(allow.files_write.iter().map(|g| g.as_str())),
    );
    fields.insert(
        "allow.network.connect",
        strings(allow.connect.iter().map(|r| r.as_str())),
    );
    fields.insert(
        "allow.network.listen",
        strings(allow.listen.iter().map(|r| r.as_str())),
    );
    fields.insert(
        "allow.network.unix",
        match &allow.unix {
            Some(globs) => strings(globs.iter().map(|g| g.as_str())),
            None => strings(["(not checked)"]),
        },
    );
    fields.insert(
        "allow.devices",
        strings(allow.devices.iter().map(|d| d.name())),
    );
    fields.insert(
        "allow.io_uring",
        strings([if allow.io_uring { "true" } else { "false" }]),
    );
    fields.insert(
        "allow.transitions",
        strings(allow.transitions.iter().map(String::as_str)),
    );
    fields
}

/// How a profile enforces: `alert`, `enforce` or `enforce (dry run)`.
fn enforcement(profile: &Profile) -> &'static str {
    match (profile.mode, profile.dry_run) {
        (crate::config::profile::Mode::Alert, _) => "alert",
        (crate::config::profile::Mode::Enforce, false) => "enforce",
        (crate::config::profile::Mode::Enforce, true) => "enforce (dry run)",
    }
}

impl ConfigDiff {
    /// What changes from `old` (in force) to `new`.
    pub fn between(old: &Config, new: &Config) -> ConfigDiff {
        let mut diff = ConfigDiff::default();
        diff.compare_profiles(old, new);
        diff.compare_guards(old, new);
        diff.compare_settings(old, new);
        diff
    }

    /// No change in effect (the files changed, the rules did not).
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// High when protection is lowered, low otherwise.
    pub fn severity(&self) -> Severity {
        if self.weakened.is_empty() {
            Severity::Low
        } else {
            Severity::High
        }
    }

    fn change(&mut self, text: String) {
        self.changes.push(text);
    }

    fn weaken(&mut self, text: String) {
        self.changes.push(text.clone());
        self.weakened.push(text);
    }

    fn compare_profiles(&mut self, old: &Config, new: &Config) {
        for profile in &old.profiles {
            let Some(now) = new.profile_by_name(&profile.name) else {
                self.profiles_removed.push(profile.name.clone());
                let text = format!(
                    "profile {} removed (mode {})",
                    profile.name,
                    enforcement(profile)
                );
                if profile.mode == crate::config::profile::Mode::Enforce && !profile.dry_run {
                    self.weaken(text);
                } else {
                    self.change(text);
                }
                continue;
            };
            let mut changed = false;
            let (was, is) = (enforcement(profile), enforcement(now));
            if was != is {
                changed = true;
                let text = format!("profile {}: mode {was} -> {is}", profile.name);
                if was == "enforce" {
                    self.weaken(text);
                } else {
                    self.change(text);
                }
            }
            let (before, after) = (profile_fields(profile), profile_fields(now));
            for (key, old_items) in &before {
                let new_items = &after[key];
                if old_items == new_items {
                    continue;
                }
                changed = true;
                let added: BTreeSet<String> = new_items.difference(old_items).cloned().collect();
                let removed: BTreeSet<String> = old_items.difference(new_items).cloned().collect();
                let mut text = format!("profile {}: {key}", profile.name);
                if !added.is_empty() {
                    text.push_str(&format!(" added {}", list(&added)));
                }
                if !removed.is_empty() {
                    text.push_str(&format!(" removed {}", list(&removed)));
                }
                self.change(text);
            }
            if changed {
                self.profiles_changed.push(profile.name.clone());
            }
        }
        for profile in &new.profiles {
            if old.profile_by_name(&profile.name).is_none() {
                self.profiles_added.push(profile.name.clone());
                self.change(format!(
                    "profile {} added (mode {})",
                    profile.name,
                    enforcement(profile)
                ));
            }
        }
    }

    fn compare_guards(&mut self, old: &Config, new: &Config) {
        let (before, after) = (guard_rules(old), guard_rules(new));
        for (glob, was) in &before {
            let Some(is) = after.get(glob) else {
                self.guards_removed.push(glob.clone());
                self.weaken(format!(
                    "guard on {glob} removed (read: {}, write: {})",
                    list(&was.read),
                    list(&was.write)
                ));
                continue;
            };
            let mut weakened = false;
            for (what, old_names, new_names) in [
                ("read", &was.read, &is.read),
                ("write", &was.write, &is.write),
            ] {
                let added: BTreeSet<String> = new_names.difference(old_names).cloned().collect();
                let removed: BTreeSet<String> = old_names.difference(new_names).cloned().collect();
                if !added.is_empty() {
                    weakened = true;
                    self.weaken(format!(
                        "guard on {glob}: may {what} now also {}",
                        list(&added)
                    ));
                }
                if !removed.is_empty() {
                    self.change(format!(
                        "guard on {glob}: may no longer {what} {}",
                        list(&removed)
                    ));
                }
            }
            if was.enforce && !is.enforce {
                weakened = true;
                self.weaken(format!(
                    "guard on {glob}: writes no longer stopped (enforce: false)"
                ));
            } else if !was.enforce && is.enforce {
                self.change(format!("guard on {glob}: writes stopped (enforce: true)"));
            }
            if weakened {
                self.guards_weakened.push(glob.clone());
            }
        }
        for glob in after.keys() {
            if !before.contains_key(glob) {
                self.guards_added.push(glob.clone());
                self.change(format!("guard on {glob} added"));
            }
        }
        match (&old.guards.gpu, &new.guards.gpu) {
            (Some(was), None) => {
                self.guards_removed.push("gpu".into());
                self.weaken(format!(
                    "gpu guard removed (allowed: [{}])",
                    was.allow.join(", ")
                ));
            }
            (None, Some(_)) => {
                self.guards_added.push("gpu".into());
                self.change("gpu guard added".into());
            }
            (Some(was), Some(is)) => {
                let (old_names, new_names): (BTreeSet<String>, BTreeSet<String>) = (
                    was.allow.iter().cloned().collect(),
                    is.allow.iter().cloned().collect(),
                );
                let added: BTreeSet<String> = new_names.difference(&old_names).cloned().collect();
                let removed: BTreeSet<String> = old_names.difference(&new_names).cloned().collect();
                let mut weakened = false;
                if !added.is_empty() {
                    weakened = true;
                    self.weaken(format!("gpu guard: now also allows {}", list(&added)));
                }
                if !removed.is_empty() {
                    self.change(format!("gpu guard: no longer allows {}", list(&removed)));
                }
                if was.enforce && !is.enforce {
                    weakened = true;
                    self.weaken("gpu guard: opens no longer refused (enforce: false)".into());
                } else if !was.enforce && is.enforce {
                    self.change("gpu guard: opens refused (enforce: true)".into());
                }
                if weakened {
                    self.guards_weakened.push("gpu".into());
                }
            }
            (None, None) => {}
        }
    }

    fn compare_settings(&mut self, old: &Config, new: &Config) {
        if old.dedup_window != new.dedup_window {
            self.change(format!(
                "dedup_window_secs: {} -> {}",
                old.dedup_window.as_secs(),
                new.dedup_window.as_secs()
            ));
        }
        if old.locked != new.locked {
            self.change(format!("locked: {} -> {}", old.locked, new.locked));
        }
        if old.heartbeat != new.heartbeat {
            self.change(format!(
                "heartbeat_secs: {} -> {} (applies at the next start)",
                old.heartbeat.as_secs(),
                new.heartbeat.as_secs()
            ));
        }
        let (was, is) = (&old.outputs, &new.outputs);
        if was.alerts_file != is.alerts_file
            || was.alerts_file_group != is.alerts_file_group
            || was.otlp != is.otlp
            || was.spool != is.spool
        {
            self.change("outputs changed (applies at the next start)".into());
        }
    }

    /// The alert attributes: `monitor.config.changes` (every change in words),
    /// `monitor.config.weakened` (those that lower protection), and the names and globs
    /// by kind (`monitor.config.profiles.added`, `.guards.removed`, ...), where not empty.
    pub fn attributes(&self) -> Map<String, Value> {
        let mut attributes = Map::new();
        let changes = if self.changes.is_empty() {
            vec!["the files changed, the rules did not".to_owned()]
        } else {
            self.changes.clone()
        };
        attributes.insert("monitor.config.changes".into(), changes.into());
        for (key, items) in [
            ("monitor.config.weakened", &self.weakened),
            ("monitor.config.profiles.added", &self.profiles_added),
            ("monitor.config.profiles.removed", &self.profiles_removed),
            ("monitor.config.profiles.changed", &self.profiles_changed),
            ("monitor.config.guards.added", &self.guards_added),
            ("monitor.config.guards.removed", &self.guards_removed),
            ("monitor.config.guards.weakened", &self.guards_weakened),
        ] {
            if !items.is_empty() {
                attributes.insert(key.into(), items.clone().into());
            }
        }
        attributes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_config;

    const PROFILES: &str = r#"name: server
selector:
  executables: ["/usr/bin/python3*"]
mode: enforce
allow:
  exec: ["/usr/bin/true"]
---
name: sync
selector:
  executables: ["/usr/bin/rsync"]
"#;

    /// A config in a scratch directory with `profiles.yaml` next to it.
    fn load(name: &str, profiles: &str, config: &str) -> Config {
        let dir = std::env::temp_dir().join(format!("diff-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("profiles.yaml"), profiles).unwrap();
        let file = dir.join("config.yaml");
        let text = format!("profiles: [profiles.yaml]\n{config}");
        let loaded = parse_config(&file, &text);
        std::fs::remove_dir_all(&dir).unwrap();
        loaded.unwrap_or_else(|d| panic!("{d:?}"))
    }

    const GUARDS: &str = r#"guards:
  protected_paths:
    - paths: ["/models/**", "**/*.gguf"]
      read: [server]
      write: [sync]
      enforce: true
  gpu:
    allow: [server]
    enforce: true
"#;

    #[test]
    fn the_same_config_is_no_change() {
        let old = load("same-a", PROFILES, GUARDS);
        // Comments and order of keys do not matter.
        let new = load("same-b", &format!("# a comment\n{PROFILES}"), GUARDS);
        let diff = ConfigDiff::between(&old, &new);
        assert!(diff.is_empty(), "{diff:#?}");
        assert_eq!(diff.severity(), Severity::Low);
        assert_eq!(
            diff.attributes()["monitor.config.changes"][0],
            "the files changed, the rules did not"
        );
    }

    #[test]
    fn removing_the_guards_is_high_and_names_them() {
        let old = load("rm-a", PROFILES, GUARDS);
        let new = load("rm-b", PROFILES, "");
        let diff = ConfigDiff::between(&old, &new);
        assert_eq!(diff.severity(), Severity::High);
        assert_eq!(diff.guards_removed, ["**/*.gguf", "/models/**", "gpu"]);
        assert!(diff.guards_added.is_empty());
        assert!(
            diff.weakened
                .contains(&"guard on /models/** removed (read: [server], write: [sync])".into()),
            "{diff:#?}"
        );
        let attributes = diff.attributes();
        assert_eq!(
            attributes["monitor.config.guards.removed"],
            serde_json::json!(["**/*.gguf", "/models/**", "gpu"])
        );
        assert!(attributes.get("monitor.config.profiles.changed").is_none());
    }

    #[test]
    fn opening_a_guard_to_more_profiles_or_turning_enforcement_off_weakens_it() {
        let old = load("open-a", PROFILES, GUARDS);
        let new = load(
            "open-b",
            PROFILES,
            r#"guards:
  protected_paths:
    - paths: ["/models/**", "**/*.gguf"]
      read: [server, sync]
      write: [sync]
    - paths: ["/data/**"]
      read: [server]
  gpu:
    allow: [server]
    enforce: true
"#,
        );
        let diff = ConfigDiff::between(&old, &new);
        assert_eq!(diff.severity(), Severity::High);
        assert_eq!(diff.guards_weakened, ["**/*.gguf", "/models/**"]);
        assert_eq!(diff.guards_added, ["/data/**"]);
        assert!(diff.guards_removed.is_empty());
        assert!(diff
            .weakened
            .contains(&"guard on /models/**: may read now also [sync]".into()));
        assert!(diff
            .weakened
            .contains(&"guard on /models/**: writes no longer stopped (enforce: false)".into()));
    }

    #[test]
    fn a_stricter_guard_or_a_new_one_is_low() {
        let old = load("strict-a", PROFILES, GUARDS);
        let new = load(
            "strict-b",
            PROFILES,
            r#"guards:
  protected_paths:
    - paths: ["/models/**", "**/*.gguf"]
      read: []
      write: [sync]
      enforce: true
    - paths: ["/data/**"]
  gpu:
    allow: []
    enforce: true
"#,
        );
        let diff = ConfigDiff::between(&old, &new);
        assert_eq!(diff.severity(), Severity::Low, "{diff:#?}");
        assert!(diff
            .changes
            .contains(&"guard on /models/**: may no longer read [server]".into()));
        assert!(diff
            .changes
            .contains(&"gpu guard: no longer allows [server]".into()));
    }

    #[test]
    fn enforce_to_alert_and_removing_an_enforcing_profile_are_high() {
        let old = load("mode-a", PROFILES, "");
        let alert = load(
            "mode-b",
            &PROFILES.replace("mode: enforce", "mode: alert"),
            "",
        );
        let diff = ConfigDiff::between(&old, &alert);
        assert_eq!(diff.severity(), Severity::High);
        assert_eq!(diff.profiles_changed, ["server"]);
        assert_eq!(diff.weakened, ["profile server: mode enforce -> alert"]);
        // And back: a change, not a weakening.
        let back = ConfigDiff::between(&alert, &old);
        assert_eq!(back.severity(), Severity::Low);

        let only_sync = load("mode-c", PROFILES.split("---\n").nth(1).unwrap(), "");
        let diff = ConfigDiff::between(&old, &only_sync);
        assert_eq!(diff.severity(), Severity::High);
        assert_eq!(diff.profiles_removed, ["server"]);
        // Removing an alert-mode profile is a change only.
        let diff = ConfigDiff::between(&alert, &only_sync);
        assert_eq!(diff.severity(), Severity::Low);
        assert_eq!(diff.profiles_removed, ["server"]);
    }

    #[test]
    fn allow_lists_and_settings_are_listed_item_by_item() {
        let old = load("allow-a", PROFILES, "dedup_window_secs: 10\n");
        let mut profiles = PROFILES.replace(
            "exec: [\"/usr/bin/true\"]",
            "exec: [\"/usr/bin/id\", \"/usr/bin/uname\"]",
        );
        profiles.push_str("---\nname: extra\nselector:\n  executables: [\"/usr/bin/x\"]\n");
        let new = load(
            "allow-b",
            &profiles,
            "dedup_window_secs: 1\nlocked: true\nheartbeat_secs: 5\n",
        );
        let diff = ConfigDiff::between(&old, &new);
        assert_eq!(diff.severity(), Severity::Low);
        assert_eq!(diff.profiles_added, ["extra"]);
        assert_eq!(diff.profiles_changed, ["server"]);
        assert!(
            diff.changes.contains(
                &"profile server: allow.exec added [/usr/bin/id, /usr/bin/uname] removed [/usr/bin/true]".into()
            ),
            "{diff:#?}"
        );
        assert!(diff.changes.contains(&"dedup_window_secs: 10 -> 1".into()));
        assert!(diff.changes.contains(&"locked: false -> true".into()));
        assert!(diff
            .changes
            .contains(&"heartbeat_secs: 30 -> 5 (applies at the next start)".into()));
    }
}
