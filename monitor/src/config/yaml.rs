//! Reading YAML with positions: every value read through [`Reader`] is type-checked, and
//! every problem becomes a [`Diagnostic`] naming the file, line, column and key, so that
//! all the errors of a file are reported at once.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};

/// One problem in a profile or config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no position (the file could not be read).
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub message: String,
}

impl Diagnostic {
    /// A problem with the whole file (no position).
    pub fn file(file: &Path, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: file.to_owned(),
            line: 0,
            column: 0,
            message: message.into(),
        }
    }

    /// A problem at the start of a node.
    pub(crate) fn at(file: &Path, node: &MarkedYaml, message: impl Into<String>) -> Diagnostic {
        let (line, column) = position(node);
        Diagnostic {
            file: file.to_owned(),
            line,
            column,
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    /// `FILE:LINE:COLUMN: message`, or `FILE: message` without a position.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

impl std::error::Error for Diagnostic {}

/// 1-based line and column of a node.
pub(crate) fn position(node: &MarkedYaml) -> (usize, usize) {
    let start = node.span.start;
    (start.line().max(1), start.col() + 1)
}

/// Parses every document of a YAML stream; a syntax error is one diagnostic.
pub(crate) fn load_documents<'input>(
    file: &Path,
    text: &'input str,
) -> Result<Vec<MarkedYaml<'input>>, Diagnostic> {
    MarkedYaml::load_from_str(text).map_err(|err| {
        let marker = err.marker();
        Diagnostic {
            file: file.to_owned(),
            line: marker.line().max(1),
            column: marker.col() + 1,
            message: format!("failed to parse YAML: {}", err.info()),
        }
    })
}

/// `parent.name`, or `name` at the top.
pub(crate) fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}.{name}")
    }
}

/// `parent[index]`.
pub(crate) fn index(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// What a node is, for "expected X, found Y".
fn describe(node: &MarkedYaml) -> &'static str {
    match &node.data {
        YamlData::Value(Scalar::Null) => "null",
        YamlData::Value(Scalar::Boolean(_)) => "a boolean",
        YamlData::Value(Scalar::Integer(_)) => "an integer",
        YamlData::Value(Scalar::FloatingPoint(_)) => "a number",
        YamlData::Value(Scalar::String(_)) | YamlData::Representation(..) => "a string",
        YamlData::Sequence(_) => "a list",
        YamlData::Mapping(_) => "a mapping",
        YamlData::Tagged(..) => "a tagged value",
        YamlData::Alias(_) => "an alias",
        YamlData::BadValue => "an invalid value",
    }
}

/// Whether a node is null (`key:` with nothing, `~`, `null`): counts as absent.
pub(crate) fn is_null(node: &MarkedYaml) -> bool {
    matches!(node.data, YamlData::Value(Scalar::Null))
}

/// A mapping whose keys were checked against the known ones.
pub(crate) struct Fields<'n, 'input> {
    entries: Vec<(&'n str, &'n MarkedYaml<'input>)>,
}

impl<'n, 'input> Fields<'n, 'input> {
    /// The value of a key, `None` when absent or null.
    pub(crate) fn get(&self, name: &str) -> Option<&'n MarkedYaml<'input>> {
        self.entries
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| *value)
            .filter(|value| !is_null(value))
    }
}

/// Reads nodes of one file, collecting diagnostics.
pub(crate) struct Reader<'f> {
    pub(crate) file: &'f Path,
    pub(crate) diagnostics: Vec<Diagnostic>,
}

