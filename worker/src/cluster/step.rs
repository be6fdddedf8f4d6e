//! One epoch of distributed steps (DESIGN §5), through failures.
//!
//! Per step, on every rank: take the next batch of every data slot it reads ([`super::feeds`];
//! none once they are exhausted), forward/backward, all-reduce the packed dense buffer,
//! exchange the row-sparse embedding gradients, vote the step with the rows it consumed, and
//! apply the global batch's mean gradient once the coordinator says every member voted. If the
//! ring breaks or the generation changes first, nothing was applied anywhere: the rank rejoins
//! the new ring, takes the data slots it reads there, and redoes the step with the same rows
//! (a dead member's slot is read by its new reader from the ledger). The epoch ends at the
//! first step whose reduced row count is zero, a decision that is itself voted, so every rank
//! leaves the step loop in the same generation.

use std::time::Instant;

use funnel_proto::v1 as pb;
use tokio::runtime::Handle;

use super::coordinator::refused;
use super::epoch::ClusterContext;
use super::faults::{self, Phase};
use super::feeds::SlotFeeds;
use super::generation::Interrupt;
use super::leases::{SlotReader, rows_by_lease};
use super::pack::{ReducedStep, pack, scale_sparse, unpack};
use super::snapshot::{self, EpochSums};
use crate::WorkerError;
use crate::local::{EpochTraining, finish_epoch, progress_bar};
use crate::ring::{RingConfig, StepTag, all_reduce, sparse_exchange};
use crate::state::TrainerState;
use crate::trainer::{LocalGrads, Trainer};
use crate::transport::DenseLinks;

