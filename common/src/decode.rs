//! Arrow record batch -> [`Batch`]: hashing, bags, numeric transforms, label checks and the
//! funnel-consistency policy. Pure and synchronous; the reader runs it on the decode pool.

use crate::batch::{Bag, Batch, RowOrigin};
use crate::columns::{DecodePlan, LabelField, NumericField};
use crate::error::{DataLocation, Error, Result};
use crate::hash::{bucket_cross, bucket_str, hash_null, xxh64_u64};
use crate::spec::{BadRowPolicy, InconsistentPolicy, Transform};
use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, ArrayRef, ArrowPrimitiveType, PrimitiveArray, RecordBatch};
use arrow_schema::DataType;
use serde::Serialize;
use std::collections::BTreeMap;
use xxhash_rust::xxh64::xxh64;

/// Where a record batch sits in the dataset.
#[derive(Debug, Clone, Copy)]
pub struct ChunkOrigin<'a> {
    /// Object index in the manifest.
    pub object: u32,
    /// Object URL, for errors.
    pub object_url: &'a str,
    /// Row group index.
    pub row_group: usize,
    /// Row (within the row group) of the batch's first row.
    pub first_row: u64,
}

impl ChunkOrigin<'_> {
    fn at(&self, row: Option<usize>, column: &str, key: &str) -> Box<DataLocation> {
        Box::new(DataLocation {
            object: self.object_url.to_string(),
            row_group: Some(self.row_group),
            row: row.map(|r| self.first_row + r as u64),
            column: Some(column.to_string()),
            key: Some(key.to_string()),
        })
    }
}

/// What decoding saw and did; merged across chunks, shards and workers. Nothing is dropped
/// without being counted here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DecodeStats {
    /// Rows read from Parquet.
    pub rows_read: u64,
    /// Rows in the output batches.
    pub rows_kept: u64,
    /// Rows with at least one funnel inconsistency.
    pub inconsistent_rows: u64,
    /// Inconsistencies by kind (`"pay=1 with order=0"`).
    pub inconsistent: BTreeMap<String, u64>,
    /// Inconsistent rows dropped (policy `drop`).
    pub dropped_inconsistent: u64,
    /// Inconsistent rows repaired (policy `repair`).
    pub repaired: u64,
    /// Rows skipped for null or out-of-range labels (bad_rows = `skip`).
    pub skipped_bad_labels: u64,
    /// Numeric values that were null or non-finite and got `fill_null`.
    pub numeric_filled: u64,
}

impl DecodeStats {
    /// Adds another chunk's counts.
    pub fn merge(&mut self, o: &DecodeStats) {
        self.rows_read += o.rows_read;
        self.rows_kept += o.rows_kept;
        self.inconsistent_rows += o.inconsistent_rows;
        for (k, v) in &o.inconsistent {
            *self.inconsistent.entry(k.clone()).or_default() += v;
        }
        self.dropped_inconsistent += o.dropped_inconsistent;
        self.repaired += o.repaired;
        self.skipped_bad_labels += o.skipped_bad_labels;
        self.numeric_filled += o.numeric_filled;
    }
}

