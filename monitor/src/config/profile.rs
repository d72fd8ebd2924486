//! Behaviour profiles: which processes a profile governs (its selector) and what they may
//! do (its allow lists), compiled once at load.
//!
//! A profile file holds one profile per YAML document (documents are separated by `---`):
//!
//! ```yaml
//! name: vllm
//! description: vLLM OpenAI-compatible server      # optional
//! selector:                     # ORed within a key, ANDed across keys; at least one key
//!   executables: ["/usr/bin/python3*"]   # glob on the executable path
//!   args: ["*vllm.entrypoints*"]         # glob on the argv joined with spaces
//!   cgroups: ["/system.slice/vllm.service"]   # glob on the cgroup v2 path
//!   images: ["*/vllm/vllm-openai*"]       # glob on the container's image (name, name:tag)
//!   namespaces: ["inference", "ml-*"]     # glob on the Kubernetes namespace
//!   pod_labels: { app: vllm, tier: "serving-*" }   # every label present, value glob
//! mode: alert                   # alert (default) | enforce
//! dry_run: false                # enforce computes decisions but does not act
//! allow:                        # an absent list allows nothing, except `unix`
//!   exec: ["/usr/bin/nvidia-smi"]
//!   files: { read: ["/models/**", "${model}/**"], write: ["/tmp/**"] }  # ${..}: facts.rs
//!   capabilities: [compile-toolchain]   # named sets of allow entries (capabilities.rs)
//!   network:
//!     connect: ["127.0.0.0/8", "10.0.0.0/8:443", "[::1]:*"]
//!     udp_connect: ["8.8.8.8:80"]   # UDP connects (they send nothing), besides `connect`
//!     listen: ["*:8000"]
//!     unix: ["/run/**", "@*"]   # absent: unix sockets are not checked
//!   devices: [nvidia, nvidia-uvm]
//!   io_uring: false             # may it use io_uring (default false: `io-uring-not-allowed`);
//!                               # or a list of operations: [setup] (create a ring only)
//!   transitions: [model-sync]   # profiles an exec may switch it to (default: none)
//! ```
//!
//! A governed process keeps its profile across fork and exec: an exec that another profile's
//! selector matches (argv is the process's own to choose) switches only to a profile its own
//! `allow.transitions` names, and otherwise is an exec like any other, checked against
//! `allow.exec` (and killed under `mode: enforce` when it is not allowed).
//!
//! Path globs (`executables`, `cgroups`, `exec`, `files`, `unix`): `*` and `?` stay within
//! one path component, `**` crosses `/` (but `/a/**/b` needs a directory between `a` and
//! `b`: write `/a/b` too); they must start with `/` or `**` (abstract unix socket names
//! with `@`; `@**` also matches abstract names that contain `/`). Argument globs (`args`) match the argv joined with single
//! spaces, and there `*`, `?` and `[...]` match `/` too, since arguments hold paths:
//! `*vllm serve*` matches `/usr/bin/python3 /usr/local/bin/vllm serve m`.
//! A key set to null (or left empty) counts as absent.

pub mod capabilities;
pub mod facts;
mod parse;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use crate::{
    config::{
        cidr::AddrRule,
        glob::{Glob, GlobSet},
    },
    event::DeviceClass,
};

pub use crate::config::yaml::Diagnostic;
pub(crate) use parse::{duplicate_names, parse_file, path_globs, ProfileName};

/// What a profile does about behaviour outside its allow lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Report it.
    Alert,
    /// Prevent it (where the kernel can), and report it.
    Enforce,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Alert => "alert",
            Mode::Enforce => "enforce",
        }
    }

    pub fn from_name(name: &str) -> Option<Mode> {
        [Mode::Alert, Mode::Enforce]
            .into_iter()
            .find(|m| m.name() == name)
    }
}

/// Where a profile was defined (its `name` value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// A compiled profile.
#[derive(Clone, Debug)]
pub struct Profile {
    /// 1..=N in the order the config loaded them; 0 until then (0 means "none" in the
    /// kernel's watched set).
    pub id: u32,
    pub name: String,
    pub description: Option<String>,
    pub location: Location,
    pub selector: Selector,
    pub mode: Mode,
    pub dry_run: bool,
    pub allow: Allow,
}

/// A path glob (its literal prefix is tested first: most paths fail on it cheaply).
#[derive(Clone, Debug)]
pub struct PathGlob {
    glob: Glob,
}

impl PathGlob {
    pub fn new(pattern: &str) -> Result<PathGlob, String> {
        Ok(PathGlob {
            glob: Glob::new(pattern)?,
        })
    }

