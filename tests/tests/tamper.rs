//! End-to-end tests of the monitor defending itself, each attack made for real by a separate
//! process: `bpftool link detach` of its cgroup connect4 link (then the same with raw `bpf()`
//! calls), `bpftool map delete` of its POLICY entry, `kill -STOP` / `kill -CONT` around a
//! theft, and an event flood with thefts and a memory access inside. Each asserts the alert
//! (actor, command, object), and where the monitor repairs, that the next attack is caught
//! again: a denied connect is denied again after the self-check re-attached the link or
//! rewrote the map.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{bpftool, marker, model_server, python, run, stdout, Monitor, PYTHON, WAIT, WEIGHTS};
/// The destination the client's profile leaves out (any port: nothing listens there).
const FORBIDDEN: &str = "127.0.0.2";
/// `BPF_CGROUP_INET4_CONNECT`, as the kernel numbers attach types.
const ATTACH_INET4_CONNECT: &str = "10";

/// A scratch site: `models/` (guarded, alert only), `bin/client` (a copy of python3 that the
/// enforce-mode `client` profile governs: connects to 127.0.0.1 only), `bin/model-server` (a
/// copy of cat under the `server` profile, which may read the models).
struct Site {
    root: PathBuf,
}

impl Site {
    fn new(name: &str) -> Site {
        let root = std::env::temp_dir().join(marker(name));
        std::fs::create_dir_all(&root).unwrap();
        let root = std::fs::canonicalize(root).unwrap();
        model_server(&root);
        let site = Site { root };
        std::fs::copy(PYTHON, site.path("bin/client")).unwrap();
        std::fs::write(
            site.path("client.yaml"),
            format!(
                r#"name: client
selector:
  executables: ["{root}/bin/client"]
mode: enforce
allow:
  exec: []
  files:
    read: ["/**"]
    write: ["/**"]
  network:
    connect: ["127.0.0.1"]
"#,
                root = site.root.display()
            ),
        )
        .unwrap();
        std::fs::write(
            site.path("config.yaml"),
            format!(
                r#"builtin_profiles: false
profiles: ["{root}/client.yaml", "{root}/server.yaml"]
guards:
  protected_paths:
    - paths: ["{root}/models/**"]
      read: [server]
      write: []
      enforce: false
dedup_window_secs: 0
"#,
                root = site.root.display()
            ),
        )
        .unwrap();
        site
    }

    fn path(&self, rel: &str) -> String {
        self.root.join(rel).to_string_lossy().into_owned()
    }

    /// `monitor run` with this site's configuration, a self-check every second, and `extra`.
    fn start(&self, extra: &[&str]) -> Monitor {
        let mut args = vec!["--self-check-secs", "1"];
        args.extend_from_slice(extra);
        Monitor::run_config(&self.root.join("config.yaml"), &args)
    }

    /// The governed client, in the monitor's cgroup, connects to the forbidden address after
    /// it had time to come under its profile: `EPERM` (refused by the kernel) or what else
    /// happened (`ECONNREFUSED`: let through, nothing listens).
    fn connect(&self, monitor: &Monitor) -> (u32, String) {
        let child = monitor
            .cgroup
            .command(&self.path("bin/client"))
            .args(["-I", "-S", "-B", "-c", CONNECT, FORBIDDEN])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{output:?}");
        (pid, stdout(&output))
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Connects to port 9 of argv[1] after 0.7 s; prints the errno name.
const CONNECT: &str = r#"
import errno, socket, sys, time
time.sleep(0.7)
s = socket.socket()
try:
    s.connect((sys.argv[1], 9))
    print("connected")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
"#;

/// Reads a file; prints its content.
const READ: &str = r#"
import sys
with open(sys.argv[1], "rb") as f:
    print(f.read().decode())
"#;

/// The id of the monitor's cgroup connect4 link, attached to its test cgroup.
fn connect4_link(monitor: &Monitor) -> String {
    monitor.cgroup_link(ATTACH_INET4_CONNECT)
}

/// The id of the monitor's map `name`.
fn map_id(monitor: &Monitor, name: &str) -> String {
    for info in monitor.fdinfos("map_id") {
        let id = info["map_id"].clone();
        let (_, output) = bpftool(&["map", "show", "id", &id, "-j"]);
        let shown: Value = serde_json::from_slice(&output.stdout).unwrap();
        if shown["name"] == name {
            return id;
        }
    }
    panic!("the monitor holds no map {name}");
}

fn alert(monitor: &Monitor, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    monitor.wait_for(what, WAIT, move |v| {
        v["event.name"] == "monitor.alert" && pred(v)
    })
}

/// A forbidden connect is refused, and reported as such.
fn assert_denied(site: &Site, monitor: &Monitor, when: &str) {
    let (pid, result) = site.connect(monitor);
    assert_eq!(result, "EPERM", "{when}: the kernel refuses the connect");
    let denied = alert(monitor, "connect-not-allowed", |v| {
        v["security_rule.name"] == "connect-not-allowed" && v["process.pid"] == pid
    });
    assert_eq!(denied["monitor.action"], "denied", "{when}: {denied}");
}

/// Waits for the self-check's alert that says `repaired` (a substring) was put back.
fn self_check_repaired(monitor: &Monitor, found: &str, repaired: &str) -> Value {
    let (found, repaired) = (found.to_owned(), repaired.to_owned());
    let alert = alert(
        monitor,
        &format!("a self-check that {repaired}"),
        move |v| {
            v["security_rule.name"] == "monitor-tampered"
                && v["monitor.tamper.operation"] == "self-check"
                && v["monitor.selfcheck.found"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|s| s.as_str().is_some_and(|s| s.contains(&found)))
                })
                && v["monitor.selfcheck.repaired"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|s| s.as_str().is_some_and(|s| s.contains(&repaired)))
                })
        },
    );
    assert_eq!(alert["severity"], "critical", "{alert}");
    alert
}

