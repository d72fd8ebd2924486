//! Liveness: what lets a gap in the monitoring be seen.
//!
//! - A small state file (`<state dir>/monitor.state`) says when this run started and when its
//!   main loop was last alive, rewritten every [`STATE_INTERVAL`] (a write to a temporary
//!   name and a rename: a crash leaves the old version or the new one, never half). A clean
//!   stop marks it clean. A start that finds it not clean (the previous run was killed with
//!   SIGKILL, crashed, or the host went down) raises `monitor-unclean-exit` with the window
//!   that nobody watched: from the last "alive" to this start.
//! - The main loop's beat ([`crate::telemetry::metrics::Metrics::beat`]) is what the state file and the
//!   OTLP heartbeat ([`crate::output::otlp`]) report: a loop that is stuck stops beating even while
//!   the process still runs.
//!
//! Two monitors sharing a state directory would take each other's runs for crashes: the
//! file is guarded by a lock (`flock` on `monitor.lock`), and a second monitor that cannot
//! take it does not track its exits (and says so).

use std::{
    fs::File,
    io::Write as _,
    os::{
        fd::AsRawFd as _,
        unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use serde_json::{json, Value};
use tracing::{debug, warn};

use crate::event::alert::{new_uid, Action, Alert, Rule};
use crate::event::clock::unix_now_ns;

/// Where the state file lives when `--state-dir` is not given.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/monitor";
/// How often the state file is rewritten: the precision of an unclean exit's window.
pub const STATE_INTERVAL: Duration = Duration::from_secs(2);
const STATE_NAME: &str = "monitor.state";
const LOCK_NAME: &str = "monitor.lock";

/// The previous run ended without a clean stop (SIGKILL, a crash, the host went down).
pub const MONITOR_UNCLEAN_EXIT: Rule = Rule {
    id: "monitor-unclean-exit",
    severity: crate::event::alert::Severity::High,
};

/// This run's state file.
pub struct StateFile {
    dir: PathBuf,
    /// Held for the whole run; `None`: another monitor holds it, nothing is written.
    lock: Option<File>,
    pid: u32,
    started_ns: u64,
}

/// What a start found of the previous run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UncleanExit {
    pub pid: Option<u64>,
    pub started_ns: Option<u64>,
    /// When it was last seen alive (the file's modification time if its content is lost).
    pub alive_ns: u64,
    /// This start.
    pub now_ns: u64,
}

impl UncleanExit {
    /// The `monitor-unclean-exit` alert: `monitor.unclean_exit.from` / `.to` (RFC 3339) and
    /// `.uncovered_secs` say what was not watched.
    pub fn alert(&self) -> Alert {
        let now = i128::from(self.now_ns);
        let mut attributes = serde_json::Map::new();
        attributes.insert(
            "monitor.unclean_exit.from".into(),
            crate::event::clock::rfc3339(i128::from(self.alive_ns)).into(),
        );
        attributes.insert(
            "monitor.unclean_exit.to".into(),
            crate::event::clock::rfc3339(now).into(),
        );
        let uncovered = self.now_ns.saturating_sub(self.alive_ns) as f64 / 1e9;
        attributes.insert(
            "monitor.unclean_exit.uncovered_secs".into(),
            ((uncovered * 1000.0).round() / 1000.0).into(),
        );
        if let Some(pid) = self.pid {
            attributes.insert("monitor.previous.process.pid".into(), pid.into());
        }
        if let Some(started) = self.started_ns {
            attributes.insert(
                "monitor.previous.start_time".into(),
                crate::event::clock::rfc3339(i128::from(started)).into(),
            );
        }
        Alert {
            rule: MONITOR_UNCLEAN_EXIT.id.into(),
            severity: MONITOR_UNCLEAN_EXIT.severity,
            action: Action::Alert,
            profile: None,
            time_unix_ns: now,
            observed_unix_ns: now,
            count: 1,
            uid: new_uid(),
            attributes,
        }
    }
}

impl StateFile {
    /// Takes the state directory for this run (created 0700 if missing) and reads what the
    /// previous run left: `Some` when it did not stop cleanly.
    pub fn open(dir: &Path) -> anyhow::Result<(StateFile, Option<UncleanExit>)> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| {
                format!(
                    "failed to create the state directory {}: give --state-dir DIR on a writable file system",
                    dir.display()
                )
            })?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join(LOCK_NAME))
            .with_context(|| {
                format!(
                    "failed to open the lock file {}",
                    dir.join(LOCK_NAME).display()
                )
            })?;
        // SAFETY: a valid fd.
        let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        let now_ns = unix_now_ns();
        let mut state = StateFile {
            dir: dir.to_owned(),
            lock: None,
            pid: std::process::id(),
            started_ns: now_ns,
        };
        if !locked {
            warn!(
                "another monitor uses the state directory {}: this one does not track its unclean exits (give it its own --state-dir)",
                dir.display()
            );
            return Ok((state, None));
        }
        state.lock = Some(lock);
        let previous = state.previous(now_ns);
        state.write(now_ns, false)?;
        Ok((state, previous))
    }

    fn path(&self) -> PathBuf {
        self.dir.join(STATE_NAME)
    }

    /// The previous run, if it did not stop cleanly.
    fn previous(&self, now_ns: u64) -> Option<UncleanExit> {
        let path = self.path();
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            // The first run here.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
            Err(err) => {
                warn!("failed to read the state file {}: {err}", path.display());
                return None;
            }
        };
        match serde_json::from_slice::<Value>(&text) {
            Ok(state) => {
                if state["clean"].as_bool() == Some(true) {
                    return None;
                }
                Some(UncleanExit {
                    pid: state["pid"].as_u64(),
                    started_ns: state["started_unix_ns"].as_u64(),
                    alive_ns: state["alive_unix_ns"].as_u64().unwrap_or(0),
                    now_ns,
                })
            }
            Err(err) => {
                // Lost with the page cache (the host went down): the file's time is the best
                // bound left.
                warn!(
                    "the state file {} does not parse ({err}); taking its modification time as the last sign of life",
                    path.display()
                );
                let alive_ns = std::fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
                Some(UncleanExit {
                    pid: None,
                    started_ns: None,
                    alive_ns,
                    now_ns,
                })
            }
        }
    }

    /// Records that the run was alive at `alive_ns` (or stopped cleanly).
    fn write(&self, alive_ns: u64, clean: bool) -> anyhow::Result<()> {
        if self.lock.is_none() {
            return Ok(());
        }
        let text = json!({
            "pid": self.pid,
            "started_unix_ns": self.started_ns,
            "alive_unix_ns": alive_ns,
            "clean": clean,
        })
        .to_string();
        let temporary = self.dir.join(format!(".{STATE_NAME}.tmp"));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&temporary)
            .with_context(|| format!("failed to write the state file {}", temporary.display()))?;
        file.write_all(text.as_bytes())
            .with_context(|| format!("failed to write the state file {}", temporary.display()))?;
        if clean {
            // The last word of a run: make it survive a power cut too.
            let _ = file.sync_all();
        }
        std::fs::rename(&temporary, self.path())
            .with_context(|| format!("failed to write the state file {}", self.path().display()))?;
        Ok(())
    }

    /// Records the main loop's last beat (`0`: none yet, then now).
    pub fn alive(&self, beat_ns: u64) {
        let alive = if beat_ns == 0 { unix_now_ns() } else { beat_ns };
        if let Err(err) = self.write(alive, false) {
            debug!("{err:#}");
        }
    }

    /// A clean stop: the next start raises nothing.
    pub fn clean(&self) {
        if let Err(err) = self.write(unix_now_ns(), true) {
            warn!("{err:#}; the next start will report an unclean exit");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("liveness-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_run_that_did_not_stop_cleanly_is_found_with_its_window() {
        let dir = scratch("unclean");
        let (first, previous) = StateFile::open(&dir).unwrap();
        assert_eq!(previous, None, "the first run here");
        first.alive(1_000_000_000);
        // Killed: the lock goes with the process (here: with the file).
        drop(first);
        let (second, previous) = StateFile::open(&dir).unwrap();
        let previous = previous.expect("an unclean exit");
        assert_eq!(previous.alive_ns, 1_000_000_000);
        assert_eq!(previous.pid, Some(u64::from(std::process::id())));
        let alert = previous.alert();
        assert_eq!(alert.rule, "monitor-unclean-exit");
        assert_eq!(
            alert.attributes["monitor.unclean_exit.from"],
            "1970-01-01T00:00:01.000000000Z"
        );
        second.clean();
        drop(second);
        let (third, previous) = StateFile::open(&dir).unwrap();
        assert_eq!(previous, None, "a clean stop");
        drop(third);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_monitor_on_the_same_directory_tracks_nothing() {
        let dir = scratch("shared");
        let (first, _) = StateFile::open(&dir).unwrap();
        first.alive(5);
        let (second, previous) = StateFile::open(&dir).unwrap();
        assert_eq!(previous, None);
        assert!(second.lock.is_none());
        second.clean();
        drop(first);
        // The first one's state is untouched by the second's clean stop.
        let (_, previous) = StateFile::open(&dir).unwrap();
        assert_eq!(previous.map(|p| p.alive_ns), Some(5));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
