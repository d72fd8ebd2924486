//! Host configuration (`monitor run --config FILE`): where profiles come from, host-wide
//! guards, outputs and deduplication.
//!
//! ```yaml
//! builtin_profiles: true               # optional: start from the built-in profiles
//! profiles: ["/etc/monitor/profiles"]  # files or directories (*.yaml, *.yml), relative
//!                                      # to this file; a name again replaces a built-in
//! guards:
//!   protected_paths:                   # host-wide, for every process
//!     - paths: ["/models/**", "**/*.safetensors"]
//!       read: [vllm]                   # profiles that may read
//!       write: [model-sync]            # profiles that may write
//!   gpu:
//!     allow: [vllm]                    # profiles that may open accelerator devices
//! outputs:
//!   alerts_file: /var/log/monitor/alerts.jsonl     # optional; stdout by default
//!   alerts_file_group: adm                          # optional; the file is 0640 for it (else 0600)
//!   otlp: { endpoint: "http://127.0.0.1:4318", protocol: http/protobuf, headers: {}, ca_file: null }
//!   spool: { dir: /var/lib/monitor/spool, max_bytes: 67108864 }
//! dedup_window_secs: 10                # optional; 0 turns deduplication off
//! locked: false                        # optional; true: changes wait for a restart
//! heartbeat_secs: 30                   # optional; OTLP heartbeat and `monitor.up` period
//! ```
//!
//! Without `--config`, [`Config::builtin`] is used: the curated profiles of
//! `monitor/profiles/` and guards for the usual model stores. Every problem is a
//! [`Diagnostic`] naming the file, line, column and key; all of a file's problems are
//! reported, not only the first.

mod builtin;
pub mod cidr;
pub mod diff;
pub mod glob;
pub mod perms;
pub mod profile;
pub mod reload;
pub(crate) mod yaml;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use saphyr::MarkedYaml;

use profile::{PathGlob, Profile, ProfileName, Subject};
pub use yaml::Diagnostic;
use yaml::{index, join, load_documents, Fields, Reader};

/// Deduplication window when the config does not give one.
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(10);
/// Spool size when the config does not give one (64 MiB).
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 64 << 20;
/// Longest deduplication window accepted.
const MAX_DEDUP_WINDOW_SECS: u64 = 3600;
/// Heartbeat period when the config does not give one.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);
/// Longest heartbeat period accepted: a collector waits two periods before it says "down".
const MAX_HEARTBEAT_SECS: u64 = 3600;

const CONFIG_KEYS: &[&str] = &[
    "builtin_profiles",
    "profiles",
    "guards",
    "outputs",
    "dedup_window_secs",
    "locked",
    "heartbeat_secs",
];
const GUARDS_KEYS: &[&str] = &["protected_paths", "gpu"];
const PROTECTED_KEYS: &[&str] = &["paths", "read", "write", "enforce"];
const GPU_KEYS: &[&str] = &["allow", "enforce"];
const OUTPUTS_KEYS: &[&str] = &["alerts_file", "alerts_file_group", "otlp", "spool"];
const OTLP_KEYS: &[&str] = &["endpoint", "protocol", "headers", "ca_file"];
const SPOOL_KEYS: &[&str] = &["dir", "max_bytes"];

/// The whole configuration, compiled.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it was loaded from; `None` for the built-in defaults.
    pub source: Option<PathBuf>,
    /// Profiles in load order; `profiles[i].id == i + 1`. The first profile whose selector
    /// matches a process governs it.
    pub profiles: Vec<Profile>,
    pub guards: Guards,
    pub outputs: Outputs,
    /// Identical alerts within this window are folded into one; zero: no folding.
    pub dedup_window: Duration,
    /// `locked: true`: changes of the files are refused (and reported) until a restart.
    pub locked: bool,
    /// How often the OTLP heartbeat (a log record and `monitor.up`) is sent.
    pub heartbeat: Duration,
}

