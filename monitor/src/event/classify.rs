//! What an event asks of a profile: one classification, used by the rules to judge an event
//! and by `monitor learn` to record it, so that what learning allows is exactly what the
//! rules check (a write is checked against `allow.files.write`, a UDP bind against
//! `allow.network.listen`, a failed open of a missing path against nothing).

use std::net::SocketAddr;

use crate::event::{File, FileOp, Net, NetOp, Transport};

/// `ENOENT`: no such file or directory.
/// Shells whose `-c` command is judged by the programs it runs rather than by the shell
/// (the rules judge what they run; the kernel's list of shells is filled from these names).
pub const SHELLS: &[&str] = &["sh", "dash", "bash", "ash", "zsh", "ksh", "mksh"];

pub const ENOENT: i64 = 2;
/// `ENOTDIR`: a component of the path is not a directory.
pub const ENOTDIR: i64 = 20;

/// Whether a failed open (of a file or a device node) named a path that does not exist: a
/// probe (a search path, an optional config), not an access.
pub fn is_probe(result: i64) -> bool {
    result == -ENOENT || result == -ENOTDIR
}

/// Which allow lists a file event is checked against.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileUse {
    /// `allow.files.read`
    pub reads: bool,
    /// `allow.files.write`
    pub writes: bool,
}

/// An open reads unless it may change the file, and also reads when it was opened for
/// reading; every other operation (rename, unlink, truncate, chmod, a modification) writes,
/// to each path it names. Probes ([`is_probe`]) use nothing.
pub fn file_use(event: &File) -> FileUse {
    if is_probe(event.result) {
        return FileUse::default();
    }
    match event.op {
        FileOp::Open => FileUse {
            reads: event.access.read || !event.access.modifies(),
            writes: event.access.modifies(),
        },
        FileOp::Rename | FileOp::Unlink | FileOp::Truncate | FileOp::Chmod | FileOp::Modify => {
            FileUse {
                reads: false,
                writes: true,
            }
        }
    }
}

/// What a network event asks of a profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetUse<'e> {
    /// A connect, or a datagram sent, to this peer: `allow.network.connect`.
    Connect(SocketAddr),
    /// A TCP listen or a UDP bind on this local address (its port chosen: not 0):
    /// `allow.network.listen`.
    Listen(SocketAddr),
    /// A unix socket connect or datagram to this path (or `@name`): `allow.network.unix`,
    /// judged as a connect.
    UnixConnect(&'e str),
    /// A unix socket bound to this path: `allow.network.unix`, judged as a listen.
    UnixBind(&'e str),
}

/// `None` for what no rule judges: accepts, a TCP bind (its listen is judged), a unix
/// listen, a listen on port 0 (not bound yet), an event without its address.
pub fn net_use(event: &Net) -> Option<NetUse<'_>> {
    if event.transport == Transport::Unix {
        let path = event.unix_path.as_deref()?;
        return match event.op {
            NetOp::Connect | NetOp::Send => Some(NetUse::UnixConnect(path)),
            NetOp::Bind => Some(NetUse::UnixBind(path)),
            NetOp::Listen | NetOp::Accept => None,
        };
    }
    match event.op {
        NetOp::Connect | NetOp::Send => event.peer.map(NetUse::Connect),
        NetOp::Listen | NetOp::Bind => {
            let checked = match event.transport {
                Transport::Udp => event.op == NetOp::Bind,
                Transport::Tcp | Transport::Other | Transport::Unix => event.op == NetOp::Listen,
            };
            let local = event.local.filter(|local| local.port() != 0)?;
            checked.then_some(NetUse::Listen(local))
        }
        NetOp::Accept => None,
    }
}

/// Signals that stop a process: SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU.
pub fn is_stop(signal: u32) -> bool {
    matches!(signal, 19..=22)
}

#[cfg(test)]
mod tests {
    use monitor_common::{Decision, EventKind};

    use super::*;
    use crate::event::{Access, Header};

    fn net(op: NetOp, transport: Transport, addr: &str) -> Net {
        let addr: SocketAddr = addr.parse().unwrap();
        let (peer, local) = match op {
            NetOp::Bind | NetOp::Listen => (None, Some(addr)),
            _ => (Some(addr), None),
        };
        Net {
            header: Header {
                kind: EventKind::Net,
                time_ns: 0,
                tgid: 1,
                pid: 1,
                start_time_ns: 0,
                watched: true,
            },
            op,
            transport,
            peer,
            local,
            unix_path: None,
            result: 0,
            decision: Decision::Observed,
            unverified: false,
            egress: false,
            known: None,
        }
    }

    #[test]
    fn listens_are_tcp_listens_and_udp_binds_on_a_chosen_port() {
        let a: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        let tcp_listen = net(NetOp::Listen, Transport::Tcp, "127.0.0.1:8000");
        assert_eq!(net_use(&tcp_listen), Some(NetUse::Listen(a)));
        assert_eq!(
            net_use(&net(NetOp::Bind, Transport::Tcp, "127.0.0.1:8000")),
            None
        );
        assert_eq!(
            net_use(&net(NetOp::Bind, Transport::Udp, "127.0.0.1:8000")),
            Some(NetUse::Listen(a))
        );
        assert_eq!(
            net_use(&net(NetOp::Bind, Transport::Udp, "127.0.0.1:0")),
            None
        );
        assert_eq!(
            net_use(&net(NetOp::Send, Transport::Udp, "127.0.0.1:8000")),
            Some(NetUse::Connect(a))
        );
        assert_eq!(
            net_use(&net(NetOp::Accept, Transport::Tcp, "127.0.0.1:8000")),
            None
        );
        let mut unix = net(NetOp::Bind, Transport::Unix, "0.0.0.0:0");
        unix.unix_path = Some("/run/x.sock".into());
        assert_eq!(net_use(&unix), Some(NetUse::UnixBind("/run/x.sock")));
    }

    #[test]
    fn opens_read_unless_they_change_and_probes_use_nothing() {
        let mut file = File {
            header: Header {
                kind: EventKind::File,
                time_ns: 0,
                tgid: 1,
                pid: 1,
                start_time_ns: 0,
                watched: true,
            },
            op: FileOp::Open,
            path: "/a".into(),
            path_truncated: false,
            target: None,
            access: Access {
                read: false,
                write: true,
                create: true,
                truncate: false,
            },
            result: 3,
            protected: false,
            known: None,
            raw: Default::default(),
            guard: None,
            unverified: false,
        };
        let write_only = FileUse {
            reads: false,
            writes: true,
        };
        assert_eq!(file_use(&file), write_only);
        file.access = Access::default();
        assert_eq!(
            file_use(&file),
            FileUse {
                reads: true,
                writes: false
            }
        );
        file.result = -ENOENT;
        assert!(is_probe(file.result));
        assert_eq!(file_use(&file), FileUse::default());
        file.result = 0;
        file.op = FileOp::Unlink;
        assert_eq!(file_use(&file), write_only);
    }
}
