//! From what the learned processes did to the fewest rules that stay tight.
//!
//! Two steps. Each path is first made into a pattern that also matches the same path in the
//! next run ([`path_pattern`]: `/proc/<pid>`, versioned libraries, temporary and random names),
//! so that what is kept while learning is bounded by the distinct stable names, not by the
//! number of temporary files. At the end the patterns are folded ([`file_rules`]): a directory
//! with many entries used becomes `dir/**`, and a rule that another covers is dropped (its
//! count goes to the one that covers it).
//!
//! Network addresses are grouped the same way at the end ([`listen_rules`],
//! [`connect_rules`]).

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use crate::config::glob::Glob;

/// A rule and the number of events it rests on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counted {
    pub rule: String,
    pub count: u64,
}

/// A directory with at least this many distinct entries used (files or directories) becomes
/// `dir/**`.
pub const DIR_ENTRIES_TO_GLOB: usize = 4;

/// At least this many distinct peers in one IPv4 /24 (IPv6 /64) become one network rule.
pub const PEERS_TO_NETWORK: usize = 4;

/// The kernel's default `net.ipv4.ip_local_port_range`: ports it hands out for `bind(0)`
/// and outgoing connections, different in every run.
pub const DEFAULT_EPHEMERAL: (u16, u16) = (32768, 60999);

/// Characters of Python's `tempfile` random names (`tempfile._RandomNameSequence`).
const TEMPFILE_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789_";

/// What a path is generalised against.
#[derive(Clone, Copy, Debug)]
pub struct PathContext<'a> {
    /// The process that used the path: `/proc/<tgid>` is its `/proc/self`.
    pub tgid: u32,
    /// The thread that used it (`/proc/<tid>` is its own too).
    pub tid: u32,
    /// Pids of the processes being learned: a name that carries one is per-run.
    pub pids: &'a HashSet<u32>,
}

/// A concrete path (or `@abstract` socket name) to a glob that matches the same path in
/// another run. Glob characters in names are escaped.
///
/// - `/proc/<own pid>` becomes `/proc/self`, any other `/proc/<pid>` `/proc/*`, and
///   `/proc/<pid>/task/<tid>` `.../task/*`;
/// - `libcudart.so.12.4.1` becomes `libcudart.so.*`;
/// - per-run names become `*`: uuids, hex and mixed letter-digit strings (`a3f9c2e1`,
///   `x7k2m9q4`), numbers of five digits or more, the pid of a learned process after `-` or
///   `_` (`scratch-12345`), Python's `tempfile` names (`tmpab3x9q_1.json` is `tmp*.json`) and
///   `mktemp`'s (`tmp.AbC123xyZ0` is `tmp.*`); below a temporary directory (`/tmp`,
///   `/var/tmp`, `/dev/shm`, a directory named `tmp` or `temp`) also any name of 8 `tempfile`
///   characters (`tempfile` probes the directory with such a file) and mixed-case strings.
pub fn path_pattern(path: &str, cx: &PathContext) -> String {
    let (sigil, rest) = match path.strip_prefix('@') {
        Some(rest) => ("@", rest),
        None => ("", path),
    };
    let components: Vec<&str> = rest.split('/').collect();
    let under_proc =
        sigil.is_empty() && components.first() == Some(&"") && components.get(1) == Some(&"proc");
    let mut out: Vec<String> = Vec::with_capacity(components.len());
    for (i, component) in components.iter().enumerate() {
        if under_proc && i == 2 && is_digits(component) {
            let own = component
                .parse::<u32>()
                .ok()
                .is_some_and(|pid| pid == cx.tgid || pid == cx.tid);
            out.push(if own { "self" } else { "*" }.to_owned());
            continue;
        }
        if under_proc && i == 4 && components[3] == "task" && is_digits(component) {
            out.push("*".to_owned());
            continue;
        }
        out.push(component_pattern(
            component,
            in_temp(&components[..i]),
            cx.pids,
        ));
    }
    format!("{sigil}{}", out.join("/"))
}

/// Whether a path below these components is below a temporary directory.
fn in_temp(parents: &[&str]) -> bool {
    let named = |c: &&str| {
        let lower = c.to_ascii_lowercase();
        matches!(lower.as_str(), "tmp" | "temp" | ".tmp")
    };
    parents.iter().skip(1).any(named)
        || (parents.len() >= 3 && parents[1] == "dev" && parents[2] == "shm")
}

