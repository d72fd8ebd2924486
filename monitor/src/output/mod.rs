//! JSON records for `monitor trace` (one object per line), with OpenTelemetry
//! semantic-convention keys.
//!
//! The output layer: what leaves the daemon. Here, the JSON record of an event (for `monitor
//! trace`, and the event attributes of an alert); below, where alerts go ([`sink`]: stdout,
//! the alerts file, [`otlp`] with its durable [`spool`]) and `monitor trace`'s writer
//! ([`trace_out`]). It uses [`crate::event`], [`crate::host`], [`crate::config`] and
//! [`crate::telemetry`]; the rules above it produce the alerts.

pub mod otlp;
pub mod sink;
pub mod spool;
pub mod trace_out;

use opentelemetry_semantic_conventions::attribute as semconv;
use serde_json::{json, Map, Value};

use crate::{
    event::{
        clock::BootClock, errno_name, Decision, Event, Exec, Exit, File, FileOp, Fork, IoUringOp,
        MemoryAccess, Net, NetOp, RawNames,
    },
    host::process::{Process, ProcessTable},
};

/// Signal names for `process.exit.signal.name`.
pub fn signal_name(signal: u32) -> Option<&'static str> {
    Some(match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        16 => "SIGSTKFLT",
        17 => "SIGCHLD",
        18 => "SIGCONT",
        19 => "SIGSTOP",
        20 => "SIGTSTP",
        21 => "SIGTTIN",
        22 => "SIGTTOU",
        23 => "SIGURG",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        26 => "SIGVTALRM",
        27 => "SIGPROF",
        28 => "SIGWINCH",
        29 => "SIGIO",
        30 => "SIGPWR",
        31 => "SIGSYS",
        _ => return None,
    })
}

fn base(clock: &BootClock, kind: &str, time_ns: u64) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("time".into(), json!(clock.rfc3339(time_ns)));
    map.insert("event.kind".into(), json!(kind));
    map
}

/// `process.*` keys of a process from the table.
fn process_keys(map: &mut Map<String, Value>, clock: &BootClock, process: &Process) {
    map.insert(semconv::PROCESS_PID.into(), json!(process.tgid));
    map.insert(semconv::PROCESS_PARENT_PID.into(), json!(process.ppid));
    map.insert(
        semconv::PROCESS_CREATION_TIME.into(),
        json!(clock.rfc3339(process.start_time_ns)),
    );
    if let Some(exe) = &process.exe {
        map.insert(semconv::PROCESS_EXECUTABLE_PATH.into(), json!(exe));
        if let Some(name) = exe.rsplit('/').next() {
            map.insert(semconv::PROCESS_EXECUTABLE_NAME.into(), json!(name));
        }
    }
    map.insert(semconv::PROCESS_COMMAND_ARGS.into(), json!(process.args));
    map.insert(
        semconv::PROCESS_ARGS_COUNT.into(),
        json!(process.args_count.unwrap_or(process.args.len())),
    );
    if process.args_truncated {
        map.insert("process.command_args.truncated".into(), json!(true));
    }
    if let Some(uid) = process.uid {
        map.insert(semconv::USER_ID.into(), json!(uid));
    }
    if let Some(cgroup) = &process.cgroup_path {
        map.insert(semconv::PROCESS_LINUX_CGROUP.into(), json!(cgroup));
    }
    if let Some(container) = &process.container {
        map.insert(semconv::CONTAINER_ID.into(), json!(container.id));
        // A literal: semantic conventions renamed it `container.runtime.name`; the emitted key
        // does not change under collectors' rules.
        map.insert("container.runtime".into(), json!(container.runtime));
        // Known once the runtime's API answered (`crate::host::workload`): name, image, pod.
        if let Some(meta) = container.metadata.get() {
            meta.insert_keys(map);
        }
    }
}

fn parent_keys(map: &mut Map<String, Value>, table: &ProcessTable, process: &Process) {
    if let Some(exe) = table.parent(process).and_then(|p| p.exe.as_ref()) {
        map.insert("process.parent.executable.path".into(), json!(exe));
    }
}

