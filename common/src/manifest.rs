//! The dataset manifest: the prefix is listed once and every Parquet footer read once, in
//! parallel with bounded concurrency. Workers never list the bucket; shards are row-group ranges
//! of the objects recorded here.

use crate::columns::DecodePlan;
use crate::error::{DataLocation, Error, Result};
use crate::store::StoreUrl;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::path::Path;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::file::metadata::ParquetMetaDataReader;
use serde::Serialize;
use std::ops::Range;

/// One Parquet object of a dataset.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectEntry {
    /// Path inside the store.
    #[serde(skip)]
    pub path: Path,
    /// Full URL, for messages.
    pub url: String,
    /// Size in bytes at listing time.
    pub size: u64,
    /// ETag at listing time, when the store gives one.
    pub etag: Option<String>,
    /// Rows per row group.
    pub row_groups: Vec<u64>,
    /// The parsed footer (schema and row-group layout), so shards read without a second footer
    /// fetch.
    #[serde(skip)]
    pub metadata: ArrowReaderMetadata,
    /// The footer as stored (Thrift bytes): the coordinator sends it to workers, which parse it
    /// instead of fetching it again.
    #[serde(skip)]
    pub footer: bytes::Bytes,
}

impl ObjectEntry {
    /// Rows in the object.
    pub fn rows(&self) -> u64 {
        self.row_groups.iter().sum()
    }
}

/// A shard: a range of row groups of one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shard {
    /// Object index in the manifest.
    pub object: usize,
    /// Row groups.
    pub row_groups: Range<usize>,
}

/// All Parquet objects under a dataset prefix, sorted by path.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetManifest {
    /// The prefix URL.
    pub url: String,
    /// The spec key that named the dataset (`data.train`).
    pub key: String,
    /// The objects.
    pub objects: Vec<ObjectEntry>,
    /// The store the objects live in.
    #[serde(skip)]
    pub store: StoreUrl,
}

impl DatasetManifest {
    /// Lists `url` and reads every footer, at most `concurrency` at a time.
    ///
    /// Objects whose name starts with `_` or `.` (`_SUCCESS`, `.crc` files, Spark's markers) are
    /// ignored; every other object must be Parquet. A URL that names one object is a dataset of
    /// that object.
    pub async fn build(url: &str, key: &str, concurrency: usize) -> Result<Self> {
        Self::build_in(StoreUrl::open(url, key)?, key, concurrency).await
    }

    /// [`Self::build`] on a store already opened (a test wraps it, e.g. in a
    /// [`crate::store_faults::FaultyStore`]).
    pub async fn build_in(store: StoreUrl, key: &str, concurrency: usize) -> Result<Self> {
        let prefix_url = store.object_url(&store.prefix);
        let mut listed: Vec<object_store::ObjectMeta> = store
            .store
            .list(Some(&store.prefix))
            .try_filter(|m| {
                let name = m.location.filename().unwrap_or_default();
                std::future::ready(
                    !(name.starts_with('_') || name.starts_with('.') || name.is_empty()),
                )
            })
            .try_collect()
            .await
            .map_err(|e| crate::store::store_error("list", prefix_url.clone(), e))?;
        listed.sort_by(|a, b| a.location.cmp(&b.location));
        if listed.is_empty() {
            // The URL may name one object rather than a prefix. Not found (or a directory)
            // means an empty dataset; a transient failure that persists is reported, not
            // mistaken for one.
            let head = crate::retry::with_retries(&prefix_url, || store.store.head(&store.prefix));
            match head.await {
                Ok(meta) => listed.push(meta),
                Err(e) if crate::retry::is_transient(&e) => {
                    return Err(store.error("read", &store.prefix, e));
                }
                Err(_) => {}
            }
        }
        if listed.is_empty() {
            return Err(Error::EmptyDataset {
                url: prefix_url,
                key: key.to_string(),
            });
        }
        let objects = futures::stream::iter(listed)
            .map(|meta| read_footer(&store, meta))
            .buffered(concurrency.max(1))
            .try_collect()
            .await?;
        Ok(Self {
            url: prefix_url,
            key: key.to_string(),
            objects,
            store,
        })
    }

    /// A manifest from objects listed and parsed elsewhere (a worker, from the coordinator).
    pub fn from_objects(url: &str, key: &str, objects: Vec<ObjectEntry>) -> Result<Self> {
        let store = StoreUrl::open(url, key)?;
        Ok(Self {
            url: store.object_url(&store.prefix),
            key: key.to_string(),
            objects,
            store,
        })
    }

