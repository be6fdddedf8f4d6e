//! Rows -> Arrow record batches -> Parquet objects, streamed to any object store with multipart
//! uploads. One job per part number writes `train/part-N` and `eval/part-N` together.

use super::truth::World;
use super::{GenOptions, LABEL_COLUMNS};
use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use crate::store::StoreUrl;
use arrow_array::builder::{NullBufferBuilder, OffsetBufferBuilder};
use arrow_array::{
    ArrayRef, Float32Array, Float64Array, Int8Array, Int64Array, ListArray, RecordBatch,
    StringArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use futures::future::BoxFuture;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use parquet::arrow::AsyncArrowWriter;
use parquet::arrow::async_writer::AsyncFileWriter;
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Rows per generation chunk; each chunk has its own random stream, so the data does not
/// depend on the row-group size or on how many jobs run at once.
pub(crate) const CHUNK_ROWS: u64 = 8192;

/// Object-store multipart part size and parts in flight per object.
const PART_BYTES: usize = 8 << 20;
const PARTS_IN_FLIGHT: usize = 4;

/// The Arrow schema of generated files.
pub fn schema() -> SchemaRef {
    let mut fields = vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("item_id", DataType::Int64, false),
        Field::new("category_id", DataType::Int64, false),
        Field::new("query", DataType::Utf8, false),
        Field::new("price", DataType::Float32, false),
        Field::new("user_age", DataType::Float32, true),
        Field::new("hour", DataType::Int64, false),
        Field::new(
            "recent_items",
            DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true))),
            false,
        ),
    ];
    for label in LABEL_COLUMNS {
        fields.push(Field::new(label, DataType::Int8, false));
    }
    for label in LABEL_COLUMNS {
        fields.push(Field::new(
            format!("truth_p_{label}"),
            DataType::Float64,
            false,
        ));
    }
    Arc::new(Schema::new(fields))
}

/// Column buffers for the rows of one chunk that go to one split.
struct Columns {
    user: Vec<i64>,
    item: Vec<i64>,
    category: Vec<i64>,
    query_offsets: OffsetBufferBuilder<i32>,
    query_bytes: Vec<u8>,
    price: Vec<f32>,
    age: Vec<f32>,
    age_valid: NullBufferBuilder,
    hour: Vec<i64>,
    recent_offsets: OffsetBufferBuilder<i32>,
    recent: Vec<i64>,
    labels: [Vec<i8>; 4],
    truth: [Vec<f64>; 4],
}

impl Columns {
    fn new(rows: usize) -> Self {
        Columns {
            user: Vec::with_capacity(rows),
            item: Vec::with_capacity(rows),
            category: Vec::with_capacity(rows),
            query_offsets: OffsetBufferBuilder::new(rows),
            query_bytes: Vec::with_capacity(rows * 6),
            price: Vec::with_capacity(rows),
            age: Vec::with_capacity(rows),
            age_valid: NullBufferBuilder::new(rows),
            hour: Vec::with_capacity(rows),
            recent_offsets: OffsetBufferBuilder::new(rows),
            recent: Vec::new(),
            labels: std::array::from_fn(|_| Vec::with_capacity(rows)),
            truth: std::array::from_fn(|_| Vec::with_capacity(rows)),
        }
    }

    fn len(&self) -> usize {
        self.user.len()
    }

    /// Moves the buffered rows into a record batch, leaving empty buffers behind.
    fn take_batch(&mut self, schema: &SchemaRef) -> std::result::Result<RecordBatch, String> {
        let mut c = std::mem::replace(self, Columns::new(CHUNK_ROWS as usize));
        let list_field = Arc::new(Field::new_list_field(DataType::Int64, true));
        let build = || -> std::result::Result<Vec<ArrayRef>, arrow_schema::ArrowError> {
            let mut columns: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from(c.user)),
                Arc::new(Int64Array::from(c.item)),
                Arc::new(Int64Array::from(c.category)),
                Arc::new(StringArray::try_new(
                    c.query_offsets.finish(),
                    c.query_bytes.into(),
                    None,
                )?),
                Arc::new(Float32Array::from(c.price)),
                Arc::new(Float32Array::try_new(c.age.into(), c.age_valid.finish())?),
                Arc::new(Int64Array::from(c.hour)),
                Arc::new(ListArray::try_new(
                    list_field,
                    c.recent_offsets.finish(),
                    Arc::new(Int64Array::from(c.recent)),
                    None,
                )?),
            ];
            for l in c.labels {
                columns.push(Arc::new(Int8Array::from(l)));
            }
            for t in c.truth {
                columns.push(Arc::new(Float64Array::from(t)));
            }
            Ok(columns)
        };
        let columns = build().map_err(|e| e.to_string())?;
        RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())
    }
}