#[test]
fn a_detached_cgroup_link_is_reported_and_attached_again() {
    let site = Site::new("tamper-link");
    let monitor = site.start(&[]);
    assert_denied(&site, &monitor, "before the attack");

    // The attack: bpftool takes an fd on the link by its id, then detaches it.
    let link = connect4_link(&monitor);
    let (attacker, _) = bpftool(&["link", "detach", "id", &link]);
    let tampered = alert(&monitor, "monitor-tampered by bpftool", |v| {
        v["security_rule.name"] == "monitor-tampered" && v["process.pid"] == attacker
    });
    assert_eq!(tampered["severity"], "critical", "{tampered}");
    assert_eq!(
        tampered["monitor.bpf.command"], "BPF_LINK_DETACH",
        "{tampered}"
    );
    assert_eq!(tampered["monitor.bpf.object.kind"], "link", "{tampered}");
    assert_eq!(
        tampered["monitor.bpf.object.id"].to_string(),
        link,
        "{tampered}"
    );
    assert_eq!(
        tampered["monitor.bpf.object.name"], "connect4",
        "{tampered}"
    );
    // Resolved from bpftool's fd table: identified, and it succeeded.
    assert_eq!(tampered["monitor.unverified"], false, "{tampered}");
    assert_eq!(tampered["monitor.result"], 0, "{tampered}");
    assert!(
        tampered["process.executable.path"]
            .as_str()
            .is_some_and(|p| p.ends_with("bpftool")),
        "the actor: {tampered}"
    );
    // Its first step, the fd taken by id, is reported as suspected.
    let opened = alert(&monitor, "monitor-object-opened by bpftool", |v| {
        v["security_rule.name"] == "monitor-object-opened" && v["process.pid"] == attacker
    });
    assert_eq!(opened["monitor.bpf.command"], "BPF_LINK_GET_FD_BY_ID");
    assert_eq!(opened["monitor.unverified"], true);

    self_check_repaired(
        &monitor,
        &format!("link {link} (connect4) detached"),
        "re-attached connect4",
    );
    assert_denied(&site, &monitor, "after the self-check re-attached connect4");

    // Again with raw bpf() calls (no bpftool): LINK_GET_FD_BY_ID, then LINK_DETACH.
    let link = connect4_link(&monitor);
    let child = python(RAW_DETACH, &[&link]);
    let attacker = child.id();
    let output = child.wait_with_output().unwrap();
    assert_eq!(stdout(&output), "detached", "{output:?}");
    let tampered = alert(&monitor, "monitor-tampered by raw bpf()", |v| {
        v["security_rule.name"] == "monitor-tampered"
            && v["process.pid"] == attacker
            && v["monitor.bpf.command"] == "BPF_LINK_DETACH"
    });
    assert_eq!(
        tampered["monitor.bpf.object.id"].to_string(),
        link,
        "{tampered}"
    );
    self_check_repaired(
        &monitor,
        &format!("link {link} (connect4) detached"),
        "re-attached connect4",
    );
    assert_denied(&site, &monitor, "after the second repair");
}

