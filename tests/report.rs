//! The run report end to end: a tiny gen-data job trained by the real `funnel train` ends
//! with `report: <path>/index.html`; `funnel report OUTPUT` rewrites it from the output alone
//! (the eval data found through the spec in the checkpoint's model.json), with the oracle AUC;
//! a malformed metrics.jsonl is an error naming the line. The report is copied to
//! `target/test-output/report/` so it can be looked at after the run.

mod support;

use std::path::{Path, PathBuf};
use support::{funnel, gen_job};

const TARGETS: [&str; 4] = ["click", "favorite", "order", "pay"];

/// A few thousand rows, tiny towers, two epochs: seconds.
fn setup(dir: &Path) -> String {
    let spec = gen_job(
        dir,
        &[
            "--rows",
            "20000",
            "--files",
            "1",
            "--row-group-rows",
            "4000",
            "--users",
            "200",
            "--items",
            "500",
        ],
        &[
            ("hidden = [256, 128]", "hidden = [16, 8]"),
            ("batch_size = 1024", "batch_size = 256"),
        ],
    );
    let text = std::fs::read_to_string(&spec).expect("spec");
    assert!(text.contains("hidden = [16, 8]") && text.contains("epochs = 2"));
    spec
}

/// The path after `report: ` on stdout.
fn report_line(stdout: &str) -> PathBuf {
    let line = stdout
        .lines()
        .rfind(|l| l.starts_with("report: "))
        .unwrap_or_else(|| panic!("no `report:` line:\n{stdout}"));
    PathBuf::from(line.trim_start_matches("report: "))
}

/// Series polylines (stroke width 2) of an SVG plot: their point counts.
fn series_points(svg: &str) -> Vec<usize> {
    svg.split("<polyline")
        .skip(1)
        .map(|t| &t[..t.find("/>").unwrap_or(t.len())])
        .filter(|t| t.contains("stroke-width=\"2\""))
        .map(|t| {
            let points = t.split("points=\"").nth(1).unwrap_or("");
            points[..points.find('"').unwrap_or(0)]
                .split_whitespace()
                .count()
        })
        .collect()
}

#[test]
fn train_ends_with_a_report_and_funnel_report_rewrites_it_with_the_oracle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = setup(dir.path());
    let out = dir.path().join("out");
    let out_url = format!("file://{}", out.display());
    let run = funnel(&[
        "train",
        "--config",
        &spec,
        "--output",
        &out_url,
        "--threads",
        "1",
    ])
    .success();
    let index = report_line(&run.stdout);
    assert_eq!(index, out.join("report/index.html"), "{}", run.stdout);
    assert!(
        run.stdout
            .trim_end()
            .ends_with(&format!("{}", index.display())),
        "the report line is the last:\n{}",
        run.stdout
    );
    assert!(index.exists());

    // From the output alone: the spec comes from the checkpoint's model.json.
    std::fs::remove_dir_all(out.join("report")).expect("clear the report");
    let run = funnel(&["report", &out_url]).success();
    assert_eq!(report_line(&run.stdout), index);
    assert!(
        run.stdout.contains("oracle AUC: click 0."),
        "{}",
        run.stdout
    );
    let page = std::fs::read_to_string(&index).expect("index.html");
    for want in [
        "synthetic-funnel",
        out_url.as_str(),
        "model.json",
        "oracle AUC",
        "truth_p_&lt;stage&gt;",
    ] {
        assert!(page.contains(want), "index.html lacks {want}");
    }
    assert!(!page.contains("no oracle"));
    // The table holds the numbers of metrics.jsonl.
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics");
    let last: serde_json::Value =
        serde_json::from_str(metrics.lines().last().expect("a line")).expect("json");
    for k in 0..TARGETS.len() {
        let auc = last["eval"]["metrics"]["targets"][k]["auc"]
            .as_f64()
            .expect("auc");
        assert!(
            page.contains(&format!("{auc:.4}")),
            "index.html lacks AUC {auc:.4}"
        );
    }
    let report = out.join("report");
    for plot in ["loss", "auc", "calibration", "weights"] {
        let svg = std::fs::read_to_string(report.join(format!("{plot}.svg"))).expect("svg");
        assert_eq!(series_points(&svg), [2; 4], "{plot}: 4 targets x 2 epochs");
    }
    let auc = std::fs::read_to_string(report.join("auc.svg")).expect("auc.svg");
    for t in TARGETS {
        assert!(
            auc.contains(&format!("oracle {t}")),
            "auc.svg lacks the oracle of {t}"
        );
    }
    let throughput = std::fs::read_to_string(report.join("throughput.svg")).expect("svg");
    assert_eq!(series_points(&throughput), [2]);

    // With --config naming a spec without eval data: the report says there is no oracle.
    let no_eval = dir.path().join("no-eval.toml");
    let text = std::fs::read_to_string(&spec).expect("spec");
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("eval = "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&no_eval, text).expect("write");
    let run = funnel(&[
        "report",
        &out_url,
        "--config",
        no_eval.to_str().expect("utf8"),
    ])
    .success();
    assert!(
        run.stdout.contains("no oracle: the job has no data.eval"),
        "{}",
        run.stdout
    );
    // Put the full report (with the oracle) back, and keep a copy for people to look at.
    funnel(&["report", &out_url]).success();
    keep_copy(&report);

    // A malformed line: an error naming the file and the line, no panic.
    std::fs::write(
        out.join("metrics.jsonl"),
        format!("{metrics}{{\"epoch\": \n"),
    )
    .expect("w");
    funnel(&["report", &out_url]).failure_naming(&["metrics.jsonl", "line 3"]);
}

/// Copies the report to `target/test-output/report/` under the workspace root.
fn keep_copy(report: &Path) {
    let dest = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-output/report");
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::create_dir_all(&dest).expect("mkdir target/test-output/report");
    for entry in std::fs::read_dir(report).expect("report dir") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, dest.join(path.file_name().expect("name"))).expect("copy");
    }
    eprintln!("report copied to {}", dest.display());
}
