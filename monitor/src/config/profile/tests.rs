use std::path::Path;

use super::*;

/// The example of the issue, as written there.
pub(crate) const EXAMPLE: &str = r#"name: vllm
selector:                     # ORed within a key, ANDed across keys
  executables: ["/usr/bin/python3*", "/opt/*/bin/python*"]   # glob on the executable path
  args: ["*vllm.entrypoints*"]                               # glob on the argv joined with spaces
  cgroups: ["/system.slice/vllm.service"]                    # glob on the cgroup path
mode: alert                   # alert | enforce
dry_run: false                # optional (enforce computes decisions but does not act)
allow:
  exec: ["/usr/bin/nvidia-smi", "/usr/bin/uname"]
  files:
    read: ["/models/**", "/usr/**", "/etc/**", "/proc/**", "/sys/**"]
    write: ["/tmp/**", "/dev/shm/**"]
  network:
    connect: ["127.0.0.0/8", "10.0.0.0/8:443", "[::1]:*"]
    listen: ["*:8000"]
    unix: ["/run/**", "@*"]
  devices: ["nvidia", "nvidia-uvm"]
"#;

fn one(text: &str) -> Profile {
    let mut profiles = parse_profiles(Path::new("p.yaml"), text).unwrap();
    assert_eq!(profiles.len(), 1);
    profiles.remove(0)
}

fn subject<'a>(exe: Option<&'a str>, args: &'a str, cgroup: Option<&'a str>) -> Subject<'a> {
    Subject {
        exe,
        args,
        cgroup,
        container: None,
    }
}

#[test]
fn parses_the_example() {
    let profile = one(EXAMPLE);
    assert_eq!(profile.name, "vllm");
    assert_eq!(profile.mode, Mode::Alert);
    assert!(!profile.dry_run);
    assert_eq!(profile.selector.executables.len(), 2);
    assert_eq!(profile.location.line, 1);
    assert_eq!(profile.location.column, 7);
    let allow = &profile.allow;
    assert!(allow.exec("/usr/bin/nvidia-smi"));
    assert!(!allow.exec("/usr/bin/curl"));
    assert!(allow.read("/models/llama/model.safetensors"));
    assert!(!allow.read("/home/user/.ssh/id_rsa"));
    assert!(allow.write("/dev/shm/nccl-1"));
    assert!(!allow.write("/etc/passwd"));
    assert!(allow.connect("10.1.2.3:443".parse().unwrap()));
    assert!(!allow.connect("10.1.2.3:80".parse().unwrap()));
    assert!(allow.connect("[::1]:9999".parse().unwrap()));
    assert!(allow.listen("0.0.0.0:8000".parse().unwrap()));
    assert!(allow.unix("/run/nvidia-persistenced/socket"));
    assert!(allow.unix("@nccl-abc"));
    assert!(!allow.unix("/var/run/docker.sock"));
    assert!(allow.device(crate::event::DeviceClass::NvidiaUvm));
    assert!(!allow.device(crate::event::DeviceClass::Kfd));
}

#[test]
fn several_documents_and_defaults() {
    let text = "name: a\nselector: {executables: [/bin/a]}\n---\nname: b\nselector: {args: ['b *']}\nmode: enforce\ndry_run: true\n";
    let profiles = parse_profiles(Path::new("p.yaml"), text).unwrap();
    assert_eq!(profiles.len(), 2);
    assert_eq!(profiles[0].mode, Mode::Alert);
    assert_eq!(profiles[1].mode, Mode::Enforce);
    assert!(profiles[1].dry_run);
    assert_eq!(profiles[1].location.line, 4);
    // Without `allow`, nothing is allowed; without `unix`, unix sockets are not checked.
    assert!(!profiles[0].allow.exec("/bin/a"));
    assert!(profiles[0].allow.unix("/anything"));
}

#[test]
fn selector_ors_within_and_ands_across_keys() {
    let profile = one(EXAMPLE);
    let cgroup = Some("/system.slice/vllm.service");
    let args = "python3 -m vllm.entrypoints.openai.api_server --model /models/x";
    assert!(profile.selects(&subject(Some("/usr/bin/python3.11"), args, cgroup)));
    // The other executable glob: ORed.
    assert!(profile.selects(&subject(Some("/opt/conda/bin/python"), args, cgroup)));
    // Each key must match: ANDed.
    assert!(!profile.selects(&subject(Some("/usr/bin/bash"), args, cgroup)));
    assert!(!profile.selects(&subject(
        Some("/usr/bin/python3"),
        "python3 train.py",
        cgroup
    )));
    assert!(!profile.selects(&subject(
        Some("/usr/bin/python3"),
        args,
        Some("/user.slice")
    )));
    // Unknown executable or cgroup: no match for that key.
    assert!(!profile.selects(&subject(None, args, cgroup)));
    assert!(!profile.selects(&subject(Some("/usr/bin/python3"), args, None)));
}