    pub fn as_str(&self) -> &str {
        self.glob.as_str()
    }

    pub fn matches(&self, path: &str) -> bool {
        self.glob.matches(path)
    }
}

/// The globs of an allow list, in their order, and the same compiled into a [`GlobSet`]:
/// the rules match every file event and exec against these lists, once per path whatever
/// the number of literal and `DIR/**` globs.
#[derive(Clone, Debug, Default)]
pub struct PathGlobs {
    globs: Vec<PathGlob>,
    set: GlobSet,
}

impl PathGlobs {
    pub fn push(&mut self, glob: PathGlob) {
        self.set.insert(&glob.glob);
        self.globs.push(glob);
    }

    /// Whether any glob of the list matches `path`.
    pub fn matches(&self, path: &str) -> bool {
        self.set.matches(path)
    }
}

impl std::ops::Deref for PathGlobs {
    type Target = [PathGlob];
    fn deref(&self) -> &[PathGlob] {
        &self.globs
    }
}

impl Extend<PathGlob> for PathGlobs {
    fn extend<I: IntoIterator<Item = PathGlob>>(&mut self, globs: I) {
        for glob in globs {
            self.push(glob);
        }
    }
}

impl FromIterator<PathGlob> for PathGlobs {
    fn from_iter<I: IntoIterator<Item = PathGlob>>(globs: I) -> PathGlobs {
        let mut list = PathGlobs::default();
        list.extend(globs);
        list
    }
}

impl From<Vec<PathGlob>> for PathGlobs {
    fn from(globs: Vec<PathGlob>) -> PathGlobs {
        globs.into_iter().collect()
    }
}

/// A glob on the argv joined with spaces, where every wildcard also matches `/`.
#[derive(Clone, Debug)]
pub struct ArgsGlob {
    pattern: String,
    glob: Glob,
}

/// Stands in for `/` while matching arguments, so that `*` and `?` cross it: a
/// private-use character that arguments do not hold in practice.
const SLASH: char = '\u{E000}';

