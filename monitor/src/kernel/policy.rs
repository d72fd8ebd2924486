//! What the kernel needs to know of a configuration: the executables that may start a
//! governed process (watched from their exec on) and each profile's enforcement. Protected
//! paths are not here: the fanotify guards ([`crate::kernel::guard`]) hold them. Kept in sync on
//! reload: new entries go in before stale ones go out. The maps' keys are encoded here too
//! ([`kernel_dev`], [`inode_key`]); the loader ([`crate::kernel::sensor`]) uses
//! them, so the encoding is in one place and this module does not reach into the loader.

use std::{
    collections::HashSet,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use std::net::IpAddr;

use aya::maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, MapError};
use monitor_common::maps;
use monitor_common::{AllowedFile, ExecInstance, ResolvedExecKey};
use monitor_common::{
    ExecKey, InodeKey, NetKey, PortRanges, ProfilePolicy, Suffix, POLICY_DRY_RUN, POLICY_ENFORCE,
    PORT_RANGES_MAX,
};
use tracing::{debug, warn};

use crate::config::{
    cidr::{AddrRule, Ports},
    glob::{expand_executables, Glob},
    profile::Mode,
    Config,
};

/// Directory entries a selector glob's walk may visit, per glob.
const EXPAND_BUDGET: usize = 50_000;
/// Fewest entries of the kernel's exec-candidate map (what the object declares).
pub const EXEC_CANDIDATES_MIN: u32 = 4096;
/// Most entries it is sized to: the map is preallocated (about 64 bytes an entry), so a
/// selector such as `/usr/**` on a large host falls back to user space past this.
pub const EXEC_CANDIDATES_MAX: u32 = 1 << 17;

/// The exec-candidate map's size for a configuration whose selectors match `count`
/// executables: twice that (room for reloads that add some), within the bounds above.
pub fn candidate_capacity(count: usize) -> u32 {
    let wanted = count
        .saturating_mul(2)
        .max(1)
        .checked_next_power_of_two()
        .unwrap_or(usize::MAX);
    u32::try_from(wanted)
        .unwrap_or(u32::MAX)
        .clamp(EXEC_CANDIDATES_MIN, EXEC_CANDIDATES_MAX)
}

/// What one selector glob matched.
#[derive(Clone, Debug)]
pub struct SelectorExpansion {
    pub profile: String,
    pub pattern: String,
    /// Executable regular files it matched (symlinks followed).
    pub executables: usize,
    /// The walk stopped before it saw everything.
    pub incomplete: bool,
}

/// Executables on this host that the profiles' selectors may match, by inode (hard links and
/// symlinks to one file count once), and what each glob matched.
#[derive(Clone, Debug, Default)]
pub struct Candidates {
    pub keys: Vec<InodeKey>,
    pub globs: Vec<SelectorExpansion>,
}

impl Candidates {
    /// Lines for `monitor check` and the log: what each glob matched, and what a kernel map
    /// of `capacity` entries cannot hold (matched in user space at exec instead).
    pub fn describe(&self, capacity: u32) -> Vec<String> {
        let mut lines: Vec<String> = self
            .globs
            .iter()
            .map(|g| {
                let mut line = format!(
                    "profile {}: selector executable `{}` matches {} executables",
                    g.profile, g.pattern, g.executables
                );
                if g.incomplete {
                    line.push_str(&format!(
                        " (the walk stopped after {EXPAND_BUDGET} entries: executables beyond are matched in user space at exec)"
                    ));
                }
                line
            })
            .collect();
        let total = self.keys.len();
        let overflow = total.saturating_sub(capacity as usize);
        if overflow > 0 {
            lines.push(format!(
                "exec candidates: {total} executables, more than the kernel map's {capacity} entries: {overflow} of them are matched in user space at exec (watched a few milliseconds later, not from their first instruction)"
            ));
        } else {
            lines.push(format!(
                "exec candidates: {total} executables, all in the kernel map ({capacity} entries)"
            ));
        }
        lines
    }
}

/// Executable files on this host that any of `globs` matches (absolute path globs, as in
/// selectors and `monitor trace --exe`): the kernel watches their execs from the first
/// instruction once they are in the exec-candidate map. Each walk visits at most
/// [`EXPAND_BUDGET`] directory entries.
pub fn executables_matching<'g>(globs: impl IntoIterator<Item = &'g Glob>) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = globs
        .into_iter()
        .flat_map(|glob| expand_executables(glob, EXPAND_BUDGET).files)
        .collect();
    found.sort();
    found.dedup();
    found
}

