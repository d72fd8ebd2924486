use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use monitor_common::{Decision, EventKind};

use super::*;
use crate::{
    config::{
        profile::{parse_profiles, PathGlob},
        Config, GpuGuard, Guards, Outputs, ProtectedPaths,
    },
    event::{Access, Device, DeviceClass, ExecInfo, Exit, File, FileOp, Net, NetOp, Transport},
};

const PROFILES: &str = r#"
name: server
selector:
  executables: [/usr/bin/python3*]
  args: ["* serve*"]
allow:
  exec: [/usr/bin/nvidia-smi, /usr/bin/python3*]
  files: {read: [/usr/**, /etc/hosts], write: [/tmp/**]}
  network:
    connect: [127.0.0.0/8, "10.0.0.0/8:443"]
    listen: ["*:8000"]
    unix: [/run/**]
  devices: [nvidia]
---
name: helper
selector: {executables: [/usr/bin/helper]}
allow: {devices: [nvidia]}
---
name: other
selector: {executables: [/usr/bin/other]}
allow: {devices: [nvidia], network: {connect: ["*:443"]}}
"#;

const SERVER: u32 = 1;
const HELPER: u32 = 2;
const OTHER: u32 = 3;

fn config_with(profiles: &str, window: Duration) -> Config {
    let mut profiles = parse_profiles(Path::new("test.yaml"), profiles).unwrap();
    for (i, profile) in profiles.iter_mut().enumerate() {
        profile.id = i as u32 + 1;
    }
    Config {
        source: None,
        profiles,
        guards: Guards {
            protected_paths: vec![ProtectedPaths {
                paths: vec![
                    PathGlob::new("/models/**").unwrap(),
                    PathGlob::new("**/*.gguf").unwrap(),
                ],
                read: vec!["server".into()],
                write: vec![],
                enforce: false,
            }],
            gpu: Some(GpuGuard {
                allow: vec!["server".into(), "helper".into()],
                enforce: false,
            }),
        },
        outputs: Outputs::default(),
        dedup_window: window,
        locked: false,
        heartbeat: crate::config::DEFAULT_HEARTBEAT,
    }
}

/// A start time that is not a whole number of clock ticks (as the kernel's are).
fn start(n: u64) -> u64 {
    n * 1_000_000_000 + 123_457
}

const SECOND: u64 = 1_000_000_000;

struct World {
    table: ProcessTable,
    engine: Engine,
    clock: BootClock,
    now: u64,
}

impl World {
    fn new() -> World {
        World::with(config_with(PROFILES, Duration::from_secs(10)))
    }

    fn with(config: Config) -> World {
        let mut world = World {
            table: ProcessTable::new(),
            engine: Engine::new(Arc::new(config)),
            clock: BootClock::new(),
            now: 100 * SECOND,
        };
        world.exec(1, start(0), "/sbin/init", &["init"]);
        world
    }

    fn header(&mut self, kind: EventKind, tgid: u32, start_time_ns: u64) -> Header {
        self.now += 1000;
        Header {
            kind,
            time_ns: self.now,
            tgid,
            pid: tgid,
            start_time_ns,
            watched: false,
        }
    }

    fn handle(&mut self, event: Event) -> Verdict {
        self.engine.handle(&event, &self.table, &self.clock)
    }

    fn exec(&mut self, tgid: u32, start_time_ns: u64, exe: &str, args: &[&str]) -> Verdict {
        self.exec_as(tgid, start_time_ns, exe, args, false)
    }

    /// An exec the kernel killed (`killed`: enforce mode) or not.
    fn exec_as(
        &mut self,
        tgid: u32,
        start_time_ns: u64,
        exe: &str,
        args: &[&str],
        killed: bool,
    ) -> Verdict {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        self.table.on_exec(ExecInfo {
            tgid,
            start_time_ns,
            exe: exe.to_owned(),
            args: args.clone(),
            uid: 1000,
            cgroup_id: 7,
            cgroup_path: Some("/system.slice/inference.service".into()),
            ..ExecInfo::default()
        });
        let header = self.header(EventKind::Exec, tgid, start_time_ns);
        self.handle(Event::Exec(Exec {
            header,
            ppid: 0,
            parent_start_time_ns: 0,
            uid: 1000,
            gid: 1000,
            cgroup_id: 7,
            path: exe.to_owned(),
            path_truncated: false,
            path_from_filename: false,
            args_count: args.len(),
            args,
            args_truncated: false,
            fileless: false,
            killed,
            would_kill: false,
            raw: Default::default(),
        }))
    }

    fn fork(&mut self, child: u32, child_start: u64, parent: u32, parent_start: u64) -> Verdict {
        self.table.on_fork(child, child_start, parent, parent_start);
        let header = self.header(EventKind::Fork, child, child_start);
        self.handle(Event::Fork(Fork {
            header,
            parent_tgid: parent,
            parent_start_time_ns: parent_start,
        }))
    }

    fn exit(&mut self, tgid: u32, start_time_ns: u64) -> Verdict {
        let header = self.header(EventKind::Exit, tgid, start_time_ns);
        self.table
            .on_exit(tgid, start_time_ns, header.time_ns, Some(0), None);
        self.handle(Event::Exit(Exit {
            header,
            code: Some(0),
            signal: None,
            core_dumped: false,
        }))
    }

    fn file(
        &mut self,
        tgid: u32,
        start_time_ns: u64,
        op: FileOp,
        path: &str,
        access: Access,
        result: i64,
    ) -> Vec<Alert> {
        let header = self.header(EventKind::File, tgid, start_time_ns);
        let (path, target) = match path.split_once(" -> ") {
            Some((from, to)) => (from.to_owned(), Some(to.to_owned())),
            None => (path.to_owned(), None),
        };
        // What the guard subsystem reports of a guarded file: its own event, with its
        // verdict on the inode (a rename into the store: the name that appeared there).
        let config = self.engine.config().clone();
        let guarded = std::iter::once(&path)
            .chain(target.as_ref())
            .map(|p| (p.clone(), crate::kernel::guard::marks::covering(&config, p)))
            .find(|(_, guards)| !guards.is_empty());
        let (path, target, guard) = match guarded {
            Some((path, guards)) => (
                path,
                None,
                Some(crate::event::GuardHit {
                    guards,
                    profile: None,
                    judged: false,
                    denied: false,
                    would_deny: false,
                    access_unknown: false,
                    exe: None,
                }),
            ),
            None => (path, target, None),
        };
        self.handle(Event::File(File {
            header,
            op,
            path,
            path_truncated: false,
            target,
            access,
            result,
            protected: guard.is_some(),
            known: None,
            raw: Default::default(),
            guard,
            unverified: false,
        }))
        .alerts
    }

