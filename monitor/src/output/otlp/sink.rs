//! [`OtlpSink`]: the alert sink that spools every alert and lets a task of its own export it.

use std::{
    collections::VecDeque,
    path::Path,
    sync::{mpsc, Arc, Mutex},
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use super::{
    exporter::{self, RunState, Shared, DEAD_LETTER_DIR},
    settings::OtlpSettings,
    transport::Transport,
};
use crate::{
    event::alert::Alert,
    output::{
        sink::{notice, AlertSink, SPOOL_WRITE_FAILED},
        spool::{Appended, Spool},
    },
    telemetry::metrics::Metrics,
};

/// How long [`AlertSink::close`] keeps sending what is spooled.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Alerts kept in memory while the spool cannot be written (a full disk).
pub const BACKLOG_LIMIT: usize = 16_384;

/// A spell of spool write failures.
struct Spell {
    error: String,
    /// Alerts that could not be written at once.
    held: u64,
    /// Of those, dropped because the backlog was full.
    dropped: u64,
}

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
    /// Alerts waiting for the spool to be writable again, oldest first.
    backlog: VecDeque<Alert>,
    backlog_limit: usize,
    spell: Option<Spell>,
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
            spool: Mutex::new(spool),
            wake: Notify::new(),
            metrics,
            notices: Mutex::new(Vec::new()),
            dead_letter_dir: spool_dir.join(DEAD_LETTER_DIR),
            dead_letter_max_bytes: (max_bytes / 4).max(64 << 10),
            report_failing: Default::default(),
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
            backlog: VecDeque::new(),
            backlog_limit: BACKLOG_LIMIT,
            spell: None,
        })
    }

    /// Changes how many alerts wait in memory while the spool cannot be written.
    pub fn with_backlog_limit(mut self, limit: usize) -> Self {
        self.backlog_limit = limit.max(1);
        self
    }

    /// Alerts waiting in memory for the spool.
    pub fn backlog(&self) -> usize {
        self.backlog.len()
    }

    fn account(&self, appended: Appended) {
        if appended.stored.is_some() {
            self.shared.metrics.alerts_spooled(1);
        }
        self.shared.metrics.spool_dropped(appended.dropped);
    }

    /// Keeps an alert the spool could not take; past the limit, the oldest of the lowest
    /// severity goes (counted with the spool's drops, reported by `spool-dropped`).
    fn hold(&mut self, alert: Alert, error: &std::io::Error) {
        self.shared.metrics.spool_write_failed(1);
        let spell = self.spell.get_or_insert_with(|| {
            warn!(
                "failed to write alerts to the OTLP spool ({error}); they wait in memory (up to \
                 {}) until it can be written",
                self.backlog_limit
            );
            Spell {
                error: error.to_string(),
                held: 0,
                dropped: 0,
            }
        });
        if spell.held == 0 {
            let mut attributes = serde_json::Map::new();
            attributes.insert("error.type".into(), spell.error.clone().into());
            attributes.insert(
                "monitor.spool.dir".into(),
                self.shared.spool().dir().display().to_string().into(),
            );
            attributes.insert("monitor.spool.held".into(), (self.backlog.len() + 1).into());
            attributes.insert(
                "monitor.spool.backlog_limit".into(),
                self.backlog_limit.into(),
            );
            self.shared.notice(notice(SPOOL_WRITE_FAILED, attributes));
        }
        spell.held += 1;
        self.backlog.push_back(alert);
        if self.backlog.len() > self.backlog_limit {
            let lowest = self
                .backlog
                .iter()
                .enumerate()
                .min_by_key(|(_, a)| a.severity)
                .map(|(i, _)| i)
                .expect("the backlog is not empty");
            let dropped = self.backlog.remove(lowest).expect("index in range");
            let mut lost = [0; 4];
            lost[dropped.severity as usize] = 1;
            self.shared.spool().count_lost(lost);
            self.shared.metrics.spool_dropped(lost);
            spell.dropped += 1;
        }
    }

    /// Writes what waits in memory to the spool, oldest first, until a write fails.
    fn drain_backlog(&mut self) {
        while let Some(alert) = self.backlog.front() {
            let appended = self.shared.spool().append(alert);
            match appended {
                Ok(appended) => {
                    self.account(appended);
                    self.backlog.pop_front();
                }
                Err(_) => return,
            }
        }
        if let Some(spell) = self.spell.take() {
            info!(
                "the OTLP spool can be written again: {} alerts waited in memory and are \
                 spooled now ({} of them dropped because memory was full)",
                spell.held, spell.dropped
            );
        }
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
        self.drain_backlog();
        if self.backlog.is_empty() {
            let appended = self.shared.spool().append(alert);
            match appended {
                Ok(appended) => self.account(appended),
                Err(e) => self.hold(alert.clone(), &e),
            }
        } else {
            // Behind the ones that wait: the order is kept.
            let error = std::io::Error::other("the spool cannot be written");
            self.hold(alert.clone(), &error);
        }
        self.shared.wake.notify_one();
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.drain_backlog();
        self.shared.report_drops();
        self.shared.wake.notify_one();
        Ok(())
    }

    fn take_notices(&mut self) -> Vec<Alert> {
        std::mem::take(
            &mut *self
                .shared
                .notices
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
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
        if !self.backlog.is_empty() {
            tracing::error!(
                "{} alerts could not be written to the OTLP spool and are lost at exit",
                self.backlog.len()
            );
        }
        Ok(())
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        self.stop(RunState::Stop, Duration::from_secs(2));
    }
}
