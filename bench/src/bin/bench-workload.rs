//! A workload for the overhead benchmarks: a tight loop of one kind of system call, timed by
//! itself with a monotonic clock, printing one JSON line.
//!
//! ```text
//! bench-workload open    --iters N (--file PATH | --distinct --dir DIR) [--salt S]
//! bench-workload open    --distinct --dir DIR --rate R --seconds S [--threads T]
//! bench-workload connect --iters N [--distinct]
//! bench-workload fork    --iters N [--distinct]
//! bench-workload latency --dir DIR --count N [--interval-us U]
//! bench-workload open-timed --file PATH --iters N
//! bench-workload sleepers --count N
//! ```
//!
//! `--distinct` makes every operation new to a monitor: distinct paths (below a missing
//! directory, so the open fails with ENOENT), distinct peers (127.a.b.c, the listener is on 0.0.0.0), distinct
//! argv. Nothing is printed or allocated inside a timed loop.

use std::{
    ffi::CString,
    io::{Read as _, Write as _},
    net::TcpListener,
    os::fd::AsRawFd as _,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "bench-workload",
    about = "A timed system-call loop for the benchmarks"
)]
struct Cli {
    /// Sleep this long before the timed loop (lets a monitor govern the new process).
    #[arg(long, global = true, default_value_t = 20)]
    settle_ms: u64,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Subcommand)]
