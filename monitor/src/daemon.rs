//! Start-up, the main loop and shutdown, shared by `monitor run` and `monitor trace`.
//!
//! Order matters for "no blind spot at start-up": load the programs, start the reader, fill
//! the kernel's policy maps, attach, scan /proc, then process what arrived meanwhile.

use std::{io::Write, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::{
    config::{
        diff::{ConfigDiff, CONFIG_CHANGED, CONFIG_CHANGE_REFUSED},
        reload::ConfigSource,
        Config,
    },
    event::{
        alert::{new_uid, Action, Alert},
        clock::BootClock,
    },
    host::{cgroup::CgroupResolver, ioctls::IoctlTracker},
    kernel::{
        guard::GuardService,
        policy::KernelPolicy,
        sensor::{Sensor, SensorOptions},
    },
    output::sink::AlertSink,
    pipeline::{
        self, Counters, KernelMaps, Mode, Observer, PipelineOptions, Processor, WatchSelectors,
    },
    rules::{Engine, CONFIG_RELOAD_FAILED},
    telemetry::metrics::Metrics,
};

/// Everything a run needs.
pub struct Plan<W: Write> {
    pub mode: Mode,
    pub sensor: SensorOptions,
    pub pipeline: PipelineOptions,
    pub selectors: WatchSelectors,
    /// Event records (`monitor trace`).
    pub out: W,
    /// Alert outputs (`monitor run`).
    pub sinks: Vec<Box<dyn AlertSink>>,
    /// Profiles and guards, and where to reload them from (`monitor run`).
    pub config: Option<(ConfigSource, Config)>,
    /// `monitor learn`: the observer, and how long to observe (until SIGINT when `None`).
    pub observer: Option<(Box<dyn Observer>, Option<Duration>)>,
    /// Counters exported over OTLP.
    pub metrics: Option<Arc<Metrics>>,
    /// Where `out` counts the records it dropped (`monitor trace`: a stdout that does not
    /// keep up), reported as losses.
    pub out_dropped: Option<Arc<std::sync::atomic::AtomicU64>>,
}

/// How long a stop keeps sending what the OTLP spool holds. A service manager waits about
/// 10 s (Kubernetes 30 s) before its SIGKILL; what is not sent by then stays in the spool
/// for the next start, and the log says how many.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(1);

/// How often configuration files are read to look for changes that inotify did not report
/// (a file system without inotify, a watch that could not be set).
const RELOAD_POLL: Duration = Duration::from_secs(5);
/// A reload waits until its files have been quiet this long...
const RELOAD_QUIET: Duration = Duration::from_millis(150);
/// ...but no longer than this after the first change, so a steady writer still gets reloads.
const RELOAD_MAX_DELAY: Duration = Duration::from_secs(1);

/// Runs the monitor until SIGINT or SIGTERM (or the observation time is over); returns the
/// observer, if any, for its results.
pub async fn run<W: Write>(plan: Plan<W>) -> anyhow::Result<Option<Box<dyn Observer>>> {
    let Plan {
        mode,
        sensor: sensor_options,
        pipeline: pipeline_options,
        selectors,
        out,
        sinks,
        config,
        observer,
        metrics,
        out_dropped,
    } = plan;
    let (observer, duration) = match observer {
        Some((observer, duration)) => (Some(observer), duration),
        None => (None, None),
    };
    let mut sensor_options = sensor_options;
    let mut candidates = None;
    if let Some((_, config)) = &config {
        // The kernel's candidate map is sized from what the selectors match now.
        let found = crate::kernel::policy::exec_candidates(&config.profiles);
        sensor_options.exec_candidates_expected = found.keys.len();
        let capacity = crate::kernel::policy::candidate_capacity(found.keys.len());
        for line in found.describe(capacity) {
            info!("{line}");
        }
        candidates = Some(found);
    }
    let (mut sensor, maps) = Sensor::load(&sensor_options)?;
    let counters = Arc::new(Counters {
        trace_dropped: out_dropped.unwrap_or_default(),
        ..Counters::default()
    });
    let (queue_tx, mut queue_rx) = mpsc::channel(pipeline_options.queue_batches);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (guard_tx, guard_rx) = mpsc::channel(crate::kernel::guard::EVENT_QUEUE);
    // What must not share fate with bulk events, when the queue is filling (see read_ring).
    let (urgent_tx, mut urgent_rx) = mpsc::channel(pipeline_options.queue_batches);
    let reader = tokio::spawn(pipeline::read_ring(
        maps.events,
        queue_tx,
        pipeline_options.drain_interval,
        counters.clone(),
        stop_rx,
        Some(guard_rx),
        maps.priority,
        urgent_tx,
        reader_gates(&maps.gates),
    ));
    let mut objects = maps.objects;
    let mut guards = GuardService::new(guard_tx, counters.guard.clone(), sensor_options.dry_run);

    let mut policy = KernelPolicy::new(maps.policy, sensor_options.dry_run);
    let mut source = None;
    let mut engine = None;
    if let Some((config_source, config)) = config {
        policy
            .apply_with(
                &config,
                candidates
                    .take()
                    .unwrap_or_else(|| crate::kernel::policy::exec_candidates(&config.profiles)),
            )
            .context("failed to load the guards and profiles into the kernel")?;
        info!(
            profiles = config.profiles.len(),
            source = %config.source.as_ref().map_or("built-in defaults".into(), |p| p.display().to_string()),
            "configuration loaded"
        );
        let fingerprint = config_source.fingerprint(&config);
        source = Some((config_source, fingerprint));
        let config = Arc::new(config);
        guards
            .apply(config.clone(), &maps.watched)
            .context("failed to guard the protected paths")?;
        engine = Some(Engine::new(config));
    }

    // inotify on the configuration's files; the poll below is the fallback.
    let mut watcher = match &source {
        Some((config_source, _)) => match crate::config::reload::Watcher::new() {
            Ok(mut watcher) => {
                if let Some(engine) = &engine {
                    watcher.arm(&config_source.inputs(engine.config()));
                }
                Some(watcher)
            }
            Err(err) => {
                warn!("failed to watch the configuration files ({err}); changes are seen by a poll every {}s", RELOAD_POLL.as_secs());
                None
            }
        },
        None => None,
    };
    // When the files changed and have been quiet long enough: (first change, last change).
    let mut pending_reload: Option<(tokio::time::Instant, tokio::time::Instant)> = None;
    let mut signals = Signals::new()?;
    sensor.attach()?;
    sensor.set_udp_egress(
        engine
            .as_ref()
            .is_some_and(|e| crate::kernel::policy::judges_connected_udp(e.config())),
    )?;
    let object_names = sensor
        .register(&mut objects)
        .context("failed to file the monitor's own BPF objects for the tamper hook")?;

    let cgroups = match CgroupResolver::new() {
        Ok(resolver) => Some(resolver),
        Err(err) => {
            warn!("failed to find the cgroup v2 mount ({err}); cgroup paths will be missing");
            None
        }
    };
    let clock = BootClock::new();
    let mut kernel = KernelMaps::new(maps.watched, maps.stats);
    if mode == Mode::Run {
        kernel.known = Some(maps.known);
        kernel.threads = Some(maps.watched_threads);
        kernel.gates = Some(maps.gates);
        kernel.resolved_exec = Some(maps.resolved_exec);
    }
    let mut processor = Processor::new(mode, selectors, kernel, counters, cgroups, clock, out);
    processor.sinks = sinks;
    processor.engine = engine;
    processor.observer = observer;
    processor.dry_run = sensor_options.dry_run;
    processor.metrics = metrics;
    if mode == Mode::Run {
        // The monitor's own memory is guarded from the start (ptrace, process_vm_*,
        // /proc/PID/mem of the monitor are `monitor-tampered`): the gate opens now, not
        // when the first server is governed.
        processor.open_governed_gate();
    }
    processor.ioctls = Some(IoctlTracker::new(maps.ioctl_counts, maps.accel_fds));
    // Container metadata: looked up in the background from the first process of each
    // container on (the /proc scan below included).
    let workload = crate::host::workload::Registry::start(&pipeline_options.workload);
    processor.table.containers = Some(workload.clone());
    processor.pauses.names = object_names;
    crate::pipeline::tamper::file_own_threads(&mut processor);
    let scanned = processor.seed()?;
    info!(processes = scanned, "process table seeded from /proc");
    if let Some(path) = &pipeline_options.ready_file {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("failed to write the ready file {}", path.display()))?;
    }
    info!("monitor ready");

    let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
    let mut ioctl_summary = tokio::time::interval(pipeline_options.ioctl_summary);
    let mut reload_poll = tokio::time::interval(RELOAD_POLL);
    let mut self_check = tokio::time::interval(pipeline_options.self_check);
    self_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = tokio::time::Instant::now();
    let deadline = duration.map(|d| started + d);
    let mut progress = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            Some(batch) = urgent_rx.recv() => {
                processor.handle_batch(batch).context("failed to write output")?;
            }
            batch = queue_rx.recv() => match batch {
                Some(batch) => {
                    // What skipped the queue goes first.
                    while let Ok(urgent) = urgent_rx.try_recv() {
                        processor.handle_batch(urgent).context("failed to write output")?;
                    }
                    processor.handle_batch(batch).context("failed to write output")?
                }
                None => break,
            },
            _ = workload.arrived.notified() => {
                // A container's image, pod and labels are known now: workload selectors may
                // match processes that no profile governs yet (see `crate::host::workload`).
                processor.govern_running();
            }
            _ = self_check.tick(), if mode == Mode::Run => {
                let outcome = crate::pipeline::tamper::self_check(&mut sensor, &mut policy);
                if let Some(alert) = crate::pipeline::tamper::check_alert(&clock, &outcome) {
                    processor.raise(&alert);
                    processor.flush_alerts();
                }
                if let Ok(names) = sensor.register(&mut objects) {
                    processor.pauses.names = names;
                }
                crate::pipeline::tamper::file_own_threads(&mut processor);
            }
            _ = ioctl_summary.tick() => {
                processor.report_ioctls(None).context("failed to write output")?;
            }
            _ = housekeeping.tick() => {
                if let Some(metrics) = &processor.metrics {
                    metrics.beat();
                }
                processor.check_pause();
                processor.report_losses().context("failed to write output")?;
                processor.flush_alerts();
                processor.sweep();
            }
            changed = async {
                match watcher.as_mut() {
                    Some(watcher) => watcher.changed().await,
                    None => std::future::pending().await,
                }
            }, if watcher.is_some() => {
                match changed {
                    Ok(what) => {
                        debug!(file = %what, "configuration file changed");
                        let now = tokio::time::Instant::now();
                        let first = pending_reload.map_or(now, |(first, _)| first);
                        pending_reload = Some((first, now));
                    }
                    Err(err) => {
                        warn!("failed to read configuration file events ({err}); changes are seen by a poll every {}s", RELOAD_POLL.as_secs());
                        watcher = None;
                    }
                }
            }
            _ = tokio::time::sleep_until(pending_reload.map_or(started, |(first, last)| (last + RELOAD_QUIET).min(first + RELOAD_MAX_DELAY))), if pending_reload.is_some() => {
                pending_reload = None;
                if let Some((config_source, fingerprint)) = &mut source {
                    reload_if_changed(config_source, fingerprint, &mut policy, &mut processor, &clock, watcher.as_mut(), &mut guards);
                    follow_udp_egress(&mut sensor, &mut objects, &mut processor);
                }
            }
            _ = reload_poll.tick(), if source.is_some() => {
                if let Some((config_source, fingerprint)) = &mut source {
                    reload_if_changed(config_source, fingerprint, &mut policy, &mut processor, &clock, watcher.as_mut(), &mut guards);
                    follow_udp_egress(&mut sensor, &mut objects, &mut processor);
                }
                guards.verify();
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or(started)), if deadline.is_some() => {
                info!("observation time is over");
                break;
            }
            _ = progress.tick(), if processor.observer.is_some() => {
                let events = processor.observer.as_ref().map_or(0, |o| o.events());
                match deadline {
                    Some(deadline) => {
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        eprintln!("learning: {}s left, {events} events seen", left.as_secs());
                    }
                    None => eprintln!("learning: {events} events seen (Ctrl-C to finish)"),
                }
            }
            signal = signals.recv() => {
                if signal == "SIGHUP" {
                    // Log rotation: the alerts file is opened again by its path.
                    for sink in &mut processor.sinks {
                        if let Err(err) = sink.reopen() {
                            warn!("failed to reopen the alert outputs: {err:#}");
                        }
                    }
                    match &mut source {
                        Some((config_source, fingerprint)) => {
                            info!("received SIGHUP: reloading the configuration");
                            reload(config_source, fingerprint, &mut policy, &mut processor, &clock, &mut guards);
                            follow_udp_egress(&mut sensor, &mut objects, &mut processor);
                            if let (Some(watcher), Some(engine)) = (watcher.as_mut(), processor.engine.as_ref()) {
                                watcher.arm(&config_source.inputs(engine.config()));
                            }
                        }
                        None => info!("received SIGHUP: nothing to reload"),
                    }
                    continue;
                }
                info!("received {signal}, shutting down");
                break;
            }
        }
    }

    // Detach first so nothing new arrives, then let the reader drain what is left.
    let (answered, mean_ns) = guards.answered();
    guards.stop();
    if answered > 0 {
        info!(answered, mean_ns, "fanotify permission events answered");
    }
    let stopping = std::time::Instant::now();
    let links = sensor.detach();
    info!(
        links,
        elapsed_ms = stopping.elapsed().as_millis() as u64,
        "programs detached"
    );
    let _ = stop_tx.send(true);
    match reader.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => warn!("ring buffer reader failed: {err:#}"),
        Err(err) => warn!("ring buffer reader panicked: {err}"),
    }
    while let Ok(batch) = urgent_rx.try_recv() {
        processor
            .handle_batch(batch)
            .context("failed to write output")?;
    }
    while let Some(batch) = queue_rx.recv().await {
        processor
            .handle_batch(batch)
            .context("failed to write output")?;
    }
    processor
        .report_ioctls(None)
        .context("failed to write output")?;
    processor.flush_alerts();
    processor.finish().context("failed to write output")?;
    let lookups_dropped = workload.dropped.load(std::sync::atomic::Ordering::Relaxed);
    if lookups_dropped > 0 {
        warn!(
            lookups_dropped,
            "container metadata lookups not made (their queue was full)"
        );
    }
    if let Some(path) = &pipeline_options.ready_file {
        let _ = std::fs::remove_file(path);
    }
    info!(
        elapsed_ms = stopping.elapsed().as_millis() as u64,
        "stopped"
    );
    Ok(processor.observer.take())
}

