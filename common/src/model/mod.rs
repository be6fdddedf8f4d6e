//! The funnel model: towers in burn over `[pooled embeddings ++ numeric]`, the log-space funnel
//! of DESIGN §3, and the flat dense-parameter buffer that workers all-reduce (DESIGN §5).
//!
//! burn 0.22 picks the backend at run time from the [`Device`]: training runs on
//! `Device::flex().autodiff()`, prediction on `Device::flex()`, unless another
//! [`ComputeBackend`] is asked for ([`device`]: LibTorch, CUDA). Embedding tables are not here:
//! the caller gathers rows on the host and passes them as a plain `[rows, emb_dim]` slice, which
//! becomes a `require_grad` leaf; its gradient comes back for the row-sparse update.
//! flex runs its matmuls and reductions on the current rayon pool: the caller sizes it.
//!
//! - [`params`]: the flat buffer's layout (names, shapes, order, layout hash) and its init.
//! - [`optim`]: Adam / Adagrad / SGD on the flat buffer.
//! - `tower`: MLP, DCN-v2 and DeepFM towers; `funnel`: stage log-probabilities and BCE.

pub mod device;
mod funnel;
pub mod optim;
pub mod params;
mod step;
mod tower;

#[cfg(test)]
mod bench;
#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;

pub use device::ComputeBackend;
pub use optim::DenseOptim;
pub use params::{ParamLayout, ParamSpec};
pub use step::StepOutput;

use crate::spec::{Job, TowerKind, TowerSpec};
use burn::tensor::Device;
use funnel::StageNode;
use tower::TowerPlan;

/// Errors from building or running the model. Shapes are checked before burn sees them, so
/// a bad batch is an error here rather than a panic inside burn.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// An input slice has the wrong length for the model.
    #[error("{what}: expected {expected} values, got {got}")]
    Shape {
        /// Which input.
        what: String,
        /// Expected length.
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// A label is neither 0 nor 1.
    #[error("label of target {target} row {row} is {value}; labels must be 0 or 1")]
    Label {
        /// Target index (order of `ResolvedFunnel::targets()`).
        target: usize,
        /// Row in the batch.
        row: usize,
        /// The value found.
        value: u8,
    },
    /// The configuration cannot be built.
    #[error("model configuration: {0}")]
    Config(String),
    /// The backend asked for is not compiled into this build.
    #[error(
        "compute backend {backend} is not compiled in: rebuild with `--features {feature}` \
         (compiled: {compiled})"
    )]
    Backend {
        /// The backend asked for.
        backend: &'static str,
        /// The cargo feature that compiles it in.
        feature: &'static str,
        /// The backends this build has.
        compiled: String,
    },
    /// burn could not read a tensor back.
    #[error("reading a tensor back from burn: {0}")]
    Read(String),
}

/// Result alias for the model.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// Widths of the model input `[pooled embeddings ++ numeric]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputDims {
    /// Width of each pooled embedding field, in the order the gather lays them out.
    pub fields: Vec<usize>,
    /// Number of numeric features.
    pub numeric: usize,
}

impl InputDims {
    /// The job's input: categorical features then list features (one pooled bag each), in
    /// spec order, then the numeric features.
    pub fn from_job(job: &Job) -> Self {
        let f = &job.spec.features;
        Self {
            fields: f
                .categorical
                .iter()
                .map(|c| c.dim)
                .chain(f.list.iter().map(|l| l.dim))
                .collect(),
            numeric: f.numeric.len(),
        }
    }

    /// Width of the embedding leaf.
    pub fn emb(&self) -> usize {
        self.fields.iter().sum()
    }

    /// Width of the tower input.
    pub fn input(&self) -> usize {
        self.emb() + self.numeric
    }
}

/// The funnel model: structure, the flat parameter buffer and its dense optimizer.
#[derive(Debug, Clone)]
pub struct FunnelModel {
    dims: InputDims,
    stage_names: Vec<String>,
    nodes: Vec<StageNode>,
    /// Stage index of each target, in `ResolvedFunnel::targets()` order.
    targets: Vec<usize>,
    towers: Vec<TowerPlan>,
    tower_spec: TowerSpec,
    /// DeepFM and DeepFwFM: `(fields, k)` of the FM term.
    fm: Option<(usize, usize)>,
    layout: ParamLayout,
    params: Vec<f32>,
    optim: DenseOptim,
    seed: u64,
    /// Training steps run, for the dropout stream.
    steps: u64,
    backend: ComputeBackend,
    train_device: Device,
    eval_device: Device,
}

impl FunnelModel {
    /// Builds the towers for `job`'s funnel over `dims` and initialises them from `seed`, on
    /// the default backend (flex).
    pub fn new(job: &Job, dims: InputDims, seed: u64) -> Result<Self> {
        Self::with_backend(job, dims, seed, ComputeBackend::Flex)
    }

