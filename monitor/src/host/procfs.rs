//! What `/proc` says about the processes that already run when the monitor starts.
//!
//! The kernel programs only see processes that fork, exec or exit after they attach;
//! the process table is seeded from here so that older processes have an identity,
//! an executable and a parent too.

use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::OnceLock;

use serde::Serialize;

/// One process as `/proc` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcSnapshot {
    pub tgid: u32,
    pub ppid: u32,
    /// Start time in nanoseconds of `CLOCK_BOOTTIME`, at the granularity of a clock
    /// tick (`/proc` counts in ticks), so it can lie up to one tick before the
    /// nanosecond value that the kernel programs report for the same process.
    pub start_time_ns: u64,
    /// The executable's path; `None` for kernel threads, zombies and processes whose
    /// executable cannot be read.
    pub exe: Option<String>,
    /// The executable was deleted or replaced after the process started (the kernel
    /// appends ` (deleted)` to the link, which `exe` has without).
    pub exe_deleted: bool,
    pub args: Vec<String>,
    /// The real user id.
    pub uid: u32,
    /// The cgroup v2 path (the `0::` line of `/proc/PID/cgroup`).
    pub cgroup_path: Option<String>,
}

/// Clock ticks per second of the times in `/proc/PID/stat` (`USER_HZ`).
pub fn clock_ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        // USER_HZ is 100 on every architecture Linux supports but alpha.
        u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
    })
}

/// Nanoseconds in `ticks` clock ticks of `ticks_per_second`.
pub(crate) fn ticks_to_ns(ticks: u64, ticks_per_second: u64) -> u64 {
    let ns = u128::from(ticks) * 1_000_000_000 / u128::from(ticks_per_second.max(1));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// The clock tick that nanosecond `ns` falls in.
pub(crate) fn ns_to_ticks(ns: u64, ticks_per_second: u64) -> u64 {
    let ticks = u128::from(ns) * u128::from(ticks_per_second) / 1_000_000_000;
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

/// Reads one process from `/proc`. An error of kind `NotFound` means that the
/// process does not exist (any more).
pub fn read_process(tgid: u32) -> io::Result<ProcSnapshot> {
    let dir = PathBuf::from(format!("/proc/{tgid}"));

    // comm may hold any byte; only the fields after it must be text.
    let stat = fs::read(dir.join("stat")).map_err(|e| context(e, tgid, "stat"))?;
    let (ppid, start_ticks) =
        parse_stat(&String::from_utf8_lossy(&stat)).map_err(|e| context(e, tgid, "stat"))?;

    let status = fs::read_to_string(dir.join("status")).map_err(|e| context(e, tgid, "status"))?;
    let (status_tgid, uid) = parse_status(&status).map_err(|e| context(e, tgid, "status"))?;
    // /proc/TID exists for every thread although only leaders are listed: refuse a
    // thread, whose start time is not its process's.
    if status_tgid != tgid {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("failed to read process {tgid}: it is a thread of process {status_tgid}"),
        ));
    }

    let (exe, exe_deleted) = match fs::read_link(dir.join("exe")) {
        Ok(link) => {
            let link = link
                .into_os_string()
                .into_string()
                .unwrap_or_else(|os| os.to_string_lossy().into_owned());
            let (exe, deleted) = strip_deleted(link);
            (Some(exe), deleted)
        }
        // Kernel threads and zombies have no executable.
        Err(e) if e.kind() == io::ErrorKind::NotFound => (None, false),
        Err(e) => {
            tracing::debug!("failed to read /proc/{tgid}/exe: {e}");
            (None, false)
        }
    };

    let cmdline = fs::read(dir.join("cmdline")).map_err(|e| context(e, tgid, "cmdline"))?;
    let args = parse_cmdline(&cmdline);

    let cgroup = fs::read_to_string(dir.join("cgroup")).map_err(|e| context(e, tgid, "cgroup"))?;
    let cgroup_path = parse_cgroup(&cgroup);

    Ok(ProcSnapshot {
        tgid,
        ppid,
        start_time_ns: ticks_to_ns(start_ticks, clock_ticks_per_second()),
        exe,
        exe_deleted,
        args,
        uid,
        cgroup_path,
    })
}

/// Every process in `/proc`. Processes that exit while being read are left out
/// silently; other failures are logged at debug level and left out.
pub fn scan() -> Vec<ProcSnapshot> {
    let entries = match fs::read_dir("/proc") {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!("failed to list /proc: {e}");
            return Vec::new();
        }
    };
    let mut processes = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                tracing::warn!("failed to list /proc: {e}");
                break;
            }
        };
        let Some(tgid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        match read_process(tgid) {
            Ok(process) => processes.push(process),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::debug!("{e}"),
        }
    }
    processes
}

