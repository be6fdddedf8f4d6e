//! The epochs of a distributed job and their ends (DESIGN §5, §7).
//!
//! After an epoch's steps ([`super::step::train_epoch`]) every rank computes the next task
//! weights from the same reduced numbers, rank 0 evaluates and writes metrics.jsonl and the
//! checkpoint (all ranks hold identical parameters, as in DDP), and every rank meets the
//! others at the coordinator's epoch barrier. If a member dies before the barrier completes,
//! the survivors rejoin and report again; whoever is rank 0 then writes the checkpoint unless
//! it is already committed.

use std::sync::Arc;
use std::time::Duration;

use funnel_common::checkpoint;
use funnel_common::manifest::DatasetManifest;
use funnel_common::reader::ShardReader;
use funnel_proto::v1 as pb;
use tokio::runtime::Handle;
use tracing::{info, info_span, warn};

use super::coordinator::{Client, refused};
use super::generation::{Interrupt, RingSession};
use super::snapshot::EpochSums;
use super::step::train_epoch;
use crate::WorkerError;
use crate::evaluate::evaluate;
use crate::local::{
    EpochTraining, RunSummary, epoch_record, print_epoch, target_names, write_metrics,
};
use crate::state::TrainerState;
use crate::trainer::Trainer;

/// What the step loop needs besides the model.
pub struct ClusterContext {
    /// The coordinator.
    pub client: Client,
    /// The ring of the current generation.
    pub ring: RingSession,
    /// The model's layout hash.
    pub layout_hash: u64,
    /// Training data.
    pub train: Arc<DatasetManifest>,
    /// Its reader.
    pub train_reader: ShardReader,
    /// Evaluation data and reader (used by whichever rank is rank 0).
    pub eval: Option<(Arc<DatasetManifest>, ShardReader)>,
    /// Output URL.
    pub output: String,
    /// Progress bar.
    pub progress: bool,
    /// `progress {json}` lines on stdout (printed by rank 0).
    pub progress_lines: bool,
    /// Counters for the worker's `/metrics`.
    pub telemetry: Arc<crate::telemetry::WorkerTelemetry>,
}

/// Trains the remaining epochs; returns what rank 0 would report.
pub fn train_epochs(
    mut trainer: Trainer,
    mut state: TrainerState,
    mut ctx: ClusterContext,
    mut joined_with: Option<EpochSums>,
    runtime: &Handle,
) -> Result<RunSummary, WorkerError> {
    let job = trainer.job().clone();
    let epochs = job.spec.train.epochs as u64;
    let mut last_checkpoint = None;
    let mut epochs_run = 0;
    while state.epochs_done < epochs {
        let epoch = state.epochs_done;
        let _span = info_span!("epoch", epoch, generation = ctx.ring.generation).entered();
        trainer.begin_epoch(epoch);
        let trained = train_epoch(
            &mut trainer,
            &mut state,
            &mut ctx,
            joined_with.take(),
            runtime,
        )?;
        state.epochs_done += 1;
        let done = state.epochs_done;
        ctx.telemetry.update(|c| c.epoch = done);
        // The next epoch's weights by the job's rule, from numbers every rank shares; the
        // coordinator computes the same and its answer is checked against this below.
        let weights_in_force = trainer.weights().to_vec();
        trainer.end_epoch(
            &trained.mean_task_losses(),
            trained.mean_grad_norms().as_deref(),
        )?;
        if state.epochs_done == epochs {
            // Close the ring before the last barrier: every rank's server stays up until every
            // rank has passed it, so each stream's end is acknowledged rather than cut.
            runtime.block_on(ctx.ring.finish(Duration::from_secs(10)));
        }
        state.model_train_steps = trainer.model().train_steps();
        let end = EpochEnd {
            epoch,
            trained: &trained,
            weights_in_force: &weights_in_force,
        };
        loop {
            super::faults::barrier(state.step);
            let checkpoint_url = if ctx.ring.config.rank == 0 {
                let url = end.write(&mut trainer, &mut state, &ctx, runtime)?;
                last_checkpoint = Some(url.clone());
                url
            } else {
                String::new()
            };
            match end.report(&trainer, &mut ctx, checkpoint_url, runtime)? {
                Ok(weights) => {
                    check_weights(&weights, &trainer.weighting().weights)?;
                    break;
                }
                Err(cause) => runtime.block_on(ctx.ring.rejoin(&mut ctx.client, &cause))?,
            }
        }
        epochs_run += 1;
    }
    runtime.block_on(ctx.ring.finish(Duration::from_secs(10)));
    Ok(RunSummary {
        steps: state.step,
        epochs: state.epochs_done,
        epochs_run,
        checkpoint: last_checkpoint,
        history: state.history,
    })
}

/// An epoch whose steps are done, at its barrier.
struct EpochEnd<'a> {
    epoch: u64,
    trained: &'a EpochTraining,
    weights_in_force: &'a [f32],
}

