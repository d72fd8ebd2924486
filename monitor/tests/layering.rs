//! Keeps `monitor/src` layered by data flow: each top-level module (a folder such as
//! `event/`, or a file such as `daemon.rs`) may import (`crate::...` paths) only from the
//! modules listed before it in [`LAYERS`], so there is no import cycle between them.
//!
//! Test code (`tests.rs`, files under a `tests/` folder, `#[cfg(test)]` items) and
//! `#[cfg(doc)]` imports may reach anywhere: they are not part of the flow. Comments and
//! string literals are skipped; a doc link is not an import.
//!
//! An edge that goes up fails the test with the file and the path that makes it. The fix is
//! to move the item that sits in the wrong layer down to where its users are (a type or a
//! constant used by a lower layer), not to re-export it.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// The top-level modules from the bottom up: a module may use those before it.
const LAYERS: &[&str] = &[
    // Helpers of the unit tests (`#[cfg(test)]`): they use nothing of the crate.
    "test_support",
    // The records that flow: kernel events decoded, alerts, the clock, the classifier.
    "event",
    // The monitor's own counters, liveness and logs.
    "telemetry",
    // Process table, procfs, cgroups, containers, devices.
    "host",
    // YAML, profiles, globs, CIDRs, reload.
    "config",
    // Loading the eBPF programs, policy maps, BTF, syscall tables, fanotify guards.
    "kernel",
    // Event records, sinks, spool, OTLP, trace writer.
    "output",
    // The rules engine and host guards' judgement.
    "rules",
    // Reader and processor, self-protection.
    "pipeline",
    // `monitor run` and `trace`: wires the layers below together.
    "daemon",
    // `monitor learn`: the daemon with a learner.
    "learn",
    // The command line.
    "cli",
];

/// Files that are no module of their own: the crate root and the binary.
const ROOTS: &[&str] = &["lib", "main"];

#[test]
fn top_level_modules_are_layered() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = edges(&src);
    let rank = |module: &str| LAYERS.iter().position(|m| *m == module);
    let mut problems = Vec::new();
    let mut modules = BTreeSet::new();
    for ((from, to), sites) in &edges {
        modules.insert(from.clone());
        modules.insert(to.clone());
        match (rank(from), rank(to)) {
            (Some(a), Some(b)) if b < a => {}
            (Some(_), Some(_)) => problems.push(format!(
                "`{from}` imports `{to}`, which is not below it in LAYERS ({})",
                sites.join("; ")
            )),
            _ => {}
        }
    }
    for module in top_level_modules(&src) {
        if rank(&module).is_none() {
            problems.push(format!(
                "top-level module `{module}` is in no layer: add it to LAYERS in monitor/tests/layering.rs, above what it uses"
            ));
        }
    }
    let cycle = find_cycle(&edges);
    if let Some(cycle) = &cycle {
        problems.push(format!("import cycle: {}", cycle.join(" -> ")));
    }
    assert!(
        problems.is_empty(),
        "monitor/src is not layered by data flow (bottom up: {}):\n{}\nMove the item that sits in the wrong layer down to its users.",
        LAYERS.join(" < "),
        problems.join("\n")
    );
}

/// The checker itself: an upward import and a cycle are found, with the edge named.
#[test]
fn an_upward_import_is_found() {
    let dir = tempdir();
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("event")).unwrap();
    std::fs::write(
        src.join("event/mod.rs"),
        "// crate::rules in a comment\nuse crate::rules::Engine;\nconst A: &str = \"crate::cli\";\n#[cfg(test)]\nmod tests { use crate::cli::Cli; }\n",
    )
    .unwrap();
    std::fs::write(
        src.join("rules.rs"),
        "use crate::{event::{self, Event}, output::x};\n",
    )
    .unwrap();
    let edges = edges(&src);
    let found: Vec<_> = edges.keys().cloned().collect();
    assert_eq!(
        found,
        [
            ("event".to_owned(), "rules".to_owned()),
            ("rules".to_owned(), "event".to_owned()),
            ("rules".to_owned(), "output".to_owned()),
        ]
    );
    assert_eq!(
        edges[&("event".to_owned(), "rules".to_owned())],
        ["src/event/mod.rs: crate::rules::Engine"]
    );
    let cycle = find_cycle(&edges).unwrap();
    assert_eq!(cycle, ["event", "rules", "event"]);
    std::fs::remove_dir_all(dir).unwrap();
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("monitor-layering-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The top-level modules: `src/NAME.rs` and `src/NAME/`.
fn top_level_modules(src: &Path) -> BTreeSet<String> {
    let mut modules = BTreeSet::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap();
        let name = name.strip_suffix(".rs").unwrap_or(name);
        if !ROOTS.contains(&name) {
            modules.insert(name.to_owned());
        }
    }
    modules
}

