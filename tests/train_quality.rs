//! Training quality against the oracle: on gen-data, whose `truth_p_*` columns hold each row's
//! true probability, the trained model's eval AUC per target is compared with the oracle AUC
//! (the truth column's AUC on the same eval rows).
//!
//! The issue asks for every target within 0.01 of the oracle at 2M training rows
//! (docs/training.md "Quality against the oracle" has the full-size figures). This test runs
//! 360k training rows of a small world in CI with the documented recipe for 3 epochs and
//! asserts the gaps measured here with a margin of 0.005-0.006 (`MAX_GAP`); a broken model
//! (AUC ~0.5) or funnel (children above parents), or a loss of what deep-fwfm, weight decay and
//! the cosine schedule gained, fails it.

mod support;

use funnel_common::oracle::{Oracle, oracle_aucs};
use funnel_common::spec::Job;
use std::path::Path;
use support::funnel;

/// Largest accepted (oracle AUC - model AUC) per target at this size, in `TARGETS` order.
/// Measured (2 threads, seed 42; deterministic run to run, debug and release alike): click
/// 0.039, favorite 0.042, order 0.021, pay 0.020 (without the query x category cross, which
/// helps at 2M rows but not at 360k: 0.040, 0.039, 0.018, 0.015). The recipe before the cosine
/// schedule, the separate history table and the cross (constant rates, lr 0.001, sparse_lr
/// 0.005) measured 0.047, 0.049, 0.023, 0.021, beyond the click and favorite bounds.
const MAX_GAP: [f64; 4] = [0.045, 0.047, 0.027, 0.026];
const TARGETS: [&str; 4] = ["click", "favorite", "order", "pay"];

/// Oracle AUC per target over the job's eval data (the library code the run report uses).
fn oracle(spec: &Path) -> Vec<f64> {
    let job = Job::load(spec).expect("spec");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let oracle = runtime.block_on(oracle_aucs(&job)).expect("oracle");
    assert!(matches!(oracle, Oracle::Computed { .. }), "{oracle:?}");
    TARGETS
        .iter()
        .map(|t| oracle.auc(t).expect("oracle auc"))
        .collect()
}

#[test]
fn eval_auc_approaches_the_oracle_on_gen_data() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let spec = dir.path().join("job.toml");
    // A world small enough to be learnable from 360k rows: 200 users, 500 items.
    let data_url = format!("file://{}", data.display());
    funnel(&[
        "gen-data",
        "--output",
        &data_url,
        "--rows",
        "400000",
        "--files",
        "2",
        "--row-group-rows",
        "32768",
        "--users",
        "200",
        "--items",
        "500",
        "--categories",
        "50",
        "--queries",
        "200",
        "--write-config",
        spec.to_str().expect("utf8"),
    ])
    .success();
    // DeepFM with a field-weighted FM per tower (dot products between fields: the truth's
    // user-item affinity and query-category match are such products, weighed differently by
    // each tower), equal field widths, small towers, the history list on a table of its own, a
    // small query x category cross, weight decay on both sides, higher rates with a cosine
    // schedule (tests/fixtures/quality_recipe.json, shared with bench/quality.sh), 3 epochs: the
    // recipe of docs/training.md "Quality against the oracle".
    let mut text = std::fs::read_to_string(&spec).expect("spec");
    let recipe: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/quality_recipe.json")).expect("recipe");
    for edit in recipe["edits"].as_array().expect("edits") {
        let (old, new) = (
            edit["old"].as_str().expect("old"),
            edit["new"].as_str().expect("new"),
        );
        assert!(text.contains(old), "the written spec has no {old:?}");
        text = text.replace(old, new);
    }
    let text = text.replace("epochs = 2", "epochs = 3");
    assert!(
        text.contains("deep-fwfm")
            && text.contains("sparse_weight_decay")
            && text.contains("lr_schedule")
            && text.contains("cross = ")
            && text.contains("lr = 0.002")
            && text.matches("table = \"items\"").count() == 1
            && text.contains("epochs = 3")
    );
    std::fs::write(&spec, text).expect("write spec");
    let out = dir.path().join("out");
    let run = funnel(&[
        "train",
        "--config",
        spec.to_str().expect("utf8"),
        "--output",
        out.to_str().expect("utf8"),
        "--threads",
        "2",
    ])
    .success();
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics");
    let last: serde_json::Value =
        serde_json::from_str(metrics.lines().last().expect("a line")).expect("json");
    let oracle = oracle(&spec);
    let mut report = String::new();
    for (k, t) in TARGETS.iter().enumerate() {
        let got = last["eval"]["metrics"]["targets"][k]["auc"]
            .as_f64()
            .expect("auc");
        report.push_str(&format!(
            "{t}: model {got:.4}, oracle {:.4}, gap {:.4}\n",
            oracle[k],
            oracle[k] - got
        ));
    }
    eprintln!("{report}");
    for (k, t) in TARGETS.iter().enumerate() {
        let got = last["eval"]["metrics"]["targets"][k]["auc"]
            .as_f64()
            .expect("auc");
        assert!(
            oracle[k] - got <= MAX_GAP[k],
            "{t} is more than {} below the oracle:\n{report}\n{}",
            MAX_GAP[k],
            run.stdout
        );
    }
}
