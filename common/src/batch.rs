//! Batches as plain arrays, independent of burn, and the bounded shuffle buffer that turns
//! decoded row groups into fixed-size training batches.

use crate::rng::SplitMix64;

/// Where a row came from: enough to audit that each row is used exactly once per epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RowOrigin {
    /// Object index in the dataset manifest.
    pub object: u32,
    /// Row group within the object.
    pub row_group: u32,
    /// Row within the row group.
    pub row: u32,
}

/// A multi-valued feature of a batch: ids of row `r` are `ids[offsets[r]..offsets[r + 1]]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bag {
    /// Row boundaries, `[rows + 1]`, starting at 0.
    pub offsets: Vec<u32>,
    /// Bucket ids of all rows, concatenated.
    pub ids: Vec<u32>,
}

impl Bag {
    /// An empty bag column (zero rows).
    pub fn new() -> Self {
        Self {
            offsets: vec![0],
            ids: Vec::new(),
        }
    }

    /// Ids of row `r`.
    pub fn row(&self, r: usize) -> &[u32] {
        &self.ids[self.offsets[r] as usize..self.offsets[r + 1] as usize]
    }

    fn push_row(&mut self, ids: &[u32]) {
        self.ids.extend_from_slice(ids);
        self.offsets.push(self.ids.len() as u32);
    }
}

/// A batch of rows as plain arrays. Field order follows the job spec's feature lists; label
/// order follows the funnel's labelled stages.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Batch {
    /// Number of rows.
    pub rows: usize,
    /// Hashed bucket ids per categorical feature, `[fields][rows]`.
    pub categorical: Vec<Vec<u32>>,
    /// Bags per list feature.
    pub lists: Vec<Bag>,
    /// Numeric features after transforms, row-major `[rows, n_numeric]`.
    pub numeric: Vec<f32>,
    /// Numeric features per row.
    pub n_numeric: usize,
    /// Labels (0 or 1) per labelled stage, `[targets][rows]`.
    pub labels: Vec<Vec<u8>>,
    /// Origin of each row, `[rows]`.
    pub origins: Vec<RowOrigin>,
}

impl Batch {
    /// An empty batch with the given shape.
    pub fn empty(categorical: usize, lists: usize, n_numeric: usize, labels: usize) -> Self {
        Self {
            rows: 0,
            categorical: vec![Vec::new(); categorical],
            lists: vec![Bag::new(); lists],
            numeric: Vec::new(),
            n_numeric,
            labels: vec![Vec::new(); labels],
            origins: Vec::new(),
        }
    }

    /// An empty batch shaped like this one.
    pub fn empty_like(&self) -> Self {
        Self::empty(
            self.categorical.len(),
            self.lists.len(),
            self.n_numeric,
            self.labels.len(),
        )
    }

    /// Numeric features of row `r`, `[n_numeric]`.
    pub fn numeric_row(&self, r: usize) -> &[f32] {
        &self.numeric[r * self.n_numeric..(r + 1) * self.n_numeric]
    }

    /// Appends the rows of `other` (same shape).
    pub fn append(&mut self, other: &Batch) {
        debug_assert_eq!(self.categorical.len(), other.categorical.len());
        for (dst, src) in self.categorical.iter_mut().zip(&other.categorical) {
            dst.extend_from_slice(src);
        }
        for (dst, src) in self.lists.iter_mut().zip(&other.lists) {
            let base = dst.ids.len() as u32;
            dst.ids.extend_from_slice(&src.ids);
            dst.offsets
                .extend(src.offsets[1..].iter().map(|o| o + base));
        }
        self.numeric.extend_from_slice(&other.numeric);
        for (dst, src) in self.labels.iter_mut().zip(&other.labels) {
            dst.extend_from_slice(src);
        }
        self.origins.extend_from_slice(&other.origins);
        self.rows += other.rows;
    }

    /// A new batch with the rows at `indices`, in that order.
    pub fn take(&self, indices: &[usize]) -> Batch {
        let mut out = self.empty_like();
        out.rows = indices.len();
        for (dst, src) in out.categorical.iter_mut().zip(&self.categorical) {
            dst.extend(indices.iter().map(|&i| src[i]));
        }
        for (dst, src) in out.lists.iter_mut().zip(&self.lists) {
            for &i in indices {
                dst.push_row(src.row(i));
            }
        }
        out.numeric.reserve(indices.len() * self.n_numeric);
        for &i in indices {
            out.numeric.extend_from_slice(self.numeric_row(i));
        }
        for (dst, src) in out.labels.iter_mut().zip(&self.labels) {
            dst.extend(indices.iter().map(|&i| src[i]));
        }
        out.origins.extend(indices.iter().map(|&i| self.origins[i]));
        out
    }
}

/// Turns a stream of decoded chunks into batches of exactly `batch_size` rows (the last one of
/// a stream may be smaller). With a shuffle buffer, rows are permuted within windows of at least
/// `shuffle_rows` rows: memory stays bounded and every row still appears exactly once.
#[derive(Debug)]
pub struct Batcher {
    batch_size: usize,
    shuffle_rows: usize,
    rng: SplitMix64,
    pending: Option<Batch>,
}

