//! Streams one shard: for each row group, a ranged GET of just the projected column chunks
//! (async I/O), then decoding on a bounded pool of blocking threads, never on the async runtime.

use crate::batch::Batch;
use crate::columns::DecodePlan;
use crate::decode::{ChunkOrigin, DecodeStats, decode};
use crate::error::{DataLocation, Error, Result};
use crate::manifest::{DatasetManifest, Shard};
use arrow_array::RecordBatch;
use arrow_schema::DataType;
use bytes::{Buf, Bytes};
use futures::StreamExt;
use futures::stream::BoxStream;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder,
};
use parquet::errors::ParquetError;
use parquet::file::reader::{ChunkReader, Length};
use std::ops::Range;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// One decoded row group.
#[derive(Debug, Clone)]
pub struct DecodedRowGroup {
    /// Object index in the manifest.
    pub object: usize,
    /// Row group index.
    pub row_group: usize,
    /// Its rows (after label policies).
    pub batch: Batch,
    /// What decoding counted.
    pub stats: DecodeStats,
}

/// Reads shards of one dataset under one decode plan. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ShardReader {
    manifest: Arc<DatasetManifest>,
    plan: Arc<DecodePlan>,
    decode_pool: Arc<Semaphore>,
    read_batch_rows: usize,
}

impl ShardReader {
    /// A reader that decodes on at most `decode_threads` threads at a time.
    pub fn new(
        manifest: Arc<DatasetManifest>,
        plan: Arc<DecodePlan>,
        decode_threads: usize,
        read_batch_rows: usize,
    ) -> Self {
        Self {
            manifest,
            plan,
            decode_pool: Arc::new(Semaphore::new(decode_threads.max(1))),
            read_batch_rows: read_batch_rows.max(1),
        }
    }

    /// The manifest this reader reads from.
    pub fn manifest(&self) -> &Arc<DatasetManifest> {
        &self.manifest
    }

