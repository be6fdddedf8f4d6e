//! Every bad input of issue 2 point 5, through the real `funnel validate` process: each error
//! names the object, row group, column and job key it is about, and nothing panics.

mod support;

use arrow_array::{ArrayRef, Float32Array, Int8Array, Int64Array, RecordBatch, StringArray};
use std::path::Path;
use std::sync::Arc;
use support::{funnel, write_parquet, write_spec};

fn spec(train: &str, extra_data: &str) -> String {
    format!(
        r#"
version = 1
[data]
train = "{train}"
{extra_data}
[[features.categorical]]
column = "user"
buckets = 100
dim = 4
[[features.numeric]]
column = "price"
[funnel]
preset = "esmm"
"#
    )
}

/// A good table; `edit` may replace columns.
fn table(edit: impl FnOnce(&mut Vec<(&'static str, ArrayRef)>)) -> RecordBatch {
    let mut cols: Vec<(&'static str, ArrayRef)> = vec![
        ("user", Arc::new(Int64Array::from(vec![1, 2, 3, 4]))),
        (
            "price",
            Arc::new(Float32Array::from(vec![1.0, 2.0, 3.0, 4.0])),
        ),
        ("click", Arc::new(Int8Array::from(vec![0, 1, 1, 0]))),
        ("purchase", Arc::new(Int8Array::from(vec![0, 0, 1, 0]))),
    ];
    edit(&mut cols);
    RecordBatch::try_from_iter(cols).expect("batch")
}

fn dataset(dir: &Path, rb: &RecordBatch) -> String {
    let data = dir.join("data");
    write_parquet(&data.join("part-0.parquet"), rb);
    format!("{}/", data.display())
}

fn validate(dir: &Path, text: &str) -> support::Run {
    let spec = write_spec(dir, text);
    funnel(&["validate", "--config", spec.to_str().expect("utf8")])
}

#[test]
fn good_data_validates() {
    let dir = tempfile::tempdir().expect("tmp");
    let train = dataset(dir.path(), &table(|_| {}));
    let run = validate(dir.path(), &spec(&train, "")).success();
    assert!(run.stdout.contains("4 rows"), "{}", run.stdout);
}

#[test]
fn missing_column() {
    let dir = tempfile::tempdir().expect("tmp");
    let train = dataset(dir.path(), &table(|c| c.retain(|(n, _)| *n != "price")));
    validate(dir.path(), &spec(&train, "")).failure_naming(&[
        "part-0.parquet",
        "column `price`",
        "features.numeric[0].column",
        "missing",
    ]);
}

#[test]
fn wrong_type() {
    let dir = tempfile::tempdir().expect("tmp");
    let train = dataset(
        dir.path(),
        &table(|c| c[1].1 = Arc::new(StringArray::from(vec!["a"; 4]))),
    );
    validate(dir.path(), &spec(&train, "")).failure_naming(&[
        "part-0.parquet",
        "column `price`",
        "features.numeric[0].column",
        "Utf8",
    ]);
}

#[test]
fn null_label() {
    let dir = tempfile::tempdir().expect("tmp");
    let train = dataset(
        dir.path(),
        &table(|c| c[2].1 = Arc::new(Int8Array::from(vec![Some(0), None, Some(1), Some(0)]))),
    );
    validate(dir.path(), &spec(&train, "")).failure_naming(&[
        "part-0.parquet",
        "row group 0",
        "row 1",
        "column `click`",
        "funnel.labels.click",
        "null",
    ]);
    // With bad_rows = "skip" the row is skipped and counted.
    let run = validate(dir.path(), &spec(&train, "bad_rows = \"skip\"")).success();
    assert!(
        run.stdout.contains("rows skipped for bad labels: 1"),
        "{}",
        run.stdout
    );
}

#[test]
fn label_outside_zero_one() {
    let dir = tempfile::tempdir().expect("tmp");
    let train = dataset(
        dir.path(),
        &table(|c| c[3].1 = Arc::new(Int8Array::from(vec![0, 0, 2, 0]))),
    );
    validate(dir.path(), &spec(&train, "")).failure_naming(&[
        "row 2",
        "column `purchase`",
        "funnel.labels.purchase",
        "label is 2",
    ]);
}

#[test]
fn funnel_inconsistent_rows_follow_the_policy() {
    let dir = tempfile::tempdir().expect("tmp");
    let train = dataset(
        dir.path(),
        &table(|c| c[3].1 = Arc::new(Int8Array::from(vec![1, 0, 1, 0]))),
    );
    validate(dir.path(), &spec(&train, "")).failure_naming(&[
        "part-0.parquet",
        "row group 0",
        "row 0",
        "purchase=1 with click=0",
        "inconsistent_labels",
    ]);
    let run = validate(dir.path(), &spec(&train, "inconsistent_labels = \"drop\"")).success();
    assert!(
        run.stdout.contains("kept 3") && run.stdout.contains("dropped 1"),
        "{}",
        run.stdout
    );
    let run = validate(
        dir.path(),
        &spec(&train, "inconsistent_labels = \"repair\""),
    )
    .success();
    assert!(
        run.stdout.contains("kept 4") && run.stdout.contains("repaired 1"),
        "{}",
        run.stdout
    );
}

#[test]
fn truncated_object_and_corrupt_footer() {
    let dir = tempfile::tempdir().expect("tmp");
    let train = dataset(dir.path(), &table(|_| {}));
    let file = dir.path().join("data/part-0.parquet");
    let bytes = std::fs::read(&file).expect("read");
    std::fs::write(&file, &bytes[..bytes.len() - 100]).expect("truncate");
    validate(dir.path(), &spec(&train, "")).failure_naming(&["part-0.parquet", "truncated"]);

    let mut corrupt = bytes.clone();
    let n = corrupt.len();
    corrupt[n - 40..n - 8].fill(0x7F);
    std::fs::write(&file, &corrupt).expect("corrupt");
    validate(dir.path(), &spec(&train, "")).failure_naming(&["part-0.parquet", "corrupt footer"]);
}

#[test]
fn unreadable_object() {
    let dir = tempfile::tempdir().expect("tmp");
    let train = dataset(dir.path(), &table(|_| {}));
    std::fs::write(
        dir.path().join("data/notes.txt"),
        "not parquet at all, but long enough",
    )
    .expect("write");
    validate(dir.path(), &spec(&train, "")).failure_naming(&["notes.txt", "not a Parquet file"]);
}

#[test]
fn empty_prefix_and_unknown_scheme() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::create_dir_all(dir.path().join("empty")).expect("mkdir");
    let empty = format!("{}/empty/", dir.path().display());
    validate(dir.path(), &spec(&empty, "")).failure_naming(&[
        "empty",
        "data.train",
        "no Parquet objects",
    ]);
    validate(dir.path(), &spec("hdfs://cluster/logs/", "")).failure_naming(&[
        "hdfs://cluster/logs/",
        "data.train",
        "unknown scheme",
    ]);
}

#[test]
fn config_errors_name_key_paths() {
    let dir = tempfile::tempdir().expect("tmp");
    let text = spec("/tmp/x/", "").replace("buckets = 100", "buckets = 0");
    validate(dir.path(), &text).failure_naming(&["job.toml", "features.categorical[0].buckets"]);
    let text = spec("/tmp/x/", "shufle_buffer = 3");
    validate(dir.path(), &text).failure_naming(&["data.shufle_buffer", "unknown field"]);
    let run = funnel(&["validate", "--config", "/nonexistent/job.toml"]);
    run.failure_naming(&["/nonexistent/job.toml"]);
}
