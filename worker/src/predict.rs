//! `funnel predict`: scores Parquet with a checkpoint and writes every stage's probability.
//!
//! - **Model.** The checkpoint is opened with [`checkpoint::open`] (every file verified against
//!   MANIFEST.json; a checkpoint without one is refused). The job is rebuilt from model.json's
//!   embedded spec, and only the towers and the embedding tables are loaded
//!   ([`restore_model`]): optimizer state is not needed to score.
//! - **Input.** `--data` is a prefix or one Parquet object in any store, listed once
//!   ([`DatasetManifest`]). Only the feature columns are required and read
//!   ([`DecodePlan::for_prediction`]): labels may be absent, no label policy applies and no row
//!   is dropped. Every input row yields one output row, in input order (objects in path order,
//!   row groups in order, rows in order).
//! - **Output.** Per row: the pass-through columns (`--keep`; by default the categorical feature
//!   columns, i.e. the ids) copied verbatim with their Arrow types and nulls, then `p_<stage>`
//!   (float32) for every stage in funnel order. `--out` is a prefix — one object per input
//!   object, at the input's path relative to `--data` (`<out>/<file name>` for a flat prefix) —
//!   or, when it ends in `.parquet`, one object holding every row. One output row group per
//!   input row group; zstd; key-value metadata `funnel.predict` names the checkpoint.
//! - **Threads.** Model compute runs on the calling thread (never an async task); reading and
//!   decoding run ahead on the runtime and the decode pool, writing behind it on the runtime.
//!
//! An object whose write fails is aborted (no partial object is committed); objects completed
//! before a failure stay.

use crate::WorkerError;
use crate::state::restore_model;
use arrow_array::{ArrayRef, Float32Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use funnel_common::batch::Batch;
use funnel_common::checkpoint::card::MODEL_CARD_FORMAT;
use funnel_common::checkpoint::{self, Checkpoint, ModelCard};
use funnel_common::columns::DecodePlan;
use funnel_common::embedding::EmbeddingSet;
use funnel_common::error::{DataLocation, Error};
use funnel_common::manifest::DatasetManifest;
use funnel_common::model::FunnelModel;
use funnel_common::reader::ShardReader;
use funnel_common::spec::Job;
use funnel_common::store::StoreUrl;
use futures::StreamExt;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use std::sync::Arc;
use std::time::Instant;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tracing::info;

/// Rows per forward pass by default.
pub const PREDICT_BATCH_ROWS: usize = 8192;
/// Row groups read and decoded ahead of the model.
const READ_AHEAD: usize = 4;
/// Object-store multipart part size of the outputs.
const PART_BYTES: usize = 8 << 20;

/// What `funnel predict` does.
#[derive(Debug, Clone)]
pub struct PredictOptions {
    /// A checkpoint directory URL, or an output URL (then its `checkpoints/LATEST`).
    pub checkpoint: String,
    /// Input: a prefix of Parquet objects, or one object.
    pub data: String,
    /// Output: a prefix (one object per input object), or an object ending in `.parquet`.
    pub out: String,
    /// Columns copied to the output; `None`: the categorical feature columns.
    pub keep: Option<Vec<String>>,
    /// Rows per forward pass.
    pub batch_rows: usize,
}

/// One written object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenObject {
    /// Its URL.
    pub url: String,
    /// Rows in it.
    pub rows: u64,
}

/// What a prediction run did.
#[derive(Debug, Clone)]
pub struct PredictSummary {
    /// The checkpoint directory used.
    pub checkpoint: String,
    /// Its training step.
    pub step: u64,
    /// Input objects.
    pub input_objects: usize,
    /// Rows scored (= rows read = rows written).
    pub rows: u64,
    /// The probability columns, in funnel order.
    pub columns: Vec<String>,
    /// The pass-through columns.
    pub keep: Vec<String>,
    /// The objects written, in order.
    pub outputs: Vec<WrittenObject>,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// The towers and tables of a checkpoint, ready to score batches.
#[derive(Debug)]
pub struct Predictor {
    set: EmbeddingSet,
    model: FunnelModel,
    /// Reused `[rows, emb_dim]` gather buffer.
    emb: Vec<f32>,
}

impl Predictor {
    /// Loads the model of `ckpt` for `job` (the job it was trained with).
    pub fn restore(job: &Job, ckpt: &Checkpoint) -> Result<Self, WorkerError> {
        let (model, set) = restore_model(job, ckpt)?;
        Ok(Self {
            set,
            model,
            emb: Vec::new(),
        })
    }

