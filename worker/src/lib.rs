//! The Funnel worker: the training step, evaluation, checkpoint contents and single-worker
//! training (DESIGN §5, §7), and the distributed worker: the ring all-reduce and the step vote sit
//! between [`trainer::Trainer::compute`] and [`trainer::Trainer::apply`].
//!
//! Map of modules:
//! - [`trainer`]: one worker's model (host embeddings + burn towers + optimizers) and its step.
//! - [`state`]: checkpoint files (model.safetensors, optimizer.safetensors, model.json,
//!   trainer.json) and exact restore.
//! - [`evaluate`]: exact funnel metrics over an eval split.
//! - [`local`]: `funnel train` on one worker: epochs, eval, metrics.jsonl, checkpoints, resume.
//! - [`report`]: the run report: `<output>/report/index.html` and SVG plots from metrics.jsonl,
//!   with the oracle AUC on gen-data.
//! - [`predict`]: `funnel predict`: a checkpoint's probabilities for every row of a dataset.
//! - [`threads`]: sizing the compute pool.
//! - [`cluster`]: `funnel worker`: a member of a distributed job (coordinator client, leases,
//!   the step's all-reduce buffer, the distributed step loop).
//! - [`ring`]: ring all-reduce of the dense buffer and the sparse-gradient exchange, written once
//!   against a small transport trait; an in-memory transport; recycled chunk buffers.
//! - [`transport`]: the ring between processes: the `funnel.v1.Peer` gRPC service and raw TCP
//!   links on the same port, both with the job token.
//! - [`telemetry`]: a worker's counters and its HTTP `/healthz` and `/metrics`.

pub mod cluster;
pub mod evaluate;
pub mod local;
pub mod predict;
pub mod report;
pub mod ring;
pub mod state;
pub mod telemetry;
pub mod threads;
pub mod trainer;
pub mod transport;

pub use funnel_common::reader::ShardReader;

/// Errors of the worker. Converted to gRPC `Status` in one place once the peer service exists.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A data-plane, model or checkpoint error from `funnel-common`.
    #[error(transparent)]
    Data(#[from] funnel_common::Error),
    /// The job asks for something this build does not do.
    #[error("{0}")]
    Unsupported(String),
    /// Training produced a NaN or infinite loss.
    #[error("non-finite training loss: {0}")]
    NonFinite(String),
    /// A ring exchange failed (a peer, a link, a refused call).
    #[error(transparent)]
    Ring(#[from] ring::RingError),
    /// The coordinator refused a call or cannot be reached (the call is named).
    #[error("coordinator: {0}")]
    Coordinator(String),
    /// The coordinator went away mid-job (its connection failed): the worker reconnects,
    /// resumes from the latest checkpoint and registers again.
    #[error("coordinator lost: {0}")]
    CoordinatorLost(String),
    /// A metrics.jsonl line that does not parse: the file's URL and the 1-based line.
    #[error("{url}, line {line}: {message}")]
    MetricsLine {
        /// The metrics.jsonl URL.
        url: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// The run report cannot be made (no metrics, a plot that does not draw).
    #[error("report: {0}")]
    Report(String),
    /// An internal step failed (serialisation, a channel).
    #[error("internal error: {0}")]
    Internal(String),
}
