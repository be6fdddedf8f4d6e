//! An f64 reference for the tests, in plain Rust: the same towers read from the flat buffer by
//! name, the funnel both in probability space (DESIGN §3 literally) and in log space (with
//! Mächler's `log1mexp` with the real `exp_m1`, as DESIGN §3 words it: a different route to
//! `log(1 - P)` than the model's), and the weighted BCE.

use super::FunnelModel;
use super::funnel::StageNode;
use super::tower::{LinearIdx, TowerPlan, field_pairs};

/// `y = W x + b` with `W` `[out, in]` read by the model's layout from `p`, a flat buffer in
/// f64 (the model's own values, or perturbed ones for finite differences).
fn linear(m: &FunnelModel, p: &[f64], l: LinearIdx, x: &[f64]) -> Vec<f64> {
    let w = &m.layout.params()[l.weight];
    let b = &p[m.layout.params()[l.bias].range()];
    let (out, inp) = (w.shape[0], w.shape[1]);
    let w = &p[w.range()];
    (0..out)
        .map(|o| (0..inp).map(|i| w[o * inp + i] * x[i]).sum::<f64>() + b[o])
        .collect()
}

/// One tower's logit for one row `x` (`[in]`); `fm` is the DeepFM term of that row and `dots`
/// its DeepFwFM pair dot products.
fn tower_logit(m: &FunnelModel, p: &[f64], t: &TowerPlan, x: &[f64], fm: f64, dots: &[f64]) -> f64 {
    let mut h = x.to_vec();
    for &c in &t.cross {
        let z = linear(m, p, c, &h);
        h = (0..h.len()).map(|i| x[i] * z[i] + h[i]).collect();
    }
    for &l in &t.hidden {
        h = linear(m, p, l, &h)
            .into_iter()
            .map(|v| v.max(0.0))
            .collect();
    }
    let mut logit = linear(m, p, t.out, &h)[0];
    if let Some(l) = t.first_order {
        logit += linear(m, p, l, x)[0];
        match t.fm_pairs {
            Some(w) => {
                let w = &p[m.layout.params()[w].range()];
                logit += w.iter().zip(dots).map(|(w, d)| w * d).sum::<f64>();
            }
            None => logit += fm,
        }
    }
    logit
}

/// Tower logits of one row, `[towers]`, from its embedding and numeric parts.
pub(super) fn row_logits(m: &FunnelModel, p: &[f64], emb: &[f64], numeric: &[f64]) -> Vec<f64> {
    let x: Vec<f64> = emb.iter().chain(numeric).copied().collect();
    let fm = match m.fm {
        Some((fields, k)) => (0..k)
            .map(|j| {
                let col = (0..fields).map(|f| emb[f * k + j]);
                let s: f64 = col.clone().sum();
                0.5 * (s * s - col.map(|v| v * v).sum::<f64>())
            })
            .sum(),
        None => 0.0,
    };
    let dots: Vec<f64> = match m.fm {
        Some((fields, k)) => field_pairs(fields)
            .map(|(f, g)| (0..k).map(|j| emb[f * k + j] * emb[g * k + j]).sum())
            .collect(),
        None => Vec::new(),
    };
    m.towers
        .iter()
        .map(|t| tower_logit(m, p, t, &x, fm, &dots))
        .collect()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// P(stage) per DESIGN §3, in probability space: `[stages]` from one row's tower logits.
pub(super) fn stage_probs(nodes: &[StageNode], logits: &[f64]) -> Vec<f64> {
    let mut cond = vec![0.0; nodes.len()]; // P(stage | given)
    let mut p = vec![0.0; nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        cond[i] = match (n.branch_on, n.towers.1) {
            (Some(b), Some(t_not)) => {
                let t_on = sigmoid(logits[n.towers.0]);
                cond[b] * t_on + (1.0 - cond[b]) * sigmoid(logits[t_not])
            }
            _ => sigmoid(logits[n.towers.0]),
        };
        p[i] = n.given.map_or(1.0, |g| p[g]) * cond[i];
    }
    p
}

fn log_sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        -(-x).exp().ln_1p()
    } else {
        x - x.exp().ln_1p()
    }
}

/// `log(1 - exp(x))`, Mächler's two branches with the real `expm1`.
pub(super) fn log1mexp(x: f64) -> f64 {
    if x > -std::f64::consts::LN_2 {
        (-x.exp_m1()).ln()
    } else {
        (-x.exp()).ln_1p()
    }
}

/// (log P, log (1 - P)) per stage, in log space, from one row's tower logits.
pub(super) fn stage_log_probs(nodes: &[StageNode], logits: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (mut c, mut cn) = (vec![0.0; nodes.len()], vec![0.0; nodes.len()]);
    let (mut lp, mut lnp) = (vec![0.0; nodes.len()], vec![0.0; nodes.len()]);
    for (i, n) in nodes.iter().enumerate() {
        let l = logits[n.towers.0];
        (c[i], cn[i]) = match (n.branch_on, n.towers.1) {
            (Some(b), Some(t_not)) => {
                let on = c[b] + log_sigmoid(l);
                let off = cn[b] + log_sigmoid(logits[t_not]);
                let (hi, lo) = (on.max(off), on.min(off));
                let ci = hi + (lo - hi).exp().ln_1p();
                (ci, log1mexp(ci))
            }
            _ => (log_sigmoid(l), log_sigmoid(-l)),
        };
        (lp[i], lnp[i]) = match n.given {
            None => (c[i], cn[i]),
            Some(g) => (lp[g] + c[i], log1mexp(lp[g] + c[i])),
        };
    }
    (lp, lnp)
}

/// Per-target mean BCE over rows, in probability space (as a user would write it).
pub(super) fn task_losses(
    m: &FunnelModel,
    p: &[f64],
    emb: &[f64],
    numeric: &[f64],
    labels: &[Vec<u8>],
) -> Vec<f64> {
    let (e, n) = (m.dims.emb(), m.dims.numeric);
    let rows = labels[0].len();
    let mut sums = vec![0.0; labels.len()];
    for r in 0..rows {
        let logits = row_logits(m, p, &emb[r * e..(r + 1) * e], &numeric[r * n..(r + 1) * n]);
        let probs = stage_probs(&m.nodes, &logits);
        for (k, &stage) in m.targets.iter().enumerate() {
            let pk = probs[stage];
            sums[k] -= if labels[k][r] == 1 {
                pk.ln()
            } else {
                (1.0 - pk).ln()
            };
        }
    }
    sums.into_iter().map(|s| s / rows as f64).collect()
}

/// The weighted total loss.
pub(super) fn total_loss(
    m: &FunnelModel,
    p: &[f64],
    emb: &[f64],
    numeric: &[f64],
    labels: &[Vec<u8>],
    weights: &[f32],
) -> f64 {
    let tasks = task_losses(m, p, emb, numeric, labels);
    tasks
        .iter()
        .zip(weights)
        .map(|(l, &w)| l * f64::from(w))
        .sum()
}
