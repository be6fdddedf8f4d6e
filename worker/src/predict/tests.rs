use super::*;
use crate::state::{TRAINER_STATE_FORMAT, TrainerState};
use crate::trainer::Trainer;
use arrow_array::builder::{Int64Builder, ListBuilder};
use arrow_array::{Array, Float32Array, Int64Array, StringArray};
use bytes::Bytes;
use funnel_common::decode::{ChunkOrigin, decode};
use object_store::ObjectStoreExt;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::properties::WriterProperties;

fn job(base: &str) -> Job {
    Job::parse(
        &format!(
            r#"
version = 1
[data]
train = "{base}/data/"
[[features.categorical]]
column = "user"
buckets = 50
dim = 4
[[features.categorical]]
column = "query"
buckets = 20
dim = 4
[[features.list]]
column = "hist"
buckets = 50
dim = 4
max_len = 2
table = "user"
[[features.numeric]]
column = "price"
transform = "log1p"
fill_null = -1.0
[funnel]
preset = "click-fav-order-pay"
[towers]
hidden = [8]
"#
        ),
        "t",
    )
    .expect("valid job")
}

/// Rows `start..start + n`: nulls, empty lists and NaNs included; no label columns.
fn rows(start: i64, n: usize) -> RecordBatch {
    let ids: Vec<i64> = (start..start + n as i64).collect();
    let user = Int64Array::from_iter(ids.iter().map(|&i| (i % 4 != 3).then_some(i * 7 - 5)));
    let query = StringArray::from_iter(ids.iter().map(|&i| (i % 5 != 2).then(|| format!("q{i}"))));
    let mut hist = ListBuilder::new(Int64Builder::new());
    for &i in &ids {
        match i % 3 {
            0 => hist.append_null(),
            1 => hist.append_value([Some(i), None, Some(i + 1), Some(i + 2)]),
            _ => hist.append_value([]),
        }
    }
    let price = Float32Array::from_iter(ids.iter().map(|&i| match i % 4 {
        0 => None,
        1 => Some(f32::NAN),
        _ => Some(i as f32 * 1.5 - 4.0),
    }));
    let rid = StringArray::from_iter_values(ids.iter().map(|i| format!("r{i}")));
    RecordBatch::try_from_iter([
        ("rid", Arc::new(rid) as ArrayRef),
        ("user", Arc::new(user) as ArrayRef),
        ("query", Arc::new(query) as ArrayRef),
        ("hist", Arc::new(hist.finish()) as ArrayRef),
        ("price", Arc::new(price) as ArrayRef),
    ])
    .expect("batch")
}

fn parquet(rb: &RecordBatch, rg_rows: usize) -> Bytes {
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(rg_rows))
        .build();
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, rb.schema(), Some(props)).expect("writer");
    w.write(rb).expect("write");
    w.close().expect("close");
    Bytes::from(buf)
}

fn put(rt: &tokio::runtime::Runtime, url: &str, bytes: Bytes) {
    let s = StoreUrl::open(url, "test").expect("store");
    rt.block_on(s.store.put(&s.prefix, bytes.into()))
        .expect("put");
}

/// The output object at `url`: its batches and its row-group count.
fn read_back(rt: &tokio::runtime::Runtime, url: &str) -> (Vec<RecordBatch>, usize) {
    let s = StoreUrl::open(url, "test").expect("store");
    let bytes = rt
        .block_on(async { s.store.get(&s.prefix).await?.bytes().await })
        .expect("output object");
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).expect("parquet");
    let row_groups = builder.metadata().num_row_groups();
    let batches = builder
        .build()
        .expect("reader")
        .collect::<Result<_, _>>()
        .expect("batches");
    (batches, row_groups)
}