    fn read(&mut self, tgid: u32, start_time_ns: u64, path: &str) -> Vec<Alert> {
        self.file(tgid, start_time_ns, FileOp::Open, path, READ, 3)
    }

    fn net(
        &mut self,
        tgid: u32,
        start_time_ns: u64,
        op: NetOp,
        transport: Transport,
        addr: &str,
    ) -> Vec<Alert> {
        let header = self.header(EventKind::Net, tgid, start_time_ns);
        let (peer, local, unix_path) = if transport == Transport::Unix {
            (None, None, Some(addr.to_owned()))
        } else {
            let addr: SocketAddr = addr.parse().unwrap();
            match op {
                NetOp::Bind | NetOp::Listen => (None, Some(addr), None),
                _ => (Some(addr), None, None),
            }
        };
        self.handle(Event::Net(Net {
            header,
            op,
            transport,
            peer,
            local,
            unix_path,
            result: 0,
            decision: Decision::Observed,
            unverified: false,
            egress: false,
            known: None,
        }))
        .alerts
    }

    fn connect(&mut self, tgid: u32, start_time_ns: u64, peer: &str) -> Vec<Alert> {
        self.net(tgid, start_time_ns, NetOp::Connect, Transport::Tcp, peer)
    }

    fn device(
        &mut self,
        tgid: u32,
        start_time_ns: u64,
        class: DeviceClass,
        result: i64,
    ) -> Vec<Alert> {
        let header = self.header(EventKind::Device, tgid, start_time_ns);
        self.handle(Event::Device(Device {
            header,
            path: "/dev/x".into(),
            class,
            major: 195,
            minor: 0,
            result,
            decision: Decision::Observed,
        }))
        .alerts
    }

    /// A shell (100) that started the server (101, governed).
    fn server() -> World {
        World::server_with(config_with(PROFILES, Duration::from_secs(10)))
    }

    fn server_with(config: Config) -> World {
        let mut world = World::with(config);
        world.fork(100, start(1), 1, start(0));
        world.exec(100, start(1), "/usr/bin/bash", &["bash"]);
        world.fork(101, start(2), 100, start(1));
        let verdict = world.exec(
            101,
            start(2),
            "/usr/bin/python3.12",
            &["python3", "/usr/local/bin/vllm", "serve", "m"],
        );
        assert!(verdict.alerts.is_empty());
        assert_eq!(verdict.governed, Some((101, SERVER)));
        world
    }
}

const READ: Access = Access {
    read: true,
    write: false,
    create: false,
    truncate: false,
};
const WRITE: Access = Access {
    read: false,
    write: true,
    create: true,
    truncate: false,
};
const READ_WRITE: Access = Access {
    read: true,
    write: true,
    create: false,
    truncate: false,
};

fn rules(alerts: &[Alert]) -> Vec<&str> {
    alerts.iter().map(|a| a.rule.as_str()).collect()
}

#[test]
fn rule_ids_and_severities() {
    let ids: Vec<&str> = RULES.iter().map(|r| r.id).collect();
    assert_eq!(
        ids,
        [
            "exec-not-allowed",
            "file-read-not-allowed",
            "file-write-not-allowed",
            "connect-not-allowed",
            "listen-not-allowed",
            "device-not-allowed",
            "protected-file-read",
            "protected-file-write",
            "gpu-unexpected-process",
            "model-exfiltration",
            "process-memory-access",
            "io-uring-not-allowed",
            "events-lost",
            "config-reload-failed",
            "monitor-tampered",
            "monitor-object-opened",
            "monitor-signaled",
            "monitor-paused",
            "config-changed",
            "config-change-refused",
            "config-insecure",
            "monitor-unclean-exit",
            "alerts-file-repaired",
            "export-rejected",
            "spool-write-failed",
            "alert-output-failed",
        ]
    );
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "rule ids are unique");
    assert_eq!(MONITOR_TAMPERED.severity, Severity::Critical);
    assert_eq!(MONITOR_OBJECT_OPENED.severity, Severity::Medium);
    assert_eq!(MONITOR_SIGNALED.severity, Severity::High);
    assert_eq!(MONITOR_PAUSED.severity, Severity::High);
    assert_eq!(FILE_READ_NOT_ALLOWED.severity, Severity::Medium);
    assert_eq!(LISTEN_NOT_ALLOWED.severity, Severity::Medium);
    assert_eq!(PROTECTED_FILE_WRITE.severity, Severity::Critical);
    assert_eq!(MODEL_EXFILTRATION.severity, Severity::Critical);
    assert_eq!(CONFIG_RELOAD_FAILED.severity, Severity::Medium);
    assert_eq!(EVENTS_LOST.severity, Severity::High);
    assert_eq!(PROCESS_MEMORY_ACCESS.severity, Severity::Critical);
    assert_eq!(IO_URING_NOT_ALLOWED.severity, Severity::High);
}

#[test]
fn selector_exec_governs_without_alert() {
    let world = World::server();
    assert_eq!(
        world
            .engine
            .governing(101, start(2))
            .map(|p| p.name.as_str()),
        Some("server")
    );
    assert!(world.engine.governing(100, start(1)).is_none());
    // Another process with that tgid is not governed.
    assert!(world.engine.governing(101, start(50)).is_none());
    assert_eq!(world.engine.governed(), [(101, SERVER)]);
}

#[test]
fn selector_keys_are_anded() {
    let mut world = World::new();
    world.fork(100, start(1), 1, start(0));
    // Python without `serve`: not governed.
    let verdict = world.exec(
        100,
        start(1),
        "/usr/bin/python3.12",
        &["python3", "train.py"],
    );
    assert_eq!(verdict.governed, None);
    // `serve` with another executable: not governed.
    let verdict = world.exec(100, start(1), "/usr/bin/ruby", &["ruby", "x", "serve"]);
    assert_eq!(verdict.governed, None);
    assert!(world.engine.governed().is_empty());
}

