//! Forward (prediction) and the training step: host slices in, burn graph, host slices out.

use super::funnel::{bce, stage_log_probs};
use super::tower::{Dropout, field_pair_dots, fm_interaction};
use super::{FunnelModel, ModelError, Result, check_len};
use crate::rng::SplitMix64;
use crate::spec::TowerKind;
use burn::tensor::{Device, Tensor, TensorData};

/// What one training step returns. Gradients are of the batch-mean loss; to all-reduce across
/// workers with different batch sizes, scale by `rows` before summing (DESIGN §5).
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutput {
    /// Rows in the batch.
    pub rows: usize,
    /// `sum_k weight_k * task_losses[k]`.
    pub loss: f32,
    /// Unweighted mean BCE per target, in `ResolvedFunnel::targets()` order.
    pub task_losses: Vec<f32>,
    /// d loss / d embedding input, `[rows, emb_dim]` row-major: for the row-sparse update.
    pub emb_grad: Vec<f32>,
    /// d loss / d dense parameters, flat in layout order (zeros for unused parameters).
    pub dense_grad: Vec<f32>,
}

/// Which inputs of a graph are autodiff leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Track {
    /// None: prediction.
    None,
    /// The embedding input only: gradients at the shared layer.
    EmbOnly,
    /// Parameters and the embedding input: training.
    All,
}

/// Stream id of the dropout masks, so they do not share a stream with initialisation.
const DROPOUT_STREAM: u64 = 0xD50F_0A7E;

/// The graph of one batch: parameter leaves, the embedding leaf and the tower logits.
struct Graph {
    params: Vec<Tensor<2>>,
    emb: Option<Tensor<2>>,
    /// Per tower, `[rows, 1]`.
    logits: Vec<Tensor<2>>,
}

impl FunnelModel {
    /// Rows in a batch given as `emb` `[rows, emb_dim]` and `numeric` `[rows, numeric]`.
    fn rows_of(&self, emb: &[f32], numeric: &[f32]) -> Result<usize> {
        let (e, n) = (self.dims.emb(), self.dims.numeric);
        // new() guarantees e + n > 0.
        let rows = (emb.len().checked_div(e))
            .or_else(|| numeric.len().checked_div(n))
            .unwrap_or(0);
        check_len("embedding input", rows * e, emb.len())?;
        check_len("numeric input", rows * n, numeric.len())?;
        if rows == 0 {
            return Err(ModelError::Config("empty batch".into()));
        }
        Ok(rows)
    }

    /// Builds the towers' graph on `device`; `track` says which inputs are `require_grad`
    /// leaves.
    fn graph(
        &self,
        device: &Device,
        emb: &[f32],
        numeric: &[f32],
        rows: usize,
        track: Track,
        dropout: &mut Option<Dropout>,
    ) -> Graph {
        let leaf = |data: Vec<f32>, shape: [usize; 2], tracked: bool| {
            let t = Tensor::<2>::from_data(TensorData::new(data, shape), device);
            if tracked { t.require_grad() } else { t }
        };
        // Every parameter as a 2-D tensor; a bias `[out]` becomes `[1, out]` to broadcast.
        let params: Vec<Tensor<2>> = self
            .layout
            .params()
            .iter()
            .map(|p| {
                let shape = match p.shape[..] {
                    [n] => [1, n],
                    [o, i] => [o, i],
                    _ => unreachable!("parameters are 1-D or 2-D"),
                };
                leaf(self.params[p.range()].to_vec(), shape, track == Track::All)
            })
            .collect();
        let (e, n) = (self.dims.emb(), self.dims.numeric);
        let emb = (e > 0).then(|| leaf(emb.to_vec(), [rows, e], track != Track::None)); // [rows, emb]
        let num = (n > 0)
            .then(|| Tensor::<2>::from_data(TensorData::new(numeric.to_vec(), [rows, n]), device)); // [rows, numeric], a constant
        let x = match (&emb, num) {
            (Some(e), Some(n)) => Tensor::cat(vec![e.clone(), n], 1),
            (Some(e), None) => e.clone(),
            (None, Some(n)) => n,
            (None, None) => unreachable!("checked in new()"),
        }; // [rows, in]
        let fm = match (self.fm, &emb) {
            (Some((fields, k)), Some(e)) if self.tower_spec.kind == TowerKind::DeepFwfm => {
                Some(field_pair_dots(e.clone(), fields, k, device)) // [rows, pairs]
            }
            (Some((fields, k)), Some(e)) => Some(fm_interaction(e.clone(), fields, k)), // [rows, 1]
            _ => None,
        };
        let logits = self
            .towers
            .iter()
            .map(|t| t.forward(&params, x.clone(), fm.as_ref(), dropout))
            .collect();
        Graph {
            params,
            emb,
            logits,
        }
    }

