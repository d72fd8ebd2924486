//! The learned profile as YAML, in the format `monitor run` reads ([`crate::config::profile`]), with
//! a comment header and each rule's observation count; and `--merge` into an existing one.

use std::{fmt::Write as _, path::Path};

use crate::config::{
    cidr::{AddrRule, Ports},
    profile::{Mode, PathGlob, Profile},
};

use super::generalise::covers;

/// A rule of the learned profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub rule: String,
    /// Events it rests on.
    pub count: u64,
    /// Kept from the profile merged into (`--merge`).
    pub kept: bool,
}

impl Item {
    pub fn learned(rule: impl Into<String>, count: u64) -> Item {
        Item {
            rule: rule.into(),
            count,
            kept: false,
        }
    }

    fn kept(rule: impl Into<String>) -> Item {
        Item {
            rule: rule.into(),
            count: 0,
            kept: true,
        }
    }
}

/// `selector:` as written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SelectorText {
    pub executables: Vec<String>,
    pub args: Vec<String>,
    pub cgroups: Vec<String>,
}

impl SelectorText {
    pub fn is_empty(&self) -> bool {
        self.executables.is_empty() && self.args.is_empty() && self.cgroups.is_empty()
    }

    pub fn of(profile: &Profile) -> SelectorText {
        let selector = &profile.selector;
        SelectorText {
            executables: selector
                .executables
                .iter()
                .map(|g| g.as_str().to_owned())
                .collect(),
            args: selector
                .args
                .iter()
                .map(|g| g.as_str().to_owned())
                .collect(),
            cgroups: selector
                .cgroups
                .iter()
                .map(|g| g.as_str().to_owned())
                .collect(),
        }
    }
}

/// A profile to write.
#[derive(Clone, Debug)]
pub struct Draft {
    pub name: String,
    pub description: Option<String>,
    pub selector: SelectorText,
    pub mode: Mode,
    pub dry_run: bool,
    pub exec: Vec<Item>,
    pub read: Vec<Item>,
    pub write: Vec<Item>,
    pub connect: Vec<Item>,
    pub listen: Vec<Item>,
    /// `None`: unix sockets are not checked (only when merged into a profile without it).
    pub unix: Option<Vec<Item>>,
    pub devices: Vec<Item>,
    /// `allow.io_uring: true` (the rule is `"true"`), or `None` for false.
    pub io_uring: Option<Item>,
    /// `allow.transitions`, kept from the profile merged into (learning makes none).
    pub transitions: Vec<String>,
}

/// A YAML double-quoted scalar.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A comment line's text: one line, no control characters.
pub fn comment_text(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn observations(count: u64) -> String {
    match count {
        1 => "1 observation".to_owned(),
        n => format!("{n} observations"),
    }
}

fn note(item: &Item) -> String {
    match (item.kept, item.count) {
        (false, count) => observations(count),
        (true, 0) => "kept; not observed".to_owned(),
        (true, count) => format!("kept; {}", observations(count)),
    }
}

/// Writes `key:` and its items, one per line with its count; `key: []` when empty.
fn list(out: &mut String, indent: usize, key: &str, items: &[Item]) {
    let pad = " ".repeat(indent);
    if items.is_empty() {
        let _ = writeln!(out, "{pad}{key}: []");
        return;
    }
    let _ = writeln!(out, "{pad}{key}:");
    let quoted: Vec<String> = items.iter().map(|i| quote(&i.rule)).collect();
    let width = quoted
        .iter()
        .map(|q| q.chars().count())
        .max()
        .unwrap_or(0)
        .min(60);
    for (item, quoted) in items.iter().zip(&quoted) {
        let _ = writeln!(out, "{pad}  - {quoted:<width$}   # {}", note(item));
    }
}

fn plain_list(out: &mut String, indent: usize, key: &str, values: &[String]) {
    if values.is_empty() {
        return;
    }
    let pad = " ".repeat(indent);
    let _ = writeln!(out, "{pad}{key}:");
    for value in values {
        let _ = writeln!(out, "{pad}  - {}", quote(value));
    }
}

/// The profile file: `header` lines as comments, then the profile.
pub fn render(header: &[String], draft: &Draft) -> String {
    let mut out = String::new();
    for line in header {
        let _ = writeln!(out, "# {}", comment_text(line));
    }
    let _ = writeln!(out, "name: {}", quote(&draft.name));
    if let Some(description) = &draft.description {
        let _ = writeln!(out, "description: {}", quote(description));
    }
    let _ = writeln!(out, "selector:");
    plain_list(&mut out, 2, "executables", &draft.selector.executables);
    plain_list(&mut out, 2, "args", &draft.selector.args);
    plain_list(&mut out, 2, "cgroups", &draft.selector.cgroups);
    let _ = writeln!(out, "mode: {}", draft.mode.name());
    if draft.dry_run {
        let _ = writeln!(out, "dry_run: true");
    }
    let _ = writeln!(out, "allow:");
    list(&mut out, 2, "exec", &draft.exec);
    let _ = writeln!(out, "  files:");
    list(&mut out, 4, "read", &draft.read);
    list(&mut out, 4, "write", &draft.write);
    let _ = writeln!(out, "  network:");
    list(&mut out, 4, "connect", &draft.connect);
    list(&mut out, 4, "listen", &draft.listen);
    if let Some(unix) = &draft.unix {
        list(&mut out, 4, "unix", unix);
    }
    list(&mut out, 2, "devices", &draft.devices);
    if let Some(item) = &draft.io_uring {
        let _ = writeln!(out, "  io_uring: true   # {}", note(item));
    }
    plain_list(&mut out, 2, "transitions", &draft.transitions);
    out
}

/// Existing path rules, then the learned ones they do not cover; a covered rule's count
/// goes to the first existing rule that covers it.
fn merge_paths(existing: &[PathGlob], learned: Vec<Item>) -> Vec<Item> {
    let mut out: Vec<Item> = existing.iter().map(|g| Item::kept(g.as_str())).collect();
    let kept = out.len();
    for item in learned {
        match out[..kept].iter_mut().find(|e| covers(&e.rule, &item.rule)) {
            Some(existing) => existing.count += item.count,
            None => out.push(item),
        }
    }
    out
}

/// Whether an existing address rule allows everything a learned one does.
fn addr_covers(existing: &AddrRule, learned: &str) -> bool {
    if existing.as_str() == learned {
        return true;
    }
    let Ok(learned) = AddrRule::parse(learned) else {
        return false;
    };
    let network = match (existing.network(), learned.network()) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(outer), Some(inner)) => {
            outer.prefix() <= inner.prefix() && outer.contains(inner.network())
        }
    };
    let ports = match (existing.ports(), learned.ports()) {
        (Ports::Any, _) => true,
        (Ports::Range(..), Ports::Any) => false,
        (Ports::Range(a, b), Ports::Range(c, d)) => a <= c && d <= b,
    };
    network && ports
}

