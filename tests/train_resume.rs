//! `funnel train` as real processes: a run killed (SIGKILL) after its first epoch's checkpoint
//! and restarted on the same output ends bit-identical to an uninterrupted run, GradNorm's
//! weight trajectory included; a checkpoint whose files do not match their MANIFEST is refused,
//! naming the file.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use support::funnel;

/// Small data and a spec with small towers, dropout (so the dropout stream must resume too),
/// GradNorm with a large rate (so the weights move every epoch and their state must resume),
/// a cosine learning-rate schedule (so the resumed epochs must pick up their own rates, not
/// the first epoch's), and three epochs.
fn setup(dir: &Path) -> String {
    let data = format!("file://{}/data", dir.display());
    let spec = dir.join("job.toml");
    let spec = spec.to_str().expect("utf8").to_string();
    funnel(&[
        "gen-data",
        "--output",
        &data,
        "--rows",
        "12000",
        "--files",
        "2",
        "--row-group-rows",
        "2000",
        "--users",
        "500",
        "--items",
        "2000",
        "--write-config",
        &spec,
    ])
    .success();
    let text = std::fs::read_to_string(&spec).expect("spec");
    let text = text
        .replace("hidden = [256, 128]", "hidden = [16, 8]\ndropout = 0.1")
        .replace("batch_size = 1024", "batch_size = 256")
        .replace("epochs = 2", "epochs = 3")
        .replace(
            "sparse = \"lazy-adam\"",
            "sparse = \"lazy-adam\"\nlr_schedule = \"cosine\"",
        )
        .replace(
            "weighting = \"fixed\"",
            "weighting = \"gradnorm\"\ngradnorm_every = 3\ngradnorm_lr = 0.5",
        );
    assert!(text.contains("dropout = 0.1") && text.contains("epochs = 3"));
    assert!(text.contains("gradnorm_every = 3") && text.contains("lr_schedule"));
    std::fs::write(&spec, text).expect("write spec");
    spec
}

fn train(spec: &str, output: &str) -> support::Run {
    funnel(&[
        "train",
        "--config",
        spec,
        "--output",
        output,
        "--threads",
        "2",
    ])
}

/// Starts `funnel train` and SIGKILLs it as soon as it reports its first committed checkpoint.
fn train_until_first_checkpoint(spec: &str, output: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_funnel"))
        .args([
            "train",
            "--config",
            spec,
            "--output",
            output,
            "--threads",
            "2",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start funnel train");
    let stdout = child.stdout.take().expect("stdout");
    let mut seen = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read stdout");
        seen.push_str(&line);
        seen.push('\n');
        if line.starts_with("checkpoint committed:") {
            child.kill().expect("SIGKILL");
            break;
        }
    }
    child.wait().expect("reap");
    assert!(seen.contains("(epoch 1 of 3)"), "{seen}");
    seen
}

/// The newest checkpoint directory under a file:// output.
fn latest_dir(output: &str) -> std::path::PathBuf {
    let root = Path::new(output.trim_start_matches("file://")).join("checkpoints");
    let name = std::fs::read_to_string(root.join("LATEST")).expect("LATEST");
    root.join(name.trim())
}

#[test]
fn killed_after_epoch_one_and_resumed_equals_uninterrupted() {
    let dir = tempfile::tempdir().expect("tmp");
    let spec = setup(dir.path());
    let straight = format!("file://{}/straight", dir.path().display());
    let resumed = format!("file://{}/resumed", dir.path().display());

    let run = train(&spec, &straight).success();
    assert!(run.stdout.contains("(epoch 3 of 3)"), "{}", run.stdout);

    train_until_first_checkpoint(&spec, &resumed);
    let run = train(&spec, &resumed).success();
    // The restarted process resumed: it trained epochs 2 and 3 only (epoch 2 may have been
    // committed before the kill landed; then it trains epoch 3 only).
    assert!(!run.stdout.contains("(epoch 1 of 3)"), "{}", run.stdout);
    assert!(run.stdout.contains("(epoch 3 of 3)"), "{}", run.stdout);

    let (a, b) = (latest_dir(&straight), latest_dir(&resumed));
    assert_eq!(a.file_name(), b.file_name(), "same final step");
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let (x, y) = (
            std::fs::read(a.join(file)).expect("read"),
            std::fs::read(b.join(file)).expect("read"),
        );
        assert!(
            x == y,
            "{file} differs between the straight and the resumed run"
        );
    }
    // Same eval metrics per epoch (timings differ, numbers must not).
    let metrics = |out: &str| -> Vec<serde_json::Value> {
        let path = Path::new(out.trim_start_matches("file://")).join("metrics.jsonl");
        std::fs::read_to_string(path)
            .expect("metrics.jsonl")
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json line"))
            .map(|r| serde_json::json!([r["eval"]["metrics"], r["weights"]]))
            .collect()
    };
    let (ma, mb) = (metrics(&straight), metrics(&resumed));
    assert_eq!(ma.len(), 3);
    assert_eq!(ma, mb);
    // GradNorm moved the weights (the trajectory compared above is not a constant one).
    assert_ne!(ma[0][1], ma[2][1], "weights never changed: {ma:?}");
    let trainer = |d: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(d.join("trainer.json")).expect("trainer.json"))
            .expect("json")
    };
    assert_eq!(trainer(&a)["weighting"], trainer(&b)["weighting"]);

    // A finished output has nothing left to do.
    let run = train(&spec, &resumed).success();
    assert!(run.stdout.contains("nothing to do"), "{}", run.stdout);
}

#[test]
fn resume_refuses_a_checkpoint_that_does_not_match_its_manifest() {
    let dir = tempfile::tempdir().expect("tmp");
    let spec = setup(dir.path());
    let output = format!("file://{}/out", dir.path().display());
    train_until_first_checkpoint(&spec, &output);
    let ckpt = latest_dir(&output);
    let model = ckpt.join("model.safetensors");
    let mut bytes = std::fs::read(&model).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&model, bytes).expect("tamper");
    train(&spec, &output).failure_naming(&["model.safetensors", "MANIFEST.json"]);

    // Without its MANIFEST the checkpoint does not exist, and LATEST pointing at it is an error.
    std::fs::remove_file(ckpt.join("MANIFEST.json")).expect("rm manifest");
    train(&spec, &output).failure_naming(&["no MANIFEST.json", "never committed"]);
}
