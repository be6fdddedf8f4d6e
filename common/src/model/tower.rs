//! Towers over `x = [pooled embeddings ++ numeric]`, `[batch, in_dim]` -> one logit `[batch, 1]`.
//!
//! - `mlp`: Linear -> ReLU (-> dropout) per hidden width, then Linear -> 1.
//! - `dcn-v2` (Wang et al. 2021, stacked): `cross_layers` full-rank cross layers
//!   `x_{l+1} = x_0 * (W_l x_l + b_l) + x_l`, then the MLP above on `x_L`.
//! - `deepfm` (Guo et al. 2017): the MLP above + a first-order linear term over `x` + the
//!   parameter-free FM interaction of the embedding fields (computed once, shared by towers).
//! - `deep-fwfm` (DeepFM with Pan et al. 2018's field-weighted FM): as `deepfm`, but each tower
//!   weighs the dot product of every pair of embedding fields with its own learned weight
//!   (`fm_pairs`, `[1, pairs]`, initialised to 1, i.e. to DeepFM's FM): towers whose stage
//!   depends on different interactions (user x item for click, none for pay) are not forced to
//!   share one FM term. The pair dot products are computed once and shared.
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
    /// DeepFwFM pair weights, `[1, pairs]`.
    pub fm_pairs: Option<usize>,
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
        pairs: usize,
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
        let fm_kind = matches!(spec.kind, TowerKind::Deepfm | TowerKind::DeepFwfm);
        let first_order =
            fm_kind.then(|| linear(layout, format!("{prefix}.first_order"), in_dim, 1));
        let fm_pairs = (spec.kind == TowerKind::DeepFwfm).then(|| {
            layout.push(
                format!("{prefix}.fm_pairs.weight"),
                vec![1, pairs],
                Init::Constant(1.0),
            )
        });
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
            fm_pairs,
            hidden,
            out,
        }
    }

    /// The tower's logit, `[batch, 1]`. `p[i]` is the tensor of layout parameter `i`;
    /// `fm` is the shared FM term `[batch, 1]` (DeepFM) or the pair dot products
    /// `[batch, pairs]` (DeepFwFM).
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
        match (fm, self.fm_pairs) {
            (Some(dots), Some(w)) => logit = logit + dots.clone().matmul(p[w].clone().transpose()),
            (Some(fm), None) => logit = logit + fm.clone(),
            _ => {}
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

/// The pairs `(f, g)`, `f < g`, of `fields` fields, in the order of DeepFwFM's `fm_pairs`.
pub(crate) fn field_pairs(fields: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..fields).flat_map(move |f| (f + 1..fields).map(move |g| (f, g)))
}

/// The dot products of every pair of `fields` equal-width embeddings `emb` `[batch, fields * k]`,
/// `[batch, pairs]` in [`field_pairs`] order: the Gram matrix `[batch, fields, fields]` by one
/// batched matmul, then its upper triangle picked by a constant 0/1 matrix.
pub(crate) fn field_pair_dots(
    emb: Tensor<2>,
    fields: usize,
    k: usize,
    device: &Device,
) -> Tensor<2> {
    let [batch, _] = emb.dims();
    let v: Tensor<3> = emb.reshape([batch, fields, k]);
    let gram = v.clone().matmul(v.swap_dims(1, 2)); // [batch, fields, fields]
    let pairs = fields * (fields - 1) / 2;
    let mut pick = vec![0.0f32; fields * fields * pairs];
    for (p, (f, g)) in field_pairs(fields).enumerate() {
        pick[(f * fields + g) * pairs + p] = 1.0;
    }
    let pick = Tensor::<2>::from_data(TensorData::new(pick, [fields * fields, pairs]), device);
    gram.reshape([batch, fields * fields]).matmul(pick) // [batch, pairs]
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
