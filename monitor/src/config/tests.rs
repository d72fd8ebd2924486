use std::path::{Path, PathBuf};

use super::*;
use crate::test_support::TempDir;

fn profile_errors(text: &str) -> Vec<String> {
    let parsed = profile::parse_file(Path::new("p.yaml"), text);
    parsed.diagnostics.iter().map(ToString::to_string).collect()
}

fn config_errors(dir: &TempDir, text: &str) -> Vec<String> {
    let path = dir.write("monitor.yaml", text);
    let errors = load_config(&path).unwrap_err();
    errors
        .iter()
        .map(|d| {
            d.to_string()
                .replace(&format!("{}/", dir.0.display()), "DIR/")
        })
        .collect()
}

#[test]
fn builtin_config_loads_without_diagnostics() {
    let config = builtin::config().unwrap();
    let names: Vec<&str> = config.profiles.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["vllm", "triton", "torchserve", "llama-cpp", "ollama", "tgi"]
    );
    let ids: Vec<u32> = config.profiles.iter().map(|p| p.id).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5, 6]);
    assert!(config.source.is_none());
    assert_eq!(config.dedup_window, Duration::from_secs(10));
    let protected = &config.guards.protected_paths[0];
    for path in [
        "/models/llama/model.safetensors",
        "/var/lib/models/x.bin",
        "/root/.cache/huggingface/hub/models--x/blobs/abc",
        "/home/ai/.cache/huggingface/hub/models--x/snapshots/1/config.json",
        "/root/.ollama/models/blobs/sha256-1",
        "/usr/share/ollama/.ollama/models/manifests/x",
        "/srv/anything.gguf",
        "/home/model-server/model-store/resnet-18.mar",
    ] {
        assert!(protected.covers(path), "{path}");
    }
    assert!(!protected.covers("/usr/lib/libc.so.6"));
    assert_eq!(protected.read.len(), 6);
    assert!(protected.write.is_empty());
    assert_eq!(config.guards.gpu.as_ref().map(|g| g.allow.len()), Some(6));
    // The public constructor is the same.
    assert_eq!(Config::builtin().profiles.len(), 6);
}

#[test]
fn check_accepts_every_shipped_profile() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), builtin::PROFILES.len());
    for file in &files {
        let diagnostics = check_paths(std::slice::from_ref(file));
        assert!(diagnostics.is_empty(), "{diagnostics:?}");
    }
    let report = check(&[dir]);
    assert!(report.diagnostics.is_empty(), "{:?}", report.diagnostics);
    assert_eq!(report.profiles, 6);
}