/// (importing module, imported module) -> where: "file: path" for each import.
fn edges(src: &Path) -> BTreeMap<(String, String), Vec<String>> {
    let mut edges: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut files = Vec::new();
    walk(src, &mut files);
    files.sort();
    for file in files {
        let relative = file.strip_prefix(src).unwrap();
        let top = relative.components().next().unwrap();
        let top = top.as_os_str().to_str().unwrap();
        let top = top.strip_suffix(".rs").unwrap_or(top);
        let is_test = relative.file_name().unwrap() == "tests.rs"
            || relative.components().any(|c| c.as_os_str() == "tests");
        if ROOTS.contains(&top) || is_test {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let code = without_test_items(&strip(&text));
        let shown = Path::new("src").join(relative);
        for path in crate_paths(&code) {
            let target = path.split("::").next().unwrap_or_default();
            if target != top && !target.is_empty() {
                edges
                    .entry((top.to_owned(), target.to_owned()))
                    .or_default()
                    .push(format!("{}: crate::{path}", shown.display()));
            }
        }
    }
    edges
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The source with comments and the contents of string and char literals removed.
fn strip(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && !chars
                .get(i.wrapping_sub(1))
                .is_some_and(|p| p.is_alphanumeric() || *p == '_')
        {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            while j < chars.len() {
                if chars[j] == '"' && (1..=hashes).all(|k| chars.get(j + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A char literal ('x', '\n', '\'') or a lifetime ('a).
            if next == Some('\\') {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// The code without the items under `#[cfg(test)]` or `#[cfg(doc)]`.
fn without_test_items(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    loop {
        let found = ["#[cfg(test)]", "#[cfg(doc)]"]
            .iter()
            .filter_map(|a| rest.find(a).map(|i| (i, a.len())))
            .min();
        let Some((at, len)) = found else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..at]);
        rest = &rest[at + len..];
        // The item ends at its first `;` outside braces, or with its outermost block.
        let mut depth = 0usize;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = i + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &rest[end..];
    }
}

/// Every `crate::` path in the code, the trees of `use crate::{...}` expanded to their first
/// segment (`crate::{a::b, c}` gives `a::b` and `c`).
fn crate_paths(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(found) = code[from..].find("crate::") {
        let at = from + found;
        from = at + "crate::".len();
        if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
            continue; // `$crate::` or a longer name
        }
        let rest = code[from..].trim_start();
        if let Some(tree) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            for c in tree.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 || (depth == 1 && c == ',') {
                    push_path(&mut paths, &item);
                    item.clear();
                    if depth == 0 {
                        break;
                    }
                } else {
                    item.push(c);
                }
            }
        } else {
            push_path(&mut paths, rest);
        }
    }
    paths
}

/// The leading `a::b::c` of `text`.
fn push_path(paths: &mut Vec<String>, text: &str) {
    let text = text.trim_start();
    let path: String = text
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
        .collect();
    let path = path.trim_end_matches(':');
    if !path.is_empty() && path != "self" {
        paths.push(path.to_owned());
    }
}

/// A cycle among the edges, if any: `[a, b, a]`.
fn find_cycle(edges: &BTreeMap<(String, String), Vec<String>>) -> Option<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        next.entry(from).or_default().push(to);
    }
    fn visit<'a>(
        node: &'a str,
        next: &BTreeMap<&'a str, Vec<&'a str>>,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(start) = stack.iter().position(|n| *n == node) {
            let mut cycle: Vec<String> = stack[start..].iter().map(|n| n.to_string()).collect();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if !done.insert(node) {
            return None;
        }
        stack.push(node);
        for to in next.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(to, next, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    for node in next.keys() {
        if let Some(cycle) = visit(node, &next, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}
