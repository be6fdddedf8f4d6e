//! Unit tests of [`super::FunnelMetrics`].

use super::*;
use crate::metrics::auc;
use crate::rng::SplitMix64;
use crate::spec::FunnelSpec;

fn esmm() -> FunnelMetrics {
    FunnelMetrics::new(["click", "purchase"])
        .and_then(|m| m.with_conditional("cvr", "purchase", "click"))
        .expect("valid layout")
}

/// An ESMM batch: predictions [pCTR, pCTCVR], labels [click, purchase], scores [pCVR].
type EsmmBatch = (Vec<Vec<f64>>, Vec<Vec<u8>>, Vec<Vec<f64>>);

fn esmm_rows(seed: u64, n: usize) -> EsmmBatch {
    let mut rng = SplitMix64::new(seed);
    let (mut ctr, mut cvr, mut click, mut buy) = (vec![], vec![], vec![], vec![]);
    for _ in 0..n {
        let p_click = (rng.below(10) as f64 + 0.5) / 20.0;
        let p_buy = (rng.below(8) as f64 + 0.5) / 10.0;
        let c = rng.bernoulli(p_click);
        ctr.push(p_click);
        cvr.push(p_buy);
        click.push(u8::from(c));
        buy.push(u8::from(c && rng.bernoulli(p_buy * 0.3)));
    }
    let ctcvr = ctr.iter().zip(&cvr).map(|(a, b)| a * b).collect();
    (vec![ctr, ctcvr], vec![click, buy], vec![cvr])
}

#[test]
fn cvr_auc_counts_clicked_rows_only() {
    let mut m = esmm();
    let cvr = [0.9, 0.2, 0.4, 0.6, 0.99, 0.95];
    let click: [u8; 6] = [1, 1, 1, 1, 0, 0];
    let buy: [u8; 6] = [1, 0, 1, 0, 0, 0];
    let ctcvr: Vec<f64> = cvr.iter().map(|p| p * 0.5).collect();
    m.push(&[&[0.5; 6][..], &ctcvr[..]], &[click, buy], &[&cvr[..]])
        .expect("valid");
    let report = m.finish();
    let c = report.conditional("cvr").expect("declared");
    // Clicked rows: (0.9, 1) (0.2, 0) (0.4, 1) (0.6, 0): 3 of 4 pairs ordered right. Counting
    // the unclicked rows (0.99 and 0.95, both negative) would give 3 of 8.
    assert_eq!(c.auc, Some(0.75));
    assert_eq!(auc(&cvr, &buy), Some(3.0 / 8.0));
    assert_eq!((c.rows, c.positives), (4, 2));
    let purchase = report.target("purchase").expect("target");
    assert_eq!((purchase.rows, purchase.positives), (6, 2));
    assert_eq!(purchase.auc, auc(&ctcvr, &buy));
    assert_eq!(report.target("click").expect("target").auc, Some(0.5));
}

#[test]
fn for_funnel_declares_every_conditional_step() {
    let layout = |preset: &str| {
        let spec = FunnelSpec {
            preset: Some(preset.into()),
            ..FunnelSpec::default()
        };
        let funnel = ResolvedFunnel::resolve(&spec).expect("preset resolves");
        let m = FunnelMetrics::for_funnel(&funnel);
        let targets: Vec<String> = m.targets().map(|(n, _)| n.to_owned()).collect();
        let conds: Vec<String> = m
            .conditionals()
            .map(|(n, s, g, _)| format!("{n}={s}/{g}"))
            .collect();
        (targets, conds)
    };
    assert_eq!(
        layout("esmm"),
        (
            vec!["click".into(), "purchase".into()],
            vec!["purchase|click=purchase/click".into()]
        )
    );
    let (targets, conds) = layout("esm2");
    assert_eq!(targets, ["click", "action", "purchase"]);
    assert_eq!(
        conds,
        ["action|click=action/click", "purchase|click=purchase/click"]
    );
    let (targets, conds) = layout("click-fav-order-pay");
    assert_eq!(targets, ["click", "favorite", "order", "pay"]);
    assert_eq!(
        conds,
        [
            "favorite|click=favorite/click",
            "order|click=order/click",
            "pay|order=pay/order"
        ]
    );
}

#[test]
fn batching_and_merge_order_change_no_bit() {
    let (preds, labels, cvr) = esmm_rows(5, 6000);
    let mut whole = esmm();
    whole.push(&preds, &labels, &cvr).expect("valid");
    let whole = whole.finish();
    assert!(whole.conditional("cvr").and_then(|c| c.auc).is_some());

    // Two workers, each in batches of 0..=24 rows (most without a purchase), merged both ways.
    let mut rng = SplitMix64::new(8);
    let mut workers = [esmm(), esmm()];
    let mut start = 0;
    let slice = |v: &[Vec<f64>], a, b| v.iter().map(|x| x[a..b].to_vec()).collect::<Vec<_>>();
    while start < 6000 {
        let end = (start + rng.below(25) as usize).min(6000);
        let l: Vec<Vec<u8>> = labels.iter().map(|x| x[start..end].to_vec()).collect();
        let w = &mut workers[rng.below(2) as usize];
        w.push(&slice(&preds, start, end), &l, &slice(&cvr, start, end))
            .expect("valid");
        start = end;
    }
    let [a, b] = workers;
    let mut ab = a.clone();
    ab.merge(&b).expect("same layout");
    let mut ba = b.clone();
    ba.merge(&a).expect("same layout");
    assert_eq!(ab.finish(), whole);
    assert_eq!(ba.finish(), whole);
}