#[test]
fn builtin_profiles_select_their_servers_and_not_others() {
    let config = Config::builtin();
    let select = |exe: &str, args: &str| {
        config
            .select(&Subject {
                exe: Some(exe),
                args,
                cgroup: Some("/system.slice/x.service"),
                container: None,
            })
            .map(|p| p.name.as_str())
    };
    assert_eq!(
        select(
            "/usr/bin/python3.12",
            "/usr/bin/python3 /usr/local/bin/vllm serve meta-llama/Llama-3.1-8B"
        ),
        Some("vllm")
    );
    assert_eq!(
        select(
            "/usr/bin/python3.10",
            "python3 -m vllm.entrypoints.openai.api_server --model /models/m"
        ),
        Some("vllm")
    );
    assert_eq!(
        select(
            "/opt/tritonserver/bin/tritonserver",
            "tritonserver --model-repository=/models"
        ),
        Some("triton")
    );
    assert_eq!(
        select(
            "/usr/lib/jvm/java-17-openjdk-amd64/bin/java",
            "java -Dmodel_server_home=/x -cp .:/y org.pytorch.serve.ModelServer"
        ),
        Some("torchserve")
    );
    assert_eq!(
        select(
            "/usr/bin/python3.9",
            "python /home/venv/lib/python3.9/site-packages/ts/model_service_worker.py --sock-type unix"
        ),
        Some("torchserve")
    );
    // TorchServe's launcher (a console script: the kernel runs its `#!` interpreter).
    assert_eq!(
        select(
            "/usr/bin/python3.11",
            "/opt/venv/bin/python3 /opt/venv/bin/torchserve --start --ncs --model-store /models"
        ),
        Some("torchserve")
    );
    assert_eq!(
        select(
            "/usr/bin/python3.11",
            "/usr/bin/python3 -m pip install torchserve torch-model-archiver"
        ),
        None
    );
    assert_eq!(
        select("/app/llama-server", "/app/llama-server -m /models/x.gguf"),
        Some("llama-cpp")
    );
    assert_eq!(
        select("/usr/local/bin/ollama", "/usr/local/bin/ollama serve"),
        Some("ollama")
    );
    assert_eq!(
        select(
            "/usr/local/bin/text-generation-launcher",
            "text-generation-launcher --model-id m"
        ),
        Some("tgi")
    );
    // Unrelated python, the Ollama client, Ollama's bundled llama-server.
    assert_eq!(select("/usr/bin/python3.12", "python3 train.py"), None);
    assert_eq!(
        select("/usr/bin/python3.12", "python3 -c import vllm"),
        None
    );
    assert_eq!(select("/usr/local/bin/ollama", "ollama run llama3"), None);
    assert_eq!(
        select(
            "/usr/local/lib/ollama/llama-server",
            "/usr/local/lib/ollama/llama-server --model /x --port 40000"
        ),
        None
    );
}

#[test]
fn profile_errors_have_positions_and_keys() {
    let text = r#"name: bad
selector:
  executables: ["python3"]
  args: ["[abc"]
mode: watch
dry_run: "no"
allow:
  exec: /usr/bin/x
  files:
    reed: ["/tmp/**"]
  network:
    connect: ["127.0.0.0/8", "10.0.0/33"]
    listen: ["*:99999"]
  devices: [nvidia, gpu]
extra: 1
"#;
    assert_eq!(
        profile_errors(text),
        [
            "p.yaml:3:17: selector.executables[0]: glob \"python3\" must start with \"/\" or \"**\": paths are absolute",
            "p.yaml:4:10: selector.args[0]: invalid glob: unclosed `[` in glob `[abc`",
            "p.yaml:5:7: mode: unknown mode \"watch\" (expected alert or enforce)",
            "p.yaml:6:10: dry_run: expected true or false, found a string",
            "p.yaml:8:9: allow.exec: expected a list of strings, found a string",
            "p.yaml:10:5: allow.files: unknown key \"reed\" (did you mean \"read\"? expected one of: read, write)",
            "p.yaml:12:30: allow.network.connect[1]: invalid CIDR \"10.0.0/33\": \"10.0.0\" is not an IPv4 or IPv6 address",
            "p.yaml:13:14: allow.network.listen[0]: invalid address rule \"*:99999\": invalid port \"99999\": expected a number from 1 to 65535, a range FIRST-LAST, or *",
            "p.yaml:14:21: allow.devices[1]: unknown device class \"gpu\" (expected one of: nvidia, nvidia-uvm, nvidia-caps, dri, kfd, accel)",
            "p.yaml:15:1: unknown key \"extra\" (expected one of: name, description, selector, mode, dry_run, allow)",
        ]
    );
}

