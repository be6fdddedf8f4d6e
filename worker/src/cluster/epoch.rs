//! The distributed step loop (DESIGN §5) and the epoch end.
//!
//! Per step, on every rank: take the next batch (or none once this rank's leases ran out),
//! forward/backward, all-reduce the packed dense buffer, exchange the row-sparse embedding
//! gradients, vote the step at the coordinator, and apply the global batch's mean gradient. The
//! epoch ends for everyone at the first step whose reduced row count is zero, a decision every
//! rank reads from the same reduced value. Then rank 0 evaluates, writes metrics.jsonl and the
//! checkpoint (all ranks hold identical parameters, as in DDP) and every rank meets the others
//! at the coordinator's epoch barrier.

use std::sync::Arc;
use std::time::Instant;

use funnel_common::checkpoint;
use funnel_common::manifest::DatasetManifest;
use funnel_common::reader::ShardReader;
use funnel_proto::v1 as pb;
use tokio::runtime::Handle;
use tracing::{info, info_span};

use super::coordinator::{Client, refused};
use super::leases::{LeaseItem, LeaseReader};
use super::pack::{pack, scale_sparse, unpack};
use crate::WorkerError;
use crate::evaluate::evaluate;
use crate::local::{
    EpochTraining, RunSummary, epoch_record, finish_epoch, print_epoch, progress_bar, target_names,
    write_metrics,
};
use crate::ring::{RingConfig, StepTag, all_reduce, sparse_exchange};
use crate::state::TrainerState;
use crate::trainer::{LocalGrads, Trainer};
use crate::transport::GenerationLinks;

/// What the step loop needs besides the model.
pub struct ClusterContext {
    /// The coordinator.
    pub client: Client,
    /// This worker's id.
    pub worker_id: String,
    /// The ring generation.
    pub generation: u64,
    /// The model's layout hash.
    pub layout_hash: u64,
    /// This rank in the ring.
    pub ring: RingConfig,
    /// Training data.
    pub train: Arc<DatasetManifest>,
    /// Its reader.
    pub train_reader: ShardReader,
    /// Evaluation data and reader (rank 0 only).
    pub eval: Option<(Arc<DatasetManifest>, ShardReader)>,
    /// Output URL.
    pub output: String,
    /// Progress bar.
    pub progress: bool,
    /// `progress {json}` lines on stdout.
    pub progress_lines: bool,
}

