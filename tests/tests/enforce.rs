//! End-to-end tests of enforcement on the real kernel, in a cgroup made for each test: an
//! enforce-mode profile makes the kernel refuse connects (EPERM), device opens (EPERM), execs
//! (SIGKILL before the program runs) and opens for writing of an enforcing guard's files
//! (EPERM from fanotify); `--dry-run` only reports; ungoverned processes are untouched.

use std::{net::TcpListener, path::PathBuf, process::Stdio, time::Duration};

use serde_json::Value;
use tests::{marker, real_path, Monitor, TempDir, PYTHON, WAIT};

const SERVER: &str = r#"
import json, os, socket, subprocess, sys
root, allowed, allowed6, other, step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except OSError as e:
        out[name] = {1: "EPERM", 6: "ENXIO", 111: "ECONNREFUSED", 13: "EACCES"}.get(e.errno, str(e.errno))
if step == "net":
    attempt("connect_allowed", lambda: socket.create_connection(("127.0.0.1", allowed)).close())
    attempt("connect_other", lambda: socket.create_connection(("127.0.0.1", other)).close())
    attempt("connect6_allowed", lambda: socket.create_connection(("::1", allowed6)).close())
    attempt("connect6_other", lambda: socket.create_connection(("::1", other)).close())
    attempt("gpu", lambda: open(os.path.join(root, "nvidia0"), "rb").close())
elif step == "exec":
    r = subprocess.run(["/bin/sh", "-c", "touch " + os.path.join(root, "MARKER")])
    out["exec_returncode"] = r.returncode
elif step == "flood":
    # Governed once a connect is refused; then, on the test's word (the monitor stopped), a
    # flood of refused connects (each a record in the priority ring) and a forbidden exec.
    attempt("first", lambda: socket.create_connection(("127.0.0.1", other)).close())
    print(out["first"], flush=True)
    sys.stdin.readline()
    refused = 0
    for _ in range(4000):
        try:
            socket.create_connection(("127.0.0.1", other)).close()
        except OSError:
            refused += 1
    out["refused"] = refused
    r = subprocess.run(["/bin/sh", "-c", "touch " + os.path.join(root, "MARKER")])
    out["exec_returncode"] = r.returncode
elif step == "write":
    # In-place poisoning: open for writing (no O_TRUNC) and overwrite; then a truncating
    # open. The guard refuses both opens (fanotify, EPERM) before a byte changes.
    def poison():
        with open(os.path.join(root, "models", "model.bin"), "r+") as f:
            f.write("poisoned")
    attempt("write", poison)
    attempt("truncate", lambda: open(os.path.join(root, "models", "model.bin"), "w").close())
print(json.dumps(out), flush=True)
"#;

struct Site {
    root: PathBuf,
    allowed: TcpListener,
    allowed6: TcpListener,
}

impl Site {
    fn new(name: &str) -> Site {
        let root = std::env::temp_dir().join(marker(name));
        std::fs::create_dir_all(root.join("models")).unwrap();
        let root = std::fs::canonicalize(root).unwrap();
        std::fs::write(root.join("models/model.bin"), "weights").unwrap();
        std::fs::write(root.join("fake_enforced_server.py"), SERVER).unwrap();
        let node =
            std::ffi::CString::new(root.join("nvidia0").to_string_lossy().into_owned()).unwrap();
        // SAFETY: creating a device node as root in our scratch directory.
        assert_eq!(
            unsafe { libc::mknod(node.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(195, 0)) },
            0
        );
        let site = Site {
            root,
            allowed: TcpListener::bind("127.0.0.1:0").unwrap(),
            allowed6: TcpListener::bind("[::1]:0").unwrap(),
        };
        std::fs::write(
            site.root.join("enforced.yaml"),
            format!(
                r#"name: enforced
selector:
  executables: ["/usr/bin/python3*"]
  args: ["*fake_enforced_server*"]
mode: enforce
allow:
  exec: ["/usr/bin/python3*"]
  files:
    read: ["/**"]
    write: ["/tmp/**", "/dev/**"]
  network:
    connect: ["127.0.0.1:{p4}", "[::1]:{p6}"]
    listen: ["127.0.0.1:*"]
  devices: []
"#,
                p4 = site.port(),
                p6 = site.port6()
            ),
        )
        .unwrap();
        std::fs::write(
            site.root.join("config.yaml"),
            format!(
                r#"profiles: ["{root}/enforced.yaml"]
guards:
  protected_paths:
    - paths: ["{root}/models/**"]
      read: [enforced]
      write: []
      enforce: true
"#,
                root = site.root.display()
            ),
        )
        .unwrap();
        site
    }

    fn port(&self) -> u16 {
        self.allowed.local_addr().unwrap().port()
    }

    fn port6(&self) -> u16 {
        self.allowed6.local_addr().unwrap().port()
    }

    fn start(&self, dry_run: bool) -> Monitor {
        let config = self.root.join("config.yaml").to_string_lossy().into_owned();
        let mut args = vec!["run", "--config", &config];
        if dry_run {
            args.push("--dry-run");
        }
        Monitor::start(&args)
    }

    /// Runs one step of the server (or, ungoverned, the same code without its marker) in
    /// the monitor's cgroup; returns its JSON report (empty if it was killed) and exit code.
    fn run(&self, monitor: &Monitor, step: &str, governed: bool) -> (Value, Option<i32>) {
        let other = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let script = if governed {
            self.root.join("fake_enforced_server.py")
        } else {
            let plain = self.root.join("plain_client.py");
            std::fs::write(&plain, SERVER).unwrap();
            plain
        };
        let output = monitor
            .cgroup
            .command(PYTHON)
            .arg("-B")
            .arg(script)
            .arg(&self.root)
            .args([
                self.port().to_string(),
                self.port6().to_string(),
                other.to_string(),
            ])
            .arg(step)
            .stdout(Stdio::piped())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        let report = serde_json::from_str(text.trim()).unwrap_or(Value::Null);
        (report, output.status.code())
    }
}

