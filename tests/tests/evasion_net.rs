//! End-to-end tests of the ways around the network and accelerator sensors, each done for
//! real by a small C program (`tests/src/netprobe.c`, raw syscalls, built here with `cc`) in
//! the monitor's test cgroup: an io_uring connect, `sendmmsg`, io_uring `SENDMSG` and `SEND`
//! of UDP datagrams (with an address, and on a socket connected under `udp_connect`), an
//! IPv4-mapped IPv6 connect, a
//! sockaddr rewritten by another thread during the connect (TOCTOU), and an io_uring open of
//! an NVIDIA device node. Every destination is on loopback; the forbidden one is 127.0.0.2,
//! which the profile leaves out.

use std::{
    net::{SocketAddr, TcpListener, UdpSocket},
    path::PathBuf,
    process::Stdio,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, OnceLock,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{marker, Monitor, WAIT};

/// Time the prober waits before its attack: the monitor puts it under its profile from its
/// exec event, and the kernel enforces only once it has.
const SETTLE_MS: &str = "700";
const EPERM: i64 = -1;
const ENXIO: i64 = -6;
const FORBIDDEN: &str = "127.0.0.2";

/// The prober, built once per test binary: (governed copy, ungoverned copy).
fn probers() -> &'static (PathBuf, PathBuf) {
    static BUILT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = std::env::temp_dir().join(marker("netprobe"));
        std::fs::create_dir_all(&dir).unwrap();
        let dir = std::fs::canonicalize(dir).unwrap();
        let governed = tests::build_c("netprobe", &dir);
        let ungoverned = dir.join("devprobe");
        std::fs::copy(&governed, &ungoverned).unwrap();
        (governed, ungoverned)
    })
}