/// Host-wide rules, for every process.
#[derive(Clone, Debug, Default)]
pub struct Guards {
    pub protected_paths: Vec<ProtectedPaths>,
    /// `None`: opening accelerator devices is not guarded host-wide.
    pub gpu: Option<GpuGuard>,
}

/// Paths that only the listed profiles may read or write.
#[derive(Clone, Debug)]
pub struct ProtectedPaths {
    pub paths: Vec<PathGlob>,
    /// Profile names that may read.
    pub read: Vec<String>,
    /// Profile names that may write.
    pub write: Vec<String>,
    /// Stop writes by others (a kill before the open completes), not only report them.
    pub enforce: bool,
}

impl ProtectedPaths {
    pub fn covers(&self, path: &str) -> bool {
        self.paths.iter().any(|g| g.matches(path))
    }
}

/// Which profiles may open accelerator devices.
#[derive(Clone, Debug, Default)]
pub struct GpuGuard {
    pub allow: Vec<String>,
    /// Refuse (EPERM) accelerator opens by processes outside `allow`, not only report them.
    pub enforce: bool,
}

/// Where alerts go.
#[derive(Clone, Debug, Default)]
pub struct Outputs {
    /// JSON lines appended to this file; stdout when `None`.
    pub alerts_file: Option<PathBuf>,
    /// The group (name or number) that may read the alerts file: created 0640 for it.
    pub alerts_file_group: Option<String>,
    pub otlp: Option<OtlpOutput>,
    pub spool: Option<SpoolOutput>,
}

/// OpenTelemetry export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpOutput {
    /// `http://` or `https://` URL of the collector.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// Extra request headers (authentication, tenant).
    pub headers: BTreeMap<String, String>,
    /// CA bundle to verify the collector's certificate; the system roots when `None`.
    pub ca_file: Option<PathBuf>,
}

/// OTLP transport, as named by `OTEL_EXPORTER_OTLP_PROTOCOL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
    HttpJson,
}

impl OtlpProtocol {
    pub const ALL: [OtlpProtocol; 3] = [
        OtlpProtocol::Grpc,
        OtlpProtocol::HttpProtobuf,
        OtlpProtocol::HttpJson,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
            OtlpProtocol::HttpJson => "http/json",
        }
    }

    pub fn from_name(name: &str) -> Option<OtlpProtocol> {
        OtlpProtocol::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// On-disk buffer for alerts the OTLP endpoint has not taken yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolOutput {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

impl Config {
    /// The built-in defaults: the curated profiles and guards for the usual model stores.
    pub fn builtin() -> Config {
        builtin::config().unwrap_or_else(|diagnostics| {
            let text: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
            // Unit tests load the built-in config; this cannot happen in a tested build.
            panic!("the built-in config is invalid:\n{}", text.join("\n"))
        })
    }

    /// Adds the profiles of `paths` (files or directories); a profile with the name of one
    /// already loaded replaces it (keeping its place, so its id).
    pub fn with_extra_profiles(mut self, paths: &[PathBuf]) -> Result<Config, Vec<Diagnostic>> {
        let mut extra = ProfileSet::default();
        for path in paths {
            extra.add_path(path, None);
        }
        extra.check_duplicates();
        if !extra.diagnostics.is_empty() {
            return Err(extra.diagnostics);
        }
        self.profiles = merge(std::mem::take(&mut self.profiles), extra.profiles);
        Ok(self)
    }

    /// The profile with this id (1..=N).
    pub fn profile(&self, id: u32) -> Option<&Profile> {
        let index = usize::try_from(id).ok()?.checked_sub(1)?;
        self.profiles.get(index)
    }

    pub fn profile_by_name(&self, name: &str) -> Option<&Profile> {
        self.profiles.iter().find(|p| p.name == name)
    }

    /// The first profile whose selector matches.
    pub fn select(&self, subject: &Subject) -> Option<&Profile> {
        self.profiles.iter().find(|p| p.selects(subject))
    }
}

/// Loads a config file and the profiles it names.
pub fn load_config(path: &Path) -> Result<Config, Vec<Diagnostic>> {
    let text = read(path)?;
    parse_config(path, &text)
}

/// The `profiles:` entries of a config file (files or directories, made absolute), for
/// watching; empty when the file does not read or parse.
pub fn profile_paths(file: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return Vec::new();
    };
    let Ok(documents) = load_documents(file, &text) else {
        return Vec::new();
    };
    let Some(document) = documents.iter().find(|d| !yaml::is_null(d)) else {
        return Vec::new();
    };
    let mut reader = Reader::new(file);
    let Some(fields) = reader.mapping(document, "", CONFIG_KEYS) else {
        return Vec::new();
    };
    let directory = file.parent().unwrap_or(Path::new("."));
    match fields.get("profiles") {
        Some(list) => reader
            .strings(list, "profiles")
            .into_iter()
            .map(|item| directory.join(item.value))
            .collect(),
        None => Vec::new(),
    }
}