/// Trains the remaining epochs; returns what rank 0 would report.
pub fn train_epochs(
    mut trainer: Trainer,
    mut state: TrainerState,
    mut ctx: ClusterContext,
    links: GenerationLinks,
    runtime: &Handle,
) -> Result<RunSummary, WorkerError> {
    let mut links = Some(links);
    let job = trainer.job().clone();
    let epochs = job.spec.train.epochs as u64;
    let mut last_checkpoint = None;
    let mut epochs_run = 0;
    while state.epochs_done < epochs {
        let epoch = state.epochs_done;
        let _span = info_span!("epoch", epoch, rank = ctx.ring.rank).entered();
        let Some(ring) = links.as_mut() else {
            return Err(WorkerError::Internal("ring links closed early".into()));
        };
        let trained = train_epoch(&mut trainer, &mut state, &mut ctx, ring, runtime)?;
        state.epochs_done += 1;
        // The next epoch's weights by the job's rule, from numbers every rank shares; the
        // coordinator computes the same and its answer is checked against this below.
        let weights_in_force = trainer.weights().to_vec();
        trainer.end_epoch(
            &trained.mean_task_losses(),
            trained.mean_grad_norms().as_deref(),
        )?;
        if state.epochs_done == epochs
            && let Some(ring) = links.take()
        {
            // Close the ring before the last barrier: every rank's server stays up until every
            // rank has passed it, so each stream's end is acknowledged rather than cut.
            runtime.block_on(ring.finish())?;
        }
        state.model_train_steps = trainer.model().train_steps();
        let mut checkpoint_url = String::new();
        if ctx.ring.rank == 0 {
            let evaluation = match &ctx.eval {
                Some((m, r)) => Some(evaluate(&mut trainer, r, m, runtime)?),
                None => None,
            };
            let mut probe = state.clone();
            probe.epochs_done = epoch;
            let mut record = epoch_record(&trainer, &probe, &trained, evaluation.as_ref());
            // The record holds the weights the epoch trained with.
            let names = target_names(&trainer);
            record["weights"] = serde_json::Value::Object(
                names
                    .iter()
                    .zip(&weights_in_force)
                    .map(|(n, w)| (n.clone(), serde_json::json!(w)))
                    .collect(),
            );
            print_epoch(&record);
            state.history.push(record);
            write_metrics(&ctx.output, &state.history, runtime)?;
            let files = trainer.checkpoint_files(&state)?;
            let url = runtime.block_on(checkpoint::commit(&ctx.output, state.step, files))?;
            info!(step = state.step, checkpoint = %url, "checkpoint committed");
            println!(
                "checkpoint committed: {url} (epoch {} of {epochs})",
                epoch + 1
            );
            checkpoint_url = url.clone();
            last_checkpoint = Some(url);
        }
        let names = target_names(&trainer);
        let losses = names
            .into_iter()
            .zip(&trained.task_loss_sums)
            .map(|(task, s)| pb::TaskLoss {
                task,
                loss_sum: *s,
                samples: trained.rows,
            })
            .collect();
        let answer = runtime
            .block_on(
                ctx.client.report_epoch(pb::ReportEpochRequest {
                    worker_id: ctx.worker_id.clone(),
                    generation: ctx.generation,
                    epoch: epoch as u32,
                    losses,
                    checkpoint: checkpoint_url,
                    grad_norms: trained.mean_grad_norms().unwrap_or_default(),
                    initial_losses: trainer
                        .weighting()
                        .initial_losses
                        .clone()
                        .unwrap_or_default(),
                }),
            )
            .map_err(|s| refused("ReportEpoch", s))?
            .into_inner();
        check_weights(&answer.task_weights, &trainer.weighting().weights)?;
        epochs_run += 1;
    }
    if let Some(ring) = links.take() {
        runtime.block_on(ring.finish())?;
    }
    Ok(RunSummary {
        steps: state.step,
        epochs: state.epochs_done,
        epochs_run,
        checkpoint: last_checkpoint,
        history: state.history,
    })
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

/// One epoch of steps. The sums in the result are over the global batches (identical on
/// every rank).
fn train_epoch(
    trainer: &mut Trainer,
    state: &mut TrainerState,
    ctx: &mut ClusterContext,
    links: &mut GenerationLinks,
    runtime: &Handle,
) -> Result<EpochTraining, WorkerError> {
    let job = trainer.job().clone();
    let epoch = state.epochs_done;
    let mut rx = {
        let _guard = runtime.enter();
        LeaseReader {
            client: ctx.client.clone(),
            worker_id: ctx.worker_id.clone(),
            generation: ctx.generation,
            rank: ctx.ring.rank,
            ranks: ctx.ring.size,
            reader: ctx.train_reader.clone(),
            global_batch: job.spec.train.batch_size,
            shuffle_rows: job.spec.data.shuffle_buffer,
            seed: job.spec.train.seed,
            prefetch: 4,
        }
        .spawn(epoch as u32)
    };
    let bar = progress_bar(
        ctx.progress && ctx.ring.rank == 0,
        ctx.train.total_rows(),
        epoch,
        job.spec.train.epochs,
    );
    let dense_len = trainer.model().params().len();
    let tasks = trainer.weights().len();
    let dims: Vec<usize> = trainer
        .embeddings()
        .tables()
        .iter()
        .map(|t| t.dim())
        .collect();
    let mut out = EpochTraining {
        task_loss_sums: vec![0.0; tasks],
        grad_norm_sums: vec![0.0; tasks],
        ..Default::default()
    };
    let started = Instant::now();
    let mut last_line = started;
    let mut ended = false;
    loop {
        let input = if ended {
            None
        } else {
            match rx.blocking_recv() {
                Some(LeaseItem::Batch(b, cursors)) => Some((b, cursors)),
                Some(LeaseItem::End(stats)) => {
                    out.decode = stats;
                    ended = true;
                    None
                }
                Some(LeaseItem::Failed(e)) => return Err(e),
                None => return Err(WorkerError::Internal("lease reader stopped".into())),
            }
        };
        let step = state.step + 1;
        let sampled = trainer.samples_stats(step);
        let local = match &input {
            Some((b, _)) => Some(trainer.compute_with(b, sampled)?),
            None => None,
        };
        if let Some(g) = &local
            && !g.loss.is_finite()
        {
            return Err(WorkerError::NonFinite(format!(
                "loss is {} at epoch {epoch}, step {step} on rank {}",
                g.loss, ctx.ring.rank
            )));
        }
        let tag = StepTag {
            generation: ctx.generation,
            step,
            layout_hash: ctx.layout_hash,
        };
        let mut buf = pack(local.as_ref(), dense_len, tasks);
        runtime.block_on(all_reduce(
            &ctx.ring,
            tag,
            &mut buf,
            &mut links.chunk_tx,
            &mut links.chunk_rx,
        ))?;
        let reduced = unpack(&mut buf, dense_len, tasks, sampled)
            .map_err(|e| WorkerError::Internal(format!("step {step}: {e}")))?;
        if reduced.rows == 0 {
            break; // every rank's data has ended: the same decision everywhere
        }
        let sparse = scale_sparse(local.as_ref(), &dims);
        let mut merged = runtime.block_on(sparse_exchange(
            &ctx.ring,
            tag,
            &sparse,
            &mut links.sparse_tx,
            &mut links.sparse_rx,
        ))?;
        for g in &mut merged {
            g.divide(reduced.rows as f32);
        }
        let cursors = input
            .map(|(_, c)| {
                c.into_iter()
                    .map(|(lease_id, rows_consumed)| pb::LeaseCursor {
                        lease_id,
                        rows_consumed,
                    })
                    .collect()
            })
            .unwrap_or_default();
        runtime
            .block_on(ctx.client.commit_step(pb::CommitStepRequest {
                worker_id: ctx.worker_id.clone(),
                generation: ctx.generation,
                step,
                layout_hash: ctx.layout_hash,
                cursors,
            }))
            .map_err(|s| refused("CommitStep", s))?;
        trainer.apply(&LocalGrads {
            rows: reduced.rows as usize,
            loss: reduced.loss as f32,
            task_losses: reduced.task_losses.iter().map(|&l| l as f32).collect(),
            dense: buf,
            sparse: merged,
            task_grad_sq_norms: None,
        })?;
        trainer.after_step(step, &reduced.task_losses, reduced.grad_norms.as_deref());
        if let Some(g) = &reduced.grad_norms {
            out.grad_norm_samples += 1;
            for (s, v) in out.grad_norm_sums.iter_mut().zip(g) {
                *s += v;
            }
        }
        state.step = step;
        out.steps += 1;
        out.rows += reduced.rows;
        out.loss_sum += reduced.loss * reduced.rows as f64;
        for (s, l) in out.task_loss_sums.iter_mut().zip(&reduced.task_losses) {
            *s += l * reduced.rows as f64;
        }
        bar.inc(reduced.rows);
        if out.steps % 20 == 1 {
            bar.set_message(format!("loss {:.4}", out.loss_sum / out.rows as f64));
        }
        if ctx.progress_lines && last_line.elapsed().as_secs_f64() >= 1.0 {
            last_line = Instant::now();
            println!(
                "progress {}",
                serde_json::json!({
                    "epoch": epoch,
                    "epochs": job.spec.train.epochs,
                    "rows": out.rows,
                    "total": ctx.train.total_rows(),
                    "step": step,
                    "loss": out.loss_sum / out.rows.max(1) as f64,
                    "rows_per_s": out.rows as f64 / started.elapsed().as_secs_f64().max(1e-9),
                })
            );
        }
    }
    finish_epoch(&mut out, started, &bar, state.step);
    Ok(out)
}
