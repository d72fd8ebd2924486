//! Network sensor for watched processes: connect, accept, bind, listen, and UDP datagrams
//! to a destination (each destination reported once per process).
//!
//! Connects, binds and datagrams of IPv4/IPv6 sockets are reported by the cgroup
//! `connect4/6`, `bind4/6` and `sendmsg4/6` programs, from the kernel's own copy of the
//! address, with the decision they took (enforce.rs): they run for every path into the
//! socket layer (the syscalls, `sendmmsg`, io_uring) and after the copy from user memory, so
//! a sockaddr rewritten by another thread cannot mislead them. The syscall tracepoints
//! report what those programs do not see: unix sockets, listen and accept (read from the
//! kernel's socket), and the operations of processes outside the cgroup the programs are
//! attached to; an address they read from user memory is flagged `NET_UNVERIFIED`.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_user},
    macros::{cgroup_skb, cgroup_sock_addr, raw_tracepoint},
    programs::{RawTracePointContext, SkBuffContext, SockAddrContext},
};
use monitor_common::{
    Decision, EventKind, KnownKey, NetEvent, NetOpCode, Pending, SendKey, AF_INET, AF_INET6,
    AF_UNIX, EPERM, KNOWN_NET, NET_EGRESS, NET_UNVERIFIED, PENDING_NET, PENDING_NET_JUDGED,
    SOCKADDR_CAP, SOCK_DGRAM,
};

use crate::{
    config_self_tgid,
    enforce::{judge, verdict, Direction, ALLOW},
    is_watched,
    kernel::{file_socket, off, read, Task},
    known, known_key,
    process::header,
    syscall_arg, syscall_ret, PENDING, SENT,
};

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    judge_and_report(&ctx, false, NetOpCode::Connect)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    judge_and_report(&ctx, true, NetOpCode::Connect)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    judge_and_report(&ctx, false, NetOpCode::Send)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    judge_and_report(&ctx, true, NetOpCode::Send)
}

#[cgroup_sock_addr(bind4)]
pub fn bind4(ctx: SockAddrContext) -> i32 {
    judge_and_report(&ctx, false, NetOpCode::Bind)
}

#[cgroup_sock_addr(bind6)]
pub fn bind6(ctx: SockAddrContext) -> i32 {
    judge_and_report(&ctx, true, NetOpCode::Bind)
}

