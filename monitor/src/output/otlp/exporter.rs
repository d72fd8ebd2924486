//! The export task: drains the spool to the collector batch by batch, retrying with back-off
//! until each batch is accepted or rejected for good; exports the metrics periodically; and
//! makes the spool durable every 100 ms.

use std::{
    path::PathBuf,
    sync::{atomic::Ordering, Arc, Mutex, MutexGuard},
    time::Duration,
};

use opentelemetry_proto::tonic::resource::v1::Resource;
use tokio::{
    sync::{watch, Notify},
    time::{sleep, sleep_until, Instant},
};
use tracing::{debug, error, info, warn};

use super::{
    convert,
    settings::{Backoff, OtlpSettings},
    transport::{ExportError, Status, Transport},
};
use crate::{
    event::alert::Alert,
    output::{
        sink::{notice, EXPORT_REJECTED},
        spool::{RecordId, Spool, Spooled},
    },
    telemetry::metrics::Metrics,
};

/// The dead letters: alerts the collector refused for good, kept in a spool of their own
/// in this subdirectory of the spool, until `monitor spool replay` sends them again.
pub const DEAD_LETTER_DIR: &str = "dead-letter";

/// Records per export request.
const MAX_BATCH_RECORDS: usize = 512;
/// Spooled bytes per export request (well below the 4 MiB a gRPC server takes by default).
const MAX_BATCH_BYTES: usize = 1 << 20;
/// How often the spool is made durable.
const SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// How long to look for work when no one says there is any (a safety net).
const IDLE_POLL: Duration = Duration::from_secs(1);

/// What the sink and the export task share.
pub struct Shared {
    pub spool: Mutex<Spool>,
    /// Rung by the sink when there is something new to send.
    pub wake: Notify,
    pub metrics: Arc<Metrics>,
    /// Alerts about the export itself, for the other outputs.
    pub notices: Mutex<Vec<Alert>>,
    /// Where the dead letters go, and their size limit.
    pub dead_letter_dir: PathBuf,
    pub dead_letter_max_bytes: u64,
    /// The last report of drops could not be spooled (warned once per spell).
    pub report_failing: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub fn spool(&self) -> MutexGuard<'_, Spool> {
        self.spool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Raises an alert through the other outputs.
    pub fn notice(&self, alert: Alert) {
        self.notices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(alert);
    }

    /// Spools a `spool-dropped` alert if the spool dropped anything since the last report,
    /// and raises one through the other outputs.
    pub fn report_drops(&self) {
        let report = self.spool().append_drop_report();
        match report {
            Ok(Some(alert)) => {
                self.metrics.alerts_spooled(1);
                self.notice(alert);
            }
            Ok(None) => {}
            Err(e) => {
                if !self.report_failing.swap(true, Ordering::Relaxed) {
                    warn!("failed to spool the report of dropped alerts (tried again later): {e}");
                }
                return;
            }
        }
        self.report_failing.store(false, Ordering::Relaxed);
    }

    /// Keeps alerts the collector refused for good in the dead letters. Alerts the full
    /// dead-letter store drops are counted with the spool's drops.
    fn dead_letter(&self, batch: &[Spooled]) -> anyhow::Result<()> {
        let mut dead = Spool::open(&self.dead_letter_dir, self.dead_letter_max_bytes)?;
        let mut lost = [0u64; 4];
        for spooled in batch {
            let appended = dead.append(&spooled.alert)?;
            for (l, n) in lost.iter_mut().zip(appended.dropped) {
                *l += n;
            }
        }
        dead.sync()?;
        drop(dead);
        if lost.iter().any(|&n| n > 0) {
            warn!(
                "the dead letters {} are full: dropped {lost:?} (low, medium, high, critical) \
                 of the oldest",
                self.dead_letter_dir.display()
            );
            self.spool().count_lost(lost);
            self.metrics.spool_dropped(lost);
        }
        self.metrics.alerts_dead_lettered(batch.len() as u64);
        Ok(())
    }

