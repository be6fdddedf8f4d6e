//! What a checkpoint holds (DESIGN §7) and how a [`Trainer`] is saved to and restored from it:
//!
//! - `model.safetensors`: `towers.<tower>.<layer>.{weight,bias}` (`[out, in]`) and
//!   `embeddings.<table>` (`[buckets, dim]`), f32; readable by PyTorch, numpy and serving code.
//! - `optimizer.safetensors`: dense optimizer slots as 1-D tensors `dense.<slot>` in layout
//!   order, sparse optimizer buffers `embeddings.<table>.<buffer>` (`[buckets, dim]`), and the
//!   step counts in the header metadata (`optimizer` key, JSON). Raw f32 bytes restore
//!   bit-exactly; nothing is keyed by per-process ids.
//! - `model.json`: the [`ModelCard`] (enough to serve).
//! - `trainer.json`: [`TrainerState`]: where training stands, task weights, seeds, the metrics
//!   history.

use crate::WorkerError;
use crate::trainer::Trainer;
use bytes::Bytes;
use funnel_common::checkpoint::tensors::{NamedTensor, decode, encode};
use funnel_common::checkpoint::{Checkpoint, ModelCard};
use funnel_common::embedding::{
    EmbeddingOptimizers, EmbeddingSet, EmbeddingTable, OptimizerState, StateBuffer,
};
use funnel_common::model::{FunnelModel, InputDims};
use funnel_common::spec::Job;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Format version of trainer.json.
pub const TRAINER_STATE_FORMAT: u32 = 1;

/// trainer.json: where training stands. A checkpoint is taken at an epoch boundary, so
/// `epochs_done` epochs are complete and the next one starts from its first batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerState {
    /// Format version ([`TRAINER_STATE_FORMAT`]).
    pub format: u32,
    /// Job name.
    pub job: String,
    /// Optimizer steps applied.
    pub step: u64,
    /// Epochs completed.
    pub epochs_done: u64,
    /// Job seed (initialisation, shuffles, epoch plans).
    pub seed: u64,
    /// Training steps the model ran (the dropout stream's position).
    pub model_train_steps: u64,
    /// Hex layout hash of the dense parameters.
    pub layout_hash: String,
    /// Task weights per target, in target order.
    pub weights: Vec<(String, f32)>,
    /// The weighting strategy's state (GradNorm's L(0), epoch losses, UWL's log-variances), so
    /// a resumed run continues the same weight trajectory.
    #[serde(default)]
    pub weighting: funnel_common::weighting::WeightingState,
    /// One `metrics.jsonl` record per completed epoch.
    pub history: Vec<serde_json::Value>,
}

const MODEL: &str = "model.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const CARD: &str = "model.json";
const TRAINER: &str = "trainer.json";

/// Dense slot names per optimizer, PyTorch's.
fn dense_slot_names(kind: funnel_common::spec::DenseOptimizer) -> [&'static str; 2] {
    use funnel_common::spec::DenseOptimizer as D;
    match kind {
        D::Adam => ["exp_avg", "exp_avg_sq"],
        D::Adagrad => ["sum", ""],
        D::Sgd => ["", ""],
    }
}

/// Step counts of the optimizers, stored in optimizer.safetensors' header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OptimizerMeta {
    dense_step: u64,
    /// Per table (table order): optimizer kind and steps.
    sparse: Vec<(String, String, u64)>,
}

impl Trainer {
    /// `state` with this trainer's task weights and weighting state.
    pub fn state_with_weights(&self, state: &TrainerState) -> TrainerState {
        let mut s = state.clone();
        s.weights = self
            .job()
            .funnel
            .targets()
            .map(|(_, st)| st.name.clone())
            .zip(self.weights.iter().copied())
            .collect();
        s.weighting = self.weighting.clone();
        s
    }

