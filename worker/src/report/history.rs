//! `metrics.jsonl` read back for the report: one [`EpochRecord`] per line, every field
//! optional, so a job without eval (or an older line missing a field) still reports what it
//! has; a line that is not JSON of that shape is an error naming the file and the line.

use crate::WorkerError;
use serde::Deserialize;

/// One epoch as the report uses it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EpochRecord {
    /// 0-based epoch.
    pub epoch: u64,
    /// Optimizer steps done at its end.
    pub step: Option<u64>,
    /// Training rows of the epoch.
    pub rows: Option<u64>,
    /// Seconds of the training loop.
    pub seconds: Option<f64>,
    /// Training samples per second.
    pub rows_per_s: Option<f64>,
    /// Weighted training loss (row-weighted mean).
    pub loss: Option<f64>,
    /// Per task, its mean training loss.
    pub task_losses: Vec<(String, f64)>,
    /// Per task, the weight the epoch trained with.
    pub weights: Vec<(String, f64)>,
    /// Eval metrics per target, in funnel order; empty without eval.
    pub targets: Vec<EvalRow>,
    /// Conditional eval metrics (`favorite|click`), in the order recorded.
    pub conditional: Vec<EvalRow>,
}

/// One target's (or conditional's) eval numbers.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(from = "RawEvalRow")]
pub struct EvalRow {
    /// Target stage, or conditional name (`favorite|click`).
    pub name: String,
    /// AUC (absent without both classes).
    pub auc: Option<f64>,
    /// Log loss.
    pub logloss: Option<f64>,
    /// Mean prediction / mean label.
    pub calibration: Option<f64>,
    /// Rows scored.
    pub rows: Option<u64>,
    /// Positive rows.
    pub positives: Option<u64>,
}

/// An eval row as written: targets have `stage`; conditionals have `name` (and the `stage`
/// they score).
#[derive(Debug, Deserialize)]
struct RawEvalRow {
    name: Option<String>,
    stage: Option<String>,
    auc: Option<f64>,
    logloss: Option<f64>,
    calibration: Option<f64>,
    rows: Option<u64>,
    positives: Option<u64>,
}

impl From<RawEvalRow> for EvalRow {
    fn from(r: RawEvalRow) -> Self {
        Self {
            name: r.name.or(r.stage).unwrap_or_else(|| "?".into()),
            auc: r.auc,
            logloss: r.logloss,
            calibration: r.calibration,
            rows: r.rows,
            positives: r.positives,
        }
    }
}

/// The shape of a line, as written by `local::epoch_record`.
#[derive(Debug, Deserialize)]
struct Line {
    epoch: u64,
    step: Option<u64>,
    #[serde(default)]
    train: Option<Train>,
    #[serde(default)]
    weights: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    eval: Option<Eval>,
}

#[derive(Debug, Deserialize)]
struct Train {
    rows: Option<u64>,
    seconds: Option<f64>,
    rows_per_s: Option<f64>,
    loss: Option<f64>,
    #[serde(default)]
    task_losses: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Deserialize)]
struct Eval {
    metrics: Option<EvalMetrics>,
}

#[derive(Debug, Deserialize)]
struct EvalMetrics {
    #[serde(default)]
    targets: Vec<EvalRow>,
    #[serde(default)]
    conditional: Vec<EvalRow>,
}

/// Parses a whole metrics.jsonl; `url` names it in errors. Blank lines are skipped; records are
/// returned sorted by epoch (a resumed run rewrites the file whole, so epochs are unique).
pub fn parse(url: &str, text: &str) -> Result<Vec<EpochRecord>, WorkerError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| WorkerError::MetricsLine {
            url: url.to_string(),
            line: i + 1,
            message,
        };
        let l: Line = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let numbers = |m: Option<serde_json::Map<String, serde_json::Value>>, key: &str| {
            m.unwrap_or_default()
                .into_iter()
                .map(|(k, v)| match v.as_f64() {
                    Some(x) => Ok((k, x)),
                    None => Err(bad(format!("{key}.{k} is {v}, not a number"))),
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let train = l.train;
        let metrics = l.eval.and_then(|e| e.metrics);
        let (targets, conditional) =
            metrics.map_or((Vec::new(), Vec::new()), |m| (m.targets, m.conditional));
        out.push(EpochRecord {
            epoch: l.epoch,
            step: l.step,
            rows: train.as_ref().and_then(|t| t.rows),
            seconds: train.as_ref().and_then(|t| t.seconds),
            rows_per_s: train.as_ref().and_then(|t| t.rows_per_s),
            loss: train.as_ref().and_then(|t| t.loss),
            task_losses: numbers(train.and_then(|t| t.task_losses), "train.task_losses")?,
            weights: numbers(l.weights, "weights")?,
            targets,
            conditional,
        });
    }
    if out.is_empty() {
        return Err(WorkerError::Report(format!(
            "{url} has no epoch (has the job finished one?)"
        )));
    }
    out.sort_by_key(|r| r.epoch);
    Ok(out)
}

/// The task names of the history in funnel order: the eval targets' order when there is eval,
/// else the order of the weights (as recorded), then any name seen only later.
pub fn task_names(history: &[EpochRecord]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut add = |n: &str| {
        if !names.iter().any(|x| x == n) {
            names.push(n.to_string());
        }
    };
    for r in history {
        r.targets.iter().for_each(|t| add(&t.name));
    }
    for r in history {
        r.weights.iter().for_each(|(n, _)| add(n));
        r.task_losses.iter().for_each(|(n, _)| add(n));
    }
    names
}

/// The value of `name` in a (name, value) list.
pub fn lookup(values: &[(String, f64)], name: &str) -> Option<f64> {
    values.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}

/// The eval row of `name`.
pub fn eval_row<'a>(rows: &'a [EvalRow], name: &str) -> Option<&'a EvalRow> {
    rows.iter().find(|r| r.name == name)
}
