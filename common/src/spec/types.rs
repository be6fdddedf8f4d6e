//! What serde reads from the job TOML. Every struct denies unknown keys; defaults live here and
//! are documented in docs/config.md (keep both in step).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The whole job spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Spec format version; must be 1.
    pub version: u32,
    /// Job name, used in logs and output paths.
    #[serde(default = "default_name")]
    pub name: String,
    /// Where checkpoints, metrics and reports go (any object-store URL).
    #[serde(default)]
    pub output: Option<String>,
    /// Datasets and how to treat bad rows.
    pub data: DataSpec,
    /// Input features.
    pub features: FeaturesSpec,
    /// The funnel of stages and their labels.
    pub funnel: FunnelSpec,
    /// Tower architecture, shared by all towers.
    #[serde(default)]
    pub towers: TowerSpec,
    /// Dense and sparse optimizers.
    #[serde(default)]
    pub optimizer: OptimizerSpec,
    /// Task-loss weighting.
    #[serde(default)]
    pub loss: LossSpec,
    /// Batch size, epochs, seed, threads.
    #[serde(default)]
    pub train: TrainSpec,
    /// Coordinator and workers: ring size, heartbeats, timeouts.
    #[serde(default)]
    pub cluster: ClusterSpec,
}

fn default_name() -> String {
    "funnel".to_string()
}

/// `[data]`: datasets and row policies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// URL prefix of the training Parquet objects.
    pub train: String,
    /// URL prefix of the evaluation Parquet objects.
    #[serde(default)]
    pub eval: Option<String>,
    /// What to do with rows whose labels break the funnel (pay without order, ...).
    #[serde(default)]
    pub inconsistent_labels: InconsistentPolicy,
    /// What to do with rows whose labels are null or outside {0, 1}.
    #[serde(default)]
    pub bad_rows: BadRowPolicy,
    /// Rows shuffled together in the bounded shuffle buffer (0 = keep file order).
    #[serde(default = "default_shuffle_buffer")]
    pub shuffle_buffer: usize,
    /// Parquet footers (and row groups) fetched concurrently.
    #[serde(default = "default_io_concurrency")]
    pub io_concurrency: usize,
    /// Threads of the bounded decode pool.
    #[serde(default = "default_decode_threads")]
    pub decode_threads: usize,
    /// Rows per Arrow record batch while decoding.
    #[serde(default = "default_read_batch_rows")]
    pub read_batch_rows: usize,
}

fn default_shuffle_buffer() -> usize {
    65_536
}
fn default_io_concurrency() -> usize {
    16
}
fn default_decode_threads() -> usize {
    2
}
fn default_read_batch_rows() -> usize {
    65_536
}

/// What carries ring all-reduce chunks and sparse blocks between workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RingTransport {
    /// `tcp` on a plaintext job, `grpc` when the job uses TLS.
    #[default]
    Auto,
    /// Framed messages on a plain TCP connection to the neighbour's peer port (same port as
    /// gRPC, told apart by its first bytes; job token checked at the handshake). Plaintext
    /// only: a job with TLS refuses it.
    Tcp,
    /// Bidirectional `funnel.v1.Peer` gRPC streams (HTTP/2, TLS when the job has it).
    Grpc,
}

/// Policy for funnel-inconsistent label rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InconsistentPolicy {
    /// Remove the row (counted).
    Drop,
    /// Set every ancestor stage's label to 1 (counted).
    Repair,
    /// Stop with an error naming the object, row group, row and columns.
    #[default]
    Fail,
}

/// Policy for rows with null or out-of-range labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BadRowPolicy {
    /// Skip the row (counted).
    Skip,
    /// Stop with an error naming the object, row group, row and column.
    #[default]
    Fail,
}

/// `[features]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeaturesSpec {
    /// Single-valued categorical columns, hashed into embedding tables.
    #[serde(default)]
    pub categorical: Vec<CategoricalSpec>,
    /// Numeric columns, fed to the towers directly.
    #[serde(default)]
    pub numeric: Vec<NumericSpec>,
    /// List columns of ids, pooled (mean) as an embedding bag.
    #[serde(default)]
    pub list: Vec<ListSpec>,
}

/// `[[features.categorical]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoricalSpec {
    /// Column name.
    pub column: String,
    /// Hash buckets (rows of the embedding table).
    pub buckets: u64,
    /// Embedding dimension.
    pub dim: usize,
    /// Embedding table name; features naming the same table share it (and its hash seed).
    #[serde(default)]
    pub table: Option<String>,
    /// Further columns crossed with `column`: the feature is then the tuple of their values,
    /// hashed together into one bucket (a feature cross, EasyRec's `ComboFeature`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cross: Vec<String>,
}

