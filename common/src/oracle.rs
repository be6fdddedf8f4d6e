//! The oracle AUC: how well each target could be ranked at best. gen-data writes each row's
//! true probability of every stage as `truth_p_<stage>`; ranking the eval rows by it gives the
//! best achievable AUC, the ceiling a trained model is compared with (the run report and
//! `tests/train_quality.rs` both read it from here).
//!
//! A target has an oracle when every eval object has a `truth_p_<stage>` column (the stage's
//! name, as gen-data names it) and the stage's label columns; its label is the OR of those
//! columns, as in training. The AUC is [`crate::metrics::auc`], the same exact code the eval
//! metrics use, over every eval row whose label and truth are not null.

use crate::error::{DataLocation, Error, Result};
use crate::manifest::DatasetManifest;
use crate::metrics::auc;
use crate::reader::ShardReader;
use crate::spec::Job;
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The prefix of gen-data's ground-truth columns.
pub const TRUTH_PREFIX: &str = "truth_p_";

/// One target's oracle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OracleAuc {
    /// The stage (target) name.
    pub stage: String,
    /// The truth column's AUC; `None` when the eval rows lack a class.
    pub auc: Option<f64>,
    /// Eval rows counted.
    pub rows: u64,
}

/// What [`oracle_aucs`] found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Oracle {
    /// Per target with truth columns, in funnel order.
    Computed {
        /// The eval URL it was computed on.
        eval: String,
        /// The targets that have a truth column.
        targets: Vec<OracleAuc>,
    },
    /// No oracle, and why (no eval data, no truth columns).
    Unavailable(String),
}

impl Oracle {
    /// The oracle AUC of `stage`, if computed.
    pub fn auc(&self, stage: &str) -> Option<f64> {
        match self {
            Oracle::Computed { targets, .. } => targets
                .iter()
                .find(|t| t.stage == stage)
                .and_then(|t| t.auc),
            Oracle::Unavailable(_) => None,
        }
    }
}

/// The oracle AUC of every target of `job` over its `data.eval` rows (see the module docs).
pub async fn oracle_aucs(job: &Job) -> Result<Oracle> {
    let data = &job.spec.data;
    let Some(url) = data.eval.as_deref() else {
        return Ok(Oracle::Unavailable("the job has no data.eval".into()));
    };
    let manifest = DatasetManifest::build(url, "data.eval", data.io_concurrency).await?;
    // The targets whose label and truth columns every eval object has.
    let has = |c: &str| {
        manifest
            .objects
            .iter()
            .all(|o| o.metadata.schema().column_with_name(c).is_some())
    };
    let targets: Vec<(String, Vec<String>)> = job
        .funnel
        .targets()
        .map(|(_, s)| (s.name.clone(), s.label_columns.clone()))
        .filter(|(name, labels)| has(&truth_column(name)) && labels.iter().all(|l| has(l)))
        .collect();
    if targets.is_empty() {
        return Ok(Oracle::Unavailable(format!(
            "{url} has no {TRUTH_PREFIX}<stage> columns (not gen-data)"
        )));
    }
    // Columns per target: the truth column, then its label columns.
    let mut columns = Vec::new();
    let mut spans = Vec::new();
    for (name, labels) in &targets {
        spans.push((columns.len(), labels.len()));
        columns.push(truth_column(name));
        columns.extend(labels.iter().cloned());
    }
    let plan = Arc::new(crate::columns::DecodePlan::new(job));
    let reader = ShardReader::new(
        Arc::new(manifest),
        plan,
        data.decode_threads,
        data.read_batch_rows,
    );
    let groups: Vec<(usize, usize)> = reader
        .manifest()
        .objects
        .iter()
        .enumerate()
        .flat_map(|(o, e)| (0..e.row_groups.len()).map(move |rg| (o, rg)))
        .collect();
    let mut scores = vec![Vec::new(); targets.len()];
    let mut labels = vec![Vec::new(); targets.len()];
    let columns = &columns;
    let reader = &reader;
    let mut pieces = futures::stream::iter(groups)
        .map(|(o, rg)| async move {
            let batches = reader.read_raw_columns(o, rg, columns).await?;
            Ok::<_, Error>((o, rg, batches))
        })
        .buffered(data.io_concurrency.clamp(1, 8));
    while let Some((object, rg, batches)) = pieces.try_next().await? {
        let url = &reader.manifest().objects[object].url;
        for rb in batches {
            for (k, &(first, n_labels)) in spans.iter().enumerate() {
                let at = |c: usize| DataLocation {
                    object: url.clone(),
                    row_group: Some(rg),
                    column: Some(columns[c].clone()),
                    ..Default::default()
                };
                let truth = values(rb.column(first), || at(first))?;
                let cols = (first + 1..=first + n_labels)
                    .map(|c| values(rb.column(c), || at(c)))
                    .collect::<Result<Vec<_>>>()?;
                for (row, p) in truth.iter().enumerate() {
                    let row_labels: Option<Vec<f64>> = cols.iter().map(|c| c[row]).collect();
                    if let (Some(p), Some(l)) = (p, row_labels) {
                        scores[k].push(*p);
                        labels[k].push(u8::from(l.iter().any(|v| *v != 0.0)));
                    }
                }
            }
        }
    }
    let targets = targets
        .into_iter()
        .zip(scores.iter().zip(&labels))
        .map(|((stage, _), (s, l))| OracleAuc {
            stage,
            auc: auc(s, l),
            rows: s.len() as u64,
        })
        .collect();
    Ok(Oracle::Computed {
        eval: url.to_string(),
        targets,
    })
}