impl EpochEnd<'_> {
    /// Rank 0's part: evaluate, metrics.jsonl, the checkpoint. Returns the checkpoint URL. A
    /// rank that became rank 0 after the old one died finds the checkpoint committed (it
    /// reuses it) or not (it writes it); metrics of epochs it did not record come from the
    /// latest checkpoint.
    fn write(
        &self,
        trainer: &mut Trainer,
        state: &mut TrainerState,
        ctx: &ClusterContext,
        runtime: &Handle,
    ) -> Result<String, WorkerError> {
        let epoch = self.epoch;
        let url = format!(
            "{}/checkpoints/{}",
            ctx.output.trim_end_matches('/'),
            checkpoint::step_dir(state.step)
        );
        if runtime.block_on(checkpoint::latest(&ctx.output))?
            == Some(checkpoint::step_dir(state.step))
        {
            info!(checkpoint = %url, "the epoch's checkpoint is already committed");
            return Ok(url);
        }
        if (state.history.len() as u64) < epoch {
            state.history = history_of_latest(&ctx.output, runtime)?;
        }
        let evaluation = match &ctx.eval {
            Some((m, r)) => Some(evaluate(trainer, r, m, runtime)?),
            None => None,
        };
        let mut probe = state.clone();
        probe.epochs_done = epoch;
        let mut record = epoch_record(trainer, &probe, self.trained, evaluation.as_ref());
        // The record holds the weights the epoch trained with.
        let names = target_names(trainer);
        record["weights"] = serde_json::Value::Object(
            names
                .iter()
                .zip(self.weights_in_force)
                .map(|(n, w)| (n.clone(), serde_json::json!(w)))
                .collect(),
        );
        print_epoch(&record);
        state.history.truncate(epoch as usize);
        state.history.push(record);
        write_metrics(&ctx.output, &state.history, runtime)?;
        let files = trainer.checkpoint_files(state)?;
        let url = runtime.block_on(checkpoint::commit(&ctx.output, state.step, files))?;
        info!(step = state.step, checkpoint = %url, "checkpoint committed");
        println!(
            "checkpoint committed: {url} (epoch {} of {})",
            epoch + 1,
            trainer.job().spec.train.epochs
        );
        Ok(url)
    }

    /// Reports the epoch at the barrier: the next epoch's weights, or the interruption.
    fn report(
        &self,
        trainer: &Trainer,
        ctx: &mut ClusterContext,
        checkpoint: String,
        runtime: &Handle,
    ) -> Result<Result<Vec<f64>, Interrupt>, WorkerError> {
        let names = target_names(trainer);
        let losses = names
            .into_iter()
            .zip(&self.trained.task_loss_sums)
            .map(|(task, s)| pb::TaskLoss {
                task,
                loss_sum: *s,
                samples: self.trained.rows,
            })
            .collect();
        let answer = runtime
            .block_on(
                ctx.client.report_epoch(pb::ReportEpochRequest {
                    worker_id: ctx.ring.worker_id.clone(),
                    generation: ctx.ring.generation,
                    epoch: self.epoch as u32,
                    losses,
                    checkpoint,
                    grad_norms: self.trained.mean_grad_norms().unwrap_or_default(),
                    initial_losses: trainer
                        .weighting()
                        .initial_losses
                        .clone()
                        .unwrap_or_default(),
                }),
            )
            .map_err(|s| refused("ReportEpoch", s))?
            .into_inner();
        if answer.completed {
            Ok(Ok(answer.task_weights))
        } else {
            warn!(
                epoch = self.epoch,
                generation = answer.generation,
                "epoch barrier interrupted"
            );
            Ok(Err(Interrupt::Newer(answer.generation)))
        }
    }
}

/// The metrics history in the output's latest checkpoint (empty if none).
fn history_of_latest(
    output: &str,
    runtime: &Handle,
) -> Result<Vec<serde_json::Value>, WorkerError> {
    let Some(name) = runtime.block_on(checkpoint::latest(output))? else {
        return Ok(Vec::new());
    };
    let url = format!("{}/checkpoints/{name}", output.trim_end_matches('/'));
    let ckpt = runtime.block_on(checkpoint::open(&url))?;
    let trainer: serde_json::Value = serde_json::from_slice(ckpt.file("trainer.json")?)
        .map_err(|e| WorkerError::Internal(format!("{url}/trainer.json: {e}")))?;
    Ok(trainer
        .get("history")
        .and_then(|h| h.as_array())
        .cloned()
        .unwrap_or_default())
}

/// The coordinator's weights for the next epoch must be the ones this rank computed from the
/// same reduced numbers (an empty answer: the strategy learns its weights per step, UWL).
fn check_weights(theirs: &[f64], ours: &[f64]) -> Result<(), WorkerError> {
    if theirs.is_empty() {
        return Ok(());
    }
    let same = theirs.len() == ours.len()
        && theirs
            .iter()
            .zip(ours)
            .all(|(a, b)| (a - b).abs() <= 1e-9 * b.abs().max(1.0));
    if same {
        Ok(())
    } else {
        Err(WorkerError::Coordinator(format!(
            "ReportEpoch: the coordinator's task weights {theirs:?} differ from this rank's {ours:?}"
        )))
    }
}
