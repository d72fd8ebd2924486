//! Alerts: what the monitor reports when behaviour breaks a profile or a host guard.
//!
//! One vocabulary for JSON and OTLP: an alert is a flat set of OpenTelemetry
//! semantic-convention attributes (`process.*`, `file.path`, `network.peer.*`, `device.*`,
//! `container.id`, `security_rule.name`, `monitor.*`) plus a severity and two timestamps.

use opentelemetry_semantic_conventions::attribute as semconv;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Alert severity. Ordered: `Low < Medium < High < Critical`.
/// Serialized by [`Severity::name`] (the spool stores alerts with serde).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    pub fn from_name(name: &str) -> Option<Severity> {
        [
            Severity::Low,
            Severity::Medium,
            Severity::High,
            Severity::Critical,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }

    /// OpenTelemetry log severity number (INFO2, WARN, ERROR, FATAL).
    pub fn otel_number(self) -> i32 {
        match self {
            Severity::Low => 10,
            Severity::Medium => 13,
            Severity::High => 17,
            Severity::Critical => 21,
        }
    }

    /// OpenTelemetry log severity text.
    pub fn otel_text(self) -> &'static str {
        match self {
            Severity::Low => "INFO2",
            Severity::Medium => "WARN",
            Severity::High => "ERROR",
            Severity::Critical => "FATAL",
        }
    }
}

/// What the monitor did about it (`monitor.action`). Serialized by [`Action::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Alert,
    Denied,
    Killed,
    WouldDeny,
    WouldKill,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Alert => "alert",
            Action::Denied => "denied",
            Action::Killed => "killed",
            Action::WouldDeny => "would-deny",
            Action::WouldKill => "would-kill",
        }
    }
}

/// One alert, ready for every output. Its serde form is what the spool stores (the field
/// names are the record format: renaming one needs a `#[serde(alias)]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Stable rule id (`security_rule.name`), e.g. `exec-not-allowed`.
    pub rule: String,
    pub severity: Severity,
    pub action: Action,
    /// The profile that governs the process, if any (`monitor.profile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// When the event happened in the kernel, Unix-epoch nanoseconds.
    pub time_unix_ns: i128,
    /// When the monitor saw it, Unix-epoch nanoseconds.
    pub observed_unix_ns: i128,
    /// Identical alerts folded into this one (`monitor.count`), at least 1.
    pub count: u64,
    /// Unique id of this alert record (`log.record.uid`): receivers drop duplicates by it.
    pub uid: String,
    /// The event's and the actor's attributes (`process.*`, `file.path`, ...), flat keys.
    pub attributes: Map<String, Value>,
}

impl Alert {
    /// The JSON line: attributes plus the alert's own keys.
    pub fn to_json(&self) -> Value {
        let mut map = self.attributes.clone();
        map.insert(
            "time".into(),
            Value::from(crate::event::clock::rfc3339(self.time_unix_ns)),
        );
        map.insert(
            "observed_time".into(),
            Value::from(crate::event::clock::rfc3339(self.observed_unix_ns)),
        );
        // A literal: semantic conventions deprecate the `event.name` attribute (OTLP records
        // carry it as their event name too), and collectors keyed on it must not break.
        map.insert("event.name".into(), Value::from("monitor.alert"));
        map.insert(
            semconv::SECURITY_RULE_NAME.into(),
            Value::from(self.rule.clone()),
        );
        map.insert("severity".into(), Value::from(self.severity.name()));
        map.insert("monitor.action".into(), Value::from(self.action.name()));
        map.insert("monitor.count".into(), Value::from(self.count));
        map.insert(
            semconv::LOG_RECORD_UID.into(),
            Value::from(self.uid.clone()),
        );
        if let Some(profile) = &self.profile {
            map.insert("monitor.profile".into(), Value::from(profile.clone()));
        }
        Value::Object(map)
    }
}

/// A new unique id for an alert record: 128 random bits as 32 hex digits.
pub fn new_uid() -> String {
    let mut bytes = [0u8; 16];
    // SAFETY: getrandom writes at most `len` bytes into the buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // Never expected on Linux >= 3.17; fall back to time and a counter, still unique here.
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let now = crate::event::clock::BootClock::boot_now_ns();
        bytes[..8].copy_from_slice(&now.to_le_bytes());
        bytes[8..].copy_from_slice(&NEXT.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_alert_keys() {
        let mut attributes = Map::new();
        attributes.insert("process.pid".into(), Value::from(42));
        let alert = Alert {
            rule: "exec-not-allowed".into(),
            severity: Severity::High,
            action: Action::Alert,
            profile: Some("vllm".into()),
            time_unix_ns: 0,
            observed_unix_ns: 1,
            count: 1,
            uid: new_uid(),
            attributes,
        };
        let json = alert.to_json();
        assert_eq!(json["event.name"], "monitor.alert");
        assert_eq!(json["security_rule.name"], "exec-not-allowed");
        assert_eq!(json["severity"], "high");
        assert_eq!(json["monitor.profile"], "vllm");
        assert_eq!(json["process.pid"], 42);
        assert_eq!(json["log.record.uid"].as_str().unwrap().len(), 32);
    }

    #[test]
    fn uids_are_unique() {
        assert_ne!(new_uid(), new_uid());
    }
}

/// A rule: a stable id (`security_rule.name`) and its severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    pub id: &'static str,
    pub severity: Severity,
}