/// What `monitor check` found.
#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    /// Profiles that loaded (from profile files, and those that configs load).
    pub profiles: usize,
    pub diagnostics: Vec<Diagnostic>,
    /// Warnings about profiles that loaded. `monitor check` adds before them what the
    /// selectors' executable globs match on this host, and whether the kernel map holds them
    /// all (see [`crate::kernel::policy::Candidates::describe`]).
    pub notes: Vec<String>,
    /// The profiles that loaded, when there is no diagnostic.
    pub loaded: Vec<Profile>,
}

/// Validates files that are profiles or configs (a config has `profiles`, `guards`,
/// `outputs`, ...; a profile has `name`), and directories of profiles.
pub fn check_paths(paths: &[PathBuf]) -> Vec<Diagnostic> {
    check(paths).diagnostics
}

/// [`check_paths`], also counting the profiles that loaded. Profile names must be unique
/// across all the profile files given.
pub fn check(paths: &[PathBuf]) -> CheckReport {
    let mut report = CheckReport::default();
    let mut profiles = ProfileSet::default();
    let mut loaded = Vec::new();
    for path in paths {
        if path.is_dir() {
            profiles.add_path(path, None);
            continue;
        }
        let text = match read(path) {
            Ok(text) => text,
            Err(diagnostics) => {
                report.diagnostics.extend(diagnostics);
                continue;
            }
        };
        if is_config(path, &text) {
            match parse_config(path, &text) {
                Ok(config) => {
                    report.profiles += config.profiles.len();
                    loaded.extend(config.profiles);
                }
                Err(diagnostics) => report.diagnostics.extend(diagnostics),
            }
        } else {
            profiles.add_text(path, &text);
        }
    }
    profiles.check_duplicates();
    report.profiles += profiles.profiles.len();
    report.diagnostics.extend(profiles.diagnostics);
    loaded.extend(profiles.profiles);
    if report.diagnostics.is_empty() {
        report
            .notes
            .extend(loaded.iter().filter(|p| p.allow.allows_nothing()).map(|p| {
                format!(
                    "warning: {}: profile \"{}\" allows nothing: every exec, file, network and device access of the processes it selects is an alert; add allow rules, or learn them with `monitor learn`",
                    p.location, p.name
                )
            }));
        report.loaded = loaded;
    }
    report
}

/// Whether a file's first document looks like a config rather than a profile.
fn is_config(path: &Path, text: &str) -> bool {
    let Ok(documents) = load_documents(path, text) else {
        return false;
    };
    let Some(saphyr::YamlData::Mapping(mapping)) = documents
        .iter()
        .find(|d| !yaml::is_null(d))
        .map(|d| &d.data)
    else {
        return false;
    };
    let keys: Vec<&str> = mapping.keys().filter_map(|k| k.data.as_str()).collect();
    !keys.contains(&"name") && keys.iter().any(|k| CONFIG_KEYS.contains(k))
}

