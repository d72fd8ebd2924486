//! End-to-end tests with real containers (podman, runc): profiles selected by image and pod
//! labels, alerts that carry the container's and pod's keys from the runtime's API, and the
//! monitor's own image running privileged under podman against the same attacks as the host
//! binary. Skipped, with a message, where podman cannot run; everything they create is
//! removed also when they fail (`tests::podman::Podman` is a drop guard).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    marker, monitor_bin,
    podman::{self, skip_unless_available, Podman},
    require_root, Monitor, TestCgroup,
};

/// Kubernetes' labels on a pod's container, as the kubelet sets them.
const POD_UID: &str = "6b0c3d4e-1f2a-4b5c-8d9e-0a1b2c3d4e5f";

/// `podman run` arguments of the fake server: host network, the pod's labels, `image`
/// running [`SERVER_LOOP`].
fn server_args(app: &str, pod: &str, image: &str) -> Vec<String> {
    let mut args: Vec<String> = ["--network", "host"].map(String::from).to_vec();
    args.extend(pod_labels(app, pod));
    args.extend([image, "/bin/sh", "-c", SERVER_LOOP].map(String::from));
    args
}

fn pod_labels(app: &str, pod: &str) -> Vec<String> {
    [
        format!("app={app}"),
        format!("io.kubernetes.pod.name={pod}"),
        "io.kubernetes.pod.namespace=inference".to_owned(),
        format!("io.kubernetes.pod.uid={POD_UID}"),
        "io.kubernetes.container.name=server".to_owned(),
    ]
    .into_iter()
    .flat_map(|label| ["--label".to_owned(), label])
    .collect()
}

/// A "server" that keeps calling an address its profile does not allow (TEST-NET-1).
const SERVER_LOOP: &str = "while :; do nc -w 1 192.0.2.1 80 </dev/null; sleep 0.3; done";

fn alerts_of<'a>(lines: &'a [Value], container: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|v| v["event.name"] == "monitor.alert" && v["container.id"] == container)
        .collect()
}

