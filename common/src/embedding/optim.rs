//! Sparse optimizers: the [`SparseOptimizer`] trait, their configuration from the job spec,
//! state export and restore, and one optimizer per table of an [`EmbeddingSet`].
//!
//! Update rules and their semantics (PyTorch `SparseAdam`, `Adagrad`, SGD) are documented in
//! `rules.rs` and on [`super::LazyAdam`], [`super::Adagrad`] and [`super::Sgd`]. Call `step` once
//! per training step for every table, with an empty gradient when a table was not touched, so
//! that step counts (and LazyAdam's bias correction) stay global. State exports as named `f32`
//! buffers plus the step count; restoring it continues bit-identically.

use super::{Adagrad, LazyAdam, Sgd};
use super::{EmbeddingError, EmbeddingSet, EmbeddingTable, SparseGrad};
use crate::spec::{OptimizerSpec, SparseOptimizer as SparseOptimizerKind};

/// An optimizer for one table that updates only the rows of each gradient.
pub trait SparseOptimizer: std::fmt::Debug + Send {
    /// Applies one step. Panics if `grad` does not fit `table` or this optimizer's shape.
    fn step(&mut self, table: &mut EmbeddingTable, grad: &SparseGrad);
    /// Spec name: `lazy-adam`, `adagrad` or `sgd`.
    fn kind(&self) -> &'static str;
    /// Steps taken.
    fn steps(&self) -> u64;
    /// Sets the learning rate of the steps that follow (schedules live with the trainer; the
    /// rate is not part of the exported state).
    fn set_lr(&mut self, lr: f64);
    /// Everything needed to continue exactly (buffers `[rows, dim]` row-major).
    fn export_state(&self) -> OptimizerState;
}

/// One named state buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct StateBuffer {
    /// Name (`exp_avg`, `exp_avg_sq`, `sum`: PyTorch's).
    pub name: String,
    /// Values, `[rows, dim]` row-major.
    pub data: Vec<f32>,
}

/// A sparse optimizer's state for one table.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerState {
    /// Spec name of the optimizer.
    pub kind: String,
    /// Steps taken.
    pub step: u64,
    /// State buffers (none for SGD).
    pub buffers: Vec<StateBuffer>,
}

impl OptimizerState {
    /// Checks kind and buffer names and sizes, and returns the buffers in `names` order.
    pub(super) fn take(
        self,
        kind: &str,
        names: &[&str],
        len: usize,
    ) -> Result<(u64, Vec<Vec<f32>>), EmbeddingError> {
        if self.kind != kind {
            return Err(EmbeddingError::State(format!(
                "state of `{}` given to `{kind}`",
                self.kind
            )));
        }
        let got: Vec<&str> = self.buffers.iter().map(|b| b.name.as_str()).collect();
        if got != names {
            return Err(EmbeddingError::State(format!(
                "`{kind}` needs buffers {names:?}, got {got:?}"
            )));
        }
        if let Some(b) = self.buffers.iter().find(|b| b.data.len() != len) {
            return Err(EmbeddingError::State(format!(
                "buffer `{}` has {} values; the table has {len}",
                b.name,
                b.data.len()
            )));
        }
        Ok((
            self.step,
            self.buffers.into_iter().map(|b| b.data).collect(),
        ))
    }
}

/// Adam hyperparameters (PyTorch defaults but the learning rate).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to `sqrt(v)`.
    pub eps: f64,
    /// L2 weight decay: `weight_decay * w` is added to a touched row's gradient.
    pub weight_decay: f64,
}

impl AdamConfig {
    /// `lr` with betas (0.9, 0.999), eps 1e-8 and no weight decay.
    pub fn new(lr: f64) -> Self {
        Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Adagrad hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdagradConfig {
    /// Learning rate.
    pub lr: f64,
    /// Starting value of every accumulator.
    pub initial_accumulator: f64,
    /// Added to `sqrt(s)`.
    pub eps: f64,
}

impl AdagradConfig {
    /// `lr` with PyTorch's defaults: initial accumulator 0, eps 1e-10.
    pub fn new(lr: f64) -> Self {
        Self {
            lr,
            initial_accumulator: 0.0,
            eps: 1e-10,
        }
    }
}

/// Which sparse optimizer, with its hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SparseOptimizerConfig {
    /// [`LazyAdam`].
    LazyAdam(AdamConfig),
    /// [`Adagrad`].
    Adagrad(AdagradConfig),
    /// [`Sgd`] with this learning rate.
    Sgd(f64),
}

impl SparseOptimizerConfig {
    /// The spec's choice with default hyperparameters and learning rate `lr`.
    pub fn from_kind(kind: SparseOptimizerKind, lr: f64) -> Self {
        match kind {
            SparseOptimizerKind::LazyAdam => Self::LazyAdam(AdamConfig::new(lr)),
            SparseOptimizerKind::Adagrad => Self::Adagrad(AdagradConfig::new(lr)),
            SparseOptimizerKind::Sgd => Self::Sgd(lr),
        }
    }