enum Workload {
    /// openat(2) + close(2)
    Open {
        #[arg(long, default_value_t = 0)]
        iters: u64,
        /// The file to open (steady state).
        #[arg(long)]
        file: Option<String>,
        /// Open distinct missing paths below --dir.
        #[arg(long)]
        distinct: bool,
        #[arg(long)]
        dir: Option<String>,
        /// Makes the distinct paths of this run differ from other runs'.
        #[arg(long, default_value_t = 0)]
        salt: u64,
        /// Rate-limited mode: this many opens per second (all threads together).
        #[arg(long)]
        rate: Option<u64>,
        /// Rate-limited mode: for this long.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        /// Rate-limited mode: threads sharing the rate.
        #[arg(long, default_value_t = 1)]
        threads: u32,
    },
    /// socket(2) + connect(2) to a loopback listener of our own (which accepts and closes) +
    /// read(2) to EOF + close(2) with SO_LINGER 0 (no TIME_WAIT)
    Connect {
        #[arg(long)]
        iters: u64,
        /// Connect to distinct peers (127.a.b.c).
        #[arg(long)]
        distinct: bool,
        #[arg(long, default_value_t = 0)]
        salt: u64,
    },
    /// fork(2) + execve(2) of /bin/true + waitpid(2)
    Fork {
        #[arg(long)]
        iters: u64,
        /// Give every child a distinct argument.
        #[arg(long)]
        distinct: bool,
        #[arg(long, default_value_t = 0)]
        salt: u64,
        #[arg(long, default_value = "/bin/true")]
        exe: String,
    },
    /// Opens DIR/lat-0 .. DIR/lat-(N-1) one at a time, paced, printing when each was opened
    /// (CLOCK_MONOTONIC ns, taken just before the openat).
    Latency {
        #[arg(long)]
        dir: String,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 5000)]
        interval_us: u64,
    },
    /// openat(2) + close(2) of one file, each pair timed by itself: the distribution of the
    /// latency (p50/p90/p99/max), e.g. of a fanotify permission round trip on a guarded file.
    OpenTimed {
        #[arg(long)]
        file: String,
        #[arg(long)]
        iters: u64,
    },
    /// Forks N children that pause(); prints {"ready":N}, then waits for stdin to close and
    /// kills them.
    Sleepers {
        #[arg(long)]
        count: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(err) = run(cli) {
        eprintln!("bench-workload: {err:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let settle = Duration::from_millis(cli.settle_ms);
    let record = match cli.workload {
        Workload::Open {
            iters,
            file,
            distinct,
            dir,
            salt,
            rate: Some(rate),
            seconds,
            threads,
        } => {
            let _ = (iters, file);
            if !distinct {
                bail!("--rate needs --distinct");
            }
            let dir = dir.context("--distinct needs --dir")?;
            thread::sleep(settle);
            open_rate(&dir, salt, rate, seconds, threads.max(1))?
        }
        Workload::Open {
            iters,
            file,
            distinct,
            dir,
            salt,
            rate: None,
            ..
        } => {
            let paths = if distinct {
                let dir = dir.context("--distinct needs --dir")?;
                // Below a directory that does not exist: the lookup fails at it, so the
                // kernel does not fill the dcache with a negative entry per name.
                PathGen::new(&format!("{dir}/missing-{salt}/f-"), true)
            } else {
                PathGen::new(
                    &file.context("open needs --file or --distinct --dir")?,
                    false,
                )
            };
            thread::sleep(settle);
            open_loop(paths, iters, distinct)?
        }
        Workload::Connect {
            iters,
            distinct,
            salt,
        } => connect_loop(iters, distinct, salt, settle)?,
        Workload::Fork {
            iters,
            distinct,
            salt,
            exe,
        } => {
            thread::sleep(settle);
            fork_loop(iters, distinct, salt, &exe)?
        }
        Workload::Latency {
            dir,
            count,
            interval_us,
        } => {
            thread::sleep(settle);
            latency(&dir, count, interval_us)?
        }
        Workload::OpenTimed { file, iters } => {
            thread::sleep(settle);
            open_timed(&file, iters)?
        }
        Workload::Sleepers { count } => return sleepers(count),
    };
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, &record)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// Nanoseconds of CLOCK_MONOTONIC (the clock `Instant` uses; the driver uses it too).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A NUL-terminated path in a fixed buffer, optionally with a decimal counter appended in
/// place: no allocation per iteration.
struct PathGen {
    buf: Vec<u8>,
    prefix_len: usize,
    counted: bool,
}

impl PathGen {
    fn new(prefix: &str, counted: bool) -> PathGen {
        let mut buf = prefix.as_bytes().to_vec();
        let prefix_len = buf.len();
        buf.resize(prefix_len + 24, 0);
        PathGen {
            buf,
            prefix_len,
            counted,
        }
    }

    /// The path for iteration `i`, as a C string pointer valid until the next call.
    fn path(&mut self, i: u64) -> *const libc::c_char {
        if self.counted {
            let end = write_decimal(&mut self.buf[self.prefix_len..], i);
            self.buf[self.prefix_len + end] = 0;
        } else {
            self.buf[self.prefix_len] = 0;
        }
        self.buf.as_ptr().cast()
    }
}

/// Writes `n` in decimal at the start of `out`; returns the number of digits.
fn write_decimal(out: &mut [u8], mut n: u64) -> usize {
    let mut digits = [0u8; 20];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for (i, d) in digits[..len].iter().rev().enumerate() {
        out[i] = *d;
    }
    len
}

fn open_loop(mut paths: PathGen, iters: u64, distinct: bool) -> Result<serde_json::Value> {
    let mut failures = 0u64;
    let start = Instant::now();
    for i in 0..iters {
        let path = paths.path(i);
        // SAFETY: `path` is NUL-terminated and lives in `paths` for the call.
        let fd = unsafe { libc::openat(libc::AT_FDCWD, path, libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd >= 0 {
            // SAFETY: closing the fd just opened.
            unsafe { libc::close(fd) };
        } else {
            failures += 1;
        }
    }
    let elapsed = start.elapsed();
    if !distinct && failures > 0 {
        bail!("{failures} of {iters} opens failed");
    }
    Ok(record("open", distinct, iters, elapsed, failures))
}

fn record(
    workload: &str,
    distinct: bool,
    ops: u64,
    elapsed: Duration,
    failures: u64,
) -> serde_json::Value {
    let ns = elapsed.as_nanos() as f64;
    json!({
        "workload": workload,
        "distinct": distinct,
        "ops": ops,
        "elapsed_ns": elapsed.as_nanos() as u64,
        "ns_per_op": if ops > 0 { ns / ops as f64 } else { 0.0 },
        "failures": failures,
    })
}

/// Opens distinct missing paths at `rate` per second for `seconds`, paced in 1 ms slots,
/// spread over `threads` threads of this process.
fn open_rate(
    dir: &str,
    salt: u64,
    rate: u64,
    seconds: f64,
    threads: u32,
) -> Result<serde_json::Value> {
    let per_thread = rate as f64 / f64::from(threads);
    let deadline = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let mut paths = PathGen::new(&format!("{dir}/rate-{salt}-{t}/f-"), true);
            thread::spawn(move || {
                let mut done = 0u64;
                let begin = Instant::now();
                let total = (per_thread * deadline.as_secs_f64()) as u64;
                loop {
                    let elapsed = begin.elapsed();
                    if elapsed >= deadline {
                        break;
                    }
                    // A thread that fell behind (no CPU for a while) catches up in bursts of
                    // at most 10 ms worth, and never past the deadline.
                    let due = ((per_thread * elapsed.as_secs_f64()) as u64)
                        .min(done + (per_thread / 100.0) as u64 + 1)
                        .min(total);
                    while done < due {
                        let path = paths.path(done);
                        // SAFETY: `path` is NUL-terminated and lives in `paths`.
                        let fd = unsafe {
                            libc::openat(libc::AT_FDCWD, path, libc::O_RDONLY | libc::O_CLOEXEC)
                        };
                        if fd >= 0 {
                            // SAFETY: closing the fd just opened.
                            unsafe { libc::close(fd) };
                        }
                        done += 1;
                    }
                    thread::sleep(Duration::from_micros(1000));
                }
                done
            })
        })
        .collect();
    let mut ops = 0;
    for worker in workers {
        ops += worker
            .join()
            .map_err(|_| anyhow::anyhow!("a worker panicked"))?;
    }
    let elapsed = start.elapsed();
    let mut value = record("open-rate", true, ops, elapsed, 0);
    value["requested_rate"] = json!(rate);
    value["achieved_rate"] = json!(ops as f64 / elapsed.as_secs_f64());
    Ok(value)
}

/// A distinct loopback peer for index `i`: 127.a.b.c with every octet in 1..=250.
fn distinct_peer(i: u64) -> [u8; 4] {
    let a = 1 + (i / 62_500) % 250;
    let b = 1 + (i / 250) % 250;
    let c = 1 + i % 250;
    [127, a as u8, b as u8, c as u8]
}

fn connect_loop(
    iters: u64,
    distinct: bool,
    salt: u64,
    settle: Duration,
) -> Result<serde_json::Value> {
    // The distinct peers are all of 127.0.0.0/8, which only a wildcard listener accepts.
    let bind = if distinct { "0.0.0.0:0" } else { "127.0.0.1:0" };
    let listener =
        TcpListener::bind(bind).with_context(|| format!("failed to listen on {bind}"))?;
    let port = listener.local_addr()?.port();
    let stop = Arc::new(AtomicBool::new(false));
    let acceptor = {
        let stop = stop.clone();
        thread::spawn(move || {
            let fd = listener.as_raw_fd();
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: accepting on our listener; the new fd is closed right away.
                let conn =
                    unsafe { libc::accept4(fd, std::ptr::null_mut(), std::ptr::null_mut(), 0) };
                if conn >= 0 {
                    // SAFETY: closing the fd just accepted.
                    unsafe { libc::close(conn) };
                }
            }
        })
    };
    thread::sleep(settle);
    let mut failures = 0u64;
    let mut first_error = None;
    let base = salt.wrapping_mul(iters);
    let start = Instant::now();
    for i in 0..iters {
        let octets = if distinct {
            distinct_peer(base + i)
        } else {
            [127, 0, 0, 1]
        };
        if let Err(err) = connect_once(octets, port) {
            if failures == 0 {
                first_error = Some(err);
            }
            failures += 1;
        }
    }
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    // Wake the acceptor so it sees the flag.
    let _ = connect_once([127, 0, 0, 1], port);
    let _ = acceptor.join();
    if let Some(err) = first_error {
        bail!("{failures} of {iters} connects failed, the first with: {err}");
    }
    Ok(record("connect", distinct, iters, elapsed, failures))
}

/// One connect, waiting for the listener to accept and close (EOF), so that the client
/// never outruns the acceptor.
fn connect_once(octets: [u8; 4], port: u16) -> std::io::Result<()> {
    // SAFETY: plain socket calls on an fd we own and close on every path.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(octets),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(err);
        }
        let mut byte = 0u8;
        while libc::read(fd, (&mut byte as *mut u8).cast(), 1) > 0 {}
        // The listener closed first; aborting our end (RST) ends its FIN_WAIT2 at once, so no
        // TIME_WAIT piles up over the runs and the thousandth run costs what the first did.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
        libc::close(fd);
    }
    Ok(())
}