/// Expands every profile's selector globs.
pub fn exec_candidates(profiles: &[crate::config::profile::Profile]) -> Candidates {
    let mut keys = HashSet::new();
    let mut globs = Vec::new();
    // Several curated profiles share a pattern (`/usr/**/bin/python3*`): walk it once.
    let mut walked: std::collections::HashMap<&str, crate::config::glob::Expansion> =
        std::collections::HashMap::new();
    for profile in profiles {
        for pattern in &profile.selector.executables {
            let Ok(glob) = Glob::new(pattern.as_str()) else {
                continue;
            };
            let expansion = walked
                .entry(pattern.as_str())
                .or_insert_with(|| expand_executables(&glob, EXPAND_BUDGET));
            let before = keys.len();
            keys.extend(expansion.files.iter().filter_map(|p| inode_key(p).ok()));
            debug!(
                profile = %profile.name,
                pattern = pattern.as_str(),
                files = expansion.files.len(),
                new = keys.len() - before,
                "selector glob expanded"
            );
            globs.push(SelectorExpansion {
                profile: profile.name.clone(),
                pattern: pattern.as_str().to_owned(),
                executables: expansion.files.len(),
                incomplete: expansion.incomplete,
            });
        }
    }
    let mut keys: Vec<InodeKey> = keys.into_iter().collect();
    keys.sort_unstable_by_key(|k| (k.dev, k.ino));
    Candidates { keys, globs }
}

/// The kernel maps a configuration fills.
pub struct PolicyMaps {
    pub protected_dirs: HashMap<MapData, InodeKey, u32>,
    pub protected_suffixes: Array<MapData, Suffix>,
    pub exec_candidates: HashMap<MapData, InodeKey, u32>,
    pub policy: HashMap<MapData, u32, ProfilePolicy>,
    pub net_connect: LpmTrie<MapData, NetKey, PortRanges>,
    pub net_listen: LpmTrie<MapData, NetKey, PortRanges>,
    pub exec_allowed: HashMap<MapData, ExecKey, AllowedFile>,
    /// `allow.network.udp_connect`, by profile.
    pub net_udp_connect: LpmTrie<MapData, NetKey, PortRanges>,
    /// The shells whose `-c` an enforce-mode profile lets through to judge what they run.
    pub shells: HashMap<MapData, InodeKey, u32>,
    pub gpu_allowed: HashMap<MapData, u32, u32>,
    pub guards: Array<MapData, u32>,
    /// Entries `exec_candidates` was created with (sized from the configuration at start-up).
    pub exec_candidates_capacity: u32,
}

/// Keeps the kernel maps equal to the configuration in force.
pub struct KernelPolicy {
    pub maps: PolicyMaps,
    /// `--dry-run`: every enforce decision is only reported.
    pub dry_run: bool,
    /// What the last successful apply left in the maps: the self-check compares the maps
    /// with it ([`KernelPolicy::verify`]) and writes it back where they differ.
    written: Option<Snapshot>,
}

impl KernelPolicy {
    pub fn new(maps: PolicyMaps, dry_run: bool) -> KernelPolicy {
        KernelPolicy {
            maps,
            dry_run,
            written: None,
        }
    }

    /// Compares every policy map with what the configuration in force wrote (a digest of
    /// each map's entries, whatever their order) and writes back the ones that differ:
    /// returns their names. Nothing is compared before the first apply.
    pub fn verify(&mut self) -> anyhow::Result<Vec<&'static str>> {
        let KernelPolicy { maps, written, .. } = self;
        let Some(written) = written else {
            return Ok(Vec::new());
        };
        let now = Snapshot::take(maps).context("failed to read the kernel's policy maps")?;
        let changed: Vec<&'static str> = written
            .digests()
            .iter()
            .zip(now.digests())
            .filter(|(wanted, found)| wanted.1 != found.1)
            .map(|(wanted, _)| wanted.0)
            .collect();
        if !changed.is_empty() {
            written
                .restore(maps)
                .context("failed to write the policy maps back")?;
        }
        Ok(changed)
    }
}

/// The IPv6 form of a network rule's address (IPv4 mapped) and its prefix length.
fn net_prefix(rule: &AddrRule) -> ([u8; 16], u32) {
    match rule.network() {
        None => ([0; 16], 0),
        Some(cidr) => match cidr.network() {
            IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), 96 + u32::from(cidr.prefix())),
            IpAddr::V6(v6) => (v6.octets(), u32::from(cidr.prefix())),
        },
    }
}

fn covers(outer: &([u8; 16], u32), inner: &([u8; 16], u32)) -> bool {
    if outer.1 > inner.1 {
        return false;
    }
    let (a, b) = (u128::from_be_bytes(outer.0), u128::from_be_bytes(inner.0));
    let mask = if outer.1 == 0 {
        0
    } else {
        u128::MAX << (128 - outer.1)
    };
    a & mask == b & mask
}

/// LPM entries for a profile's rules. The kernel takes the longest matching prefix only, so
/// each entry carries the ports of every rule that covers it too.
fn net_entries(profile: u32, rules: &[AddrRule]) -> Vec<(Key<NetKey>, PortRanges)> {
    let prefixes: Vec<(([u8; 16], u32), Ports)> =
        rules.iter().map(|r| (net_prefix(r), r.ports())).collect();
    let mut out: Vec<(Key<NetKey>, PortRanges)> = Vec::new();
    for (prefix, _) in &prefixes {
        let mut ranges: Vec<[u16; 2]> = prefixes
            .iter()
            .filter(|(outer, _)| covers(outer, prefix))
            .map(|(_, ports)| match ports {
                Ports::Any => [0, u16::MAX],
                Ports::Range(lo, hi) => [*lo, *hi],
            })
            .collect();
        ranges.sort();
        ranges.dedup();
        if ranges.len() > PORT_RANGES_MAX {
            warn!("profile {profile}: more than {PORT_RANGES_MAX} port ranges for one network; the kernel allows any port there");
            ranges = vec![[0, u16::MAX]];
        }
        let mut value = PortRanges {
            count: ranges.len() as u32,
            ..PortRanges::default()
        };
        value.ranges[..ranges.len()].copy_from_slice(&ranges);
        let key = Key::new(
            32 + prefix.1,
            NetKey {
                profile_be: profile.to_be(),
                addr: prefix.0,
            },
        );
        out.push((key, value));
    }
    out
}

