//! Self-protection: what the daemon does about attacks on the monitor itself.
//!
//! The kernel side reports `bpf()` calls of other processes on the monitor's objects and
//! signals sent to it (`monitor-ebpf/src/tamper.rs`), and accesses to its memory
//! (`memory.rs`); the rules turn them into alerts. Here:
//! - [`Pauses`] pairs a recorded stop (SIGSTOP and kin) with the SIGCONT that ends it, into
//!   `monitor-paused` with its length; a gap in the daemon's own clock that no recorded stop
//!   explains (a stop by ptrace, a frozen cgroup, a suspended VM) is reported too.
//! - [`self_check`] runs every few seconds: every cgroup link still attached, every program
//!   still loaded, every policy map equal to what the configuration in force wrote; what
//!   differs is repaired, and `monitor-tampered` says what was found and what was repaired.
//!   It catches what the kernel hook cannot see (a race on the `bpf()` attributes, a way in
//!   that no hook covers) by its effect.

use std::{collections::HashMap, io::Write, time::Duration};

use serde_json::{json, Map, Value};
use tracing::{error, info, warn};

use crate::event::classify::is_stop;
use crate::{
    event::{
        alert::{new_uid, Action, Alert},
        clock::BootClock,
        Event, Tamper, TamperOp,
    },
    kernel::{policy::KernelPolicy, sensor::Sensor},
    pipeline::{KernelHandle, Processor},
    rules::{MONITOR_PAUSED, MONITOR_TAMPERED},
};

/// How often the self-check runs unless `--self-check-secs` says otherwise.
pub const SELF_CHECK_INTERVAL: Duration = Duration::from_secs(5);

const SIGCONT: u32 = 18;

/// A stop still without its SIGCONT this long after it was sent is reported on its own.
const STALE_STOP: u64 = 5_000_000_000;

/// A clock gap longer than this between two housekeeping ticks (every second) is a pause.
const GAP: u64 = 3_000_000_000;

/// A stop recorded, waiting for the SIGCONT that ends it.
struct Stop {
    time_ns: u64,
    signal: u32,
    /// The sender's `process.*` keys, as the stop event had them.
    actor: Map<String, Value>,
}

/// Pairs stops and resumptions into `monitor-paused` (see the module documentation).
#[derive(Default)]
pub struct Pauses {
    stop: Option<Stop>,
    /// `CLOCK_BOOTTIME` of the last housekeeping tick.
    last_tick_ns: u64,
    /// A gap no stop explained yet: (start, end, when it was seen). Reported when no stop
    /// event arrives to explain it (the events of the pause are read after the gap is seen).
    gap: Option<(u64, u64, u64)>,
    /// The last pause a stop and its SIGCONT explained: (stop, resume).
    explained: Option<(u64, u64)>,
    /// The last gap the clock saw: (start, end).
    last_gap: Option<(u64, u64)>,
    /// Names of the monitor's BPF objects by (kind, id), for the alerts.
    pub names: HashMap<(monitor_common::BpfObjectKind, u32), String>,
}

fn pause_alert(
    clock: &BootClock,
    start_ns: u64,
    end_ns: u64,
    mut attributes: Map<String, Value>,
) -> Alert {
    attributes.insert(
        "monitor.pause.duration_ms".into(),
        json!(end_ns.saturating_sub(start_ns) / 1_000_000),
    );
    attributes.insert("monitor.pause.start".into(), json!(clock.rfc3339(start_ns)));
    attributes.insert("monitor.pause.end".into(), json!(clock.rfc3339(end_ns)));
    Alert {
        rule: MONITOR_PAUSED.id.to_owned(),
        severity: MONITOR_PAUSED.severity,
        action: Action::Alert,
        profile: None,
        time_unix_ns: clock.unix_ns(start_ns),
        observed_unix_ns: clock.unix_ns(BootClock::boot_now_ns()),
        count: 1,
        uid: new_uid(),
        attributes,
    }
}

