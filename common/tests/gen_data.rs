//! Integration tests of `funnel_common::synth` (gen-data): layout, schema, funnel-consistent
//! labels, null share, determinism, and the oracle AUC of the truth columns.

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int8Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use bytes::Bytes;
use funnel_common::Error;
use funnel_common::metrics::auc;
use funnel_common::store::StoreUrl;
use funnel_common::synth::{GenOptions, GenSummary, LABEL_COLUMNS, generate, schema};
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::collections::HashMap;

/// The bytes of every object of a summary, in summary order.
async fn object_bytes(summary: &GenSummary) -> Vec<Bytes> {
    let mut out = Vec::new();
    for url in &summary.objects {
        let s = StoreUrl::open(url, "test").expect("opens");
        let bytes = s
            .store
            .get(&s.prefix)
            .await
            .expect("object exists")
            .bytes()
            .await
            .expect("readable");
        out.push(bytes);
    }
    out
}

/// Everything the checks need from a set of objects.
#[derive(Default)]
struct Scan {
    rows: u64,
    row_groups: Vec<Vec<usize>>,
    labels: [Vec<u8>; 4],
    truth: [Vec<f64>; 4],
    age_nulls: u64,
    empty_histories: u64,
    max_history: usize,
    item_category: HashMap<i64, (i64, f32)>,
    metadata: Option<String>,
}