/// Adds the file to an error, keeping its kind. ESRCH (a process that exited while
/// one of its files was open) becomes `NotFound`, like ENOENT, so that callers
/// test one kind for "gone".
fn context(e: io::Error, tgid: u32, file: &str) -> io::Error {
    let kind = if e.raw_os_error() == Some(libc::ESRCH) {
        io::ErrorKind::NotFound
    } else {
        e.kind()
    };
    io::Error::new(kind, format!("failed to read /proc/{tgid}/{file}: {e}"))
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("failed to parse {what}"),
    )
}

/// The parent's pid and the start time in clock ticks from the text of
/// `/proc/PID/stat`.
///
/// The second field, comm, is in parentheses and may itself hold `)`, spaces and
/// anything else, so the fields are counted from the last `)`.
fn parse_stat(text: &str) -> io::Result<(u32, u64)> {
    let close = text
        .rfind(')')
        .ok_or_else(|| invalid("stat: no ')' after comm"))?;
    // After comm: field 3 (state) is index 0, field 4 (ppid) index 1, and field 22
    // (starttime) index 19; see proc_pid_stat(5).
    let fields: Vec<&str> = text[close + 1..].split_ascii_whitespace().collect();
    let ppid = fields
        .get(1)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| invalid("stat: ppid"))?;
    let start = fields
        .get(19)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| invalid("stat: starttime"))?;
    Ok((ppid, start))
}

/// The `Tgid:` and the real uid (first value of `Uid:`) from `/proc/PID/status`.
fn parse_status(text: &str) -> io::Result<(u32, u32)> {
    let mut tgid = None;
    let mut uid = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Tgid:") {
            tgid = rest
                .split_ascii_whitespace()
                .next()
                .and_then(|v| v.parse().ok());
        } else if let Some(rest) = line.strip_prefix("Uid:") {
            uid = rest
                .split_ascii_whitespace()
                .next()
                .and_then(|v| v.parse().ok());
        }
    }
    match (tgid, uid) {
        (Some(tgid), Some(uid)) => Ok((tgid, uid)),
        (None, _) => Err(invalid("status: Tgid")),
        (_, None) => Err(invalid("status: Uid")),
    }
}

/// The arguments in `/proc/PID/cmdline`: NUL-terminated strings. Empty arguments in
/// the middle are kept; kernel threads have none.
fn parse_cmdline(bytes: &[u8]) -> Vec<String> {
    let mut args: Vec<String> = bytes
        .split(|b| *b == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect();
    if args.last().is_some_and(String::is_empty) {
        args.pop();
    }
    args
}

/// The cgroup v2 path, from the `0::` line of `/proc/PID/cgroup`.
fn parse_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_owned)
}

