//! One data-plane suite run against every store: `memory://`, `file://` and a real S3 server
//! (radosgw started by scripts/s3-server.sh; see docs/s3-server.md). The S3 run is required when
//! `FUNNEL_REQUIRE_S3=1` (as in .ci/run) and skipped with a message otherwise.

use arrow_array::{ArrayRef, Int8Array, Int64Array, RecordBatch, StringArray};
use bytes::Bytes;
use funnel_common::Error;
use funnel_common::columns::DecodePlan;
use funnel_common::hash::{bucket_i64, table_seed};
use funnel_common::manifest::DatasetManifest;
use funnel_common::reader::ShardReader;
use funnel_common::spec::Job;
use funnel_common::store::StoreUrl;
use object_store::ObjectStoreExt;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use std::sync::Arc;

fn job(train: &str) -> Job {
    let text = format!(
        r#"
version = 1
[data]
train = "{train}"
[[features.categorical]]
column = "user"
buckets = 1000
dim = 4
[[features.categorical]]
column = "query"
buckets = 100
dim = 4
[funnel]
preset = "esmm"
"#
    );
    Job::parse(&text, "conformance").expect("valid spec")
}

/// Parquet bytes with users `start..start+rows`, row groups of `rg_rows`.
fn parquet_bytes(start: i64, rows: usize, rg_rows: usize, with_query: bool) -> Bytes {
    let users: Vec<i64> = (start..start + rows as i64).collect();
    let mut cols: Vec<(&str, ArrayRef)> = vec![("user", Arc::new(Int64Array::from(users.clone())))];
    if with_query {
        cols.push((
            "query",
            Arc::new(StringArray::from_iter_values(
                users.iter().map(|u| format!("q{}", u % 7)),
            )),
        ));
    }
    cols.push((
        "click",
        Arc::new(Int8Array::from_iter_values(
            users.iter().map(|u| (u % 3 == 0) as i8),
        )),
    ));
    cols.push((
        "purchase",
        Arc::new(Int8Array::from_iter_values(
            users.iter().map(|u| (u % 9 == 0) as i8),
        )),
    ));
    let rb = RecordBatch::try_from_iter(cols).expect("batch");
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(rg_rows))
        .build();
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, rb.schema(), Some(props)).expect("writer");
    w.write(&rb).expect("write");
    w.close().expect("close");
    Bytes::from(buf)
}

async fn put(prefix: &str, name: &str, bytes: Bytes) {
    let s = StoreUrl::open(prefix, "test").expect("store");
    s.store
        .put(&s.child(name), bytes.into())
        .await
        .expect("put");
}