impl CategoricalSpec {
    /// The columns whose values make up the feature: `column`, then `cross`.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.column.as_str()).chain(self.cross.iter().map(String::as_str))
    }

    /// Its embedding table: `table`, or the column name, or for a cross the column names
    /// joined by `_x_` (`query_x_category_id`), so that a cross never shares the table of
    /// its first column by accident.
    pub fn table_name(&self) -> String {
        match &self.table {
            Some(t) => t.clone(),
            None => self.columns().collect::<Vec<_>>().join("_x_"),
        }
    }
}

/// `[[features.list]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListSpec {
    /// Column name (a list of integers or strings).
    pub column: String,
    /// Hash buckets.
    pub buckets: u64,
    /// Embedding dimension.
    pub dim: usize,
    /// Keep at most this many ids per row (the first ones).
    pub max_len: usize,
    /// For string columns holding delimited ids (`"12|7|9"`): the delimiter. Pieces are hashed
    /// as strings; empty pieces are skipped.
    #[serde(default)]
    pub separator: Option<String>,
    /// Embedding table name, shared as for categorical features.
    #[serde(default)]
    pub table: Option<String>,
}

impl ListSpec {
    /// Its embedding table: `table`, or the column name.
    pub fn table_name(&self) -> String {
        self.table.clone().unwrap_or_else(|| self.column.clone())
    }
}

/// `[[features.numeric]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumericSpec {
    /// Column name.
    pub column: String,
    /// Transform applied after null filling.
    #[serde(default)]
    pub transform: Transform,
    /// Value used for nulls and non-finite values (counted).
    #[serde(default)]
    pub fill_null: f32,
    /// Mean for `standardize`.
    #[serde(default)]
    pub mean: Option<f64>,
    /// Standard deviation for `standardize` (must be > 0).
    #[serde(default)]
    pub std: Option<f64>,
}

/// Numeric transforms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transform {
    /// The value as is.
    #[default]
    None,
    /// `sign(x) * ln(1 + |x|)`.
    Log1p,
    /// `(x - mean) / std`.
    Standardize,
}

/// `[funnel]`: a preset, or explicit stages.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunnelSpec {
    /// `esmm`, `esm2` or `click-fav-order-pay`.
    #[serde(default)]
    pub preset: Option<String>,
    /// Label columns per preset stage, when they differ from the stage name.
    #[serde(default)]
    pub labels: BTreeMap<String, LabelRef>,
    /// Explicit stages (instead of a preset).
    #[serde(default)]
    pub stages: Vec<StageSpec>,
}

/// `[[funnel.stages]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// Stage name.
    pub name: String,
    /// Label column(s); a list means "1 if any is 1". No label: the tower learns implicitly.
    #[serde(default)]
    pub label: Option<LabelRef>,
    /// The stage this one is conditioned on; absent means the impression (root).
    #[serde(default)]
    pub given: Option<String>,
    /// A sibling stage (same `given`) whose outcome splits this stage into two towers.
    #[serde(default)]
    pub branch_on: Option<String>,
}

/// One label column or several OR-ed together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LabelRef {
    /// One column.
    Column(String),
    /// Several columns; the label is 1 if any is 1.
    AnyOf(Vec<String>),
}

impl LabelRef {
    /// The columns this label reads.
    pub fn columns(&self) -> Vec<String> {
        match self {
            Self::Column(c) => vec![c.clone()],
            Self::AnyOf(cs) => cs.clone(),
        }
    }
}

/// `[towers]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TowerSpec {
    /// `mlp`, `dcn-v2`, `deepfm` or `deep-fwfm`.
    #[serde(default)]
    pub kind: TowerKind,
    /// Hidden layer widths.
    #[serde(default = "default_hidden")]
    pub hidden: Vec<usize>,
    /// Dropout after each hidden layer.
    #[serde(default)]
    pub dropout: f32,
    /// Cross layers (dcn-v2 only).
    #[serde(default = "default_cross_layers")]
    pub cross_layers: usize,
}

impl Default for TowerSpec {
    fn default() -> Self {
        Self {
            kind: TowerKind::default(),
            hidden: default_hidden(),
            dropout: 0.0,
            cross_layers: default_cross_layers(),
        }
    }
}

fn default_hidden() -> Vec<usize> {
    vec![256, 128]
}
fn default_cross_layers() -> usize {
    2
}