impl<W: Write, K: KernelHandle> Processor<W, K> {
    /// Called for every event before the rules judge it: stops and resumptions of the
    /// monitor, and the names of its objects in the alerts about them.
    pub fn note_tamper(&mut self, event: &Event) {
        let Event::Tamper(Tamper {
            header,
            op: TamperOp::Signal { signal, .. },
            ..
        }) = event
        else {
            return;
        };
        let process = self.table.get(header.tgid, header.start_time_ns);
        let Value::Object(mut record) =
            crate::output::event_record(&self.clock, &self.table, event, process)
        else {
            return;
        };
        record.remove("time");
        record.remove("event.kind");
        info!(
            signal = crate::output::signal_name(*signal).unwrap_or("other"),
            sender = header.tgid,
            executable = record
                .get("process.executable.path")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("unknown"),
            "signal sent to the monitor"
        );
        if is_stop(*signal) {
            if self.pauses.stop.is_none() {
                self.pauses.stop = Some(Stop {
                    time_ns: header.time_ns,
                    signal: *signal,
                    actor: record,
                });
            }
            return;
        }
        if *signal != SIGCONT {
            return;
        }
        let Some(stop) = self.pauses.stop.take() else {
            return;
        };
        let mut attributes = stop.actor;
        attributes.insert(
            "monitor.pause.signal".into(),
            json!(crate::output::signal_name(stop.signal)),
        );
        attributes.insert(
            "monitor.pause.resumed_by.process.pid".into(),
            json!(header.tgid),
        );
        if let Some(exe) = record.get("process.executable.path") {
            attributes.insert(
                "monitor.pause.resumed_by.process.executable.path".into(),
                exe.clone(),
            );
        }
        attributes.insert("monitor.pause.cause".into(), json!("signal"));
        // The gap the clock saw (or will see, at its next tick) is this pause.
        self.pauses.explained = Some((stop.time_ns, header.time_ns));
        if self
            .pauses
            .gap
            .is_some_and(|(start, end, _)| overlaps((start, end), (stop.time_ns, header.time_ns)))
        {
            self.pauses.gap = None;
        }
        let alert = pause_alert(&self.clock, stop.time_ns, header.time_ns, attributes);
        self.raise(&alert);
    }

    /// Called every second: a gap in the clock is a pause; reported on its own when no stop
    /// event explains it within two seconds.
    pub fn check_pause(&mut self) {
        let now = BootClock::boot_now_ns();
        let last = std::mem::replace(&mut self.pauses.last_tick_ns, now);
        let explained = self
            .pauses
            .explained
            .is_some_and(|pause| overlaps((last, now), pause));
        if last != 0 && now.saturating_sub(last) > GAP {
            self.pauses.last_gap = Some((last, now));
            if self.pauses.stop.is_none() && !explained {
                self.pauses.gap = Some((last, now, now));
            }
        }
        // A stop that no SIGCONT ended: a ptrace attach (its SIGSTOP) ended by a detach, or a
        // stop the monitor never took. Its length is the clock's gap, if one covers it.
        if let Some(stop) = self
            .pauses
            .stop
            .take_if(|stop| now.saturating_sub(stop.time_ns) > STALE_STOP)
        {
            let end = match self.pauses.last_gap {
                Some((start, end)) if overlaps((start, end), (stop.time_ns, stop.time_ns)) => end,
                _ => stop.time_ns,
            };
            let mut attributes = stop.actor;
            attributes.insert(
                "monitor.pause.signal".into(),
                json!(crate::output::signal_name(stop.signal)),
            );
            attributes.insert(
                "monitor.pause.cause".into(),
                json!("signal-without-sigcont"),
            );
            self.pauses.explained = Some((stop.time_ns, end));
            let alert = pause_alert(&self.clock, stop.time_ns, end, attributes);
            self.raise(&alert);
        }
        let Some((start, end, seen)) = self.pauses.gap else {
            return;
        };
        if self.pauses.stop.is_some() || now.saturating_sub(seen) < 2_000_000_000 {
            return;
        }
        self.pauses.gap = None;
        let mut attributes = Map::new();
        // Not a signal the kernel saw: ptrace, a frozen cgroup, a suspended machine, or a
        // daemon starved of CPU.
        attributes.insert("monitor.pause.cause".into(), json!("unknown"));
        let alert = pause_alert(&self.clock, start, end, attributes);
        self.raise(&alert);
    }