fn fork_loop(iters: u64, distinct: bool, salt: u64, exe: &str) -> Result<serde_json::Value> {
    let exe_c = CString::new(exe)?;
    let mut arg = PathGen::new(&format!("{salt}-"), true);
    let mut failures = 0u64;
    let start = Instant::now();
    for i in 0..iters {
        let extra = if distinct {
            arg.path(i)
        } else {
            std::ptr::null()
        };
        let argv: [*const libc::c_char; 3] = [exe_c.as_ptr(), extra, std::ptr::null()];
        let envp: [*const libc::c_char; 1] = [std::ptr::null()];
        // SAFETY: this process is single-threaded here; the child only calls execve and
        // _exit, both async-signal-safe, with pointers prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: see above.
            unsafe {
                libc::execve(exe_c.as_ptr(), argv.as_ptr(), envp.as_ptr());
                libc::_exit(127);
            }
        }
        if pid < 0 {
            bail!("fork failed: {}", std::io::Error::last_os_error());
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            failures += 1;
        }
    }
    let elapsed = start.elapsed();
    if failures > 0 {
        bail!("{failures} of {iters} runs of {exe} failed");
    }
    Ok(record("fork", distinct, iters, elapsed, failures))
}

fn latency(dir: &str, count: u64, interval_us: u64) -> Result<serde_json::Value> {
    let mut paths = PathGen::new(&format!("{dir}/lat-"), true);
    let mut stamps = Vec::with_capacity(count as usize);
    let mut failures = 0u64;
    let interval = Duration::from_micros(interval_us);
    let start = Instant::now();
    for i in 0..count {
        let path = paths.path(i);
        let t = monotonic_ns();
        // SAFETY: `path` is NUL-terminated and lives in `paths`.
        let fd = unsafe { libc::openat(libc::AT_FDCWD, path, libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd >= 0 {
            // SAFETY: closing the fd just opened.
            unsafe { libc::close(fd) };
        } else {
            failures += 1;
        }
        stamps.push(t);
        let next = interval * (i as u32 + 1);
        if let Some(wait) = next.checked_sub(start.elapsed()) {
            thread::sleep(wait);
        }
    }
    let mut value = record("latency", true, count, start.elapsed(), failures);
    value["opened_at_monotonic_ns"] = json!(stamps);
    Ok(value)
}

fn open_timed(file: &str, iters: u64) -> Result<serde_json::Value> {
    let path = CString::new(file).context("the file name has a NUL byte")?;
    let mut samples = vec![0u64; iters as usize];
    let mut failures = 0u64;
    let start = Instant::now();
    for sample in samples.iter_mut() {
        let t = monotonic_ns();
        // SAFETY: `path` is NUL-terminated and outlives the call.
        let fd = unsafe {
            libc::openat(
                libc::AT_FDCWD,
                path.as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: closing the fd just opened.
            unsafe { libc::close(fd) };
        } else {
            failures += 1;
        }
        *sample = monotonic_ns() - t;
    }
    let elapsed = start.elapsed();
    if failures > 0 {
        bail!("{failures} of {iters} opens of {file} failed");
    }
    samples.sort_unstable();
    let at = |p: f64| -> u64 {
        let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
        samples
            .get(rank.clamp(1, samples.len().max(1)) - 1)
            .copied()
            .unwrap_or(0)
    };
    let mut value = record("open-timed", false, iters, elapsed, failures);
    value["p50_ns"] = json!(at(50.0));
    value["p90_ns"] = json!(at(90.0));
    value["p99_ns"] = json!(at(99.0));
    value["max_ns"] = json!(at(100.0));
    Ok(value)
}

fn sleepers(count: u64) -> Result<()> {
    let mut children = Vec::with_capacity(count as usize);
    for _ in 0..count {
        // SAFETY: single-threaded; the child only calls prctl, getppid, pause and _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: see above.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                loop {
                    libc::pause();
                }
            }
        }
        if pid < 0 {
            let err = std::io::Error::last_os_error();
            kill_all(&children);
            bail!("fork failed after {} children: {err}", children.len());
        }
        children.push(pid);
    }
    println!("{}", json!({ "ready": children.len() }));
    std::io::stdout().flush()?;
    // Wait until the driver closes our stdin.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    kill_all(&children);
    println!("{}", json!({ "killed": children.len() }));
    Ok(())
}

