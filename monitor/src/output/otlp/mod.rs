//! OpenTelemetry export: alerts as OTLP log records and the monitor's counters as OTLP
//! metrics, over HTTP/protobuf or gRPC, with no alert lost.
//!
//! The SDK's batch processor drops records when its queue is full or the collector is down,
//! so the requests are built here from `opentelemetry-proto` and every alert goes through
//! the durable [`crate::output::spool`] first: an alert leaves the spool only once the collector
//! accepted it (or rejected it for good). Metrics are best effort and not spooled.
//!
//! Wiring, for `monitor run`: flatten [`OtlpArgs`] into the command's flags, resolve with
//! [`OtlpSettings::resolve_from_process_env`] (flags, then `outputs.otlp` of the config file
//! as [`OtlpFileSettings`], then `OTEL_*`), and when that gives settings, add
//! [`OtlpSink::start`]`(settings, &dir, max_bytes, metrics)` to the sinks, with
//! `(dir, max_bytes) = args.spool(file)`.

mod convert;
mod exporter;
mod heartbeat;
mod replay;
mod settings;
mod sink;
mod transport;

#[cfg(test)]
mod tests;

pub use convert::{any_value, log_record, logs_request, metrics_request, EVENT_NAME, SCOPE_NAME};
pub use exporter::DEAD_LETTER_DIR;
pub use heartbeat::HEARTBEAT_EVENT_NAME;
pub use replay::{replay, Replayed};
pub use settings::{
    percent_decode, process_env, Backoff, OtlpArgs, OtlpFileSettings, OtlpSettings, Protocol,
    DEFAULT_SPOOL_DIR, DEFAULT_SPOOL_MAX_BYTES,
};
pub use sink::{OtlpSink, BACKLOG_LIMIT, CLOSE_TIMEOUT};
pub use transport::{Accepted, ExportError, Status, Transport};
