//! Running child commands, finding programs and the workspace, and small helpers.

use std::{
    env,
    ffi::{OsStr, OsString},
    io,
    os::unix::{
        fs::PermissionsExt as _,
        process::{CommandExt as _, ExitStatusExt as _},
    },
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

/// Where the workspace is and which cargo drives it.
pub struct Workspace {
    /// The workspace root (the parent of the xtask crate).
    pub root: PathBuf,
    /// The cargo binary that started us (`$CARGO`), or `cargo` from `PATH`.
    cargo: OsString,
    /// Cargo's target directory (`$CARGO_TARGET_DIR`, else `<root>/target`).
    pub target_dir: PathBuf,
}

impl Workspace {
    pub fn locate() -> Result<Self> {
        // Prefer the run-time value that `cargo run` sets, so that a copied tree with a stale
        // xtask binary still finds the right root; fall back to the compile-time one.
        let manifest_dir = env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .filter(|dir| dir.join("Cargo.toml").is_file())
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
        let Some(root) = manifest_dir.parent() else {
            bail!(
                "failed to find the workspace root: {} has no parent directory; run xtask through `cargo xtask`",
                manifest_dir.display()
            );
        };
        if !root.join("Cargo.toml").is_file() {
            bail!(
                "failed to find the workspace root: {} has no Cargo.toml; run xtask through `cargo xtask` inside the repository",
                root.display()
            );
        }
        let root = root.to_path_buf();
        let cargo = env::var_os("CARGO")
            .filter(|cargo| !cargo.is_empty())
            .unwrap_or_else(|| OsString::from("cargo"));
        // Child cargo commands run in `root`, so a relative target directory is relative to it.
        let target_dir = match env::var_os("CARGO_TARGET_DIR") {
            Some(dir) if !dir.is_empty() => root.join(dir),
            _ => root.join("target"),
        };
        Ok(Self {
            root,
            cargo,
            target_dir,
        })
    }

    /// A cargo command that runs in the workspace root.
    pub fn cargo(&self) -> Cmd {
        Cmd::new(&self.cargo).current_dir(&self.root)
    }
}

/// A child command that is shown (`$ cargo build ...`) before it runs with inherited stdio.
pub struct Cmd {
    inner: Command,
    shown_env: Vec<String>,
    shown_program: String,
    shown_args: Vec<String>,
}

impl Cmd {
    /// A command for `program`; it is shown by its file name when it is a bare program found in
    /// `PATH` or the cargo that started us, by its full path otherwise.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        let program = program.as_ref();
        let path = Path::new(program);
        let is_cargo = env::var_os("CARGO").is_some_and(|cargo| cargo == program);
        let shown_program = if is_cargo || is_in_path_dir(path) {
            path.file_name()
                .unwrap_or(program)
                .to_string_lossy()
                .into_owned()
        } else {
            program.to_string_lossy().into_owned()
        };
        Self {
            inner: Command::new(program),
            shown_env: Vec::new(),
            shown_program,
            shown_args: Vec::new(),
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.shown_args.push(quote(arg.as_ref()));
        self.inner.arg(arg);
        self
    }

    pub fn args<I>(mut self, args: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<OsStr>,
    {
        for arg in args {
            self = self.arg(arg);
        }
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.shown_env
            .push(format!("{key}={}", quote(value.as_ref())));
        self.inner.env(key, value);
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.inner.current_dir(dir);
        self
    }

    /// The command line as it is shown to the user.
    pub fn shown(&self) -> String {
        let mut words = self.shown_env.clone();
        words.push(self.shown_program.clone());
        words.extend(self.shown_args.iter().cloned());
        words.join(" ")
    }

    /// Shows the command, runs it with inherited stdio and waits for it. An error means it could
    /// not be started; a failure of the command itself is in the returned status.
    pub fn status(mut self) -> Result<ExitStatus> {
        let shown = self.shown();
        eprintln!("$ {shown}");
        self.inner
            .status()
            .with_context(|| format!("failed to start `{shown}`"))
    }

    /// Like [`Cmd::status`], but a failure of the command is an error:
    /// "failed to <what>: `<command>` exited with status N<hint>".
    pub fn run(self, what: &str, hint: &str) -> Result<()> {
        let shown = self.shown();
        let status = self.status()?;
        if !status.success() {
            bail!("failed to {what}: `{shown}` {}{hint}", describe(status));
        }
        Ok(())
    }

    /// Runs the command without showing it, its output captured and stdin closed; for probes.
    pub fn output_quiet(mut self) -> io::Result<Output> {
        self.inner.stdin(Stdio::null()).output()
    }

    /// Shows and runs the command while this process ignores SIGINT, so that a Ctrl-C reaches
    /// the child (which is in the same process group) and we wait for it to finish instead of
    /// dying first. The child gets back the SIGINT disposition we had.
    pub fn status_ignoring_sigint(mut self) -> Result<ExitStatus> {
        // SAFETY: `signal` only changes this process's disposition of SIGINT; no handler code of
        // ours runs.
        let previous = unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
        if previous == libc::SIG_ERR {
            bail!(
                "failed to ignore SIGINT while the child runs: {}",
                io::Error::last_os_error()
            );
        }
        // SAFETY: the closure runs in the forked child before exec and only calls `signal`,
        // which is async-signal-safe; it allocates nothing and takes no locks.
        unsafe {
            self.inner.pre_exec(move || {
                if libc::signal(libc::SIGINT, previous) == libc::SIG_ERR {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let result = self.status();
        // SAFETY: as above; this restores the disposition we had before.
        unsafe { libc::signal(libc::SIGINT, previous) };
        result
    }
}

/// Quotes a word for display the way a POSIX shell would read it back.
fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./=:,+@%".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// "exited with status 101" or "was killed by signal 9".
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended with {status}"),
    }
}

/// The exit code a shell would report for `status`: the code itself, or 128 + the signal.
pub fn exit_code(status: ExitStatus) -> u8 {
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    };
    u8::try_from(code & 0xff).unwrap_or(1)
}

/// Whether we run with effective user id 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Cargo's home (`$CARGO_HOME`, else `~/.cargo`), where `cargo install` puts binaries in `bin/`.
pub fn cargo_home() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            env::var_os("HOME")
                .filter(|home| !home.is_empty())
                .map(|home| PathBuf::from(home).join(".cargo"))
        })
}

