//! The run report (DESIGN §8, issue 7): `<output>/report/index.html` and one SVG per plot
//! beside it, drawn from `<output>/metrics.jsonl`: training loss per task, eval AUC per target
//! with the oracle AUC (when the eval data came from gen-data), calibration, task weights and
//! training samples/s per epoch, and tables of the numbers.
//!
//! Written at the end of `funnel train` (one worker or `--workers N`) and by `funnel report
//! OUTPUT`. Everything is read and written through the object store, so an s3:// output gets
//! its report in the bucket.
//!
//! The eval data for the oracle comes from the job spec: a spec given by the caller (the job
//! just trained, or `funnel report --config`), else the spec the output records, embedded in
//! the latest checkpoint's `model.json` (the spec the job actually ran, whatever file it came
//! from). The oracle is computed once per report; when there is no spec, no eval or no truth
//! columns, or reading the eval data fails, the page says "no oracle" and why (never an error:
//! the curves are worth having without it).

mod history;
mod html;
mod plots;
#[cfg(test)]
mod tests;

pub use history::{EpochRecord, EvalRow, parse as parse_metrics};
pub use plots::{Plot, Series};

use crate::WorkerError;
use bytes::Bytes;
use funnel_common::checkpoint;
use funnel_common::oracle::{Oracle, oracle_aucs};
use funnel_common::spec::{Job, JobSpec};
use funnel_common::store::StoreUrl;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use tracing::{info, warn};

/// Where the report's job spec comes from.
#[derive(Debug, Clone, Copy)]
pub enum SpecChoice<'a> {
    /// This spec; the string says where it came from (a file name).
    Given(&'a Job, &'a str),
    /// The spec recorded in the output (the latest checkpoint's model.json).
    FromOutput,
}

/// A written report.
#[derive(Debug, Clone)]
pub struct Written {
    /// The page: a local path for `file://` outputs, else its URL.
    pub index: String,
    /// Every file written (the page and the plots), in the same form.
    pub files: Vec<String>,
    /// Epochs reported.
    pub epochs: usize,
    /// The oracle shown.
    pub oracle: Oracle,
}

/// Writes the report of the job whose output is `output` (see the module docs).
pub async fn write_report(output: &str, spec: SpecChoice<'_>) -> Result<Written, WorkerError> {
    let out = StoreUrl::open(output, "output")?;
    let history = read_history(&out).await?;
    let recorded;
    let (job, spec_source) = match spec {
        SpecChoice::Given(job, origin) => (Some(job), origin.to_string()),
        SpecChoice::FromOutput => match recorded_spec(&out).await {
            Ok(Some((job, url))) => {
                recorded = job;
                (Some(&recorded), url)
            }
            Ok(None) => (None, "none: the output has no checkpoint".into()),
            Err(e) => {
                warn!(error = %e, "the output's recorded job spec is unreadable");
                (None, format!("none: {e}"))
            }
        },
    };
    let oracle = match job {
        Some(job) => oracle_aucs(job).await.unwrap_or_else(|e| {
            warn!(error = %e, "no oracle AUC");
            Oracle::Unavailable(format!("cannot read the eval data: {e}"))
        }),
        None => {
            Oracle::Unavailable("no job spec to find the eval data (pass --config job.toml)".into())
        }
    };
    let info = html::PageInfo {
        job: job.map_or("(unknown: no job spec)", |j| j.spec.name.as_str()),
        output: out.url.as_str(),
        spec_source: &spec_source,
    };
    let files = write_files(&out, &history, &info, &oracle).await?;
    let index = files.first().cloned().unwrap_or_default();
    info!(report = %index, epochs = history.len(), "run report written");
    Ok(Written {
        index,
        files,
        epochs: history.len(),
        oracle,
    })
}

/// Reads and parses `<output>/metrics.jsonl`.
async fn read_history(out: &StoreUrl) -> Result<Vec<EpochRecord>, WorkerError> {
    let path = out.child("metrics.jsonl");
    let url = out.object_url(&path);
    let Some(bytes) = out.read_optional(&path).await? else {
        return Err(WorkerError::Report(format!(
            "{url} does not exist: no epoch of this job has finished (or the URL is not a \
             job's output)"
        )));
    };
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| WorkerError::Report(format!("{url} is not UTF-8: {e}")))?;
    history::parse(&url, text)
}

/// The job spec embedded in the latest checkpoint's model.json, and that file's URL. Only
/// model.json is read (not the whole checkpoint: the report needs no tensors).
async fn recorded_spec(out: &StoreUrl) -> Result<Option<(Job, String)>, WorkerError> {
    let Some(name) = checkpoint::latest(out.url.as_str()).await? else {
        return Ok(None);
    };
    let path = out.child(&format!("checkpoints/{name}/model.json"));
    let url = out.object_url(&path);
    let bytes = out.read(&path).await?;
    let bad = |e: &dyn std::fmt::Display| WorkerError::Report(format!("{url}: {e}"));
    let mut card: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad(&e))?;
    let spec: JobSpec = serde_json::from_value(card["job"].take()).map_err(|e| bad(&e))?;
    let job = Job::from_spec(spec, &url)?;
    Ok(Some((job, url)))
}

/// Draws every plot with data and the page, and writes them under `<output>/report/`; returns
/// what was written, the page first.
pub(crate) async fn write_files(
    out: &StoreUrl,
    history: &[EpochRecord],
    info: &html::PageInfo<'_>,
    oracle: &Oracle,
) -> Result<Vec<String>, WorkerError> {
    let plots = plots::plots(history, oracle);
    let epochs = history.last().map_or(1, |r| r.epoch + 1);
    // Everything is drawn before anything is written, and the page goes last, so a page never
    // links to a plot that failed.
    let mut drawn = Vec::new();
    for p in plots.iter().filter(|p| !p.is_empty()) {
        drawn.push((
            out.child(&format!("report/{}", p.file)),
            plots::render(p, epochs)?,
        ));
    }
    let index = out.child("report/index.html");
    let mut files = vec![shown(out, &index)];
    for (path, svg) in drawn {
        put(out, &path, svg).await?;
        files.push(shown(out, &path));
    }
    put(out, &index, html::page(info, history, oracle, &plots)).await?;
    Ok(files)
}

async fn put(out: &StoreUrl, path: &Path, body: String) -> Result<(), WorkerError> {
    out.store
        .put(path, Bytes::from(body).into())
        .await
        .map_err(|e| out.error("write", path, e))?;
    Ok(())
}

/// How a written file is shown to the user: a local path for `file://`, else the URL.
fn shown(out: &StoreUrl, path: &Path) -> String {
    if out.url.scheme() == "file" {
        format!("/{path}")
    } else {
        out.object_url(path)
    }
}
