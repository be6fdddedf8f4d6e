//! Value checks of a parsed spec. Each problem names its key path, e.g.
//! `features.categorical[3].buckets`, so users can find it in their file.

use super::funnel::ResolvedFunnel;
use super::types::{JobSpec, LrSchedule, SparseOptimizer, Transform};
use std::collections::BTreeMap;
use std::fmt;

/// One problem in a job spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Key path (`features.categorical[3].buckets`); empty for the whole file.
    pub key: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl ConfigIssue {
    /// A problem at `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Bucket ids are stored as u32.
const MAX_BUCKETS: u64 = u32::MAX as u64;

/// Checks values that serde cannot: ranges, emptiness, duplicate columns, shared tables.
pub(super) fn check_spec(spec: &JobSpec) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    let mut push = |key: String, msg: String| issues.push(ConfigIssue::new(key, msg));

    if spec.name.trim().is_empty() {
        push("name".into(), "job name is empty".into());
    }
    if spec.data.train.trim().is_empty() {
        push("data.train".into(), "training dataset URL is empty".into());
    }
    for (key, v) in [
        ("data.io_concurrency", spec.data.io_concurrency),
        ("data.decode_threads", spec.data.decode_threads),
        ("data.read_batch_rows", spec.data.read_batch_rows),
        ("train.batch_size", spec.train.batch_size),
        ("train.epochs", spec.train.epochs),
        ("cluster.workers", spec.cluster.workers),
        ("loss.gradnorm_every", spec.loss.gradnorm_every),
        ("cluster.chunk_values", spec.cluster.chunk_values),
    ] {
        if v == 0 {
            push(key.into(), "must be at least 1".into());
        }
    }

    for (key, v) in [
        (
            "cluster.heartbeat_interval_ms",
            spec.cluster.heartbeat_interval_ms,
        ),
        (
            "cluster.heartbeat_timeout_ms",
            spec.cluster.heartbeat_timeout_ms,
        ),
        ("cluster.step_timeout_ms", spec.cluster.step_timeout_ms),
        ("cluster.join_timeout_ms", spec.cluster.join_timeout_ms),
    ] {
        if v == 0 {
            push(key.into(), "must be at least 1".into());
        }
    }
    if spec.cluster.heartbeat_timeout_ms <= spec.cluster.heartbeat_interval_ms {
        push(
            "cluster.heartbeat_timeout_ms".into(),
            "must be longer than cluster.heartbeat_interval_ms".into(),
        );
    }
    if spec.train.batch_size < spec.cluster.workers {
        push(
            "train.batch_size".into(),
            format!(
                "the global batch ({}) must give every one of the {} workers at least one row",
                spec.train.batch_size, spec.cluster.workers
            ),
        );
    }

    // Every feature column once; tables shared only between features of one shape.
    let mut columns: BTreeMap<&str, String> = BTreeMap::new();
    let mut tables: BTreeMap<String, (u64, usize, String)> = BTreeMap::new();
    let mut embedded = |key: String, table: String, buckets: u64, dim: usize| {
        let mut found = Vec::new();
        if buckets == 0 || buckets > MAX_BUCKETS {
            found.push((
                format!("{key}.buckets"),
                format!("must be in 1..={MAX_BUCKETS}"),
            ));
        }
        if dim == 0 {
            found.push((format!("{key}.dim"), "must be at least 1".to_string()));
        }
        match tables.get(&table) {
            Some((b, d, first)) if (*b, *d) != (buckets, dim) => found.push((
                format!("{key}.table"),
                format!(
                    "table `{table}` is shared with {first} (buckets {b}, dim {d}); \
                     shared tables need the same buckets and dim"
                ),
            )),
            Some(_) => {}
            None => {
                tables.insert(table, (buckets, dim, key));
            }
        }
        found
    };
    let mut found = Vec::new();
    // A cross reuses columns that may be features of their own; the tuple is what must be
    // unique among crosses.
    let mut crosses: BTreeMap<Vec<&str>, String> = BTreeMap::new();
    for (i, f) in spec.features.categorical.iter().enumerate() {
        let key = format!("features.categorical[{i}]");
        found.extend(embedded(key.clone(), f.table_name(), f.buckets, f.dim));
        if f.cross.is_empty() {
            found.extend(unique_column(
                &mut columns,
                &f.column,
                format!("{key}.column"),
            ));
            continue;
        }
        let tuple: Vec<&str> = f.columns().collect();
        let mut seen: Vec<&str> = Vec::new();
        for c in &tuple {
            if c.trim().is_empty() {
                found.push((format!("{key}.cross"), "a column name is empty".into()));
            } else if seen.contains(c) {
                found.push((
                    format!("{key}.cross"),
                    format!("column `{c}` appears twice"),
                ));
            }
            seen.push(c);
        }
        if let Some(first) = crosses.get(&tuple) {
            found.push((
                format!("{key}.cross"),
                format!("the cross {tuple:?} is already declared by {first}"),
            ));
        } else {
            crosses.insert(tuple, key);
        }
    }
    for (i, f) in spec.features.list.iter().enumerate() {
        let key = format!("features.list[{i}]");
        found.extend(embedded(key.clone(), f.table_name(), f.buckets, f.dim));
        if f.max_len == 0 {
            found.push((format!("{key}.max_len"), "must be at least 1".into()));
        }
        found.extend(unique_column(
            &mut columns,
            &f.column,
            format!("{key}.column"),
        ));
    }
    for (i, f) in spec.features.numeric.iter().enumerate() {
        let key = format!("features.numeric[{i}]");
        found.extend(unique_column(
            &mut columns,
            &f.column,
            format!("{key}.column"),
        ));
        if !f.fill_null.is_finite() {
            found.push((format!("{key}.fill_null"), "must be a finite number".into()));
        }
        match (f.transform, f.mean, f.std) {
            (Transform::Standardize, None, _) => found.push((
                format!("{key}.mean"),
                "`standardize` needs `mean` and `std`".into(),
            )),
            (Transform::Standardize, _, None) => found.push((
                format!("{key}.std"),
                "`standardize` needs `mean` and `std`".into(),
            )),
            (Transform::Standardize, Some(m), Some(s))
                if !m.is_finite() || s.is_nan() || s <= 0.0 =>
            {
                found.push((
                    format!("{key}.std"),
                    "mean must be finite and std > 0".into(),
                ))
            }
            (Transform::None | Transform::Log1p, Some(_), _)
            | (Transform::None | Transform::Log1p, _, Some(_)) => found.push((
                format!("{key}.transform"),
                "`mean`/`std` are only used by transform = \"standardize\"".into(),
            )),
            _ => {}
        }
    }
    if spec.features.categorical.is_empty() && spec.features.list.is_empty() {
        found.push((
            "features".into(),
            "declare at least one categorical or list feature".into(),
        ));
    }
    for (key, msg) in found {
        push(key, msg);
    }

    if spec.towers.hidden.is_empty() || spec.towers.hidden.contains(&0) {
        push(
            "towers.hidden".into(),
            "needs at least one layer, each wider than 0".into(),
        );
    }
    if !(0.0..1.0).contains(&spec.towers.dropout) {
        push("towers.dropout".into(), "must be in [0, 1)".into());
    }
    if !is_positive(spec.optimizer.lr) {
        push("optimizer.lr".into(), "must be a positive number".into());
    }
    if let Some(lr) = spec.optimizer.sparse_lr
        && !is_positive(lr)
    {
        push(
            "optimizer.sparse_lr".into(),
            "must be a positive number".into(),
        );
    }
    let swd = spec.optimizer.sparse_weight_decay;
    if !(swd.is_finite() && swd >= 0.0) {
        push(
            "optimizer.sparse_weight_decay".into(),
            "must be a finite number >= 0".into(),
        );
    } else if swd > 0.0 && spec.optimizer.sparse != SparseOptimizer::LazyAdam {
        push(
            "optimizer.sparse_weight_decay".into(),
            "is only supported with sparse = \"lazy-adam\"".into(),
        );
    }
    match (spec.optimizer.lr_schedule, spec.optimizer.lr_gamma) {
        (LrSchedule::Exponential, None) => push(
            "optimizer.lr_gamma".into(),
            "is required by lr_schedule = \"exponential\"".into(),
        ),
        (LrSchedule::Exponential, Some(g)) if !(g > 0.0 && g <= 1.0) => {
            push("optimizer.lr_gamma".into(), "must be in (0, 1]".into())
        }
        (LrSchedule::Exponential, Some(_)) | (_, None) => {}
        (_, Some(_)) => push(
            "optimizer.lr_gamma".into(),
            "is only used by lr_schedule = \"exponential\"".into(),
        ),
    }
    for (stage, w) in &spec.loss.weights {
        if !is_positive(*w) {
            push(
                format!("loss.weights.{stage}"),
                "must be a positive number".into(),
            );
        }
    }
    issues
}