fn column<'a, T: 'static>(batches: &'a [RecordBatch], name: &str) -> Vec<&'a T> {
    batches
        .iter()
        .map(|b| {
            b.column_by_name(name)
                .unwrap_or_else(|| panic!("column {name}"))
                .as_any()
                .downcast_ref::<T>()
                .unwrap_or_else(|| panic!("type of {name}"))
        })
        .collect()
}

fn strings(batches: &[RecordBatch], name: &str) -> Vec<Option<String>> {
    column::<StringArray>(batches, name)
        .into_iter()
        .flat_map(|a| a.iter().map(|v| v.map(str::to_string)))
        .collect()
}

fn ints(batches: &[RecordBatch], name: &str) -> Vec<Option<i64>> {
    column::<Int64Array>(batches, name)
        .into_iter()
        .flat_map(|a| a.iter())
        .collect()
}

fn floats(batches: &[RecordBatch], name: &str) -> Vec<f32> {
    column::<Float32Array>(batches, name)
        .into_iter()
        .flat_map(|a| {
            assert_eq!(a.null_count(), 0);
            a.values().to_vec()
        })
        .collect()
}

/// Writes the data (`a.parquet`: 7 rows in row groups of 3; `sub/b.parquet`: 4 rows) and a
/// checkpoint of an untrained model under `base`; returns the inputs and the model's
/// probabilities of every row, `[stages][rows]`, in input order.
fn setup(rt: &tokio::runtime::Runtime, base: &str) -> (Vec<RecordBatch>, Vec<Vec<f32>>) {
    let inputs = vec![rows(0, 7), rows(7, 4)];
    put(
        rt,
        &format!("{base}/data/a.parquet"),
        parquet(&inputs[0], 3),
    );
    put(
        rt,
        &format!("{base}/data/sub/b.parquet"),
        parquet(&inputs[1], 3),
    );
    let job = Arc::new(job(base));
    let mut trainer = Trainer::new(job.clone()).expect("trainer");
    let state = TrainerState {
        format: TRAINER_STATE_FORMAT,
        job: job.spec.name.clone(),
        step: 0,
        epochs_done: 0,
        seed: job.spec.train.seed,
        model_train_steps: 0,
        layout_hash: format!("{:016x}", trainer.model().layout_hash()),
        weights: vec![("click".into(), 1.0)],
        weighting: trainer.weighting().clone(),
        history: Vec::new(),
    };
    let files = trainer.checkpoint_files(&state).expect("files");
    rt.block_on(checkpoint::commit(&format!("{base}/out"), 7, files))
        .expect("commit");
    // The same rows decoded as training would (without labels) and scored by the trainer.
    let plan = DecodePlan::for_prediction(&job);
    let mut want: Vec<Vec<f32>> = vec![Vec::new(); 4];
    for rb in &inputs {
        let origin = ChunkOrigin {
            object: 0,
            object_url: "x",
            row_group: 0,
            first_row: 0,
        };
        let (batch, _) = decode(&plan, rb, &origin).expect("decodes");
        for (w, p) in want
            .iter_mut()
            .zip(trainer.predict(&batch).expect("predicts"))
        {
            w.extend(p);
        }
    }
    (inputs, want)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn options(base: &str, out: &str) -> PredictOptions {
    PredictOptions {
        checkpoint: format!("{base}/out"),
        data: format!("{base}/data/"),
        out: out.to_string(),
        keep: None,
        batch_rows: 2,
    }
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: row count");
    for (r, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-6, "{what} row {r}: {g} vs {w}");
    }
}

#[test]
fn one_output_object_per_input_object_in_input_order() {
    let rt = runtime();
    let base = "memory://predict-per-object";
    let (inputs, want) = setup(&rt, base);
    let out = format!("{base}/pred");
    let summary = predict(&options(base, &out), rt.handle()).expect("predicts");
    assert_eq!(summary.rows, 11);
    assert_eq!(summary.step, 7);
    assert_eq!(
        summary.columns,
        ["p_click", "p_favorite", "p_order", "p_pay"]
    );
    assert_eq!(
        summary.keep,
        ["user", "query"],
        "default: the categorical columns"
    );
    let urls: Vec<&str> = summary.outputs.iter().map(|o| o.url.as_str()).collect();
    assert_eq!(
        urls,
        [
            "memory://predict-per-object/pred/a.parquet",
            "memory://predict-per-object/pred/sub/b.parquet"
        ]
    );
    let mut got: Vec<Vec<f32>> = vec![Vec::new(); 4];
    for (i, (input, url)) in inputs.iter().zip(urls).enumerate() {
        let (batches, row_groups) = read_back(&rt, url);
        assert_eq!(
            row_groups,
            [3, 2][i],
            "one output row group per input row group"
        );
        let schema = batches[0].schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            ["user", "query", "p_click", "p_favorite", "p_order", "p_pay"]
        );
        // Pass-through columns are the input's, nulls included.
        assert_eq!(
            ints(&batches, "user"),
            ints(std::slice::from_ref(input), "user")
        );
        assert_eq!(
            strings(&batches, "query"),
            strings(std::slice::from_ref(input), "query")
        );
        for (s, name) in summary.columns.iter().enumerate() {
            got[s].extend(floats(&batches, name));
        }
    }
    for (s, name) in summary.columns.iter().enumerate() {
        assert_close(&got[s], &want[s], name);
    }
    // The funnel's order holds row by row.
    let [click, favorite, order, pay] = [&got[0], &got[1], &got[2], &got[3]];
    for (r, c) in click.iter().enumerate() {
        assert!(
            pay[r] <= order[r] && order[r] <= *c && favorite[r] <= *c,
            "row {r}"
        );
    }
}