    /// Each tower's logit, `[towers][rows]` (no dropout, no autodiff).
    pub fn tower_logits(&self, emb: &[f32], numeric: &[f32]) -> Result<Vec<Vec<f32>>> {
        let rows = self.rows_of(emb, numeric)?;
        let g = self.graph(
            &self.eval_device,
            emb,
            numeric,
            rows,
            Track::None,
            &mut None,
        );
        columns(g.logits, rows)
    }

    /// Every stage's probability P(stage), `[stages][rows]` in funnel order (no dropout, no
    /// autodiff): for prediction and metrics.
    pub fn forward(&self, emb: &[f32], numeric: &[f32]) -> Result<Vec<Vec<f32>>> {
        let rows = self.rows_of(emb, numeric)?;
        let g = self.graph(
            &self.eval_device,
            emb,
            numeric,
            rows,
            Track::None,
            &mut None,
        );
        let lp = stage_log_probs(&self.nodes, &g.logits);
        // log P can round a few ulps above 0 where P ~ 1: clamp so consumers see P <= 1.
        let probs = lp.log_p.into_iter().map(|l| l.clamp_max(0.0).exp());
        columns(probs.collect(), rows)
    }

    /// Forward and backward on one batch. `labels` is `[targets][rows]` (0/1) and `weights`
    /// `[targets]`, both in `ResolvedFunnel::targets()` order. Parameters are not changed:
    /// pass `dense_grad` (or its all-reduced mean) to [`Self::apply_dense_update`].
    pub fn train_step(
        &mut self,
        emb: &[f32],
        numeric: &[f32],
        labels: &[Vec<u8>],
        weights: &[f32],
    ) -> Result<StepOutput> {
        let rows = self.rows_of(emb, numeric)?;
        check_len("label columns", self.targets.len(), labels.len())?;
        check_len("task weights", self.targets.len(), weights.len())?;
        for (k, col) in labels.iter().enumerate() {
            check_len(&format!("labels of target {k}"), rows, col.len())?;
            if let Some((row, &value)) = col.iter().enumerate().find(|(_, v)| **v > 1) {
                return Err(ModelError::Label {
                    target: k,
                    row,
                    value,
                });
            }
        }
        let device = self.train_device.clone();
        let mut dropout = (self.tower_spec.dropout > 0.0).then(|| Dropout {
            p: self.tower_spec.dropout,
            rng: SplitMix64::derive(self.seed ^ DROPOUT_STREAM, self.steps),
            device: device.clone(),
        });
        self.steps += 1;
        let g = self.graph(&device, emb, numeric, rows, Track::All, &mut dropout);
        let lp = stage_log_probs(&self.nodes, &g.logits);
        let mut task = Vec::with_capacity(self.targets.len());
        for (&stage, col) in self.targets.iter().zip(labels) {
            let y: Vec<f32> = col.iter().map(|&v| f32::from(v)).collect();
            let y = Tensor::<2>::from_data(TensorData::new(y, [rows, 1]), &device);
            task.push(bce(lp.log_p[stage].clone(), lp.log_not_p[stage].clone(), y)); // [1]
        }
        let total = task
            .iter()
            .zip(weights)
            .map(|(l, &w)| l.clone().mul_scalar(w))
            .reduce(|a, b| a + b)
            .ok_or_else(|| ModelError::Config("the funnel has no labelled stage".into()))?;
        // One read-back: [total, task_0, task_1, ...].
        let mut values = Tensor::cat(vec![total.clone()].into_iter().chain(task).collect(), 0)
            .detach()
            .try_into_vec_as::<f32>()
            .map_err(|e| ModelError::Read(format!("{e:?}")))?;
        let loss = values.remove(0);
        let grads = total.backward();
        let emb_grad = match &g.emb {
            Some(e) => read_grad(e.grad(&grads), rows * self.dims.emb())?,
            None => Vec::new(),
        };
        let mut dense_grad = vec![0.0f32; self.layout.len()];
        for (spec, t) in self.layout.params().iter().zip(&g.params) {
            let grad = read_grad(t.grad(&grads), spec.numel())?;
            dense_grad[spec.range()].copy_from_slice(&grad);
        }
        Ok(StepOutput {
            rows,
            loss,
            task_losses: values,
            emb_grad,
            dense_grad,
        })
    }
}