/// Finite and strictly positive (NaN is not).
fn is_positive(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

fn unique_column<'a>(
    columns: &mut BTreeMap<&'a str, String>,
    column: &'a str,
    key: String,
) -> Option<(String, String)> {
    if column.trim().is_empty() {
        return Some((key, "column name is empty".into()));
    }
    match columns.get(column) {
        Some(first) => Some((key, format!("column `{column}` is already used by {first}"))),
        None => {
            columns.insert(column, key);
            None
        }
    }
}

/// Checks references from other sections to funnel stages, and label/feature overlaps.
pub(super) fn check_funnel_refs(spec: &JobSpec, funnel: &ResolvedFunnel) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    for stage in spec.loss.weights.keys() {
        match funnel.stages.iter().find(|s| &s.name == stage) {
            None => issues.push(ConfigIssue::new(
                format!("loss.weights.{stage}"),
                format!("no funnel stage `{stage}`"),
            )),
            Some(s) if !s.is_labelled() => issues.push(ConfigIssue::new(
                format!("loss.weights.{stage}"),
                format!("stage `{stage}` has no label, so it has no loss to weigh"),
            )),
            Some(_) => {}
        }
    }
    if funnel.targets().next().is_none() {
        issues.push(ConfigIssue::new(
            "funnel",
            "no stage has a label: nothing to train",
        ));
    }
    let features: Vec<&str> = spec
        .features
        .categorical
        .iter()
        .flat_map(|f| f.columns())
        .chain(spec.features.list.iter().map(|f| f.column.as_str()))
        .chain(spec.features.numeric.iter().map(|f| f.column.as_str()))
        .collect();
    for col in funnel.label_columns() {
        if features.contains(&col.as_str()) {
            issues.push(ConfigIssue::new(
                "features",
                format!("label column `{col}` is also a feature: that leaks the label"),
            ));
        }
    }
    issues
}