#[test]
fn absent_selector_keys_are_not_tested() {
    let profile = one("name: a\nselector:\n  args: ['*serve*']\n");
    assert!(profile.selects(&subject(None, "ollama serve", None)));
    assert!(!profile.selects(&subject(None, "ollama run", None)));
}

#[test]
fn args_wildcards_cross_slashes() {
    let glob = ArgsGlob::new("*/vllm serve*").unwrap();
    assert!(glob.matches("/usr/bin/python3 /usr/local/bin/vllm serve /models/m"));
    assert!(!glob.matches("/usr/bin/python3 -c vllm"));
    let glob = ArgsGlob::new("python? x/y").unwrap();
    assert!(glob.matches("python3 x/y"));
    assert!(ArgsGlob::new("x?y").unwrap().matches("x/y"));
    assert!(ArgsGlob::new("[/]").unwrap().matches("/"));
    assert_eq!(join_args(&["a".into(), "b c".into()]), "a b c");
    // Path globs keep `*` inside one component.
    assert!(!PathGlob::new("/opt/*").unwrap().matches("/opt/a/b"));
    assert!(PathGlob::new("/opt/**").unwrap().matches("/opt/a/b"));
}

#[test]
fn path_glob_prefix_is_only_a_shortcut() {
    let glob = PathGlob::new("/usr/lib/**/libcuda.so*").unwrap();
    assert!(glob.matches("/usr/lib/x86_64-linux-gnu/libcuda.so.1"));
    assert!(!glob.matches("/opt/lib/libcuda.so.1"));
    let glob = PathGlob::new("**/*.gguf").unwrap();
    assert!(glob.matches("/srv/m/model.gguf"));
    let glob = PathGlob::new("/dev/nvidia[0-9]*").unwrap();
    assert!(glob.matches("/dev/nvidia12"));
    assert!(!glob.matches("/dev/nvidiactl"));
}

#[test]
fn duplicate_names_in_one_file() {
    let text = "name: a\nselector: {args: [x]}\n---\nname: a\nselector: {args: [y]}\n";
    let errors = parse_profiles(Path::new("p.yaml"), text).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].to_string(),
        "p.yaml:4:7: name: duplicate profile name \"a\" (first defined at p.yaml:1:7)"
    );
}

#[test]
fn io_uring_and_transitions_are_checked() {
    let errors = parse_profiles(
        Path::new("p.yaml"),
        "name: a\nselector: {args: ['x']}\nallow:\n  io_uring: yes please\n  transitions: ['bad name']\n",
    )
    .unwrap_err();
    let messages: Vec<String> = errors.iter().map(|d| d.to_string()).collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(messages[0].contains("allow.io_uring"), "{messages:?}");
    assert!(messages[1].contains("invalid profile name"), "{messages:?}");
}

