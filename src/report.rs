//! `funnel report OUTPUT`, and the report written at the end of `funnel train` and of
//! `funnel coordinator` (the work is in `funnel_worker::report`).

use crate::args::ReportArgs;
use anyhow::Result;
use funnel_common::oracle::Oracle;
use funnel_common::spec::Job;
use funnel_common::store::StoreUrl;
use funnel_worker::report::{SpecChoice, write_report};

pub async fn run_report(a: ReportArgs) -> Result<()> {
    let output = StoreUrl::open(&a.output, "output")?.url.to_string();
    let job = a.config.as_deref().map(Job::load).transpose()?;
    let origin = a
        .config
        .as_ref()
        .map(|c| c.display().to_string())
        .unwrap_or_default();
    let spec = match &job {
        Some(job) => SpecChoice::Given(job, &origin),
        None => SpecChoice::FromOutput,
    };
    let written = write_report(&output, spec).await?;
    for f in written.files.iter().skip(1) {
        println!("  wrote {f}");
    }
    match &written.oracle {
        Oracle::Computed { targets, .. } => {
            let each: Vec<String> = targets
                .iter()
                .map(|t| match t.auc {
                    Some(a) => format!("{} {a:.4}", t.stage),
                    None => format!("{} -", t.stage),
                })
                .collect();
            println!("oracle AUC: {}", each.join(", "));
        }
        Oracle::Unavailable(why) => println!("no oracle: {why}"),
    }
    println!(
        "{} epochs reported\nreport: {}",
        written.epochs, written.index
    );
    Ok(())
}

/// The report of a job that just trained into `output` with `job` (read from `origin`). Its
/// page's location, or None: a report that cannot be written is a warning, never a failure of
/// the job that trained.
pub async fn after_training(output: &str, job: &Job, origin: &str) -> Option<String> {
    match write_report(output, SpecChoice::Given(job, origin)).await {
        Ok(written) => Some(written.index),
        Err(e) => {
            tracing::warn!(error = %e, "the run report was not written");
            eprintln!("warning: the run report was not written: {e}");
            None
        }
    }
}