#[test]
fn profile_structure_errors() {
    assert_eq!(
        profile_errors("selector: {}\n"),
        [
            "p.yaml:1:1: missing key \"name\"",
            "p.yaml:1:11: selector: give at least one of executables, args, cgroups, images, namespaces or pod_labels",
        ]
    );
    assert_eq!(
        profile_errors("name: a b\nselector: {args: []}\n"),
        [
            "p.yaml:1:7: name: invalid profile name \"a b\": use up to 64 letters, digits, '.', '_' and '-', starting with a letter or digit",
            "p.yaml:2:18: selector.args: an empty list matches no process: remove the key or give a glob",
        ]
    );
    assert_eq!(
        profile_errors("name: a\n"),
        ["p.yaml:1:1: missing key \"selector\" (a profile must say which processes it governs)"]
    );
    assert_eq!(
        profile_errors("- name: a\n"),
        ["p.yaml:1:1: expected a mapping, found a list"]
    );
    assert_eq!(
        profile_errors("name: a\nselector: {args: [x], cgroups: [/a, 7]}\nallow: {network: {unix: [run]}}\n"),
        [
            "p.yaml:2:37: selector.cgroups[1]: expected a string, found an integer",
            "p.yaml:3:26: allow.network.unix[0]: glob \"run\" must start with \"/\", \"**\" or \"@\" (abstract sockets): paths are absolute",
        ]
    );
    assert_eq!(
        profile_errors(""),
        ["p.yaml: failed to find a profile: the file has no YAML document"]
    );
}

#[test]
fn yaml_syntax_error_has_position() {
    let errors = profile_errors("name: a\nselector: [x\nmode: alert\n");
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with("p.yaml:3:5: failed to parse YAML: "),
        "{errors:?}"
    );
    let errors = profile_errors("a: 1\na: 2\n");
    assert_eq!(
        errors,
        ["p.yaml:2:1: failed to parse YAML: duplicated key in mapping"]
    );
}

#[test]
fn config_errors_have_positions_and_keys() {
    let dir = TempDir::created("config");
    dir.write(
        "profiles/good.yaml",
        "name: good\nselector: {args: ['good *']}\n",
    );
    let text = r#"profiles: ["profiles", "missing"]
guards:
  protected_paths:
    - paths: ["/models/**", "models"]
      read: [good, nobody]
  gpu:
    allow: [good]
    deny: [x]
outputs:
  otlp: {endpoint: "127.0.0.1:4318", protocol: http}
  spool: {max_bytes: 0}
dedup_window_secs: -1
"#;
    assert_eq!(
        config_errors(&dir, text),
        [
            "DIR/monitor.yaml:1:24: profiles[1]: failed to read DIR/missing: No such file or directory (os error 2)",
            "DIR/monitor.yaml:4:29: guards.protected_paths[0].paths[1]: glob \"models\" must start with \"/\" or \"**\": paths are absolute",
            "DIR/monitor.yaml:5:20: guards.protected_paths[0].read[1]: unknown profile \"nobody\" (loaded: good)",
            "DIR/monitor.yaml:8:5: guards.gpu: unknown key \"deny\" (expected one of: allow, enforce)",
            "DIR/monitor.yaml:10:20: outputs.otlp.endpoint: invalid endpoint \"127.0.0.1:4318\": expected an http:// or https:// URL",
            "DIR/monitor.yaml:10:48: outputs.otlp.protocol: unknown protocol \"http\" (expected one of: grpc, http/protobuf, http/json)",
            "DIR/monitor.yaml:11:10: outputs.spool: missing key \"dir\"",
            "DIR/monitor.yaml:11:22: outputs.spool.max_bytes: must be greater than 0",
            "DIR/monitor.yaml:12:20: dedup_window_secs: expected a non-negative integer",
        ]
    );
}

#[test]
fn config_reports_errors_of_the_profiles_it_loads() {
    let dir = TempDir::created("config");
    dir.write("p/a.yaml", "name: x\nselector: {args: [a]}\n");
    dir.write("p/b.yml", "name: x\nselector: {args: [b]}\nmode: 3\n");
    dir.write("p/notes.txt", "not a profile");
    dir.write("p/.hidden.yaml", "garbage: [");
    let errors = config_errors(
        &dir,
        "profiles: [p]\nguards: {gpu: {allow: [x]}}\nunknown: 1\n",
    );
    assert_eq!(
        errors,
        [
            "DIR/monitor.yaml:3:1: unknown key \"unknown\" (expected one of: builtin_profiles, profiles, guards, outputs, dedup_window_secs, locked, heartbeat_secs)",
            "DIR/p/b.yml:3:7: mode: expected a string, found an integer",
            "DIR/p/b.yml:1:7: name: duplicate profile name \"x\" (first defined at DIR/p/a.yaml:1:7)",
        ]
    );
}

