//! The exporter against in-process receivers, over HTTP and gRPC: the exact record, headers
//! and resource; outages, restarts, retryable and permanent failures, a full spool and a
//! torn spool.

mod receiver;

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    common::v1::{any_value, AnyValue},
    logs::v1::LogRecord,
    metrics::v1::{metric, number_data_point},
};
use receiver::{free_port, Receiver, Reply, TestCertificates};
use serde_json::{json, Map, Value};

use super::{OtlpArgs, OtlpSettings, OtlpSink, Protocol};
use crate::{
    event::alert::{Action, Alert, Severity},
    output::sink::AlertSink,
    telemetry::metrics::Metrics,
};

const WAIT: Duration = Duration::from_secs(15);

use crate::test_support::TempDir;

fn sample_alert(severity: Severity) -> Alert {
    let Value::Object(attributes) = json!({
        "process.pid": 4242,
        "process.parent_pid": 1,
        "process.executable.path": "/usr/bin/python3.11",
        "process.command_args": ["python3", "-m", "vllm.entrypoints.api_server"],
        "process.command_args.truncated": true,
        "user.id": 1000,
        "container.id": "0123456789ab",
        // The runtime's and Kubernetes' keys (crate::host::workload) go through unchanged too.
        "container.name": "server",
        "container.image.name": "registry.example.com/inference/vllm",
        "container.image.tag": "0.6.3",
        "container.image.id": "sha256:77aa",
        "container.runtime": "containerd",
        "k8s.pod.name": "vllm-0",
        "k8s.pod.uid": "0a1b2c3d-4e5f-6789-abcd-ef0123456789",
        "k8s.namespace.name": "inference",
        "k8s.container.name": "server",
        "k8s.node.name": "gpu-node-17",
        "monitor.score": 0.75,
        "event.kind": "exec",
    }) else {
        unreachable!()
    };
    Alert {
        rule: "exec-not-allowed".into(),
        severity,
        action: Action::WouldKill,
        profile: Some("vllm".into()),
        time_unix_ns: 1_722_000_000_123_456_789,
        observed_unix_ns: 1_722_000_000_223_456_789,
        count: 3,
        uid: crate::event::alert::new_uid(),
        attributes,
    }
}

fn numbered_alert(n: usize) -> Alert {
    let mut attributes = Map::new();
    attributes.insert("process.pid".into(), Value::from(n));
    Alert {
        rule: "test-rule".into(),
        severity: [
            Severity::Low,
            Severity::Medium,
            Severity::High,
            Severity::Critical,
        ][n % 4],
        action: Action::Alert,
        profile: None,
        time_unix_ns: 1_722_000_000_000_000_000 + n as i128,
        observed_unix_ns: 1_722_000_000_000_000_000 + n as i128,
        count: 1,
        uid: crate::event::alert::new_uid(),
        attributes,
    }
}

/// Settings as `monitor run --otlp-endpoint ... --otlp-protocol ...` with `env` as the
/// process environment, and short delays for the tests.
fn settings(protocol: Protocol, addr: SocketAddr, env: &[(&str, &str)]) -> OtlpSettings {
    settings_for(protocol, &format!("http://{addr}"), env)
}

fn settings_for(protocol: Protocol, endpoint: &str, env: &[(&str, &str)]) -> OtlpSettings {
    let args = OtlpArgs {
        otlp_endpoint: Some(endpoint.to_string()),
        otlp_protocol: Some(protocol),
        ..OtlpArgs::default()
    };
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut settings = OtlpSettings::resolve(&args, None, &env).unwrap().unwrap();
    settings.backoff.initial = Duration::from_millis(50);
    settings.backoff.max = Duration::from_millis(300);
    settings.metrics_interval = Duration::from_millis(200);
    settings.timeout = Duration::from_secs(3);
    settings
}

fn start(settings: OtlpSettings, dir: &Path, max_bytes: u64, metrics: &Arc<Metrics>) -> OtlpSink {
    OtlpSink::start(settings, dir, max_bytes, metrics.clone()).unwrap()
}

/// A test's spool directory and metrics.
fn spool(name: &str) -> (TempDir, Arc<Metrics>) {
    (TempDir::new(name), Arc::new(Metrics::new()))
}

