//! The real, pyarrow-written samples in ../shared/data through `funnel validate`, including the
//! Taobao slice's 2,427 rows with purchase=1 and click=0 under each policy.

mod support;

use std::path::Path;
use support::{funnel, shared_data, write_spec};

/// examples/NAME.toml with its dataset path made absolute and `inconsistent_labels` set.
fn example(dir: &Path, name: &str, policy: &str) -> String {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name),
    )
    .expect("example exists");
    let shared = shared_data().display().to_string();
    let text = text.replace("../../shared/data", &shared);
    let text = text
        .lines()
        .map(|l| {
            if l.starts_with("inconsistent_labels") {
                format!("inconsistent_labels = \"{policy}\"")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    write_spec(dir, &text).display().to_string()
}

#[test]
fn taobao_inconsistent_rows_under_each_policy() {
    let dir = tempfile::tempdir().expect("tmp");
    let drop = funnel(&[
        "validate",
        "--config",
        &example(dir.path(), "taobao.toml", "drop"),
    ])
    .success();
    assert!(
        drop.stdout.contains("purchase=1 with click=0: 2427"),
        "{}",
        drop.stdout
    );
    let rows: u64 = 119_414;
    let inconsistent = grab(&drop.stdout, "funnel-inconsistent rows: ");
    assert!(inconsistent >= 2427);
    assert_eq!(
        grab(&drop.stdout, "kept "),
        rows - inconsistent,
        "{}",
        drop.stdout
    );

    let repair = funnel(&[
        "validate",
        "--config",
        &example(dir.path(), "taobao.toml", "repair"),
    ])
    .success();
    assert!(
        repair.stdout.contains("purchase=1 with click=0: 2427"),
        "{}",
        repair.stdout
    );
    assert_eq!(grab(&repair.stdout, "kept "), rows);
    assert_eq!(
        grab(&repair.stdout, "funnel-inconsistent rows: "),
        inconsistent,
        "same rows, same counts"
    );

    funnel(&[
        "validate",
        "--config",
        &example(dir.path(), "taobao.toml", "fail"),
    ])
    .failure_naming(&[
        "user_item_interactions.parquet",
        "row group 0",
        "column `",
        "with click=0",
        "funnel.labels.",
    ]);
}

#[test]
fn aliccp_and_aliexpress_samples_validate() {
    for (name, rows) in [
        ("aliccp.toml", 200),
        ("aliccp_bags.toml", 20),
        ("aliexpress.toml", 120),
    ] {
        let dir = tempfile::tempdir().expect("tmp");
        let run = funnel(&["validate", "--config", &example(dir.path(), name, "drop")]).success();
        assert_eq!(
            grab(&run.stdout, "scanned "),
            rows,
            "{name}: {}",
            run.stdout
        );
    }
}

#[test]
fn examples_resolve_paths_relative_to_the_spec_file() {
    // Run from another working directory: the example's relative path still finds the data.
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/aliccp.toml");
    let run = funnel(&[
        "validate",
        "--schema-only",
        "--config",
        spec.to_str().expect("utf8"),
    ])
    .success();
    assert!(run.stdout.contains("200 rows"), "{}", run.stdout);
}

/// The number after `prefix` in `text`.
fn grab(text: &str, prefix: &str) -> u64 {
    let start = text
        .find(prefix)
        .unwrap_or_else(|| panic!("{prefix:?} not in {text}"))
        + prefix.len();
    text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .expect("number")
}

/// ESM² trains on the real Taobao slice (repair policy) without NaN and reports metrics. The
/// slice has no eval split; evaluating on the training file gives in-sample metrics, which is
/// all this test claims.
#[test]
fn taobao_esm2_trains_without_nan_and_reports_metrics() {
    let dir = tempfile::tempdir().expect("tmp");
    let spec = example(dir.path(), "taobao.toml", "repair");
    let text = std::fs::read_to_string(&spec).expect("spec");
    let file = text
        .lines()
        .find_map(|l| l.strip_prefix("train = "))
        .expect("train key")
        .to_string();
    let out = dir.path().join("out");
    let text =
        text.replace(
            "output = \"../target/taobao-output/\"",
            &format!("output = \"{}\"", out.display()),
        )
        .replace(
            &format!("train = {file}"),
            &format!("train = {file}\neval = {file}"),
        ) + "\n[towers]\nhidden = [32, 16]\n";
    std::fs::write(&spec, text).expect("write spec");
    let run = funnel(&["train", "--config", &spec, "--threads", "2"]).success();
    assert!(run.stdout.contains("(epoch 1 of 1)"), "{}", run.stdout);
    let line = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics.jsonl");
    let record: serde_json::Value = serde_json::from_str(line.trim()).expect("one json line");
    let loss = record["train"]["loss"].as_f64().expect("train loss");
    assert!(loss.is_finite() && loss > 0.0, "{record}");
    // Every row was kept (repair), so the epoch trained on all 119,414 rows.
    assert_eq!(record["train"]["rows"], 119_414, "{record}");
    for target in record["eval"]["metrics"]["targets"]
        .as_array()
        .expect("targets")
    {
        assert_eq!(target["non_finite"], 0, "{target}");
        let logloss = target["logloss"].as_f64().expect("logloss");
        assert!(logloss.is_finite(), "{target}");
        // Every row of the slice is a click (a page view), so click has no negatives and no
        // AUC; the others must rank better than chance.
        if target["positives"] == target["rows"] {
            assert!(target["auc"].is_null(), "{target}");
        } else {
            let auc = target["auc"].as_f64().expect("auc");
            assert!(auc.is_finite() && auc > 0.5, "{target}");
        }
    }
    let names: Vec<&str> = record["eval"]["metrics"]["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter_map(|t| t["stage"].as_str())
        .collect();
    assert_eq!(names, ["click", "action", "purchase"]);
}