impl Batcher {
    /// A batcher; `shuffle_rows = 0` keeps input order.
    pub fn new(batch_size: usize, shuffle_rows: usize, seed: u64) -> Self {
        assert!(batch_size > 0, "batch_size is validated by the spec");
        Self {
            batch_size,
            shuffle_rows,
            rng: SplitMix64::new(seed),
            pending: None,
        }
    }

    /// Adds a chunk; returns the batches that are ready.
    pub fn push(&mut self, chunk: &Batch) -> Vec<Batch> {
        match &mut self.pending {
            Some(p) => p.append(chunk),
            None => self.pending = Some(chunk.clone()),
        }
        let rows = self.pending.as_ref().map_or(0, |p| p.rows);
        if rows >= self.shuffle_rows.max(self.batch_size) {
            self.drain(false)
        } else {
            Vec::new()
        }
    }

    /// Flushes what is left, ending with a partial batch if rows remain.
    pub fn finish(mut self) -> Vec<Batch> {
        self.drain(true)
    }

    fn drain(&mut self, all: bool) -> Vec<Batch> {
        let Some(pending) = self.pending.take() else {
            return Vec::new();
        };
        let mut order: Vec<usize> = (0..pending.rows).collect();
        if self.shuffle_rows > 0 {
            self.rng.shuffle(&mut order);
        }
        let full = pending.rows / self.batch_size * self.batch_size;
        let mut out: Vec<Batch> = order[..full]
            .chunks(self.batch_size)
            .map(|idx| pending.take(idx))
            .collect();
        let rest = &order[full..];
        if !rest.is_empty() {
            let rest = pending.take(rest);
            if all {
                out.push(rest);
            } else {
                self.pending = Some(rest);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(start: u32, rows: u32) -> Batch {
        let mut b = Batch::empty(1, 1, 2, 1);
        for r in start..start + rows {
            b.categorical[0].push(r);
            b.lists[0].push_row(&vec![r; (r % 3) as usize]);
            b.numeric.extend_from_slice(&[r as f32, -(r as f32)]);
            b.labels[0].push((r % 2) as u8);
            b.origins.push(RowOrigin {
                object: 0,
                row_group: 0,
                row: r,
            });
        }
        b.rows = rows as usize;
        b
    }

    fn all_rows(batches: &[Batch]) -> Vec<u32> {
        let mut rows: Vec<u32> = batches
            .iter()
            .flat_map(|b| b.categorical[0].clone())
            .collect();
        rows.sort_unstable();
        rows
    }

    #[test]
    fn take_keeps_rows_consistent_across_columns() {
        let b = chunk(0, 10);
        let t = b.take(&[7, 2, 5]);
        assert_eq!(t.categorical[0], vec![7, 2, 5]);
        assert_eq!(t.lists[0].row(0), &[7]);
        assert_eq!(t.lists[0].row(1), &[2, 2]);
        assert_eq!(t.lists[0].row(2), &[5, 5]);
        assert_eq!(t.numeric_row(1), &[2.0, -2.0]);
        assert_eq!(t.labels[0], vec![1, 0, 1]);
        assert_eq!(t.origins[2].row, 5);
    }

    #[test]
    fn unshuffled_batches_are_fixed_size_in_order() {
        let mut b = Batcher::new(4, 0, 1);
        let mut out = b.push(&chunk(0, 6));
        out.extend(b.push(&chunk(6, 5)));
        out.extend(b.finish());
        let sizes: Vec<usize> = out.iter().map(|b| b.rows).collect();
        assert_eq!(sizes, vec![4, 4, 3]);
        let flat: Vec<u32> = out.iter().flat_map(|b| b.categorical[0].clone()).collect();
        assert_eq!(flat, (0..11).collect::<Vec<_>>());
    }

    #[test]
    fn shuffled_batches_hold_every_row_exactly_once() {
        let mut b = Batcher::new(8, 20, 9);
        let mut out = Vec::new();
        for i in 0..10 {
            out.extend(b.push(&chunk(i * 7, 7)));
        }
        out.extend(b.finish());
        assert_eq!(all_rows(&out), (0..70).collect::<Vec<_>>());
        assert!(out[..out.len() - 1].iter().all(|b| b.rows == 8));
        let flat: Vec<u32> = out.iter().flat_map(|b| b.categorical[0].clone()).collect();
        assert_ne!(flat, (0..70).collect::<Vec<_>>(), "rows were permuted");
        // Bags moved with their rows.
        for batch in &out {
            for r in 0..batch.rows {
                let id = batch.categorical[0][r];
                assert_eq!(
                    batch.lists[0].row(r),
                    vec![id; (id % 3) as usize].as_slice()
                );
            }
        }
    }

    #[test]
    fn shuffle_is_deterministic_per_seed() {
        let run = |seed| {
            let mut b = Batcher::new(5, 16, seed);
            let mut out = b.push(&chunk(0, 30));
            out.extend(b.finish());
            out.iter()
                .flat_map(|b| b.categorical[0].clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }
}