/// The whole suite against one URL prefix (which must be empty).
async fn suite(base: &str) {
    let base = base.trim_end_matches('/');
    let good = format!("{base}/good/");
    // Written out of order, plus markers that must be ignored.
    put(&good, "part-1.parquet", parquet_bytes(1000, 250, 100, true)).await;
    put(&good, "part-0.parquet", parquet_bytes(0, 300, 128, true)).await;
    put(
        &good,
        "sub/part-2.parquet",
        parquet_bytes(5000, 10, 100, true),
    )
    .await;
    put(&good, "_SUCCESS", Bytes::new()).await;
    put(&good, ".part-0.parquet.crc", Bytes::from_static(b"crc")).await;

    let job = job(&good);
    let plan = Arc::new(DecodePlan::new(&job));
    let m = Arc::new(
        DatasetManifest::build(&good, "data.train", 4)
            .await
            .expect("manifest"),
    );
    let names: Vec<&str> = m
        .objects
        .iter()
        .map(|o| o.url.rsplit('/').next().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        ["part-0.parquet", "part-1.parquet", "part-2.parquet"],
        "{base}"
    );
    assert_eq!(m.objects[0].row_groups, vec![128, 128, 44]);
    assert_eq!(m.objects[1].row_groups, vec![100, 100, 50]);
    assert_eq!(m.total_rows(), 560);
    assert!(m.objects[0].url.starts_with(base), "{}", m.objects[0].url);
    assert!(m.objects.iter().all(|o| o.size > 0));
    m.check_schema(&plan).expect("schema matches");

    // Every row once, in shard order, hashed as documented.
    let reader = ShardReader::new(m.clone(), plan.clone(), 2, 64);
    let mut users = Vec::new();
    for shard in m.row_group_shards() {
        let mut stream = reader.read(shard);
        while let Some(rg) = futures::StreamExt::next(&mut stream).await {
            let rg = rg.expect("decodes");
            assert_eq!(
                rg.batch.rows as u64,
                m.objects[rg.object].row_groups[rg.row_group]
            );
            for (r, origin) in rg.batch.origins.iter().enumerate() {
                users.push((
                    origin.object,
                    origin.row_group,
                    origin.row,
                    rg.batch.categorical[0][r],
                    rg.batch.labels[0][r],
                ));
            }
        }
    }
    assert_eq!(users.len(), 560);
    let seed = table_seed("user");
    let expected_user = |object: u32, rg: u32, row: u32| {
        let (start, rg_rows) = [(0, 128), (1000, 100), (5000, 100)][object as usize];
        start + (rg * rg_rows + row) as i64
    };
    for &(object, rg, row, bucket, click) in &users {
        let user = expected_user(object, rg, row);
        assert_eq!(bucket, bucket_i64(user, seed, 1000));
        assert_eq!(click, (user % 3 == 0) as u8);
    }

    // A multi-row-group shard streams its row groups in order.
    let shard = funnel_common::manifest::Shard {
        object: 0,
        row_groups: 1..3,
    };
    let rgs: Vec<usize> = futures::StreamExt::collect::<Vec<_>>(reader.read(shard))
        .await
        .into_iter()
        .map(|r| r.expect("decodes").row_group)
        .collect();
    assert_eq!(rgs, [1, 2]);

    // Empty prefix.
    let empty = format!("{base}/nothing-here/");
    let msg = DatasetManifest::build(&empty, "data.eval", 4)
        .await
        .expect_err("empty")
        .to_string();
    assert!(
        msg.contains("nothing-here") && msg.contains("data.eval"),
        "{msg}"
    );

    // Missing column: every object named.
    let missing = format!("{base}/missing/");
    put(&missing, "a.parquet", parquet_bytes(0, 10, 10, false)).await;
    let m = DatasetManifest::build(&missing, "data.train", 4)
        .await
        .expect("footer fine");
    match m.check_schema(&plan) {
        Err(Error::Schema { problems }) => {
            let msg = format!("{}", Error::Schema { problems });
            assert!(
                msg.contains("missing/a.parquet") && msg.contains("`query`"),
                "{msg}"
            );
            assert!(msg.contains("features.categorical[1].column"), "{msg}");
        }
        other => panic!("expected a schema error, got {other:?}"),
    }

    // Truncated object and corrupt footer.
    let full = parquet_bytes(0, 50, 50, true);
    let bad = format!("{base}/bad/");
    put(&bad, "truncated.parquet", full.slice(..full.len() / 2)).await;
    let msg = DatasetManifest::build(&bad, "data.train", 4)
        .await
        .expect_err("truncated")
        .to_string();
    assert!(
        msg.contains("bad/truncated.parquet") && msg.contains("PAR1"),
        "{msg}"
    );

    let mut corrupt = full.to_vec();
    let n = corrupt.len();
    corrupt[n - 8 - 40..n - 8].fill(0xAB);
    let bad2 = format!("{base}/bad2/");
    put(&bad2, "corrupt.parquet", Bytes::from(corrupt)).await;
    let msg = DatasetManifest::build(&bad2, "data.train", 4)
        .await
        .expect_err("corrupt")
        .to_string();
    assert!(
        msg.contains("bad2/corrupt.parquet") && msg.contains("footer"),
        "{msg}"
    );

    // A corrupt data page (footer intact) is named by object, row group and column.
    let mut paged = full.to_vec();
    let meta = parquet::file::metadata::ParquetMetaDataReader::new()
        .parse_and_finish(&full)
        .expect("footer");
    let (start, len) = meta.row_group(0).column(1).byte_range();
    let mid = (start + len / 2) as usize;
    paged[mid..mid + 16].fill(0xFF);
    let bad3 = format!("{base}/bad3/");
    put(&bad3, "page.parquet", Bytes::from(paged)).await;
    let m3 = Arc::new(
        DatasetManifest::build(&bad3, "data.train", 4)
            .await
            .expect("footer intact"),
    );
    let reader = ShardReader::new(m3.clone(), plan, 1, 64);
    let res = reader.read_row_group(0, 0).await;
    let msg = res.expect_err("corrupt page").to_string();
    assert!(
        msg.contains("bad3/page.parquet") && msg.contains("row group 0") && msg.contains("`query`"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store() {
    suite("memory://conformance/run").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    suite(&format!("file://{}", dir.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store() {
    let Some(bucket) = s3_bucket() else { return };
    let run = format!("conformance-{}-{}", std::process::id(), unique());
    suite(&format!("s3://{bucket}/{run}")).await;
}

/// The test bucket, or None (with a message) when no S3 server is configured and none is required.
fn s3_bucket() -> Option<String> {
    match std::env::var("FUNNEL_S3_BUCKET") {
        Ok(b) if std::env::var("AWS_ENDPOINT_URL").is_ok() => Some(b),
        _ if std::env::var("FUNNEL_REQUIRE_S3").as_deref() == Ok("1") => {
            panic!(
                "FUNNEL_REQUIRE_S3=1 but FUNNEL_S3_BUCKET/AWS_ENDPOINT_URL are not set: start scripts/s3-server.sh"
            )
        }
        _ => {
            eprintln!(
                "SKIPPED: no S3 server configured (run scripts/s3-server.sh start and source its env)"
            );
            None
        }
    }
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// Corrupting any byte range of an object never panics or hangs: every outcome is either a
/// clean read or an error naming the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_sweep_never_panics() {
    let full = parquet_bytes(0, 400, 100, true);
    let base = "memory://conformance-sweep/run";
    let job = job(&format!("{base}/x/"));
    let plan = Arc::new(DecodePlan::new(&job));
    let mut outcomes = [0usize; 3]; // footer error, data error, clean
    let step = (full.len() / 97).max(1);
    for (i, start) in (0..full.len()).step_by(step).enumerate() {
        let mut bytes = full.to_vec();
        let end = (start + 7).min(bytes.len());
        for b in &mut bytes[start..end] {
            *b = b.wrapping_mul(31).wrapping_add(0x5A);
        }
        let prefix = format!("{base}/case-{i}/");
        put(&prefix, "p.parquet", Bytes::from(bytes)).await;
        let m = match DatasetManifest::build(&prefix, "data.train", 1).await {
            Err(e) => {
                assert!(e.to_string().contains("p.parquet"), "{e}");
                outcomes[0] += 1;
                continue;
            }
            Ok(m) => Arc::new(m),
        };
        if m.check_schema(&plan).is_err() {
            outcomes[0] += 1;
            continue;
        }
        let reader = ShardReader::new(m.clone(), plan.clone(), 1, 64);
        let mut clean = true;
        for shard in m.row_group_shards() {
            for rg in futures::StreamExt::collect::<Vec<_>>(reader.read(shard)).await {
                if let Err(e) = rg {
                    let msg = e.to_string();
                    assert!(
                        msg.contains("p.parquet") && msg.contains("row group"),
                        "{msg}"
                    );
                    clean = false;
                }
            }
        }
        outcomes[if clean { 2 } else { 1 }] += 1;
    }
    eprintln!(
        "corruption sweep: footer/schema errors {}, data errors {}, clean {}",
        outcomes[0], outcomes[1], outcomes[2]
    );
    assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");
}

/// An epoch through the pipeline holds every row exactly once, in fixed-size batches, in an
/// order fixed by (seed, epoch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epoch_pipeline_yields_every_row_once() {
    use funnel_common::pipeline::{EpochOptions, collect_epoch};
    let prefix = "memory://conformance-epoch/data/";
    for i in 0..3 {
        put(
            prefix,
            &format!("p{i}.parquet"),
            parquet_bytes(i * 1000, 333, 50, true),
        )
        .await;
    }
    let job = job(prefix);
    let plan = Arc::new(DecodePlan::new(&job));
    let m = Arc::new(
        DatasetManifest::build(prefix, "data.train", 4)
            .await
            .expect("manifest"),
    );
    let reader = ShardReader::new(m.clone(), plan, 2, 1024);
    let run = |epoch| {
        let opts = EpochOptions {
            batch_size: 64,
            shuffle_rows: 200,
            seed: 3,
            epoch,
            prefetch: 2,
        };
        collect_epoch(reader.clone(), m.row_group_shards(), opts)
    };
    let (batches, stats) = run(0).await.expect("epoch");
    assert_eq!(stats.rows_read, 999);
    assert!(batches[..batches.len() - 1].iter().all(|b| b.rows == 64));
    let mut origins: Vec<_> = batches.iter().flat_map(|b| b.origins.clone()).collect();
    let order0 = origins.clone();
    origins.sort();
    origins.dedup();
    assert_eq!(origins.len(), 999, "every row exactly once");
    let (again, _) = run(0).await.expect("epoch");
    assert_eq!(
        again
            .iter()
            .flat_map(|b| b.origins.clone())
            .collect::<Vec<_>>(),
        order0
    );
    let (next, _) = run(1).await.expect("epoch");
    assert_ne!(
        next.iter()
            .flat_map(|b| b.origins.clone())
            .collect::<Vec<_>>(),
        order0
    );
}
