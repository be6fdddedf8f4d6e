//! Funnel's metrics against scikit-learn: tests/fixtures/metrics_sklearn.json holds score/label
//! sets and the values scikit-learn and numpy compute for them (regenerated and checked by
//! tests/python/test_metrics_sklearn.py). Each set goes through `funnel_common::metrics` whole, in
//! small batches and merged across "workers" in both orders; all must give the same bits, and
//! those must match scikit-learn's values within `TOLERANCE`.

use std::path::Path;

use funnel_common::metrics::{
    FunnelMetrics, TargetMetrics, TargetSummary, auc, calibration, logloss,
};
use funnel_common::spec::{FunnelSpec, ResolvedFunnel};
use serde_json::Value;

/// The issue asks for 1e-9; the values agree far closer (the largest difference is printed with
/// `--nocapture`: under 1e-15 for this fixture), so the bound is the Python side's 1e-12.
const TOLERANCE: f64 = 1e-12;

fn fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/metrics_sklearn.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).expect("fixture is JSON")
}

/// Scores are decimal strings, read with the correctly rounded `str::parse`.
fn scores(v: &Value) -> Vec<f64> {
    let items = v.as_array().expect("an array of score strings");
    let parse = |s: &Value| {
        s.as_str()
            .and_then(|s| s.parse().ok())
            .expect("a score string")
    };
    items.iter().map(parse).collect()
}

fn labels(v: &Value) -> Vec<u8> {
    let items = v.as_array().expect("an array of labels");
    let label = |l: &Value| {
        l.as_u64()
            .and_then(|l| u8::try_from(l).ok())
            .expect("a label")
    };
    items.iter().map(label).collect()
}

/// Checks a summary against the fixture's expected values; returns the largest difference.
fn check(got: &TargetSummary, want: &Value, what: &str) -> f64 {
    assert_eq!(Some(got.rows), want["rows"].as_u64(), "{what}: rows");
    assert_eq!(
        Some(got.positives),
        want["positives"].as_u64(),
        "{what}: positives"
    );
    assert_eq!(got.non_finite, 0, "{what}");
    let mut worst: f64 = 0.0;
    for (key, value) in [
        ("auc", got.auc),
        ("logloss", got.logloss),
        ("calibration", got.calibration),
        ("mean_prediction", got.mean_prediction),
    ] {
        match (value, want[key].as_f64()) {
            (Some(g), Some(w)) => {
                assert!(
                    (g - w).abs() <= TOLERANCE,
                    "{what}.{key}: {g} vs sklearn {w}"
                );
                worst = worst.max((g - w).abs());
            }
            (None, None) => assert!(want[key].is_null(), "{what}.{key}"),
            (g, _) => panic!("{what}.{key}: {g:?} vs sklearn {}", want[key]),
        }
    }
    worst
}

/// Whole, in batches of 7 rows (most without positives), and split in two merged both ways.
fn accumulate_every_way(scores: &[f64], labels: &[u8], what: &str) -> TargetSummary {
    let whole = TargetMetrics::from_parts(scores.to_vec(), labels.to_vec()).expect("rows match");
    let mut batched = TargetMetrics::new();
    for (s, l) in scores.chunks(7).zip(labels.chunks(7)) {
        batched.push_batch(s, l).expect("rows match");
    }
    let cut = scores.len() / 3;
    let a = TargetMetrics::from_parts(scores[..cut].to_vec(), labels[..cut].to_vec());
    let b = TargetMetrics::from_parts(scores[cut..].to_vec(), labels[cut..].to_vec());
    let (a, b) = (a.expect("rows match"), b.expect("rows match"));
    let (mut ab, mut ba) = (a.clone(), b.clone());
    ab.merge(&b);
    ba.merge(&a);
    let summary = whole.finish();
    for other in [&batched, &ab, &ba] {
        assert_eq!(
            other.finish(),
            summary,
            "{what}: batching or merge order changed a value"
        );
    }
    summary
}

#[test]
fn target_metrics_match_sklearn() {
    let fixture = fixture();
    let cases = fixture["cases"].as_array().expect("cases");
    assert!(cases.len() >= 8);
    let mut worst: f64 = 0.0;
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let (s, l) = (scores(&case["scores"]), labels(&case["labels"]));
        let summary = accumulate_every_way(&s, &l, name);
        worst = worst.max(check(&summary, &case["expected"], name));
        // The slice functions agree with the accumulator bit for bit.
        assert_eq!(auc(&s, &l), summary.auc, "{name}");
        assert_eq!(logloss(&s, &l), summary.logloss, "{name}");
        assert_eq!(calibration(&s, &l), summary.calibration, "{name}");
    }
    println!("target metrics: largest difference from scikit-learn {worst:e}");
}

#[test]
fn funnel_metrics_and_cvr_auc_match_sklearn() {
    let fixture = fixture();
    let f = &fixture["funnel"];
    let preset = f["preset"].as_str().expect("preset");
    let spec = FunnelSpec {
        preset: Some(preset.into()),
        ..FunnelSpec::default()
    };
    let funnel = ResolvedFunnel::resolve(&spec).expect("preset resolves");
    let template = FunnelMetrics::for_funnel(&funnel);
    let targets: Vec<String> = template.targets().map(|(n, _)| n.to_owned()).collect();
    let predictions: Vec<Vec<f64>> = targets
        .iter()
        .map(|t| scores(&f["predictions"][t]))
        .collect();
    let label_sets: Vec<Vec<u8>> = targets.iter().map(|t| labels(&f["labels"][t])).collect();
    let cond = &f["conditional"];
    let cond_name = cond["name"].as_str().expect("conditional name");
    let (name, stage, given, _) = template.conditionals().next().expect("ESMM has a CVR");
    assert_eq!(
        (name, Some(stage), Some(given)),
        (cond_name, cond["stage"].as_str(), cond["given"].as_str())
    );
    let cvr = vec![scores(&cond["scores"])];

    let mut whole = template.clone();
    whole
        .push(&predictions, &label_sets, &cvr)
        .expect("valid batch");
    // Two workers taking alternate batches of 16 rows, merged.
    let mut workers = [template.clone(), template.clone()];
    let rows = label_sets[0].len();
    for (i, start) in (0..rows).step_by(16).enumerate() {
        let end = (start + 16).min(rows);
        let cut = |v: &[Vec<f64>]| v.iter().map(|x| x[start..end].to_vec()).collect::<Vec<_>>();
        let l: Vec<Vec<u8>> = label_sets.iter().map(|x| x[start..end].to_vec()).collect();
        workers[i % 2]
            .push(&cut(&predictions), &l, &cut(&cvr))
            .expect("valid batch");
    }
    let [mut merged, other] = workers;
    merged.merge(&other).expect("same layout");
    let report = whole.finish();
    assert_eq!(merged.finish(), report);

    let want = &f["expected"];
    let mut worst: f64 = 0.0;
    for t in &targets {
        let got = report.target(t).expect("target reported");
        worst = worst.max(check(got, &want["targets"][t], t));
    }
    let got = report.conditional(cond_name).expect("conditional reported");
    worst = worst.max(check(got, &want["conditional"], cond_name));
    assert!(got.rows < rows as u64, "CVR AUC counts clicked rows only");
    println!("funnel metrics: largest difference from scikit-learn {worst:e}");
}
