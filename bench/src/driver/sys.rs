//! What the driver reads from and does to the host: /proc readings of a daemon, per-program
//! BPF run time, the `kernel.bpf_stats_enabled` switch, the benchmark's cgroup, the machine.

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

/// Nanoseconds of CLOCK_MONOTONIC (what the workloads stamp their syscalls with).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Unix-epoch nanoseconds now.
pub fn unix_now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// One program's counters as the kernel keeps them with `kernel.bpf_stats_enabled=1` (the
/// numbers `bpftool prog show` prints), read from the daemon's own fds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ProgStat {
    pub id: u32,
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// What a daemon looks like at one instant.
#[derive(Clone, Debug, Default)]
pub struct Reading {
    /// utime + stime of the whole process, in nanoseconds (clock-tick granularity).
    pub cpu_ns: u64,
    pub rss_kb: u64,
    pub hwm_kb: u64,
    pub rss_anon_kb: u64,
    pub rss_file_kb: u64,
    /// Summed over the process's threads.
    pub voluntary_ctxt: u64,
    pub involuntary_ctxt: u64,
    pub progs: BTreeMap<u32, ProgStat>,
}

/// The change between two readings of a daemon over one measured workload.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Delta {
    pub cpu_ns: u64,
    pub rss_kb_after: u64,
    pub hwm_kb_after: u64,
    pub voluntary_ctxt: u64,
    pub involuntary_ctxt: u64,
    /// Programs that ran, most run time first.
    pub progs: Vec<ProgStat>,
}

impl Reading {
    /// Reads `/proc/<pid>/{stat,status,task/*/status,fd,fdinfo}`; `names` caches program names.
    pub fn of(pid: u32, names: &mut BTreeMap<u32, String>) -> Result<Reading> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("failed to read /proc/{pid}/stat"))?;
        let mut reading = Reading {
            cpu_ns: cpu_ns_from_stat(&stat).context("failed to parse /proc/PID/stat")?,
            ..Reading::default()
        };
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        reading.rss_kb = status_kb(&status, "VmRSS:");
        reading.hwm_kb = status_kb(&status, "VmHWM:");
        reading.rss_anon_kb = status_kb(&status, "RssAnon:");
        reading.rss_file_kb = status_kb(&status, "RssFile:");
        if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
            for task in tasks.flatten() {
                let text = fs::read_to_string(task.path().join("status")).unwrap_or_default();
                reading.voluntary_ctxt += status_kb(&text, "voluntary_ctxt_switches:");
                reading.involuntary_ctxt += status_kb(&text, "nonvoluntary_ctxt_switches:");
            }
        }
        reading.progs = prog_stats(pid, names);
        Ok(reading)
    }

    pub fn delta_to(&self, after: &Reading) -> Delta {
        let mut progs: Vec<ProgStat> = after
            .progs
            .values()
            .map(|p| {
                let before = self.progs.get(&p.id);
                ProgStat {
                    id: p.id,
                    name: p.name.clone(),
                    run_time_ns: p
                        .run_time_ns
                        .saturating_sub(before.map_or(0, |b| b.run_time_ns)),
                    run_cnt: p.run_cnt.saturating_sub(before.map_or(0, |b| b.run_cnt)),
                }
            })
            .filter(|p| p.run_cnt > 0)
            .collect();
        progs.sort_by_key(|p| std::cmp::Reverse(p.run_time_ns));
        Delta {
            cpu_ns: after.cpu_ns.saturating_sub(self.cpu_ns),
            rss_kb_after: after.rss_kb,
            hwm_kb_after: after.hwm_kb,
            voluntary_ctxt: after.voluntary_ctxt.saturating_sub(self.voluntary_ctxt),
            involuntary_ctxt: after.involuntary_ctxt.saturating_sub(self.involuntary_ctxt),
            progs,
        }
    }
}

/// utime + stime (fields 14 and 15, after the parenthesised comm) in nanoseconds.
pub fn cpu_ns_from_stat(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 1_000_000_000 / clock_ticks())
}

