//! Path globs: `*` and `?` stay within one path component, `**` crosses `/`,
//! `[abc]` / `[a-z]` / `[!a]` match one character.

/// A compiled glob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    pattern: String,
    tokens: Vec<Token>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Literal(char),
    Any,      // ?
    Star,     // *
    StarStar, // **
    /// `/**` at the end: the directory itself or anything below it.
    AnyTail,
    /// `/**/` in the middle: one `/`, or any directories between two.
    AnyDirs,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Glob {
    /// Compiles `pattern`; errors name what is wrong.
    pub fn new(pattern: &str) -> Result<Glob, String> {
        let chars: Vec<char> = pattern.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '/' if chars.get(i + 1) == Some(&'*')
                    && chars.get(i + 2) == Some(&'*')
                    && matches!(chars.get(i + 3), None | Some('/')) =>
                {
                    if chars.get(i + 3).is_none() {
                        tokens.push(Token::AnyTail);
                        i += 3;
                    } else {
                        tokens.push(Token::AnyDirs);
                        i += 4;
                    }
                    continue;
                }
                '*' if chars.get(i + 1) == Some(&'*') => {
                    tokens.push(Token::StarStar);
                    i += 2;
                    while chars.get(i) == Some(&'*') {
                        i += 1;
                    }
                    continue;
                }
                '*' => tokens.push(Token::Star),
                '?' => tokens.push(Token::Any),
                '[' => {
                    let mut j = i + 1;
                    let negated = matches!(chars.get(j), Some('!') | Some('^'));
                    if negated {
                        j += 1;
                    }
                    let mut ranges = Vec::new();
                    let mut closed = false;
                    let mut first = true;
                    while j < chars.len() {
                        let c = chars[j];
                        if c == ']' && !first {
                            closed = true;
                            break;
                        }
                        first = false;
                        if chars.get(j + 1) == Some(&'-')
                            && chars.get(j + 2).is_some_and(|&e| e != ']')
                        {
                            let end = chars[j + 2];
                            if end < c {
                                return Err(format!(
                                    "invalid range `{c}-{end}` in glob `{pattern}`"
                                ));
                            }
                            ranges.push((c, end));
                            j += 3;
                        } else {
                            ranges.push((c, c));
                            j += 1;
                        }
                    }
                    if !closed {
                        return Err(format!("unclosed `[` in glob `{pattern}`"));
                    }
                    tokens.push(Token::Class { negated, ranges });
                    i = j;
                }
                '\\' => {
                    let Some(&next) = chars.get(i + 1) else {
                        return Err(format!("trailing `\\` in glob `{pattern}`"));
                    };
                    tokens.push(Token::Literal(next));
                    i += 1;
                }
                c => tokens.push(Token::Literal(c)),
            }
            i += 1;
        }
        Ok(Glob {
            pattern: pattern.to_owned(),
            tokens,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether `text` matches the whole glob.
    pub fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        // Iterative matcher with memo: (token index, text index) -> visited.
        let mut seen = vec![false; (self.tokens.len() + 1) * (text.len() + 1)];
        self.match_at(0, &text, 0, &mut seen)
    }

    fn match_at(&self, t: usize, text: &[char], s: usize, seen: &mut [bool]) -> bool {
        let key = t * (text.len() + 1) + s;
        if seen[key] {
            return false;
        }
        seen[key] = true;
        let Some(token) = self.tokens.get(t) else {
            return s == text.len();
        };
        match token {
            Token::Literal(c) => text.get(s) == Some(c) && self.match_at(t + 1, text, s + 1, seen),
            Token::Any => {
                text.get(s).is_some_and(|&c| c != '/') && self.match_at(t + 1, text, s + 1, seen)
            }
            Token::Class { negated, ranges } => {
                text.get(s).is_some_and(|&c| {
                    c != '/' && ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
                }) && self.match_at(t + 1, text, s + 1, seen)
            }
            Token::Star => {
                let mut end = s;
                loop {
                    if self.match_at(t + 1, text, end, seen) {
                        return true;
                    }
                    if end == text.len() || text[end] == '/' {
                        return false;
                    }
                    end += 1;
                }
            }
            Token::StarStar => (s..=text.len()).any(|end| self.match_at(t + 1, text, end, seen)),
            Token::AnyTail => s == text.len() || text[s] == '/',
            Token::AnyDirs => {
                text.get(s) == Some(&'/')
                    && (s..text.len())
                        .filter(|&i| text[i] == '/')
                        .any(|i| self.match_at(t + 1, text, i + 1, seen))
            }
        }
    }
}

/// What a glob matched on this host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expansion {
    pub files: Vec<std::path::PathBuf>,
    /// The walk stopped at its budget of directory entries before it saw everything: files
    /// may be missing. (A `**` walk also stops [`DEPTH_LIMIT`] levels down, by design.)
    pub incomplete: bool,
}

/// How deep a `**` walk goes below the glob's literal directory.
pub const DEPTH_LIMIT: usize = 8;

/// Files on this host that an absolute path glob matches (symlinks followed), visiting at
/// most `budget` directory entries so that a broad pattern cannot stall start-up.
pub fn expand(glob: &Glob, budget: usize) -> Vec<std::path::PathBuf> {
    expand_where(glob, budget, std::fs::Metadata::is_file).files
}