impl KernelPolicy {
    /// Makes the maps match `config`, all or nothing: when the kernel refuses an update half
    /// way (a map full, memory), every map is put back as it was and the error says so.
    pub fn apply(&mut self, config: &Config) -> anyhow::Result<()> {
        self.apply_with(config, exec_candidates(&config.profiles))
    }

    /// [`KernelPolicy::apply`] with the selectors' expansion already made (at start-up, where
    /// it also sized the map).
    pub fn apply_with(&mut self, config: &Config, candidates: Candidates) -> anyhow::Result<()> {
        let saved = Snapshot::take(&self.maps)
            .context("failed to read the kernel's policy maps before changing them")?;
        let Err(err) = self.apply_all(config, candidates) else {
            self.written = Some(
                Snapshot::take(&self.maps)
                    .context("failed to read the kernel's policy maps after changing them")?,
            );
            return Ok(());
        };
        // E2BIG from a hash map, ENOSPC from an LPM trie: say it in words.
        let full = err.chain().any(|cause| {
            cause
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::raw_os_error)
                .is_some_and(|errno| errno == libc::E2BIG || errno == libc::ENOSPC)
        });
        let err = if full {
            err.context("a kernel map is full: this configuration has more profiles or rules than the kernel programs hold")
        } else {
            err
        };
        match saved.restore(&mut self.maps) {
            Ok(()) => Err(err.context(
                "failed to update the kernel's policy maps; they were put back as they were, and the previous rules stay in force",
            )),
            Err(restore) => Err(err.context(format!(
                "failed to update the kernel's policy maps, and failed to put them back ({restore:#}): restart the monitor"
            ))),
        }
    }

    fn apply_all(&mut self, config: &Config, found: Candidates) -> anyhow::Result<()> {
        // Protected paths are not here: the fanotify guards ([`crate::kernel::guard`]) hold them.
        let capacity = self.maps.exec_candidates_capacity;
        for line in found.describe(capacity) {
            if found.keys.len() > capacity as usize {
                warn!("{line}");
            } else {
                debug!("{line}");
            }
        }
        let candidates: HashSet<InodeKey> =
            found.keys.iter().take(capacity as usize).copied().collect();
        // Stale entries out first: the map may not have room for the old and the new at once,
        // and an executable no configuration names needs no watching.
        sync(
            maps::EXEC_CANDIDATES,
            &mut self.maps.exec_candidates,
            &candidates,
        )?;
        self.apply_enforcement(config).context(
            "failed to write the profiles' enforcement (modes, networks, executables, devices) into the kernel",
        )?;
        // A new configuration: every judgment the kernel cached is forgotten.
        let slot = monitor_common::guard_slot::EPOCH;
        let epoch = self.maps.guards.get(&slot, 0).unwrap_or(0);
        self.maps
            .guards
            .set(slot, (epoch + 1) & monitor_common::EPOCH_MASK, 0)?;
        debug!(candidates = candidates.len(), "kernel policy applied");
        Ok(())
    }
}