    /// The checkpoint files of this trainer, with `state` as trainer.json.
    pub fn checkpoint_files(
        &self,
        state: &TrainerState,
    ) -> Result<Vec<(String, Bytes)>, WorkerError> {
        let err = |e: funnel_common::Error| WorkerError::Data(e);
        let mut model: Vec<NamedTensor> = self
            .model
            .named_params()
            .map(|(name, shape, values)| NamedTensor {
                name: name.to_string(),
                shape: shape.to_vec(),
                values: values.to_vec(),
            })
            .collect();
        model.extend(self.set.tables().iter().map(|t| NamedTensor {
            name: format!("embeddings.{}", t.name()),
            shape: vec![t.rows(), t.dim()],
            values: t.data().to_vec(),
        }));
        let layout_hash = format!("{:016x}", self.model.layout_hash());
        let meta = BTreeMap::from([
            ("format".to_string(), "funnel-model-1".to_string()),
            ("layout_hash".to_string(), layout_hash),
        ]);
        let model_bytes = encode(&model, meta).map_err(err)?;
        drop(model);

        let dense = self.model.optimizer();
        let mut opt = Vec::new();
        let (s0, s1) = dense.slots();
        for (name, slot) in dense_slot_names(dense.kind()).into_iter().zip([s0, s1]) {
            if !slot.is_empty() {
                opt.push(NamedTensor {
                    name: format!("dense.{name}"),
                    shape: vec![slot.len()],
                    values: slot.to_vec(),
                });
            }
        }
        let mut sparse_meta = Vec::new();
        for (t, st) in self.set.tables().iter().zip(self.sparse.export_state()) {
            sparse_meta.push((t.name().to_string(), st.kind.clone(), st.step));
            for b in st.buffers {
                opt.push(NamedTensor {
                    name: format!("embeddings.{}.{}", t.name(), b.name),
                    shape: vec![t.rows(), t.dim()],
                    values: b.data,
                });
            }
        }
        let meta = OptimizerMeta {
            dense_step: dense.step_count(),
            sparse: sparse_meta,
        };
        let meta = BTreeMap::from([(
            "optimizer".to_string(),
            serde_json::to_string(&meta).map_err(|e| WorkerError::Internal(e.to_string()))?,
        )]);
        let opt_bytes = encode(&opt, meta).map_err(err)?;

        let card = ModelCard::new(self.job(), &self.set, &self.model);
        Ok(vec![
            (MODEL.to_string(), model_bytes),
            (OPTIMIZER.to_string(), opt_bytes),
            (CARD.to_string(), to_json(&card)?),
            (
                TRAINER.to_string(),
                to_json(&self.state_with_weights(state))?,
            ),
        ])
    }

    /// The trainer saved in `ckpt`, for `job` (whose model must have the same layout and
    /// tables), and its trainer.json.
    pub fn restore(job: Arc<Job>, ckpt: &Checkpoint) -> Result<(Self, TrainerState), WorkerError> {
        let bad = |message: String| {
            WorkerError::Data(funnel_common::Error::Checkpoint {
                url: ckpt.url.clone(),
                message,
            })
        };
        let state: TrainerState = serde_json::from_slice(ckpt.file(TRAINER)?)
            .map_err(|e| bad(format!("{TRAINER} is unreadable: {e}")))?;
        if state.format != TRAINER_STATE_FORMAT {
            return Err(bad(format!(
                "{TRAINER} format {} is not supported",
                state.format
            )));
        }
        let (mut model, set) = restore_model(&job, ckpt)?;
        let hash = format!("{:016x}", model.layout_hash());
        if state.layout_hash != hash {
            return Err(bad(format!(
                "{TRAINER}: its model layout {} differs from this job's {hash}: the towers, \
                 features or funnel changed since it was written",
                state.layout_hash
            )));
        }

        let opt_bytes = ckpt.file(OPTIMIZER)?;
        let meta = read_optimizer_meta(opt_bytes).map_err(|m| bad(format!("{OPTIMIZER}: {m}")))?;
        let mut opt: BTreeMap<String, Vec<f32>> =
            decode(opt_bytes, &format!("{}/{OPTIMIZER}", ckpt.url))?
                .into_iter()
                .map(|t| (t.name, t.values))
                .collect();
        let mut take = |name: String| {
            opt.remove(&name)
                .ok_or_else(|| bad(format!("{OPTIMIZER} has no tensor `{name}`")))
        };
        let kind = model.optimizer().kind();
        let mut slots = [Vec::new(), Vec::new()];
        for (slot, name) in slots.iter_mut().zip(dense_slot_names(kind)) {
            if !name.is_empty() {
                *slot = take(format!("dense.{name}"))?;
            }
        }
        let [s0, s1] = slots;
        if !model.optimizer_mut().restore(meta.dense_step, s0, s1) {
            return Err(bad(format!(
                "{OPTIMIZER}: the dense {kind:?} state does not fit the model"
            )));
        }
        model.set_train_steps(state.model_train_steps);
        let mut states = Vec::new();
        for (t, (name, kind, step)) in set.tables().iter().zip(&meta.sparse) {
            if name != t.name() {
                return Err(bad(format!(
                    "{OPTIMIZER}: state of table `{name}` where `{}` was expected",
                    t.name()
                )));
            }
            let names: &[&str] = match kind.as_str() {
                "lazy-adam" => &["exp_avg", "exp_avg_sq"],
                "adagrad" => &["sum"],
                _ => &[],
            };
            let buffers = names
                .iter()
                .map(|b| {
                    Ok(StateBuffer {
                        name: b.to_string(),
                        data: take(format!("embeddings.{name}.{b}"))?,
                    })
                })
                .collect::<Result<_, WorkerError>>()?;
            states.push(OptimizerState {
                kind: kind.clone(),
                step: *step,
                buffers,
            });
        }
        let trainer = Trainer::from_parts(job.clone(), set, model, None)?;
        let sparse = EmbeddingOptimizers::restore(&trainer.sparse_config, &trainer.set, states)
            .map_err(|e| bad(format!("{OPTIMIZER}: {e}")))?;
        let mut trainer = trainer;
        trainer.sparse = sparse;
        let weights: Vec<f32> = state.weights.iter().map(|(_, w)| *w).collect();
        if weights.len() != trainer.weights.len() {
            return Err(bad(format!(
                "{TRAINER} has {} task weights; the funnel has {} targets",
                weights.len(),
                trainer.weights.len()
            )));
        }
        trainer.weights = weights;
        if !state.weighting.weights.is_empty() {
            trainer.weighting = state.weighting.clone();
        }
        Ok((trainer, state))
    }
}

