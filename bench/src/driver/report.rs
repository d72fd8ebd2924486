//! The report: the side-by-side table, each target met or missed with what was measured,
//! and the details behind them, as Markdown and JSON.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;
use serde_json::Value;

use super::{
    workload::{Kind, Workload},
    Results, RunSample, SessionRecord, Setup,
};
use crate::stats::Summary;

/// A baseline whose rounds spread more than this is too noisy to trust.
pub const NOISE_LIMIT: f64 = 0.15;

/// Per-program cost over a setup × workload, summed over the rounds.
#[derive(Clone, Debug, Serialize)]
pub struct ProgCost {
    pub name: String,
    pub ns_per_run: f64,
    pub runs_per_op: f64,
    pub ns_per_op: f64,
}

/// One setup × workload over the rounds.
#[derive(Clone, Debug, Serialize)]
pub struct Cell {
    pub setup: Setup,
    pub workload: Workload,
    /// ns per operation.
    pub time: Summary,
    /// Median over the median of no monitor.
    pub ratio: Option<f64>,
    /// Median of the per-round ratios (each round's run over that round's baseline).
    pub paired_ratio: Option<f64>,
    /// Median minus the baseline's median, ns per operation.
    pub overhead_ns: Option<f64>,
    /// The tracer's CPU per operation (median over rounds).
    pub daemon_cpu_ns_per_op: Option<f64>,
    pub daemon_ctxt_per_1k_ops: Option<(f64, f64)>,
    pub daemon_rss_kb: Option<u64>,
    /// Kernel programs' run time per operation, all programs together.
    pub bpf_ns_per_op: Option<f64>,
    pub progs: Vec<ProgCost>,
}

fn runs_of(results: &Results, setup: Setup, workload: Workload) -> Vec<&RunSample> {
    results
        .runs
        .iter()
        .filter(|r| r.setup == setup && r.workload == workload)
        .collect()
}

fn median(values: &[f64]) -> Option<f64> {
    Summary::of(values).map(|s| s.median)
}

pub fn cells(results: &Results) -> Vec<Cell> {
    let mut cells = Vec::new();
    for setup in Setup::ALL {
        for &workload in setup.workloads() {
            let runs = runs_of(results, setup, workload);
            let times: Vec<f64> = runs.iter().map(|r| r.ns_per_op).collect();
            let Some(time) = Summary::of(&times) else {
                continue;
            };
            let baseline = runs_of(results, Setup::Baseline, workload);
            let base = Summary::of(&baseline.iter().map(|r| r.ns_per_op).collect::<Vec<_>>());
            let ratio = base.map(|b| time.median / b.median);
            let paired: Vec<f64> = runs
                .iter()
                .filter_map(|r| {
                    let b = baseline.iter().find(|b| b.round == r.round)?;
                    Some(r.ns_per_op / b.ns_per_op)
                })
                .collect();
            let daemons: Vec<_> = runs
                .iter()
                .filter_map(|r| r.daemon.as_ref().map(|d| (r.ops.max(1) as f64, d)))
                .collect();
            let cpu: Vec<f64> = daemons
                .iter()
                .map(|(ops, d)| d.cpu_ns as f64 / ops)
                .collect();
            let vol: Vec<f64> = daemons
                .iter()
                .map(|(ops, d)| d.voluntary_ctxt as f64 * 1000.0 / ops)
                .collect();
            let invol: Vec<f64> = daemons
                .iter()
                .map(|(ops, d)| d.involuntary_ctxt as f64 * 1000.0 / ops)
                .collect();
            let total_ops: f64 = daemons.iter().map(|(ops, _)| ops).sum();
            let mut by_prog: BTreeMap<String, (u64, u64)> = BTreeMap::new();
            for (_, d) in &daemons {
                for p in &d.progs {
                    let e = by_prog.entry(p.name.clone()).or_default();
                    e.0 += p.run_time_ns;
                    e.1 += p.run_cnt;
                }
            }
            let mut progs: Vec<ProgCost> = by_prog
                .into_iter()
                .map(|(name, (time_ns, runs))| ProgCost {
                    name,
                    ns_per_run: time_ns as f64 / runs.max(1) as f64,
                    runs_per_op: runs as f64 / total_ops.max(1.0),
                    ns_per_op: time_ns as f64 / total_ops.max(1.0),
                })
                .collect();
            progs.sort_by(|a, b| b.ns_per_op.total_cmp(&a.ns_per_op));
            let bpf_ns_per_op =
                (!daemons.is_empty()).then(|| progs.iter().map(|p| p.ns_per_op).sum());
            cells.push(Cell {
                setup,
                workload,
                time,
                ratio,
                paired_ratio: median(&paired),
                overhead_ns: base.map(|b| time.median - b.median),
                daemon_cpu_ns_per_op: median(&cpu),
                daemon_ctxt_per_1k_ops: median(&vol).zip(median(&invol)),
                daemon_rss_kb: daemons.iter().map(|(_, d)| d.rss_kb_after).max(),
                bpf_ns_per_op,
                progs,
            });
        }
    }
    cells
}

