//! The monitor's own counters: what it saw, what it raised, what it lost, and how the export
//! of alerts goes. Cheap to increment from the pipeline (atomics; a short lock for the
//! per-rule and per-loss maps, which change rarely). Exported as OTLP metrics by
//! [`crate::output::otlp`]; labels are low-cardinality by design (kinds, rules, severities,
//! reasons: never pids or paths).

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering},
        Mutex,
    },
};

use crate::event::alert::Severity;

/// Event kinds counted by [`Metrics::event`]; anything else is counted as `other`.
pub const EVENT_KINDS: [&str; 8] = [
    "exec",
    "fork",
    "exit",
    "file",
    "network",
    "device",
    "gpu-ioctls",
    "other",
];

const SEVERITIES: [Severity; 4] = [
    Severity::Low,
    Severity::Medium,
    Severity::High,
    Severity::Critical,
];

/// Counters of one monitor process.
#[derive(Default)]
pub struct Metrics {
    events: [AtomicU64; 8],
    alerts: Mutex<BTreeMap<(String, Severity), u64>>,
    losses: Mutex<BTreeMap<(String, String, String), u64>>,
    processes: AtomicI64,
    alerts_spooled: AtomicU64,
    alerts_exported: AtomicU64,
    alerts_rejected: AtomicU64,
    export_retries: AtomicU64,
    alerts_dead_lettered: AtomicU64,
    spool_write_failed: AtomicU64,
    spool_dropped: [AtomicU64; 4],
    spool_corrupt_bytes: AtomicU64,
    /// When the daemon's main loop last went round (Unix ns; 0: not yet).
    beat_unix_ns: AtomicU64,
}

/// How a point is aggregated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// A monotonic, cumulative sum (a counter since start-up).
    Counter,
    /// The last value.
    Gauge,
}