#[test]
fn a_server_in_a_podman_container_is_selected_by_image_and_pod_labels_and_alerts_carry_pod_keys() {
    if skip_unless_available("containers::selected_by_image_and_pod_labels") {
        return;
    }
    require_root();
    let mut pm = Podman::new("select");
    pm.serve_api();
    let pid = std::process::id();
    let served = format!("localhost/monitor-e2e-vllm-{pid}:0.6");
    let other = format!("localhost/monitor-e2e-other-{pid}:0.6");
    let rootfs = pm.busybox_rootfs();
    pm.import_dir(&rootfs, &served);
    pm.import_dir(&rootfs, &other);

    let profiles = pm.dir.join("profiles");
    std::fs::create_dir_all(&profiles).unwrap();
    // The image glob crosses `/` and matches `name:tag`; combined with namespace and labels.
    std::fs::write(
        profiles.join("pod-vllm.yaml"),
        format!(
            "name: pod-vllm\nselector:\n  images: ['*/monitor-e2e-vllm-{pid}:0.*']\n  \
             namespaces: [inference]\n  pod_labels: {{app: fake-vllm}}\nallow:\n  \
             network: {{connect: ['127.0.0.0/8']}}\n"
        ),
    )
    .unwrap();
    let config = pm.dir.join("config.yaml");
    std::fs::write(
        &config,
        "builtin_profiles: false\nprofiles: [profiles]\ndedup_window_secs: 1\n",
    )
    .unwrap();

    let monitor = Monitor::start(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--docker-socket",
        pm.socket.to_str().unwrap(),
        "--node-name",
        "gpu-node-17",
    ]);
    let name = format!("monitor-e2e-vllm-{pid}");
    let args = server_args("fake-vllm", "fake-vllm-0", &served);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Controls, doing the same: the right image with other labels, and another image with
    // the right labels. Neither is governed.
    let wrong_labels = server_args("batch-job", "batch-0", &served);
    let wrong_labels: Vec<&str> = wrong_labels.iter().map(String::as_str).collect();
    let wrong_image = server_args("fake-vllm", "fake-vllm-1", &other);
    let wrong_image: Vec<&str> = wrong_image.iter().map(String::as_str).collect();

    let id = pm.run_detached(&name, &args);
    let id_labels = pm.run_detached(&format!("{name}-labels"), &wrong_labels);
    let id_image = pm.run_detached(&format!("{name}-image"), &wrong_image);

    // The container's shell exec'd before the runtime's answer: it is governed when the
    // metadata arrives, and its children inherit the profile.
    let alert = monitor.wait_for(
        "a connect-not-allowed alert from the selected container",
        Duration::from_secs(30),
        |v| {
            v["event.name"] == "monitor.alert"
                && v["security_rule.name"] == "connect-not-allowed"
                && v["container.id"] == id.as_str()
        },
    );
    assert_eq!(alert["monitor.profile"], "pod-vllm", "{alert}");
    assert_eq!(alert["network.peer.address"], "192.0.2.1", "{alert}");
    assert_eq!(alert["container.name"], name.as_str(), "{alert}");
    assert_eq!(
        alert["container.image.name"],
        format!("localhost/monitor-e2e-vllm-{pid}"),
        "{alert}"
    );
    assert_eq!(alert["container.image.tag"], "0.6", "{alert}");
    assert!(
        alert["container.image.id"]
            .as_str()
            .is_some_and(|i| i.starts_with("sha256:")),
        "{alert}"
    );
    assert_eq!(alert["container.runtime"], "podman", "{alert}");
    assert_eq!(alert["k8s.pod.name"], "fake-vllm-0", "{alert}");
    assert_eq!(alert["k8s.namespace.name"], "inference", "{alert}");
    assert_eq!(alert["k8s.pod.uid"], POD_UID, "{alert}");
    assert_eq!(alert["k8s.container.name"], "server", "{alert}");
    assert_eq!(alert["k8s.node.name"], "gpu-node-17", "{alert}");

    // A process started later in the container (metadata already known) is selected at its
    // own exec. It waits a moment: selection in user space follows the exec by milliseconds.
    podman::run(&[
        "exec",
        &name,
        "/bin/sh",
        "-c",
        "sleep 0.5; nc -w 1 192.0.2.2 81 </dev/null; true",
    ]);
    let later = monitor.wait_for(
        "a connect-not-allowed alert from the process exec'd into the container",
        Duration::from_secs(15),
        |v| {
            v["security_rule.name"] == "connect-not-allowed"
                && v["container.id"] == id.as_str()
                && v["network.peer.address"] == "192.0.2.2"
        },
    );
    assert_eq!(later["k8s.pod.name"], "fake-vllm-0", "{later}");

    // The controls ran the same loop all along, and were never governed.
    for control in [&id_labels, &id_image] {
        let running = podman::run(&["inspect", "-f", "{{.State.Running}}", control]);
        assert_eq!(running, "true", "control container {control} stopped");
    }
    std::thread::sleep(Duration::from_secs(2));
    let lines = monitor.stop();
    assert!(
        alerts_of(&lines, &id_labels).is_empty(),
        "labels not matching were selected"
    );
    assert!(
        alerts_of(&lines, &id_image).is_empty(),
        "another image was selected"
    );
}