impl ArgsGlob {
    pub fn new(pattern: &str) -> Result<ArgsGlob, String> {
        let glob = Glob::new(&pattern.replace('/', &SLASH.to_string()))
            .map_err(|err| err.replace(SLASH, "/"))?;
        Ok(ArgsGlob {
            pattern: pattern.to_owned(),
            glob,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether the joined argv (see [`join_args`]) matches.
    pub fn matches(&self, joined_args: &str) -> bool {
        self.glob
            .matches(&joined_args.replace('/', &SLASH.to_string()))
    }
}

/// The argv as `args` selectors see it: joined with single spaces.
pub fn join_args(args: &[String]) -> String {
    args.join(" ")
}

/// Which processes a profile governs. Keys absent are not tested; at least one is present.
///
/// The workload keys (`images`, `namespaces`, `pod_labels`) look at the container's metadata
/// from the runtime ([`crate::host::workload`]), which arrives after the container's first
/// process: until it is known they match nothing, and the daemon evaluates the selectors
/// again for the container's processes that are not governed yet when it arrives.
#[derive(Clone, Debug, Default)]
pub struct Selector {
    pub executables: Vec<PathGlob>,
    pub args: Vec<ArgsGlob>,
    pub cgroups: Vec<PathGlob>,
    /// Globs on the image reference (`*` and `?` cross `/`), matched against the name and
    /// against `name:tag`.
    pub images: Vec<ArgsGlob>,
    /// Globs on the Kubernetes namespace.
    pub namespaces: Vec<ArgsGlob>,
    /// Labels of the pod (CRI) or container (Docker API): every one must be present with a
    /// value the glob matches, as Kubernetes' `matchLabels`.
    pub pod_labels: Vec<(String, ArgsGlob)>,
}

/// What a selector looks at in a process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Subject<'a> {
    pub exe: Option<&'a str>,
    /// The argv joined with spaces ([`join_args`]).
    pub args: &'a str,
    pub cgroup: Option<&'a str>,
    /// Its container's metadata, once the runtime answered.
    pub container: Option<&'a crate::host::workload::ContainerMeta>,
}

impl Selector {
    /// ORed within a key, ANDed across keys; an unknown executable or cgroup matches no
    /// glob of that key.
    pub fn matches(&self, subject: &Subject) -> bool {
        self.matches_executable(subject.exe) && self.matches_besides_executable(subject)
    }

    /// The `executables` key alone (see [`SelectorCache`]).
    pub fn matches_executable(&self, exe: Option<&str>) -> bool {
        any_path(&self.executables, exe)
    }

    /// Every key but `executables`.
    fn matches_besides_executable(&self, subject: &Subject) -> bool {
        any_path(&self.cgroups, subject.cgroup)
            && (self.args.is_empty() || self.args.iter().any(|g| g.matches(subject.args)))
            && self.matches_workload(subject.container)
    }

    fn matches_workload(&self, meta: Option<&crate::host::workload::ContainerMeta>) -> bool {
        if !self.uses_workload() {
            return true;
        }
        let Some(meta) = meta else {
            return false;
        };
        let images = self.images.is_empty()
            || [meta.image_name.clone(), meta.image_reference()]
                .into_iter()
                .flatten()
                .any(|image| self.images.iter().any(|g| g.matches(&image)));
        let namespaces = self.namespaces.is_empty()
            || meta
                .namespace
                .as_deref()
                .is_some_and(|ns| self.namespaces.iter().any(|g| g.matches(ns)));
        let labels = self.pod_labels.iter().all(|(key, glob)| {
            meta.labels
                .get(key)
                .is_some_and(|value| glob.matches(value))
        });
        images && namespaces && labels
    }

    /// Whether a key needs the container's metadata from the runtime.
    pub fn uses_workload(&self) -> bool {
        !self.images.is_empty() || !self.namespaces.is_empty() || !self.pod_labels.is_empty()
    }

    pub fn is_empty(&self) -> bool {
        self.executables.is_empty()
            && self.args.is_empty()
            && self.cgroups.is_empty()
            && !self.uses_workload()
    }
}

/// An empty key matches anything; an unknown text matches no glob.
fn any_path(globs: &[PathGlob], text: Option<&str>) -> bool {
    globs.is_empty() || text.is_some_and(|t| globs.iter().any(|g| g.matches(t)))
}

/// Most executables a [`SelectorCache`] remembers; when full it starts again empty.
pub const SELECTOR_CACHE_MAX: usize = 4096;

/// Which profiles' `executables` key each executable path matches, remembered by path: a host
/// runs the same few programs over and over, and matching every profile's executable globs
/// at every exec (`/usr/**/bin/python3*` and the like) was the largest part of an ungoverned
/// exec's cost in the rules. Valid for one list of profiles: cleared when it changes.
#[derive(Debug, Default)]
pub struct SelectorCache {
    by_exe: HashMap<Box<str>, Box<[bool]>>,
}

impl SelectorCache {
    /// Forgets everything (the profiles changed).
    pub fn clear(&mut self) {
        self.by_exe.clear();
    }

    /// The number of executables remembered.
    pub fn len(&self) -> usize {
        self.by_exe.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_exe.is_empty()
    }

    /// The first of `profiles` whose selector matches `subject`: the same answer as
    /// [`crate::config::Config::select`].
    pub fn select<'p>(
        &mut self,
        profiles: &'p [Profile],
        subject: &Subject,
    ) -> Option<&'p Profile> {
        let Some(exe) = subject.exe else {
            return profiles.iter().find(|p| p.selects(subject));
        };
        let fresh = |profiles: &[Profile]| -> Box<[bool]> {
            profiles
                .iter()
                .map(|p| p.selector.matches_executable(Some(exe)))
                .collect()
        };
        let matched = match self.by_exe.get(exe) {
            Some(matched) if matched.len() == profiles.len() => matched,
            _ => {
                if self.by_exe.len() >= SELECTOR_CACHE_MAX {
                    self.by_exe.clear();
                }
                let entry = self.by_exe.entry(exe.into()).or_default();
                *entry = fresh(profiles);
                entry
            }
        };
        profiles
            .iter()
            .zip(matched.iter())
            .find(|(p, &exe_matched)| exe_matched && p.selector.matches_besides_executable(subject))
            .map(|(p, _)| p)
    }
}

