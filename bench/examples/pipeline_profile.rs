//! The user-space pipeline benchmark's passes, alone, for a profiler:
//! `cargo build --release -p bench --example pipeline_profile`, then
//! `perf record -g target/release/examples/pipeline_profile 1000000` (or valgrind
//! --tool=callgrind for instruction counts). Prints events per second by stage.

use bench::pipeline::{self, Stage};

fn main() -> anyhow::Result<()> {
    let events: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(300_000);
    let scratch = std::env::temp_dir().join(format!("pipeline-profile-{}", std::process::id()));
    let recording = pipeline::record(events, &scratch)?;
    for stage in [Stage::Decode, Stage::Table, Stage::Rules] {
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