/// Share of rows whose `user_age` is null.
pub(crate) const AGE_NULL_RATE: f64 = 0.02;

/// [`AsyncFileWriter`] over object_store's [`BufWriter`]: buffers up to [`PART_BYTES`], then
/// switches to a multipart upload; `complete` finishes the upload (or does a single put).
struct StoreWriter {
    inner: BufWriter,
    /// `complete` has started: the upload can no longer be aborted (BufWriter panics).
    completing: bool,
}

impl AsyncFileWriter for StoreWriter {
    fn write(&mut self, bs: Bytes) -> BoxFuture<'_, parquet::errors::Result<()>> {
        Box::pin(async move {
            self.inner
                .put(bs)
                .await
                .map_err(|e| ParquetError::External(Box::new(e)))
        })
    }

    fn complete(&mut self) -> BoxFuture<'_, parquet::errors::Result<()>> {
        Box::pin(async move {
            use tokio::io::AsyncWriteExt;
            self.completing = true;
            self.inner
                .shutdown()
                .await
                .map_err(|e| ParquetError::External(Box::new(e)))
        })
    }
}

/// The writer properties of generated files.
pub(crate) fn writer_properties(opts: &GenOptions, metadata: String) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(opts.row_group_rows))
        .set_key_value_metadata(Some(vec![KeyValue::new("funnel.gen".into(), metadata)]));
    // (Nearly) unique values per row group: a dictionary only costs time before the writer
    // falls back to plain encoding.
    b = b.set_column_dictionary_enabled(ColumnPath::from("user_id"), false);
    for label in LABEL_COLUMNS {
        b = b.set_column_dictionary_enabled(ColumnPath::from(format!("truth_p_{label}")), false);
    }
    b.build()
}

/// One object being written.
struct Part {
    path: Path,
    url: String,
    writer: Option<AsyncArrowWriter<StoreWriter>>,
    schema: SchemaRef,
    columns: Columns,
}

impl Part {
    fn open(out: &StoreUrl, name: &str, props: &WriterProperties) -> Result<Self> {
        let path = out.child(name);
        let url = out.object_url(&path);
        let sink = StoreWriter {
            inner: BufWriter::with_capacity(out.store.clone(), path.clone(), PART_BYTES)
                .with_max_concurrency(PARTS_IN_FLIGHT),
            completing: false,
        };
        let schema = schema();
        let writer =
            AsyncArrowWriter::try_new(sink, schema.clone(), Some(props.clone())).map_err(|e| {
                Error::Write {
                    url: url.clone(),
                    message: e.to_string(),
                }
            })?;
        Ok(Part {
            path,
            url,
            writer: Some(writer),
            schema,
            columns: Columns::new(CHUNK_ROWS as usize),
        })
    }

    /// Maps a writer error to the crate error naming this object (store errors keep their
    /// type and hints).
    fn error(&self, out: &StoreUrl, e: ParquetError) -> Error {
        if let ParquetError::External(source) = e {
            let source = match source.downcast::<object_store::Error>() {
                Ok(store) => return out.error("write", &self.path, *store),
                Err(other) => other,
            };
            let source = match source.downcast::<std::io::Error>() {
                Ok(io) => {
                    let message = io.to_string();
                    match io.into_inner().map(|i| i.downcast::<object_store::Error>()) {
                        Some(Ok(store)) => return out.error("write", &self.path, *store),
                        Some(Err(other)) => other,
                        None => return self.write_error(message),
                    }
                }
                Err(other) => other,
            };
            return self.write_error(source.to_string());
        }
        self.write_error(e.to_string())
    }

    fn write_error(&self, message: String) -> Error {
        Error::Write {
            url: self.url.clone(),
            message,
        }
    }