/// The record of one event, described with what the process table knows.
pub fn event_record(
    clock: &BootClock,
    table: &ProcessTable,
    event: &Event,
    process: Option<&Process>,
) -> Value {
    let header = event.header();
    let mut map = base(clock, header.kind.name(), header.time_ns);
    if let Some(node) = table.containers.as_ref().and_then(|r| r.node_name()) {
        map.insert("k8s.node.name".into(), json!(node));
    }
    if let Some(process) = process {
        process_keys(&mut map, clock, process);
        parent_keys(&mut map, table, process);
    } else {
        map.insert(semconv::PROCESS_PID.into(), json!(header.tgid));
    }
    match event {
        Event::Exec(Exec {
            path,
            path_truncated,
            path_from_filename,
            header,
            fileless,
            raw,
            ..
        }) => {
            map.insert(semconv::PROCESS_EXECUTABLE_PATH.into(), json!(path));
            if *fileless {
                map.insert("monitor.exec.fileless".into(), json!(true));
            }
            if *path_truncated {
                map.insert("process.executable.path.truncated".into(), json!(true));
            }
            if *path_from_filename {
                map.insert("monitor.path.source".into(), json!("execve-argument"));
            }
            if header.pid != header.tgid {
                map.insert("process.thread.id".into(), json!(header.pid));
            }
            raw_name_keys(&mut map, raw);
        }
        Event::Fork(Fork { parent_tgid, .. }) => {
            map.insert(semconv::PROCESS_PARENT_PID.into(), json!(parent_tgid));
        }
        Event::Exit(Exit {
            code,
            signal,
            core_dumped,
            ..
        }) => {
            if let Some(code) = code {
                map.insert(semconv::PROCESS_EXIT_CODE.into(), json!(code));
            }
            if let Some(signal) = signal {
                map.insert("process.exit.signal".into(), json!(signal));
                if let Some(name) = signal_name(*signal) {
                    map.insert("process.exit.signal.name".into(), json!(name));
                }
            }
            if *core_dumped {
                map.insert("process.exit.core_dumped".into(), json!(true));
            }
        }
        Event::File(file) => file_keys(&mut map, file),
        Event::Net(net) => net_keys(&mut map, net),
        Event::Device(device) => {
            if !device.path.is_empty() {
                map.insert(semconv::FILE_PATH.into(), json!(device.path));
            }
            map.insert("device.class".into(), json!(device.class.name()));
            map.insert("device.major".into(), json!(device.major));
            map.insert("device.minor".into(), json!(device.minor));
            decision_keys(
                &mut map,
                device.decision,
                device.result,
                "monitor.result.fd",
            );
        }
        Event::MemoryAccess(access) => memory_keys(&mut map, table, access),
        Event::Tamper(tamper) => tamper_keys(&mut map, tamper),
        Event::IoUring(uring) => {
            map.insert("monitor.io_uring.operation".into(), json!(uring.op.name()));
            if let IoUringOp::Submit(opcode) = uring.op {
                map.insert("monitor.io_uring.opcode".into(), json!(opcode));
            }
            map.insert(
                "monitor.io_uring.ring".into(),
                json!(format!("{:#x}", uring.ring)),
            );
            if uring.sq_thread {
                map.insert("monitor.io_uring.sq_thread".into(), json!(true));
            }
        }
        Event::GpuIoctls(summary) => {
            let counts: Vec<Value> = summary
                .counts
                .iter()
                .map(|c| {
                    json!({
                        "device.class": c.class.name(),
                        "ioctl.type": c.ioctl_type,
                        "ioctl.type.char": char::from(c.ioctl_type).to_string(),
                        "ioctl.nr": c.nr,
                        "count": c.count,
                    })
                })
                .collect();
            let total: u64 = summary.counts.iter().map(|c| c.count).sum();
            map.insert("monitor.gpu.ioctls".into(), Value::Array(counts));
            map.insert("monitor.gpu.ioctls.total".into(), json!(total));
        }
    }
    Value::Object(map)
}

