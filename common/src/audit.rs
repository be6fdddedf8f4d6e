//! The exactly-once audit (DESIGN §4; issue 6 point 2).
//!
//! With `cluster.audit = true` the coordinator writes, per epoch, the coordinates of every row
//! that a committed step consumed, as Parquet that pyarrow reads:
//!
//! ```text
//! <output>/audit/dataset.json          the training objects and the rows of each row group
//! <output>/audit/epoch-00000.parquet   step u64, object u32, row_group u32, row u32
//! ```
//!
//! [`check_epoch`] (behind `funnel audit`) proves that each row of the epoch's plan, which is
//! every row of every row group once, appears exactly once: none missing, none twice, none
//! outside the data. The rows come from the workers' commit votes, i.e. from the batches that
//! the applied steps were computed from, after every failure and redo.

use std::sync::Arc;

use arrow_array::{Array, RecordBatch, UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use bytes::Bytes;
use object_store::ObjectStoreExt;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::StoreUrl;

/// One consumed row: the committed step that used it and where it lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditRow {
    /// The committed step.
    pub step: u64,
    /// Index of the object in [`AuditDataset::objects`].
    pub object: u32,
    /// Row group within the object.
    pub row_group: u32,
    /// Row within the row group.
    pub row: u32,
}

/// One training object as the audit knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditObject {
    /// Its URL.
    pub url: String,
    /// Rows per row group.
    pub row_groups: Vec<u64>,
}

/// The training data every epoch's plan covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditDataset {
    /// The objects, in manifest order (the `object` index of [`AuditRow`]).
    pub objects: Vec<AuditObject>,
}

impl AuditDataset {
    /// Rows in one epoch's plan.
    pub fn total_rows(&self) -> u64 {
        self.objects.iter().flat_map(|o| &o.row_groups).sum()
    }
}

/// What the check of one epoch found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EpochAudit {
    /// The epoch.
    pub epoch: u32,
    /// Rows in the plan.
    pub planned: u64,
    /// Rows recorded (with repeats).
    pub recorded: u64,
    /// Planned rows never recorded.
    pub missing: u64,
    /// Records of a row already recorded.
    pub duplicated: u64,
    /// Records naming a row outside the data.
    pub outside: u64,
    /// Up to ten examples of each kind of problem, naming object URL, row group and row.
    pub examples: Vec<String>,
}

impl EpochAudit {
    /// Each planned row exactly once.
    pub fn passed(&self) -> bool {
        self.missing == 0 && self.duplicated == 0 && self.outside == 0
    }
}

/// Checks that `rows` hold each row of `data` exactly once.
pub fn check_epoch(epoch: u32, data: &AuditDataset, rows: &[AuditRow]) -> EpochAudit {
    let mut seen: Vec<Vec<Vec<bool>>> = data
        .objects
        .iter()
        .map(|o| {
            o.row_groups
                .iter()
                .map(|&n| vec![false; n as usize])
                .collect()
        })
        .collect();
    let mut out = EpochAudit {
        epoch,
        planned: data.total_rows(),
        recorded: rows.len() as u64,
        ..Default::default()
    };
    let mut examples = (0usize, 0usize, 0usize);
    for r in rows {
        let slot = seen
            .get_mut(r.object as usize)
            .and_then(|o| o.get_mut(r.row_group as usize))
            .and_then(|g| g.get_mut(r.row as usize));
        let name = || {
            let url = data
                .objects
                .get(r.object as usize)
                .map_or_else(|| format!("object #{}", r.object), |o| o.url.clone());
            format!(
                "{url} row group {} row {} (step {})",
                r.row_group, r.row, r.step
            )
        };
        match slot {
            None => {
                out.outside += 1;
                if examples.0 < 10 {
                    examples.0 += 1;
                    out.examples.push(format!("outside the data: {}", name()));
                }
            }
            Some(s) if *s => {
                out.duplicated += 1;
                if examples.1 < 10 {
                    examples.1 += 1;
                    out.examples.push(format!("twice: {}", name()));
                }
            }
            Some(s) => *s = true,
        }
    }
    for (o, groups) in seen.iter().enumerate() {
        for (g, flags) in groups.iter().enumerate() {
            for (row, _) in flags.iter().enumerate().filter(|(_, s)| !**s) {
                out.missing += 1;
                if examples.2 < 10 {
                    examples.2 += 1;
                    out.examples.push(format!(
                        "missing: {} row group {g} row {row}",
                        data.objects[o].url
                    ));
                }
            }
        }
    }
    out
}

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("step", DataType::UInt64, false),
        Field::new("object", DataType::UInt32, false),
        Field::new("row_group", DataType::UInt32, false),
        Field::new("row", DataType::UInt32, false),
    ]))
}

fn audit_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Audit {
        url: what.to_string(),
        message: e.to_string(),
    }
}

/// The name of `epoch`'s audit file under `<output>/audit/`.
pub fn epoch_file(epoch: u32) -> String {
    format!("epoch-{epoch:05}.parquet")
}

/// `rows` as the Parquet file of one epoch.
pub fn encode_epoch(rows: &[AuditRow]) -> Result<Bytes> {
    let col = |f: fn(&AuditRow) -> u32| Arc::new(UInt32Array::from_iter_values(rows.iter().map(f)));
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.step))),
            col(|r| r.object),
            col(|r| r.row_group),
            col(|r| r.row),
        ],
    )
    .map_err(|e| audit_error("batch", e))?;
    let mut buf = Vec::new();
    let mut w =
        ArrowWriter::try_new(&mut buf, schema(), None).map_err(|e| audit_error("writer", e))?;
    w.write(&batch)
        .and_then(|_| w.close().map(|_| ()))
        .map_err(|e| audit_error("writer", e))?;
    Ok(Bytes::from(buf))
}

