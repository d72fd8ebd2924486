//! End-to-end tests of profiles, guards and alerts: the real `monitor run` with a test
//! configuration, a scripted fake inference server that does only what its profile allows,
//! then one deviation per scenario, each with exactly the expected alert.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tests::{marker, monitor_bin, Monitor, WAIT};

const PYTHON: &str = "/usr/bin/python3";

/// A scratch tree with the server, its model store and the configuration; removed on drop.
struct Site {
    root: PathBuf,
    upstream: TcpListener,
}

const SERVER: &str = r#"
import os, socket, subprocess, sys
root = sys.argv[1]
upstream = int(sys.argv[2])
scenario = sys.argv[3]
other = int(sys.argv[4])
# What the profile allows: load the model, listen, call the upstream, write temp files.
# (The "connect" scenario loads no model: a connect after reading one is exfiltration.)
if scenario != "connect":
    with open(os.path.join(root, "models", "model.bin"), "rb") as f:
        f.read()
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
s = socket.create_connection(("127.0.0.1", upstream))
s.close()
with open(os.path.join(root, "tmp", "scratch-%d" % os.getpid()), "w") as f:
    f.write("x")
if scenario == "shell":
    subprocess.run(["/bin/sh", "-c", "true"])
elif scenario == "shell-allowed":
    # What servers do: a program the profile allows, through `/bin/sh -c` (in place, and in
    # children the shell forks).
    subprocess.run("uname -s > /dev/null", shell=True)
    subprocess.run(["/bin/sh", "-c", "uname; uname -r"], stdout=subprocess.DEVNULL)
elif scenario == "shell-other":
    subprocess.run("id > /dev/null", shell=True)
elif scenario == "shell-nested":
    # The way around: a shell that runs a shell whose command is builtins only.
    subprocess.run(["/bin/sh", "-c", "/bin/sh -c 'echo x > /dev/null'; true"])
elif scenario == "write":
    with open(os.path.join(root, "app", "planted.py"), "w") as f:
        f.write("x")
elif scenario == "connect":
    try:
        socket.create_connection(("127.0.0.1", other), timeout=1).close()
    except OSError:
        pass
elif scenario == "exfil":
    try:
        socket.create_connection(("127.0.0.2", other), timeout=1).close()
    except OSError:
        pass
elif scenario == "repeat":
    import time
    time.sleep(0.5)  # steady state: the first open and connect have been judged by now
    for _ in range(100):
        with open(os.path.join(root, "models", "model.bin"), "rb") as f:
            f.read(1)
        socket.create_connection(("127.0.0.1", upstream)).close()
elif scenario == "burst":
    for _ in range(25):
        with open(os.path.join(root, "app", "planted.py"), "w") as f:
            f.write("x")
"#;