impl Site {
    /// The governed server's `flood` step, started with its stdin and stdout piped: it prints
    /// the outcome of its first connect (to a closed port, so refused when governed), then
    /// waits for a line on stdin before it floods.
    fn flood(&self, monitor: &Monitor) -> std::process::Child {
        let other = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        monitor
            .cgroup
            .command(PYTHON)
            .arg("-B")
            .arg(self.root.join("fake_enforced_server.py"))
            .arg(&self.root)
            .args([
                self.port().to_string(),
                self.port6().to_string(),
                other.to_string(),
            ])
            .arg("flood")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The exit status of a program killed at exec: -9 when it was the process run (or a shell
/// that execs its last command in place), 137 from a shell that forked it.
fn killed(returncode: &Value) -> bool {
    *returncode == -9 || *returncode == 137
}

fn alert(monitor: &Monitor, rule: &'static str, action: &'static str) -> Value {
    monitor.wait_for(&format!("{rule} ({action})"), WAIT, move |v| {
        v["security_rule.name"] == rule && v["monitor.action"] == action
    })
}

#[test]
fn enforce_mode_refuses_in_the_kernel() {
    let site = Site::new("enforce");
    let monitor = site.start(false);

    let (report, code) = site.run(&monitor, "net", true);
    assert_eq!(code, Some(0));
    assert_eq!(report["connect_allowed"], "ok", "{report}");
    assert_eq!(report["connect_other"], "EPERM", "{report}");
    assert_eq!(report["connect6_allowed"], "ok", "{report}");
    assert_eq!(report["connect6_other"], "EPERM", "{report}");
    assert_eq!(report["gpu"], "EPERM", "{report}");
    let denied = alert(&monitor, "connect-not-allowed", "denied");
    assert_eq!(denied["monitor.enforcement.mechanism"], "cgroup-sock-addr");
    assert_eq!(denied["error.type"], "EPERM");
    assert_eq!(denied["monitor.profile"], "enforced");
    let device = alert(&monitor, "device-not-allowed", "denied");
    assert_eq!(device["device.class"], "nvidia");

    // `sh -c touch ...`: the shell is let through and judged by what it runs; `touch` is
    // not allowed, so it is killed at its exec, before it runs.
    let (report, _) = site.run(&monitor, "exec", true);
    assert!(
        killed(&report["exec_returncode"]),
        "the shell's program was killed: {report}"
    );
    assert!(!site.root.join("MARKER").exists(), "touch never ran");
    let killed = alert(&monitor, "exec-not-allowed", "killed");
    assert_eq!(
        killed["process.executable.path"],
        real_path("/usr/bin/touch")
    );

    let (report, code) = site.run(&monitor, "write", true);
    assert_eq!(code, Some(0));
    assert_eq!(report["write"], "EPERM", "{report}");
    assert_eq!(report["truncate"], "EPERM", "{report}");
    assert_eq!(
        std::fs::metadata(site.root.join("models/model.bin"))
            .unwrap()
            .len(),
        "weights".len() as u64,
        "the file kept its bytes"
    );
    let write = alert(&monitor, "protected-file-write", "denied");
    assert_eq!(write["monitor.enforcement.mechanism"], "fanotify");
    assert_eq!(
        write["file.path"],
        site.root
            .join("models/model.bin")
            .to_string_lossy()
            .as_ref()
    );

    // An ungoverned process in the same cgroup is untouched.
    let (report, code) = site.run(&monitor, "net", false);
    assert_eq!(code, Some(0));
    assert_eq!(report["connect_other"], "ECONNREFUSED", "{report}");
    assert_eq!(report["gpu"], "ENXIO", "{report}");
}

#[test]
fn dry_run_only_reports() {
    let site = Site::new("dryrun");
    let monitor = site.start(true);
    let (report, _) = site.run(&monitor, "net", true);
    assert_eq!(report["connect_other"], "ECONNREFUSED", "{report}");
    assert_eq!(report["connect6_other"], "ECONNREFUSED", "{report}");
    assert_eq!(report["gpu"], "ENXIO", "{report}");
    alert(&monitor, "connect-not-allowed", "would-deny");
    alert(&monitor, "device-not-allowed", "would-deny");
    let (report, _) = site.run(&monitor, "exec", true);
    assert_eq!(report["exec_returncode"], 0, "{report}");
    assert!(site.root.join("MARKER").exists());
    alert(&monitor, "exec-not-allowed", "would-kill");
    let (report, code) = site.run(&monitor, "write", true);
    assert_eq!((report["write"].as_str(), code), (Some("ok"), Some(0)));
    alert(&monitor, "protected-file-write", "would-deny");
    std::thread::sleep(Duration::from_millis(300));
    let lines = monitor.stop();
    assert!(
        lines
            .iter()
            .filter(|v| v["event.name"] == "monitor.alert")
            .all(|v| v["monitor.action"] != "denied" && v["monitor.action"] != "killed"),
        "dry run never acts"
    );
}

/// A watched-set entry left under the pid of a governed process that is gone (user space can
/// write one for a child whose exit it has not read yet) must not govern the next, unrelated
/// process given that pid: the kernel's fork hook drops it. The stale entry is planted with
/// bpftool (a copy of a governed process's own entry) and the pid taken with `ns_last_pid`.
#[test]
fn a_stale_watch_entry_does_not_govern_the_next_process_with_its_pid() {
    use std::io::{BufRead as _, BufReader};
    let site = Site::new("stalewatch");
    let monitor = site.start(false);
    // A governed server, held after its first (refused) connect: its entry is the template.
    let mut server = site.flood(&monitor);
    let mut first = String::new();
    BufReader::new(server.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first.trim(), "EPERM", "the server is governed");
    let hex = |n: u32| -> Vec<String> {
        n.to_le_bytes()
            .iter()
            .map(|b| format!("0x{b:02x}"))
            .collect()
    };
    let lookup = |pid: u32| -> Option<Vec<String>> {
        let mut args = vec!["-j", "map", "lookup", "name", "WATCHED", "key"];
        let key = hex(pid);
        args.extend(key.iter().map(String::as_str));
        let output = std::process::Command::new("bpftool")
            .args(&args)
            .output()
            .unwrap();
        let value: Value = serde_json::from_slice(&output.stdout).ok()?;
        let bytes = value["value"].as_array()?;
        Some(
            bytes
                .iter()
                .map(|b| b.as_str().unwrap().to_owned())
                .collect(),
        )
    };
    let entry = lookup(server.id()).expect("the governed server's watched-set entry");
    let _ = server.kill();
    let _ = server.wait();

    // A program the profile does not allow: were the stale entry taken for the new process's,
    // the kernel would kill it at its exec, before user space has read its fork.
    let mut taken = None;
    for _ in 0..20 {
        // A pid ahead of the last one given (wrapping at pid_max) that no live process has.
        let read = |file: &str| -> u32 {
            std::fs::read_to_string(file)
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        let (last, max) = (
            read("/proc/sys/kernel/ns_last_pid"),
            read("/proc/sys/kernel/pid_max"),
        );
        let mut target = last + 500;
        while target >= max || std::path::Path::new(&format!("/proc/{target}")).exists() {
            target = if target >= max { 1000 } else { target + 1 };
        }
        let mut args = vec!["map", "update", "name", "WATCHED", "key"];
        let key = hex(target);
        args.extend(key.iter().map(String::as_str));
        args.push("value");
        args.extend(entry.iter().map(String::as_str));
        tests::bpftool(&args);
        assert_eq!(lookup(target), Some(entry.clone()), "the stale entry is in");
        std::fs::write("/proc/sys/kernel/ns_last_pid", (target - 1).to_string()).unwrap();
        let child = monitor.cgroup.command("/bin/true").spawn().unwrap();
        let pid = child.id();
        let output = child.wait_with_output().unwrap();
        if pid != target {
            // Another process on the host took the pid first: try again.
            let mut args = vec!["map", "delete", "name", "WATCHED", "key"];
            args.extend(key.iter().map(String::as_str));
            let _ = std::process::Command::new("bpftool").args(&args).output();
            continue;
        }
        taken = Some(output);
        break;
    }
    let output = taken.expect("a child given the planted pid within 20 tries");
    assert!(
        output.status.success(),
        "an unrelated process given a stale entry's pid ran as it would without the monitor: {:?}",
        output.status
    );
}

/// Writes `profile` and a config naming it into `dir`, and starts the monitor on them.
fn start_with_profile(dir: &std::path::Path, profile: &str) -> Monitor {
    tests::start_with_profiles(dir, profile, "", &[])
}

/// Runs `program ARGS` in the monitor's cgroup; returns its JSON report (`Null` if it was
/// killed) and its exit code.
fn report_of(monitor: &Monitor, program: &str, args: &[&str]) -> (Value, Option<i32>) {
    let output = monitor
        .cgroup
        .command(program)
        .args(args)
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let report = serde_json::from_str(text.trim()).unwrap_or(Value::Null);
    (report, output.status.code())
}

/// An exec-not-allowed alert with this action about this executable.
fn exec_alert(monitor: &Monitor, action: &'static str, path: String) -> Value {
    monitor.wait_for(
        &format!("exec-not-allowed ({action}) of {path}"),
        WAIT,
        move |v| {
            v["security_rule.name"] == "exec-not-allowed"
                && v["monitor.action"] == action
                && v["process.executable.path"] == path.as_str()
        },
    )
}

/// A monitor with one enforce-mode profile: the venv's python running a script whose
/// arguments hold `script`, allowed to run only what its templated glob
/// (`${python.prefix}/bin/python*`) names.
fn start_venv_server(dir: &std::path::Path, venv: &std::path::Path, script: &str) -> Monitor {
    start_with_profile(
        dir,
        &format!(
            r#"name: venvserver
selector:
  executables: ["{venv}/bin/python3"]
  args: ["*{script}*"]
mode: enforce
allow:
  exec: ["${{python.prefix}}/bin/python*"]
  files:
    read: ["/**"]
    write: ["/tmp/**"]
"#,
            venv = venv.display()
        ),
    )
}

/// Runs `dir/SCRIPT DIR VENV` on the venv's python in the monitor's cgroup (see
/// [`report_of`]).
fn run_venv_script(
    monitor: &Monitor,
    dir: &std::path::Path,
    venv: &std::path::Path,
    script: &str,
) -> (Value, Option<i32>) {
    report_of(
        monitor,
        &venv.join("bin/python3").to_string_lossy(),
        &[
            "-B",
            &dir.join(script).to_string_lossy(),
            &dir.to_string_lossy(),
            &venv.to_string_lossy(),
        ],
    )
}

const VENV_SERVER: &str = r#"
import json, os, subprocess, sys
root, venv = sys.argv[1], sys.argv[2]
py = os.path.join(venv, "bin", "python3")
out = {}
def run(name, argv):
    out[name] = subprocess.run(argv, stdout=subprocess.DEVNULL).returncode
run("venv_python", [py, "-c", "pass"])
# A grandchild: the child's child keeps the instance, inherited in the kernel at each fork.
run("venv_python_nested", [py, "-c", "import subprocess, sys; sys.exit(0 if subprocess.run([%r, '-c', 'pass']).returncode == 0 else 3)" % py])
run("id", ["/usr/bin/id"])
# The way around: a name the glob matches, made after the globs were expanded, for a file
# they did not name: a symlink to a disallowed program, and a hard link to one.
os.symlink("/usr/bin/id", os.path.join(venv, "bin", "python-sym"))
run("symlink", [os.path.join(venv, "bin", "python-sym")])
os.link(os.path.join(root, "realid"), os.path.join(venv, "bin", "python-hl"))
run("hardlink", [os.path.join(venv, "bin", "python-hl")])
print(json.dumps(out), flush=True)
"#;

/// A venv-like layout: `bin/python3` a copy of the system interpreter, `pyvenv.cfg` naming
/// its home, as `python3 -m venv --copies` makes.
fn make_venv(dir: &std::path::Path) -> PathBuf {
    let venv = dir.join("venv");
    std::fs::create_dir_all(venv.join("bin")).unwrap();
    std::fs::copy(real_path(PYTHON), venv.join("bin/python3")).unwrap();
    std::fs::write(
        venv.join("pyvenv.cfg"),
        "home = /usr/bin\ninclude-system-site-packages = false\n",
    )
    .unwrap();
    venv
}

#[test]
fn templated_exec_globs_are_decided_in_the_kernel() {
    let dir = TempDir::new("venv-enforce");
    let venv = make_venv(&dir.0);
    std::fs::copy("/usr/bin/id", dir.0.join("realid")).unwrap();
    std::fs::write(dir.0.join("fake_venv_server.py"), VENV_SERVER).unwrap();
    // Only the template names the venv's interpreter: no literal glob allows it.
    let monitor = start_venv_server(&dir.0, &venv, "fake_venv_server");
    let (report, code) = run_venv_script(&monitor, &dir.0, &venv, "fake_venv_server.py");
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(
        report["venv_python"], 0,
        "the venv's own python runs: {report}"
    );
    assert_eq!(
        report["venv_python_nested"], 0,
        "also from a child: {report}"
    );
    assert_eq!(report["id"], -9, "{report}");
    assert_eq!(report["symlink"], -9, "a symlink made later: {report}");
    assert_eq!(report["hardlink"], -9, "a hard link made later: {report}");
    exec_alert(&monitor, "killed", real_path("/usr/bin/id"));
    // The hard link's path matches the glob: the kernel's verdict on its inode is reported.
    exec_alert(
        &monitor,
        "killed",
        venv.join("bin/python-hl").to_string_lossy().into_owned(),
    );
    let lines = monitor.stop();
    let python = venv.join("bin/python3").to_string_lossy().into_owned();
    assert!(
        !lines
            .iter()
            .any(|v| v["security_rule.name"] == "exec-not-allowed"
                && v["process.executable.path"] == python.as_str()),
        "the venv's python is allowed"
    );
}

const UDP_SERVER: &str = r#"
import ctypes, json, os, socket, struct, sys
allowed, other = int(sys.argv[1]), int(sys.argv[2])
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except OSError as e:
        out[name] = {1: "EPERM", 111: "ECONNREFUSED"}.get(e.errno, str(e.errno))
def udp():
    return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
connected = udp()
attempt("udp_connect_allowed", lambda: connected.connect(("127.0.0.1", allowed)))
# A connected socket's datagrams carry no address: no sendmsg program sees them, the egress
# program does (send, and sendmmsg without an address).
attempt("connected_send", lambda: connected.send(b"x"))
attempt("connected_write", lambda: os.write(connected.fileno(), b"x"))
connected6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
attempt("udp6_connect_allowed", lambda: connected6.connect(("::1", allowed)))
attempt("connected6_send", lambda: connected6.send(b"x"))
attempt("udp_connect_other", lambda: udp().connect(("127.0.0.1", other)))
attempt("udp6_connect_other", lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).connect(("::1", other)))
# udp_connect allows a connect, which sends nothing; a datagram with an address is judged
# against `connect`: sendto without connect, and sendmmsg (another syscall).
attempt("sendto", lambda: udp().sendto(b"x", ("127.0.0.1", allowed)))
libc = ctypes.CDLL(None, use_errno=True)
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
class msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(iovec)),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]
class mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]
def sendmmsg():
    s = udp()
    addr = ctypes.create_string_buffer(struct.pack("=H", socket.AF_INET) + struct.pack("!H", allowed) + socket.inet_aton("127.0.0.1") + bytes(8), 16)
    data = ctypes.create_string_buffer(b"x", 1)
    iov = iovec(ctypes.cast(data, ctypes.c_void_p), 1)
    m = mmsghdr()
    m.hdr.name = ctypes.cast(addr, ctypes.c_void_p)
    m.hdr.namelen = 16
    m.hdr.iov = ctypes.pointer(iov)
    m.hdr.iovlen = 1
    if libc.sendmmsg(s.fileno(), ctypes.byref(m), 1, 0) < 0:
        e = ctypes.get_errno()
        raise OSError(e, "sendmmsg")