#[test]
fn workload_keys_select_by_image_namespace_and_pod_labels() {
    let profile = one(
        "name: vllm-pods\nselector:\n  executables: ['/usr/bin/python3*']\n  images: ['*/vllm/vllm-openai', 'localhost/*:0.6*']\n  namespaces: ['inference', 'ml-*']\n  pod_labels: {app: vllm, tier: 'serving-*'}\n",
    );
    let mut meta = crate::host::workload::ContainerMeta {
        image_name: Some("docker.io/vllm/vllm-openai".into()),
        image_tag: Some("v0.6.3".into()),
        namespace: Some("ml-prod".into()),
        ..Default::default()
    };
    meta.labels.insert("app".into(), "vllm".into());
    meta.labels.insert("tier".into(), "serving-gpu".into());
    fn with<'a>(
        meta: Option<&'a crate::host::workload::ContainerMeta>,
        exe: &'a str,
    ) -> Subject<'a> {
        Subject {
            exe: Some(exe),
            args: "",
            cgroup: None,
            container: meta,
        }
    }
    assert!(profile.selects(&with(Some(&meta), "/usr/bin/python3.11")));
    // ANDed with the other keys.
    assert!(!profile.selects(&with(Some(&meta), "/usr/bin/bash")));
    // Metadata not known yet (or not in a container): no match.
    assert!(!profile.selects(&with(None, "/usr/bin/python3.11")));
    // `name:tag` is matched too.
    let mut local = meta.clone();
    local.image_name = Some("localhost/server".into());
    local.image_tag = Some("0.6.1".into());
    assert!(profile.selects(&with(Some(&local), "/usr/bin/python3.11")));
    local.image_tag = Some("0.7".into());
    assert!(!profile.selects(&with(Some(&local), "/usr/bin/python3.11")));
    // Every label must be there and match.
    let mut other = meta.clone();
    other.labels.insert("tier".into(), "batch".into());
    assert!(!profile.selects(&with(Some(&other), "/usr/bin/python3.11")));
    other.labels.remove("tier");
    assert!(!profile.selects(&with(Some(&other), "/usr/bin/python3.11")));
    let mut elsewhere = meta.clone();
    elsewhere.namespace = Some("default".into());
    assert!(!profile.selects(&with(Some(&elsewhere), "/usr/bin/python3.11")));
    elsewhere.namespace = None;
    assert!(!profile.selects(&with(Some(&elsewhere), "/usr/bin/python3.11")));

    // A workload key alone is a selector.
    let only = one("name: by-image\nselector: {images: ['*vllm*']}\n");
    assert!(only.selects(&with(Some(&meta), "/bin/anything")));
}

#[test]
fn workload_keys_report_bad_values() {
    let errors = parse_profiles(
        Path::new("p.yaml"),
        "name: x\nselector: {pod_labels: [app]}\n",
    )
    .unwrap_err();
    assert!(
        errors[0]
            .to_string()
            .contains("selector.pod_labels: expected a mapping"),
        "{errors:?}"
    );
    let errors = parse_profiles(
        Path::new("p.yaml"),
        "name: x\nselector: {pod_labels: {app: [a]}}\n",
    )
    .unwrap_err();
    assert!(
        errors[0].to_string().contains("selector.pod_labels.app"),
        "{errors:?}"
    );
    let errors =
        parse_profiles(Path::new("p.yaml"), "name: x\nselector: {images: []}\n").unwrap_err();
    assert!(
        errors[0].to_string().contains("selector.images"),
        "{errors:?}"
    );
}

#[test]
fn variables_and_capabilities_are_checked_at_load() {
    let err = parse_profiles(
        Path::new("p.yaml"),
        "name: x\nselector: {executables: [/a]}\nallow:\n  files: {read: [\"${python.prefx}/**\"]}\n  capabilities: [compile-tools]\n",
    )
    .unwrap_err();
    let text: Vec<String> = err.iter().map(|d| d.to_string()).collect();
    assert!(
        text.iter()
            .any(|t| t.contains("unknown variable \"${python.prefx}\"")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t.contains("unknown capability \"compile-tools\"")),
        "{text:?}"
    );
    let profile = one("name: x\nselector: {executables: [/a]}\nallow:\n  capabilities: [compile-toolchain]\n  exec: [\"${python.prefix}/bin/*\"]\n");
    assert!(profile.allow.exec("/usr/bin/gcc-12"));
    assert!(profile
        .allow
        .exec("/usr/lib/gcc/x86_64-linux-gnu/12/cc1plus"));
    assert!(!profile.allow.exec("/usr/bin/id"));
    assert!(profile
        .allow
        .templates
        .iter()
        .any(|(_, t)| t.as_str() == "${python.prefix}/bin/*"));
}

/// Every built-in capability glob compiles (parse skips one that does not).
#[test]
fn capability_globs_compile() {
    for capability in capabilities::CAPABILITIES {
        for pattern in capability
            .exec
            .iter()
            .chain(capability.read)
            .chain(capability.write)
        {
            match facts::Template::parse(pattern) {
                Ok(Some(_)) => {}
                Ok(None) => assert!(PathGlob::new(pattern).is_ok(), "{pattern}"),
                Err(err) => panic!("{pattern}: {err}"),
            }
        }
    }
}