#[test]
fn exec_not_allowed_for_children_that_stay() {
    let mut world = World::server();
    let verdict = world.fork(102, start(3), 101, start(2));
    assert_eq!(verdict.governed, Some((102, SERVER)));
    // An allowed exec: no alert, still governed.
    let verdict = world.exec(102, start(3), "/usr/bin/nvidia-smi", &["nvidia-smi"]);
    assert!(verdict.alerts.is_empty());
    assert_eq!(verdict.governed, None);
    assert_eq!(
        world.engine.governing(102, start(3)).map(|p| p.id),
        Some(SERVER)
    );

    world.fork(103, start(4), 101, start(2));
    let verdict = world.exec(103, start(4), "/usr/bin/curl", &["curl", "http://x"]);
    assert_eq!(rules(&verdict.alerts), ["exec-not-allowed"]);
    let alert = &verdict.alerts[0];
    assert_eq!(alert.severity, Severity::High);
    assert_eq!(alert.action, Action::Alert);
    assert_eq!(alert.profile.as_deref(), Some("server"));
    assert_eq!(alert.count, 1);
    assert_eq!(alert.uid.len(), 32);
    let json = alert.to_json();
    assert_eq!(json["process.executable.path"], "/usr/bin/curl");
    assert_eq!(json["process.pid"], 103);
    assert_eq!(
        json["process.parent.executable.path"],
        "/usr/bin/python3.12"
    );
    assert_eq!(json["monitor.event.kind"], "exec");
    assert!(json.get("event.kind").is_none());
    assert_eq!(json["security_rule.name"], "exec-not-allowed");
    assert_eq!(
        alert.time_unix_ns,
        world.clock.unix_ns(world.now),
        "the event's time"
    );
    // Still governed by the server after the exec.
    assert_eq!(
        world.engine.governing(103, start(4)).map(|p| p.id),
        Some(SERVER)
    );
}

#[test]
fn children_matching_another_profile_keep_their_own() {
    let mut world = World::server();
    world.fork(102, start(3), 101, start(2));
    // The selector of `helper` matches, but `server` names no transition: no hop.
    let verdict = world.exec(102, start(3), "/usr/bin/helper", &["helper"]);
    assert_eq!(rules(&verdict.alerts), ["exec-not-allowed"]);
    assert_eq!(verdict.governed, None);
    assert_eq!(
        world.engine.governing(102, start(3)).map(|p| p.id),
        Some(SERVER)
    );
    // Nor by argv chosen to match another profile's selector.
    let verdict = world.exec(
        102,
        start(3),
        "/usr/bin/python3.12",
        &["python3", "x serve"],
    );
    assert!(verdict.alerts.is_empty(), "python3 is in allow.exec");
    assert_eq!(
        world.engine.governing(102, start(3)).map(|p| p.id),
        Some(SERVER)
    );
}

#[test]
fn a_named_transition_switches_silently() {
    let profiles = PROFILES.replace(
        "  devices: [nvidia]\n---\nname: helper",
        "  devices: [nvidia]\n  transitions: [helper]\n---\nname: helper",
    );
    assert_ne!(profiles, PROFILES);
    let mut world = World::server_with(config_with(&profiles, Duration::from_secs(10)));
    world.fork(102, start(3), 101, start(2));
    let verdict = world.exec(102, start(3), "/usr/bin/helper", &["helper"]);
    assert!(verdict.alerts.is_empty());
    assert_eq!(verdict.governed, Some((102, HELPER)));
    assert_eq!(
        world
            .engine
            .governing(102, start(3))
            .map(|p| p.name.as_str()),
        Some("helper")
    );
    // Its own children inherit the new profile.
    let verdict = world.fork(104, start(5), 102, start(3));
    assert_eq!(verdict.governed, Some((104, HELPER)));
}

#[test]
fn exit_ends_governance() {
    let mut world = World::server();
    world.exit(101, start(2));
    assert!(world.engine.governing(101, start(2)).is_none());
    assert!(world.engine.governed().is_empty());
    // An ungoverned process is not checked against profiles.
    world.fork(200, start(9), 1, start(0));
    world.exec(200, start(9), "/usr/bin/cat", &["cat"]);
    assert!(world.read(200, start(9), "/etc/shadow").is_empty());
}

#[test]
fn lost_fork_falls_back_to_the_parent() {
    let mut world = World::server();
    // The fork event was lost: only the table knows the child, started after the server
    // became governed (event times are around 100 s).
    world.table.on_fork(105, start(200), 101, start(2));
    let alerts = world.read(105, start(200), "/home/user/.ssh/id_rsa");
    assert_eq!(rules(&alerts), ["file-read-not-allowed"]);
    assert_eq!(
        world.engine.governing(105, start(200)).map(|p| p.id),
        Some(SERVER)
    );
    // A child forked before its parent became governed does not inherit.
    world.fork(107, start(7), 1, start(0));
    world.exec(
        107,
        start(7),
        "/usr/bin/python3.12",
        &["python3", "x", "serve"],
    );
    world.table.on_fork(108, start(6), 107, start(7));
    assert!(world.read(108, start(6), "/home/user/x").is_empty());
}

#[test]
fn file_reads_and_writes_against_the_profile() {
    let mut world = World::server();
    let (tgid, st) = (101, start(2));
    assert!(world.read(tgid, st, "/usr/lib/python3/os.py").is_empty());
    assert!(world.read(tgid, st, "/etc/hosts").is_empty());
    let alerts = world.read(tgid, st, "/etc/shadow");
    assert_eq!(rules(&alerts), ["file-read-not-allowed"]);
    assert_eq!(alerts[0].severity, Severity::Medium);
    assert_eq!(alerts[0].to_json()["file.path"], "/etc/shadow");
    assert_eq!(alerts[0].to_json()["monitor.event.kind"], "file");

    assert!(world
        .file(tgid, st, FileOp::Open, "/tmp/x", WRITE, 3)
        .is_empty());
    let alerts = world.file(tgid, st, FileOp::Open, "/etc/cron.d/x", WRITE, 3);
    assert_eq!(rules(&alerts), ["file-write-not-allowed"]);
    assert_eq!(alerts[0].severity, Severity::High);
    // Read-write needs both; when both fail, the write (more severe) is reported.
    let alerts = world.file(tgid, st, FileOp::Open, "/usr/lib/libc.so.6", READ_WRITE, 3);
    assert_eq!(rules(&alerts), ["file-write-not-allowed"]);
    let alerts = world.file(tgid, st, FileOp::Open, "/var/x", READ_WRITE, 3);
    assert_eq!(rules(&alerts), ["file-write-not-allowed"]);
    // Non-open operations are write-class; a rename checks both paths.
    assert!(world
        .file(
            tgid,
            st,
            FileOp::Rename,
            "/tmp/a -> /tmp/b",
            Access::default(),
            0
        )
        .is_empty());
    let alerts = world.file(
        tgid,
        st,
        FileOp::Rename,
        "/tmp/a -> /usr/bin/ls",
        Access::default(),
        0,
    );
    assert_eq!(rules(&alerts), ["file-write-not-allowed"]);
    for (op, path) in [
        (FileOp::Unlink, "/usr/bin/a"),
        (FileOp::Truncate, "/usr/bin/b"),
        (FileOp::Chmod, "/usr/bin/c"),
    ] {
        let alerts = world.file(tgid, st, op, path, Access::default(), 0);
        assert_eq!(rules(&alerts), ["file-write-not-allowed"], "{op:?}");
    }
}