    /// [`Self::new`] on `backend`; [`ModelError::Backend`] if it is not compiled in.
    pub fn with_backend(
        job: &Job,
        dims: InputDims,
        seed: u64,
        backend: ComputeBackend,
    ) -> Result<Self> {
        let (train_device, eval_device) = backend.devices()?;
        let spec = job.spec.towers.clone();
        if dims.input() == 0 {
            return Err(ModelError::Config("the model has no input features".into()));
        }
        if !(0.0..1.0).contains(&spec.dropout) {
            return Err(ModelError::Config(format!(
                "towers.dropout = {} must be in [0, 1)",
                spec.dropout
            )));
        }
        let fm = match spec.kind {
            TowerKind::Deepfm | TowerKind::DeepFwfm => match dims.fields.first() {
                Some(&k) if k > 0 && dims.fields.iter().all(|&d| d == k) => {
                    if spec.kind == TowerKind::DeepFwfm && dims.fields.len() < 2 {
                        return Err(ModelError::Config(
                            "deep-fwfm needs at least two embedding fields".into(),
                        ));
                    }
                    Some((dims.fields.len(), k))
                }
                _ => {
                    return Err(ModelError::Config(format!(
                        "{} needs embedding fields of one width; got {:?}",
                        if spec.kind == TowerKind::Deepfm {
                            "deepfm"
                        } else {
                            "deep-fwfm"
                        },
                        dims.fields
                    )));
                }
            },
            _ => None,
        };
        let funnel = &job.funnel;
        if funnel.targets().next().is_none() {
            return Err(ModelError::Config(
                "the funnel has no labelled stage".into(),
            ));
        }
        let nodes = funnel::stage_nodes(funnel);
        let mut layout = ParamLayout::new();
        let mut towers = Vec::with_capacity(funnel.tower_count());
        for s in &funnel.stages {
            let names = match s.branch_on {
                None => vec![s.name.clone()],
                Some(b) => {
                    let b = &funnel.stages[b].name;
                    vec![format!("{}|{b}", s.name), format!("{}|~{b}", s.name)]
                }
            };
            for name in names {
                let pairs = fm.map_or(0, |(f, _)| f * (f - 1) / 2);
                towers.push(TowerPlan::build(
                    &mut layout,
                    &name,
                    &spec,
                    dims.input(),
                    pairs,
                ));
            }
        }
        let params = layout.init(seed);
        let optim = DenseOptim::new(&job.spec.optimizer, layout.len());
        Ok(Self {
            stage_names: funnel.stages.iter().map(|s| s.name.clone()).collect(),
            targets: funnel.targets().map(|(i, _)| i).collect(),
            nodes,
            towers,
            tower_spec: spec,
            fm,
            dims,
            layout,
            params,
            optim,
            seed,
            steps: 0,
            backend,
            train_device,
            eval_device,
        })
    }

    /// The backend the model computes on.
    pub fn backend(&self) -> ComputeBackend {
        self.backend
    }

    /// The input widths.
    pub fn dims(&self) -> &InputDims {
        &self.dims
    }

    /// Stage names, in funnel order (the order of [`Self::forward`]'s output).
    pub fn stage_names(&self) -> &[String] {
        &self.stage_names
    }

    /// Tower names, in tower order (`stage`, or `stage|branch`, `stage|~branch`).
    pub fn tower_names(&self) -> Vec<&str> {
        self.towers.iter().map(|t| t.name.as_str()).collect()
    }

    /// Stage index of each training target, in `ResolvedFunnel::targets()` order.
    pub fn target_stages(&self) -> &[usize] {
        &self.targets
    }

    /// The dense parameter layout (names, shapes, order).
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// The model layout hash peers and checkpoints compare ([`ParamLayout::hash`]).
    pub fn layout_hash(&self) -> u64 {
        self.layout.hash()
    }

    /// The flat dense parameters, in layout order.
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// Each parameter with its name and shape; linear weights are `[out, in]` (PyTorch).
    pub fn named_params(&self) -> impl Iterator<Item = (&str, &[usize], &[f32])> {
        self.layout
            .params()
            .iter()
            .map(|p| (p.name.as_str(), p.shape.as_slice(), &self.params[p.range()]))
    }

    /// Replaces the parameters (e.g. from a checkpoint), in layout order.
    pub fn load_params(&mut self, flat: &[f32]) -> Result<()> {
        check_len("parameters", self.layout.len(), flat.len())?;
        self.params.copy_from_slice(flat);
        Ok(())
    }

    /// Training steps run so far (the dropout stream's position; checkpointed).
    pub fn train_steps(&self) -> u64 {
        self.steps
    }

    /// Restores the training-step count from a checkpoint, so dropout masks continue exactly.
    pub fn set_train_steps(&mut self, steps: u64) {
        self.steps = steps;
    }

    /// The dense optimizer (state for checkpoints).
    pub fn optimizer(&self) -> &DenseOptim {
        &self.optim
    }

    /// The dense optimizer, to restore its state or change its learning rate.
    pub fn optimizer_mut(&mut self) -> &mut DenseOptim {
        &mut self.optim
    }

    /// Applies one optimizer step with a flat gradient in layout order: this worker's, or the
    /// all-reduced mean over the ring.
    pub fn apply_dense_update(&mut self, flat_grads: &[f32]) -> Result<()> {
        check_len("dense gradient", self.layout.len(), flat_grads.len())?;
        self.optim.step(&mut self.params, flat_grads);
        Ok(())
    }
}

fn check_len(what: &str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(ModelError::Shape {
            what: what.to_string(),
            expected,
            got,
        })
    }
}