#[test]
fn a_bad_batch_is_refused_whole() {
    let mut m = esmm();
    let ok = vec![0.5f32; 3];
    let short = vec![0.5f32; 2];
    let labels = [vec![1u8, 0, 1], vec![0u8, 0, 1]];
    let err = m
        .push(&[&ok, &ok], &labels, &[])
        .expect_err("no cvr scores");
    assert!(
        err.to_string()
            .contains("conditional scores: got 0 arrays, expected 1"),
        "{err}"
    );
    let err = m
        .push(&[&ok, &short], &labels, &[&ok])
        .expect_err("short predictions");
    assert!(
        err.to_string()
            .contains("predictions of target `purchase` has 2 rows"),
        "{err}"
    );
    let err = m
        .push(&[&ok, &ok], &labels, &[&short])
        .expect_err("short scores");
    assert!(
        err.to_string().contains("scores of conditional `cvr`"),
        "{err}"
    );
    assert!(m.targets().all(|(_, t)| t.rows() == 0));
    assert!(m.conditionals().all(|(.., t)| t.rows() == 0));
    m.push(&[&ok, &ok], &labels, &[&ok]).expect("valid");
    assert_eq!(m.finish().conditional("cvr").map(|c| c.rows), Some(2));
    m.clear();
    assert_eq!(m.finish().target("click").map(|c| c.rows), Some(0));
}

#[test]
fn layouts_are_checked() {
    assert_eq!(
        FunnelMetrics::new(["click", "click"]).err(),
        Some(MetricsError::Duplicate("click".into()))
    );
    let unknown =
        FunnelMetrics::new(["click"]).and_then(|m| m.with_conditional("x", "buy", "click"));
    assert_eq!(
        unknown.err(),
        Some(MetricsError::UnknownTarget("buy".into()))
    );
    let twice = esmm().with_conditional("cvr", "purchase", "click");
    assert_eq!(twice.err(), Some(MetricsError::Duplicate("cvr".into())));
    let mut m = esmm();
    let other = FunnelMetrics::new(["click", "purchase"]).expect("valid");
    let err = m.merge(&other).expect_err("different conditionals");
    assert!(
        err.to_string()
            .contains("conditional [cvr = purchase given click]"),
        "{err}"
    );
    m.target_mut("click").expect("target").push(0.3, 1);
    m.conditional_mut("cvr").expect("conditional").push(0.3, 1);
    assert!(m.target_mut("nope").is_none());
    assert_eq!(m.finish().conditional("cvr").map(|c| c.rows), Some(1));
}

#[test]
fn report_is_one_json_object_per_line() {
    let mut m = esmm();
    m.push(
        &[vec![0.1, 0.7], vec![0.05, 0.3]],
        &[vec![0, 1], vec![0, 0]],
        &[vec![0.5, 0.4]],
    )
    .expect("valid");
    let report = m.finish();
    let line = serde_json::to_string(&report).expect("serialises");
    assert!(!line.contains('\n'));
    let v: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(v["targets"][0]["stage"], "click");
    assert_eq!(v["targets"][0]["auc"], 1.0);
    assert_eq!(
        v["targets"][1]["auc"],
        serde_json::Value::Null,
        "no purchase: no AUC"
    );
    assert_eq!(v["conditional"][0]["name"], "cvr");
    assert_eq!(v["conditional"][0]["given"], "click");
    assert_eq!(v["conditional"][0]["rows"], 1);
    // serde_json (without its `float_roundtrip` feature) may read a 17-digit float one ulp off,
    // e.g. "0.39999999999999997" as 0.4, so the round trip is compared to within a few ulps.
    let back: FunnelReport = serde_json::from_str(&line).expect("round trip");
    let close = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() <= 4.0 * f64::EPSILON * a.abs(),
        (a, b) => a == b,
    };
    let summaries = |r: &FunnelReport| {
        let t = r.targets.iter().map(|t| (t.stage.clone(), t.metrics));
        let c = r
            .conditional
            .iter()
            .map(|c| (format!("{}={}/{}", c.name, c.stage, c.given), c.metrics));
        t.chain(c).collect::<Vec<_>>()
    };
    let (got, want) = (summaries(&back), summaries(&report));
    assert_eq!(got.len(), want.len());
    for ((gn, g), (wn, w)) in got.iter().zip(&want) {
        assert_eq!(
            (gn, g.rows, g.positives, g.non_finite),
            (wn, w.rows, w.positives, w.non_finite)
        );
        for (a, b) in [
            (g.auc, w.auc),
            (g.logloss, w.logloss),
            (g.calibration, w.calibration),
        ] {
            assert!(close(a, b), "{gn}: {a:?} vs {b:?}");
        }
        assert!(close(g.mean_prediction, w.mean_prediction), "{gn}");
    }
}
