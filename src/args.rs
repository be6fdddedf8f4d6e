//! Command-line arguments (clap derive). Each flag's help text is its documentation.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Funnel: a distributed data-parallel trainer for entire-space multi-task funnel models
/// (ESMM, ESM²).
#[derive(Debug, Parser)]
#[command(name = "funnel", version, about, long_about = None)]
pub struct Cli {
    /// Log format: human-readable text, or one JSON object per line for clusters.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a job spec and its datasets: resolve presets, read every footer, check the schema
    /// against the spec, decode every row and report label problems under the declared policies.
    Validate(ValidateArgs),
    /// Write synthetic search logs with a known ground-truth funnel to any object store.
    GenData(GenDataArgs),
    /// Train a job on this machine (one worker): epochs over `data.train`, evaluation on
    /// `data.eval` after each, metrics in `<output>/metrics.jsonl`, a checkpoint per epoch.
    /// Resumes from `<output>/checkpoints/LATEST` when it exists.
    Train(TrainArgs),
    /// Run the embedded default end to end on local files: generate data, write its job spec,
    /// validate it.
    Demo(DemoArgs),
}

/// `funnel validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Job spec (TOML).
    #[arg(long, short)]
    pub config: PathBuf,
    /// Only read footers and check schemas; skip decoding the rows.
    #[arg(long)]
    pub schema_only: bool,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `funnel train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Job spec (TOML).
    #[arg(long, short)]
    pub config: PathBuf,
    /// Output URL (checkpoints, metrics.jsonl); overrides the spec's `output`.
    #[arg(long, short)]
    pub output: Option<String>,
    /// Compute threads; overrides `train.threads` (0 = one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Never draw progress bars (they are drawn only when stderr is a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
}

/// `funnel gen-data`.
#[derive(Debug, Args)]
pub struct GenDataArgs {
    /// Output URL prefix (s3://, gs://, az://, file://, memory:// or a path); `train/` and
    /// `eval/` are written under it.
    #[arg(long, short)]
    pub output: String,
    /// Rows in total (train + eval).
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: u64,
    /// Parquet objects per split.
    #[arg(long, default_value_t = 4)]
    pub files: usize,
    /// Rows per row group.
    #[arg(long, default_value_t = 65_536)]
    pub row_group_rows: usize,
    /// Seed: the same seed and options give the same data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Fraction of rows routed to the eval split.
    #[arg(long, default_value_t = 0.1)]
    pub eval_fraction: f64,
    /// Distinct users.
    #[arg(long, default_value_t = 100_000)]
    pub users: u64,
    /// Distinct items (Zipf popularity).
    #[arg(long, default_value_t = 200_000)]
    pub items: u64,
    /// Zipf exponent of item and query popularity.
    #[arg(long, default_value_t = 1.1)]
    pub zipf_exponent: f64,
    /// Mean P(click).
    #[arg(long, default_value_t = 0.05)]
    pub click_rate: f64,
    /// Mean P(favorite | click).
    #[arg(long, default_value_t = 0.2)]
    pub favorite_rate: f64,
    /// Mean P(order | click, favorite).
    #[arg(long, default_value_t = 0.3)]
    pub order_given_fav_rate: f64,
    /// Mean P(order | click, no favorite).
    #[arg(long, default_value_t = 0.08)]
    pub order_given_no_fav_rate: f64,
    /// Mean P(pay | order).
    #[arg(long, default_value_t = 0.7)]
    pub pay_rate: f64,
    /// Also write a job spec for the generated data to this local file.
    #[arg(long)]
    pub write_config: Option<PathBuf>,
}

/// `funnel demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Working directory for the data, the job spec and the output.
    #[arg(long, default_value = "funnel-demo")]
    pub dir: PathBuf,
    /// Rows to generate.
    #[arg(long, default_value_t = 200_000)]
    pub rows: u64,
}
