//! Path globs: `*` and `?` stay within one path component, `**` crosses `/`,
//! `[abc]` / `[a-z]` / `[!a]` match one character. A [`GlobSet`] matches many at once (the
//! rules' allow lists, once per event).

/// A compiled glob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    pattern: String,
    tokens: Vec<Token>,
    /// The leading literal tokens as text, compared as bytes before the matcher runs: most
    /// paths fail on it, and those that pass are matched from its end.
    prefix: String,
    /// How many tokens `prefix` stands for.
    prefix_tokens: usize,
}

/// What a glob is, for [`GlobSet`]: most patterns of a profile are a literal path or a
/// directory tree, which a set looks up instead of matching.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shape<'a> {
    /// Only literal characters: matches exactly this text.
    Literal(&'a str),
    /// `DIR/**`: `DIR` itself, or anything below it (`DIR` is empty for `/**`).
    Tree(&'a str),
    /// Anything else: matched by [`Glob::matches`].
    Other,
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
        let prefix: String = tokens
            .iter()
            .map_while(|t| match t {
                Token::Literal(c) => Some(*c),
                _ => None,
            })
            .collect();
        let prefix_tokens = prefix.chars().count();
        Ok(Glob {
            pattern: pattern.to_owned(),
            tokens,
            prefix,
            prefix_tokens,
        })
    }

    /// Whether this glob is a literal, a directory tree or something else.
    pub fn shape(&self) -> Shape<'_> {
        match &self.tokens[self.prefix_tokens..] {
            [] => Shape::Literal(&self.prefix),
            [Token::AnyTail] => Shape::Tree(&self.prefix),
            _ => Shape::Other,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether `text` matches the whole glob.
    pub fn matches(&self, text: &str) -> bool {
        let Some(rest) = text.strip_prefix(self.prefix.as_str()) else {
            return false;
        };
        let tokens = &self.tokens[self.prefix_tokens..];
        if tokens.is_empty() {
            return rest.is_empty();
        }
        // Matched from the end of the literal prefix: positions in `rest` stand for the same
        // characters as in `text` (the tokens look at most at the character they are on).
        // ASCII text (nearly every path) is matched as bytes, without collecting its chars.
        if rest.is_ascii() {
            Matcher::run(tokens, rest.as_bytes())
        } else {
            let chars: Vec<char> = rest.chars().collect();
            Matcher::run(tokens, &chars)
        }
    }
}

/// One character of the text being matched: a byte of ASCII text, or a `char`.
trait Unit: Copy {
    fn char(self) -> char;
}

impl Unit for u8 {
    fn char(self) -> char {
        self as char
    }
}

impl Unit for char {
    fn char(self) -> char {
        self
    }
}

/// Words of the memo kept on the stack; larger (token, position) grids are on the heap.
const MEMO_WORDS: usize = 32;

/// The matcher: a memo of (token index, text index) pairs already tried, so that no pair is
/// tried twice and a pathological pattern stays linear in their number.
struct Matcher<'a, C> {
    tokens: &'a [Token],
    text: &'a [C],
    seen: &'a mut [u64],
}

impl<'a, C: Unit> Matcher<'a, C> {
    fn run(tokens: &'a [Token], text: &'a [C]) -> bool {
        let cells = (tokens.len() + 1) * (text.len() + 1);
        let words = cells.div_ceil(64);
        let mut stack = [0u64; MEMO_WORDS];
        let mut heap = Vec::new();
        let seen = if words <= MEMO_WORDS {
            &mut stack[..words]
        } else {
            heap.resize(words, 0u64);
            &mut heap[..]
        };
        Matcher { tokens, text, seen }.at(0, 0)
    }

    fn get(&self, s: usize) -> Option<char> {
        self.text.get(s).map(|c| c.char())
    }

