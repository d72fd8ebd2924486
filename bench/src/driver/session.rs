//! Tracers running beside a workload: the monitor (`monitor run`) and bpftrace. Their stdout
//! is read as it comes, each line stamped with CLOCK_MONOTONIC on arrival.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use super::sys::monotonic_ns;

/// Lines a tracer printed, with their arrival time.
#[derive(Default)]
pub struct Output {
    /// Kept for the monitor (alerts); bpftrace's lines are only counted.
    pub lines: Vec<(u64, String)>,
    pub count: u64,
    pub closed: bool,
    /// A bpftrace `READY` line was seen.
    pub ready: bool,
    /// bpftrace's "Lost N events" notices on stdout, summed.
    pub lost: u64,
}

/// How a session ended.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SessionEnd {
    /// Events the monitor received, by kind (its summary at exit).
    pub events: Vec<(String, u64)>,
    /// Events the monitor reported lost in total (its summary at exit).
    pub lost_total: Option<u64>,
    /// Events bpftrace said it lost ("Lost N events").
    pub bpftrace_lost: u64,
    /// Lines printed on stdout.
    pub lines: u64,
    /// How long stopping took.
    pub stop_seconds: f64,
    pub exit: String,
    /// The end of stderr, for the report when something went wrong.
    pub stderr_tail: String,
}

/// A running tracer.
pub struct Session {
    pub name: String,
    pub pid: u32,
    child: Option<Child>,
    pub output: Arc<Mutex<Output>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    ready_file: Option<PathBuf>,
}

impl Session {
    /// Starts `monitor run [--config CFG] --cgroup CG --ready-file F` and waits until ready.
    pub fn monitor(
        name: &str,
        monitor: &Path,
        config: Option<&Path>,
        cgroup: &Path,
        ready_file: &Path,
    ) -> Result<Session> {
        let _ = std::fs::remove_file(ready_file);
        let mut command = Command::new(monitor);
        command.arg("run");
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        command
            .arg("--cgroup")
            .arg(cgroup)
            .arg("--ready-file")
            .arg(ready_file)
            .env("RUST_LOG", "info");
        let mut session = Session::spawn(name, command, true)?;
        session.ready_file = Some(ready_file.to_owned());
        let deadline = Instant::now() + Duration::from_secs(120);
        while !ready_file.exists() {
            if let Some(status) = session.try_wait()? {
                bail!(
                    "failed to start the monitor: it exited ({status}) before it was ready; \
                     its stderr ends with:\n{}",
                    session.stderr_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "failed to start the monitor: not ready after 120 s; its stderr ends with:\n{}",
                    session.stderr_tail()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(session)
    }

    /// Starts `bpftrace -e SCRIPT` and waits for the `READY` its BEGIN probe prints (BEGIN
    /// fires once every probe is attached).
    pub fn bpftrace(name: &str, bpftrace: &Path, script: &str) -> Result<Session> {
        let mut command = Command::new(bpftrace);
        command.arg("-e").arg(script);
        let mut session = Session::spawn(name, command, false)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if session.output.lock().unwrap().ready {
                break;
            }
            if let Some(status) = session.try_wait()? {
                bail!(
                    "failed to start bpftrace: it exited ({status}) before it was ready; its \
                     stderr ends with:\n{}",
                    session.stderr_tail()
                );
            }
            if Instant::now() > deadline {
                bail!("failed to start bpftrace: not ready after 60 s");
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(session)
    }

    fn spawn(name: &str, mut command: Command, keep_lines: bool) -> Result<Session> {
        let shown = format!("{command:?}");
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("failed to start {shown}"))?;
        let pid = child.id();
        let output = Arc::new(Mutex::new(Output::default()));
        let stdout = child.stdout.take().context("stdout is piped")?;
        let sink = output.clone();
        let out_reader = thread::spawn(move || {
            let mut reader = BufReader::with_capacity(1 << 20, stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let at = monotonic_ns();
                let mut out = sink.lock().unwrap();
                out.count += 1;
                if line.starts_with("READY") {
                    out.ready = true;
                } else if line.starts_with("Lost ") {
                    out.lost += parse_bpftrace_lost(&line);
                } else if keep_lines {
                    out.lines.push((at, line.trim_end().to_owned()));
                }
            }
            sink.lock().unwrap().closed = true;
        });
        let stderr_text = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().context("stderr is piped")?;
        let stderr_sink = stderr_text.clone();
        let err_reader = thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut text = stderr_sink.lock().unwrap();
                text.push_str(&String::from_utf8_lossy(&buf[..n]));
                // Keep the head (start-up) and the tail (summary) only.
                if text.len() > 1 << 20 {
                    let cut = text.len() - (1 << 19);
                    let cut = (cut..text.len())
                        .find(|&i| text.is_char_boundary(i))
                        .unwrap_or(text.len());
                    text.replace_range(..cut, "...\n");
                }
            }
        });
        Ok(Session {
            name: name.to_owned(),
            pid,
            child: Some(child),
            output,
            stderr: stderr_text,
            readers: vec![out_reader, err_reader],
            ready_file: None,
        })
    }