impl FunnelModel {
    /// GradNorm's statistics for one batch: per target `k`, the squared L2 norm of
    /// `d (weights[k] * L_k) / d emb`, the gradient of the task's weighted batch-mean loss at
    /// the shared layer (the pooled embeddings, `[rows, emb_dim]`). One forward and one
    /// backward per task through the towers only, with no dropout and no parameter gradients;
    /// the model's state (dropout stream included) is unchanged. Zeros without embeddings.
    pub fn task_grad_sq_norms(
        &self,
        emb: &[f32],
        numeric: &[f32],
        labels: &[Vec<u8>],
        weights: &[f32],
    ) -> Result<Vec<f32>> {
        let rows = self.rows_of(emb, numeric)?;
        check_len("label columns", self.targets.len(), labels.len())?;
        check_len("task weights", self.targets.len(), weights.len())?;
        if self.dims.emb() == 0 {
            return Ok(vec![0.0; self.targets.len()]);
        }
        let device = self.train_device.clone();
        let mut out = Vec::with_capacity(self.targets.len());
        for ((&stage, col), &w) in self.targets.iter().zip(labels).zip(weights) {
            check_len("labels", rows, col.len())?;
            let g = self.graph(&device, emb, numeric, rows, Track::EmbOnly, &mut None);
            let lp = stage_log_probs(&self.nodes, &g.logits);
            let y: Vec<f32> = col.iter().map(|&v| f32::from(v.min(1))).collect();
            let y = Tensor::<2>::from_data(TensorData::new(y, [rows, 1]), &device);
            let loss = bce(lp.log_p[stage].clone(), lp.log_not_p[stage].clone(), y).mul_scalar(w); // [1]
            let grads = loss.backward();
            let grad = match &g.emb {
                Some(e) => read_grad(e.grad(&grads), rows * self.dims.emb())?,
                None => Vec::new(),
            };
            out.push(grad.iter().map(|v| v * v).sum());
        }
        Ok(out)
    }
}

/// A leaf's gradient as a row-major `Vec` (zeros when nothing depended on the leaf).
fn read_grad(grad: Option<Tensor<2>>, numel: usize) -> Result<Vec<f32>> {
    let Some(grad) = grad else {
        return Ok(vec![0.0; numel]);
    };
    let v = grad
        .try_into_vec_as::<f32>()
        .map_err(|e| ModelError::Read(format!("{e:?}")))?;
    check_len("gradient", numel, v.len())?;
    Ok(v)
}

/// `[rows, 1]` tensors -> `[tensors][rows]` with one read-back.
fn columns(cols: Vec<Tensor<2>>, rows: usize) -> Result<Vec<Vec<f32>>> {
    let n = cols.len();
    let flat = Tensor::cat(cols, 1) // [rows, n]
        .try_into_vec_as::<f32>()
        .map_err(|e| ModelError::Read(format!("{e:?}")))?;
    Ok((0..n)
        .map(|c| (0..rows).map(|r| flat[r * n + c]).collect())
        .collect())
}