    /// Adds the object's name (`monitor.bpf.object.name`) to an alert about a `bpf()` call.
    pub fn name_object(&self, event: &Event, alert: &mut Alert) {
        if let Event::Tamper(Tamper {
            op: TamperOp::Bpf { object, id, .. },
            ..
        }) = event
        {
            if let Some(name) = self.pauses.names.get(&(*object, *id)) {
                alert
                    .attributes
                    .insert("monitor.bpf.object.name".into(), json!(name));
            }
        }
    }
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

/// What a self-check found and did.
#[derive(Debug, Default)]
pub struct CheckOutcome {
    /// What was not as the monitor left it.
    pub found: Vec<String>,
    /// What it put back.
    pub repaired: Vec<String>,
    /// What it failed to put back, with why.
    pub failed: Vec<String>,
}

/// Checks the monitor's links, programs and policy maps, and repairs what differs.
pub fn self_check(sensor: &mut Sensor, policy: &mut KernelPolicy) -> CheckOutcome {
    let mut outcome = CheckOutcome::default();
    for link in sensor.check_cgroup_links() {
        outcome.found.push(format!(
            "link {} ({}) detached from cgroup {}",
            link.id, link.program, link.cgroup
        ));
        match link.reattached {
            Ok(new_id) => outcome.repaired.push(format!(
                "re-attached {} to cgroup {} (link {new_id})",
                link.program, link.cgroup
            )),
            Err(err) => outcome
                .failed
                .push(format!("failed to re-attach {}: {err:#}", link.program)),
        }
    }
    for program in sensor.unloaded_programs() {
        // The daemon holds an fd on each program, so the kernel keeps it: this would be a
        // kernel bug or a program the daemon lost itself; it cannot be loaded again here.
        outcome.found.push(format!("program {program} not loaded"));
        outcome.failed.push(format!(
            "failed to check program {program}: restart the monitor"
        ));
    }
    match policy.verify() {
        Ok(changed) => {
            for map in changed {
                outcome
                    .found
                    .push(format!("map {map} differs from the configuration in force"));
                outcome.repaired.push(format!("rewrote map {map}"));
            }
        }
        Err(err) => outcome.failed.push(format!(
            "failed to check or rewrite the policy maps: {err:#}"
        )),
    }
    outcome
}

/// Files the monitor's threads under its tgid in the kernel's thread map, so that a ptrace
/// or process_vm_readv naming any of its threads is seen as aimed at the monitor. Again at
/// every self-check: threads come later (a detach, a blocking task), and the map is LRU.
pub fn file_own_threads<W: Write, K: KernelHandle>(processor: &mut Processor<W, K>) {
    if !processor.kernel().files_threads() {
        return;
    }
    let tgid = std::process::id();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for tid in tasks
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
    {
        if tid != tgid {
            if let Err(err) = processor.kernel_mut().file_thread(tid, tgid) {
                tracing::debug!("failed to file the monitor's thread {tid}: {err}");
            }
        }
    }
}

/// The `monitor-tampered` alert of a self-check that found something.
pub fn check_alert(clock: &BootClock, outcome: &CheckOutcome) -> Option<Alert> {
    if outcome.found.is_empty() {
        return None;
    }
    for line in &outcome.found {
        warn!("self-check: {line}");
    }
    for line in &outcome.failed {
        error!("self-check: {line}");
    }
    let now = BootClock::boot_now_ns();
    let mut attributes = Map::new();
    attributes.insert("monitor.tamper.operation".into(), json!("self-check"));
    attributes.insert("monitor.selfcheck.found".into(), json!(outcome.found));
    attributes.insert("monitor.selfcheck.repaired".into(), json!(outcome.repaired));
    if !outcome.failed.is_empty() {
        attributes.insert("monitor.selfcheck.failed".into(), json!(outcome.failed));
    }
    Some(Alert {
        rule: MONITOR_TAMPERED.id.to_owned(),
        severity: MONITOR_TAMPERED.severity,
        action: Action::Alert,
        profile: None,
        time_unix_ns: clock.unix_ns(now),
        observed_unix_ns: clock.unix_ns(now),
        count: 1,
        uid: new_uid(),
        attributes,
    })
}
