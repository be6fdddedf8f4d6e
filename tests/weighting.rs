//! Task weighting end to end (`funnel train`, one worker): on a funnel built so that one
//! target's weighted gradient is about ten times another's (click weighted 10, pay 1), GradNorm
//! shrinks the imbalance of the weighted gradient norms epoch over epoch; every strategy trains
//! and logs its weights per epoch, and they never go non-positive.

mod support;

use std::path::Path;
use support::{funnel, gen_job};

fn setup(dir: &Path, weighting: &str) -> String {
    let spec = gen_job(
        dir,
        &[
            "--rows",
            "24000",
            "--files",
            "1",
            "--row-group-rows",
            "4000",
            "--users",
            "500",
            "--items",
            "2000",
        ],
        &[
            ("hidden = [256, 128]", "hidden = [16, 8]"),
            ("batch_size = 1024", "batch_size = 256"),
            ("epochs = 2", "epochs = 4"),
            ("weighting = \"fixed\"", weighting),
        ],
    );
    let text = std::fs::read_to_string(&spec).expect("spec");
    assert!(text.contains("epochs = 4"));
    spec
}

/// Trains `spec` into `<dir>/out` on one compute thread (reproducible) and returns its
/// metrics.jsonl records.
fn train(dir: &Path, spec: &str) -> Vec<serde_json::Value> {
    let out = dir.join("out");
    let url = format!("file://{}", out.display());
    funnel(&[
        "train",
        "--config",
        spec,
        "--output",
        &url,
        "--threads",
        "1",
    ])
    .success();
    records(&out)
}

fn records(output: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(output.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

fn values(v: &serde_json::Value) -> Vec<f64> {
    match v {
        serde_json::Value::Object(m) => m.values().map(|x| x.as_f64().expect("f64")).collect(),
        serde_json::Value::Array(a) => a.iter().map(|x| x.as_f64().expect("f64")).collect(),
        other => panic!("not numbers: {other}"),
    }
}

#[test]
fn gradnorm_shrinks_a_tenfold_gradient_imbalance_epoch_over_epoch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = setup(
        dir.path(),
        "weighting = \"gradnorm\"\ngradnorm_every = 2\ngradnorm_lr = 0.2\n\
         weights = { click = 10.0, favorite = 1.0, order = 1.0, pay = 1.0 }",
    );
    let recs = train(dir.path(), &spec);
    assert_eq!(recs.len(), 4);
    // |ln(G_click / G_pay)|: how far apart the weighted gradient norms at the shared layer of
    // the constructed pair are, per epoch (0 = balanced).
    let imbalance: Vec<f64> = recs
        .iter()
        .map(|r| {
            let g = values(&r["train"]["grad_norms"]);
            (g[0] / g[3]).ln().abs()
        })
        .collect();
    let weights: Vec<Vec<f64>> = recs.iter().map(|r| values(&r["weights"])).collect();
    eprintln!("imbalance per epoch {imbalance:?}\nweights {weights:?}");
    assert!(
        imbalance[0] > 5f64.ln(),
        "the constructed imbalance is there: {imbalance:?}"
    );
    assert!(
        imbalance.windows(2).all(|p| p[1] < p[0]),
        "GradNorm shrinks the imbalance epoch over epoch: {imbalance:?}"
    );
    assert!(weights.iter().flatten().all(|w| *w > 0.0));
    // The click weight came down from its tenfold start.
    assert!(weights[3][0] < weights[0][0], "{weights:?}");
}

#[test]
fn every_strategy_trains_and_logs_positive_weights() {
    for weighting in [
        "weighting = \"dwa\"",
        "weighting = \"uwl\"",
        "weighting = \"gradnorm\"\ngradnorm_alpha = 3.0\ngradnorm_lr = 20.0\ngradnorm_every = 1",
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = setup(dir.path(), weighting);
        let recs = train(dir.path(), &spec);
        let weights: Vec<Vec<f64>> = recs.iter().map(|r| values(&r["weights"])).collect();
        eprintln!("{weighting}: {weights:?}");
        assert_eq!(weights.len(), 4);
        assert!(
            weights.iter().flatten().all(|w| *w > 0.0 && w.is_finite()),
            "{weighting}: {weights:?}"
        );
        // Each adaptive strategy moved the weights by the last epoch (DWA from the third).
        assert_ne!(weights[0], weights[3], "{weighting}: {weights:?}");
    }
}