#[test]
fn one_parquet_output_with_chosen_columns() {
    let rt = runtime();
    let base = "memory://predict-single";
    let (inputs, want) = setup(&rt, base);
    let out = format!("{base}/pred/all.parquet");
    let mut opts = options(base, &out);
    opts.keep = Some(vec!["rid".into(), "price".into()]);
    opts.batch_rows = 8192;
    let summary = predict(&opts, rt.handle()).expect("predicts");
    assert_eq!(summary.outputs.len(), 1);
    assert_eq!(summary.outputs[0].rows, 11);
    let (batches, row_groups) = read_back(&rt, &out);
    assert_eq!(row_groups, 5);
    let want_rid: Vec<Option<String>> = inputs
        .iter()
        .flat_map(|b| strings(std::slice::from_ref(b), "rid"))
        .collect();
    assert_eq!(strings(&batches, "rid"), want_rid);
    // Verbatim: NaN and nulls of a numeric column are passed through as they are.
    let price: Vec<Option<u32>> = column::<Float32Array>(&batches, "price")
        .into_iter()
        .flat_map(|a| a.iter().map(|v| v.map(f32::to_bits)).collect::<Vec<_>>())
        .collect();
    let want_price: Vec<Option<u32>> = column::<Float32Array>(&inputs, "price")
        .into_iter()
        .flat_map(|a| a.iter().map(|v| v.map(f32::to_bits)).collect::<Vec<_>>())
        .collect();
    assert_eq!(price, want_price);
    assert_close(&floats(&batches, "p_pay"), &want[3], "p_pay");
    // No pass-through at all.
    let mut opts = options(base, &format!("{base}/bare/"));
    opts.keep = Some(vec![String::new()]);
    let summary = predict(&opts, rt.handle()).expect("predicts");
    assert!(summary.keep.is_empty());
    let (batches, _) = read_back(&rt, &summary.outputs[1].url);
    assert_eq!(batches[0].num_columns(), 4);
    assert_close(&floats(&batches, "p_click"), &want[0][7..], "p_click of b");
}

#[test]
fn refusals_name_the_column_and_object() {
    let rt = runtime();
    let base = "memory://predict-refusals";
    setup(&rt, base);
    let err = |opts: &PredictOptions| predict(opts, rt.handle()).expect_err("refused").to_string();
    let mut opts = options(base, &format!("{base}/pred"));
    opts.keep = Some(vec!["session".into()]);
    let msg = err(&opts);
    for want in ["predict-refusals/data/a.parquet", "`session`", "--keep"] {
        assert!(msg.contains(want), "{want} missing from: {msg}");
    }
    opts.keep = Some(vec!["p_order".into()]);
    assert!(err(&opts).contains("output probability column"));
    // A feature column missing from the data.
    let lacking = rows(0, 3).project(&[0, 1, 2, 3]).expect("without price");
    put(
        &rt,
        &format!("{base}/lacking/x.parquet"),
        parquet(&lacking, 3),
    );
    let mut opts = options(base, &format!("{base}/pred2"));
    opts.data = format!("{base}/lacking/");
    let msg = err(&opts);
    for want in ["lacking/x.parquet", "`price`", "features.numeric[0]"] {
        assert!(msg.contains(want), "{want} missing from: {msg}");
    }
    // The output may not overwrite the input.
    let mut opts = options(base, &format!("{base}/data/a.parquet"));
    opts.data = format!("{base}/data/a.parquet");
    assert!(err(&opts).contains("overwrite the input"));
}

#[test]
fn relative_names_and_default_columns() {
    let p = |s: &str| Path::from(s);
    assert_eq!(
        relative_name(&p("d"), &p("d/part-0.parquet")),
        "part-0.parquet"
    );
    assert_eq!(
        relative_name(&p("d"), &p("d/eval/x.parquet")),
        "eval/x.parquet"
    );
    assert_eq!(
        relative_name(&p("d/one.parquet"), &p("d/one.parquet")),
        "one.parquet"
    );
    let job = job("memory://x");
    assert_eq!(keep_columns(None, &job), ["user", "query"]);
    let asked = ["b".to_string(), " a".into(), "b".into(), String::new()];
    assert_eq!(keep_columns(Some(&asked), &job), ["b", "a"]);
}

#[test]
fn output_columns_slice_probabilities_per_piece() {
    let keep = |from: i64, n: i64| {
        RecordBatch::try_from_iter([(
            "id",
            Arc::new(Int64Array::from_iter_values(from..from + n)) as ArrayRef,
        )])
        .expect("batch")
    };
    let probs = vec![vec![0.1, 0.2, 0.3], vec![0.01, 0.02, 0.03]];
    let pieces = output_columns(&[keep(0, 2), keep(2, 1)], &probs);
    assert_eq!(pieces.len(), 2);
    let p = |a: &ArrayRef| {
        a.as_any()
            .downcast_ref::<Float32Array>()
            .expect("f32")
            .values()
            .to_vec()
    };
    assert_eq!(p(&pieces[0][1]), [0.1, 0.2]);
    assert_eq!(p(&pieces[1][2]), [0.03]);
    assert_eq!(output_columns(&[], &probs).len(), 1);
    assert!(output_columns(&[], &[vec![], vec![]]).is_empty());
}
