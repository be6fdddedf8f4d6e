//! The Funnel coordinator: membership, dataset manifest, epoch plans and leases, step commits,
//! task weights and checkpoint commits (DESIGN.md §6).
//!
//! Modules: none yet. Issue 4 fills this crate; today the dataset manifest it will own is built by
//! `funnel_common::manifest`, which `funnel validate` already uses.

pub use funnel_common::manifest::DatasetManifest;

/// Errors of the coordinator. Converted to gRPC `Status` in one place once the service exists.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// A data-plane error (listing, footers, schema).
    #[error(transparent)]
    Data(#[from] funnel_common::Error),
}