fn read(path: &Path) -> Result<String, Vec<Diagnostic>> {
    std::fs::read_to_string(path).map_err(|err| {
        vec![Diagnostic::file(
            path,
            format!("failed to read {}: {err}", path.display()),
        )]
    })
}

/// Profiles gathered from several files, with all their problems.
#[derive(Default)]
struct ProfileSet {
    profiles: Vec<Profile>,
    /// Every name defined, also of profiles with errors.
    names: Vec<ProfileName>,
    diagnostics: Vec<Diagnostic>,
}

impl ProfileSet {
    fn add_text(&mut self, file: &Path, text: &str) {
        let parsed = profile::parse_file(file, text);
        self.profiles.extend(parsed.profiles);
        self.names.extend(parsed.names);
        self.diagnostics.extend(parsed.diagnostics);
    }

    /// Adds a profile file, or every `*.yaml` / `*.yml` file of a directory (not hidden,
    /// not recursive, in name order). A read error is reported at `referenced_at` (the
    /// config entry naming the path) when given.
    fn add_path(&mut self, path: &Path, referenced_at: Option<(&Path, &MarkedYaml, &str)>) {
        let failed = |err: std::io::Error| {
            let message = format!("failed to read {}: {err}", path.display());
            match referenced_at {
                Some((file, node, key)) => Diagnostic::at(file, node, format!("{key}: {message}")),
                None => Diagnostic::file(path, message),
            }
        };
        let metadata = match std::fs::metadata(path) {
            Ok(metadata) => metadata,
            Err(err) => return self.diagnostics.push(failed(err)),
        };
        if !metadata.is_dir() {
            match std::fs::read_to_string(path) {
                Ok(text) => self.add_text(path, &text),
                Err(err) => self.diagnostics.push(failed(err)),
            }
            return;
        }
        let entries = match std::fs::read_dir(path) {
            Ok(entries) => entries,
            Err(err) => return self.diagnostics.push(failed(err)),
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|file| {
                let name = file.file_name().and_then(|n| n.to_str()).unwrap_or(".");
                !name.starts_with('.')
                    && (name.ends_with(".yaml") || name.ends_with(".yml"))
                    && file.is_file()
            })
            .collect();
        files.sort();
        for file in files {
            match std::fs::read_to_string(&file) {
                Ok(text) => self.add_text(&file, &text),
                Err(err) => self.diagnostics.push(Diagnostic::file(
                    &file,
                    format!("failed to read {}: {err}", file.display()),
                )),
            }
        }
    }

    fn check_duplicates(&mut self) {
        self.diagnostics
            .extend(profile::duplicate_names(&self.names));
    }
}

/// `base` with `extra` added; an extra profile named like a base one takes its place.
/// Ids are renumbered 1..=N.
fn merge(mut base: Vec<Profile>, extra: Vec<Profile>) -> Vec<Profile> {
    for profile in extra {
        match base.iter_mut().find(|p| p.name == profile.name) {
            Some(slot) => *slot = profile,
            None => base.push(profile),
        }
    }
    for (i, profile) in base.iter_mut().enumerate() {
        profile.id = u32::try_from(i + 1).unwrap_or(u32::MAX);
    }
    base
}