    /// Stage names in funnel order (the order of [`Self::predict`]'s output).
    pub fn stage_names(&self) -> &[String] {
        self.model.stage_names()
    }

    /// Every stage's probability for `batch`, `[stages][rows]` in funnel order.
    pub fn predict(&mut self, batch: &Batch) -> Result<Vec<Vec<f32>>, WorkerError> {
        self.set
            .gather_into(batch, &mut self.emb)
            .map_err(|e| WorkerError::Data(e.into()))?;
        self.model
            .forward(&self.emb, &batch.numeric)
            .map_err(|e| WorkerError::Data(e.into()))
    }
}

/// Opens and verifies a checkpoint and rebuilds its job from model.json.
pub fn open_checkpoint(
    url: &str,
    runtime: &Handle,
) -> Result<(Checkpoint, ModelCard, Arc<Job>), WorkerError> {
    let ckpt = runtime.block_on(checkpoint::open(url))?;
    let origin = format!("{}/model.json", ckpt.url);
    let bad = |message: String| {
        WorkerError::Data(Error::Checkpoint {
            url: ckpt.url.clone(),
            message,
        })
    };
    let card: ModelCard = serde_json::from_slice(ckpt.file("model.json")?)
        .map_err(|e| bad(format!("model.json is unreadable: {e}")))?;
    if card.format != MODEL_CARD_FORMAT {
        return Err(bad(format!(
            "model.json format {} is not supported (this build reads {MODEL_CARD_FORMAT})",
            card.format
        )));
    }
    let job = Job::from_spec(card.job.clone(), &origin)?;
    Ok((ckpt, card, Arc::new(job)))
}

/// Scores `opts.data` with `opts.checkpoint` and writes `opts.out` (module docs). Blocks the
/// calling thread, which runs the model; I/O runs on `runtime`.
pub fn predict(opts: &PredictOptions, runtime: &Handle) -> Result<PredictSummary, WorkerError> {
    let started = Instant::now();
    let (ckpt, card, job) = open_checkpoint(&opts.checkpoint, runtime)?;
    let mut predictor = Predictor::restore(&job, &ckpt)?;
    let stages = predictor.stage_names().to_vec();
    let columns: Vec<String> = stages.iter().map(|s| format!("p_{s}")).collect();
    info!(checkpoint = %ckpt.url, step = ckpt.manifest.step, stages = ?stages, "model loaded");

    let data = &job.spec.data;
    let manifest = Arc::new(runtime.block_on(DatasetManifest::build(
        &opts.data,
        "--data",
        data.io_concurrency,
    ))?);
    let plan = Arc::new(DecodePlan::for_prediction(&job));
    manifest.check_schema(&plan)?;
    let keep = keep_columns(opts.keep.as_deref(), &job);
    let files = plan_outputs(&opts.out, &manifest, &keep, &columns)?;
    info!(
        objects = manifest.objects.len(),
        rows = manifest.total_rows(),
        outputs = files.files.len(),
        "scoring"
    );
    let reader = ShardReader::new(
        manifest.clone(),
        plan,
        data.decode_threads,
        data.read_batch_rows,
    );
    let meta = serde_json::json!({
        "checkpoint": ckpt.url,
        "step": ckpt.manifest.step,
        "layout_hash": card.layout_hash,
        "columns": columns,
    })
    .to_string();
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_key_value_metadata(Some(vec![KeyValue::new("funnel.predict".into(), meta)]))
        .build();

    let (in_tx, mut in_rx) = mpsc::channel(READ_AHEAD);
    let keep = Arc::new(keep);
    let producer = runtime.spawn(read_pieces(reader, keep.clone(), in_tx));
    let (out_tx, out_rx) = mpsc::channel(2);
    let writer = runtime.spawn(write_outputs(files, out_rx, props));

    let scored = score_all(
        &mut predictor,
        &manifest,
        &mut in_rx,
        &out_tx,
        opts.batch_rows.max(1),
    );
    drop(in_rx);
    let finished = match scored {
        Ok(rows) => out_tx
            .blocking_send(WriteMsg::Done)
            .map(|()| rows)
            .map_err(|_| WorkerError::Internal("the output writer stopped".into())),
        Err(e) => Err(e),
    };
    drop(out_tx);
    // Wait for the writer in all cases: on failure it aborts the object in progress.
    let written = runtime
        .block_on(writer)
        .map_err(|e| WorkerError::Internal(format!("output writer: {e}")))?;
    let _ = runtime.block_on(producer);
    let (rows, outputs) = match (finished, written) {
        (Ok(rows), Ok(outputs)) => (rows, outputs),
        // A writer error explains a scoring loop that found the writer gone; a scoring error
        // explains a cancelled writer.
        (_, Err(WriteFailure::Failed(e))) | (Err(e), _) => return Err(e),
        (Ok(_), Err(WriteFailure::Cancelled)) => {
            return Err(WorkerError::Internal(
                "the output writer was cancelled".into(),
            ));
        }
    };
    Ok(PredictSummary {
        checkpoint: ckpt.url.clone(),
        step: ckpt.manifest.step,
        input_objects: manifest.objects.len(),
        rows,
        columns,
        keep: keep.to_vec(),
        outputs,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The pass-through columns: those asked for (empty names dropped, duplicates once), or by
/// default the categorical feature columns in spec order.
fn keep_columns(asked: Option<&[String]>, job: &Job) -> Vec<String> {
    let candidates: Vec<String> = match asked {
        Some(cols) => cols.iter().map(|c| c.trim().to_string()).collect(),
        None => job
            .spec
            .features
            .categorical
            .iter()
            .map(|c| c.column.clone())
            .collect(),
    };
    let mut out: Vec<String> = Vec::new();
    for c in candidates {
        if !c.is_empty() && !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// One output object and the Arrow schema of its rows.
#[derive(Debug, Clone)]
struct OutputFile {
    path: Path,
    url: String,
    schema: SchemaRef,
}

/// Where each input object's rows go.
#[derive(Debug, Clone)]
struct OutputPlan {
    store: StoreUrl,
    files: Vec<OutputFile>,
    /// Output file of each input object (non-decreasing).
    file_of: Vec<usize>,
}

/// The output objects: one per input object under the `--out` prefix, or one `.parquet`
/// object. Checks the pass-through columns against every input object.
fn plan_outputs(
    out: &str,
    manifest: &DatasetManifest,
    keep: &[String],
    columns: &[String],
) -> Result<OutputPlan, WorkerError> {
    let store = StoreUrl::open(out, "--out")?;
    let mut problems = Vec::new();
    for c in keep {
        if columns.contains(c) {
            problems.push((
                DataLocation {
                    object: manifest.url.clone(),
                    column: Some(c.clone()),
                    key: Some("--keep".into()),
                    ..Default::default()
                },
                format!("`{c}` is also the name of an output probability column"),
            ));
        }
    }
    // Per input object: its pass-through fields.
    let mut fields: Vec<Vec<Field>> = Vec::with_capacity(manifest.objects.len());
    for o in &manifest.objects {
        let schema = o.metadata.schema();
        let mut f = Vec::with_capacity(keep.len());
        for c in keep {
            match schema.field_with_name(c) {
                Ok(field) => f.push(field.clone()),
                Err(_) => problems.push((
                    DataLocation {
                        object: o.url.clone(),
                        column: Some(c.clone()),
                        key: Some("--keep".into()),
                        ..Default::default()
                    },
                    "column is missing (a pass-through column must be in every input object)"
                        .into(),
                )),
            }
        }
        fields.push(f);
    }
    let single = out.trim_end_matches('/').ends_with(".parquet");
    if single {
        // One schema for all: the first object's types, nullable where any object's is.
        let first = &fields[0];
        for (o, f) in manifest.objects.iter().zip(&fields).skip(1) {
            for (a, b) in first.iter().zip(f) {
                if a.data_type() != b.data_type() {
                    problems.push((
                        DataLocation {
                            object: o.url.clone(),
                            column: Some(a.name().clone()),
                            key: Some("--keep".into()),
                            ..Default::default()
                        },
                        format!(
                            "type {} differs from {} in {}: one output object needs one type \
                             (write one object per input with an --out prefix)",
                            b.data_type(),
                            a.data_type(),
                            manifest.objects[0].url
                        ),
                    ));
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(Error::Schema { problems }.into());
    }
    let schema_of = |keep_fields: Vec<Field>| -> SchemaRef {
        let mut f = keep_fields;
        f.extend(
            columns
                .iter()
                .map(|c| Field::new(c, DataType::Float32, false)),
        );
        Arc::new(Schema::new(f))
    };
    let (files, file_of) = if single {
        let nullable: Vec<bool> = (0..keep.len())
            .map(|i| fields.iter().any(|f| f[i].is_nullable()))
            .collect();
        let merged = fields[0]
            .iter()
            .zip(nullable)
            .map(|(f, n)| f.clone().with_nullable(n))
            .collect();
        let path = store.prefix.clone();
        let file = OutputFile {
            url: store.object_url(&path),
            path,
            schema: schema_of(merged),
        };
        (vec![file], vec![0; manifest.objects.len()])
    } else {
        let files = manifest
            .objects
            .iter()
            .zip(fields)
            .map(|(o, f)| {
                let path = store.child(&relative_name(&manifest.store.prefix, &o.path));
                OutputFile {
                    url: store.object_url(&path),
                    path,
                    schema: schema_of(f),
                }
            })
            .collect();
        (files, (0..manifest.objects.len()).collect())
    };
    for f in &files {
        if let Some(o) = manifest.objects.iter().find(|o| o.url == f.url) {
            return Err(Error::Url {
                url: out.to_string(),
                key: "--out".into(),
                reason: format!("it would overwrite the input object {}", o.url),
            }
            .into());
        }
    }
    Ok(OutputPlan {
        store,
        files,
        file_of,
    })
}

/// `object`'s path below the dataset `prefix` (`eval/part-0.parquet`), or its file name when
/// the dataset is that one object.
fn relative_name(prefix: &Path, object: &Path) -> String {
    let parts: Vec<String> = object
        .prefix_match(prefix)
        .map(|p| p.map(|s| s.as_ref().to_string()).collect())
        .unwrap_or_default();
    if parts.is_empty() {
        object.filename().unwrap_or("part.parquet").to_string()
    } else {
        parts.join("/")
    }
}

/// One decoded input row group with its pass-through columns.
struct Piece {
    object: usize,
    row_group: usize,
    batch: Batch,
    keep: Vec<RecordBatch>,
}

/// Reads every row group in manifest order, a few ahead, and sends them on `tx`; stops at the
/// first error (sent) or when the receiver is gone.
async fn read_pieces(
    reader: ShardReader,
    keep: Arc<Vec<String>>,
    tx: mpsc::Sender<Result<Piece, WorkerError>>,
) {
    let shards = reader.manifest().row_group_shards();
    let mut pieces = futures::stream::iter(shards)
        .map(|shard| {
            let reader = reader.clone();
            let keep = keep.clone();
            async move {
                let (object, row_group) = (shard.object, shard.row_groups.start);
                let raw = async {
                    if keep.is_empty() {
                        Ok(Vec::new())
                    } else {
                        reader.read_raw_columns(object, row_group, &keep).await
                    }
                };
                let (decoded, keep) =
                    futures::try_join!(reader.read_row_group(object, row_group), raw)?;
                Ok::<_, WorkerError>(Piece {
                    object,
                    row_group,
                    batch: decoded.batch,
                    keep,
                })
            }
        })
        .buffered(READ_AHEAD);
    while let Some(piece) = pieces.next().await {
        let failed = piece.is_err();
        if tx.send(piece).await.is_err() || failed {
            break;
        }
    }
}

/// What the writer is sent.
enum WriteMsg {
    /// The output rows of one input row group (one output row group).
    RowGroup {
        object: usize,
        /// Record batches' columns, in the output schema's order.
        pieces: Vec<Vec<ArrayRef>>,
    },
    /// Every row was sent: complete the objects.
    Done,
}

/// Scores every piece on this thread and sends its output rows to the writer; returns the rows.
fn score_all(
    predictor: &mut Predictor,
    manifest: &DatasetManifest,
    rx: &mut mpsc::Receiver<Result<Piece, WorkerError>>,
    tx: &mpsc::Sender<WriteMsg>,
    batch_rows: usize,
) -> Result<u64, WorkerError> {
    let mut rows = 0u64;
    let stages = predictor.stage_names().len();
    while let Some(piece) = rx.blocking_recv() {
        let piece = piece?;
        let entry = &manifest.objects[piece.object];
        let expected = entry.row_groups[piece.row_group];
        let kept: usize = piece.keep.iter().map(RecordBatch::num_rows).sum();
        if piece.batch.rows as u64 != expected
            || (!piece.keep.is_empty() && kept as u64 != expected)
        {
            return Err(WorkerError::Internal(format!(
                "object {}, row group {}: {expected} rows in the footer, {} decoded, {kept} \
                 passed through",
                entry.url, piece.row_group, piece.batch.rows
            )));
        }
        let probs = score(predictor, &piece.batch, batch_rows, stages)?;
        rows += piece.batch.rows as u64;
        let msg = WriteMsg::RowGroup {
            object: piece.object,
            pieces: output_columns(&piece.keep, &probs),
        };
        if tx.blocking_send(msg).is_err() {
            return Err(WorkerError::Internal("the output writer stopped".into()));
        }
    }
    // The reader sends every piece or an error; a closed channel is the end.
    let total = manifest.total_rows();
    if rows != total {
        return Err(WorkerError::Internal(format!(
            "scored {rows} rows of {total}: the reader stopped early"
        )));
    }
    Ok(rows)
}

/// `[stages][rows]` probabilities of `batch`, in forward passes of at most `batch_rows` rows.
fn score(
    predictor: &mut Predictor,
    batch: &Batch,
    batch_rows: usize,
    stages: usize,
) -> Result<Vec<Vec<f32>>, WorkerError> {
    if batch.rows <= batch_rows {
        return if batch.rows == 0 {
            Ok(vec![Vec::new(); stages])
        } else {
            predictor.predict(batch)
        };
    }
    let mut out = vec![Vec::with_capacity(batch.rows); stages];
    let mut start = 0;
    while start < batch.rows {
        let end = (start + batch_rows).min(batch.rows);
        let idx: Vec<usize> = (start..end).collect();
        let p = predictor.predict(&batch.take(&idx))?;
        for (dst, src) in out.iter_mut().zip(p) {
            dst.extend_from_slice(&src);
        }
        start = end;
    }
    Ok(out)
}

/// The output columns of one row group, in pieces: each pass-through piece beside its slice of
/// the probabilities (or the probabilities alone when nothing is passed through).
fn output_columns(keep: &[RecordBatch], probs: &[Vec<f32>]) -> Vec<Vec<ArrayRef>> {
    let p_columns = |from: usize, len: usize| -> Vec<ArrayRef> {
        probs
            .iter()
            .map(|p| Arc::new(Float32Array::from(p[from..from + len].to_vec())) as ArrayRef)
            .collect()
    };
    let rows = probs.first().map_or(0, Vec::len);
    if keep.is_empty() {
        return if rows == 0 {
            Vec::new()
        } else {
            vec![p_columns(0, rows)]
        };
    }
    let mut from = 0;
    keep.iter()
        .map(|k| {
            let n = k.num_rows();
            let mut cols = k.columns().to_vec();
            cols.extend(p_columns(from, n));
            from += n;
            cols
        })
        .collect()
}

/// Why the writer stopped.
enum WriteFailure {
    /// The scoring side went away without `Done` (it has the error).
    Cancelled,
    /// Writing failed.
    Failed(WorkerError),
}

/// The writer task: opens, fills and completes the output objects in order.
async fn write_outputs(
    plan: OutputPlan,
    mut rx: mpsc::Receiver<WriteMsg>,
    props: WriterProperties,
) -> Result<Vec<WrittenObject>, WriteFailure> {
    let mut w = Writers {
        plan,
        props,
        current: None,
        next: 0,
        written: Vec::new(),
    };
    let result = async {
        loop {
            match rx.recv().await {
                Some(WriteMsg::RowGroup { object, pieces }) => {
                    w.row_group(object, pieces).await?;
                }
                Some(WriteMsg::Done) => return w.finish_all().await,
                None => return Err(WriteFailure::Cancelled),
            }
        }
    }
    .await;
    if result.is_err() {
        w.abort().await;
    }
    result.map(|()| w.written)
}

/// The object being written and what is done.
struct Writers {
    plan: OutputPlan,
    props: WriterProperties,
    /// (file index, writer, rows).
    current: Option<(usize, AsyncArrowWriter<BufWriter>, u64)>,
    /// The next file not yet opened.
    next: usize,
    written: Vec<WrittenObject>,
}

impl Writers {
    fn fail(&self, file: usize, e: ParquetError) -> WriteFailure {
        let f = &self.plan.files[file];
        WriteFailure::Failed(write_error(&self.plan.store, &f.path, &f.url, e).into())
    }

    fn open(&self, file: usize) -> Result<AsyncArrowWriter<BufWriter>, WriteFailure> {
        let f = &self.plan.files[file];
        let sink =
            BufWriter::with_capacity(self.plan.store.store.clone(), f.path.clone(), PART_BYTES);
        AsyncArrowWriter::try_new(sink, f.schema.clone(), Some(self.props.clone()))
            .map_err(|e| self.fail(file, e))
    }

    /// Writes one output row group to the object of input `object`, completing the objects
    /// before it (empty ones included: every input object has its output).
    async fn row_group(
        &mut self,
        object: usize,
        pieces: Vec<Vec<ArrayRef>>,
    ) -> Result<(), WriteFailure> {
        let file = self.plan.file_of[object];
        if self.current.as_ref().map(|c| c.0) != Some(file) {
            self.complete_current().await?;
            while self.next < file {
                self.write_empty(self.next).await?;
                self.next += 1;
            }
            let writer = self.open(file)?;
            self.current = Some((file, writer, 0));
            self.next = file + 1;
        }
        let schema = self.plan.files[file].schema.clone();
        let mut failed = None;
        if let Some((_, writer, rows)) = self.current.as_mut() {
            for columns in pieces {
                let b = match RecordBatch::try_new(schema.clone(), columns) {
                    Ok(b) => b,
                    Err(e) => {
                        failed = Some(ParquetError::General(format!("output rows: {e}")));
                        break;
                    }
                };
                if let Err(e) = writer.write(&b).await {
                    failed = Some(e);
                    break;
                }
                *rows += b.num_rows() as u64;
            }
            if failed.is_none() {
                failed = writer.flush().await.err();
            }
        }
        match failed {
            Some(e) => Err(self.fail(file, e)),
            None => Ok(()),
        }
    }

    async fn complete_current(&mut self) -> Result<(), WriteFailure> {
        if let Some((file, mut writer, rows)) = self.current.take() {
            // Taken out first: a writer whose completion failed is not aborted (its upload may
            // be half-completed, which object_store's BufWriter cannot abort).
            writer.finish().await.map_err(|e| self.fail(file, e))?;
            self.written.push(WrittenObject {
                url: self.plan.files[file].url.clone(),
                rows,
            });
        }
        Ok(())
    }

    async fn write_empty(&mut self, file: usize) -> Result<(), WriteFailure> {
        let writer = self.open(file)?;
        self.current = Some((file, writer, 0));
        self.complete_current().await
    }

    async fn finish_all(&mut self) -> Result<(), WriteFailure> {
        self.complete_current().await?;
        while self.next < self.plan.files.len() {
            self.write_empty(self.next).await?;
            self.next += 1;
        }
        Ok(())
    }

    /// Best-effort clean-up of the object in progress (no multipart garbage left behind).
    async fn abort(&mut self) {
        if let Some((_, writer, _)) = self.current.take() {
            let _ = writer.into_inner().abort().await;
        }
    }
}

/// A writer error naming the object (store errors keep their type and hints).
fn write_error(store: &StoreUrl, path: &Path, url: &str, e: ParquetError) -> Error {
    let message = e.to_string();
    if let ParquetError::External(source) = e {
        let source = match source.downcast::<object_store::Error>() {
            Ok(s) => return store.error("write", path, *s),
            Err(other) => other,
        };
        if let Ok(io) = source.downcast::<std::io::Error>()
            && let Some(inner) = io.into_inner()
            && let Ok(s) = inner.downcast::<object_store::Error>()
        {
            return store.error("write", path, *s);
        }
    }
    Error::Write {
        url: url.to_string(),
        message,
    }
}

#[cfg(test)]
mod tests;