#[test]
fn probes_of_missing_paths_are_ignored_but_other_failures_count() {
    let mut world = World::server();
    let (tgid, st) = (101, start(2));
    assert!(world
        .file(tgid, st, FileOp::Open, "/home/u/site.py", READ, -2)
        .is_empty());
    assert!(world
        .file(tgid, st, FileOp::Open, "/home/u/x/y.py", READ, -20)
        .is_empty());
    let alerts = world.file(tgid, st, FileOp::Open, "/root/secret", READ, -13);
    assert_eq!(rules(&alerts), ["file-read-not-allowed"]);
    assert_eq!(alerts[0].to_json()["error.type"], "EACCES");
}

#[test]
fn protected_files_are_decided_by_the_guard_alone() {
    let mut world = World::server();
    // The server may read models (its profile does not list /models: the guard decides).
    assert!(world
        .read(101, start(2), "/models/m/model.safetensors")
        .is_empty());
    // ...but not write them: only the guard rule, not also file-write-not-allowed.
    let alerts = world.file(101, start(2), FileOp::Open, "/models/m/x", WRITE, 3);
    assert_eq!(rules(&alerts), ["protected-file-write"]);
    assert_eq!(alerts[0].severity, Severity::Critical);
    assert_eq!(alerts[0].profile.as_deref(), Some("server"));
    // A rename into the store.
    let alerts = world.file(
        101,
        start(2),
        FileOp::Rename,
        "/tmp/evil -> /srv/m.gguf",
        Access::default(),
        0,
    );
    assert_eq!(rules(&alerts), ["protected-file-write"]);

    // Another profile, not in the guard's list.
    world.fork(300, start(20), 1, start(0));
    world.exec(300, start(20), "/usr/bin/other", &["other"]);
    let alerts = world.read(300, start(20), "/data/llama.gguf");
    assert_eq!(rules(&alerts), ["protected-file-read"]);
    assert_eq!(alerts[0].severity, Severity::High);

    // An ungoverned process.
    world.fork(301, start(21), 1, start(0));
    world.exec(301, start(21), "/usr/bin/cp", &["cp"]);
    let alerts = world.read(301, start(21), "/models/m/model.safetensors");
    assert_eq!(rules(&alerts), ["protected-file-read"]);
    assert_eq!(alerts[0].profile, None);
    let alerts = world.file(
        301,
        start(21),
        FileOp::Unlink,
        "/models/m/model.safetensors",
        Access::default(),
        0,
    );
    assert_eq!(rules(&alerts), ["protected-file-write"]);
}

#[test]
fn connect_and_send_against_the_profile() {
    let mut world = World::server();
    let (tgid, st) = (101, start(2));
    assert!(world.connect(tgid, st, "127.0.0.1:5000").is_empty());
    assert!(world.connect(tgid, st, "10.2.3.4:443").is_empty());
    let alerts = world.connect(tgid, st, "10.2.3.4:22");
    assert_eq!(rules(&alerts), ["connect-not-allowed"]);
    assert_eq!(alerts[0].severity, Severity::High);
    assert_eq!(alerts[0].to_json()["network.peer.address"], "10.2.3.4");
    assert_eq!(alerts[0].to_json()["network.peer.port"], 22);
    // IPv4-mapped IPv6 peers match IPv4 rules.
    assert!(world.connect(tgid, st, "[::ffff:10.2.3.4]:443").is_empty());
    assert_eq!(
        rules(&world.connect(tgid, st, "[2001:db8::1]:443")),
        ["connect-not-allowed"]
    );
    // A UDP datagram.
    let alerts = world.net(tgid, st, NetOp::Send, Transport::Udp, "8.8.8.8:53");
    assert_eq!(rules(&alerts), ["connect-not-allowed"]);
    // Accepting is not checked.
    assert!(world
        .net(tgid, st, NetOp::Accept, Transport::Tcp, "8.8.8.8:5555")
        .is_empty());
    // Ungoverned processes are not checked (they have no profile).
    world.fork(400, start(30), 1, start(0));
    world.exec(400, start(30), "/usr/bin/curl", &["curl"]);
    assert!(world.connect(400, start(30), "8.8.8.8:443").is_empty());
}

#[test]
fn listen_and_bind_against_the_profile() {
    let mut world = World::server();
    let (tgid, st) = (101, start(2));
    assert!(world
        .net(tgid, st, NetOp::Listen, Transport::Tcp, "0.0.0.0:8000")
        .is_empty());
    let alerts = world.net(tgid, st, NetOp::Listen, Transport::Tcp, "0.0.0.0:4444");
    assert_eq!(rules(&alerts), ["listen-not-allowed"]);
    assert_eq!(alerts[0].severity, Severity::Medium);
    // TCP bind is not checked (only listen), port 0 never is.
    assert!(world
        .net(tgid, st, NetOp::Bind, Transport::Tcp, "0.0.0.0:4444")
        .is_empty());
    assert!(world
        .net(tgid, st, NetOp::Listen, Transport::Tcp, "0.0.0.0:0")
        .is_empty());
    // UDP: bind is checked.
    let alerts = world.net(tgid, st, NetOp::Bind, Transport::Udp, "0.0.0.0:5353");
    assert_eq!(rules(&alerts), ["listen-not-allowed"]);
    assert!(world
        .net(tgid, st, NetOp::Bind, Transport::Udp, "0.0.0.0:0")
        .is_empty());
    assert!(world
        .net(tgid, st, NetOp::Bind, Transport::Udp, "[::]:8000")
        .is_empty());
}