/// Reads one epoch's Parquet file back (`url` names it in errors).
pub fn decode_epoch(bytes: Bytes, url: &str) -> Result<Vec<AuditRow>> {
    let bad = |message: String| Error::Audit {
        url: url.to_string(),
        message,
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| bad(e.to_string()))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        let u64s = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<UInt64Array>().cloned())
                .ok_or_else(|| bad(format!("no u64 column `{name}`")))
        };
        let u32s = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<UInt32Array>().cloned())
                .ok_or_else(|| bad(format!("no u32 column `{name}`")))
        };
        let (step, object, group, row) = (
            u64s("step")?,
            u32s("object")?,
            u32s("row_group")?,
            u32s("row")?,
        );
        if step.null_count() + object.null_count() + group.null_count() + row.null_count() > 0 {
            return Err(bad("null values".into()));
        }
        for i in 0..batch.num_rows() {
            rows.push(AuditRow {
                step: step.value(i),
                object: object.value(i),
                row_group: group.value(i),
                row: row.value(i),
            });
        }
    }
    Ok(rows)
}

/// Writes `audit/dataset.json` under `output`.
pub async fn write_dataset(output: &str, data: &AuditDataset) -> Result<()> {
    let out = StoreUrl::open(output, "output")?;
    let path = out.child("audit/dataset.json");
    let body = serde_json::to_vec_pretty(data).map_err(|e| audit_error("dataset.json", e))?;
    out.store
        .put(&path, Bytes::from(body).into())
        .await
        .map_err(|e| out.error("write", &path, e))?;
    Ok(())
}

/// Writes `epoch`'s audit file under `output`; returns its URL.
pub async fn write_epoch(output: &str, epoch: u32, rows: &[AuditRow]) -> Result<String> {
    let out = StoreUrl::open(output, "output")?;
    let path = out.child(&format!("audit/{}", epoch_file(epoch)));
    out.store
        .put(&path, encode_epoch(rows)?.into())
        .await
        .map_err(|e| out.error("write", &path, e))?;
    Ok(out.object_url(&path))
}

/// Checks every epoch audited under `output`, in epoch order.
pub async fn audit_output(output: &str) -> Result<Vec<EpochAudit>> {
    let out = StoreUrl::open(output, "output")?;
    let read = |name: String| {
        let out = out.clone();
        async move {
            let path = out.child(&format!("audit/{name}"));
            let bytes = out.read(&path).await?;
            Ok::<_, Error>((out.object_url(&path), bytes))
        }
    };
    let (url, body) = read("dataset.json".into()).await?;
    let data: AuditDataset = serde_json::from_slice(&body).map_err(|e| Error::Audit {
        url,
        message: e.to_string(),
    })?;
    let mut epochs = Vec::new();
    for epoch in 0u32.. {
        let name = epoch_file(epoch);
        let path = out.child(&format!("audit/{name}"));
        match out.store.head(&path).await {
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => break,
            Err(e) => return Err(out.error("read", &path, e)),
        }
        let (url, bytes) = read(name).await?;
        epochs.push(check_epoch(epoch, &data, &decode_epoch(bytes, &url)?));
    }
    Ok(epochs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> AuditDataset {
        AuditDataset {
            objects: vec![
                AuditObject {
                    url: "file:///a.parquet".into(),
                    row_groups: vec![3, 2],
                },
                AuditObject {
                    url: "file:///b.parquet".into(),
                    row_groups: vec![1],
                },
            ],
        }
    }

    fn all_rows() -> Vec<AuditRow> {
        let mut v = Vec::new();
        for (o, groups) in data().objects.iter().enumerate() {
            for (g, &n) in groups.row_groups.iter().enumerate() {
                for r in 0..n as u32 {
                    v.push(AuditRow {
                        step: 1 + r as u64,
                        object: o as u32,
                        row_group: g as u32,
                        row: r,
                    });
                }
            }
        }
        v
    }

    #[test]
    fn every_row_once_passes() {
        let a = check_epoch(0, &data(), &all_rows());
        assert!(a.passed(), "{a:?}");
        assert_eq!((a.planned, a.recorded), (6, 6));
    }

    #[test]
    fn a_missing_a_repeated_and_a_foreign_row_are_each_named() {
        let mut rows = all_rows();
        let dropped = rows.remove(1); // a.parquet rg 0 row 1
        rows.push(rows[0]); // a.parquet rg 0 row 0 twice
        rows.push(AuditRow {
            step: 9,
            object: 1,
            row_group: 0,
            row: 5,
        });
        let a = check_epoch(2, &data(), &rows);
        assert!(!a.passed());
        assert_eq!((a.missing, a.duplicated, a.outside), (1, 1, 1));
        let text = a.examples.join("\n");
        assert!(
            text.contains(&format!(
                "missing: file:///a.parquet row group 0 row {}",
                dropped.row
            )),
            "{text}"
        );
        assert!(
            text.contains("twice: file:///a.parquet row group 0 row 0"),
            "{text}"
        );
        assert!(
            text.contains("outside the data: file:///b.parquet row group 0 row 5"),
            "{text}"
        );
    }

    #[test]
    fn the_parquet_file_round_trips() {
        let rows = all_rows();
        let back = decode_epoch(encode_epoch(&rows).expect("encodes"), "mem").expect("decodes");
        assert_eq!(back, rows);
    }
}