/// A sink to `addr` over `protocol` (no OTLP environment), spooling in `dir` up to
/// `max_bytes`.
fn sink(
    protocol: Protocol,
    addr: SocketAddr,
    dir: &TempDir,
    max_bytes: u64,
    metrics: &Arc<Metrics>,
) -> OtlpSink {
    start(settings(protocol, addr, &[]), &dir.0, max_bytes, metrics)
}

/// A log record attribute's value back as JSON, to compare with the alert's JSON line.
fn json_of(value: &AnyValue) -> Value {
    match value.value.as_ref() {
        None => Value::Null,
        Some(any_value::Value::StringValue(s)) => json!(s),
        Some(any_value::Value::IntValue(i)) => json!(i),
        Some(any_value::Value::DoubleValue(d)) => json!(d),
        Some(any_value::Value::BoolValue(b)) => json!(b),
        Some(any_value::Value::ArrayValue(a)) => {
            Value::Array(a.values.iter().map(json_of).collect())
        }
        Some(other) => panic!("unexpected value {other:?}"),
    }
}

fn attribute<'a>(record: &'a LogRecord, key: &str) -> Option<&'a any_value::Value> {
    record
        .attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn block_in_place<R>(f: impl FnOnce() -> R) -> R {
    // Closing or dropping a sink blocks for a moment: keep the receiver's runtime going.
    tokio::task::block_in_place(f)
}

