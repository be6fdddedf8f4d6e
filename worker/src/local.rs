//! Single-worker training (`funnel train` without `--workers`): epochs over the training split
//! on the calling thread (never an async task), evaluation after each epoch, `metrics.jsonl`, a
//! checkpoint per epoch, and resumption from the output's latest checkpoint.
//!
//! Resuming is automatic, like a restarted elastic job: when `<output>/checkpoints/LATEST`
//! exists, training continues from it. Checkpoints are taken at epoch boundaries and the epoch's
//! batch order is a function of (seed, epoch), so a resumed run replays exactly what an
//! uninterrupted one would have done, bit for bit (tests/train_resume.rs).

use crate::WorkerError;
use crate::evaluate::{Evaluation, evaluate};
use crate::state::{TRAINER_STATE_FORMAT, TrainerState};
use crate::trainer::Trainer;
use bytes::Bytes;
use funnel_common::checkpoint;
use funnel_common::columns::DecodePlan;
use funnel_common::decode::DecodeStats;
use funnel_common::manifest::DatasetManifest;
use funnel_common::pipeline::{EpochItem, EpochOptions, spawn_epoch};
use funnel_common::reader::ShardReader;
use funnel_common::spec::Job;
use funnel_common::store::StoreUrl;
use indicatif::{ProgressBar, ProgressStyle};
use object_store::ObjectStoreExt;
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;
use tokio::runtime::Handle;
use tracing::{info, info_span};

/// How to run.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Output URL: checkpoints and metrics.jsonl.
    pub output: String,
    /// Show progress bars (when stderr is a terminal).
    pub progress: bool,
    /// Batches buffered ahead of the training thread.
    pub prefetch: usize,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Optimizer steps applied in all.
    pub steps: u64,
    /// Epochs completed in all.
    pub epochs: u64,
    /// Epochs run by this invocation (0 when the output was already complete).
    pub epochs_run: u64,
    /// URL of the last committed checkpoint.
    pub checkpoint: Option<String>,
    /// One record per epoch (as in metrics.jsonl).
    pub history: Vec<serde_json::Value>,
}

/// Trains `job` on this thread; `runtime` runs the I/O. See the module docs.
pub fn train_local(
    job: Arc<Job>,
    opts: &LocalOptions,
    runtime: &Handle,
) -> Result<RunSummary, WorkerError> {
    let span = info_span!("train", job = %job.spec.name);
    let _span = span.enter();
    let data = &job.spec.data;
    let plan = Arc::new(DecodePlan::new(&job));
    let open = |url: &str, key: &str| -> Result<(Arc<DatasetManifest>, ShardReader), WorkerError> {
        let m = runtime.block_on(DatasetManifest::build(url, key, data.io_concurrency))?;
        m.check_schema(&plan)?;
        let m = Arc::new(m);
        let r = ShardReader::new(
            m.clone(),
            plan.clone(),
            data.decode_threads,
            data.read_batch_rows,
        );
        Ok((m, r))
    };
    let (train, train_reader) = open(&data.train, "data.train")?;
    let eval = data
        .eval
        .as_deref()
        .map(|u| open(u, "data.eval"))
        .transpose()?;
    info!(
        objects = train.objects.len(),
        row_groups = train.total_row_groups(),
        rows = train.total_rows(),
        "training data"
    );

    let (mut trainer, mut state) = start_state(&job, &opts.output, runtime)?;
    let epochs = job.spec.train.epochs as u64;
    let mut last_checkpoint = None;
    let mut epochs_run = 0;
    while state.epochs_done < epochs {
        let epoch = state.epochs_done;
        let _epoch_span = info_span!("epoch", epoch).entered();
        trainer.begin_epoch(epoch);
        let trained = train_epoch(
            &mut trainer,
            &mut state,
            &train_reader,
            &train,
            opts,
            runtime,
        )?;
        let evaluation = match &eval {
            Some((m, r)) => Some(evaluate(&mut trainer, r, m, runtime)?),
            None => None,
        };
        let record = epoch_record(&trainer, &state, &trained, evaluation.as_ref());
        print_epoch(&record);
        state.history.push(record);
        trainer.end_epoch(
            &trained.mean_task_losses(),
            trained.mean_grad_norms().as_deref(),
        )?;
        state.epochs_done += 1;
        state.model_train_steps = trainer.model().train_steps();
        write_metrics(&opts.output, &state.history, runtime)?;
        let files = trainer.checkpoint_files(&state)?;
        let url = runtime.block_on(checkpoint::commit(&opts.output, state.step, files))?;
        info!(step = state.step, checkpoint = %url, "checkpoint committed");
        println!(
            "checkpoint committed: {url} (epoch {} of {epochs})",
            epoch + 1
        );
        last_checkpoint = Some(url);
        epochs_run += 1;
    }
    Ok(RunSummary {
        steps: state.step,
        epochs: state.epochs_done,
        epochs_run,
        checkpoint: last_checkpoint,
        history: state.history,
    })
}