/// Attaches or detaches `udp_egress` as the configuration in force needs it (see
/// [`Sensor::set_udp_egress`]), and files a new link for the tamper hook.
fn follow_udp_egress<W: Write>(
    sensor: &mut Sensor,
    objects: &mut crate::kernel::sensor::SensorObjects,
    processor: &mut Processor<W>,
) {
    let wanted = processor
        .engine
        .as_ref()
        .is_some_and(|e| crate::kernel::policy::judges_connected_udp(e.config()));
    match sensor.set_udp_egress(wanted) {
        Ok(false) => {}
        Ok(true) => match sensor.register(objects) {
            Ok(names) => processor.pauses.names = names,
            Err(err) => warn!("{err:#}; the self-check files it again"),
        },
        Err(err) => error!(
            "{err:#}: the datagrams of connected UDP sockets are not judged; the self-check does not retry, restart the monitor"
        ),
    }
}

/// A second handle on the kernel's gates for the ring-buffer reader (its idle gate); without
/// one it drains on its timer only.
fn reader_gates(
    gates: &aya::maps::Array<aya::maps::MapData, u32>,
) -> Option<aya::maps::Array<aya::maps::MapData, u32>> {
    use aya::maps::IterableMap as _;
    use std::os::fd::AsFd as _;
    let handle = (|| -> anyhow::Result<_> {
        let fd = gates.map().fd().as_fd().try_clone_to_owned()?;
        let data = aya::maps::MapData::from_fd(fd)?;
        Ok(aya::maps::Array::try_from(aya::maps::Map::Array(data))?)
    })();
    match handle {
        Ok(handle) => Some(handle),
        Err(err) => {
            warn!("failed to open the kernel's gates for the reader ({err:#}); it drains every interval even when idle");
            None
        }
    }
}

