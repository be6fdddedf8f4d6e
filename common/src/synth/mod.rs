//! Synthetic search logs with known truth (`funnel gen-data`).
//!
//! [`generate`] writes `<output>/train/part-NNNNN.parquet` and `<output>/eval/part-NNNNN.parquet`
//! (`files` objects under each prefix; the eval prefix is skipped when `eval_fraction` is 0) to
//! any object store. Every row is an impression with funnel labels `click`, `favorite`, `order`,
//! `pay` (int8 0/1, always funnel-consistent) and, next to each label, `truth_p_<label>`: the
//! marginal probability P(stage = 1 | features) under the ground truth, so the best achievable
//! (oracle) AUC of a target is `AUC(truth_p_<stage>, <stage>)`. Same options, same bytes: every
//! chunk of 8,192 rows of part `f` draws from its own stream
//! `SplitMix64::derive(seed, f << 32 | chunk)`, whatever the concurrency; the rows do not depend
//! on `row_group_rows` either. Part `f` holds `rows / files` rows (one more for the first
//! `rows % files` parts), each routed to eval with probability `eval_fraction`.
//!
//! # The world (fixed by `seed`)
//!
//! Hidden values come from hashes of `(seed, kind, id)`; "N" below is an approximately standard
//! normal (Irwin-Hall sum of four 16-bit uniforms, scaled to unit variance), `d = 4`.
//! - Category `c < categories`: factors `w_c ~ N^d`, mean log price `mu_c = 3 + 0.8 N`.
//! - Item `i < items` (id = popularity rank, weight `(i + 1)^-zipf_exponent`): category
//!   `cat_i` uniform; factors `v_i = 0.6 w_{cat_i} + 0.8 N^d`; quality `q_i ~ N`; relative log
//!   price `z_i = 0.5 N`; `price_i = exp(mu_{cat_i} + z_i)` (lognormal within a category).
//! - User `u < users` (no table: derived on the fly): factors `a_u ~ N^d`, activity `b_u ~ N`,
//!   favourite category `fc_u` uniform, age uniform in 18..=65.
//! - Query `q < queries` (weight `(q + 1)^-zipf_exponent`, text `"q<id>"`): intent category
//!   `cq_q` uniform.
//!
//! # A row
//!
//! User uniform; hour from a diurnal curve `1 + 0.8 cos(2 pi (h - 20) / 24)`; query by Zipf;
//! `recent_items`: length uniform in `0..=history_len`, each item with probability 1/2 from the
//! user's favourite category (by popularity within it), else from all items by popularity; the
//! shown item with probability 0.5 from the query's category, 0.2 from the user's favourite
//! category, 0.3 from all items (each by popularity). `user_age` is null in 2% of rows (missing
//! at random; the truth uses the real age). With
//!
//! - `s = a_u . v_i / 2` (user-item affinity), `m = 1[cat_i = cq_q]` (query-category match),
//! - `o` = share of `recent_items` in `cat_i` (0 when empty), `q = q_i`, `z = z_i`,
//! - `g = mu_{cat_i} + z_i - 3` (price level), `ag = (age - 41.5) / 14`,
//! - `e = cos(2 pi (hour - 21) / 24)` (evening), `b = b_u`, `a1` = first component of `a_u`,
//!
//! the five conditional towers are `t = sigmoid(alpha_t + x_t)` with
//!
//! ```text
//! x_click  = 0.9 s + 1.2 m + 0.6 q + 1.0 o + 0.5 b + 0.3 e - 0.4 z
//! x_fav    = 0.9 s + 0.4 q + 1.5 o - 0.4 ag                       (given click)
//! x_o|f    = 0.4 s + 0.6 q - 0.5 g - 0.8 z + 0.3 m                  (given click, favourite)
//! x_o|~f   = 0.2 s + 0.8 q - 0.7 g - 1.0 z + 0.5 o                  (given click, no favourite)
//! x_pay    = 0.6 ag - 0.4 g + 0.3 e + 0.3 a1                        (given order)
//! ```
//!
//! Labels follow DESIGN §3: `click ~ Bern(t_click)`; if click, `favorite ~ Bern(t_fav)` and
//! `order ~ Bern(favorite ? t_o|f : t_o|~f)`; if order, `pay ~ Bern(t_pay)`. The truth columns
//! are the marginals `P(click) = t_click`, `P(favorite) = t_click t_fav`,
//! `P(order) = t_click (t_fav t_o|f + (1 - t_fav) t_o|~f)`, `P(pay) = P(order) t_pay`.
//!
//! The intercepts `alpha_t` are solved (safeguarded Newton) on 65,536 calibration rows from their
//! own stream so that each tower's expected conditional rate matches [`TruthRates`]: `alpha_click`
//! for mean `t_click`, `alpha_fav` for the mean of `t_fav` weighted by `P(click)`, `alpha_o|f`
//! and `alpha_o|~f` weighted by `P(click) t_fav` and `P(click) (1 - t_fav)`, `alpha_pay` weighted
//! by `P(order)`. Each file's key-value metadata `funnel.gen` records the options (all but
//! `output`) and the intercepts.