/// The compiled lists answer as their globs one by one, also once a process's facts added
/// its templated globs (`Profile::resolve` pushes them into the same lists).
#[test]
fn compiled_lists_match_as_their_globs() {
    let profile = one(concat!(
        "name: x\nselector: {executables: [/a]}\nallow:\n",
        "  exec: [/usr/bin/true, \"/opt/*/bin/python*\", \"${exe.dir}/*\"]\n",
        "  files:\n",
        "    read: [/etc/ld.so.cache, \"/models/**\", \"/**/x.bin\", \"/dev/nvidia[0-9]\", \"${model}/**\", \"${home}/.cache/**\"]\n",
        "    write: [\"${tmp}/**\", /var/log/x.log]\n",
    ));
    let mut facts = facts::Facts::default();
    facts.set("exe.dir", "/srv/app/bin");
    facts.set("model", "/data/m[1]*/");
    facts.set("home", "/home/u");
    facts.set("tmp", "/tmp");
    let resolved = profile.resolve(&facts).unwrap();
    let paths = [
        "/usr/bin/true",
        "/usr/bin/truex",
        "/opt/conda/bin/python3",
        "/opt/a/b/bin/python",
        "/srv/app/bin/run",
        "/srv/app/bin/sub/run",
        "/etc/ld.so.cache",
        "/etc/ld.so.cache/x",
        "/models",
        "/models/a/b",
        "/modelsx",
        "/a/b/x.bin",
        "/x.bin",
        "/dev/nvidia3",
        "/dev/nvidia10",
        "/data/m[1]*",
        "/data/m[1]*/config.json",
        "/data/m1x/config.json",
        "/home/u/.cache/hf/x",
        "/home/u/.cachex",
        "/tmp",
        "/tmp/a",
        "/tmpx",
        "/var/log/x.log",
        "/",
        "",
    ];
    for allow in [&profile.allow, &resolved.allow] {
        for path in paths {
            let any = |globs: &[PathGlob]| globs.iter().any(|g| g.matches(path));
            assert_eq!(allow.exec(path), any(&allow.exec), "exec {path}");
            assert_eq!(allow.read(path), any(&allow.files_read), "read {path}");
            assert_eq!(allow.write(path), any(&allow.files_write), "write {path}");
        }
    }
    // The templated globs count only once resolved.
    assert!(!profile.allow.read("/data/m[1]*/config.json"));
    assert!(resolved.allow.read("/data/m[1]*/config.json"));
    assert!(!resolved.allow.read("/data/m1x/config.json"));
    assert!(resolved.allow.exec("/srv/app/bin/run"));
    assert!(resolved.allow.write("/tmp/a"));
    assert!(!resolved.allow.write("/tmpx"));
}

#[test]
fn the_selector_cache_answers_as_the_selectors_do() {
    let config = crate::config::Config::builtin();
    let mut profiles = config.profiles.clone();
    profiles.push(one(EXAMPLE));
    let mut cache = SelectorCache::default();
    let cgroups = [
        None,
        Some("/system.slice/vllm.service"),
        Some("/user.slice"),
    ];
    let cases = [
        (
            Some("/usr/bin/python3.11"),
            "python3 -m vllm.entrypoints.openai.api_server",
        ),
        (Some("/usr/bin/python3.11"), "python3 train.py"),
        (
            Some("/opt/conda/bin/python"),
            "python -m vllm.entrypoints.openai.api_server",
        ),
        (Some("/usr/bin/ollama"), "ollama serve"),
        (Some("/usr/bin/true"), "true 17"),
        (None, "ollama serve"),
    ];
    // Twice: the second round answers from what the first remembered.
    for round in 0..2 {
        for &(exe, args) in &cases {
            for cgroup in cgroups {
                let subject = subject(exe, args, cgroup);
                let expected = profiles
                    .iter()
                    .find(|p| p.selects(&subject))
                    .map(|p| &p.name);
                let cached = cache.select(&profiles, &subject).map(|p| &p.name);
                assert_eq!(
                    cached, expected,
                    "round {round}: {exe:?} {args:?} {cgroup:?}"
                );
            }
        }
    }
    assert!(profiles.iter().any(|p| p.selects(&subject(
        Some("/usr/bin/python3.11"),
        "python3 -m vllm.entrypoints.openai.api_server",
        Some("/system.slice/vllm.service"),
    ))));
    // One entry per executable path; none for an unknown one.
    assert_eq!(cache.len(), 4);
    // Profiles of another length are matched afresh, not from a stale entry.
    let fewer = &profiles[profiles.len() - 1..];
    let subject = subject(
        Some("/usr/bin/python3.11"),
        "python3 -m vllm.entrypoints.openai.api_server",
        Some("/system.slice/vllm.service"),
    );
    assert_eq!(
        cache.select(fewer, &subject).map(|p| &p.name),
        Some(&"vllm".to_owned())
    );
    cache.clear();
    assert!(cache.is_empty());
}