/// A listener on the forbidden address that counts the connections it accepts.
struct Counter {
    port: u16,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Counter {
    fn on(listener: TcpListener) -> Counter {
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, done) = (accepted.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !done.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        count.fetch_add(1, Ordering::Relaxed);
                        held.push(stream);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        Counter {
            port,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A monitor with one profile governing the prober, in alert or enforce mode.
struct Site {
    dir: PathBuf,
    /// The allowed TCP listener (127.0.0.1) and the forbidden one on the same port (127.0.0.2),
    /// both accepting (a full backlog would stall the connects).
    allowed: Counter,
    forbidden: Counter,
    /// The allowed UDP destination, and a forbidden one.
    udp_allowed: UdpSocket,
    udp_forbidden: UdpSocket,
    /// A UDP destination on the forbidden address that `udp_connect` allows a socket to be
    /// connected to (which sends nothing), and no datagram to reach.
    udp_connectable: UdpSocket,
    monitor: Monitor,
}

impl Site {
    fn new(name: &str, enforce: bool) -> Site {
        let (governed, _) = probers();
        let dir = std::env::temp_dir().join(marker(name));
        std::fs::create_dir_all(&dir).unwrap();
        let dir = std::fs::canonicalize(dir).unwrap();
        // The same port on both addresses, so that the TOCTOU thread flips only the address.
        let (allowed, forbidden) = loop {
            let allowed = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = allowed.local_addr().unwrap().port();
            if let Ok(forbidden) = TcpListener::bind((FORBIDDEN, port)) {
                break (Counter::on(allowed), forbidden);
            }
        };
        let udp_allowed = UdpSocket::bind("127.0.0.1:0").unwrap();
        let udp_forbidden = UdpSocket::bind((FORBIDDEN, 0)).unwrap();
        let udp_connectable = UdpSocket::bind((FORBIDDEN, 0)).unwrap();
        let mode = if enforce { "enforce" } else { "alert" };
        std::fs::write(
            dir.join("prober.yaml"),
            format!(
                r#"name: prober
selector:
  executables: ["{exe}"]
mode: {mode}
allow:
  exec: []
  files:
    read: ["/**"]
    write: ["/**"]
  network:
    connect: ["127.0.0.1:{tcp}", "127.0.0.1:{udp}"]
    udp_connect: ["{FORBIDDEN}:{connectable}"]
  devices: [nvidia]
  # The probes use io_uring on purpose: judged here are the address and the device it
  # reaches, not the ring itself (io-uring-not-allowed has its own tests).
  io_uring: true
"#,
                exe = governed.display(),
                tcp = allowed.port,
                udp = udp_allowed.local_addr().unwrap().port(),
                connectable = udp_connectable.local_addr().unwrap().port(),
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("config.yaml"),
            format!(
                r#"builtin_profiles: false
profiles: ["{dir}/prober.yaml"]
guards:
  gpu:
    allow: [prober]
    enforce: {enforce}
dedup_window_secs: 0
"#,
                dir = dir.display()
            ),
        )
        .unwrap();
        let config = dir.join("config.yaml").to_string_lossy().into_owned();
        let monitor = Monitor::start(&["run", "--config", &config]);
        Site {
            dir,
            allowed,
            forbidden: Counter::on(forbidden),
            udp_allowed,
            udp_forbidden,
            udp_connectable,
            monitor,
        }
    }

    fn port(&self) -> u16 {
        self.allowed.port
    }

    fn udp_port(&self) -> u16 {
        self.udp_allowed.local_addr().unwrap().port()
    }

    fn udp_forbidden_port(&self) -> u16 {
        self.udp_forbidden.local_addr().unwrap().port()
    }

    /// Runs the prober (governed, or its ungoverned copy) in the monitor's cgroup: its pid
    /// and the line it printed.
    fn probe(&self, governed: bool, args: &[&str]) -> (u32, String) {
        let (with_profile, without) = probers();
        let exe = if governed { with_profile } else { without };
        let child = self
            .monitor
            .cgroup
            .command(&exe.to_string_lossy())
            .arg(if governed { SETTLE_MS } else { "0" })
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "prober {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        (
            pid,
            String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        )
    }

    /// `res=N` of a prober run.
    fn probe_res(&self, governed: bool, args: &[&str]) -> (u32, i64) {
        let (pid, line) = self.probe(governed, args);
        let res = line
            .strip_prefix("res=")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("prober printed `{line}`"));
        (pid, res)
    }

    /// Waits for an alert of `rule` about `pid`.
    fn alert(&self, rule: &'static str, pid: u32) -> Value {
        self.monitor
            .wait_for(&format!("{rule} of pid {pid}"), WAIT, move |v| {
                v["security_rule.name"] == rule && v["process.pid"] == pid
            })
    }

    /// Every alert so far about `pid`.
    fn alerts_of(&self, pid: u32) -> Vec<Value> {
        self.monitor
            .lines()
            .into_iter()
            .filter(|v| v["event.name"] == "monitor.alert" && v["process.pid"] == pid)
            .collect()
    }

    /// A forbidden connect by a governed prober, and its alert: every event before it has
    /// been judged once this returns.
    fn sentinel(&self) {
        let port = self.forbidden.port.to_string();
        let (pid, _) = self.probe_res(true, &["connect", FORBIDDEN, &port]);
        self.alert("connect-not-allowed", pid);
    }

    fn node(&self) -> PathBuf {
        let node = self.dir.join("nvidia0");
        if !node.exists() {
            let path = std::ffi::CString::new(node.to_string_lossy().into_owned()).unwrap();
            // SAFETY: creating a device node as root in our scratch directory.
            let ret =
                unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(195, 0)) };
            assert_eq!(ret, 0, "mknod: {}", std::io::Error::last_os_error());
        }
        node
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The action an alert should say, and what the attempt returns, by mode.
fn expected(enforce: bool) -> &'static str {
    if enforce {
        "denied"
    } else {
        "alert"
    }
}

fn assert_acted(alert: &Value, enforce: bool, mechanism: &str) {
    assert_eq!(alert["monitor.action"], expected(enforce), "{alert}");
    if enforce {
        assert_eq!(alert["monitor.enforcement.mechanism"], mechanism, "{alert}");
        assert_eq!(alert["error.type"], "EPERM", "{alert}");
    }
    assert!(alert.get("monitor.unverified").is_none(), "{alert}");
}

fn peer_of(alert: &Value) -> SocketAddr {
    format!(
        "{}:{}",
        alert["network.peer.address"].as_str().unwrap_or("?"),
        alert["network.peer.port"]
    )
    .parse()
    .unwrap_or_else(|_| panic!("no peer in {alert}"))
}

fn io_uring_connect(enforce: bool) {
    let site = Site::new("uring-connect", enforce);
    let port = site.forbidden.port.to_string();
    let (pid, res) = site.probe_res(true, &["uring-connect", FORBIDDEN, &port]);
    let alert = site.alert("connect-not-allowed", pid);
    assert_eq!(
        peer_of(&alert),
        format!("{FORBIDDEN}:{port}").parse().unwrap()
    );
    assert_eq!(alert["network.transport"], "tcp");
    assert_acted(&alert, enforce, "cgroup-sock-addr");
    if enforce {
        assert_eq!(res, EPERM);
        assert_eq!(site.forbidden.accepted(), 0);
    } else {
        assert_eq!(res, 0);
    }
}

#[test]
fn io_uring_connect_raises_an_alert() {
    io_uring_connect(false);
}

#[test]
fn io_uring_connect_is_denied_with_its_alert() {
    io_uring_connect(true);
}

fn sendmmsg(enforce: bool) {
    let site = Site::new("sendmmsg", enforce);
    let port = site.udp_forbidden_port().to_string();
    let (pid, res) = site.probe_res(true, &["sendmmsg", FORBIDDEN, &port, "4"]);
    let alert = site.alert("connect-not-allowed", pid);
    assert_eq!(
        peer_of(&alert),
        format!("{FORBIDDEN}:{port}").parse().unwrap()
    );
    assert_eq!(alert["network.transport"], "udp");
    assert_eq!(alert["monitor.network.operation"], "send");
    assert_acted(&alert, enforce, "cgroup-sock-addr");
    if enforce {
        assert_eq!(res, EPERM);
        site.udp_forbidden.set_nonblocking(true).unwrap();
        assert!(
            site.udp_forbidden.recv(&mut [0; 8]).is_err(),
            "nothing arrived"
        );
    } else {
        assert_eq!(res, 4);
    }
}

#[test]
fn sendmmsg_to_a_forbidden_destination_raises_an_alert() {
    sendmmsg(false);
}

#[test]
fn sendmmsg_to_a_forbidden_destination_is_denied_with_its_alert() {
    sendmmsg(true);
}

/// Whether a datagram arrived at `socket` (waits a little: loopback delivers at once).
fn received(socket: &UdpSocket) -> bool {
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    socket.recv(&mut [0; 8]).is_ok()
}

/// A UDP datagram to a forbidden destination by io_uring rather than a syscall: with the
/// address in a msghdr (`IORING_OP_SENDMSG`) or in the SQE (`IORING_OP_SEND`, sendto by
/// ring). The kernel's `udp_sendmsg` runs the cgroup `sendmsg4` program whoever calls it.
fn io_uring_datagram(mode: &str, enforce: bool) {
    let site = Site::new(mode, enforce);
    let port = site.udp_forbidden_port().to_string();
    let (pid, res) = site.probe_res(true, &[mode, FORBIDDEN, &port]);
    let alert = site.alert("connect-not-allowed", pid);
    assert_eq!(
        peer_of(&alert),
        format!("{FORBIDDEN}:{port}").parse().unwrap()
    );
    assert_eq!(alert["network.transport"], "udp", "{alert}");
    assert_eq!(alert["monitor.network.operation"], "send", "{alert}");
    assert_acted(&alert, enforce, "cgroup-sock-addr");
    if enforce {
        assert_eq!(res, EPERM);
        assert!(!received(&site.udp_forbidden), "nothing arrived");
    } else {
        assert_eq!(res, 1, "the datagram's one byte was sent");
        assert!(received(&site.udp_forbidden), "the datagram arrived");
    }
}

#[test]
fn io_uring_sendmsg_to_a_forbidden_destination_raises_an_alert() {
    io_uring_datagram("uring-sendmsg", false);
}

#[test]
fn io_uring_sendmsg_to_a_forbidden_destination_is_denied_with_its_alert() {
    io_uring_datagram("uring-sendmsg", true);
}

#[test]
fn io_uring_sendto_to_a_forbidden_destination_raises_an_alert() {
    io_uring_datagram("uring-sendto", false);
}

#[test]
fn io_uring_sendto_to_a_forbidden_destination_is_denied_with_its_alert() {
    io_uring_datagram("uring-sendto", true);
}

/// A UDP socket connected under `udp_connect` (allowed: a connect sends nothing), then its
/// datagram sent by io_uring `IORING_OP_SEND` without an address: no `sendmsg` program sees
/// it; the `cgroup_skb/egress` one judges it against `connect` and drops it.
#[test]
fn io_uring_send_on_a_socket_connected_under_udp_connect_is_denied() {
    let site = Site::new("uring-connected-send", true);
    let port = site
        .udp_connectable
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let (pid, line) = site.probe(true, &["uring-connected-send", FORBIDDEN, &port]);
    assert_eq!(line, "connect=0 res=-1", "connected, then refused (EPERM)");
    let alert = site
        .monitor
        .wait_for("the refused datagram", WAIT, move |v| {
            v["security_rule.name"] == "connect-not-allowed"
                && v["process.pid"] == pid
                && v["monitor.network.operation"] == "send"
        });
    assert_eq!(
        peer_of(&alert),
        format!("{FORBIDDEN}:{port}").parse().unwrap()
    );
    assert_eq!(alert["network.transport"], "udp", "{alert}");
    assert_eq!(alert["monitor.action"], "denied", "{alert}");
    assert!(!received(&site.udp_connectable), "nothing arrived");
}

#[test]
fn ipv4_mapped_ipv6_connects_are_judged_as_ipv4() {
    for enforce in [false, true] {
        let site = Site::new("mapped", enforce);
        let port = site.port().to_string();
        let mapped_forbidden = format!("::ffff:{FORBIDDEN}");
        let (pid, res) = site.probe_res(true, &["connect", &mapped_forbidden, &port]);
        let alert = site.alert("connect-not-allowed", pid);
        assert_eq!(alert["network.peer.address"], FORBIDDEN, "{alert}");
        assert_eq!(alert["network.type"], "ipv4", "{alert}");
        assert_acted(&alert, enforce, "cgroup-sock-addr");
        assert_eq!(res, if enforce { EPERM } else { 0 });
        // The allowed IPv4 address, mapped: allowed, even in enforce mode, and no alert.
        let (allowed_pid, res) = site.probe_res(true, &["connect", "::ffff:127.0.0.1", &port]);
        assert_eq!(res, 0, "enforce: {enforce}");
        site.sentinel();
        assert!(site.alerts_of(allowed_pid).is_empty(), "enforce: {enforce}");
    }
}

/// A thread flips the sockaddr between the allowed and the forbidden address while the main
/// thread connects: what the kernel connected to is what is reported, every time.
#[test]
fn a_sockaddr_rewritten_during_connect_is_judged_on_the_kernel_copy() {
    for enforce in [false, true] {
        let site = Site::new("toctou", enforce);
        let port = site.port().to_string();
        let (pid, line) = site.probe(true, &["toctou", "127.0.0.1", FORBIDDEN, &port, "50"]);
        let counts: std::collections::HashMap<&str, usize> = line
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k, v.parse().unwrap()))
            .collect();
        eprintln!("toctou, enforce {enforce}: {line}");
        let (first, second, eperm) = (counts["first"], counts["second"], counts["eperm"]);
        let forbidden: SocketAddr = format!("{FORBIDDEN}:{port}").parse().unwrap();
        // Give the listener time to count what reached it.
        std::thread::sleep(Duration::from_millis(300));
        let reached = site.forbidden.accepted();
        assert_eq!(reached, second, "{line}");
        let expected_alerts = if enforce { eperm } else { second };
        assert!(
            first > 0 && expected_alerts > 0,
            "the race ran both ways: {line}"
        );
        let deadline = Instant::now() + WAIT;
        let alerts = loop {
            let alerts = site.alerts_of(pid);
            if alerts.len() >= expected_alerts || Instant::now() > deadline {
                break alerts;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        site.sentinel();
        let alerts_after = site.alerts_of(pid);
        assert_eq!(alerts.len(), alerts_after.len(), "no late alert");
        for alert in &alerts {
            assert_eq!(
                alert["security_rule.name"], "connect-not-allowed",
                "{alert}"
            );
            assert_eq!(
                peer_of(alert),
                forbidden,
                "never the allowed address: {alert}"
            );
            assert_acted(alert, enforce, "cgroup-sock-addr");
        }
        assert_eq!(
            alerts.len(),
            expected_alerts,
            "one alert per forbidden connect: {line}"
        );
        if enforce {
            assert_eq!(
                reached, 0,
                "no connect reached the forbidden listener: {line}"
            );
        }
    }
}

fn io_uring_open(enforce: bool) {
    let site = Site::new("uring-open", enforce);
    let node = site.node();
    let node = node.to_string_lossy();
    let (pid, res) = site.probe_res(false, &["uring-open", &node]);
    assert_eq!(res, if enforce { EPERM } else { ENXIO });
    let alert = site.alert("gpu-unexpected-process", pid);
    assert_eq!(alert["device.class"], "nvidia");
    assert_eq!(alert["device.major"], 195);
    assert_eq!(alert["monitor.action"], expected(enforce), "{alert}");
    if enforce {
        assert_eq!(alert["monitor.enforcement.mechanism"], "cgroup-device");
        assert_eq!(alert["error.type"], "EPERM");
    }
    // A plain open: reported once, by the device hook alone.
    let (plain, res) = site.probe_res(false, &["open", &node]);
    assert_eq!(res, if enforce { EPERM } else { ENXIO });
    let alert = site.alert("gpu-unexpected-process", plain);
    assert_eq!(alert["file.path"], node.as_ref(), "{alert}");
    site.sentinel();
    assert_eq!(site.alerts_of(pid).len(), 1);
    assert_eq!(
        site.alerts_of(plain).len(),
        1,
        "{:?}",
        site.alerts_of(plain)
    );
    // The governed prober's profile allows the class, and the guard allows the profile.
    let (allowed, res) = site.probe_res(true, &["uring-open", &node]);
    assert_eq!(res, ENXIO, "allowed through to the driver");
    site.sentinel();
    assert!(site.alerts_of(allowed).is_empty());
}

#[test]
fn io_uring_open_of_an_accelerator_raises_an_alert() {
    io_uring_open(false);
}

#[test]
fn io_uring_open_of_an_accelerator_is_denied_with_its_alert() {
    io_uring_open(true);
}

/// Connects and datagrams where the profile allows, by every path: no alert.
#[test]
fn a_benign_run_raises_no_alert() {
    for enforce in [false, true] {
        let site = Site::new("benign", enforce);
        let (port, udp) = (site.port().to_string(), site.udp_port().to_string());
        let mut pids = Vec::new();
        for args in [
            &["connect", "127.0.0.1", &port][..],
            &["uring-connect", "127.0.0.1", &port],
            &["connect", "::ffff:127.0.0.1", &port],
            &["sendmmsg", "127.0.0.1", &udp, "4"],
        ] {
            let (pid, res) = site.probe_res(true, args);
            assert!(res >= 0, "{args:?}: {res}");
            pids.push(pid);
        }
        site.sentinel();
        for pid in pids {
            assert!(site.alerts_of(pid).is_empty(), "{:?}", site.alerts_of(pid));
        }
    }
}
