//! Exact evaluation metrics: ROC AUC with averaged ties, log loss and calibration, as plain
//! functions over slices and as accumulators that merge across batches and workers without
//! approximation ([`TargetMetrics`] per labelled stage, [`FunnelMetrics`] per funnel, with
//! conditional metrics such as ESMM's CVR AUC over clicked rows).
//!
//! Semantics shared by every function and accumulator here:
//! - A label counts as positive when it is non-zero.
//! - AUC is the Mann-Whitney statistic: the share of (positive, negative) pairs ordered right,
//!   tied scores counting one half (average ranks), as scikit-learn's `roc_auc_score`. It is
//!   undefined (`None`, never NaN and never a substituted 0.5) without both classes.
//! - Log loss is the mean binary cross-entropy with predictions clipped to
//!   [1e-15, 1 - 1e-15] (scikit-learn 1.9 clips to f64's machine epsilon instead; the two
//!   agree for every prediction inside [1e-15, 1 - 1e-15]).
//! - Calibration is mean prediction / mean label = sum of predictions / positives (1 is
//!   calibrated, above 1 over-predicts); undefined without positives.
//! - Sums are correctly rounded (Shewchuk's algorithm, as Python's `math.fsum`), so a result
//!   depends only on the multiset of (score, label) rows: never on batching, batches without
//!   positives, merge order or which worker saw which row.
//!
//! The accumulators keep every row (exact AUC needs the joint order of all scores), 9 bytes
//! each; a peer's rows travel as [`TargetMetrics::scores`] and [`TargetMetrics::labels`] and come
//! back through [`TargetMetrics::from_parts`]. Checked against scikit-learn by
//! `common/tests/metrics_fixture.rs` and `tests/python/test_metrics_sklearn.py`.

mod exact_sum;
mod funnel;
mod target;

pub use funnel::{ConditionalReport, FunnelMetrics, FunnelReport, StageReport};
pub use target::{TargetMetrics, TargetSummary};

use exact_sum::exact_sum;

/// Clipping bound of log loss: predictions are clipped to [`LOGLOSS_EPS`, 1 - `LOGLOSS_EPS`].
pub const LOGLOSS_EPS: f64 = 1e-15;

/// Errors of the metric accumulators: caller bugs or a peer's malformed partial metrics.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    /// Arrays that must describe the same rows differ in length.
    #[error("metrics: {what} has {got} rows, expected {expected}")]
    Rows {
        /// Which array (`predictions of target click`).
        what: String,
        /// Rows expected.
        expected: usize,
        /// Rows found.
        got: usize,
    },
    /// The number of per-target (or per-conditional) arrays does not match the layout.
    #[error("metrics: {what}: got {got} arrays, expected {expected}")]
    Arrays {
        /// Which list (`predictions`, `labels`, `conditional scores`).
        what: &'static str,
        /// Arrays expected.
        expected: usize,
        /// Arrays found.
        got: usize,
    },
    /// A target or conditional name is used twice.
    #[error("metrics: `{0}` is declared twice")]
    Duplicate(String),
    /// A name that is not a declared target.
    #[error("metrics: no target `{0}`")]
    UnknownTarget(String),
    /// Two accumulators with different targets or conditionals cannot merge.
    #[error("metrics: cannot merge {theirs} into {ours}")]
    Layout {
        /// This accumulator's layout.
        ours: String,
        /// The other one's.
        theirs: String,
    },
}

/// Binary cross-entropy of one row, with the prediction clipped (see [`LOGLOSS_EPS`]).
fn bce(p: f64, label: u8) -> f64 {
    let p = p.clamp(LOGLOSS_EPS, 1.0 - LOGLOSS_EPS);
    if label != 0 { -p.ln() } else { -(1.0 - p).ln() }
}

/// Exact ROC AUC (Mann-Whitney U / (positives x negatives)) with tied scores counted as half a
/// win, i.e. average ranks for ties. `None` when there are no positives or no negatives.
/// O(n log n). NaN scores rank above every number (IEEE total order); -0.0 ties with 0.0.
///
/// # Panics
/// If `scores` and `labels` differ in length.
pub fn auc(scores: &[f64], labels: &[u8]) -> Option<f64> {
    assert_eq!(
        scores.len(),
        labels.len(),
        "auc: {} scores but {} labels",
        scores.len(),
        labels.len()
    );
    let positives = labels.iter().filter(|&&l| l != 0).count() as u64;
    let negatives = labels.len() as u64 - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    // `+ 0.0` turns -0.0 into 0.0, so that the total order groups them as equal.
    let mut pairs: Vec<(f64, bool)> = scores
        .iter()
        .zip(labels)
        .map(|(&s, &l)| (s + 0.0, l != 0))
        .collect();
    pairs.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    // For each group of equal scores: every positive beats the negatives below the group and
    // ties (half a win) with the negatives inside it. Twice the wins stays an exact integer.
    let mut twice_wins: u128 = 0;
    let mut negatives_below: u64 = 0;
    let mut i = 0;
    while i < pairs.len() {
        let score = pairs[i].0;
        let (mut pos, mut neg) = (0u64, 0u64);
        while i < pairs.len() && pairs[i].0.total_cmp(&score).is_eq() {
            if pairs[i].1 {
                pos += 1
            } else {
                neg += 1
            }
            i += 1;
        }
        twice_wins += pos as u128 * (2 * negatives_below + neg) as u128;
        negatives_below += neg;
    }
    Some(twice_wins as f64 / (2.0 * positives as f64 * negatives as f64))
}

