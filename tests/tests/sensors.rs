//! End-to-end tests of the file, network and GPU-device sensors on the real kernel. Each test
//! starts the real `monitor trace`, has a child (Python, for readable syscalls) do the
//! syscalls, and asserts on the JSON lines.

use std::{
    net::{TcpListener, TcpStream},
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tests::{marker, Monitor, WAIT};

const PYTHON: &str = "/usr/bin/python3";

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(marker(name));
        std::fs::create_dir_all(&dir).unwrap();
        // The kernel reports the real path: resolve /tmp if it is a symlink.
        Scratch(std::fs::canonicalize(&dir).unwrap())
    }

    fn path(&self, rel: &str) -> String {
        self.0.join(rel).to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a Python snippet (isolated, no site: few unrelated opens) and requires success.
fn python(script: &str) {
    python_in(Command::new(PYTHON), script);
}

fn python_in(mut command: Command, script: &str) {
    let output = command
        .args(["-I", "-S", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn file_event(monitor: &Monitor, what: &str, path: &str) -> Value {
    let path = path.to_owned();
    monitor.wait_for(what, WAIT, move |v| {
        v["event.kind"] == "file" && v["file.path"] == path.as_str()
    })
}

fn self_pid() -> String {
    std::process::id().to_string()
}

#[test]
fn relative_dirfd_and_symlinked_opens_resolve_to_absolute_paths() {
    let dir = Scratch::new("files");
    std::fs::create_dir_all(dir.0.join("sub")).unwrap();
    std::fs::create_dir_all(dir.0.join("real")).unwrap();
    std::fs::write(dir.0.join("real/f.txt"), "x").unwrap();
    std::fs::write(dir.0.join("x.txt"), "x").unwrap();
    symlink(dir.0.join("real"), dir.0.join("link")).unwrap();
    let monitor = Monitor::start(&["trace", "--pid", &self_pid()]);
    python(&format!(
        r#"
import os
os.chdir({sub:?})
open("../rel.txt", "w").close()
d = os.open({dir:?}, os.O_RDONLY)
os.close(os.open("x.txt", os.O_RDONLY, dir_fd=d))
open({link:?}).close()
try:
    open({missing:?})
except FileNotFoundError:
    pass
os.chdir({dir:?})
try:
    open("sub/../nothing-here")
except FileNotFoundError:
    pass
"#,
        sub = dir.path("sub"),
        dir = dir.path(""),
        link = dir.path("link/f.txt"),
        missing = dir.path("missing"),
    ));
    let rel = file_event(&monitor, "the relative open", &dir.path("rel.txt"));
    assert_eq!(rel["monitor.file.access"], "write");
    assert_eq!(
        rel["monitor.file.flags"],
        serde_json::json!(["create", "truncate"])
    );
    assert!(rel["monitor.result.fd"].as_u64().is_some());
    let at = file_event(&monitor, "the openat with a dirfd", &dir.path("x.txt"));
    assert_eq!(at["monitor.file.access"], "read");
    // Through the symlinked directory: the kernel's path is the real one.
    file_event(
        &monitor,
        "the open through a symlink",
        &dir.path("real/f.txt"),
    );
    let missing = file_event(&monitor, "the failed open", &dir.path("missing"));
    assert_eq!(missing["error.type"], "ENOENT");
    assert!(missing.get("monitor.result.fd").is_none());
    // A failed relative open: cwd walked in the kernel, `..` removed.
    let relative_missing = file_event(
        &monitor,
        "the failed relative open",
        &dir.path("nothing-here"),
    );
    assert_eq!(relative_missing["error.type"], "ENOENT");
    assert_eq!(
        relative_missing["process.executable.path"],
        std::fs::canonicalize(PYTHON)
            .unwrap()
            .to_string_lossy()
            .as_ref()
    );
}

#[test]
fn truncate_rename_unlink_and_chmod_are_write_events() {
    let dir = Scratch::new("changes");
    std::fs::write(dir.0.join("a"), "data").unwrap();
    std::fs::write(dir.0.join("t"), "data").unwrap();
    let monitor = Monitor::start(&["trace", "--pid", &self_pid()]);
    python(&format!(
        r#"
import os
fd = os.open({t:?}, os.O_WRONLY | os.O_TRUNC)
os.close(fd)
os.rename({a:?}, {b:?})
os.chmod({b:?}, 0o600)
os.truncate({b:?}, 1)
os.unlink({b:?})
"#,
        t = dir.path("t"),
        a = dir.path("a"),
        b = dir.path("b"),
    ));
    let trunc = file_event(&monitor, "the O_TRUNC open", &dir.path("t"));
    assert_eq!(trunc["monitor.file.access"], "write");
    assert_eq!(trunc["monitor.file.flags"], serde_json::json!(["truncate"]));
    let rename = file_event(&monitor, "the rename", &dir.path("a"));
    assert_eq!(rename["monitor.file.operation"], "rename");
    assert_eq!(rename["monitor.file.target.path"], dir.path("b"));
    assert_eq!(rename["monitor.file.access"], "write");
    for op in ["chmod", "truncate", "unlink"] {
        let b = dir.path("b");
        let event = monitor.wait_for(op, WAIT, move |v| {
            v["event.kind"] == "file"
                && v["file.path"] == b.as_str()
                && v["monitor.file.operation"] == op
        });
        assert_eq!(event["monitor.file.access"], "write");
        assert_eq!(event["monitor.result"], 0);
    }
}

#[test]
fn ipv4_ipv6_refused_accept_and_udp() {
    let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let v6 = TcpListener::bind("[::1]:0").unwrap();
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (p4, p6) = (
        v4.local_addr().unwrap().port(),
        v6.local_addr().unwrap().port(),
    );
    let monitor = Monitor::start(&["trace", "--pid", &self_pid()]);
    python(&format!(
        r#"
import socket
for family, addr in ((socket.AF_INET, ("127.0.0.1", {p4})), (socket.AF_INET6, ("::1", {p6}))):
    s = socket.socket(family)
    s.connect(addr)
    s.close()
s = socket.socket()
try:
    s.connect(("127.0.0.1", {closed}))
except ConnectionRefusedError:
    pass
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(3):
    u.sendto(b"x", ("127.0.0.1", 53))
"#
    ));
    let c4 = monitor.wait_for("the IPv4 connect", WAIT, |v| {
        v["monitor.network.operation"] == "connect" && v["network.peer.port"] == p4
    });
    assert_eq!(c4["network.peer.address"], "127.0.0.1");
    assert_eq!(c4["network.type"], "ipv4");
    assert_eq!(c4["network.transport"], "tcp");
    assert_eq!(c4["monitor.result"], 0);
    // This process is outside the cgroup the monitor's cgroup programs are attached to: the
    // connect tracepoint reported it, reading the address from its memory after the fact.
    assert_eq!(c4["monitor.unverified"], true, "{c4}");
    let c6 = monitor.wait_for("the IPv6 connect", WAIT, |v| {
        v["monitor.network.operation"] == "connect" && v["network.peer.port"] == p6
    });
    assert_eq!(c6["network.peer.address"], "::1");
    assert_eq!(c6["network.type"], "ipv6");
    let refused = monitor.wait_for("the refused connect", WAIT, |v| {
        v["monitor.network.operation"] == "connect" && v["network.peer.port"] == closed
    });
    assert_eq!(refused["error.type"], "ECONNREFUSED");
    let udp = monitor.wait_for("the UDP datagram", WAIT, |v| {
        v["monitor.network.operation"] == "send" && v["network.peer.port"] == 53
    });
    assert_eq!(udp["network.transport"], "udp");
    assert_eq!(udp["network.peer.address"], "127.0.0.1");

    // accept shows the peer; listen shows the local port.
    let server = std::thread::spawn(|| {
        python(
            r#"
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
open("/dev/null").close()
sys.stdout.write(str(s.getsockname()[1]))
"#,
        );
    });
    server.join().unwrap();
    let listen = monitor.wait_for("the listen", WAIT, |v| {
        v["monitor.network.operation"] == "listen"
    });
    assert_eq!(listen["network.local.address"], "127.0.0.1");
    assert!(listen["network.local.port"].as_u64().unwrap() > 0);
    let bind = monitor.wait_for("the bind", WAIT, |v| {
        v["monitor.network.operation"] == "bind"
    });
    assert_eq!(bind["network.local.port"], 0);

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let accepter = std::thread::spawn(move || {
        python(&format!(
            r#"
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", {port}))
s.listen()
c, _ = s.accept()
c.close()
"#
        ));
    });
    let client = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(stream) => break stream,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let client_port = client.local_addr().unwrap().port();
    accepter.join().unwrap();
    let accept = monitor.wait_for("the accept", WAIT, move |v| {
        v["monitor.network.operation"] == "accept" && v["network.peer.port"] == client_port
    });
    assert_eq!(accept["network.peer.address"], "127.0.0.1");
    let lines = monitor.stop();
    let datagrams = lines
        .iter()
        .filter(|v| v["monitor.network.operation"] == "send" && v["network.peer.port"] == 53)
        .count();
    assert_eq!(datagrams, 1, "a destination is reported once per process");
}

fn mknod(path: &Path, major: u32, minor: u32) {
    let c = std::ffi::CString::new(path.to_string_lossy().into_owned()).unwrap();
    // SAFETY: valid path; creating a device node as root.
    let ret = unsafe {
        libc::mknod(
            c.as_ptr(),
            libc::S_IFCHR | 0o666,
            libc::makedev(major, minor),
        )
    };
    assert_eq!(
        ret,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

#[test]
fn unwatched_process_opening_an_nvidia_node_is_reported() {
    let dir = Scratch::new("gpu");
    let node = dir.0.join("nvidia0");
    mknod(&node, 195, 0);
    // Nothing is watched: the device sensor is host-wide (here: the test cgroup).
    let monitor = Monitor::start(&["trace", "--exe", "/nothing/watched"]);
    python_in(
        monitor.cgroup.command(PYTHON),
        &format!(
            r#"
try:
    open({node:?}, "rb")
except OSError as e:
    assert e.errno == 6, e  # ENXIO: no driver, but the attempt is the signal
"#,
            node = node.to_string_lossy()
        ),
    );
    let device = monitor.wait_for("the NVIDIA open", WAIT, |v| v["event.kind"] == "device");
    assert_eq!(device["device.class"], "nvidia");
    assert_eq!(device["device.major"], 195);
    assert_eq!(device["device.minor"], 0);
    // Reported by the device hook, before the driver's open (which fails with ENXIO here):
    // the attempt and the hook's decision, not the open's result.
    assert_eq!(device["monitor.decision"], "allowed");
    assert!(device.get("error.type").is_none(), "{device}");
    assert_eq!(device["file.path"], node.to_string_lossy().as_ref());
    // Once: the open's exit does not report it again.
    std::thread::sleep(Duration::from_millis(300));
    let lines = monitor.stop();
    let opens = lines
        .iter()
        .filter(|v| {
            v["event.kind"] == "device" || v["file.path"] == node.to_string_lossy().as_ref()
        })
        .count();
    assert_eq!(opens, 1, "{lines:?}");
}

#[test]
fn ioctl_counts_add_up_exactly() {
    let dir = Scratch::new("ioctl");
    let node = dir.0.join("accel0");
    // A node that opens (the null device's numbers), declared an accelerator for the test.
    mknod(&node, 1, 3);
    let monitor = Monitor::start(&[
        "trace",
        "--exe",
        "/nothing/watched",
        "--accel-major",
        "1=accel",
        "--ioctl-summary-secs",
        "1",
    ]);
    let tag = marker("ioctl");
    python_in(
        monitor.cgroup.command(PYTHON),
        &format!(
            r#"
import fcntl, os, time
fd = os.open({node:?}, os.O_RDWR)
def ioctl(cmd):
    try:
        fcntl.ioctl(fd, cmd, bytearray(8))
    except OSError:
        pass  # the null device answers ENOTTY; the call is what counts
IOWR = lambda t, nr, size: (3 << 30) | (size << 16) | (ord(t) << 8) | nr
for _ in range(7):
    ioctl(IOWR("F", 42, 8))
for _ in range(3):
    ioctl(IOWR("F", 7, 4))
ioctl(IOWR("F", 7, 16))  # another size, same type and number: counted together
os.close(fd)
# {tag}
"#,
            node = node.to_string_lossy()
        ),
    );
    let open = monitor.wait_for("the accelerator open", WAIT, |v| {
        v["event.kind"] == "device"
    });
    assert_eq!(open["device.class"], "accel");
    let pid = open["process.pid"].clone();
    // The process has exited: its last counts are reported with its exit (and the monitor
    // reports whatever is left when it stops).
    let lines = {
        let pid = pid.clone();
        monitor.wait_for("a GPU ioctl summary", WAIT, move |v| {
            v["event.kind"] == "gpu-ioctls" && v["process.pid"] == pid
        });
        monitor.stop()
    };
    let mut counts = std::collections::BTreeMap::new();
    for summary in lines
        .iter()
        .filter(|v| v["event.kind"] == "gpu-ioctls" && v["process.pid"] == pid)
    {
        for c in summary["monitor.gpu.ioctls"].as_array().unwrap() {
            assert_eq!(c["device.class"], "accel");
            assert_eq!(c["ioctl.type.char"], "F");
            *counts.entry(c["ioctl.nr"].as_u64().unwrap()).or_insert(0) +=
                c["count"].as_u64().unwrap();
        }
    }
    assert_eq!(counts, [(7, 4), (42, 7)].into_iter().collect(), "{lines:?}");
}

#[test]
fn unwatched_opens_outside_protected_dirs_produce_nothing() {
    let dir = Scratch::new("protect");
    std::fs::create_dir_all(dir.0.join("models/llama")).unwrap();
    std::fs::create_dir_all(dir.0.join("other")).unwrap();
    std::fs::write(dir.0.join("models/llama/weights.bin"), "w").unwrap();
    std::fs::write(dir.0.join("other/notes.txt"), "n").unwrap();
    std::fs::write(dir.0.join("other/stray.safetensors"), "w").unwrap();
    symlink(dir.0.join("models"), dir.0.join("other/shortcut")).unwrap();
    let protected = dir.path("models");
    let monitor = Monitor::start(&[
        "trace",
        "--exe",
        "/nothing/watched",
        "--protect",
        &protected,
    ]);
    python(&format!(
        r#"
import os
open({other:?}).close()
open({stray:?}, "rb").close()
os.chdir({other_dir:?})
open("shortcut/llama/weights.bin", "rb").close()
"#,
        other = dir.path("other/notes.txt"),
        stray = dir.path("other/stray.safetensors"),
        other_dir = dir.path("other"),
    ));
    // Through a symlink and a relative path: the inode check still sees the protected dir.
    let weights = file_event(
        &monitor,
        "the protected open",
        &dir.path("models/llama/weights.bin"),
    );
    assert_eq!(weights["monitor.file.protected"], true);
    assert_eq!(weights["monitor.file.access"], "read");
    let lines = monitor.stop();
    let other = dir.path("other");
    let noise: Vec<&Value> = lines
        .iter()
        .filter(|v| {
            v["event.kind"] == "file"
                && v["file.path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with(&other))
        })
        .collect();
    assert!(
        noise.is_empty(),
        "unwatched opens outside protected dirs: {noise:?}"
    );
    assert!(
        lines
            .iter()
            .all(|v| v["event.kind"] != "file" || v["monitor.file.protected"] == true),
        "only protected files are reported for unwatched processes"
    );
}
