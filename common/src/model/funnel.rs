//! The funnel in log space (DESIGN §3): stage log-probabilities from tower logits, and the
//! weighted BCE per labelled stage. Works for any resolved funnel, parents before children.
//!
//! Everything stays a sum of log-sigmoids so that deep funnels are finite at p = 1e-12 and at
//! p = 1 - 1e-12 in f32: probabilities are never formed and then subtracted from 1, and
//! `log(1 - P)` is carried alongside `log P` rather than recovered from it (see
//! [`stage_log_probs`]; DESIGN §3 says "log1mexp": this is more precise, see the note there).

use crate::spec::ResolvedFunnel;
use burn::tensor::activation::log_sigmoid;
use burn::tensor::{Bool, Tensor};

/// Where a stage's towers sit among the model's towers, and how it conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StageNode {
    /// Conditioning stage; `None` is the impression.
    pub given: Option<usize>,
    /// Sibling whose outcome selects between `towers.0` (it happened) and `towers.1` (it did not).
    pub branch_on: Option<usize>,
    /// Tower indices: `(t, None)`, or `(t|b, Some(t|~b))` for a branching stage.
    pub towers: (usize, Option<usize>),
}

/// Numbers towers in stage order: one per stage, two (`|b` then `|~b`) for a branching stage.
pub(crate) fn stage_nodes(funnel: &ResolvedFunnel) -> Vec<StageNode> {
    let mut next = 0;
    funnel
        .stages
        .iter()
        .map(|s| {
            let first = next;
            next += 1;
            let second = s.branch_on.map(|_| {
                next += 1;
                next - 1
            });
            StageNode {
                given: s.given,
                branch_on: s.branch_on,
                towers: (first, second),
            }
        })
        .collect()
}

/// Per stage: `log P(stage)` and `log (1 - P(stage))`, each `[batch, 1]`.
pub(crate) struct StageLogProbs {
    pub log_p: Vec<Tensor<2>>,
    pub log_not_p: Vec<Tensor<2>>,
}

/// Stage log-probabilities from tower logits (`logits[t]`: `[batch, 1]`).
///
/// With `c_i = log P(i | given_i)`, `n_i = log (1 - P(i | given_i))` and `ls = logsigmoid`:
/// - a plain stage: `c = ls(l)`, `n = ls(-l)`;
/// - a stage branching on `b`: `P(i|g) = P(b|g) t_i|b + (1 - P(b|g)) t_i|~b`, so
///   `c = lse(c_b + ls(l_i|b), n_b + ls(l_i|~b))` and, as its complement is the same mixture
///   of the towers' complements, `n = lse(c_b + ls(-l_i|b), n_b + ls(-l_i|~b))`;
/// - `log P(i) = log P(g) + c_i` and, from `1 - P(g) P(i|g) = (1 - P(g)) + P(g) (1 - P(i|g))`,
///   `log (1 - P(i)) = lse(log (1 - P(g)), log P(g) + n_i)`.
///
/// Every `log (1 - P)` is a log-sum of positive terms, so it is precise to f32's relative
/// precision even where `P = 1 - 1e-12` is built from terms near 1, where
/// `log1mexp(log P)` only sees a `log P` whose last 1e-12 has been rounded away (the tests
/// have such a case: ESM²-style `order` with `t_fav = σ(-10)`, `t_order = 1 - 1e-12`).
pub(crate) fn stage_log_probs(nodes: &[StageNode], logits: &[Tensor<2>]) -> StageLogProbs {
    let mut cond: Vec<Tensor<2>> = Vec::with_capacity(nodes.len());
    let mut cond_not: Vec<Tensor<2>> = Vec::with_capacity(nodes.len());
    let mut log_p: Vec<Tensor<2>> = Vec::with_capacity(nodes.len());
    let mut log_not_p: Vec<Tensor<2>> = Vec::with_capacity(nodes.len());
    for node in nodes {
        let l = logits[node.towers.0].clone();
        let (c, n) = match (node.branch_on, node.towers.1) {
            (Some(b), Some(t_not)) => {
                let l_not = logits[t_not].clone();
                let (cb, nb) = (cond[b].clone(), cond_not[b].clone());
                let c = logsumexp2(
                    cb.clone() + log_sigmoid(l.clone()),
                    nb.clone() + log_sigmoid(l_not.clone()),
                );
                let n = logsumexp2(cb + log_sigmoid(l.neg()), nb + log_sigmoid(l_not.neg()));
                (c, n)
            }
            _ => (log_sigmoid(l.clone()), log_sigmoid(l.neg())),
        };
        let (lp, lnp) = match node.given {
            None => (c.clone(), n.clone()),
            Some(g) => (
                log_p[g].clone() + c.clone(),
                logsumexp2(log_not_p[g].clone(), log_p[g].clone() + n.clone()),
            ),
        };
        cond.push(c);
        cond_not.push(n);
        log_p.push(lp);
        log_not_p.push(lnp);
    }
    StageLogProbs { log_p, log_not_p }
}

/// `log(exp(a) + exp(b))`, elementwise, as `max + softplus(min - max)` written with
/// `log_sigmoid` (`softplus(-d) = -log_sigmoid(d)`): stable for any gap, precise when the
/// smaller term is ~1e-12 of the larger (`exp(a - m) + exp(b - m)` would round it away in f32),
/// and its gradient is exact everywhere, ties included (`max_pair`/`abs` send a tie's gradient
/// to one side). Both orders are finite, so the `mask_where` cannot leak NaN gradients.
pub(crate) fn logsumexp2(a: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
    let a_max = a.clone() - log_sigmoid(a.clone() - b.clone());
    let b_max = b.clone() - log_sigmoid(b.clone() - a.clone());
    let b_larger: Tensor<2, Bool> = b.greater(a);
    a_max.mask_where(b_larger, b_max)
}

/// Mean binary cross-entropy over the batch from log-probabilities: `[batch, 1]` -> `[1]`.
/// `y` is `[batch, 1]` with values 0 or 1.
pub(crate) fn bce(log_p: Tensor<2>, log_not_p: Tensor<2>, y: Tensor<2>) -> Tensor<1> {
    let not_y = y.clone().neg().add_scalar(1.0);
    (y * log_p + not_y * log_not_p).mean().neg()
}