/// Mean binary cross-entropy, with probabilities clipped to [1e-15, 1 - 1e-15], summed
/// exactly. `None` when empty.
///
/// # Panics
/// If `probs` and `labels` differ in length.
pub fn logloss(probs: &[f64], labels: &[u8]) -> Option<f64> {
    assert_eq!(probs.len(), labels.len(), "logloss: lengths differ");
    if probs.is_empty() {
        return None;
    }
    let sum = exact_sum(probs.iter().zip(labels).map(|(&p, &l)| bce(p, l)));
    Some(sum / probs.len() as f64)
}

/// Calibration: mean prediction / mean label (1 is calibrated, above 1 over-predicts), summed
/// exactly. `None` when there are no positives (or no rows).
///
/// # Panics
/// If `probs` and `labels` differ in length.
pub fn calibration(probs: &[f64], labels: &[u8]) -> Option<f64> {
    assert_eq!(probs.len(), labels.len(), "calibration: lengths differ");
    let positives = labels.iter().filter(|&&l| l != 0).count();
    if positives == 0 {
        return None;
    }
    Some(exact_sum(probs.iter().copied()) / positives as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// O(n^2) reference: mean over (positive, negative) pairs of 1 / 0.5 / 0.
    fn brute_auc(scores: &[f64], labels: &[u8]) -> f64 {
        let (mut wins, mut pairs) = (0.0, 0.0);
        for (i, &si) in scores.iter().enumerate() {
            for (j, &sj) in scores.iter().enumerate() {
                if labels[i] != 0 && labels[j] == 0 {
                    pairs += 1.0;
                    wins += if si > sj {
                        1.0
                    } else if si == sj {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        wins / pairs
    }

    #[test]
    fn auc_of_known_cases() {
        // The classic example: 3 of the 4 (positive, negative) pairs are ordered right.
        assert_eq!(auc(&[0.1, 0.4, 0.35, 0.8], &[0, 0, 1, 1]), Some(0.75));
        assert_eq!(auc(&[0.1, 0.2, 0.3, 0.4], &[0, 0, 1, 1]), Some(1.0));
        assert_eq!(auc(&[0.1, 0.2, 0.3, 0.4], &[1, 1, 0, 0]), Some(0.0));
    }

    #[test]
    fn auc_averages_ties() {
        assert_eq!(auc(&[0.5, 0.5, 0.5, 0.5], &[0, 1, 0, 1]), Some(0.5));
        // Pairs: (0.5 vs 0.1) 1, (0.5 vs 0.5) 1/2, (0.9 vs 0.1) 1, (0.9 vs 0.5) 1 -> 3.5 / 4.
        assert_eq!(auc(&[0.1, 0.5, 0.5, 0.9], &[0, 1, 0, 1]), Some(0.875));
        // -0.0 and 0.0 are one tie.
        assert_eq!(auc(&[-0.0, 0.0], &[1, 0]), Some(0.5));
    }

    #[test]
    fn auc_needs_both_classes() {
        assert_eq!(auc(&[0.2, 0.9], &[1, 1]), None);
        assert_eq!(auc(&[0.2, 0.9], &[0, 0]), None);
        assert_eq!(auc(&[], &[]), None);
    }

    #[test]
    fn auc_matches_brute_force_with_many_ties() {
        let mut rng = SplitMix64::new(11);
        for n in [2usize, 7, 50, 400] {
            let scores: Vec<f64> = (0..n).map(|_| rng.below(10) as f64 / 10.0).collect();
            let labels: Vec<u8> = (0..n).map(|_| rng.bernoulli(0.3) as u8).collect();
            let expected = if labels.iter().all(|&l| l == labels[0]) {
                None
            } else {
                Some(brute_auc(&scores, &labels))
            };
            let got = auc(&scores, &labels);
            assert!(
                match (got, expected) {
                    (Some(a), Some(b)) => close(a, b),
                    (a, b) => a == b,
                },
                "n={n}: {got:?} vs {expected:?}"
            );
        }
    }

    #[test]
    fn logloss_by_hand() {
        let ll = logloss(&[0.8, 0.4], &[1, 0]).expect("rows");
        assert!(close(ll, -(0.8f64.ln() + 0.6f64.ln()) / 2.0), "{ll}");
        // Clipped: a confident mistake costs -ln(1e-15), not infinity.
        let ll = logloss(&[0.0], &[1]).expect("rows");
        assert!(close(ll, -(1e-15f64).ln()), "{ll}");
        assert_eq!(logloss(&[], &[]), None);
    }

    #[test]
    fn calibration_by_hand() {
        let c = calibration(&[0.2, 0.4, 0.3, 0.1], &[0, 1, 0, 0]).expect("a positive");
        assert!(close(c, 1.0 / 1.0), "{c}");
        let c = calibration(&[0.5, 0.5, 0.5, 0.5], &[0, 1, 0, 0]).expect("a positive");
        assert!(close(c, 2.0), "{c}");
        assert_eq!(calibration(&[0.3, 0.1], &[0, 0]), None);
    }
}
