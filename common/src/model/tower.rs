//! Towers over `x = [pooled embeddings ++ numeric]`, `[batch, in_dim]` -> one logit `[batch, 1]`.
//!
//! - `mlp`: Linear -> ReLU (-> dropout) per hidden width, then Linear -> 1.
//! - `dcn-v2` (Wang et al. 2021, stacked): `cross_layers` full-rank cross layers
//!   `x_{l+1} = x_0 * (W_l x_l + b_l) + x_l`, then the MLP above on `x_L`.
//! - `deepfm` (Guo et al. 2017): the MLP above + a first-order linear term over `x` + the
//!   parameter-free FM interaction of the embedding fields (computed once, shared by towers).
//!
//! Parameters are leaf tensors cut from the flat buffer ([`super::params`]); a tower only holds
//! their indices in the layout.

use super::params::{Init, ParamLayout};
use crate::rng::SplitMix64;
use crate::spec::{TowerKind, TowerSpec};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};

/// Indices of a linear layer's `[out, in]` weight and `[out]` bias in the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LinearIdx {
    pub weight: usize,
    pub bias: usize,
}

/// One tower's structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TowerPlan {
    /// Readable tower name: the stage, or `stage|branch` / `stage|~branch`.
    pub name: String,
    /// DCN-v2 cross layers, each `[in, in]`.
    pub cross: Vec<LinearIdx>,
    /// DeepFM first-order term, `[1, in]`.
    pub first_order: Option<LinearIdx>,
    /// Hidden layers, in order.
    pub hidden: Vec<LinearIdx>,
    /// Output layer, `[1, last hidden]`.
    pub out: LinearIdx,
}

impl TowerPlan {
    /// Appends this tower's parameters to `layout` under `towers.{name}.…`, in forward order.
    pub(crate) fn build(
        layout: &mut ParamLayout,
        name: &str,
        spec: &TowerSpec,
        in_dim: usize,
    ) -> Self {
        let prefix = format!("towers.{name}");
        let linear = |layout: &mut ParamLayout, p: String, i: usize, o: usize| {
            let (weight, bias) = layout.push_linear(&p, i, o);
            LinearIdx { weight, bias }
        };
        let mut cross = Vec::new();
        if spec.kind == TowerKind::DcnV2 {
            for l in 0..spec.cross_layers {
                let p = format!("{prefix}.cross.{l}");
                let bound = 1.0 / (in_dim.max(1) as f32).sqrt();
                let weight = layout.push(
                    format!("{p}.weight"),
                    vec![in_dim, in_dim],
                    Init::Uniform(bound),
                );
                // Zero bias: at init each cross layer adds x_0 * (W x_l), nothing constant.
                let bias = layout.push(format!("{p}.bias"), vec![in_dim], Init::Zeros);
                cross.push(LinearIdx { weight, bias });
            }
        }
        let first_order = (spec.kind == TowerKind::Deepfm)
            .then(|| linear(layout, format!("{prefix}.first_order"), in_dim, 1));
        let mut hidden = Vec::new();
        let mut width = in_dim;
        for (i, &h) in spec.hidden.iter().enumerate() {
            hidden.push(linear(layout, format!("{prefix}.layers.{i}"), width, h));
            width = h;
        }
        let out = linear(layout, format!("{prefix}.out"), width, 1);
        Self {
            name: name.to_string(),
            cross,
            first_order,
            hidden,
            out,
        }
    }

    /// The tower's logit, `[batch, 1]`. `p[i]` is the tensor of layout parameter `i`;
    /// `fm` is the shared FM term `[batch, 1]` (DeepFM only).
    pub(crate) fn forward(
        &self,
        p: &[Tensor<2>],
        x: Tensor<2>,
        fm: Option<&Tensor<2>>,
        dropout: &mut Option<Dropout>,
    ) -> Tensor<2> {
        let mut h = x.clone();
        for c in &self.cross {
            h = x.clone() * apply(p, *c, h.clone()) + h; // [batch, in]
        }
        for l in &self.hidden {
            h = relu(apply(p, *l, h)); // [batch, width]
            if let Some(d) = dropout.as_mut() {
                h = d.apply(h);
            }
        }
        let mut logit = apply(p, self.out, h); // [batch, 1]
        if let Some(l) = self.first_order {
            logit = logit + apply(p, l, x);
        }
        if let Some(fm) = fm {
            logit = logit + fm.clone();
        }
        logit
    }
}

/// `x W^T + b` with `W` stored `[out, in]` and the bias kept `[1, out]` (see
/// [`super::FunnelModel`]): `[batch, in]` -> `[batch, out]`. The transpose is a strided view;
/// gemm reads it without a copy.
fn apply(p: &[Tensor<2>], l: LinearIdx, x: Tensor<2>) -> Tensor<2> {
    x.matmul(p[l.weight].clone().transpose()) + p[l.bias].clone()
}

/// The FM second-order term over `fields` equal-width embeddings `emb` `[batch, fields * k]`:
/// `0.5 * sum_k[(sum_f v_fk)^2 - sum_f v_fk^2]` -> `[batch, 1]`.
pub(crate) fn fm_interaction(emb: Tensor<2>, fields: usize, k: usize) -> Tensor<2> {
    let [batch, _] = emb.dims();
    let v: Tensor<3> = emb.reshape([batch, fields, k]);
    let sum_sq = v.clone().sum_dim(1).square(); // [batch, 1, k]
    let sq_sum = v.square().sum_dim(1); // [batch, 1, k]
    (sum_sq - sq_sum)
        .sum_dim(2)
        .reshape([batch, 1])
        .mul_scalar(0.5)
}

/// Inverted dropout with host-drawn masks, so a step's masks depend only on (seed, step).
pub(crate) struct Dropout {
    pub p: f32,
    pub rng: SplitMix64,
    pub device: Device,
}

impl Dropout {
    fn apply(&mut self, h: Tensor<2>) -> Tensor<2> {
        let [batch, width] = h.dims();
        let keep = 1.0 - self.p;
        let scale = 1.0 / keep;
        let mask: Vec<f32> = (0..batch * width)
            .map(|_| {
                if self.rng.next_f64() < f64::from(keep) {
                    scale
                } else {
                    0.0
                }
            })
            .collect();
        h * Tensor::from_data(TensorData::new(mask, [batch, width]), &self.device)
    }
}
