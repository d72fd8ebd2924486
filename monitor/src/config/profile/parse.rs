//! Profile YAML to [`Profile`], with every problem reported at its position.

use std::path::Path;

use saphyr::MarkedYaml;

use super::{
    capabilities, facts::Template, Allow, ArgsGlob, Location, Mode, PathGlob, PathGlobs, Profile,
    Selector, TemplateList,
};
use crate::{
    config::{
        cidr::AddrRule,
        yaml::{self, join, load_documents, Diagnostic, Reader},
    },
    event::DeviceClass,
};

const PROFILE_KEYS: &[&str] = &[
    "name",
    "description",
    "selector",
    "mode",
    "dry_run",
    "allow",
];
const SELECTOR_KEYS: &[&str] = &[
    "executables",
    "args",
    "cgroups",
    "images",
    "namespaces",
    "pod_labels",
];
const ALLOW_KEYS: &[&str] = &[
    "exec",
    "files",
    "network",
    "devices",
    "io_uring",
    "transitions",
    "capabilities",
];
const FILES_KEYS: &[&str] = &["read", "write"];
const NETWORK_KEYS: &[&str] = &["connect", "listen", "unix", "udp_connect"];

/// A profile name as written, for duplicate and reference checks: kept even when the rest
/// of its profile has errors, so that one mistake does not cascade into "unknown profile".
#[derive(Clone, Debug)]
pub(crate) struct ProfileName {
    pub(crate) name: String,
    pub(crate) location: Location,
}

/// What one profile file yields.
pub(crate) struct ParsedFile {
    pub(crate) profiles: Vec<Profile>,
    pub(crate) names: Vec<ProfileName>,
    pub(crate) diagnostics: Vec<Diagnostic>,
}

/// Parses every document of a profile file. Duplicate names are not checked here (the
/// caller checks them across all the files it loads).
pub(crate) fn parse_file(file: &Path, text: &str) -> ParsedFile {
    let mut parsed = ParsedFile {
        profiles: Vec::new(),
        names: Vec::new(),
        diagnostics: Vec::new(),
    };
    let documents = match load_documents(file, text) {
        Ok(documents) => documents,
        Err(diagnostic) => {
            parsed.diagnostics.push(diagnostic);
            return parsed;
        }
    };
    let mut reader = Reader::new(file);
    let mut found = false;
    for document in documents.iter().filter(|d| !yaml::is_null(d)) {
        found = true;
        if let Some(profile) = parse_document(&mut reader, document, &mut parsed.names) {
            parsed.profiles.push(profile);
        }
    }
    parsed.diagnostics = reader.finish();
    if !found {
        parsed.diagnostics.push(Diagnostic::file(
            file,
            "failed to find a profile: the file has no YAML document",
        ));
    }
    parsed
}

/// Parses one profile document; `None` when it has errors (they are in the reader).
pub(crate) fn parse_document(
    reader: &mut Reader,
    document: &MarkedYaml,
    names: &mut Vec<ProfileName>,
) -> Option<Profile> {
    let before = reader.diagnostics.len();
    let fields = reader.mapping(document, "", PROFILE_KEYS)?;

    let name = match fields.get("name") {
        Some(node) => reader.string(node, "name").and_then(|name| {
            if let Err(err) = check_name(name) {
                reader.error(node, "name", err);
                return None;
            }
            let (line, column) = yaml::position(node);
            names.push(ProfileName {
                name: name.to_owned(),
                location: Location {
                    file: reader.file.to_owned(),
                    line,
                    column,
                },
            });
            Some((name.to_owned(), line, column))
        }),
        None => {
            reader.error(document, "", "missing key \"name\"");
            None
        }
    };
    let description = fields
        .get("description")
        .and_then(|node| reader.string(node, "description"))
        .map(str::to_owned);
    let selector = match fields.get("selector") {
        Some(node) => parse_selector(reader, node),
        None => {
            reader.error(
                document,
                "",
                "missing key \"selector\" (a profile must say which processes it governs)",
            );
            None
        }
    };
    let mode = fields.get("mode").and_then(|node| {
        let text = reader.string(node, "mode")?;
        let mode = Mode::from_name(text);
        if mode.is_none() {
            reader.error(
                node,
                "mode",
                format!("unknown mode \"{text}\" (expected alert or enforce)"),
            );
        }
        mode
    });
    let dry_run = fields
        .get("dry_run")
        .and_then(|node| reader.boolean(node, "dry_run"));
    let allow = match fields.get("allow") {
        Some(node) => parse_allow(reader, node),
        None => Some(Allow::default()),
    };

    if reader.diagnostics.len() > before {
        return None;
    }
    let (name, line, column) = name?;
    Some(Profile {
        id: 0,
        name,
        description,
        location: Location {
            file: reader.file.to_owned(),
            line,
            column,
        },
        selector: selector?,
        mode: mode.unwrap_or(Mode::Alert),
        dry_run: dry_run.unwrap_or(false),
        allow: allow?,
    })
}

