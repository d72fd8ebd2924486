//! Enforcement without BPF-LSM: the cgroup `connect4/6`, `sendmsg4/6` and `bind4/6` programs
//! (net.rs) refuse (EPERM) what a governed process's enforce-mode profile does not allow,
//! decided here in the kernel against per-profile LPM tries. Device and exec enforcement live
//! with their sensors (device.rs, process.rs). The monitor itself and PID 1 are never
//! enforced on.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    maps::{lpm_trie::Key, LpmTrie},
};
use monitor_common::{
    Decision, NetKey, PortRanges, ProfilePolicy, POLICY_DRY_RUN, POLICY_ENFORCE, PORT_RANGES_MAX,
};

use crate::{config_self_tgid, NET_CONNECT, NET_LISTEN, NET_UDP_CONNECT, POLICY, WATCHED};

/// What a cgroup program returns to let the operation through.
pub const ALLOW: i32 = 1;
/// ... and to refuse it (`EPERM`).
pub const DENY: i32 = 0;

/// The enforce-mode policy of the current process's profile, if it has one.
#[inline(always)]
pub fn enforced_policy() -> Option<(u32, ProfilePolicy)> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == config_self_tgid() || tgid == 1 {
        return None;
    }
    let profile = unsafe { WATCHED.get(tgid) }?.profile;
    if profile == 0 {
        return None;
    }
    let policy = *unsafe { POLICY.get(profile) }?;
    (policy.flags & POLICY_ENFORCE != 0).then_some((profile, policy))
}

/// The refusal of a policy: denied, or only reported in a dry run.
#[inline(always)]
pub fn refusal(flags: u32) -> Decision {
    if flags & POLICY_DRY_RUN != 0 {
        Decision::WouldDeny
    } else {
        Decision::Denied
    }
}

/// Refuses (0) unless dry-run (1).
#[inline(always)]
pub fn refuse(policy: &ProfilePolicy) -> i32 {
    verdict(refusal(policy.flags))
}

/// What a cgroup program returns for a decision.
#[inline(always)]
pub fn verdict(decision: Decision) -> i32 {
    if decision == Decision::Denied {
        DENY
    } else {
        ALLOW
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Connect,
    /// A connect of a UDP socket: it sends nothing, so `allow.network.udp_connect` allows it
    /// too. (A datagram sent with an address is a `Connect`: the `sendmsg4/6` programs.)
    UdpConnect,
    Listen,
}

/// The decision about an address (IPv6, IPv4 mapped) and port (host order) of the current
/// process, against its enforce-mode profile's LPM tries.
#[inline(always)]
pub fn judge(addr: &[u8; 16], port: u16, direction: Direction) -> Decision {
    let Some((profile, policy)) = enforced_policy() else {
        return Decision::Allowed;
    };
    if direction == Direction::Listen && port == 0 {
        // An ephemeral port: nothing to decide.
        return Decision::Allowed;
    }
    let key = Key::new(
        32 + 128,
        NetKey {
            profile_be: profile.to_be(),
            addr: *addr,
        },
    );
    let trie = match direction {
        Direction::Connect | Direction::UdpConnect => &NET_CONNECT,
        Direction::Listen => &NET_LISTEN,
    };
    if allows(trie, &key, port) {
        return Decision::Allowed;
    }
    if direction == Direction::UdpConnect && allows(&NET_UDP_CONNECT, &key, port) {
        return Decision::Allowed;
    }
    refusal(policy.flags)
}

/// Whether the longest prefix of `key` in `trie` lists `port`.
#[inline(always)]
fn allows(trie: &LpmTrie<NetKey, PortRanges>, key: &Key<NetKey>, port: u16) -> bool {
    let Some(ports) = trie.get(key) else {
        return false;
    };
    for i in 0..PORT_RANGES_MAX {
        if (i as u32) < ports.count {
            let [lo, hi] = ports.ranges[i];
            if lo <= port && port <= hi {
                return true;
            }
        }
    }
    false
}

/// Loaded (never attached) at start-up to learn whether this host allows BPF-LSM programs:
/// the start-up log and the alerts say which mechanism stops writes to guarded files.
#[aya_ebpf::macros::lsm(hook = "file_open")]
pub fn lsm_probe(_ctx: aya_ebpf::programs::LsmContext) -> i32 {
    0
}