#[test]
fn config_loads_profiles_outputs_and_window() {
    let dir = TempDir::created("config");
    dir.write(
        "profiles/sync.yaml",
        "name: model-sync\nselector: {executables: [/usr/local/bin/model-sync]}\n",
    );
    let text = r#"
builtin_profiles: true
profiles: [profiles]
guards:
  protected_paths:
    - paths: ["/models/**"]
      read: [vllm, model-sync]
      write: [model-sync]
outputs:
  alerts_file: /var/log/monitor/alerts.jsonl
  alerts_file_group: adm
  otlp: { endpoint: "http://127.0.0.1:4318", protocol: "http/protobuf", headers: {authorization: "Bearer x"}, ca_file: null }
  spool: { dir: /var/lib/monitor/spool, max_bytes: 67108864 }
dedup_window_secs: 0
"#;
    let path = dir.write("monitor.yaml", text);
    let config = load_config(&path).unwrap();
    assert_eq!(config.source.as_deref(), Some(path.as_path()));
    assert_eq!(config.profiles.len(), 7);
    assert_eq!(
        config.profile(7).map(|p| p.name.as_str()),
        Some("model-sync")
    );
    assert_eq!(config.profile_by_name("vllm").map(|p| p.id), Some(1));
    assert!(config.profile(0).is_none() && config.profile(8).is_none());
    assert_eq!(config.guards.protected_paths[0].write, ["model-sync"]);
    assert!(config.guards.gpu.is_none());
    assert_eq!(config.dedup_window, Duration::ZERO);
    assert_eq!(
        config.outputs.alerts_file.as_deref(),
        Some(Path::new("/var/log/monitor/alerts.jsonl"))
    );
    assert_eq!(config.outputs.alerts_file_group.as_deref(), Some("adm"));
    let otlp = config.outputs.otlp.as_ref().unwrap();
    assert_eq!(otlp.endpoint, "http://127.0.0.1:4318");
    assert_eq!(otlp.protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(
        otlp.headers.get("authorization").map(String::as_str),
        Some("Bearer x")
    );
    assert_eq!(otlp.ca_file, None);
    assert_eq!(
        config.outputs.spool,
        Some(SpoolOutput {
            dir: "/var/lib/monitor/spool".into(),
            max_bytes: 67108864
        })
    );
    // check() sees it as a config.
    let report = check(&[path]);
    assert!(report.diagnostics.is_empty(), "{:?}", report.diagnostics);
    assert_eq!(report.profiles, 7);
}

#[test]
fn config_defaults() {
    let dir = TempDir::created("config");
    let path = dir.write(
        "monitor.yaml",
        "outputs: {otlp: {endpoint: 'https://c:4317'}, spool: {dir: /s}}\n",
    );
    let config = load_config(&path).unwrap();
    assert!(config.profiles.is_empty());
    assert_eq!(config.dedup_window, DEFAULT_DEDUP_WINDOW);
    assert_eq!(
        config.outputs.otlp.map(|o| o.protocol),
        Some(OtlpProtocol::HttpProtobuf)
    );
    assert_eq!(
        config.outputs.spool.map(|s| s.max_bytes),
        Some(DEFAULT_SPOOL_MAX_BYTES)
    );
}

#[test]
fn missing_files_are_reported() {
    let dir = TempDir::created("config");
    let missing = dir.0.join("nope.yaml");
    let errors = load_config(&missing).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].line, 0);
    assert!(errors[0].message.starts_with("failed to read "));
    let errors = check_paths(std::slice::from_ref(&missing));
    assert_eq!(errors.len(), 1);
    let errors = Config::builtin()
        .with_extra_profiles(&[missing])
        .unwrap_err();
    assert!(errors[0].to_string().contains("No such file or directory"));
}