#[test]
fn a_runtime_socket_that_never_answers_gives_one_warning_and_no_stall() {
    if skip_unless_available("containers::a_runtime_socket_that_never_answers") {
        return;
    }
    require_root();
    let mut pm = Podman::new("silent");
    let pid = std::process::id();
    let image = format!("localhost/monitor-e2e-silent-{pid}:1");
    let rootfs = pm.busybox_rootfs();
    pm.import_dir(&rootfs, &image);
    // Accepts connections (the kernel's backlog) and never answers a byte.
    let silent = pm.dir.join("silent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&silent).unwrap();
    let tag = marker("silent");
    std::fs::write(
        pm.dir.join("p.yaml"),
        format!(
            "name: by-cgroup\nselector:\n  cgroups: ['/**/libpod-*']\n  args: ['*{tag}*']\n\
             allow:\n  network: {{connect: ['127.0.0.0/8']}}\n"
        ),
    )
    .unwrap();
    let config = pm.dir.join("config.yaml");
    std::fs::write(
        &config,
        "builtin_profiles: false\nprofiles: [p.yaml]\ndedup_window_secs: 1\n",
    )
    .unwrap();
    let monitor = Monitor::start(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--docker-socket",
        silent.to_str().unwrap(),
    ]);
    let script = format!("{SERVER_LOOP}; : {tag}");
    let started = Instant::now();
    let id = pm.run_detached(
        &format!("monitor-e2e-silent-{pid}"),
        &["--network", "host", &image, "/bin/sh", "-c", &script],
    );
    let alert = monitor.wait_for(
        "a connect-not-allowed alert while the runtime does not answer",
        Duration::from_secs(15),
        |v| v["security_rule.name"] == "connect-not-allowed" && v["container.id"] == id.as_str(),
    );
    let took = started.elapsed();
    // Sent with what is known (the cgroup path's keys), not held for the lookup (2 s).
    assert!(
        took < Duration::from_millis(1500),
        "the alert took {took:?}"
    );
    assert_eq!(alert["container.runtime"], "podman", "{alert}");
    assert!(alert.get("container.name").is_none(), "{alert}");
    // The lookup is retried (0.2, 1, 5 s) against the same socket: still one warning.
    std::thread::sleep(Duration::from_secs(7));
    let (lines, stderr) = monitor.stop_with_stderr();
    let warnings = stderr.matches("failed to ask").count();
    assert_eq!(warnings, 1, "stderr:\n{stderr}");
    assert!(
        stderr.contains(silent.to_str().unwrap()),
        "stderr:\n{stderr}"
    );
    assert!(alerts_of(&lines, &id).len() > 1, "alerts kept coming");
}

/// A model store with a guard, and a profiled server that reads its model, runs a shell
/// and connects where it may not; then an unlisted process reads the model.
struct Site {
    root: PathBuf,
    marker: String,
}

const SITE_SERVER: &str = r#"
import socket, subprocess, sys, time
root, port = sys.argv[1], int(sys.argv[2])
time.sleep(0.5)
with open(root + "/models/model.bin", "rb") as f:
    f.read()
subprocess.run(["/bin/sh", "-c", "true"])
try:
    socket.create_connection(("127.0.0.2", port), timeout=1).close()
except OSError:
    pass
"#;