/// One epoch of steps. The sums in the result are over the global batches (identical on
/// every rank).
pub(crate) fn train_epoch(
    trainer: &mut Trainer,
    state: &mut TrainerState,
    ctx: &mut ClusterContext,
    joined_with: Option<EpochSums>,
    runtime: &Handle,
) -> Result<EpochTraining, WorkerError> {
    let job = trainer.job().clone();
    let epoch = state.epochs_done;
    let slots = job.spec.cluster.workers;
    let mut feeds = SlotFeeds::new(
        epoch as u32,
        SlotReader {
            client: ctx.client.clone(),
            worker_id: ctx.ring.worker_id.clone(),
            slot: 0,
            slots,
            reader: ctx.train_reader.clone(),
            global_batch: job.spec.train.batch_size,
            shuffle_rows: job.spec.data.shuffle_buffer,
            seed: job.spec.train.seed,
            prefetch: 4,
        },
    );
    feeds.serve(&my_slots(ctx, slots), runtime);
    let bar = progress_bar(
        ctx.progress && ctx.ring.config.rank == 0,
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
    if let Some(sums) = joined_with {
        // Joined mid-epoch: the epoch so far, as the ring trained it.
        sums.apply(&mut out);
    }
    let started = Instant::now();
    let mut last_line = started;
    loop {
        let input = feeds.next_input()?;
        let step = state.step + 1;
        // Every line logged while this step runs carries its number and generation.
        let _step_span =
            tracing::info_span!("step", step, generation = ctx.ring.generation).entered();
        faults::point(step, Phase::Read);
        let sampled = trainer.samples_stats(step);
        let compute_started = Instant::now();
        let local = match &input {
            Some(i) => Some(trainer.compute_with(&i.batch, sampled)?),
            None => None,
        };
        let compute_seconds = compute_started.elapsed().as_secs_f64();
        let local_rows = input.as_ref().map_or(0, |i| i.batch.rows as u64);
        faults::point(step, Phase::Compute);
        if let Some(g) = &local
            && !g.loss.is_finite()
        {
            return Err(WorkerError::NonFinite(format!(
                "loss is {} at epoch {epoch}, step {step} on rank {}",
                g.loss, ctx.ring.config.rank
            )));
        }
        let rows: Vec<pb::LeaseRows> = input
            .as_ref()
            .map(|i| {
                rows_by_lease(&i.batch, &i.leases)
                    .iter()
                    .map(|(lease_id, r)| pb::LeaseRows {
                        lease_id: *lease_id,
                        rows: r
                            .iter()
                            .flat_map(|x| x.to_le_bytes())
                            .collect::<Vec<u8>>()
                            .into(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let buf = pack(local.as_ref(), dense_len, tasks);
        let dense_total = buf.len();
        let sparse = scale_sparse(local.as_ref(), &dims);
        let done = runtime.block_on(async {
            let tag = StepTag {
                generation: ctx.ring.generation,
                step,
                layout_hash: ctx.layout_hash,
            };
            let cfg = ctx.ring.config;
            let mut buf = buf;
            let news = ctx.ring.news.subscribe();
            let probe = ctx.ring.news.subscribe();
            let links = match ctx.ring.links().await {
                Ok(l) => l,
                Err(e) => return Err(Interrupt::Ring(e)),
            };
            let exchange = async {
                reduce_dense(&mut links.dense, &cfg, tag, &mut buf, &probe).await?;
                let reduced = unpack(&mut buf, dense_len, tasks, sampled)
                    .map_err(|e| crate::ring::RingError::Config(format!("step {step}: {e}")))?;
                // The epoch-ending step has nothing sparse to exchange.
                let merged = if reduced.rows == 0 {
                    Vec::new()
                } else {
                    sparse_exchange(
                        &cfg,
                        tag,
                        &sparse,
                        &mut links.sparse_tx,
                        &mut links.sparse_rx,
                    )
                    .await?
                };
                Ok((reduced, merged))
            };
            let exchange_started = Instant::now();
            let (reduced, merged) = guard(news, tag.generation, exchange).await?;
            let stats = pb::StepStats {
                rows: local_rows,
                task_losses: reduced.task_losses.clone(),
                compute_seconds,
                allreduce_seconds: exchange_started.elapsed().as_secs_f64(),
                allreduce_bytes: crate::ring::bytes_sent(dense_total, cfg.size, cfg.rank),
            };
            faults::point(step, Phase::Vote);
            let vote = ctx
                .client
                .commit_step(pb::CommitStepRequest {
                    worker_id: ctx.ring.worker_id.clone(),
                    generation: tag.generation,
                    step,
                    layout_hash: ctx.layout_hash,
                    rows,
                    epoch_end: reduced.rows == 0,
                    stats: Some(stats.clone()),
                })
                .await
                .map_err(|s| refused("CommitStep", s));
            let vote = match vote {
                Ok(v) => v.into_inner(),
                Err(e) => return Ok(Err(e)),
            };
            if !vote.committed {
                return Err(Interrupt::NotCommitted(vote.reason));
            }
            faults::point(step, Phase::Commit);
            Ok(Ok((reduced, buf, merged, stats)))
        });
        let (reduced, buf, mut merged, stats) = match done {
            Ok(r) => r?,
            Err(cause) => {
                // Nothing was applied anywhere: rejoin, then redo this step with these rows
                // (those of the slots this rank still serves; others' new readers make theirs).
                if let Some(i) = input {
                    feeds.put_back(i);
                }
                ctx.telemetry.update(|c| c.steps_redone += 1);
                if let Interrupt::Ring(e) = &cause {
                    runtime.block_on(ctx.ring.report_peer(&mut ctx.client, e))?;
                }
                runtime.block_on(ctx.ring.rejoin(&mut ctx.client, &cause))?;
                let served = my_slots(ctx, slots);
                if served != feeds.slots() {
                    tracing::warn!(slots = ?served, "data slots served in this generation");
                }
                feeds.serve(&served, runtime);
                if ctx.ring.must_donate() {
                    // A worker joined: it starts from this rank's state (the ring's, since no
                    // rank applied the interrupted step) and this epoch's sums so far.
                    let snapshot = snapshot::encode(trainer, state, &out)?;
                    tracing::warn!(
                        generation = ctx.ring.generation,
                        bytes = snapshot.len(),
                        "state published for the joining worker"
                    );
                    ctx.ring.node.publish_state(ctx.ring.generation, snapshot);
                }
                continue;
            }
        };
        if reduced.rows == 0 {
            break; // every rank's data has ended, and every rank voted so
        }
        for g in &mut merged {
            g.divide(reduced.rows as f32);
        }
        apply(trainer, step, &reduced, buf, merged)?;
        if let Some(g) = &reduced.grad_norms {
            out.grad_norm_samples += 1;
            for (s, v) in out.grad_norm_sums.iter_mut().zip(g) {
                *s += v;
            }
        }
        state.step = step;
        ctx.telemetry.update(|c| {
            c.generation = ctx.ring.generation;
            c.rank = ctx.ring.config.rank;
            c.ranks = ctx.ring.config.size;
            c.step = step;
            c.steps += 1;
            c.rows += stats.rows;
            c.compute_seconds += stats.compute_seconds;
            c.allreduce_seconds += stats.allreduce_seconds;
            c.allreduce_bytes += stats.allreduce_bytes;
            c.task_losses.clone_from(&stats.task_losses);
        });
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
        if ctx.progress_lines
            && ctx.ring.config.rank == 0
            && last_line.elapsed().as_secs_f64() >= 1.0
        {
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
    out.decode = feeds.decode.clone();
    finish_epoch(&mut out, started, &bar, state.step);
    Ok(out)
}

/// The data slots this rank reads in the current ring.
fn my_slots(ctx: &ClusterContext, slots: usize) -> Vec<usize> {
    let members: Vec<(usize, usize)> = ctx
        .ring
        .members
        .iter()
        .map(|m| (m.rank as usize, m.slot as usize))
        .collect();
    funnel_common::slots::slots_of(ctx.ring.config.rank, slots, &members)
}

/// The step's dense all-reduce over the generation's links, with the fault injection
/// configured for its step. The raw TCP ring blocks this (the training) thread and asks
/// `news` whether the ring moved on while it waits; the gRPC ring is awaited.
async fn reduce_dense(
    links: &mut DenseLinks,
    cfg: &RingConfig,
    tag: StepTag,
    buf: &mut [f32],
    news: &tokio::sync::watch::Receiver<u64>,
) -> Result<(), crate::ring::RingError> {
    let step = tag.step;
    match links {
        DenseLinks::Grpc { tx, rx } => {
            if faults::armed(step, Phase::AllReduce) {
                let mut tx = faults::DieAfterFirst { inner: tx, step };
                all_reduce(cfg, tag, buf, &mut tx, rx).await
            } else if let Some(kind) = faults::Corruption::at(step) {
                let mut tx = faults::CorruptFirst {
                    inner: tx,
                    kind: Some(kind),
                };
                all_reduce(cfg, tag, buf, &mut tx, rx).await
            } else {
                all_reduce(cfg, tag, buf, tx, rx).await
            }
        }
        DenseLinks::Tcp(direct) => {
            let newer = || *news.borrow() > tag.generation;
            match direct.all_reduce(cfg, tag, buf, faults::send_fault(step), &newer) {
                // Cancelled for a newer generation: `guard` reports that.
                Err(_) if newer() => std::future::pending().await,
                done => done,
            }
        }
    }
}

/// Runs `exchange` unless generation news newer than `current` arrives first.
async fn guard<T>(
    mut news: tokio::sync::watch::Receiver<u64>,
    current: u64,
    exchange: impl std::future::Future<Output = Result<T, crate::ring::RingError>>,
) -> Result<T, Interrupt> {
    tokio::select! {
        r = exchange => r.map_err(Interrupt::Ring),
        g = async move {
            match news.wait_for(|g| *g > current).await {
                Ok(g) => *g,
                Err(_) => std::future::pending().await,
            }
        } => Err(Interrupt::Newer(g)),
    }
}

/// Applies a committed step's reduced gradient.
fn apply(
    trainer: &mut Trainer,
    step: u64,
    reduced: &ReducedStep,
    dense: Vec<f32>,
    sparse: Vec<funnel_common::embedding::SparseGrad>,
) -> Result<(), WorkerError> {
    trainer.apply(&LocalGrads {
        rows: reduced.rows as usize,
        loss: reduced.loss as f32,
        task_losses: reduced.task_losses.iter().map(|&l| l as f32).collect(),
        dense,
        sparse,
        task_grad_sq_norms: None,
    })?;
    trainer.after_step(step, &reduced.task_losses, reduced.grad_norms.as_deref());
    Ok(())
}
