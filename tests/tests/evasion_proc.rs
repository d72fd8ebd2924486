//! End-to-end tests of the evasions around a governed server's process: another process
//! reading or writing its memory (process_vm_readv, ptrace, /proc/PID/mem by every name,
//! pidfd_getfd), io_uring by the server (plain and SQPOLL rings), a hop to another profile
//! by exec, a fileless (memfd) exec, and an argv longer than the kernel's copy. Every attack
//! is performed for real, and its effect checked (the bytes were read, or the accessor died).

use std::{
    io::{BufRead, BufReader, Write as _},
    net::TcpListener,
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tests::{marker, Monitor, WAIT};

const PYTHON: &str = "/usr/bin/python3";

/// The governed server: a secret in its memory, a file open on an fd; it prints where they
/// are and waits until its stdin closes.
const TARGET: &str = r#"
import ctypes, json, os, sys, threading
secret = ctypes.create_string_buffer(sys.argv[1].encode())
held = open(sys.argv[2], "rb")
worker = threading.Thread(target=threading.Event().wait, daemon=True)
worker.start()
print(json.dumps({"pid": os.getpid(), "tid": worker.native_id, "addr": ctypes.addressof(secret),
                  "len": len(secret.value), "fd": held.fileno()}), flush=True)
sys.stdin.read()
"#;

/// The accessor (ungoverned): one way to read the target's memory; prints what it got.
const ACCESSOR: &str = r#"
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.syscall.restype = ctypes.c_long
method, pid, addr, n, fd, scratch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
out = {"method": method}
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
def peek(seize):
    if seize:
        assert libc.ptrace(0x4206, pid, None, None) == 0, os.strerror(ctypes.get_errno())
        assert libc.ptrace(0x4207, pid, None, None) == 0, os.strerror(ctypes.get_errno())
    else:
        assert libc.ptrace(16, pid, None, None) == 0, os.strerror(ctypes.get_errno())
    os.waitpid(pid, 0)
    data = b""
    for i in range(0, n, 8):
        word = libc.ptrace(2, pid, ctypes.c_void_p(addr + i), None)
        data += ctypes.c_long(word).value.to_bytes(8, "little", signed=True)
    libc.ptrace(17, pid, None, None)
    return data[:n]
def mem_read(path, dir_fd=None):
    f = os.open(path, os.O_RDONLY, dir_fd=dir_fd)
    return os.pread(f, n, addr)
if method == "vm_readv":
    buf = ctypes.create_string_buffer(n)
    local, remote = iovec(ctypes.cast(buf, ctypes.c_void_p), n), iovec(addr, n)
    r = libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    data = buf.raw[:r] if r > 0 else b""
elif method == "vm_writev":
    # Read the bytes, then write them back: a real write that leaves the target working.
    buf = ctypes.create_string_buffer(n)
    local, remote = iovec(ctypes.cast(buf, ctypes.c_void_p), n), iovec(addr, n)
    assert libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) == n
    r = libc.process_vm_writev(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    assert r == n, os.strerror(ctypes.get_errno())
    data = buf.raw
elif method == "ptrace_attach":
    data = peek(False)
elif method == "ptrace_seize":
    data = peek(True)
elif method == "proc_mem":
    data = mem_read("/proc/%d/mem" % pid)
elif method == "task_mem":
    data = mem_read("/proc/%d/task/%d/mem" % (pid, pid))
elif method == "dirfd_mem":
    data = mem_read("mem", dir_fd=os.open("/proc/%d" % pid, os.O_RDONLY | os.O_DIRECTORY))
elif method == "symlink_mem":
    link = os.path.join(scratch, "innocent-%d" % os.getpid())
    os.symlink("/proc/%d/mem" % pid, link)
    data = mem_read(link)
elif method == "pidfd_getfd":
    stolen = libc.syscall(438, os.pidfd_open(pid), fd, 0)
    assert stolen >= 0, os.strerror(ctypes.get_errno())
    data = os.pread(stolen, 64, 0)
out["data"] = data.decode(errors="replace")
print(json.dumps(out), flush=True)
"#;

/// A governed server that execs something: `hop` runs the model-sync job (another profile's
/// selector matches its argv), `memfd` a copy of /bin/true from a memfd, `argv` /bin/true with
/// 103 arguments of 1000 bytes.
const EXECER: &str = r#"
import json, os, subprocess, sys
step, root = sys.argv[1], sys.argv[2]
out = {}
if step == "hop":
    r = subprocess.run([sys.executable, "-B", os.path.join(root, "job.py"), "model_sync_job", root, sys.argv[3]])
    out["returncode"] = r.returncode
elif step == "memfd":
    fd = os.memfd_create("payload", 0)
    with open("/bin/true", "rb") as f:
        os.write(fd, f.read())
    pid = os.fork()
    if pid == 0:
        os.execve(fd, ["payload"], {})
    out["returncode"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
elif step == "argv":
    r = subprocess.run(["/bin/true"] + ["x" * 1000] * 102)
    out["returncode"] = r.returncode
print(json.dumps(out), flush=True)
"#;

/// The model-sync job: writes the model, then calls its upstream.
const JOB: &str = r#"
import os, socket, sys
root, port = sys.argv[2], int(sys.argv[3])
with open(os.path.join(root, "models", "model.bin"), "r+") as f:
    f.write("poisoned")
try:
    socket.create_connection(("127.0.0.1", port), timeout=1).close()
except OSError:
    pass
"#;

/// A scratch tree with the scripts and configuration; removed on drop.
struct Site {
    root: PathBuf,
    secret: String,
}

impl Site {
    fn new(name: &str) -> Site {
        let root = std::env::temp_dir().join(marker(name));
        std::fs::create_dir_all(root.join("models")).unwrap();
        let root = std::fs::canonicalize(root).unwrap();
        std::fs::write(root.join("models/model.bin"), "weights").unwrap();
        std::fs::write(root.join("held.txt"), "held-file-contents").unwrap();
        std::fs::write(root.join("fake_procmem_server.py"), TARGET).unwrap();
        std::fs::write(root.join("accessor.py"), ACCESSOR).unwrap();
        std::fs::write(root.join("fake_execer_server.py"), EXECER).unwrap();
        std::fs::write(root.join("job.py"), JOB).unwrap();
        Site {
            secret: format!("SECRET-WEIGHTS-{}", marker("secret")),
            root,
        }
    }

    /// Writes `config.yaml` naming these profiles (YAML documents) and starts the monitor.
    fn start(&self, profiles: &str, dry_run: bool) -> Monitor {
        let args: &[&str] = if dry_run { &["--dry-run"] } else { &[] };
        tests::start_with_profiles(&self.root, profiles, "builtin_profiles: false\n", args)
    }

    fn path(&self, name: &str) -> String {
        self.root.join(name).to_string_lossy().into_owned()
    }

    /// Starts the governed target and waits until the monitor governs it.
    fn target(&self, monitor: &Monitor) -> Target {
        let mut child = monitor
            .cgroup
            .command(PYTHON)
            .arg("-B")
            .arg(self.path("fake_procmem_server.py"))
            .arg(&self.secret)
            .arg(self.path("held.txt"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let info: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        // The exec event reaches user space, which puts the process under its profile.
        std::thread::sleep(Duration::from_millis(1000));
        Target {
            stdin: child.stdin.take(),
            child,
            info,
        }
    }

    /// Runs the accessor against `target`; its report (Null if it died) and exit code.
    fn access(&self, method: &str, target: &Target) -> (Value, Option<i32>, u32) {
        // `*_tid`: name the target by one of its threads' ids.
        let (method, pid) = match method.strip_suffix("_tid") {
            Some(method) => (method, target.info["tid"].to_string()),
            None => (method, target.info["pid"].to_string()),
        };
        let child = Command::new(PYTHON)
            .arg("-B")
            .arg(self.path("accessor.py"))
            .arg(method)
            .arg(pid)
            .arg(target.info["addr"].to_string())
            .arg(target.info["len"].to_string())
            .arg(target.info["fd"].to_string())
            .arg(self.root.to_string_lossy().as_ref())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let output = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        let report = serde_json::from_str(text.trim()).unwrap_or(Value::Null);
        if report.is_null() && output.status.code().is_some() {
            eprintln!(
                "accessor stderr: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        (report, output.status.code(), pid)
    }

    /// Opens the target's /proc/PID/mem with an io_uring IORING_OP_OPENAT (the syscall exit
    /// hooks never see it) and reads the secret; (data or Null if it died, exit code, pid).
    fn access_uring(&self, helper: &str, target: &Target) -> (Value, Option<i32>, u32) {
        let child = Command::new(helper)
            .arg("procmem")
            .arg(format!("/proc/{}/mem", target.pid()))
            .arg(target.info["addr"].to_string())
            .arg(target.info["len"].to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let output = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        let data = text
            .lines()
            .find_map(|l| l.strip_prefix("data "))
            .map_or(Value::Null, Value::from);
        (data, output.status.code(), pid)
    }

    /// Runs one step of the execer server (governed); its report and exit code.
    fn exec_step(&self, monitor: &Monitor, step: &str, port: u16) -> (Value, Option<i32>) {
        let output = monitor
            .cgroup
            .command(PYTHON)
            .arg("-B")
            .arg(self.path("fake_execer_server.py"))
            .arg(step)
            .arg(self.root.to_string_lossy().as_ref())
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        (
            serde_json::from_str(text.trim()).unwrap_or(Value::Null),
            output.status.code(),
        )
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The governed target; killed and reaped when dropped, also when a test panics.
struct Target {
    child: Child,
    stdin: Option<ChildStdin>,
    info: Value,
}

impl Target {
    fn pid(&self) -> u64 {
        self.info["pid"].as_u64().unwrap()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn memory_profile(mode: &str) -> String {
    format!(
        r#"name: procmem-server
selector:
  args: ["*fake_procmem_server*"]
mode: {mode}
allow:
  exec: ["/usr/bin/python3*"]
  files:
    read: ["/**"]
    write: ["/tmp/**", "/dev/**"]
"#
    )
}

fn alerts(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|v| v["event.name"] == "monitor.alert")
        .collect()
}

fn memory_alert(monitor: &Monitor, accessor: u32, operation: &'static str) -> Value {
    monitor.wait_for(
        &format!("process-memory-access by {accessor} ({operation})"),
        WAIT,
        move |v| {
            v["security_rule.name"] == "process-memory-access"
                && v["process.pid"] == accessor
                && v["monitor.memory.operation"] == operation
        },
    )
}

#[test]
fn memory_of_a_governed_server_is_reported_by_every_route() {
    let site = Site::new("procmem");
    let monitor = site.start(&memory_profile("alert"), false);
    let target = site.target(&monitor);
    // Benign: the server runs, nobody touches it.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        alerts(&monitor.lines()).is_empty(),
        "a benign run raises nothing: {:?}",
        monitor.lines()
    );
    let exe = tests::real_path(PYTHON);
    for (method, operation) in [
        ("vm_readv", "process_vm_readv"),
        ("vm_readv_tid", "process_vm_readv"),
        ("vm_writev", "process_vm_writev"),
        ("ptrace_attach", "ptrace"),
        ("ptrace_seize", "ptrace"),
        ("proc_mem", "proc-pid-mem-open"),
        ("task_mem", "proc-pid-mem-open"),
        ("dirfd_mem", "proc-pid-mem-open"),
        ("symlink_mem", "proc-pid-mem-open"),
        ("pidfd_getfd", "pidfd_getfd"),
    ] {
        let (report, code, pid) = site.access(method, &target);
        assert_eq!(code, Some(0), "{method}: {report}");
        let expected = if method == "pidfd_getfd" {
            "held-file-contents".to_owned()
        } else {
            site.secret.clone()
        };
        assert_eq!(
            report["data"], expected,
            "{method} really read the target's memory"
        );
        let alert = memory_alert(&monitor, pid, operation);
        assert_eq!(alert["severity"], "critical", "{alert}");
        assert_eq!(alert["monitor.action"], "alert", "{alert}");
        assert_eq!(alert["monitor.target.process.pid"], target.pid(), "{alert}");
        assert_eq!(alert["monitor.target.profile"], "procmem-server", "{alert}");
        assert_eq!(
            alert["monitor.target.process.executable.path"], exe,
            "{alert}"
        );
        if method.starts_with("ptrace") {
            let request = if method == "ptrace_seize" {
                "PTRACE_SEIZE"
            } else {
                "PTRACE_ATTACH"
            };
            monitor.wait_for(&format!("{request} by {pid}"), WAIT, |v| {
                v["process.pid"] == pid && v["monitor.ptrace.request"] == request
            });
            monitor.wait_for(&format!("PTRACE_PEEKDATA by {pid}"), WAIT, |v| {
                v["process.pid"] == pid && v["monitor.ptrace.request"] == "PTRACE_PEEKDATA"
            });
        }
    }
    // io_uring: the open is seen at its completion.
    let helper = build_uring_server(&site);
    let (data, code, pid) = site.access_uring(&helper, &target);
    assert_eq!((data.as_str(), code), (Some(site.secret.as_str()), Some(0)));
    let alert = memory_alert(&monitor, pid, "proc-pid-mem-open");
    assert_eq!(alert["monitor.target.process.pid"], target.pid(), "{alert}");
    drop(target);
    let lines = monitor.stop();
    assert!(
        alerts(&lines)
            .iter()
            .all(|a| a["security_rule.name"] == "process-memory-access"),
        "only the accesses alert: {lines:?}"
    );
}

#[test]
fn enforce_kills_the_accessor_before_it_reads() {
    let site = Site::new("procmem-enforce");
    let monitor = site.start(&memory_profile("enforce"), false);
    let target = site.target(&monitor);
    for (method, operation, mechanism) in [
        ("vm_readv", "process_vm_readv", "sigkill-at-syscall-entry"),
        ("ptrace_attach", "ptrace", "sigkill-at-syscall-entry"),
        ("proc_mem", "proc-pid-mem-open", "sigkill-at-open-exit"),
        ("dirfd_mem", "proc-pid-mem-open", "sigkill-at-open-exit"),
        ("pidfd_getfd", "pidfd_getfd", "sigkill-at-syscall-entry"),
    ] {
        let (report, code, pid) = site.access(method, &target);
        assert_eq!(code, None, "{method}: the accessor was killed: {report}");
        assert!(report.is_null(), "{method}: nothing was read: {report}");
        let alert = memory_alert(&monitor, pid, operation);
        assert_eq!(alert["monitor.action"], "killed", "{alert}");
        assert_eq!(alert["monitor.enforcement.mechanism"], mechanism, "{alert}");
    }
    let helper = build_uring_server(&site);
    let (data, code, pid) = site.access_uring(&helper, &target);
    assert_eq!(
        (&data, code),
        (&Value::Null, None),
        "killed before its read"
    );
    let alert = memory_alert(&monitor, pid, "proc-pid-mem-open");
    assert_eq!(alert["monitor.action"], "killed", "{alert}");
    // The target lives on, untouched.
    assert!(
        std::path::Path::new(&format!("/proc/{}", target.pid())).exists(),
        "the target still runs"
    );
}

#[test]
fn dry_run_says_would_kill_and_the_read_happens() {
    let site = Site::new("procmem-dry");
    let monitor = site.start(&memory_profile("enforce"), true);
    let target = site.target(&monitor);
    let (report, code, pid) = site.access("proc_mem", &target);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["data"], site.secret);
    let alert = memory_alert(&monitor, pid, "proc-pid-mem-open");
    assert_eq!(alert["monitor.action"], "would-kill", "{alert}");
}

/// Compiles the io_uring server (raw syscalls, no liburing) into the site.
fn build_uring_server(site: &Site) -> String {
    let out = site.path("fake_uring_server");
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/evasion_proc_uring.c");
    let status = Command::new("cc")
        .args(["-O2", "-o", &out, source])
        .status()
        .expect("failed to run cc: install a C compiler (apt-get install -y gcc)");
    assert!(status.success(), "failed to compile {source}");
    out
}

fn uring_profile(root: &str, allowed: bool) -> String {
    format!(
        r#"name: uring-server
selector:
  executables: ["{root}/fake_uring_server"]
mode: alert
allow:
  files:
    read: ["/**"]
  network:
    connect: ["127.0.0.1:*"]
  io_uring: {allowed}
"#
    )
}

fn run_uring(site: &Site, monitor: &Monitor, server: &str, mode: &str, port: u16) -> u32 {
    let child = monitor
        .cgroup
        .command(server)
        .arg(mode)
        .arg(site.path("held.txt"))
        .arg(port.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the io_uring requests succeeded: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    pid
}

#[test]
fn io_uring_by_a_governed_server_is_reported_once_per_opcode() {
    let site = Site::new("uring");
    let server = build_uring_server(&site);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let monitor = site.start(&uring_profile(&site.root.to_string_lossy(), false), false);
    for mode in ["plain", "sqpoll"] {
        let pid = run_uring(&site, &monitor, &server, mode, port);
        for operation in ["setup", "openat", "connect"] {
            let alert = monitor.wait_for(&format!("io_uring {operation} ({mode})"), WAIT, |v| {
                v["security_rule.name"] == "io-uring-not-allowed"
                    && v["process.pid"] == pid
                    && v["monitor.io_uring.operation"] == operation
            });
            assert_eq!(alert["monitor.profile"], "uring-server", "{alert}");
            assert_eq!(alert["severity"], "high", "{alert}");
            if mode == "sqpoll" && operation != "setup" {
                assert_eq!(alert["monitor.io_uring.sq_thread"], true, "{alert}");
            }
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let lines = monitor.stop();
    // Once per (process, opcode): 2 processes x 3.
    let count = alerts(&lines)
        .iter()
        .filter(|a| a["security_rule.name"] == "io-uring-not-allowed")
        .count();
    assert_eq!(count, 6, "{lines:?}");
}

#[test]
fn io_uring_allowed_by_the_profile_raises_nothing() {
    let site = Site::new("uring-allowed");
    let server = build_uring_server(&site);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let monitor = site.start(&uring_profile(&site.root.to_string_lossy(), true), false);
    run_uring(&site, &monitor, &server, "plain", port);
    std::thread::sleep(Duration::from_millis(500));
    let lines = monitor.stop();
    assert!(alerts(&lines).is_empty(), "{lines:?}");
}

/// The server's profile forbids writing the model; the model-sync job's allows it (and
/// forbids the network). `transition`: the server's profile names the job's.
fn hop_profiles(root: &str, mode: &str, transition: bool) -> String {
    let transitions = if transition {
        "  transitions: [model-sync]\n"
    } else {
        ""
    };
    format!(
        r#"name: hop-server
selector:
  args: ["*fake_execer_server*"]
mode: {mode}
allow:
  exec: ["/usr/bin/true"]
  files:
    read: ["/**"]
    write: ["/dev/**"]
  network:
    connect: ["127.0.0.1:*"]
{transitions}---
name: model-sync
selector:
  executables: ["/usr/bin/python3*"]
  args: ["*model_sync_job*"]
mode: {mode}
allow:
  files:
    read: ["/**"]
    write: ["{root}/models/**", "/tmp/**", "/dev/**"]
"#
    )
}

#[test]
fn a_governed_server_keeps_its_profile_across_exec() {
    let site = Site::new("hop");
    let root = site.root.to_string_lossy().into_owned();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let monitor = site.start(&hop_profiles(&root, "alert", false), false);
    let (report, _) = site.exec_step(&monitor, "hop", port);
    assert_eq!(report["returncode"], 0, "{report}");
    let model = format!("{root}/models/model.bin");
    let write = monitor.wait_for("file-write-not-allowed under hop-server", WAIT, |v| {
        v["security_rule.name"] == "file-write-not-allowed" && v["file.path"] == model.as_str()
    });
    assert_eq!(write["monitor.profile"], "hop-server", "{write}");
    monitor.wait_for("exec-not-allowed of python", WAIT, |v| {
        v["security_rule.name"] == "exec-not-allowed" && v["monitor.profile"] == "hop-server"
    });
}

#[test]
fn a_named_transition_switches_the_profile() {
    let site = Site::new("hop-named");
    let root = site.root.to_string_lossy().into_owned();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let monitor = site.start(&hop_profiles(&root, "alert", true), false);
    let (report, _) = site.exec_step(&monitor, "hop", port);
    assert_eq!(report["returncode"], 0, "{report}");
    let connect = monitor.wait_for("connect-not-allowed under model-sync", WAIT, |v| {
        v["security_rule.name"] == "connect-not-allowed"
    });
    assert_eq!(connect["monitor.profile"], "model-sync", "{connect}");
    std::thread::sleep(Duration::from_millis(300));
    let lines = monitor.stop();
    assert!(
        alerts(&lines)
            .iter()
            .all(|a| a["security_rule.name"] == "connect-not-allowed"),
        "the write is the job's to do, the exec a named transition: {lines:?}"
    );
}

#[test]
fn enforce_kills_an_exec_into_another_profile_unless_named() {
    let site = Site::new("hop-enforce");
    let root = site.root.to_string_lossy().into_owned();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    {
        let monitor = site.start(&hop_profiles(&root, "enforce", false), false);
        let (report, _) = site.exec_step(&monitor, "hop", port);
        assert_eq!(
            report["returncode"], -9,
            "the job was killed at exec: {report}"
        );
        assert_eq!(
            std::fs::read_to_string(site.root.join("models/model.bin")).unwrap(),
            "weights"
        );
        let killed = monitor.wait_for("exec-not-allowed (killed)", WAIT, |v| {
            v["security_rule.name"] == "exec-not-allowed" && v["monitor.action"] == "killed"
        });
        assert_eq!(killed["monitor.profile"], "hop-server", "{killed}");
    }
    let monitor = site.start(&hop_profiles(&root, "enforce", true), false);
    let (report, _) = site.exec_step(&monitor, "hop", port);
    assert_eq!(report["returncode"], 0, "a named transition runs: {report}");
    assert_eq!(
        std::fs::read_to_string(site.root.join("models/model.bin")).unwrap(),
        "poisoned"
    );
}

#[test]
fn a_memfd_exec_is_named_and_fileless() {
    let site = Site::new("memfd");
    let root = site.root.to_string_lossy().into_owned();
    let monitor = site.start(&hop_profiles(&root, "alert", false), false);
    let (report, _) = site.exec_step(&monitor, "memfd", 0);
    assert_eq!(report["returncode"], 0, "{report}");
    let alert = monitor.wait_for("exec-not-allowed of the memfd", WAIT, |v| {
        v["security_rule.name"] == "exec-not-allowed"
    });
    assert_eq!(alert["process.executable.path"], "memfd:payload", "{alert}");
    assert_eq!(alert["monitor.exec.fileless"], true, "{alert}");
}

#[test]
fn a_truncated_argv_counts_every_argument() {
    let site = Site::new("argv");
    let root = site.root.to_string_lossy().into_owned();
    let profiles =
        hop_profiles(&root, "alert", false).replace("exec: [\"/usr/bin/true\"]", "exec: []");
    let monitor = site.start(&profiles, false);
    let (report, _) = site.exec_step(&monitor, "argv", 0);
    assert_eq!(report["returncode"], 0, "{report}");
    let alert = monitor.wait_for("exec-not-allowed of /bin/true", WAIT, |v| {
        v["security_rule.name"] == "exec-not-allowed"
    });
    assert_eq!(alert["process.args_count"], 103, "{alert}");
    assert_eq!(alert["process.command_args.truncated"], true, "{alert}");
}
