//! End-to-end tests of 32-bit (ia32) syscalls made by a 64-bit process with `int $0x80`.
//! The kernel's per-syscall tracepoints skip compat syscalls, so before the sensors moved to
//! the raw `sys_enter`/`sys_exit` tracepoints these opens, unlinks, reads of another
//! process's memory and ptrace attaches were invisible. Each test performs the access for real (the bytes are
//! read) and asserts the alert. Skipped, with a message, on a host without ia32 emulation.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tests::{marker, Monitor, WAIT};

/// A scratch tree holding the ia32 helper and the configuration; removed on drop.
struct Site {
    root: PathBuf,
}

impl Site {
    fn new(name: &str) -> Site {
        let root = std::env::temp_dir().join(marker(name));
        std::fs::create_dir_all(root.join("allowed")).unwrap();
        let root = std::fs::canonicalize(root).unwrap();
        Site { root }
    }

    fn path(&self, name: &str) -> String {
        self.root.join(name).to_string_lossy().into_owned()
    }

    /// Compiles the helper (static, non-PIE: its buffers lie below 4 GiB, where ia32
    /// pointers can name them); `None` when this host runs no ia32 syscalls.
    fn helper(&self) -> Option<String> {
        let out = self.path("compat_i80");
        let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compat_i80.c");
        let status = Command::new("cc")
            .args([
                "-O2",
                "-static",
                "-no-pie",
                "-fomit-frame-pointer",
                "-o",
                &out,
                source,
            ])
            .status()
            .expect("failed to run cc: install a C compiler (apt-get install -y gcc libc6-dev)");
        assert!(
            status.success(),
            "failed to compile {source} (static: needs libc6-dev's libc.a)"
        );
        let probe = Command::new(&out).arg("probe").output().unwrap();
        let text = String::from_utf8_lossy(&probe.stdout);
        if !probe.status.success() || !text.starts_with("ia32 ok") {
            eprintln!(
                "SKIPPED: this host runs no ia32 syscalls (no CONFIG_IA32_EMULATION, or ia32_emulation=0): {} {text}",
                probe.status
            );
            return None;
        }
        Some(out)
    }

