use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use monitor_common::{Decision, EventKind};

use super::{
    generalise::{
        connect_rules, covers, file_rules, listen_rules, path_pattern, proc_self_as_run_sees_it,
        Counted, PathContext,
    },
    render::{merge, quote, render, Draft, SelectorText},
    *,
};
use crate::{
    config::{cidr::AddrRule, glob::Glob, profile::parse_profiles},
    event::{
        alert::Alert, clock::BootClock, Access, Exec, ExecInfo, Exit, FileOp, Fork, Header,
        IoUring, IoUringOp, Transport,
    },
    rules::Engine,
};

const EPHEMERAL: (u16, u16) = (32768, 60999);

fn pattern(path: &str) -> String {
    pattern_of(path, 100, &[])
}

fn pattern_of(path: &str, tgid: u32, pids: &[u32]) -> String {
    let pids: HashSet<u32> = pids.iter().copied().collect();
    path_pattern(
        path,
        &PathContext {
            tgid,
            tid: tgid,
            pids: &pids,
        },
    )
}

#[test]
fn proc_pid_is_self_or_any() {
    assert_eq!(
        pattern_of("/proc/4242/status", 4242, &[]),
        "/proc/self/status"
    );
    assert_eq!(pattern_of("/proc/4243/status", 4242, &[]), "/proc/*/status");
    assert_eq!(
        pattern_of("/proc/4242/task/4250/stat", 4242, &[]),
        "/proc/self/task/*/stat"
    );
    assert_eq!(pattern("/proc/cpuinfo"), "/proc/cpuinfo");
    assert_eq!(
        pattern("/proc/sys/kernel/pid_max"),
        "/proc/sys/kernel/pid_max"
    );
    // `monitor run` sees the pid, never `self`: the rule says `/proc/*`.
    let rules = proc_self_as_run_sees_it(vec![
        Counted {
            rule: "/proc/self/status".into(),
            count: 2,
        },
        Counted {
            rule: "/proc/*/status".into(),
            count: 1,
        },
    ]);
    assert_eq!(
        rules,
        [Counted {
            rule: "/proc/*/status".into(),
            count: 3
        }]
    );
}

#[test]
fn versioned_libraries() {
    assert_eq!(
        pattern("/usr/local/cuda/lib64/libcudart.so.12.4.1"),
        "/usr/local/cuda/lib64/libcudart.so.*"
    );
    assert_eq!(
        pattern("/usr/lib/x86_64-linux-gnu/libc.so.6"),
        "/usr/lib/x86_64-linux-gnu/libc.so.*"
    );
    // Not versions: kept.
    assert_eq!(
        pattern("/usr/lib/python3.11/lib-dynload/_bz2.cpython-311-x86_64-linux-gnu.so"),
        "/usr/lib/python3.11/lib-dynload/_bz2.cpython-311-x86_64-linux-gnu.so"
    );
    assert_eq!(
        pattern("/usr/lib/libfoo.so.conf"),
        "/usr/lib/libfoo.so.conf"
    );
}

#[test]
fn per_run_names() {
    // Python's tempfile: mkdtemp/mkstemp names, and its probe file in the temp directory.
    assert_eq!(pattern("/tmp/tmpab3x9q_1/model.bin"), "/tmp/tmp*/model.bin");
    assert_eq!(pattern("/tmp/tmpqwertyui"), "/tmp/tmp*");
    assert_eq!(pattern("/tmp/tmpab3x9q_1.json"), "/tmp/tmp*.json");
    assert_eq!(pattern("/tmp/tmpqwertyui-x"), "/tmp/tmp*-x");
    assert_eq!(pattern("/srv/tmp_model_cache"), "/srv/tmp_model_cache");
    assert_eq!(
        pattern("/usr/lib/tmpfiles.d/x.conf"),
        "/usr/lib/tmpfiles.d/x.conf"
    );
    assert_eq!(pattern("/tmp/0k7e_5uo"), "/tmp/*");
    assert_eq!(pattern("/tmp/abcdefgh"), "/tmp/*");
    assert_eq!(pattern("/var/tmp/tmp.AbCdEfGhIj"), "/var/tmp/tmp.*");
    // Numbers, pids, uuids, hex and random suffixes.
    assert_eq!(pattern("/tmp/scratch-12345"), "/tmp/scratch-*");
    assert_eq!(
        pattern_of("/run/app/worker-57.sock", 1, &[57]),
        "/run/app/worker-*.sock"
    );
    assert_eq!(
        pattern_of("/run/app/worker-58.sock", 1, &[57]),
        "/run/app/worker-58.sock"
    );
    assert_eq!(pattern("/dev/shm/nccl-0f3c2a9e1b7d"), "/dev/shm/nccl-*");
    assert_eq!(
        pattern("/var/lib/app/run-123e4567-e89b-12d3-a456-426614174000.json"),
        "/var/lib/app/run-*.json"
    );
    assert_eq!(pattern("/srv/cache/x7k2m9q4/data"), "/srv/cache/*/data");
    assert_eq!(pattern("/dev/shm/torch_AbCdEfGhIjK"), "/dev/shm/torch_*");
    // Stable names stay, and versions after a dot.
    for path in [
        "/usr/lib/python3.11/encodings/__pycache__/utf_8.cpython-311.pyc",
        "/models/llama-3-8b/model-00001-of-00004.safetensors",
        "/etc/ssl/certs/ca-certificates.crt",
        "/usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache",
        "/opt/sha256sum/cuda12",
    ] {
        let expected = if path.contains("00001") {
            "/models/llama-3-8b/model-*-of-*.safetensors".to_owned()
        } else {
            path.to_owned()
        };
        assert_eq!(pattern(path), expected, "{path}");
    }
    // Glob characters in names are escaped.
    assert_eq!(pattern("/srv/a*b/[x]?"), "/srv/a\\*b/\\[x\\]\\?");
    // Abstract unix socket names.
    assert_eq!(pattern("@/tmp/dbus-x7k2m9q4"), "@/tmp/dbus-*");
    assert_eq!(pattern("@nccl-a3f9c2e1d4"), "@nccl-*");
}

