//! The report drawn from small fixture metrics.jsonl files in an in-memory store.

use super::*;
use funnel_common::oracle::OracleAuc;

/// Two epochs of a two-target job, as `local::epoch_record` writes them.
const TWO_EPOCHS: &str = r#"{"epoch":0,"step":10,"train":{"rows":1000,"steps":10,"seconds":2.0,"rows_per_s":500.0,"loss":0.4,"task_losses":{"click":0.3,"pay":0.1},"grad_norms":null},"weights":{"click":1.0,"pay":1.0},"eval":{"metrics":{"targets":[{"stage":"click","auc":0.6123,"logloss":0.25,"calibration":0.9,"mean_prediction":0.05,"rows":100,"positives":5,"non_finite":0},{"stage":"pay","auc":0.7,"logloss":0.05,"calibration":1.2,"mean_prediction":0.01,"rows":100,"positives":1,"non_finite":0}],"conditional":[{"name":"pay|click","stage":"pay","given":"click","auc":0.55,"rows":5,"positives":1}]}}}
{"epoch":1,"step":20,"train":{"rows":1000,"steps":10,"seconds":1.0,"rows_per_s":1000.0,"loss":0.3,"task_losses":{"click":0.2,"pay":0.08}},"weights":{"click":1.25,"pay":0.75},"eval":{"metrics":{"targets":[{"stage":"click","auc":0.6789,"logloss":0.2,"calibration":0.95,"rows":100,"positives":5},{"stage":"pay","auc":0.75,"logloss":0.04,"calibration":1.1,"rows":100,"positives":1}],"conditional":[]}}}
"#;

/// Polylines of stroke width 2 (the series) in `svg`, as (stroke colour, point count).
fn series_lines(svg: &str) -> Vec<(String, usize)> {
    svg.split("<polyline")
        .skip(1)
        .map(|tag| &tag[..tag.find("/>").unwrap_or(tag.len())])
        .filter(|tag| tag.contains("stroke-width=\"2\""))
        .map(|tag| {
            let attr = |name: &str| {
                let key = format!("{name}=\"");
                let start = tag.find(&key).map(|i| i + key.len()).unwrap_or(0);
                let end = tag[start..].find('"').map_or(tag.len(), |e| start + e);
                tag[start..end].to_string()
            };
            (attr("stroke"), attr("points").split_whitespace().count())
        })
        .collect()
}

/// The contents of the `<text>` elements of `svg`, trimmed.
fn texts(svg: &str) -> Vec<&str> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let start = t.find('>')? + 1;
            let end = t.find("</text>")?;
            Some(t[start..end].trim())
        })
        .collect()
}

fn hex(i: usize) -> String {
    let c = plots::colour(i);
    format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
}

async fn put_metrics(output: &str, text: &str) {
    let out = StoreUrl::open(output, "output").expect("store");
    put(&out, &out.child("metrics.jsonl"), text.to_string())
        .await
        .expect("put");
}

async fn read(output: &str, name: &str) -> String {
    let out = StoreUrl::open(output, "output").expect("store");
    let path = out.child(&format!("report/{name}"));
    let bytes = out
        .store
        .get(&path)
        .await
        .expect("written")
        .bytes()
        .await
        .expect("bytes");
    String::from_utf8(bytes.to_vec()).expect("utf8")
}

#[tokio::test]
async fn two_epochs_draw_one_series_per_target_and_the_tables() {
    let output = "memory://report-unit/two";
    put_metrics(output, TWO_EPOCHS).await;
    let written = write_report(output, SpecChoice::FromOutput)
        .await
        .expect("report");
    assert_eq!(written.epochs, 2);
    assert_eq!(written.files.len(), 6, "{:?}", written.files);
    assert!(written.index.ends_with("report/index.html"));
    for plot in ["loss", "auc", "calibration", "weights"] {
        let svg = read(output, &format!("{plot}.svg")).await;
        assert!(svg.starts_with("<svg"), "{plot}");
        let lines = series_lines(&svg);
        assert_eq!(
            lines,
            vec![(hex(0), 2), (hex(1), 2)],
            "{plot}: one series per target, a point per epoch"
        );
        let texts = texts(&svg);
        assert!(
            texts.contains(&"click") && texts.contains(&"pay"),
            "{plot} legend: {texts:?}"
        );
    }
    let throughput = read(output, "throughput.svg").await;
    assert_eq!(series_lines(&throughput), vec![(hex(0), 2)]);
    // Calibration has its 1.0 reference; AUC has no oracle without a spec.
    let calibration = read(output, "calibration.svg").await;
    assert!(texts(&calibration).contains(&"calibrated (1.0)"));
    let auc = read(output, "auc.svg").await;
    assert!(!texts(&auc).iter().any(|t| t.starts_with("oracle")));
    let page = read(output, "index.html").await;
    for want in [
        "0.6123",
        "0.6789",
        "1.2500",
        "0.7500",
        "1000",
        "0.3000",
        "pay|click",
        "no oracle",
        "memory://report-unit/two",
        "loss.svg",
        "throughput.svg",
    ] {
        assert!(page.contains(want), "index.html lacks {want}:\n{page}");
    }
}

