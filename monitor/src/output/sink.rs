//! Where alerts go. Every alert goes to every sink; a sink must never block the pipeline.
//!
//! A sink that runs into trouble of its own (the OTLP collector refuses alerts, the spool or
//! the alerts file cannot be written) raises a notice, an alert like any other, through the
//! other outputs: [`Outputs`] relays it, so the trouble is reported where it can still be
//! seen.

use std::{
    collections::VecDeque,
    fs::File,
    io::{self, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{mpsc, Arc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::{Map, Value};
use tracing::{info, warn};

use crate::{
    event::alert::{new_uid, Action, Alert, Rule, Severity},
    telemetry::metrics::Metrics,
};

/// The alerts file ended in half a line (a crash or a full disk mid-write): a new line was
/// started before the next alert.
pub const ALERTS_FILE_REPAIRED: Rule = Rule {
    id: "alerts-file-repaired",
    severity: Severity::Medium,
};
/// The OTLP collector refused alerts for good; they are kept as dead letters.
pub const EXPORT_REJECTED: Rule = Rule {
    id: "export-rejected",
    severity: Severity::High,
};
/// The spool could not be written; alerts wait in memory until it can.
pub const SPOOL_WRITE_FAILED: Rule = Rule {
    id: "spool-write-failed",
    severity: Severity::High,
};
/// An output could not take alerts: they were kept in memory, and these were lost.
pub const OUTPUT_FAILED: Rule = Rule {
    id: "alert-output-failed",
    severity: Severity::High,
};

/// Mode of the alerts file when the monitor creates it.
pub const ALERTS_FILE_MODE: u32 = 0o600;
/// Mode of the alerts file created for a group of readers (`outputs.alerts_file_group`).
pub const ALERTS_FILE_GROUP_MODE: u32 = 0o640;

/// The gid of a group given by name or number.
fn resolve_group(group: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let name =
        std::ffi::CString::new(group).with_context(|| format!("invalid group name {group:?}"))?;
    // SAFETY: a C struct of integers and pointers, for getgrnam_r to fill.
    let mut entry: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 << 10];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrnam_r writes into `entry` and `buf`, both ours and large enough (it says
    // ERANGE otherwise), and sets `found` to `&entry` or null.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut entry,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 {
        anyhow::bail!(
            "failed to look up group {group:?}: {}",
            io::Error::from_raw_os_error(rc)
        );
    }
    if found.is_null() {
        anyhow::bail!(
            "failed to find group {group:?}: no such group; set outputs.alerts_file_group to \
             an existing group name or number"
        );
    }
    Ok(entry.gr_gid)
}

/// A notice of `rule` with these attributes, timed now.
pub fn notice(rule: Rule, attributes: Map<String, Value>) -> Alert {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    Alert {
        rule: rule.id.into(),
        severity: rule.severity,
        action: Action::Alert,
        profile: None,
        time_unix_ns: now,
        observed_unix_ns: now,
        count: 1,
        uid: new_uid(),
        attributes,
    }
}

/// A destination for alerts (JSON lines on stdout or a file, OTLP, ...).
pub trait AlertSink: Send {
    /// Takes one alert. Must not block on the network: queue or spool instead.
    fn send(&mut self, alert: &Alert) -> anyhow::Result<()>;

    /// Called after each batch of events: write out what is buffered.
    fn flush(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Called once at shutdown, after the last alert.
    fn close(&mut self) -> anyhow::Result<()> {
        self.flush()
    }

    /// Reopens files by their path (SIGHUP, after a log rotation).
    fn reopen(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Alerts this sink raised about itself, for the other outputs ([`Outputs`] relays them).
    fn take_notices(&mut self) -> Vec<Alert> {
        Vec::new()
    }
}

/// Every output of `monitor run` as one sink: sends each alert to each output, and relays
/// each output's notices to the others. A failing output is logged and does not stop the
/// others.
pub struct Outputs {
    sinks: Vec<Box<dyn AlertSink>>,
    metrics: Option<Arc<Metrics>>,
}

impl Outputs {
    pub fn new(sinks: Vec<Box<dyn AlertSink>>, metrics: Option<Arc<Metrics>>) -> Outputs {
        Outputs { sinks, metrics }
    }

    /// Sends each output's notices to every other output.
    fn relay(&mut self) {
        for from in 0..self.sinks.len() {
            for alert in self.sinks[from].take_notices() {
                if let Some(metrics) = &self.metrics {
                    metrics.alert(&alert.rule, alert.severity);
                }
                for (to, sink) in self.sinks.iter_mut().enumerate() {
                    if to != from {
                        if let Err(err) = sink.send(&alert) {
                            warn!("failed to send alert {}: {err:#}", alert.rule);
                        }
                    }
                }
            }
        }
    }
}

impl AlertSink for Outputs {
    fn send(&mut self, alert: &Alert) -> anyhow::Result<()> {
        for sink in &mut self.sinks {
            if let Err(err) = sink.send(alert) {
                warn!("failed to send alert {}: {err:#}", alert.rule);
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.relay();
        for sink in &mut self.sinks {
            if let Err(err) = sink.flush() {
                warn!("failed to flush alerts: {err:#}");
            }
        }
        Ok(())
    }

    fn close(&mut self) -> anyhow::Result<()> {
        self.relay();
        // The last first (OTLP, added last, drains its spool for a while): what it raises
        // while closing still reaches the outputs not closed yet.
        for i in (0..self.sinks.len()).rev() {
            if let Err(err) = self.sinks[i].close() {
                warn!("failed to close an alert output: {err:#}");
            }
            for alert in self.sinks[i].take_notices() {
                for sink in &mut self.sinks[..i] {
                    if let Err(err) = sink.send(&alert) {
                        warn!("failed to send alert {}: {err:#}", alert.rule);
                    }
                }
            }
        }
        Ok(())
    }

    fn reopen(&mut self) -> anyhow::Result<()> {
        for sink in &mut self.sinks {
            if let Err(err) = sink.reopen() {
                warn!("failed to reopen an alert output: {err:#}");
            }
        }
        self.relay();
        Ok(())
    }
}

/// One alert as one JSON line, newline included.
fn line(alert: &Alert) -> Vec<u8> {
    let mut buf = serde_json::to_vec(&alert.to_json()).expect("an alert serializes to JSON");
    buf.push(b'\n');
    buf
}

/// Lines queued for the stdout writer before alerts are counted lost.
const STDOUT_QUEUE: usize = 16_384;
/// How long closing waits for the stdout writer to write what is queued.
const STDOUT_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Alerts as JSON lines on stdout, written by a thread of its own: a reader that stops
/// reading (a full pipe) must not stall the event loop. Up to [`STDOUT_QUEUE`] lines wait;
/// past that, lines are lost, counted, and reported.
pub struct StdoutLines {
    queue: Option<mpsc::SyncSender<Vec<u8>>>,
    writer: Option<JoinHandle<()>>,
    lost: u64,
    notices: Vec<Alert>,
}

impl StdoutLines {
    pub fn start() -> anyhow::Result<StdoutLines> {
        Self::start_on(io::stdout(), STDOUT_QUEUE)
    }

    fn start_on(mut out: impl Write + Send + 'static, capacity: usize) -> anyhow::Result<Self> {
        let (queue, lines) = mpsc::sync_channel::<Vec<u8>>(capacity);
        let writer = std::thread::Builder::new()
            .name("alerts-stdout".into())
            .spawn(move || {
                let mut out = io::BufWriter::new(&mut out);
                while let Ok(line) = lines.recv() {
                    let mut result = out.write_all(&line);
                    // Flush once nothing more is waiting: whole batches, without delay.
                    while let Ok(line) = lines.try_recv() {
                        result = result.and_then(|()| out.write_all(&line));
                    }
                    if let Err(e) = result.and_then(|()| out.flush()) {
                        warn!("failed to write alerts to stdout: {e}");
                    }
                }
            })
            .context("failed to start the stdout writer thread")?;
        Ok(StdoutLines {
            queue: Some(queue),
            writer: Some(writer),
            lost: 0,
            notices: Vec::new(),
        })
    }
}

impl AlertSink for StdoutLines {
    fn send(&mut self, alert: &Alert) -> anyhow::Result<()> {
        let Some(queue) = &self.queue else {
            anyhow::bail!("stdout is closed");
        };
        match queue.try_send(line(alert)) {
            Ok(()) => Ok(()),
            Err(mpsc::TrySendError::Full(_)) => {
                self.lost += 1;
                if self.lost == 1 {
                    warn!("stdout does not keep up: alerts are lost (counted, reported)");
                }
                Ok(())
            }
            Err(mpsc::TrySendError::Disconnected(_)) => anyhow::bail!("stdout writer ended"),
        }
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if self.lost > 0 {
            let mut attributes = Map::new();
            attributes.insert("monitor.output".into(), "stdout".into());
            attributes.insert("monitor.output.lost".into(), self.lost.into());
            self.notices.push(notice(OUTPUT_FAILED, attributes));
            self.lost = 0;
        }
        Ok(())
    }

    fn close(&mut self) -> anyhow::Result<()> {
        self.flush()?;
        self.queue.take();
        let Some(writer) = self.writer.take() else {
            return Ok(());
        };
        // A reader that stopped reading must not hold the exit up for ever.
        let deadline = Instant::now() + STDOUT_CLOSE_TIMEOUT;
        while !writer.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !writer.is_finished() {
            anyhow::bail!(
                "stdout is not read: the alerts still queued for it after \
                 {STDOUT_CLOSE_TIMEOUT:?} are lost"
            );
        }
        if writer.join().is_err() {
            anyhow::bail!("the stdout writer thread panicked");
        }
        Ok(())
    }

    fn take_notices(&mut self) -> Vec<Alert> {
        std::mem::take(&mut self.notices)
    }
}

impl Drop for StdoutLines {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            warn!("{e:#}");
        }
    }
}

/// Lines the alerts file keeps in memory while it cannot be written (a full disk).
const FILE_BACKLOG: usize = 16_384;
/// How often the alerts file's path is checked for a rotation without a signal.
const ROTATION_CHECK: Duration = Duration::from_secs(1);

/// The alerts file: one JSON line per alert, each written whole.
///
/// - Opened `O_APPEND` (a `copytruncate` rotation leaves no hole), created 0600 whatever the
///   umask.
/// - Each line is one `write`. A short write (the disk filled up mid-line) keeps the rest of
///   the line, and the lines after it, in memory, and writes them once the disk has room: the
///   file never holds half a line while the monitor runs.
/// - At open, a file that does not end in a newline (the previous run was killed mid-write,
///   or the disk filled) gets one, and the repair is reported: a warning and an
///   [`ALERTS_FILE_REPAIRED`] alert, in the file and through the other outputs.
/// - [`AlertSink::reopen`] (SIGHUP) opens the path again; so does a flush that finds the
///   path naming another file (a `create`-style rotation without a signal) or none.
pub struct AlertsFile {
    path: PathBuf,
    /// The group that may read the file (0640), if any.
    group: Option<u32>,
    file: File,
    /// Device and inode of `file`.
    identity: (u64, u64),
    /// Lines not yet in the file; the first may be in part (`written` bytes of it).
    backlog: VecDeque<Vec<u8>>,
    written: usize,
    /// When the current write failure began, and the error.
    failing: Option<io::Error>,
    /// Lines lost because the backlog was full, not yet reported.
    lost: u64,
    last_check: Instant,
    notices: Vec<Alert>,
}

impl AlertsFile {
    /// Opens (creating it 0600, and its directory) the alerts file for appending.
    pub fn open(path: &Path) -> anyhow::Result<AlertsFile> {
        Self::open_for_group(path, None)
    }

    /// Opens the alerts file; when the monitor creates it and `group` is given, the file is
    /// created 0640 and owned by that group (name or number), for a log shipper to read.
    pub fn open_for_group(path: &Path, group: Option<&str>) -> anyhow::Result<AlertsFile> {
        let group = group
            .map(resolve_group)
            .transpose()
            .context("failed to use outputs.alerts_file_group")?;
        let (file, identity, repair) = Self::open_file(path, group)?;
        let mut sink = AlertsFile {
            path: path.to_path_buf(),
            group,
            file,
            identity,
            backlog: VecDeque::new(),
            written: 0,
            failing: None,
            lost: 0,
            last_check: Instant::now(),
            notices: Vec::new(),
        };
        sink.report_repair(repair);
        Ok(sink)
    }

    /// Opens `path`, and starts a new line if it ends in half of one: returns the file, its
    /// identity, and the length of the half line that was closed (`None`: nothing to repair).
    fn open_file(
        path: &Path,
        group: Option<u32>,
    ) -> anyhow::Result<(File, (u64, u64), Option<u64>)> {
        let mode = if group.is_some() {
            ALERTS_FILE_GROUP_MODE
        } else {
            ALERTS_FILE_MODE
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| {
                format!(
                    "failed to create the directory of alerts_file {}",
                    path.display()
                )
            })?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(mode)
            .open(path)
            .with_context(|| {
                format!(
                    "failed to open alerts_file {} for appending; check the path and its \
                     permissions",
                    path.display()
                )
            })?;
        let meta = file
            .metadata()
            .with_context(|| format!("failed to stat alerts_file {}", path.display()))?;
        if meta.len() == 0 {
            // Just created (or empty): the umask may have taken bits away, and the group is
            // set here. A file with alerts in it keeps the mode and owner it has.
            if let Some(gid) = group.filter(|&gid| gid != meta.gid()) {
                std::os::unix::fs::fchown(&file, None, Some(gid)).with_context(|| {
                    format!(
                        "failed to give alerts_file {} to group {gid}",
                        path.display()
                    )
                })?;
            }
            if meta.permissions().mode() & 0o777 != mode {
                file.set_permissions(std::fs::Permissions::from_mode(mode))
                    .with_context(|| format!("failed to chmod alerts_file {}", path.display()))?;
            }
        }
        let repair = torn_tail(&file, meta.len())
            .with_context(|| format!("failed to read the end of {}", path.display()))?;
        if repair.is_some() {
            (&file)
                .write_all(b"\n")
                .with_context(|| format!("failed to repair the last line of {}", path.display()))?;
        }
        Ok((file, (meta.dev(), meta.ino()), repair))
    }

    fn report_repair(&mut self, torn_bytes: Option<u64>) {
        let Some(torn_bytes) = torn_bytes else { return };
        warn!(
            "the alerts file {} ended in half a line ({torn_bytes} bytes): a crash or a full \
             disk cut a write short; started a new line",
            self.path.display()
        );
        let mut attributes = Map::new();
        attributes.insert("file.path".into(), self.path.display().to_string().into());
        attributes.insert("monitor.alerts_file.torn_bytes".into(), torn_bytes.into());
        let alert = notice(ALERTS_FILE_REPAIRED, attributes);
        self.backlog.push_back(line(&alert));
        self.write_backlog();
        self.notices.push(alert);
    }

    /// Writes what waits, oldest first, each line with one `write`.
    fn write_backlog(&mut self) {
        while let Some(front) = self.backlog.front() {
            match (&self.file).write(&front[self.written..]) {
                Ok(0) => break,
                Ok(n) => {
                    self.written += n;
                    if self.written == front.len() {
                        self.backlog.pop_front();
                        self.written = 0;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!("failed to write to the alerts file: {e}");
                    if self.failing.is_none() {
                        warn!(
                            "failed to write to the alerts file {}: {e}; alerts wait in memory \
                             (up to {FILE_BACKLOG}) until it can be written",
                            self.path.display()
                        );
                        let mut attributes = Map::new();
                        attributes.insert("monitor.output".into(), "alerts_file".into());
                        attributes
                            .insert("file.path".into(), self.path.display().to_string().into());
                        attributes.insert("error.type".into(), e.to_string().into());
                        self.notices.push(notice(OUTPUT_FAILED, attributes));
                        self.failing = Some(e);
                    }
                    return;
                }
            }
        }
        if self.failing.take().is_some() {
            info!(
                "the alerts file {} can be written again",
                self.path.display()
            );
        }
    }

    /// Whether `path` still names the open file.
    fn rotated(&self) -> bool {
        match std::fs::metadata(&self.path) {
            Ok(meta) => (meta.dev(), meta.ino()) != self.identity,
            Err(_) => true,
        }
    }
}

/// The length of the half line `file` (of `len` bytes) ends in, if it does not end in a
/// newline.
fn torn_tail(file: &File, len: u64) -> io::Result<Option<u64>> {
    use std::os::unix::fs::FileExt;
    if len == 0 {
        return Ok(None);
    }
    let mut tail = vec![0u8; len.min(1 << 16) as usize];
    let start = len - tail.len() as u64;
    file.read_exact_at(&mut tail, start)?;
    if tail.last() == Some(&b'\n') {
        return Ok(None);
    }
    let torn = tail.iter().rev().take_while(|&&b| b != b'\n').count();
    Ok(Some(torn as u64))
}

impl AlertSink for AlertsFile {
    fn send(&mut self, alert: &Alert) -> anyhow::Result<()> {
        if self.backlog.len() >= FILE_BACKLOG {
            self.lost += 1;
            return Ok(());
        }
        self.backlog.push_back(line(alert));
        self.write_backlog();
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if self.last_check.elapsed() >= ROTATION_CHECK {
            self.last_check = Instant::now();
            if self.rotated() {
                info!(
                    "the alerts file {} was moved or replaced: reopening it",
                    self.path.display()
                );
                self.reopen()?;
            }
        }
        self.write_backlog();
        if self.lost > 0 {
            let mut attributes = Map::new();
            attributes.insert("monitor.output".into(), "alerts_file".into());
            attributes.insert("file.path".into(), self.path.display().to_string().into());
            attributes.insert("monitor.output.lost".into(), self.lost.into());
            self.notices.push(notice(OUTPUT_FAILED, attributes));
            self.lost = 0;
        }
        Ok(())
    }

    fn reopen(&mut self) -> anyhow::Result<()> {
        // Finish the line in part in the old file if it can be; otherwise the new file gets
        // it whole, and the old one ends in half a line.
        self.write_backlog();
        self.written = 0;
        let (file, identity, repair) = Self::open_file(&self.path, self.group)?;
        self.file = file;
        self.identity = identity;
        self.report_repair(repair);
        self.write_backlog();
        Ok(())
    }

    fn take_notices(&mut self) -> Vec<Alert> {
        std::mem::take(&mut self.notices)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    use crate::test_support::TempDir;

    fn alert(n: u64) -> Alert {
        let mut attributes = Map::new();
        attributes.insert("process.pid".into(), n.into());
        notice(
            Rule {
                id: "test-rule",
                severity: Severity::Low,
            },
            attributes,
        )
    }

    /// Every line of the file, parsed; panics on a line that is not whole JSON.
    fn lines(path: &Path) -> Vec<Value> {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.is_empty() || text.ends_with('\n'), "{text:?}");
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .collect()
    }

    #[test]
    fn a_torn_last_line_is_closed_and_reported() {
        let dir = TempDir::created("torn");
        let path = dir.0.join("alerts.jsonl");
        std::fs::write(&path, b"{\"whole\":1}\n{\"security_rule.na").unwrap();
        let mut sink = AlertsFile::open(&path).unwrap();
        sink.send(&alert(1)).unwrap();
        sink.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut rest = text.lines();
        assert_eq!(rest.next(), Some("{\"whole\":1}"));
        assert_eq!(rest.next(), Some("{\"security_rule.na"));
        let repaired: Value = serde_json::from_str(rest.next().unwrap()).unwrap();
        assert_eq!(repaired["security_rule.name"], "alerts-file-repaired");
        assert_eq!(repaired["monitor.alerts_file.torn_bytes"], 18);
        assert_eq!(repaired["file.path"], path.display().to_string());
        let next: Value = serde_json::from_str(rest.next().unwrap()).unwrap();
        assert_eq!(next["process.pid"], 1);
        assert!(text.ends_with('\n'));
        // And through the other outputs.
        let notices = sink.take_notices();
        assert_eq!(notices.len(), 1);
        assert_eq!(notices[0].rule, "alerts-file-repaired");
        // A whole file is left alone.
        drop(sink);
        let before = std::fs::read(&path).unwrap();
        let mut sink = AlertsFile::open(&path).unwrap();
        assert!(sink.take_notices().is_empty());
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn the_alerts_file_is_created_0600_whatever_the_umask() {
        let dir = TempDir::created("mode");
        let path = dir.0.join("sub/alerts.jsonl");
        // SAFETY: umask only changes the modes of files created meanwhile.
        let old = unsafe { libc::umask(0) };
        let sink = AlertsFile::open(&path);
        unsafe { libc::umask(old) };
        drop(sink.unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_configured_group_gets_0640() {
        use std::os::unix::fs::MetadataExt;
        let dir = TempDir::created("group");
        let path = dir.0.join("alerts.jsonl");
        // SAFETY: umask only changes the modes of files created meanwhile.
        let old = unsafe { libc::umask(0o077) };
        let sink = AlertsFile::open_for_group(&path, Some("65534"));
        unsafe { libc::umask(old) };
        drop(sink.unwrap());
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
        assert_eq!(meta.gid(), 65534);
        let err = AlertsFile::open_for_group(&dir.0.join("b"), Some("no-such-group-here"))
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("outputs.alerts_file_group"),
            "{err:#}"
        );
    }

    #[test]
    fn rename_rotation_is_followed_on_reopen_and_without_a_signal() {
        let dir = TempDir::created("rotate");
        let path = dir.0.join("alerts.jsonl");
        let mut sink = AlertsFile::open(&path).unwrap();
        sink.send(&alert(1)).unwrap();
        // logrotate `create`, then SIGHUP.
        std::fs::rename(&path, dir.0.join("alerts.jsonl.1")).unwrap();
        sink.reopen().unwrap();
        sink.send(&alert(2)).unwrap();
        assert_eq!(lines(&dir.0.join("alerts.jsonl.1")).len(), 1);
        assert_eq!(lines(&path)[0]["process.pid"], 2);
        // The same without a signal: the next flush after a second sees another file there.
        std::fs::rename(&path, dir.0.join("alerts.jsonl.2")).unwrap();
        std::fs::write(&path, b"").unwrap();
        std::thread::sleep(ROTATION_CHECK + Duration::from_millis(50));
        sink.flush().unwrap();
        sink.send(&alert(3)).unwrap();
        assert_eq!(lines(&dir.0.join("alerts.jsonl.2")).len(), 1);
        assert_eq!(lines(&path)[0]["process.pid"], 3);
        // Or none at all.
        std::fs::remove_file(&path).unwrap();
        std::thread::sleep(ROTATION_CHECK + Duration::from_millis(50));
        sink.flush().unwrap();
        sink.send(&alert(4)).unwrap();
        assert_eq!(lines(&path)[0]["process.pid"], 4);
    }

    #[test]
    fn copytruncate_leaves_no_hole() {
        let dir = TempDir::created("copytruncate");
        let path = dir.0.join("alerts.jsonl");
        let mut sink = AlertsFile::open(&path).unwrap();
        for n in 0..10 {
            sink.send(&alert(n)).unwrap();
        }
        std::fs::copy(&path, dir.0.join("alerts.jsonl.1")).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        sink.send(&alert(10)).unwrap();
        // O_APPEND: the next line starts at offset 0, not after ten lines of zeros.
        let lines = lines(&path);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["process.pid"], 10);
    }

    /// A sink that records what it gets and raises the notices it is given.
    #[derive(Clone, Default)]
    struct Probe {
        got: Arc<Mutex<Vec<String>>>,
        raise: Arc<Mutex<Vec<Alert>>>,
    }

    impl AlertSink for Probe {
        fn send(&mut self, alert: &Alert) -> anyhow::Result<()> {
            self.got.lock().unwrap().push(alert.rule.clone());
            Ok(())
        }

        fn take_notices(&mut self) -> Vec<Alert> {
            std::mem::take(&mut *self.raise.lock().unwrap())
        }
    }

    #[test]
    fn outputs_relay_a_notice_to_the_others_only() {
        let (a, b, c) = (Probe::default(), Probe::default(), Probe::default());
        let metrics = Arc::new(Metrics::new());
        let mut outputs = Outputs::new(
            vec![
                Box::new(a.clone()),
                Box::new(b.clone()),
                Box::new(c.clone()),
            ],
            Some(metrics.clone()),
        );
        outputs.send(&alert(1)).unwrap();
        b.raise
            .lock()
            .unwrap()
            .push(notice(EXPORT_REJECTED, Map::new()));
        outputs.flush().unwrap();
        assert_eq!(*a.got.lock().unwrap(), ["test-rule", "export-rejected"]);
        assert_eq!(*b.got.lock().unwrap(), ["test-rule"]);
        assert_eq!(*c.got.lock().unwrap(), ["test-rule", "export-rejected"]);
        // Counted like any alert.
        assert!(metrics.snapshot().iter().any(|p| p.name == "monitor.alerts"
            && p.labels
                .contains(&("security_rule.name", "export-rejected".into()))));
        // At close, the last output's notices reach the ones closed after it.
        c.raise
            .lock()
            .unwrap()
            .push(notice(SPOOL_WRITE_FAILED, Map::new()));
        outputs.close().unwrap();
        assert_eq!(a.got.lock().unwrap().last().unwrap(), "spool-write-failed");
        assert_eq!(b.got.lock().unwrap().last().unwrap(), "spool-write-failed");
    }

    /// A writer that blocks until it is let go, and keeps what it is given.
    #[derive(Clone, Default)]
    struct Gate {
        open: Arc<(Mutex<bool>, std::sync::Condvar)>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (lock, cvar) = &*self.open;
            let mut open = lock.lock().unwrap();
            while !*open {
                open = cvar.wait(open).unwrap();
            }
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_stdout_never_blocks_and_losses_are_counted() {
        let gate = Gate::default();
        let mut sink = StdoutLines::start_on(gate.clone(), 4).unwrap();
        let started = Instant::now();
        // The writer takes one line, and those already waiting into its buffer, then blocks
        // on the flush: it holds 0 to 5 lines (up to the first and the 4 queued behind it)
        // and 4 more wait, so 11 to 16 are lost, depending on when the thread ran.
        for n in 0..20 {
            sink.send(&alert(n)).unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        sink.flush().unwrap();
        let notices = sink.take_notices();
        assert_eq!(notices.len(), 1);
        assert_eq!(notices[0].rule, "alert-output-failed");
        let lost = notices[0].attributes["monitor.output.lost"]
            .as_u64()
            .unwrap();
        assert!((11..=16).contains(&lost), "{lost}");
        *gate.open.0.lock().unwrap() = true;
        gate.open.1.notify_all();
        sink.close().unwrap();
        let text = String::from_utf8(gate.written.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count() as u64, 20 - lost);
        for line in text.lines() {
            serde_json::from_str::<Value>(line).unwrap();
        }
    }
}