    /// Streams the row groups of a shard in order, fetching the next while one decodes.
    pub fn read(&self, shard: Shard) -> BoxStream<'static, Result<DecodedRowGroup>> {
        let this = self.clone();
        futures::stream::iter(shard.row_groups)
            .map(move |rg| {
                let this = this.clone();
                async move { this.read_row_group(shard.object, rg).await }
            })
            .buffered(2)
            .boxed()
    }

    /// Fetches and decodes one row group.
    pub async fn read_row_group(&self, object: usize, row_group: usize) -> Result<DecodedRowGroup> {
        let entry = &self.manifest.objects[object];
        let meta = entry.metadata.clone();
        let roots = projected_roots(&meta, &self.plan);
        let chunk = self.fetch_roots(object, row_group, &roots).await?;
        let plan = self.plan.clone();
        let url = entry.url.clone();
        let batch_rows = self.read_batch_rows;
        let (batch, stats) = self
            .on_decode_pool(object, row_group, move || {
                decode_row_group(
                    &chunk, meta, &roots, &plan, &url, object, row_group, batch_rows,
                )
            })
            .await?;
        Ok(DecodedRowGroup {
            object,
            row_group,
            batch,
            stats,
        })
    }

    /// The columns `columns` of one row group as stored, in that order: the file's Arrow types,
    /// no hashing, no transforms, nulls kept (what `funnel predict` passes through beside its
    /// scores). Pieces of at most `read_batch_rows` rows, in row order; decoded on the pool.
    pub async fn read_raw_columns(
        &self,
        object: usize,
        row_group: usize,
        columns: &[String],
    ) -> Result<Vec<RecordBatch>> {
        let entry = &self.manifest.objects[object];
        let meta = entry.metadata.clone();
        let fields = meta.parquet_schema().root_schema().get_fields();
        let mut roots = Vec::with_capacity(columns.len());
        for c in columns {
            match fields.iter().position(|f| f.name() == c) {
                Some(root) => roots.push(root),
                None => {
                    return Err(Error::Parquet {
                        location: Box::new(DataLocation {
                            object: entry.url.clone(),
                            row_group: Some(row_group),
                            column: Some(c.clone()),
                            ..Default::default()
                        }),
                        message: "column is missing".into(),
                    });
                }
            }
        }
        roots.sort_unstable();
        roots.dedup();
        let chunk = self.fetch_roots(object, row_group, &roots).await?;
        let url = entry.url.clone();
        let columns = columns.to_vec();
        let batch_rows = self.read_batch_rows;
        self.on_decode_pool(object, row_group, move || {
            let fail = |e, column| decode_error(&url, row_group, column, e);
            let reader =
                |cols: &[usize]| row_group_reader(&chunk, &meta, row_group, cols, batch_rows);
            let mut out = Vec::new();
            for rb in reader(&roots).map_err(|e| fail(e, None))? {
                let rb = match rb {
                    Ok(rb) => rb,
                    Err(e) => {
                        let guilty = guilty_column(&reader, &roots, &meta);
                        return Err(fail(e.into(), guilty));
                    }
                };
                let order = columns
                    .iter()
                    .map(|c| rb.schema().index_of(c))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .and_then(|order| rb.project(&order))
                    .map_err(|e| fail(e.into(), None))?;
                out.push(order);
            }
            Ok(out)
        })
        .await
    }

    /// Ranged GETs of the column chunks of `roots` in one row group.
    async fn fetch_roots(
        &self,
        object: usize,
        row_group: usize,
        roots: &[usize],
    ) -> Result<FetchedRanges> {
        let entry = &self.manifest.objects[object];
        let meta = &entry.metadata;
        let rg_meta = meta.metadata().row_group(row_group);
        let schema = meta.parquet_schema();
        let mut ranges: Vec<Range<u64>> = (0..schema.num_columns())
            .filter(|&leaf| roots.contains(&schema.get_column_root_idx(leaf)))
            .map(|leaf| {
                let (start, len) = rg_meta.column(leaf).byte_range();
                start..start + len
            })
            .collect();
        ranges.sort_by_key(|r| r.start);
        let store = &self.manifest.store.store;
        let parts = crate::retry::with_retries(&entry.url, || async {
            let parts = store.get_ranges(&entry.path, &ranges).await?;
            // A body shorter than its range is a cut transfer: read it again.
            crate::retry::check_lengths(&parts, &ranges)?;
            Ok(parts)
        })
        .await
        .map_err(|e| {
            let at = DataLocation {
                object: entry.url.clone(),
                row_group: Some(row_group),
                ..Default::default()
            };
            self.manifest.store.read_error(at, e)
        })?;
        Ok(FetchedRanges {
            len: entry.size,
            parts: ranges.iter().map(|r| r.start).zip(parts).collect(),
        })
    }

    /// Runs `work` on a blocking thread once a decode-pool permit is free. The Parquet decoder
    /// may panic on some corrupt pages; a corrupt object is bad input, not a bug, so a panic
    /// becomes an error naming the object and row group.
    async fn on_decode_pool<T: Send + 'static>(
        &self,
        object: usize,
        row_group: usize,
        work: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let at = DataLocation {
            object: self.manifest.objects[object].url.clone(),
            row_group: Some(row_group),
            ..Default::default()
        };
        let _permit = self
            .decode_pool
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| Error::Task(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|panic| {
                let why = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("decoder panicked");
                Err(Error::Parquet {
                    location: Box::new(at),
                    message: format!("corrupt data: the Parquet decoder failed: {why}"),
                })
            })
        })
        .await
        .map_err(|e| Error::Task(format!("decode task: {e}")))?
    }
}

/// Parquet root columns the plan reads.
fn projected_roots(meta: &ArrowReaderMetadata, plan: &DecodePlan) -> Vec<usize> {
    let fields = meta.parquet_schema().root_schema().get_fields();
    plan.columns()
        .iter()
        .filter_map(|(c, _, _)| fields.iter().position(|f| f.name() == c))
        .collect()
}

/// A decode failure located at (object, row group, column when known).
fn decode_error(url: &str, row_group: usize, column: Option<String>, e: ParquetError) -> Error {
    Error::Parquet {
        location: Box::new(DataLocation {
            object: url.to_string(),
            row_group: Some(row_group),
            column,
            ..Default::default()
        }),
        message: format!("cannot decode: {e}"),
    }
}