/// The process whose memory was reached, as `monitor.target.process.*` (the `process.*` keys
/// are the accessor's).
fn memory_keys(map: &mut Map<String, Value>, table: &ProcessTable, access: &MemoryAccess) {
    map.insert("monitor.memory.operation".into(), json!(access.op.name()));
    if let Some(request) = access.op.ptrace_request() {
        map.insert("monitor.ptrace.request".into(), json!(request));
    }
    if let Some(fd) = access.fd {
        map.insert("monitor.memory.fd".into(), json!(fd));
    }
    map.insert(
        "monitor.target.process.pid".into(),
        json!(access.target_tgid),
    );
    if access.monitor {
        map.insert("monitor.target.monitor".into(), json!(true));
    }
    let target = if access.target_start_time_ns != 0 {
        table.get(access.target_tgid, access.target_start_time_ns)
    } else {
        table.get_by_tgid(access.target_tgid)
    };
    if let Some(exe) = target.and_then(|t| t.exe.as_ref()) {
        map.insert("monitor.target.process.executable.path".into(), json!(exe));
    }
    if let Some(target) = target {
        map.insert(
            "monitor.target.process.command_args".into(),
            json!(target.args),
        );
    }
}

/// What was done to the monitor: `monitor.tamper.*`, and the object (`monitor.bpf.*`) or
/// the signal.
fn tamper_keys(map: &mut Map<String, Value>, tamper: &crate::event::Tamper) {
    use crate::event::TamperOp;
    map.insert("monitor.tamper.operation".into(), json!(tamper.op.name()));
    match tamper.op {
        TamperOp::Bpf {
            cmd,
            object,
            id,
            unverified,
            read_only,
        } => {
            map.insert(
                "monitor.bpf.command".into(),
                json!(monitor_common::bpf_cmd_name(cmd)),
            );
            map.insert(
                "monitor.bpf.object.kind".into(),
                json!(match object {
                    monitor_common::BpfObjectKind::Program => "program",
                    monitor_common::BpfObjectKind::Map => "map",
                    monitor_common::BpfObjectKind::Link => "link",
                }),
            );
            map.insert("monitor.bpf.object.id".into(), json!(id));
            // Resolved from the caller's fd table (identified), or named by an id in its
            // memory (suspected).
            map.insert("monitor.unverified".into(), json!(unverified));
            if read_only {
                map.insert("monitor.bpf.read_only".into(), json!(true));
            }
            if let Some(result) = tamper.result {
                result_keys(map, result, "monitor.result");
            }
        }
        TamperOp::Signal { signal, thread } => {
            map.insert("monitor.signal.number".into(), json!(signal));
            if let Some(name) = signal_name(signal) {
                map.insert("monitor.signal.name".into(), json!(name));
            }
            map.insert("monitor.target.thread.id".into(), json!(thread));
            // TRACE_SIGNAL_*: 0 delivered, 1 ignored, 2 already pending, 3 overflow, 4 lose
            // info.
            if let Some(result) = tamper.result {
                let outcome = match result {
                    0 => "delivered",
                    1 => "ignored",
                    2 => "already-pending",
                    _ => "other",
                };
                map.insert("monitor.signal.result".into(), json!(outcome));
            }
        }
    }
}

/// `error.type` for a failure, or the success value under `ok_key`.
fn result_keys(map: &mut Map<String, Value>, result: i64, ok_key: &str) {
    if result < 0 {
        map.insert(semconv::ERROR_TYPE.into(), json!(errno_name(-result)));
    } else {
        map.insert(ok_key.into(), json!(result));
    }
}

fn file_keys(map: &mut Map<String, Value>, file: &File) {
    map.insert(semconv::FILE_PATH.into(), json!(file.path));
    if let Some(name) = file.path.rsplit('/').next().filter(|n| !n.is_empty()) {
        map.insert(semconv::FILE_NAME.into(), json!(name));
    }
    if file.path_truncated {
        map.insert("file.path.truncated".into(), json!(true));
    }
    if file.unverified {
        map.insert("monitor.unverified".into(), json!(true));
    }
    map.insert("monitor.file.operation".into(), json!(file.op.name()));
    if file.op == FileOp::Open {
        map.insert("monitor.file.access".into(), json!(file.access.mode()));
        let mut flags = Vec::new();
        if file.access.create {
            flags.push("create");
        }
        if file.access.truncate {
            flags.push("truncate");
        }
        if !flags.is_empty() {
            map.insert("monitor.file.flags".into(), json!(flags));
        }
    } else {
        map.insert("monitor.file.access".into(), json!("write"));
    }
    if let Some(target) = &file.target {
        map.insert("monitor.file.target.path".into(), json!(target));
    }
    if file.protected {
        map.insert("monitor.file.protected".into(), json!(true));
    }
    let ok_key = if file.op == FileOp::Open {
        "monitor.result.fd"
    } else {
        "monitor.result"
    };
    result_keys(map, file.result, ok_key);
    raw_name_keys(map, &file.raw);
}