mod truth;
mod write;

pub use write::schema;

use crate::error::{Error, Result};
use crate::store::StoreUrl;
use futures::{StreamExt, TryStreamExt};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The label columns, in funnel order.
pub const LABEL_COLUMNS: [&str; 4] = ["click", "favorite", "order", "pay"];

/// Largest accepted `items` (the item table is held in memory, about 50 bytes per item).
pub const MAX_ITEMS: u64 = 20_000_000;

/// Mean conditional rates that the generator calibrates the tower intercepts to.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct TruthRates {
    /// Mean P(click).
    pub click: f64,
    /// Mean P(favorite | click).
    pub favorite: f64,
    /// Mean P(order | click, favorite).
    pub order_given_fav: f64,
    /// Mean P(order | click, no favorite).
    pub order_given_no_fav: f64,
    /// Mean P(pay | order).
    pub pay: f64,
}

impl Default for TruthRates {
    fn default() -> Self {
        Self {
            click: 0.05,
            favorite: 0.2,
            order_given_fav: 0.3,
            order_given_no_fav: 0.08,
            pay: 0.7,
        }
    }
}

/// What to generate and where.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GenOptions {
    /// Rows in all (train + eval).
    pub rows: u64,
    /// Objects under each of `train/` and `eval/`.
    pub files: usize,
    /// Rows per Parquet row group (the last of each object may be shorter).
    pub row_group_rows: usize,
    /// Seed of everything: the world and the rows.
    pub seed: u64,
    /// URL prefix in any object store.
    pub output: String,
    /// Share of rows routed (seeded, per row) to `eval/`.
    pub eval_fraction: f64,
    /// Distinct users (uniform).
    pub users: u64,
    /// Distinct items (Zipf popularity).
    pub items: u64,
    /// Distinct categories.
    pub categories: u64,
    /// Distinct queries (Zipf popularity).
    pub queries: u64,
    /// Exponent of the Zipf popularity of items and queries.
    pub zipf_exponent: f64,
    /// Most `recent_items` per row.
    pub history_len: usize,
    /// Target mean conditional rates.
    pub rates: TruthRates,
}