/// Parses a config's text; relative profile paths are relative to the file's directory.
pub(crate) fn parse_config(file: &Path, text: &str) -> Result<Config, Vec<Diagnostic>> {
    let documents = load_documents(file, text).map_err(|d| vec![d])?;
    let mut documents = documents.iter().filter(|d| !yaml::is_null(d));
    let Some(document) = documents.next() else {
        return Err(vec![Diagnostic::file(
            file,
            "failed to find a config: the file has no YAML document",
        )]);
    };
    let mut reader = Reader::new(file);
    if let Some(extra) = documents.next() {
        reader.error(extra, "", "a config is one YAML document; remove this one");
    }
    let Some(fields) = reader.mapping(document, "", CONFIG_KEYS) else {
        return Err(reader.finish());
    };

    // Profiles first: guards refer to them by name.
    let mut base = ProfileSet::default();
    let builtin = fields
        .get("builtin_profiles")
        .and_then(|node| reader.boolean(node, "builtin_profiles"))
        .unwrap_or(false);
    if builtin {
        for (name, text) in builtin::PROFILES {
            base.add_text(Path::new(name), text);
        }
    }
    let mut extra = ProfileSet::default();
    if let Some(list) = fields.get("profiles") {
        let directory = file.parent().unwrap_or(Path::new("."));
        for item in reader.strings(list, "profiles") {
            let path = directory.join(item.value);
            extra.add_path(&path, Some((file, item.node, &item.key)));
        }
    }
    extra.check_duplicates();
    let mut known: Vec<String> = base.names.iter().map(|n| n.name.clone()).collect();
    known.extend(extra.names.iter().map(|n| n.name.clone()));
    let mut diagnostics = base.diagnostics;
    diagnostics.extend(extra.diagnostics);
    let profiles = merge(base.profiles, extra.profiles);
    for profile in &profiles {
        for name in &profile.allow.transitions {
            if !known.contains(name) {
                diagnostics.push(Diagnostic {
                    line: profile.location.line,
                    column: profile.location.column,
                    ..Diagnostic::file(
                        &profile.location.file,
                        format!(
                            "profile \"{}\": allow.transitions names unknown profile \"{name}\" (loaded: {})",
                            profile.name,
                            known.join(", ")
                        ),
                    )
                });
            }
        }
    }

    let guards = fields
        .get("guards")
        .map(|node| parse_guards(&mut reader, node, &known))
        .unwrap_or_default();
    let outputs = fields
        .get("outputs")
        .map(|node| parse_outputs(&mut reader, node))
        .unwrap_or_default();
    let dedup_window = fields
        .get("dedup_window_secs")
        .and_then(|node| {
            let secs = reader.unsigned(node, "dedup_window_secs")?;
            if secs > MAX_DEDUP_WINDOW_SECS {
                reader.error(
                    node,
                    "dedup_window_secs",
                    format!("{secs} is longer than {MAX_DEDUP_WINDOW_SECS} seconds"),
                );
                return None;
            }
            Some(Duration::from_secs(secs))
        })
        .unwrap_or(DEFAULT_DEDUP_WINDOW);
    let locked = fields
        .get("locked")
        .and_then(|node| reader.boolean(node, "locked"))
        .unwrap_or(false);
    let heartbeat = fields
        .get("heartbeat_secs")
        .and_then(|node| {
            let secs = reader.unsigned(node, "heartbeat_secs")?;
            if secs == 0 || secs > MAX_HEARTBEAT_SECS {
                reader.error(
                    node,
                    "heartbeat_secs",
                    format!("{secs} is not between 1 and {MAX_HEARTBEAT_SECS} seconds"),
                );
                return None;
            }
            Some(Duration::from_secs(secs))
        })
        .unwrap_or(DEFAULT_HEARTBEAT);

    // The config's own problems first, in file order, then those of the profile files.
    let (own, others): (Vec<_>, Vec<_>) = diagnostics.into_iter().partition(|d| d.file == file);
    reader.diagnostics.extend(own);
    let mut all = reader.finish();
    all.extend(others);
    if !all.is_empty() {
        return Err(all);
    }
    Ok(Config {
        source: Some(file.to_owned()),
        profiles,
        guards,
        outputs,
        dedup_window,
        locked,
        heartbeat,
    })
}