#[test]
fn unix_sockets_only_when_listed() {
    let mut world = World::server();
    let (tgid, st) = (101, start(2));
    assert!(world
        .net(
            tgid,
            st,
            NetOp::Connect,
            Transport::Unix,
            "/run/nvidia-persistenced/socket"
        )
        .is_empty());
    let alerts = world.net(
        tgid,
        st,
        NetOp::Connect,
        Transport::Unix,
        "/var/run/docker.sock",
    );
    assert_eq!(rules(&alerts), ["connect-not-allowed"]);
    let alerts = world.net(tgid, st, NetOp::Bind, Transport::Unix, "@backdoor");
    assert_eq!(rules(&alerts), ["listen-not-allowed"]);
    // A profile without `unix` does not check them.
    world.fork(300, start(20), 1, start(0));
    world.exec(300, start(20), "/usr/bin/other", &["other"]);
    assert!(world
        .net(
            300,
            start(20),
            NetOp::Connect,
            Transport::Unix,
            "/var/run/docker.sock"
        )
        .is_empty());
}

#[test]
fn model_exfiltration_replaces_connect_not_allowed() {
    let mut world = World::server();
    let (tgid, st) = (101, start(2));
    assert!(world
        .read(tgid, st, "/models/m/model.safetensors")
        .is_empty());
    // Allowed destinations stay quiet.
    assert!(world.connect(tgid, st, "10.0.0.9:443").is_empty());
    let alerts = world.connect(tgid, st, "203.0.113.7:443");
    assert_eq!(rules(&alerts), ["model-exfiltration"]);
    let json = alerts[0].to_json();
    assert_eq!(json["severity"], "critical");
    assert_eq!(json["file.path"], "/models/m/model.safetensors");
    assert_eq!(json["network.peer.address"], "203.0.113.7");
    assert_eq!(json["monitor.profile"], "server");
    // A UDP send too.
    let alerts = world.net(tgid, st, NetOp::Send, Transport::Udp, "203.0.113.7:9999");
    assert_eq!(rules(&alerts), ["model-exfiltration"]);
    // Children forked after the read carry it.
    world.fork(102, start(3), tgid, st);
    assert_eq!(
        rules(&world.connect(102, start(3), "198.51.100.1:80")),
        ["model-exfiltration"]
    );
}

#[test]
fn model_exfiltration_without_profile_is_anything_but_loopback() {
    let mut world = World::new();
    world.fork(500, start(40), 1, start(0));
    world.exec(
        500,
        start(40),
        "/usr/bin/python3.12",
        &["python3", "steal.py"],
    );
    assert_eq!(
        rules(&world.read(500, start(40), "/srv/llama.gguf")),
        ["protected-file-read"]
    );
    assert!(world.connect(500, start(40), "127.0.0.1:8000").is_empty());
    assert!(world.connect(500, start(40), "[::1]:8000").is_empty());
    let alerts = world.connect(500, start(40), "10.1.1.1:22");
    assert_eq!(rules(&alerts), ["model-exfiltration"]);
    assert_eq!(alerts[0].profile, None);
    assert_eq!(alerts[0].to_json()["file.path"], "/srv/llama.gguf");
    // A failed read does not count.
    world.fork(501, start(41), 1, start(0));
    world.exec(501, start(41), "/usr/bin/cat", &["cat"]);
    world.file(501, start(41), FileOp::Open, "/srv/llama.gguf", READ, -13);
    assert!(world.connect(501, start(41), "10.1.1.1:22").is_empty());
}

#[test]
fn devices_against_profile_and_gpu_guard() {
    let mut world = World::server();
    assert!(world
        .device(101, start(2), DeviceClass::Nvidia, 3)
        .is_empty());
    // A class the profile does not allow: device-not-allowed only.
    let alerts = world.device(101, start(2), DeviceClass::Kfd, 3);
    assert_eq!(rules(&alerts), ["device-not-allowed"]);
    assert_eq!(alerts[0].severity, Severity::High);
    assert_eq!(alerts[0].to_json()["device.class"], "kfd");
    // A profile that allows the class but is not in the GPU guard.
    world.fork(300, start(20), 1, start(0));
    world.exec(300, start(20), "/usr/bin/other", &["other"]);
    assert_eq!(
        rules(&world.device(300, start(20), DeviceClass::Nvidia, 3)),
        ["gpu-unexpected-process"]
    );
    // An ungoverned process; failed opens count (a node without a driver answers ENXIO or
    // ENODEV: the attempt is the signal), probes of absent nodes do not.
    world.fork(301, start(21), 1, start(0));
    world.exec(301, start(21), "/usr/bin/miner", &["miner"]);
    let alerts = world.device(301, start(21), DeviceClass::Nvidia, -13);
    assert_eq!(rules(&alerts), ["gpu-unexpected-process"]);
    assert_eq!(alerts[0].profile, None);
    assert!(world
        .device(301, start(21), DeviceClass::NvidiaUvm, -2)
        .is_empty());
    assert_eq!(
        rules(&world.device(301, start(21), DeviceClass::Dri, -19)),
        ["gpu-unexpected-process"]
    );
}

#[test]
fn no_gpu_guard_no_gpu_alerts() {
    let mut config = config_with(PROFILES, Duration::from_secs(10));
    config.guards.gpu = None;
    let mut world = World::with(config);
    world.fork(301, start(21), 1, start(0));
    world.exec(301, start(21), "/usr/bin/miner", &["miner"]);
    assert!(world
        .device(301, start(21), DeviceClass::Nvidia, 3)
        .is_empty());
}