/// Tower architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TowerKind {
    /// Multi-layer perceptron.
    #[default]
    Mlp,
    /// DCN-v2 cross network beside an MLP.
    DcnV2,
    /// DeepFM: factorisation machine beside an MLP.
    Deepfm,
    /// DeepFwFM: DeepFM whose FM term is field-weighted per tower (Pan et al. 2018): each tower
    /// weighs every pair of embedding fields' dot product with its own learned weight.
    DeepFwfm,
}

/// `[optimizer]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerSpec {
    /// Dense optimizer: `adam`, `adagrad` or `sgd`.
    #[serde(default)]
    pub dense: DenseOptimizer,
    /// Dense learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Sparse (embedding) optimizer: `lazy-adam`, `adagrad` or `sgd`.
    #[serde(default)]
    pub sparse: SparseOptimizer,
    /// Sparse learning rate (defaults to `lr`).
    #[serde(default)]
    pub sparse_lr: Option<f64>,
    /// L2 weight decay on dense parameters.
    #[serde(default)]
    pub weight_decay: f64,
    /// L2 weight decay on the embedding rows a step touches (`lazy-adam` only): `lambda * w`
    /// is added to each touched row's gradient.
    #[serde(default)]
    pub sparse_weight_decay: f64,
    /// Learning-rate schedule over epochs, applied to `lr` and `sparse_lr` alike.
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// `exponential` schedule: the factor per epoch (PyTorch `ExponentialLR`'s gamma).
    #[serde(default)]
    pub lr_gamma: Option<f64>,
}

impl Default for OptimizerSpec {
    fn default() -> Self {
        Self {
            dense: DenseOptimizer::default(),
            lr: default_lr(),
            sparse: SparseOptimizer::default(),
            sparse_lr: None,
            weight_decay: 0.0,
            sparse_weight_decay: 0.0,
            lr_schedule: LrSchedule::default(),
            lr_gamma: None,
        }
    }
}

impl OptimizerSpec {
    /// The sparse learning rate before any schedule: `sparse_lr`, or `lr` when absent.
    pub fn base_sparse_lr(&self) -> f64 {
        self.sparse_lr.unwrap_or(self.lr)
    }

    /// The factor on both learning rates during `epoch` (0-based) of `epochs`: what PyTorch's
    /// per-epoch schedulers (`ExponentialLR`, `CosineAnnealingLR` with `T_max = epochs` and
    /// `eta_min = 0`) give after `epoch` calls of `scheduler.step()`.
    pub fn lr_factor(&self, epoch: u64, epochs: u64) -> f64 {
        match self.lr_schedule {
            LrSchedule::Constant => 1.0,
            LrSchedule::Exponential => self.lr_gamma.unwrap_or(1.0).powf(epoch as f64),
            LrSchedule::Cosine => {
                let t = epoch.min(epochs) as f64 / epochs.max(1) as f64;
                0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

/// Learning-rate schedules, stepped once per epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LrSchedule {
    /// The same rates every epoch.
    #[default]
    Constant,
    /// Rates times `lr_gamma^epoch`.
    Exponential,
    /// Rates times `(1 + cos(pi * epoch / epochs)) / 2`: from the full rate at the first
    /// epoch down towards 0 after the last.
    Cosine,
}

fn default_lr() -> f64 {
    1e-3
}

/// Dense optimizers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DenseOptimizer {
    /// Adam.
    #[default]
    Adam,
    /// Adagrad.
    Adagrad,
    /// Plain SGD.
    Sgd,
}

/// Sparse optimizers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SparseOptimizer {
    /// Adam on touched rows only.
    #[default]
    LazyAdam,
    /// Adagrad on touched rows.
    Adagrad,
    /// Plain SGD on touched rows.
    Sgd,
}

/// `[loss]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossSpec {
    /// `fixed`, `gradnorm`, `uwl` or `dwa`.
    #[serde(default)]
    pub weighting: Weighting,
    /// Initial (or fixed) weight per labelled stage; missing stages weigh 1.
    #[serde(default)]
    pub weights: BTreeMap<String, f64>,
    /// GradNorm's alpha.
    #[serde(default = "default_gradnorm_alpha")]
    pub gradnorm_alpha: f64,
    /// GradNorm's weight update rate.
    #[serde(default = "default_gradnorm_lr")]
    pub gradnorm_lr: f64,
    /// GradNorm's statistics are measured every this many steps (from the first).
    #[serde(default = "default_gradnorm_every")]
    pub gradnorm_every: usize,
    /// GradNorm updates the weights every this many steps; 0 = once per epoch (default).
    #[serde(default)]
    pub gradnorm_update_every: usize,
    /// DWA's temperature.
    #[serde(default = "default_dwa_temperature")]
    pub dwa_temperature: f64,
}