/// What governed processes may do.
#[derive(Clone, Debug, Default)]
pub struct Allow {
    pub exec: PathGlobs,
    pub files_read: PathGlobs,
    pub files_write: PathGlobs,
    pub connect: Vec<AddrRule>,
    pub listen: Vec<AddrRule>,
    /// `None`: unix sockets are not checked.
    pub unix: Option<PathGlobs>,
    pub devices: Vec<DeviceClass>,
    /// May use io_uring (a ring's requests bypass the syscall sensors).
    pub io_uring: bool,
    /// The io_uring operations allowed when `io_uring` is not `true` (`io_uring: [setup]`:
    /// may create a ring, as libuv/uvloop does at start-up; requests that open, change
    /// files or reach the network are still alerts).
    pub io_uring_ops: Vec<String>,
    /// Profiles a governed process may switch to by an exec that their selector matches.
    pub transitions: Vec<String>,
    /// Globs naming `${variables}` ([`facts`]), made concrete for each process when it
    /// comes under the profile ([`Profile::resolve`]).
    pub templates: Vec<(TemplateList, facts::Template)>,
    /// The named capabilities allowed ([`capabilities`]); their globs are in the lists.
    pub capabilities: Vec<String>,
    /// Destinations a UDP socket may be connected to: a UDP connect sends nothing (vLLM's
    /// local-IP probe connects to 8.8.8.8:80 to read the source address the kernel picks).
    /// Datagrams sent with an address are still checked against `connect`.
    pub udp_connect: Vec<AddrRule>,
}

/// The allow list a template glob belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplateList {
    Exec,
    Read,
    Write,
}

impl Allow {
    pub fn exec(&self, path: &str) -> bool {
        self.exec.matches(path)
    }

    pub fn read(&self, path: &str) -> bool {
        self.files_read.matches(path)
    }

    pub fn write(&self, path: &str) -> bool {
        self.files_write.matches(path)
    }

    pub fn connect(&self, peer: std::net::SocketAddr) -> bool {
        self.connect.iter().any(|r| r.matches(peer))
    }

    pub fn listen(&self, local: std::net::SocketAddr) -> bool {
        self.listen.iter().any(|r| r.matches(local))
    }

    /// Whether a unix socket path (or `@name`) is allowed; always when not checked.
    pub fn unix(&self, path: &str) -> bool {
        self.unix.as_ref().is_none_or(|globs| globs.matches(path))
    }

    pub fn device(&self, class: DeviceClass) -> bool {
        self.devices.contains(&class)
    }

    /// Whether nothing is allowed: no exec, file, network (unix sockets unchecked counts as
    /// nothing too), device or io_uring. Every action of a governed process is then an alert.
    pub fn allows_nothing(&self) -> bool {
        self.exec.is_empty()
            && self.files_read.is_empty()
            && self.files_write.is_empty()
            && self.connect.is_empty()
            && self.listen.is_empty()
            && self.unix.as_ref().is_none_or(|globs| globs.is_empty())
            && self.devices.is_empty()
            && !self.io_uring
            && self.io_uring_ops.is_empty()
            && self.templates.is_empty()
            && self.capabilities.is_empty()
            && self.udp_connect.is_empty()
    }

    /// Whether a UDP socket may be connected to `peer` (see [`Allow::udp_connect`]).
    pub fn udp_connect(&self, peer: std::net::SocketAddr) -> bool {
        self.udp_connect.iter().any(|r| r.matches(peer)) || self.connect(peer)
    }

    /// Whether an exec may switch the process to the profile named `name`.
    pub fn transition(&self, name: &str) -> bool {
        self.transitions.iter().any(|t| t == name)
    }
}

impl Profile {
    /// Whether this profile governs a process like `subject`.
    pub fn selects(&self, subject: &Subject) -> bool {
        self.selector.matches(subject)
    }

    /// This profile for a process with these facts: its template globs made concrete and
    /// added to their lists (a glob whose variable is unknown allows nothing). `None` when
    /// the profile has no template (it is the same for every process).
    pub fn resolve(&self, facts: &facts::Facts) -> Option<Profile> {
        if self.allow.templates.is_empty() {
            return None;
        }
        let mut profile = self.clone();
        for (list, template) in &self.allow.templates {
            let Some(glob) = template.resolve(facts).and_then(|p| PathGlob::new(&p).ok()) else {
                continue;
            };
            match list {
                TemplateList::Exec => profile.allow.exec.push(glob),
                TemplateList::Read => profile.allow.files_read.push(glob),
                TemplateList::Write => profile.allow.files_write.push(glob),
            }
        }
        Some(profile)
    }
}

/// Parses every profile of a file's text. Profiles get id 0; a config numbers them.
pub fn parse_profiles(file: &Path, text: &str) -> Result<Vec<Profile>, Vec<Diagnostic>> {
    let mut parsed = parse::parse_file(file, text);
    parsed.diagnostics.extend(duplicate_names(&parsed.names));
    if parsed.diagnostics.is_empty() {
        Ok(parsed.profiles)
    } else {
        Err(parsed.diagnostics)
    }
}

#[cfg(test)]
mod tests;