/// Reloads when the content of the configuration's files differs from what was loaded last
/// (a touched file, or one written back unchanged, is no change); then watches the files the
/// configuration in force is made of.
fn reload_if_changed<W: Write>(
    source: &ConfigSource,
    fingerprint: &mut crate::config::reload::Fingerprint,
    policy: &mut KernelPolicy,
    processor: &mut Processor<W>,
    clock: &BootClock,
    watcher: Option<&mut crate::config::reload::Watcher>,
    guards: &mut GuardService,
) {
    let Some(config) = processor.engine.as_ref().map(|e| e.config().clone()) else {
        return;
    };
    if source.fingerprint(&config) == *fingerprint {
        return;
    }
    info!("configuration files changed: reloading");
    reload(source, fingerprint, policy, processor, clock, guards);
    if let (Some(watcher), Some(engine)) = (watcher, processor.engine.as_ref()) {
        watcher.arm(&source.inputs(engine.config()));
    }
}

/// Loads the configuration again. A configuration that fails to load is reported (log and a
/// `config-reload-failed` alert) and the one in force keeps running. One that loads is
/// reported as `config-changed` with what changed; under `locked: true` it is not applied,
/// and reported as `config-change-refused`.
fn reload<W: Write>(
    source: &ConfigSource,
    fingerprint: &mut crate::config::reload::Fingerprint,
    policy: &mut KernelPolicy,
    processor: &mut Processor<W>,
    clock: &BootClock,
    guards: &mut GuardService,
) {
    let old = processor.engine.as_ref().map(|e| e.config().clone());
    if let Some(old) = old.as_ref().filter(|old| old.locked) {
        refuse_locked(source, fingerprint, old, processor, clock);
        return;
    }
    let config = match source.load() {
        Ok(config) => config,
        Err(diagnostics) => {
            if let Some(engine) = processor.engine.as_ref() {
                *fingerprint = source.fingerprint(&engine.config().clone());
            }
            let errors: Vec<String> = diagnostics.iter().map(|d| d.to_string()).collect();
            for line in &errors {
                error!("{line}");
            }
            error!("the new configuration failed to load; the previous one stays in force");
            reload_failed(source, errors, processor, clock);
            return;
        }
    };
    let read = source.fingerprint(&config);
    // SIGHUP (also sent by logrotate) with the files as they were is no change to report.
    let files_changed = read != *fingerprint;
    *fingerprint = read;
    // The kernel first: if it refuses the new rules, its maps are put back and the daemon
    // keeps the old rules too, so both sides always judge by the same configuration.
    if let Err(err) = policy.apply(&config) {
        error!("{err:#}");
        reload_failed(source, vec![format!("{err:#}")], processor, clock);
        return;
    }
    let profiles = config.profiles.len();
    let config = Arc::new(config);
    if let Err(err) = guards.apply(config.clone(), &processor.kernel().watched) {
        // The guards keep their marks; put the kernel back on the configuration in force too.
        let old = processor.engine.as_ref().map(|e| e.config().clone());
        if let Some(old) = old {
            if let Err(restore) = policy.apply(&old) {
                error!("failed to put the kernel's policy back after a failed reload: {restore:#}; restart the monitor");
            }
        }
        let err = format!(
            "failed to update the fanotify guards: {err:#}; the previous configuration stays in force"
        );
        error!("{err}");
        reload_failed(source, vec![err], processor, clock);
        return;
    }
    processor.reload(config.clone());
    info!(profiles, "configuration reloaded");
    if let Some(old) = old {
        let diff = ConfigDiff::between(&old, &config);
        if diff.is_empty() && !files_changed {
            return;
        }
        let mut attributes = diff.attributes();
        if source.allow_insecure {
            let insecure: Vec<String> = source
                .insecure(&config)
                .iter()
                .map(ToString::to_string)
                .collect();
            if !insecure.is_empty() {
                warn!(files = ?insecure, "the configuration is in files that users other than root may change (--allow-insecure-config)");
                attributes.insert("monitor.config.insecure".into(), insecure.into());
            }
        }
        let severity = diff.severity();
        if diff.weakened.is_empty() {
            info!(changes = ?diff.changes, "configuration changed");
        } else {
            warn!(changes = ?diff.changes, weakened = ?diff.weakened, "configuration changed: protection lowered");
        }
        config_alert(
            CONFIG_CHANGED.id,
            severity,
            attributes,
            source,
            processor,
            clock,
        );
    }
}

