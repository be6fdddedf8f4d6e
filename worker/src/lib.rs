//! The Funnel worker: shard streaming, the training thread and ring all-reduce (DESIGN.md §5).
//!
//! Modules: none yet. Issue 4 fills this crate; today the shard reader it will drive is
//! `funnel_common::reader`, which yields burn-independent `funnel_common::batch::Batch`es.

pub use funnel_common::reader::ShardReader;

/// Errors of the worker. Converted to gRPC `Status` in one place once the peer service exists.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A data-plane error (reading a shard).
    #[error(transparent)]
    Data(#[from] funnel_common::Error),
}
