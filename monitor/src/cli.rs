//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{
    config::{glob::Glob, reload::ConfigSource},
    daemon::{CommonArgs, Plan},
    output::sink::{AlertSink, AlertsFile, Outputs, StdoutLines},
    pipeline::{Mode, WatchSelectors},
};

/// eBPF runtime security monitor for AI inference hosts.
#[derive(Parser, Debug)]
#[command(name = "monitor", version, about)]
pub struct Cli {
    /// Log filter (also RUST_LOG), e.g. `info`, `monitor=debug`; `monitor::kernel=debug` turns
    /// on the kernel programs' own messages (why a hook or a path walk gave up), off by default.
    #[arg(long, global = true, default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the monitor as a daemon: govern processes by their profiles, guard model files and
    /// GPUs host-wide, report alerts as JSON lines.
    Run(RunArgs),
    /// Print every event of the watched processes as one JSON object per line.
    Trace(TraceArgs),
    /// Validate profile and config files: prints FILE:LINE:COLUMN: message for each error.
    Check(CheckArgs),
    /// Watch selected processes and their children, then write a profile of what they did.
    Learn(crate::learn::LearnArgs),
    /// Act on the OTLP spool (`monitor spool replay`).
    Spool(SpoolArgs),
}

#[derive(Args, Debug)]
pub struct SpoolArgs {
    #[command(subcommand)]
    pub command: SpoolCommand,
}

#[derive(Subcommand, Debug)]
pub enum SpoolCommand {
    /// Send the dead letters (alerts the collector refused for good) to the collector again,
    /// once what made it refuse them is fixed. What it still refuses stays for next time.
    Replay(ReplayArgs),
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// Host configuration, for `outputs.otlp` and `outputs.spool`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub otlp: crate::output::otlp::OtlpArgs,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Host configuration (profiles, guards, outputs). Without it: the built-in defaults.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// More profiles: files or directories of *.yaml (repeatable); a profile with the name of
    /// a loaded one replaces it.
    #[arg(long = "profiles", value_name = "PATH")]
    pub profiles: Vec<PathBuf>,
    /// Compute every enforce-mode decision but only report it (`would-deny`, `would-kill`).
    #[arg(long)]
    pub dry_run: bool,
    /// Load configuration files (and their directories) that users other than root may
    /// change, with a warning and a `config-insecure` alert, instead of refusing to start.
    #[arg(long)]
    pub allow_insecure_config: bool,
    /// Where the run's state file lives, to tell an unclean exit at the next start (also
    /// MONITOR_STATE_DIR; default /var/lib/monitor).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    #[command(flatten)]
    pub otlp: crate::output::otlp::OtlpArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Profile or config files (or directories of them).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct TraceArgs {
    /// Watch this process and its descendants (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Watch processes whose executable matches this glob (repeatable; `*` stays within a
    /// path component, `**` crosses them).
    #[arg(long = "exe", value_name = "GLOB")]
    pub exes: Vec<String>,
    /// Watch every process.
    #[arg(long)]
    pub all: bool,
    /// Report opens of files below this directory by any process (repeatable).
    #[arg(long = "protect", value_name = "DIR")]
    pub protect: Vec<PathBuf>,
    /// Report opens of files whose name ends with this suffix by any process (repeatable),
    /// e.g. .safetensors.
    #[arg(long = "protect-suffix", value_name = "SUFFIX")]
    pub protect_suffixes: Vec<String>,
    #[command(flatten)]
    pub common: CommonArgs,
}

impl TraceArgs {
    pub fn selectors(&self) -> anyhow::Result<WatchSelectors> {
        if !self.all && self.pids.is_empty() && self.exes.is_empty() {
            anyhow::bail!("nothing to trace: give --pid PID, --exe GLOB or --all");
        }
        let exes = self
            .exes
            .iter()
            .map(|g| Glob::new(g).map_err(|e| anyhow::anyhow!("invalid --exe: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(WatchSelectors {
            all: self.all,
            pids: self.pids.clone(),
            exes,
        })
    }
}

/// `monitor check` found errors (already printed): exit 1.
#[derive(Debug)]
pub struct CheckFailed(pub usize);

impl std::fmt::Display for CheckFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} errors", self.0)
    }
}

impl std::error::Error for CheckFailed {}

/// `outputs.otlp` and `outputs.spool` of the config, for the OTLP settings resolver.
fn otlp_file_settings(
    config: &crate::config::Config,
) -> Option<crate::output::otlp::OtlpFileSettings> {
    let outputs = &config.outputs;
    if outputs.otlp.is_none() && outputs.spool.is_none() {
        return None;
    }
    let mut file = crate::output::otlp::OtlpFileSettings::default();
    if let Some(otlp) = &outputs.otlp {
        file.endpoint = Some(otlp.endpoint.clone());
        file.protocol = Some(otlp.protocol.name().into());
        file.headers = otlp.headers.clone();
        file.ca_file = otlp.ca_file.clone();
    }
    if let Some(spool) = &outputs.spool {
        file.spool_dir = Some(spool.dir.clone());
        file.spool_max_bytes = Some(spool.max_bytes);
    }
    Some(file)
}