/// `locked: true`: the change is not applied; an alert says what it would have been.
fn refuse_locked<W: Write>(
    source: &ConfigSource,
    fingerprint: &mut crate::config::reload::Fingerprint,
    old: &crate::config::Config,
    processor: &mut Processor<W>,
    clock: &BootClock,
) {
    // The same attempt is reported once, not at every poll.
    *fingerprint = source.fingerprint(old);
    let mut attributes = match source.load() {
        Ok(new) => {
            let diff = ConfigDiff::between(old, &new);
            if diff.is_empty() {
                info!("the configuration is locked and its files match the one in force: nothing to refuse");
                return;
            }
            diff.attributes()
        }
        Err(diagnostics) => {
            let mut attributes = serde_json::Map::new();
            let errors: Vec<String> = diagnostics.iter().map(|d| d.to_string()).collect();
            attributes.insert("monitor.config.errors".into(), errors.into());
            attributes
        }
    };
    attributes.insert("monitor.config.locked".into(), true.into());
    warn!(
        changes = ?attributes.get("monitor.config.changes"),
        "the configuration is locked (locked: true): its files changed, the change is refused until a restart"
    );
    config_alert(
        CONFIG_CHANGE_REFUSED.id,
        CONFIG_CHANGE_REFUSED.severity,
        attributes,
        source,
        processor,
        clock,
    );
}