/// The truth column of `stage`.
pub fn truth_column(stage: &str) -> String {
    format!("{TRUTH_PREFIX}{stage}")
}

/// A numeric or boolean column as f64 values (None for nulls); other types are an error naming
/// the column (`at`).
fn values(a: &ArrayRef, at: impl Fn() -> DataLocation) -> Result<Vec<Option<f64>>> {
    macro_rules! prim {
        ($t:ty) => {
            a.as_primitive::<$t>()
                .iter()
                .map(|v| v.map(|x| x as f64))
                .collect()
        };
    }
    Ok(match a.data_type() {
        DataType::Float64 => prim!(Float64Type),
        DataType::Float32 => prim!(Float32Type),
        DataType::Int8 => prim!(Int8Type),
        DataType::Int16 => prim!(Int16Type),
        DataType::Int32 => prim!(Int32Type),
        DataType::Int64 => prim!(Int64Type),
        DataType::UInt8 => prim!(UInt8Type),
        DataType::UInt16 => prim!(UInt16Type),
        DataType::UInt32 => prim!(UInt32Type),
        DataType::UInt64 => prim!(UInt64Type),
        DataType::Boolean => a
            .as_boolean()
            .iter()
            .map(|v| v.map(|b| f64::from(u8::from(b))))
            .collect(),
        other => {
            return Err(Error::Parquet {
                location: Box::new(at()),
                message: format!("oracle: type {other} is neither numeric nor boolean"),
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{GenOptions, generate};

    #[tokio::test]
    async fn gen_data_has_an_oracle_per_target_and_a_job_without_eval_has_none() {
        let data = "memory://oracle-test/data";
        let opts = GenOptions {
            rows: 40_000,
            files: 1,
            row_group_rows: 1_000,
            users: 200,
            items: 500,
            output: data.into(),
            ..GenOptions::default()
        };
        generate(&opts).await.expect("gen-data");
        let text = crate::spec::synthetic_job_toml(data, "memory://oracle-test/out");
        let job = Job::parse(&text, "test").expect("spec");
        let oracle = oracle_aucs(&job).await.expect("oracle");
        let Oracle::Computed { targets, .. } = &oracle else {
            panic!("no oracle: {oracle:?}");
        };
        let names: Vec<&str> = targets.iter().map(|t| t.stage.as_str()).collect();
        assert_eq!(names, ["click", "favorite", "order", "pay"]);
        for t in targets {
            let a = t.auc.expect("both classes");
            assert!(a > 0.6 && a <= 1.0, "{t:?}");
            assert!(t.rows > 3_000, "{t:?}");
        }
        let mut no_eval = job.clone();
        no_eval.spec.data.eval = None;
        let none = oracle_aucs(&no_eval).await.expect("no eval");
        assert!(matches!(none, Oracle::Unavailable(ref m) if m.contains("no data.eval")));
    }
}