#[test]
fn burst_of_identical_alerts_is_one_now_and_one_counted() {
    let mut world = World::server();
    let mut immediate = Vec::new();
    for _ in 0..5 {
        immediate.extend(world.read(101, start(2), "/etc/shadow"));
    }
    // Another object is another alert.
    immediate.extend(world.read(101, start(2), "/etc/gshadow"));
    assert_eq!(
        rules(&immediate),
        ["file-read-not-allowed", "file-read-not-allowed"]
    );
    let first_time = immediate[0].time_unix_ns;
    assert!(world.engine.flush(world.now, &world.clock).is_empty());
    let folded = world.engine.flush(world.now + 10 * SECOND, &world.clock);
    assert_eq!(folded.len(), 1);
    assert_eq!(folded[0].count, 4);
    assert_eq!(folded[0].to_json()["monitor.count"], 4);
    assert_eq!(folded[0].to_json()["file.path"], "/etc/shadow");
    assert!(
        folded[0].time_unix_ns > first_time,
        "the last repeat's time"
    );
    assert!(world
        .engine
        .flush(world.now + 100 * SECOND, &world.clock)
        .is_empty());
}

#[test]
fn zero_window_disables_folding() {
    let mut world = World::with(config_with(PROFILES, Duration::ZERO));
    world.fork(101, start(2), 1, start(0));
    world.exec(
        101,
        start(2),
        "/usr/bin/python3",
        &["python3", "x", "serve"],
    );
    let alerts: Vec<Alert> = (0..3)
        .flat_map(|_| world.read(101, start(2), "/etc/shadow"))
        .collect();
    assert_eq!(alerts.len(), 3);
}

#[test]
fn seed_governs_running_processes_and_their_children() {
    let mut world = World::new();
    // Built without events, as the /proc scan would.
    let table = &mut world.table;
    table.on_fork(600, start(50), 1, start(0));
    table.on_exec(ExecInfo {
        tgid: 600,
        start_time_ns: start(50),
        exe: "/usr/bin/python3.11".into(),
        args: vec!["python3".into(), "-m".into(), "x".into(), "serve".into()],
        ..ExecInfo::default()
    });
    table.on_fork(601, start(51), 600, start(50));
    table.on_fork(602, start(52), 601, start(51));
    table.on_fork(603, start(53), 600, start(50));
    table.on_exec(ExecInfo {
        tgid: 603,
        start_time_ns: start(53),
        exe: "/usr/bin/helper".into(),
        args: vec!["helper".into()],
        ..ExecInfo::default()
    });
    table.on_fork(604, start(54), 603, start(53));
    table.on_fork(700, start(55), 1, start(0));
    let seeded = world.engine.seed(&world.table);
    assert_eq!(
        seeded,
        [
            (600, SERVER),
            (601, SERVER),
            (602, SERVER),
            // A child of the server running the helper stays the server's: no transition.
            (603, SERVER),
            (604, SERVER)
        ]
    );
    assert_eq!(world.engine.governed(), seeded);
    // Seeding again changes nothing.
    assert!(world.engine.seed(&world.table).is_empty());
    // And events find them.
    assert_eq!(
        rules(&world.read(602, start(52), "/etc/shadow")),
        ["file-read-not-allowed"]
    );
}