impl KernelPolicy {
    /// Per-profile enforcement: modes, allowed destinations, executables and devices. New
    /// entries go in before stale ones go out; a profile switching to enforce gets its allow
    /// lists before its mode, so nothing is refused that the new rules allow.
    fn apply_enforcement(&mut self, config: &Config) -> anyhow::Result<()> {
        let mut connect_keys = HashSet::new();
        let mut listen_keys = HashSet::new();
        let mut udp_connect_keys = HashSet::new();
        let mut exec_keys = std::collections::HashMap::new();
        let mut policies = std::collections::HashMap::new();
        for profile in &config.profiles {
            for (key, value) in net_entries(profile.id, &profile.allow.connect) {
                self.maps.net_connect.insert(&key, value, 0)?;
                connect_keys.insert(trie_id(&key));
            }
            for (key, value) in net_entries(profile.id, &profile.allow.listen) {
                self.maps.net_listen.insert(&key, value, 0)?;
                listen_keys.insert(trie_id(&key));
            }
            for (key, value) in net_entries(profile.id, &profile.allow.udp_connect) {
                self.maps.net_udp_connect.insert(&key, value, 0)?;
                udp_connect_keys.insert(trie_id(&key));
            }
            if profile.mode == Mode::Enforce {
                // An exec into a profile this one may transition to is not killed: user
                // space switches the process when the target's selector matches.
                let transitions = profile
                    .allow
                    .transitions
                    .iter()
                    .filter_map(|name| config.profile_by_name(name))
                    .flat_map(|target| target.selector.executables.iter());
                for glob in profile.allow.exec.iter().chain(transitions) {
                    let Ok(glob) = Glob::new(glob.as_str()) else {
                        continue;
                    };
                    // Only what an exec can run: a data file under the glob needs no entry.
                    for path in expand_executables(&glob, EXPAND_BUDGET).files {
                        if let Ok(inode) = inode_key(&path) {
                            exec_keys.insert(
                                ExecKey {
                                    profile: profile.id,
                                    dev: inode.dev,
                                    ino: inode.ino,
                                },
                                allowed_file(&path),
                            );
                        }
                    }
                }
            }
            let mut flags = 0;
            if profile.mode == Mode::Enforce {
                flags |= POLICY_ENFORCE;
                if profile.dry_run || self.dry_run {
                    flags |= POLICY_DRY_RUN;
                }
            }
            let devices = profile
                .allow
                .devices
                .iter()
                .fold(0u32, |bits, class| bits | class.policy_bit());
            policies.insert(profile.id, ProfilePolicy { flags, devices });
        }
        for (key, generation) in &exec_keys {
            self.maps.exec_allowed.insert(key, generation, 0)?;
        }
        for (id, policy) in &policies {
            self.maps.policy.insert(id, policy, 0)?;
        }
        // Stale entries out.
        let keep: HashSet<u32> = policies.keys().copied().collect();
        remove_stale(maps::POLICY, &mut self.maps.policy, &keep)?;
        let keep: HashSet<ExecKey> = exec_keys.keys().copied().collect();
        remove_stale(maps::EXEC_ALLOWED, &mut self.maps.exec_allowed, &keep)?;
        remove_stale(maps::NET_CONNECT, &mut self.maps.net_connect, &connect_keys)?;
        remove_stale(maps::NET_LISTEN, &mut self.maps.net_listen, &listen_keys)?;
        remove_stale(
            maps::NET_UDP_CONNECT,
            &mut self.maps.net_udp_connect,
            &udp_connect_keys,
        )?;
        // The shells on this host (a shell installed since is refused until the next reload).
        let shells = shell_inodes();
        sync(maps::SHELLS, &mut self.maps.shells, &shells)?;
        // The GPU guard.
        let mut allowed = HashSet::new();
        let mut guard = 0;
        if let Some(gpu) = &config.guards.gpu {
            for name in &gpu.allow {
                if let Some(profile) = config.profile_by_name(name) {
                    allowed.insert(profile.id);
                    self.maps.gpu_allowed.insert(profile.id, 1, 0)?;
                }
            }
            if gpu.enforce {
                guard |= POLICY_ENFORCE;
                if self.dry_run {
                    guard |= POLICY_DRY_RUN;
                }
            }
        }
        remove_stale(maps::GPU_ALLOWED, &mut self.maps.gpu_allowed, &allowed)?;
        self.maps
            .guards
            .set(monitor_common::guard_slot::GPU, guard, 0)?;
        Ok(())
    }
}

/// Whether `config` needs the kernel's [`monitor_common::programs::UDP_EGRESS`] program: a
/// profile in `mode: enforce` with `udp_connect` rules. A UDP socket connected under
/// `udp_connect` alone may carry no datagram `connect` does not allow, and a connected
/// socket's datagrams carry no address for the `sendmsg` programs to judge: the egress
/// program does. Without such a profile every connect of a UDP socket was judged against
/// `connect` itself, so the program would only cost time on every packet.
pub fn judges_connected_udp(config: &Config) -> bool {
    config
        .profiles
        .iter()
        .any(|p| p.mode == Mode::Enforce && !p.allow.udp_connect.is_empty())
}

/// Directories where the shells of [`crate::event::classify::SHELLS`] are looked for.
const SHELL_DIRS: &[&str] = &["/bin", "/usr/bin", "/usr/local/bin"];

/// The inodes of the shells on this host whose `-c` command is judged by what it runs: the
/// kernel lets a governed process's `sh -c` through under `mode: enforce`, and judges each
/// program the shell runs instead (a copy of a shell elsewhere is no shell to it).
fn shell_inodes() -> HashSet<InodeKey> {
    SHELL_DIRS
        .iter()
        .flat_map(|dir| {
            crate::event::classify::SHELLS
                .iter()
                .map(move |name| std::path::Path::new(dir).join(name))
        })
        .filter_map(|path| inode_key(&path).ok())
        .take(monitor_common::SHELLS_MAX as usize)
        .collect()
}

/// Governed processes' templated `allow.exec` globs (`${python.prefix}/bin/python*`) made
/// concrete with their facts, for the kernel's exec check under `mode: enforce`: the globs of
/// each (profile, resolved globs) pair are expanded once to the executables on disk, under an
/// instance id ([`monitor_common::maps::EXEC_RESOLVED`]), and each process that has them is
/// given that instance ([`monitor_common::maps::EXEC_INSTANCE`]; its children inherit it in
/// the kernel, which drops it at exit and ignores it for another profile or a reused pid).
pub struct ResolvedExec {
    processes: HashMap<MapData, u32, ExecInstance>,
    executables: HashMap<MapData, ResolvedExecKey, AllowedFile>,
    instances: std::collections::HashMap<(u32, Vec<String>), Instance>,
    next: u32,
    /// By profile id: executables an instance allows that the kernel map had no room for
    /// (refused there), and processes not given their instance; reported (and cleared) by
    /// [`ResolvedExec::take_lost`].
    lost: std::collections::BTreeMap<u32, u64>,
}