/// Appends cargo's `bin/` directory to `PATH` when it is missing, so that we and every child
/// (bpf-linker for the eBPF build, rustup) find what `cargo install` and rustup put there.
pub fn add_cargo_bin_to_path() -> Result<()> {
    let Some(bin) = cargo_home().map(|home| home.join("bin")) else {
        return Ok(());
    };
    if !bin.is_dir() {
        return Ok(());
    }
    let path = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::split_paths(&path).collect();
    if dirs.contains(&bin) {
        return Ok(());
    }
    dirs.push(bin);
    let joined = env::join_paths(dirs).context("failed to add cargo's bin directory to PATH")?;
    // Called at the start of main, before any thread is spawned.
    env::set_var("PATH", joined);
    Ok(())
}

/// The first executable file called `name` in `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

pub fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Whether `path` is a bare program name or lies in a `PATH` directory.
fn is_in_path_dir(path: &Path) -> bool {
    let Some(parent) = path.parent() else {
        return true;
    };
    if parent.as_os_str().is_empty() {
        return true;
    }
    env::var_os("PATH").is_some_and(|dirs| env::split_paths(&dirs).any(|dir| dir == parent))
}

/// "0.4s", "12.3s", "2m 05.1s".
pub fn fmt_duration(duration: Duration) -> String {
    let secs = duration.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let minutes = (secs / 60.0).floor();
        format!("{minutes:.0}m {:04.1}s", secs - minutes * 60.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigint_reaches_the_child_but_not_us() -> Result<()> {
        // The child gets the default disposition back: SIGINT kills it.
        let status = Cmd::new("sh")
            .args(["-c", "kill -INT $$; exit 3"])
            .status_ignoring_sigint()?;
        assert_eq!(status.signal(), Some(libc::SIGINT));
        assert_eq!(exit_code(status), 130);
        // We ignore it while the child runs, and see the child's own exit code.
        let status = Cmd::new("sh")
            .args(["-c", "kill -INT $PPID; exit 3"])
            .status_ignoring_sigint()?;
        assert_eq!(status.code(), Some(3));
        assert_eq!(exit_code(status), 3);
        Ok(())
    }

    #[test]
    fn shows_commands_as_a_shell_reads_them() {
        let cmd = Cmd::new("cargo")
            .env("MONITOR_BIN", "/a b/monitor")
            .args(["test", "--", "it's", ""]);
        assert_eq!(
            cmd.shown(),
            r"MONITOR_BIN='/a b/monitor' cargo test -- 'it'\''s' ''"
        );
    }

    #[test]
    fn formats_durations() {
        assert_eq!(fmt_duration(Duration::from_millis(1234)), "1.2s");
        assert_eq!(fmt_duration(Duration::from_millis(125_100)), "2m 05.1s");
    }
}
