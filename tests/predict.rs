//! `funnel gen-data` -> `funnel train` (small towers, one epoch) -> `funnel predict` as real
//! processes, the output read back with the parquet crate; and the refusals: a checkpoint
//! without its MANIFEST, a tampered model.safetensors, data lacking a feature column.

mod support;

use arrow_array::{Array, Float32Array, RecordBatch};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::path::{Path, PathBuf};
use support::{funnel, write_parquet, write_spec};

const IDS: [&str; 5] = ["user_id", "item_id", "category_id", "query", "hour"];
const STAGES: [&str; 4] = ["p_click", "p_favorite", "p_order", "p_pay"];

/// gen-data's columns with small tables and towers, one epoch.
fn spec(data: &Path, output: &Path) -> String {
    format!(
        r#"
version = 1
name = "predict-e2e"
output = "{output}"
[data]
train = "{data}/train/"
[[features.categorical]]
column = "user_id"
buckets = 5000
dim = 8
[[features.categorical]]
column = "item_id"
buckets = 5000
dim = 8
table = "items"
[[features.categorical]]
column = "category_id"
buckets = 300
dim = 4
[[features.categorical]]
column = "query"
buckets = 2000
dim = 8
[[features.categorical]]
column = "hour"
buckets = 24
dim = 4
[[features.list]]
column = "recent_items"
buckets = 5000
dim = 8
max_len = 10
table = "items"
[[features.numeric]]
column = "price"
transform = "log1p"
[[features.numeric]]
column = "user_age"
transform = "standardize"
mean = 41.5
std = 13.6
[funnel]
preset = "click-fav-order-pay"
[towers]
hidden = [16, 8]
[train]
batch_size = 512
epochs = 1
"#,
        output = output.display(),
        data = data.display()
    )
}

/// Every record batch of a local Parquet file, and its row-group count.
fn read(path: &Path) -> (Vec<RecordBatch>, usize) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).expect("parquet");
    let row_groups = builder.metadata().num_row_groups();
    let batches = builder
        .with_batch_size(1 << 20)
        .build()
        .expect("reader")
        .collect::<Result<Vec<_>, _>>()
        .expect("batches");
    (batches, row_groups)
}

fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

fn floats(batches: &[RecordBatch], name: &str) -> Vec<f32> {
    batches
        .iter()
        .flat_map(|b| {
            let a = b
                .column_by_name(name)
                .unwrap_or_else(|| panic!("no column {name}"))
                .as_any()
                .downcast_ref::<Float32Array>()
                .unwrap_or_else(|| panic!("{name} is not float32"));
            assert_eq!(a.null_count(), 0, "{name} has nulls");
            a.values().to_vec()
        })
        .collect()
}

/// The parquet files under `dir`, recursively, as paths relative to it, sorted.
fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p.strip_prefix(dir).expect("under dir").to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// A copy of a checkpoint directory.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