#[test]
fn every_generalised_pattern_matches_its_path() {
    for path in [
        "/tmp/tmpab3x9q_1/model.bin",
        "/tmp/scratch-12345",
        "/usr/local/cuda/lib64/libcudart.so.12.4.1",
        "/var/lib/app/run-123e4567-e89b-12d3-a456-426614174000.json",
        "/srv/a*b/[x]?",
        "/dev/shm/nccl-0f3c2a9e1b7d",
    ] {
        let glob = Glob::new(&pattern(path)).unwrap();
        assert!(glob.matches(path), "{path}");
    }
}

fn counts(paths: &[(&str, u64)]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (path, count) in paths {
        *out.entry(pattern(path)).or_default() += count;
    }
    out
}

fn rules(counted: &[Counted]) -> Vec<(&str, u64)> {
    counted.iter().map(|c| (c.rule.as_str(), c.count)).collect()
}

#[test]
fn many_entries_become_the_directory() {
    let paths = counts(&[
        ("/models/llama/config.json", 1),
        ("/models/llama/tokenizer.json", 1),
        ("/models/llama/model-00001-of-00002.safetensors", 10),
        ("/models/llama/model-00002-of-00002.safetensors", 10),
        ("/models/llama/generation_config.json", 1),
        ("/models/llama", 2),
        ("/etc/hosts", 3),
        ("/etc/resolv.conf", 1),
        ("/etc/ld.so.cache", 5),
        ("/etc/nsswitch.conf", 1),
        ("/etc/passwd", 1),
    ]);
    let out = file_rules(&paths);
    // `model-*-of-*` folds two files into one entry: 4 entries left, the directory itself
    // counts with them.
    assert_eq!(
        rules(&out),
        [
            ("/etc/hosts", 3),
            ("/etc/ld.so.cache", 5),
            ("/etc/nsswitch.conf", 1),
            ("/etc/passwd", 1),
            ("/etc/resolv.conf", 1),
            ("/models/llama/**", 25),
        ]
    );
    // A glob in `/etc` would be too wide; `/` never.
    assert!(out.iter().all(|r| r.rule != "/etc/**"));
}

#[test]
fn top_directories_and_homes_never_become_globs() {
    let paths = counts(&[
        ("/a", 1),
        ("/b", 1),
        ("/c", 1),
        ("/d", 1),
        ("/tmp/a", 1),
        ("/tmp/b", 1),
        ("/tmp/c", 1),
        ("/tmp/d", 1),
        ("/home/alice/.bashrc", 1),
        ("/home/alice/.profile", 1),
        ("/home/alice/notes", 1),
        ("/home/alice/.cache/x", 1),
        ("/home/alice/.cache/y", 1),
        ("/home/alice/.cache/z", 1),
        ("/home/alice/.cache/w", 1),
    ]);
    let out = file_rules(&paths);
    assert_eq!(
        rules(&out),
        [
            ("/a", 1),
            ("/b", 1),
            ("/c", 1),
            ("/d", 1),
            ("/home/alice/.bashrc", 1),
            ("/home/alice/.cache/**", 4),
            ("/home/alice/.profile", 1),
            ("/home/alice/notes", 1),
            ("/tmp/a", 1),
            ("/tmp/b", 1),
            ("/tmp/c", 1),
            ("/tmp/d", 1),
        ]
    );
}

#[test]
fn covered_rules_fold_into_the_wider_one() {
    let paths = counts(&[
        ("/tmp/0k7e_5uo", 1),
        ("/tmp/tmpab3x9q_1", 1),
        ("/tmp/tmpab3x9q_1/tmpzz9x8w7v", 2),
        ("/tmp/tmp12345678", 1),
    ]);
    assert_eq!(
        rules(&file_rules(&paths)),
        [("/tmp/*", 3), ("/tmp/tmp*/tmp*", 2)]
    );
    assert!(covers("/a/**", "/a/b/**"));
    assert!(covers("/a/**", "/a/*/c"));
    assert!(covers("/a/*/**", "/a/b/**"));
    assert!(!covers("/a/*", "/a/**"));
    assert!(!covers("/a/b/**", "/a/**"));
    assert!(!covers("/a/*", "/a/b/c"));
    assert!(covers("/proc/*/status", "/proc/self/status"));
}