impl Scan {
    fn add_object(&mut self, bytes: Bytes, opts: &GenOptions) {
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).expect("valid parquet");
        let meta = builder.metadata().clone();
        self.row_groups.push(
            meta.row_groups()
                .iter()
                .map(|rg| rg.num_rows() as usize)
                .collect(),
        );
        self.metadata = meta
            .file_metadata()
            .key_value_metadata()
            .and_then(|kv| kv.iter().find(|k| k.key == "funnel.gen"))
            .and_then(|k| k.value.clone());
        assert_eq!(builder.schema().fields(), schema().fields());
        for batch in builder.with_batch_size(8192).build().expect("reader") {
            self.add_batch(&batch.expect("decodes"), opts);
        }
    }

    fn add_batch(&mut self, b: &RecordBatch, opts: &GenOptions) {
        let col = |name: &str| b.column_by_name(name).expect("column");
        let items = col("item_id").as_primitive::<Int64Type>();
        let cats = col("category_id").as_primitive::<Int64Type>();
        let price = col("price").as_primitive::<Float32Type>();
        let hour = col("hour").as_primitive::<Int64Type>();
        let age = col("user_age").as_primitive::<Float32Type>();
        let query = col("query").as_string::<i32>();
        let recent = col("recent_items").as_list::<i32>();
        self.age_nulls += age.null_count() as u64;
        for i in 0..b.num_rows() {
            let (item, cat, p) = (items.value(i), cats.value(i), price.value(i));
            assert!((0..opts.items as i64).contains(&item));
            assert!((0..opts.categories as i64).contains(&cat));
            assert!(p.is_finite() && p > 0.0);
            let fixed = *self.item_category.entry(item).or_insert((cat, p));
            assert_eq!(
                fixed,
                (cat, p),
                "category and price are functions of the item"
            );
            assert!((0..24).contains(&hour.value(i)));
            if age.is_valid(i) {
                assert!((18.0..=65.0).contains(&age.value(i)));
            }
            let q = query.value(i);
            assert!(q.starts_with('q') && q[1..].parse::<u64>().expect("q<id>") < opts.queries);
            let len = recent.value_length(i) as usize;
            self.empty_histories += u64::from(len == 0);
            self.max_history = self.max_history.max(len);
        }
        let values = recent.values().as_primitive::<Int64Type>();
        assert!(
            values
                .values()
                .iter()
                .all(|&v| (0..opts.items as i64).contains(&v))
        );
        for (k, label) in LABEL_COLUMNS.iter().enumerate() {
            let l = col(label).as_primitive::<Int8Type>();
            let t = col(&format!("truth_p_{label}")).as_primitive::<Float64Type>();
            assert_eq!((l.null_count(), t.null_count()), (0, 0));
            self.labels[k].extend(l.values().iter().map(|&v| v as u8));
            self.truth[k].extend(t.values().iter().copied());
        }
        self.rows += b.num_rows() as u64;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataset_follows_the_truth_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = GenOptions {
        rows: 200_000,
        files: 3,
        row_group_rows: 20_000,
        seed: 7,
        output: format!("file://{}/gen", dir.path().display()),
        ..GenOptions::default()
    };
    let started = std::time::Instant::now();
    let summary = generate(&opts).await.expect("generates");
    println!("generated {} rows in {:?}", opts.rows, started.elapsed());

    assert_eq!(summary.train_rows + summary.eval_rows, opts.rows);
    let eval_share = summary.eval_rows as f64 / opts.rows as f64;
    assert!((eval_share - 0.1).abs() < 0.005, "eval share {eval_share}");
    assert_eq!(summary.objects.len(), 2 * opts.files);
    for (k, url) in summary.objects.iter().enumerate() {
        let split = if k < opts.files { "train" } else { "eval" };
        let expected = format!("{}/{split}/part-{:05}.parquet", opts.output, k % opts.files);
        assert_eq!(url, &expected);
    }

    // Read back with the sync reader, straight from the files.
    let mut scan = Scan::default();
    let mut split_rows = [0u64; 2];
    for (k, url) in summary.objects.iter().enumerate() {
        let path = url.strip_prefix("file://").expect("file URL");
        let bytes = Bytes::from(std::fs::read(path).expect("file exists"));
        let before = scan.rows;
        scan.add_object(bytes, &opts);
        split_rows[usize::from(k >= opts.files)] += scan.rows - before;
    }
    assert_eq!(scan.rows, opts.rows);
    assert_eq!(split_rows, [summary.train_rows, summary.eval_rows]);
    for groups in &scan.row_groups {
        let (last, full) = groups.split_last().expect("at least one row group");
        assert!(full.iter().all(|&n| n == opts.row_group_rows), "{groups:?}");
        assert!(*last <= opts.row_group_rows);
    }
    let meta: serde_json::Value =
        serde_json::from_str(scan.metadata.as_deref().expect("funnel.gen metadata")).expect("json");
    assert_eq!(meta["options"]["seed"], 7);

    // Funnel-consistent labels and truth: pay => order => click, favorite => click.
    let [click, fav, order, pay] = &scan.labels;
    for i in 0..click.len() {
        assert!(
            pay[i] <= order[i] && order[i] <= click[i] && fav[i] <= click[i],
            "row {i}"
        );
    }
    let [t_click, t_fav, t_order, t_pay] = &scan.truth;
    for i in 0..t_click.len() {
        assert!(t_click[i] > 0.0 && t_click[i] < 1.0);
        assert!(t_pay[i] <= t_order[i] && t_order[i] <= t_click[i] && t_fav[i] <= t_click[i]);
    }

    let null_share = scan.age_nulls as f64 / opts.rows as f64;
    assert!(
        (0.015..0.025).contains(&null_share),
        "user_age nulls {null_share}"
    );
    assert!(scan.empty_histories > 0 && scan.max_history == opts.history_len);

    // Positives: at least ~2,000 per 2M rows for every target (asserted with a 2x margin).
    let counted: Vec<u64> = scan
        .labels
        .iter()
        .map(|l| l.iter().map(|&v| v as u64).sum())
        .collect();
    for (k, label) in LABEL_COLUMNS.iter().enumerate() {
        assert_eq!(summary.positives[*label], counted[k], "{label}");
        let per_2m = counted[k] as f64 * 2e6 / opts.rows as f64;
        println!(
            "{label}: {} positives ({per_2m:.0} per 2M rows)",
            counted[k]
        );
        assert!(per_2m >= 4_000.0, "{label}: {per_2m} per 2M rows");
    }

    // Realised conditional rates near the calibration targets.
    let r = opts.rates;
    let n = |v: &[u8]| v.iter().map(|&x| x as f64).sum::<f64>();
    let fav_and_order = (0..click.len())
        .filter(|&i| fav[i] == 1 && order[i] == 1)
        .count() as f64;
    let rates = [
        ("click", n(click) / opts.rows as f64, r.click),
        ("favorite | click", n(fav) / n(click), r.favorite),
        ("order | fav", fav_and_order / n(fav), r.order_given_fav),
        (
            "order | click, no fav",
            (n(order) - fav_and_order) / (n(click) - n(fav)),
            r.order_given_no_fav,
        ),
        ("pay | order", n(pay) / n(order), r.pay),
    ];
    for (name, got, target) in rates {
        println!("rate {name}: {got:.4} (target {target})");
        assert!(
            (got / target - 1.0).abs() < 0.2,
            "{name}: {got} vs {target}"
        );
    }

    // The oracle: the truth columns rank their labels well.
    for (k, label) in LABEL_COLUMNS.iter().enumerate() {
        let a = auc(&scan.truth[k], &scan.labels[k]).expect("both classes");
        println!("oracle AUC {label}: {a:.4}");
        assert!(a > 0.6 && a < 0.99, "{label}: oracle AUC {a}");
    }
}