/// A list of profile names, each of which must exist.
fn profile_names(
    reader: &mut Reader,
    node: &MarkedYaml,
    key: &str,
    known: &[String],
) -> Vec<String> {
    let mut names = Vec::new();
    for item in reader.strings(node, key) {
        if known.iter().any(|k| k == item.value) {
            names.push(item.value.to_owned());
        } else {
            let message = if known.is_empty() {
                format!("unknown profile \"{}\" (no profile is loaded)", item.value)
            } else {
                format!(
                    "unknown profile \"{}\" (loaded: {})",
                    item.value,
                    known.join(", ")
                )
            };
            reader.error(item.node, &item.key, message);
        }
    }
    names
}

fn parse_guards(reader: &mut Reader, node: &MarkedYaml, known: &[String]) -> Guards {
    let mut guards = Guards::default();
    let Some(fields) = reader.mapping(node, "guards", GUARDS_KEYS) else {
        return guards;
    };
    if let Some(list) = fields.get("protected_paths") {
        match &list.data {
            saphyr::YamlData::Sequence(entries) => {
                for (i, entry) in entries.iter().enumerate() {
                    let key = index("guards.protected_paths", i);
                    if let Some(protected) = parse_protected(reader, entry, &key, known) {
                        guards.protected_paths.push(protected);
                    }
                }
            }
            _ => reader.error(
                list,
                "guards.protected_paths",
                "expected a list of {paths, read, write} mappings",
            ),
        }
    }
    if let Some(gpu) = fields.get("gpu") {
        if let Some(gpu_fields) = reader.mapping(gpu, "guards.gpu", GPU_KEYS) {
            let allow = gpu_fields
                .get("allow")
                .map(|list| profile_names(reader, list, "guards.gpu.allow", known))
                .unwrap_or_default();
            let enforce = gpu_fields
                .get("enforce")
                .and_then(|node| reader.boolean(node, "guards.gpu.enforce"))
                .unwrap_or(false);
            guards.gpu = Some(GpuGuard { allow, enforce });
        }
    }
    guards
}

fn parse_protected(
    reader: &mut Reader,
    node: &MarkedYaml,
    key: &str,
    known: &[String],
) -> Option<ProtectedPaths> {
    let fields = reader.mapping(node, key, PROTECTED_KEYS)?;
    let paths = match fields.get("paths") {
        Some(list) => {
            let paths_key = join(key, "paths");
            let paths = profile::path_globs(reader, list, &paths_key, false);
            if paths.is_empty() && fields.get("paths").is_some() && !has_items(list) {
                reader.error(list, &paths_key, "an empty list protects nothing");
            }
            paths
        }
        None => {
            reader.error(node, key, "missing key \"paths\"");
            Vec::new()
        }
    };
    let names = |reader: &mut Reader, fields: &Fields, name: &str| {
        fields
            .get(name)
            .map(|list| profile_names(reader, list, &join(key, name), known))
            .unwrap_or_default()
    };
    let read = names(reader, &fields, "read");
    let write = names(reader, &fields, "write");
    let enforce = fields
        .get("enforce")
        .and_then(|node| reader.boolean(node, &join(key, "enforce")))
        .unwrap_or(false);
    Some(ProtectedPaths {
        paths,
        read,
        write,
        enforce,
    })
}

fn has_items(node: &MarkedYaml) -> bool {
    matches!(&node.data, saphyr::YamlData::Sequence(items) if !items.is_empty())
}

fn parse_outputs(reader: &mut Reader, node: &MarkedYaml) -> Outputs {
    let mut outputs = Outputs::default();
    let Some(fields) = reader.mapping(node, "outputs", OUTPUTS_KEYS) else {
        return outputs;
    };
    outputs.alerts_file = fields
        .get("alerts_file")
        .and_then(|node| reader.string(node, "outputs.alerts_file"))
        .map(PathBuf::from);
    outputs.alerts_file_group = fields
        .get("alerts_file_group")
        .and_then(|node| reader.string(node, "outputs.alerts_file_group"))
        .map(str::to_owned);
    outputs.otlp = fields.get("otlp").and_then(|node| parse_otlp(reader, node));
    outputs.spool = fields
        .get("spool")
        .and_then(|node| parse_spool(reader, node));
    outputs
}

