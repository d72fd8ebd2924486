//! End-to-end tests of the OTLP export against a real collector that we did not write:
//! Rotel (a Rust OpenTelemetry collector shipped as a Python wheel), which prints every log
//! record it receives. The alert comes from the real kernel: a burst of execs overflows a
//! one-page ring buffer, and `monitor run` raises `events-lost`.

use std::{
    io::Read,
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use tests::{marker, unique, Monitor};

/// The Rotel release these tests were written against.
const ROTEL: &str = "rotel==0.0.1a15";

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// `rotel-agent`, installed with pip under `target/rotel-py` the first time.
fn rotel_agent() -> PathBuf {
    let dir = target_dir().join("rotel-py");
    let agent = dir.join("rotel").join("rotel-agent");
    if agent.exists() {
        return agent;
    }
    // Install beside it, then rename: a cut-short install never looks complete.
    let staging = target_dir().join(format!("rotel-py.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let output = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--pre", "--target"])
        .arg(&staging)
        .arg(ROTEL)
        .output()
        .unwrap_or_else(|e| panic!("failed to run python3 -m pip to install Rotel: {e}"));
    if !output.status.success() {
        let _ = std::fs::remove_dir_all(&staging);
        panic!(
            "failed to install Rotel, the OTLP collector of these tests (`python3 -m pip \
             install --pre --target {} {ROTEL}`): it needs PyPI once; pip said:\n{}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    if std::fs::rename(&staging, &dir).is_err() {
        // Another test process got there first.
        let _ = std::fs::remove_dir_all(&staging);
    }
    assert!(agent.exists(), "the Rotel wheel has no {}", agent.display());
    agent
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running Rotel printing what it receives; killed when dropped.
struct Rotel {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

fn collect(mut from: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

impl Rotel {
    fn start(grpc_port: u16, http_port: u16) -> Rotel {
        Rotel::start_printing(grpc_port, http_port, &["logs"])
    }

    /// A Rotel that prints what it receives of each signal in `print` (`logs`, `metrics`).
    fn start_printing(grpc_port: u16, http_port: u16, print: &[&str]) -> Rotel {
        let mut command = Command::new(rotel_agent());
        command
            .args(["start", "--otlp-grpc-endpoint"])
            .arg(format!("127.0.0.1:{grpc_port}"))
            .arg("--otlp-http-endpoint")
            .arg(format!("127.0.0.1:{http_port}"))
            .args(["--exporter", "blackhole"]);
        for signal in print {
            command.args(["--debug-log", signal]);
        }
        let mut child = command
            .args(["--debug-log-verbosity", "detailed"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start rotel-agent: {e}"));
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        let mut rotel = Rotel {
            child,
            stdout,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        for port in [grpc_port, http_port] {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                if let Some(status) = rotel.child.try_wait().unwrap() {
                    panic!("rotel-agent exited with {status}: {}", rotel.output());
                }
                assert!(
                    Instant::now() < deadline,
                    "rotel-agent not listening on {addr} after 30 s: {}",
                    rotel.output()
                );
                thread::sleep(Duration::from_millis(50));
            }
        }
        rotel
    }

    fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.stdout.lock().unwrap(),
            self.stderr.lock().unwrap()
        )
    }

    /// Waits for a printed log record with every one of `lines` (e.g. `security_rule.name:
    /// Str(events-lost)`); returns the record's text.
    fn wait_for_record(&self, lines: &[String], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let stdout = self.stdout.lock().unwrap().clone();
            if let Some(record) = stdout
                .split("LogRecord #")
                .find(|record| lines.iter().all(|line| record.contains(line.as_str())))
            {
                return record.to_string();
            }
            if Instant::now() > deadline {
                panic!(
                    "rotel printed no log record with {lines:?} within {timeout:?}; {}",
                    self.output()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Rotel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A spool directory of its own, removed at the end.
struct SpoolDir(PathBuf);

impl SpoolDir {
    fn new() -> SpoolDir {
        let path = std::env::temp_dir().join(format!(
            "monitor-otlp-e2e-{}-{}",
            std::process::id(),
            unique()
        ));
        let _ = std::fs::remove_dir_all(&path);
        SpoolDir(path)
    }

    fn arg(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }
}

impl Drop for SpoolDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `monitor run` with a one-page ring buffer drained every 2 s, exporting to `endpoint`.
fn run_monitor(endpoint: &str, protocol: &str, spool: &SpoolDir) -> Monitor {
    Monitor::start(&[
        "run",
        "--otlp-endpoint",
        endpoint,
        "--otlp-protocol",
        protocol,
        "--spool-dir",
        &spool.arg(),
        "--ring-size",
        "4096",
        "--drain-interval-ms",
        "2000",
        "--wakeup-bytes",
        "1000000000",
    ])
}

/// Overflows the ring buffer with execs; returns the uid of the `events-lost` alert that
/// `monitor run` printed.
fn cause_events_lost(monitor: &Monitor) -> String {
    let tag = marker("otlp-burst");
    for _ in 0..200 {
        Command::new("/bin/true").arg(&tag).status().unwrap();
    }
    let alert = monitor.wait_for("an events-lost alert", Duration::from_secs(15), |v| {
        v["security_rule.name"] == "events-lost"
    });
    assert_eq!(alert["severity"], "high");
    alert["log.record.uid"]
        .as_str()
        .expect("the alert has a log.record.uid")
        .to_string()
}

fn expect_alert_at_rotel(rotel: &Rotel, uid: &str) {
    let record = rotel.wait_for_record(
        &[
            "security_rule.name: Str(events-lost)".to_string(),
            format!("log.record.uid: Str({uid})"),
        ],
        Duration::from_secs(20),
    );
    assert!(record.contains("EventName: monitor.alert"), "{record}");
    assert!(record.contains("SeverityText: ERROR"), "{record}");
    assert!(
        record.contains("monitor.loss.stage: Str(kernel)"),
        "{record}"
    );
}

fn alert_reaches_rotel(protocol: &str) {
    let (grpc_port, http_port) = (free_port(), free_port());
    let rotel = Rotel::start(grpc_port, http_port);
    let port = if protocol == "grpc" {
        grpc_port
    } else {
        http_port
    };
    let spool = SpoolDir::new();
    let monitor = run_monitor(&format!("http://127.0.0.1:{port}"), protocol, &spool);
    let uid = cause_events_lost(&monitor);
    expect_alert_at_rotel(&rotel, &uid);
    let output = rotel.output();
    assert!(
        output.contains("service.name: Str(monitor)"),
        "the resource names the service: {output}"
    );
    monitor.stop();
}

#[test]
fn alert_reaches_a_real_collector_over_http() {
    alert_reaches_rotel("http");
}

#[test]
fn alert_reaches_a_real_collector_over_grpc() {
    alert_reaches_rotel("grpc");
}

#[test]
fn alert_raised_while_the_collector_is_down_arrives_after_a_restart() {
    let (grpc_port, http_port) = (free_port(), free_port());
    let spool = SpoolDir::new();
    let endpoint = format!("http://127.0.0.1:{http_port}");
    // The collector is down: the alert waits in the spool, also across the monitor's exit.
    let monitor = run_monitor(&endpoint, "http", &spool);
    let uid = cause_events_lost(&monitor);
    monitor.stop();
    let segments = std::fs::read_dir(&spool.0)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        })
        .count();
    assert!(
        segments > 0,
        "the alert is spooled in {}",
        spool.0.display()
    );
    let rotel = Rotel::start(grpc_port, http_port);
    let monitor = run_monitor(&endpoint, "http", &spool);
    expect_alert_at_rotel(&rotel, &uid);
    monitor.stop();
}

/// The heartbeat: a `monitor.heartbeat` log record and the `monitor.up` gauge every
/// `heartbeat_secs` (1 s here), seen by the real collector; and silence once the monitor
/// stops, which is what the collector-side rule in the README alerts on.
#[test]
fn the_heartbeat_and_monitor_up_reach_a_real_collector_until_the_monitor_stops() {
    let (grpc_port, http_port) = (free_port(), free_port());
    let rotel = Rotel::start_printing(grpc_port, http_port, &["logs", "metrics"]);
    let spool = SpoolDir::new();
    let site = std::env::temp_dir().join(marker("otlp-heartbeat"));
    std::fs::create_dir_all(&site).unwrap();
    let config = site.join("config.yaml");
    std::fs::write(&config, "heartbeat_secs: 1\n").unwrap();
    let endpoint = format!("http://127.0.0.1:{http_port}");
    let monitor = Monitor::start(&[
        "run",
        "--config",
        &config.to_string_lossy(),
        "--otlp-endpoint",
        &endpoint,
        "--otlp-protocol",
        "http",
        "--spool-dir",
        &spool.arg(),
    ]);
    let record = rotel.wait_for_record(
        &[
            "EventName: monitor.heartbeat".to_string(),
            "monitor.up: Int(1)".to_string(),
            format!("process.pid: Int({})", monitor.pid()),
        ],
        Duration::from_secs(20),
    );
    assert!(record.contains("SeverityText: INFO"), "{record}");
    assert!(
        record.contains("monitor.heartbeat.interval_secs: Int(1)"),
        "{record}"
    );
    let count = |what: &str| rotel.stdout.lock().unwrap().matches(what).count();
    let beats = || {
        (
            count("EventName: monitor.heartbeat"),
            count("-> Name: monitor.up"),
        )
    };
    let before = beats();
    thread::sleep(Duration::from_millis(3500));
    let during = beats();
    assert!(
        during.0 >= before.0 + 2 && during.1 >= before.1 + 2,
        "(records, monitor.up points): {before:?} then {during:?} in 3.5 s"
    );
    let output = rotel.output();
    let metric = output
        .split("Metric #")
        .find(|m| m.contains("-> Name: monitor.up"))
        .unwrap_or_else(|| panic!("no monitor.up metric: {output}"));
    assert!(metric.contains("DataType: Gauge"), "{metric}");
    assert!(metric.contains("Value: 1"), "{metric}");
    monitor.stop();
    thread::sleep(Duration::from_millis(500));
    let stopped = beats();
    thread::sleep(Duration::from_secs(3));
    assert_eq!(beats(), stopped, "heartbeats after the stop");
    let _ = std::fs::remove_dir_all(&site);
}
