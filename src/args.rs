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
    /// Train a job on this machine: epochs over `data.train`, evaluation on `data.eval` after
    /// each, metrics in `<output>/metrics.jsonl`, a checkpoint per epoch. Resumes from
    /// `<output>/checkpoints/LATEST` when it exists. With `--workers N`, runs a local cluster: a
    /// coordinator and N worker processes on 127.0.0.1, their output in one stream.
    Train(TrainArgs),
    /// Run the coordinator of a distributed job: lists the data once, forms the ring, hands out
    /// leases, commits steps and epochs. Prints `coordinator listening on ADDR` when ready and
    /// exits when the job completes (0) or fails (1).
    Coordinator(CoordinatorArgs),
    /// Run one worker of a distributed job: fetches the job from the coordinator, joins the
    /// ring, trains, and exits when the job completes.
    Worker(WorkerArgs),
    /// Score Parquet with a checkpoint: every stage's probability (`p_<stage>`, float32, funnel
    /// order) beside pass-through id columns, one output row per input row, in input order.
    Predict(PredictArgs),
    /// Run the embedded default end to end on local files: generate data, write its job spec,
    /// validate it, train it on a local cluster of `--workers` processes (checkpoints,
    /// metrics.jsonl and the run report under `<dir>/output`); ends by printing
    /// `report: <path>/index.html`.
    Demo(DemoArgs),
    /// Prove exactly-once for a job run with `cluster.audit = true`: for every epoch audited
    /// under `<output>/audit/`, each row of the training data appears exactly once among the
    /// rows of the committed steps. Exits 1 naming missing, repeated or foreign rows otherwise.
    Audit(AuditArgs),
    /// Write the run report of a job's output: `<output>/report/index.html` and SVG plots of
    /// training loss per task, eval AUC per target (with the oracle AUC on gen-data), calibration,
    /// task weights and samples/s per epoch, from `<output>/metrics.jsonl`. Prints
    /// `report: <path or URL>/index.html`. `funnel train` writes it at the end of every job.
    Report(ReportArgs),
}

/// `funnel report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The job's output URL (the directory that holds `metrics.jsonl` and `checkpoints/`).
    pub output: String,
    /// Job spec (TOML) naming the job and its eval data (for the oracle AUC). Default: the
    /// spec the output records in its latest checkpoint's model.json.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

/// `funnel audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The job's output URL (the directory that holds `audit/` and `checkpoints/`).
    pub output: String,
    /// Print the per-epoch results as JSON.
    #[arg(long)]
    pub json: bool,
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
    /// Train as a local cluster of this many worker processes (and a coordinator), exchanging
    /// gradients over gRPC on 127.0.0.1; `train.batch_size` stays the global batch.
    #[arg(long)]
    pub workers: Option<usize>,
}

