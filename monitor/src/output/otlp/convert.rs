//! Alerts and metrics as OTLP protobuf messages.

use opentelemetry_proto::tonic::{
    collector::{logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest},
    common::v1::{any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
    metrics::v1::{
        metric, number_data_point, AggregationTemporality, Gauge, Metric, NumberDataPoint,
        ResourceMetrics, ScopeMetrics, Sum,
    },
    resource::v1::Resource,
};
use serde_json::Value;

use crate::{
    event::alert::Alert,
    telemetry::metrics::{MetricKind, Point},
};

/// The `event_name` of every alert record (and its `event.name` attribute).
pub const EVENT_NAME: &str = "monitor.alert";
/// The instrumentation scope of everything the monitor exports.
pub const SCOPE_NAME: &str = "monitor";

fn string_value(text: impl Into<String>) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(text.into())),
    }
}

/// A JSON value as an OTLP value: strings, ints (doubles beyond i64), doubles, bools,
/// arrays as ArrayValue, objects as KeyValueList, null as an empty value.
pub fn any_value(value: &Value) -> AnyValue {
    let value = match value {
        Value::Null => None,
        Value::Bool(b) => Some(any_value::Value::BoolValue(*b)),
        Value::Number(n) => Some(match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => any_value::Value::IntValue(i),
            (None, Some(f)) => any_value::Value::DoubleValue(f),
            (None, None) => any_value::Value::StringValue(n.to_string()),
        }),
        Value::String(s) => Some(any_value::Value::StringValue(s.clone())),
        Value::Array(items) => Some(any_value::Value::ArrayValue(ArrayValue {
            values: items.iter().map(any_value).collect(),
        })),
        Value::Object(map) => Some(any_value::Value::KvlistValue(KeyValueList {
            values: map
                .iter()
                .map(|(k, v)| key_value(k, any_value(v)))
                .collect(),
        })),
    };
    AnyValue { value }
}

fn key_value(key: &str, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(value),
        ..KeyValue::default()
    }
}

fn unix_nanos(ns: i128) -> u64 {
    u64::try_from(ns.max(0)).unwrap_or(u64::MAX)
}

/// One alert as a log record: the keys of its JSON line as attributes (but `time` and
/// `observed_time`, which are the record's own timestamps), severity from the alert's.
pub fn log_record(alert: &Alert) -> LogRecord {
    let Value::Object(map) = alert.to_json() else {
        unreachable!("an alert's JSON is an object")
    };
    let attributes = map
        .iter()
        .filter(|(key, _)| !matches!(key.as_str(), "time" | "observed_time"))
        .map(|(key, value)| key_value(key, any_value(value)))
        .collect();
    LogRecord {
        time_unix_nano: unix_nanos(alert.time_unix_ns),
        observed_time_unix_nano: unix_nanos(alert.observed_unix_ns),
        severity_number: alert.severity.otel_number(),
        severity_text: alert.severity.otel_text().to_string(),
        body: Some(string_value(format!(
            "{} ({}, {})",
            alert.rule,
            alert.severity.name(),
            alert.action.name()
        ))),
        attributes,
        event_name: EVENT_NAME.to_string(),
        ..LogRecord::default()
    }
}

/// The resource from resolved attributes.
pub fn resource(attributes: &[(String, String)]) -> Resource {
    Resource {
        attributes: attributes
            .iter()
            .map(|(k, v)| key_value(k, string_value(v.as_str())))
            .collect(),
        ..Resource::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE_NAME.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        ..InstrumentationScope::default()
    }
}

