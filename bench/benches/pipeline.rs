//! The user-space pipeline under criterion: `cargo bench -p bench --bench pipeline`.
//! (`cargo xtask bench` measures the same passes itself and puts them in its report.)

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use bench::pipeline::{record, Pipeline, Stage};

fn pipeline(c: &mut Criterion) {
    let scratch = std::env::temp_dir().join(format!("bench-criterion-{}", std::process::id()));
    let recording = record(20_000, &scratch).expect("the recording builds");
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(recording.records.len() as u64));
    for stage in Stage::ALL {
        group.bench_function(stage.name(), |b| {
            b.iter_batched(
                || Pipeline::new(&recording),
                |mut pipeline| pipeline.run(&recording.records, stage),
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
    let _ = std::fs::remove_dir_all(scratch);
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
