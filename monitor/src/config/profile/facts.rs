//! Facts about a governed process that its profile's path globs may name, resolved once when
//! the process comes under the profile: `${python.prefix}/lib/**` is the interpreter's venv
//! on one host, `/opt/conda` on another and `/usr` in a container, with one profile.
//!
//! | variable | value |
//! |---|---|
//! | `${python.prefix}` | the venv of a Python interpreter (the directory of its `pyvenv.cfg`), else its installation prefix (`sys.prefix`) |
//! | `${python.base_prefix}` | the installation the venv was made from (`sys.base_prefix`; the prefix when not a venv) |
//! | `${home}` | `$HOME`, else the user's home in the process's `/etc/passwd` |
//! | `${cache}` | `$XDG_CACHE_HOME`, else `${home}/.cache` |
//! | `${tmp}` | `$TMPDIR`, else `/tmp` |
//! | `${model}` | the model path on the command line (`--model P`, `--model=P`, `-m P`, `vllm serve P`), made absolute |
//! | `${exe.dir}` | the directory of the executable |
//! | `${cwd}` | the working directory at exec |
//!
//! A glob whose variable has no value for a process (no `--model`, not a Python) allows
//! nothing for it. Values are inserted literally (a `*` in a path is not a wildcard).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

/// Every variable a glob may name, with what it stands for (for diagnostics and docs).
pub const VARIABLES: &[(&str, &str)] = &[
    (
        "python.prefix",
        "the Python venv, else the interpreter's prefix",
    ),
    (
        "python.base_prefix",
        "the Python installation a venv was made from",
    ),
    ("home", "$HOME, else the user's home directory"),
    ("cache", "$XDG_CACHE_HOME, else ${home}/.cache"),
    ("tmp", "$TMPDIR, else /tmp"),
    (
        "model",
        "the model path given on the command line (--model, -m)",
    ),
    ("exe.dir", "the directory of the executable"),
    ("cwd", "the working directory at exec"),
];

/// The values of the variables for one process; absent when unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Facts {
    values: BTreeMap<&'static str, String>,
}

impl Facts {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Sets a variable (one of [`VARIABLES`]; others are ignored). Trailing `/` are dropped,
    /// so that `${x}/**` reads the same for `/a` and `/a/`; relative values and `/` itself
    /// leave it unset.
    pub fn set(&mut self, name: &str, value: &str) {
        let Some(&(known, _)) = VARIABLES.iter().find(|(n, _)| *n == name) else {
            return;
        };
        // `/` is not a fact worth having: `${x}/**` would allow every path.
        let value = value.trim_end_matches('/');
        if value.starts_with('/') {
            self.values.insert(known, value.to_owned());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// What facts are resolved from: the process as the exec left it.
#[derive(Clone, Debug, Default)]
pub struct ProcessView<'a> {
    /// The executable as the kernel resolved it (symlinks followed).
    pub exe: &'a str,
    pub args: &'a [String],
    pub uid: Option<u32>,
    pub cwd: Option<String>,
    /// `NAME=value` entries of its environment (empty when unreadable).
    pub env: Vec<String>,
    /// Where the process's `/` is, to read its files (`/proc/PID/root`; `/` in tests of a
    /// tree made elsewhere it is that tree's root).
    pub root: PathBuf,
}

impl ProcessView<'_> {
    fn env(&self, name: &str) -> Option<&str> {
        self.env.iter().rev().find_map(|entry| {
            entry
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('='))
                .filter(|v| !v.is_empty())
        })
    }

    /// A path of the process's view, on this host.
    fn host(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }
}

