//! One embedding table: `[rows, dim]` row-major `f32` storage and its deterministic
//! initialisation.
//!
//! Initialisation (the default, [`EmbeddingInit::UniformInvSqrtDim`]): every value is drawn from
//! `Uniform[-1/sqrt(dim), 1/sqrt(dim))`, so a row has expected squared norm 1/3 whatever its
//! dimension and whatever the bucket count. Why not TorchRec/DLRM's `Uniform(±sqrt(1/rows))`:
//! for hashed features the bucket count is a collision budget, not a property of the feature;
//! tying the initial scale to it would make a 4M-bucket table start 10x smaller than a 40k-bucket
//! one and change the model whenever the budget changes. Why not `N(0, 1)` (PyTorch's
//! `nn.Embedding`): rows of norm `sqrt(dim)` dwarf the standardised numeric features they are
//! concatenated with. TensorFlow's `embedding_column` uses the same `1/sqrt(dim)` scale
//! (truncated normal); uniform keeps every value bounded.
//!
//! Random stream: row `r` of table `name` under job seed `seed` takes its `dim` values, in order,
//! from `SplitMix64::derive(key, r)` where `key = SplitMix64::derive(seed ^ INIT_DOMAIN,
//! table_seed(name)).next_u64()` ([`crate::hash::table_seed`] is the table's hash seed). Rows are
//! independent streams: initialisation can be split across threads, or a single row recomputed,
//! without changing a bit.

use super::EmbeddingError;
use crate::hash::table_seed;
use crate::rng::SplitMix64;

/// Separates the initialisation streams from every other use of the job seed ("EMBEDINI").
const INIT_DOMAIN: u64 = 0x454D_4245_4449_4E49;

/// How a table's values are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum EmbeddingInit {
    /// `Uniform[-1/sqrt(dim), 1/sqrt(dim))` (the default; see the module docs).
    #[default]
    UniformInvSqrtDim,
    /// `Uniform[-bound, bound)`.
    Uniform {
        /// Half-width of the interval.
        bound: f64,
    },
    /// `N(0, std^2)` (Box-Muller, one draw per value).
    Normal {
        /// Standard deviation.
        std: f64,
    },
    /// All zeros (tests, and tables about to be overwritten by a checkpoint).
    Zeros,
}

/// An embedding table: `data[id * dim..(id + 1) * dim]` is the row of bucket `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingTable {
    name: String,
    rows: usize,
    dim: usize,
    /// `[rows, dim]`, row-major.
    data: Vec<f32>,
}

impl EmbeddingTable {
    /// A table initialised by `init` from the job seed and the table name (module docs).
    pub fn new(
        name: &str,
        rows: u64,
        dim: usize,
        seed: u64,
        init: EmbeddingInit,
    ) -> Result<Self, EmbeddingError> {
        let (rows, mut data) = allocate(name, rows, dim)?;
        let key = SplitMix64::derive(seed ^ INIT_DOMAIN, table_seed(name)).next_u64();
        let uniform = |bound: f64| move |r: &mut SplitMix64| bound * (2.0 * r.next_f64() - 1.0);
        match init {
            EmbeddingInit::UniformInvSqrtDim => {
                fill(&mut data, dim, key, uniform(1.0 / (dim as f64).sqrt()));
            }
            EmbeddingInit::Uniform { bound } => fill(&mut data, dim, key, uniform(bound)),
            EmbeddingInit::Normal { std } => fill(&mut data, dim, key, |r| std * r.normal()),
            EmbeddingInit::Zeros => {}
        }
        Ok(Self {
            name: name.to_string(),
            rows,
            dim,
            data,
        })
    }

    /// A table holding `data` (`[rows, dim]`, row-major), e.g. from a checkpoint.
    pub fn from_data(
        name: &str,
        rows: usize,
        dim: usize,
        data: Vec<f32>,
    ) -> Result<Self, EmbeddingError> {
        if rows == 0 || dim == 0 {
            return Err(EmbeddingError::EmptyTable {
                table: name.to_string(),
                rows: rows as u64,
                dim,
            });
        }
        if rows.checked_mul(dim) != Some(data.len()) {
            return Err(EmbeddingError::Shape(format!(
                "table `{name}` is [{rows}, {dim}] but {} values were given",
                data.len()
            )));
        }
        Ok(Self {
            name: name.to_string(),
            rows,
            dim,
            data,
        })
    }