/// One metric stream of a [`Metrics::snapshot`]: a name, its labels, its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub name: &'static str,
    pub description: &'static str,
    pub unit: &'static str,
    pub kind: MetricKind,
    pub labels: Vec<(&'static str, String)>,
    pub value: i64,
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// One event of `kind` (`exec`, `fork`, `exit`, `file`, `network`, `device`, `gpu-ioctls`).
    pub fn event(&self, kind: &str) {
        self.events_n(kind, 1);
    }

    /// `n` events of `kind`.
    pub fn events_n(&self, kind: &str, n: u64) {
        let i = EVENT_KINDS[..7]
            .iter()
            .position(|&k| k == kind)
            .unwrap_or(7);
        self.events[i].fetch_add(n, Ordering::Relaxed);
    }

    /// One alert raised by `rule`.
    pub fn alert(&self, rule: &str, severity: Severity) {
        let mut alerts = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = alerts.get_mut(&(rule.to_owned(), severity)) {
            *n += 1;
        } else {
            alerts.insert((rule.to_owned(), severity), 1);
        }
    }

    /// `n` events lost at `stage` (`kernel` or `user`) of `kind` for `reason`
    /// (`ring-buffer-full`, `queue-full`, ...).
    pub fn loss(&self, stage: &str, kind: &str, reason: &str, n: u64) {
        let mut losses = self.losses.lock().unwrap_or_else(|e| e.into_inner());
        *losses
            .entry((stage.to_owned(), kind.to_owned(), reason.to_owned()))
            .or_default() += n;
    }

    /// Processes in the process table now.
    pub fn set_processes(&self, n: u64) {
        self.processes.store(clamp(n), Ordering::Relaxed);
    }

    /// Alerts written to the OTLP spool.
    pub fn alerts_spooled(&self, n: u64) {
        self.alerts_spooled.fetch_add(n, Ordering::Relaxed);
    }

    /// Alerts the collector accepted.
    pub fn alerts_exported(&self, n: u64) {
        self.alerts_exported.fetch_add(n, Ordering::Relaxed);
    }

    /// Alerts the collector rejected for good (dropped).
    pub fn alerts_rejected(&self, n: u64) {
        self.alerts_rejected.fetch_add(n, Ordering::Relaxed);
    }

    /// Export attempts that failed and will be tried again.
    pub fn export_retry(&self) {
        self.export_retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Alerts the collector rejected for good, kept in the dead letters.
    pub fn alerts_dead_lettered(&self, n: u64) {
        self.alerts_dead_lettered.fetch_add(n, Ordering::Relaxed);
    }

    /// Alerts that could not be written to the spool at once (kept in memory instead).
    pub fn spool_write_failed(&self, n: u64) {
        self.spool_write_failed.fetch_add(n, Ordering::Relaxed);
    }

    /// Alerts dropped (by the full spool, the full in-memory queue in front of it, or the full
    /// dead letters), by severity (`Low..=Critical`).
    pub fn spool_dropped(&self, by_severity: [u64; 4]) {
        for (counter, n) in self.spool_dropped.iter().zip(by_severity) {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Bytes of torn or corrupt spool segments skipped at start-up.
    pub fn spool_corrupt_bytes(&self, n: u64) {
        self.spool_corrupt_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// The daemon's main loop is alive now (called from its housekeeping tick); the state
    /// file and the OTLP heartbeat report it.
    pub fn beat(&self) {
        self.beat_unix_ns
            .store(crate::event::clock::unix_now_ns(), Ordering::Relaxed);
    }

    /// When the main loop last went round (Unix ns; 0: not yet).
    pub fn last_beat(&self) -> u64 {
        self.beat_unix_ns.load(Ordering::Relaxed)
    }

    /// Value of one of the plain counters, by metric name (tests and logs).
    pub fn counter(&self, name: &str) -> u64 {
        let counter = match name {
            "monitor.alerts.spooled" => &self.alerts_spooled,
            "monitor.alerts.exported" => &self.alerts_exported,
            "monitor.alerts.rejected" => &self.alerts_rejected,
            "monitor.alerts.export.retries" => &self.export_retries,
            "monitor.alerts.dead_lettered" => &self.alerts_dead_lettered,
            "monitor.spool.write_failed" => &self.spool_write_failed,
            "monitor.spool.corrupt" => &self.spool_corrupt_bytes,
            _ => return 0,
        };
        counter.load(Ordering::Relaxed)
    }

    /// Alerts dropped by the full spool, by severity (`Low..=Critical`).
    pub fn spool_dropped_counts(&self) -> [u64; 4] {
        std::array::from_fn(|i| self.spool_dropped[i].load(Ordering::Relaxed))
    }

    /// Every metric stream with its current value.
    pub fn snapshot(&self) -> Vec<Point> {
        let mut points = Vec::new();
        let counter = |name, description, unit, labels, value| Point {
            name,
            description,
            unit,
            kind: MetricKind::Counter,
            labels,
            value,
        };
        for (kind, n) in EVENT_KINDS.iter().zip(&self.events) {
            points.push(counter(
                "monitor.events",
                "Events received from the kernel sensors.",
                "{event}",
                vec![("event.kind", kind.to_string())],
                clamp(n.load(Ordering::Relaxed)),
            ));
        }
        for ((rule, severity), n) in self.alerts.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            points.push(counter(
                "monitor.alerts",
                "Alerts raised.",
                "{alert}",
                vec![
                    ("security_rule.name", rule.clone()),
                    ("severity", severity.name().to_string()),
                ],
                clamp(*n),
            ));
        }
        for ((stage, kind, reason), n) in
            self.losses.lock().unwrap_or_else(|e| e.into_inner()).iter()
        {
            points.push(counter(
                "monitor.events.lost",
                "Events lost before the monitor could look at them.",
                "{event}",
                vec![
                    ("monitor.loss.stage", stage.clone()),
                    ("monitor.loss.event_kind", kind.clone()),
                    ("monitor.loss.reason", reason.clone()),
                ],
                clamp(*n),
            ));
        }
        points.push(Point {
            name: "monitor.processes",
            description: "Processes in the process table.",
            unit: "{process}",
            kind: MetricKind::Gauge,
            labels: Vec::new(),
            value: self.processes.load(Ordering::Relaxed),
        });
        for (name, description, unit) in [
            (
                "monitor.alerts.spooled",
                "Alerts written to the OTLP spool.",
                "{alert}",
            ),
            (
                "monitor.alerts.exported",
                "Alerts the OTLP collector accepted.",
                "{alert}",
            ),
            (
                "monitor.alerts.rejected",
                "Alerts the OTLP collector rejected for good (kept as dead letters).",
                "{alert}",
            ),
            (
                "monitor.alerts.export.retries",
                "OTLP export attempts that failed and were retried.",
                "{request}",
            ),
            (
                "monitor.alerts.dead_lettered",
                "Alerts the OTLP collector rejected for good, kept as dead letters for replay.",
                "{alert}",
            ),
            (
                "monitor.spool.write_failed",
                "Alerts that could not be written to the spool at once and waited in memory.",
                "{alert}",
            ),
            (
                "monitor.spool.corrupt",
                "Bytes of torn or corrupt spool segments skipped at start-up.",
                "By",
            ),
        ] {
            points.push(counter(
                name,
                description,
                unit,
                Vec::new(),
                clamp(self.counter(name)),
            ));
        }
        for (severity, n) in SEVERITIES.iter().zip(self.spool_dropped_counts()) {
            points.push(counter(
                "monitor.spool.dropped",
                "Alerts dropped because the spool was full.",
                "{alert}",
                vec![("severity", severity.name().to_string())],
                clamp(n),
            ));
        }
        points
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(points: &[Point], name: &str, labels: &[(&str, &str)]) -> Option<i64> {
        points
            .iter()
            .find(|p| {
                p.name == name
                    && p.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| p.labels.iter().any(|(pk, pv)| pk == k && pv == v))
            })
            .map(|p| p.value)
    }

    #[test]
    fn counts_by_label() {
        let metrics = Metrics::new();
        metrics.event("exec");
        metrics.event("exec");
        metrics.event("gpu-ioctls");
        metrics.event("something-new");
        metrics.alert("exec-not-allowed", Severity::High);
        metrics.alert("exec-not-allowed", Severity::High);
        metrics.alert("events-lost", Severity::High);
        metrics.loss("kernel", "exec", "ring-buffer-full", 12);
        metrics.loss("kernel", "exec", "ring-buffer-full", 3);
        metrics.set_processes(321);
        metrics.spool_dropped([1, 0, 0, 2]);
        metrics.alerts_exported(5);
        metrics.alerts_dead_lettered(3);
        metrics.spool_write_failed(2);
        let points = metrics.snapshot();
        assert_eq!(
            value(&points, "monitor.events", &[("event.kind", "exec")]),
            Some(2)
        );
        assert_eq!(
            value(&points, "monitor.events", &[("event.kind", "gpu-ioctls")]),
            Some(1)
        );
        assert_eq!(
            value(&points, "monitor.events", &[("event.kind", "other")]),
            Some(1)
        );
        assert_eq!(
            value(&points, "monitor.events", &[("event.kind", "fork")]),
            Some(0)
        );
        assert_eq!(
            value(
                &points,
                "monitor.alerts",
                &[
                    ("security_rule.name", "exec-not-allowed"),
                    ("severity", "high")
                ]
            ),
            Some(2)
        );
        assert_eq!(
            value(
                &points,
                "monitor.events.lost",
                &[
                    ("monitor.loss.stage", "kernel"),
                    ("monitor.loss.event_kind", "exec"),
                    ("monitor.loss.reason", "ring-buffer-full")
                ]
            ),
            Some(15)
        );
        let processes = points
            .iter()
            .find(|p| p.name == "monitor.processes")
            .unwrap();
        assert_eq!((processes.kind, processes.value), (MetricKind::Gauge, 321));
        assert_eq!(
            value(
                &points,
                "monitor.spool.dropped",
                &[("severity", "critical")]
            ),
            Some(2)
        );
        assert_eq!(value(&points, "monitor.alerts.exported", &[]), Some(5));
        assert_eq!(value(&points, "monitor.alerts.dead_lettered", &[]), Some(3));
        assert_eq!(value(&points, "monitor.spool.write_failed", &[]), Some(2));
    }
}