/// Judges a connect, bind or datagram of the current process on the kernel's copy of its
/// address, and reports it unless user space already judged the same thing allowed (or, for
/// a datagram, already saw its destination). Refusals are always reported.
#[inline(always)]
fn judge_and_report(ctx: &SockAddrContext, v6: bool, op: NetOpCode) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // The cheapest test first: unwatched processes are neither judged nor reported.
    if tgid == config_self_tgid() || !is_watched(tgid) {
        return ALLOW;
    }
    // SAFETY: the kernel's `bpf_sock_addr` for this call, valid while the program runs.
    let sa = unsafe { &*ctx.sock_addr };
    // user_port holds the port in network byte order in its low 16 bits.
    let port_be = sa.user_port as u16;
    // The address as IPv6 (IPv4 mapped), as the tries hold it.
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
    let direction = match op {
        NetOpCode::Bind => Direction::Listen,
        NetOpCode::Connect if sa.type_ == SOCK_DGRAM => Direction::UdpConnect,
        _ => Direction::Connect,
    };
    let decision = judge(&addr, u16::from_be(port_be), direction);
    // The syscall's exit (when there is one: not for io_uring) must not report it again.
    if let Some(pending) = PENDING.get_ptr_mut(pid_tgid) {
        // SAFETY: a map value of this thread's syscall, valid for the program's run; only
        // this thread's hooks write it, and they run one after another.
        unsafe {
            if (*pending).flags & PENDING_NET != 0 {
                (*pending).flags |= PENDING_NET_JUDGED;
            }
        }
    }
    let a = u64::from_ne_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]);
    let b = u64::from_ne_bytes([
        addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
    ]);
    let key = known_key(tgid, KNOWN_NET, op as u32 | ((port_be as u32) << 16), a, b);
    let sent = SendKey {
        tgid,
        port: port_be as u32,
        addr,
    };
    if decision == Decision::Allowed {
        if op == NetOpCode::Send && unsafe { SENT.get(sent).is_some() } {
            return ALLOW;
        }
        if known(&key, EventKind::Net as u32) {
            return ALLOW;
        }
    }
    // A refusal is enforcement: it must not be lost in a flood of bulk events.
    let priority = matches!(decision, Decision::Denied | Decision::WouldDeny);
    let Some(mut entry) = crate::emit::reserve::<NetEvent>(EventKind::Net, priority) else {
        return verdict(decision);
    };
    let task = Task(unsafe { bpf_get_current_task() } as *const u8);
    // SAFETY (every `(*event)` below): a ring reservation of the event's size, owned by
    // this program until it submits it; fields are written before user space can read.
    let event = entry.as_mut_ptr();
    unsafe {
        (*event).header = header(
            EventKind::Net,
            tgid,
            pid_tgid as u32,
            task.process_start_time().unwrap_or(0),
            true,
        );
        (*event).op = op as u32;
        (*event).sock_type = sa.type_;
        (*event).protocol = sa.protocol;
        (*event).result = if decision == Decision::Denied {
            -EPERM
        } else {
            0
        };
        (*event).decision = decision as u32;
        (*event).flags = 0;
        (*event).known = key.unwrap_or_default();
        // A sockaddr_in / sockaddr_in6 of the kernel's copy.
        let out = &mut (*event).addr;
        out[2..4].copy_from_slice(&port_be.to_ne_bytes());
        if v6 {
            out[0..2].copy_from_slice(&AF_INET6.to_ne_bytes());
            out[4..8].copy_from_slice(&[0; 4]);
            out[8..24].copy_from_slice(&addr);
            out[24..28].copy_from_slice(&[0; 4]);
            (*event).addr_len = 28;
        } else {
            out[0..2].copy_from_slice(&AF_INET.to_ne_bytes());
            out[4..8].copy_from_slice(&addr[12..16]);
            out[8..16].copy_from_slice(&[0; 8]);
            (*event).addr_len = 16;
        }
    }
    entry.submit();
    if op == NetOpCode::Send && decision == Decision::Allowed {
        // Reported: later datagrams to this destination are not (LRU, per process). A failed
        // insert only means the next one is reported again; counted all the same.
        crate::emit::inserted(SENT.insert(sent, 1, 0), EventKind::Net);
    }
    verdict(decision)
}

/// A datagram of a connected UDP socket (`send`, `write`, `sendmmsg` without an address,
/// io_uring): the kernel runs the `sendmsg4/6` programs only for a datagram sent with an
/// address, and a socket connected under `allow.network.udp_connect` (a connect sends
/// nothing) must not carry datagrams to a destination `connect` does not allow. Judged here
/// against `connect`, on the packet's own header; refused with `EPERM` (the egress drop).
/// UDP is sent in the sender's context, so the current process is the sender.
#[cgroup_skb(egress)]
pub fn udp_egress(ctx: SkBuffContext) -> i32 {
    try_udp_egress(&ctx).unwrap_or(ALLOW)
}

/// `ETH_P_IP`, `ETH_P_IPV6`, as `__sk_buff.protocol` holds them (network order).
const ETH_P_IP_BE: u32 = 0x0800u16.to_be() as u32;
const ETH_P_IPV6_BE: u32 = 0x86ddu16.to_be() as u32;
const IPPROTO_UDP: u8 = 17;

#[inline(always)]
fn try_udp_egress(ctx: &SkBuffContext) -> Result<i32, i64> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // The cheapest test first: only a watched process's datagrams are judged.
    if tgid == config_self_tgid() || !is_watched(tgid) {
        return Ok(ALLOW);
    }
    let protocol = unsafe { (*ctx.skb.skb).protocol };
    let mut addr = [0u8; 16];
    // The data starts at the network header.
    let udp_offset = if protocol == ETH_P_IP_BE {
        let version_ihl: u8 = ctx.load(0)?;
        if ctx.load::<u8>(9)? != IPPROTO_UDP {
            return Ok(ALLOW);
        }
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12..16].copy_from_slice(&ctx.load::<[u8; 4]>(16)?);
        ((version_ihl & 0x0f) as usize) * 4
    } else if protocol == ETH_P_IPV6_BE {
        // A UDP datagram behind extension headers is not judged here.
        if ctx.load::<u8>(6)? != IPPROTO_UDP {
            return Ok(ALLOW);
        }
        addr = ctx.load::<[u8; 16]>(24)?;
        40
    } else {
        return Ok(ALLOW);
    };
    let port_be: u16 = ctx.load(udp_offset + 2)?;
    let decision = judge(&addr, u16::from_be(port_be), Direction::Connect);
    if decision == Decision::Allowed {
        return Ok(ALLOW);
    }
    report_datagram(tgid, &addr, protocol == ETH_P_IPV6_BE, port_be, decision);
    Ok(verdict(decision))
}