/// Raises one of the configuration's alerts, with the config's path.
fn config_alert<W: Write>(
    rule: &str,
    severity: crate::event::alert::Severity,
    mut attributes: serde_json::Map<String, serde_json::Value>,
    source: &ConfigSource,
    processor: &mut Processor<W>,
    clock: &BootClock,
) {
    let now = clock.unix_ns(BootClock::boot_now_ns());
    if let Some(path) = &source.path {
        attributes.insert(
            "monitor.config.path".into(),
            path.display().to_string().into(),
        );
    }
    let alert = Alert {
        rule: rule.into(),
        severity,
        action: Action::Alert,
        profile: None,
        time_unix_ns: now,
        observed_unix_ns: now,
        count: 1,
        uid: new_uid(),
        attributes,
    };
    processor.raise(&alert);
    processor.flush_alerts();
}

/// Raises `config-reload-failed` with what went wrong.
fn reload_failed<W: Write>(
    source: &ConfigSource,
    errors: Vec<String>,
    processor: &mut Processor<W>,
    clock: &BootClock,
) {
    let now = clock.unix_ns(BootClock::boot_now_ns());
    let mut attributes = serde_json::Map::new();
    attributes.insert("monitor.config.errors".into(), errors.into());
    if let Some(path) = &source.path {
        attributes.insert(
            "monitor.config.path".into(),
            path.display().to_string().into(),
        );
    }
    let alert = Alert {
        rule: CONFIG_RELOAD_FAILED.id.into(),
        severity: CONFIG_RELOAD_FAILED.severity,
        action: Action::Alert,
        profile: None,
        time_unix_ns: now,
        observed_unix_ns: now,
        count: 1,
        uid: new_uid(),
        attributes,
    };
    processor.raise(&alert);
    processor.flush_alerts();
}