/// Decodes one record batch under `plan`.
pub fn decode(
    plan: &DecodePlan,
    rb: &RecordBatch,
    origin: &ChunkOrigin,
) -> Result<(Batch, DecodeStats)> {
    let n = rb.num_rows();
    let column = |name: &str, key: &str| {
        rb.column_by_name(name).ok_or_else(|| Error::Parquet {
            location: origin.at(None, name, key),
            message: "column is missing".into(),
        })
    };
    let mut stats = DecodeStats {
        rows_read: n as u64,
        ..Default::default()
    };

    // Labels first: they decide which rows are kept.
    let mut labels: Vec<Vec<u8>> = Vec::with_capacity(plan.labels.len());
    let mut keep = vec![true; n];
    for field in &plan.labels {
        labels.push(read_label(
            field,
            &column,
            origin,
            plan.bad_rows,
            &mut keep,
            &mut stats,
        )?);
    }
    apply_funnel_policy(plan, &mut labels, &mut keep, origin, &mut stats)?;
    let kept: Option<Vec<usize>> = if keep.iter().all(|&k| k) {
        None
    } else {
        Some((0..n).filter(|&r| keep[r]).collect())
    };
    let select = |v: Vec<u32>| match &kept {
        None => v,
        Some(rows) => rows.iter().map(|&r| v[r]).collect(),
    };
    let rows = kept.as_ref().map_or(n, Vec::len);

    let mut batch = Batch::empty(
        plan.categorical.len(),
        plan.lists.len(),
        plan.numeric.len(),
        plan.labels.len(),
    );
    batch.rows = rows;
    for (dst, f) in batch.categorical.iter_mut().zip(&plan.categorical) {
        let key = format!("{}.column", f.key);
        let arr = column(&f.column, &key)?;
        let ids = if f.cross.is_empty() {
            hash_values(arr, f.seed, f.buckets).map_err(|m| Error::Parquet {
                location: origin.at(None, &f.column, &key),
                message: m,
            })?
        } else {
            let cross_key = format!("{}.cross", f.key);
            let mut arrays = vec![arr];
            for c in &f.cross {
                arrays.push(column(c, &cross_key)?);
            }
            hash_cross(&arrays, f.seed, f.buckets).map_err(|(i, m)| {
                let (name, key) = match i {
                    0 => (&f.column, &key),
                    i => (&f.cross[i - 1], &cross_key),
                };
                Error::Parquet {
                    location: origin.at(None, name, key),
                    message: m,
                }
            })?
        };
        *dst = select(ids);
    }
    for (dst, f) in batch.lists.iter_mut().zip(&plan.lists) {
        let key = format!("{}.column", f.key);
        let arr = column(&f.column, &key)?;
        let bag = match &f.separator {
            Some(sep) => split_bag(arr, sep, f.seed, f.buckets, f.max_len, kept.as_deref()),
            None => hash_bag(arr, f.seed, f.buckets, f.max_len, kept.as_deref()),
        };
        *dst = bag.map_err(|m| Error::Parquet {
            location: origin.at(None, &f.column, &key),
            message: m,
        })?;
    }
    let mut numeric_cols = Vec::with_capacity(plan.numeric.len());
    for f in &plan.numeric {
        let key = format!("{}.column", f.key);
        let values = read_numbers(column(&f.column, &key)?).map_err(|m| Error::Parquet {
            location: origin.at(None, &f.column, &key),
            message: m,
        })?;
        numeric_cols.push(transform(f, values, &mut stats));
    }
    batch.numeric.reserve(rows * plan.numeric.len());
    let row_ids: Box<dyn Iterator<Item = usize>> = match &kept {
        None => Box::new(0..n),
        Some(rows) => Box::new(rows.iter().copied()),
    };
    for r in row_ids {
        batch.numeric.extend(numeric_cols.iter().map(|c| c[r]));
        batch.origins.push(RowOrigin {
            object: origin.object,
            row_group: origin.row_group as u32,
            row: (origin.first_row + r as u64) as u32,
        });
    }
    batch.labels = labels
        .into_iter()
        .map(|l| match &kept {
            None => l,
            Some(rows) => rows.iter().map(|&r| l[r]).collect(),
        })
        .collect();
    stats.rows_kept = rows as u64;
    Ok((batch, stats))
}

