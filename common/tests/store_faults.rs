//! Object-store faults against the real data plane (issue 6 point 6): gen-data's Parquet in an
//! in-memory store, read through a [`FaultyStore`] that fails ~30% of the footer and
//! column-chunk reads (503 SlowDown, timeouts, truncated bodies). Every row group decodes to
//! exactly what an unfaulted read gives; a persistent failure names the object.
//!
//! The faulty store is built per test with `FaultyStore::new`, not through
//! `FUNNEL_STORE_FAULTS`, so these tests do not depend on the process environment or on each
//! other. tests/store_faults.rs (workspace) covers the variable with real processes.

use funnel_common::Error;
use funnel_common::columns::DecodePlan;
use funnel_common::manifest::DatasetManifest;
use funnel_common::reader::ShardReader;
use funnel_common::spec::{Job, synthetic_job_toml};
use funnel_common::store::StoreUrl;
use funnel_common::store_faults::{FaultSpec, FaultyStore};
use funnel_common::synth::{GenOptions, generate};
use std::sync::Arc;

/// Writes a small gen-data dataset under `memory://NAME/` and returns its job.
async fn dataset(name: &str) -> Job {
    let output = format!("memory://{name}/data");
    let opts = GenOptions {
        rows: 4_000,
        files: 3,
        row_group_rows: 200,
        seed: 11,
        output: output.clone(),
        users: 500,
        items: 800,
        queries: 300,
        categories: 40,
        ..GenOptions::default()
    };
    generate(&opts).await.expect("gen-data");
    Job::parse(
        &synthetic_job_toml(&output, &format!("{output}/output")),
        "store-faults",
    )
    .expect("synthetic spec")
}

/// The training dataset's store, wrapped in a faulty store when `spec` is given.
fn train_store(job: &Job, spec: Option<&str>) -> (StoreUrl, Option<Arc<FaultyStore>>) {
    let mut store = StoreUrl::open(&job.spec.data.train, "data.train").expect("opens");
    let faulty = spec.map(|s| {
        let spec = FaultSpec::parse(s).expect("fault spec");
        Arc::new(FaultyStore::new(store.store.clone(), spec))
    });
    if let Some(f) = &faulty {
        store.store = f.clone();
    }
    (store, faulty)
}

/// Every row group of the dataset in manifest order, decoded through the real reader.
async fn read_all(
    job: &Job,
    store: StoreUrl,
) -> Result<Vec<funnel_common::reader::DecodedRowGroup>, Error> {
    let plan = Arc::new(DecodePlan::new(job));
    let m = Arc::new(DatasetManifest::build_in(store, "data.train", 4).await?);
    let reader = ShardReader::new(m.clone(), plan, 2, 128);
    let mut out = Vec::new();
    for (object, entry) in m.objects.iter().enumerate() {
        for row_group in 0..entry.row_groups.len() {
            out.push(reader.read_row_group(object, row_group).await?);
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_through_thirty_percent_faults_equal_a_clean_read() {
    let job = dataset("store-faults-rate").await;
    let (clean_store, _) = train_store(&job, None);
    let clean = read_all(&job, clean_store).await.expect("clean read");
    let rows: usize = clean.iter().map(|rg| rg.batch.rows).sum();
    assert!(clean.len() >= 15 && rows > 3_000, "{} groups", clean.len());

    let (store, faulty) = train_store(
        &job,
        Some("rate=0.3,seed=7,kinds=slowdown+timeout+truncate,delay_ms=2"),
    );
    let faulty = faulty.expect("wrapped");
    let got = read_all(&job, store).await.expect("reads through faults");
    let n = faulty.injected();
    eprintln!("injected {n:?} over {} row groups", clean.len());
    // Each kind really happened, so the equality below is through every retry path.
    assert!(n.slowdown > 0 && n.timeout > 0 && n.truncate > 0, "{n:?}");

    assert_eq!(got.len(), clean.len(), "every row group once");
    for (g, c) in got.iter().zip(&clean) {
        assert_eq!((g.object, g.row_group), (c.object, c.row_group));
        // Same rows, same origins, same features and labels: nothing lost or duplicated.
        assert_eq!(
            g.batch, c.batch,
            "object {} row group {}",
            g.object, g.row_group
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_failure_names_the_object_row_group_and_attempts() {
    let job = dataset("store-faults-persistent").await;
    let plan = Arc::new(DecodePlan::new(&job));

    // The footer of the broken object: building the manifest fails, naming it.
    let (store, _) = train_store(&job, Some("rate=0,persistent=part-00001"));
    let err = read_all(&job, store).await.expect_err("persistent failure");
    let msg = err.to_string();
    assert!(matches!(err, Error::Store { .. }), "{msg}");
    assert!(
        msg.contains("memory://store-faults-persistent/data/train/part-00001.parquet"),
        "{msg}"
    );
    assert!(msg.contains("gave up after 6 attempts"), "{msg}");
    assert!(msg.contains("SlowDown"), "{msg}");

    // A manifest read cleanly, then the object breaks: a row-group read names its row group.
    let (clean_store, _) = train_store(&job, None);
    let mut m = DatasetManifest::build_in(clean_store, "data.train", 4)
        .await
        .expect("manifest");
    let object = m
        .objects
        .iter()
        .position(|o| o.url.ends_with("part-00001.parquet"))
        .expect("object 1 listed");
    let (broken, faulty) = train_store(&job, Some("rate=0,persistent=part-00001"));
    m.store = broken;
    let reader = ShardReader::new(Arc::new(m), plan, 1, 128);
    let other = if object == 0 { 1 } else { 0 };
    reader
        .read_row_group(other, 0)
        .await
        .expect("other objects still read");
    let err = reader
        .read_row_group(object, 1)
        .await
        .expect_err("broken object");
    let msg = err.to_string();
    assert!(matches!(err, Error::StoreRead { .. }), "{msg}");
    assert!(
        msg.contains(
            "object memory://store-faults-persistent/data/train/part-00001.parquet, row group 1"
        ),
        "{msg}"
    );
    assert!(msg.contains("gave up after 6 attempts"), "{msg}");
    let n = faulty.expect("wrapped").injected();
    assert_eq!(
        (n.reads, n.slowdown),
        (7, 6),
        "1 read of object {other}, 6 of the broken one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_object_is_not_retried() {
    let job = dataset("store-faults-missing").await;
    let (store, _) = train_store(&job, None);
    let mut m = DatasetManifest::build_in(store.clone(), "data.train", 4)
        .await
        .expect("manifest");
    // The object vanishes after listing: NotFound is final, one read, no retry.
    let path = m.objects[0].path.clone();
    object_store::ObjectStoreExt::delete(store.store.as_ref(), &path)
        .await
        .expect("delete");
    let (wrapped, faulty) = train_store(&job, Some("rate=0"));
    m.store = wrapped;
    let reader = ShardReader::new(Arc::new(m), Arc::new(DecodePlan::new(&job)), 1, 128);
    let err = reader.read_row_group(0, 0).await.expect_err("gone");
    let msg = err.to_string();
    assert!(
        msg.contains("not found") && !msg.contains("gave up"),
        "{msg}"
    );
    let n = faulty.expect("wrapped").injected();
    assert_eq!(
        (n.reads, n.slowdown + n.timeout + n.truncate),
        (1, 0),
        "{msg}"
    );
}