fn is_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// `\` before the characters that globs treat specially.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `libfoo.so.1.2.3` to `libfoo.so`; `None` for other names.
fn versioned_library(name: &str) -> Option<&str> {
    let at = name.find(".so.")?;
    let version = &name[at + 4..];
    let numeric = !version.is_empty()
        && version
            .split('.')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
    (numeric && at > 0).then(|| &name[..at + 3])
}

fn is_tempfile_name(text: &str) -> bool {
    text.len() == 8 && text.bytes().all(|b| TEMPFILE_CHARS.contains(&b))
}

/// One path component to its pattern (see [`path_pattern`]).
fn component_pattern(name: &str, temp: bool, pids: &HashSet<u32>) -> String {
    if let Some(stem) = versioned_library(name) {
        return format!("{}.*", escape(stem));
    }
    if let Some(random) = name.strip_prefix("tmp") {
        // `tempfile`'s default prefix, 8 random characters, and the caller's suffix, which
        // does not go on with a character of the random part (`tmpab3x9q_1.json`).
        if random.len() >= 8 && random.is_char_boundary(8) {
            let (random, suffix) = random.split_at(8);
            let suffix_starts = suffix
                .bytes()
                .next()
                .is_none_or(|b| !TEMPFILE_CHARS.contains(&b));
            if is_tempfile_name(random) && suffix_starts {
                return format!("tmp*{}", escape(suffix));
            }
        }
        if let Some(random) = random.strip_prefix('.') {
            if random.len() == 10 && random.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return "tmp.*".to_owned();
            }
        }
    }
    if temp && is_tempfile_name(name) {
        return "*".to_owned();
    }
    // Runs of letters and digits, and what separates them.
    let mut runs: Vec<(bool, &str)> = Vec::new();
    let mut start = 0;
    let bytes = name.as_bytes();
    for i in 1..=bytes.len() {
        let boundary = i == bytes.len()
            || bytes[i].is_ascii_alphanumeric() != bytes[start].is_ascii_alphanumeric();
        if boundary {
            runs.push((bytes[start].is_ascii_alphanumeric(), &name[start..i]));
            start = i;
        }
    }
    let mut out = String::with_capacity(name.len());
    let mut i = 0;
    while i < runs.len() {
        let (word, text) = runs[i];
        if word && is_uuid_at(&runs[i..]) {
            push_star(&mut out);
            i += 9;
            continue;
        }
        let separator = i.checked_sub(1).map(|p| runs[p].1);
        if word && is_volatile(text, separator, temp, pids) {
            push_star(&mut out);
        } else {
            out.push_str(&escape(text));
        }
        i += 1;
    }
    out
}

fn push_star(out: &mut String) {
    if !out.ends_with('*') {
        out.push('*');
    }
}

/// Whether the runs start with a uuid (8-4-4-4-12 hex digits joined by `-`).
fn is_uuid_at(runs: &[(bool, &str)]) -> bool {
    const LENGTHS: [usize; 5] = [8, 4, 4, 4, 12];
    if runs.len() < 9 {
        return false;
    }
    LENGTHS.iter().enumerate().all(|(k, &len)| {
        let (word, text) = runs[2 * k];
        word && text.len() == len && text.bytes().all(|b| b.is_ascii_hexdigit())
    }) && (0..4).all(|k| runs[2 * k + 1].1 == "-")
}

/// Whether a run of letters and digits is a per-run name.
fn is_volatile(text: &str, separator: Option<&str>, temp: bool, pids: &HashSet<u32>) -> bool {
    let digits = text.bytes().filter(u8::is_ascii_digit).count();
    let letters = text.len() - digits;
    if digits == text.len() {
        // Long numbers are pids, timestamps, counters; a learned pid after `-` or `_` too
        // (not after `.`: `python3.11` is a version).
        let after_word_separator = matches!(separator, Some("-") | Some("_"));
        return text.len() >= 5
            || (text.len() >= 2
                && after_word_separator
                && text.parse::<u32>().is_ok_and(|n| pids.contains(&n)));
    }
    let hex = text.len() >= 8 && digits >= 1 && text.bytes().all(|b| b.is_ascii_hexdigit());
    let bytes = text.as_bytes();
    let class_changes = bytes
        .windows(2)
        .filter(|w| w[0].is_ascii_digit() != w[1].is_ascii_digit())
        .count();
    let mixed = text.len() >= 6 && digits >= 2 && letters >= 2 && class_changes >= 3;
    let case_changes = bytes
        .windows(2)
        .filter(|w| {
            w[0].is_ascii_alphabetic()
                && w[1].is_ascii_alphabetic()
                && w[0].is_ascii_uppercase() != w[1].is_ascii_uppercase()
        })
        .count();
    let mixed_case = temp && text.len() >= 8 && case_changes >= 4;
    hex || mixed || mixed_case
}