/// Reads what [`resolve`] needs of a live process from `/proc` (best effort: a process that
/// already exited yields facts of its exe and argv alone).
pub fn view_of_live<'a>(
    tgid: u32,
    exe: &'a str,
    args: &'a [String],
    uid: Option<u32>,
) -> ProcessView<'a> {
    let proc_dir = PathBuf::from(format!("/proc/{tgid}"));
    let cwd = std::fs::read_link(proc_dir.join("cwd"))
        .ok()
        .and_then(|p| p.to_str().map(str::to_owned));
    let env = std::fs::read(proc_dir.join("environ"))
        .map(|bytes| {
            bytes
                .split(|&b| b == 0)
                .filter(|e| !e.is_empty())
                .filter_map(|e| std::str::from_utf8(e).ok().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let root = proc_dir.join("root");
    let root = if std::fs::metadata(&root).is_ok() {
        root
    } else {
        PathBuf::from("/")
    };
    ProcessView {
        exe,
        args,
        uid,
        cwd,
        env,
        root,
    }
}

/// The facts of a process.
pub fn resolve(view: &ProcessView) -> Facts {
    let mut facts = Facts::default();
    if let Some(dir) = parent(view.exe) {
        facts.set("exe.dir", &dir);
    }
    if let Some(cwd) = &view.cwd {
        facts.set("cwd", cwd);
    }
    facts.set("tmp", view.env("TMPDIR").unwrap_or("/tmp"));
    let home = view
        .env("HOME")
        .map(str::to_owned)
        .or_else(|| view.uid.and_then(|uid| passwd_home(view, uid)));
    if let Some(home) = &home {
        facts.set("home", home);
    }
    match view.env("XDG_CACHE_HOME") {
        Some(cache) => facts.set("cache", cache),
        None => {
            if let Some(home) = &home {
                facts.set("cache", &format!("{}/.cache", home.trim_end_matches('/')));
            }
        }
    }
    let python = is_python(view.exe);
    if python {
        if let Some((prefix, base)) = python_prefixes(view) {
            facts.set("python.prefix", &prefix);
            facts.set("python.base_prefix", &base);
        }
    }
    if let Some(model) = model_arg(view.args, python) {
        let absolute = if model.starts_with('/') {
            Some(model.to_owned())
        } else if let Some(cwd) = view.cwd.as_deref() {
            // `org/name` is a Hub id unless the directory exists here.
            let path = normalize(&format!("{cwd}/{model}"));
            (looks_like_path(model) || view.host(&path).exists()).then_some(path)
        } else {
            None
        };
        if let Some(path) = absolute {
            facts.set("model", &normalize(&path));
        }
    }
    facts
}

fn parent(path: &str) -> Option<String> {
    let dir = Path::new(path).parent()?.to_str()?;
    (!dir.is_empty()).then(|| dir.to_owned())
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// `python`, `python3`, `python3.12`, `python3.12d`... (not `python-config`).
fn is_python(exe: &str) -> bool {
    file_name(exe).strip_prefix("python").is_some_and(|rest| {
        rest.chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == 'd')
    })
}

/// A model argument that is a relative path (`./m`, `models/x.gguf`) rather than a Hub id
/// (`org/name`): it names a file or starts with `.`.
fn looks_like_path(arg: &str) -> bool {
    arg.starts_with('.') || arg.ends_with(".gguf") || arg.ends_with(".bin") || !arg.contains('/')
}

/// `/a/./b/../c` to `/a/c`, without touching the file system.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The home directory of `uid` in the process's own `/etc/passwd`.
fn passwd_home(view: &ProcessView, uid: u32) -> Option<String> {
    let text = std::fs::read_to_string(view.host("/etc/passwd")).ok()?;
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 6 && fields[2].parse() == Ok(uid)).then(|| fields[5].to_owned())
    })
}

/// `(sys.prefix, sys.base_prefix)` as CPython finds them: the interpreter is the path it was
/// started by (argv[0], looked up in `$PATH` when it has no `/`), not the file the kernel
/// ran (a venv's `bin/python` is a link to the base interpreter); a `pyvenv.cfg` next to it
/// or one directory up makes that directory the venv, and its `home` key names the base
/// interpreter's directory. Without a venv, the prefix is the directory above the
/// interpreter's `bin`.
fn python_prefixes(view: &ProcessView) -> Option<(String, String)> {
    let installed = installation_prefix(view.exe)?;
    let started = view.args.first().and_then(|argv0| started_as(view, argv0));
    for candidate in started.iter().map(String::as_str).chain([view.exe]) {
        let Some(bin) = parent(candidate) else {
            continue;
        };
        for dir in [Some(bin.clone()), parent(&bin)].into_iter().flatten() {
            let cfg = format!("{}/pyvenv.cfg", dir.trim_end_matches('/'));
            let Ok(text) = std::fs::read_to_string(view.host(&cfg)) else {
                continue;
            };
            let base = venv_home(&text)
                .and_then(|home| installation_prefix(&format!("{home}/python")))
                .unwrap_or_else(|| installed.clone());
            return Some((normalize(&dir), base));
        }
    }
    Some((installed.clone(), installed))
}