attempt("sendmmsg", sendmmsg)
# The same port over TCP: udp_connect is for UDP sockets only.
attempt("tcp_connect", lambda: socket.create_connection(("127.0.0.1", allowed)).close())
print(json.dumps(out), flush=True)
"#;

/// The destinations of [`UDP_SERVER`]: `allowed`, a port held for UDP (a receiver that must
/// get nothing) and TCP (a listener, so that a TCP connect let through would succeed), and
/// `other`; the script in the test's directory.
struct UdpSite {
    _tcp: TcpListener,
    receiver: std::net::UdpSocket,
    _other: std::net::UdpSocket,
    allowed: u16,
    other: u16,
    script: PathBuf,
}

impl UdpSite {
    fn new(dir: &std::path::Path) -> UdpSite {
        let script = dir.join("fake_udp_server.py");
        std::fs::write(&script, UDP_SERVER).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let allowed = tcp.local_addr().unwrap().port();
        let receiver = std::net::UdpSocket::bind(("127.0.0.1", allowed)).unwrap();
        receiver.set_nonblocking(true).unwrap();
        let other = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        UdpSite {
            _tcp: tcp,
            receiver,
            allowed,
            other: other.local_addr().unwrap().port(),
            _other: other,
            script,
        }
    }

    /// Runs the script in the monitor's cgroup: its report (it must exit 0).
    fn run(&self, monitor: &Monitor) -> Value {
        let (report, code) = report_of(
            monitor,
            PYTHON,
            &[
                "-B",
                &self.script.to_string_lossy(),
                &self.allowed.to_string(),
                &self.other.to_string(),
            ],
        );
        assert_eq!(code, Some(0), "{report}");
        report
    }