#[test]
fn extra_profiles_replace_builtin_ones_by_name() {
    let dir = TempDir::created("config");
    dir.write(
        "extra/vllm.yaml",
        "name: vllm\nselector: {args: ['my-vllm *']}\nallow: {exec: [/usr/bin/true]}\n",
    );
    dir.write(
        "extra/sync.yaml",
        "name: model-sync\nselector: {executables: [/usr/local/bin/model-sync]}\n",
    );
    let config = Config::builtin()
        .with_extra_profiles(&[dir.0.join("extra")])
        .unwrap();
    assert_eq!(config.profiles.len(), 7);
    let vllm = config.profile_by_name("vllm").unwrap();
    assert_eq!(vllm.id, 1);
    assert!(vllm.allow.exec("/usr/bin/true"));
    assert_eq!(config.profile_by_name("model-sync").map(|p| p.id), Some(7));

    // Duplicates among the extra profiles are errors.
    dir.write(
        "extra/again.yaml",
        "name: model-sync\nselector: {args: [x]}\n",
    );
    let errors = Config::builtin()
        .with_extra_profiles(&[dir.0.join("extra")])
        .unwrap_err();
    assert_eq!(errors.len(), 1);
    assert!(errors[0]
        .message
        .contains("duplicate profile name \"model-sync\""));
}

#[test]
fn check_tells_configs_from_profiles_and_counts() {
    let dir = TempDir::created("config");
    let a = dir.write(
        "a.yaml",
        "name: a\nselector: {args: [a]}\n---\nname: b\nselector: {args: [b]}\n",
    );
    let b = dir.write("b.yaml", "name: a\nselector: {args: [c]}\n");
    let config = dir.write("c.yaml", "guards: {gpu: {allow: []}}\n");
    let report = check(&[a.clone(), config]);
    assert!(report.diagnostics.is_empty(), "{:?}", report.diagnostics);
    assert_eq!(report.profiles, 2);
    // A name defined in two files given together is a duplicate.
    let report = check(&[a, b]);
    assert_eq!(report.diagnostics.len(), 1);
    assert_eq!(report.diagnostics[0].line, 1);
}

#[test]
fn transitions_must_name_loaded_profiles() {
    let dir = TempDir::created("config");
    dir.write(
        "profiles/server.yaml",
        "name: server\nselector: {args: ['serve *']}\nallow:\n  io_uring: true\n  transitions: [sync, nobody]\n",
    );
    dir.write(
        "profiles/sync.yaml",
        "name: sync\nselector: {args: ['sync *']}\n",
    );
    assert_eq!(
        config_errors(&dir, "profiles: [\"profiles\"]\n"),
        ["DIR/profiles/server.yaml:1:7: profile \"server\": allow.transitions names unknown profile \"nobody\" (loaded: server, sync)"]
    );
    dir.write(
        "profiles/server.yaml",
        "name: server\nselector: {args: ['serve *']}\nallow:\n  io_uring: true\n  transitions: [sync]\n",
    );
    let config = load_config(&dir.write("monitor.yaml", "profiles: [\"profiles\"]\n")).unwrap();
    let server = config.profile_by_name("server").unwrap();
    assert!(server.allow.io_uring);
    assert!(server.allow.transition("sync"));
    assert!(
        !config.profile_by_name("sync").unwrap().allow.io_uring,
        "default false"
    );
}

