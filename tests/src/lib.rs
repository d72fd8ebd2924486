//! Harness for the end-to-end tests: runs the real `monitor` binary (path in `MONITOR_BIN`,
//! set by `cargo xtask test`) as root against the running kernel and collects its JSON lines.

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod podman;

/// The `monitor` binary under test.
pub fn monitor_bin() -> PathBuf {
    let path = std::env::var_os("MONITOR_BIN").unwrap_or_else(|| {
        panic!("MONITOR_BIN is not set: run the end-to-end tests with `cargo xtask test`")
    });
    PathBuf::from(path)
}

/// Fails the test early with a clear message when it cannot load eBPF programs.
pub fn require_root() {
    // SAFETY: geteuid has no failure mode.
    if unsafe { libc::geteuid() } != 0 {
        panic!("end-to-end tests load eBPF programs and need root: run `sudo -E cargo xtask test`");
    }
}

#[derive(Default)]
struct Lines {
    values: Vec<Value>,
    closed: bool,
}

/// A cgroup (v2) made for one test, removed when dropped (its processes killed first), also
/// when the test panics. The monitor's cgroup programs attach here, never to the root.
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn new() -> TestCgroup {
        let root = cgroup2_root();
        let path = root.join(format!("monitor-test-{}-{}", std::process::id(), unique()));
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("failed to create test cgroup {}: {e}", path.display()));
        TestCgroup { path }
    }

    /// A command that moves itself into this cgroup before it execs.
    pub fn command(&self, program: &str) -> Command {
        use std::os::unix::process::CommandExt as _;
        let procs = std::ffi::CString::new(
            self.path
                .join("cgroup.procs")
                .to_string_lossy()
                .into_owned(),
        )
        .unwrap();
        let mut command = Command::new(program);
        // SAFETY: only async-signal-safe calls (open, write, close) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if n != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
    }
}

impl Default for TestCgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if let Ok(pids) = std::fs::read_to_string(self.path.join("cgroup.procs")) {
                for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    // SAFETY: signalling a process of our own test cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("failed to remove test cgroup {}", self.path.display());
    }
}

/// The cgroup v2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_root() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() == Some("cgroup2") {
            if let Some(mount) = left.split_whitespace().nth(4) {
                return PathBuf::from(mount.replace("\\040", " "));
            }
        }
    }
    panic!("no cgroup v2 mount: the end-to-end tests need cgroup v2")
}

/// A running monitor. Stopped (SIGINT, then SIGKILL) when dropped, also when a test panics.
pub struct Monitor {
    child: Option<Child>,
    /// The cgroup the monitor's device hook is attached to.
    pub cgroup: TestCgroup,
    lines: Arc<(Mutex<Lines>, Condvar)>,
    stderr: Arc<Mutex<String>>,
    ready_file: PathBuf,
    /// `MONITOR_STATE_DIR` of this run (a test's own `--state-dir` wins over it): monitors of
    /// other tests, killed on purpose, are no unclean exit of this one.
    state_dir: PathBuf,
}