impl<'f> Reader<'f> {
    pub(crate) fn new(file: &'f Path) -> Reader<'f> {
        Reader {
            file,
            diagnostics: Vec::new(),
        }
    }

    /// Records a problem at a node: `key: message`.
    pub(crate) fn error(&mut self, node: &MarkedYaml, key: &str, message: impl fmt::Display) {
        let message = if key.is_empty() {
            message.to_string()
        } else {
            format!("{key}: {message}")
        };
        self.diagnostics
            .push(Diagnostic::at(self.file, node, message));
    }

    /// The diagnostics, in the order of their positions in the file.
    pub(crate) fn finish(mut self) -> Vec<Diagnostic> {
        self.diagnostics.sort_by_key(|d| (d.line, d.column));
        self.diagnostics
    }

    fn wrong_type(&mut self, node: &MarkedYaml, key: &str, expected: &str) {
        let found = describe(node);
        self.error(node, key, format!("expected {expected}, found {found}"));
    }

    /// A mapping with string keys among `known`; unknown keys are reported at the key.
    pub(crate) fn mapping<'n, 'input>(
        &mut self,
        node: &'n MarkedYaml<'input>,
        key: &str,
        known: &[&str],
    ) -> Option<Fields<'n, 'input>> {
        let YamlData::Mapping(mapping) = &node.data else {
            self.wrong_type(node, key, "a mapping");
            return None;
        };
        let mut entries = Vec::with_capacity(mapping.len());
        for (name_node, value) in mapping {
            let Some(name) = name_node.data.as_str() else {
                self.error(name_node, key, "keys must be strings");
                continue;
            };
            if known.contains(&name) {
                entries.push((name, value));
            } else {
                let suggestion = suggest(name, known)
                    .map(|s| format!("did you mean \"{s}\"? "))
                    .unwrap_or_default();
                let message = format!(
                    "unknown key \"{name}\" ({suggestion}expected one of: {})",
                    known.join(", ")
                );
                self.error(name_node, key, message);
            }
        }
        Some(Fields { entries })
    }

    /// A string scalar.
    pub(crate) fn string<'n>(&mut self, node: &'n MarkedYaml, key: &str) -> Option<&'n str> {
        match node.data.as_str() {
            Some(text) => Some(text),
            None => {
                self.wrong_type(node, key, "a string");
                None
            }
        }
    }

    /// A list of strings, each with its key (`key[i]`) and node; wrong items are reported
    /// and skipped.
    pub(crate) fn strings<'n, 'input>(
        &mut self,
        node: &'n MarkedYaml<'input>,
        key: &str,
    ) -> Vec<Item<'n, 'input>> {
        let YamlData::Sequence(items) = &node.data else {
            self.wrong_type(node, key, "a list of strings");
            return Vec::new();
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let key = index(key, i);
            if let Some(value) = self.string(item, &key) {
                out.push(Item {
                    key,
                    value,
                    node: item,
                });
            }
        }
        out
    }

    /// A boolean (`true` / `false`; YAML 1.2, so `yes` / `no` are strings).
    pub(crate) fn boolean(&mut self, node: &MarkedYaml, key: &str) -> Option<bool> {
        match node.data {
            YamlData::Value(Scalar::Boolean(value)) => Some(value),
            _ => {
                self.wrong_type(node, key, "true or false");
                None
            }
        }
    }

    /// A non-negative integer.
    pub(crate) fn unsigned(&mut self, node: &MarkedYaml, key: &str) -> Option<u64> {
        match node.data {
            YamlData::Value(Scalar::Integer(value)) if value >= 0 => Some(value as u64),
            YamlData::Value(Scalar::Integer(_)) => {
                self.error(node, key, "expected a non-negative integer");
                None
            }
            _ => {
                self.wrong_type(node, key, "an integer");
                None
            }
        }
    }
}

/// A string item of a list.
pub(crate) struct Item<'n, 'input> {
    /// `parent[i]`
    pub(crate) key: String,
    pub(crate) value: &'n str,
    pub(crate) node: &'n MarkedYaml<'input>,
}

/// The known key closest to a misspelt one, if close enough to be a typo.
fn suggest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .filter(|(d, k)| *d <= 2 && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance, for suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_position_or_not() {
        let d = Diagnostic {
            file: "a.yaml".into(),
            line: 7,
            column: 14,
            message: "x: bad".into(),
        };
        assert_eq!(d.to_string(), "a.yaml:7:14: x: bad");
        assert_eq!(
            Diagnostic::file(Path::new("b.yaml"), "failed to read b.yaml: gone").to_string(),
            "b.yaml: failed to read b.yaml: gone"
        );
    }

    #[test]
    fn suggests_close_keys() {
        assert_eq!(suggest("conect", &["connect", "listen"]), Some("connect"));
        assert_eq!(suggest("zzz", &["connect", "listen"]), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
