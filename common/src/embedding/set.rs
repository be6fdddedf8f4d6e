//! The job's embedding tables and features: the pooled gather of a batch and its backward.
//!
//! Layout of the gathered block, `[rows, total_dim]` row-major: for each row, the embedding of
//! every categorical feature in spec order, then the mean of the rows of every list feature's
//! bag in spec order (an empty bag gives zeros). Features that name the same table (`table` key,
//! else the column name) read the same rows; tables are numbered in order of first use.
//!
//! A bag's mean is, in `f32`, the sum of its rows in bag order times `1 / n` (a repeated id
//! counts once per occurrence, forward and backward). Ids are checked against their tables once
//! per batch, before the copy loops, which then move whole rows with `copy_from_slice` and
//! zipped iterators.

use super::table::EmbeddingInit;
use super::{EmbeddingError, EmbeddingTable, SparseGrad};
use crate::batch::Batch;
use crate::spec::FeaturesSpec;

/// Where one feature's embedding sits in the gathered block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureSlot {
    /// Spec key (`features.categorical[0]`, `features.list[1]`).
    pub key: String,
    /// Column name.
    pub column: String,
    /// Index of its table in [`EmbeddingSet::tables`].
    pub table: usize,
    /// Index into `Batch::categorical`, or into `Batch::lists` when `pooled`.
    pub field: usize,
    /// Whether this is a list feature (a mean-pooled bag).
    pub pooled: bool,
    /// First column of the feature in a gathered row.
    pub offset: usize,
    /// Embedding dimension (that of its table).
    pub dim: usize,
}

/// Every embedding table of a job, and how its features read them.
#[derive(Debug, Clone)]
pub struct EmbeddingSet {
    tables: Vec<EmbeddingTable>,
    slots: Vec<FeatureSlot>,
    /// Indices into `slots` of each table's features, in slot order.
    slots_of_table: Vec<Vec<usize>>,
    n_categorical: usize,
    total_dim: usize,
}

/// A table's name and shape, as the features declare it.
type TableShape = (String, u64, usize);

impl EmbeddingSet {
    /// The job's tables, initialised by the default [`EmbeddingInit`] from the job seed.
    pub fn new(features: &FeaturesSpec, seed: u64) -> Result<Self, EmbeddingError> {
        Self::with_init(features, seed, EmbeddingInit::default())
    }

    /// The job's tables, initialised by `init`.
    pub fn with_init(
        features: &FeaturesSpec,
        seed: u64,
        init: EmbeddingInit,
    ) -> Result<Self, EmbeddingError> {
        let (shapes, slots) = layout(features)?;
        let tables = shapes
            .iter()
            .map(|(name, rows, dim)| EmbeddingTable::new(name, *rows, *dim, seed, init))
            .collect::<Result<_, _>>()?;
        Ok(Self::assemble(tables, slots, features.categorical.len()))
    }

    /// The job's layout over existing tables (from a checkpoint), matched by name and shape.
    pub fn from_tables(
        features: &FeaturesSpec,
        mut tables: Vec<EmbeddingTable>,
    ) -> Result<Self, EmbeddingError> {
        let (shapes, slots) = layout(features)?;
        let mut ordered = Vec::with_capacity(shapes.len());
        for (name, rows, dim) in &shapes {
            let pos = tables
                .iter()
                .position(|t| t.name() == name)
                .ok_or_else(|| EmbeddingError::Shape(format!("no table named `{name}`")))?;
            let t = tables.swap_remove(pos);
            if (t.rows() as u64, t.dim()) != (*rows, *dim) {
                return Err(EmbeddingError::Shape(format!(
                    "table `{name}` is [{}, {}] but the job declares [{rows}, {dim}]",
                    t.rows(),
                    t.dim()
                )));
            }
            ordered.push(t);
        }
        if let Some(extra) = tables.first() {
            let name = extra.name();
            return Err(EmbeddingError::Shape(format!(
                "table `{name}` is not used by the job's features"
            )));
        }
        Ok(Self::assemble(ordered, slots, features.categorical.len()))
    }

    fn assemble(tables: Vec<EmbeddingTable>, slots: Vec<FeatureSlot>, n_cat: usize) -> Self {
        let mut slots_of_table = vec![Vec::new(); tables.len()];
        for (i, s) in slots.iter().enumerate() {
            slots_of_table[s.table].push(i);
        }
        let total_dim = slots.iter().map(|s| s.dim).sum();
        Self {
            tables,
            slots,
            slots_of_table,
            n_categorical: n_cat,
            total_dim,
        }
    }

    /// The tables, in order of first use by the features.
    pub fn tables(&self) -> &[EmbeddingTable] {
        &self.tables
    }

