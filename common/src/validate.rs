//! `funnel validate`: resolve the spec, build each dataset's manifest, check schemas, and scan
//! the rows through the real decoder so label problems surface with their policy's counts.

use crate::columns::DecodePlan;
use crate::decode::DecodeStats;
use crate::error::Result;
use crate::manifest::DatasetManifest;
use crate::reader::ShardReader;
use crate::spec::Job;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use std::fmt;
use std::sync::Arc;

/// What validation found for one dataset.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetReport {
    /// Spec key (`data.train`).
    pub key: String,
    /// Prefix URL.
    pub url: String,
    /// Parquet objects.
    pub objects: usize,
    /// Row groups.
    pub row_groups: usize,
    /// Rows according to the footers.
    pub rows: u64,
    /// Bytes.
    pub bytes: u64,
    /// Decoder counts, when rows were scanned.
    pub scan: Option<DecodeStats>,
}

/// The result of `funnel validate`.
#[derive(Debug, Clone, Serialize)]
pub struct ValidationReport {
    /// Human-readable summary of the resolved spec.
    #[serde(skip)]
    pub job: Job,
    /// One entry per dataset (train, then eval).
    pub datasets: Vec<DatasetReport>,
}

/// Validates a job's datasets. With `scan`, every row is decoded (labels, policies, features).
pub async fn validate(job: &Job, scan: bool) -> Result<ValidationReport> {
    let plan = Arc::new(DecodePlan::new(job));
    let data = &job.spec.data;
    let mut datasets = Vec::new();
    for (key, url) in [
        ("data.train", Some(&data.train)),
        ("data.eval", data.eval.as_ref()),
    ] {
        let Some(url) = url else { continue };
        let manifest = Arc::new(DatasetManifest::build(url, key, data.io_concurrency).await?);
        manifest.check_schema(&plan)?;
        let scan = if scan {
            Some(scan_dataset(&manifest, &plan, job).await?)
        } else {
            None
        };
        datasets.push(DatasetReport {
            key: key.to_string(),
            url: manifest.url.clone(),
            objects: manifest.objects.len(),
            row_groups: manifest.total_row_groups(),
            rows: manifest.total_rows(),
            bytes: manifest.objects.iter().map(|o| o.size).sum(),
            scan,
        });
    }
    Ok(ValidationReport {
        job: job.clone(),
        datasets,
    })
}

/// Decodes every row group of a dataset and sums the decoder's counts.
pub async fn scan_dataset(
    manifest: &Arc<DatasetManifest>,
    plan: &Arc<DecodePlan>,
    job: &Job,
) -> Result<DecodeStats> {
    let data = &job.spec.data;
    let reader = ShardReader::new(
        manifest.clone(),
        plan.clone(),
        data.decode_threads,
        data.read_batch_rows,
    );
    futures::stream::iter(manifest.row_group_shards())
        .flat_map(|shard| reader.read(shard))
        .try_fold(DecodeStats::default(), |mut acc, rg| async move {
            acc.merge(&rg.stats);
            Ok(acc)
        })
        .await
}

impl fmt::Display for ValidationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let spec = &self.job.spec;
        let funnel = &self.job.funnel;
        writeln!(f, "job `{}` (spec version {})", spec.name, spec.version)?;
        writeln!(
            f,
            "funnel: {} stages, {} towers{}",
            funnel.stages.len(),
            funnel.tower_count(),
            funnel
                .preset
                .map(|p| format!(" (preset {p})"))
                .unwrap_or_default()
        )?;
        for s in &funnel.stages {
            let label = if s.is_labelled() {
                s.label_columns.join(" | ")
            } else {
                "(no label: learnt implicitly)".into()
            };
            let given = s
                .given
                .map(|g| funnel.stages[g].name.as_str())
                .unwrap_or("impression");
            let branch = s
                .branch_on
                .map(|b| format!(", branch on {}", funnel.stages[b].name))
                .unwrap_or_default();
            writeln!(
                f,
                "  {:<12} label {:<28} given {given}{branch}",
                s.name, label
            )?;
        }
        let feats = &spec.features;
        writeln!(
            f,
            "features: {} categorical, {} list, {} numeric; towers {:?} {:?}; batch {} x {} epochs",
            feats.categorical.len(),
            feats.list.len(),
            feats.numeric.len(),
            spec.towers.kind,
            spec.towers.hidden,
            spec.train.batch_size,
            spec.train.epochs
        )?;
        for d in &self.datasets {
            writeln!(
                f,
                "{}: {} -> {} objects, {} row groups, {} rows, {:.1} MB",
                d.key,
                d.url,
                d.objects,
                d.row_groups,
                d.rows,
                d.bytes as f64 / 1e6
            )?;
            if let Some(s) = &d.scan {
                writeln!(f, "  scanned {} rows, kept {}", s.rows_read, s.rows_kept)?;
                writeln!(
                    f,
                    "  funnel-inconsistent rows: {} (policy {:?}: dropped {}, repaired {})",
                    s.inconsistent_rows,
                    spec.data.inconsistent_labels,
                    s.dropped_inconsistent,
                    s.repaired
                )?;
                for (what, n) in &s.inconsistent {
                    writeln!(f, "    {what}: {n}")?;
                }
                writeln!(
                    f,
                    "  rows skipped for bad labels: {} (policy {:?}); numeric values filled: {}",
                    s.skipped_bad_labels, spec.data.bad_rows, s.numeric_filled
                )?;
            }
        }
        Ok(())
    }
}