    /// Rows in the dataset.
    pub fn total_rows(&self) -> u64 {
        self.objects.iter().map(ObjectEntry::rows).sum()
    }

    /// Row groups in the dataset.
    pub fn total_row_groups(&self) -> usize {
        self.objects.iter().map(|o| o.row_groups.len()).sum()
    }

    /// One shard per row group, in manifest order.
    pub fn row_group_shards(&self) -> Vec<Shard> {
        self.objects
            .iter()
            .enumerate()
            .flat_map(|(i, o)| {
                (0..o.row_groups.len()).map(move |rg| Shard {
                    object: i,
                    row_groups: rg..rg + 1,
                })
            })
            .collect()
    }

    /// Checks every object's schema against the plan, reporting all mismatches at once.
    pub fn check_schema(&self, plan: &DecodePlan) -> Result<()> {
        let problems: Vec<(DataLocation, String)> = self
            .objects
            .iter()
            .flat_map(|o| plan.check_schema(&o.url, o.metadata.schema()))
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Schema { problems })
        }
    }
}

/// Bytes read from the end of an object in the first request: enough for most footers.
const FOOTER_GUESS: u64 = 64 * 1024;

async fn read_footer(store: &StoreUrl, meta: object_store::ObjectMeta) -> Result<ObjectEntry> {
    let url = store.object_url(&meta.location);
    let corrupt = |message: String| Error::Parquet {
        location: Box::new(DataLocation {
            object: url.clone(),
            ..Default::default()
        }),
        message,
    };
    let size = meta.size;
    if size < 12 {
        return Err(corrupt(format!("not a Parquet file: only {size} bytes")));
    }
    let location = &meta.location;
    let fetch = |range: Range<u64>| async move {
        let url = store.object_url(location);
        crate::retry::with_retries(&url, || async {
            let got = store.store.get_range(location, range.clone()).await?;
            crate::retry::check_lengths(std::slice::from_ref(&got), std::slice::from_ref(&range))?;
            Ok(got)
        })
        .await
        .map_err(|e| store.error("read footer of", location, e))
    };
    // One suffix read usually holds the whole footer; a second one fetches the rest if not.
    let mut tail = fetch(size.saturating_sub(FOOTER_GUESS)..size).await?;
    let end = &tail[tail.len() - 8..];
    if &end[4..] != b"PAR1" {
        return Err(corrupt(
            "not a Parquet file: the last 4 bytes are not `PAR1` (truncated or another format)"
                .into(),
        ));
    }
    let footer_len = u32::from_le_bytes([end[0], end[1], end[2], end[3]]) as u64;
    if footer_len + 8 > size - 4 {
        return Err(corrupt(format!(
            "corrupt footer: it claims {footer_len} bytes in a {size}-byte object"
        )));
    }
    if footer_len + 8 > tail.len() as u64 {
        tail = fetch(size - footer_len - 8..size).await?;
    }
    let body = tail.slice(tail.len() - 8 - footer_len as usize..tail.len() - 8);
    ObjectEntry::from_footer(meta.location, url, size, meta.e_tag, body)
}

impl ObjectEntry {
    /// An object from its footer bytes (as read by [`DatasetManifest::build`], or as received
    /// from the coordinator), without touching the store.
    pub fn from_footer(
        path: Path,
        url: String,
        size: u64,
        etag: Option<String>,
        footer: bytes::Bytes,
    ) -> Result<Self> {
        let corrupt = |message: String| Error::Parquet {
            location: Box::new(DataLocation {
                object: url.clone(),
                ..Default::default()
            }),
            message,
        };
        let parquet = ParquetMetaDataReader::decode_metadata(&footer)
            .map_err(|e| corrupt(format!("corrupt footer: {e}")))?;
        let metadata =
            ArrowReaderMetadata::try_new(std::sync::Arc::new(parquet), ArrowReaderOptions::new())
                .map_err(|e| corrupt(format!("footer schema cannot be read as Arrow: {e}")))?;
        let row_groups = metadata
            .metadata()
            .row_groups()
            .iter()
            .map(|rg| rg.num_rows().max(0) as u64)
            .collect();
        Ok(ObjectEntry {
            path,
            url,
            size,
            etag,
            row_groups,
            metadata,
            footer,
        })
    }
}
