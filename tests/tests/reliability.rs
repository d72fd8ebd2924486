//! End-to-end tests of alert delivery under real faults: the monitor killed mid-burst, a full
//! disk (a tmpfs of a few KiB mounted by the test) under the alerts file and under the spool,
//! log rotation, an OTLP collector (in-process, plain HTTP) that answers 500, 429, 400 or
//! hangs, a spool too small for the alerts, and a umask of 000. Each alert comes from the real
//! kernel: a scripted process writes files its profile does not allow.

use std::{
    collections::{HashSet, VecDeque},
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{marker, monitor_bin, Monitor};

const WAIT: Duration = Duration::from_secs(20);

/// Writes `argv[2]` files named `f-<n>` in `argv[1]`: one `file-write-not-allowed` each.
const WRITER: &str = r#"
import os, sys, time
out, n = sys.argv[1], int(sys.argv[2])
pause = float(sys.argv[3]) if len(sys.argv) > 3 else 0
for i in range(n):
    with open(os.path.join(out, "f-%d" % i), "w") as f:
        pass
    if pause:
        time.sleep(pause)
"#;

/// A scratch tree (profile, config, the writer script, its output dir); removed on drop.
struct Site {
    root: PathBuf,
    tag: String,
}

impl Site {
    /// A site whose config has these `outputs:` lines (indented by two spaces).
    fn new(name: &str, outputs: &str) -> Site {
        let tag = marker(name);
        let root = std::env::temp_dir().join(&tag);
        for dir in ["profiles", "out", "tmp"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        let root = std::fs::canonicalize(root).unwrap();
        std::fs::write(root.join("writer.py"), WRITER).unwrap();
        std::fs::write(
            root.join("profiles/writer.yaml"),
            format!(
                r#"name: writer
selector:
  executables: ["/usr/bin/python3*"]
  args: ["*{tag}*"]
mode: alert
allow:
  exec: []
  files:
    read: ["/usr/**", "/etc/**", "/proc/**", "/sys/**", "/dev/**", "{root}/**"]
    write: ["{root}/tmp/**", "/dev/null"]
  network:
    connect: []
    listen: []
  devices: []
"#,
                root = root.display()
            ),
        )
        .unwrap();
        let site = Site { root, tag };
        site.set_outputs(outputs);
        site
    }

    fn set_outputs(&self, outputs: &str) {
        std::fs::write(
            self.root.join("config.yaml"),
            format!(
                "profiles: [\"{root}/profiles\"]\noutputs:\n{outputs}dedup_window_secs: 0\n",
                root = self.root.display()
            ),
        )
        .unwrap();
    }

    fn start(&self) -> Monitor {
        Monitor::start(&["run", "--config", &self.path("config.yaml")])
    }

    fn path(&self, rel: &str) -> String {
        self.root.join(rel).to_string_lossy().into_owned()
    }

    /// Starts the writer: `n` alerts, `pause` seconds apart.
    fn writer(&self, n: usize, pause: f64) -> Child {
        // Each run writes to a fresh directory: each file is a new alert.
        let out = self.root.join(format!("out/{}", marker("run")));
        std::fs::create_dir_all(&out).unwrap();
        Command::new("/usr/bin/python3")
            .args(["-B", "-I", "-S"])
            .arg(self.root.join("writer.py"))
            .arg(&out)
            .arg(n.to_string())
            .arg(pause.to_string())
            .arg(&self.tag)
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Runs the writer to its end.
    fn burst(&self, n: usize) {
        assert!(self.writer(n, 0.0).wait().unwrap().success());
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            eprintln!("failed to remove {}: {e}", self.root.display());
        }
    }
}

fn is_write_alert(v: &Value) -> bool {
    v["security_rule.name"] == "file-write-not-allowed"
        && v["file.path"].as_str().is_some_and(|p| p.contains("/out/"))
}

/// The lines of an alerts file: every line parsed, and the lines that are not JSON.
fn read_lines(path: &Path) -> (Vec<Value>, Vec<String>) {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let mut whole = Vec::new();
    let mut broken = Vec::new();
    for line in text.lines() {
        match serde_json::from_str(line) {
            Ok(v) => whole.push(v),
            Err(_) => broken.push(line.to_string()),
        }
    }
    (whole, broken)
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "no {what} within {timeout:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the monitor printed `n` write alerts; panics with what it printed.
fn wait_printed(monitor: &Monitor, n: usize) {
    let deadline = Instant::now() + WAIT;
    while printed_uids(monitor).len() < n {
        if Instant::now() > deadline {
            let lines: Vec<String> = monitor.lines().iter().map(|v| v.to_string()).collect();
            panic!(
                "{} of {n} alerts printed:\n{}\nstderr:\n{}",
                printed_uids(monitor).len(),
                lines.join("\n"),
                monitor.stderr()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A tmpfs of `size` mounted for the test, unmounted (lazily) and removed on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn new(size: &str) -> Tmpfs {
        let path = std::env::temp_dir().join(marker("tmpfs"));
        std::fs::create_dir_all(&path).unwrap();
        let tmpfs = Tmpfs(path);
        tmpfs.mount(size, 0);
        tmpfs
    }

    fn mount(&self, size: &str, flags: libc::c_ulong) {
        let target = std::ffi::CString::new(self.0.to_string_lossy().as_bytes()).unwrap();
        let data = std::ffi::CString::new(format!("size={size},mode=0755")).unwrap();
        // SAFETY: mounting a tmpfs on a directory of our own.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                flags,
                data.as_ptr().cast(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mount tmpfs on {}: {}",
            self.0.display(),
            std::io::Error::last_os_error()
        );
    }

    /// Grows (or shrinks) the filesystem in place.
    fn resize(&self, size: &str) {
        self.mount(size, libc::MS_REMOUNT);
    }

    /// Fills the filesystem with a file of its own, leaving `free` bytes (whole pages).
    fn fill(&self, free: u64) -> PathBuf {
        let filler = self.0.join("filler");
        // SAFETY: statvfs on a path we own into a zeroed struct.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let c = std::ffi::CString::new(self.0.to_string_lossy().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        let available = st.f_bavail * st.f_frsize;
        let size = available.saturating_sub(free) as usize;
        std::fs::write(&filler, vec![b'x'; size]).unwrap();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = std::ffi::CString::new(self.0.to_string_lossy().as_bytes()).unwrap();
        // SAFETY: unmounting what we mounted.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        if let Err(e) = std::fs::remove_dir(&self.0) {
            eprintln!("failed to remove {}: {e}", self.0.display());
        }
    }
}

#[test]
fn a_sigkill_mid_burst_leaves_only_whole_lines() {
    let site = Site::new("kill", "");
    let file = site.path("alerts.jsonl");
    site.set_outputs(&format!("  alerts_file: {file}\n"));
    let monitor = site.start();
    let mut writer = site.writer(2000, 0.0);
    wait_until("alerts in the file", WAIT, || {
        read_lines(Path::new(&file))
            .0
            .iter()
            .filter(|v| is_write_alert(v))
            .count()
            >= 50
    });
    monitor.signal(libc::SIGKILL);
    writer.wait().unwrap();
    drop(monitor);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.ends_with('\n'), "the file ends in a whole line");
    let (whole, broken) = read_lines(Path::new(&file));
    assert!(broken.is_empty(), "broken lines: {broken:?}");
    assert!(whole.iter().filter(|v| is_write_alert(v)).count() >= 50);
    // Nothing to repair at the next start.
    let monitor = site.start();
    site.burst(1);
    wait_until("the next alert", WAIT, || {
        read_lines(Path::new(&file)).0.len() > whole.len()
    });
    drop(monitor);
    let (again, broken) = read_lines(Path::new(&file));
    assert!(broken.is_empty());
    assert!(!again
        .iter()
        .any(|v| v["security_rule.name"] == "alerts-file-repaired"));
}

#[test]
fn a_full_disk_under_the_alerts_file_loses_no_alert_and_tears_no_line() {
    let disk = Tmpfs::new("8k");
    let site = Site::new("full-file", "");
    let file = disk.0.join("alerts.jsonl");
    site.set_outputs(&format!("  alerts_file: {}\n", file.display()));
    // One page left: the alerts that fill it, then one cut short by ENOSPC.
    let filler = disk.fill(4096);
    let monitor = site.start();
    site.burst(30);
    wait_until("a full disk", WAIT, || {
        std::fs::metadata(&file).map_or(0, |m| m.len()) == 4096
    });
    thread::sleep(Duration::from_millis(500));
    let text = std::fs::read(&file).unwrap();
    assert_ne!(text.last(), Some(&b'\n'), "the disk filled up mid-line");
    // Room again: the monitor finishes the line and writes what waited, in order.
    std::fs::remove_file(&filler).unwrap();
    disk.resize("1m");
    let waited = Instant::now();
    while read_lines(&file)
        .0
        .iter()
        .filter(|v| is_write_alert(v))
        .count()
        != 30
    {
        if waited.elapsed() > WAIT {
            let (whole, broken) = read_lines(&file);
            panic!(
                "not all 30 alerts: {} whole lines, broken {broken:?}; last {:?}; stderr:\n{}",
                whole.len(),
                whole.last(),
                monitor.stderr()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    let (whole, broken) = read_lines(&file);
    assert!(broken.is_empty(), "{broken:?}");
    assert!(std::fs::read(&file).unwrap().ends_with(b"\n"));
    let paths: HashSet<&str> = whole
        .iter()
        .filter(|v| is_write_alert(v))
        .map(|v| v["file.path"].as_str().unwrap())
        .collect();
    assert_eq!(paths.len(), 30);
    drop(monitor);
}

#[test]
fn a_line_torn_by_a_full_disk_and_a_kill_is_repaired_and_reported_at_restart() {
    let disk = Tmpfs::new("8k");
    let site = Site::new("repair", "");
    let file = disk.0.join("alerts.jsonl");
    site.set_outputs(&format!("  alerts_file: {}\n", file.display()));
    let filler = disk.fill(4096);
    let monitor = site.start();
    site.burst(30);
    wait_until("a full disk", WAIT, || {
        std::fs::metadata(&file).map_or(0, |m| m.len()) == 4096
    });
    // Killed while the rest of the line waits in memory: the file ends in half a line.
    monitor.signal(libc::SIGKILL);
    drop(monitor);
    let text = std::fs::read(&file).unwrap();
    assert_ne!(text.last(), Some(&b'\n'));
    let torn = text.iter().rev().take_while(|&&b| b != b'\n').count();
    std::fs::remove_file(&filler).unwrap();
    let monitor = site.start();
    wait_until("the repair", WAIT, || {
        read_lines(&file)
            .0
            .iter()
            .any(|v| v["security_rule.name"] == "alerts-file-repaired")
    });
    site.burst(1);
    wait_until("the next alert", WAIT, || {
        read_lines(&file)
            .0
            .iter()
            .filter(|v| is_write_alert(v))
            .count()
            > text.iter().filter(|&&b| b == b'\n').count()
    });
    drop(monitor);
    let (whole, broken) = read_lines(&file);
    // The torn line stays (it is evidence) but ends; everything after it is whole.
    assert_eq!(broken.len(), 1, "{broken:?}");
    assert_eq!(broken[0].len(), torn);
    let repair = whole
        .iter()
        .find(|v| v["security_rule.name"] == "alerts-file-repaired")
        .unwrap();
    assert_eq!(repair["monitor.alerts_file.torn_bytes"], torn);
    assert_eq!(repair["file.path"], file.display().to_string());
    assert_eq!(repair["severity"], "medium");
    assert!(std::fs::read(&file).unwrap().ends_with(b"\n"));
}

#[test]
fn log_rotation_by_rename_with_sighup_without_a_signal_and_by_copytruncate() {
    let site = Site::new("rotate", "");
    let file = PathBuf::from(site.path("alerts.jsonl"));
    site.set_outputs(&format!("  alerts_file: {}\n", file.display()));
    let monitor = site.start();
    let count = |path: &Path| {
        read_lines(path)
            .0
            .iter()
            .filter(|v| is_write_alert(v))
            .count()
    };
    site.burst(3);
    wait_until("3 alerts", WAIT, || count(&file) == 3);
    // logrotate `create` + postrotate `kill -HUP`.
    let first = file.with_extension("jsonl.1");
    std::fs::rename(&file, &first).unwrap();
    monitor.signal(libc::SIGHUP);
    thread::sleep(Duration::from_millis(300));
    site.burst(2);
    wait_until("2 alerts in the new file", WAIT, || count(&file) == 2);
    assert_eq!(count(&first), 3, "nothing more went to the renamed file");
    // `create` with no signal: the path names another file.
    let second = file.with_extension("jsonl.2");
    std::fs::rename(&file, &second).unwrap();
    std::fs::write(&file, b"").unwrap();
    thread::sleep(Duration::from_millis(2500));
    site.burst(2);
    wait_until("2 alerts in the third file", WAIT, || count(&file) == 2);
    assert_eq!(count(&second), 2);
    // `copytruncate`: the same file, cut to zero under the monitor.
    std::fs::copy(&file, file.with_extension("jsonl.3")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(0)
        .unwrap();
    site.burst(1);
    wait_until("1 alert after the truncation", WAIT, || count(&file) == 1);
    let data = std::fs::read(&file).unwrap();
    assert_eq!(data[0], b'{', "no hole of zeros before the next line");
    let (_, broken) = read_lines(&file);
    assert!(broken.is_empty());
    drop(monitor);
}

/// How the collector answers a logs request.
#[derive(Clone, Debug)]
enum Answer {
    Status(u16, &'static str),
    /// Read the request, answer nothing for this long, then close.
    Hang(Duration),
}

#[derive(Default)]
struct Seen {
    script: VecDeque<Answer>,
    /// Bodies of the logs requests answered 200.
    accepted: Vec<Vec<u8>>,
    /// Logs requests answered otherwise.
    refused: usize,
}

/// An OTLP/HTTP collector in the test process: answers logs requests as scripted (200 once
/// the script is done), metrics requests with 200.
struct Collector {
    port: u16,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
}

impl Collector {
    fn start(script: impl IntoIterator<Item = Answer>) -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Seen {
            script: script.into_iter().collect(),
            ..Seen::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (accept_seen, accept_stop) = (seen.clone(), stop.clone());
        thread::spawn(move || {
            while !accept_stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let seen = accept_seen.clone();
                        thread::spawn(move || serve(stream, seen));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Collector { port, seen, stop }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Whether an accepted request carried this text (a `log.record.uid`).
    fn has(&self, text: &str) -> bool {
        let seen = self.seen.lock().unwrap();
        seen.accepted
            .iter()
            .any(|body| body.windows(text.len()).any(|w| w == text.as_bytes()))
    }

    fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.seen.lock().unwrap().script.extend(answers);
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Serves one keep-alive connection.
fn serve(mut stream: TcpStream, seen: Arc<Mutex<Seen>>) {
    stream.set_nonblocking(false).unwrap();
    let mut buf = Vec::new();
    loop {
        // Headers.
        let end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while buf.len() < end + length {
            let mut chunk = [0u8; 65536];
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[end..end + length].to_vec();
        buf.drain(..end + length);
        // Heartbeats (`monitor.heartbeat`) are answered 200: the script is for alerts.
        let heartbeat = body
            .windows(b"monitor.heartbeat".len())
            .any(|w| w == b"monitor.heartbeat");
        let answer = if head.starts_with("post /v1/logs") && !heartbeat {
            let mut seen = seen.lock().unwrap();
            let answer = seen.script.pop_front().unwrap_or(Answer::Status(200, ""));
            match answer {
                Answer::Status(200, _) => seen.accepted.push(body),
                _ => seen.refused += 1,
            }
            answer
        } else {
            Answer::Status(200, "")
        };
        match answer {
            Answer::Status(code, text) => {
                let content_type = if code == 200 {
                    "application/x-protobuf"
                } else {
                    "text/plain"
                };
                // "Come back in a second" where a collector would say it, so the tests do
                // not wait for the exporter's longest back-off.
                let retry_after = if code == 429 || code == 503 {
                    "retry-after: 1\r\n"
                } else {
                    ""
                };
                let response = format!(
                    "HTTP/1.1 {code} X\r\ncontent-type: {content_type}\r\n{retry_after}content-length: {}\r\n\r\n{text}",
                    text.len()
                );
                if stream.write_all(response.as_bytes()).is_err() {
                    return;
                }
            }
            Answer::Hang(time) => {
                thread::sleep(time);
                return;
            }
        }
    }
}

fn otlp_outputs(collector: &Collector, spool: &Path, max_bytes: u64) -> String {
    format!(
        "  otlp: {{ endpoint: \"{}\", protocol: http/protobuf }}\n  spool: {{ dir: {}, max_bytes: {max_bytes} }}\n",
        collector.endpoint(),
        spool.display()
    )
}

/// The uids of the write alerts the monitor printed.
fn printed_uids(monitor: &Monitor) -> Vec<String> {
    monitor
        .lines()
        .iter()
        .filter(|v| is_write_alert(v))
        .map(|v| v["log.record.uid"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_collector_that_refuses_or_hangs_loses_nothing() {
    let collector = Collector::start([
        Answer::Status(500, "internal error, try later"),
        Answer::Status(429, "slow down"),
        Answer::Hang(Duration::from_secs(3)),
        Answer::Status(503, "unavailable"),
    ]);
    let site = Site::new("refuse", "");
    let spool = PathBuf::from(site.path("spool"));
    site.set_outputs(&otlp_outputs(&collector, &spool, 1 << 20));
    // A short timeout, so the hang is a retry within the test's patience.
    // SAFETY: the end-to-end tests run on one thread (--test-threads=1).
    std::env::set_var("OTEL_EXPORTER_OTLP_TIMEOUT", "1000");
    let monitor = site.start();
    std::env::remove_var("OTEL_EXPORTER_OTLP_TIMEOUT");
    site.burst(5);
    wait_printed(&monitor, 5);
    let first = printed_uids(&monitor);
    wait_until(
        "the retried alerts at the collector",
        Duration::from_secs(40),
        || first.iter().all(|u| collector.has(u)),
    );
    assert!(collector.seen.lock().unwrap().refused >= 4);
    // Now a refusal for good: kept as dead letters, reported with the collector's answer.
    collector.script([Answer::Status(400, "attribute monitor.count: bad value")]);
    site.burst(3);
    let rejected = monitor.wait_for("export-rejected", WAIT, |v| {
        v["security_rule.name"] == "export-rejected"
    });
    assert_eq!(rejected["http.response.status_code"], 400);
    let response = rejected["monitor.export.response"].as_str().unwrap();
    assert!(
        response.contains("400") && response.contains("attribute monitor.count: bad value"),
        "{response}"
    );
    let dead = spool.join("dead-letter");
    assert_eq!(
        rejected["monitor.export.dead_letter_dir"],
        dead.display().to_string()
    );
    let all = printed_uids(&monitor);
    let refused: Vec<&String> = all.iter().filter(|u| !collector.has(u)).collect();
    assert!(!refused.is_empty(), "some alerts were refused");
    // Replayed by the operator, while the monitor runs: nothing is lost.
    let output = Command::new(monitor_bin())
        .args(["spool", "replay", "--config", &site.path("config.yaml")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The refused batch: at least one alert, at most those not at the collector when the
    // refusal was seen (alerts of the burst that went in the next, accepted, batch may still
    // have been on their way then).
    let replayed: usize = stdout
        .split("replayed ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no replay count in {stdout:?}"));
    assert!(
        (1..=refused.len()).contains(&replayed),
        "replayed {replayed}, {} not at the collector: {stdout}",
        refused.len()
    );
    for uid in &all {
        assert!(
            collector.has(uid),
            "alert {uid} never reached the collector"
        );
    }
    drop(monitor);
}

#[test]
fn a_full_disk_under_the_spool_holds_alerts_in_memory_then_delivers_them() {
    let disk = Tmpfs::new("16k");
    let collector = Collector::start([]);
    // The collector is down at first (503): alerts pile up in the spool until the disk is full.
    collector.script(std::iter::repeat_n(Answer::Status(503, "down"), 1000));
    let site = Site::new("full-spool", "");
    let spool = disk.0.join("spool");
    site.set_outputs(&otlp_outputs(&collector, &spool, 64 << 20));
    let monitor = site.start();
    site.burst(80);
    let failed = monitor.wait_for("spool-write-failed", WAIT, |v| {
        v["security_rule.name"] == "spool-write-failed"
    });
    assert!(
        failed["error.type"]
            .as_str()
            .unwrap()
            .contains("No space left on device"),
        "{failed}"
    );
    assert_eq!(failed["monitor.spool.dir"], spool.display().to_string());
    wait_printed(&monitor, 80);
    // Room again, and the collector back: every alert arrives.
    disk.resize("4m");
    collector.seen.lock().unwrap().script.clear();
    let uids = printed_uids(&monitor);
    wait_until(
        "every alert at the collector",
        Duration::from_secs(40),
        || uids.iter().all(|u| collector.has(u)),
    );
    let lines = monitor.stop();
    // One notice for the one spell, and no drop.
    assert_eq!(
        lines
            .iter()
            .filter(|v| v["security_rule.name"] == "spool-write-failed")
            .count(),
        1
    );
    assert!(!lines
        .iter()
        .any(|v| v["security_rule.name"] == "spool-dropped"));
}

#[test]
fn drop_counts_in_a_tiny_spool_match_what_is_missing() {
    let collector = Collector::start(std::iter::repeat_n(Answer::Status(503, "down"), 100_000));
    let site = Site::new("tiny-spool", "");
    let spool = PathBuf::from(site.path("spool"));
    site.set_outputs(&otlp_outputs(&collector, &spool, 8 << 10));
    let monitor = site.start();
    site.burst(60);
    wait_printed(&monitor, 60);
    // Let the drop reports be written, then let the collector in.
    thread::sleep(Duration::from_millis(1500));
    collector.seen.lock().unwrap().script.clear();
    thread::sleep(Duration::from_secs(3));
    // Stopping drains the spool to the collector.
    let lines = monitor.stop();
    // Every alert the monitor raised (the other outputs' own notices are not exported).
    let notices = [
        "spool-dropped",
        "spool-write-failed",
        "export-rejected",
        "alert-output-failed",
    ];
    let uids: Vec<&str> = lines
        .iter()
        .filter(|v| v["event.name"] == "monitor.alert")
        .filter(|v| !notices.iter().any(|n| v["security_rule.name"] == *n))
        .map(|v| v["log.record.uid"].as_str().unwrap())
        .collect();
    assert!(uids.len() >= 60);
    let missing = uids.iter().filter(|u| !collector.has(u)).count() as u64;
    assert!(missing > 0, "a spool of 8 KiB cannot hold 60 alerts");
    // The reports printed on stdout (the other output) add up to what is missing.
    let reported: u64 = lines
        .iter()
        .filter(|v| v["security_rule.name"] == "spool-dropped")
        .map(|v| {
            ["low", "medium", "high", "critical"]
                .iter()
                .map(|s| v[format!("monitor.spool.dropped.{s}")].as_u64().unwrap())
                .sum::<u64>()
        })
        .sum();
    assert_eq!(reported, missing, "reported drops vs alerts missing");
    // And the reports themselves reached the collector (they are never dropped).
    assert!(collector.has("spool-dropped"));
}

#[test]
fn files_are_private_with_a_umask_of_000() {
    let collector = Collector::start([Answer::Status(400, "no")]);
    let site = Site::new("modes", "");
    let dir = PathBuf::from(site.path("state"));
    let file = dir.join("alerts.jsonl");
    let spool = dir.join("spool");
    site.set_outputs(&format!(
        "  alerts_file: {}\n{}",
        file.display(),
        otlp_outputs(&collector, &spool, 1 << 20)
    ));
    // SAFETY: umask is inherited by the monitor; restored at once.
    let old = unsafe { libc::umask(0) };
    let monitor = site.start();
    unsafe { libc::umask(old) };
    site.burst(3);
    wait_until("a dead letter", WAIT, || spool.join("dead-letter").exists());
    wait_until("3 alerts", WAIT, || {
        read_lines(&file)
            .0
            .iter()
            .filter(|v| is_write_alert(v))
            .count()
            == 3
    });
    drop(monitor);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&spool), 0o700);
    assert_eq!(mode(&spool.join("dead-letter")), 0o700);
    let mut files = 0;
    for dir in [spool.clone(), spool.join("dead-letter")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                assert_eq!(mode(&path), 0o600, "{}", path.display());
                files += 1;
            }
        }
    }
    assert!(files >= 3, "lock files and segments checked");
}
