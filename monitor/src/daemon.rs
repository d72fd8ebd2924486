//! Start-up, the main loop and shutdown, shared by `monitor run` and `monitor trace`.
//!
//! Order matters for "no blind spot at start-up": load the programs, start the reader,
//! attach, scan /proc, then process what arrived meanwhile.

use std::{io::Write, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::{
    cgroup::CgroupResolver,
    clock::BootClock,
    ioctls::IoctlTracker,
    pipeline::{self, Counters, Mode, PipelineOptions, Processor, WatchSelectors},
    sensor::{Sensor, SensorOptions},
    sink::AlertSink,
};

/// Runs the monitor until SIGINT or SIGTERM.
pub async fn run(
    mode: Mode,
    sensor_options: SensorOptions,
    pipeline_options: PipelineOptions,
    selectors: WatchSelectors,
    out: impl Write,
    sinks: Vec<Box<dyn AlertSink>>,
) -> anyhow::Result<()> {
    let (mut sensor, maps) = Sensor::load(&sensor_options)?;
    let counters = Arc::new(Counters::default());
    let (queue_tx, mut queue_rx) = mpsc::channel(pipeline_options.queue_batches);
    let (stop_tx, stop_rx) = watch::channel(false);
    let reader = tokio::spawn(pipeline::read_ring(
        maps.events,
        queue_tx,
        pipeline_options.drain_interval,
        counters.clone(),
        stop_rx,
    ));

    let mut signals = Signals::new()?;
    sensor.attach()?;

    let cgroups = match CgroupResolver::new() {
        Ok(resolver) => Some(resolver),
        Err(err) => {
            warn!("failed to find the cgroup v2 mount ({err}); cgroup paths will be missing");
            None
        }
    };
    let mut processor = Processor::new(
        mode,
        selectors,
        maps.watched,
        maps.stats,
        counters,
        cgroups,
        BootClock::new(),
        out,
    );
    processor.sinks = sinks;
    processor.ioctls = Some(IoctlTracker::new(maps.ioctl_counts, maps.accel_fds));
    let scanned = processor.seed()?;
    info!(processes = scanned, "process table seeded from /proc");
    if let Some(path) = &pipeline_options.ready_file {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("failed to write the ready file {}", path.display()))?;
    }
    info!("monitor ready");

    let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
    let mut ioctl_summary = tokio::time::interval(pipeline_options.ioctl_summary);
    loop {
        tokio::select! {
            batch = queue_rx.recv() => match batch {
                Some(batch) => processor.handle_batch(batch).context("failed to write output")?,
                None => break,
            },
            _ = ioctl_summary.tick() => {
                processor.report_ioctls(None).context("failed to write output")?;
            }
            _ = housekeeping.tick() => {
                processor.report_losses().context("failed to write output")?;
                processor.sweep();
            }
            signal = signals.recv() => {
                info!("received {signal}, shutting down");
                break;
            }
        }
    }

    // Detach first so nothing new arrives, then let the reader drain what is left.
    drop(sensor);
    let _ = stop_tx.send(true);
    match reader.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => warn!("ring buffer reader failed: {err:#}"),
        Err(err) => warn!("ring buffer reader panicked: {err}"),
    }
    while let Some(batch) = queue_rx.recv().await {
        processor
            .handle_batch(batch)
            .context("failed to write output")?;
    }
    processor
        .report_ioctls(None)
        .context("failed to write output")?;
    processor.finish().context("failed to write output")?;
    if let Some(path) = &pipeline_options.ready_file {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// SIGINT and SIGTERM.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).context("failed to handle SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("failed to handle SIGTERM")?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}