    fn assert_nothing_received(&self) {
        assert!(
            self.receiver.recv_from(&mut [0u8; 16]).is_err(),
            "no datagram reached the destination"
        );
    }

    /// The alert of a connected socket's datagram to `allowed`, refused.
    fn connected_send_refused(&self, monitor: &Monitor) -> Value {
        let allowed = self.allowed;
        monitor.wait_for("the connected socket's datagram refused", WAIT, move |v| {
            v["security_rule.name"] == "connect-not-allowed"
                && v["monitor.action"] == "denied"
                && v["monitor.network.operation"] == "send"
                && v["network.peer.port"] == allowed
        })
    }
}

#[test]
fn udp_connect_is_decided_in_the_kernel() {
    let dir = TempDir::new("udp-enforce");
    let udp = UdpSite::new(&dir.0);
    let (allowed, other_port) = (udp.allowed, udp.other);
    let monitor = start_with_profile(
        &dir.0,
        &format!(
            r#"name: udpserver
selector:
  executables: ["/usr/bin/python3*"]
  args: ["*fake_udp_server*"]
mode: enforce
allow:
  exec: ["/usr/bin/python3*"]
  files:
    read: ["/**"]
  network:
    udp_connect: ["127.0.0.1:{allowed}", "[::1]:{allowed}"]
"#
        ),
    );
    let report = udp.run(&monitor);
    assert_eq!(report["udp_connect_allowed"], "ok", "{report}");
    assert_eq!(report["connected_send"], "EPERM", "{report}");
    assert_eq!(report["connected_write"], "EPERM", "{report}");
    assert_eq!(report["udp6_connect_allowed"], "ok", "{report}");
    assert_eq!(report["connected6_send"], "EPERM", "{report}");
    assert_eq!(report["udp_connect_other"], "EPERM", "{report}");
    assert_eq!(report["udp6_connect_other"], "EPERM", "{report}");
    assert_eq!(report["sendto"], "EPERM", "{report}");
    assert_eq!(report["sendmmsg"], "EPERM", "{report}");
    assert_eq!(report["tcp_connect"], "EPERM", "{report}");
    udp.assert_nothing_received();
    let denied = monitor.wait_for("the UDP connect refused", WAIT, move |v| {
        v["security_rule.name"] == "connect-not-allowed"
            && v["monitor.action"] == "denied"
            && v["network.transport"] == "udp"
            && v["monitor.network.operation"] == "connect"
            && v["network.peer.port"] == other_port
    });
    assert_eq!(denied["monitor.enforcement.mechanism"], "cgroup-sock-addr");
    let send = udp.connected_send_refused(&monitor);
    assert_eq!(send["network.transport"], "udp", "{send}");
    // Refused on the packet by the egress program (no address for a sock_addr program to
    // judge): the alert names that hook, for IPv4 and IPv6.
    for peer in ["127.0.0.1", "::1"] {
        let egress = monitor.wait_for("the egress hook's refusal", WAIT, move |v| {
            v["security_rule.name"] == "connect-not-allowed"
                && v["monitor.network.operation"] == "send"
                && v["network.peer.address"] == peer
                && v["network.peer.port"] == allowed
                && v["monitor.enforcement.mechanism"] == "cgroup-skb-egress"
        });
        assert_eq!(egress["monitor.action"], "denied", "{egress}");
        assert_eq!(egress["error.type"], "EPERM", "{egress}");
    }
    let lines = monitor.stop();
    assert!(
        !lines
            .iter()
            .any(|v| v["security_rule.name"] == "connect-not-allowed"
                && v["network.peer.port"] == allowed
                && v["monitor.network.operation"] == "connect"
                && v["network.transport"] == "udp"),
        "the allowed UDP connect raised nothing"
    );
    // A connect is refused on its address: never labelled with the egress hook.
    assert!(
        !lines.iter().any(
            |v| v["monitor.enforcement.mechanism"] == "cgroup-skb-egress"
                && v["monitor.network.operation"] != "send"
        ),
        "only datagrams are refused by the egress hook"
    );
}