/// One export request for a batch of alerts.
pub fn logs_request<'a>(
    resource: &Resource,
    alerts: impl IntoIterator<Item = &'a Alert>,
) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource.clone()),
            scope_logs: vec![ScopeLogs {
                scope: Some(scope()),
                log_records: alerts.into_iter().map(log_record).collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// One export request for a snapshot of the counters: monotonic cumulative sums since
/// `start_unix_ns`, and gauges.
pub fn metrics_request(
    resource: &Resource,
    points: &[Point],
    start_unix_ns: u64,
    now_unix_ns: u64,
) -> ExportMetricsServiceRequest {
    let mut metrics: Vec<Metric> = Vec::new();
    for point in points {
        let data_point = NumberDataPoint {
            attributes: point
                .labels
                .iter()
                .map(|(k, v)| key_value(k, string_value(v.as_str())))
                .collect(),
            start_time_unix_nano: if point.kind == MetricKind::Counter {
                start_unix_ns
            } else {
                0
            },
            time_unix_nano: now_unix_ns,
            value: Some(number_data_point::Value::AsInt(point.value)),
            ..NumberDataPoint::default()
        };
        if let Some(metric) = metrics.iter_mut().find(|m| m.name == point.name) {
            match &mut metric.data {
                Some(metric::Data::Sum(sum)) => sum.data_points.push(data_point),
                Some(metric::Data::Gauge(gauge)) => gauge.data_points.push(data_point),
                _ => {}
            }
            continue;
        }
        let data = match point.kind {
            MetricKind::Counter => metric::Data::Sum(Sum {
                data_points: vec![data_point],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            }),
            MetricKind::Gauge => metric::Data::Gauge(Gauge {
                data_points: vec![data_point],
            }),
        };
        metrics.push(Metric {
            name: point.name.to_string(),
            description: point.description.to_string(),
            unit: point.unit.to_string(),
            data: Some(data),
            ..Metric::default()
        });
    }
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::alert::{Action, Severity};

    #[test]
    fn json_values_map_to_otlp_values() {
        let v = |json: Value| any_value(&json).value;
        assert_eq!(v(Value::from(-3)), Some(any_value::Value::IntValue(-3)));
        assert_eq!(
            v(Value::from(u64::MAX)),
            Some(any_value::Value::DoubleValue(u64::MAX as f64))
        );
        assert_eq!(
            v(Value::from(1.5)),
            Some(any_value::Value::DoubleValue(1.5))
        );
        assert_eq!(
            v(Value::from(true)),
            Some(any_value::Value::BoolValue(true))
        );
        assert_eq!(v(Value::Null), None);
        assert_eq!(
            v(serde_json::json!(["a", 1])),
            Some(any_value::Value::ArrayValue(ArrayValue {
                values: vec![string_value("a"), any_value(&Value::from(1))]
            }))
        );
    }

    #[test]
    fn record_has_name_severity_and_times() {
        let alert = Alert {
            rule: "exec-not-allowed".into(),
            severity: Severity::Critical,
            action: Action::Killed,
            profile: None,
            time_unix_ns: 5,
            observed_unix_ns: 7,
            count: 2,
            uid: "u".into(),
            attributes: serde_json::Map::new(),
        };
        let record = log_record(&alert);
        assert_eq!(record.event_name, "monitor.alert");
        assert_eq!(record.severity_number, 21);
        assert_eq!(record.severity_text, "FATAL");
        assert_eq!(
            (record.time_unix_nano, record.observed_time_unix_nano),
            (5, 7)
        );
        let keys: Vec<&str> = record.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "event.name",
                "log.record.uid",
                "monitor.action",
                "monitor.count",
                "security_rule.name",
                "severity"
            ]
        );
    }

    #[test]
    fn counters_are_cumulative_monotonic_sums() {
        let metrics = crate::telemetry::metrics::Metrics::new();
        metrics.event("exec");
        metrics.set_processes(3);
        let request = metrics_request(&resource(&[]), &metrics.snapshot(), 10, 20);
        let scope = &request.resource_metrics[0].scope_metrics[0];
        let events = scope
            .metrics
            .iter()
            .find(|m| m.name == "monitor.events")
            .unwrap();
        let Some(metric::Data::Sum(sum)) = &events.data else {
            panic!("a sum: {events:?}")
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        assert_eq!(sum.data_points.len(), 8);
        assert_eq!(sum.data_points[0].start_time_unix_nano, 10);
        let processes = scope
            .metrics
            .iter()
            .find(|m| m.name == "monitor.processes")
            .unwrap();
        assert!(matches!(&processes.data, Some(metric::Data::Gauge(g))
            if g.data_points[0].value == Some(number_data_point::Value::AsInt(3))));
    }
}
