//! Logs go to stderr through `tracing`; aya's `log` records are bridged in.

use std::io::IsTerminal as _;

use tracing_subscriber::{fmt, EnvFilter};

/// Installs the subscriber. `RUST_LOG` wins over `default_filter`.
pub fn init(default_filter: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_log::LogTracer::init();
    let _ = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