const SHELL_SERVER: &str = r#"
import json, os, subprocess, sys
root, port = sys.argv[1], sys.argv[2]
out = {}
def run(name, argv):
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out[name] = r.returncode
    # `id` prints this: it ran.
    out[name + "_ran_id"] = b"uid=" in r.stdout
run("sh_c_allowed", ["/bin/sh", "-c", "lscpu"])
out["shell_true"] = subprocess.run("lscpu > /dev/null", shell=True).returncode
run("sh_c_id", ["/bin/sh", "-c", "id"])
run("sh_c_id_forked", ["/bin/sh", "-c", "id; true"])
run("sh_c_exec_id", ["/bin/sh", "-c", "exec id"])
run("bash_c_id", ["/bin/bash", "-c", "id"])
run("sh_ec_id", ["/bin/sh", "-ec", "id"])
run("env_sh_c", ["/usr/bin/env", "sh", "-c", "lscpu"])
run("sh_script", ["/bin/sh", os.path.join(root, "script.sh")])
run("shell_copy", [os.path.join(root, "mysh"), "-c", "lscpu"])
# Builtins only: nothing to refuse at exec; a redirection to a file is the file's rules'.
run("sh_c_builtin", ["/bin/sh", "-c", "echo x > " + os.path.join(root, "BUILTIN")])
# bash's /dev/tcp is a real connect: the cgroup program refuses it.
run("bash_dev_tcp", ["/bin/bash", "-c", "echo x > /dev/tcp/127.0.0.1/" + port])
print(json.dumps(out), flush=True)
"#;