/// A record-batch reader over the root columns `cols` of one fetched row group.
fn row_group_reader(
    chunk: &FetchedRanges,
    meta: &ArrowReaderMetadata,
    row_group: usize,
    cols: &[usize],
    batch_rows: usize,
) -> parquet::errors::Result<ParquetRecordBatchReader> {
    let mask = ProjectionMask::roots(meta.parquet_schema(), cols.iter().copied());
    ParquetRecordBatchReaderBuilder::new_with_metadata(chunk.clone(), meta.clone())
        .with_projection(mask)
        .with_row_groups(vec![row_group])
        .with_batch_size(batch_rows)
        .build()
}

#[allow(clippy::too_many_arguments)]
fn decode_row_group(
    chunk: &FetchedRanges,
    meta: ArrowReaderMetadata,
    roots: &[usize],
    plan: &DecodePlan,
    url: &str,
    object: usize,
    row_group: usize,
    batch_rows: usize,
) -> Result<(Batch, DecodeStats)> {
    let mut out = Batch::empty(
        plan.categorical.len(),
        plan.lists.len(),
        plan.numeric.len(),
        plan.labels.len(),
    );
    let mut stats = DecodeStats::default();
    let fail = |e, column| decode_error(url, row_group, column, e);
    let reader = |meta: &ArrowReaderMetadata, cols: &[usize]| {
        row_group_reader(chunk, meta, row_group, cols, batch_rows)
    };
    let meta = with_dictionary_strings(meta, plan);
    let mut first_row = 0u64;
    for rb in reader(&meta, roots).map_err(|e| fail(e, None))? {
        let rb = match rb {
            Ok(rb) => rb,
            Err(e) => {
                let guilty = guilty_column(&|cols: &[usize]| reader(&meta, cols), roots, &meta);
                return Err(fail(e.into(), guilty));
            }
        };
        let origin = ChunkOrigin {
            object: object as u32,
            object_url: url,
            row_group,
            first_row,
        };
        let (b, s) = decode(plan, &rb, &origin)?;
        first_row += rb.num_rows() as u64;
        if out.rows == 0 {
            out = b; // usually the only chunk: no copy
        } else {
            out.append(&b);
        }
        stats.merge(&s);
    }
    Ok((out, stats))
}

/// Reads string categorical columns as dictionaries, so each distinct value is hashed once per
/// row group instead of once per row (Parquet writers dictionary-encode such columns anyway).
fn with_dictionary_strings(meta: ArrowReaderMetadata, plan: &DecodePlan) -> ArrowReaderMetadata {
    let schema = meta.schema();
    let mut changed = false;
    let fields: Vec<arrow_schema::FieldRef> = schema
        .fields()
        .iter()
        .map(|f| {
            let categorical = plan
                .categorical
                .iter()
                .any(|c| &c.column == f.name() || c.cross.contains(f.name()));
            match f.data_type() {
                t @ (DataType::Utf8 | DataType::LargeUtf8) if categorical => {
                    changed = true;
                    let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(t.clone()));
                    Arc::new(f.as_ref().clone().with_data_type(dict))
                }
                _ => f.clone(),
            }
        })
        .collect();
    if !changed {
        return meta;
    }
    let hinted = Arc::new(arrow_schema::Schema::new_with_metadata(
        fields,
        schema.metadata().clone(),
    ));
    ArrowReaderMetadata::try_new(
        meta.metadata().clone(),
        ArrowReaderOptions::new().with_schema(hinted),
    )
    .unwrap_or(meta)
}

/// After a decode failure, finds the first column that fails on its own, so the error can
/// name it. Only runs on the error path.
fn guilty_column<R>(
    reader: &impl Fn(&[usize]) -> parquet::errors::Result<R>,
    roots: &[usize],
    meta: &ArrowReaderMetadata,
) -> Option<String>
where
    R: Iterator<Item = std::result::Result<arrow_array::RecordBatch, arrow_schema::ArrowError>>,
{
    let fields = meta.parquet_schema().root_schema().get_fields();
    roots.iter().find_map(|&root| {
        let failed = match reader(&[root]) {
            Err(_) => true,
            Ok(mut batches) => batches.any(|b| b.is_err()),
        };
        failed.then(|| fields[root].name().to_string())
    })
}

/// The fetched column-chunk byte ranges of one object, readable by parquet's sync decoder.
#[derive(Debug, Clone)]
struct FetchedRanges {
    len: u64,
    /// (start offset, bytes), sorted by start.
    parts: Vec<(u64, Bytes)>,
}