struct Instance {
    id: u32,
    keys: Vec<ResolvedExecKey>,
    /// Sweeps since a governed process last had it.
    idle_sweeps: u32,
}

impl ResolvedExec {
    pub fn new(
        processes: HashMap<MapData, u32, ExecInstance>,
        executables: HashMap<MapData, ResolvedExecKey, AllowedFile>,
    ) -> ResolvedExec {
        ResolvedExec {
            processes,
            executables,
            instances: std::collections::HashMap::new(),
            next: 1,
            lost: std::collections::BTreeMap::new(),
        }
    }

    /// Gives a process (by its start time, as the kernel reports it) the instance of its
    /// profile and resolved exec globs, made (its executables expanded and written) on first
    /// use.
    pub fn assign(&mut self, tgid: u32, start_time_ns: u64, profile: u32, globs: Vec<String>) {
        let key = (profile, globs);
        if !self.instances.contains_key(&key) {
            let id = self.next;
            self.next = self.next.wrapping_add(1).max(1);
            let mut keys: Vec<(ResolvedExecKey, AllowedFile)> = key
                .1
                .iter()
                .filter_map(|glob| Glob::new(glob).ok())
                .flat_map(|glob| expand_executables(&glob, EXPAND_BUDGET).files)
                .filter_map(|path| {
                    let inode = inode_key(&path).ok()?;
                    let key = ResolvedExecKey {
                        instance: id,
                        dev: inode.dev,
                        ino: inode.ino,
                    };
                    Some((key, allowed_file(&path)))
                })
                .collect();
            keys.sort_unstable_by_key(|(k, _)| (k.dev, k.ino));
            keys.dedup_by_key(|(k, _)| *k);
            let mut written = Vec::with_capacity(keys.len());
            for (k, generation) in keys {
                match self.executables.insert(k, generation, 0) {
                    Ok(()) => written.push(k),
                    Err(err) => {
                        *self.lost.entry(profile).or_default() += 1;
                        warn!(
                            "failed to allow an executable of profile {profile}'s resolved exec globs {:?} in the kernel: {err}; the kernel refuses it (too many distinct installs governed at once: {} executables at most)",
                            key.1,
                            monitor_common::EXEC_RESOLVED_MAX
                        );
                    }
                }
            }
            debug!(profile, globs = ?key.1, instance = id, executables = written.len(), "resolved exec globs expanded");
            self.instances.insert(
                key.clone(),
                Instance {
                    id,
                    keys: written,
                    idle_sweeps: 0,
                },
            );
        }
        let Some(instance) = self.instances.get_mut(&key) else {
            return;
        };
        instance.idle_sweeps = 0;
        let entry = ExecInstance {
            instance: instance.id,
            profile,
            start_time: start_time_ns,
        };
        if let Err(err) = self.processes.insert(tgid, entry, 0) {
            *self.lost.entry(profile).or_default() += 1;
            warn!("failed to give pid {tgid} its resolved exec globs in the kernel: {err}; under `mode: enforce` the kernel refuses what only they allow");
        }
    }

    /// What could not be written since the last call, by profile id: the processor reports
    /// it as a loss that names the profile.
    pub fn take_lost(&mut self) -> Vec<(u32, u64)> {
        std::mem::take(&mut self.lost).into_iter().collect()
    }

    /// Whether no instance is in the kernel.
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// Drops the instances that no governed process (`live`: their profile and globs) had for
    /// two sweeps in a row: a child the kernel gave an instance at fork, whose fork user space
    /// has not seen yet, keeps it meanwhile.
    pub fn sweep(&mut self, live: &HashSet<(u32, Vec<String>)>) {
        let mut gone = Vec::new();
        for (key, instance) in &mut self.instances {
            if live.contains(key) {
                instance.idle_sweeps = 0;
            } else {
                instance.idle_sweeps += 1;
                if instance.idle_sweeps > 2 {
                    gone.push(key.clone());
                }
            }
        }
        for key in gone {
            if let Some(instance) = self.instances.remove(&key) {
                self.remove_keys(&instance.keys);
            }
        }
    }

    /// After a reload (profiles have new ids, globs may differ): every process's instance
    /// made anew before the old ones go.
    pub fn reassign(&mut self, live: Vec<(u32, u64, u32, Vec<String>)>) {
        let old = std::mem::take(&mut self.instances);
        for (tgid, start_time_ns, profile, globs) in live {
            self.assign(tgid, start_time_ns, profile, globs);
        }
        for instance in old.values() {
            self.remove_keys(&instance.keys);
        }
    }

    fn remove_keys(&mut self, keys: &[ResolvedExecKey]) {
        for key in keys {
            if let Err(err) = self.executables.remove(key) {
                debug!("failed to remove a resolved executable from the kernel: {err}");
            }
        }
    }
}

/// A kernel map whose keys [`remove_stale`] can list and remove.
trait KeyedMap {
    type Key;
    /// What tells two keys apart (an LPM trie's key has no `Eq`: its prefix length and data).
    type Id: Eq + std::hash::Hash;
    fn id(key: &Self::Key) -> Self::Id;
    fn stored_keys(&self) -> Vec<Result<Self::Key, MapError>>;
    fn remove_key(&mut self, key: &Self::Key) -> Result<(), MapError>;
}