    /// Writes the buffered rows, if any.
    async fn flush_columns(&mut self, out: &StoreUrl) -> Result<()> {
        if self.columns.len() == 0 {
            return Ok(());
        }
        let batch = self
            .columns
            .take_batch(&self.schema)
            .map_err(|m| self.write_error(m))?;
        let Some(writer) = self.writer.as_mut() else {
            return Ok(());
        };
        match writer.write(&batch).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.error(out, e)),
        }
    }

    /// Writes the footer and completes the upload. On failure the writer stays, for `abort`.
    async fn close(&mut self, out: &StoreUrl) -> Result<()> {
        let Some(writer) = self.writer.as_mut() else {
            return Ok(());
        };
        match writer.finish().await {
            Ok(_) => {
                self.writer = None;
                Ok(())
            }
            Err(e) => Err(self.error(out, e)),
        }
    }

    /// Best-effort clean-up of a failed upload (no multipart garbage left behind). An upload
    /// whose completion failed is left to the store (BufWriter cannot abort it any more).
    async fn abort(&mut self) {
        if let Some(writer) = self.writer.take() {
            let mut sink = writer.into_inner();
            if !sink.completing {
                let _ = sink.inner.abort().await;
            }
        }
    }
}

/// What one part job wrote.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PartStats {
    pub train_rows: u64,
    pub eval_rows: u64,
    pub positives: [u64; 4],
}

/// Writes part `part` (`rows` rows, split between train and eval) to `out`. `None` when it
/// stopped early because `cancel` was set (another part failed).
pub(crate) async fn write_part(
    world: &World,
    opts: &GenOptions,
    props: &WriterProperties,
    out: &StoreUrl,
    part: usize,
    rows: u64,
    cancel: &AtomicBool,
) -> Result<Option<PartStats>> {
    let name = format!("part-{part:05}.parquet");
    let mut train = Part::open(out, &format!("train/{name}"), props)?;
    let mut eval = if opts.eval_fraction > 0.0 {
        Some(Part::open(out, &format!("eval/{name}"), props)?)
    } else {
        None
    };
    let mut result = fill_part(
        world,
        opts,
        out,
        part,
        rows,
        cancel,
        &mut train,
        eval.as_mut(),
    )
    .await;
    if let Ok(Some(_)) = result {
        let mut closed = train.close(out).await;
        if let (Ok(()), Some(eval)) = (&closed, eval.as_mut()) {
            closed = eval.close(out).await;
        }
        if let Err(e) = closed {
            result = Err(e);
        }
    }
    if !matches!(result, Ok(Some(_))) {
        train.abort().await;
        if let Some(eval) = eval.as_mut() {
            eval.abort().await;
        }
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn fill_part(
    world: &World,
    opts: &GenOptions,
    out: &StoreUrl,
    part: usize,
    rows: u64,
    cancel: &AtomicBool,
    train: &mut Part,
    mut eval: Option<&mut Part>,
) -> Result<Option<PartStats>> {
    let mut stats = PartStats::default();
    let chunks = rows.div_ceil(CHUNK_ROWS);
    for chunk in 0..chunks {
        if cancel.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let mut rng = SplitMix64::derive(opts.seed, ((part as u64) << 32) | chunk);
        let n = CHUNK_ROWS.min(rows - chunk * CHUNK_ROWS);
        for _ in 0..n {
            let to_eval = rng.next_f64() < opts.eval_fraction;
            let cols = match eval.as_deref_mut() {
                Some(e) if to_eval => {
                    stats.eval_rows += 1;
                    &mut e.columns
                }
                _ => {
                    stats.train_rows += 1;
                    &mut train.columns
                }
            };
            let history_start = cols.recent.len();
            let row = world.sample_row(&mut rng, &mut cols.recent);
            let outcome = world.outcome(&row, &mut rng);
            let age_null = rng.next_f64() < AGE_NULL_RATE;
            cols.user.push(row.user as i64);
            cols.item.push(row.item as i64);
            cols.category.push(row.category as i64);
            let before = cols.query_bytes.len();
            push_query(&mut cols.query_bytes, row.query);
            cols.query_offsets
                .push_length(cols.query_bytes.len() - before);
            cols.price.push(row.price);
            cols.age.push(if age_null { 0.0 } else { row.age });
            cols.age_valid.append(!age_null);
            cols.hour.push(row.hour as i64);
            cols.recent_offsets
                .push_length(cols.recent.len() - history_start);
            for k in 0..4 {
                cols.labels[k].push(outcome.labels[k] as i8);
                cols.truth[k].push(outcome.p[k]);
                stats.positives[k] += outcome.labels[k] as u64;
            }
        }
        train.flush_columns(out).await?;
        if let Some(e) = eval.as_deref_mut() {
            e.flush_columns(out).await?;
        }
    }
    Ok(Some(stats))
}

/// Appends `q<id>` in decimal.
fn push_query(buf: &mut Vec<u8>, q: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = q;
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.push(b'q');
    buf.extend_from_slice(&digits[i..]);
}
