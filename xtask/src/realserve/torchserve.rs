//! TorchServe in `cargo xtask realserve`: PyPI's `torchserve` and `torch-model-archiver` in the
//! vLLM venv (its torch), Java from the host (Debian's OpenJDK), a tiny TorchScript model with
//! a custom handler packed into a model archive (`.mar`) in a model store, started as the
//! TorchServe docs start it (`torchserve --start --foreground --ncs --model-store DIR
//! --models NAME=NAME.mar --ts-config FILE`) with the default token authorization on.
//!
//! The processes: the `torchserve` launcher (a Python script of the venv), the Java frontend
//! it starts (`java ... org.pytorch.serve.ModelServer --python <venv python>`), and one Python
//! backend worker per model worker (`python .../ts/model_service_worker.py`), where the
//! model's handler runs. The planted attacks run in the worker: a model archive's handler is
//! code, and the worker is where a malicious one runs.

use std::{
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use super::{
    http_auth, install_model, install_vllm, prefix, stamp_ok, venv_site_packages, Install, Server,
    Step,
};
use crate::cmd::{which, Cmd};

const TORCHSERVE_VERSION: &str = "0.12.0";
const MAKE_MODEL: &str = include_str!("../../realserve/make_torchserve_model.py");
const HANDLER: &str = include_str!("../../realserve/torchserve_handler.py");
/// The model's name in the store and in the APIs.
const MODEL: &str = "tiny";
/// The same archive registered once more under this name through the management API.
const SECOND: &str = "tiny2";
const INFERENCE_PORT: u16 = 8080;
const MANAGEMENT_PORT: u16 = 8081;
const METRICS_PORT: u16 = 8082;

/// `config.properties` as the TorchServe Docker image writes it (APIs on every address),
/// with Prometheus metrics (a scrape gets the metrics, not an empty page), the management
/// API's model registration on (off by default since 0.11) and one worker per model (the
/// default is one per core).
const CONFIG: &str = "\
inference_address=http://0.0.0.0:8080
management_address=http://0.0.0.0:8081
metrics_address=http://0.0.0.0:8082
number_of_netty_threads=4
job_queue_size=100
default_workers_per_model=1
metrics_mode=prometheus
enable_model_api=true
";

/// Installs TorchServe into the vLLM venv, makes the model archive and installs it into a
/// model store under the prefix.
pub(super) fn install(cache: &Path) -> Result<Install> {
    let step = Step::start("find Java (TorchServe's frontend)");
    let java = which("java").context(
        "failed to find java on PATH: TorchServe's frontend is Java 11 or later; install Debian's openjdk-17-jre-headless",
    )?;
    println!("    {}", std::fs::canonicalize(&java)?.display());
    step.end();

    // torch comes from the vLLM venv (about 2.7 GB): TorchServe goes next to it.
    install_vllm(cache)?;
    let venv = cache.join("vllm/venv");
    let dir = cache.join("torchserve");
    std::fs::create_dir_all(&dir)?;
    let stamp = dir.join(".installed");
    let step = Step::start(format!(
        "install torchserve {TORCHSERVE_VERSION} and torch-model-archiver into {}",
        venv.display()
    ));
    if stamp_ok(&stamp, TORCHSERVE_VERSION) {
        println!("    cached");
    } else {
        Cmd::new(venv.join("bin/pip"))
            .args([
                "install",
                &format!("torchserve=={TORCHSERVE_VERSION}"),
                &format!("torch-model-archiver=={TORCHSERVE_VERSION}"),
            ])
            .run(
                "install torchserve and torch-model-archiver",
                "check that PyPI is reachable",
            )?;
        std::fs::write(&stamp, TORCHSERVE_VERSION)?;
    }
    step.end();

    let store = cache.join("models/model-store");
    let archive = store.join(format!("{MODEL}.mar"));
    let step = Step::start(format!(
        "make a tiny TorchScript model and its archive {}",
        archive.display()
    ));
    if archive.exists() {
        println!("    cached");
    } else {
        std::fs::create_dir_all(&store)?;
        let script = dir.join("make_torchserve_model.py");
        std::fs::write(&script, MAKE_MODEL)?;
        let weights = dir.join("model.pt");
        Cmd::new(venv.join("bin/python"))
            .arg(&script)
            .arg(&weights)
            .run("make the TorchScript model", "see the error above")?;
        let handler = dir.join("tiny_handler.py");
        std::fs::write(&handler, HANDLER)?;
        Cmd::new(venv.join("bin/torch-model-archiver"))
            .args([
                "--model-name",
                MODEL,
                "--version",
                "1.0",
                "--serialized-file",
            ])
            .arg(&weights)
            .arg("--handler")
            .arg(&handler)
            .arg("--export-path")
            .arg(&store)
            .run("archive the model", "see the error above")?;
    }
    step.end();
    // The store goes where operators keep it, under the prefix (`<prefix>/models/model-store`).
    let store = install_model(&store, &prefix()?)?;
    // config.properties in the working directory, where TorchServe looks for it by default
    // (the Docker image's /home/model-server): the server's home (see `run_server`).
    let home = cache.join("home/torchserve");
    std::fs::create_dir_all(&home)?;
    let config = home.join("config.properties");
    std::fs::write(&config, CONFIG)?;
    Ok(Install {
        name: "torchserve",
        profile: "torchserve",
        // The venv's console script: its `#!` names the venv's python.
        program: venv.join("bin/torchserve"),
        args: vec![
            "--start".into(),
            "--foreground".into(),
            "--ncs".into(),
            "--model-store".into(),
            store.display().to_string(),
            "--models".into(),
            format!("{MODEL}={MODEL}.mar"),
            "--ts-config".into(),
            config.display().to_string(),
        ],
        // The attack shim arms in the backend worker (the frontend passes its environment
        // on to the workers it starts).
        env: vec![(
            "REALSERVE_ATTACK_IN".into(),
            "ts/model_service_worker.py".into(),
        )],
        port: INFERENCE_PORT,
        model_file: store.join(format!("{MODEL}.mar")),
        inject_dir: venv_site_packages(&venv)?,
        // Logs and the token file in the working directory (the server's home here), the
        // archives the frontend unpacks under java.io.tmpdir.
        cold: vec![
            PathBuf::from(".cache"),
            PathBuf::from("logs"),
            PathBuf::from("/tmp/models"),
        ],
        // A JVM and a Python worker importing torch, on a loaded 2-core machine.
        start_timeout: Duration::from_secs(300),
        container: None,
    })
}

/// The API keys TorchServe writes to `key_file.json` in its working directory at start-up
/// (token authorization is on by default): (inference, management).
fn keys(home: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(home.join("key_file.json")).ok()?;
    let keys: Value = serde_json::from_str(&text).ok()?;
    Some((
        keys["inference"]["key"].as_str()?.to_owned(),
        keys["management"]["key"].as_str()?.to_owned(),
    ))
}

/// Ready when `/ping` says Healthy and the model's worker is READY.
pub(super) fn wait_healthy(
    server: &mut Server,
    install: &Install,
    home: &Path,
    log: &Path,
) -> Result<()> {
    let deadline = Instant::now() + install.start_timeout;
    // The key file of an earlier run is stale until the new server writes its own.
    let mut last = String::new();
    loop {
        if let Some((inference, management)) = keys(home) {
            match (
                http_auth(INFERENCE_PORT, "GET", "/ping", None, Some(&inference)),
                http_auth(
                    MANAGEMENT_PORT,
                    "GET",
                    &format!("/models/{MODEL}"),
                    None,
                    Some(&management),
                ),
            ) {
                (Ok((200, _)), Ok((200, model))) if model.contains("\"READY\"") => return Ok(()),
                (ping, model) => {
                    last = format!(
                        "/ping: {}; /models/{MODEL}: {}",
                        ping.map_or_else(|e| e.to_string(), |(s, b)| format!("{s} {}", b.trim())),
                        model.map_or_else(|e| e.to_string(), |(s, _)| s.to_string())
                    );
                }
            }
        }
        if let Some(status) = server.child.try_wait()? {
            bail!(
                "failed to start torchserve: it exited with {status}; see {}",
                log.display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "failed to start torchserve: its model was not READY in {} s (last answer: {last}); see {} and {}/logs",
                install.start_timeout.as_secs(),
                log.display(),
                home.display()
            );
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// One request of the load; the key (inference or management) follows from the port.
struct Call<'a> {
    port: u16,
    method: &'static str,
    path: String,
    body: Option<&'a str>,
}

fn call<'a>(
    port: u16,
    method: &'static str,
    path: impl Into<String>,
    body: Option<&'a str>,
) -> Call<'a> {
    Call {
        port,
        method,
        path: path.into(),
        body,
    }
}

/// What clients, an operator and Prometheus do: health, the management API's model list and
/// description, predictions, a metrics scrape, and (once) the same archive registered under
/// a second name, used and unregistered.
pub(super) fn drive_load(home: &Path) -> Result<()> {
    let (inference, management) = keys(home).with_context(|| {
        format!(
            "failed to read TorchServe's API keys from {}/key_file.json",
            home.display()
        )
    })?;
    let send = |call: &Call| {
        let key = match call.port {
            INFERENCE_PORT => Some(inference.as_str()),
            MANAGEMENT_PORT => Some(management.as_str()),
            _ => None,
        };
        let (method, port, path) = (call.method, call.port, &call.path);
        let (status, text) = http_auth(port, method, path, call.body, key)?;
        if status != 200 {
            bail!(
                "failed {method} :{port}{path}: HTTP {status}: {}",
                text.chars().take(300).collect::<String>()
            );
        }
        if path.starts_with("/predictions") && !text.contains("scores") {
            bail!("failed {method} :{port}{path}: no scores in the answer: {text}");
        }
        Ok(text)
    };
    let predict = r#"{"inputs": [[0.5, -1.0, 2.0, 0.25], [1.0, 1.0, 1.0, 1.0]]}"#;
    let requests = [
        call(INFERENCE_PORT, "GET", "/ping", None),
        call(MANAGEMENT_PORT, "GET", "/models", None),
        call(MANAGEMENT_PORT, "GET", format!("/models/{MODEL}"), None),
        call(
            INFERENCE_PORT,
            "POST",
            format!("/predictions/{MODEL}"),
            Some(predict),
        ),
        call(
            INFERENCE_PORT,
            "POST",
            format!("/predictions/{MODEL}/1.0"),
            Some(predict),
        ),
        call(
            INFERENCE_PORT,
            "POST",
            format!("/predictions/{MODEL}"),
            Some(predict),
        ),
        call(METRICS_PORT, "GET", "/metrics", None),
    ];
    for round in 0..3 {
        for request in &requests {
            let text = send(request)?;
            if round == 0 {
                println!(
                    "    {} :{}{}: 200 ({} bytes)",
                    request.method,
                    request.port,
                    request.path,
                    text.len()
                );
            }
        }
    }
    // Register the archive again under a second name (the frontend unpacks it again and
    // starts a second worker), predict with it, unregister it. The parameters go in a JSON
    // body (a JSON request with them in the query string is refused).
    let register = format!(
        r#"{{"url": "{MODEL}.mar", "model_name": "{SECOND}", "initial_workers": 1, "synchronous": true}}"#
    );
    let steps = [
        call(MANAGEMENT_PORT, "POST", "/models", Some(&register)),
        call(
            INFERENCE_PORT,
            "POST",
            format!("/predictions/{SECOND}"),
            Some(predict),
        ),
        call(MANAGEMENT_PORT, "DELETE", format!("/models/{SECOND}"), None),
    ];
    for request in &steps {
        let text = send(request)?;
        println!(
            "    {} :{}{}: 200 ({} bytes)",
            request.method,
            request.port,
            request.path,
            text.len()
        );
    }
    Ok(())
}
