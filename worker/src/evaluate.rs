//! Evaluation on the training thread: stream a dataset in file order, score every row with the
//! current model and accumulate exact, mergeable funnel metrics (AUC, logloss, calibration per
//! target, plus each target's AUC on the rows where its labelled ancestor is positive, scored by
//! the conditional probability P(stage) / P(ancestor): the CVR AUC of the ESMM paper).

use crate::WorkerError;
use crate::trainer::Trainer;
use funnel_common::decode::DecodeStats;
use funnel_common::manifest::DatasetManifest;
use funnel_common::metrics::{FunnelMetrics, FunnelReport};
use funnel_common::pipeline::{EpochItem, EpochOptions, spawn_epoch};
use funnel_common::reader::ShardReader;
use std::sync::Arc;
use tokio::runtime::Handle;

/// Rows scored per forward pass during evaluation.
pub const EVAL_BATCH_ROWS: usize = 8192;

/// What an evaluation pass produced.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// The metrics.
    pub report: FunnelReport,
    /// What decoding counted.
    pub decode: DecodeStats,
}

/// Scores every row of `manifest` with `trainer` and returns the metrics. Blocks the calling
/// (training) thread; reading runs on `runtime`.
pub fn evaluate(
    trainer: &mut Trainer,
    reader: &ShardReader,
    manifest: &Arc<DatasetManifest>,
    runtime: &Handle,
) -> Result<Evaluation, WorkerError> {
    let funnel = trainer.job().funnel.clone();
    let mut metrics = FunnelMetrics::for_funnel(&funnel);
    let targets: Vec<usize> = funnel.targets().map(|(i, _)| i).collect();
    // For each conditional metric, (target stage, ancestor stage), in for_funnel's order.
    let conditionals: Vec<(usize, usize)> = targets
        .iter()
        .filter_map(|&i| funnel.labelled_ancestor(i).map(|a| (i, a)))
        .collect();
    let opts = EpochOptions {
        batch_size: EVAL_BATCH_ROWS,
        shuffle_rows: 0,
        seed: 0,
        epoch: 0,
        prefetch: 4,
    };
    let mut rx = {
        let _guard = runtime.enter();
        // File order: identity permutation is not needed for metrics, which are order-free.
        spawn_epoch(reader.clone(), manifest.row_group_shards(), opts)
    };
    while let Some(item) = rx.blocking_recv() {
        match item {
            EpochItem::Batch(batch) => {
                let probs = trainer.predict(&batch)?; // [stages][rows]
                let predictions: Vec<&[f32]> = targets.iter().map(|&i| &probs[i][..]).collect();
                let scores: Vec<Vec<f32>> = conditionals
                    .iter()
                    .map(|&(s, a)| {
                        probs[s]
                            .iter()
                            .zip(&probs[a])
                            .map(|(&p, &q)| if q > 0.0 { (p / q).min(1.0) } else { 0.0 })
                            .collect()
                    })
                    .collect();
                let scores: Vec<&[f32]> = scores.iter().map(Vec::as_slice).collect();
                metrics
                    .push(&predictions, &batch.labels, &scores)
                    .map_err(|e| WorkerError::Internal(format!("evaluation metrics: {e}")))?;
            }
            EpochItem::End(decode) => {
                return Ok(Evaluation {
                    report: metrics.finish(),
                    decode,
                });
            }
            EpochItem::Failed(e) => return Err(e.into()),
        }
    }
    Err(WorkerError::Internal(
        "the evaluation reader stopped without an end marker".into(),
    ))
}