/// For each name that is not valid UTF-8, its exact bytes next to its text form: under
/// `monitor.<key>_bytes` (`monitor.file.path_bytes` for `file.path`), escaped by
/// [`escape_bytes`]. The key's presence is the marker that the text form is lossy. Alerts
/// carry the record's keys, so JSON and OTLP get the same.
fn raw_name_keys(map: &mut Map<String, Value>, raw: &RawNames) {
    let bytes_key = |key: &str| {
        if key.starts_with("monitor.") {
            format!("{key}_bytes")
        } else {
            format!("monitor.{key}_bytes")
        }
    };
    for (key, bytes) in &raw.paths {
        map.insert(bytes_key(key), json!(escape_bytes(bytes)));
    }
    if let Some(args) = &raw.args {
        let escaped: Vec<String> = args.iter().map(|a| escape_bytes(a)).collect();
        map.insert(bytes_key(semconv::PROCESS_COMMAND_ARGS), json!(escaped));
    }
}

/// Bytes as text that gives them back exactly: valid UTF-8 as it is, `\` as `\\`, and every
/// byte of an invalid sequence as `\xNN` (`bad\xff.bin`).
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

fn net_keys(map: &mut Map<String, Value>, net: &Net) {
    map.insert("monitor.network.operation".into(), json!(net.op.name()));
    map.insert(
        semconv::NETWORK_TRANSPORT.into(),
        json!(net.transport.name()),
    );
    for (prefix, addr) in [("network.peer", net.peer), ("network.local", net.local)] {
        if let Some(addr) = addr {
            map.insert(format!("{prefix}.address"), json!(addr.ip().to_string()));
            map.insert(format!("{prefix}.port"), json!(addr.port()));
            let family = if addr.is_ipv4() { "ipv4" } else { "ipv6" };
            map.insert(semconv::NETWORK_TYPE.into(), json!(family));
        }
    }
    if let Some(path) = &net.unix_path {
        let key = if matches!(net.op, NetOp::Bind | NetOp::Listen) {
            semconv::NETWORK_LOCAL_ADDRESS
        } else {
            semconv::NETWORK_PEER_ADDRESS
        };
        map.insert(key.into(), json!(path));
    }
    if net.unverified {
        map.insert("monitor.unverified".into(), json!(true));
    }
    // A non-blocking connect in progress is not a failure.
    if net.result == -115 {
        map.insert("monitor.network.in_progress".into(), json!(true));
    } else {
        decision_keys(map, net.decision, net.result, "monitor.result");
    }
}

/// The result of an operation a cgroup program judged before it ran (`monitor.decision`, and
/// `error.type` when it refused), or the result a syscall tracepoint saw.
fn decision_keys(map: &mut Map<String, Value>, decision: Decision, result: i64, ok_key: &str) {
    let name = match decision {
        Decision::Observed => return result_keys(map, result, ok_key),
        Decision::Allowed => "allowed",
        Decision::Denied => "denied",
        Decision::WouldDeny => "would-deny",
    };
    map.insert("monitor.decision".into(), json!(name));
    if result < 0 {
        result_keys(map, result, ok_key);
    }
}

/// Where a loss happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossStage {
    /// Lost in the kernel, for the reason of the counter family that counted it: a full
    /// ring, a full map, a kernel read that failed (`monitor_common::Stat::LOSSES`).
    Kernel(monitor_common::Stat),
    /// The kernel's fanotify queue overflowed (the guards' events).
    GuardOverflow,
    /// The reader's queue to the processing stage was full.
    User,
    /// A ring record that could not be decoded (its kind may be unknown: reported as
    /// [`UNKNOWN_KIND`]).
    Undecodable,
    /// `monitor trace`'s stdout did not keep up: records dropped past the writer's bound
    /// ([`trace_out`]), of any kind.
    TraceOutput,
    /// A governed process's resolved `allow.exec` executables (or its instance) could not be
    /// written to the kernel's maps: its profile lost part of its kernel exec check.
    ResolvedExec,
}