/// `monitor spool replay`.
async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let source = ConfigSource {
        path: args.config.clone(),
        extra_profiles: Vec::new(),
        ..ConfigSource::default()
    };
    let config = match source.load() {
        Ok(config) => config,
        Err(diagnostics) => {
            for diagnostic in &diagnostics {
                eprintln!("{diagnostic}");
            }
            anyhow::bail!(
                "failed to load the configuration ({} errors above)",
                diagnostics.len()
            );
        }
    };
    let file = otlp_file_settings(&config);
    let Some(settings) =
        crate::output::otlp::OtlpSettings::resolve_from_process_env(&args.otlp, file.as_ref())?
    else {
        anyhow::bail!(
            "no OTLP collector to replay to: give --otlp-endpoint URL (or \
             OTEL_EXPORTER_OTLP_ENDPOINT, or outputs.otlp in --config)"
        );
    };
    let (dir, _) = args.otlp.spool(file.as_ref());
    let done = crate::output::otlp::replay(&settings, &dir).await?;
    println!(
        "replayed {} dead letters to {} ({} of them rejected again in a partial success)",
        done.sent, settings.logs_endpoint, done.rejected
    );
    Ok(())
}

/// What `monitor run` reports before it starts: the previous run's unclean exit (from the
/// state file, which it then keeps up to date) and a configuration that users other than
/// root may change (`--allow-insecure-config`). Returns the state file and its writer.
fn start_alerts(
    source: &ConfigSource,
    config: &crate::config::Config,
    state_dir: &std::path::Path,
    outputs: &mut Outputs,
    metrics: &std::sync::Arc<crate::telemetry::metrics::Metrics>,
) -> Option<(
    std::sync::Arc<crate::telemetry::liveness::StateFile>,
    tokio::task::JoinHandle<()>,
)> {
    let mut raise = |alert: crate::event::alert::Alert| {
        metrics.alert(&alert.rule, alert.severity);
        let _ = outputs.send(&alert);
    };
    if source.allow_insecure {
        let insecure: Vec<String> = source
            .insecure(config)
            .iter()
            .map(ToString::to_string)
            .collect();
        if !insecure.is_empty() {
            for line in &insecure {
                tracing::warn!("{line} (loaded anyway: --allow-insecure-config)");
            }
            let now = i128::from(crate::event::clock::unix_now_ns());
            let mut attributes = serde_json::Map::new();
            attributes.insert("monitor.config.insecure".into(), insecure.into());
            if let Some(path) = &source.path {
                attributes.insert(
                    "monitor.config.path".into(),
                    path.display().to_string().into(),
                );
            }
            raise(crate::event::alert::Alert {
                rule: crate::config::diff::CONFIG_INSECURE.id.into(),
                severity: crate::config::diff::CONFIG_INSECURE.severity,
                action: crate::event::alert::Action::Alert,
                profile: None,
                time_unix_ns: now,
                observed_unix_ns: now,
                count: 1,
                uid: crate::event::alert::new_uid(),
                attributes,
            });
        }
    }
    let (state, unclean) = match crate::telemetry::liveness::StateFile::open(state_dir) {
        Ok(opened) => opened,
        Err(err) => {
            tracing::warn!(
                "{err:#}; unclean exits of this run will not be reported at the next start"
            );
            return None;
        }
    };
    if let Some(unclean) = unclean {
        let alert = unclean.alert();
        tracing::warn!(
            from = %alert.attributes["monitor.unclean_exit.from"],
            to = %alert.attributes["monitor.unclean_exit.to"],
            "the previous run did not stop cleanly (killed, crashed or the host went down): nothing was watched in between"
        );
        raise(alert);
    }
    let _ = outputs.flush();
    let state = std::sync::Arc::new(state);
    let writer = {
        let (state, metrics) = (state.clone(), metrics.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::telemetry::liveness::STATE_INTERVAL);
            loop {
                tick.tick().await;
                let state = state.clone();
                let beat = metrics.last_beat();
                // A small file write and a rename: off the async workers all the same.
                let _ = tokio::task::spawn_blocking(move || state.alive(beat)).await;
            }
        })
    };
    Some((state, writer))
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Check(args) => {
            let mut report = crate::config::check(&args.files);
            if report.diagnostics.is_empty() {
                // What `monitor run` would size the kernel map to, and what would not fit.
                let candidates = crate::kernel::policy::exec_candidates(&report.loaded);
                let capacity = crate::kernel::policy::candidate_capacity(candidates.keys.len());
                report.notes.splice(0..0, candidates.describe(capacity));
            }
            for diagnostic in &report.diagnostics {
                println!("{diagnostic}");
            }
            if report.diagnostics.is_empty() {
                println!("ok: {} profiles", report.profiles);
                for note in &report.notes {
                    println!("{note}");
                }
                Ok(())
            } else {
                Err(CheckFailed(report.diagnostics.len()).into())
            }
        }
        Command::Run(args) => {
            let source = ConfigSource {
                path: args.config.clone(),
                extra_profiles: args.profiles.clone(),
                allow_insecure: args.allow_insecure_config,
            };
            let config = match source.load() {
                Ok(config) => config,
                Err(diagnostics) => {
                    for diagnostic in &diagnostics {
                        eprintln!("{diagnostic}");
                    }
                    anyhow::bail!(
                        "failed to load the configuration ({} errors above); fix them and check with `monitor check`",
                        diagnostics.len()
                    );
                }
            };
            let mut sinks: Vec<Box<dyn AlertSink>> = match &config.outputs.alerts_file {
                Some(path) => vec![Box::new(AlertsFile::open_for_group(
                    path,
                    config.outputs.alerts_file_group.as_deref(),
                )?)],
                None => vec![Box::new(StdoutLines::start()?)],
            };
            let metrics = std::sync::Arc::new(crate::telemetry::metrics::Metrics::new());
            let file = otlp_file_settings(&config);
            if let Some(settings) = crate::output::otlp::OtlpSettings::resolve_from_process_env(
                &args.otlp,
                file.as_ref(),
            )? {
                let (dir, max_bytes) = args.otlp.spool(file.as_ref());
                tracing::info!(
                    endpoint = %settings.logs_endpoint,
                    spool = %dir.display(),
                    "alerts are exported over OTLP (spooled on disk first)"
                );
                let mut settings = settings;
                settings.heartbeat_interval = config.heartbeat;
                sinks.push(Box::new(
                    crate::output::otlp::OtlpSink::start(
                        settings,
                        &dir,
                        max_bytes,
                        metrics.clone(),
                    )?
                    .with_close_timeout(crate::daemon::SHUTDOWN_DRAIN),
                ));
            }
            let mut outputs = Outputs::new(sinks, Some(metrics.clone()));
            let state_dir = args
                .state_dir
                .clone()
                .or_else(|| std::env::var_os("MONITOR_STATE_DIR").map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from(crate::telemetry::liveness::DEFAULT_STATE_DIR));
            let state = start_alerts(&source, &config, &state_dir, &mut outputs, &metrics);
            // Guards are fanotify's (crate::kernel::guard): the kernel's open hooks do not judge
            // protected paths in `run`, so unwatched processes' opens cost one map lookup.
            let mut sensor = args.common.sensor_options(false);
            sensor.dry_run = args.dry_run;
            let result = crate::daemon::run(Plan {
                mode: Mode::Run,
                sensor,
                pipeline: args.common.pipeline_options(),
                selectors: WatchSelectors::default(),
                out: std::io::sink(),
                sinks: vec![Box::new(outputs)],
                config: Some((source, config)),
                observer: None,
                metrics: Some(metrics),
                out_dropped: None,
            })
            .await;
            if let Some((state, writer)) = state {
                writer.abort();
                // A stop that ends in an error is not clean: the next start reports it.
                if result.is_ok() {
                    state.clean();
                }
            }
            result.map(drop)
        }
        Command::Learn(args) => crate::learn::run(args).await,
        Command::Spool(SpoolArgs {
            command: SpoolCommand::Replay(args),
        }) => replay(args).await,
        Command::Trace(args) => {
            // Written by a thread of its own: a stalled reader must not stall the event loop.
            let stdout =
                crate::output::trace_out::TraceOut::start(std::io::stdout()).map_err(|err| {
                    anyhow::anyhow!("failed to start the stdout writer thread: {err}")
                })?;
            let out_dropped = stdout.dropped();
            let selectors = args.selectors()?;
            let mut sensor_options = args.common.sensor_options(args.all);
            // The kernel watches a program that `--exe` names from its exec on: its first
            // events (the loader's opens, an early bind) come before user space could react.
            sensor_options.exec_candidates =
                crate::kernel::policy::executables_matching(&selectors.exes);
            sensor_options.protect_dirs = args.protect.clone();
            sensor_options.protect_suffixes = args.protect_suffixes.clone();
            crate::daemon::run(Plan {
                mode: Mode::Trace,
                sensor: sensor_options,
                pipeline: args.common.pipeline_options(),
                selectors,
                out: stdout,
                sinks: Vec::new(),
                config: None,
                observer: None,
                metrics: None,
                out_dropped: Some(out_dropped),
            })
            .await
            .map(drop)
        }
    }
}
