//! Liveness a collector can check: every `heartbeat_secs` (30 s unless the config says
//! otherwise; the first one period after start-up), a `monitor.heartbeat` log record and the `monitor.up` gauge. A monitor that is
//! stopped, killed, blinded with its host, or cut off from the collector sends neither, and
//! the collector alerts on their absence (the README has the rule). `monitor.up` is 0 (and
//! the record a warning) when the process runs but its main loop has not gone round lately.
//!
//! Heartbeats are not spooled: a late one says nothing about the time it was due.

use opentelemetry_semantic_conventions::attribute as semconv;
use std::{sync::Arc, time::Duration};

use opentelemetry_proto::tonic::{
    collector::logs::v1::ExportLogsServiceRequest,
    common::v1::{any_value, AnyValue, KeyValue},
    logs::v1::LogRecord,
    resource::v1::Resource,
};
use tokio::{sync::watch, time::sleep};
use tracing::{debug, info, warn};

use super::{
    convert,
    exporter::{RunState, Shared},
    transport::Transport,
};
use crate::telemetry::metrics::{MetricKind, Point};

/// The `event_name` of heartbeat records.
pub const HEARTBEAT_EVENT_NAME: &str = "monitor.heartbeat";
/// A main loop that has not gone round for this long is not "up" (it ticks every second).
const STALL: Duration = Duration::from_secs(5);

fn attribute(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

/// Whether the main loop counts as up at `now_ns`, having last gone round at `beat_ns`
/// (0: not yet, as at start-up).
pub fn is_up(now_ns: u64, beat_ns: u64) -> bool {
    beat_ns == 0 || now_ns.saturating_sub(beat_ns) <= STALL.as_nanos() as u64
}

/// One heartbeat record.
pub fn record(now_ns: u64, started_ns: u64, beat_ns: u64, interval: Duration) -> LogRecord {
    let up = is_up(now_ns, beat_ns);
    let (number, text) = if up { (9, "INFO") } else { (13, "WARN") };
    let mut attributes = vec![
        attribute(
            "event.name", // deprecated in semantic conventions; kept, see alert.rs
            any_value::Value::StringValue(HEARTBEAT_EVENT_NAME.into()),
        ),
        attribute("monitor.up", any_value::Value::IntValue(i64::from(up))),
        attribute(
            "monitor.heartbeat.interval_secs",
            any_value::Value::IntValue(interval.as_secs() as i64),
        ),
        attribute(
            "monitor.uptime_secs",
            any_value::Value::IntValue((now_ns.saturating_sub(started_ns) / 1_000_000_000) as i64),
        ),
        attribute(
            semconv::PROCESS_PID,
            any_value::Value::IntValue(i64::from(std::process::id())),
        ),
    ];
    if beat_ns != 0 {
        attributes.push(attribute(
            "monitor.loop.beat_age_ms",
            any_value::Value::IntValue((now_ns.saturating_sub(beat_ns) / 1_000_000) as i64),
        ));
    }
    LogRecord {
        time_unix_nano: now_ns,
        observed_time_unix_nano: now_ns,
        severity_number: number,
        severity_text: text.into(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(if up {
                "monitor heartbeat: up".into()
            } else {
                "monitor heartbeat: the main loop is stalled".into()
            })),
        }),
        attributes,
        event_name: HEARTBEAT_EVENT_NAME.into(),
        ..LogRecord::default()
    }
}

/// The `monitor.up` gauge.
pub fn up_point(up: bool) -> Point {
    Point {
        name: "monitor.up",
        description:
            "1 while the monitor runs and its main loop goes round; sent with each heartbeat.",
        unit: "1",
        kind: MetricKind::Gauge,
        labels: Vec::new(),
        value: i64::from(up),
    }
}

fn logs_request(resource: &Resource, record: LogRecord) -> ExportLogsServiceRequest {
    let mut request = convert::logs_request(resource, []);
    request.resource_logs[0].scope_logs[0]
        .log_records
        .push(record);
    request
}

/// Sends a heartbeat every `interval` (the first one `interval` after start-up), until
/// stopped.
pub(super) async fn run(
    shared: Arc<Shared>,
    mut transport: Transport,
    resource: Resource,
    interval: Duration,
    started_ns: u64,
    mut state: watch::Receiver<RunState>,
) {
    let mut failing = false;
    loop {
        // The first one period after start-up: by then the loop has gone round, and a
        // collector that answers alerts as scripted (the tests') sees alerts first.
        tokio::select! {
            _ = sleep(interval) => {}
            changed = state.changed() => {
                if changed.is_err() || *state.borrow() != RunState::Running {
                    return;
                }
            }
        }
        let now = crate::event::clock::unix_now_ns();
        let beat = shared.metrics.last_beat();
        let record = record(now, started_ns, beat, interval);
        let up = is_up(now, beat);
        let logs = transport
            .export_logs(logs_request(&resource, record))
            .await
            .map(drop);
        let metrics = transport
            .export_metrics(convert::metrics_request(
                &resource,
                &[up_point(up)],
                started_ns,
                now,
            ))
            .await
            .map(drop);
        match logs.and(metrics) {
            Ok(()) => {
                if failing {
                    info!("OTLP heartbeat works again");
                }
                failing = false;
                debug!(up, "heartbeat sent");
            }
            Err(e) => {
                if !failing {
                    warn!("failed to send the heartbeat (will try again): {e}");
                }
                failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_main_loop_is_not_up() {
        let s = 1_000_000_000;
        assert!(is_up(100 * s, 0), "before the first beat");
        assert!(is_up(100 * s, 99 * s));
        assert!(!is_up(100 * s, 90 * s));
        let record = record(100 * s, 40 * s, 90 * s, Duration::from_secs(30));
        assert_eq!(record.event_name, HEARTBEAT_EVENT_NAME);
        assert_eq!(record.severity_text, "WARN");
        let up = record
            .attributes
            .iter()
            .find(|a| a.key == "monitor.up")
            .and_then(|a| a.value.clone())
            .and_then(|v| v.value);
        assert_eq!(up, Some(any_value::Value::IntValue(0)));
        assert_eq!(up_point(true).value, 1);
    }
}