fn kill_all(children: &[libc::pid_t]) {
    for &pid in children {
        // SAFETY: signalling and reaping our own children.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    for &pid in children {
        let mut status = 0;
        // SAFETY: as above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_get_a_counter_in_place() {
        let mut paths = PathGen::new("/tmp/x-", true);
        // SAFETY: the pointer is NUL-terminated in `paths`.
        let text = |p: *const libc::c_char| unsafe { std::ffi::CStr::from_ptr(p) }.to_owned();
        assert_eq!(text(paths.path(0)).to_str().unwrap(), "/tmp/x-0");
        assert_eq!(text(paths.path(1234)).to_str().unwrap(), "/tmp/x-1234");
        assert_eq!(text(paths.path(7)).to_str().unwrap(), "/tmp/x-7");
        let mut fixed = PathGen::new("/etc/hostname", false);
        assert_eq!(text(fixed.path(99)).to_str().unwrap(), "/etc/hostname");
    }

    #[test]
    fn distinct_peers_are_loopback_and_distinct() {
        let peers: std::collections::HashSet<_> = (0..200_000).map(distinct_peer).collect();
        assert_eq!(peers.len(), 200_000);
        assert!(peers
            .iter()
            .all(|p| p[0] == 127 && p[1..].iter().all(|o| (1..=250).contains(o))));
    }
}