impl FetchedRanges {
    fn part(&self, start: u64, len: usize) -> parquet::errors::Result<Bytes> {
        self.parts
            .iter()
            .find(|(s, b)| *s <= start && start + len as u64 <= s + b.len() as u64)
            .map(|(s, b)| b.slice((start - s) as usize..(start - s) as usize + len))
            .ok_or_else(|| {
                ParquetError::General(format!(
                    "bytes {start}..{} were not fetched",
                    start + len as u64
                ))
            })
    }
}

impl Length for FetchedRanges {
    fn len(&self) -> u64 {
        self.len
    }
}

impl ChunkReader for FetchedRanges {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        let (s, b) = self
            .parts
            .iter()
            .find(|(s, b)| *s <= start && start < s + b.len() as u64)
            .ok_or_else(|| ParquetError::General(format!("offset {start} was not fetched")))?;
        Ok(b.slice((start - s) as usize..).reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.part(start, length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Job;
    use crate::store::StoreUrl;
    use arrow_array::{Array, ArrayRef, Int64Array, StringArray};
    use object_store::ObjectStoreExt;
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    #[tokio::test]
    async fn raw_columns_keep_types_nulls_order_and_name_a_missing_column() {
        let users = Int64Array::from(vec![Some(7), None, Some(-3), Some(9), Some(1)]);
        let queries = StringArray::from(vec![Some("a"), Some("b"), None, Some("d"), Some("e")]);
        let rb = RecordBatch::try_from_iter([
            ("user", Arc::new(users.clone()) as ArrayRef),
            ("query", Arc::new(queries.clone()) as ArrayRef),
        ])
        .expect("batch");
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(3))
            .build();
        let mut buf = Vec::new();
        let mut w = ArrowWriter::try_new(&mut buf, rb.schema(), Some(props)).expect("writer");
        w.write(&rb).expect("write");
        w.close().expect("close");
        let url = "memory://raw-columns/data/";
        let store = StoreUrl::open(url, "test").expect("store");
        store
            .store
            .put(&store.child("a.parquet"), Bytes::from(buf).into())
            .await
            .expect("put");
        let job = Job::parse(
            &format!(
                "version = 1\n[data]\ntrain = \"{url}\"\n[[features.categorical]]\n\
                 column = \"user\"\nbuckets = 10\ndim = 2\n[funnel]\npreset = \"esmm\"\n"
            ),
            "t",
        )
        .expect("job");
        let manifest = Arc::new(DatasetManifest::build(url, "t", 2).await.expect("manifest"));
        let plan = Arc::new(DecodePlan::for_prediction(&job));
        let reader = ShardReader::new(manifest, plan, 1, 2);
        let cols = ["query".to_string(), "user".to_string()];
        let mut got: Vec<RecordBatch> = Vec::new();
        for rg in 0..2 {
            got.extend(reader.read_raw_columns(0, rg, &cols).await.expect("reads"));
        }
        // Pieces of at most read_batch_rows = 2 rows, columns in the order asked for.
        assert_eq!(
            got.iter().map(RecordBatch::num_rows).collect::<Vec<_>>(),
            [2, 1, 2]
        );
        let schema = got[0].schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["query", "user"]);
        let query: Vec<Option<String>> = got
            .iter()
            .flat_map(|b| {
                let a = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .expect("utf8");
                a.iter().map(|v| v.map(str::to_string)).collect::<Vec<_>>()
            })
            .collect();
        let want: Vec<Option<String>> = queries.iter().map(|v| v.map(str::to_string)).collect();
        assert_eq!(query, want);
        let user: Vec<Option<i64>> = got
            .iter()
            .flat_map(|b| {
                let a = b
                    .column(1)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .expect("int64");
                a.iter().collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(user, users.iter().collect::<Vec<_>>());
        let err = reader
            .read_raw_columns(0, 1, &["nope".to_string()])
            .await
            .expect_err("missing column")
            .to_string();
        for want in [
            "memory://raw-columns/data/a.parquet",
            "row group 1",
            "`nope`",
        ] {
            assert!(err.contains(want), "{want} missing from: {err}");
        }
    }
}