    fn start(&self, profile: &str) -> Monitor {
        tests::start_with_profiles(&self.root, profile, "builtin_profiles: false\n", &[])
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A child killed and reaped when dropped, also when a test panics.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn alerts(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|v| v["event.name"] == "monitor.alert")
        .collect()
}

#[test]
fn ia32_opens_and_unlink_by_a_governed_process_are_judged() {
    let site = Site::new("compat-open");
    let Some(helper) = site.helper() else {
        return;
    };
    std::fs::write(site.root.join("secret-open.txt"), "hello-open").unwrap();
    std::fs::write(site.root.join("secret-openat.txt"), "hello-openat").unwrap();
    std::fs::write(site.root.join("victim.txt"), "gone").unwrap();
    let monitor = site.start(&format!(
        r#"name: compat-server
selector:
  executables: ["{helper}"]
mode: alert
allow:
  files:
    read: ["{root}/allowed/**"]
"#,
        root = site.root.display()
    ));
    let output = monitor
        .cgroup
        .command(&helper)
        .arg("open")
        .arg(site.path("secret-open.txt"))
        .arg(site.path("secret-openat.txt"))
        .arg(site.path("victim.txt"))
        .output()
        .unwrap();
    let pid_text = String::from_utf8_lossy(&output.stdout).into_owned();
    // The opens really happened, through the ia32 entry (upper register halves garbage).
    assert!(pid_text.contains("data=hello-open\n"), "{pid_text}");
    assert!(pid_text.contains("data=hello-openat\n"), "{pid_text}");
    assert!(pid_text.contains("unlink ret=0\n"), "{pid_text}");
    assert!(!site.root.join("victim.txt").exists());
    for name in ["secret-open.txt", "secret-openat.txt"] {
        let path = site.path(name);
        let alert = monitor.wait_for(&format!("file-read-not-allowed on {name}"), WAIT, |v| {
            v["security_rule.name"] == "file-read-not-allowed" && v["file.path"] == path.as_str()
        });
        assert_eq!(alert["monitor.profile"], "compat-server", "{alert}");
        assert_eq!(alert["process.executable.path"], helper.as_str(), "{alert}");
    }
    let victim = site.path("victim.txt");
    let alert = monitor.wait_for("file-write-not-allowed on the unlink", WAIT, |v| {
        v["security_rule.name"] == "file-write-not-allowed"
            && v["file.path"] == victim.as_str()
            && v["monitor.file.operation"] == "unlink"
    });
    assert_eq!(alert["monitor.profile"], "compat-server", "{alert}");
    std::thread::sleep(Duration::from_millis(300));
    let lines = monitor.stop();
    assert!(
        alerts(&lines).iter().all(|a| matches!(
            a["security_rule.name"].as_str(),
            Some("file-read-not-allowed" | "file-write-not-allowed")
        )),
        "only the opens and the unlink alert: {lines:?}"
    );
}

#[test]
fn ia32_memory_access_to_a_governed_process_is_reported() {
    let site = Site::new("compat-memory");
    let Some(helper) = site.helper() else {
        return;
    };
    let monitor = site.start(
        r#"name: compat-target
selector:
  args: ["*compat-governed-target*"]
mode: alert
allow:
  files:
    read: ["/**"]
"#,
    );
    let secret = format!("SECRET{}", std::process::id());
    let mut target = Reaped(
        monitor
            .cgroup
            .command(&helper)
            .args(["target", &secret, "compat-governed-target"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(target.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [target_pid, addr, len] = fields[..] else {
        panic!("target printed {line}");
    };
    // The exec event reaches user space, which puts the process under its profile.
    std::thread::sleep(Duration::from_millis(1000));
    let mut accessors: Vec<u64> = Vec::new();
    for (method, operation, expected) in [
        ("vm_readv", "process_vm_readv", secret.as_str()),
        ("ptrace", "ptrace", &secret[..4]),
    ] {
        let mut command = Command::new(&helper);
        command.args([method, target_pid, addr]);
        if method == "vm_readv" {
            command.arg(len);
        }
        let child = command.stdout(Stdio::piped()).spawn().unwrap();
        let pid = child.id();
        accessors.push(u64::from(pid));
        let output = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && text.contains(&format!("data={expected}")),
            "{method} really read the target's memory: {text}"
        );
        let alert = monitor.wait_for(&format!("{operation} by {pid}"), WAIT, |v| {
            v["security_rule.name"] == "process-memory-access"
                && v["process.pid"] == pid
                && v["monitor.memory.operation"] == operation
        });
        assert_eq!(alert["severity"], "critical", "{alert}");
        assert_eq!(
            alert["monitor.target.process.pid"].to_string(),
            target_pid,
            "{alert}"
        );
        assert_eq!(alert["monitor.target.profile"], "compat-target", "{alert}");
        if method == "ptrace" {
            for request in ["PTRACE_ATTACH", "PTRACE_PEEKDATA"] {
                monitor.wait_for(&format!("{request} by {pid}"), WAIT, |v| {
                    v["process.pid"] == pid && v["monitor.ptrace.request"] == request
                });
            }
        }
    }
    drop(target);
    let lines = monitor.stop();
    // The processes of this test raise nothing else (other alerts on the host, such as a
    // `monitor-object-opened` by someone's bpftool, are not this test's business).
    let ours: Vec<u64> = accessors
        .iter()
        .copied()
        .chain(target_pid.parse().ok())
        .collect();
    assert!(
        alerts(&lines)
            .iter()
            .filter(|a| a["process.pid"]
                .as_u64()
                .is_some_and(|pid| ours.contains(&pid)))
            .all(|a| a["security_rule.name"] == "process-memory-access"),
        "only the accesses alert: {lines:?}"
    );
}
