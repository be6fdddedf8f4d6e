//! Helpers shared by the end-to-end tests: run the real `funnel` binary as a process, write
//! Parquet fixtures, find ../shared/data and the test S3 server.

#![allow(dead_code)]

pub mod http;
pub mod model;
pub mod procs;

use arrow_array::RecordBatch;
use parquet::arrow::ArrowWriter;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The outcome of one `funnel` run.
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Panics unless the run succeeded.
    pub fn success(self) -> Self {
        assert!(
            self.ok,
            "funnel failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Panics unless the run failed, and checks that stderr names each of `wanted`.
    pub fn failure_naming(self, wanted: &[&str]) -> Self {
        assert!(!self.ok, "funnel unexpectedly succeeded:\n{}", self.stdout);
        for w in wanted {
            assert!(
                self.stderr.contains(w),
                "stderr does not name {w:?}:\n{}",
                self.stderr
            );
        }
        assert!(
            !self.stderr.contains("panicked"),
            "funnel panicked:\n{}",
            self.stderr
        );
        self
    }
}

/// Runs `funnel ARGS` with extra environment variables.
pub fn funnel_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_funnel"));
    cmd.args(args).env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("funnel binary runs");
    Run {
        ok: status.success(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Runs `funnel ARGS`.
pub fn funnel(args: &[&str]) -> Run {
    funnel_env(args, &[])
}

/// Generated data under `dir/data` (`funnel gen-data` with `gen_args`, one file unless they
/// say otherwise) and its job spec at `dir/job.toml`, with each `(from, to)` of `edits`
/// replaced in the spec text (each `from` must be there). Returns the spec's path.
pub fn gen_job(dir: &Path, gen_args: &[&str], edits: &[(&str, &str)]) -> String {
    let data = format!("file://{}/data", dir.display());
    let spec = dir.join("job.toml").to_str().expect("utf8").to_string();
    let mut args = vec!["gen-data", "--output", &data, "--write-config", &spec];
    args.extend_from_slice(gen_args);
    funnel(&args).success();
    let mut text = std::fs::read_to_string(&spec).expect("spec");
    for (from, to) in edits {
        assert!(text.contains(from), "spec has no {from:?}");
        text = text.replace(from, to);
    }
    std::fs::write(&spec, text).expect("write spec");
    spec
}

/// Writes a record batch as a Parquet file.
pub fn write_parquet(path: &Path, rb: &RecordBatch) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let file = std::fs::File::create(path).expect("create");
    let mut w = ArrowWriter::try_new(file, rb.schema(), None).expect("writer");
    w.write(rb).expect("write");
    w.close().expect("close");
}

/// ../shared/data beside the repository.
pub fn shared_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data")
}

/// Writes a job spec to `dir/job.toml` and returns its path.
pub fn write_spec(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("job.toml");
    std::fs::write(&path, text).expect("write spec");
    path
}

/// The S3 test bucket from scripts/s3-server.sh's environment, or None when no server is
/// configured and FUNNEL_REQUIRE_S3 is not set (then the caller skips, loudly).
pub fn s3_bucket() -> Option<String> {
    match std::env::var("FUNNEL_S3_BUCKET") {
        Ok(b) if std::env::var("AWS_ENDPOINT_URL").is_ok() => Some(b),
        _ if std::env::var("FUNNEL_REQUIRE_S3").as_deref() == Ok("1") => {
            panic!("FUNNEL_REQUIRE_S3=1 but FUNNEL_S3_BUCKET/AWS_ENDPOINT_URL are not set")
        }
        _ => {
            eprintln!(
                "SKIPPED: no S3 server configured (scripts/s3-server.sh start; source its env.sh)"
            );
            None
        }
    }
}

/// A name unique to this test run, for object-store prefixes.
pub fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{tag}-{}-{nanos}", std::process::id())
}