/// The number after `key` in /proc/PID/status text (kB for memory lines), 0 when absent.
pub fn status_kb(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Every BPF program whose fd `pid` holds, with the kernel's run-time counters.
fn prog_stats(pid: u32, names: &mut BTreeMap<u32, String>) -> BTreeMap<u32, ProgStat> {
    let mut progs = BTreeMap::new();
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return progs;
    };
    for fd in fds.flatten() {
        let is_prog = fs::read_link(fd.path())
            .is_ok_and(|target| target.to_string_lossy() == "anon_inode:bpf-prog");
        if !is_prog {
            continue;
        }
        let fdinfo = format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy());
        let Ok(text) = fs::read_to_string(fdinfo) else {
            continue;
        };
        let field = |key: &str| -> Option<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
        };
        let Some(id) = field("prog_id:").and_then(|id| u32::try_from(id).ok()) else {
            continue;
        };
        let name = names
            .entry(id)
            .or_insert_with(|| prog_name(id).unwrap_or_else(|| format!("prog {id}")))
            .clone();
        progs.insert(
            id,
            ProgStat {
                id,
                name,
                run_time_ns: field("run_time_ns:").unwrap_or(0),
                run_cnt: field("run_cnt:").unwrap_or(0),
            },
        );
    }
    progs
}

/// A program's name, from the kernel (`BPF_PROG_GET_FD_BY_ID`, `BPF_OBJ_GET_INFO_BY_FD`).
fn prog_name(id: u32) -> Option<String> {
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // `union bpf_attr` for GET_FD_BY_ID: prog_id, next_id, open_flags.
    let mut attr = [0u32; 8];
    attr[0] = id;
    // SAFETY: the attr buffer is valid for its size; the kernel returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_FD_BY_ID,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return None;
    }
    let fd = fd as i32;
    // `struct bpf_prog_info`: the name is 16 bytes at offset 64. The rest stays zero.
    let mut info = [0u8; 256];
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut info_attr = InfoAttr {
        bpf_fd: fd as u32,
        info_len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: `info` is valid for `info_len` bytes; the fd is ours and closed below.
    let rc = unsafe {
        let rc = libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut info_attr as *mut InfoAttr,
            std::mem::size_of::<InfoAttr>(),
        );
        libc::close(fd);
        rc
    };
    if rc != 0 {
        return None;
    }
    let name = &info[64..80];
    let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let name = String::from_utf8_lossy(&name[..len]).into_owned();
    (!name.is_empty()).then_some(name)
}

/// Turns `kernel.bpf_stats_enabled` on for the benchmark and back to what it was when dropped.
pub struct BpfStats {
    previous: Option<String>,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub fn enable() -> BpfStats {
        let previous = fs::read_to_string(BPF_STATS)
            .ok()
            .map(|v| v.trim().to_owned());
        if previous.as_deref() != Some("1") {
            if let Err(err) = fs::write(BPF_STATS, "1") {
                eprintln!("bench: failed to enable {BPF_STATS} ({err}); no per-program run times");
                return BpfStats { previous: None };
            }
        }
        BpfStats { previous }
    }

    pub fn enabled(&self) -> bool {
        fs::read_to_string(BPF_STATS).is_ok_and(|v| v.trim() == "1")
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Some(previous) = &self.previous {
            if previous != "1" {
                let _ = fs::write(BPF_STATS, previous);
            }
        }
    }
}

/// The cgroup v2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_root() -> Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() == Some("cgroup2") {
            if let Some(mount) = left.split_whitespace().nth(4) {
                return Ok(PathBuf::from(mount.replace("\\040", " ")));
            }
        }
    }
    bail!("failed to find a cgroup v2 mount in /proc/self/mountinfo; the benchmark needs cgroup v2")
}

/// A cgroup made for the benchmark below the v2 root: the monitor's cgroup programs attach
/// here (never to the root) and the workloads run in it. Removed when dropped, after killing
/// what is left in it.
pub struct BenchCgroup {
    pub path: PathBuf,
}

impl BenchCgroup {
    pub fn create() -> Result<BenchCgroup> {
        let root = cgroup2_root()?;
        let path = root.join(format!("monitor-bench-{}", std::process::id()));
        if path == root {
            bail!("refusing to use the cgroup v2 root as the benchmark's cgroup");
        }
        fs::create_dir(&path)
            .with_context(|| format!("failed to create the cgroup {}", path.display()))?;
        Ok(BenchCgroup { path })
    }

    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// Kills every process in it.
    pub fn kill_all(&self) {
        if fs::write(self.path.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        if let Ok(pids) = fs::read_to_string(self.procs_file()) {
            for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: signalling a process of the benchmark's own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

impl Drop for BenchCgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            self.kill_all();
            if fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        eprintln!("bench: failed to remove the cgroup {}", self.path.display());
    }
}

/// Adds a `pre_exec` to `command` that moves the child into the cgroup before it execs.
pub fn join_cgroup(command: &mut Command, procs: &Path) -> Result<()> {
    use std::os::unix::process::CommandExt as _;
    let procs = std::ffi::CString::new(procs.to_string_lossy().into_owned())?;
    // SAFETY: only async-signal-safe calls (open, write, close) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if n != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// The machine the numbers come from.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub uname: String,
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total_kb: u64,
    pub loadavg_start: String,
    pub loadavg_end: String,
}

impl Machine {
    pub fn describe() -> Machine {
        let uname = Command::new("uname")
            .arg("-a")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|rest| rest.trim_start_matches([' ', '\t', ':']).trim().to_owned())
            .unwrap_or_default();
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            uname,
            nproc: thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            mem_total_kb: status_kb(&meminfo, "MemTotal:"),
            loadavg_start: loadavg(),
            loadavg_end: String::new(),
        }
    }
}