/// Whether a glob has wildcards.
fn is_wild(pattern: &str) -> bool {
    let mut escaped = false;
    for c in pattern.chars() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if matches!(c, '*' | '?' | '[') {
            return true;
        }
    }
    false
}

/// Whether the glob `general` matches everything that `specific` (a concrete path or a glob
/// made by this module) matches. Conservative: `false` when unsure.
pub fn covers(general: &str, specific: &str) -> bool {
    if general == specific {
        return true;
    }
    if !is_wild(general) {
        return false;
    }
    let Ok(glob) = Glob::new(general) else {
        return false;
    };
    if !specific.contains("**") {
        // A `*` of `specific` is then text that a `*` (or `**`) of `general` matches.
        return glob.matches(specific);
    }
    // `specific` crosses directories: only `DIR/**` covers it, when DIR covers its start.
    let Some(dir) = general.strip_suffix("/**") else {
        return false;
    };
    if dir.contains("**") {
        return false;
    }
    let depth = dir.split('/').count();
    let head: Vec<&str> = specific.split('/').take(depth).collect();
    let head = head.join("/");
    head.split('/').count() == depth
        && !head.contains("**")
        && specific.len() > head.len()
        && specific.as_bytes()[head.len()] == b'/'
        && Glob::new(dir).is_ok_and(|d| d.matches(&head))
}

/// Drops the rules that another rule covers, adding their counts to it. Sorted by rule.
pub fn prune(rules: BTreeMap<String, u64>) -> Vec<Counted> {
    let rules: Vec<Counted> = rules
        .into_iter()
        .map(|(rule, count)| Counted { rule, count })
        .collect();
    let wild: Vec<usize> = (0..rules.len())
        .filter(|&i| is_wild(&rules[i].rule))
        .collect();
    // A rule is dropped when a different rule covers it; of two that cover each other, the
    // first (in order) stays.
    let coverer = |i: usize| -> Option<usize> {
        wild.iter().copied().find(|&j| {
            j != i
                && covers(&rules[j].rule, &rules[i].rule)
                && (j < i || !covers(&rules[i].rule, &rules[j].rule))
        })
    };
    let dropped: Vec<Option<usize>> = (0..rules.len()).map(coverer).collect();
    let mut kept: Vec<Counted> = Vec::new();
    let mut index_of_kept = vec![None; rules.len()];
    for (i, rule) in rules.iter().enumerate() {
        if dropped[i].is_none() {
            index_of_kept[i] = Some(kept.len());
            kept.push(rule.clone());
        }
    }
    for (i, rule) in rules.iter().enumerate() {
        if dropped[i].is_none() {
            continue;
        }
        // The nearest kept rule up the chain of coverers (a chain ends: each step goes to a
        // strictly more general rule or to an earlier one).
        let mut at = i;
        let mut steps = 0;
        while let (Some(next), true) = (dropped[at], steps < rules.len()) {
            at = next;
            steps += 1;
        }
        match index_of_kept[at] {
            Some(k) => kept[k].count += rule.count,
            None => kept.push(rule.clone()),
        }
    }
    kept.sort_by(|a, b| a.rule.cmp(&b.rule));
    kept
}

#[derive(Default)]
struct Node {
    /// Events on this exact path.
    count: u64,
    /// The path itself was used (not only paths below it).
    used: bool,
    children: BTreeMap<String, Node>,
}

impl Node {
    fn total(&self) -> u64 {
        self.count + self.children.values().map(Node::total).sum::<u64>()
    }
}