impl Site {
    fn new(name: &str, dedup_secs: u32) -> Site {
        let root = std::env::temp_dir().join(marker(name));
        for dir in ["models", "app", "tmp", "profiles"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        let root = std::fs::canonicalize(root).unwrap();
        std::fs::write(root.join("models/model.bin"), vec![7u8; 4096]).unwrap();
        std::fs::write(root.join("app/fake_inference_server.py"), SERVER).unwrap();
        let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
        let site = Site { root, upstream };
        std::fs::write(site.root.join("profiles/fakeserve.yaml"), site.profile()).unwrap();
        std::fs::write(
            site.root.join("config.yaml"),
            format!(
                r#"profiles: ["{root}/profiles"]
guards:
  protected_paths:
    - paths: ["{root}/models/**"]
      read: [fakeserve]
      write: []
  gpu:
    allow: [fakeserve]
dedup_window_secs: {dedup_secs}
"#,
                root = site.root.display()
            ),
        )
        .unwrap();
        site
    }

    fn profile(&self) -> String {
        format!(
            r#"name: fakeserve
selector:
  executables: ["/usr/bin/python3*"]
  args: ["*fake_inference_server*"]
mode: alert
allow:
  exec: ["/usr/bin/uname"]
  files:
    read: ["/usr/**", "/etc/**", "/proc/**", "/sys/**", "/dev/**", "{root}/app/**", "{root}/models/**"]
    write: ["{root}/tmp/**", "/dev/null"]
  network:
    connect: ["127.0.0.1:{upstream}"]
    listen: ["127.0.0.1:*"]
  devices: []
"#,
            root = self.root.display(),
            upstream = self.upstream_port()
        )
    }

    fn upstream_port(&self) -> u16 {
        self.upstream.local_addr().unwrap().port()
    }

    fn config(&self) -> String {
        self.root.join("config.yaml").to_string_lossy().into_owned()
    }

    fn start(&self) -> Monitor {
        Monitor::start(&["run", "--config", &self.config()])
    }

    /// Runs the fake server with a scenario; returns its pid.
    fn serve(&self, scenario: &str) -> u32 {
        self.serve_with(Command::new(PYTHON), scenario)
    }

    /// Runs the fake server from `command` (e.g. in the monitor's cgroup, where its connects
    /// are judged by the cgroup programs on the kernel's copy of the address).
    fn serve_with(&self, mut command: Command, scenario: &str) -> u32 {
        // A port nobody listens on, for the connects the profile does not allow.
        let other = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = command
            .arg("-B")
            .arg(self.root.join("app/fake_inference_server.py"))
            .arg(&self.root)
            .arg(self.upstream_port().to_string())
            .arg(scenario)
            .arg(other.to_string())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(child.wait().unwrap().success(), "the fake server failed");
        pid
    }

    fn path(&self, rel: &str) -> String {
        self.root.join(rel).to_string_lossy().into_owned()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn alerts(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|v| v["event.name"] == "monitor.alert")
        .collect()
}

/// Lets the monitor process what happened, then stops it and returns its alerts.
fn settle_and_stop(monitor: Monitor) -> Vec<Value> {
    std::thread::sleep(Duration::from_millis(500));
    monitor.stop()
}

#[test]
fn allowed_behaviour_raises_nothing() {
    let site = Site::new("quiet", 10);
    let monitor = site.start();
    site.serve("none");
    site.serve("none");
    let lines = settle_and_stop(monitor);
    let alerts = alerts(&lines);
    assert!(
        alerts.is_empty(),
        "alerts for allowed behaviour: {alerts:#?}"
    );
}

fn one_alert(site: &Site, scenario: &str, rule: &str) -> Value {
    let monitor = site.start();
    let pid = site.serve(scenario);
    let rule_owned = rule.to_owned();
    monitor.wait_for(rule, WAIT, move |v| {
        v["security_rule.name"] == rule_owned.as_str()
    });
    let lines = settle_and_stop(monitor);
    let alerts = alerts(&lines);
    assert_eq!(alerts.len(), 1, "exactly one alert: {alerts:#?}");
    let alert = alerts[0].clone();
    assert_eq!(alert["security_rule.name"], rule);
    assert_eq!(alert["monitor.profile"], "fakeserve");
    assert_eq!(alert["monitor.action"], "alert");
    assert_eq!(alert["monitor.count"], 1);
    assert!(alert["log.record.uid"].is_string());
    // The actor: the server, or its child (the shell).
    let actor = alert["process.pid"].as_u64().unwrap() as u32;
    assert!(
        actor == pid || alert["process.parent_pid"] == pid,
        "{alert}"
    );
    alert
}

#[test]
fn spawning_a_shell_is_exec_not_allowed() {
    let site = Site::new("shell", 10);
    let alert = one_alert(&site, "shell", "exec-not-allowed");
    assert_eq!(alert["severity"], "high");
    assert_eq!(
        alert["process.executable.path"],
        std::fs::canonicalize("/bin/sh")
            .unwrap()
            .to_string_lossy()
            .as_ref()
    );
    assert_eq!(
        alert["process.parent.executable.path"],
        std::fs::canonicalize(PYTHON)
            .unwrap()
            .to_string_lossy()
            .as_ref()
    );
}

/// `/bin/sh -c` is judged by what the shell runs: an allowed program through it is quiet;
/// a program not allowed is one alert naming that program (not the shell); a nested shell
/// whose command is builtins only is the shell's alert.
#[test]
fn sh_c_is_judged_by_what_the_shell_runs() {
    let site = Site::new("shell-c", 10);
    let monitor = site.start();
    site.serve("shell-allowed");
    let lines = settle_and_stop(monitor);
    let quiet = alerts(&lines);
    assert!(quiet.is_empty(), "alerts for sh -c uname: {quiet:#?}");

    // One alert, for the program (dash forks it: its parent is the shell, not the server).
    let monitor = site.start();
    site.serve("shell-other");
    monitor.wait_for("exec-not-allowed", WAIT, |v| {
        v["security_rule.name"] == "exec-not-allowed"
    });
    let lines = settle_and_stop(monitor);
    let other = alerts(&lines);
    assert_eq!(other.len(), 1, "exactly one alert: {other:#?}");
    let alert = other[0];
    assert_eq!(alert["monitor.profile"], "fakeserve");
    assert_eq!(
        alert["process.executable.path"],
        std::fs::canonicalize("/usr/bin/id")
            .unwrap()
            .to_string_lossy()
            .as_ref()
    );

    let monitor = site.start();
    site.serve("shell-nested");
    monitor.wait_for("exec-not-allowed", WAIT, |v| {
        v["security_rule.name"] == "exec-not-allowed"
    });
    let lines = settle_and_stop(monitor);
    let alerts = alerts(&lines);
    assert_eq!(alerts.len(), 1, "exactly one alert: {alerts:#?}");
    assert_eq!(
        alerts[0]["process.executable.path"],
        std::fs::canonicalize("/bin/sh")
            .unwrap()
            .to_string_lossy()
            .as_ref()
    );
}

#[test]
fn writing_outside_allowed_paths_is_file_write_not_allowed() {
    let site = Site::new("write", 10);
    let alert = one_alert(&site, "write", "file-write-not-allowed");
    assert_eq!(alert["file.path"], site.path("app/planted.py"));
    assert_eq!(alert["monitor.file.access"], "write");
}

#[test]
fn connecting_to_a_port_not_allowed_is_connect_not_allowed() {
    let site = Site::new("connect", 10);
    let alert = one_alert(&site, "connect", "connect-not-allowed");
    assert_eq!(alert["network.peer.address"], "127.0.0.1");
    assert_ne!(alert["network.peer.port"], site.upstream_port());
}

#[test]
fn reading_a_model_then_connecting_out_is_model_exfiltration() {
    let site = Site::new("exfil", 10);
    let alert = one_alert(&site, "exfil", "model-exfiltration");
    assert_eq!(alert["severity"], "critical");
    assert_eq!(alert["file.path"], site.path("models/model.bin"));
    assert_eq!(alert["network.peer.address"], "127.0.0.2");
}

#[test]
fn unprofiled_processes_touching_models_or_gpus_are_caught() {
    let site = Site::new("guards", 10);
    let node = site.root.join("nvidia0");
    let c = std::ffi::CString::new(node.to_string_lossy().into_owned()).unwrap();
    // SAFETY: creating a device node as root in our scratch directory.
    assert_eq!(
        unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(195, 0)) },
        0
    );
    let monitor = site.start();
    let script = format!(
        "open({model:?}, 'rb').read()\ntry:\n    open({node:?}, 'rb')\nexcept OSError:\n    pass\n",
        model = site.path("models/model.bin"),
        node = node.to_string_lossy(),
    );
    let status = monitor
        .cgroup
        .command(PYTHON)
        .args(["-I", "-S", "-B", "-c", &script])
        .status()
        .unwrap();
    assert!(status.success());
    let read = monitor.wait_for("protected-file-read", WAIT, |v| {
        v["security_rule.name"] == "protected-file-read"
    });
    assert_eq!(read["file.path"], site.path("models/model.bin"));
    assert!(read.get("monitor.profile").is_none());
    let gpu = monitor.wait_for("gpu-unexpected-process", WAIT, |v| {
        v["security_rule.name"] == "gpu-unexpected-process"
    });
    assert_eq!(gpu["device.class"], "nvidia");
    let lines = settle_and_stop(monitor);
    assert_eq!(alerts(&lines).len(), 2, "{:#?}", alerts(&lines));
}

