//! End-to-end tests of learning mode: `monitor learn` watches a fake inference server on the
//! real kernel and writes a profile; `monitor check` accepts it; `monitor run` with it stays
//! quiet over another run of the same server, and raises exactly the one alert of each
//! deviation (a shell, a new destination, a write into the model folder).

use std::{
    fs,
    io::Write as _,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{marker, monitor_bin, real_path, require_root, unique, Monitor, TestCgroup, WAIT};

const PYTHON: &str = "/usr/bin/python3";

/// The fake server: loads every file of its model folder, listens on its API port and on a
/// port the kernel picks, calls its upstream, writes temporary files with random names and a
/// scratch file named after its pid, runs a helper; then the deviation of its scenario.
/// With `wait` first, it waits for a line on stdin before doing anything.
const SERVER: &str = r#"
import os, shutil, socket, subprocess, sys, tempfile
root, upstream, api_port, scenario, other = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
if "--wait" in sys.argv:
    sys.stdin.readline()
for dirpath, dirs, names in os.walk(os.path.join(root, "models")):
    dirs.sort()
    for name in sorted(names):
        with open(os.path.join(dirpath, name), "rb") as f:
            f.read()
api = socket.socket()
api.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
api.bind(("127.0.0.1", api_port))
api.listen()
side = socket.socket()
side.bind(("127.0.0.1", 0))
side.listen()
socket.create_connection(("127.0.0.1", upstream)).close()
scratch = tempfile.mkdtemp()
fd, path = tempfile.mkstemp(dir=scratch, suffix=".json")
os.write(fd, b"{}")
os.close(fd)
with open(os.path.join(root, "work", "scratch-%d" % os.getpid()), "w") as f:
    f.write("x")
subprocess.run(["/usr/bin/uname", "-a"], stdout=subprocess.DEVNULL, check=True)
shutil.rmtree(scratch)
if scenario == "shell":
    subprocess.run(["/bin/sh", "-c", "exit 0"])
elif scenario == "connect":
    try:
        socket.create_connection(("127.0.0.1", other), timeout=1).close()
    except OSError:
        pass
elif scenario == "write":
    with open(os.path.join(root, "models", "planted.bin"), "wb") as f:
        f.write(b"x")
"#;

/// A free TCP port outside the kernel's ephemeral range (32768-60999), so that rules name
/// it; with a listener on it when `keep` is set.
fn fixed_port(keep: bool) -> (u16, Option<TcpListener>) {
    let seed = (std::process::id() as u64 * 7919 + unique() * 104_729) % 10_000;
    for i in 0..10_000u64 {
        let port = 20_000 + ((seed + i * 37) % 10_000) as u16;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            return (port, keep.then_some(listener));
        }
    }
    panic!("no free port in 20000-29999");
}

/// A scratch tree: the server, its model folder, work folder and profiles; removed on drop.
struct Site {
    root: PathBuf,
    marker: String,
    upstream: TcpListener,
    upstream_port: u16,
    api_port: u16,
    /// A port nobody listens on, for the connect the profile does not allow.
    other_port: u16,
}

impl Site {
    fn new(name: &str) -> Site {
        let marker = marker(name);
        let root = std::env::temp_dir().join(&marker);
        for dir in ["models/tokenizer", "app", "work", "profiles"] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        let root = fs::canonicalize(root).unwrap();
        for (file, size) in [
            ("config.json", 64),
            ("generation_config.json", 32),
            ("model-00001-of-00002.safetensors", 8192),
            ("model-00002-of-00002.safetensors", 4096),
            ("model.safetensors.index.json", 128),
            ("tokenizer/tokenizer.json", 256),
            ("tokenizer/tokenizer_config.json", 64),
        ] {
            fs::write(root.join("models").join(file), vec![7u8; size]).unwrap();
        }
        fs::write(root.join("app/fake_server_learn.py"), SERVER).unwrap();
        let (upstream_port, upstream) = fixed_port(true);
        let (api_port, _) = fixed_port(false);
        let (mut other_port, _) = fixed_port(false);
        while other_port == api_port || other_port == upstream_port {
            other_port = fixed_port(false).0;
        }
        Site {
            root,
            marker,
            upstream: upstream.unwrap(),
            upstream_port,
            api_port,
            other_port,
        }
    }

