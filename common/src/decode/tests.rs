use super::*;
use crate::hash::{bucket_i64, bucket_null, table_seed, xxh64_u64};
use crate::spec::Job;
use arrow_array::builder::{ListBuilder, StringDictionaryBuilder};
use arrow_array::types::Int32Type;
use arrow_array::{Float32Array, Int8Array, Int64Array, LargeStringArray, UInt64Array};
use std::sync::Arc;

fn job(policy: &str, bad_rows: &str) -> Job {
    Job::parse(
        &format!(
            r#"
version = 1
[data]
train = "memory://t/x"
inconsistent_labels = "{policy}"
bad_rows = "{bad_rows}"
[[features.categorical]]
column = "user"
buckets = 1000
dim = 4
[[features.categorical]]
column = "query"
buckets = 50
dim = 4
[[features.categorical]]
column = "shop"
buckets = 77
dim = 4
[[features.categorical]]
column = "user"
cross = ["shop", "query"]
buckets = 5000
dim = 4
[[features.list]]
column = "hist"
buckets = 1000
dim = 4
max_len = 2
table = "user"
[[features.numeric]]
column = "price"
transform = "log1p"
fill_null = -1.0
[funnel]
preset = "click-fav-order-pay"
"#
        ),
        "t",
    )
    .expect("valid")
}

/// Rows: labels (click, favorite, order, pay).
fn record_batch(labels: &[[i8; 4]]) -> RecordBatch {
    let n = labels.len();
    let col = |j: usize| {
        Arc::new(Int8Array::from_iter(
            labels.iter().map(|l| (l[j] >= 0).then_some(l[j])),
        )) as ArrayRef
    };
    let mut dict = StringDictionaryBuilder::<Int32Type>::new();
    let mut hist = ListBuilder::new(arrow_array::builder::Int64Builder::new());
    for r in 0..n {
        if r % 4 == 3 {
            dict.append_null();
        } else {
            dict.append_value(format!("shop{}", r % 2));
        }
        match r % 3 {
            0 => hist.append_null(),
            1 => hist.append_value([Some(5), None, Some(6), Some(7)]),
            _ => hist.append_value([Some(r as i64)]),
        }
    }
    RecordBatch::try_from_iter([
        (
            "user",
            Arc::new(Int64Array::from_iter_values((0..n as i64).map(|i| i - 1))) as ArrayRef,
        ),
        (
            "query",
            Arc::new(LargeStringArray::from_iter_values(
                (0..n).map(|i| format!("q{i}")),
            )) as ArrayRef,
        ),
        ("shop", Arc::new(dict.finish()) as ArrayRef),
        ("hist", Arc::new(hist.finish()) as ArrayRef),
        (
            "price",
            Arc::new(Float32Array::from_iter((0..n).map(|i| match i % 4 {
                0 => None,
                1 => Some(f32::NAN),
                _ => Some(i as f32),
            }))) as ArrayRef,
        ),
        ("click", col(0)),
        ("favorite", col(1)),
        ("order", col(2)),
        ("pay", col(3)),
        (
            "unused",
            Arc::new(UInt64Array::from_iter_values(0..n as u64)) as ArrayRef,
        ),
    ])
    .expect("valid batch")
}

const ORIGIN: ChunkOrigin<'static> = ChunkOrigin {
    object: 3,
    object_url: "memory://t/x/part-0.parquet",
    row_group: 2,
    first_row: 100,
};

fn run(policy: &str, bad_rows: &str, labels: &[[i8; 4]]) -> Result<(Batch, DecodeStats)> {
    let plan = DecodePlan::new(&job(policy, bad_rows));
    decode(&plan, &record_batch(labels), &ORIGIN)
}

