//! The user-space pipeline benchmark's passes, alone, for a profiler:
//! `cargo build --release -p bench --example pipeline_profile`, then
//! `perf record -g target/release/examples/pipeline_profile 1000000` (or valgrind
//! --tool=callgrind for instruction counts). Prints events per second by stage.
//!
//! A second argument runs one stage only (`decode`, `table`, `rules`) or none (`none`: the
//! recording alone), so that `perf stat -e instructions:u` counts one stage by difference:
//! on a shared, noisy machine instruction counts hold where timings do not.

use bench::pipeline::{self, Stage};

fn main() -> anyhow::Result<()> {
    let events: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(300_000);
    let scratch = std::env::temp_dir().join(format!("pipeline-profile-{}", std::process::id()));
    let recording = pipeline::record(events, &scratch)?;
    let only = std::env::args().nth(2);
    let stages = [Stage::Decode, Stage::Table, Stage::Rules];
    let stages = stages.into_iter().filter(|stage| match only.as_deref() {
        None => true,
        Some("decode") => *stage == Stage::Decode,
        Some("table") => *stage == Stage::Table,
        Some("rules") => *stage == Stage::Rules,
        Some(_) => false,
    });
    for stage in stages {
        let pass = pipeline::timed_pass(&recording, stage);
        println!(
            "{:>8}: {:>6.0} ns/event, {:.2}M events/s, {} alerts",
            stage.name(),
            pass.seconds * 1e9 / pass.events as f64,
            pass.events_per_second / 1e6,
            pass.alerts
        );
    }
    std::fs::remove_dir_all(&scratch).ok();
    Ok(())
}
