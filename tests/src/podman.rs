//! Podman for the container tests: images built locally (nothing can be pulled), containers
//! run with runc, and the Docker-compatible API served on a private socket. Everything made
//! is removed when the [`Podman`] is dropped, also when a test panics.
//!
//! crun fails here on `setrlimit` (no CAP_SYS_RESOURCE in this sandbox), so every command
//! runs with `--runtime runc` and a containers.conf holding `default_ulimits = []`.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::unique;

/// A podman session: a scratch directory, the API service, and what to remove at the end.
pub struct Podman {
    pub dir: PathBuf,
    pub socket: PathBuf,
    service: Option<Child>,
    containers: Vec<String>,
    images: Vec<String>,
}

/// Why podman cannot run here, or `None` when it can.
pub fn unavailable() -> Option<String> {
    let conf = conf_file();
    let output = Command::new("podman")
        .args([
            "--runtime",
            "runc",
            "info",
            "--format",
            "{{.Host.OCIRuntime.Name}}",
        ])
        .env("CONTAINERS_CONF", &conf)
        .stdin(Stdio::null())
        .output();
    match output {
        Err(err) => Some(format!(
            "podman is not installed ({err}); `cargo xtask test` installs it (apt-get install podman runc)"
        )),
        Ok(out) if !out.status.success() => Some(format!(
            "`podman --runtime runc info` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) if !Path::new("/bin/busybox").exists() => Some(
            "/bin/busybox is missing (apt-get install busybox-static): the test images are made of it"
                .into(),
        ),
        Ok(_) => None,
    }
}

/// Skips the calling test (returns `true`) with a clear message when podman cannot run.
pub fn skip_unless_available(test: &str) -> bool {
    match unavailable() {
        Some(why) => {
            eprintln!("SKIPPED {test}: podman cannot run here: {why}");
            true
        }
        None => false,
    }
}

fn conf_file() -> PathBuf {
    let path = std::env::temp_dir().join("monitor-test-containers.conf");
    if !path.exists() {
        std::fs::write(&path, "[containers]\ndefault_ulimits = []\n")
            .unwrap_or_else(|e| panic!("failed to write {}: {e}", path.display()));
    }
    path
}

/// `podman --runtime runc ARGS` with the test's containers.conf.
pub fn podman() -> Command {
    let mut command = Command::new("podman");
    command
        .args(["--runtime", "runc"])
        .env("CONTAINERS_CONF", conf_file())
        .stdin(Stdio::null());
    command
}

/// Runs a podman command; panics with its stderr when it fails. Returns stdout, trimmed.
pub fn run(args: &[&str]) -> String {
    let output = podman()
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("failed to run podman {args:?}: {e}"));
    if !output.status.success() {
        panic!(
            "podman {args:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

impl Podman {
    /// A session with its own scratch directory; the API service is started by
    /// [`Podman::serve_api`].
    pub fn new(name: &str) -> Podman {
        let dir = std::env::temp_dir().join(format!(
            "monitor-podman-{name}-{}-{}",
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("podman.sock");
        Podman {
            dir,
            socket,
            service: None,
            containers: Vec::new(),
            images: Vec::new(),
        }
    }

    /// Starts `podman system service` on [`Podman::socket`] and waits until it answers.
    pub fn serve_api(&mut self) {
        let child = podman()
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", self.socket.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start podman system service: {e}"));
        self.service = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "podman system service did not open {} within 20 s",
                self.socket.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Imports a directory as image `reference` (removed at the end).
    pub fn import_dir(&mut self, rootfs: &Path, reference: &str) {
        let tar = self.dir.join(format!("rootfs-{}.tar", unique()));
        let status = Command::new("tar")
            .arg("-C")
            .arg(rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .expect("failed to run tar");
        assert!(status.success(), "tar of {} failed", rootfs.display());
        self.images.push(reference.to_owned());
        run(&["import", tar.to_str().unwrap(), reference]);
        let _ = std::fs::remove_file(&tar);
    }

    /// A root file system of Debian's static busybox with the applets the tests use.
    pub fn busybox_rootfs(&self) -> PathBuf {
        let root = self.dir.join(format!("busybox-{}", unique()));
        for dir in ["bin", "tmp", "etc", "proc", "sys", "dev"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        for applet in ["sh", "nc", "sleep", "cat", "true", "id", "wget"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        root
    }

    /// `podman run -d ARGS`; returns the container's full id (removed at the end).
    pub fn run_detached(&mut self, name: &str, args: &[&str]) -> String {
        self.containers.push(name.to_owned());
        let mut all = vec!["run", "-d", "--name", name];
        all.extend_from_slice(args);
        run(&all)
    }

    /// Registers a container made another way, for removal at the end.
    pub fn remember_container(&mut self, name: &str) {
        self.containers.push(name.to_owned());
    }

    /// Registers an image made another way, for removal at the end.
    pub fn remember_image(&mut self, reference: &str) {
        self.images.push(reference.to_owned());
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for name in self.containers.drain(..).rev() {
            let _ = podman()
                .args(["rm", "-f", "-t", "0", &name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        for image in self.images.drain(..).rev() {
            let _ = podman()
                .args(["rmi", "-f", &image])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if let Some(mut service) = self.service.take() {
            let _ = service.kill();
            let _ = service.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