#[test]
fn sh_c_is_judged_by_what_the_shell_runs() {
    let dir = TempDir::new("shell-enforce");
    std::fs::write(dir.0.join("fake_shell_server.py"), SHELL_SERVER).unwrap();
    std::fs::write(dir.0.join("script.sh"), "lscpu\n").unwrap();
    std::fs::copy(real_path("/bin/sh"), dir.0.join("mysh")).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let monitor = start_with_profile(
        &dir.0,
        r#"name: shellserver
selector:
  executables: ["/usr/bin/python3*"]
  args: ["*fake_shell_server*"]
mode: enforce
allow:
  exec: ["/usr/bin/python3*", "/usr/bin/lscpu"]
  files:
    read: ["/**"]
    write: ["/tmp/**", "/dev/null"]
"#,
    );
    let script = dir.0.join("fake_shell_server.py");
    let (report, code) = report_of(
        &monitor,
        PYTHON,
        &[
            "-B",
            &script.to_string_lossy(),
            &dir.0.to_string_lossy(),
            &port.to_string(),
        ],
    );
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["sh_c_allowed"], 0, "sh -c lscpu runs: {report}");
    assert_eq!(report["shell_true"], 0, "shell=True too: {report}");
    // The program the shell runs is killed at its exec (in the shell's process when it
    // execs its last command in place, in a child it forked otherwise).
    for step in ["sh_c_id", "sh_c_exec_id", "bash_c_id", "sh_ec_id"] {
        assert!(killed(&report[step]), "{step}: {report}");
    }
    for step in [
        "sh_c_id",
        "sh_c_id_forked",
        "sh_c_exec_id",
        "bash_c_id",
        "sh_ec_id",
    ] {
        assert_eq!(report[format!("{step}_ran_id")], false, "{step}: {report}");
    }
    // `id; true`: the shell goes on after its child was killed.
    assert_eq!(report["sh_c_id_forked"], 0, "{report}");
    // `env` is a program like any other: not allowed, killed before it runs the shell.
    assert_eq!(report["env_sh_c"], -9, "{report}");
    // A shell without -c, and a copy of a shell elsewhere, are execs like any other.
    assert_eq!(report["sh_script"], -9, "{report}");
    assert_eq!(report["shell_copy"], -9, "{report}");
    // Builtins only: it cannot be refused after the fact (reported when the shell exits).
    assert_eq!(report["sh_c_builtin"], 0, "{report}");
    assert!(dir.0.join("BUILTIN").exists());
    assert_ne!(report["bash_dev_tcp"], 0, "{report}");

    let id = real_path("/usr/bin/id");
    exec_alert(&monitor, "killed", id);
    exec_alert(&monitor, "killed", real_path("/usr/bin/env"));
    exec_alert(
        &monitor,
        "killed",
        dir.0.join("mysh").to_string_lossy().into_owned(),
    );
    exec_alert(&monitor, "alert", real_path("/bin/sh"));
    monitor.wait_for("bash's /dev/tcp connect refused", WAIT, move |v| {
        v["security_rule.name"] == "connect-not-allowed"
            && v["monitor.action"] == "denied"
            && v["network.peer.port"] == port
    });
    let script = dir.0.join("script.sh").to_string_lossy().into_owned();
    let sh_script = monitor.wait_for("sh script.sh killed", WAIT, |v| {
        v["security_rule.name"] == "exec-not-allowed"
            && v["monitor.action"] == "killed"
            && tests::has_arg(v, &script)
    });
    assert_eq!(sh_script["process.executable.path"], real_path("/bin/sh"));
    let lines = monitor.stop();
    let lscpu = real_path("/usr/bin/lscpu");
    let refused: Vec<&Value> = lines
        .iter()
        .filter(|v| {
            v["security_rule.name"] == "exec-not-allowed"
                && (v["process.executable.path"] == lscpu.as_str()
                    || v["monitor.action"] == "killed"
                        && tests::has_arg(v, "-c")
                        && [real_path("/bin/sh"), real_path("/bin/bash")].contains(
                            &v["process.executable.path"]
                                .as_str()
                                .unwrap_or("")
                                .to_owned(),
                        ))
        })
        .collect();
    assert!(
        refused.is_empty(),
        "neither lscpu nor a `sh -c` shell was refused: {refused:?}"
    );
}

/// A governed venv server that runs, for each line on its stdin, that program and prints its
/// exit status.
const VENV_LOOP_SERVER: &str = r#"
import subprocess, sys
print("ready", flush=True)
for line in sys.stdin:
    print(subprocess.run(line.split()).returncode, flush=True)
"#;

/// A venv whose `bin` also holds copies of the interpreter under `names` (all allowed by
/// the templated glob), a monitor governing its python running `SCRIPT.py` (the attack),
/// and the script's report (it must exit 0).
fn venv_attack(script: &str, code: &str, names: &[&str]) -> (TempDir, PathBuf, Monitor, Value) {
    let dir = TempDir::new(script);
    let venv = make_venv(&dir.0);
    for name in names {
        std::fs::copy(real_path(PYTHON), venv.join("bin").join(name)).unwrap();
    }
    let file = format!("{script}.py");
    std::fs::write(dir.0.join(&file), code).unwrap();
    let monitor = start_venv_server(&dir.0, &venv, script);
    let (report, status) = run_venv_script(&monitor, &dir.0, &venv, &file);
    assert_eq!(status, Some(0), "{report}");
    (dir, venv, monitor, report)
}

const RENAME_SERVER: &str = r#"
import json, os, shutil, subprocess, sys
root, venv = sys.argv[1], sys.argv[2]
out = {}
def run(name, argv):
    out[name] = subprocess.run(argv, stdout=subprocess.DEVNULL).returncode
bindir = os.path.join(venv, "bin")
run("allowed", [os.path.join(bindir, "python3.11"), "-c", "pass"])
freed = {os.stat(os.path.join(bindir, n)).st_ino for n in ("python3.11", "python3.12")}
# Rename-over: a disallowed program renamed onto a name the glob expanded to.
shutil.copy("/usr/bin/id", os.path.join(root, "staged-id"))
os.rename(os.path.join(root, "staged-id"), os.path.join(bindir, "python3.11"))
run("rename_over", [os.path.join(bindir, "python3.11")])
# Inode reuse: the allowed file deleted, a disallowed one written under its name; on ext4
# the new file gets a freed inode number, an allowed file's (the report says whether).
victim = os.path.join(bindir, "python3.12")
os.unlink(victim)
shutil.copy("/usr/bin/id", victim)
out["reused_inode"] = os.stat(victim).st_ino in freed
run("inode_reuse", [victim])
# In place: an allowed file's content overwritten (the same inode and generation).
overwritten = os.path.join(bindir, "python3.13")
with open("/usr/bin/id", "rb") as src, open(overwritten, "r+b") as dst:
    dst.truncate(0)
    dst.write(src.read())
run("in_place", [overwritten])
print(json.dumps(out), flush=True)
"#;