/// The `home` key of a `pyvenv.cfg` (the base interpreter's directory).
fn venv_home(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "home").then(|| value.trim().to_owned())
    })
}

/// The prefix of an interpreter at `exe`: the directory above its `bin`, else its directory.
fn installation_prefix(exe: &str) -> Option<String> {
    let dir = parent(exe)?;
    if file_name(&dir) == "bin" {
        parent(&dir).or(Some("/".to_owned()))
    } else {
        Some(dir)
    }
}

/// The absolute path the interpreter was started by, from argv[0].
fn started_as(view: &ProcessView, argv0: &str) -> Option<String> {
    if argv0.starts_with('/') {
        return Some(normalize(argv0));
    }
    if argv0.contains('/') {
        let cwd = view.cwd.as_deref()?;
        return Some(normalize(&format!("{cwd}/{argv0}")));
    }
    view.env("PATH")?
        .split(':')
        .filter(|dir| dir.starts_with('/'))
        .map(|dir| format!("{}/{argv0}", dir.trim_end_matches('/')))
        // A venv's interpreter is a link, maybe to a path of the process's own view.
        .find(|path| view.host(path).symlink_metadata().is_ok())
}

/// The model path on the command line. For a Python interpreter its own options come
/// first (`-m module` there names a module, not a model): only what follows the module or
/// script is read.
fn model_arg(args: &[String], python: bool) -> Option<&str> {
    let mut rest = args.get(1..).unwrap_or_default();
    if python {
        let mut i = 0;
        while i < rest.len() {
            let arg = rest[i].as_str();
            if arg == "-m" || arg == "-c" {
                i += 2;
                break;
            }
            if !arg.starts_with('-') {
                i += 1;
                break;
            }
            i += 1;
        }
        rest = rest.get(i..).unwrap_or_default();
    }
    let mut iter = rest.iter().map(String::as_str).peekable();
    while let Some(arg) = iter.next() {
        if let Some(value) = arg.strip_prefix("--model=") {
            return Some(value);
        }
        if matches!(arg, "--model" | "-m" | "--model-path") {
            return iter.next();
        }
        if arg == "serve" {
            if let Some(next) = iter.peek().filter(|n| !n.starts_with('-')) {
                return Some(next);
            }
        }
    }
    None
}

/// A glob pattern with `${variable}`s, checked at load and made concrete per process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pattern: String,
}

impl Template {
    /// `None` when the pattern names no variable (it is an ordinary glob); an error names
    /// an unknown variable or an unclosed `${`.
    pub fn parse(pattern: &str) -> Result<Option<Template>, String> {
        if !pattern.contains("${") {
            return Ok(None);
        }
        let mut rest = pattern;
        while let Some(start) = rest.find("${") {
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                return Err(format!("unclosed \"${{\" in \"{pattern}\""));
            };
            let name = &after[..end];
            if !VARIABLES.iter().any(|(n, _)| *n == name) {
                let known: Vec<String> =
                    VARIABLES.iter().map(|(n, _)| format!("${{{n}}}")).collect();
                return Err(format!(
                    "unknown variable \"${{{name}}}\" in \"{pattern}\" (known: {})",
                    known.join(", ")
                ));
            }
            rest = &after[end + 1..];
        }
        if !pattern.starts_with("${") && !pattern.starts_with('/') && !pattern.starts_with("**") {
            return Err(format!(
                "glob \"{pattern}\" must start with \"/\", \"**\" or a variable: paths are absolute"
            ));
        }
        Ok(Some(Template {
            pattern: pattern.to_owned(),
        }))
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// The glob for a process, with each value escaped so it matches itself literally;
    /// `None` when a variable it names has no value.
    pub fn resolve(&self, facts: &Facts) -> Option<String> {
        let mut out = String::new();
        let mut rest = self.pattern.as_str();
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after.find('}')?;
            let value = facts.get(&after[..end])?;
            for c in value.chars() {
                if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                    out.push('\\');
                }
                out.push(c);
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Some(out)
    }
}

#[cfg(test)]
mod tests;
