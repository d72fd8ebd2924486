//! End-to-end tests of enforcement on the real kernel, in a cgroup made for each test: an
//! enforce-mode profile makes the kernel refuse connects (EPERM), device opens (EPERM), execs
//! (SIGKILL before the program runs) and opens for writing of an enforcing guard's files
//! (EPERM from fanotify); `--dry-run` only reports; ungoverned processes are untouched.

use std::{net::TcpListener, path::PathBuf, process::Stdio, time::Duration};

use serde_json::Value;
use tests::{marker, Monitor, WAIT};

const PYTHON: &str = "/usr/bin/python3";

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

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
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

    let (report, _) = site.run(&monitor, "exec", true);
    assert_eq!(
        report["exec_returncode"], -9,
        "the shell was killed: {report}"
    );
    assert!(!site.root.join("MARKER").exists(), "the shell never ran");
    let killed = alert(&monitor, "exec-not-allowed", "killed");
    assert_eq!(
        killed["process.executable.path"],
        std::fs::canonicalize("/bin/sh")
            .unwrap()
            .to_string_lossy()
            .as_ref()
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

/// Reserve before kill: with the priority ring full (the monitor stopped, 4000 refused
/// connects, each a priority record), a forbidden exec is still killed before the program
/// runs, and its report, which found no room, is counted in the kernel and raised as an
/// `events-lost` alert (exec, `ring-buffer-full`) once the monitor reads again.
#[test]
fn a_full_priority_ring_still_kills_and_counts_the_lost_report() {
    use std::io::{BufRead as _, BufReader, Write as _};

    let site = Site::new("ringfull");
    let monitor = site.start(false);
    let other = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = monitor
        .cgroup
        .command(PYTHON)
        .arg("-B")
        .arg(site.root.join("fake_enforced_server.py"))
        .arg(&site.root)
        .args([
            site.port().to_string(),
            site.port6().to_string(),
            other.to_string(),
        ])
        .arg("flood")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
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
    assert_eq!(
        report["exec_returncode"], -9,
        "killed although its report found no room: {report}"
    );
    assert!(!site.root.join("MARKER").exists(), "the shell never ran");
    let lost = monitor.wait_for("events-lost (exec, ring-buffer-full)", WAIT, |v| {
        v["security_rule.name"] == "events-lost"
            && v["monitor.loss.event_kind"] == "exec"
            && v["monitor.loss.reason"] == "ring-buffer-full"
    });
    assert!(lost["monitor.loss.count"].as_u64().unwrap() >= 1, "{lost}");
    assert_eq!(lost["monitor.loss.stage"], "kernel");
    drop(guard);
}