/// How deep a directory must be to become `dir/**`: never `/`, `/etc` or `/tmp`, nor a
/// user's whole home (`/home/alice`).
fn may_glob_below(components: &[&str]) -> bool {
    match components.first() {
        Some(&"home") => components.len() >= 3,
        Some(_) => components.len() >= 2,
        None => false,
    }
}

fn fold(node: &Node, components: &mut Vec<String>, out: &mut BTreeMap<String, u64>) {
    let path = format!("/{}", components.join("/"));
    let names: Vec<&str> = components.iter().map(String::as_str).collect();
    if node.children.len() >= DIR_ENTRIES_TO_GLOB && may_glob_below(&names) {
        *out.entry(format!("{path}/**")).or_default() += node.total();
        return;
    }
    if node.used {
        *out.entry(path).or_default() += node.count;
    }
    for (name, child) in &node.children {
        components.push(name.clone());
        fold(child, components, out);
        components.pop();
    }
}

/// File patterns (from [`path_pattern`]) with their counts to the fewest rules: a directory
/// with [`DIR_ENTRIES_TO_GLOB`] or more entries used becomes `dir/**` (not `/` or a directory
/// right below it, nor a home directory), then rules that others cover are dropped.
pub fn file_rules(patterns: &BTreeMap<String, u64>) -> Vec<Counted> {
    let mut root = Node::default();
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    for (pattern, &count) in patterns {
        let Some(rest) = pattern.strip_prefix('/') else {
            *out.entry(pattern.clone()).or_default() += count;
            continue;
        };
        let mut node = &mut root;
        for component in rest.split('/') {
            node = node.children.entry(component.to_owned()).or_default();
        }
        node.used = true;
        node.count += count;
    }
    for (name, child) in &root.children {
        fold(child, &mut vec![name.clone()], &mut out);
    }
    prune(out)
}

/// `/proc/self` rules in the form `monitor run` matches. The kernel reports the path it
/// resolved, in which `/proc/self` is already the process's pid, so a rule must say
/// `/proc/*` to match it; that rule also matches a literal `/proc/self`.
pub fn proc_self_as_run_sees_it(rules: Vec<Counted>) -> Vec<Counted> {
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    for rule in rules {
        let text = match rule.rule.strip_prefix("/proc/self") {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("/proc/*{rest}"),
            _ => rule.rule,
        };
        *out.entry(text).or_default() += rule.count;
    }
    prune(out)
}

/// Which ports an address rule allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Port {
    Any,
    Range(u16, u16),
}

impl Port {
    fn contains(self, other: Port) -> bool {
        match (self, other) {
            (Port::Any, _) => true,
            (Port::Range(..), Port::Any) => false,
            (Port::Range(a, b), Port::Range(c, d)) => a <= c && d <= b,
        }
    }
}

/// An address rule being built: a network (`None`: any address) and ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct AddrSpec {
    network: Option<(IpAddr, u8)>,
    port: Port,
}

fn max_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

fn network_of(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

impl AddrSpec {
    fn contains(&self, other: &AddrSpec) -> bool {
        let network = match (self.network, other.network) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some((net, prefix)), Some((ip, other_prefix))) => {
                net.is_ipv4() == ip.is_ipv4()
                    && prefix <= other_prefix
                    && network_of(ip, prefix) == net
            }
        };
        network && self.port.contains(other.port)
    }

    fn render(&self) -> String {
        let port = match self.port {
            Port::Any => None,
            Port::Range(a, b) if a == b => Some(a.to_string()),
            Port::Range(a, b) => Some(format!("{a}-{b}")),
        };
        match self.network {
            None => match port {
                None => "*".to_owned(),
                Some(port) => format!("*:{port}"),
            },
            Some((ip, prefix)) => {
                let address = if prefix == max_prefix(ip) {
                    ip.to_string()
                } else {
                    format!("{ip}/{prefix}")
                };
                match (ip, port) {
                    (_, None) => address,
                    (IpAddr::V4(_), Some(port)) => format!("{address}:{port}"),
                    (IpAddr::V6(_), Some(port)) => format!("[{address}]:{port}"),
                }
            }
        }
    }
}