/// `monitor.loss.event_kind` of a loss counted where the kind is not known.
pub const UNKNOWN_KIND: &str = "unknown";

impl LossStage {
    pub fn name(self) -> &'static str {
        match self {
            LossStage::Kernel(_) | LossStage::GuardOverflow | LossStage::ResolvedExec => "kernel",
            LossStage::User | LossStage::Undecodable | LossStage::TraceOutput => "user",
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            LossStage::Kernel(stat) => stat.reason(),
            LossStage::GuardOverflow => "fanotify-overflow",
            LossStage::User => "queue-full",
            LossStage::Undecodable => "undecodable",
            LossStage::TraceOutput => "stdout-full",
            LossStage::ResolvedExec => "resolved-exec-not-written",
        }
    }
}

/// The record of events lost since the last report.
pub fn loss_record(
    clock: &BootClock,
    now_ns: u64,
    stage: LossStage,
    kind: &str,
    count: u64,
) -> Value {
    let mut map = base(clock, "loss", now_ns);
    map.insert("monitor.loss.stage".into(), json!(stage.name()));
    map.insert("monitor.loss.reason".into(), json!(stage.reason()));
    map.insert("monitor.loss.event_kind".into(), json!(kind));
    map.insert("monitor.loss.count".into(), json!(count));
    Value::Object(map)
}