/// `git rev-parse --short HEAD`, and the number of changed files (`git status --porcelain`).
pub fn revision() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown (not a git checkout)".into();
    };
    let changed = git(&["status", "--porcelain"]).map_or(0, |s| s.lines().count());
    if changed == 0 {
        head.trim().to_owned()
    } else {
        format!("{} with {changed} files changed or added", head.trim())
    }
}

pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Other processes that are known to add noise (other monitors, builds, tests).
pub fn busy_neighbours() -> Vec<String> {
    let me = std::process::id();
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if ["monitor", "bpftrace", "rustc", "cargo", "cc1", "ld", "cc"].contains(&comm) {
            found.push(format!("{comm} ({pid})"));
        }
    }
    found
}

/// Writes `text` to `path`, creating the directory.
pub fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut file =
        fs::File::create(path).with_context(|| format!("failed to create {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// Parses `YYYY-MM-DDTHH:MM:SS.fffffffffZ` (what the monitor prints) to Unix-epoch ns.
pub fn parse_rfc3339(text: &str) -> Option<i128> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, s) = (t.next()??, t.next()??, t.next()??);
    let digits: String = frac.chars().take(9).collect();
    let nanos: i64 = format!("{digits:0<9}").parse().ok()?;
    // Howard Hinnant's days-from-civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + m * 60 + s;
    Some(i128::from(secs) * 1_000_000_000 + i128::from(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_time_from_stat() {
        let stat = "1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 \
                    3 0 100 1000 200";
        let ns = cpu_ns_from_stat(stat).unwrap();
        assert_eq!(ns, 300 * 1_000_000_000 / clock_ticks());
    }

    #[test]
    fn reads_status_fields() {
        let status = "Name:\tmonitor\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n\
                      voluntary_ctxt_switches:\t7\nnonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(status_kb(status, "VmRSS:"), 10240);
        assert_eq!(status_kb(status, "VmHWM:"), 20480);
        assert_eq!(status_kb(status, "voluntary_ctxt_switches:"), 7);
        assert_eq!(status_kb(status, "nonvoluntary_ctxt_switches:"), 3);
        assert_eq!(status_kb(status, "RssAnon:"), 0);
    }

    #[test]
    fn parses_the_monitors_timestamps() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00.000000000Z"), Some(0));
        let ns = 1_764_028_800_123_456_789i128;
        assert_eq!(parse_rfc3339(&monitor::event::clock::rfc3339(ns)), Some(ns));
        assert_eq!(
            parse_rfc3339("2000-02-29T00:00:00.5Z"),
            Some(951_782_400_500_000_000)
        );
        assert_eq!(parse_rfc3339("garbage"), None);
    }

    #[test]
    fn deltas_keep_programs_that_ran() {
        let mut before = Reading {
            cpu_ns: 100,
            ..Reading::default()
        };
        before.progs.insert(
            1,
            ProgStat {
                id: 1,
                name: "a".into(),
                run_time_ns: 10,
                run_cnt: 1,
            },
        );
        let mut after = before.clone();
        after.cpu_ns = 400;
        after.progs.get_mut(&1).unwrap().run_time_ns = 110;
        after.progs.get_mut(&1).unwrap().run_cnt = 5;
        after.progs.insert(
            2,
            ProgStat {
                id: 2,
                name: "b".into(),
                run_time_ns: 0,
                run_cnt: 0,
            },
        );
        let delta = before.delta_to(&after);
        assert_eq!(delta.cpu_ns, 300);
        assert_eq!(delta.progs.len(), 1);
        assert_eq!(
            (delta.progs[0].run_time_ns, delta.progs[0].run_cnt),
            (100, 4)
        );
    }
}