#[tokio::test]
async fn same_options_give_the_same_bytes_in_any_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let small = |output: String, seed: u64| GenOptions {
        rows: 20_000,
        files: 2,
        row_group_rows: 3_000,
        seed,
        output,
        ..GenOptions::default()
    };
    let a = generate(&small("memory://gen-test/a".into(), 1))
        .await
        .expect("a");
    let b = generate(&small("memory://gen-test/b".into(), 1))
        .await
        .expect("b");
    let c = generate(&small(format!("{}/c", dir.path().display()), 1))
        .await
        .expect("c");
    let d = generate(&small("memory://gen-test/d".into(), 2))
        .await
        .expect("d");
    assert_eq!(a.objects[0], "memory://gen-test/a/train/part-00000.parquet");
    assert!(c.objects[0].starts_with("file:///"), "{}", c.objects[0]);
    assert_eq!(
        (a.train_rows, a.eval_rows, &a.positives),
        (b.train_rows, b.eval_rows, &b.positives)
    );
    let (ba, bb, bc, bd) = (
        object_bytes(&a).await,
        object_bytes(&b).await,
        object_bytes(&c).await,
        object_bytes(&d).await,
    );
    // (assert! rather than assert_eq!: a failure should not print megabytes.)
    assert!(ba == bb, "same seed, same bytes");
    assert!(ba == bc, "memory:// and file:// hold the same bytes");
    assert!(ba != bd, "another seed, other data");

    // Row content, not just bytes: the row-group size does not change the rows either.
    let e = generate(&GenOptions {
        row_group_rows: 777,
        ..small("memory://gen-test/e".into(), 1)
    })
    .await
    .expect("e");
    let rows = |objects: Vec<Bytes>| -> Vec<RecordBatch> {
        objects
            .into_iter()
            .flat_map(|bytes| {
                ParquetRecordBatchReaderBuilder::try_new(bytes)
                    .expect("parquet")
                    .with_batch_size(1 << 20)
                    .build()
                    .expect("reader")
                    .map(|b| b.expect("decodes"))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let (by_3000, by_777) = (rows(ba), rows(object_bytes(&e).await));
    assert_eq!(by_3000.len(), 4, "one batch per object");
    assert!(
        by_3000 == by_777,
        "the row-group size does not change the rows"
    );
}

#[tokio::test]
async fn bad_options_name_their_flag() {
    let base = GenOptions {
        output: "memory://gen-test/bad".into(),
        ..GenOptions::default()
    };
    let cases = [
        (
            "--rows",
            GenOptions {
                rows: 0,
                ..base.clone()
            },
        ),
        (
            "--files",
            GenOptions {
                files: 0,
                ..base.clone()
            },
        ),
        (
            "--row-group-rows",
            GenOptions {
                row_group_rows: 0,
                ..base.clone()
            },
        ),
        (
            "--eval-fraction",
            GenOptions {
                eval_fraction: 1.0,
                ..base.clone()
            },
        ),
        (
            "--eval-fraction",
            GenOptions {
                eval_fraction: f64::NAN,
                ..base.clone()
            },
        ),
        (
            "--items",
            GenOptions {
                items: 0,
                ..base.clone()
            },
        ),
        (
            "--zipf-exponent",
            GenOptions {
                zipf_exponent: -1.0,
                ..base.clone()
            },
        ),
    ];
    for (flag, opts) in cases {
        let err = generate(&opts).await.expect_err(flag);
        let msg = err.to_string();
        assert!(matches!(err, Error::Write { .. }), "{msg}");
        assert!(
            msg.contains(flag) && msg.contains("memory://gen-test/bad"),
            "{msg}"
        );
    }
    let mut rates = base.clone();
    rates.rates.pay = 1.0;
    let msg = generate(&rates).await.expect_err("pay rate").to_string();
    assert!(msg.contains("--pay-rate"), "{msg}");
    let err = generate(&GenOptions {
        output: "ftp://x/y".into(),
        ..base.clone()
    })
    .await
    .expect_err("bad scheme");
    assert!(matches!(err, Error::Url { .. }), "{err}");
}

#[tokio::test]
async fn stale_objects_are_refused_and_eval_is_optional() {
    let opts = GenOptions {
        rows: 1_000,
        files: 2,
        row_group_rows: 100,
        output: "memory://gen-test/stale".into(),
        ..GenOptions::default()
    };
    generate(&opts).await.expect("first run");
    // Same layout again: overwrites in place.
    generate(&opts).await.expect("rerun");
    // Fewer files would leave part-00001 behind, mixed into the new dataset.
    let msg = generate(&GenOptions {
        files: 1,
        ..opts.clone()
    })
    .await
    .expect_err("stale part")
    .to_string();
    assert!(
        msg.contains("memory://gen-test/stale/train/part-00001.parquet"),
        "{msg}"
    );

    let no_eval = generate(&GenOptions {
        eval_fraction: 0.0,
        rows: 10,
        files: 3,
        output: "memory://gen-test/no-eval".into(),
        ..opts.clone()
    })
    .await
    .expect("no eval");
    assert_eq!((no_eval.train_rows, no_eval.eval_rows), (10, 0));
    assert_eq!(no_eval.objects.len(), 3);
    assert!(no_eval.objects.iter().all(|o| o.contains("/train/")));
    let mut rows = 0;
    for bytes in object_bytes(&no_eval).await {
        let b = ParquetRecordBatchReaderBuilder::try_new(bytes).expect("parquet");
        rows += b.metadata().file_metadata().num_rows();
        assert_eq!(
            b.schema()
                .field_with_name("recent_items")
                .expect("list")
                .data_type(),
            &DataType::List(std::sync::Arc::new(arrow_schema::Field::new_list_field(
                DataType::Int64,
                true
            )))
        );
    }
    assert_eq!(rows, 10);
}

/// Throughput and memory: `FUNNEL_GEN_ROWS` (default 10M) rows in `FUNNEL_GEN_FILES` (default 4)
/// parts to a temporary directory.
/// Run in release under `/usr/bin/time -v` to read the max RSS:
/// `cargo test --release -p funnel-common --test gen_data -- --ignored --nocapture`. With
/// `FUNNEL_GEN_ORACLE` set, it also reads everything back and prints the oracle AUCs.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark"]
async fn throughput() {
    let rows = std::env::var("FUNNEL_GEN_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000u64);
    let dir = tempfile::tempdir().expect("tempdir");
    let files = std::env::var("FUNNEL_GEN_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let opts = GenOptions {
        rows,
        files,
        output: format!("{}/bench", dir.path().display()),
        ..GenOptions::default()
    };
    let started = std::time::Instant::now();
    let summary = generate(&opts).await.expect("generates");
    let secs = started.elapsed().as_secs_f64();
    let bytes: u64 = summary
        .objects
        .iter()
        .map(|o| std::fs::metadata(o.trim_start_matches("file://")).map_or(0, |m| m.len()))
        .sum();
    println!(
        "{rows} rows in {secs:.2} s: {:.0} rows/s, {:.1} MiB, positives {:?}",
        rows as f64 / secs,
        bytes as f64 / (1 << 20) as f64,
        summary.positives
    );
    if std::env::var_os("FUNNEL_GEN_ORACLE").is_some() {
        let mut scan = Scan::default();
        for url in &summary.objects {
            let bytes = std::fs::read(url.trim_start_matches("file://")).expect("object");
            scan.add_object(Bytes::from(bytes), &opts);
        }
        for (k, label) in LABEL_COLUMNS.iter().enumerate() {
            let a = auc(&scan.truth[k], &scan.labels[k]).expect("both classes");
            println!(
                "oracle AUC {label}: {a:.4} ({} positives)",
                summary.positives[*label]
            );
        }
    }
}

#[tokio::test]
async fn write_failures_name_the_object() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A directory where an object should go: listing passes, the upload's final rename fails.
    std::fs::create_dir_all(dir.path().join("out/eval/part-00001.parquet")).expect("mkdir");
    let opts = GenOptions {
        rows: 1_000,
        files: 2,
        output: format!("file://{}/out", dir.path().display()),
        ..GenOptions::default()
    };
    let err = generate(&opts)
        .await
        .expect_err("cannot write over a directory");
    let msg = err.to_string();
    println!("{msg}");
    assert!(matches!(err, Error::Store { op: "write", .. }), "{msg}");
    assert!(
        msg.contains(&format!("{}/eval/part-00001.parquet", opts.output)),
        "{msg}"
    );

    // Listing failures name the prefix.
    std::fs::write(dir.path().join("blocker"), b"not a directory").expect("write");
    let opts = GenOptions {
        output: format!("file://{}/blocker/out", dir.path().display()),
        ..opts
    };
    let msg = generate(&opts)
        .await
        .expect_err("a file in the way")
        .to_string();
    assert!(msg.contains(&format!("{}/train", opts.output)), "{msg}");
}