    fn at(&mut self, t: usize, s: usize) -> bool {
        let key = t * (self.text.len() + 1) + s;
        let (word, bit) = (key / 64, 1u64 << (key % 64));
        if self.seen[word] & bit != 0 {
            return false;
        }
        self.seen[word] |= bit;
        let Some(token) = self.tokens.get(t) else {
            return s == self.text.len();
        };
        match token {
            Token::Literal(c) => self.get(s) == Some(*c) && self.at(t + 1, s + 1),
            Token::Any => self.get(s).is_some_and(|c| c != '/') && self.at(t + 1, s + 1),
            Token::Class { negated, ranges } => {
                self.get(s).is_some_and(|c| {
                    c != '/' && ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
                }) && self.at(t + 1, s + 1)
            }
            Token::Star => {
                let mut end = s;
                loop {
                    if self.at(t + 1, end) {
                        return true;
                    }
                    if end == self.text.len() || self.get(end) == Some('/') {
                        return false;
                    }
                    end += 1;
                }
            }
            Token::StarStar => (s..=self.text.len()).any(|end| self.at(t + 1, end)),
            Token::AnyTail => s == self.text.len() || self.get(s) == Some('/'),
            Token::AnyDirs => {
                if self.get(s) != Some('/') {
                    return false;
                }
                for i in s..self.text.len() {
                    if self.get(i) == Some('/') && self.at(t + 1, i + 1) {
                        return true;
                    }
                }
                false
            }
        }
    }
}

/// Globs matched together against one path: literal globs in a hash set, `DIR/**` globs as
/// a set of directories looked up at each `/` of the path, the others one by one. The same
/// answer as "any of the globs matches" ([`Glob::matches`]), in a few look-ups whatever the
/// number of literal and tree globs.
#[derive(Clone, Debug, Default)]
pub struct GlobSet {
    literals: std::collections::HashSet<Box<str>, PathHash>,
    trees: std::collections::HashSet<Box<str>, PathHash>,
    /// Bit `n` set: some literal (tree) is `n` bytes long, `n` < 63; bit 63: some is longer.
    /// A path or directory of a length no entry has needs no look-up.
    literal_lengths: u64,
    tree_lengths: u64,
    others: Vec<Glob>,
}

fn length_bit(len: usize) -> u64 {
    1 << len.min(63)
}

impl GlobSet {
    pub fn insert(&mut self, glob: &Glob) {
        match glob.shape() {
            Shape::Literal(text) => {
                self.literal_lengths |= length_bit(text.len());
                self.literals.insert(text.into());
            }
            Shape::Tree(dir) => {
                self.tree_lengths |= length_bit(dir.len());
                self.trees.insert(dir.into());
            }
            Shape::Other => self.others.push(glob.clone()),
        }
    }

    /// Whether any glob of the set matches `text`.
    pub fn matches(&self, text: &str) -> bool {
        let has = |set: &std::collections::HashSet<Box<str>, PathHash>, lengths: u64, s: &str| {
            lengths & length_bit(s.len()) != 0 && set.contains(s)
        };
        if has(&self.literals, self.literal_lengths, text)
            || has(&self.trees, self.tree_lengths, text)
        {
            return true;
        }
        // A tree `DIR/**` holds `text` when `DIR` is the text before one of its `/`: only
        // the lengths some tree has are looked at, those under 63 bytes by their bit.
        let bytes = text.as_bytes();
        let mut short = self.tree_lengths & !length_bit(63);
        while short != 0 {
            let len = short.trailing_zeros() as usize;
            short &= short - 1;
            if bytes.get(len) == Some(&b'/') && self.trees.contains(&text[..len]) {
                return true;
            }
        }
        if self.tree_lengths & length_bit(63) != 0 {
            for (i, _) in bytes
                .iter()
                .enumerate()
                .skip(63)
                .filter(|(_, &b)| b == b'/')
            {
                if self.trees.contains(&text[..i]) {
                    return true;
                }
            }
        }
        self.others.iter().any(|g| g.matches(text))
    }
}

/// The set's hash: its keys are paths chosen by the operator, not by whoever makes the
/// events, so no need for SipHash's resistance to chosen keys (most of a look-up's cost).
/// It reads the length and the first and last eight bytes (two loads, overlapping on short
/// keys): paths that share all three collide, and are told apart by the comparison after.
#[derive(Clone, Copy, Debug, Default)]
struct PathHash;