impl<K: aya::Pod + Eq + std::hash::Hash, V: aya::Pod> KeyedMap for HashMap<MapData, K, V> {
    type Key = K;
    type Id = K;
    fn id(key: &K) -> K {
        *key
    }
    fn stored_keys(&self) -> Vec<Result<K, MapError>> {
        self.keys().collect()
    }
    fn remove_key(&mut self, key: &K) -> Result<(), MapError> {
        self.remove(key)
    }
}

impl KeyedMap for LpmTrie<MapData, NetKey, PortRanges> {
    type Key = Key<NetKey>;
    type Id = (u32, NetKey);
    fn id(key: &Key<NetKey>) -> (u32, NetKey) {
        trie_id(key)
    }
    fn stored_keys(&self) -> Vec<Result<Key<NetKey>, MapError>> {
        self.keys().collect()
    }
    fn remove_key(&mut self, key: &Key<NetKey>) -> Result<(), MapError> {
        self.remove(key)
    }
}

/// An LPM trie key as something a set can hold.
fn trie_id(key: &Key<NetKey>) -> (u32, NetKey) {
    (key.prefix_len(), key.data())
}

/// Removes from the kernel map `name` every key that `keep` does not hold, and says how many
/// went. A stale entry left behind may allow what the configuration no longer allows, so no
/// failure is dropped: every key is tried, each failure is logged with the map's name, and
/// any failure (to list the keys or to remove one) is an error that counts them, which makes
/// the caller's change fail (and put the maps back).
fn remove_stale<M: KeyedMap>(
    name: &str,
    map: &mut M,
    keep: &HashSet<M::Id>,
) -> anyhow::Result<usize> {
    let mut failed = 0usize;
    let mut first: Option<MapError> = None;
    let mut stale = Vec::new();
    for key in map.stored_keys() {
        match key {
            Ok(key) if !keep.contains(&M::id(&key)) => stale.push(key),
            Ok(_) => {}
            Err(err) => {
                warn!("failed to list the keys of the kernel map {name}: {err}");
                failed += 1;
                first.get_or_insert(err);
            }
        }
    }
    let mut removed = 0;
    for key in &stale {
        match map.remove_key(key) {
            Ok(()) => removed += 1,
            Err(err) => {
                warn!("failed to remove a stale entry from the kernel map {name}: {err}");
                failed += 1;
                first.get_or_insert(err);
            }
        }
    }
    match first {
        None => Ok(removed),
        Some(err) => Err(anyhow::Error::new(err).context(format!(
            "failed to remove the stale entries of the kernel map {name} ({failed} of {} failed)",
            stale.len().max(failed)
        ))),
    }
}

/// What the policy maps held before a change, to put back when the change fails half way.
struct Snapshot {
    protected_dirs: Vec<(InodeKey, u32)>,
    protected_suffixes: Vec<Suffix>,
    exec_candidates: Vec<(InodeKey, u32)>,
    policy: Vec<(u32, ProfilePolicy)>,
    net_connect: Vec<(Key<NetKey>, PortRanges)>,
    net_listen: Vec<(Key<NetKey>, PortRanges)>,
    exec_allowed: Vec<(ExecKey, AllowedFile)>,
    gpu_allowed: Vec<(u32, u32)>,
    guards: Vec<u32>,
    net_udp_connect: Vec<(Key<NetKey>, PortRanges)>,
    shells: Vec<(InodeKey, u32)>,
}

impl Snapshot {
    fn take(maps: &PolicyMaps) -> anyhow::Result<Snapshot> {
        Ok(Snapshot {
            protected_dirs: save_hash(&maps.protected_dirs)?,
            protected_suffixes: save_array(&maps.protected_suffixes)?,
            exec_candidates: save_hash(&maps.exec_candidates)?,
            policy: save_hash(&maps.policy)?,
            net_connect: save_trie(&maps.net_connect)?,
            net_listen: save_trie(&maps.net_listen)?,
            exec_allowed: save_hash(&maps.exec_allowed)?,
            gpu_allowed: save_hash(&maps.gpu_allowed)?,
            guards: save_array(&maps.guards)?,
            net_udp_connect: save_trie(&maps.net_udp_connect)?,
            shells: save_hash(&maps.shells)?,
        })
    }

    /// Puts every map back. The switches (modes, guard flags) go back last, once the lists
    /// they act on are whole again.
    fn restore(&self, maps: &mut PolicyMaps) -> anyhow::Result<()> {
        restore_hash(
            maps::PROTECTED_DIRS,
            &mut maps.protected_dirs,
            &self.protected_dirs,
        )?;
        restore_array(&mut maps.protected_suffixes, &self.protected_suffixes)?;
        restore_hash(
            maps::EXEC_CANDIDATES,
            &mut maps.exec_candidates,
            &self.exec_candidates,
        )?;
        restore_trie(maps::NET_CONNECT, &mut maps.net_connect, &self.net_connect)?;
        restore_trie(maps::NET_LISTEN, &mut maps.net_listen, &self.net_listen)?;
        restore_hash(
            maps::EXEC_ALLOWED,
            &mut maps.exec_allowed,
            &self.exec_allowed,
        )?;
        restore_trie(
            maps::NET_UDP_CONNECT,
            &mut maps.net_udp_connect,
            &self.net_udp_connect,
        )?;
        restore_hash(maps::SHELLS, &mut maps.shells, &self.shells)?;
        restore_hash(maps::GPU_ALLOWED, &mut maps.gpu_allowed, &self.gpu_allowed)?;
        restore_hash(maps::POLICY, &mut maps.policy, &self.policy)?;
        restore_array(&mut maps.guards, &self.guards)?;
        Ok(())
    }
}