async fn exact_record_headers_and_resource(protocol: Protocol) {
    let receiver = match protocol {
        Protocol::Http => Receiver::http("127.0.0.1:0".parse().unwrap()).await,
        Protocol::Grpc => Receiver::grpc("127.0.0.1:0".parse().unwrap()).await,
    };
    let (dir, metrics) = spool("exact");
    let env = [
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "X-Api-Key=s3cr%3Dt,x-tenant=team%20a",
        ),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=staging",
        ),
        ("OTEL_SERVICE_NAME", "guard-test"),
    ];
    let mut sink = start(
        settings(protocol, receiver.addr, &env),
        &dir.0,
        1 << 20,
        &metrics,
    );
    let alert = sample_alert(Severity::High);
    sink.send(&alert).unwrap();
    sink.flush().unwrap();
    receiver
        .wait_for("the alert", WAIT, |r| r.records().len() == 1)
        .await;

    let record = &receiver.records()[0];
    assert_eq!(record.event_name, "monitor.alert");
    assert_eq!(record.severity_number, 17);
    assert_eq!(record.severity_text, "ERROR");
    assert_eq!(record.time_unix_nano, 1_722_000_000_123_456_789);
    assert_eq!(record.observed_time_unix_nano, 1_722_000_000_223_456_789);
    // Every key of the JSON line but the two timestamps, with the same values.
    let Value::Object(mut expected) = alert.to_json() else {
        unreachable!()
    };
    expected.remove("time");
    expected.remove("observed_time");
    let got: Map<String, Value> = record
        .attributes
        .iter()
        .map(|kv| (kv.key.clone(), json_of(kv.value.as_ref().unwrap())))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(got["event.name"], "monitor.alert");
    assert_eq!(got["security_rule.name"], "exec-not-allowed");
    assert_eq!(got["severity"], "high");
    assert_eq!(got["monitor.action"], "would-kill");
    assert_eq!(got["monitor.count"], 3);
    assert_eq!(got["monitor.profile"], "vllm");
    assert_eq!(got["log.record.uid"], alert.uid.as_str());
    // Types, not only values.
    assert!(matches!(
        attribute(record, "process.pid"),
        Some(any_value::Value::IntValue(4242))
    ));
    assert!(
        matches!(attribute(record, "monitor.score"), Some(any_value::Value::DoubleValue(d)) if *d == 0.75)
    );
    assert!(matches!(
        attribute(record, "process.command_args.truncated"),
        Some(any_value::Value::BoolValue(true))
    ));
    assert!(
        matches!(attribute(record, "process.command_args"), Some(any_value::Value::ArrayValue(a)) if a.values.len() == 3)
    );

    let (request, headers) = receiver.with(|c| {
        let received = &c.logs[0];
        (received.request.clone(), received.headers.clone())
    });
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("x-api-key").as_deref(), Some("s3cr=t"));
    assert_eq!(header("x-tenant").as_deref(), Some("team a"));
    match protocol {
        Protocol::Http => {
            assert_eq!(
                header("content-type").as_deref(),
                Some("application/x-protobuf")
            );
            assert_eq!(receiver.with(|c| c.logs[0].path.clone()), "/v1/logs");
        }
        Protocol::Grpc => {
            assert!(header("content-type")
                .unwrap()
                .starts_with("application/grpc"));
        }
    }
    let resource_logs = &request.resource_logs[0];
    let resource: HashMap<String, Value> = resource_logs
        .resource
        .as_ref()
        .unwrap()
        .attributes
        .iter()
        .map(|kv| (kv.key.clone(), json_of(kv.value.as_ref().unwrap())))
        .collect();
    assert_eq!(resource["service.name"], "guard-test");
    assert_eq!(resource["service.version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(resource["deployment.environment.name"], "staging");
    let mut hostname = [0u8; 256];
    // SAFETY: the buffer is valid for its length.
    unsafe { libc::gethostname(hostname.as_mut_ptr().cast(), hostname.len()) };
    let end = hostname.iter().position(|&b| b == 0).unwrap();
    assert_eq!(
        resource["host.name"],
        String::from_utf8_lossy(&hostname[..end]).as_ref()
    );
    if let Ok(id) = std::fs::read_to_string("/etc/machine-id") {
        assert_eq!(resource["host.id"], id.trim());
    }
    let scope = resource_logs.scope_logs[0].scope.as_ref().unwrap();
    assert_eq!(scope.name, "monitor");

    // Metrics go to the metrics endpoint, with the same headers and resource.
    metrics.event("exec");
    metrics.set_processes(7);
    block_in_place(|| sink.close()).unwrap();
    let metrics_requests = receiver.with(|c| c.metrics.clone());
    let last = metrics_requests
        .last()
        .expect("metrics were exported at close");
    if protocol == Protocol::Http {
        assert_eq!(last.path, "/v1/metrics");
    }
    assert_eq!(last.header("x-api-key"), Some("s3cr=t"));
    let metrics_list = &last.request.resource_metrics[0].scope_metrics[0].metrics;
    let find = |name: &str| metrics_list.iter().find(|m| m.name == name).unwrap();
    let Some(metric::Data::Sum(exported)) = &find("monitor.alerts.exported").data else {
        panic!("a sum")
    };
    assert_eq!(
        exported.data_points[0].value,
        Some(number_data_point::Value::AsInt(1))
    );
    let Some(metric::Data::Gauge(processes)) = &find("monitor.processes").data else {
        panic!("a gauge")
    };
    assert_eq!(
        processes.data_points[0].value,
        Some(number_data_point::Value::AsInt(7))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_exports_the_exact_record() {
    exact_record_headers_and_resource(Protocol::Http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_exports_the_exact_record() {
    exact_record_headers_and_resource(Protocol::Grpc).await;
}

async fn receiver_at(protocol: Protocol, addr: SocketAddr) -> Receiver {
    match protocol {
        Protocol::Http => Receiver::http(addr).await,
        Protocol::Grpc => Receiver::grpc(addr).await,
    }
}

async fn outage_then_collector_starts(protocol: Protocol) {
    let addr = free_port();
    let (dir, metrics) = spool("outage");
    let mut sink = start(settings(protocol, addr, &[]), &dir.0, 1 << 20, &metrics);
    let alerts: Vec<Alert> = (0..40).map(numbered_alert).collect();
    for alert in &alerts {
        sink.send(alert).unwrap();
    }
    sink.flush().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.pending(), 40);
    assert!(metrics.counter("monitor.alerts.export.retries") > 0);
    let receiver = receiver_at(protocol, addr).await;
    let sent: BTreeSet<String> = alerts.iter().map(|a| a.uid.clone()).collect();
    receiver
        .wait_for("all 40 alerts", WAIT, |r| {
            r.uids().into_iter().collect::<BTreeSet<_>>() == sent
        })
        .await;
    let start = Instant::now();
    while sink.pending() > 0 && start.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sink.pending(), 0);
    assert_eq!(metrics.counter("monitor.alerts.exported"), 40);
    block_in_place(|| sink.close()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_outage_loses_nothing() {
    outage_then_collector_starts(Protocol::Http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_outage_loses_nothing() {
    outage_then_collector_starts(Protocol::Grpc).await;
}

async fn restart_mid_outage(protocol: Protocol) {
    let addr = free_port();
    let (dir, metrics) = spool("restart");
    let mut first = start(settings(protocol, addr, &[]), &dir.0, 1 << 20, &metrics);
    let mut alerts: Vec<Alert> = (0..25).map(numbered_alert).collect();
    for alert in &alerts {
        first.send(alert).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The monitor dies mid-outage (no close).
    block_in_place(|| drop(first));
    let mut second = start(settings(protocol, addr, &[]), &dir.0, 1 << 20, &metrics);
    assert_eq!(second.pending(), 25);
    let later: Vec<Alert> = (25..30).map(numbered_alert).collect();
    for alert in &later {
        second.send(alert).unwrap();
    }
    alerts.extend(later);
    let receiver = receiver_at(protocol, addr).await;
    let sent: BTreeSet<String> = alerts.iter().map(|a| a.uid.clone()).collect();
    receiver
        .wait_for("all 30 alerts", WAIT, |r| {
            r.uids().into_iter().collect::<BTreeSet<_>>() == sent
        })
        .await;
    // At least once: duplicates only ever carry a uid that was sent.
    assert!(receiver.uids().iter().all(|u| sent.contains(u)));
    block_in_place(|| second.close()).unwrap();
    assert_eq!(second.pending(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_restart_mid_outage_loses_nothing() {
    restart_mid_outage(Protocol::Http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_restart_mid_outage_loses_nothing() {
    restart_mid_outage(Protocol::Grpc).await;
}

async fn retryable_then_success(protocol: Protocol, fail: Reply) {
    let receiver = receiver_at(protocol, "127.0.0.1:0".parse().unwrap()).await;
    receiver.script([fail.clone(), fail]);
    let (dir, metrics) = spool("retry");
    let mut sink = sink(protocol, receiver.addr, &dir, 1 << 20, &metrics);
    let alerts: Vec<Alert> = (0..3).map(numbered_alert).collect();
    for alert in &alerts {
        sink.send(alert).unwrap();
    }
    receiver
        .wait_for("the alerts after two failures", WAIT, |r| {
            r.uids().len() >= 3
        })
        .await;
    assert!(receiver.with(|c| c.logs.len()) >= 3);
    assert_eq!(metrics.counter("monitor.alerts.export.retries"), 2);
    assert_eq!(metrics.counter("monitor.alerts.rejected"), 0);
    block_in_place(|| sink.close()).unwrap();
    assert_eq!(sink.pending(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_503_is_retried() {
    let fail = Reply::Fail {
        http: 503,
        grpc: tonic::Code::Unavailable,
        retry_after: Some(0),
    };
    retryable_then_success(Protocol::Http, fail).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_429_is_retried() {
    let fail = Reply::Fail {
        http: 429,
        grpc: tonic::Code::ResourceExhausted,
        retry_after: None,
    };
    retryable_then_success(Protocol::Http, fail).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unavailable_is_retried() {
    let fail = Reply::Fail {
        http: 503,
        grpc: tonic::Code::Unavailable,
        retry_after: None,
    };
    retryable_then_success(Protocol::Grpc, fail).await;
}

async fn permanent_failure_is_dead_lettered(protocol: Protocol) {
    let receiver = receiver_at(protocol, "127.0.0.1:0".parse().unwrap()).await;
    receiver.script([Reply::Fail {
        http: 400,
        grpc: tonic::Code::InvalidArgument,
        retry_after: None,
    }]);
    let (dir, metrics) = spool("permanent");
    let settings = settings(protocol, receiver.addr, &[]);
    let mut sink = start(settings.clone(), &dir.0, 1 << 20, &metrics);
    let rejected = numbered_alert(1);
    sink.send(&rejected).unwrap();
    let start = Instant::now();
    while metrics.counter("monitor.alerts.dead_lettered") == 0 && start.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metrics.counter("monitor.alerts.rejected"), 1);
    assert_eq!(metrics.counter("monitor.alerts.dead_lettered"), 1);
    assert_eq!(metrics.counter("monitor.alerts.export.retries"), 0);
    // Raised through the other outputs, with the collector's answer.
    let notices = sink.take_notices();
    let notice = notices
        .iter()
        .find(|n| n.rule == "export-rejected")
        .unwrap_or_else(|| panic!("an export-rejected notice: {notices:?}"));
    assert_eq!(notice.severity, Severity::High);
    assert_eq!(notice.attributes["monitor.export.rejected"], 1);
    let response = notice.attributes["monitor.export.response"]
        .as_str()
        .unwrap();
    match protocol {
        Protocol::Http => {
            assert_eq!(notice.attributes["http.response.status_code"], 400);
            assert!(response.contains("400"), "{response}");
        }
        Protocol::Grpc => {
            assert_eq!(notice.attributes["rpc.grpc.status_code"], 3);
            assert!(response.contains("InvalidArgument"), "{response}");
        }
    }
    let dead_letters = dir.0.join(super::DEAD_LETTER_DIR);
    assert_eq!(
        notice.attributes["monitor.export.dead_letter_dir"],
        dead_letters.display().to_string()
    );
    // Out of the spool: it does not block the next alert.
    let next = numbered_alert(2);
    sink.send(&next).unwrap();
    receiver
        .wait_for("the next alert", WAIT, |r| r.uids() == [next.uid.clone()])
        .await;
    block_in_place(|| sink.close()).unwrap();
    assert_eq!(sink.pending(), 0);
    assert_eq!(
        receiver.with(|c| c.logs.len()),
        2,
        "the rejected batch is not resent by the exporter"
    );
    // The operator replays the dead letters: the collector takes them now.
    let replayed = super::replay(&settings, &dir.0).await.unwrap();
    assert_eq!(replayed.sent, 1);
    receiver
        .wait_for("the replayed alert", WAIT, |r| {
            r.uids().contains(&rejected.uid)
        })
        .await;
    // Nothing is left to replay.
    assert_eq!(super::replay(&settings, &dir.0).await.unwrap().sent, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_400_is_dead_lettered_reported_and_replayable() {
    permanent_failure_is_dead_lettered(Protocol::Http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_invalid_argument_is_dead_lettered_reported_and_replayable() {
    permanent_failure_is_dead_lettered(Protocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_the_collector_still_refuses_keeps_the_dead_letters() {
    let receiver = Receiver::http("127.0.0.1:0".parse().unwrap()).await;
    let refuse = || Reply::Fail {
        http: 400,
        grpc: tonic::Code::InvalidArgument,
        retry_after: None,
    };
    receiver.script([refuse(), refuse()]);
    let (dir, metrics) = spool("replay-refused");
    let settings = settings(Protocol::Http, receiver.addr, &[]);
    let mut sink = start(settings.clone(), &dir.0, 1 << 20, &metrics);
    let rejected = numbered_alert(1);
    sink.send(&rejected).unwrap();
    let start = Instant::now();
    while metrics.counter("monitor.alerts.dead_lettered") == 0 && start.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    block_in_place(|| sink.close()).unwrap();
    drop(sink);
    let err = super::replay(&settings, &dir.0)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("400") && err.contains("1 still kept"), "{err}");
    // Kept: the next replay sends it.
    assert_eq!(super::replay(&settings, &dir.0).await.unwrap().sent, 1);
    assert!(receiver.uids().contains(&rejected.uid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_500_and_grpc_internal_are_retried_until_delivered() {
    for protocol in [Protocol::Http, Protocol::Grpc] {
        let receiver = receiver_at(protocol, "127.0.0.1:0".parse().unwrap()).await;
        let fail = |http, grpc| Reply::Fail {
            http,
            grpc,
            retry_after: None,
        };
        receiver.script([
            fail(500, tonic::Code::Internal),
            fail(429, tonic::Code::ResourceExhausted),
            fail(500, tonic::Code::Unknown),
        ]);
        let (dir, metrics) = spool("retry-5xx");
        let mut sink = sink(protocol, receiver.addr, &dir, 1 << 20, &metrics);
        let alert = numbered_alert(7);
        sink.send(&alert).unwrap();
        receiver
            .wait_for("the alert after three refusals", WAIT, |r| {
                r.uids() == [alert.uid.clone()]
            })
            .await;
        assert_eq!(metrics.counter("monitor.alerts.export.retries"), 3);
        assert_eq!(metrics.counter("monitor.alerts.rejected"), 0);
        block_in_place(|| sink.close()).unwrap();
        assert!(sink.take_notices().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_the_spool_cannot_take_wait_in_memory_and_are_delivered() {
    let receiver = Receiver::http("127.0.0.1:0".parse().unwrap()).await;
    let dir = TempDir::new("unwritable");
    let spool_dir = dir.0.join("spool");
    let metrics = Arc::new(Metrics::new());
    // Segments of 1 KiB: a new segment file every few alerts.
    let mut sink = start(
        settings(Protocol::Http, receiver.addr, &[]),
        &spool_dir,
        16 << 10,
        &metrics,
    );
    // The spool dir disappears (a real failure: every new segment fails with ENOENT)...
    let away = dir.0.join("away");
    std::fs::rename(&spool_dir, &away).unwrap();
    let alerts: Vec<Alert> = (0..20).map(numbered_alert).collect();
    for alert in &alerts {
        sink.send(alert).unwrap();
    }
    sink.flush().unwrap();
    assert!(sink.backlog() > 0, "alerts wait in memory");
    assert!(metrics.counter("monitor.spool.write_failed") > 0);
    let notices = sink.take_notices();
    let failed: Vec<&Alert> = notices
        .iter()
        .filter(|n| n.rule == "spool-write-failed")
        .collect();
    assert_eq!(failed.len(), 1, "once per spell: {notices:?}");
    assert!(failed[0].attributes["error.type"]
        .as_str()
        .unwrap()
        .contains("No such file"));
    // ...and comes back: what waited is spooled, in order, and delivered.
    std::fs::rename(&away, &spool_dir).unwrap();
    sink.flush().unwrap();
    assert_eq!(sink.backlog(), 0);
    receiver
        .wait_for("every alert", WAIT, |r| {
            let uids = r.uids();
            alerts.iter().all(|a| uids.contains(&a.uid))
        })
        .await;
    assert_eq!(metrics.spool_dropped_counts(), [0; 4]);
    // A second spell is reported again.
    std::fs::rename(&spool_dir, &away).unwrap();
    for n in 20..30 {
        sink.send(&numbered_alert(n)).unwrap();
    }
    std::fs::rename(&away, &spool_dir).unwrap();
    sink.flush().unwrap();
    let again = sink.take_notices();
    assert_eq!(
        again
            .iter()
            .filter(|n| n.rule == "spool-write-failed")
            .count(),
        1,
        "{again:?}"
    );
    block_in_place(|| sink.close()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_memory_queue_drops_the_lowest_and_counts_it() {
    let addr = free_port();
    let dir = TempDir::new("backlog-full");
    let spool_dir = dir.0.join("spool");
    let metrics = Arc::new(Metrics::new());
    let mut sink = start(
        settings(Protocol::Http, addr, &[]),
        &spool_dir,
        16 << 10,
        &metrics,
    )
    .with_backlog_limit(4);
    let away = dir.0.join("away");
    std::fs::rename(&spool_dir, &away).unwrap();
    // Fill the active segment until writes fail, then 4 wait and the rest are dropped.
    for n in 0..40 {
        let mut alert = numbered_alert(n);
        alert.severity = if n == 39 {
            Severity::Critical
        } else {
            Severity::Low
        };
        sink.send(&alert).unwrap();
    }
    assert_eq!(sink.backlog(), 4);
    let failed = metrics.counter("monitor.spool.write_failed");
    let dropped = metrics.spool_dropped_counts();
    assert_eq!(dropped, [failed - 4, 0, 0, 0], "the critical one is kept");
    std::fs::rename(&away, &spool_dir).unwrap();
    sink.flush().unwrap();
    // The report of those drops is spooled and raised with the exact count.
    let notices = sink.take_notices();
    let report = notices
        .iter()
        .find(|n| n.rule == "spool-dropped")
        .unwrap_or_else(|| panic!("a spool-dropped notice: {notices:?}"));
    assert_eq!(report.attributes["monitor.spool.dropped.low"], failed - 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_success_is_counted() {
    let receiver = Receiver::http("127.0.0.1:0".parse().unwrap()).await;
    receiver.script([Reply::Accept { rejected: 1 }]);
    let (dir, metrics) = spool("partial");
    let mut sink = sink(Protocol::Http, receiver.addr, &dir, 1 << 20, &metrics);
    // Both in one batch: spooled before the exporter wakes up (the receiver holds none back).
    let alerts = [numbered_alert(1), numbered_alert(2)];
    for alert in &alerts {
        sink.send(alert).unwrap();
    }
    let start = Instant::now();
    while metrics.counter("monitor.alerts.exported") + metrics.counter("monitor.alerts.rejected")
        < 2
        && start.elapsed() < WAIT
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let requests = receiver.with(|c| c.logs.len());
    // One request with both (partial success), or two when the exporter was quicker than the
    // second send: then the first was answered with the partial success.
    assert_eq!(
        metrics.counter("monitor.alerts.rejected"),
        1,
        "{requests} requests"
    );
    assert_eq!(metrics.counter("monitor.alerts.exported"), 1);
    block_in_place(|| sink.close()).unwrap();
    assert_eq!(sink.pending(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_reports_drops() {
    let addr = free_port();
    let (dir, metrics) = spool("full");
    let mut sink = sink(Protocol::Http, addr, &dir, 8 << 10, &metrics);
    let mut criticals = Vec::new();
    for n in 0..60 {
        let mut alert = numbered_alert(n);
        alert.severity = if n % 10 == 0 {
            Severity::Critical
        } else {
            Severity::Low
        };
        if alert.severity == Severity::Critical {
            criticals.push(alert.uid.clone());
        }
        sink.send(&alert).unwrap();
    }
    sink.flush().unwrap();
    let dropped = metrics.spool_dropped_counts();
    assert!(dropped[0] > 0, "the spool dropped low alerts: {dropped:?}");
    assert_eq!(dropped[1..], [0, 0, 0]);
    let receiver = Receiver::http(addr).await;
    let is_report = |rec: &LogRecord| {
        matches!(attribute(rec, "security_rule.name"),
            Some(any_value::Value::StringValue(s)) if s == "spool-dropped")
    };
    let reported_low = |r: &Receiver| -> i64 {
        r.records()
            .iter()
            .filter(|rec| is_report(rec))
            .map(|rec| match attribute(rec, "monitor.spool.dropped.low") {
                Some(any_value::Value::IntValue(n)) => *n,
                other => panic!("a count: {other:?}"),
            })
            .sum()
    };
    // Spooling a report may evict more low alerts: those are in the next report. In all,
    // the reports add up to what the spool dropped.
    receiver
        .wait_for("spool-dropped alerts with every drop", WAIT, |r| {
            reported_low(r) > 0 && reported_low(r) == metrics.spool_dropped_counts()[0] as i64
        })
        .await;
    let records = receiver.records();
    let report = records.iter().find(|rec| is_report(rec)).unwrap();
    assert_eq!(report.severity_text, "ERROR");
    assert_eq!(report.event_name, "monitor.alert");
    assert_eq!(
        attribute(report, "monitor.spool.dropped.critical"),
        Some(&any_value::Value::IntValue(0))
    );
    assert_eq!(metrics.spool_dropped_counts()[3], 0);
    // Every critical alert made it.
    receiver
        .wait_for("every critical alert", WAIT, |r| {
            let uids = r.uids();
            criticals.iter().all(|c| uids.contains(c))
        })
        .await;
    block_in_place(|| sink.close()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_spool_tail_is_recovered() {
    let addr = free_port();
    let (dir, metrics) = spool("torn");
    let mut first = sink(Protocol::Http, addr, &dir, 1 << 20, &metrics);
    let alerts: Vec<Alert> = (0..5)
        .map(|n| {
            let mut alert = numbered_alert(n);
            alert.severity = Severity::Medium;
            alert
        })
        .collect();
    for alert in &alerts {
        first.send(alert).unwrap();
    }
    block_in_place(|| drop(first));
    // Power lost in the middle of the last write.
    let segment = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let len = std::fs::metadata(&segment).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let receiver = Receiver::http(addr).await;
    let metrics = Arc::new(Metrics::new());
    let mut second = sink(Protocol::Http, addr, &dir, 1 << 20, &metrics);
    assert!(metrics.counter("monitor.spool.corrupt") > 0);
    let whole: BTreeSet<String> = alerts[..4].iter().map(|a| a.uid.clone()).collect();
    receiver
        .wait_for("the four whole alerts", WAIT, |r| {
            r.uids().into_iter().collect::<BTreeSet<_>>() == whole
        })
        .await;
    block_in_place(|| second.close()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_is_bounded_and_keeps_the_rest() {
    let addr = free_port();
    let (dir, metrics) = spool("close");
    let mut sink = sink(Protocol::Grpc, addr, &dir, 1 << 20, &metrics)
        .with_close_timeout(Duration::from_millis(300));
    let alert = numbered_alert(1);
    sink.send(&alert).unwrap();
    let started = Instant::now();
    block_in_place(|| sink.close()).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(sink.pending(), 1);
    block_in_place(|| drop(sink));
    let mut spool = crate::output::spool::Spool::open(&dir.0, 1 << 20).unwrap();
    let (batch, _) = spool.next_batch(10, 1 << 20).unwrap();
    assert_eq!(batch[0].alert, alert);
}

async fn tls_with_ca_file(protocol: Protocol) {
    let certs = TestCertificates::new();
    let any_port = "127.0.0.1:0".parse().unwrap();
    let receiver = match protocol {
        Protocol::Http => Receiver::https(any_port, &certs).await,
        Protocol::Grpc => Receiver::grpcs(any_port, &certs).await,
    };
    let dir = TempDir::new("tls");
    std::fs::create_dir_all(&dir.0).unwrap();
    let ca_file = dir.0.join("ca.pem");
    std::fs::write(&ca_file, &certs.ca_pem).unwrap();
    let endpoint = format!("https://{}", receiver.addr);
    let metrics = Arc::new(Metrics::new());

    // Without the CA the collector is not trusted: nothing goes out, the alert waits.
    let untrusted = settings_for(protocol, &endpoint, &[]);
    let mut sink = start(untrusted, &dir.0.join("spool-1"), 1 << 20, &metrics);
    sink.send(&numbered_alert(1)).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(receiver.uids().is_empty());
    assert!(metrics.counter("monitor.alerts.export.retries") > 0);
    assert_eq!(sink.pending(), 1);
    block_in_place(|| drop(sink));

    // With the CA file (from OTEL_EXPORTER_OTLP_CERTIFICATE), it does.
    let ca = ca_file.to_string_lossy().into_owned();
    let trusted = settings_for(
        protocol,
        &endpoint,
        &[("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca)],
    );
    let mut sink = start(trusted, &dir.0.join("spool-2"), 1 << 20, &metrics);
    let alert = numbered_alert(2);
    sink.send(&alert).unwrap();
    receiver
        .wait_for("the alert over TLS", WAIT, |r| {
            r.uids() == [alert.uid.clone()]
        })
        .await;
    block_in_place(|| sink.close()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_ca_file() {
    tls_with_ca_file(Protocol::Http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_tls_with_a_ca_file() {
    tls_with_ca_file(Protocol::Grpc).await;
}

#[test]
fn start_errors_say_what_to_fix() {
    let metrics = Arc::new(Metrics::new());
    let addr: SocketAddr = "127.0.0.1:4318".parse().unwrap();
    let err = OtlpSink::start(
        settings(Protocol::Http, addr, &[]),
        Path::new("/proc/monitor-spool"),
        1 << 20,
        metrics.clone(),
    )
    .err()
    .unwrap();
    let text = format!("{err:#}");
    assert!(
        text.contains("/proc/monitor-spool") && text.contains("--spool-dir"),
        "{text}"
    );

    let dir = TempDir::new("ca");
    let mut with_ca = settings(Protocol::Http, addr, &[]);
    with_ca.ca_file = Some("/nonexistent/ca.pem".into());
    let text = format!(
        "{:#}",
        OtlpSink::start(with_ca, &dir.0, 1 << 20, metrics.clone())
            .err()
            .unwrap()
    );
    assert!(text.contains("/nonexistent/ca.pem"), "{text}");

    let mut bad_header = settings(Protocol::Grpc, addr, &[]);
    bad_header.headers = vec![("bad header".into(), "x".into())];
    let text = format!(
        "{:#}",
        OtlpSink::start(bad_header, &dir.0, 1 << 20, metrics)
            .err()
            .unwrap()
    );
    assert!(text.contains("bad header"), "{text}");
}