    fn profile(&self) -> PathBuf {
        self.root.join("profiles/fakelearn.yaml")
    }

    fn command(&self, scenario: &str, wait: bool) -> Command {
        let mut command = Command::new(PYTHON);
        command
            .arg("-B")
            .arg(self.root.join("app/fake_server_learn.py"))
            .arg(&self.root)
            .arg(self.upstream_port.to_string())
            .arg(self.api_port.to_string())
            .arg(scenario)
            .arg(self.other_port.to_string())
            .arg(&self.marker)
            .stdout(Stdio::null());
        if wait {
            command.arg("--wait").stdin(Stdio::piped());
        } else {
            command.stdin(Stdio::null());
        }
        command
    }

    /// Runs the fake server to its end; returns its pid.
    fn serve(&self, scenario: &str) -> u32 {
        let mut child = self.command(scenario, false).spawn().unwrap();
        let pid = child.id();
        assert!(child.wait().unwrap().success(), "the fake server failed");
        // Accept what it connected, so the upstream's backlog never fills.
        self.upstream.set_nonblocking(true).unwrap();
        while self.upstream.accept().is_ok() {}
        pid
    }

    fn path(&self, rel: &str) -> String {
        self.root.join(rel).to_string_lossy().into_owned()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// A running `monitor learn`, with its device hook on a test cgroup. Killed on drop.
struct Learning {
    child: Option<Child>,
    stderr: PathBuf,
    ready: PathBuf,
    _cgroup: TestCgroup,
}

impl Learning {
    fn start(args: &[&str]) -> Learning {
        require_root();
        let cgroup = TestCgroup::new();
        let id = format!("{}-{}", std::process::id(), unique());
        let ready = std::env::temp_dir().join(format!("monitor-learn-ready-{id}"));
        let stderr = std::env::temp_dir().join(format!("monitor-learn-stderr-{id}"));
        let _ = fs::remove_file(&ready);
        let child = Command::new(monitor_bin())
            .arg("learn")
            .args(args)
            .arg("--cgroup")
            .arg(&cgroup.path)
            .arg("--ready-file")
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start {}: {e}", monitor_bin().display()));
        let mut learning = Learning {
            child: Some(child),
            stderr,
            ready,
            _cgroup: cgroup,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !learning.ready.exists() {
            if let Some(status) = learning.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "monitor learn exited with {status} before it was ready:\n{}",
                    learning.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "monitor learn not ready after 60 s:\n{}",
                learning.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        }
        learning
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits for it to end by itself (`--duration`), or sends SIGINT (Ctrl-C) first.
    fn finish(mut self, interrupt: bool, timeout: Duration) -> (ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        if interrupt {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        }
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "monitor learn still running after {timeout:?}:\n{}",
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        (status, self.stderr())
    }
}

impl Drop for Learning {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_file(&self.ready);
        let _ = fs::remove_file(&self.stderr);
    }
}

/// The rules listed under `key:` in a learned profile, without their counts.
fn rules(text: &str, key: &str) -> Vec<String> {
    let mut lines = text.lines().skip_while(|l| l.trim() != format!("{key}:"));
    let Some(first) = lines.next() else {
        return Vec::new();
    };
    let indent = first.len() - first.trim_start().len();
    lines
        .take_while(|l| l.len() - l.trim_start().len() > indent && l.trim_start().starts_with("- "))
        .map(|l| {
            let item = l.trim_start().trim_start_matches("- ");
            let item = item.split("   #").next().unwrap_or(item).trim();
            item.trim_matches('"').to_owned()
        })
        .collect()
}

fn check(profile: &Path) {
    let output = Command::new(monitor_bin())
        .arg("check")
        .arg(profile)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("ok: 1 profiles"),
        "monitor check rejected the learned profile:\n{stdout}{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        fs::read_to_string(profile).unwrap_or_default()
    );
}

fn alerts(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|v| v["event.name"] == "monitor.alert")
        .collect()
}

#[test]
fn learned_profile_round_trip() {
    let site = Site::new("learn");
    let select = format!("exe={PYTHON}*,args=*{}*", site.marker);
    let out = site.profile().to_string_lossy().into_owned();
    let learning = Learning::start(&["--select", &select, "--out", &out, "--name", "fakelearn"]);
    site.serve("none");
    // Ctrl-C ends learning and writes the profile.
    let (status, stderr) = learning.finish(true, Duration::from_secs(30));
    assert!(status.success(), "monitor learn failed: {status}\n{stderr}");
    assert!(
        stderr.contains("learned profile \"fakelearn\" written to"),
        "{stderr}"
    );
    let text = fs::read_to_string(site.profile()).unwrap();
    let context = format!("learned profile:\n{text}\nstderr:\n{stderr}");

    // What the issue asks for, rule by rule.
    assert!(
        text.starts_with("# Learned by `monitor learn` from "),
        "{context}"
    );
    assert!(text.contains("until Ctrl-C"), "{context}");
    assert!(text.contains("# Observed "), "{context}");
    assert!(
        text.contains(&format!("  args:\n    - \"*{}*\"\n", site.marker)),
        "{context}"
    );
    assert_eq!(
        rules(&text, "exec"),
        [real_path("/usr/bin/uname")],
        "{context}"
    );
    let read = rules(&text, "read");
    let models = format!("{}/**", site.path("models"));
    // The root's name carries the test's pid, which may be generalised: compare the tail.
    assert!(
        read.iter()
            .any(|r| r == &models
                || (r.ends_with("/models/**") && r.contains("monitor-test-learn-"))),
        "{context}"
    );
    // Python's libraries: versioned names, or their directory's `/**` when there are many.
    assert!(
        read.iter()
            .any(|r| r.ends_with(".so.*") || r == "/usr/lib/**"),
        "libraries: {context}"
    );
    let write = rules(&text, "write");
    assert!(
        write.iter().any(|r| r.ends_with("/work/scratch-*")),
        "{context}"
    );
    assert!(
        write.contains(&"/tmp/tmp*/tmp*.json".to_owned()),
        "{context}"
    );
    assert!(!write.iter().any(|r| r.contains("models")), "{context}");
    assert!(
        !text.contains("pyvenv.cfg"),
        "probes are not rules: {context}"
    );
    let mut listen = rules(&text, "listen");
    listen.sort();
    let mut expected_listen = [
        "127.0.0.1:32768-60999".to_owned(),
        format!("127.0.0.1:{}", site.api_port),
    ];
    expected_listen.sort();
    assert_eq!(listen, expected_listen, "{context}");
    assert_eq!(
        rules(&text, "connect"),
        [format!("127.0.0.0/8:{}", site.upstream_port)],
        "{context}"
    );
    assert!(text.contains("    unix: []\n"), "{context}");
    assert!(text.contains("  devices: []\n"), "{context}");
    check(&site.profile());

    // `monitor run` with the learned profile: quiet over the same server, one alert for each
    // deviation.
    let config = site.root.join("config.yaml");
    fs::write(
        &config,
        format!(
            "profiles: [\"{}\"]\ndedup_window_secs: 10\n",
            site.profile().display()
        ),
    )
    .unwrap();
    let monitor = Monitor::start(&["run", "--config", &config.to_string_lossy()]);
    let quiet = site.serve("none");
    let mut expected = Vec::new();
    for (scenario, rule) in [
        ("shell", "exec-not-allowed"),
        ("connect", "connect-not-allowed"),
        ("write", "file-write-not-allowed"),
    ] {
        let pid = site.serve(scenario);
        monitor.wait_for(rule, WAIT, move |v| {
            v["security_rule.name"] == rule
                && (v["process.pid"] == pid || v["process.parent_pid"] == pid)
        });
        expected.push((scenario, rule, pid));
    }
    thread::sleep(Duration::from_millis(500));
    let lines = monitor.stop();
    let alerts = alerts(&lines);
    let of = |pid: u32| -> Vec<&&Value> {
        alerts
            .iter()
            .filter(|a| a["process.pid"] == pid || a["process.parent_pid"] == pid)
            .collect()
    };
    assert!(
        of(quiet).is_empty(),
        "alerts for learned behaviour: {alerts:#?}\n{context}"
    );
    for (scenario, rule, pid) in expected {
        let found = of(pid);
        assert_eq!(
            found.len(),
            1,
            "{scenario}: exactly one alert: {alerts:#?}\n{context}"
        );
        assert_eq!(
            found[0]["security_rule.name"], rule,
            "{scenario}: {found:#?}"
        );
        assert_eq!(
            found[0]["monitor.profile"], "fakelearn",
            "{scenario}: {found:#?}"
        );
    }
    assert_eq!(alerts.len(), 3, "no other alert: {alerts:#?}\n{context}");
}

#[test]
fn learn_a_pid_for_a_duration() {
    let site = Site::new("learnpid");
    let mut server = site.command("none", true).spawn().unwrap();
    let pid = server.id();
    let out = site.profile().to_string_lossy().into_owned();
    let learning = Learning::start(&["--pid", &pid.to_string(), "--duration", "4s", "--out", &out]);
    // The server does its work only now, while it is learned.
    let mut stdin = server.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    drop(stdin);
    assert!(server.wait().unwrap().success(), "the fake server failed");
    // The duration ends learning by itself.
    let (status, stderr) = learning.finish(false, Duration::from_secs(30));
    assert!(status.success(), "monitor learn failed: {status}\n{stderr}");
    let text = fs::read_to_string(site.profile()).unwrap();
    let context = format!("learned profile:\n{text}\nstderr:\n{stderr}");
    assert!(
        text.contains("name: \"fakelearn\"\n"),
        "the --out file's stem: {context}"
    );
    assert!(!text.contains("ended early"), "{context}");
    // The selector: the process's executable and a distinctive argument.
    assert!(
        text.contains(&format!(
            "selector:\n  executables:\n    - \"{}\"\n  args:\n    - \"*fake_server_learn.py*\"\n",
            real_path(PYTHON)
        )),
        "{context}"
    );
    assert_eq!(
        rules(&text, "exec"),
        [real_path("/usr/bin/uname")],
        "{context}"
    );
    assert!(
        rules(&text, "read")
            .iter()
            .any(|r| r.ends_with("/models/**")),
        "{context}"
    );
    assert!(
        rules(&text, "listen").contains(&format!("127.0.0.1:{}", site.api_port)),
        "{context}"
    );
    check(&site.profile());
}

#[test]
fn merge_extends_a_learned_profile() {
    let site = Site::new("learnmerge");
    let select = format!("exe={PYTHON}*,args=*{}*", site.marker);
    let first = site.profile().to_string_lossy().into_owned();
    let learning = Learning::start(&["--select", &select, "--out", &first]);
    site.serve("none");
    let (status, stderr) = learning.finish(true, Duration::from_secs(30));
    assert!(status.success(), "monitor learn failed: {status}\n{stderr}");

    // Learn again into the first profile: its selector picks the server, which now also
    // connects somewhere new. Ctrl-C before the --duration is over.
    let merged = site.root.join("profiles/merged.yaml");
    let merged_text = merged.to_string_lossy().into_owned();
    let learning = Learning::start(&[
        "--merge",
        &first,
        "--duration",
        "10m",
        "--out",
        &merged_text,
    ]);
    site.serve("connect");
    let (status, stderr) = learning.finish(true, Duration::from_secs(30));
    assert!(status.success(), "monitor learn failed: {status}\n{stderr}");
    let text = fs::read_to_string(&merged).unwrap();
    let context = format!("merged profile:\n{text}\nstderr:\n{stderr}");
    assert!(
        text.contains("ended early by Ctrl-C, of --duration 10m 0s"),
        "{context}"
    );
    assert!(text.contains(&format!("# Extends {first}")), "{context}");
    assert!(
        text.contains("name: \"fakelearn\"\n"),
        "the merged profile's name: {context}"
    );
    assert!(
        text.contains(&format!("    - \"*{}*\"\n", site.marker)),
        "{context}"
    );
    let mut connect = rules(&text, "connect");
    connect.sort();
    let mut expected = [
        format!("127.0.0.0/8:{}", site.upstream_port),
        format!("127.0.0.0/8:{}", site.other_port),
    ];
    expected.sort();
    assert_eq!(connect, expected, "{context}");
    // The kept rules say so, with what they covered this time.
    assert!(
        text.lines().any(
            |l| l.contains(&format!("\"127.0.0.0/8:{}\"", site.upstream_port))
                && l.ends_with("# kept; 1 observation")
        ),
        "{context}"
    );
    check(&merged);
}

/// A server with a compile cache: the first run writes it, later runs read it. It listens
/// on the port it is given (one in the ephemeral range). With a third argument it also
/// reads that file (a deviation).
const CACHED_SERVER: &str = r#"
import os, socket, sys
root, port = sys.argv[1], int(sys.argv[2])
cache = os.path.join(root, "cache", "compiled.bin")
if os.path.exists(cache):
    with open(cache, "rb") as f:
        assert f.read() == b"kernel"
else:
    with open(cache, "wb") as f:
        f.write(b"kernel")
api = socket.socket()
api.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
api.bind(("127.0.0.1", port))
api.listen()
api.close()
if len(sys.argv) > 4:
    with open(sys.argv[4], "rb") as f:
        f.read()
"#;

#[test]
fn a_second_run_reads_its_cache_and_listens_on_its_port_under_the_learned_profile() {
    let site = Site::new("learncache");
    fs::create_dir_all(site.root.join("cache")).unwrap();
    fs::write(site.root.join("app/cached_server.py"), CACHED_SERVER).unwrap();
    let secret = site.root.join("secret.txt");
    fs::write(&secret, "x").unwrap();
    // The server's own port, inside the ephemeral range: learned as that port.
    let port = tests::ephemeral_port();
    let serve = |extra: Option<&Path>| -> u32 {
        let mut command = Command::new(PYTHON);
        command
            .arg("-B")
            .arg(site.root.join("app/cached_server.py"))
            .arg(&site.root)
            .arg(port.to_string())
            .arg(&site.marker)
            .args(extra)
            .stdin(Stdio::null());
        let mut child = command.spawn().unwrap();
        let pid = child.id();
        assert!(child.wait().unwrap().success(), "the cached server failed");
        pid
    };
    let select = format!("exe={PYTHON}*,args=*{}*", site.marker);
    let out = site.profile().to_string_lossy().into_owned();
    let learning = Learning::start(&["--select", &select, "--out", &out, "--name", "fakelearn"]);
    serve(None);
    let (status, stderr) = learning.finish(true, Duration::from_secs(30));
    assert!(status.success(), "monitor learn failed: {status}\n{stderr}");
    let text = fs::read_to_string(site.profile()).unwrap();
    let context = format!("learned profile:\n{text}\nstderr:\n{stderr}");
    // The root's name carries the test's pid, which may be generalised: compare the tail.
    let cache =
        |r: &String| r.ends_with("/cache/compiled.bin") && r.contains("monitor-test-learncache-");
    assert!(rules(&text, "write").iter().any(cache), "{context}");
    assert!(
        rules(&text, "read").iter().any(cache),
        "a file written is readable: {context}"
    );
    assert_eq!(
        rules(&text, "listen"),
        [format!("127.0.0.1:{port}")],
        "{context}"
    );
    check(&site.profile());

    let config = site.root.join("config.yaml");
    fs::write(
        &config,
        format!("profiles: [\"{}\"]\n", site.profile().display()),
    )
    .unwrap();
    let monitor = Monitor::start(&["run", "--config", &config.to_string_lossy()]);
    // The second run reads the cache the first one wrote, and listens again.
    let quiet = serve(None);
    // The profile is in force: a read it does not allow is an alert.
    let deviant = serve(Some(&secret));
    let secret_text = secret.to_string_lossy().into_owned();
    monitor.wait_for("the read of the secret", WAIT, |v| {
        v["security_rule.name"] == "file-read-not-allowed" && v["process.pid"] == deviant
    });
    thread::sleep(Duration::from_millis(500));
    let lines = monitor.stop();
    let alerts = alerts(&lines);
    let of_pid = |pid: u32| -> Vec<&&Value> {
        alerts
            .iter()
            .filter(|a| a["process.pid"] == pid || a["process.parent_pid"] == pid)
            .collect()
    };
    assert!(
        of_pid(quiet).is_empty(),
        "the second run raised alerts: {alerts:#?}\n{context}"
    );
    let deviant_alerts = of_pid(deviant);
    assert_eq!(deviant_alerts.len(), 1, "{alerts:#?}\n{context}");
    assert_eq!(deviant_alerts[0]["file.path"], secret_text.as_str());
}

#[test]
fn learning_that_selects_nothing_fails_and_writes_nothing() {
    let site = Site::new("learnnothing");
    let select = format!("exe=/nonexistent/{}/*", site.marker);
    let out = site.profile().to_string_lossy().into_owned();
    let learning = Learning::start(&["--select", &select, "--duration", "2s", "--out", &out]);
    let (status, stderr) = learning.finish(false, Duration::from_secs(30));
    assert!(!status.success(), "monitor learn succeeded:\n{stderr}");
    assert!(
        stderr.contains("failed to learn: no selected process was seen in 2s")
            && stderr.contains(&select),
        "{stderr}"
    );
    assert!(!site.profile().exists(), "a profile was written:\n{stderr}");
}

#[test]
fn io_uring_use_is_learned() {
    let site = Site::new("learnuring");
    let dir = site.root.join("app");
    // A program of its own (the selector picks it by path) that opens a file through
    // io_uring as soon as it starts.
    let prober = tests::build_c("netprobe", &dir);
    let target = site.root.join("work/data.bin");
    fs::write(&target, "x").unwrap();
    let select = format!("exe={}", prober.display());
    let out = site.profile().to_string_lossy().into_owned();
    let learning = Learning::start(&["--select", &select, "--out", &out, "--name", "fakelearn"]);
    let run = || -> u32 {
        let mut child = Command::new(&prober)
            .args(["0", "uring-open"])
            .arg(&target)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(child.wait().unwrap().success(), "the prober failed");
        pid
    };
    run();
    let (status, stderr) = learning.finish(true, Duration::from_secs(30));
    assert!(status.success(), "monitor learn failed: {status}\n{stderr}");
    let text = fs::read_to_string(site.profile()).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("  io_uring: true   # ") && l.ends_with("observations")),
        "learned profile:\n{text}\nstderr:\n{stderr}"
    );
    check(&site.profile());

    // A process learned by --pid (watched by user space, not at its exec): its ring, set up
    // after learning started, is learned too.
    let mut late = Command::new(&prober)
        .args(["3000", "uring-open"])
        .arg(&target)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let by_pid = site.root.join("profiles/bypid.yaml");
    let by_pid_text = by_pid.to_string_lossy().into_owned();
    let learning = Learning::start(&["--pid", &late.id().to_string(), "--out", &by_pid_text]);
    assert!(late.wait().unwrap().success(), "the prober failed");
    let (status, stderr) = learning.finish(true, Duration::from_secs(30));
    assert!(status.success(), "monitor learn failed: {status}\n{stderr}");
    let learned = fs::read_to_string(&by_pid).unwrap();
    assert!(
        learned.contains("\n  io_uring: true   # "),
        "learned by pid:\n{learned}\nstderr:\n{stderr}"
    );

    let config = site.root.join("config.yaml");
    fs::write(
        &config,
        format!("profiles: [\"{}\"]\n", site.profile().display()),
    )
    .unwrap();
    let monitor = Monitor::start(&["run", "--config", &config.to_string_lossy()]);
    let pid = run();
    thread::sleep(Duration::from_millis(500));
    let lines = monitor.stop();
    let alerts: Vec<&Value> = alerts(&lines)
        .into_iter()
        .filter(|a| a["process.pid"] == pid)
        .collect();
    assert!(alerts.is_empty(), "{alerts:#?}\nlearned profile:\n{text}");
}
