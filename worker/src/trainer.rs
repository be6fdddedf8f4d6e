//! One worker's model state and its training step, split so that an all-reduce can sit between
//! the two halves (DESIGN §5): [`Trainer::compute`] runs forward/backward on a batch and returns
//! this worker's gradients; [`Trainer::apply`] steps the optimizers with (reduced) gradients.
//! Single-worker training calls one after the other ([`Trainer::train_batch`]).
//!
//! Everything here is synchronous and runs on the training thread.

use crate::WorkerError;
use funnel_common::batch::Batch;
use funnel_common::embedding::{
    EmbeddingOptimizers, EmbeddingSet, SparseGrad, SparseOptimizerConfig,
};
use funnel_common::model::{FunnelModel, InputDims};
use funnel_common::spec::{Job, Weighting};
use funnel_common::weighting::{self as rules, UwlState, WeightingState};
use std::sync::Arc;

/// This worker's gradients of one batch, of the batch-mean loss.
#[derive(Debug, Clone)]
pub struct LocalGrads {
    /// Rows of the batch.
    pub rows: usize,
    /// Weighted loss (batch mean).
    pub loss: f32,
    /// Unweighted mean BCE per target, in `ResolvedFunnel::targets()` order.
    pub task_losses: Vec<f32>,
    /// Dense gradient, flat in layout order.
    pub dense: Vec<f32>,
    /// Row-sparse gradient per embedding table, in table order.
    pub sparse: Vec<SparseGrad>,
    /// GradNorm's statistic on sampled steps: per target, the squared norm of its weighted
    /// gradient at the shared layer (of the batch-mean loss).
    pub task_grad_sq_norms: Option<Vec<f32>>,
}

/// The model of one worker: embedding tables and their sparse optimizers, the towers with
/// their dense optimizer, and the task weights.
#[derive(Debug)]
pub struct Trainer {
    job: Arc<Job>,
    pub(crate) set: EmbeddingSet,
    pub(crate) sparse: EmbeddingOptimizers,
    pub(crate) sparse_config: SparseOptimizerConfig,
    pub(crate) model: FunnelModel,
    pub(crate) weights: Vec<f32>,
    /// The weighting strategy's state (weights in f64, L(0), epoch losses, UWL).
    pub(crate) weighting: WeightingState,
    /// Reused `[rows, emb_dim]` gather buffer.
    emb: Vec<f32>,
    /// The (dense, sparse) learning rates in force: the spec's, then those set by the last
    /// [`Self::begin_epoch`].
    rates: (f64, f64),
}

impl Trainer {
    /// A freshly initialised model for `job` (initialisation fixed by `train.seed`).
    pub fn new(job: Arc<Job>) -> Result<Self, WorkerError> {
        let seed = job.spec.train.seed;
        let set =
            EmbeddingSet::new(&job.spec.features, seed).map_err(funnel_common::Error::from)?;
        let model = FunnelModel::with_backend(
            &job,
            InputDims::from_job(&job),
            seed,
            job.spec.train.backend,
        )
        .map_err(funnel_common::Error::from)?;
        Self::from_parts(job, set, model, None)
    }

    /// Assembles a trainer from restored parts; `sparse` `None` = fresh sparse optimizers.
    pub(crate) fn from_parts(
        job: Arc<Job>,
        set: EmbeddingSet,
        model: FunnelModel,
        sparse: Option<EmbeddingOptimizers>,
    ) -> Result<Self, WorkerError> {
        let sparse_config = SparseOptimizerConfig::from_spec(&job.spec.optimizer);
        let sparse = sparse.unwrap_or_else(|| EmbeddingOptimizers::new(&sparse_config, &set));
        let weights = initial_weights(&job)?;
        let opt = &job.spec.optimizer;
        let rates = (opt.lr, opt.base_sparse_lr());
        let weighting = WeightingState::new(job.spec.loss.weighting, &weights);
        Ok(Self {
            job,
            set,
            sparse,
            sparse_config,
            model,
            weights,
            weighting,
            emb: Vec::new(),
            rates,
        })
    }

    /// The job.
    pub fn job(&self) -> &Arc<Job> {
        &self.job
    }

    /// The towers.
    pub fn model(&self) -> &FunnelModel {
        &self.model
    }

    /// The embedding tables.
    pub fn embeddings(&self) -> &EmbeddingSet {
        &self.set
    }

    /// Task weights, in `ResolvedFunnel::targets()` order.
    pub fn weights(&self) -> &[f32] {
        &self.weights
    }

    /// The weighting state (checkpointed).
    pub fn weighting(&self) -> &WeightingState {
        &self.weighting
    }

    /// Whether `step` (1-based) samples GradNorm's statistics: every
    /// `loss.gradnorm_every` steps from the first, when the job uses GradNorm.
    pub fn samples_stats(&self, step: u64) -> bool {
        let every = self.job.spec.loss.gradnorm_every.max(1) as u64;
        self.job.spec.loss.weighting == Weighting::Gradnorm && (step - 1).is_multiple_of(every)
    }

    /// Sets both learning rates for `epoch` (0-based) by the job's `optimizer.lr_schedule`.
    /// Called before each epoch's first step, also after a resume: the rates are a function
    /// of the epoch alone, so every rank of a cluster and a resumed run use the same.
    pub fn begin_epoch(&mut self, epoch: u64) {
        let spec = &self.job.spec;
        let opt = &spec.optimizer;
        let factor = opt.lr_factor(epoch, spec.train.epochs as u64);
        self.rates = (opt.lr * factor, opt.base_sparse_lr() * factor);
        self.model.optimizer_mut().set_lr(self.rates.0 as f32);
        self.sparse.set_lr(self.rates.1);
    }

