//! `funnel demo`, the README's first command, end to end at a small size: it generates data,
//! validates it, trains on a local cluster of a coordinator and 2 worker processes (whose
//! status page it announces), and its last line says where the run report is (issue 7's
//! done-when).

mod support;

use std::path::Path;

use support::funnel;

#[test]
fn the_demo_trains_on_a_local_cluster_and_ends_by_printing_the_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    let demo = dir.path().join("demo");
    let run = funnel(&[
        "demo",
        "--dir",
        demo.to_str().expect("utf8"),
        "--rows",
        "20000",
        "--workers",
        "2",
    ])
    .success();
    assert!(
        run.stdout.contains("status page: http://127.0.0.1:"),
        "{}",
        run.stdout
    );
    let last = run.stdout.lines().last().expect("output");
    let index = last
        .strip_prefix("report: ")
        .unwrap_or_else(|| panic!("the last line is not the report's path: {last:?}"));
    let index = Path::new(index);
    assert!(index.starts_with(&demo), "{index:?} is not under {demo:?}");
    let html = std::fs::read_to_string(index).expect("the report exists");
    assert!(html.contains("auc.svg"), "the report links its AUC plot");
    assert!(index.with_file_name("auc.svg").is_file());
}