/// The way around a templated `allow.exec` glob expanded to inodes: after the expansion, a
/// disallowed program renamed over an allowed name (a new inode: refused), an allowed file
/// deleted and a disallowed one written in its place, which ext4 gives the same inode number
/// (refused too: the kernel compares the inode's generation and change time as well), and
/// an allowed file overwritten in place (its change time moved: refused).
#[test]
fn a_program_renamed_or_rewritten_over_an_allowed_name_is_killed() {
    let (_dir, venv, monitor, report) = venv_attack(
        "fake_venv_rename",
        RENAME_SERVER,
        &["python3.11", "python3.12", "python3.13"],
    );
    assert_eq!(report["allowed"], 0, "the expanded name runs: {report}");
    assert_eq!(report["rename_over"], -9, "{report}");
    assert_eq!(report["inode_reuse"], -9, "{report}");
    assert_eq!(report["in_place"], -9, "{report}");
    if report["reused_inode"] != true {
        eprintln!("note: the file system of the temp dir gave no freed inode number again; only ext4-like reuse makes the second attack meaningful");
    }
    exec_alert(
        &monitor,
        "killed",
        venv.join("bin/python3.11").to_string_lossy().into_owned(),
    );
    exec_alert(
        &monitor,
        "killed",
        venv.join("bin/python3.12").to_string_lossy().into_owned(),
    );
}