const CONSISTENT: [[i8; 4]; 4] = [[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [1, 0, 1, 1]];

#[test]
fn features_are_hashed_bagged_and_transformed() {
    let (b, stats) = run("fail", "fail", &CONSISTENT).expect("decodes");
    assert_eq!(b.rows, 4);
    let user_seed = table_seed("user");
    assert_eq!(b.categorical[0][0], bucket_i64(-1, user_seed, 1000));
    assert_eq!(
        b.categorical[1][2],
        bucket_str("q2", table_seed("query"), 50)
    );
    let shop_seed = table_seed("shop");
    assert_eq!(b.categorical[2][1], bucket_str("shop1", shop_seed, 77));
    assert_eq!(
        b.categorical[2][3],
        bucket_null(shop_seed, 77),
        "dictionary null"
    );
    // The cross (user, shop, query): the members' hashes under the cross's own table (named
    // after its columns), 8 bytes LE each, hashed again; a null member hashes as a null.
    let seed = table_seed("user_x_shop_x_query");
    let member = |b: &[u8]| xxhash_rust::xxh64::xxh64(b, seed);
    let cross = |user: i64, shop: Option<&str>, query: &str| {
        let shop = shop.map_or(crate::hash::hash_null(seed), |s| member(s.as_bytes()));
        let bytes: Vec<u8> = [xxh64_u64(user as u64, seed), shop, member(query.as_bytes())]
            .iter()
            .flat_map(|h| h.to_le_bytes())
            .collect();
        (xxhash_rust::xxh64::xxh64(&bytes, seed) % 5000) as u32
    };
    assert_eq!(b.categorical[3][1], cross(0, Some("shop1"), "q1"));
    assert_eq!(b.categorical[3][3], cross(2, None, "q3"), "null member");
    assert_ne!(b.categorical[3][0], b.categorical[3][2]);
    // Null list -> empty; null elements skipped; max_len 2 keeps the first two; shared table
    // "user" hashes like the user column.
    assert_eq!(b.lists[0].row(0), &[] as &[u32]);
    assert_eq!(
        b.lists[0].row(1),
        &[
            bucket_i64(5, user_seed, 1000),
            bucket_i64(6, user_seed, 1000)
        ]
    );
    assert_eq!(b.lists[0].row(2), &[bucket_i64(2, user_seed, 1000)]);
    assert_eq!(b.numeric, vec![-1.0, -1.0, 2f32.ln_1p(), 3f32.ln_1p()]);
    assert_eq!(stats.numeric_filled, 2, "a null and a NaN were filled");
    assert_eq!(
        b.labels,
        vec![
            vec![0, 1, 1, 1],
            vec![0, 0, 1, 0],
            vec![0, 0, 1, 1],
            vec![0, 0, 0, 1]
        ]
    );
    assert_eq!(
        b.origins[3],
        RowOrigin {
            object: 3,
            row_group: 2,
            row: 103
        }
    );
    assert_eq!(stats.rows_read, 4);
    assert_eq!(stats.rows_kept, 4);
}

const INCONSISTENT: [[i8; 4]; 4] = [[1, 0, 0, 0], [0, 0, 1, 1], [1, 0, 0, 1], [0, 1, 0, 0]];

#[test]
fn inconsistent_rows_fail_with_location() {
    let err = run("fail", "fail", &INCONSISTENT).expect_err("inconsistent");
    let msg = err.to_string();
    for want in [
        "memory://t/x/part-0.parquet",
        "row group 2",
        "row 101",
        "order=1 with click=0",
        "funnel.labels.order",
    ] {
        assert!(msg.contains(want), "{want} missing from: {msg}");
    }
}

#[test]
fn inconsistent_rows_are_dropped_and_counted() {
    let (b, stats) = run("drop", "fail", &INCONSISTENT).expect("decodes");
    assert_eq!(b.rows, 1);
    assert_eq!(b.origins[0].row, 100);
    assert_eq!(stats.inconsistent_rows, 3);
    assert_eq!(stats.dropped_inconsistent, 3);
    assert_eq!(stats.inconsistent["order=1 with click=0"], 1);
    assert_eq!(stats.inconsistent["pay=1 with order=0"], 1);
    assert_eq!(stats.inconsistent["favorite=1 with click=0"], 1);
    assert_eq!(
        stats.rows_kept + stats.dropped_inconsistent,
        stats.rows_read
    );
}

#[test]
fn repair_cascades_up_the_funnel() {
    let (b, stats) = run("repair", "fail", &INCONSISTENT).expect("decodes");
    assert_eq!(b.rows, 4);
    assert_eq!(stats.repaired, 3);
    // Row 2: pay=1 without order -> order repaired; order then has click=1 already.
    assert_eq!([b.labels[0][2], b.labels[2][2], b.labels[3][2]], [1, 1, 1]);
    // Row 1: order=1, pay=1, click=0 -> click repaired.
    assert_eq!(b.labels[0][1], 1);
}

#[test]
fn bad_labels_fail_or_are_skipped() {
    let rows = [[0, 0, 0, 0], [-1, 0, 0, 0], [1, 2, 0, 0]];
    let err = run("fail", "fail", &rows).expect_err("null label");
    let msg = err.to_string();
    assert!(
        msg.contains("row 101") && msg.contains("`click`") && msg.contains("null"),
        "{msg}"
    );
    let (b, stats) = run("fail", "skip", &rows).expect("skips");
    assert_eq!(b.rows, 1);
    assert_eq!(stats.skipped_bad_labels, 2);
}

#[test]
fn wrong_column_type_names_column_and_key() {
    let plan = DecodePlan::new(&job("fail", "fail"));
    let rb = record_batch(&CONSISTENT);
    let mut cols: Vec<(String, ArrayRef)> = rb
        .schema()
        .fields()
        .iter()
        .zip(rb.columns())
        .map(|(f, c)| (f.name().clone(), c.clone()))
        .collect();
    cols[4].1 = Arc::new(arrow_array::StringArray::from(vec!["a"; 4]));
    let rb = RecordBatch::try_from_iter(cols).expect("valid");
    let msg = decode(&plan, &rb, &ORIGIN)
        .expect_err("bad type")
        .to_string();
    assert!(
        msg.contains("`price`") && msg.contains("features.numeric[0].column"),
        "{msg}"
    );
}

#[test]
fn counts_do_not_depend_on_the_policy() {
    let rows = [[0, 1, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]];
    let (_, dropped) = run("drop", "fail", &rows).expect("decodes");
    let (b, repaired) = run("repair", "fail", &rows).expect("decodes");
    assert_eq!(dropped.inconsistent, repaired.inconsistent);
    assert_eq!(dropped.inconsistent_rows, 2);
    // Row 1: pay=1 only -> order and then click repaired.
    assert_eq!(
        [
            b.labels[0][1],
            b.labels[1][1],
            b.labels[2][1],
            b.labels[3][1]
        ],
        [1, 0, 1, 1]
    );
}

#[test]
fn prediction_plan_keeps_every_row_without_label_columns() {
    // Labels that `fail` would refuse, then no label columns at all: prediction reads neither.
    let rb = record_batch(&INCONSISTENT);
    let features: Vec<usize> = ["user", "query", "shop", "hist", "price"]
        .iter()
        .map(|c| rb.schema().index_of(c).expect("column"))
        .collect();
    let rb = rb.project(&features).expect("projects");
    let plan = DecodePlan::for_prediction(&job("fail", "fail"));
    let (b, stats) = decode(&plan, &rb, &ORIGIN).expect("decodes");
    assert_eq!(b.rows, 4);
    assert!(b.labels.is_empty());
    let rows: Vec<u32> = b.origins.iter().map(|o| o.row).collect();
    assert_eq!(rows, [100, 101, 102, 103], "every row, in order");
    assert_eq!(stats.rows_kept, stats.rows_read);
    // The features decode exactly as in training.
    let (full, _) = run("drop", "fail", &CONSISTENT).expect("decodes");
    let (pred, _) = decode(&plan, &record_batch(&CONSISTENT), &ORIGIN).expect("decodes");
    assert_eq!(pred.categorical, full.categorical);
    assert_eq!(pred.lists, full.lists);
    assert_eq!(pred.numeric, full.numeric);
}
