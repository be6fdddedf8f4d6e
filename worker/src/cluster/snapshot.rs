//! The ring's state for a worker that joins a running job (issue 6 point 4).
//!
//! The donor (the lowest-ranked member that is not joining) takes it when it enters the
//! generation that admitted the joiner: at that moment every member has applied the same
//! committed steps and dropped the in-flight one, so its state is the ring's. It holds the
//! checkpoint files (model, optimizer, trainer.json with the step, the epoch and the task
//! weights' state, all restoring bit-exactly) and the epoch's sums so far, so the joiner
//! reports the same epoch numbers at the barrier as everyone else.
//!
//! Wire form: `u64 LE` header length, the JSON header (file names and sizes, the sums), then
//! the files' bytes in header order.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use funnel_common::checkpoint::{Checkpoint, Manifest};
use funnel_common::spec::Job;
use serde::{Deserialize, Serialize};

use crate::WorkerError;
use crate::local::EpochTraining;
use crate::state::TrainerState;
use crate::trainer::Trainer;

/// The epoch's running sums (identical on every rank: they are sums of reduced values).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochSums {
    /// Rows trained this epoch.
    pub rows: u64,
    /// Steps applied this epoch.
    pub steps: u64,
    /// Row-weighted sum of the weighted loss.
    pub loss_sum: f64,
    /// Row-weighted sums of each task's loss.
    pub task_loss_sums: Vec<f64>,
    /// GradNorm's statistic sums and their count.
    pub grad_norm_sums: Vec<f64>,
    /// Sampled steps.
    pub grad_norm_samples: u64,
}

impl EpochSums {
    /// The sums of `e`.
    pub(crate) fn of(e: &EpochTraining) -> Self {
        Self {
            rows: e.rows,
            steps: e.steps,
            loss_sum: e.loss_sum,
            task_loss_sums: e.task_loss_sums.clone(),
            grad_norm_sums: e.grad_norm_sums.clone(),
            grad_norm_samples: e.grad_norm_samples,
        }
    }

    /// Puts these sums into `e`.
    pub(crate) fn apply(&self, e: &mut EpochTraining) {
        e.rows = self.rows;
        e.steps = self.steps;
        e.loss_sum = self.loss_sum;
        e.task_loss_sums = self.task_loss_sums.clone();
        e.grad_norm_sums = self.grad_norm_sums.clone();
        e.grad_norm_samples = self.grad_norm_samples;
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    files: Vec<(String, u64)>,
    sums: EpochSums,
}

/// Encodes the state of `trainer` and `state` with the epoch's sums so far.
pub(crate) fn encode(
    trainer: &Trainer,
    state: &TrainerState,
    epoch: &EpochTraining,
) -> Result<Bytes, WorkerError> {
    let mut state = state.clone();
    state.model_train_steps = trainer.model().train_steps();
    let files = trainer.checkpoint_files(&state)?;
    let header = Header {
        files: files
            .iter()
            .map(|(n, b)| (n.clone(), b.len() as u64))
            .collect(),
        sums: EpochSums::of(epoch),
    };
    let head = serde_json::to_vec(&header)
        .map_err(|e| WorkerError::Internal(format!("state snapshot header: {e}")))?;
    let mut out = BytesMut::new();
    out.extend_from_slice(&(head.len() as u64).to_le_bytes());
    out.extend_from_slice(&head);
    for (_, b) in &files {
        out.extend_from_slice(b);
    }
    Ok(out.freeze())
}

/// Restores a trainer, its state and the epoch's sums from `bytes` (`from` names the donor in
/// errors).
pub(crate) fn decode(
    job: Arc<Job>,
    bytes: Bytes,
    from: &str,
) -> Result<(Trainer, TrainerState, EpochSums), WorkerError> {
    let bad = |what: String| WorkerError::Coordinator(format!("state from {from}: {what}"));
    if bytes.len() < 8 {
        return Err(bad(format!("{} bytes, no header", bytes.len())));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8])) as usize;
    let body = bytes.slice(8..);
    if n > body.len() {
        return Err(bad(format!("header of {n} bytes in {} bytes", body.len())));
    }
    let header: Header =
        serde_json::from_slice(&body[..n]).map_err(|e| bad(format!("header: {e}")))?;
    let mut at = n;
    let mut files = BTreeMap::new();
    for (name, len) in header.files {
        let end = at.checked_add(len as usize).filter(|&e| e <= body.len());
        let end = end.ok_or_else(|| bad(format!("file {name} runs past the end")))?;
        files.insert(name, body.slice(at..end));
        at = end;
    }
    if at != body.len() {
        return Err(bad(format!("{} trailing bytes", body.len() - at)));
    }
    let ckpt = Checkpoint {
        url: format!("state of {from}"),
        manifest: Manifest {
            format: 1,
            step: 0,
            files: Vec::new(),
        },
        files,
    };
    let (trainer, state) = Trainer::restore(job, &ckpt)?;
    Ok((trainer, state, header.sums))
}