/// Names are referenced by guards and printed in alerts: keep them simple.
fn check_name(name: &str) -> Result<(), String> {
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid profile name \"{name}\": use up to 64 letters, digits, '.', '_' and '-', \
             starting with a letter or digit"
        ))
    }
}

fn parse_selector(reader: &mut Reader, node: &MarkedYaml) -> Option<Selector> {
    let before = reader.diagnostics.len();
    let fields = reader.mapping(node, "selector", SELECTOR_KEYS)?;
    let mut selector = Selector::default();
    for key in SELECTOR_KEYS {
        let Some(list) = fields.get(key) else {
            continue;
        };
        let path = join("selector", key);
        if *key == "pod_labels" {
            parse_pod_labels(reader, list, &path, &mut selector);
            continue;
        }
        let key_before = reader.diagnostics.len();
        let items = reader.strings(list, &path);
        if items.is_empty() && reader.diagnostics.len() == key_before {
            reader.error(
                list,
                &path,
                "an empty list matches no process: remove the key or give a glob",
            );
        }
        for item in items {
            match *key {
                "args" | "images" | "namespaces" => match ArgsGlob::new(item.value) {
                    Ok(glob) => match *key {
                        "args" => selector.args.push(glob),
                        "images" => selector.images.push(glob),
                        _ => selector.namespaces.push(glob),
                    },
                    Err(err) => reader.error(item.node, &item.key, format!("invalid glob: {err}")),
                },
                "executables" => {
                    if let Some(glob) = path_glob(reader, &item, false) {
                        selector.executables.push(glob);
                    }
                }
                _ => {
                    if let Some(glob) = path_glob(reader, &item, false) {
                        selector.cgroups.push(glob);
                    }
                }
            }
        }
    }
    if selector.is_empty() && reader.diagnostics.len() == before {
        reader.error(
            node,
            "selector",
            "give at least one of executables, args, cgroups, images, namespaces or pod_labels",
        );
    }
    (reader.diagnostics.len() == before).then_some(selector)
}

/// `pod_labels: {app: vllm, tier: "serving-*"}`: label names and value globs.
fn parse_pod_labels(reader: &mut Reader, node: &MarkedYaml, path: &str, selector: &mut Selector) {
    let saphyr::YamlData::Mapping(mapping) = &node.data else {
        reader.error(
            node,
            path,
            "expected a mapping of label names to value globs, e.g. {app: vllm}",
        );
        return;
    };
    if mapping.is_empty() {
        reader.error(
            node,
            path,
            "an empty mapping selects nothing: remove the key or give a label",
        );
    }
    for (name, value) in mapping {
        let Some(name) = name.data.as_str() else {
            reader.error(name, path, "label names must be strings");
            continue;
        };
        let key = join(path, name);
        let Some(value) = reader.string(value, &key) else {
            continue;
        };
        match ArgsGlob::new(value) {
            Ok(glob) => selector.pod_labels.push((name.to_owned(), glob)),
            Err(err) => reader.error(node, &key, format!("invalid glob: {err}")),
        }
    }
}