    /// `[optimizer]`: `sparse` with `sparse_lr`, or `lr` when that is absent.
    pub fn from_spec(spec: &OptimizerSpec) -> Self {
        match Self::from_kind(spec.sparse, spec.base_sparse_lr()) {
            Self::LazyAdam(c) => Self::LazyAdam(AdamConfig {
                weight_decay: spec.sparse_weight_decay,
                ..c
            }),
            other => other,
        }
    }

    /// A fresh optimizer for a `[rows, dim]` table.
    pub fn build(&self, rows: usize, dim: usize) -> Box<dyn SparseOptimizer> {
        match *self {
            Self::LazyAdam(c) => Box::new(LazyAdam::new(c, rows, dim)),
            Self::Adagrad(c) => Box::new(Adagrad::new(c, rows, dim)),
            Self::Sgd(lr) => Box::new(Sgd::new(lr, dim)),
        }
    }

    /// An optimizer for a `[rows, dim]` table that continues from `state`.
    pub fn restore(
        &self,
        rows: usize,
        dim: usize,
        state: OptimizerState,
    ) -> Result<Box<dyn SparseOptimizer>, EmbeddingError> {
        Ok(match *self {
            Self::LazyAdam(c) => Box::new(LazyAdam::from_state(c, rows, dim, state)?),
            Self::Adagrad(c) => Box::new(Adagrad::from_state(c, rows, dim, state)?),
            Self::Sgd(lr) => Box::new(Sgd::from_state(lr, dim, state)?),
        })
    }
}

/// One sparse optimizer per table of an [`EmbeddingSet`].
#[derive(Debug)]
pub struct EmbeddingOptimizers {
    per_table: Vec<Box<dyn SparseOptimizer>>,
}

impl EmbeddingOptimizers {
    /// Fresh optimizers for every table of `set`.
    pub fn new(config: &SparseOptimizerConfig, set: &EmbeddingSet) -> Self {
        let per_table = set
            .tables()
            .iter()
            .map(|t| config.build(t.rows(), t.dim()))
            .collect();
        Self { per_table }
    }

    /// Optimizers that continue from `states` (one per table, in table order).
    pub fn restore(
        config: &SparseOptimizerConfig,
        set: &EmbeddingSet,
        states: Vec<OptimizerState>,
    ) -> Result<Self, EmbeddingError> {
        if states.len() != set.tables().len() {
            return Err(EmbeddingError::State(format!(
                "{} optimizer states for {} tables",
                states.len(),
                set.tables().len()
            )));
        }
        let per_table = set
            .tables()
            .iter()
            .zip(states)
            .map(|(t, s)| config.restore(t.rows(), t.dim(), s))
            .collect::<Result<_, _>>()?;
        Ok(Self { per_table })
    }

    /// One step on every table; `grads` is one gradient per table in table order, as
    /// [`EmbeddingSet::backward`] returns them. Panics otherwise.
    pub fn step(&mut self, set: &mut EmbeddingSet, grads: &[SparseGrad]) {
        let tables = set.tables_mut();
        assert_eq!(grads.len(), tables.len(), "one gradient per table");
        for (t, ((opt, table), grad)) in
            self.per_table.iter_mut().zip(tables).zip(grads).enumerate()
        {
            assert_eq!(grad.table, t, "gradients in table order");
            opt.step(table, grad);
        }
    }

    /// Sets every table's learning rate for the steps that follow.
    pub fn set_lr(&mut self, lr: f64) {
        for opt in &mut self.per_table {
            opt.set_lr(lr);
        }
    }

    /// The optimizer of table `t`.
    pub fn table(&self, t: usize) -> &dyn SparseOptimizer {
        self.per_table[t].as_ref()
    }

    /// Every table's state, in table order.
    pub fn export_state(&self) -> Vec<OptimizerState> {
        self.per_table.iter().map(|o| o.export_state()).collect()
    }
}