impl Monitor {
    /// Starts `monitor ARGS --cgroup TEST_CGROUP --ready-file ...` and waits until it says it
    /// is ready.
    pub fn start(args: &[&str]) -> Monitor {
        require_root();
        let cgroup = TestCgroup::new();
        let ready_file = std::env::temp_dir().join(format!(
            "monitor-test-ready-{}-{}",
            std::process::id(),
            unique()
        ));
        let _ = std::fs::remove_file(&ready_file);
        let state_dir = std::env::temp_dir().join(format!(
            "monitor-test-state-{}-{}",
            std::process::id(),
            unique()
        ));
        let mut child = Command::new(monitor_bin())
            .args(args)
            .arg("--cgroup")
            .arg(&cgroup.path)
            .arg("--ready-file")
            .arg(&ready_file)
            .env("RUST_LOG", "info")
            .env("MONITOR_STATE_DIR", &state_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start {}: {e}", monitor_bin().display()));
        let lines = Arc::new((Mutex::new(Lines::default()), Condvar::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let sink = lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("monitor printed a line that is not JSON ({e}): {line}")
                });
                let (lock, cvar) = &*sink;
                lock.lock().unwrap().values.push(value);
                cvar.notify_all();
            }
            let (lock, cvar) = &*sink;
            lock.lock().unwrap().closed = true;
            cvar.notify_all();
        });
        let stderr_text = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().expect("piped stderr");
        let stderr_sink = stderr_text.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                stderr_sink
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut monitor = Monitor {
            child: Some(child),
            cgroup,
            lines,
            stderr: stderr_text,
            ready_file,
            state_dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !monitor.ready_file.exists() {
            if let Some(status) = monitor.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "monitor exited with {status} before it was ready; stderr:\n{}",
                    monitor.stderr()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "monitor not ready after 60 s; stderr:\n{}",
                    monitor.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        monitor
    }

    /// The monitor's pid (to signal it), 0 once stopped.
    pub fn child_pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The monitor's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Sends `signal` to the monitor (SIGHUP to reopen outputs, SIGKILL to crash it).
    pub fn signal(&self, signal: i32) {
        let pid = self.pid() as i32;
        // SAFETY: sending a signal to our own child.
        assert_eq!(
            unsafe { libc::kill(pid, signal) },
            0,
            "kill({pid}, {signal})"
        );
    }

    /// Every JSON line printed so far.
    pub fn lines(&self) -> Vec<Value> {
        self.lines.0.lock().unwrap().values.clone()
    }

    /// Waits until a printed line satisfies `pred`; panics with the output after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.lines;
        let mut lines = lock.lock().unwrap();
        loop {
            if let Some(found) = lines.values.iter().find(|v| pred(v)) {
                return found.clone();
            }
            let now = Instant::now();
            if now >= deadline || lines.closed {
                let printed: Vec<String> = lines.values.iter().map(|v| v.to_string()).collect();
                drop(lines);
                panic!(
                    "no line with {what} within {timeout:?}; printed:\n{}\nstderr:\n{}",
                    printed.join("\n"),
                    self.stderr()
                );
            }
            lines = cvar.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    /// Stops the monitor and returns its stdout lines and its stderr.
    pub fn stop_with_stderr(self) -> (Vec<Value>, String) {
        let stderr = self.stderr.clone();
        let lines = self.stop();
        // The log is complete once the process has exited and its pipe closed.
        std::thread::sleep(Duration::from_millis(100));
        let text = stderr.lock().unwrap().clone();
        (lines, text)
    }

    /// Stops the monitor with SIGTERM, as systemd and Kubernetes do; returns how long it took
    /// to exit (`None` if it had to be killed after 20 s), and its stderr.
    pub fn terminate(mut self) -> (Option<Duration>, String) {
        let mut child = self.child.take().expect("a running monitor");
        let started = Instant::now();
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let mut took = None;
        while took.is_none() && started.elapsed() < Duration::from_secs(20) {
            match child.try_wait() {
                Ok(Some(_)) => took = Some(started.elapsed()),
                _ => thread::sleep(Duration::from_millis(5)),
            }
        }
        if took.is_none() {
            let _ = child.kill();
        }
        // Reaped in every case (at once when it has exited).
        let _ = child.wait();
        let _ = std::fs::remove_file(&self.ready_file);
        let _ = std::fs::remove_dir_all(&self.state_dir);
        thread::sleep(Duration::from_millis(100));
        (took, self.stderr())
    }

    /// Stops the monitor with SIGINT and returns everything it printed.
    pub fn stop(mut self) -> Vec<Value> {
        self.shutdown();
        let (lock, cvar) = &*self.lines;
        let mut lines = lock.lock().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !lines.closed && Instant::now() < deadline {
            lines = cvar
                .wait_timeout(lines, Duration::from_millis(100))
                .unwrap()
                .0;
        }
        lines.values.clone()
    }

    fn shutdown(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        eprintln!("monitor exited with {status}; stderr:\n{}", self.stderr());
                    }
                    break;
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
        let _ = std::fs::remove_file(&self.ready_file);
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A counter for names unique within this test process.
pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A marker string that no other process on the machine will have in its argv.
pub fn marker(name: &str) -> String {
    format!("monitor-test-{name}-{}-{}", std::process::id(), unique())
}

/// Lines of one kind about one pid.
pub fn of(lines: &[Value], kind: &str, pid: u32) -> Vec<Value> {
    lines
        .iter()
        .filter(|v| v["event.kind"] == kind && v["process.pid"] == pid)
        .cloned()
        .collect()
}

/// Whether a line's argv contains `needle`.
pub fn has_arg(value: &Value, needle: &str) -> bool {
    value["process.command_args"]
        .as_array()
        .is_some_and(|args| args.iter().any(|a| a == needle))
}

/// The real path of an executable (resolving /bin -> /usr/bin on merged-usr systems).
pub fn real_path(path: &str) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|e| panic!("failed to resolve {path}: {e}"))
        .to_string_lossy()
        .into_owned()
}

pub const WAIT: Duration = Duration::from_secs(10);

/// Builds one of the harness's C programs (`tests/src/NAME.c`) with `cc` into `dir/NAME`;
/// returns its path.
pub fn build_c(name: &str, dir: &std::path::Path) -> PathBuf {
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src")
        .join(format!("{name}.c"));
    let out = dir.join(name);
    let output = Command::new("cc")
        .args(["-O2", "-Wall", "-pthread", "-o"])
        .arg(&out)
        .arg(&source)
        .output()
        .unwrap_or_else(|e| panic!("failed to run cc (install a C compiler): {e}"));
    assert!(
        output.status.success(),
        "failed to build {}: {}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    out
}

/// A free port in the kernel's ephemeral range (`net.ipv4.ip_local_port_range`): one the
/// kernel hands out for `bind` to port 0, here asked for by name.
pub fn ephemeral_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A directory for one test, removed when dropped (also when the test panics).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(marker(name));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(std::fs::canonicalize(dir).unwrap())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The system interpreter the tests' Python snippets run on.
pub const PYTHON: &str = "/usr/bin/python3";

/// `python3 -I -S -B -c CODE ARGS` (isolated: nothing from the site or the environment),
/// started with its output piped.
pub fn python(code: &str, args: &[&str]) -> Child {
    Command::new(PYTHON)
        .args(["-I", "-S", "-B", "-c", code])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("failed to start {PYTHON}: {e}"))
}

