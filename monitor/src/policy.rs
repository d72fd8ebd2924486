//! What the kernel needs to know of a configuration: the executables that may start a
//! governed process (watched from their exec on) and each profile's enforcement. Protected
//! paths are not here: the fanotify guards ([`crate::guard`]) hold them. Kept in sync on
//! reload: new entries go in before stale ones go out.

use std::{collections::HashSet, path::PathBuf};

use std::net::IpAddr;

use aya::maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData};
use monitor_common::{
    ExecKey, InodeKey, NetKey, PortRanges, ProfilePolicy, Suffix, POLICY_DRY_RUN, POLICY_ENFORCE,
    PORT_RANGES_MAX,
};
use tracing::{debug, warn};

use crate::{
    cidr::{AddrRule, Ports},
    config::Config,
    glob::{expand, Glob},
    profile::Mode,
    sensor::inode_key,
};

/// Executables on this host that a profile's selector may match.
pub fn exec_candidates(config: &Config) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for profile in &config.profiles {
        for pattern in &profile.selector.executables {
            if let Ok(glob) = Glob::new(pattern.as_str()) {
                found.extend(expand(&glob, 50_000));
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// The kernel maps a configuration fills.
pub struct PolicyMaps {
    pub protected_dirs: HashMap<MapData, InodeKey, u32>,
    pub protected_suffixes: Array<MapData, Suffix>,
    pub exec_candidates: HashMap<MapData, InodeKey, u32>,
    pub policy: HashMap<MapData, u32, ProfilePolicy>,
    pub net_connect: LpmTrie<MapData, NetKey, PortRanges>,
    pub net_listen: LpmTrie<MapData, NetKey, PortRanges>,
    pub exec_allowed: HashMap<MapData, ExecKey, u32>,
    pub gpu_allowed: HashMap<MapData, u32, u32>,
    pub guards: Array<MapData, u32>,
}

/// Keeps the kernel maps equal to the configuration in force.
pub struct KernelPolicy {
    pub maps: PolicyMaps,
    /// `--dry-run`: every enforce decision is only reported.
    pub dry_run: bool,
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
    /// Makes the maps match `config`.
    /// Protected paths are not here: the fanotify guards ([`crate::guard`]) hold them.
    pub fn apply(&mut self, config: &Config) -> anyhow::Result<()> {
        let candidates: HashSet<InodeKey> = exec_candidates(config)
            .iter()
            .filter_map(|p| inode_key(p).ok())
            .collect();
        sync(&mut self.maps.exec_candidates, &candidates)?;
        self.apply_enforcement(config)?;
        // A new configuration: every judgment the kernel cached is forgotten.
        let epoch = self.maps.guards.get(&2, 0).unwrap_or(0);
        self.maps.guards.set(2, (epoch + 1) & 0x0fff_ffff, 0)?;
        debug!(candidates = candidates.len(), "kernel policy applied");
        Ok(())
    }
}

impl KernelPolicy {
    /// Per-profile enforcement: modes, allowed destinations, executables and devices. New
    /// entries go in before stale ones go out; a profile switching to enforce gets its allow
    /// lists before its mode, so nothing is refused that the new rules allow.
    fn apply_enforcement(&mut self, config: &Config) -> anyhow::Result<()> {
        let mut connect_keys = Vec::new();
        let mut listen_keys = Vec::new();
        let mut exec_keys = HashSet::new();
        let mut policies = std::collections::HashMap::new();
        for profile in &config.profiles {
            for (key, value) in net_entries(profile.id, &profile.allow.connect) {
                self.maps.net_connect.insert(&key, value, 0)?;
                connect_keys.push((key.prefix_len(), key.data()));
            }
            for (key, value) in net_entries(profile.id, &profile.allow.listen) {
                self.maps.net_listen.insert(&key, value, 0)?;
                listen_keys.push((key.prefix_len(), key.data()));
            }
            if profile.mode == Mode::Enforce {
                for glob in &profile.allow.exec {
                    let Ok(glob) = Glob::new(glob.as_str()) else {
                        continue;
                    };
                    for path in expand(&glob, 50_000) {
                        if let Ok(inode) = inode_key(&path) {
                            exec_keys.insert(ExecKey {
                                profile: profile.id,
                                dev: inode.dev,
                                ino: inode.ino,
                            });
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
            let devices = profile.allow.devices.iter().fold(0u32, |bits, class| {
                bits | (1 << crate::sensor::class_id(*class))
            });
            policies.insert(profile.id, ProfilePolicy { flags, devices });
        }
        for key in &exec_keys {
            self.maps.exec_allowed.insert(key, 1, 0)?;
        }
        for (id, policy) in &policies {
            self.maps.policy.insert(id, policy, 0)?;
        }
        // Stale entries out.
        let stale: Vec<u32> = self
            .maps
            .policy
            .keys()
            .filter_map(Result::ok)
            .filter(|id| !policies.contains_key(id))
            .collect();
        for id in stale {
            let _ = self.maps.policy.remove(&id);
        }
        let stale: Vec<ExecKey> = self
            .maps
            .exec_allowed
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !exec_keys.contains(k))
            .collect();
        for key in stale {
            let _ = self.maps.exec_allowed.remove(&key);
        }
        for (trie, wanted) in [
            (&mut self.maps.net_connect, &connect_keys),
            (&mut self.maps.net_listen, &listen_keys),
        ] {
            let stale: Vec<Key<NetKey>> = trie
                .keys()
                .filter_map(Result::ok)
                .filter(|k| !wanted.contains(&(k.prefix_len(), k.data())))
                .collect();
            for key in stale {
                let _ = trie.remove(&key);
            }
        }
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
        let stale: Vec<u32> = self
            .maps
            .gpu_allowed
            .keys()
            .filter_map(Result::ok)
            .filter(|id| !allowed.contains(id))
            .collect();
        for id in stale {
            let _ = self.maps.gpu_allowed.remove(&id);
        }
        self.maps.guards.set(0, guard, 0)?;
        Ok(())
    }
}

/// Inserts what is missing, then removes what is stale.
fn sync(
    map: &mut HashMap<MapData, InodeKey, u32>,
    wanted: &HashSet<InodeKey>,
) -> anyhow::Result<()> {
    for key in wanted {
        map.insert(key, 1, 0)?;
    }
    let stale: Vec<InodeKey> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !wanted.contains(k))
        .collect();
    for key in stale {
        let _ = map.remove(&key);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let found = exec_candidates(&Config::builtin());
        assert!(
            found
                .iter()
                .any(|p| p.to_string_lossy().contains("python3")),
            "{found:?}"
        );
    }
}
