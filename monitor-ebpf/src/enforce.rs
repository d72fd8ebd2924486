//! Enforcement without BPF-LSM: cgroup `connect4/6`, `sendmsg4/6` and `bind4/6` programs
//! refuse (EPERM) what a governed process's enforce-mode profile does not allow, decided in
//! the kernel against per-profile LPM tries. Device and exec enforcement live with their
//! sensors (device.rs, process.rs). The monitor itself and PID 1 are never enforced on.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::cgroup_sock_addr, maps::lpm_trie::Key,
    programs::SockAddrContext,
};
use monitor_common::{NetKey, ProfilePolicy, POLICY_DRY_RUN, POLICY_ENFORCE, PORT_RANGES_MAX};

use crate::{config_self_tgid, NET_CONNECT, NET_LISTEN, POLICY, WATCHED};

const ALLOW: i32 = 1;
const DENY: i32 = 0;

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

/// Refuses unless dry-run.
#[inline(always)]
pub fn refuse(policy: &ProfilePolicy) -> i32 {
    if policy.flags & POLICY_DRY_RUN != 0 {
        ALLOW
    } else {
        DENY
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Connect,
    Listen,
}

#[inline(always)]
fn decide(ctx: &SockAddrContext, v6: bool, direction: Direction) -> i32 {
    let Some((profile, policy)) = enforced_policy() else {
        return ALLOW;
    };
    let sa = unsafe { &*ctx.sock_addr };
    // user_port holds the port in network byte order in its low 16 bits.
    let port = u16::from_be(sa.user_port as u16);
    if direction == Direction::Listen && port == 0 {
        // An ephemeral port: nothing to decide.
        return ALLOW;
    }
    let mut addr = [0u8; 16];
    if v6 {
        for (i, word) in sa.user_ip6.iter().enumerate() {
            addr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
    } else {
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12..16].copy_from_slice(&sa.user_ip4.to_ne_bytes());
    }
    let key = Key::new(
        32 + 128,
        NetKey {
            profile_be: profile.to_be(),
            addr,
        },
    );
    let trie = match direction {
        Direction::Connect => &NET_CONNECT,
        Direction::Listen => &NET_LISTEN,
    };
    if let Some(ports) = trie.get(&key) {
        for i in 0..PORT_RANGES_MAX {
            if (i as u32) < ports.count {
                let [lo, hi] = ports.ranges[i];
                if lo <= port && port <= hi {
                    return ALLOW;
                }
            }
        }
    }
    refuse(&policy)
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    decide(&ctx, false, Direction::Connect)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    decide(&ctx, true, Direction::Connect)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    decide(&ctx, false, Direction::Connect)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    decide(&ctx, true, Direction::Connect)
}

#[cgroup_sock_addr(bind4)]
pub fn bind4(ctx: SockAddrContext) -> i32 {
    decide(&ctx, false, Direction::Listen)
}

#[cgroup_sock_addr(bind6)]
pub fn bind6(ctx: SockAddrContext) -> i32 {
    decide(&ctx, true, Direction::Listen)
}

/// Loaded (never attached) at start-up to learn whether this host allows BPF-LSM programs:
/// the start-up log and the alerts say which mechanism stops writes to guarded files.
#[aya_ebpf::macros::lsm(hook = "file_open")]
pub fn lsm_probe(_ctx: aya_ebpf::programs::LsmContext) -> i32 {
    0
}