/// Drops specs that another covers (adding their counts) and renders the rest, sorted.
fn address_rules(specs: BTreeMap<AddrSpec, u64>) -> Vec<Counted> {
    let all: Vec<(AddrSpec, u64)> = specs.into_iter().collect();
    let mut kept: Vec<(AddrSpec, u64)> = Vec::new();
    let mut folded: Vec<(AddrSpec, u64)> = Vec::new();
    for (i, (spec, count)) in all.iter().enumerate() {
        let covered = all.iter().enumerate().any(|(j, (other, _))| {
            j != i && other.contains(spec) && (j < i || !spec.contains(other))
        });
        if covered {
            folded.push((*spec, *count));
        } else {
            kept.push((*spec, *count));
        }
    }
    for (spec, count) in folded {
        if let Some(k) = kept.iter_mut().find(|(other, _)| other.contains(&spec)) {
            k.1 += count;
        }
    }
    let mut out: Vec<Counted> = kept
        .into_iter()
        .map(|(spec, count)| Counted {
            rule: spec.render(),
            count,
        })
        .collect();
    out.sort_by(|a, b| a.rule.cmp(&b.rule));
    out
}

fn is_ephemeral(port: u16, ephemeral: (u16, u16)) -> bool {
    ephemeral.0 <= port && port <= ephemeral.1
}

/// Local addresses of TCP listens and UDP binds to `allow.network.listen` rules: `*:PORT`
/// for the unspecified address, else `ADDR:PORT`. A port the kernel chose (a `bind` to port
/// 0, or a listen without a bind) is different in every run: one in the ephemeral range
/// becomes the whole range, never that one port. A port in `bound` was asked for by name
/// (the server's own port, which may lie in the ephemeral range too): it stays that port.
/// Port 0 (not bound yet) is left out, as `monitor run` does.
pub fn listen_rules(
    locals: &BTreeMap<SocketAddr, u64>,
    ephemeral: (u16, u16),
    bound: &BTreeSet<u16>,
) -> Vec<Counted> {
    let mut specs: BTreeMap<AddrSpec, u64> = BTreeMap::new();
    for (local, &count) in locals {
        if local.port() == 0 {
            continue;
        }
        let ip = local.ip().to_canonical();
        let network = (!ip.is_unspecified()).then(|| (ip, max_prefix(ip)));
        let port = if is_ephemeral(local.port(), ephemeral) && !bound.contains(&local.port()) {
            Port::Range(ephemeral.0, ephemeral.1)
        } else {
            Port::Range(local.port(), local.port())
        };
        *specs.entry(AddrSpec { network, port }).or_default() += count;
    }
    address_rules(specs)
}

/// Peers of connects and UDP sends to `allow.network.connect` rules: loopback as
/// `127.0.0.0/8:PORT` (`[::1]:PORT`), other peers exactly (`ADDR:PORT`), or as their /24
/// (/64 for IPv6) when [`PEERS_TO_NETWORK`] or more peers share it. An ephemeral port is
/// never a rule of its own: the rule then has no port.
pub fn connect_rules(peers: &BTreeMap<SocketAddr, u64>, ephemeral: (u16, u16)) -> Vec<Counted> {
    let group = |ip: IpAddr| {
        let prefix = if ip.is_ipv4() { 24 } else { 64 };
        (network_of(ip, prefix), prefix)
    };
    let mut groups: BTreeMap<(IpAddr, u8), HashSet<IpAddr>> = BTreeMap::new();
    for peer in peers.keys() {
        let ip = peer.ip().to_canonical();
        if !ip.is_loopback() {
            groups.entry(group(ip)).or_default().insert(ip);
        }
    }
    let mut specs: BTreeMap<AddrSpec, u64> = BTreeMap::new();
    for (peer, &count) in peers {
        let ip = peer.ip().to_canonical();
        let network = match ip {
            IpAddr::V4(v4) if v4.is_loopback() => (IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
            IpAddr::V6(v6) if v6.is_loopback() => (ip, 128),
            _ if groups
                .get(&group(ip))
                .is_some_and(|g| g.len() >= PEERS_TO_NETWORK) =>
            {
                group(ip)
            }
            _ => (ip, max_prefix(ip)),
        };
        let port = match peer.port() {
            0 => Port::Any,
            port if is_ephemeral(port, ephemeral) => Port::Any,
            port => Port::Range(port, port),
        };
        let spec = AddrSpec {
            network: Some(network),
            port,
        };
        *specs.entry(spec).or_default() += count;
    }
    address_rules(specs)
}
