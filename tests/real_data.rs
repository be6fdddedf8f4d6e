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