impl Default for LossSpec {
    fn default() -> Self {
        Self {
            weighting: Weighting::default(),
            weights: BTreeMap::new(),
            gradnorm_alpha: default_gradnorm_alpha(),
            gradnorm_lr: default_gradnorm_lr(),
            gradnorm_every: default_gradnorm_every(),
            gradnorm_update_every: 0,
            dwa_temperature: default_dwa_temperature(),
        }
    }
}

fn default_gradnorm_alpha() -> f64 {
    1.5
}
fn default_gradnorm_lr() -> f64 {
    0.025
}
fn default_dwa_temperature() -> f64 {
    2.0
}

/// Task-loss weighting strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Weighting {
    /// Weights as given.
    #[default]
    Fixed,
    /// GradNorm, per epoch.
    Gradnorm,
    /// Uncertainty weighting.
    Uwl,
    /// Dynamic weight average.
    Dwa,
}

/// `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// Global batch size (rows per step over all workers).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Passes over the training data.
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Seed for initialisation, shuffling and epoch plans.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Compute threads per worker (0 = one per core).
    #[serde(default)]
    pub threads: usize,
    /// Where the towers run: `flex` (pure-Rust CPU, default), `tch` (LibTorch; build with
    /// `--features tch`) or `cuda` (CubeCL; `--features cuda`). docs/backends.md.
    #[serde(default)]
    pub backend: crate::model::ComputeBackend,
}

impl Default for TrainSpec {
    fn default() -> Self {
        Self {
            batch_size: default_batch_size(),
            epochs: default_epochs(),
            seed: default_seed(),
            threads: 0,
            backend: crate::model::ComputeBackend::default(),
        }
    }
}

fn default_gradnorm_every() -> usize {
    10
}
fn default_batch_size() -> usize {
    1024
}
fn default_epochs() -> usize {
    1
}
fn default_seed() -> u64 {
    42
}

/// `[cluster]`: the coordinator and its workers (docs/cluster.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// Workers in the ring (`--workers` on the command line overrides it).
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Milliseconds between two heartbeats of a worker.
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// A worker silent for this many milliseconds is declared dead: the coordinator forms a new
    /// ring generation from the survivors and returns the dead worker's leases to the queue.
    #[serde(default = "default_heartbeat_timeout_ms")]
    pub heartbeat_timeout_ms: u64,
    /// Longest wait, in milliseconds, for one ring message or one step vote.
    #[serde(default = "default_step_timeout_ms")]
    pub step_timeout_ms: u64,
    /// How long, in milliseconds, the coordinator waits for every worker to register, and a
    /// worker waits at the epoch barrier (rank 0 evaluates and checkpoints meanwhile).
    #[serde(default = "default_join_timeout_ms")]
    pub join_timeout_ms: u64,
    /// f32 values per all-reduce chunk: a rank forwards one chunk while the next arrives.
    #[serde(default = "default_chunk_values")]
    pub chunk_values: usize,
    /// What carries the ring's gradients between workers (docs/cluster.md "Ring transport").
    #[serde(default)]
    pub ring_transport: RingTransport,
    /// Write, per epoch, the coordinates of every row each committed step consumed
    /// (`<output>/audit/`), for `funnel audit` to prove each row counted exactly once.
    #[serde(default)]
    pub audit: bool,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        Self {
            workers: default_workers(),
            heartbeat_interval_ms: default_heartbeat_interval_ms(),
            heartbeat_timeout_ms: default_heartbeat_timeout_ms(),
            step_timeout_ms: default_step_timeout_ms(),
            join_timeout_ms: default_join_timeout_ms(),
            chunk_values: default_chunk_values(),
            ring_transport: RingTransport::default(),
            audit: false,
        }
    }
}

fn default_workers() -> usize {
    1
}
fn default_heartbeat_interval_ms() -> u64 {
    1_000
}
fn default_heartbeat_timeout_ms() -> u64 {
    10_000
}
fn default_step_timeout_ms() -> u64 {
    120_000
}
fn default_join_timeout_ms() -> u64 {
    600_000
}
/// 1 MiB frames. Per chunk a rank pays fixed costs (a frame, the hand-over from the link's
/// reader to the ring, the wake-ups): on buffers of 1-16 MiB, 256Ki values measured 1.01-1.19x
/// the bus bandwidth of 64Ki at 2-4 ranks, with less CPU per all-reduce; at 64-256 MiB 64Ki
/// measured up to 7% better (docs/allreduce-benchmark.md, "Chunk length").
fn default_chunk_values() -> usize {
    262_144
}
