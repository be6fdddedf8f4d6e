//! Row-sparse gradients of one embedding table, and how workers combine them.
//!
//! Exactness: `a.merge(&b)` adds the rows of ids present in both as `a + b`, element by element;
//! IEEE addition is commutative, so `a.merge(&b)` and `b.merge(&a)` are bit-identical. Addition
//! is not associative, so a sum over three or more workers depends on its grouping in the last
//! bits: every worker must combine in one fixed order. [`SparseGrad::merge_all`] does that, in
//! the slice's order (rank order), and equals a left fold of `merge` bit for bit.

use super::EmbeddingError;

/// The gradient of one table: row `k` of `rows` belongs to bucket `ids[k]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseGrad {
    /// Index of the table in its [`super::EmbeddingSet`].
    pub table: usize,
    /// Embedding dimension of the table.
    pub dim: usize,
    /// Touched bucket ids, sorted, each once.
    pub ids: Vec<u32>,
    /// Gradient rows, `[ids.len(), dim]` row-major.
    pub rows: Vec<f32>,
}

impl SparseGrad {
    /// A gradient that touches no row.
    pub fn empty(table: usize, dim: usize) -> Self {
        Self {
            table,
            dim,
            ids: Vec::new(),
            rows: Vec::new(),
        }
    }

    /// A gradient from parts (e.g. received from a peer), checked: `ids` strictly increasing,
    /// `rows` of `[ids.len(), dim]`.
    pub fn new(
        table: usize,
        dim: usize,
        ids: Vec<u32>,
        rows: Vec<f32>,
    ) -> Result<Self, EmbeddingError> {
        let g = Self {
            table,
            dim,
            ids,
            rows,
        };
        g.check_shape()?;
        Ok(g)
    }

    /// Checks the invariants and that every id is below `table_rows`.
    pub fn validate(&self, table_rows: usize) -> Result<(), EmbeddingError> {
        self.check_shape()?;
        match self.ids.last() {
            Some(&id) if id as usize >= table_rows => Err(EmbeddingError::IdOutOfRange {
                key: "grad".into(),
                table: format!("#{}", self.table),
                id,
                rows: table_rows,
            }),
            _ => Ok(()),
        }
    }

    fn check_shape(&self) -> Result<(), EmbeddingError> {
        if self.dim == 0 || self.ids.len().checked_mul(self.dim) != Some(self.rows.len()) {
            return Err(EmbeddingError::Shape(format!(
                "gradient of table #{}: {} ids of dim {} but {} values",
                self.table,
                self.ids.len(),
                self.dim,
                self.rows.len()
            )));
        }
        if let Some(w) = self.ids.windows(2).find(|w| w[0] >= w[1]) {
            return Err(EmbeddingError::Shape(format!(
                "gradient of table #{}: ids not strictly increasing ({} then {})",
                self.table, w[0], w[1]
            )));
        }
        Ok(())
    }

    /// Touched rows.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no row is touched.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Gradient row `k` (of bucket `ids[k]`), `[dim]`.
    pub fn row(&self, k: usize) -> &[f32] {
        &self.rows[k * self.dim..(k + 1) * self.dim]
    }

    /// Multiplies every value by `factor`.
    pub fn scale(&mut self, factor: f32) {
        self.rows.iter_mut().for_each(|v| *v *= factor);
    }

    /// Divides every value by `divisor` (correctly rounded, unlike scaling by `1 / divisor`):
    /// e.g. by the global batch size once the workers' sums are merged.
    pub fn divide(&mut self, divisor: f32) {
        self.rows.iter_mut().for_each(|v| *v /= divisor);
    }

    /// The sum of two gradients of the same table: ids merged in order, rows of shared ids
    /// added as `self + other`.
    pub fn merge(&self, other: &SparseGrad) -> Result<SparseGrad, EmbeddingError> {
        if (self.table, self.dim) != (other.table, other.dim) {
            return Err(EmbeddingError::Shape(format!(
                "cannot merge gradients of table #{} (dim {}) and table #{} (dim {})",
                self.table, self.dim, other.table, other.dim
            )));
        }
        let d = self.dim;
        let mut out = SparseGrad::empty(self.table, d);
        out.ids.reserve(self.ids.len() + other.ids.len());
        out.rows.reserve(self.rows.len() + other.rows.len());
        let (mut i, mut j) = (0, 0);
        while i < self.ids.len() && j < other.ids.len() {
            let (a, b) = (self.ids[i], other.ids[j]);
            if a < b {
                out.push(a, self.row(i));
                i += 1;
            } else if b < a {
                out.push(b, other.row(j));
                j += 1;
            } else {
                out.ids.push(a);
                let (x, y) = (self.row(i), other.row(j));
                out.rows.extend(x.iter().zip(y).map(|(x, y)| x + y));
                i += 1;
                j += 1;
            }
        }
        out.ids.extend_from_slice(&self.ids[i..]);
        out.rows.extend_from_slice(&self.rows[i * d..]);
        out.ids.extend_from_slice(&other.ids[j..]);
        out.rows.extend_from_slice(&other.rows[j * d..]);
        Ok(out)
    }