fn sock(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn addr_counts(addrs: &[(&str, u64)]) -> BTreeMap<SocketAddr, u64> {
    addrs.iter().map(|(a, c)| (sock(a), *c)).collect()
}

#[test]
fn listen_rules_name_ports_not_ephemeral_ones() {
    let out = listen_rules(
        &addr_counts(&[
            ("0.0.0.0:8000", 1),
            ("[::]:8000", 1),
            ("127.0.0.1:40985", 1),
            ("127.0.0.1:41000", 1),
            ("127.0.0.1:0", 1),
            ("[::1]:9000", 2),
        ]),
        EPHEMERAL,
        &BTreeSet::new(),
    );
    assert_eq!(
        rules(&out),
        [
            ("*:8000", 2),
            ("127.0.0.1:32768-60999", 2),
            ("[::1]:9000", 2)
        ]
    );
    for rule in &out {
        AddrRule::parse(&rule.rule).unwrap();
    }
    // A port in the ephemeral range that the server asked for by name is its own port.
    let out = listen_rules(
        &addr_counts(&[("127.0.0.1:40985", 1), ("[::1]:41000", 1)]),
        EPHEMERAL,
        &BTreeSet::from([40985]),
    );
    assert_eq!(
        rules(&out),
        [("127.0.0.1:40985", 1), ("[::1]:32768-60999", 1)]
    );
}

#[test]
fn connect_rules_group_loopback_and_networks() {
    let out = connect_rules(
        &addr_counts(&[
            ("127.0.0.1:8001", 3),
            ("127.0.0.2:8001", 1),
            ("[::1]:6379", 1),
            ("10.0.0.5:443", 2),
            ("10.1.2.1:6379", 1),
            ("10.1.2.2:6379", 1),
            ("10.1.2.3:6379", 1),
            ("10.1.2.4:6379", 1),
            ("10.1.2.4:40000", 1),
            ("10.9.9.1:6379", 1),
            ("10.9.9.2:6379", 1),
            ("10.9.9.3:6379", 1),
            ("192.168.1.1:53", 4),
            ("[2001:db8::1]:443", 1),
        ]),
        EPHEMERAL,
    );
    assert_eq!(
        rules(&out),
        [
            ("10.0.0.5:443", 2),
            ("10.1.2.0/24", 5),
            ("10.9.9.1:6379", 1),
            ("10.9.9.2:6379", 1),
            ("10.9.9.3:6379", 1),
            ("127.0.0.0/8:8001", 4),
            ("192.168.1.1:53", 4),
            ("[2001:db8::1]:443", 1),
            ("[::1]:6379", 1),
        ]
    );
    // Loopback on ephemeral ports: no port at all, and it covers the rest of loopback.
    let out = connect_rules(
        &addr_counts(&[
            ("127.0.0.1:45000", 1),
            ("127.0.0.1:8001", 1),
            ("[::1]:45000", 1),
        ]),
        EPHEMERAL,
    );
    assert_eq!(rules(&out), [("127.0.0.0/8", 2), ("::1", 1)]);
    for rule in &out {
        AddrRule::parse(&rule.rule).unwrap();
    }
}

#[test]
fn durations() {
    assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
    assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
    assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
    assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
    for bad in ["", "10", "5x", "m", "0s", "1.5h", "-1m"] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
    assert_eq!(human(Duration::from_secs(3725)), "1h 2m 5s");
    assert_eq!(human(Duration::from_secs(65)), "1m 5s");
}

#[test]
fn select_arguments() {
    let selector =
        parse_select("exe=/usr/bin/python3*,args=*vllm*,cgroup=/system.slice/*").unwrap();
    assert_eq!(selector.executables, ["/usr/bin/python3*"]);
    assert_eq!(selector.args, ["*vllm*"]);
    assert_eq!(selector.cgroups, ["/system.slice/*"]);
    // A key twice is ORed; a comma that starts no key belongs to the glob.
    let selector =
        parse_select("exe=/usr/bin/python3*,exe=/opt/*/bin/python3*,args=*--a,b*").unwrap();
    assert_eq!(selector.executables.len(), 2);
    assert_eq!(selector.args, ["*--a,b*"]);
    assert!(parse_select("args=*serve*").is_ok());
    for bad in [
        "python3",
        "exe=python3",
        "exe=",
        "user=root",
        "cgroup=system.slice",
        "exe=/usr/bin/[",
    ] {
        assert!(parse_select(bad).is_err(), "{bad}");
    }
}

#[test]
fn distinctive_arguments() {
    let args = |list: &[&str]| -> Vec<String> { list.iter().map(|a| (*a).to_owned()).collect() };
    assert_eq!(
        distinctive_args(&args(&[
            "python3",
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            "/models/x"
        ])),
        Some("*-m vllm.entrypoints.openai.api_server*".into())
    );
    assert_eq!(
        distinctive_args(&args(&[
            "/usr/bin/python3",
            "-B",
            "/srv/app/fake_server_learn.py",
            "8000"
        ])),
        Some("*fake_server_learn.py*".into())
    );
    assert_eq!(
        distinctive_args(&args(&["python3", "-W", "ignore", "serve.py"])),
        Some("*serve.py*".into())
    );
    assert_eq!(
        distinctive_args(&args(&["ollama", "serve"])),
        Some("*serve*".into())
    );
    assert_eq!(distinctive_args(&args(&["server", "8000", "--x"])), None);
    assert_eq!(distinctive_args(&args(&["server"])), None);
    // The glob matches the argv it came from.
    let argv = args(&[
        "/usr/bin/python3",
        "-B",
        "/srv/app/fake_server_learn.py",
        "8000",
    ]);
    let glob = crate::config::profile::ArgsGlob::new(&distinctive_args(&argv).unwrap()).unwrap();
    assert!(glob.matches(&join_args(&argv)));
}

#[test]
fn names() {
    assert_eq!(name_from(Path::new("/etc/monitor/vllm.yaml")), "vllm");
    assert_eq!(name_from(Path::new("my server!.yaml")), "my-server-");
    assert_eq!(name_from(Path::new("_x.yaml")), "x");
    assert_eq!(name_from(Path::new("/")), "learned");
    assert!(check_name("vllm-2.1_a").is_ok());
    assert!(check_name("-x").is_err());
    assert!(check_name(&"x".repeat(65)).is_err());
}

#[test]
fn yaml_quoting_round_trips() {
    for text in ["/a\"b", "/a\\*b", "/tab\there", "plain"] {
        let yaml = format!("name: x\nselector: {{args: [{}]}}\n", quote(text));
        let profile = parse_profiles(Path::new("q.yaml"), &yaml)
            .unwrap()
            .remove(0);
        assert_eq!(profile.selector.args[0].as_str(), text);
    }
}

/// A process table, a learner and (optionally) the rules engine fed the same events, as
/// the pipeline feeds them.
struct World {
    table: ProcessTable,
    learning: Learning,
    engine: Option<Engine>,
    clock: BootClock,
    now: u64,
    watch: Vec<u32>,
    alerts: Vec<Alert>,
}

const PYTHON: &str = "/usr/bin/python3.11";
const ROOT: &str = "/srv/fake";

fn start(n: u64) -> u64 {
    n * 1_000_000_000 + 123_457
}

impl World {
    fn new(selector: Option<&str>, pids: Vec<u32>) -> World {
        let selector = selector.map(|s| compile(&parse_select(s).unwrap()).unwrap());
        World {
            table: ProcessTable::new(),
            learning: Learning::new(selector, pids),
            engine: None,
            clock: BootClock::new(),
            now: 100_000_000_000,
            watch: Vec::new(),
            alerts: Vec::new(),
        }
    }

    fn header(&mut self, kind: EventKind, tgid: u32, start_time_ns: u64) -> Header {
        self.now += 1000;
        Header {
            kind,
            time_ns: self.now,
            tgid,
            pid: tgid,
            start_time_ns,
            watched: true,
        }
    }

    fn feed(&mut self, event: Event) {
        self.watch
            .extend(self.learning.observe(&event, &self.table));
        if let Some(engine) = &mut self.engine {
            let verdict = engine.handle(&event, &self.table, &self.clock);
            self.alerts.extend(verdict.alerts);
        }
    }

    fn exec(&mut self, tgid: u32, start: u64, exe: &str, args: &[&str]) {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        self.table.on_exec(ExecInfo {
            tgid,
            start_time_ns: start,
            exe: exe.to_owned(),
            args: args.clone(),
            uid: 0,
            cgroup_id: 7,
            cgroup_path: Some("/system.slice/fake.service".into()),
            ..ExecInfo::default()
        });
        let header = self.header(EventKind::Exec, tgid, start);
        self.feed(Event::Exec(Exec {
            header,
            ppid: 0,
            parent_start_time_ns: 0,
            uid: 0,
            gid: 0,
            cgroup_id: 7,
            path: exe.to_owned(),
            path_truncated: false,
            path_from_filename: false,
            args_count: args.len(),
            args,
            args_truncated: false,
            fileless: false,
            killed: false,
            would_kill: false,
            raw: Default::default(),
        }));
    }

    fn fork(&mut self, child: u32, child_start: u64, parent: u32, parent_start: u64) {
        self.table.on_fork(child, child_start, parent, parent_start);
        let header = self.header(EventKind::Fork, child, child_start);
        self.feed(Event::Fork(Fork {
            header,
            parent_tgid: parent,
            parent_start_time_ns: parent_start,
        }));
    }

    fn exit(&mut self, tgid: u32, start: u64) {
        let header = self.header(EventKind::Exit, tgid, start);
        self.table
            .on_exit(tgid, start, header.time_ns, Some(0), None);
        self.feed(Event::Exit(Exit {
            header,
            code: Some(0),
            signal: None,
            core_dumped: false,
        }));
    }

    fn file(&mut self, tgid: u32, start: u64, op: FileOp, path: &str, access: Access, result: i64) {
        let header = self.header(EventKind::File, tgid, start);
        let (path, target) = match path.split_once(" -> ") {
            Some((from, to)) => (from.to_owned(), Some(to.to_owned())),
            None => (path.to_owned(), None),
        };
        self.feed(Event::File(File {
            header,
            op,
            path,
            path_truncated: false,
            target,
            access,
            result,
            protected: false,
            known: None,
            raw: Default::default(),
            guard: None,
            unverified: false,
        }));
    }

    fn read(&mut self, tgid: u32, start: u64, path: &str) {
        self.file(tgid, start, FileOp::Open, path, READ, 3);
    }

    fn net(&mut self, tgid: u32, start: u64, op: NetOp, transport: Transport, addr: &str) {
        let header = self.header(EventKind::Net, tgid, start);
        let (peer, local, unix_path) = match (transport, op) {
            (Transport::Unix, _) => (None, None, Some(addr.to_owned())),
            (_, NetOp::Bind | NetOp::Listen) => (None, Some(sock(addr)), None),
            _ => (Some(sock(addr)), None, None),
        };
        self.feed(Event::Net(Net {
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
        }));
    }

    fn device(&mut self, tgid: u32, start: u64, class: DeviceClass, result: i64) {
        let header = self.header(EventKind::Device, tgid, start);
        self.feed(Event::Device(Device {
            header,
            path: "/dev/nvidia0".into(),
            class,
            major: 195,
            minor: 0,
            result,
            decision: Decision::Observed,
        }));
    }
}

const READ: Access = Access {
    read: true,
    write: false,
    create: false,
    truncate: false,
};
const READ_WRITE_CREATE: Access = Access {
    read: true,
    write: true,
    create: true,
    truncate: false,
};
const WRITE_TRUNCATE: Access = Access {
    read: false,
    write: true,
    create: true,
    truncate: true,
};

/// The fake server: python started by a shell (pid 10), which loads a model, writes temp
/// files, listens, connects, and runs a helper. Its pids and random names differ per run.
fn serve(world: &mut World, run: u64, deviation: Option<&str>) {
    let shell = 10 + run as u32 * 1000;
    let server = shell + 1;
    let helper = shell + 2;
    let (s0, s1, s2) = (start(run * 100), start(run * 100 + 1), start(run * 100 + 2));
    world.exec(shell, s0, "/usr/bin/bash", &["bash", "-c", "serve"]);
    world.fork(server, s1, shell, s0);
    world.exec(
        server,
        s1,
        PYTHON,
        &[
            "/usr/bin/python3",
            "-B",
            "/srv/fake/app/fake_server_learn.py",
        ],
    );
    world.read(server, s1, "/etc/ld.so.cache");
    world.read(server, s1, "/usr/lib/x86_64-linux-gnu/libc.so.6");
    world.read(server, s1, "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13");
    world.read(server, s1, "/srv/fake/app/fake_server_learn.py");
    world.read(server, s1, &format!("/proc/{server}/status"));
    // A probe is not a rule.
    world.file(server, s1, FileOp::Open, "/usr/pyvenv.cfg", READ, -2);
    for name in [
        "config.json",
        "tokenizer.json",
        "a.safetensors",
        "b.safetensors",
    ] {
        world.read(server, s1, &format!("{ROOT}/models/{name}"));
    }
    let random = ["x7k2m9q4", "ab3x9q_1", "zz9x8w7v", "q1w2e3r4"][run as usize % 4];
    let temp_dir = format!("/tmp/tmp{random}");
    world.file(
        server,
        s1,
        FileOp::Open,
        &format!("/tmp/{random}"),
        READ_WRITE_CREATE,
        4,
    );
    world.file(
        server,
        s1,
        FileOp::Unlink,
        &format!("/tmp/{random}"),
        READ,
        0,
    );
    world.file(
        server,
        s1,
        FileOp::Open,
        &format!("{temp_dir}/tmp{random}"),
        READ_WRITE_CREATE,
        4,
    );
    world.file(
        server,
        s1,
        FileOp::Open,
        &format!("{ROOT}/work/scratch-{server}"),
        WRITE_TRUNCATE,
        5,
    );
    world.file(
        server,
        s1,
        FileOp::Rename,
        &format!("{ROOT}/work/scratch-{server} -> {ROOT}/work/done-{server}"),
        READ,
        0,
    );
    world.file(server, s1, FileOp::Open, "/dev/null", READ_WRITE_CREATE, 6);
    world.net(server, s1, NetOp::Bind, Transport::Tcp, "127.0.0.1:0");
    world.net(server, s1, NetOp::Listen, Transport::Tcp, "127.0.0.1:8000");
    let ephemeral = 40000 + run as u16;
    world.net(
        server,
        s1,
        NetOp::Listen,
        Transport::Tcp,
        &format!("127.0.0.1:{ephemeral}"),
    );
    world.net(server, s1, NetOp::Connect, Transport::Tcp, "127.0.0.1:9000");
    world.net(server, s1, NetOp::Send, Transport::Udp, "10.0.0.2:53");
    world.net(
        server,
        s1,
        NetOp::Connect,
        Transport::Unix,
        "@nccl-a3f9c2e1d4",
    );
    world.net(server, s1, NetOp::Accept, Transport::Tcp, "127.0.0.1:51000");
    world.device(server, s1, DeviceClass::Nvidia, 7);
    world.device(server, s1, DeviceClass::NvidiaUvm, -2);
    // The helper: fork, exec, its own reads.
    world.fork(helper, s2, server, s1);
    world.exec(helper, s2, "/usr/bin/uname", &["uname"]);
    world.read(helper, s2, "/etc/ld.so.cache");
    world.read(helper, s2, "/usr/lib/x86_64-linux-gnu/libc.so.6");
    world.exit(helper, s2);
    match deviation {
        Some("shell") => {
            let sh = shell + 3;
            let s3 = start(run * 100 + 3);
            world.fork(sh, s3, server, s1);
            world.exec(sh, s3, "/usr/bin/dash", &["sh", "-c", "true"]);
            world.exit(sh, s3);
        }
        Some("connect") => world.net(server, s1, NetOp::Connect, Transport::Tcp, "127.0.0.1:9001"),
        Some("write") => world.file(
            server,
            s1,
            FileOp::Open,
            &format!("{ROOT}/models/planted.bin"),
            WRITE_TRUNCATE,
            8,
        ),
        Some(other) => panic!("unknown deviation {other}"),
        None => {}
    }
    world.exit(server, s1);
    world.exit(shell, s0);
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("monitor-learn-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn session() -> Session {
    let started = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_028_800);
    Session {
        started,
        ended: started + Duration::from_secs(125),
        requested: Some(Duration::from_secs(600)),
        command: "monitor learn --select 'exe=/usr/bin/python3*,args=*fake_server_learn*' --out fake.yaml".into(),
        lost: 3,
        merged_from: None,
    }
}

/// Learns one run of the fake server and writes the profile.
fn learn_once(dir: &Path) -> (PathBuf, String, Learning) {
    let mut world = World::new(
        Some("exe=/usr/bin/python3*,args=*fake_server_learn*"),
        vec![],
    );
    // Someone else's python does things too: not learned.
    world.exec(500, start(5), PYTHON, &["python3", "other.py"]);
    world.read(500, start(5), "/etc/shadow");
    serve(&mut world, 1, None);
    assert_eq!(world.watch, [1011], "the selected server is watched");
    let selector = parse_select("exe=/usr/bin/python3*,args=*fake_server_learn*").unwrap();
    let draft = world.learning.draft("fakeserve", selector, EPHEMERAL);
    let text = render(&header(&session(), &world.learning), &draft);
    let path = dir.join("fakeserve.yaml");
    std::fs::write(&path, &text).unwrap();
    (path, text, world.learning)
}

fn rule_lines<'t>(text: &'t str, key: &str) -> Vec<&'t str> {
    // The items below `key:` (`    key:` then `      - "..."   # ...`).
    let mut lines = text.lines().skip_while(|l| l.trim() != format!("{key}:"));
    let Some(first) = lines.next() else {
        return Vec::new();
    };
    let indent = first.len() - first.trim_start().len();
    lines
        .take_while(|l| l.len() - l.trim_start().len() > indent && l.trim_start().starts_with('-'))
        .map(|l| l.trim())
        .collect()
}