/// Where training starts: the output's latest checkpoint (like a restarted elastic job), or a
/// model initialised from the seed.
pub(crate) fn start_state(
    job: &Arc<Job>,
    output: &str,
    runtime: &Handle,
) -> Result<(Trainer, TrainerState), WorkerError> {
    Ok(match runtime.block_on(checkpoint::latest(output))? {
        Some(name) => {
            let url = format!("{}/checkpoints/{name}", output.trim_end_matches('/'));
            let ckpt = runtime.block_on(checkpoint::open(&url))?;
            let (t, s) = Trainer::restore(job.clone(), &ckpt)?;
            info!(checkpoint = %ckpt.url, step = s.step, epochs_done = s.epochs_done, "resuming");
            (t, s)
        }
        None => {
            let t = Trainer::new(job.clone())?;
            let s = fresh_state(&t);
            (t, s)
        }
    })
}

/// The end of an epoch's loop: its duration, the bar cleared, the log line.
pub(crate) fn finish_epoch(
    out: &mut EpochTraining,
    started: Instant,
    bar: &ProgressBar,
    step: u64,
) {
    out.seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    info!(
        step,
        rows = out.rows,
        rows_per_s = out.rows as f64 / out.seconds.max(1e-9),
        "epoch trained"
    );
}

/// trainer.json of a model that has not trained yet.
pub(crate) fn fresh_state(trainer: &Trainer) -> TrainerState {
    let job = trainer.job();
    TrainerState {
        format: TRAINER_STATE_FORMAT,
        job: job.spec.name.clone(),
        step: 0,
        epochs_done: 0,
        seed: job.spec.train.seed,
        model_train_steps: 0,
        layout_hash: format!("{:016x}", trainer.model().layout_hash()),
        weights: target_names(trainer)
            .into_iter()
            .zip(trainer.weights().iter().copied())
            .collect(),
        weighting: trainer.weighting().clone(),
        history: Vec::new(),
    }
}

pub(crate) fn target_names(trainer: &Trainer) -> Vec<String> {
    trainer
        .job()
        .funnel
        .targets()
        .map(|(_, s)| s.name.clone())
        .collect()
}

/// What one epoch of training measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct EpochTraining {
    pub(crate) rows: u64,
    pub(crate) steps: u64,
    pub(crate) seconds: f64,
    /// Row-weighted sums of the weighted loss and of each task's loss.
    pub(crate) loss_sum: f64,
    pub(crate) task_loss_sums: Vec<f64>,
    pub(crate) decode: DecodeStats,
    /// GradNorm statistics: per target, the sum of `G_i` over sampled steps, and their count.
    pub(crate) grad_norm_sums: Vec<f64>,
    pub(crate) grad_norm_samples: u64,
}

impl EpochTraining {
    /// Mean task losses of the epoch.
    pub(crate) fn mean_task_losses(&self) -> Vec<f64> {
        let rows = self.rows.max(1) as f64;
        self.task_loss_sums.iter().map(|s| s / rows).collect()
    }

    /// Mean GradNorm statistics of the epoch, if any step sampled them.
    pub(crate) fn mean_grad_norms(&self) -> Option<Vec<f64>> {
        (self.grad_norm_samples > 0).then(|| {
            let n = self.grad_norm_samples as f64;
            self.grad_norm_sums.iter().map(|s| s / n).collect()
        })
    }
}

fn train_epoch(
    trainer: &mut Trainer,
    state: &mut TrainerState,
    reader: &ShardReader,
    manifest: &Arc<DatasetManifest>,
    opts: &LocalOptions,
    runtime: &Handle,
) -> Result<EpochTraining, WorkerError> {
    let job = trainer.job().clone();
    let epoch = state.epochs_done;
    let epoch_opts = EpochOptions {
        batch_size: job.spec.train.batch_size,
        shuffle_rows: job.spec.data.shuffle_buffer,
        seed: job.spec.train.seed,
        epoch,
        prefetch: opts.prefetch,
    };
    let mut rx = {
        let _guard = runtime.enter();
        spawn_epoch(reader.clone(), manifest.row_group_shards(), epoch_opts)
    };
    let bar = progress_bar(
        opts.progress,
        manifest.total_rows(),
        epoch,
        job.spec.train.epochs,
    );
    let mut out = EpochTraining {
        task_loss_sums: vec![0.0; trainer.weights().len()],
        grad_norm_sums: vec![0.0; trainer.weights().len()],
        ..Default::default()
    };
    let started = Instant::now();
    while let Some(item) = rx.blocking_recv() {
        let batch = match item {
            EpochItem::Batch(b) => b,
            EpochItem::End(stats) => {
                out.decode = stats;
                break;
            }
            EpochItem::Failed(e) => return Err(e.into()),
        };
        let stats = trainer.samples_stats(state.step + 1);
        let g = trainer.compute_with(&batch, stats)?;
        tracing::trace!(
            step = state.step + 1,
            ids = funnel_common::hash::xxh64_u64(
                batch
                    .categorical
                    .iter()
                    .flatten()
                    .fold(0u64, |h, &v| h.rotate_left(5) ^ u64::from(v)),
                0
            ),
            loss = g.loss.to_bits(),
            "step"
        );
        if !g.loss.is_finite() {
            return Err(WorkerError::NonFinite(format!(
                "loss is {} at epoch {epoch}, step {} (batch of {} rows from {:?})",
                g.loss,
                state.step + 1,
                batch.rows,
                batch.origins.first()
            )));
        }
        trainer.apply(&g)?;
        let norms: Option<Vec<f64>> = g
            .task_grad_sq_norms
            .as_ref()
            .map(|sq| sq.iter().map(|v| f64::from(*v).sqrt()).collect());
        let losses: Vec<f64> = g.task_losses.iter().map(|&l| f64::from(l)).collect();
        trainer.after_step(state.step + 1, &losses, norms.as_deref());
        if let Some(n) = &norms {
            out.grad_norm_samples += 1;
            for (s, v) in out.grad_norm_sums.iter_mut().zip(n) {
                *s += v;
            }
        }
        state.step += 1;
        out.steps += 1;
        out.rows += g.rows as u64;
        out.loss_sum += f64::from(g.loss) * g.rows as f64;
        for (s, l) in out.task_loss_sums.iter_mut().zip(&g.task_losses) {
            *s += f64::from(*l) * g.rows as f64;
        }
        bar.inc(g.rows as u64);
        if out.steps % 20 == 1 {
            bar.set_message(format!("loss {:.4}", out.loss_sum / out.rows as f64));
        }
    }
    finish_epoch(&mut out, started, &bar, state.step);
    Ok(out)
}