#[test]
fn a_burst_of_identical_violations_is_one_alert_then_a_count() {
    let site = Site::new("burst", 2);
    let monitor = site.start();
    site.serve("burst");
    let folded = monitor.wait_for("the folded count", Duration::from_secs(15), |v| {
        v["security_rule.name"] == "file-write-not-allowed" && v["monitor.count"].as_u64() > Some(1)
    });
    let lines = settle_and_stop(monitor);
    let summary: Vec<(Value, Value, Value)> = alerts(&lines)
        .iter()
        .map(|v| {
            (
                v["security_rule.name"].clone(),
                v["monitor.count"].clone(),
                v["time"].clone(),
            )
        })
        .collect();
    assert_eq!(folded["monitor.count"], 24, "{summary:?}");
    let writes: Vec<&Value> = alerts(&lines)
        .into_iter()
        .filter(|v| v["security_rule.name"] == "file-write-not-allowed")
        .collect();
    assert_eq!(writes.len(), 2, "{writes:#?}");
    assert_eq!(writes[0]["monitor.count"], 1);
}

fn check(path: &Path) -> (i32, String) {
    let output = Command::new(monitor_bin())
        .arg("check")
        .arg(path)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn a_malformed_profile_fails_check_with_its_line() {
    let site = Site::new("check", 10);
    let (code, out) = check(&site.root.join("config.yaml"));
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ok: 1 profiles"), "{out}");
    let bad = site.root.join("bad.yaml");
    std::fs::write(
        &bad,
        "name: bad\nselector:\n  executables: [\"/usr/bin/x\"]\nallow:\n  network:\n    connect: [\"10.0.0.0/33\"]\n  devcies: [nvidia]\n",
    )
    .unwrap();
    let (code, out) = check(&bad);
    assert_eq!(code, 1, "{out}");
    let prefix = format!("{}:6:", bad.display());
    assert!(
        out.lines()
            .any(|l| l.starts_with(&prefix) && l.contains("connect")),
        "{out}"
    );
    let prefix = format!("{}:7:3:", bad.display());
    assert!(
        out.lines()
            .any(|l| l.starts_with(&prefix) && l.contains("devcies")),
        "{out}"
    );
}

#[test]
fn a_bad_reload_keeps_the_old_rules() {
    let site = Site::new("reload", 10);
    let monitor = site.start();
    std::fs::write(
        site.root.join("profiles/fakeserve.yaml"),
        "name: fakeserve\nselector: [oops\n",
    )
    .unwrap();
    let failed = monitor.wait_for("config-reload-failed", Duration::from_secs(15), |v| {
        v["security_rule.name"] == "config-reload-failed"
    });
    assert!(
        failed["monitor.config.errors"]
            .as_array()
            .is_some_and(|errors| errors
                .iter()
                .any(|e| e.as_str().is_some_and(|e| e.contains("fakeserve.yaml:")))),
        "{failed}"
    );
    site.serve("shell");
    monitor.wait_for("the old rules at work", WAIT, |v| {
        v["security_rule.name"] == "exec-not-allowed"
    });
    // A good configuration again is picked up.
    std::fs::write(
        site.root.join("profiles/fakeserve.yaml"),
        site.profile().replace(
            "exec: [\"/usr/bin/uname\"]",
            "exec: [\"/usr/bin/uname\", \"/usr/bin/dash\", \"/bin/sh\"]",
        ),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    site.serve("shell");
    let lines = settle_and_stop(monitor);
    let execs = alerts(&lines)
        .into_iter()
        .filter(|v| v["security_rule.name"] == "exec-not-allowed")
        .count();
    assert_eq!(execs, 1, "the reloaded profile allows the shell");
}

#[test]
fn allowed_behaviour_judged_once_is_not_sent_again() {
    let site = Site::new("known", 10);
    let monitor = site.start();
    // The server opens the same model file and connects to the upstream 100 times (fewer
    // than the upstream's backlog: nobody accepts). In the monitor's cgroup: a connect seen
    // only by the syscall tracepoint (read from user memory) is never cached as judged.
    site.serve_with(monitor.cgroup.command(PYTHON), "repeat");
    std::thread::sleep(Duration::from_millis(500));
    let (lines, stderr) = monitor.stop_with_stderr();
    assert!(alerts(&lines).is_empty(), "{:#?}", alerts(&lines));
    // The summary at exit counts the events the kernel kept back.
    let summary = stderr
        .lines()
        .find(|l| l.contains("summary"))
        .unwrap_or_else(|| panic!("no summary in:\n{stderr}"));
    let known: u64 = summary
        .split("known=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no known= in {summary}"));
    assert!(
        known >= 150,
        "repeats were not kept in the kernel: {summary}"
    );
}
