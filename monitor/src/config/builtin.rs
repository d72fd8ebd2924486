//! The built-in defaults, used without `--config`: the curated profiles of
//! `monitor/profiles/` (embedded in the binary) and guards for the usual model stores.

use std::path::Path;

use super::{parse_config, Config, Diagnostic};

/// The curated profiles: (name shown in diagnostics, YAML text).
pub(crate) const PROFILES: &[(&str, &str)] = &[
    (
        "monitor/profiles/vllm.yaml",
        include_str!("../../profiles/vllm.yaml"),
    ),
    (
        "monitor/profiles/triton.yaml",
        include_str!("../../profiles/triton.yaml"),
    ),
    (
        "monitor/profiles/torchserve.yaml",
        include_str!("../../profiles/torchserve.yaml"),
    ),
    (
        "monitor/profiles/llama-cpp.yaml",
        include_str!("../../profiles/llama-cpp.yaml"),
    ),
    (
        "monitor/profiles/ollama.yaml",
        include_str!("../../profiles/ollama.yaml"),
    ),
    (
        "monitor/profiles/tgi.yaml",
        include_str!("../../profiles/tgi.yaml"),
    ),
];

/// The built-in config, in the config language itself (so it doubles as an example).
/// Model stores are readable by the six servers and writable by none of them: models are
/// put in place by a deployment step, not by the server that serves them.
pub(crate) const CONFIG: &str = r#"
builtin_profiles: true
guards:
  protected_paths:
    - paths:
        - /models/**
        - /var/lib/models/**
        - "**/.cache/huggingface/hub/**"
        - /root/.ollama/models/**
        - /usr/share/ollama/.ollama/models/**
        - "**/*.safetensors"
        - "**/*.gguf"
        - "**/*.mar"
      read: [vllm, triton, torchserve, llama-cpp, ollama, tgi]
      write: []
  gpu:
    allow: [vllm, triton, torchserve, llama-cpp, ollama, tgi]
dedup_window_secs: 10
"#;

/// Where diagnostics about [`CONFIG`] point.
pub(crate) const CONFIG_NAME: &str = "<built-in config>";

pub(crate) fn config() -> Result<Config, Vec<Diagnostic>> {
    let mut config = parse_config(Path::new(CONFIG_NAME), CONFIG)?;
    config.source = None;
    Ok(config)
}