fn merge_addrs(existing: &[AddrRule], learned: Vec<Item>) -> Vec<Item> {
    let mut out: Vec<Item> = existing.iter().map(|r| Item::kept(r.as_str())).collect();
    for item in learned {
        match existing.iter().position(|e| addr_covers(e, &item.rule)) {
            Some(i) => out[i].count += item.count,
            None => out.push(item),
        }
    }
    out
}

/// `--merge`: the existing profile's name (unless `name` is given), description, selector,
/// mode and rules, plus the learned rules it does not cover. Unix sockets stay unchecked if
/// the existing profile does not check them.
pub fn merge(learned: Draft, existing: &Profile, name: Option<&str>) -> Draft {
    let allow = &existing.allow;
    let unix = match (&allow.unix, learned.unix) {
        (Some(globs), Some(items)) => Some(merge_paths(globs, items)),
        (Some(globs), None) => Some(merge_paths(globs, Vec::new())),
        (None, _) => None,
    };
    let mut devices: Vec<Item> = allow.devices.iter().map(|c| Item::kept(c.name())).collect();
    for item in learned.devices {
        match devices.iter_mut().find(|d| d.rule == item.rule) {
            Some(existing) => existing.count += item.count,
            None => devices.push(item),
        }
    }
    let io_uring = match (allow.io_uring, learned.io_uring) {
        (true, learned) => Some(Item {
            count: learned.map_or(0, |item| item.count),
            ..Item::kept("true")
        }),
        (false, learned) => learned,
    };
    Draft {
        name: name.map_or_else(|| existing.name.clone(), str::to_owned),
        description: existing.description.clone(),
        selector: SelectorText::of(existing),
        mode: existing.mode,
        dry_run: existing.dry_run,
        exec: merge_paths(&allow.exec, learned.exec),
        read: merge_paths(&allow.files_read, learned.read),
        write: merge_paths(&allow.files_write, learned.write),
        connect: merge_addrs(&allow.connect, learned.connect),
        listen: merge_addrs(&allow.listen, learned.listen),
        unix,
        devices,
        io_uring,
        transitions: existing.allow.transitions.clone(),
    }
}

/// Picks the profile to merge into from a file's profiles: the one named `name`, or the
/// only one.
pub fn pick<'p>(
    file: &Path,
    profiles: &'p [Profile],
    name: Option<&str>,
) -> Result<&'p Profile, String> {
    match (name, profiles) {
        (_, [only]) => Ok(only),
        (Some(name), _) => profiles.iter().find(|p| p.name == name).ok_or_else(|| {
            format!(
                "failed to find profile \"{name}\" in {}: it has {}",
                file.display(),
                names(profiles)
            )
        }),
        (None, _) => Err(format!(
            "{} has {} profiles ({}): give --name to say which to extend",
            file.display(),
            profiles.len(),
            names(profiles)
        )),
    }
}

fn names(profiles: &[Profile]) -> String {
    profiles
        .iter()
        .map(|p| p.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