/// The same loss as an alert (`monitor run`): losing events is a security event.
pub fn loss_alert(
    clock: &BootClock,
    now_ns: u64,
    stage: LossStage,
    kind: &str,
    count: u64,
) -> crate::event::alert::Alert {
    let Value::Object(mut attributes) = loss_record(clock, now_ns, stage, kind, count) else {
        unreachable!("loss_record builds an object")
    };
    attributes.remove("time");
    let time = clock.unix_ns(now_ns);
    crate::event::alert::Alert {
        rule: "events-lost".into(),
        severity: crate::event::alert::Severity::High,
        action: crate::event::alert::Action::Alert,
        profile: None,
        time_unix_ns: time,
        observed_unix_ns: time,
        count: 1,
        uid: crate::event::alert::new_uid(),
        attributes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys taken from `opentelemetry-semantic-conventions` are the ones the alerts always
    /// carried: a crate upgrade that renamed one would change what collectors receive.
    #[test]
    fn semantic_convention_keys_are_the_emitted_ones() {
        use opentelemetry_semantic_conventions::attribute as semconv;
        for (key, emitted) in [
            (semconv::CONTAINER_ID, "container.id"),
            (semconv::ERROR_TYPE, "error.type"),
            (semconv::FILE_NAME, "file.name"),
            (semconv::FILE_PATH, "file.path"),
            (semconv::HOST_ID, "host.id"),
            (semconv::HOST_NAME, "host.name"),
            (semconv::LOG_RECORD_UID, "log.record.uid"),
            (semconv::NETWORK_LOCAL_ADDRESS, "network.local.address"),
            (semconv::NETWORK_PEER_ADDRESS, "network.peer.address"),
            (semconv::NETWORK_TRANSPORT, "network.transport"),
            (semconv::NETWORK_TYPE, "network.type"),
            (semconv::PROCESS_ARGS_COUNT, "process.args_count"),
            (semconv::PROCESS_COMMAND_ARGS, "process.command_args"),
            (semconv::PROCESS_CREATION_TIME, "process.creation.time"),
            (semconv::PROCESS_EXECUTABLE_NAME, "process.executable.name"),
            (semconv::PROCESS_EXECUTABLE_PATH, "process.executable.path"),
            (semconv::PROCESS_EXIT_CODE, "process.exit.code"),
            (semconv::PROCESS_LINUX_CGROUP, "process.linux.cgroup"),
            (semconv::PROCESS_PARENT_PID, "process.parent_pid"),
            (semconv::PROCESS_PID, "process.pid"),
            (semconv::SECURITY_RULE_NAME, "security_rule.name"),
            (semconv::SERVICE_NAME, "service.name"),
            (semconv::SERVICE_VERSION, "service.version"),
            (semconv::USER_ID, "user.id"),
        ] {
            assert_eq!(key, emitted);
        }
    }

    #[test]
    fn names_signals() {
        assert_eq!(signal_name(9), Some("SIGKILL"));
        assert_eq!(signal_name(15), Some("SIGTERM"));
        assert_eq!(signal_name(64), None);
    }

    #[test]
    fn loss_alert_has_rule_and_count() {
        let clock = BootClock::new();
        let stage = LossStage::Kernel(monitor_common::Stat::LostRingFull);
        let alert = loss_alert(&clock, 1, stage, "exec", 12).to_json();
        assert_eq!(alert["security_rule.name"], "events-lost");
        assert_eq!(alert["monitor.loss.count"], 12);
        assert_eq!(alert["monitor.loss.stage"], "kernel");
        assert_eq!(alert["monitor.loss.reason"], "ring-buffer-full");
        assert_eq!(alert["event.kind"], "loss");
    }

    /// Each kernel loss family is its own reason: a full map (a syscall's arguments not
    /// kept for its exit) is not a full ring, and a failed read is neither.
    #[test]
    fn kernel_losses_name_their_reason() {
        use monitor_common::Stat;
        let clock = BootClock::new();
        let reasons: Vec<String> = Stat::LOSSES
            .into_iter()
            .map(|stat| {
                let alert = loss_alert(&clock, 1, LossStage::Kernel(stat), "network", 1).to_json();
                assert_eq!(alert["monitor.loss.stage"], "kernel");
                alert["monitor.loss.reason"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(
            reasons,
            [
                "ring-buffer-full",
                "map-full",
                "read-failed",
                "inode-unread"
            ]
        );
        let user = loss_record(&clock, 1, LossStage::User, "file", 3);
        assert_eq!(user["monitor.loss.reason"], "queue-full");
        assert_eq!(user["monitor.loss.stage"], "user");
    }

    #[test]
    fn escaped_bytes_tell_names_apart_and_give_them_back() {
        assert_eq!(escape_bytes(b"bad\xff.bin"), "bad\\xff.bin");
        assert_ne!(escape_bytes(b"bad\xff.bin"), escape_bytes(b"bad\xfe.bin"));
        // A literal backslash cannot pass for an escape.
        assert_eq!(escape_bytes(b"a\\xff"), "a\\\\xff");
        assert_eq!(escape_bytes("caf\u{e9}".as_bytes()), "caf\u{e9}");
    }

    #[test]
    fn records_carry_the_exact_bytes_of_names_that_are_not_utf8() {
        use crate::event::{Access, Header, RawNames};
        let file = |name: &[u8]| {
            let (path, bytes) = crate::event::name_text(name);
            Event::File(File {
                header: Header {
                    kind: monitor_common::EventKind::File,
                    time_ns: 1,
                    tgid: 7,
                    pid: 7,
                    start_time_ns: 1,
                    watched: true,
                },
                op: FileOp::Open,
                path,
                path_truncated: false,
                target: None,
                access: Access::default(),
                result: 3,
                protected: false,
                known: None,
                raw: RawNames {
                    paths: bytes.map(|b| ("file.path", b)).into_iter().collect(),
                    args: None,
                },
                guard: None,
                unverified: false,
            })
        };
        let clock = BootClock::new();
        let table = ProcessTable::new();
        let ff = event_record(&clock, &table, &file(b"/d/bad\xff.bin"), None);
        let fe = event_record(&clock, &table, &file(b"/d/bad\xfe.bin"), None);
        let ok = event_record(&clock, &table, &file(b"/d/good.bin"), None);
        assert_eq!(ff["file.path"], fe["file.path"]);
        assert_eq!(ff["monitor.file.path_bytes"], "/d/bad\\xff.bin");
        assert_eq!(fe["monitor.file.path_bytes"], "/d/bad\\xfe.bin");
        assert!(ok.get("monitor.file.path_bytes").is_none(), "{ok}");
    }
}