fn parse_allow(reader: &mut Reader, node: &MarkedYaml) -> Option<Allow> {
    let before = reader.diagnostics.len();
    let fields = reader.mapping(node, "allow", ALLOW_KEYS)?;
    let mut allow = Allow::default();
    if let Some(list) = fields.get("exec") {
        allow.exec = allow_globs(
            reader,
            list,
            "allow.exec",
            TemplateList::Exec,
            &mut allow.templates,
        );
    }
    if let Some(files) = fields.get("files") {
        if let Some(files) = reader.mapping(files, "allow.files", FILES_KEYS) {
            if let Some(list) = files.get("read") {
                allow.files_read = allow_globs(
                    reader,
                    list,
                    "allow.files.read",
                    TemplateList::Read,
                    &mut allow.templates,
                );
            }
            if let Some(list) = files.get("write") {
                allow.files_write = allow_globs(
                    reader,
                    list,
                    "allow.files.write",
                    TemplateList::Write,
                    &mut allow.templates,
                );
            }
        }
    }
    if let Some(list) = fields.get("capabilities") {
        for item in reader.strings(list, "allow.capabilities") {
            let Some(capability) = capabilities::by_name(item.value) else {
                let known: Vec<&str> = capabilities::CAPABILITIES.iter().map(|c| c.name).collect();
                reader.error(
                    item.node,
                    &item.key,
                    format!(
                        "unknown capability \"{}\" (expected one of: {})",
                        item.value,
                        known.join(", ")
                    ),
                );
                continue;
            };
            if allow.capabilities.iter().any(|c| c == capability.name) {
                continue;
            }
            allow.capabilities.push(capability.name.to_owned());
            for (patterns, list) in [
                (capability.exec, TemplateList::Exec),
                (capability.read, TemplateList::Read),
                (capability.write, TemplateList::Write),
            ] {
                for pattern in patterns {
                    // Built in and tested (capability_globs_compile): they cannot fail.
                    match Template::parse(pattern) {
                        Ok(Some(template)) => allow.templates.push((list, template)),
                        Ok(None) => {
                            if let Ok(glob) = PathGlob::new(pattern) {
                                match list {
                                    TemplateList::Exec => allow.exec.push(glob),
                                    TemplateList::Read => allow.files_read.push(glob),
                                    TemplateList::Write => allow.files_write.push(glob),
                                }
                            }
                        }
                        Err(_) => {}
                    }
                }
            }
        }
    }
    if let Some(network) = fields.get("network") {
        if let Some(network) = reader.mapping(network, "allow.network", NETWORK_KEYS) {
            if let Some(list) = network.get("connect") {
                allow.connect = addr_rules(reader, list, "allow.network.connect");
            }
            if let Some(list) = network.get("listen") {
                allow.listen = addr_rules(reader, list, "allow.network.listen");
            }
            if let Some(list) = network.get("udp_connect") {
                allow.udp_connect = addr_rules(reader, list, "allow.network.udp_connect");
            }
            if let Some(list) = network.get("unix") {
                allow.unix = Some(path_globs(reader, list, "allow.network.unix", true).into());
            }
        }
    }
    if let Some(list) = fields.get("devices") {
        for item in reader.strings(list, "allow.devices") {
            match DeviceClass::from_name(item.value) {
                Some(class) if !allow.devices.contains(&class) => allow.devices.push(class),
                Some(_) => {}
                None => {
                    let known: Vec<&str> = DeviceClass::ALL.iter().map(|c| c.name()).collect();
                    reader.error(
                        item.node,
                        &item.key,
                        format!(
                            "unknown device class \"{}\" (expected one of: {})",
                            item.value,
                            known.join(", ")
                        ),
                    );
                }
            }
        }
    }
    if let Some(node) = fields.get("io_uring") {
        if matches!(node.data, saphyr::YamlData::Sequence(_)) {
            allow.io_uring_ops = reader
                .strings(node, "allow.io_uring")
                .iter()
                .map(|item| item.value.to_owned())
                .collect();
        } else {
            allow.io_uring = reader.boolean(node, "allow.io_uring").unwrap_or(false);
        }
    }
    if let Some(list) = fields.get("transitions") {
        for item in reader.strings(list, "allow.transitions") {
            match check_name(item.value) {
                Ok(()) => allow.transitions.push(item.value.to_owned()),
                Err(err) => reader.error(item.node, &item.key, err),
            }
        }
    }
    (reader.diagnostics.len() == before).then_some(allow)
}