fn parse_otlp(reader: &mut Reader, node: &MarkedYaml) -> Option<OtlpOutput> {
    let before = reader.diagnostics.len();
    let fields = reader.mapping(node, "outputs.otlp", OTLP_KEYS)?;
    let endpoint = match fields.get("endpoint") {
        Some(node) => reader
            .string(node, "outputs.otlp.endpoint")
            .and_then(|endpoint| {
                if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
                    Some(endpoint.to_owned())
                } else {
                    reader.error(
                        node,
                        "outputs.otlp.endpoint",
                        format!(
                            "invalid endpoint \"{endpoint}\": expected an http:// or https:// URL"
                        ),
                    );
                    None
                }
            }),
        None => {
            reader.error(node, "outputs.otlp", "missing key \"endpoint\"");
            None
        }
    };
    let protocol = match fields.get("protocol") {
        Some(node) => reader
            .string(node, "outputs.otlp.protocol")
            .and_then(|name| {
                let protocol = OtlpProtocol::from_name(name);
                if protocol.is_none() {
                    let known: Vec<&str> = OtlpProtocol::ALL.iter().map(|p| p.name()).collect();
                    reader.error(
                        node,
                        "outputs.otlp.protocol",
                        format!(
                            "unknown protocol \"{name}\" (expected one of: {})",
                            known.join(", ")
                        ),
                    );
                }
                protocol
            }),
        None => Some(OtlpProtocol::HttpProtobuf),
    };
    let mut headers = BTreeMap::new();
    if let Some(node) = fields.get("headers") {
        match &node.data {
            saphyr::YamlData::Mapping(mapping) => {
                for (name, value) in mapping {
                    let Some(name) = reader.string(name, "outputs.otlp.headers") else {
                        continue;
                    };
                    let key = join("outputs.otlp.headers", name);
                    if let Some(value) = reader.string(value, &key) {
                        headers.insert(name.to_owned(), value.to_owned());
                    }
                }
            }
            _ => reader.error(
                node,
                "outputs.otlp.headers",
                "expected a mapping of header names to strings",
            ),
        }
    }
    let ca_file = fields
        .get("ca_file")
        .and_then(|node| reader.string(node, "outputs.otlp.ca_file"))
        .map(PathBuf::from);
    if reader.diagnostics.len() > before {
        return None;
    }
    Some(OtlpOutput {
        endpoint: endpoint?,
        protocol: protocol?,
        headers,
        ca_file,
    })
}

fn parse_spool(reader: &mut Reader, node: &MarkedYaml) -> Option<SpoolOutput> {
    let before = reader.diagnostics.len();
    let fields = reader.mapping(node, "outputs.spool", SPOOL_KEYS)?;
    let dir = match fields.get("dir") {
        Some(node) => reader.string(node, "outputs.spool.dir").map(PathBuf::from),
        None => {
            reader.error(node, "outputs.spool", "missing key \"dir\"");
            None
        }
    };
    let max_bytes = match fields.get("max_bytes") {
        Some(node) => reader
            .unsigned(node, "outputs.spool.max_bytes")
            .and_then(|bytes| {
                if bytes == 0 {
                    reader.error(node, "outputs.spool.max_bytes", "must be greater than 0");
                    return None;
                }
                Some(bytes)
            }),
        None => Some(DEFAULT_SPOOL_MAX_BYTES),
    };
    if reader.diagnostics.len() > before {
        return None;
    }
    Some(SpoolOutput {
        dir: dir?,
        max_bytes: max_bytes?,
    })
}

#[cfg(test)]
mod tests;