/// `bpf(BPF_LINK_GET_FD_BY_ID)` then `bpf(BPF_LINK_DETACH)` by ctypes (x86_64: bpf is 321).
const RAW_DETACH: &str = r#"
import ctypes, os, platform, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
nr = {"x86_64": 321, "aarch64": 280}[platform.machine()]
def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 64)
    ret = libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), buf, ctypes.c_uint(64))
    if ret < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return ret
fd = bpf(30, struct.pack("I", int(sys.argv[1])))
bpf(34, struct.pack("I", fd))
print("detached")
"#;

#[test]
fn a_deleted_policy_entry_is_reported_and_written_back() {
    let site = Site::new("tamper-map");
    let monitor = site.start(&[]);
    assert_denied(&site, &monitor, "before the attack");

    // The attack: the enforcement settings of the client's profile, gone from the kernel.
    let policy = map_id(&monitor, "POLICY");
    let (_, dump) = bpftool(&["map", "dump", "id", &policy, "-j"]);
    let entries: Value = serde_json::from_slice(&dump.stdout).unwrap();
    let entries = entries.as_array().expect("a JSON array of entries");
    assert!(!entries.is_empty(), "the profiles' policies are in the map");
    // Delete every profile's entry: one of them is the client's.
    let mut attackers = Vec::new();
    for entry in entries {
        let key: Vec<String> = entry["key"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_str().unwrap().to_owned())
            .collect();
        let mut args = vec!["map", "delete", "id", &policy, "key"];
        args.extend(key.iter().map(String::as_str));
        let (pid, _) = bpftool(&args);
        attackers.push(pid);
    }
    for attacker in &attackers {
        let attacker = *attacker;
        let tampered = alert(&monitor, "monitor-tampered (map delete)", move |v| {
            v["security_rule.name"] == "monitor-tampered" && v["process.pid"] == attacker
        });
        assert_eq!(
            tampered["monitor.bpf.command"], "BPF_MAP_DELETE_ELEM",
            "{tampered}"
        );
        assert_eq!(tampered["monitor.bpf.object.kind"], "map", "{tampered}");
        assert_eq!(tampered["monitor.bpf.object.name"], "POLICY", "{tampered}");
        assert_eq!(tampered["monitor.unverified"], false, "{tampered}");
    }
    self_check_repaired(
        &monitor,
        "map POLICY differs from the configuration in force",
        "rewrote map POLICY",
    );
    let (_, dump) = bpftool(&["map", "dump", "id", &policy, "-j"]);
    let after: Value = serde_json::from_slice(&dump.stdout).unwrap();
    assert_eq!(
        after.as_array().map(Vec::len),
        Some(entries.len()),
        "every entry is back: {after}"
    );
    assert_denied(&site, &monitor, "after the self-check rewrote POLICY");
}

#[test]
fn a_stop_is_reported_with_its_length_and_the_theft_during_it_too() {
    let site = Site::new("tamper-stop");
    let monitor = site.start(&[]);
    let pid = monitor.pid().to_string();
    let (stopper, output) = run("kill", &["-STOP", &pid]);
    assert!(output.status.success(), "{output:?}");
    // The theft while the monitor is stopped: the open waits for the guard's answer.
    let thief = python(READ, &[&site.path("models/model.safetensors")]);
    let thief_pid = thief.id();
    std::thread::sleep(Duration::from_secs(2));
    let (resumer, output) = run("kill", &["-CONT", &pid]);
    assert!(output.status.success(), "{output:?}");
    let output = thief.wait_with_output().unwrap();
    assert_eq!(stdout(&output), WEIGHTS, "alert-only guards do not refuse");

    let theft = alert(&monitor, "the theft during the stop", |v| {
        v["security_rule.name"] == "protected-file-read" && v["process.pid"] == thief_pid
    });
    assert_eq!(theft["file.path"], site.path("models/model.safetensors"));
    let paused = alert(&monitor, "monitor-paused", |v| {
        v["security_rule.name"] == "monitor-paused"
    });
    assert_eq!(paused["severity"], "high", "{paused}");
    assert_eq!(paused["process.pid"], stopper, "the stopper: {paused}");
    assert_eq!(paused["monitor.pause.signal"], "SIGSTOP", "{paused}");
    assert_eq!(paused["monitor.pause.cause"], "signal", "{paused}");
    assert_eq!(
        paused["monitor.pause.resumed_by.process.pid"], resumer,
        "{paused}"
    );
    let ms = paused["monitor.pause.duration_ms"].as_u64().unwrap();
    assert!((1900..10_000).contains(&ms), "the stop's length: {paused}");
    // One pause, one alert: the clock gap it left is the same pause.
    std::thread::sleep(Duration::from_secs(4));
    let pauses = monitor
        .lines()
        .iter()
        .filter(|v| v["security_rule.name"] == "monitor-paused")
        .count();
    assert_eq!(pauses, 1, "{:?}", monitor.lines());

    // A signal that ends the monitor, by another process: reported with its sender.
    let (sender, output) = run("kill", &["-TERM", &pid]);
    assert!(output.status.success(), "{output:?}");
    let lines = monitor.stop();
    let signaled = lines
        .iter()
        .find(|v| v["security_rule.name"] == "monitor-signaled" && v["process.pid"] == sender)
        .unwrap_or_else(|| panic!("no monitor-signaled by {sender}: {lines:?}"));
    assert_eq!(signaled["monitor.signal.name"], "SIGTERM", "{signaled}");
}