#[test]
fn locked_and_heartbeat_are_read_and_checked() {
    let dir = TempDir::created("config");
    let path = dir.write("monitor.yaml", "locked: true\nheartbeat_secs: 5\n");
    let config = load_config(&path).unwrap();
    assert!(config.locked);
    assert_eq!(config.heartbeat, Duration::from_secs(5));
    let path = dir.write("defaults.yaml", "dedup_window_secs: 1\n");
    let config = load_config(&path).unwrap();
    assert!(!config.locked);
    assert_eq!(config.heartbeat, crate::config::DEFAULT_HEARTBEAT);
    assert_eq!(
        config_errors(&dir, "locked: yes please\nheartbeat_secs: 0\n"),
        [
            "DIR/monitor.yaml:1:9: locked: expected true or false, found a string",
            "DIR/monitor.yaml:2:17: heartbeat_secs: 0 is not between 1 and 3600 seconds",
        ]
    );
}

/// The value of `key` in a YAML mapping node.
fn yaml_get<'n, 'i>(node: &'n MarkedYaml<'i>, key: &str) -> Option<&'n MarkedYaml<'i>> {
    let saphyr::YamlData::Mapping(mapping) = &node.data else {
        return None;
    };
    mapping
        .iter()
        .find(|(k, _)| k.data.as_str() == Some(key))
        .map(|(_, v)| v)
}

/// The `data` entries (file name, text) of the ConfigMaps in a manifest.
fn configmap_files(manifest: &str) -> Vec<(String, String)> {
    let documents = load_documents(Path::new("manifest.yaml"), manifest).unwrap();
    let mut files = Vec::new();
    for document in &documents {
        if yaml_get(document, "kind").and_then(|k| k.data.as_str()) != Some("ConfigMap") {
            continue;
        }
        let Some(saphyr::YamlData::Mapping(data)) = yaml_get(document, "data").map(|d| &d.data)
        else {
            continue;
        };
        for (name, text) in data {
            files.push((
                name.data.as_str().unwrap().to_owned(),
                text.data.as_str().unwrap().to_owned(),
            ));
        }
    }
    files
}

/// The ConfigMaps of `deploy/kubernetes/monitor.yaml` and the chart's default profiles are
/// configurations the monitor loads: a manifest that drifts from the config format fails here.
#[test]
fn the_deploy_manifests_hold_valid_configs_and_profiles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let manifest = std::fs::read_to_string(root.join("deploy/kubernetes/monitor.yaml")).unwrap();
    let dir = TempDir::created("config");
    let files = configmap_files(&manifest);
    assert!(
        files.iter().any(|(name, _)| name == "config.yaml"),
        "{files:?}"
    );
    let mut config = None;
    for (name, text) in files {
        if name == "config.yaml" {
            let profiles = dir.0.join("profiles");
            let text = text.replace("/etc/monitor-profiles", profiles.to_str().unwrap());
            config = Some(dir.write("config.yaml", &text));
        } else {
            dir.write(&format!("profiles/{name}"), &text);
        }
    }
    let config = load_config(&config.unwrap()).unwrap_or_else(|d| panic!("{d:?}"));
    let pods = config
        .profile_by_name("vllm-pods")
        .expect("the manifest's profile");
    assert!(pods.selector.uses_workload());

    // The chart's default profiles (values.yaml `profiles`: file name -> text).
    let values = std::fs::read_to_string(root.join("deploy/helm/monitor/values.yaml")).unwrap();
    let documents = load_documents(Path::new("values.yaml"), &values).unwrap();
    let Some(saphyr::YamlData::Mapping(profiles)) =
        yaml_get(&documents[0], "profiles").map(|p| &p.data)
    else {
        panic!("values.yaml has no profiles mapping");
    };
    assert!(!profiles.is_empty());
    for (name, text) in profiles {
        let name = name.data.as_str().unwrap();
        let parsed = profile::parse_profiles(Path::new(name), text.data.as_str().unwrap());
        assert!(parsed.is_ok(), "{name}: {parsed:?}");
    }
}