#[tokio::test]
async fn one_epoch_without_eval_reports_training_only() {
    let output = "memory://report-unit/one";
    let line = r#"{"epoch":0,"step":3,"train":{"rows":30,"seconds":0.5,"rows_per_s":60.0,"loss":0.5,"task_losses":{"click":0.5}},"weights":{"click":1.0},"eval":null}"#;
    put_metrics(output, line).await;
    let written = write_report(output, SpecChoice::FromOutput)
        .await
        .expect("report");
    assert_eq!(written.epochs, 1);
    // Loss, weights and throughput; no AUC or calibration plot without eval.
    assert_eq!(written.files.len(), 4, "{:?}", written.files);
    let loss = read(output, "loss.svg").await;
    assert_eq!(series_lines(&loss), vec![(hex(0), 1)]);
    let page = read(output, "index.html").await;
    assert!(page.contains("No evaluation recorded"), "{page}");
    assert!(page.contains("nothing recorded"), "{page}");
}

#[tokio::test]
async fn a_malformed_line_is_an_error_naming_the_file_and_line() {
    let output = "memory://report-unit/bad";
    let mut text = TWO_EPOCHS.to_string();
    text.push_str("{\"epoch\": 2, \"train\": \n");
    put_metrics(output, &text).await;
    let err = write_report(output, SpecChoice::FromOutput)
        .await
        .expect_err("malformed");
    let msg = err.to_string();
    assert!(
        msg.contains("metrics.jsonl") && msg.contains("line 3"),
        "{msg}"
    );
    let not_a_number = r#"{"epoch":0,"weights":{"click":"heavy"}}"#;
    let err = parse_metrics("m.jsonl", not_a_number).expect_err("bad weight");
    assert!(err.to_string().contains("line 1") && err.to_string().contains("weights.click"));
    let missing = write_report("memory://report-unit/none", SpecChoice::FromOutput)
        .await
        .expect_err("no metrics");
    assert!(missing.to_string().contains("metrics.jsonl does not exist"));
}

#[tokio::test]
async fn the_oracle_is_a_dashed_line_per_target_and_a_column_of_the_table() {
    let output = "memory://report-unit/oracle";
    let out = StoreUrl::open(output, "output").expect("store");
    let history = parse_metrics("fixture", TWO_EPOCHS).expect("parse");
    let oracle = Oracle::Computed {
        eval: "memory://data/eval/".into(),
        targets: vec![
            OracleAuc {
                stage: "click".into(),
                auc: Some(0.8321),
                rows: 100,
            },
            OracleAuc {
                stage: "pay".into(),
                auc: Some(0.9123),
                rows: 100,
            },
        ],
    };
    let info = html::PageInfo {
        job: "fixture-job",
        output,
        spec_source: "test",
    };
    write_files(&out, &history, &info, &oracle)
        .await
        .expect("written");
    let auc = read(output, "auc.svg").await;
    assert_eq!(series_lines(&auc), vec![(hex(0), 2), (hex(1), 2)]);
    for t in ["oracle click", "oracle pay"] {
        assert!(texts(&auc).contains(&t), "legend names {t}");
    }
    // Dashes: width-1 polylines in each target's colour.
    for i in 0..2 {
        let dash = format!("stroke=\"{}\" stroke-width=\"1\"", hex(i));
        assert!(auc.matches(&dash).count() > 5, "dashed oracle line {i}");
    }
    let page = read(output, "index.html").await;
    // click epoch 2: oracle 0.8321 - AUC 0.6789 = 0.1532.
    for want in [
        "fixture-job",
        "0.8321",
        "0.9123",
        "0.1532",
        "memory://data/eval/",
    ] {
        assert!(page.contains(want), "index.html lacks {want}");
    }
}
