//! Host-side embeddings, outside any autodiff engine (DESIGN §3, §5; issue 3 point 1).
//!
//! burn's embedding backward is dense over all rows; here tables are plain `f32` storage, a batch
//! is gathered into one dense `[rows, total_dim]` block that the towers take as a leaf, and the
//! leaf's gradient comes back as row-sparse gradients per table that sparse optimizers apply to
//! the touched rows only.
//!
//! - [`EmbeddingTable`]: `[rows, dim]` row-major storage with deterministic initialisation.
//! - [`EmbeddingSet`]: the job's tables and features (shared tables), [`EmbeddingSet::gather`]
//!   (categorical rows and mean-pooled bags) and [`EmbeddingSet::backward`].
//! - [`SparseGrad`]: `(ids, rows)` per table, with scaling and a commutative, fixed-order merge for all-reduce.
//! - [`SparseOptimizer`]: [`LazyAdam`], [`Adagrad`], [`Sgd`], with state export and restore that
//!   continue bit-exactly; [`SparseOptimizerConfig`] maps the job spec onto them.
//!
//! Nothing here depends on burn or on threads: the trainer decides where this runs.

mod grad;
mod optim;
mod rules;
mod set;
mod table;

#[cfg(test)]
mod optim_tests;
#[cfg(test)]
mod set_tests;

pub use grad::SparseGrad;
pub use optim::{
    AdagradConfig, AdamConfig, EmbeddingOptimizers, OptimizerState, SparseOptimizer,
    SparseOptimizerConfig, StateBuffer,
};
pub use rules::{Adagrad, LazyAdam, Sgd};
pub use set::{EmbeddingSet, FeatureSlot};
pub use table::{EmbeddingInit, EmbeddingTable};

/// What can go wrong building, feeding or restoring embeddings. Shapes that come from the job
/// spec or from the network are checked and reported; calls that break an invariant this module
/// established itself (a gradient for another table) panic instead.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EmbeddingError {
    /// A table with zero rows or zero dimension.
    #[error("embedding table `{table}` has shape [{rows}, {dim}]; both must be at least 1")]
    EmptyTable {
        /// Table name.
        table: String,
        /// Rows asked for.
        rows: u64,
        /// Dimension asked for.
        dim: usize,
    },
    /// A table whose storage cannot be allocated.
    #[error(
        "embedding table `{table}` [{rows}, {dim}] needs {bytes} bytes, which cannot be allocated"
    )]
    TooLarge {
        /// Table name.
        table: String,
        /// Rows.
        rows: u64,
        /// Dimension.
        dim: usize,
        /// Bytes needed, computed without overflow.
        bytes: u128,
    },
    /// Two features naming one table with different shapes (the spec check prevents this).
    #[error(
        "{key}: table `{table}` is shared with an earlier feature of shape [{rows}, {dim}], \
         but this feature asks for [{got_rows}, {got_dim}]"
    )]
    SharedTableMismatch {
        /// Spec key of the later feature.
        key: String,
        /// Table name.
        table: String,
        /// Rows of the first feature.
        rows: u64,
        /// Dimension of the first feature.
        dim: usize,
        /// Rows of this feature.
        got_rows: u64,
        /// Dimension of this feature.
        got_dim: usize,
    },
    /// A batch, gradient or buffer whose shape does not match.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A bucket id outside its table.
    #[error("{key}: bucket id {id} is outside table `{table}` ({rows} rows)")]
    IdOutOfRange {
        /// Spec key of the feature (or `grad` for a gradient).
        key: String,
        /// Table name.
        table: String,
        /// The id.
        id: u32,
        /// Rows of the table.
        rows: usize,
    },
    /// Optimizer state that does not fit the optimizer or table it is restored into.
    #[error("cannot restore optimizer state: {0}")]
    State(String),
}
