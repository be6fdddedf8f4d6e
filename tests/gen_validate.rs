//! `funnel gen-data` -> `funnel validate` as real processes, on `file://` and on the real S3
//! server (radosgw from scripts/s3-server.sh), plus the refusal of a wrong S3 secret.

mod support;

use support::{funnel, funnel_env, s3_bucket, unique};

/// Generates a small dataset at `url`, writes its spec, validates it with a full scan.
fn gen_then_validate(url: &str, dir: &std::path::Path) -> String {
    let spec = dir.join("job.toml");
    let spec = spec.to_str().expect("utf8");
    let run = funnel(&[
        "gen-data",
        "--output",
        url,
        "--rows",
        "20000",
        "--files",
        "2",
        "--row-group-rows",
        "4000",
        "--write-config",
        spec,
    ])
    .success();
    assert!(run.stdout.contains("wrote"), "{}", run.stdout);
    let run = funnel(&["validate", "--config", spec]).success();
    // Every generated row is read back: train + eval = 20000.
    let scanned: u64 = run
        .stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("scanned "))
        .map(|rest| {
            rest.split(' ')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .expect("number")
        })
        .sum();
    assert_eq!(scanned, 20_000, "{}", run.stdout);
    assert!(
        run.stdout.contains("funnel-inconsistent rows: 0"),
        "{}",
        run.stdout
    );
    run.stdout
}

#[test]
fn gen_data_then_validate_on_local_files() {
    let dir = tempfile::tempdir().expect("tmp");
    let url = format!("file://{}/data", dir.path().display());
    let out = gen_then_validate(&url, dir.path());
    assert!(out.contains("data.train: file://"), "{out}");
}

#[test]
fn gen_data_then_validate_on_s3() {
    let Some(bucket) = s3_bucket() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    let url = format!("s3://{bucket}/{}", unique("gen"));
    let out = gen_then_validate(&url, dir.path());
    assert!(
        out.contains(&format!("data.train: s3://{bucket}/")),
        "{out}"
    );
}

#[test]
fn wrong_s3_secret_is_refused_clearly() {
    let Some(bucket) = s3_bucket() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    let url = format!("s3://{bucket}/{}", unique("creds"));
    funnel(&[
        "gen-data", "--output", &url, "--rows", "1000", "--files", "1",
    ])
    .success();
    let spec = dir.path().join("job.toml");
    std::fs::write(
        &spec,
        funnel_common::spec::synthetic_job_toml(&url, "memory://x/out"),
    )
    .expect("spec");
    let spec = spec.to_str().expect("utf8");
    funnel_env(
        &["validate", "--config", spec],
        &[
            ("AWS_SECRET_ACCESS_KEY", "not-the-secret"),
            ("FUNNEL_STORE_MAX_RETRIES", "1"),
        ],
    )
    .failure_naming(&[
        &format!("s3://{bucket}/"),
        "refused the credentials",
        "AWS_SECRET_ACCESS_KEY",
    ]);
}