/// Waits for a child to end: its pid and its output.
pub fn finish(child: Child) -> (u32, Output) {
    let pid = child.id();
    (pid, child.wait_with_output().unwrap())
}

/// Runs `program ARGS` to its end, output piped: its pid and output.
pub fn run(program: &str, args: &[&str]) -> (u32, Output) {
    let child = Command::new(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("failed to run {program} (install it): {e}"));
    finish(child)
}

/// `bpftool ARGS`, which must succeed: its pid and output.
pub fn bpftool(args: &[&str]) -> (u32, Output) {
    let (pid, output) = run("bpftool", args);
    assert!(output.status.success(), "bpftool {args:?}: {output:?}");
    (pid, output)
}

/// What a child printed, trimmed.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// What a guarded model file holds.
pub const WEIGHTS: &str = "weights";

/// The model-server part of a scratch site under `root`: `models/model.safetensors` (to
/// guard), `bin/model-server` (a copy of cat) and `server.yaml`, the profile that selects it
/// and lets it read everything (the guards' allowed reader).
pub fn model_server(root: &Path) {
    for dir in ["models", "bin"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("models/model.safetensors"), WEIGHTS).unwrap();
    std::fs::copy("/usr/bin/cat", root.join("bin/model-server")).unwrap();
    std::fs::write(
        root.join("server.yaml"),
        format!(
            r#"name: server
selector:
  executables: ["{root}/bin/model-server"]
allow:
  exec: ["{root}/bin/model-server"]
  files:
    read: ["/**"]
"#,
            root = root.display()
        ),
    )
    .unwrap();
}

impl Monitor {
    /// `monitor run --config CONFIG EXTRA` (see [`Monitor::start`]).
    pub fn run_config(config: &Path, extra: &[&str]) -> Monitor {
        let config = config.to_string_lossy();
        let mut args = vec!["run", "--config", &config];
        args.extend_from_slice(extra);
        Monitor::start(&args)
    }

    /// The `key: value` lines of every fdinfo of the monitor's fds that has `key` (its
    /// programs, maps and links, as the kernel describes them).
    pub fn fdinfos(&self, key: &str) -> Vec<std::collections::HashMap<String, String>> {
        let dir = format!("/proc/{}/fdinfo", self.pid());
        std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
            .map(|text| {
                text.lines()
                    .filter_map(|line| {
                        let (k, v) = line.split_once(':')?;
                        Some((k.trim().to_owned(), v.trim().to_owned()))
                    })
                    .collect::<std::collections::HashMap<_, _>>()
            })
            .filter(|info| info.contains_key(key))
            .collect()
    }

    /// The id of the monitor's one cgroup link of `attach_type` (the kernel's number, e.g.
    /// "10" for `BPF_CGROUP_INET4_CONNECT`).
    pub fn cgroup_link(&self, attach_type: &str) -> String {
        let links: Vec<String> = self
            .fdinfos("link_id")
            .into_iter()
            .filter(|info| {
                info.get("link_type").map(String::as_str) == Some("cgroup")
                    && info.get("attach_type").map(String::as_str) == Some(attach_type)
            })
            .map(|info| info["link_id"].clone())
            .collect();
        assert_eq!(
            links.len(),
            1,
            "one link of attach type {attach_type}: {links:?}"
        );
        links[0].clone()
    }

    /// Waits for an alert of `rule` about process `pid`.
    pub fn alert_of(&self, rule: &'static str, pid: u32) -> Value {
        self.wait_for(&format!("{rule} by pid {pid}"), WAIT, move |v| {
            v["security_rule.name"] == rule && v["process.pid"] == pid
        })
    }
}

/// Writes `dir/profiles.yaml` (`profiles`: one or more YAML documents) and `dir/config.yaml`
/// naming it, followed by `config_extra` (whole lines), and starts `monitor run` on that
/// configuration with `args`.
pub fn start_with_profiles(
    dir: &Path,
    profiles: &str,
    config_extra: &str,
    args: &[&str],
) -> Monitor {
    std::fs::write(dir.join("profiles.yaml"), profiles).unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "profiles: [\"{}\"]\n{config_extra}",
            dir.join("profiles.yaml").display()
        ),
    )
    .unwrap();
    Monitor::run_config(&config, args)
}