    /// The tables, mutable (for optimizers).
    pub fn tables_mut(&mut self) -> &mut [EmbeddingTable] {
        &mut self.tables
    }

    /// Index of the table called `name`.
    pub fn table_index(&self, name: &str) -> Option<usize> {
        self.tables.iter().position(|t| t.name() == name)
    }

    /// The features: categorical in spec order, then lists in spec order.
    pub fn features(&self) -> &[FeatureSlot] {
        &self.slots
    }

    /// Width of a gathered row: the sum of the features' dimensions.
    pub fn total_dim(&self) -> usize {
        self.total_dim
    }

    /// The embeddings of `batch`, `[rows, total_dim]` row-major (module docs for the layout).
    pub fn gather(&self, batch: &Batch) -> Result<Vec<f32>, EmbeddingError> {
        let mut out = Vec::new();
        self.gather_into(batch, &mut out)?;
        Ok(out)
    }

    /// [`Self::gather`] into a reused buffer (resized to `[rows, total_dim]`).
    pub fn gather_into(&self, batch: &Batch, out: &mut Vec<f32>) -> Result<(), EmbeddingError> {
        self.check_batch(batch)?;
        let total = self.total_dim;
        out.clear();
        out.resize(batch.rows * total, 0.0);
        if total == 0 {
            return Ok(());
        }
        for s in &self.slots {
            let table = self.tables[s.table].data();
            let (o, d) = (s.offset, s.dim);
            if !s.pooled {
                // ids: [rows]; each output row gets one table row copied to [o, o + d).
                let ids = &batch.categorical[s.field];
                for (&id, out_row) in ids.iter().zip(out.chunks_exact_mut(total)) {
                    let start = id as usize * d;
                    out_row[o..o + d].copy_from_slice(&table[start..start + d]);
                }
                continue;
            }
            // Bag: output row r = mean of the table rows of ids[offsets[r]..offsets[r + 1]].
            let bag = &batch.lists[s.field];
            for (w, out_row) in bag.offsets.windows(2).zip(out.chunks_exact_mut(total)) {
                let ids = &bag.ids[w[0] as usize..w[1] as usize];
                let Some((&first, rest)) = ids.split_first() else {
                    continue; // empty bag: zeros
                };
                let dst = &mut out_row[o..o + d];
                let start = first as usize * d;
                dst.copy_from_slice(&table[start..start + d]);
                for &id in rest {
                    let start = id as usize * d;
                    add_assign(dst, &table[start..start + d]);
                }
                if !rest.is_empty() {
                    let scale = 1.0 / ids.len() as f32;
                    dst.iter_mut().for_each(|v| *v *= scale);
                }
            }
        }
        Ok(())
    }

    /// The gradients w.r.t. every table, given `grad_out` (`[rows, total_dim]`, the gradient
    /// w.r.t. [`Self::gather`]'s output): one [`SparseGrad`] per table, in table order, summing
    /// the contributions of all the table's features per id in a fixed order (feature, row,
    /// position in the bag). A bag of `n` ids passes `grad / n` to each id (each occurrence).
    pub fn backward(
        &self,
        batch: &Batch,
        grad_out: &[f32],
    ) -> Result<Vec<SparseGrad>, EmbeddingError> {
        self.check_batch(batch)?;
        let total = self.total_dim;
        if grad_out.len() != batch.rows * total {
            return Err(EmbeddingError::Shape(format!(
                "output gradient has {} values; the batch needs [{}, {total}]",
                grad_out.len(),
                batch.rows
            )));
        }
        let mut grads = Vec::with_capacity(self.tables.len());
        let mut ids: Vec<u32> = Vec::new();
        for (t, table) in self.tables.iter().enumerate() {
            let d = table.dim();
            // Touched ids of the table: every id of every feature of it, sorted, unique.
            ids.clear();
            for s in self.slots_of_table[t].iter().map(|&i| &self.slots[i]) {
                if s.pooled {
                    let bag = &batch.lists[s.field];
                    let (lo, hi) = (bag.offsets[0], bag.offsets[batch.rows]);
                    ids.extend_from_slice(&bag.ids[lo as usize..hi as usize]);
                } else {
                    ids.extend_from_slice(&batch.categorical[s.field]);
                }
            }
            ids.sort_unstable();
            ids.dedup();
            // rows: [ids.len(), d]; row k accumulates the gradient of bucket ids[k].
            let mut rows = vec![0.0f32; ids.len() * d];
            let at = |id: u32| ids.binary_search(&id).unwrap_or_else(|k| k) * d;
            for s in self.slots_of_table[t].iter().map(|&i| &self.slots[i]) {
                let o = s.offset;
                let grad_rows = grad_out.chunks_exact(total);
                if !s.pooled {
                    for (&id, g) in batch.categorical[s.field].iter().zip(grad_rows) {
                        let k = at(id);
                        add_assign(&mut rows[k..k + d], &g[o..o + d]);
                    }
                    continue;
                }
                let bag = &batch.lists[s.field];
                for (w, g) in bag.offsets.windows(2).zip(grad_rows) {
                    let bag_ids = &bag.ids[w[0] as usize..w[1] as usize];
                    if bag_ids.is_empty() {
                        continue;
                    }
                    let scale = 1.0 / bag_ids.len() as f32;
                    let g = &g[o..o + d];
                    for &id in bag_ids {
                        let k = at(id);
                        for (acc, &x) in rows[k..k + d].iter_mut().zip(g) {
                            *acc += x * scale;
                        }
                    }
                }
            }
            grads.push(SparseGrad {
                table: t,
                dim: d,
                ids: ids.clone(),
                rows,
            });
        }
        Ok(grads)
    }