    /// The sum of the gradients of one table from every worker, in slice order:
    /// `((g0 + g1) + g2) + ...` for each id, skipping workers that did not touch it.
    pub fn merge_all(grads: &[SparseGrad]) -> Result<SparseGrad, EmbeddingError> {
        let (first, rest) = grads
            .split_first()
            .ok_or_else(|| EmbeddingError::Shape("no gradients to merge".into()))?;
        rest.iter().try_fold(first.clone(), |acc, g| acc.merge(g))
    }

    /// The dense `[table_rows, dim]` gradient (tests and debugging; untouched rows are zero).
    pub fn to_dense(&self, table_rows: usize) -> Vec<f32> {
        let mut dense = vec![0.0; table_rows * self.dim];
        for (k, &id) in self.ids.iter().enumerate() {
            let start = id as usize * self.dim;
            dense[start..start + self.dim].copy_from_slice(self.row(k));
        }
        dense
    }

    fn push(&mut self, id: u32, row: &[f32]) {
        self.ids.push(id);
        self.rows.extend_from_slice(row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    const ROWS: usize = 40;
    const DIM: usize = 3;

    /// A random gradient over a random subset of `ROWS` ids; `dyadic` values are multiples of
    /// 1/8 below 64, whose sums are exact in f32.
    fn random(seed: u64, dyadic: bool) -> SparseGrad {
        let mut rng = SplitMix64::new(seed);
        let ids: Vec<u32> = (0..ROWS as u32).filter(|_| rng.bernoulli(0.4)).collect();
        let rows = (0..ids.len() * DIM)
            .map(|_| {
                if dyadic {
                    (rng.below(1024) as f32 - 512.0) / 8.0
                } else {
                    (rng.next_f64() * 2.0 - 1.0) as f32
                }
            })
            .collect();
        SparseGrad::new(0, DIM, ids, rows).expect("valid")
    }

    fn merged(a: &SparseGrad, b: &SparseGrad) -> SparseGrad {
        a.merge(b).expect("same table")
    }

    #[test]
    fn merge_is_commutative_bit_for_bit() {
        for seed in 0..20 {
            let (a, b) = (random(seed, false), random(seed + 100, false));
            assert_eq!(merged(&a, &b), merged(&b, &a));
        }
    }

    #[test]
    fn merge_equals_the_dense_sum() {
        let (a, b) = (random(1, false), random(2, false));
        let m = merged(&a, &b);
        m.validate(ROWS).expect("sorted, unique");
        let (da, db) = (a.to_dense(ROWS), b.to_dense(ROWS));
        let sum: Vec<f32> = da.iter().zip(&db).map(|(x, y)| x + y).collect();
        assert_eq!(m.to_dense(ROWS), sum);
        let union: Vec<u32> = (0..ROWS as u32)
            .filter(|id| a.ids.contains(id) || b.ids.contains(id))
            .collect();
        assert_eq!(m.ids, union);
    }

    #[test]
    fn merge_is_associative_when_sums_are_exact_and_close_otherwise() {
        for seed in 0..20 {
            let (a, b, c) = (
                random(seed, true),
                random(seed + 50, true),
                random(seed + 99, true),
            );
            let left = merged(&merged(&a, &b), &c);
            assert_eq!(left, merged(&a, &merged(&b, &c)));
            assert_eq!(left, merged(&merged(&c, &a), &b));
            let (a, b, c) = (
                random(seed, false),
                random(seed + 50, false),
                random(seed + 99, false),
            );
            let (l, r) = (merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
            assert_eq!(l.ids, r.ids);
            assert!(
                l.rows
                    .iter()
                    .zip(&r.rows)
                    .all(|(x, y)| (x - y).abs() <= 1e-6)
            );
        }
    }

    #[test]
    fn merge_all_is_the_left_fold_in_slice_order() {
        let grads: Vec<SparseGrad> = (0..5).map(|s| random(s, false)).collect();
        let fold = grads[1..]
            .iter()
            .fold(grads[0].clone(), |acc, g| merged(&acc, g));
        assert_eq!(SparseGrad::merge_all(&grads).expect("merge"), fold);
        assert!(SparseGrad::merge_all(&[]).is_err());
    }

    #[test]
    fn scaling_and_checks() {
        let mut g = SparseGrad::new(2, 2, vec![1, 4], vec![3.0, 6.0, 9.0, 12.0]).expect("ok");
        g.divide(3.0);
        assert_eq!(g.rows, vec![1.0, 2.0, 3.0, 4.0]);
        g.scale(0.5);
        assert_eq!(g.row(1), &[1.5, 2.0]);
        assert!(g.validate(5).is_ok());
        assert!(g.validate(4).is_err());
        assert!(SparseGrad::new(0, 2, vec![4, 1], vec![0.0; 4]).is_err());
        assert!(SparseGrad::new(0, 2, vec![1, 1], vec![0.0; 4]).is_err());
        assert!(SparseGrad::new(0, 2, vec![1], vec![0.0; 3]).is_err());
        assert!(g.merge(&SparseGrad::empty(1, 2)).is_err());
        assert_eq!(g.merge(&SparseGrad::empty(2, 2)).expect("empty"), g);
    }
}