    /// Table name (the spec's `table` key, or the feature's column).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Rows (hash buckets).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// All values, `[rows, dim]` row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// All values, mutable (the shape cannot change).
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// The storage, for checkpoints that take ownership.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// Row `id`, `[dim]`. Panics if `id >= rows`.
    #[inline]
    pub fn row(&self, id: u32) -> &[f32] {
        let start = id as usize * self.dim;
        &self.data[start..start + self.dim]
    }

    /// Row `id`, mutable. Panics if `id >= rows`.
    #[inline]
    pub fn row_mut(&mut self, id: u32) -> &mut [f32] {
        let start = id as usize * self.dim;
        &mut self.data[start..start + self.dim]
    }
}

/// Fills `data` (`[rows, dim]`) row by row, row `r` from its own stream `derive(key, r)`.
fn fill(data: &mut [f32], dim: usize, key: u64, draw: impl Fn(&mut SplitMix64) -> f64) {
    for (r, row) in data.chunks_exact_mut(dim).enumerate() {
        let mut rng = SplitMix64::derive(key, r as u64);
        for v in row {
            *v = draw(&mut rng) as f32;
        }
    }
}

/// Zeroed `[rows, dim]` storage, or an error instead of an allocation abort.
fn allocate(name: &str, rows: u64, dim: usize) -> Result<(usize, Vec<f32>), EmbeddingError> {
    if rows == 0 || dim == 0 {
        return Err(EmbeddingError::EmptyTable {
            table: name.to_string(),
            rows,
            dim,
        });
    }
    let too_large = || EmbeddingError::TooLarge {
        table: name.to_string(),
        rows,
        dim,
        bytes: rows as u128 * dim as u128 * 4,
    };
    let n = usize::try_from(rows)
        .ok()
        .and_then(|r| r.checked_mul(dim))
        .filter(|&n| n <= isize::MAX as usize / 4)
        .ok_or_else(too_large)?;
    let mut data = Vec::new();
    data.try_reserve_exact(n).map_err(|_| too_large())?;
    data.resize(n, 0.0);
    Ok((n / dim, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, seed: u64) -> EmbeddingTable {
        EmbeddingTable::new(name, 500, 16, seed, EmbeddingInit::default()).expect("table")
    }

    #[test]
    fn init_is_deterministic_per_seed_and_table() {
        let a = table("item", 7);
        assert_eq!(a.data(), table("item", 7).data());
        let differs = |b: &EmbeddingTable| a.data().iter().zip(b.data()).all(|(x, y)| x != y);
        assert!(differs(&table("item", 8)), "another seed");
        assert!(differs(&table("user", 7)), "another table");
    }

    #[test]
    fn row_streams_do_not_depend_on_the_table_size() {
        let small = EmbeddingTable::new("t", 3, 4, 1, EmbeddingInit::default()).expect("small");
        let large = EmbeddingTable::new("t", 300, 4, 1, EmbeddingInit::default()).expect("large");
        assert_eq!(small.data(), &large.data()[..12]);
    }

    #[test]
    fn default_init_is_uniform_within_one_over_sqrt_dim() {
        let t = table("item", 3);
        let bound = 0.25f32; // 1 / sqrt(16)
        assert!(t.data().iter().all(|v| v.abs() <= bound));
        let n = t.data().len() as f64;
        let mean = t.data().iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = t.data().iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.005, "mean {mean}");
        let expected = 0.0625 / 3.0;
        assert!((var - expected).abs() < 0.05 * expected, "variance {var}");
    }

    #[test]
    fn normal_and_zero_inits() {
        let n = EmbeddingTable::new("t", 1000, 8, 5, EmbeddingInit::Normal { std: 0.01 })
            .expect("normal");
        let var = n.data().iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / 8000.0;
        assert!((var.sqrt() - 0.01).abs() < 0.001, "std {}", var.sqrt());
        let z = EmbeddingTable::new("t", 10, 8, 5, EmbeddingInit::Zeros).expect("zeros");
        assert!(z.data().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn shapes_are_checked() {
        let empty = EmbeddingTable::new("t", 0, 4, 1, EmbeddingInit::Zeros);
        assert!(matches!(empty, Err(EmbeddingError::EmptyTable { .. })));
        let huge = EmbeddingTable::new("t", u64::MAX, 1 << 20, 1, EmbeddingInit::Zeros);
        assert!(matches!(huge, Err(EmbeddingError::TooLarge { .. })));
        assert!(EmbeddingTable::from_data("t", 2, 3, vec![0.0; 5]).is_err());
        let t = EmbeddingTable::from_data("t", 2, 3, (0..6).map(|v| v as f32).collect())
            .expect("from data");
        assert_eq!(t.row(1), &[3.0, 4.0, 5.0]);
    }
}