/// Reports a refused datagram of a connected UDP socket (always: it is enforcement).
#[inline(always)]
fn report_datagram(tgid: u32, addr: &[u8; 16], v6: bool, port_be: u16, decision: Decision) {
    let Some(mut entry) = crate::emit::reserve::<NetEvent>(EventKind::Net, true) else {
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let task = Task(unsafe { bpf_get_current_task() } as *const u8);
    // SAFETY (every `(*event)` below): a ring reservation of the event's size, owned by
    // this program until it submits it; fields are written before user space can read.
    let event = entry.as_mut_ptr();
    unsafe {
        (*event).header = header(
            EventKind::Net,
            tgid,
            pid_tgid as u32,
            task.process_start_time().unwrap_or(0),
            true,
        );
        (*event).op = NetOpCode::Send as u32;
        (*event).sock_type = SOCK_DGRAM;
        (*event).protocol = IPPROTO_UDP as u32;
        (*event).result = if decision == Decision::Denied {
            -EPERM
        } else {
            0
        };
        (*event).decision = decision as u32;
        // The refusal is this hook's (the alert's enforcement mechanism says so).
        (*event).flags = NET_EGRESS;
        (*event).known = KnownKey::default();
        let out = &mut (*event).addr;
        out[2..4].copy_from_slice(&port_be.to_ne_bytes());
        if v6 {
            out[0..2].copy_from_slice(&AF_INET6.to_ne_bytes());
            out[4..8].copy_from_slice(&[0; 4]);
            out[8..24].copy_from_slice(addr);
            out[24..28].copy_from_slice(&[0; 4]);
            (*event).addr_len = 28;
        } else {
            out[0..2].copy_from_slice(&AF_INET.to_ne_bytes());
            out[4..8].copy_from_slice(&addr[12..16]);
            out[8..16].copy_from_slice(&[0; 8]);
            (*event).addr_len = 16;
        }
    }
    entry.submit();
}

#[inline(always)]
fn record(op: NetOpCode, fd: u64, addr: u64, addr_len: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_watched(tgid) || tgid == config_self_tgid() {
        return;
    }
    let pending = Pending {
        flags: PENDING_NET,
        op: op as u32,
        fd: fd as i32,
        name: addr,
        addr_len,
        ..Pending::default()
    };
    // A full map loses this syscall's event at its exit: not a full ring.
    crate::emit::inserted(PENDING.insert(pid_tgid, pending, 0), EventKind::Net);
}

/// `connect(fd, uservaddr, addrlen)`
#[raw_tracepoint]
pub fn sys_enter_connect(ctx: RawTracePointContext) -> u32 {
    let len = syscall_arg(&ctx, 2) as u32;
    record(
        NetOpCode::Connect,
        syscall_arg(&ctx, 0),
        syscall_arg(&ctx, 1),
        len,
    );
    0
}

/// `bind(fd, umyaddr, addrlen)`
#[raw_tracepoint]
pub fn sys_enter_bind(ctx: RawTracePointContext) -> u32 {
    let len = syscall_arg(&ctx, 2) as u32;
    record(
        NetOpCode::Bind,
        syscall_arg(&ctx, 0),
        syscall_arg(&ctx, 1),
        len,
    );
    0
}

/// `listen(fd, backlog)`
#[raw_tracepoint]
pub fn sys_enter_listen(ctx: RawTracePointContext) -> u32 {
    record(NetOpCode::Listen, syscall_arg(&ctx, 0), 0, 0);
    0
}

/// `accept(fd, upeer, upeerlen)` and `accept4(..., flags)`
#[raw_tracepoint]
pub fn sys_enter_accept(ctx: RawTracePointContext) -> u32 {
    record(NetOpCode::Accept, syscall_arg(&ctx, 0), 0, 0);
    0
}

/// `sendto(fd, buff, len, flags, addr, addr_len)`: only with a destination.
#[raw_tracepoint]
pub fn sys_enter_sendto(ctx: RawTracePointContext) -> u32 {
    let addr = syscall_arg(&ctx, 4);
    if addr != 0 {
        let len = syscall_arg(&ctx, 5) as u32;
        record(NetOpCode::Send, syscall_arg(&ctx, 0), addr, len);
    }
    0
}

/// `sendmsg(fd, msg, flags)`: only with a destination (`msg->msg_name`).
#[raw_tracepoint]
pub fn sys_enter_sendmsg(ctx: RawTracePointContext) -> u32 {
    let msg = syscall_arg(&ctx, 1);
    // struct user_msghdr { void *msg_name; int msg_namelen; ... }
    let name = unsafe { bpf_probe_read_user(msg as *const u64) }.unwrap_or(0);
    if name != 0 {
        let len = unsafe { bpf_probe_read_user((msg + 8) as *const u32) }.unwrap_or(0);
        record(NetOpCode::Send, syscall_arg(&ctx, 0), name, len);
    }
    0
}

/// Exit of connect, bind, listen, accept, accept4, sendto, sendmsg.
#[raw_tracepoint]
pub fn sys_exit_net(ctx: RawTracePointContext) -> u32 {
    crate::emit::gave_up(try_exit(&ctx), EventKind::Net);
    0
}

fn try_exit(ctx: &RawTracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(pending) = (unsafe { PENDING.get(pid_tgid).copied() }) else {
        return Ok(());
    };
    let _ = PENDING.remove(pid_tgid);
    if pending.flags & PENDING_NET == 0 || pending.flags & PENDING_NET_JUDGED != 0 {
        // Not ours, or a cgroup program already judged and reported it.
        return Ok(());
    }
    let ret = syscall_ret(ctx);
    let Ok(op) = NetOpCode::try_from(pending.op) else {
        return Ok(());
    };
    // Connect, bind and send name an address in the process's memory, read again here after
    // the kernel used its own copy: not to be trusted, nor remembered as judged.
    let unverified = matches!(op, NetOpCode::Connect | NetOpCode::Bind | NetOpCode::Send);
    let task = Task(unsafe { bpf_get_current_task() } as *const u8);
    // accept: the new socket; the others: the socket they were called on.
    let fd = if op == NetOpCode::Accept {
        ret
    } else {
        pending.fd as i64
    };
    let sock = task.file(fd).and_then(file_socket).ok();
    let sock_type = match sock {
        Some(sock) => unsafe { read::<u16>(sock, off!(socket_type)) }.unwrap_or(0) as u32,
        None => 0,
    };
    if op == NetOpCode::Send {
        // Datagrams only, once per destination per process (LRU).
        if ret < 0 || sock_type != SOCK_DGRAM {
            return Ok(());
        }
        if !first_send(pid_tgid, pending.name, pending.addr_len) {
            return Ok(());
        }
    }
    if op == NetOpCode::Accept && ret < 0 {
        return Ok(());
    }
    // The same operation to the same place again: user space already judged it.
    let key = if unverified {
        None
    } else {
        net_key(pid_tgid, op, sock)
    };
    if known(&key, EventKind::Net as u32) {
        return Ok(());
    }
    let Some(mut entry) = crate::emit::reserve::<NetEvent>(EventKind::Net, false) else {
        return Ok(());
    };
    // SAFETY (every `(*event)` below): a ring reservation of the event's size, owned by
    // this program until it submits it; fields are written before user space can read.
    let event = entry.as_mut_ptr();
    unsafe {
        (*event).header = header(
            EventKind::Net,
            (pid_tgid >> 32) as u32,
            pid_tgid as u32,
            task.process_start_time().unwrap_or(0),
            true,
        );
        (*event).op = op as u32;
        (*event).sock_type = sock_type;
        (*event).result = ret;
        (*event).addr_len = 0;
        (*event).decision = Decision::Observed as u32;
        (*event).flags = if unverified { NET_UNVERIFIED } else { 0 };
        (*event).protocol = 0;
        (*event).known = key.unwrap_or_default();
    }
    let addr = unsafe { &mut (*event).addr };
    let len = match op {
        NetOpCode::Connect | NetOpCode::Bind | NetOpCode::Send => {
            copy_user_sockaddr(addr, pending.name, pending.addr_len)
        }
        // The kernel's view of the socket: the peer of an accepted one, the local address
        // of a listening one.
        NetOpCode::Accept => sock.map_or(0, |s| sock_addr(addr, s, true)),
        NetOpCode::Listen => sock.map_or(0, |s| sock_addr(addr, s, false)),
    };
    unsafe { (*event).addr_len = len };
    entry.submit();
    Ok(())
}

/// The cache key of a listen (by its port, from the kernel's socket) or an accept (by the
/// operation alone: no rule looks at its peer). Connects, binds and sends seen here were read
/// from user memory and are never cached.
#[inline(always)]
fn net_key(pid_tgid: u64, op: NetOpCode, sock: Option<*const u8>) -> Option<KnownKey> {
    let tgid = (pid_tgid >> 32) as u32;
    let port = match op {
        NetOpCode::Listen => {
            let sk: *const u8 = unsafe { read(sock?, off!(socket_sk)) }.ok()?;
            unsafe { read::<u16>(sk, off!(skc_num)) }.ok()?
        }
        NetOpCode::Accept => 0,
        NetOpCode::Connect | NetOpCode::Bind | NetOpCode::Send => return None,
    };
    known_key(tgid, KNOWN_NET, op as u32 | ((port as u32) << 16), 0, 0)
}

#[inline(always)]
fn copy_user_sockaddr(out: &mut [u8; SOCKADDR_CAP], src: u64, len: u32) -> u32 {
    let len = if len as usize > SOCKADDR_CAP {
        SOCKADDR_CAP as u32
    } else {
        len
    };
    if len == 0 {
        return 0;
    }
    let ret = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_user(
            out.as_mut_ptr() as *mut _,
            len,
            src as *const _,
        )
    };
    if ret < 0 {
        0
    } else {
        len
    }
}

