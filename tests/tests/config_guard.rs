//! End-to-end tests of the monitor's own configuration as an attack surface, each made for
//! real on the real `monitor run`: the config rewritten without its guards (on the record,
//! high severity, naming the guard), a locked config (the change refused, the old guard still
//! catches the theft), config files that others may write (start-up refused with the fix; the
//! override alerts; a reload into such files is refused), a SIGKILL of the monitor (the next
//! start reports the window nobody watched), and files next to the config that are no reload.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{marker, monitor_bin, unique, Monitor, TestCgroup, WAIT};

/// A scratch site: `models/` (guarded: nobody may read it), `profiles/ops.yaml` (an
/// enforce-mode profile for a server that does not run here), and `config.yaml`.
struct Site {
    root: PathBuf,
}

const WEIGHTS: &str = "weights";

impl Site {
    fn new(name: &str) -> Site {
        let root = std::env::temp_dir().join(marker(name));
        for dir in ["models", "profiles"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        let root = std::fs::canonicalize(root).unwrap();
        // Whatever the umask of the test runner: the site is root's and private.
        for dir in [&root, &root.join("models"), &root.join("profiles")] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let site = Site { root };
        std::fs::write(site.path("models/model.safetensors"), WEIGHTS).unwrap();
        write_atomically(
            &site.root.join("profiles/ops.yaml"),
            &site.profile("enforce"),
            0o644,
        );
        site.write_config("", true);
        site
    }

    fn path(&self, rel: &str) -> String {
        self.root.join(rel).to_string_lossy().into_owned()
    }

    fn config(&self) -> String {
        self.path("config.yaml")
    }

    fn guarded(&self) -> String {
        self.path("models/**")
    }

    fn profile(&self, mode: &str) -> String {
        format!(
            "name: ops\nselector:\n  executables: [\"{}/bin/ops-server\"]\nmode: {mode}\nallow:\n  exec: []\n",
            self.root.display()
        )
    }

    /// The config, with the guard on `models/` or without it, and `extra` keys.
    fn config_text(&self, extra: &str, guard: bool) -> String {
        let mut text = format!(
            "profiles: [\"{}\"]\ndedup_window_secs: 1\n{extra}",
            self.path("profiles")
        );
        if guard {
            text.push_str(&format!(
                "guards:\n  protected_paths:\n    - paths: [\"{}\"]\n      read: []\n      write: []\n",
                self.guarded()
            ));
        }
        text
    }

    fn write_config(&self, extra: &str, guard: bool) {
        write_atomically(
            &self.root.join("config.yaml"),
            &self.config_text(extra, guard),
            0o644,
        );
    }

    fn start(&self, extra: &[&str]) -> Monitor {
        let config = self.config();
        let mut args = vec!["run", "--config", config.as_str()];
        args.extend_from_slice(extra);
        Monitor::start(&args)
    }

    /// The theft: another process reads the weights. Returns its pid.
    fn steal(&self) -> u32 {
        let child = Command::new("/usr/bin/cat")
            .arg(self.path("models/model.safetensors"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let output = child.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&output.stdout), WEIGHTS);
        pid
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Writes through a hidden temporary name (created with `mode`) and a rename, as config
/// management tools do.
fn write_atomically(path: &Path, text: &str, mode: u32) {
    let temporary = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&temporary, text).unwrap();
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

fn alerts<'a>(lines: &'a [Value], rule: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|v| v["event.name"] == "monitor.alert" && v["security_rule.name"] == rule)
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits for the `protected-file-read` of the process `pid`.
fn theft_reported(monitor: &Monitor, site: &Site, pid: u32) -> Value {
    let path = site.path("models/model.safetensors");
    monitor.wait_for("the theft's protected-file-read", WAIT, |v| {
        v["security_rule.name"] == "protected-file-read"
            && v["process.pid"] == pid
            && v["file.path"] == path.as_str()
    })
}

#[test]
fn a_config_rewritten_without_its_guards_is_on_the_record_as_high() {
    let site = Site::new("cfg-rewrite");
    let monitor = site.start(&[]);
    let pid = site.steal();
    theft_reported(&monitor, &site, pid);

    // The attacker (or an operator) rewrites the config without the guard, and switches the
    // enforcing profile to alert.
    write_atomically(
        &site.root.join("profiles/ops.yaml"),
        &site.profile("alert"),
        0o644,
    );
    site.write_config("", false);
    let changed = monitor.wait_for("config-changed", WAIT, |v| {
        v["security_rule.name"] == "config-changed"
            && strings(&v["monitor.config.guards.removed"]).contains(&site.guarded())
    });
    eprintln!("config-changed: {changed}");
    assert_eq!(changed["severity"], "high");
    assert_eq!(changed["monitor.config.path"], site.config().as_str());
    let weakened = strings(&changed["monitor.config.weakened"]);
    assert!(
        weakened.contains(&format!(
            "guard on {} removed (read: [], write: [])",
            site.guarded()
        )),
        "{changed}"
    );
    // The profile's file may land in the same reload or the one before.
    let lines = monitor.lines();
    let all_weakened: Vec<String> = alerts(&lines, "config-changed")
        .iter()
        .flat_map(|v| strings(&v["monitor.config.weakened"]))
        .collect();
    assert!(
        all_weakened.contains(&"profile ops: mode enforce -> alert".to_owned()),
        "{all_weakened:?}"
    );

    // The guard is gone, by whoever could write the config: the next theft raises nothing,
    // but the removal above is on the record, high, with the guard's glob.
    let second = site.steal();
    std::thread::sleep(Duration::from_millis(1500));
    let (lines, stderr) = monitor.stop_with_stderr();
    let path = site.path("models/model.safetensors");
    assert!(
        !lines
            .iter()
            .any(|v| v["security_rule.name"] == "protected-file-read"
                && v["process.pid"] == second
                && v["file.path"] == path.as_str()),
        "the guard was removed, yet it judged the second read"
    );
    assert!(
        stderr.contains("configuration changed: protection lowered"),
        "{stderr}"
    );
}

#[test]
fn a_locked_config_refuses_changes_and_the_old_guard_still_catches_the_theft() {
    let site = Site::new("cfg-locked");
    site.write_config("locked: true\n", true);
    let monitor = site.start(&[]);

    site.write_config("locked: false\n", false);
    let refused = monitor.wait_for("config-change-refused", WAIT, |v| {
        v["security_rule.name"] == "config-change-refused"
    });
    eprintln!("config-change-refused: {refused}");
    assert_eq!(refused["severity"], "high");
    assert_eq!(refused["monitor.config.locked"], true);
    assert_eq!(
        strings(&refused["monitor.config.guards.removed"]),
        [site.guarded()]
    );
    assert!(
        strings(&refused["monitor.config.changes"]).contains(&"locked: true -> false".to_owned()),
        "{refused}"
    );

    // The guard of the configuration in force still catches the theft.
    let pid = site.steal();
    theft_reported(&monitor, &site, pid);

    // Each attempt is reported: a SIGHUP asks again.
    monitor.signal(libc::SIGHUP);
    let deadline = Instant::now() + WAIT;
    while alerts(&monitor.lines(), "config-change-refused").len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the SIGHUP's attempt was not reported"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = site.steal();
    theft_reported(&monitor, &site, pid);
    let (lines, stderr) = monitor.stop_with_stderr();
    assert_eq!(alerts(&lines, "config-changed").len(), 0);
    assert!(!stderr.contains("configuration reloaded"), "{stderr}");
}

/// Runs `monitor run ARGS` that is expected to refuse to start; returns its exit status and
/// stderr (killed, and the test failed, if it is still running after 30 s).
fn run_refused(args: &[&str]) -> (std::process::ExitStatus, String) {
    let cgroup = TestCgroup::new();
    let state = std::env::temp_dir().join(marker("cfg-refused-state"));
    let mut child = Command::new(monitor_bin())
        .args(args)
        .arg("--cgroup")
        .arg(&cgroup.path)
        .env("MONITOR_STATE_DIR", &state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            let _ = std::fs::remove_dir_all(&state);
            panic!(
                "the monitor started with an insecure config: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&state);
    (status, String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn config_files_others_may_write_stop_the_start_and_the_override_alerts() {
    let site = Site::new("cfg-perms");
    let config = site.config();

    // A config file anyone may write.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (status, stderr) = run_refused(&["run", "--config", &config]);
    eprintln!("{stderr}");
    assert!(!status.success());
    assert!(
        stderr.contains(&format!(
            "{config}: the file is writable by its group and others (mode 0666): fix with `chmod go-w {config}`"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("--allow-insecure-config"), "{stderr}");

    // A profile directory another user owns.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let profiles = site.path("profiles");
    std::os::unix::fs::chown(&profiles, Some(65534), None).unwrap();
    let (status, stderr) = run_refused(&["run", "--config", &config]);
    assert!(!status.success());
    assert!(
        stderr.contains(&format!(
            "the directory is owned by uid 65534, not root: fix with `chown root {profiles}`"
        )),
        "{stderr}"
    );
    std::os::unix::fs::chown(&profiles, Some(0), None).unwrap();

    // The override: it starts, warns, and says so in an alert.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
    let monitor = site.start(&["--allow-insecure-config"]);
    let insecure = monitor.wait_for("config-insecure", WAIT, |v| {
        v["security_rule.name"] == "config-insecure"
    });
    assert_eq!(insecure["severity"], "medium");
    assert!(
        strings(&insecure["monitor.config.insecure"])
            .iter()
            .any(|line| line.starts_with(&format!("{config}: the file is writable"))),
        "{insecure}"
    );
    assert!(monitor
        .stderr()
        .contains("loaded anyway: --allow-insecure-config"));
    monitor.stop();
}

#[test]
fn a_reload_into_files_others_may_write_is_refused_and_the_guard_stays() {
    let site = Site::new("cfg-perms-reload");
    let monitor = site.start(&[]);
    // A new profile file anyone may write, and the config without its guard.
    write_atomically(
        &site.root.join("profiles/ops.yaml"),
        &site.profile("alert"),
        0o666,
    );
    let failed = monitor.wait_for("config-reload-failed", WAIT, |v| {
        v["security_rule.name"] == "config-reload-failed"
    });
    let ops = site.path("profiles/ops.yaml");
    assert!(
        strings(&failed["monitor.config.errors"])
            .iter()
            .any(|e| e.contains(&format!("{ops}: the file is writable by its group and others (mode 0666): fix with `chmod go-w {ops}`"))),
        "{failed}"
    );
    site.write_config("", false);
    // Still refused (the profile file is still open to others): the guard stays.
    let deadline = Instant::now() + WAIT;
    while alerts(&monitor.lines(), "config-reload-failed").len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the second reload was not refused"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = site.steal();
    theft_reported(&monitor, &site, pid);
    let (lines, stderr) = monitor.stop_with_stderr();
    assert_eq!(alerts(&lines, "config-changed").len(), 0);
    assert!(!stderr.contains("configuration reloaded"), "{stderr}");
}

/// `2026-11-29T20:41:29.123456789Z` -> seconds since the epoch.
fn epoch_secs(text: &str) -> f64 {
    let output = Command::new("date")
        .args(["-u", "-d", text, "+%s.%N"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap()
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn a_sigkill_of_the_monitor_is_reported_at_the_next_start_with_the_window() {
    let site = Site::new("cfg-unclean");
    let state = std::env::temp_dir().join(format!("monitor-unclean-state-{}", unique()));
    let _ = std::fs::remove_dir_all(&state);
    let state_arg = state.to_string_lossy().into_owned();
    let args = ["--state-dir", state_arg.as_str()];

    // A first run here, stopped cleanly: nothing to report at the next start.
    let monitor = site.start(&args);
    std::thread::sleep(Duration::from_millis(300));
    let lines = monitor.stop();
    assert_eq!(alerts(&lines, "monitor-unclean-exit").len(), 0);

    let monitor = site.start(&args);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(alerts(&monitor.lines(), "monitor-unclean-exit").len(), 0);
    let killed_pid = monitor.pid();
    // Alive for a while (the state file is rewritten every 2 s), then killed.
    std::thread::sleep(Duration::from_secs(5));
    let killed_at = now_secs();
    monitor.signal(libc::SIGKILL);
    drop(monitor);
    // Nobody watches for 3 s.
    std::thread::sleep(Duration::from_secs(3));
    let restarted_at = now_secs();
    let monitor = site.start(&args);
    let unclean = monitor.wait_for("monitor-unclean-exit", WAIT, |v| {
        v["security_rule.name"] == "monitor-unclean-exit"
    });
    eprintln!("monitor-unclean-exit: {unclean}");
    assert_eq!(unclean["severity"], "high");
    assert_eq!(unclean["monitor.previous.process.pid"], killed_pid);
    let from = epoch_secs(unclean["monitor.unclean_exit.from"].as_str().unwrap());
    let to = epoch_secs(unclean["monitor.unclean_exit.to"].as_str().unwrap());
    // The last sign of life is at most one state interval (2 s, plus slack) before the kill.
    assert!(
        from <= killed_at && from >= killed_at - 3.5,
        "from {from}, killed at {killed_at}"
    );
    assert!(to >= restarted_at && to <= restarted_at + 30.0, "to {to}");
    let uncovered = unclean["monitor.unclean_exit.uncovered_secs"]
        .as_f64()
        .unwrap();
    assert!((uncovered - (to - from)).abs() < 0.01, "{unclean}");
    assert!(uncovered >= 3.0, "{unclean}");

    // This one stops cleanly: the next start reports nothing.
    monitor.stop();
    let monitor = site.start(&args);
    std::thread::sleep(Duration::from_millis(500));
    let lines = monitor.stop();
    assert_eq!(alerts(&lines, "monitor-unclean-exit").len(), 0);
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn files_next_to_the_config_and_rewrites_with_the_same_content_are_no_reload() {
    let site = Site::new("cfg-quiet");
    let monitor = site.start(&[]);
    // A log and ready files next to the config and the profiles, the config written back
    // unchanged, the profile touched.
    std::fs::write(site.root.join("monitor.log"), "log line\n").unwrap();
    std::fs::write(site.root.join("ready"), "").unwrap();
    std::fs::write(site.root.join("profiles/server.log"), "log line\n").unwrap();
    std::fs::write(site.root.join("profiles/.ready"), "").unwrap();
    site.write_config("", true);
    Command::new("touch")
        .arg(site.path("profiles/ops.yaml"))
        .status()
        .unwrap();
    // Past the 5 s poll too.
    std::thread::sleep(Duration::from_millis(6500));
    assert_eq!(alerts(&monitor.lines(), "config-changed").len(), 0);
    let stderr = monitor.stderr();
    assert!(!stderr.contains("configuration files changed"), "{stderr}");
    assert!(!stderr.contains("configuration reloaded"), "{stderr}");

    // A real change: one reload, one low config-changed that says what changed.
    site.write_config("heartbeat_secs: 7\n", true);
    let changed = monitor.wait_for("config-changed", WAIT, |v| {
        v["security_rule.name"] == "config-changed"
    });
    std::thread::sleep(Duration::from_millis(500));
    let (lines, _) = monitor.stop_with_stderr();
    assert_eq!(alerts(&lines, "config-changed").len(), 1);
    assert_eq!(changed["severity"], "low");
    assert_eq!(
        strings(&changed["monitor.config.changes"]),
        ["heartbeat_secs: 30 -> 7 (applies at the next start)"]
    );
}