/// SIGINT, SIGTERM and SIGHUP.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).context("failed to handle SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("failed to handle SIGTERM")?,
            hangup: signal(SignalKind::hangup()).context("failed to handle SIGHUP")?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.hangup.recv() => "SIGHUP",
        }
    }
}

/// The daemon's knobs that `monitor run`, `trace` and `learn` share: the options of the
/// sensors and of the pipeline.
#[derive(clap::Args, Debug)]
pub struct CommonArgs {
    /// Ring buffer size in bytes (a power of two, at least 4096).
    #[arg(long, default_value_t = 8 << 20, value_name = "BYTES")]
    pub ring_size: u32,
    /// How often the reader drains the ring buffer.
    #[arg(long, default_value_t = 10, value_name = "MS")]
    pub drain_interval_ms: u64,
    /// Wake the reader early once this many bytes wait in the ring buffer.
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    pub wakeup_bytes: u64,
    /// Create this file (containing the pid) once all programs are attached and /proc is
    /// scanned; removed at exit.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
    /// The cgroup (v2) whose processes the device hook sees (default: the cgroup v2 root,
    /// i.e. the whole host).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Treat character-device major N as an accelerator class (repeatable), e.g. 1=accel.
    #[arg(long = "accel-major", value_name = "N=CLASS", value_parser = crate::host::devices::parse_accel_major)]
    pub accel_majors: Vec<(u32, crate::event::DeviceClass)>,
    /// How often per-process GPU ioctl counts are reported.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub ioctl_summary_secs: u64,
    /// Container metadata from the runtime's API, and the node name.
    #[command(flatten)]
    pub workload: crate::host::workload::WorkloadArgs,
    /// How often `monitor run` checks that its cgroup links are attached and its policy maps
    /// hold what the configuration wrote (and repairs them).
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub self_check_secs: u64,
}

impl CommonArgs {
    pub fn sensor_options(&self, watch_all: bool) -> SensorOptions {
        let mut accel_majors = crate::host::devices::AccelMajors::detect();
        for &(major, class) in &self.accel_majors {
            accel_majors.insert(major, class);
        }
        SensorOptions {
            ring_size: self.ring_size,
            wakeup_bytes: self.wakeup_bytes,
            watch_all,
            protect_dirs: Vec::new(),
            protect_suffixes: Vec::new(),
            protect_always: false,
            exec_candidates: Vec::new(),
            exec_candidates_expected: 0,
            accel_majors,
            cgroup: self.cgroup.clone(),
            dry_run: false,
        }
    }

    pub fn pipeline_options(&self) -> PipelineOptions {
        PipelineOptions {
            drain_interval: Duration::from_millis(self.drain_interval_ms.max(1)),
            ready_file: self.ready_file.clone(),
            ioctl_summary: Duration::from_secs(self.ioctl_summary_secs.max(1)),
            workload: self.workload.options(),
            self_check: Duration::from_secs(self.self_check_secs.max(1)),
            ..PipelineOptions::default()
        }
    }
}
