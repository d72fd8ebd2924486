use std::{os::unix::fs::symlink, path::PathBuf};

use super::*;

/// A directory tree made for one test, removed when the test ends (also on panic).
struct Tree(PathBuf);

impl Tree {
    fn new(name: &str) -> Tree {
        let dir = std::env::temp_dir().join(format!("monitor-facts-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Tree(dir)
    }

    fn file(&self, path: &str, text: &str) {
        let host = self.0.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(host.parent().unwrap()).unwrap();
        std::fs::write(host, text).unwrap();
    }

    fn link(&self, path: &str, target: &str) {
        let host = self.0.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(host.parent().unwrap()).unwrap();
        symlink(target, host).unwrap();
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn view<'a>(tree: &Tree, exe: &'a str, args: &'a [String], env: &[&str]) -> ProcessView<'a> {
    ProcessView {
        exe,
        args,
        uid: Some(1000),
        cwd: Some("/srv/app".into()),
        env: env.iter().map(|s| s.to_string()).collect(),
        root: tree.0.clone(),
    }
}

/// A pyenv interpreter, and a venv made from it whose `bin/python` links to it: the kernel
/// reports the linked-to file, the venv is found from argv[0] and `pyvenv.cfg`.
fn pyenv_and_venv(tree: &Tree) {
    tree.file("/home/ml/.pyenv/versions/3.11.7/bin/python3.11", "");
    tree.file(
        "/opt/venvs/serve/pyvenv.cfg",
        "home = /home/ml/.pyenv/versions/3.11.7/bin\ninclude-system-site-packages = false\nversion = 3.11.7\n",
    );
    tree.link(
        "/opt/venvs/serve/bin/python",
        "/home/ml/.pyenv/versions/3.11.7/bin/python3.11",
    );
    tree.file(
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\nml:x:1000:1000::/home/ml:/bin/sh\n",
    );
}

const EXE: &str = "/home/ml/.pyenv/versions/3.11.7/bin/python3.11";

#[test]
fn venv_from_an_absolute_argv0() {
    let tree = Tree::new("venv-abs");
    pyenv_and_venv(&tree);
    let argv = args(&[
        "/opt/venvs/serve/bin/python",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "/data/tiny",
    ]);
    let facts = resolve(&view(&tree, EXE, &argv, &[]));
    assert_eq!(facts.get("python.prefix"), Some("/opt/venvs/serve"));
    assert_eq!(
        facts.get("python.base_prefix"),
        Some("/home/ml/.pyenv/versions/3.11.7")
    );
    // No $HOME: the home of uid 1000 in the process's /etc/passwd.
    assert_eq!(facts.get("home"), Some("/home/ml"));
    assert_eq!(facts.get("cache"), Some("/home/ml/.cache"));
    assert_eq!(facts.get("model"), Some("/data/tiny"));
    assert_eq!(
        facts.get("exe.dir"),
        Some("/home/ml/.pyenv/versions/3.11.7/bin")
    );
    assert_eq!(facts.get("cwd"), Some("/srv/app"));
    assert_eq!(facts.get("tmp"), Some("/tmp"));
}

#[test]
fn venv_from_path_lookup_and_environment() {
    let tree = Tree::new("venv-path");
    pyenv_and_venv(&tree);
    let argv = args(&[
        "python",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model=models/tiny",
    ]);
    let env = [
        "PATH=/usr/local/bin:/opt/venvs/serve/bin:/usr/bin",
        "HOME=/var/lib/svc",
        "XDG_CACHE_HOME=/var/cache/svc",
        "TMPDIR=/scratch/",
    ];
    // `models/tiny` is a directory here, not a Hub id.
    tree.file("/srv/app/models/tiny/config.json", "{}");
    let facts = resolve(&view(&tree, EXE, &argv, &env));
    assert_eq!(facts.get("python.prefix"), Some("/opt/venvs/serve"));
    assert_eq!(facts.get("home"), Some("/var/lib/svc"));
    assert_eq!(facts.get("cache"), Some("/var/cache/svc"));
    assert_eq!(facts.get("tmp"), Some("/scratch"));
    // Relative to the working directory.
    assert_eq!(facts.get("model"), Some("/srv/app/models/tiny"));
    // A Hub id is no path.
    let argv = args(&[
        "python",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "org/name",
    ]);
    assert_eq!(resolve(&view(&tree, EXE, &argv, &env)).get("model"), None);
}

#[test]
fn no_venv_prefix_is_above_bin() {
    let tree = Tree::new("system");
    tree.file("/usr/bin/python3.11", "");
    tree.file("/opt/conda/bin/python3.12", "");
    let argv = args(&[
        "/usr/bin/python3",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "/m",
    ]);
    let facts = resolve(&view(&tree, "/usr/bin/python3.11", &argv, &[]));
    assert_eq!(facts.get("python.prefix"), Some("/usr"));
    assert_eq!(facts.get("python.base_prefix"), Some("/usr"));
    let argv = args(&["python", "-m", "vllm.entrypoints.openai.api_server"]);
    let facts = resolve(&view(
        &tree,
        "/opt/conda/bin/python3.12",
        &argv,
        &["PATH=/opt/conda/bin"],
    ));
    assert_eq!(facts.get("python.prefix"), Some("/opt/conda"));
    assert_eq!(facts.get("model"), None);
    // Not a Python: no python facts; `-m` is llama-server's model.
    let argv = args(&["llama-server", "-m", "/srv/m/tiny.gguf", "--port", "8080"]);
    let facts = resolve(&view(&tree, "/usr/local/bin/llama-server", &argv, &[]));
    assert_eq!(facts.get("python.prefix"), None);
    assert_eq!(facts.get("model"), Some("/srv/m/tiny.gguf"));
}

/// The layouts `cargo xtask realserve vllm-uv` and `vllm-container` ran vLLM from (0 false
/// alerts measured): a uv venv on Debian's interpreter (uv 0.13.9's own `pyvenv.cfg` keys,
/// `lib64` a link to `lib`, `bin/python` a link to `/usr/bin/python3.11`), and Debian's
/// interpreter in a container whose files are read through the process's root.
#[test]
fn uv_venv_and_container_layouts() {
    let tree = Tree::new("uv");
    tree.file("/usr/bin/python3.11", "");
    tree.link("/usr/bin/python3", "python3.11");
    tree.file(
        "/srv/uv/venv/pyvenv.cfg",
        "home = /usr/bin\nimplementation = CPython\nuv = 0.13.9\nversion_info = 3.11.2\n\
         include-system-site-packages = false\n",
    );
    tree.link("/srv/uv/venv/bin/python", "/usr/bin/python3.11");
    tree.link("/srv/uv/venv/bin/python3", "python");
    tree.link("/srv/uv/venv/lib64", "lib");
    let argv = args(&[
        "/srv/uv/venv/bin/python",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "/opt/models/tiny-llama",
    ]);
    let facts = resolve(&view(&tree, "/usr/bin/python3.11", &argv, &[]));
    assert_eq!(facts.get("python.prefix"), Some("/srv/uv/venv"));
    assert_eq!(facts.get("python.base_prefix"), Some("/usr"));
    // The same venv activated: `python3` found in PATH.
    let argv = args(&["python3", "-m", "vllm.entrypoints.openai.api_server"]);
    let env = ["PATH=/srv/uv/venv/bin:/usr/bin"];
    let facts = resolve(&view(&tree, "/usr/bin/python3.11", &argv, &env));
    assert_eq!(facts.get("python.prefix"), Some("/srv/uv/venv"));

    // In the container: `podman run … /usr/bin/python3 -m … --model /mnt/models/tiny-llama`
    // with HOME=/root; every path is the container's, read under its root (this tree).
    let argv = args(&[
        "/usr/bin/python3",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "/mnt/models/tiny-llama",
    ]);
    let env = [
        "HOME=/root",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin",
    ];
    let facts = resolve(&view(&tree, "/usr/bin/python3.11", &argv, &env));
    assert_eq!(facts.get("python.prefix"), Some("/usr"));
    assert_eq!(facts.get("python.base_prefix"), Some("/usr"));
    assert_eq!(facts.get("cache"), Some("/root/.cache"));
    assert_eq!(facts.get("model"), Some("/mnt/models/tiny-llama"));
}

#[test]
fn model_from_argv() {
    let cases: &[(&[&str], bool, Option<&str>)] = &[
        // The interpreter's own -m names the module, not the model.
        (
            &["python3", "-m", "vllm.entrypoints.openai.api_server"],
            true,
            None,
        ),
        (
            &[
                "python3",
                "-u",
                "-m",
                "vllm.entrypoints.openai.api_server",
                "--port",
                "1",
                "--model",
                "/a",
            ],
            true,
            Some("/a"),
        ),
        (
            &[
                "python3",
                "/usr/local/bin/vllm",
                "serve",
                "/b",
                "--port",
                "1",
            ],
            true,
            Some("/b"),
        ),
        (&["vllm", "serve", "--port", "1"], false, None),
        (&["llama-server", "-m", "c.gguf"], false, Some("c.gguf")),
        (&["x", "--model-path", "/d"], false, Some("/d")),
    ];
    for (argv, python, expected) in cases {
        assert_eq!(model_arg(&args(argv), *python), *expected, "{argv:?}");
    }
}

#[test]
fn templates_check_names_and_escape_values() {
    assert_eq!(Template::parse("/usr/**").unwrap(), None);
    let err = Template::parse("${python.prefx}/lib/**").unwrap_err();
    assert!(
        err.contains("unknown variable \"${python.prefx}\""),
        "{err}"
    );
    assert!(err.contains("${python.prefix}"), "{err}");
    assert!(Template::parse("${home/x")
        .unwrap_err()
        .contains("unclosed"));
    assert!(Template::parse("x/${home}")
        .unwrap_err()
        .contains("must start with"));

    let template = Template::parse("${model}/**").unwrap().unwrap();
    let mut facts = Facts::default();
    assert_eq!(template.resolve(&facts), None);
    facts.set("model", "/data/m[1]*/");
    assert_eq!(
        template.resolve(&facts).as_deref(),
        Some("/data/m\\[1\\]\\*/**")
    );
    let glob = crate::config::profile::PathGlob::new(&template.resolve(&facts).unwrap()).unwrap();
    assert!(glob.matches("/data/m[1]*/config.json"));
    assert!(!glob.matches("/data/m1x/config.json"));
    // Relative values are not paths.
    facts.set("home", "relative");
    assert_eq!(facts.get("home"), None);
    // `/` would make `${home}/**` allow everything.
    facts.set("home", "/");
    assert_eq!(facts.get("home"), None);
}