    /// The (dense, sparse) learning rates in force (the spec's before the first
    /// [`Self::begin_epoch`]), as metrics.jsonl records them per epoch.
    pub fn rates(&self) -> (f64, f64) {
        self.rates
    }

    /// Sets the task weights (the next epoch's, from the coordinator or the epoch update).
    pub fn set_weights(&mut self, weights: &[f64]) -> Result<(), WorkerError> {
        if weights.len() != self.weights.len()
            || weights.iter().any(|w| !(*w > 0.0 && w.is_finite()))
        {
            return Err(WorkerError::Internal(format!(
                "task weights {weights:?} for {} targets",
                self.weights.len()
            )));
        }
        self.weighting.weights = weights.to_vec();
        self.weights = weights.iter().map(|&w| w as f32).collect();
        Ok(())
    }

    /// After a step was applied, with the step's (global) mean task losses and, on sampled
    /// steps, its GradNorm statistics: records the job's first losses (GradNorm's L(0)), takes
    /// UWL's step on the log-variances, and GradNorm's step-level update when configured. Every
    /// rank calls it with the same all-reduced numbers, so all stay identical.
    pub fn after_step(&mut self, step: u64, task_losses: &[f64], grad_norms: Option<&[f64]>) {
        if self.weighting.initial_losses.is_none() {
            self.weighting.initial_losses = Some(task_losses.to_vec());
        }
        let spec = &self.job.spec;
        if spec.loss.weighting == Weighting::Uwl {
            // UWL's log-variances step at the dense rate in force, as parameters of a PyTorch
            // optimizer under its scheduler would.
            let lr = self.rates.0;
            let w = self
                .weighting
                .uwl
                .get_or_insert_with(|| UwlState::new(&self.weighting.weights));
            w.step(task_losses, lr);
            self.weighting.weights = rules::uwl_weights(&w.log_vars);
        } else if !self
            .weighting
            .after_step(&spec.loss, step, task_losses, grad_norms)
        {
            return;
        }
        self.weights = self.weighting.weights.iter().map(|&x| x as f32).collect();
    }

    /// At an epoch's end (single worker, or the coordinator's rule on every worker): the next
    /// epoch's weights from the epoch's mean task losses and mean GradNorm statistics.
    pub fn end_epoch(
        &mut self,
        losses: &[f64],
        grad_norms: Option<&[f64]>,
    ) -> Result<(), WorkerError> {
        let next = self
            .weighting
            .end_epoch(&self.job.spec.loss, losses, grad_norms);
        self.set_weights(&next)
    }

    /// Forward and backward on `batch`; parameters are not changed. With `stats`, also
    /// GradNorm's statistics (one extra towers-only backward per target).
    pub fn compute_with(&mut self, batch: &Batch, stats: bool) -> Result<LocalGrads, WorkerError> {
        let mut g = self.compute(batch)?;
        if stats {
            let norms = self
                .model
                .task_grad_sq_norms(&self.emb, &batch.numeric, &batch.labels, &self.weights)
                .map_err(|e| WorkerError::Data(e.into()))?;
            g.task_grad_sq_norms = Some(norms);
        }
        Ok(g)
    }

    /// Forward and backward on `batch`; parameters are not changed.
    pub fn compute(&mut self, batch: &Batch) -> Result<LocalGrads, WorkerError> {
        let common = |e: funnel_common::Error| WorkerError::Data(e);
        self.set
            .gather_into(batch, &mut self.emb)
            .map_err(|e| common(e.into()))?;
        let out = self
            .model
            .train_step(&self.emb, &batch.numeric, &batch.labels, &self.weights)
            .map_err(|e| common(e.into()))?;
        let sparse = self
            .set
            .backward(batch, &out.emb_grad)
            .map_err(|e| common(e.into()))?;
        Ok(LocalGrads {
            rows: out.rows,
            loss: out.loss,
            task_losses: out.task_losses,
            dense: out.dense_grad,
            sparse,
            task_grad_sq_norms: None,
        })
    }

    /// One optimizer step with `grads` (this worker's, or the reduced mean over the ring).
    pub fn apply(&mut self, grads: &LocalGrads) -> Result<(), WorkerError> {
        for (t, g) in grads.sparse.iter().enumerate() {
            let rows = self.set.tables().get(t).map_or(0, |t| t.rows());
            g.validate(rows).map_err(|e| WorkerError::Data(e.into()))?;
        }
        self.sparse.step(&mut self.set, &grads.sparse);
        self.model
            .apply_dense_update(&grads.dense)
            .map_err(|e| WorkerError::Data(e.into()))?;
        Ok(())
    }

    /// [`Self::compute`] then [`Self::apply`]: one single-worker step.
    pub fn train_batch(&mut self, batch: &Batch) -> Result<LocalGrads, WorkerError> {
        let grads = self.compute(batch)?;
        self.apply(&grads)?;
        Ok(grads)
    }

    /// Every stage's probability for `batch`, `[stages][rows]` in funnel order.
    pub fn predict(&mut self, batch: &Batch) -> Result<Vec<Vec<f32>>, WorkerError> {
        self.set
            .gather_into(batch, &mut self.emb)
            .map_err(|e| WorkerError::Data(e.into()))?;
        self.model
            .forward(&self.emb, &batch.numeric)
            .map_err(|e| WorkerError::Data(e.into()))
    }
}

/// Initial task weights from `loss.weights` (missing stages weigh 1), in target order: fixed
/// weights, and the starting point of GradNorm, DWA and UWL.
pub fn initial_weights(job: &Job) -> Result<Vec<f32>, WorkerError> {
    let loss = &job.spec.loss;
    Ok(job
        .funnel
        .targets()
        .map(|(_, s)| loss.weights.get(&s.name).copied().unwrap_or(1.0) as f32)
        .collect())
}