/// The globs of an allow list: those naming `${variables}` go to `templates` (checked
/// here, made concrete per process), the others are compiled.
fn allow_globs(
    reader: &mut Reader,
    list: &MarkedYaml,
    key: &str,
    which: TemplateList,
    templates: &mut Vec<(TemplateList, Template)>,
) -> PathGlobs {
    let mut globs = PathGlobs::default();
    for item in reader.strings(list, key) {
        match Template::parse(item.value) {
            Ok(None) => globs.extend(path_glob(reader, &item, false)),
            Ok(Some(template)) => {
                // The glob must also compile once its variables have values.
                let sample = template.as_str().replace("${", "/x").replace('}', "");
                match PathGlob::new(&sample) {
                    Ok(_) => templates.push((which, template)),
                    Err(err) => reader.error(item.node, &item.key, format!("invalid glob: {err}")),
                }
            }
            Err(err) => reader.error(item.node, &item.key, err),
        }
    }
    globs
}

/// A path glob of a list item: compiled, and absolute (or `@name` for unix sockets).
pub(crate) fn path_glob(
    reader: &mut Reader,
    item: &yaml::Item,
    abstract_sockets: bool,
) -> Option<PathGlob> {
    let pattern = item.value;
    let absolute = pattern.starts_with('/')
        || pattern.starts_with("**")
        || (abstract_sockets && pattern.starts_with('@'));
    if !absolute {
        let expected = if abstract_sockets {
            "\"/\", \"**\" or \"@\" (abstract sockets)"
        } else {
            "\"/\" or \"**\""
        };
        reader.error(
            item.node,
            &item.key,
            format!("glob \"{pattern}\" must start with {expected}: paths are absolute"),
        );
        return None;
    }
    match PathGlob::new(pattern) {
        Ok(glob) => Some(glob),
        Err(err) => {
            reader.error(item.node, &item.key, format!("invalid glob: {err}"));
            None
        }
    }
}

pub(crate) fn path_globs(
    reader: &mut Reader,
    list: &MarkedYaml,
    key: &str,
    abstract_sockets: bool,
) -> Vec<PathGlob> {
    reader
        .strings(list, key)
        .iter()
        .filter_map(|item| path_glob(reader, item, abstract_sockets))
        .collect()
}

fn addr_rules(reader: &mut Reader, list: &MarkedYaml, key: &str) -> Vec<AddrRule> {
    reader
        .strings(list, key)
        .iter()
        .filter_map(|item| match AddrRule::parse(item.value) {
            Ok(rule) => Some(rule),
            Err(err) => {
                reader.error(item.node, &item.key, err);
                None
            }
        })
        .collect()
}

/// One diagnostic for every name defined again after its first definition.
pub(crate) fn duplicate_names(names: &[ProfileName]) -> Vec<Diagnostic> {
    let mut first: std::collections::HashMap<&str, &Location> = std::collections::HashMap::new();
    let mut diagnostics = Vec::new();
    for entry in names {
        match first.get(entry.name.as_str()) {
            Some(location) => diagnostics.push(Diagnostic {
                file: entry.location.file.clone(),
                line: entry.location.line,
                column: entry.location.column,
                message: format!(
                    "name: duplicate profile name \"{}\" (first defined at {location})",
                    entry.name
                ),
            }),
            None => {
                first.insert(&entry.name, &entry.location);
            }
        }
    }
    diagnostics
}