#[test]
fn train_then_predict_then_refusals() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let data = dir.join("data");
    let output = dir.join("output");
    funnel(&[
        "gen-data",
        "--output",
        data.to_str().expect("utf8"),
        "--rows",
        "20000",
        "--files",
        "2",
        "--row-group-rows",
        "4000",
        "--users",
        "3000",
        "--items",
        "8000",
    ])
    .success();
    let spec_path = write_spec(dir, &spec(&data, &output));
    funnel(&[
        "train",
        "--config",
        spec_path.to_str().expect("utf8"),
        "--no-progress",
    ])
    .success();

    // Every input object of train/ and eval/ -> one output object at the same relative path.
    let out = dir.join("pred");
    let run = funnel(&[
        "predict",
        "--checkpoint",
        output.to_str().expect("utf8"),
        "--data",
        data.to_str().expect("utf8"),
        "--out",
        out.to_str().expect("utf8"),
    ])
    .success();
    assert!(
        run.stdout.contains("scored 20000 rows of 4 objects"),
        "{}",
        run.stdout
    );
    let inputs = parquet_files(&data);
    assert_eq!(inputs.len(), 4, "{inputs:?}");
    assert_eq!(parquet_files(&out), inputs);
    for rel in &inputs {
        let (input, input_row_groups) = read(&data.join(rel));
        let (got, row_groups) = read(&out.join(rel));
        assert_eq!(
            rows(&got),
            rows(&input),
            "{rel:?}: one output row per input row"
        );
        assert_eq!(row_groups, input_row_groups, "{rel:?}");
        let schema = got[0].schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let want: Vec<&str> = IDS.iter().chain(&STAGES).copied().collect();
        assert_eq!(names, want, "{rel:?}: ids, then the stages in funnel order");
        // The ids are the input's, same Arrow type, same values, same order.
        assert_eq!(got.len(), 1);
        assert_eq!(input.len(), 1);
        for id in IDS {
            let (a, b) = (
                got[0].column_by_name(id).expect("id"),
                input[0].column_by_name(id).expect("id"),
            );
            assert_eq!(a.data_type(), b.data_type(), "{rel:?} {id}");
            assert!(a.to_data() == b.to_data(), "{rel:?}: {id} differs");
        }
        let p: Vec<Vec<f32>> = STAGES.iter().map(|s| floats(&got, s)).collect();
        for (s, col) in STAGES.iter().zip(&p) {
            assert!(
                col.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v)),
                "{rel:?}: {s} outside [0, 1]"
            );
            let (lo, hi) = col
                .iter()
                .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
            assert!(hi > lo, "{rel:?}: {s} is constant");
        }
        // The funnel's order: pay <= order <= click, favorite <= click.
        let [click, favorite, order, pay] = [&p[0], &p[1], &p[2], &p[3]];
        for r in 0..click.len() {
            assert!(
                pay[r] <= order[r] && order[r] <= click[r] && favorite[r] <= click[r],
                "{rel:?} row {r}: click {} favorite {} order {} pay {}",
                click[r],
                favorite[r],
                order[r],
                pay[r]
            );
        }
    }

    // A checkpoint directory URL, one input object, one output object; the same scores.
    let latest = std::fs::read_to_string(output.join("checkpoints/LATEST")).expect("LATEST");
    let ckpt = output.join("checkpoints").join(latest.trim());
    let one = dir.join("one.parquet");
    let eval0 = data.join("eval/part-00000.parquet");
    funnel(&[
        "predict",
        "--checkpoint",
        &format!("file://{}", ckpt.display()),
        "--data",
        eval0.to_str().expect("utf8"),
        "--out",
        one.to_str().expect("utf8"),
        "--keep",
        "query",
        "--batch-rows",
        "100",
    ])
    .success();
    let (single, _) = read(&one);
    let (per_object, _) = read(&out.join("eval/part-00000.parquet"));
    assert_eq!(single[0].num_columns(), 5);
    assert!(
        single[0].column(0).to_data()
            == per_object[0].column_by_name("query").expect("q").to_data()
    );
    for s in STAGES {
        let (a, b) = (floats(&single, s), floats(&per_object, s));
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(
            worst <= 1e-6,
            "{s}: batches of 100 vs 8192 rows differ by {worst}"
        );
    }

    // Refusals. A checkpoint without its MANIFEST does not exist.
    let no_manifest = dir.join("ckpt-no-manifest/step-000000001");
    copy_dir(&ckpt, &no_manifest);
    std::fs::remove_file(no_manifest.join("MANIFEST.json")).expect("rm");
    let args = |c: &Path| {
        vec![
            "predict".to_string(),
            "--checkpoint".into(),
            c.display().to_string(),
            "--data".into(),
            eval0.display().to_string(),
            "--out".into(),
            dir.join("refused").display().to_string(),
        ]
    };
    let run_args = |a: Vec<String>| funnel(&a.iter().map(String::as_str).collect::<Vec<_>>());
    run_args(args(&no_manifest))
        .failure_naming(&["ckpt-no-manifest/step-000000001", "MANIFEST.json"]);
    // A tampered model.safetensors (one byte of a weight changed) fails the MANIFEST's sha256.
    let tampered = dir.join("ckpt-tampered/step-000000001");
    copy_dir(&ckpt, &tampered);
    let path = tampered.join("model.safetensors");
    let mut bytes = std::fs::read(&path).expect("read");
    let last = bytes.len() - 3;
    bytes[last] ^= 0x40;
    std::fs::write(&path, bytes).expect("write");
    run_args(args(&tampered))
        .failure_naming(&["ckpt-tampered/step-000000001", "model.safetensors"]);
    // Data lacking a feature column is refused, naming the column, its job key and the object.
    let (input, _) = read(&eval0);
    let keep: Vec<usize> = (0..input[0].num_columns())
        .filter(|&i| input[0].schema().field(i).name() != "price")
        .collect();
    let lacking = dir.join("lacking/part.parquet");
    write_parquet(&lacking, &input[0].project(&keep).expect("project"));
    let mut a = args(&ckpt);
    a[4] = lacking.display().to_string();
    run_args(a).failure_naming(&["lacking/part.parquet", "`price`", "features.numeric[0]"]);
    assert!(
        !dir.join("refused").exists(),
        "nothing was written by a refused run"
    );
}
