//! The step's flat all-reduce buffer (DESIGN §5 step 2): the dense gradient scaled by this
//! worker's rows, then the row count and the row-weighted loss sums, so the global batch's mean
//! gradient and its metrics arrive in one reduction. A worker without a batch contributes zeros
//! (weight 0), so uneven shards never change the result nor deadlock the ring.
//!
//! Layout, `[dense_len + 2 + 2 * tasks]`: `grad * rows` (layout order) | `rows` |
//! `loss * rows` | `task_loss[t] * rows` per task | `rows^2 * |g_t|^2` per task, GradNorm's
//! statistic on sampled steps (zeros otherwise). The last block is exact for the global batch:
//! the gradient of the global mean loss at the shared layer is the rows of every worker's
//! gradient scaled by `rows_w / total`, so its squared norm is `sum_w rows_w^2 |g_w|^2 / total^2`.

use funnel_common::embedding::SparseGrad;

use crate::trainer::LocalGrads;

/// The global step after the reduction.
#[derive(Debug, Clone, PartialEq)]
pub struct ReducedStep {
    /// Rows of the global batch (0: every worker's data has ended).
    pub rows: u64,
    /// Mean weighted loss of the global batch.
    pub loss: f64,
    /// Mean per-task loss.
    pub task_losses: Vec<f64>,
    /// GradNorm's `G_t` of the global batch, when the step sampled it.
    pub grad_norms: Option<Vec<f64>>,
}

/// Packs `local` (or nothing) for the all-reduce.
pub fn pack(local: Option<&LocalGrads>, dense_len: usize, tasks: usize) -> Vec<f32> {
    let mut buf = vec![0.0; dense_len + 2 + 2 * tasks];
    if let Some(g) = local {
        let rows = g.rows as f32;
        for (b, d) in buf.iter_mut().zip(&g.dense) {
            *b = d * rows;
        }
        buf[dense_len] = rows;
        buf[dense_len + 1] = g.loss * rows;
        for (b, l) in buf[dense_len + 2..dense_len + 2 + tasks]
            .iter_mut()
            .zip(&g.task_losses)
        {
            *b = l * rows;
        }
        if let Some(sq) = &g.task_grad_sq_norms {
            for (b, s) in buf[dense_len + 2 + tasks..].iter_mut().zip(sq) {
                *b = s * rows * rows;
            }
        }
    }
    buf
}

/// Unpacks the reduced buffer: the mean dense gradient (truncated to `dense_len`, in place) and
/// the step's sums. Rows are exact: an f32 sum of integers below 2^24. `sampled` says whether
/// the step carried GradNorm statistics.
pub fn unpack(
    buf: &mut Vec<f32>,
    dense_len: usize,
    tasks: usize,
    sampled: bool,
) -> Result<ReducedStep, String> {
    if buf.len() != dense_len + 2 + 2 * tasks {
        return Err(format!(
            "reduced buffer has {} values, expected {}",
            buf.len(),
            dense_len + 2 + 2 * tasks
        ));
    }
    let rows = buf[dense_len];
    if !(rows >= 0.0 && rows.fract() == 0.0 && rows < 16_777_216.0) {
        return Err(format!("reduced row count {rows} is not a row count"));
    }
    let n = f64::from(rows).max(1.0);
    let step = ReducedStep {
        rows: rows as u64,
        loss: f64::from(buf[dense_len + 1]) / n,
        task_losses: buf[dense_len + 2..dense_len + 2 + tasks]
            .iter()
            .map(|&s| f64::from(s) / n)
            .collect(),
        grad_norms: sampled.then(|| {
            buf[dense_len + 2 + tasks..]
                .iter()
                .map(|&s| f64::from(s).max(0.0).sqrt() / n)
                .collect()
        }),
    };
    buf.truncate(dense_len);
    if rows > 0.0 {
        for v in buf.iter_mut() {
            *v /= rows;
        }
    }
    Ok(step)
}

