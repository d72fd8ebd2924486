//! Network sensor for watched processes: connect, accept, bind, listen, and UDP datagrams
//! to a destination (each destination reported once per process).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use monitor_common::{
    EventKind, KnownKey, NetEvent, NetOpCode, Pending, SendKey, Stat, KNOWN_NET, PENDING_NET,
    SOCKADDR_CAP,
};

use crate::{
    config_self_tgid, count, is_watched,
    kernel::{file_socket, off, read, Task},
    known, known_key,
    process::header,
    submit_flags, syscall_arg, syscall_ret, EVENTS, PENDING, SENT,
};

const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCK_DGRAM: u32 = 2;

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
    if PENDING.insert(pid_tgid, pending, 0).is_err() {
        count(Stat::LostRingFull, EventKind::Net as u32);
    }
}

/// `connect(fd, uservaddr, addrlen)`
#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
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
#[tracepoint]
pub fn sys_enter_bind(ctx: TracePointContext) -> u32 {
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
#[tracepoint]
pub fn sys_enter_listen(ctx: TracePointContext) -> u32 {
    record(NetOpCode::Listen, syscall_arg(&ctx, 0), 0, 0);
    0
}

/// `accept(fd, upeer, upeerlen)` and `accept4(..., flags)`
#[tracepoint]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    record(NetOpCode::Accept, syscall_arg(&ctx, 0), 0, 0);
    0
}

/// `sendto(fd, buff, len, flags, addr, addr_len)`: only with a destination.
#[tracepoint]
pub fn sys_enter_sendto(ctx: TracePointContext) -> u32 {
    let addr = syscall_arg(&ctx, 4);
    if addr != 0 {
        let len = syscall_arg(&ctx, 5) as u32;
        record(NetOpCode::Send, syscall_arg(&ctx, 0), addr, len);
    }
    0
}

/// `sendmsg(fd, msg, flags)`: only with a destination (`msg->msg_name`).
#[tracepoint]
pub fn sys_enter_sendmsg(ctx: TracePointContext) -> u32 {
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
#[tracepoint]
pub fn sys_exit_net(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

fn try_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(pending) = (unsafe { PENDING.get(pid_tgid).copied() }) else {
        return Ok(());
    };
    let _ = PENDING.remove(pid_tgid);
    if pending.flags & PENDING_NET == 0 {
        return Ok(());
    }
    let ret = syscall_ret(ctx);
    let op = match pending.op {
        1 => NetOpCode::Connect,
        2 => NetOpCode::Accept,
        3 => NetOpCode::Bind,
        4 => NetOpCode::Listen,
        5 => NetOpCode::Send,
        _ => return Ok(()),
    };
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
    let key = net_key(pid_tgid, op, &pending, sock);
    if known(&key, EventKind::Net as u32) {
        return Ok(());
    }
    let kind = EventKind::Net as u32;
    let Some(mut entry) = EVENTS.reserve::<NetEvent>(0) else {
        count(Stat::LostRingFull, kind);
        return Ok(());
    };
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
        (*event)._pad = 0;
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
    count(Stat::Emitted, kind);
    entry.submit(submit_flags());
    Ok(())
}

/// The cache key of a socket operation: connect, send and bind by the address and port
/// given; listen by the port; accept by the operation alone (no rule looks at its peer).
#[inline(always)]
fn net_key(
    pid_tgid: u64,
    op: NetOpCode,
    pending: &Pending,
    sock: Option<*const u8>,
) -> Option<KnownKey> {
    let tgid = (pid_tgid >> 32) as u32;
    let (port, a, b) = match op {
        NetOpCode::Connect | NetOpCode::Bind | NetOpCode::Send => {
            let addr = pending.name;
            let family = unsafe { bpf_probe_read_user(addr as *const u16) }.ok()?;
            let port = unsafe { bpf_probe_read_user((addr + 2) as *const u16) }.ok()?;
            match family {
                AF_INET => {
                    let ip = unsafe { bpf_probe_read_user((addr + 4) as *const u32) }.ok()?;
                    (port, 0xffff_0000_0000, ip as u64)
                }
                AF_INET6 => {
                    let hi = unsafe { bpf_probe_read_user((addr + 8) as *const u64) }.ok()?;
                    let lo = unsafe { bpf_probe_read_user((addr + 16) as *const u64) }.ok()?;
                    (port, hi, lo)
                }
                // Unix sockets and others are always sent.
                _ => return None,
            }
        }
        NetOpCode::Listen => {
            let sk: *const u8 = unsafe { read(sock?, off!(socket_sk)) }.ok()?;
            (unsafe { read::<u16>(sk, off!(skc_num)) }.ok()?, 0, 0)
        }
        NetOpCode::Accept => (0, 0, 0),
    };
    known_key(tgid, KNOWN_NET, op as u32 | ((port as u32) << 16), a, b)
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
    let _ = SENT.insert(key, 1, 0);
    true
}