impl Default for GenOptions {
    fn default() -> Self {
        Self {
            rows: 1_000_000,
            files: 4,
            row_group_rows: 65_536,
            seed: 42,
            output: String::new(),
            eval_fraction: 0.1,
            users: 100_000,
            items: 200_000,
            categories: 1_000,
            queries: 20_000,
            zipf_exponent: 1.1,
            history_len: 20,
            rates: TruthRates::default(),
        }
    }
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct GenSummary {
    /// Rows under `train/`.
    pub train_rows: u64,
    /// Rows under `eval/`.
    pub eval_rows: u64,
    /// URLs of the objects written: train parts, then eval parts.
    pub objects: Vec<String>,
    /// Positive labels per label column, train + eval.
    pub positives: BTreeMap<String, u64>,
}

/// Checks the options; errors name the CLI flag.
fn validate(opts: &GenOptions) -> Result<()> {
    let bad = |flag: &str, message: String| {
        Err(Error::Write {
            url: opts.output.clone(),
            message: format!("{flag}: {message}"),
        })
    };
    let range = |flag: &str, v: u64, lo: u64, hi: u64| {
        if v < lo || v > hi {
            bad(flag, format!("must be between {lo} and {hi}, got {v}"))
        } else {
            Ok(())
        }
    };
    range("--rows", opts.rows, 1, u64::MAX)?;
    range("--files", opts.files as u64, 1, 100_000)?;
    range("--row-group-rows", opts.row_group_rows as u64, 1, 1 << 30)?;
    if !(0.0..1.0).contains(&opts.eval_fraction) {
        return bad(
            "--eval-fraction",
            format!("must be in [0, 1), got {}", opts.eval_fraction),
        );
    }
    range("--users", opts.users, 1, u64::MAX)?;
    range("--items", opts.items, 1, MAX_ITEMS)?;
    range("--categories", opts.categories, 1, 10_000_000)?;
    range("--queries", opts.queries, 1, 100_000_000)?;
    if !(0.0..=10.0).contains(&opts.zipf_exponent) {
        return bad(
            "--zipf-exponent",
            format!("must be in [0, 10], got {}", opts.zipf_exponent),
        );
    }
    range("--history-len", opts.history_len as u64, 0, 10_000)?;
    let r = &opts.rates;
    for (flag, v) in [
        ("--click-rate", r.click),
        ("--favorite-rate", r.favorite),
        ("--order-given-fav-rate", r.order_given_fav),
        ("--order-given-no-fav-rate", r.order_given_no_fav),
        ("--pay-rate", r.pay),
    ] {
        if !(v > 0.0 && v < 1.0) {
            return bad(flag, format!("must be in (0, 1), got {v}"));
        }
    }
    Ok(())
}

/// Refuses to mix into an earlier run: any object under `train/` or `eval/` that this run
/// would not overwrite is an error (delete it or choose another output).
async fn check_stale(out: &StoreUrl, opts: &GenOptions) -> Result<()> {
    for split in ["train", "eval"] {
        let prefix = out.child(split);
        let will_write = split == "train" || opts.eval_fraction > 0.0;
        let expected: BTreeSet<_> = (0..opts.files)
            .filter(|_| will_write)
            .map(|p| out.child(&format!("{split}/part-{p:05}.parquet")))
            .collect();
        let mut listing = out.store.list(Some(&prefix));
        while let Some(meta) = listing
            .try_next()
            .await
            .map_err(|e| out.error("list", &prefix, e))?
        {
            if !expected.contains(&meta.location) {
                return Err(Error::Write {
                    url: out.object_url(&meta.location),
                    message: format!(
                        "already exists and this run ({} files per split) would not overwrite \
                         it, so it would mix into the new dataset; delete it or choose another \
                         --output",
                        opts.files
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Generates the dataset described by `opts`: validates the options, builds and calibrates the
/// world, then writes the parts, at most one per available core at a time. Needs a Tokio
/// runtime (any flavour).
pub async fn generate(opts: &GenOptions) -> Result<GenSummary> {
    validate(opts)?;
    let out = Arc::new(StoreUrl::open(&opts.output, "--output")?);
    check_stale(&out, opts).await?;
    let opts = Arc::new(opts.clone());
    let world = {
        let opts = opts.clone();
        tokio::task::spawn_blocking(move || truth::World::new(&opts))
            .await
            .map_err(|e| Error::Task(format!("gen-data world: {e}")))?
    };
    let world = Arc::new(world);
    // The options without `output`: the same data written anywhere has the same bytes.
    let mut recorded = serde_json::to_value(&*opts).unwrap_or_default();
    if let Some(map) = recorded.as_object_mut() {
        map.remove("output");
    }
    let metadata = serde_json::json!({
        "generator": "funnel gen-data",
        "model_version": 1,
        "options": recorded,
        "intercepts": truth::TOWERS.iter().zip(world.intercepts).map(|(t, a)| (*t, a)).collect::<BTreeMap<_, _>>(),
    })
    .to_string();
    tracing::info!(intercepts = ?world.intercepts, "gen-data: calibrated tower intercepts");
    let props = Arc::new(write::writer_properties(&opts, metadata));
    let cancel = Arc::new(AtomicBool::new(false));
    let parallel = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(opts.files);
    let runtime = tokio::runtime::Handle::current();
    let base = opts.rows / opts.files as u64;
    let extra = opts.rows % opts.files as u64;
    let results: Vec<Result<Option<write::PartStats>>> = futures::stream::iter(0..opts.files)
        .map(|part| {
            let rows = base + u64::from((part as u64) < extra);
            let (world, opts, props, out, cancel, runtime) = (
                world.clone(),
                opts.clone(),
                props.clone(),
                out.clone(),
                cancel.clone(),
                runtime.clone(),
            );
            // Generation and Parquet encoding are CPU work: each part runs on a blocking
            // thread, driving its uploads through the runtime.
            let job = tokio::task::spawn_blocking(move || {
                let r = runtime.block_on(write::write_part(
                    &world, &opts, &props, &out, part, rows, &cancel,
                ));
                if r.is_err() {
                    cancel.store(true, Ordering::Relaxed);
                }
                r
            });
            async move {
                job.await
                    .map_err(|e| Error::Task(format!("gen-data part {part}: {e}")))?
            }
        })
        .buffered(parallel)
        .collect()
        .await;
    let mut summary = GenSummary {
        train_rows: 0,
        eval_rows: 0,
        objects: Vec::new(),
        positives: LABEL_COLUMNS.iter().map(|l| (l.to_string(), 0)).collect(),
    };
    let mut parts = Vec::with_capacity(results.len());
    for r in results {
        parts.push(r?);
    }
    for stats in parts.into_iter().flatten() {
        summary.train_rows += stats.train_rows;
        summary.eval_rows += stats.eval_rows;
        for (label, n) in LABEL_COLUMNS.iter().zip(stats.positives) {
            *summary.positives.entry(label.to_string()).or_default() += n;
        }
    }
    for split in ["train", "eval"] {
        if split == "eval" && opts.eval_fraction == 0.0 {
            continue;
        }
        for p in 0..opts.files {
            summary
                .objects
                .push(out.object_url(&out.child(&format!("{split}/part-{p:05}.parquet"))));
        }
    }
    Ok(summary)
}