impl Snapshot {
    /// Per map, its name and a digest of its entries that does not depend on their order.
    fn digests(&self) -> [(&'static str, u64); 11] {
        let trie = |entries: &[(Key<NetKey>, PortRanges)]| {
            digest(
                entries
                    .iter()
                    .map(|(k, v)| [bytes(&k.prefix_len()), bytes(&k.data()), bytes(v)].concat()),
            )
        };
        [
            (maps::PROTECTED_DIRS, digest_pairs(&self.protected_dirs)),
            (
                maps::PROTECTED_SUFFIXES,
                digest(
                    self.protected_suffixes
                        .iter()
                        .enumerate()
                        .map(|(i, v)| [bytes(&(i as u32)), bytes(v)].concat()),
                ),
            ),
            (maps::EXEC_CANDIDATES, digest_pairs(&self.exec_candidates)),
            (maps::POLICY, digest_pairs(&self.policy)),
            (maps::NET_CONNECT, trie(&self.net_connect)),
            (maps::NET_LISTEN, trie(&self.net_listen)),
            (maps::EXEC_ALLOWED, digest_pairs(&self.exec_allowed)),
            (maps::GPU_ALLOWED, digest_pairs(&self.gpu_allowed)),
            (maps::NET_UDP_CONNECT, trie(&self.net_udp_connect)),
            (maps::SHELLS, digest_pairs(&self.shells)),
            (
                maps::GUARDS,
                digest(
                    self.guards
                        .iter()
                        .enumerate()
                        .map(|(i, v)| [bytes(&(i as u32)), bytes(v)].concat()),
                ),
            ),
        ]
    }
}

/// The bytes of a map key or value (plain data without padding, as the kernel holds it).
fn bytes<T: Copy>(value: &T) -> Vec<u8> {
    // SAFETY: the map types are repr(C) without padding (checked in monitor-common), so every
    // byte is initialised.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

fn digest_pairs<K: Copy, V: Copy>(entries: &[(K, V)]) -> u64 {
    digest(entries.iter().map(|(k, v)| [bytes(k), bytes(v)].concat()))
}

/// A digest of a set of entries: sorted first, since a hash map's order is its own.
fn digest(entries: impl Iterator<Item = Vec<u8>>) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut entries: Vec<Vec<u8>> = entries.collect();
    entries.sort_unstable();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    entries.hash(&mut hasher);
    hasher.finish()
}

fn save_hash<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
) -> anyhow::Result<Vec<(K, V)>> {
    Ok(map.iter().collect::<Result<Vec<_>, _>>()?)
}

/// Removes what the snapshot did not hold (making room first), then writes back what it did.
fn restore_hash<K: aya::Pod + Eq + std::hash::Hash, V: aya::Pod>(
    name: &str,
    map: &mut HashMap<MapData, K, V>,
    saved: &[(K, V)],
) -> anyhow::Result<()> {
    let keep: HashSet<K> = saved.iter().map(|(k, _)| *k).collect();
    remove_stale(name, map, &keep)?;
    for (key, value) in saved {
        map.insert(key, value, 0)?;
    }
    Ok(())
}

fn save_trie(
    map: &LpmTrie<MapData, NetKey, PortRanges>,
) -> anyhow::Result<Vec<(Key<NetKey>, PortRanges)>> {
    Ok(map.iter().collect::<Result<Vec<_>, _>>()?)
}

fn restore_trie(
    name: &str,
    map: &mut LpmTrie<MapData, NetKey, PortRanges>,
    saved: &[(Key<NetKey>, PortRanges)],
) -> anyhow::Result<()> {
    let keep: HashSet<(u32, NetKey)> = saved.iter().map(|(k, _)| trie_id(k)).collect();
    remove_stale(name, map, &keep)?;
    for (key, value) in saved {
        map.insert(key, value, 0)?;
    }
    Ok(())
}

fn save_array<V: aya::Pod>(map: &Array<MapData, V>) -> anyhow::Result<Vec<V>> {
    Ok(map.iter().collect::<Result<Vec<_>, _>>()?)
}

fn restore_array<V: aya::Pod>(map: &mut Array<MapData, V>, saved: &[V]) -> anyhow::Result<()> {
    for (index, value) in saved.iter().enumerate() {
        map.set(index as u32, value, 0)?;
    }
    Ok(())
}

/// Makes a set map hold `wanted`: stale entries out first (the map may not have room for the
/// old and the new at once), then what is missing in.
fn sync(
    name: &str,
    map: &mut HashMap<MapData, InodeKey, u32>,
    wanted: &HashSet<InodeKey>,
) -> anyhow::Result<()> {
    remove_stale(name, map, wanted)?;
    for key in wanted {
        map.insert(key, 1, 0)
            .with_context(|| format!("failed to insert into the kernel map {name}"))?;
    }
    Ok(())
}