    /// Raises `export-rejected` with what the collector answered.
    fn report_rejection(&self, count: u64, reason: &str, status: Option<Status>, kept: bool) {
        let mut attributes = serde_json::Map::new();
        attributes.insert("monitor.export.rejected".into(), count.into());
        attributes.insert("monitor.export.response".into(), reason.into());
        match status {
            Some(Status::Http(code)) => {
                attributes.insert("http.response.status_code".into(), code.into());
            }
            Some(Status::Grpc(code)) => {
                attributes.insert("rpc.grpc.status_code".into(), code.into());
            }
            None => {}
        }
        if kept {
            attributes.insert(
                "monitor.export.dead_letter_dir".into(),
                self.dead_letter_dir.display().to_string().into(),
            );
        }
        self.notice(notice(EXPORT_REJECTED, attributes));
    }
}

/// What the export task is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    Running,
    /// Send what is spooled until the spool is empty or the deadline passes, then stop.
    Drain(Instant),
    /// Stop now; what is not sent stays in the spool.
    Stop,
}

/// Completes when the task must stop now: asked to, or the drain deadline passed.
async fn stopped(state: &mut watch::Receiver<RunState>) {
    loop {
        let current = *state.borrow_and_update();
        match current {
            RunState::Stop => return,
            RunState::Drain(deadline) => {
                tokio::select! {
                    _ = sleep_until(deadline) => return,
                    changed = state.changed() => if changed.is_err() { return },
                }
            }
            RunState::Running => {
                if state.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Runs until stopped. `transport` must have been built in this runtime.
pub async fn run(
    shared: Arc<Shared>,
    settings: OtlpSettings,
    transport: Transport,
    state: watch::Receiver<RunState>,
) {
    let resource = convert::resource(&settings.resource);
    let start_ns = unix_now_ns();
    let mut metrics_exporter = MetricsExporter {
        shared: shared.clone(),
        transport: transport.clone(),
        resource: resource.clone(),
        start_ns,
        failing: false,
    };
    let (heartbeat_transport, heartbeat_resource) = (transport.clone(), resource.clone());
    tokio::join!(
        export_logs(
            shared.clone(),
            transport,
            resource,
            settings.backoff,
            state.clone()
        ),
        export_metrics_periodically(
            &mut metrics_exporter,
            settings.metrics_interval,
            state.clone()
        ),
        sync_periodically(shared.clone(), state.clone()),
        super::heartbeat::run(
            shared.clone(),
            heartbeat_transport,
            heartbeat_resource,
            settings.heartbeat_interval,
            start_ns,
            state.clone()
        ),
    );
    if let RunState::Drain(deadline) = *state.borrow() {
        if tokio::time::timeout_at(deadline, metrics_exporter.export())
            .await
            .is_err()
        {
            debug!("no time left to export the final metrics");
        }
    }
    sync(&shared).await;
}

fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

async fn export_logs(
    shared: Arc<Shared>,
    mut transport: Transport,
    resource: Resource,
    backoff: Backoff,
    mut state: watch::Receiver<RunState>,
) {
    let max_retry_after = backoff.max.max(Duration::from_secs(60));
    let mut attempt: u32 = 0;
    loop {
        let current = *state.borrow();
        if current == RunState::Stop {
            return;
        }
        shared.report_drops();
        let batch = shared
            .spool()
            .next_batch(MAX_BATCH_RECORDS, MAX_BATCH_BYTES);
        let batch = match batch {
            Ok((batch, _unreadable)) => batch,
            Err(e) => {
                warn!("failed to read the OTLP spool: {e}");
                Vec::new()
            }
        };
        if batch.is_empty() {
            if matches!(current, RunState::Drain(_)) {
                return;
            }
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = state.changed() => {}
                _ = sleep(IDLE_POLL) => {}
            }
            continue;
        }
        let ids: Vec<RecordId> = batch.iter().map(|s| s.id).collect();
        let count = ids.len() as u64;
        let request = convert::logs_request(&resource, batch.iter().map(|s| &s.alert));
        loop {
            let outcome = tokio::select! {
                outcome = transport.export_logs(request.clone()) => outcome,
                _ = stopped(&mut state) => return,
            };
            match outcome {
                Ok(accepted) => {
                    let rejected = accepted.rejected.clamp(0, count as i64) as u64;
                    if rejected > 0 {
                        // A partial success does not say which: nothing to keep.
                        warn!(
                            "the OTLP collector rejected {rejected} of {count} alerts: {}",
                            accepted.message
                        );
                        shared.metrics.alerts_rejected(rejected);
                        shared.report_rejection(rejected, &accepted.message, None, false);
                    }
                    shared.metrics.alerts_exported(count - rejected);
                    if attempt > 0 {
                        info!("OTLP export works again after {attempt} failed tries");
                    }
                    attempt = 0;
                    break;
                }
                Err(ExportError::Retryable {
                    reason,
                    retry_after,
                }) => {
                    shared.metrics.export_retry();
                    let delay = match retry_after {
                        Some(delay) => delay.min(max_retry_after),
                        None => backoff.delay(attempt),
                    };
                    if attempt == 0 {
                        warn!(
                            "failed to export {count} alerts, retrying (they wait in the \
                             spool): {reason}"
                        );
                    } else {
                        debug!(
                            "export try {} failed, next in {delay:?}: {reason}",
                            attempt + 1
                        );
                    }
                    attempt = attempt.saturating_add(1);
                    tokio::select! {
                        _ = sleep(delay) => {}
                        _ = stopped(&mut state) => return,
                    }
                }
                Err(ExportError::Permanent { reason, status }) => {
                    if let Err(e) = shared.dead_letter(&batch) {
                        // They stay in the spool, and are offered again after a pause.
                        warn!(
                            "the OTLP collector rejected {count} alerts ({reason}) and they \
                             could not be kept in the dead letters {}: {e:#}; they stay in the \
                             spool",
                            shared.dead_letter_dir.display()
                        );
                        shared.metrics.export_retry();
                        let delay = backoff.delay(attempt);
                        attempt = attempt.saturating_add(1);
                        tokio::select! {
                            _ = sleep(delay) => {}
                            _ = stopped(&mut state) => return,
                        }
                        continue;
                    }
                    error!(
                        "the OTLP collector rejected {count} alerts for good: {reason}; they \
                         are kept in {}: send them again with `monitor spool replay`",
                        shared.dead_letter_dir.display()
                    );
                    shared.metrics.alerts_rejected(count);
                    shared.report_rejection(count, &reason, status, true);
                    attempt = 0;
                    break;
                }
            }
        }
        drop(batch);
        if let Err(e) = shared.spool().ack(&ids) {
            warn!("failed to mark exported alerts in the spool (they may be sent again): {e}");
        }
    }
}

struct MetricsExporter {
    shared: Arc<Shared>,
    transport: Transport,
    resource: Resource,
    start_ns: u64,
    failing: bool,
}

impl MetricsExporter {
    /// One try: metrics are not spooled, the next export carries the same counters.
    async fn export(&mut self) {
        let points = self.shared.metrics.snapshot();
        let request =
            convert::metrics_request(&self.resource, &points, self.start_ns, unix_now_ns());
        match self.transport.export_metrics(request).await {
            Ok(accepted) => {
                if accepted.rejected > 0 {
                    debug!(
                        "the OTLP collector rejected {} metric points: {}",
                        accepted.rejected, accepted.message
                    );
                }
                if self.failing {
                    info!("OTLP metrics export works again");
                }
                self.failing = false;
            }
            Err(e) => {
                if !self.failing {
                    warn!("failed to export metrics (will try again): {e}");
                } else {
                    debug!("failed to export metrics: {e}");
                }
                self.failing = true;
            }
        }
    }
}

async fn export_metrics_periodically(
    exporter: &mut MetricsExporter,
    interval: Duration,
    mut state: watch::Receiver<RunState>,
) {
    loop {
        tokio::select! {
            _ = sleep(interval) => exporter.export().await,
            changed = state.changed() => {
                if changed.is_err() || *state.borrow() != RunState::Running {
                    return;
                }
            }
        }
    }
}

async fn sync(shared: &Shared) {
    let pending = shared.spool().pending_sync();
    if pending.is_empty() {
        return;
    }
    match tokio::task::spawn_blocking(move || pending.run()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!("failed to sync the OTLP spool to disk: {e}"),
        Err(e) => warn!("failed to sync the OTLP spool to disk: {e}"),
    }
}

async fn sync_periodically(shared: Arc<Shared>, mut state: watch::Receiver<RunState>) {
    loop {
        tokio::select! {
            _ = sleep(SYNC_INTERVAL) => {}
            changed = state.changed() => {
                if changed.is_err() || *state.borrow() != RunState::Running {
                    return;
                }
            }
        }
        sync(&shared).await;
    }
}