#[test]
fn a_ptrace_of_the_monitor_is_tampering() {
    let site = Site::new("tamper-ptrace");
    let monitor = site.start(&[]);
    // PTRACE_ATTACH (16) by ctypes, then a read of /proc/PID/mem: two ways in.
    let child = python(PTRACE_AND_MEM, &[&monitor.pid().to_string()]);
    let attacker = child.id();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    for operation in ["ptrace", "proc-pid-mem-open"] {
        let tampered = alert(&monitor, &format!("monitor-tampered ({operation})"), |v| {
            v["security_rule.name"] == "monitor-tampered"
                && v["process.pid"] == attacker
                && v["monitor.memory.operation"] == operation
        });
        assert_eq!(tampered["monitor.target.monitor"], true, "{tampered}");
        assert_eq!(
            tampered["monitor.target.process.pid"],
            monitor.pid(),
            "{tampered}"
        );
    }
}

const PTRACE_AND_MEM: &str = r#"
import ctypes, os, sys, time
pid = int(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
if libc.ptrace(16, pid, None, None) == 0:
    os.waitpid(pid, 0)
    libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
with open("/proc/%d/mem" % pid, "rb") as f:
    pass
"#;

#[test]
fn a_flood_hides_no_theft_and_no_memory_access() {
    let site = Site::new("tamper-flood");
    // The governed server whose memory is read, running before the monitor starts: its
    // /proc scan governs it (its exec event could be lost in the one-page ring below when the
    // host is busy).
    let mut server = Command::new(site.path("bin/model-server"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // One page of bulk ring, drained every 2 s and never woken early: the flood of execs
    // below loses events (`events-lost`), as it did the priority events before they had a
    // ring of their own.
    let monitor = site.start(&[
        "--ring-size",
        "4096",
        "--drain-interval-ms",
        "2000",
        "--wakeup-bytes",
        "1000000000",
    ]);
    let flood = Command::new("sh")
        .args([
            "-c",
            "i=0; while [ $i -lt 3000 ]; do /bin/true; i=$((i+1)); done",
        ])
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut thieves = Vec::new();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(300));
        let child = python(READ, &[&site.path("models/model.safetensors")]);
        thieves.push(child.id());
        let output = child.wait_with_output().unwrap();
        assert_eq!(stdout(&output), WEIGHTS, "{output:?}");
    }
    let reader = python(
        "import sys\nopen('/proc/%s/mem' % sys.argv[1], 'rb').close()\n",
        &[&server.id().to_string()],
    );
    let reader_pid = reader.id();
    assert!(reader.wait_with_output().unwrap().status.success());
    let mut flood = flood;
    flood.wait().unwrap();
    eprintln!("flood of 3000 execs took {:?}", started.elapsed());

    let lost = alert(&monitor, "events-lost", |v| {
        v["security_rule.name"] == "events-lost" && v["monitor.loss.stage"] == "kernel"
    });
    assert!(
        lost["monitor.loss.count"].as_u64().unwrap_or(0) > 0,
        "{lost}"
    );
    for thief in thieves {
        alert(&monitor, "a theft inside the flood", move |v| {
            v["security_rule.name"] == "protected-file-read" && v["process.pid"] == thief
        });
    }
    let access = alert(&monitor, "the memory access inside the flood", |v| {
        v["security_rule.name"] == "process-memory-access" && v["process.pid"] == reader_pid
    });
    assert_eq!(
        access["monitor.target.process.pid"],
        server.id(),
        "{access}"
    );
    let _ = server.kill();
    let _ = server.wait();
}