/// Writes a `sockaddr_in`/`sockaddr_in6` for the socket's peer (`peer`) or local address.
#[inline(always)]
fn sock_addr(out: &mut [u8; SOCKADDR_CAP], socket: *const u8, peer: bool) -> u32 {
    let Ok(sk) = (unsafe { read::<*const u8>(socket, off!(socket_sk)) }) else {
        return 0;
    };
    let Ok(family) = (unsafe { read::<u16>(sk, off!(skc_family)) }) else {
        return 0;
    };
    // Port in network byte order, as in a sockaddr.
    let port: u16 = if peer {
        unsafe { read::<u16>(sk, off!(skc_dport)) }.unwrap_or(0)
    } else {
        unsafe { read::<u16>(sk, off!(skc_num)) }
            .unwrap_or(0)
            .to_be()
    };
    out[0..2].copy_from_slice(&family.to_ne_bytes());
    out[2..4].copy_from_slice(&port.to_ne_bytes());
    match family {
        AF_INET => {
            let at = if peer {
                off!(skc_daddr)
            } else {
                off!(skc_rcv_saddr)
            };
            let addr: [u8; 4] = unsafe { read(sk, at) }.unwrap_or([0; 4]);
            out[4..8].copy_from_slice(&addr);
            16
        }
        AF_INET6 => {
            let at = if peer {
                off!(skc_v6_daddr)
            } else {
                off!(skc_v6_rcv_saddr)
            };
            let addr: [u8; 16] = unsafe { read(sk, at) }.unwrap_or([0; 16]);
            out[4..8].copy_from_slice(&[0; 4]);
            out[8..24].copy_from_slice(&addr);
            28
        }
        AF_UNIX => 2,
        _ => 2,
    }
}

/// Whether this is the first datagram of the process to this destination.
#[inline(always)]
fn first_send(pid_tgid: u64, addr: u64, len: u32) -> bool {
    let mut key = SendKey {
        tgid: (pid_tgid >> 32) as u32,
        port: 0,
        addr: [0; 16],
    };
    let Ok(family) = (unsafe { bpf_probe_read_user(addr as *const u16) }) else {
        return true;
    };
    let Ok(port) = (unsafe { bpf_probe_read_user((addr + 2) as *const u16) }) else {
        return true;
    };
    key.port = port as u32 | ((family as u32) << 16);
    if family == AF_INET && len >= 8 {
        key.addr[..4].copy_from_slice(
            &unsafe { bpf_probe_read_user((addr + 4) as *const [u8; 4]) }.unwrap_or([0; 4]),
        );
    } else if family == AF_INET6 && len >= 24 {
        key.addr = unsafe { bpf_probe_read_user((addr + 8) as *const [u8; 16]) }.unwrap_or([0; 16]);
    } else {
        return true;
    }
    if unsafe { SENT.get(key).is_some() } {
        return false;
    }
    crate::emit::inserted(SENT.insert(key, 1, 0), EventKind::Net);
    true
}
