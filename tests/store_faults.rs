//! Object-store faults (issue 6 point 6), as real processes: with `FUNNEL_STORE_FAULTS` every
//! read of a Parquet object fails at a seeded rate (503 SlowDown, a timeout, or a body cut to
//! half). Training reads through retries with backoff and ends exactly where the run without
//! faults ends (same rows, same order: single-process training is deterministic); a local
//! cluster completes with every row counted once; a persistent failure stops the job with an
//! error naming the object and the attempts.

mod support;

use support::funnel_env;
use support::procs::{audit_passes, final_auc, setup};

const FAULTS: &str = "rate=0.3,seed=5,kinds=slowdown+timeout+truncate";

#[test]
fn reads_retry_through_injected_faults_and_a_persistent_one_names_the_object() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = setup(dir.path(), "20000", "1000", 2);
    let train = |out: &str, env: &[(&str, &str)]| {
        funnel_env(
            &[
                "train",
                "--config",
                &spec,
                "--output",
                out,
                "--threads",
                "1",
                "--no-progress",
            ],
            env,
        )
    };
    let clean = dir.path().join("clean");
    train(&format!("file://{}", clean.display()), &[]).success();
    let faulty = dir.path().join("faulty");
    let run = train(
        &format!("file://{}", faulty.display()),
        &[("FUNNEL_STORE_FAULTS", FAULTS), ("RUST_LOG", "warn")],
    )
    .success();
    let retries = run.stderr.matches("read failed; retrying").count();
    eprintln!("single process: {retries} retried reads");
    assert!(retries > 0, "faults were injected:\n{}", run.stderr);
    assert!(run.stderr.contains("SlowDown") || run.stderr.contains("truncated read"));
    assert_eq!(
        final_auc(&clean),
        final_auc(&faulty),
        "the same rows in the same order give the same model"
    );

    // A local cluster: the coordinator reads footers, the workers read row groups.
    let cluster = format!("file://{}/cluster", dir.path().display());
    let run = funnel_env(
        &[
            "train",
            "--config",
            &spec,
            "--output",
            &cluster,
            "--workers",
            "2",
            "--threads",
            "1",
        ],
        &[("FUNNEL_STORE_FAULTS", FAULTS), ("RUST_LOG", "warn")],
    )
    .success();
    assert!(
        run.stdout.contains("read failed; retrying")
            || run.stderr.contains("read failed; retrying")
    );
    audit_passes(&cluster);

    // Every read of one object fails: the job stops, naming it and the attempts.
    let broken = format!("file://{}/broken", dir.path().display());
    train(
        &broken,
        &[("FUNNEL_STORE_FAULTS", "rate=0,persistent=train/part-00001")],
    )
    .failure_naming(&[
        "train/part-00001.parquet",
        "gave up after 6 attempts",
        "SlowDown",
    ]);
}