/// The executable's path without the ` (deleted)` that the kernel appends when the
/// file was unlinked, and whether it was there.
fn strip_deleted(link: String) -> (String, bool) {
    match link.strip_suffix(" (deleted)") {
        Some(path) => (path.to_owned(), true),
        None => (link, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};

    fn stat_line(comm: &str, ppid: u32, start: u64) -> String {
        // 52 fields as in Linux 6.x: pid (comm) state, then 49 numbers; ppid is field
        // 4 and starttime field 22.
        let mut fields: Vec<String> = vec!["1234".into(), format!("({comm})"), "S".into()];
        for n in 4..=52 {
            fields.push(match n {
                4 => ppid.to_string(),
                22 => start.to_string(),
                _ => (n * 1000).to_string(),
            });
        }
        fields.join(" ") + "\n"
    }

    #[test]
    fn stat_plain() -> io::Result<()> {
        assert_eq!(parse_stat(&stat_line("bash", 1, 4242))?, (1, 4242));
        Ok(())
    }

    #[test]
    fn stat_comm_with_parentheses_and_spaces() -> io::Result<()> {
        assert_eq!(
            parse_stat(&stat_line(") (", 77, 123_456_789))?,
            (77, 123_456_789)
        );
        assert_eq!(parse_stat(&stat_line("a) S 9 9 (b", 78, 5))?, (78, 5));
        assert_eq!(parse_stat(&stat_line("", 79, 6))?, (79, 6));
        Ok(())
    }

    #[test]
    fn stat_truncated() {
        assert!(parse_stat("1234 (bash) S 1 2 3").is_err());
        assert!(parse_stat("1234 bash S").is_err());
        assert!(parse_stat("").is_err());
    }

    #[test]
    fn status_uid_and_tgid() -> io::Result<()> {
        let text =
            "Name:\tbash\nTgid:\t42\nPid:\t43\nPPid:\t1\nUid:\t1000\t0\t0\t0\nGid:\t5\t5\t5\t5\n";
        assert_eq!(parse_status(text)?, (42, 1000));
        assert!(parse_status("Name:\tx\nTgid:\t1\n").is_err());
        Ok(())
    }

    #[test]
    fn cmdline_split() {
        assert_eq!(
            parse_cmdline(b"python\0-m\0vllm\0"),
            ["python", "-m", "vllm"]
        );
        assert_eq!(parse_cmdline(b"a\0\0b\0"), ["a", "", "b"]);
        // A process that rewrote its arguments without NULs.
        assert_eq!(
            parse_cmdline(b"nginx: worker process"),
            ["nginx: worker process"]
        );
        assert!(parse_cmdline(b"").is_empty());
    }

    #[test]
    fn cgroup_line() {
        let hybrid = "4:memory:/a/b\n1:cpu:/\n0::/system.slice/x.service\n";
        assert_eq!(
            parse_cgroup(hybrid).as_deref(),
            Some("/system.slice/x.service")
        );
        assert_eq!(parse_cgroup("0::/\n").as_deref(), Some("/"));
        assert_eq!(parse_cgroup("1:name=systemd:/\n"), None);
    }

    #[test]
    fn deleted_suffix() {
        assert_eq!(
            strip_deleted("/usr/bin/x (deleted)".into()),
            ("/usr/bin/x".into(), true)
        );
        assert_eq!(
            strip_deleted("/usr/bin/x".into()),
            ("/usr/bin/x".into(), false)
        );
    }

    #[test]
    fn tick_conversions() {
        assert_eq!(ticks_to_ns(123, 100), 1_230_000_000);
        assert_eq!(ns_to_ticks(1_239_999_999, 100), 123);
        assert_eq!(ticks_to_ns(3, 1024), 2_929_687);
        assert_eq!(ticks_to_ns(u64::MAX, 1), u64::MAX);
    }

    #[test]
    fn reads_current_process() -> io::Result<()> {
        let me = read_process(std::process::id())?;
        assert_eq!(me.tgid, std::process::id());
        let exe = std::env::current_exe()?;
        assert_eq!(me.exe.as_deref(), exe.to_str());
        assert!(!me.exe_deleted);
        assert_eq!(me.args, std::env::args().collect::<Vec<_>>());
        // SAFETY: getuid and getppid have no preconditions and cannot fail.
        let (uid, ppid) = unsafe { (libc::getuid(), libc::getppid()) };
        assert_eq!(me.uid, uid);
        assert_eq!(me.ppid, u32::try_from(ppid).unwrap_or(0));
        assert!(me.start_time_ns > 0);
        let cgroup = fs::read_to_string("/proc/self/cgroup")?;
        assert_eq!(me.cgroup_path, parse_cgroup(&cgroup));
        Ok(())
    }

    #[test]
    fn start_time_is_boottime() -> io::Result<()> {
        let me = read_process(std::process::id())?;
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid timespec to write to.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) };
        assert_eq!(
            rc,
            0,
            "failed to read CLOCK_BOOTTIME: {}",
            io::Error::last_os_error()
        );
        let now_ns = u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000
            + u64::try_from(now.tv_nsec).unwrap_or(0);
        assert!(me.start_time_ns <= now_ns);
        Ok(())
    }

    #[test]
    fn missing_process_is_not_found() {
        // Above PID_MAX_LIMIT (4 194 304): no such process can exist.
        let err = read_process(u32::MAX).err().map(|e| e.kind());
        assert_eq!(err, Some(io::ErrorKind::NotFound));
    }

    /// A child killed and reaped when the test ends or panics.
    struct ChildGuard(Child);

    impl Drop for ChildGuard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn deleted_executable() -> io::Result<()> {
        let copy = std::env::temp_dir().join(format!("monitor-test-sleep-{}", std::process::id()));
        fs::copy("/bin/sleep", &copy)?;
        // Another test's child may briefly hold the copy's write descriptor between
        // its fork and exec, making exec fail with ETXTBSY: retry a few times.
        let mut child = Command::new(&copy).arg("30").spawn();
        for _ in 0..50 {
            match &child {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    child = Command::new(&copy).arg("30").spawn();
                }
                _ => break,
            }
        }
        fs::remove_file(&copy)?;
        let child = ChildGuard(child?);
        // spawn (vfork-style) returns once the child's exec released the old memory, a
        // moment before the kernel sets up the new argv: wait for it.
        let mut snapshot = read_process(child.0.id())?;
        for _ in 0..200 {
            if !snapshot.args.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
            snapshot = read_process(child.0.id())?;
        }
        assert_eq!(snapshot.exe.as_deref(), copy.to_str());
        assert!(snapshot.exe_deleted);
        assert_eq!(
            snapshot.args,
            [copy.to_string_lossy().into_owned(), "30".to_owned()]
        );
        assert_eq!(snapshot.ppid, std::process::id());
        Ok(())
    }

    #[test]
    fn scan_finds_current_process() {
        let all = scan();
        assert!(all.iter().any(|p| p.tgid == std::process::id()));
        // Threads are not listed in /proc, so every tgid appears once.
        let mut tgids: Vec<u32> = all.iter().map(|p| p.tgid).collect();
        tgids.sort_unstable();
        tgids.dedup();
        assert_eq!(tgids.len(), all.len());
    }
}