fn cell(cells: &[Cell], setup: Setup, workload: Workload) -> Option<&Cell> {
    cells
        .iter()
        .find(|c| c.setup == setup && c.workload == workload)
}

/// A target's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Met,
    Missed,
    /// Measured, but the difference is within the noise (e.g. a peer's overhead ≤ 0).
    Inconclusive,
    NotMeasured,
}

impl Verdict {
    fn text(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "**MISSED**",
            Verdict::Inconclusive => "inconclusive (noise)",
            Verdict::NotMeasured => "not measured",
        }
    }

    fn of(met: bool) -> Verdict {
        if met {
            Verdict::Met
        } else {
            Verdict::Missed
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub target: String,
    pub goal: String,
    pub measured: String,
    pub verdict: Verdict,
    /// What was measured that explains a miss (or qualifies a pass).
    pub evidence: String,
}

fn fmt_ns(ns: f64) -> String {
    if ns.abs() >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns.abs() >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn fmt_rate(per_second: f64) -> String {
    if per_second >= 1e6 {
        format!("{:.2}M/s", per_second / 1e6)
    } else {
        format!("{:.0}K/s", per_second / 1e3)
    }
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

/// "kernel programs 812 ns/op (sys_exit_file 600 ns × 1.00/op, ...); daemon CPU 1.2 µs/op;
/// daemon context switches 3.1 voluntary + 0.2 involuntary per 1K ops".
fn cost_breakdown(cell: &Cell) -> String {
    let mut parts = Vec::new();
    if let Some(bpf) = cell.bpf_ns_per_op {
        let top: Vec<String> = cell
            .progs
            .iter()
            .take(4)
            .map(|p| {
                format!(
                    "{} {} × {:.2}/op",
                    p.name,
                    fmt_ns(p.ns_per_run),
                    p.runs_per_op
                )
            })
            .collect();
        if top.is_empty() {
            parts.push(format!("kernel programs {} /op", fmt_ns(bpf)));
        } else {
            parts.push(format!(
                "kernel programs {} /op ({})",
                fmt_ns(bpf),
                top.join(", ")
            ));
        }
    }
    if let Some(cpu) = cell.daemon_cpu_ns_per_op {
        parts.push(format!("daemon CPU {} /op", fmt_ns(cpu)));
    }
    if let Some((vol, invol)) = cell.daemon_ctxt_per_1k_ops {
        parts.push(format!(
            "daemon context switches {vol:.1} voluntary + {invol:.1} involuntary per 1K ops"
        ));
    }
    parts.join("; ")
}

fn noisy_baselines(cells: &[Cell]) -> Vec<(Workload, f64)> {
    cells
        .iter()
        .filter(|c| c.setup == Setup::Baseline)
        .map(|c| (c.workload, c.time.spread))
        .collect()
}

fn ratio_target(
    cells: &[Cell],
    name: &str,
    setup: Setup,
    workload: Workload,
    limit: f64,
) -> Target {
    let goal = format!("≤ {limit:.2}× no monitor");
    let Some(c) = cell(cells, setup, workload) else {
        return Target {
            target: format!("{name}: {}", workload.name()),
            goal,
            measured: "-".into(),
            verdict: Verdict::NotMeasured,
            evidence: "no runs (see failures)".into(),
        };
    };
    let ratio = c.ratio.unwrap_or(f64::NAN);
    let base_spread = cell(cells, Setup::Baseline, workload).map_or(0.0, |b| b.time.spread);
    let verdict = Verdict::of(ratio <= limit);
    let mut evidence = format!(
        "+{} /op over no monitor (paired per-round ratio {:.3}×)",
        fmt_ns(c.overhead_ns.unwrap_or(f64::NAN)),
        c.paired_ratio.unwrap_or(f64::NAN)
    );
    let breakdown = cost_breakdown(c);
    if !breakdown.is_empty() {
        evidence.push_str("; ");
        evidence.push_str(&breakdown);
    }
    if base_spread > NOISE_LIMIT {
        evidence.push_str(&format!(
            "; baseline spread {:.0}% > {:.0}%: too noisy to trust",
            base_spread * 100.0,
            NOISE_LIMIT * 100.0
        ));
    }
    Target {
        target: format!("{name}: {}", workload.name()),
        goal,
        measured: format!("{ratio:.3}×"),
        verdict,
        evidence,
    }
}

/// (added p99, added p50) of the guarded opens over no monitor, ns: medians over the rounds.
fn guarded_added(g: &super::GuardedOpen, flood: bool) -> Option<(f64, f64)> {
    let runs = if flood { &g.guarded_flood } else { &g.guarded };
    let median = |runs: &[super::OpenLatency], f: fn(&super::OpenLatency) -> f64| {
        Summary::of(&runs.iter().map(f).collect::<Vec<_>>()).map(|s| s.median)
    };
    Some((
        median(runs, |l| l.p99_ns)? - median(&g.baseline, |l| l.p99_ns)?,
        median(runs, |l| l.p50_ns)? - median(&g.baseline, |l| l.p50_ns)?,
    ))
}

fn governed_sessions(results: &Results) -> Vec<&SessionRecord> {
    results
        .sessions
        .iter()
        .filter(|s| s.phase == "rounds" && s.setup == Some(Setup::Governed))
        .collect()
}

pub fn targets(results: &Results, cells: &[Cell]) -> Vec<Target> {
    let mut targets = vec![ratio_target(
        cells,
        "ungoverned",
        Setup::Ungoverned,
        Workload::new(Kind::Open, false),
        1.05,
    )];
    for workload in Workload::STEADY {
        targets.push(ratio_target(
            cells,
            "governed steady state",
            Setup::Governed,
            workload,
            1.10,
        ));
    }
    for kind in [Kind::Open, Kind::Connect, Kind::Fork] {
        targets.push(ratio_target(
            cells,
            "governed, every event new",
            Setup::Governed,
            Workload::new(kind, true),
            1.40,
        ));
    }

    // Zero loss with every event new.
    let sessions = governed_sessions(results);
    if sessions.is_empty() {
        targets.push(Target {
            target: "governed, every event new: zero loss".into(),
            goal: "0 events lost".into(),
            measured: "-".into(),
            verdict: Verdict::NotMeasured,
            evidence: "no governed session finished".into(),
        });
    } else {
        let lost: u64 = sessions.iter().map(|s| s.lost()).sum();
        let events: u64 = sessions.iter().map(|s| s.events()).sum();
        let details: Vec<String> = sessions
            .iter()
            .flat_map(|s| s.loss_details.iter().cloned())
            .collect();
        targets.push(Target {
            target: "governed, every event new: zero loss".into(),
            goal: "0 events lost".into(),
            measured: format!("{lost} lost of {events} received"),
            verdict: Verdict::of(lost == 0),
            evidence: if details.is_empty() {
                format!(
                    "{} governed sessions; summary and events-lost alerts agree",
                    sessions.len()
                )
            } else {
                format!(
                    "events-lost alerts (stage/kind: count): {}",
                    details.join(", ")
                )
            },
        });
    }

    // ≥ 10× cheaper than bpftrace printing the same events.
    for kind in [Kind::Open, Kind::Connect, Kind::Fork] {
        let workload = Workload::new(kind, true);
        let name = format!(
            "every event new ≥ 10× cheaper than bpftrace printing: {}",
            workload.name()
        );
        let (Some(ours), Some(peer)) = (
            cell(cells, Setup::Governed, workload),
            cell(cells, Setup::BpftracePrint, workload),
        ) else {
            targets.push(Target {
                target: name,
                goal: "bpftrace overhead / monitor overhead ≥ 10".into(),
                measured: "-".into(),
                verdict: Verdict::NotMeasured,
                evidence: if results.bpftrace.is_none() {
                    "bpftrace is not installed".into()
                } else {
                    "no runs (see failures)".into()
                },
            });
            continue;
        };
        let ours_ns = ours.overhead_ns.unwrap_or(f64::NAN);
        let peer_ns = peer.overhead_ns.unwrap_or(f64::NAN);
        let (measured, verdict) = if peer_ns <= 0.0 {
            (
                "bpftrace overhead ≤ 0 (within noise)".to_owned(),
                Verdict::Inconclusive,
            )
        } else if ours_ns <= 0.0 {
            (
                "monitor overhead ≤ 0 (within noise)".to_owned(),
                Verdict::Met,
            )
        } else {
            let factor = peer_ns / ours_ns;
            (format!("{factor:.1}×"), Verdict::of(factor >= 10.0))
        };
        let met = verdict == Verdict::Met;
        let mut evidence = format!(
            "bpftrace printing +{} /op, monitor +{} /op",
            fmt_ns(peer_ns),
            fmt_ns(ours_ns)
        );
        let peer_lost: u64 = results
            .sessions
            .iter()
            .filter(|s| s.setup == Some(Setup::BpftracePrint))
            .map(|s| s.end.bpftrace_lost)
            .sum();
        if peer_lost > 0 {
            evidence.push_str(&format!(
                " (bpftrace lost {peer_lost} events over its sessions)"
            ));
        }
        if !met {
            evidence.push_str("; monitor: ");
            evidence.push_str(&cost_breakdown(ours));
            evidence.push_str("; bpftrace: ");
            evidence.push_str(&cost_breakdown(peer));
        }
        targets.push(Target {
            target: name,
            goal: "bpftrace overhead / monitor overhead ≥ 10".into(),
            measured,
            verdict,
            evidence,
        });
    }

    // The user-space pipeline.
    match &results.pipeline {
        Some(p) => {
            let full = p.stages.last().map(|(_, s)| s.median).unwrap_or(f64::NAN);
            let rate = 1e9 / full;
            let stages: Vec<String> = p
                .stages
                .iter()
                .map(|(name, s)| {
                    format!(
                        "{name} {:.0} ns/event ({})",
                        s.median,
                        fmt_rate(1e9 / s.median)
                    )
                })
                .collect();
            let total: u64 = p.by_kind.iter().map(|k| k.total_ns).sum();
            let kinds: Vec<String> = p
                .by_kind
                .iter()
                .map(|k| {
                    format!(
                        "{} {:.0} ns/event ({:.0}% of the time)",
                        k.kind,
                        k.total_ns as f64 / k.events.max(1) as f64,
                        k.total_ns as f64 * 100.0 / total.max(1) as f64
                    )
                })
                .collect();
            targets.push(Target {
                target: "user-space pipeline (decode + process table + rules), one core".into(),
                goal: "≥ 1M events/s".into(),
                measured: fmt_rate(rate),
                verdict: Verdict::of(rate >= 1e6),
                evidence: format!("{}; by kind: {}", stages.join("; "), kinds.join(", ")),
            });
        }
        None => targets.push(not_measured(
            "user-space pipeline (decode + process table + rules), one core",
            "≥ 1M events/s",
        )),
    }

    // Idle RSS.
    match &results.footprint {
        Some(f) => targets.push(Target {
            target: "daemon RSS, idle, built-in profiles".into(),
            goal: "≤ 64 MB".into(),
            measured: mb(f.idle_rss_kb),
            verdict: Verdict::of(f.idle_rss_kb <= 64 * 1024),
            evidence: format!(
                "anonymous {}, file-backed {}, peak {}; with {} more processes tracked: {} (peak {})",
                mb(f.idle_anon_kb),
                mb(f.idle_file_kb),
                mb(f.idle_hwm_kb),
                f.tracked,
                mb(f.tracked_rss_kb),
                mb(f.tracked_hwm_kb)
            ),
        }),
        None => targets.push(not_measured("daemon RSS, idle, built-in profiles", "≤ 64 MB")),
    }

    // Alert latency.
    match &results.latency {
        Some(l) if l.p99_ms.is_some() => {
            let p99 = l.p99_ms.unwrap_or(f64::NAN);
            let mut evidence = format!(
                "p50 {:.2} ms, max {:.2} ms, {} of {} alerts matched; inside the daemon \
                 (alert observed_time − kernel time) p50 {:.2} ms, p99 {:.2} ms; the reader \
                 drains the ring every {} ms",
                l.p50_ms.unwrap_or(f64::NAN),
                l.max_ms.unwrap_or(f64::NAN),
                l.matched,
                l.requested,
                l.in_daemon_p50_ms.unwrap_or(f64::NAN),
                l.in_daemon_p99_ms.unwrap_or(f64::NAN),
                l.drain_interval_ms
            );
            if l.matched < l.requested {
                evidence.push_str(&format!(
                    "; {} alerts never arrived",
                    l.requested - l.matched
                ));
            }
            evidence.push_str(&slow_alerts(l));
            targets.push(Target {
                target: "alert latency, syscall to alert line, p99".into(),
                goal: "≤ 25 ms".into(),
                measured: format!("{p99:.2} ms"),
                verdict: Verdict::of(p99 <= 25.0 && l.matched == l.requested),
                evidence,
            });
        }
        Some(l) => targets.push(Target {
            target: "alert latency, syscall to alert line, p99".into(),
            goal: "≤ 25 ms".into(),
            measured: "no alert arrived".into(),
            verdict: Verdict::Missed,
            evidence: format!("0 of {} alerts matched", l.requested),
        }),
        None => targets.push(not_measured(
            "alert latency, syscall to alert line, p99",
            "≤ 25 ms",
        )),
    }

    // Ungoverned opens against bpftrace counting the same tracepoint.
    let open = Workload::new(Kind::Open, false);
    let name = "ungoverned openat+close against bpftrace counting sys_enter_openat";
    match (
        cell(cells, Setup::Ungoverned, open).and_then(|c| c.ratio),
        cell(cells, Setup::BpftraceCount, open).and_then(|c| c.ratio),
    ) {
        (Some(ours), Some(peer)) => targets.push(Target {
            target: name.into(),
            goal: "no worse than bpftrace".into(),
            measured: format!("{ours:.3}× against {peer:.3}×"),
            verdict: Verdict::of(ours <= peer),
            evidence: cell(cells, Setup::Ungoverned, open)
                .map(cost_breakdown)
                .unwrap_or_default(),
        }),
        _ => targets.push(not_measured(name, "no worse than bpftrace")),
    }

    // The guard's permission round trip.
    for (flood, name) in [
        (false, "allowed open of a guarded file: added latency p99"),
        (
            true,
            "allowed open of a guarded file during a flood: added latency p99",
        ),
    ] {
        match results
            .guarded_open
            .as_ref()
            .and_then(|g| guarded_added(g, flood))
        {
            Some((added_p99, added_p50)) => targets.push(Target {
                target: name.into(),
                goal: "≤ 1 ms".into(),
                measured: fmt_ns(added_p99),
                verdict: Verdict::of(added_p99 <= 1e6),
                evidence: format!(
                    "p50 +{}; medians over the rounds of each run's own percentiles, minus no \
                     monitor's",
                    fmt_ns(added_p50)
                ),
            }),
            None => targets.push(not_measured(name, "≤ 1 ms")),
        }
    }

    // Sustained rate without loss.
    let goal = format!(
        "0 lost at {} events/s for {:.0} s",
        results.sizes.sustained_rate, results.sizes.sustained_seconds
    );
    match results
        .rates
        .as_ref()
        .and_then(|r| r.sustained.as_ref().map(|s| (r, s)))
    {
        Some((rates, s)) => {
            let lost = s.lost.max(rates.sustained_lost_summary.unwrap_or(0));
            let reached = s.achieved >= 0.95 * s.requested as f64;
            let mut evidence = format!(
                "achieved {} (governed process, {} threads, distinct paths); daemon {:.0}% of a \
                 core, {} voluntary + {} involuntary context switches",
                fmt_rate(s.achieved),
                results.sizes.rate_threads,
                s.daemon_cpu_pct,
                s.daemon_voluntary_ctxt,
                s.daemon_involuntary_ctxt
            );
            if !s.loss_details.is_empty() {
                evidence.push_str(&format!(
                    "; events-lost (stage/kind: count): {}",
                    s.loss_details.join(", ")
                ));
            }
            if !reached {
                evidence.push_str(&format!(
                    "; the workload reached only {:.0}% of the requested rate on this machine",
                    s.achieved / s.requested as f64 * 100.0
                ));
            }
            if let Some(max) = rates.max_without_loss {
                evidence.push_str(&format!(
                    "; ramp: highest rate without loss {} ({})",
                    fmt_rate(max),
                    rates.stopped
                ));
            }
            targets.push(Target {
                target: "zero loss at the sustained rate".into(),
                goal,
                measured: format!("{lost} lost at {}", fmt_rate(s.achieved)),
                verdict: Verdict::of(lost == 0 && reached),
                evidence,
            });
        }
        None => targets.push(not_measured("zero loss at the sustained rate", &goal)),
    }
    targets
}

/// "; 14 alerts took > 20 ms, their opens 1.00 s apart (median); slowest ...".
fn slow_alerts(l: &super::Latency) -> String {
    if l.slow == 0 {
        return String::new();
    }
    let slowest: Vec<String> = l
        .slowest
        .iter()
        .take(5)
        .map(|(at, ms)| format!("{ms:.1} ms at +{:.2} s", at / 1000.0))
        .collect();
    format!(
        "; {} alerts took > {} ms, their opens {} apart (median gap); slowest: {}. The \
         daemon's timers: ring drain every {} ms, housekeeping (loss report, alert flush, \
         table sweep) every 1 s, config change poll every 2 s",
        l.slow,
        2 * l.drain_interval_ms,
        l.slow_gap_ms
            .map_or("-".into(), |g| format!("{:.2} s", g / 1000.0)),
        slowest.join(", "),
        l.drain_interval_ms
    )
}

fn not_measured(target: &str, goal: &str) -> Target {
    Target {
        target: target.into(),
        goal: goal.into(),
        measured: "-".into(),
        verdict: Verdict::NotMeasured,
        evidence: "the phase failed (see failures)".into(),
    }
}

/// The JSON file: the raw results plus the derived cells and targets.
pub fn json(results: &Results) -> Value {
    let cells = cells(results);
    let targets = targets(results, &cells);
    let mut value = serde_json::to_value(results).unwrap_or(Value::Null);
    value["cells"] = serde_json::to_value(&cells).unwrap_or(Value::Null);
    value["targets"] = serde_json::to_value(&targets).unwrap_or(Value::Null);
    value["noise"] = serde_json::to_value(
        noisy_baselines(&cells)
            .iter()
            .map(|(w, spread)| {
                serde_json::json!({
                    "workload": w.key(),
                    "baseline_spread": spread,
                    "too_noisy": *spread > NOISE_LIMIT,
                })
            })
            .collect::<Vec<_>>(),
    )
    .unwrap_or(Value::Null);
    value
}

fn escape(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// The Markdown report.
pub fn markdown(results: &Results) -> String {
    let cells = cells(results);
    let targets = targets(results, &cells);
    let mut md = String::new();
    let kind = if results.quick {
        "quick run (tiny sizes: proves the harness, not the numbers)"
    } else {
        "full run"
    };
    let _ = writeln!(md, "# Benchmark results ({kind})\n");
    let _ = writeln!(md, "- Date: {}", results.date);
    let _ = writeln!(md, "- Command: `{}`", results.command);
    let _ = writeln!(md, "- Built from: {}", results.revision);
    let _ = writeln!(md, "- Machine: `{}`", results.machine.uname);
    let _ = writeln!(
        md,
        "- CPU: {} × {} ({} MB RAM); load average {} at the start, {} at the end",
        results.machine.nproc,
        results.machine.cpu_model,
        results.machine.mem_total_kb / 1024,
        results.machine.loadavg_start,
        results.machine.loadavg_end
    );
    let _ = writeln!(
        md,
        "- Rounds: {} (interleaved: every setup once per round, order rotated each round); \
         sizes: openat+close {}, connect {}, fork+exec {} per run",
        results.sizes.rounds,
        results.sizes.open_iters,
        results.sizes.connect_iters,
        results.sizes.fork_iters
    );
    if let Some(cpu) = results.workload_cpu {
        let _ = writeln!(
            md,
            "- The measured workloads are pinned to CPU {cpu} (a loopback connect costs ~4× \
             more when its wake-ups cross CPUs); the tracers are not pinned"
        );
    }
    let _ = writeln!(md, "- Took {:.0} s", results.seconds);
    if !results.neighbours_at_start.is_empty() || !results.neighbours_at_end.is_empty() {
        let list = |l: &[String]| {
            if l.is_empty() {
                "none".to_owned()
            } else {
                l.join(", ")
            }
        };
        let _ = writeln!(
            md,
            "- Other busy processes (noise: builds, other monitors): at the start {}; at the end {}",
            list(&results.neighbours_at_start),
            list(&results.neighbours_at_end)
        );
    }
    if !results.phase_load.is_empty() {
        let loads: Vec<String> = results
            .phase_load
            .iter()
            .map(|(phase, load)| format!("{phase} {load}"))
            .collect();
        let _ = writeln!(
            md,
            "- Load average as each phase began: {}",
            loads.join("; ")
        );
    }
    md.push('\n');

    // Noise.
    let noisy = noisy_baselines(&cells);
    let too_noisy: Vec<String> = noisy
        .iter()
        .filter(|(_, s)| *s > NOISE_LIMIT)
        .map(|(w, s)| format!("{} {:.0}%", w.name(), s * 100.0))
        .collect();
    let spreads: Vec<String> = noisy
        .iter()
        .map(|(w, s)| format!("{} {:.1}%", w.key(), s * 100.0))
        .collect();
    if too_noisy.is_empty() {
        let _ = writeln!(
            md,
            "**Noise:** the no-monitor baseline's spread (max − min) / median over the rounds \
             stayed within {:.0}% ({}).\n",
            NOISE_LIMIT * 100.0,
            spreads.join(", ")
        );
    } else {
        let _ = writeln!(
            md,
            "**Noise: the machine was too noisy to trust** for: {} (baseline spread (max − \
             min) / median over the rounds above {:.0}%; all: {}). Ratios of those rows are \
             unreliable.\n",
            too_noisy.join(", "),
            NOISE_LIMIT * 100.0,
            spreads.join(", ")
        );
    }

    // Side by side.
    let setups: Vec<Setup> = Setup::ALL
        .into_iter()
        .filter(|s| cells.iter().any(|c| c.setup == *s))
        .collect();
    let _ = writeln!(md, "## Side by side\n");
    let _ = writeln!(
        md,
        "Time per operation measured by the workload itself: median (min) over the rounds, \
         and the ratio of medians to no monitor in the same run.\n"
    );
    let _ = write!(md, "| workload |");
    for s in &setups {
        let _ = write!(md, " {} |", s.name());
    }
    let _ = write!(md, "\n|---|");
    for _ in &setups {
        let _ = write!(md, "---|");
    }
    md.push('\n');
    for workload in Workload::ALL {
        let _ = write!(md, "| {} |", workload.name());
        for &s in &setups {
            match cell(&cells, s, workload) {
                Some(c) if s == Setup::Baseline => {
                    let _ = write!(
                        md,
                        " {} ({}) ±{:.0}% |",
                        fmt_ns(c.time.median),
                        fmt_ns(c.time.min),
                        c.time.spread * 100.0
                    );
                }
                Some(c) => {
                    let _ = write!(
                        md,
                        " {} ({}) **{:.2}×** |",
                        fmt_ns(c.time.median),
                        fmt_ns(c.time.min),
                        c.ratio.unwrap_or(f64::NAN)
                    );
                }
                None => md.push_str(" - |"),
            }
        }
        md.push('\n');
    }
    let _ = writeln!(
        md,
        "\n\"Every event new\": {}; {}; {}. The governed column of those rows is the \
         \"governed, every event new\" setup. ±: the baseline's spread.\n",
        Workload::new(Kind::Open, true).distinct_note(),
        Workload::new(Kind::Connect, true).distinct_note(),
        Workload::new(Kind::Fork, true).distinct_note()
    );

    // Targets.
    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(
        md,
        "| target | goal | measured | verdict | measured reason / detail |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for t in &targets {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            escape(&t.target),
            escape(&t.goal),
            escape(&t.measured),
            t.verdict.text(),
            escape(&t.evidence)
        );
    }
    md.push('\n');

    // Where the time goes.
    let _ = writeln!(md, "## Where the time goes\n");
    let _ = writeln!(
        md,
        "Per operation, medians over the rounds: the tracer's CPU (utime + stime from \
         /proc/PID/stat, 10 ms ticks), its context switches (all threads' \
         /proc/PID/task/*/status), the kernel programs' run time (`kernel.bpf_stats_enabled`, \
         the numbers `bpftool prog show` prints; names cut at 15 characters by the kernel) \
         and the tracer's RSS after the run. The programs run host-wide, so whatever else ran \
         on the machine meanwhile is counted too.\n"
    );
    let _ = writeln!(
        md,
        "| setup | workload | overhead /op | daemon CPU /op | ctxt sw. per 1K ops (vol + invol) | kernel programs /op | top programs (ns/run × runs/op) | RSS |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for c in cells.iter().filter(|c| c.setup != Setup::Baseline) {
        let progs: Vec<String> = c
            .progs
            .iter()
            .take(3)
            .map(|p| format!("{} {} × {:.2}", p.name, fmt_ns(p.ns_per_run), p.runs_per_op))
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            c.setup.name(),
            c.workload.name(),
            c.overhead_ns.map_or("-".into(), fmt_ns),
            c.daemon_cpu_ns_per_op.map_or("-".into(), fmt_ns),
            c.daemon_ctxt_per_1k_ops
                .map_or("-".into(), |(v, i)| format!("{v:.1} + {i:.1}")),
            c.bpf_ns_per_op.map_or("-".into(), fmt_ns),
            escape(&progs.join(", ")),
            c.daemon_rss_kb.map_or("-".into(), mb)
        );
    }
    md.push('\n');

    // Sessions.
    let _ = writeln!(md, "## Tracer sessions\n");
    let _ = writeln!(
        md,
        "| phase | round | setup | events received | lost | daemon CPU per event | alerts | stop took |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for s in &results.sessions {
        let events = s.events();
        let alerts: Vec<String> = s.alerts.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} s |",
            s.phase,
            s.round.map_or("-".into(), |r| (r + 1).to_string()),
            s.setup.map_or("-", |x| x.name()),
            if events > 0 {
                events.to_string()
            } else {
                "-".into()
            },
            s.lost(),
            if events > 0 {
                fmt_ns(s.cpu_ns as f64 / events as f64)
            } else {
                "-".into()
            },
            if alerts.is_empty() {
                "none".into()
            } else {
                escape(&alerts.join(", "))
            },
            s.end.stop_seconds
        );
    }
    md.push('\n');

    if let Some(f) = &results.footprint {
        let _ = writeln!(md, "## Daemon memory\n");
        let _ = writeln!(
            md,
            "- Idle, built-in profiles: VmRSS {} (anonymous {}, file-backed {}), peak {}",
            mb(f.idle_rss_kb),
            mb(f.idle_anon_kb),
            mb(f.idle_file_kb),
            mb(f.idle_hwm_kb)
        );
        let _ = writeln!(
            md,
            "- With {} more processes tracked (sleeping children, forked in {:.1} s): VmRSS {} \
             (anonymous {}), peak {}; daemon CPU to take them in {} ({} per process)",
            f.tracked,
            f.spawn_seconds,
            mb(f.tracked_rss_kb),
            mb(f.tracked_anon_kb),
            mb(f.tracked_hwm_kb),
            fmt_ns(f.spawn_cpu_ns as f64),
            fmt_ns(f.spawn_cpu_ns as f64 / f.tracked.max(1) as f64)
        );
        let _ = writeln!(
            md,
            "- After they were killed: VmRSS {}; daemon CPU for their exits {}\n",
            mb(f.after_kill_rss_kb),
            fmt_ns(f.kill_cpu_ns as f64)
        );
    }

    if let Some(g) = &results.guarded_open {
        let _ = writeln!(md, "## Guarded open: the fanotify permission round trip\n");
        let _ = writeln!(
            md,
            "The workload's profile may read a file below a guard; every open of it is a \
             permission event the daemon answers before the open returns. {} opens per run, \
             each timed by itself; one run per setup per round, pinned like the rounds above; \
             the flood is a governed process opening distinct missing paths at {} /s \
             (achieved: {}). Alerts in these sessions: {}.\n",
            g.iters,
            g.flood_rate,
            g.flood_achieved
                .iter()
                .map(|r| fmt_rate(*r))
                .collect::<Vec<_>>()
                .join(", "),
            if g.alerts.is_empty() {
                "none".to_owned()
            } else {
                g.alerts
                    .iter()
                    .map(|(rule, n)| format!("{rule} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        let _ = writeln!(md, "| setup | p50 | p90 | p99 | max |");
        let _ = writeln!(md, "|---|---|---|---|---|");
        for (name, runs) in [
            ("no monitor", &g.baseline),
            ("monitor, file guarded", &g.guarded),
            ("monitor, file guarded, during the flood", &g.guarded_flood),
        ] {
            let median = |f: fn(&super::OpenLatency) -> f64| {
                Summary::of(&runs.iter().map(f).collect::<Vec<_>>())
                    .map_or("-".to_owned(), |s| fmt_ns(s.median))
            };
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {} | {} |",
                median(|l| l.p50_ns),
                median(|l| l.p90_ns),
                median(|l| l.p99_ns),
                median(|l| l.max_ns)
            );
        }
        let _ = writeln!(md);
    }

    if let Some(l) = &results.latency {
        let _ = writeln!(md, "## Alert latency\n");
        let _ = writeln!(
            md,
            "A governed workload opened {} distinct files outside its profile, one every {} µs, \
             stamping CLOCK_MONOTONIC just before each openat; each `file-read-not-allowed` \
             alert was matched by `file.path` and stamped when its line arrived on the \
             monitor's stdout.\n",
            l.requested, results.sizes.latency_interval_us
        );
        let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2} ms"));
        let _ = writeln!(
            md,
            "- matched {} of {}; p50 {}, p99 {}, max {}",
            l.matched,
            l.requested,
            f(l.p50_ms),
            f(l.p99_ms),
            f(l.max_ms)
        );
        let _ = writeln!(
            md,
            "- inside the daemon (alert `observed_time` − kernel `time`): p50 {}, p99 {}",
            f(l.in_daemon_p50_ms),
            f(l.in_daemon_p99_ms)
        );
        let slow = slow_alerts(l);
        if !slow.is_empty() {
            let _ = writeln!(md, "- {}", slow.trim_start_matches("; "));
        }
        md.push('\n');
    }

    if let Some(r) = &results.rates {
        let _ = writeln!(md, "## Events per second before the first loss\n");
        let _ = writeln!(
            md,
            "A governed process opening distinct missing files at a fixed rate ({} threads), \
             doubling each step of {} s; losses are the monitor's `events-lost` alerts.\n",
            results.sizes.rate_threads, results.sizes.ramp_step_seconds
        );
        let _ = writeln!(
            md,
            "| requested | achieved | lost | daemon CPU | ctxt sw. (vol + invol) | daemon RSS (peak) |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|");
        for s in r.steps.iter().chain(r.sustained.iter()) {
            let _ = writeln!(
                md,
                "| {}/s for {:.0} s | {} | {}{} | {:.0}% | {} + {} | {} ({}) |",
                s.requested,
                s.seconds,
                fmt_rate(s.achieved),
                s.lost,
                if s.loss_details.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", s.loss_details.join(", "))
                },
                s.daemon_cpu_pct,
                s.daemon_voluntary_ctxt,
                s.daemon_involuntary_ctxt,
                mb(s.daemon_rss_kb),
                mb(s.daemon_hwm_kb)
            );
        }
        let _ = writeln!(
            md,
            "\nHighest rate without loss: {}; the ramp stopped: {}.\n",
            r.max_without_loss.map_or("-".into(), fmt_rate),
            r.stopped
        );
    }

    if let Some(p) = &results.pipeline {
        let _ = writeln!(md, "## User-space pipeline\n");
        let _ = writeln!(
            md,
            "{} recorded events (exec {}, fork {}, exit {}, file {}, network {}; {} outside the \
             profile, each an alert serialized to JSON) through the daemon's own code on one \
             thread, a fresh process table and engine per pass:\n",
            p.events,
            p.mix.exec,
            p.mix.fork,
            p.mix.exit,
            p.mix.file,
            p.mix.network,
            p.mix.disallowed
        );
        let _ = writeln!(
            md,
            "| stage | median ns/event | min ns/event | events/s (median) |"
        );
        let _ = writeln!(md, "|---|---|---|---|");
        for (name, s) in &p.stages {
            let _ = writeln!(
                md,
                "| {name} | {:.0} | {:.0} | {} |",
                s.median,
                s.min,
                fmt_rate(1e9 / s.median)
            );
        }
        let total: u64 = p.by_kind.iter().map(|k| k.total_ns).sum();
        let _ = writeln!(
            md,
            "\nThe full stage by kind of event (each event timed by itself, one pass):\n"
        );
        let _ = writeln!(md, "| kind | events | ns/event | share of the time |");
        let _ = writeln!(md, "|---|---|---|---|");
        for k in &p.by_kind {
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {:.0}% |",
                k.kind,
                k.events,
                k.total_ns as f64 / k.events.max(1) as f64,
                k.total_ns as f64 * 100.0 / total.max(1) as f64
            );
        }
        md.push('\n');
    }

    if !results.notes.is_empty() || !results.failures.is_empty() {
        let _ = writeln!(md, "## Notes\n");
        for note in &results.notes {
            let _ = writeln!(md, "- {}", escape(note));
        }
        for failure in &results.failures {
            let _ = writeln!(md, "- failed: {}", escape(failure));
        }
        md.push('\n');
    }
    md
}