/// `funnel coordinator`.
#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// Job spec (TOML).
    #[arg(long, short)]
    pub config: PathBuf,
    /// Address to listen on (port 0 = an ephemeral port, printed when ready).
    #[arg(long, default_value = "0.0.0.0:7070")]
    pub listen: std::net::SocketAddr,
    /// Output URL (checkpoints, metrics.jsonl); overrides the spec's `output`.
    #[arg(long, short)]
    pub output: Option<String>,
    /// Workers in the ring; overrides `cluster.workers`.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Address of the HTTP endpoint: the status page (`/`), `/healthz`, `/readyz`,
    /// `/metrics` (Prometheus) and `/status` (JSON). Read-only and without the token: bind it
    /// to the cluster network. Not served when absent.
    #[arg(long, env = "FUNNEL_HTTP_LISTEN")]
    pub http_listen: Option<std::net::SocketAddr>,
    /// File holding the job token (else the FUNNEL_JOB_TOKEN environment variable).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Do not write the run report when the job completes (the local cluster launcher writes
    /// it itself, once the whole cluster has exited).
    #[arg(long, hide = true)]
    pub no_report: bool,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// `funnel worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The coordinator's URL, e.g. `http://coordinator:7070`.
    #[arg(long, env = "FUNNEL_COORDINATOR")]
    pub coordinator: String,
    /// Address of this worker's peer server (port 0 = ephemeral).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// Address peers reach this worker at, when not the listening one (e.g. the pod IP and
    /// port when listening on 0.0.0.0).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Compute threads; overrides `train.threads` (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// File holding the job token (else the FUNNEL_JOB_TOKEN environment variable).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Never draw progress bars.
    #[arg(long)]
    pub no_progress: bool,
    /// Name in logs (default: host and pid).
    #[arg(long)]
    pub name: Option<String>,
    /// Address of the HTTP endpoint: `/healthz` and `/metrics` (Prometheus). Read-only and
    /// without the token. Not served when absent.
    #[arg(long, env = "FUNNEL_HTTP_LISTEN")]
    pub http_listen: Option<std::net::SocketAddr>,
    /// Print progress as `progress {json}` lines on stdout, about once a second (rank 0 only;
    /// the local cluster launcher draws them as one progress bar).
    #[arg(long, hide = true)]
    pub progress_lines: bool,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// `funnel predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Checkpoint: a checkpoint directory URL (`<output>/checkpoints/step-000001234`) or a
    /// training output URL (then the checkpoint its `checkpoints/LATEST` names). Every file is
    /// verified against the checkpoint's MANIFEST.json.
    #[arg(long)]
    pub checkpoint: String,
    /// Data to score: a prefix of Parquet objects or one object, in any store. Only the model's
    /// feature columns are needed (label columns may be absent and are ignored).
    #[arg(long)]
    pub data: String,
    /// Output URL: a prefix (one Parquet object per input object, at the input's path relative
    /// to --data), or one object when it ends in `.parquet`.
    #[arg(long)]
    pub out: String,
    /// Columns copied verbatim (same Arrow type, nulls kept) before the probabilities,
    /// comma-separated; default: the model's categorical feature columns (the ids). `--keep ''`
    /// copies none.
    #[arg(long, value_delimiter = ',')]
    pub keep: Option<Vec<String>>,
    /// Rows per forward pass.
    #[arg(long, default_value_t = 8192)]
    pub batch_rows: usize,
    /// Compute threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
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
    /// Distinct item categories.
    #[arg(long, default_value_t = 1_000)]
    pub categories: u64,
    /// Distinct queries (Zipf popularity).
    #[arg(long, default_value_t = 20_000)]
    pub queries: u64,
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
    /// Worker processes of the local cluster that trains it (coordinator + workers on
    /// 127.0.0.1, gradients by ring all-reduce over gRPC).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
}

/// TLS for every gRPC connection (docs/cluster.md#security). Without these flags connections
/// are plaintext; with them, plaintext is refused.
#[derive(Debug, Args, Clone, Default)]
pub struct TlsArgs {
    /// PEM certificate chain of this process's gRPC server (coordinator, or the worker's peer
    /// server); under mutual TLS also the identity a worker presents when it dials.
    #[arg(long, env = "FUNNEL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "FUNNEL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate that signed the servers' certificates (workers verify the coordinator
    /// and their peers against it).
    #[arg(long, env = "FUNNEL_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM CA of client certificates: servers then require one (mutual TLS).
    #[arg(long, env = "FUNNEL_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Name the servers' certificates must carry (default `localhost`).
    #[arg(long, env = "FUNNEL_TLS_DOMAIN")]
    pub tls_domain: Option<String>,
}

impl TlsArgs {
    /// The files as `funnel_proto::tls` loads them.
    pub fn files(&self) -> funnel_proto::tls::TlsFiles {
        funnel_proto::tls::TlsFiles {
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            ca: self.tls_ca.clone(),
            client_ca: self.tls_client_ca.clone(),
            domain: self.tls_domain.clone(),
        }
    }
}