/// The towers and embedding tables saved in `ckpt`'s model.safetensors, for `job` (which must
/// have the checkpoint's layout and tables): what prediction needs. Neither the optimizer state
/// nor trainer.json is read.
pub fn restore_model(
    job: &Job,
    ckpt: &Checkpoint,
) -> Result<(FunnelModel, EmbeddingSet), WorkerError> {
    let bad = |message: String| {
        WorkerError::Data(funnel_common::Error::Checkpoint {
            url: ckpt.url.clone(),
            message,
        })
    };
    let mut model = FunnelModel::with_backend(
        job,
        InputDims::from_job(job),
        job.spec.train.seed,
        job.spec.train.backend,
    )
    .map_err(|e| WorkerError::Data(e.into()))?;
    let bytes = ckpt.file(MODEL)?;
    let hash = format!("{:016x}", model.layout_hash());
    // The layout hash in the header (always written) gives the clearest message for a job that
    // changed; without it, the tensor names and shapes below still have to match.
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| bad(format!("{MODEL} is not safetensors: {e}")))?;
    let stored = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("layout_hash"));
    if let Some(stored) = stored.filter(|s| **s != hash) {
        return Err(bad(format!(
            "its model layout {stored} differs from this job's {hash}: the towers, features \
             or funnel changed since it was written"
        )));
    }
    let mut tensors: BTreeMap<String, NamedTensor> =
        decode(bytes, &format!("{}/{MODEL}", ckpt.url))?
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
    let mut flat = Vec::with_capacity(model.layout().len());
    for p in model.layout().params() {
        let t = tensors
            .remove(&p.name)
            .ok_or_else(|| bad(format!("{MODEL} has no tensor `{}`", p.name)))?;
        if t.shape != p.shape {
            return Err(bad(format!(
                "{MODEL}: `{}` has shape {:?}, the model needs {:?}",
                p.name, t.shape, p.shape
            )));
        }
        flat.extend_from_slice(&t.values);
    }
    model
        .load_params(&flat)
        .map_err(|e| WorkerError::Data(e.into()))?;
    let mut tables = Vec::new();
    for (name, t) in tensors {
        let Some(table) = name.strip_prefix("embeddings.") else {
            return Err(bad(format!("{MODEL} has an unexpected tensor `{name}`")));
        };
        let [rows, dim] = t.shape[..] else {
            return Err(bad(format!("{MODEL}: `{name}` is not 2-D")));
        };
        tables.push(
            EmbeddingTable::from_data(table, rows, dim, t.values)
                .map_err(|e| bad(e.to_string()))?,
        );
    }
    let set = EmbeddingSet::from_tables(&job.spec.features, tables)
        .map_err(|e| bad(format!("{MODEL}: {e}")))?;
    Ok((model, set))
}

fn read_optimizer_meta(bytes: &[u8]) -> Result<OptimizerMeta, String> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    let text = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("optimizer"))
        .ok_or("no `optimizer` entry in the header metadata")?;
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// Pretty JSON bytes of a checkpoint file.
fn to_json<T: Serialize>(value: &T) -> Result<Bytes, WorkerError> {
    serde_json::to_vec_pretty(value)
        .map(Bytes::from)
        .map_err(|e| WorkerError::Internal(e.to_string()))
}