#[test]
fn learned_profile_passes_check_and_reads_well() {
    let dir = scratch_dir("check");
    let (path, text, learning) = learn_once(&dir);
    let report = crate::config::check(std::slice::from_ref(&path));
    assert!(
        report.diagnostics.is_empty(),
        "{:?}\n{text}",
        report.diagnostics
    );
    assert_eq!(report.profiles, 1);
    assert_eq!(learning.selected.len(), 1);
    assert_eq!(learning.descendants, 1);
    assert_eq!(learning.seen.probes, 1);

    // The header says when, how long, how, and how much.
    assert!(text.starts_with("# Learned by `monitor learn` from 2025-11-25T00:00:00Z to 2025-11-25T00:02:05Z (2m 5s; ended early by Ctrl-C, of --duration 10m 0s).\n"), "{text}");
    assert!(text.contains(
        "# Command: monitor learn --select 'exe=/usr/bin/python3*,args=*fake_server_learn*'"
    ));
    assert!(
        text.contains("# Observed 32 events of 2 processes: 1 selected, 1 descendant."),
        "{text}"
    );
    assert!(text.contains("#   selected: pid 1011 /usr/bin/python3.11"));
    assert!(text.contains("# WARNING: 3 events were lost"));

    // Each rule with its count; what the issue asks for, rule by rule.
    assert_eq!(
        rule_lines(&text, "exec"),
        [r#"- "/usr/bin/uname"   # 1 observation"#]
    );
    let read = rule_lines(&text, "read");
    for expected in [
        "\"/srv/fake/models/**\"",
        "\"/usr/lib/x86_64-linux-gnu/libc.so.*\"",
        "\"/usr/lib/x86_64-linux-gnu/libz.so.*\"",
        "\"/proc/*/status\"",
        "\"/tmp/*\"",
        "\"/tmp/tmp*/tmp*\"",
        "\"/etc/ld.so.cache\"",
        "\"/dev/null\"",
    ] {
        assert!(
            read.iter().any(|l| l.contains(expected)),
            "{expected} in {read:#?}"
        );
    }
    assert!(
        read.iter().any(|l| l.starts_with("- \"/etc/ld.so.cache\" ")
            && l.ends_with("   # 2 observations")),
        "{read:#?}"
    );
    assert!(!text.contains("pyvenv"), "probes are not rules");
    assert!(!text.contains("shadow"), "other processes are not learned");
    let write = rule_lines(&text, "write");
    assert_eq!(
        write,
        [
            r#"- "/dev/null"                  # 1 observation"#,
            r#"- "/srv/fake/work/done-*"      # 1 observation"#,
            r#"- "/srv/fake/work/scratch-*"   # 2 observations"#,
            r#"- "/tmp/*"                     # 2 observations"#,
            r#"- "/tmp/tmp*/tmp*"             # 1 observation"#,
        ]
    );
    assert_eq!(
        rule_lines(&text, "connect"),
        [
            r#"- "10.0.0.2:53"        # 1 observation"#,
            r#"- "127.0.0.0/8:9000"   # 1 observation"#,
        ]
    );
    assert_eq!(
        rule_lines(&text, "listen"),
        [
            r#"- "127.0.0.1:32768-60999"   # 1 observation"#,
            r#"- "127.0.0.1:8000"          # 1 observation"#,
        ]
    );
    assert_eq!(
        rule_lines(&text, "unix"),
        [r#"- "@nccl-*"   # 1 observation"#]
    );
    assert_eq!(
        rule_lines(&text, "devices"),
        [r#"- "nvidia"   # 1 observation"#]
    );
    assert!(text.contains("selector:\n  executables:\n    - \"/usr/bin/python3*\"\n  args:\n    - \"*fake_server_learn*\"\nmode: alert\n"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Loads a config whose profiles are the learned file.
fn engine_for(dir: &Path, profile: &Path) -> Engine {
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!("profiles: [{}]\n", quote(&profile.to_string_lossy())),
    )
    .unwrap();
    let config = crate::config::load_config(&config).unwrap();
    Engine::new(Arc::new(config))
}

fn alerts_of(dir: &Path, profile: &Path, run: u64, deviation: Option<&str>) -> Vec<String> {
    let mut world = World::new(None, vec![]);
    world.engine = Some(engine_for(dir, profile));
    serve(&mut world, run, deviation);
    world.alerts.iter().map(|a| a.rule.clone()).collect()
}

#[test]
fn learned_profile_allows_the_next_run_and_nothing_else() {
    let dir = scratch_dir("round-trip");
    let (path, text, _) = learn_once(&dir);
    // Other pids, other temp names, another ephemeral port: nothing to report.
    for run in 2..=4 {
        assert_eq!(
            alerts_of(&dir, &path, run, None),
            Vec::<String>::new(),
            "{text}"
        );
    }
    for (deviation, rule) in [
        ("shell", "exec-not-allowed"),
        ("connect", "connect-not-allowed"),
        ("write", "file-write-not-allowed"),
    ] {
        assert_eq!(
            alerts_of(&dir, &path, 2, Some(deviation)),
            [rule],
            "{deviation}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pid_only_derives_the_selector_and_follows_children() {
    let mut world = World::new(None, vec![11]);
    let (s0, s1) = (start(0), start(1));
    world.exec(10, s0, "/usr/bin/bash", &["bash"]);
    world.fork(11, s1, 10, s0);
    world.exec(
        11,
        s1,
        PYTHON,
        &[
            "/usr/bin/python3",
            "-B",
            "/srv/app/fake_server_learn.py",
            "8000",
        ],
    );
    // A child that already runs when learning starts.
    world.fork(12, start(2), 11, s1);
    let roots = world.learning.seed(&world.table);
    assert_eq!(roots, [11]);
    assert_eq!(world.learning.descendants, 1);
    let derived = world.learning.derived_selector().unwrap().clone();
    assert_eq!(derived.executables, ["/usr/bin/python3.11"]);
    assert_eq!(derived.args, ["*fake_server_learn.py*"]);
    world.read(12, start(2), "/etc/hosts");
    // A grandchild whose fork the kernel did not inherit: watch it.
    world.table.on_fork(13, start(3), 12, start(2));
    let mut header = world.header(EventKind::Fork, 13, start(3));
    header.watched = false;
    world.feed(Event::Fork(Fork {
        header,
        parent_tgid: 12,
        parent_start_time_ns: start(2),
    }));
    assert_eq!(world.watch, [13]);
    // A re-exec into the selected program is not an exec rule; another program is.
    world.exec(
        12,
        start(2),
        PYTHON,
        &["python3", "/srv/app/fake_server_learn.py"],
    );
    world.exec(13, start(3), "/usr/bin/nvidia-smi", &["nvidia-smi"]);
    // Another process matching the derived selector is not learned (only --pid is).
    world.exec(
        20,
        start(20),
        PYTHON,
        &["python3", "/srv/app/fake_server_learn.py"],
    );
    world.read(20, start(20), "/etc/shadow");
    let draft = world.learning.draft("x", derived, EPHEMERAL);
    let exec: Vec<&str> = draft.exec.iter().map(|i| i.rule.as_str()).collect();
    assert_eq!(exec, ["/usr/bin/nvidia-smi"]);
    let read: Vec<&str> = draft.read.iter().map(|i| i.rule.as_str()).collect();
    assert_eq!(read, ["/etc/hosts"]);
}

#[test]
fn merge_keeps_the_existing_profile_and_adds_what_is_new() {
    let dir = scratch_dir("merge");
    let existing_text = r#"name: fakeserve
description: curated
selector:
  executables: ["/usr/bin/python3*"]
  args: ["*fake_server*"]
mode: enforce
allow:
  exec: ["/usr/bin/uname"]
  files:
    read: ["/usr/**", "/etc/ld.so.cache"]
    write: ["/dev/null"]
  network:
    connect: ["127.0.0.0/8"]
    listen: ["*:8000"]
  devices: [nvidia-uvm]
"#;
    let existing = parse_profiles(Path::new("existing.yaml"), existing_text)
        .unwrap()
        .remove(0);
    let (_, _, learning) = learn_once(&dir);
    let selector = parse_select("exe=/usr/bin/python3*,args=*fake_server_learn*").unwrap();
    let draft = merge(
        learning.draft("fakeserve", selector, EPHEMERAL),
        &existing,
        None,
    );
    assert_eq!(draft.name, "fakeserve");
    assert_eq!(draft.description.as_deref(), Some("curated"));
    assert_eq!(draft.selector.args, ["*fake_server*"]);
    assert_eq!(draft.mode, crate::config::profile::Mode::Enforce);
    // The existing rules first, with what they covered; unix stays unchecked.
    let summary = |items: &[Item]| -> Vec<(String, u64, bool)> {
        items
            .iter()
            .map(|i| (i.rule.clone(), i.count, i.kept))
            .collect()
    };
    assert_eq!(
        summary(&draft.exec),
        [("/usr/bin/uname".to_owned(), 1, true)]
    );
    let read = summary(&draft.read);
    assert_eq!(read[0], ("/usr/**".to_owned(), 3, true));
    assert_eq!(read[1], ("/etc/ld.so.cache".to_owned(), 2, true));
    assert!(read.iter().any(|r| r.0 == "/srv/fake/models/**" && !r.2));
    assert!(!read.iter().any(|r| r.0.starts_with("/usr/lib")));
    assert_eq!(
        summary(&draft.connect),
        [
            ("127.0.0.0/8".to_owned(), 1, true),
            ("10.0.0.2:53".to_owned(), 1, false)
        ]
    );
    assert_eq!(summary(&draft.listen)[0], ("*:8000".to_owned(), 1, true));
    assert!(draft.unix.is_none());
    assert_eq!(
        summary(&draft.devices),
        [
            ("nvidia-uvm".to_owned(), 0, true),
            ("nvidia".to_owned(), 1, false)
        ]
    );
    let mut session = session();
    session.merged_from = Some("existing.yaml".into());
    let text = render(&header(&session, &learning), &draft);
    assert!(text.contains("# Extends existing.yaml"));
    assert!(text.contains(r#"- "/usr/**"  "#), "{text}");
    assert!(text.contains("   # kept; 3 observations\n"), "{text}");
    assert!(
        text.contains(r#"- "nvidia-uvm"   # kept; not observed"#),
        "{text}"
    );
    assert!(text.contains("mode: enforce\n"));
    let path = dir.join("merged.yaml");
    std::fs::write(&path, &text).unwrap();
    let report = crate::config::check(std::slice::from_ref(&path));
    assert!(
        report.diagnostics.is_empty(),
        "{:?}\n{text}",
        report.diagnostics
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn picks_the_profile_to_merge() {
    let text = "name: a\nselector: {args: [x]}\n---\nname: b\nselector: {args: [y]}\n";
    let profiles = parse_profiles(Path::new("p.yaml"), text).unwrap();
    assert_eq!(
        render::pick(Path::new("p.yaml"), &profiles, Some("b"))
            .unwrap()
            .name,
        "b"
    );
    assert!(render::pick(Path::new("p.yaml"), &profiles, None)
        .unwrap_err()
        .contains("give --name"));
    assert!(render::pick(Path::new("p.yaml"), &profiles, Some("c"))
        .unwrap_err()
        .contains("failed to find profile \"c\""));
}

#[test]
fn an_empty_learning_still_writes_a_valid_profile() {
    let dir = scratch_dir("empty");
    let learning = Learning::new(None, vec![]);
    let selector = SelectorText {
        executables: vec!["/usr/bin/python3*".into()],
        ..SelectorText::default()
    };
    let draft: Draft = learning.draft("empty", selector, EPHEMERAL);
    let text = render(&header(&session(), &learning), &draft);
    assert!(text.contains("# No process was selected"));
    assert!(text.contains("  exec: []\n"));
    let path = dir.join("empty.yaml");
    std::fs::write(&path, &text).unwrap();
    let report = crate::config::check(std::slice::from_ref(&path));
    assert!(
        report.diagnostics.is_empty(),
        "{:?}\n{text}",
        report.diagnostics
    );
    let profile = parse_profiles(&path, &text).unwrap().remove(0);
    assert_eq!(profile.allow.unix.as_deref().map(<[_]>::len), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn header_of_a_timed_learning_that_ran_its_course() {
    let learning = Learning::new(None, vec![]);
    let mut session = session();
    session.requested = Some(Duration::from_secs(60));
    // The daemon's shutdown comes on top of the duration.
    session.ended = session.started + Duration::from_secs(63);
    session.lost = 0;
    let lines = header(&session, &learning);
    assert_eq!(
        lines[0],
        "Learned by `monitor learn` from 2025-11-25T00:00:00Z to 2025-11-25T00:01:00Z (1m 0s)."
    );
    assert!(!lines.iter().any(|l| l.contains("lost")));
    session.requested = None;
    assert!(header(&session, &learning)[0].ends_with("(1m 3s; until Ctrl-C)."));
}

/// A server that compiles into a cache on its first run and reads the cache on the next, and
/// listens on a port it names inside the ephemeral range.
fn cached_server(world: &mut World, run: u64) {
    let server = 30 + run as u32 * 1000;
    let s0 = start(run * 100 + 30);
    world.exec(
        server,
        s0,
        PYTHON,
        &["/usr/bin/python3", "/srv/fake/app/fake_server_learn.py"],
    );
    let cache = "/srv/fake/cache/kernels/compiled.bin";
    if run == 1 {
        // Looked for, missing, then written.
        world.file(server, s0, FileOp::Open, cache, READ, -2);
        world.file(server, s0, FileOp::Open, cache, WRITE_TRUNCATE, 4);
        world.file(
            server,
            s0,
            FileOp::Rename,
            "/srv/fake/cache/kernels/tmp.bin -> /srv/fake/cache/kernels/index.json",
            READ,
            0,
        );
    } else {
        world.read(server, s0, cache);
        world.read(server, s0, "/srv/fake/cache/kernels/index.json");
    }
    world.net(server, s0, NetOp::Bind, Transport::Tcp, "127.0.0.1:45000");
    world.net(server, s0, NetOp::Listen, Transport::Tcp, "127.0.0.1:45000");
    // Its metrics port, chosen by the kernel: different every run.
    world.net(server, s0, NetOp::Bind, Transport::Tcp, "[::1]:0");
    let side = 50_000 + run as u16;
    world.net(
        server,
        s0,
        NetOp::Listen,
        Transport::Tcp,
        &format!("[::1]:{side}"),
    );
    // A UDP port asked for by name.
    world.net(server, s0, NetOp::Bind, Transport::Udp, "0.0.0.0:47000");
    world.exit(server, s0);
}

#[test]
fn a_second_run_reads_what_the_first_wrote_and_listens_on_its_own_port() {
    let dir = scratch_dir("second-run");
    let mut world = World::new(
        Some("exe=/usr/bin/python3*,args=*fake_server_learn*"),
        vec![],
    );
    cached_server(&mut world, 1);
    let selector = parse_select("exe=/usr/bin/python3*,args=*fake_server_learn*").unwrap();
    let draft = world.learning.draft("cached", selector, EPHEMERAL);
    let read: Vec<&str> = draft.read.iter().map(|i| i.rule.as_str()).collect();
    for path in [
        "/srv/fake/cache/kernels/compiled.bin",
        "/srv/fake/cache/kernels/index.json",
        "/srv/fake/cache/kernels/tmp.bin",
    ] {
        assert!(read.contains(&path), "{path} readable: {read:?}");
    }
    let listen: Vec<&str> = draft.listen.iter().map(|i| i.rule.as_str()).collect();
    assert_eq!(listen, ["*:47000", "127.0.0.1:45000", "[::1]:32768-60999"]);
    let text = render(&header(&session(), &world.learning), &draft);
    let path = dir.join("cached.yaml");
    std::fs::write(&path, &text).unwrap();
    // The next run reads its cache and listens again: nothing to report.
    let mut next = World::new(None, vec![]);
    next.engine = Some(engine_for(&dir, &path));
    cached_server(&mut next, 2);
    let alerts: Vec<&str> = next.alerts.iter().map(|a| a.rule.as_str()).collect();
    assert!(alerts.is_empty(), "{alerts:?}\n{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn io_uring_use_is_learned_and_allowed() {
    let dir = scratch_dir("io-uring");
    let mut world = World::new(
        Some("exe=/usr/bin/python3*,args=*fake_server_learn*"),
        vec![],
    );
    let uring = |world: &mut World, tgid: u32, s: u64| {
        let header = world.header(EventKind::IoUring, tgid, s);
        world.feed(Event::IoUring(IoUring {
            header,
            op: IoUringOp::Create,
            ring: 0xffff_8880_0000_1000,
            sq_thread: false,
        }));
    };
    let s0 = start(40);
    world.exec(40, s0, PYTHON, &["python3", "fake_server_learn.py"]);
    uring(&mut world, 40, s0);
    let selector = parse_select("exe=/usr/bin/python3*,args=*fake_server_learn*").unwrap();
    let draft = world.learning.draft("uring", selector, EPHEMERAL);
    let text = render(&header(&session(), &world.learning), &draft);
    assert!(
        text.contains("\n  io_uring: true   # 1 observation\n"),
        "{text}"
    );
    let path = dir.join("uring.yaml");
    std::fs::write(&path, &text).unwrap();
    assert!(parse_profiles(&path, &text).unwrap()[0].allow.io_uring);
    let mut next = World::new(None, vec![]);
    next.engine = Some(engine_for(&dir, &path));
    next.exec(41, start(41), PYTHON, &["python3", "fake_server_learn.py"]);
    uring(&mut next, 41, start(41));
    assert!(next.alerts.is_empty(), "{:?}", next.alerts);
    // A server that never used io_uring is not allowed it, and a merge keeps what was.
    let (_, plain, learning) = learn_once(&dir);
    assert!(!plain.contains("io_uring"), "{plain}");
    let existing = parse_profiles(
        &path,
        "name: uring\nselector: {args: [\"*x*\"]}\nallow: {io_uring: true, transitions: [other]}\n",
    )
    .unwrap()
    .remove(0);
    let selector = parse_select("exe=/usr/bin/python3*").unwrap();
    let merged = merge(learning.draft("x", selector, EPHEMERAL), &existing, None);
    let text = render(&[], &merged);
    assert!(
        text.contains("\n  io_uring: true   # kept; not observed\n"),
        "{text}"
    );
    assert!(
        text.contains("\n  transitions:\n    - \"other\"\n"),
        "{text}"
    );
    let profile = parse_profiles(&path, &text).unwrap().remove(0);
    assert!(profile.allow.io_uring);
    assert_eq!(profile.allow.transitions, ["other"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_warns_about_a_profile_that_allows_nothing() {
    let dir = scratch_dir("allows-nothing");
    let learning = Learning::new(None, vec![]);
    let selector = SelectorText {
        executables: vec!["/usr/bin/python3*".into()],
        ..SelectorText::default()
    };
    let draft = learning.draft("empty", selector, EPHEMERAL);
    let empty = dir.join("empty.yaml");
    std::fs::write(&empty, render(&[], &draft)).unwrap();
    let report = crate::config::check(std::slice::from_ref(&empty));
    assert!(report.diagnostics.is_empty(), "{:?}", report.diagnostics);
    let warning = format!(
        "warning: {}:1:7: profile \"empty\" allows nothing",
        empty.display()
    );
    assert!(
        report.notes.iter().any(|n| n.starts_with(&warning)),
        "{:?}",
        report.notes
    );
    let (learned, _, _) = learn_once(&dir);
    let report = crate::config::check(std::slice::from_ref(&learned));
    assert!(
        !report.notes.iter().any(|n| n.contains("allows nothing")),
        "{:?}",
        report.notes
    );
    let _ = std::fs::remove_dir_all(&dir);
}
