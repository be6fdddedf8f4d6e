//! Parquet -> batches throughput on one decode thread, for bench/decode.sh, which runs it beside
//! `pyarrow.parquet.read_table` on the same files and columns and prints the ratio.
//!
//! Usage: cargo bench -p funnel-common --bench decode -- --spec JOB.toml [--runs N]
//! Prints one JSON line: {"rows": .., "median_s": .., "rows_per_s": .., "runs": [..]}.

use funnel_common::columns::DecodePlan;
use funnel_common::manifest::DatasetManifest;
use funnel_common::reader::ShardReader;
use funnel_common::spec::Job;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Instant;

/// The same allocator as the `funnel` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let Some(spec) = flag("--spec") else {
        eprintln!("usage: decode --spec JOB.toml [--runs N]  (see bench/decode.sh)");
        return; // `cargo bench` without arguments runs every bench; this one needs data.
    };
    let runs: usize = flag("--runs").and_then(|r| r.parse().ok()).unwrap_or(5);
    let job = Job::load(std::path::Path::new(&spec)).expect("job spec loads");
    let rt = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let manifest = Arc::new(
            DatasetManifest::build(&job.spec.data.train, "data.train", 1)
                .await
                .expect("manifest"),
        );
        let plan = Arc::new(DecodePlan::new(&job));
        let reader = ShardReader::new(manifest.clone(), plan, 1, job.spec.data.read_batch_rows);
        let mut times = Vec::new();
        let mut rows = 0u64;
        for _ in 0..runs {
            let start = Instant::now();
            rows = 0;
            for shard in manifest.row_group_shards() {
                let mut stream = reader.read(shard);
                while let Some(rg) = stream.next().await {
                    let rg = rg.expect("decodes");
                    rows += rg.batch.rows as u64;
                    std::hint::black_box(&rg.batch);
                }
            }
            times.push(start.elapsed().as_secs_f64());
        }
        let mut sorted = times.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        println!(
            "{{\"rows\": {rows}, \"median_s\": {median:.6}, \"rows_per_s\": {:.1}, \"runs\": {times:?}}}",
            rows as f64 / median
        );
    });
}