/// Executable regular files that an absolute path glob matches (what an exec can run).
pub fn expand_executables(glob: &Glob, budget: usize) -> Expansion {
    use std::os::unix::fs::PermissionsExt as _;
    expand_where(glob, budget, |meta| {
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    })
}

/// Files whose metadata (symlinks followed) `keep` accepts, among those `glob` matches.
pub fn expand_where(
    glob: &Glob,
    budget: usize,
    keep: impl Fn(&std::fs::Metadata) -> bool,
) -> Expansion {
    let mut expansion = Expansion::default();
    let pattern = glob.as_str();
    if !pattern.starts_with('/') {
        return expansion;
    }
    // Walk from the deepest directory without wildcards.
    let wild = pattern.find(['*', '?', '[']).unwrap_or(pattern.len());
    let base = match pattern[..wild].rfind('/') {
        Some(0) | None => "/".to_owned(),
        Some(i) => pattern[..i].to_owned(),
    };
    let depth_limit = if pattern.contains("**") {
        DEPTH_LIMIT
    } else {
        pattern[base.len()..].matches('/').count()
    };
    let mut budget = budget;
    let mut stack = vec![(std::path::PathBuf::from(&base), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if budget == 0 {
                expansion.incomplete = true;
                return expansion;
            }
            budget -= 1;
            let path = entry.path();
            let text = path.to_string_lossy();
            if glob.matches(&text) && std::fs::metadata(&path).is_ok_and(|m| keep(&m)) {
                expansion.files.push(path.clone());
            }
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_dir && depth + 1 < depth_limit {
                stack.push((path, depth + 1));
            }
        }
    }
    expansion
}

#[cfg(test)]
mod tests {
    use super::Glob;

    #[test]
    fn expands_on_this_host() {
        let found = super::expand(&Glob::new("/usr/bin/pyth*3").unwrap(), 100_000);
        assert!(found.iter().any(|p| p.ends_with("python3")), "{found:?}");
        assert!(super::expand(&Glob::new("relative/*").unwrap(), 10).is_empty());
        let dir = std::env::temp_dir().join(format!("glob-expand-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/b/x.bin"), "").unwrap();
        let pattern = format!("{}/**/*.bin", dir.display());
        let found = super::expand(&Glob::new(&pattern).unwrap(), 1000);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found, [dir.join("a/b/x.bin")]);
    }

    #[test]
    fn executables_only_and_incomplete_walks_say_so() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("glob-exec-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for (name, mode) in [("run", 0o755), ("data", 0o644), ("sub/tool", 0o700)] {
            std::fs::write(dir.join(name), "").unwrap();
            std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(mode))
                .unwrap();
        }
        let glob = Glob::new(&format!("{}/**", dir.display())).unwrap();
        let mut found = super::expand_executables(&glob, 1000);
        found.files.sort();
        let cut = super::expand_executables(&glob, 2);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.files, [dir.join("run"), dir.join("sub/tool")]);
        assert!(!found.incomplete);
        assert!(cut.incomplete);
    }

    fn m(p: &str, t: &str) -> bool {
        Glob::new(p).unwrap().matches(t)
    }

    #[test]
    fn star_stays_in_component() {
        assert!(m("/usr/bin/python3*", "/usr/bin/python3.11"));
        assert!(!m("/usr/*/python3", "/usr/local/bin/python3"));
        assert!(m("/opt/*/bin/python*", "/opt/conda/bin/python"));
        assert!(m("*vllm.entrypoints*", "python -m vllm.entrypoints.openai"));
    }

    #[test]
    fn double_star_crosses() {
        assert!(m("/models/**", "/models/a/b/c.safetensors"));
        assert!(m("**/*.gguf", "/var/lib/x/y.gguf"));
        assert!(!m("/models/**", "/modelsx/a"));
        assert!(m("/a/**/b", "/a/x/y/b"));
        // The directory itself, and no directory in between.
        assert!(m("/models/**", "/models"));
        assert!(m("/a/**/b", "/a/b"));
        assert!(!m("/a/**/b", "/ab"));
        assert!(!m("/models/**", "/models2"));
        assert!(m("**/x", "/y/x"));
    }

    #[test]
    fn classes_and_escapes() {
        assert!(m("/dev/nvidia[0-9]", "/dev/nvidia3"));
        assert!(!m("/dev/nvidia[!0-9]", "/dev/nvidia3"));
        assert!(m("a\\*b", "a*b"));
        assert!(!m("a\\*b", "axb"));
        assert!(m("?", "x"));
        assert!(!m("?", "/"));
    }

    #[test]
    fn bad_globs_are_errors() {
        assert!(Glob::new("/dev/[abc").unwrap_err().contains("unclosed"));
        assert!(Glob::new("[z-a]").unwrap_err().contains("invalid range"));
        assert!(Glob::new("x\\").is_err());
    }

    #[test]
    fn pathological_pattern_is_fast() {
        let g = Glob::new("**a**a**a**a**a**a**b").unwrap();
        assert!(!g.matches(&"a".repeat(200)));
    }
}