/// The kernel's `dev_t` (12-bit major, 20-bit minor) of a user-space `st_dev`.
pub fn kernel_dev(st_dev: u64) -> u32 {
    let (major, minor) = (libc::major(st_dev), libc::minor(st_dev));
    (major << 20) | (minor & 0xfffff)
}

/// What the kernel compares at exec to tell an allowed file from a later one with its inode
/// number ([`AllowedFile`]): its change time and generation (following symlinks, as
/// [`inode_key`]). A file that cannot be read gets change time 0, which no exec matches.
pub fn allowed_file(path: &Path) -> AllowedFile {
    let (ctime_sec, ctime_nsec) = std::fs::metadata(path).map_or((0, 0), |m| {
        // The low 32 bits of the seconds, as the kernel compares them.
        (m.ctime() as u32, m.ctime_nsec() as u32)
    });
    AllowedFile {
        generation: inode_generation(path),
        ctime_sec,
        ctime_nsec,
    }
}

/// A file's inode generation (`FS_IOC_GETVERSION`), [`monitor_common::INODE_GENERATION_UNKNOWN`]
/// where the file system does not say (tmpfs, overlayfs); ext4, xfs and btrfs say.
fn inode_generation(path: &Path) -> u32 {
    use std::os::fd::AsRawFd as _;
    let Ok(file) = std::fs::File::open(path) else {
        return monitor_common::INODE_GENERATION_UNKNOWN;
    };
    // The ioctl is declared with a `long` but every file system writes an `int`.
    let mut generation: libc::c_int = 0;
    // SAFETY: FS_IOC_GETVERSION writes one int through the pointer, to a live local.
    let ret = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::FS_IOC_GETVERSION,
            &mut generation as *mut libc::c_int,
        )
    };
    if ret != 0 {
        return monitor_common::INODE_GENERATION_UNKNOWN;
    }
    generation as u32
}

/// The kernel's key for a file or directory (following symlinks), if it exists.
pub fn inode_key(path: &Path) -> std::io::Result<InodeKey> {
    let meta = std::fs::metadata(path)?;
    Ok(InodeKey {
        dev: kernel_dev(meta.dev()),
        _pad: 0,
        ino: meta.ino(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_kernel_knows_this_hosts_shells_by_inode() {
        let shells = shell_inodes();
        let sh = inode_key(Path::new("/bin/sh")).unwrap();
        assert!(shells.contains(&sh), "/bin/sh is a shell");
        let python = inode_key(Path::new("/usr/bin/python3")).unwrap();
        assert!(!shells.contains(&python));
    }

    #[test]
    fn digests_ignore_order_and_see_a_change() {
        let a = digest_pairs(&[(1u32, 2u32), (3, 4)]);
        assert_eq!(a, digest_pairs(&[(3u32, 4u32), (1, 2)]));
        assert_ne!(a, digest_pairs(&[(1u32, 2u32)]), "an entry deleted");
        assert_ne!(a, digest_pairs(&[(1u32, 2u32), (3, 5)]), "a value changed");
    }

    #[test]
    fn nested_rules_carry_the_ports_of_the_rules_around_them() {
        let rules: Vec<AddrRule> = [
            "10.0.0.0/8:443",
            "10.1.0.0/16:80",
            "127.0.0.0/8",
            "[::1]:8000",
        ]
        .iter()
        .map(|r| AddrRule::parse(r).unwrap())
        .collect();
        let entries = net_entries(7, &rules);
        assert_eq!(entries.len(), 4);
        let (key, ports) = &entries[1];
        assert_eq!(key.prefix_len(), 32 + 96 + 16);
        assert_eq!(key.data().profile_be, 7u32.to_be());
        assert_eq!(ports.count, 2);
        assert_eq!(&ports.ranges[..2], &[[80, 80], [443, 443]]);
        let (key, ports) = &entries[2];
        assert_eq!(key.prefix_len(), 32 + 96 + 8);
        assert_eq!(&ports.ranges[..1], &[[0, u16::MAX]]);
        let (key, ports) = &entries[3];
        assert_eq!(key.prefix_len(), 32 + 128);
        assert_eq!(&ports.ranges[..1], &[[8000, 8000]]);
    }

    #[test]
    fn builtin_profiles_have_candidates_here() {
        // python3 exists on this host and several curated profiles run on it.
        let python = inode_key(Path::new("/usr/bin/python3")).unwrap();
        let found = exec_candidates(&Config::builtin().profiles);
        assert!(found.keys.contains(&python), "{found:?}");
    }

    #[test]
    fn the_candidate_map_is_sized_from_the_config() {
        assert_eq!(candidate_capacity(0), EXEC_CANDIDATES_MIN);
        assert_eq!(candidate_capacity(5000), 16384);
        assert_eq!(candidate_capacity(usize::MAX), EXEC_CANDIDATES_MAX);
        let found = Candidates {
            keys: vec![
                InodeKey {
                    dev: 1,
                    _pad: 0,
                    ino: 1
                };
                5
            ],
            globs: Vec::new(),
        };
        let lines = found.describe(4);
        assert!(
            lines[0].contains("1 of them are matched in user space"),
            "{lines:?}"
        );
    }
}