/// Reads a labelled stage (OR over its columns) as 0/1; bad values follow `bad_rows`.
fn read_label<'a>(
    field: &LabelField,
    column: &impl Fn(&str, &str) -> Result<&'a ArrayRef>,
    origin: &ChunkOrigin,
    policy: BadRowPolicy,
    keep: &mut [bool],
    stats: &mut DecodeStats,
) -> Result<Vec<u8>> {
    let mut out = vec![0u8; keep.len()];
    for name in &field.columns {
        let values = read_numbers(column(name, &field.key)?).map_err(|m| Error::Parquet {
            location: origin.at(None, name, &field.key),
            message: m,
        })?;
        for (r, v) in values.into_iter().enumerate() {
            match v {
                0.0 => {}
                1.0 => out[r] = 1,
                bad => {
                    if policy == BadRowPolicy::Fail {
                        return Err(Error::BadLabel {
                            location: origin.at(Some(r), name, &field.key),
                            message: if bad.is_nan() {
                                "label is null (or NaN)".to_string()
                            } else {
                                format!("label is {bad}, expected 0 or 1")
                            },
                        });
                    }
                    if keep[r] {
                        keep[r] = false;
                        stats.skipped_bad_labels += 1;
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Finds rows where a stage is 1 but its labelled ancestor is 0, and applies the policy.
/// Violations are counted on the labels as read; a repair then cascades up the funnel (children
/// first), so `pay=1, order=0, click=0` ends with all three set.
fn apply_funnel_policy(
    plan: &DecodePlan,
    labels: &mut [Vec<u8>],
    keep: &mut [bool],
    origin: &ChunkOrigin,
    stats: &mut DecodeStats,
) -> Result<()> {
    for r in 0..keep.len() {
        if !keep[r] {
            continue;
        }
        let mut inconsistent = false;
        for (j, field) in plan.labels.iter().enumerate() {
            let Some(a) = field.ancestor else { continue };
            if labels[j][r] == 1 && labels[a][r] == 0 {
                let parent = &plan.labels[a];
                let what = format!("{}=1 with {}=0", field.stage, parent.stage);
                if plan.inconsistent == InconsistentPolicy::Fail {
                    return Err(Error::InconsistentLabels {
                        location: origin.at(Some(r), &field.columns.join("|"), &field.key),
                        message: format!(
                            "funnel-inconsistent labels: {what} (column `{}`), but `{}` is only \
                             possible after `{}`",
                            parent.columns.join("|"),
                            field.stage,
                            parent.stage
                        ),
                    });
                }
                *stats.inconsistent.entry(what).or_default() += 1;
                inconsistent = true;
            }
        }
        if !inconsistent {
            continue;
        }
        stats.inconsistent_rows += 1;
        match plan.inconsistent {
            InconsistentPolicy::Drop => {
                keep[r] = false;
                stats.dropped_inconsistent += 1;
            }
            InconsistentPolicy::Repair => {
                for (j, field) in plan.labels.iter().enumerate().rev() {
                    if let (Some(a), 1) = (field.ancestor, labels[j][r]) {
                        labels[a][r] = 1;
                    }
                }
                stats.repaired += 1;
            }
            InconsistentPolicy::Fail => {}
        }
    }
    Ok(())
}

fn transform(f: &NumericField, values: Vec<f64>, stats: &mut DecodeStats) -> Vec<f32> {
    values
        .into_iter()
        .map(|x| match x {
            x if x.is_finite() => {
                let y = match f.transform {
                    Transform::None => x,
                    Transform::Log1p => x.signum() * x.abs().ln_1p(),
                    Transform::Standardize => (x - f.mean) / f.std,
                };
                y as f32
            }
            _ => {
                stats.numeric_filled += 1;
                f.fill
            }
        })
        .collect()
}

fn primitive_f64<T: ArrowPrimitiveType>(
    a: &PrimitiveArray<T>,
    f: impl Fn(T::Native) -> f64,
) -> Vec<f64> {
    let mut out: Vec<f64> = a.values().iter().map(|&v| f(v)).collect();
    if let Some(nulls) = a.nulls().filter(|n| n.null_count() > 0) {
        for r in nulls
            .iter()
            .enumerate()
            .filter(|(_, valid)| !valid)
            .map(|(r, _)| r)
        {
            out[r] = f64::NAN;
        }
    }
    out
}

/// Any numeric or boolean column as f64 values, with nulls as NaN (numeric features treat both
/// alike; labels reject both).
fn read_numbers(arr: &ArrayRef) -> std::result::Result<Vec<f64>, String> {
    Ok(match arr.data_type() {
        DataType::Boolean => arr
            .as_boolean()
            .iter()
            .map(|v| v.map_or(f64::NAN, |b| b as u8 as f64))
            .collect(),
        DataType::Int8 => primitive_f64(arr.as_primitive::<Int8Type>(), |v| v as f64),
        DataType::Int16 => primitive_f64(arr.as_primitive::<Int16Type>(), |v| v as f64),
        DataType::Int32 => primitive_f64(arr.as_primitive::<Int32Type>(), |v| v as f64),
        DataType::Int64 => primitive_f64(arr.as_primitive::<Int64Type>(), |v| v as f64),
        DataType::UInt8 => primitive_f64(arr.as_primitive::<UInt8Type>(), |v| v as f64),
        DataType::UInt16 => primitive_f64(arr.as_primitive::<UInt16Type>(), |v| v as f64),
        DataType::UInt32 => primitive_f64(arr.as_primitive::<UInt32Type>(), |v| v as f64),
        DataType::UInt64 => primitive_f64(arr.as_primitive::<UInt64Type>(), |v| v as f64),
        DataType::Float16 => primitive_f64(arr.as_primitive::<Float16Type>(), |v| v.to_f64()),
        DataType::Float32 => primitive_f64(arr.as_primitive::<Float32Type>(), |v| v as f64),
        DataType::Float64 => primitive_f64(arr.as_primitive::<Float64Type>(), |v| v),
        t => return Err(format!("type {t} is not numeric")),
    })
}

fn hash_primitive<T: ArrowPrimitiveType, H: Copy>(
    a: &PrimitiveArray<T>,
    null: H,
    f: impl Fn(T::Native) -> H,
) -> Vec<H> {
    if a.null_count() == 0 {
        a.values().iter().map(|&v| f(v)).collect()
    } else {
        a.iter().map(|v| v.map_or(null, &f)).collect()
    }
}

/// Bucket id of every value of a column (nulls get the null bucket). See [`crate::hash`].
fn hash_values(arr: &ArrayRef, seed: u64, buckets: u64) -> std::result::Result<Vec<u32>, String> {
    map_value_hashes(arr, seed, &|h| (h % buckets) as u32)
}

/// `reduce(XXH64(value bytes, seed))` of every value of a column, nulls included: the bucket
/// for single features, the raw hash for the members of a cross.
fn map_value_hashes<H: Copy>(
    arr: &ArrayRef,
    seed: u64,
    reduce: &impl Fn(u64) -> H,
) -> std::result::Result<Vec<H>, String> {
    let null = reduce(hash_null(seed));
    let int = |v: i64| reduce(xxh64_u64(v as u64, seed));
    Ok(match arr.data_type() {
        DataType::Int8 => hash_primitive(arr.as_primitive::<Int8Type>(), null, |v| int(v as i64)),
        DataType::Int16 => hash_primitive(arr.as_primitive::<Int16Type>(), null, |v| int(v as i64)),
        DataType::Int32 => hash_primitive(arr.as_primitive::<Int32Type>(), null, |v| int(v as i64)),
        DataType::Int64 => hash_primitive(arr.as_primitive::<Int64Type>(), null, int),
        DataType::UInt8 => hash_primitive(arr.as_primitive::<UInt8Type>(), null, |v| int(v as i64)),
        DataType::UInt16 => {
            hash_primitive(arr.as_primitive::<UInt16Type>(), null, |v| int(v as i64))
        }
        DataType::UInt32 => {
            hash_primitive(arr.as_primitive::<UInt32Type>(), null, |v| int(v as i64))
        }
        DataType::UInt64 => hash_primitive(arr.as_primitive::<UInt64Type>(), null, |v| {
            reduce(xxh64_u64(v, seed))
        }),
        DataType::Utf8 => hash_strings(arr.as_string::<i32>().iter(), null, seed, reduce),
        DataType::LargeUtf8 => hash_strings(arr.as_string::<i64>().iter(), null, seed, reduce),
        DataType::Utf8View => hash_strings(arr.as_string_view().iter(), null, seed, reduce),
        DataType::Dictionary(_, _) => {
            // Hash each dictionary value once, then map keys.
            let dict = arr.as_any_dictionary();
            let values = map_value_hashes(dict.values(), seed, reduce)?;
            dict.normalized_keys()
                .into_iter()
                .enumerate()
                .map(|(r, k)| if dict.is_null(r) { null } else { values[k] })
                .collect()
        }
        t => return Err(format!("type {t} cannot be hashed")),
    })
}

fn hash_strings<'a, H: Copy>(
    values: impl Iterator<Item = Option<&'a str>>,
    null: H,
    seed: u64,
    reduce: &impl Fn(u64) -> H,
) -> Vec<H> {
    values
        .map(|v| v.map_or(null, |s| reduce(xxh64(s.as_bytes(), seed))))
        .collect()
}

/// Bucket id of every row's tuple of values of `columns` (a cross, see [`crate::hash`]).
fn hash_cross(
    columns: &[&ArrayRef],
    seed: u64,
    buckets: u64,
) -> std::result::Result<Vec<u32>, (usize, String)> {
    let hashes = columns
        .iter()
        .enumerate()
        .map(|(i, a)| map_value_hashes(a, seed, &|h| h).map_err(|m| (i, m)))
        .collect::<std::result::Result<Vec<Vec<u64>>, _>>()?;
    let rows = hashes.first().map_or(0, Vec::len);
    let mut members = Vec::with_capacity(hashes.len());
    Ok((0..rows)
        .map(|r| {
            members.clear();
            members.extend(hashes.iter().map(|h| h[r]));
            bucket_cross(&members, seed, buckets)
        })
        .collect())
}

/// Hashes a list column into a bag of the kept rows: null lists are empty, null elements are
/// skipped, and at most `max_len` ids (the first ones) are kept per row.
fn hash_bag(
    arr: &ArrayRef,
    seed: u64,
    buckets: u64,
    max_len: usize,
    kept: Option<&[usize]>,
) -> std::result::Result<Bag, String> {
    let (offsets, values): (Vec<usize>, &ArrayRef) = match arr.data_type() {
        DataType::List(_) => {
            let l = arr.as_list::<i32>();
            (
                l.value_offsets().iter().map(|&o| o as usize).collect(),
                l.values(),
            )
        }
        DataType::LargeList(_) => {
            let l = arr.as_list::<i64>();
            (
                l.value_offsets().iter().map(|&o| o as usize).collect(),
                l.values(),
            )
        }
        t => return Err(format!("type {t} is not a list")),
    };
    let ids = hash_values(values, seed, buckets)?;
    let mut bag = Bag::new();
    let element_nulls = values.null_count() > 0;
    bag.ids.reserve(ids.len().min(offsets.len() * max_len));
    bag.offsets.reserve(offsets.len());
    let mut push_row = |r: usize| {
        if !arr.is_null(r) {
            let (start, end) = (offsets[r], offsets[r + 1]);
            if element_nulls {
                let row = (start..end).filter(|&j| !values.is_null(j)).take(max_len);
                bag.ids.extend(row.map(|j| ids[j]));
            } else {
                bag.ids
                    .extend_from_slice(&ids[start..end.min(start + max_len)]);
            }
        }
        bag.offsets.push(bag.ids.len() as u32);
    };
    match kept {
        None => (0..arr.len()).for_each(&mut push_row),
        Some(rows) => rows.iter().copied().for_each(&mut push_row),
    }
    Ok(bag)
}

/// Hashes a string column of delimited ids into a bag (null strings and empty pieces skipped).
fn split_bag(
    arr: &ArrayRef,
    separator: &str,
    seed: u64,
    buckets: u64,
    max_len: usize,
    kept: Option<&[usize]>,
) -> std::result::Result<Bag, String> {
    let strings: Vec<Option<&str>> = match arr.data_type() {
        DataType::Utf8 => arr.as_string::<i32>().iter().collect(),
        DataType::LargeUtf8 => arr.as_string::<i64>().iter().collect(),
        DataType::Utf8View => arr.as_string_view().iter().collect(),
        t => {
            return Err(format!(
                "type {t} is not a string; `separator` needs strings"
            ));
        }
    };
    let mut bag = Bag::new();
    let mut push_row = |r: usize| {
        if let Some(s) = strings[r] {
            let pieces = s.split(separator).filter(|p| !p.is_empty()).take(max_len);
            bag.ids.extend(pieces.map(|p| bucket_str(p, seed, buckets)));
        }
        bag.offsets.push(bag.ids.len() as u32);
    };
    match kept {
        None => (0..arr.len()).for_each(&mut push_row),
        Some(rows) => rows.iter().copied().for_each(&mut push_row),
    }
    Ok(bag)
}

#[cfg(test)]
mod tests;