/// This worker's sparse gradients scaled by its rows (empty per table without a batch).
pub fn scale_sparse(local: Option<&LocalGrads>, dims: &[usize]) -> Vec<SparseGrad> {
    match local {
        Some(g) => g
            .sparse
            .iter()
            .map(|s| {
                let mut s = s.clone();
                s.scale(g.rows as f32);
                s
            })
            .collect(),
        None => dims
            .iter()
            .enumerate()
            .map(|(t, &d)| SparseGrad::empty(t, d))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grads(rows: usize, dense: Vec<f32>, loss: f32, tasks: Vec<f32>) -> LocalGrads {
        LocalGrads {
            rows,
            loss,
            task_losses: tasks,
            dense,
            sparse: Vec::new(),
            task_grad_sq_norms: None,
        }
    }

    #[test]
    fn the_sum_of_packed_buffers_unpacks_to_the_global_mean() {
        // Worker a: 3 rows, gradient mean [1, 2]; worker b: 1 row, [5, -2]; worker c: none.
        let a = pack(Some(&grads(3, vec![1.0, 2.0], 0.5, vec![0.2, 0.3])), 2, 2);
        let b = pack(Some(&grads(1, vec![5.0, -2.0], 0.9, vec![0.6, 0.3])), 2, 2);
        let c = pack(None, 2, 2);
        let mut sum: Vec<f32> = (0..a.len()).map(|i| a[i] + b[i] + c[i]).collect();
        let step = unpack(&mut sum, 2, 2, false).expect("valid");
        assert_eq!(sum, vec![2.0, 1.0]); // (3*1 + 5) / 4, (3*2 - 2) / 4
        assert_eq!(step.rows, 4);
        assert!((step.loss - 0.6).abs() < 1e-6);
        assert!((step.task_losses[0] - 0.3).abs() < 1e-6);
        assert!((step.task_losses[1] - 0.3).abs() < 1e-6);
    }

    #[test]
    fn grad_norm_statistics_are_those_of_the_global_batch() {
        // Worker a: 2 rows, |g_a|^2 = 0.5 (of its mean loss); worker b: 1 row, |g_b|^2 = 2.
        // Global mean-loss gradient rows: a's scaled by 2/3, b's by 1/3:
        // |G|^2 = (4 * 0.5 + 1 * 2) / 9.
        let mut ga = grads(2, vec![0.0], 0.0, vec![0.0]);
        ga.task_grad_sq_norms = Some(vec![0.5]);
        let mut gb = grads(1, vec![0.0], 0.0, vec![0.0]);
        gb.task_grad_sq_norms = Some(vec![2.0]);
        let (a, b) = (pack(Some(&ga), 1, 1), pack(Some(&gb), 1, 1));
        let mut sum: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        let step = unpack(&mut sum, 1, 1, true).expect("valid");
        let g = step.grad_norms.expect("sampled")[0];
        assert!((g - (4.0f64 / 9.0).sqrt()).abs() < 1e-6, "{g}");
    }

    #[test]
    fn an_all_empty_step_has_zero_rows_and_zero_gradient() {
        let mut buf = pack(None, 3, 1);
        let step = unpack(&mut buf, 3, 1, false).expect("valid");
        assert_eq!((step.rows, buf), (0, vec![0.0; 3]));
    }

    #[test]
    fn malformed_buffers_are_refused() {
        assert!(unpack(&mut vec![0.0; 4], 3, 2, false).is_err());
        let mut bad = vec![0.0, 0.5, 0.0];
        assert!(unpack(&mut bad, 1, 0, false).is_err());
        let mut neg = vec![0.0, -1.0, 0.0];
        assert!(unpack(&mut neg, 1, 0, false).is_err());
    }

    #[test]
    fn sparse_grads_scale_by_rows_or_are_empty() {
        let mut g = grads(2, vec![], 0.0, vec![]);
        g.sparse = vec![SparseGrad {
            table: 0,
            dim: 2,
            ids: vec![4],
            rows: vec![0.5, -1.0],
        }];
        let s = scale_sparse(Some(&g), &[2]);
        assert_eq!(s[0].rows, vec![1.0, -2.0]);
        let e = scale_sparse(None, &[2, 3]);
        assert_eq!((e.len(), e[1].dim, e[1].ids.len()), (2, 3, 0));
    }
}