impl Site {
    fn new(name: &str) -> Site {
        let marker = marker(name);
        let root = std::env::temp_dir().join(&marker);
        for dir in ["models", "app", "profiles", "out"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        let root = std::fs::canonicalize(root).unwrap();
        std::fs::write(root.join("models/model.bin"), vec![7u8; 4096]).unwrap();
        std::fs::write(root.join("app/server.py"), SITE_SERVER).unwrap();
        std::fs::write(
            root.join("profiles/site.yaml"),
            format!(
                "name: site-server\nselector:\n  executables: ['/usr/bin/python3*']\n  \
                 args: ['*{marker}*']\nallow:\n  files:\n    read: ['{root}/**', '/usr/**', \
                 '/etc/**', '/proc/**', '/sys/**', '/dev/**', '/tmp/**']\n  \
                 network: {{connect: ['127.0.0.1/32']}}\n",
                root = root.display()
            ),
        )
        .unwrap();
        std::fs::write(
            root.join("config.yaml"),
            format!(
                "builtin_profiles: false\nprofiles: [profiles]\ndedup_window_secs: 1\n\
                 guards:\n  protected_paths:\n    - paths: ['{}/models/**']\n      \
                 read: [site-server]\noutputs:\n  alerts_file: {}/out/alerts.jsonl\n",
                root.display(),
                root.display()
            ),
        )
        .unwrap();
        Site { root, marker }
    }

    fn alerts(&self) -> Vec<Value> {
        std::fs::read_to_string(self.root.join("out/alerts.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Performs the attacks; returns the rules raised about them, once all expected came.
    fn attack(&self, cgroup: &TestCgroup, what: &str) -> Vec<String> {
        let server = cgroup
            .command("/usr/bin/python3")
            .arg(self.root.join("app/server.py"))
            .arg(&self.root)
            .arg("9")
            .arg(&self.marker)
            .status()
            .expect("failed to run the server");
        assert!(server.success());
        let reader = Command::new("/bin/cat")
            .arg(self.root.join("models/model.bin"))
            .output()
            .expect("failed to run cat");
        assert!(reader.status.success());
        let wanted = [
            "exec-not-allowed",
            "protected-file-read",
            "model-exfiltration",
        ];
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut rules: Vec<String> = self
                .alerts()
                .iter()
                .filter(|a| {
                    a["monitor.profile"] == "site-server"
                        || a["file.path"]
                            .as_str()
                            .is_some_and(|p| p.starts_with(self.root.to_str().unwrap()))
                })
                .filter_map(|a| a["security_rule.name"].as_str().map(str::to_owned))
                .collect();
            rules.sort();
            rules.dedup();
            if wanted.iter().all(|w| rules.iter().any(|r| r == w)) {
                return rules;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: expected {wanted:?}, got {rules:?}; alerts:\n{:#?}",
                self.alerts()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A runtime image of the already-built release binary (`MONITOR_BIN`) and the libraries it
/// links, as the Containerfile's second stage holds it: building the Containerfile's first
/// stage (the Rust toolchain, bpf-linker, a release build) would take tens of minutes here.
fn monitor_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("monitor-rootfs");
    std::fs::create_dir_all(root.join("usr/local/bin")).unwrap();
    for sub in ["tmp", "proc", "sys", "dev", "etc", "var/lib/monitor"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    let binary = monitor_bin();
    std::fs::copy(&binary, root.join("usr/local/bin/monitor")).unwrap();
    let ldd = Command::new("ldd")
        .arg(&binary)
        .output()
        .expect("failed to run ldd");
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
        let path = line
            .split("=>")
            .last()
            .and_then(|rest| rest.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        let Some(path) = path else { continue };
        let target = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(path, &target).unwrap_or_else(|e| panic!("failed to copy {path}: {e}"));
    }
    root
}

#[test]
fn the_monitor_image_runs_privileged_under_podman_and_catches_what_the_host_binary_catches() {
    if skip_unless_available("containers::the_monitor_image_runs_privileged") {
        return;
    }
    require_root();

    // The host binary first.
    let host_site = Site::new("host-binary");
    let host_rules = {
        let config = host_site.root.join("config.yaml");
        let monitor = Monitor::start(&["run", "--config", config.to_str().unwrap()]);
        let rules = host_site.attack(&monitor.cgroup, "host binary");
        drop(monitor);
        rules
    };

    // The same attacks against the monitor in its container.
    let mut pm = Podman::new("image");
    let pid = std::process::id();
    let image = format!("localhost/monitor-e2e-self-{pid}:test");
    let rootfs = monitor_rootfs(&pm.dir);
    pm.import_dir(&rootfs, &image);
    let site = Site::new("container-image");
    let cgroup = TestCgroup::new();
    let ready = site.root.join("out/ready");
    let root = site.root.to_str().unwrap().to_owned();
    let mount = format!("{root}:{root}");
    let name = format!("monitor-e2e-self-{pid}");
    // What the DaemonSet gives the monitor (deploy/daemonset.yaml): privileged, the host's
    // pid and cgroup namespaces, BTF, cgroupfs, tracefs, and the guarded paths.
    pm.run_detached(
        &name,
        &[
            "--privileged",
            "--pid=host",
            "--cgroupns=host",
            "--network=host",
            "-v",
            "/sys/kernel/btf:/sys/kernel/btf:ro",
            "-v",
            "/sys/fs/cgroup:/sys/fs/cgroup",
            "-v",
            "/sys/kernel/tracing:/sys/kernel/tracing",
            "-v",
            &mount,
            &image,
            "/usr/local/bin/monitor",
            "run",
            "--config",
            &format!("{root}/config.yaml"),
            "--cgroup",
            cgroup.path.to_str().unwrap(),
            "--ready-file",
            ready.to_str().unwrap(),
            "--no-container-metadata",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    while !ready.exists() {
        let running = podman::run(&["inspect", "-f", "{{.State.Running}}", &name]);
        let logs = || {
            podman::podman()
                .args(["logs", &name])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .unwrap_or_default()
        };
        assert!(
            running == "true",
            "the monitor's container stopped:\n{}",
            logs()
        );
        assert!(
            Instant::now() < deadline,
            "the monitor's container not ready in 90 s:\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let container_rules = site.attack(&cgroup, "monitor in its container");
    eprintln!("host binary: {host_rules:?}; in its container: {container_rules:?}");
    // SIGTERM, as the kubelet stops it.
    podman::run(&["stop", "-t", "20", &name]);
    assert_eq!(
        container_rules, host_rules,
        "the container caught other attacks than the host binary"
    );
}