pub(crate) fn progress_bar(show: bool, rows: u64, epoch: u64, epochs: usize) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(rows);
    let style = ProgressStyle::with_template(
        "{prefix} [{bar:30}] {human_pos}/{human_len} rows, {per_sec}, eta {eta} {msg}",
    )
    .map(|s| s.progress_chars("=> "));
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar.set_prefix(format!("epoch {}/{epochs}", epoch + 1));
    bar
}

/// One `metrics.jsonl` line.
pub(crate) fn epoch_record(
    trainer: &Trainer,
    state: &TrainerState,
    t: &EpochTraining,
    eval: Option<&Evaluation>,
) -> serde_json::Value {
    let rows = t.rows.max(1) as f64;
    let names = target_names(trainer);
    let task_losses: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .zip(&t.task_loss_sums)
        .map(|(n, s)| (n.clone(), json!(s / rows)))
        .collect();
    let weights: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .zip(trainer.weights())
        .map(|(n, w)| (n.clone(), json!(w)))
        .collect();
    json!({
        "epoch": state.epochs_done,
        "step": state.step,
        "train": {
            "rows": t.rows,
            "steps": t.steps,
            "seconds": t.seconds,
            "rows_per_s": t.rows as f64 / t.seconds.max(1e-9),
            "loss": t.loss_sum / rows,
            "task_losses": task_losses,
            "decode": t.decode,
            "grad_norms": t.mean_grad_norms(),
        },
        "weights": weights,
        "lr": {"dense": trainer.rates().0, "sparse": trainer.rates().1},
        "eval": eval.map(|e| json!({"metrics": e.report, "decode": e.decode})),
    })
}

/// The epoch's table on stdout.
pub(crate) fn print_epoch(r: &serde_json::Value) {
    let f = |v: &serde_json::Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.4}"));
    let train = &r["train"];
    println!(
        "epoch {} (step {}): {} rows in {:.1} s ({:.0} rows/s), train loss {}",
        r["epoch"].as_u64().unwrap_or(0) + 1,
        r["step"],
        train["rows"],
        train["seconds"].as_f64().unwrap_or(0.0),
        train["rows_per_s"].as_f64().unwrap_or(0.0),
        f(&train["loss"]),
    );
    let metrics = &r["eval"]["metrics"];
    if metrics.is_null() {
        return;
    }
    println!(
        "  {:<22} {:>8} {:>9} {:>11} {:>10} {:>10}",
        "eval target", "AUC", "logloss", "calibration", "rows", "positives"
    );
    let rows = metrics["targets"].as_array().into_iter().flatten();
    let conditional = metrics["conditional"].as_array().into_iter().flatten();
    for m in rows.chain(conditional) {
        let name = m["name"].as_str().or(m["stage"].as_str()).unwrap_or("?");
        println!(
            "  {:<22} {:>8} {:>9} {:>11} {:>10} {:>10}",
            name,
            f(&m["auc"]),
            f(&m["logloss"]),
            f(&m["calibration"]),
            m["rows"],
            m["positives"]
        );
    }
}

/// Rewrites `<output>/metrics.jsonl` with every epoch so far (object stores cannot append; the
/// history lives in trainer.json, so a resumed run rewrites the same lines).
pub(crate) fn write_metrics(
    output: &str,
    history: &[serde_json::Value],
    runtime: &Handle,
) -> Result<(), WorkerError> {
    let out = StoreUrl::open(output, "output")?;
    let path = out.child("metrics.jsonl");
    let mut body = String::new();
    for r in history {
        body.push_str(&r.to_string());
        body.push('\n');
    }
    runtime
        .block_on(out.store.put(&path, Bytes::from(body).into()))
        .map_err(|e| out.error("write", &path, e))?;
    Ok(())
}