#[test]
fn reload_resolves_profiles_by_name() {
    let mut world = World::server();
    world.fork(300, start(20), 1, start(0));
    world.exec(300, start(20), "/usr/bin/other", &["other"]);
    assert_eq!(world.engine.governed(), [(101, SERVER), (300, OTHER)]);

    // The new config drops `other` and lists `server` second.
    let reordered = r#"
name: helper
selector: {executables: [/usr/bin/helper]}
---
name: server
selector: {executables: [/usr/bin/python3*], args: ["* serve*"]}
allow: {files: {read: [/etc/**]}}
"#;
    world
        .engine
        .reload(Arc::new(config_with(reordered, Duration::from_secs(1))));
    assert_eq!(world.engine.governed(), [(101, 2)]);
    let profile = world.engine.governing(101, start(2)).unwrap();
    assert_eq!(profile.name, "server");
    // The new allow lists apply.
    assert!(world.read(101, start(2), "/etc/shadow").is_empty());
    assert!(world.engine.governing(300, start(20)).is_none());
    assert_eq!(world.engine.config().dedup_window, Duration::from_secs(1));
}

#[test]
fn sweep_forgets_processes_the_table_forgot() {
    let mut world = World::server();
    world.table.on_exit(101, start(2), world.now, Some(0), None);
    world.table.sweep(world.now + 3600 * SECOND);
    world.engine.sweep(&world.table);
    assert!(world.engine.governed().is_empty());
}

fn guard_event(world: &mut World, tgid: u32, st: u64, path: &str, access: Access) -> File {
    let header = world.header(EventKind::File, tgid, st);
    File {
        header,
        op: FileOp::Open,
        path: path.into(),
        path_truncated: false,
        target: None,
        access,
        result: 0,
        protected: true,
        known: None,
        raw: Default::default(),
        guard: Some(crate::event::GuardHit {
            guards: vec![0],
            profile: None,
            judged: false,
            denied: false,
            would_deny: false,
            access_unknown: false,
            exe: None,
        }),
        unverified: false,
    }
}

#[test]
fn the_guard_verdict_is_trusted_and_one_open_makes_one_alert() {
    let mut world = World::server();
    // The ring-buffer record of a governed process's open of a guarded path: the guard
    // subsystem reports the same open, so this one raises nothing (no duplicate, and no
    // file-read-not-allowed either).
    let mut ring = guard_event(&mut world, 101, start(2), "/models/m/x", WRITE);
    ring.guard = None;
    ring.protected = false;
    assert!(world.handle(Event::File(ring)).alerts.is_empty());
    // A path the globs no longer match (cut short, or reached through a hard link outside
    // the store): the guard's verdict on the inode decides.
    let event = guard_event(&mut world, 101, start(2), "/elsewhere/link", WRITE);
    let alerts = world.handle(Event::File(event)).alerts;
    assert_eq!(rules(&alerts), ["protected-file-write"]);
    assert_eq!(alerts[0].to_json()["file.path"], "/elsewhere/link");
    // The profile the answering thread judged by decides, even before the engine knows the
    // process (its exec still in the pipeline).
    world.fork(700, start(70), 1, start(0));
    let mut event = guard_event(&mut world, 700, start(70), "/elsewhere/link", READ);
    if let Some(hit) = &mut event.guard {
        hit.profile = Some(SERVER);
        hit.judged = true;
    }
    assert!(world.handle(Event::File(event)).alerts.is_empty());
    let event = guard_event(&mut world, 700, start(70), "/elsewhere/link", READ);
    assert_eq!(
        rules(&world.handle(Event::File(event)).alerts),
        ["protected-file-read"]
    );
}

#[test]
fn deeds_against_the_monitor() {
    use crate::event::{MemoryAccess, MemoryOp, Tamper, TamperOp};
    use monitor_common::BpfObjectKind;
    let mut world = World::new();
    let tamper = |world: &mut World, op: TamperOp| {
        let header = world.header(EventKind::Tamper, 4242, start(9));
        rules(
            &world
                .handle(Event::Tamper(Tamper {
                    header,
                    op,
                    result: Some(0),
                }))
                .alerts,
        )
        .iter()
        .map(|r| (*r).to_owned())
        .collect::<Vec<String>>()
    };
    let bpf = |cmd, unverified| TamperOp::Bpf {
        cmd,
        object: BpfObjectKind::Link,
        id: 7,
        unverified,
        read_only: false,
    };
    // Identified from the caller's fd table: tampering; named by an id only: suspected.
    assert_eq!(
        tamper(&mut world, bpf(monitor_common::BPF_LINK_DETACH, false)),
        ["monitor-tampered"]
    );
    assert_eq!(
        tamper(&mut world, bpf(monitor_common::BPF_LINK_GET_FD_BY_ID, true)),
        ["monitor-object-opened"]
    );
    let signal = |signal| TamperOp::Signal { signal, thread: 99 };
    assert_eq!(tamper(&mut world, signal(15)), ["monitor-signaled"]);
    assert_eq!(tamper(&mut world, signal(9)), ["monitor-signaled"]);
    // A stop and the SIGCONT that ends it become one monitor-paused, raised by the processor.
    assert!(tamper(&mut world, signal(19)).is_empty());
    assert!(tamper(&mut world, signal(18)).is_empty());
    // The monitor's memory: tampering, though the monitor has no profile.
    let header = world.header(EventKind::MemoryAccess, 4243, start(10));
    let verdict = world.handle(Event::MemoryAccess(MemoryAccess {
        header,
        op: MemoryOp::Ptrace(16),
        target_tgid: 99,
        target_start_time_ns: 0,
        target_profile: 0,
        fd: None,
        killed: false,
        would_kill: false,
        at_exit: false,
        monitor: true,
    }));
    assert_eq!(rules(&verdict.alerts), ["monitor-tampered"]);
    assert_eq!(verdict.alerts[0].severity, Severity::Critical);
}

/// `/bin/sh -c CMD` by a governed process is judged by what the shell runs: the shell's exec
/// is no alert, an allowed program it runs (in place or in a forked child) is none either,
/// a program not allowed is, and a shell that ran no program at all is when it exits.
#[test]
fn sh_c_is_judged_by_what_the_shell_runs() {
    let mut world = World::server();
    // Allowed: sh -c nvidia-smi, the shell execs it in place.
    world.fork(110, start(10), 101, start(2));
    let verdict = world.exec(
        110,
        start(10),
        "/usr/bin/dash",
        &["/bin/sh", "-c", "nvidia-smi -L"],
    );
    assert!(verdict.alerts.is_empty(), "{:?}", rules(&verdict.alerts));
    let verdict = world.exec(110, start(10), "/usr/bin/nvidia-smi", &["nvidia-smi", "-L"]);
    assert!(verdict.alerts.is_empty(), "{:?}", rules(&verdict.alerts));
    assert!(world.exit(110, start(10)).alerts.is_empty());

    // Not allowed: the shell forks a child that runs `id`.
    world.fork(111, start(11), 101, start(2));
    assert!(world
        .exec(111, start(11), "/usr/bin/dash", &["sh", "-c", "id; true"])
        .alerts
        .is_empty());
    world.fork(112, start(12), 111, start(11));
    let verdict = world.exec(112, start(12), "/usr/bin/id", &["id"]);
    assert_eq!(rules(&verdict.alerts), ["exec-not-allowed"]);
    assert_eq!(
        verdict.alerts[0].attributes["process.executable.path"],
        "/usr/bin/id"
    );
    assert!(world.exit(112, start(12)).alerts.is_empty());
    // It ran a program (judged above): its own exit is no second alert.
    assert!(world.exit(111, start(11)).alerts.is_empty());

    // Builtins only: the shell itself is the alert, at its exit.
    world.fork(113, start(13), 101, start(2));
    assert!(world
        .exec(
            113,
            start(13),
            "/usr/bin/dash",
            &["sh", "-c", "echo x > /tmp/y"]
        )
        .alerts
        .is_empty());
    let verdict = world.exit(113, start(13));
    assert_eq!(rules(&verdict.alerts), ["exec-not-allowed"]);

    // A shell without -c (an interactive or script shell) is an exec like any other.
    world.fork(114, start(14), 101, start(2));
    let verdict = world.exec(114, start(14), "/usr/bin/dash", &["sh", "-i"]);
    assert_eq!(rules(&verdict.alerts), ["exec-not-allowed"]);
    // A shell -c that runs a shell without -c: that one is judged.
    world.fork(115, start(15), 101, start(2));
    assert!(world
        .exec(115, start(15), "/usr/bin/bash", &["bash", "-ec", "exec sh"])
        .alerts
        .is_empty());
    let verdict = world.exec(115, start(15), "/usr/bin/dash", &["sh"]);
    assert_eq!(rules(&verdict.alerts), ["exec-not-allowed"]);

    // A shell -c the kernel killed at its exec (enforce mode) ran nothing: the kill is the
    // alert, at once, not deferred to its exit.
    world.fork(116, start(16), 101, start(2));
    let verdict = world.exec_as(
        116,
        start(16),
        "/usr/bin/dash",
        &["sh", "-c", "touch /tmp/x"],
        true,
    );
    assert_eq!(rules(&verdict.alerts), ["exec-not-allowed"]);
    assert!(world.exit(116, start(16)).alerts.is_empty());
}

#[test]
fn shell_command_detection() {
    let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(checks::is_shell_command(
        "/usr/bin/dash",
        &args(&["/bin/sh", "-c", "lscpu"])
    ));
    assert!(checks::is_shell_command(
        "/usr/bin/bash",
        &args(&["bash", "-e", "-c", "x"])
    ));
    assert!(checks::is_shell_command(
        "/usr/bin/bash",
        &args(&["bash", "-xc", "x"])
    ));
    assert!(!checks::is_shell_command(
        "/usr/bin/dash",
        &args(&["sh", "-c"])
    ));
    assert!(!checks::is_shell_command(
        "/usr/bin/dash",
        &args(&["sh", "script.sh", "-c", "x"])
    ));
    assert!(!checks::is_shell_command(
        "/usr/bin/dash",
        &args(&["sh", "-i"])
    ));
    assert!(!checks::is_shell_command(
        "/usr/bin/python3",
        &args(&["python3", "-c", "x"])
    ));
}

/// Globs naming facts are made concrete for each process when it comes under the profile,
/// and passed down to its children; a capability adds its globs.
#[test]
fn profile_variables_resolve_per_process() {
    let profiles = r#"
name: server
selector:
  executables: ["**/bin/python3*"]
  args: ["* serve*"]
allow:
  capabilities: [compile-toolchain]
  exec: ["${python.prefix}/bin/python3*"]
  files: {read: ["${model}/**", "${python.prefix}/lib/**"], write: ["${tmp}/**"]}
  network:
    udp_connect: ["8.8.8.8:80"]
"#;
    let mut world = World::with(config_with(profiles, Duration::from_secs(10)));
    world.fork(101, start(2), 1, start(0));
    let verdict = world.exec(
        101,
        start(2),
        "/opt/py/bin/python3.12",
        &[
            "/opt/py/bin/python3.12",
            "/usr/local/bin/vllm",
            "serve",
            "/srv/m/tiny",
        ],
    );
    assert_eq!(verdict.governed, Some((101, SERVER)));
    assert!(world
        .read(101, start(2), "/srv/m/tiny/config.json")
        .is_empty());
    assert!(world
        .read(101, start(2), "/opt/py/lib/python3.12/os.py")
        .is_empty());
    assert_eq!(
        rules(&world.read(101, start(2), "/srv/other/config.json")),
        ["file-read-not-allowed"]
    );
    // A child keeps the facts: its exec of the compiler (capability) and of the interpreter.
    world.fork(102, start(3), 101, start(2));
    assert!(world
        .exec(102, start(3), "/usr/bin/gcc-12", &["gcc"])
        .alerts
        .is_empty());
    assert!(world.read(102, start(3), "/usr/include/stdio.h").is_empty());
    world.fork(103, start(4), 101, start(2));
    assert!(world
        .exec(
            103,
            start(4),
            "/opt/py/bin/python3.12",
            &["python3", "-c", "x"]
        )
        .alerts
        .is_empty());
    assert!(world
        .read(103, start(4), "/srv/m/tiny/model.safetensors")
        .is_empty());
    // The UDP probe is allowed; TCP to the same address and other UDP peers are not.
    assert!(world
        .net(101, start(2), NetOp::Connect, Transport::Udp, "8.8.8.8:80")
        .is_empty());
    // (Another process: one process's second alert of a peer would fold into a count.)
    assert_eq!(
        rules(&world.connect(102, start(3), "8.8.8.8:80")),
        ["connect-not-allowed"]
    );
    assert_eq!(
        rules(&world.net(101, start(2), NetOp::Send, Transport::Udp, "8.8.8.8:80")),
        ["connect-not-allowed"]
    );
    // Another server process without --model: `${model}` allows nothing for it.
    world.fork(120, start(20), 1, start(0));
    world.exec(
        120,
        start(20),
        "/usr/bin/python3.11",
        &["python3", "x", "serve"],
    );
    assert_eq!(
        rules(&world.read(120, start(20), "/srv/m/tiny/config.json")),
        ["file-read-not-allowed"]
    );
}

/// Under `mode: enforce`, the templated `allow.exec` globs resolved for a process (and
/// passed down to its children) are what the kernel's exec check is given; a profile that
/// only alerts gives the kernel nothing.
#[test]
fn resolved_exec_globs_for_the_kernel() {
    let profile = |mode: &str| {
        format!(
            "name: server\nselector: {{executables: [\"**/bin/python3*\"]}}\nmode: {mode}\nallow:\n  exec: [\"${{python.prefix}}/bin/python3*\", \"/usr/bin/lscpu\"]\n"
        )
    };
    let mut world = World::with(config_with(&profile("enforce"), Duration::from_secs(10)));
    world.fork(101, start(2), 1, start(0));
    world.exec(
        101,
        start(2),
        "/opt/py/bin/python3.12",
        &["/opt/py/bin/python3.12"],
    );
    let want = Some((SERVER, vec!["/opt/py/bin/python3*".to_owned()]));
    assert_eq!(world.engine.resolved_exec(101, start(2)), want);
    world.fork(102, start(3), 101, start(2));
    assert_eq!(world.engine.resolved_exec(102, start(3)), want);
    assert_eq!(world.engine.resolved_execs().len(), 2);
    // Another process with the same pid is not the one the globs were resolved for.
    assert_eq!(world.engine.resolved_exec(101, start(9)), None);

    let mut world = World::with(config_with(&profile("alert"), Duration::from_secs(10)));
    world.fork(101, start(2), 1, start(0));
    world.exec(
        101,
        start(2),
        "/opt/py/bin/python3.12",
        &["/opt/py/bin/python3.12"],
    );
    assert_eq!(world.engine.resolved_exec(101, start(2)), None);
}

/// `io_uring: [setup]` allows creating a ring (libuv does at start-up), not requests on it.
#[test]
fn io_uring_operations_list() {
    let profiles = "name: server\nselector: {executables: [\"/usr/bin/python3*\"]}\nallow:\n  io_uring: [setup]\n";
    let mut world = World::with(config_with(profiles, Duration::from_secs(10)));
    world.fork(101, start(2), 1, start(0));
    world.exec(101, start(2), "/usr/bin/python3.11", &["python3"]);
    let uring = |world: &mut World, op: crate::event::IoUringOp| {
        let header = world.header(EventKind::IoUring, 101, start(2));
        world
            .handle(Event::IoUring(crate::event::IoUring {
                header,
                op,
                ring: 1,
                sq_thread: false,
            }))
            .alerts
    };
    assert!(uring(&mut world, crate::event::IoUringOp::Create).is_empty());
    // IORING_OP_OPENAT (18) is still an alert.
    assert_eq!(
        rules(&uring(&mut world, crate::event::IoUringOp::Submit(18))),
        ["io-uring-not-allowed"]
    );
}