    /// Checks the batch's shape against the features, and every id against its table, so that
    /// the hot loops only slice.
    fn check_batch(&self, batch: &Batch) -> Result<(), EmbeddingError> {
        let n_lists = self.slots.len() - self.n_categorical;
        if batch.categorical.len() != self.n_categorical || batch.lists.len() != n_lists {
            return Err(EmbeddingError::Shape(format!(
                "batch has {} categorical and {} list fields; the job has {} and {n_lists}",
                batch.categorical.len(),
                batch.lists.len(),
                self.n_categorical
            )));
        }
        for s in &self.slots {
            let ids = if s.pooled {
                let bag = &batch.lists[s.field];
                let o = &bag.offsets;
                let ok = o.len() == batch.rows + 1
                    && o.windows(2).all(|w| w[0] <= w[1])
                    && o[batch.rows] as usize <= bag.ids.len();
                if !ok {
                    return Err(EmbeddingError::Shape(format!(
                        "{}: bag offsets do not describe {} rows of {} ids",
                        s.key,
                        batch.rows,
                        bag.ids.len()
                    )));
                }
                &bag.ids[o[0] as usize..o[batch.rows] as usize]
            } else {
                let ids = &batch.categorical[s.field];
                if ids.len() != batch.rows {
                    return Err(EmbeddingError::Shape(format!(
                        "{}: {} ids for {} rows",
                        s.key,
                        ids.len(),
                        batch.rows
                    )));
                }
                ids
            };
            let rows = self.tables[s.table].rows();
            if let Some(&id) = ids.iter().max().filter(|&&id| id as usize >= rows) {
                return Err(EmbeddingError::IdOutOfRange {
                    key: s.key.clone(),
                    table: self.tables[s.table].name().to_string(),
                    id,
                    rows,
                });
            }
        }
        Ok(())
    }
}

/// `dst += src`, element-wise (equal lengths; the zip has no bounds checks).
#[inline]
fn add_assign(dst: &mut [f32], src: &[f32]) {
    for (a, &b) in dst.iter_mut().zip(src) {
        *a += b;
    }
}

/// Tables (name, rows, dim) in order of first use, and the feature slots.
fn layout(f: &FeaturesSpec) -> Result<(Vec<TableShape>, Vec<FeatureSlot>), EmbeddingError> {
    let mut shapes: Vec<TableShape> = Vec::new();
    let mut slots = Vec::new();
    let mut offset = 0;
    let cat = f
        .categorical
        .iter()
        .map(|c| (&c.column, c.table_name(), c.buckets, c.dim, false));
    let list = f
        .list
        .iter()
        .map(|c| (&c.column, c.table_name(), c.buckets, c.dim, true));
    let mut fields = [0usize; 2];
    for (column, table, buckets, dim, pooled) in cat.chain(list) {
        let field = fields[pooled as usize];
        fields[pooled as usize] += 1;
        let kind = if pooled { "list" } else { "categorical" };
        let key = format!("features.{kind}[{field}]");
        let name = table.as_str();
        let t = match shapes.iter().position(|(n, _, _)| n == name) {
            Some(t) if (shapes[t].1, shapes[t].2) != (buckets, dim) => {
                return Err(EmbeddingError::SharedTableMismatch {
                    key,
                    table: name.to_string(),
                    rows: shapes[t].1,
                    dim: shapes[t].2,
                    got_rows: buckets,
                    got_dim: dim,
                });
            }
            Some(t) => t,
            None => {
                shapes.push((name.to_string(), buckets, dim));
                shapes.len() - 1
            }
        };
        slots.push(FeatureSlot {
            key,
            column: column.clone(),
            table: t,
            field,
            pooled,
            offset,
            dim,
        });
        offset += dim;
    }
    Ok((shapes, slots))
}
