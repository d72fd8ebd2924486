//! [`OtlpSink`]: the alert sink that spools every alert and lets a task of its own export it.

use std::{
    path::Path,
    sync::{mpsc, Arc},
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use super::{
    exporter::{self, RunState, Shared},
    settings::OtlpSettings,
    transport::Transport,
};
use crate::{alert::Alert, metrics::Metrics, sink::AlertSink, spool::Spool};

/// How long [`AlertSink::close`] keeps sending what is spooled.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Exports alerts as OTLP logs, through a durable spool.
///
/// `send` only appends to the spool (a `write`, no network) and wakes the exporter, which
/// runs on a thread and tokio runtime of its own, so neither a slow collector nor the
/// caller's runtime flavour can stall the pipeline. Alerts a previous run left in the spool
/// are sent first. `close` keeps sending for up to [`CLOSE_TIMEOUT`]; what is left stays in
/// the spool for the next start. Dropping the sink without `close` stops at once.
pub struct OtlpSink {
    shared: Arc<Shared>,
    state: watch::Sender<RunState>,
    done: mpsc::Receiver<()>,
    thread: Option<JoinHandle<()>>,
    close_timeout: Duration,
}

impl OtlpSink {
    /// Opens (or creates) the spool in `spool_dir`, bounded by `max_bytes`, and starts the
    /// exporter. Fails with the reason when the spool dir cannot be used or the settings are
    /// wrong (endpoint, headers, CA file); a collector that is down is not an error.
    pub fn start(
        settings: OtlpSettings,
        spool_dir: &Path,
        max_bytes: u64,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<OtlpSink> {
        let spool = Spool::open(spool_dir, max_bytes)?;
        let recovery = spool.recovery();
        metrics.spool_corrupt_bytes(recovery.corrupt_bytes);
        if recovery.corrupt_regions > 0 {
            warn!(
                "the OTLP spool {} had {} torn or corrupt stretches ({} bytes): the alerts in \
                 them are lost, the {} whole ones are kept",
                spool_dir.display(),
                recovery.corrupt_regions,
                recovery.corrupt_bytes,
                recovery.pending
            );
        }
        if recovery.pending > 0 {
            info!(
                "{} alerts from a previous run wait in the OTLP spool {}: sending them first",
                recovery.pending,
                spool_dir.display()
            );
        }
        let shared = Arc::new(Shared {
            spool: std::sync::Mutex::new(spool),
            wake: Notify::new(),
            metrics,
        });
        // Drops at start-up (a smaller limit than last time) are reported like any others.
        shared.report_drops();
        let (state, state_rx) = watch::channel(RunState::Running);
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
        let (done_tx, done) = mpsc::channel();
        let task_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                runtime.block_on(async move {
                    // Inside the runtime: tonic's lazy channel spawns its worker here.
                    let transport = match Transport::new(&settings) {
                        Ok(transport) => transport,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    exporter::run(task_shared, settings, transport, state_rx).await;
                });
                let _ = done_tx.send(());
            })
            .context("failed to start the OTLP export thread")?;
        let ready = ready_rx
            .recv()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the OTLP export thread ended early")));
        if let Err(e) = ready {
            let _ = thread.join();
            return Err(e.context("failed to start the OTLP exporter"));
        }
        Ok(OtlpSink {
            shared,
            state,
            done,
            thread: Some(thread),
            close_timeout: CLOSE_TIMEOUT,
        })
    }

    /// Changes how long `close` keeps sending (default [`CLOSE_TIMEOUT`]).
    pub fn with_close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// Alerts in the spool that the collector has not accepted yet.
    pub fn pending(&self) -> usize {
        self.shared.spool().pending()
    }

    /// Stops the export thread: `state` tells it how, `wait` bounds the wait for it.
    fn stop(&mut self, state: RunState, wait: Duration) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        let _ = self.state.send(state);
        let finished = match self.done.recv_timeout(wait) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => true,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = self.state.send(RunState::Stop);
                self.done.recv_timeout(Duration::from_secs(2)).is_ok()
            }
        };
        if finished {
            let _ = thread.join();
        } else {
            warn!("the OTLP export thread did not stop in time; leaving it behind");
        }
    }
}

impl AlertSink for OtlpSink {
    fn send(&mut self, alert: &Alert) -> anyhow::Result<()> {
        let appended = self
            .shared
            .spool()
            .append(alert)
            .context("failed to write the alert to the OTLP spool")?;
        let metrics = &self.shared.metrics;
        if appended.stored.is_some() {
            metrics.alerts_spooled(1);
        }
        metrics.spool_dropped(appended.dropped);
        self.shared.wake.notify_one();
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.shared.report_drops();
        self.shared.wake.notify_one();
        Ok(())
    }

    fn close(&mut self) -> anyhow::Result<()> {
        self.flush()?;
        let deadline = tokio::time::Instant::now() + self.close_timeout;
        self.stop(
            RunState::Drain(deadline),
            self.close_timeout + Duration::from_secs(1),
        );
        let pending = self.pending();
        if pending > 0 {
            warn!("{pending} alerts not exported yet stay in the OTLP spool for the next start");
        }
        Ok(())
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        self.stop(RunState::Stop, Duration::from_secs(2));
    }
}