const SETVERSION_SERVER: &str = r#"
import fcntl, json, os, shutil, struct, subprocess, sys
root, venv = sys.argv[1], sys.argv[2]
FS_IOC_GETVERSION, FS_IOC_SETVERSION = 0x80087601, 0x40087602
def generation(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        return struct.unpack("=i", fcntl.ioctl(fd, FS_IOC_GETVERSION, bytes(8))[:4])[0]
    finally:
        os.close(fd)
victim = os.path.join(venv, "bin", "python3.12")
before = (os.stat(victim).st_ino, generation(victim))
os.unlink(victim)
shutil.copy("/usr/bin/id", victim)
# The way around the generation check: the new file's owner sets the old generation.
fd = os.open(victim, os.O_RDONLY)
try:
    fcntl.ioctl(fd, FS_IOC_SETVERSION, struct.pack("=q", before[1]))
    out = {"setversion": "ok"}
except OSError as e:
    out = {"setversion": e.errno}
os.close(fd)
out["same_file_to_the_kernel"] = (os.stat(victim).st_ino, generation(victim)) == before
out["inode_reuse"] = subprocess.run([victim], stdout=subprocess.DEVNULL).returncode
print(json.dumps(out), flush=True)
"#;

/// The way around the generation check of
/// [`a_program_renamed_or_rewritten_over_an_allowed_name_is_killed`]: the owner of the new
/// file sets the deleted file's generation on it (`FS_IOC_SETVERSION`, which ext4 allows
/// without `metadata_csum`, as here). The kernel sees the same inode number and generation,
/// but not the same change time: refused.
#[test]
fn a_rewritten_program_given_the_old_generation_is_killed() {
    let (_dir, _venv, _monitor, report) =
        venv_attack("fake_venv_setversion", SETVERSION_SERVER, &["python3.12"]);
    assert_eq!(report["inode_reuse"], -9, "{report}");
}

/// A reload expands the templated globs anew (a program installed since is allowed), and
/// the kernel judges a running server by its profile's new id when a profile added before
/// it moved it.
#[test]
fn a_reload_expands_templated_exec_globs_anew() {
    use std::io::{BufRead as _, BufReader, Write as _};
    let dir = TempDir::new("venv-reload");
    let venv = make_venv(&dir.0);
    std::fs::write(dir.0.join("fake_venv_loop.py"), VENV_LOOP_SERVER).unwrap();
    std::fs::write(
        dir.0.join("other.yaml"),
        "name: other\nselector:\n  executables: [\"/nonexistent/bin/other\"]\nallow:\n  exec: [\"/**\"]\n",
    )
    .unwrap();
    let monitor = start_venv_server(&dir.0, &venv, "fake_venv_loop");
    let python = venv.join("bin/python3").to_string_lossy().into_owned();
    let mut server = monitor
        .cgroup
        .command(&python)
        .arg("-B")
        .arg(dir.0.join("fake_venv_loop.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = server.stdin.take().unwrap();
    let mut output = BufReader::new(server.stdout.take().unwrap());
    let mut line = String::new();
    output.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    // Selected and resolved by user space a few milliseconds after its exec.
    std::thread::sleep(Duration::from_millis(500));
    let mut run = |command: &str| -> String {
        writeln!(input, "{command}").unwrap();
        let mut line = String::new();
        output.read_line(&mut line).unwrap();
        line.trim().to_owned()
    };
    let new_python = venv.join("bin/python3-new");
    assert_eq!(run(&format!("{python} -c pass")), "0");
    std::fs::copy(&python, &new_python).unwrap();
    let new_python = new_python.to_string_lossy().into_owned();
    assert_eq!(
        run(&format!("{new_python} -c pass")),
        "-9",
        "installed after the expansion"
    );

    // `other` first: `venvserver` moves from id 1 to id 2.
    std::fs::write(
        dir.0.join("config.yaml"),
        format!(
            "profiles: [\"{}\", \"{}\"]\n",
            dir.0.join("other.yaml").display(),
            dir.0.join("profiles.yaml").display()
        ),
    )
    .unwrap();
    monitor.signal(libc::SIGHUP);
    monitor.wait_for("the reload", Duration::from_secs(15), |v| {
        v["security_rule.name"] == "config-changed"
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(run(&format!("{python} -c pass")), "0");
    assert_eq!(run(&format!("{new_python} -c pass")), "0", "expanded anew");
    assert_eq!(
        run("/usr/bin/id"),
        "-9",
        "still enforced, by its own profile"
    );
    drop(input);
    let _ = server.wait();
    exec_alert(&monitor, "killed", real_path("/usr/bin/id"));
}

/// Reserve before kill: with the priority ring full (the monitor stopped, 4000 refused
/// connects, each a priority record), a forbidden exec is still killed before the program
/// runs, and its report, which found no room, is counted in the kernel and raised as an
/// `events-lost` alert (exec, `ring-buffer-full`) once the monitor reads again.
#[test]
fn a_full_priority_ring_still_kills_and_counts_the_lost_report() {
    use std::io::{BufRead as _, BufReader, Write as _};

    let site = Site::new("ringfull");
    let monitor = site.start(false);
    let mut child = site.flood(&monitor);
    /// Kills the flooding process and lets the monitor go on, also when the test panics.
    struct Guard(std::process::Child, i32);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            // SAFETY: a signal to the monitor this test started.
            unsafe { libc::kill(self.1, libc::SIGCONT) };
        }
    }
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    let guard = Guard(child, monitor.pid() as i32);
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert_eq!(first.trim(), "EPERM", "governed: its connects are refused");

    // SAFETY: a signal to the monitor this test started (the guard resumes it).
    assert_eq!(unsafe { libc::kill(guard.1, libc::SIGSTOP) }, 0);
    writeln!(stdin, "go").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(guard.1, libc::SIGCONT) };
    let report: Value = serde_json::from_str(rest.trim()).unwrap_or(Value::Null);
    assert_eq!(report["refused"], 4000, "{report}");
    assert!(
        killed(&report["exec_returncode"]),
        "killed although its report found no room (the shell itself, or `touch` under it): {report}"
    );
    assert!(!site.root.join("MARKER").exists(), "touch never ran");
    let lost = monitor.wait_for("events-lost (exec, ring-buffer-full)", WAIT, |v| {
        v["security_rule.name"] == "events-lost"
            && v["monitor.loss.event_kind"] == "exec"
            && v["monitor.loss.reason"] == "ring-buffer-full"
    });
    assert!(lost["monitor.loss.count"].as_u64().unwrap() >= 1, "{lost}");
    assert_eq!(lost["monitor.loss.stage"], "kernel");
    drop(guard);
}

/// `BPF_CGROUP_INET_EGRESS`, as the kernel numbers attach types.
const ATTACH_INET_EGRESS: &str = "1";

/// The cgroup programs attached to the monitor's test cgroup, as `bpftool cgroup show` lists
/// them (the attach type and the program's name on each line).
fn cgroup_programs(monitor: &Monitor) -> String {
    let (_, output) = tests::bpftool(&["cgroup", "show", &monitor.cgroup.path.to_string_lossy()]);
    tests::stdout(&output)
}

/// Waits until `udp_egress` is attached to the monitor's cgroup (`true`) or not (`false`).
fn wait_udp_egress(monitor: &Monitor, attached: bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let programs = cgroup_programs(monitor);
        if programs.contains("udp_egress") == attached {
            return programs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "udp_egress still {} after 15 s:\n{programs}\nstderr:\n{}",
            if attached { "not attached" } else { "attached" },
            monitor.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `udp_egress` costs every packet that leaves the cgroup, so it is attached only while a
/// profile enforces `udp_connect`: not with an enforcing profile without it (and the
/// self-check does not call it missing), attached by the reload that adds `udp_connect`
/// (a connected socket's datagram is then refused, for real), detached by the one that
/// takes it away.
#[test]
fn udp_egress_is_attached_only_while_a_profile_enforces_udp_connect() {
    let dir = TempDir::new("udp-egress-follows");
    let udp = UdpSite::new(&dir.0);
    let (allowed, other_port) = (udp.allowed, udp.other);
    let profile = |udp_connect: &str| {
        format!(
            r#"name: udpserver
selector:
  executables: ["/usr/bin/python3*"]
  args: ["*fake_udp_server*"]
mode: enforce
allow:
  exec: ["/usr/bin/python3*"]
  files:
    read: ["/**"]
  network:
    connect: ["127.0.0.1:{other_port}"]
{udp_connect}"#
        )
    };
    let write_profile = |text: String| std::fs::write(dir.0.join("profiles.yaml"), text).unwrap();
    let monitor = tests::start_with_profiles(&dir.0, &profile(""), "", &["--self-check-secs", "1"]);
    let programs = cgroup_programs(&monitor);
    assert!(
        programs.contains("connect4"),
        "the other cgroup programs are attached: {programs}"
    );
    assert!(
        !programs.contains("udp_egress"),
        "no profile enforces udp_connect: {programs}"
    );
    // Self-checks run meanwhile: the program detached on purpose is not missing to them.
    std::thread::sleep(Duration::from_millis(2500));

    write_profile(profile(&format!(
        "    udp_connect: [\"127.0.0.1:{allowed}\", \"[::1]:{allowed}\"]\n"
    )));
    monitor.signal(libc::SIGHUP);
    monitor.wait_for("the reload adding udp_connect", WAIT, |v| {
        v["security_rule.name"] == "config-changed"
    });
    wait_udp_egress(&monitor, true);
    let report = udp.run(&monitor);
    assert_eq!(report["udp_connect_allowed"], "ok", "{report}");
    assert_eq!(report["connected_send"], "EPERM", "{report}");
    assert_eq!(report["connected_write"], "EPERM", "{report}");
    udp.assert_nothing_received();
    udp.connected_send_refused(&monitor);
    // Attached at a reload, it is filed for the tamper hook and followed by the self-check:
    // detached by another process, it is reported and attached again.
    let link = monitor.cgroup_link(ATTACH_INET_EGRESS);
    tests::bpftool(&["link", "detach", "id", &link]);
    monitor.wait_for("the detach of udp_egress reported", WAIT, |v| {
        v["security_rule.name"] == "monitor-tampered"
            && v["monitor.bpf.command"] == "BPF_LINK_DETACH"
            && v["monitor.bpf.object.name"] == "udp_egress"
    });
    monitor.wait_for("udp_egress attached again", WAIT, |v| {
        v["security_rule.name"] == "monitor-tampered"
            && v["monitor.tamper.operation"] == "self-check"
            && v.to_string().contains("re-attached udp_egress")
    });
    wait_udp_egress(&monitor, true);

    // Taken away again: detached, and from then on no self-check calls it missing.
    let before = monitor.lines().len();
    write_profile(profile(""));
    monitor.signal(libc::SIGHUP);
    wait_udp_egress(&monitor, false);
    std::thread::sleep(Duration::from_millis(2500));
    let lines = monitor.stop();
    let missing: Vec<&Value> = lines[before..]
        .iter()
        .filter(|v| {
            v["security_rule.name"] == "monitor-tampered" && v.to_string().contains("udp_egress")
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the self-check called the detached program missing: {missing:?}"
    );
}