impl std::hash::BuildHasher for PathHash {
    type Hasher = PathHasher;
    fn build_hasher(&self) -> PathHasher {
        PathHasher(0)
    }
}

struct PathHasher(u64);

const MIX: u64 = 0x9e37_79b9_7f4a_7c15;

impl std::hash::Hasher for PathHasher {
    fn finish(&self) -> u64 {
        // The table's tag is the top bits, its bucket the bottom ones: both see every input.
        self.0 ^ (self.0 >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        let n = bytes.len();
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |at: usize| {
            u64::from(u32::from_le_bytes(
                bytes[at..at + 4].try_into().unwrap_or([0; 4]),
            ))
        };
        let (first, last) = match n {
            8.. => (u64_at(0), u64_at(n - 8)),
            4..=7 => (u32_at(0), u32_at(n - 4)),
            1..=3 => (
                u64::from(bytes[0]) | u64::from(bytes[n / 2]) << 8 | u64::from(bytes[n - 1]) << 16,
                0,
            ),
            0 => (0, 0),
        };
        let h = (self.0 ^ first ^ (n as u64) << 56).wrapping_mul(MIX);
        self.0 = (h.rotate_left(31) ^ last).wrapping_mul(MIX);
    }

    /// `str`'s end marker (`0xff`): every key is a `str`, so it tells nothing apart.
    fn write_u8(&mut self, _: u8) {}
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

    /// The matcher as it was before it matched bytes from the literal prefix on: every
    /// char collected, a memo on the heap. The reference the faster paths must agree with.
    fn reference(glob: &Glob, text: &str) -> bool {
        use super::Token;
        fn at(tokens: &[Token], t: usize, text: &[char], s: usize, seen: &mut [bool]) -> bool {
            let key = t * (text.len() + 1) + s;
            if seen[key] {
                return false;
            }
            seen[key] = true;
            let Some(token) = tokens.get(t) else {
                return s == text.len();
            };
            let next = |s, seen: &mut [bool]| at(tokens, t + 1, text, s, seen);
            match token {
                Token::Literal(c) => text.get(s) == Some(c) && next(s + 1, seen),
                Token::Any => text.get(s).is_some_and(|&c| c != '/') && next(s + 1, seen),
                Token::Class { negated, ranges } => {
                    text.get(s).is_some_and(|&c| {
                        c != '/' && ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
                    }) && next(s + 1, seen)
                }
                Token::Star => {
                    let mut end = s;
                    loop {
                        if next(end, seen) {
                            return true;
                        }
                        if end == text.len() || text[end] == '/' {
                            return false;
                        }
                        end += 1;
                    }
                }
                Token::StarStar => (s..=text.len()).any(|end| next(end, seen)),
                Token::AnyTail => s == text.len() || text[s] == '/',
                Token::AnyDirs => {
                    text.get(s) == Some(&'/')
                        && (s..text.len())
                            .filter(|&i| text[i] == '/')
                            .any(|i| next(i + 1, seen))
                }
            }
        }
        let text: Vec<char> = text.chars().collect();
        let mut seen = vec![false; (glob.tokens.len() + 1) * (text.len() + 1)];
        at(&glob.tokens, 0, &text, 0, &mut seen)
    }

    /// Every sequence of up to `n` pieces, concatenated.
    fn words(pieces: &[&str], n: usize) -> Vec<String> {
        let mut all = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..n {
            last = last
                .iter()
                .flat_map(|w| pieces.iter().map(move |p| format!("{w}{p}")))
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    const PATTERN_PIECES: &[&str] = &[
        "/", "a", "ab", "*", "**", "?", "[a-b]", "[!a]", "/**", "/**/", "\\*", "é",
    ];
    const PATH_PIECES: &[&str] = &["/", "a", "b", "é", "*", "ab/"];

    fn patterns() -> Vec<Glob> {
        let mut globs: Vec<Glob> = words(PATTERN_PIECES, 3)
            .iter()
            .filter_map(|p| Glob::new(p).ok())
            .collect();
        for p in [
            "/models/**",
            "/**",
            "/a//**",
            "/usr/lib/**/libcuda.so*",
            "/etc/ld.so.cache",
            "**/*.gguf",
            "/dev/nvidia[0-9]*",
            "/a/**/b/**",
        ] {
            globs.push(Glob::new(p).unwrap());
        }
        // Trees and literals longer than the set's length bits (63 bytes and more).
        let long = format!("/{}", "a".repeat(70));
        for p in [format!("{long}/**"), long.clone(), format!("{long}/b/**")] {
            globs.push(Glob::new(&p).unwrap());
        }
        globs
    }

    fn paths() -> Vec<String> {
        let mut paths = words(PATH_PIECES, 4);
        paths.extend(
            [
                "/models",
                "/models/a/b.safetensors",
                "/modelsx/a",
                "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
                "/etc/ld.so.cache",
                "/etc/ld.so.cachex",
                "/a/",
                "/a//",
                "/a//x",
                "/a/x/b/c",
                "/var/lib/x/y.gguf",
                "/dev/nvidia3x",
            ]
            .map(str::to_owned),
        );
        let long = format!("/{}", "a".repeat(70));
        for p in ["", "/", "/b", "/b/c", "b", "/bb"] {
            paths.push(format!("{long}{p}"));
        }
        paths
    }

    #[test]
    fn matches_as_the_reference_matcher() {
        let paths = paths();
        for glob in patterns() {
            for path in &paths {
                assert_eq!(
                    glob.matches(path),
                    reference(&glob, path),
                    "glob {:?} on {path:?}",
                    glob.as_str()
                );
            }
        }
    }

    #[test]
    fn a_set_matches_as_any_of_its_globs() {
        let globs = patterns();
        let paths = paths();
        // Sets of a few globs each, mixing the shapes, picked by a fixed pseudo-random walk.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut pick = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as usize
        };
        let mut shapes = [0usize; 3];
        for size in (0..300).map(|i| i % 7) {
            // Each member of a shape drawn first (most generated globs are `Other`).
            let members: Vec<&Glob> = (0..size)
                .map(|_| {
                    let shape = pick() % 3;
                    let of_shape: Vec<&Glob> = globs
                        .iter()
                        .filter(|g| {
                            shape
                                == match g.shape() {
                                    super::Shape::Literal(_) => 0,
                                    super::Shape::Tree(_) => 1,
                                    super::Shape::Other => 2,
                                }
                        })
                        .collect();
                    of_shape[pick() % of_shape.len()]
                })
                .collect();
            let mut set = super::GlobSet::default();
            for glob in &members {
                set.insert(glob);
                shapes[match glob.shape() {
                    super::Shape::Literal(_) => 0,
                    super::Shape::Tree(_) => 1,
                    super::Shape::Other => 2,
                }] += 1;
            }
            for path in &paths {
                let expected = members.iter().any(|g| reference(g, path));
                assert_eq!(set.matches(path), expected, "{path:?} in {members:?}");
            }
        }
        assert!(
            shapes.iter().all(|&n| n > 200),
            "each shape tried: {shapes:?}"
        );
    }

    #[test]
    fn shapes() {
        let shape = |p: &str| format!("{:?}", Glob::new(p).unwrap().shape());
        assert_eq!(shape("/etc/ld.so.cache"), r#"Literal("/etc/ld.so.cache")"#);
        assert_eq!(shape("a\\*b"), r#"Literal("a*b")"#);
        assert_eq!(shape("/models/**"), r#"Tree("/models")"#);
        assert_eq!(shape("/**"), r#"Tree("")"#);
        assert_eq!(shape("**"), "Other");
        assert_eq!(shape("/a/**/b"), "Other");
        assert_eq!(shape("/a/*"), "Other");
    }

    #[test]
    fn pathological_pattern_is_fast() {
        let g = Glob::new("**a**a**a**a**a**a**b").unwrap();
        assert!(!g.matches(&"a".repeat(200)));
    }
}