    fn try_wait(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match &mut self.child {
            Some(child) => Ok(child.try_wait()?),
            None => Ok(None),
        }
    }

    pub fn stderr_tail(&self) -> String {
        tail(&self.stderr.lock().unwrap(), 2000)
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Lines printed since index `from` (and the new length).
    pub fn lines_since(&self, from: usize) -> (Vec<(u64, String)>, usize) {
        let out = self.output.lock().unwrap();
        let from = from.min(out.lines.len());
        (out.lines[from..].to_vec(), out.lines.len())
    }

    /// SIGINT, then waits (SIGKILL after 60 s) and collects how it ended, in a thread so that
    /// a quick run can go on meanwhile.
    pub fn stop(mut self) -> JoinHandle<SessionEnd> {
        let child = self.child.take();
        let output = self.output.clone();
        let stderr = self.stderr.clone();
        let readers = std::mem::take(&mut self.readers);
        let ready_file = self.ready_file.take();
        thread::spawn(move || {
            let start = Instant::now();
            let mut exit = String::from("not running");
            if let Some(mut child) = child {
                // SAFETY: signalling our own child by its pid.
                unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    match child.try_wait() {
                        Ok(Some(status)) => {
                            exit = status.to_string();
                            break;
                        }
                        Ok(None) if Instant::now() < deadline => {
                            thread::sleep(Duration::from_millis(20));
                        }
                        _ => {
                            let _ = child.kill();
                            exit = child
                                .wait()
                                .map_or("killed".into(), |s| format!("{s} (killed after 60 s)"));
                            break;
                        }
                    }
                }
            }
            for reader in readers {
                let _ = reader.join();
            }
            if let Some(path) = ready_file {
                let _ = std::fs::remove_file(path);
            }
            let stderr = stderr.lock().unwrap().clone();
            let (events, lost_total) = parse_monitor_summary(&stderr);
            // One lock at a time: a guard in a struct literal lives to the end of it.
            let (stdout_lost, lines) = {
                let out = output.lock().unwrap();
                (out.lost, out.count)
            };
            SessionEnd {
                events,
                lost_total,
                bpftrace_lost: parse_bpftrace_lost(&stderr) + stdout_lost,
                lines,
                stop_seconds: start.elapsed().as_secs_f64(),
                exit,
                stderr_tail: tail(&stderr, 3000),
            }
        })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(path) = &self.ready_file {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut cut = text.len() - max;
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    text[cut..].to_owned()
}

/// From the monitor's `summary events={"exec": Number(3), ...} lost=0 ...` log line: the
/// events by kind and the total lost.
pub fn parse_monitor_summary(stderr: &str) -> (Vec<(String, u64)>, Option<u64>) {
    let Some(line) = stderr.lines().rev().find(|l| l.contains(" summary ")) else {
        return (Vec::new(), None);
    };
    let mut events = Vec::new();
    if let Some(start) = line.find("events={") {
        let rest = &line[start + "events={".len()..];
        let body = &rest[..rest.find('}').unwrap_or(rest.len())];
        for pair in body.split(',') {
            let Some((key, value)) = pair.split_once(':') else {
                continue;
            };
            let key = key.trim().trim_matches('"').to_owned();
            let digits: String = value.chars().filter(char::is_ascii_digit).collect();
            if let Ok(n) = digits.parse() {
                events.push((key, n));
            }
        }
    }
    let lost = line.split_whitespace().find_map(|word| {
        word.strip_prefix("lost=")
            .and_then(|n| n.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
    });
    (events, lost)
}

/// Sums bpftrace's "Lost N events" notices.
pub fn parse_bpftrace_lost(text: &str) -> u64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("Lost ")?;
            let n = rest.split_whitespace().next()?;
            rest.contains("events").then(|| n.parse::<u64>().ok())?
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_monitor_summary() {
        let stderr = "2026-11-25T19:38:54Z  INFO monitor ready\n\
            2026-11-25T19:39:04.413875Z  INFO summary events={\"device\": Number(0), \"exec\": \
            Number(20), \"file\": Number(1000000)} lost=12 processes=81\n";
        let (events, lost) = parse_monitor_summary(stderr);
        assert_eq!(lost, Some(12));
        assert_eq!(
            events,
            vec![
                ("device".to_owned(), 0),
                ("exec".to_owned(), 20),
                ("file".to_owned(), 1_000_000)
            ]
        );
        assert_eq!(parse_monitor_summary("nothing"), (Vec::new(), None));
    }

    #[test]
    fn sums_bpftrace_losses() {
        let text = "Attaching 5 probes...\nLost 120 events\nopenat 1 x\nLost 3 events\n";
        assert_eq!(parse_bpftrace_lost(text), 123);
        assert_eq!(parse_bpftrace_lost("Lost track"), 0);
    }
}
