//! The Funnel coordinator (DESIGN §4-§6): membership, the dataset manifest, epoch plans and
//! leases, the per-step commit vote and the ledger, the epoch barrier, job status.
//!
//! Every decision is a pure function or a pure state transition, tested on its own; the
//! service only checks callers and waits:
//! - [`plan`]: epoch plans (deterministic per seed and epoch) and round-robin lease ownership.
//! - [`leases`]: who holds which lease; a dead worker's leases and queue go to the others.
//! - [`membership`]: registration, ranks, generations, heartbeat expiry, removal and fencing.
//! - [`votes`]: rounds that complete when every member reported them (step commits, epochs).
//! - [`ledger`]: the exact rows committed per lease; a row counted twice is refused.
//! - [`journal`]: what a restarted coordinator resumes with and checks (spec, data, generation).
//! - [`state`]: the shared state and the long-poll wait on it.
//! - [`service`]: the `funnel.v1.Coordinator` gRPC service.
//! - [`wire`]: conversions to and from `funnel.v1` messages.
//! - [`server`]: preparing a job (listing the data once) and serving it to the end.
//! - [`telemetry`]: what the coordinator measures for operators (steps, rows/s, losses,
//!   all-reduce time and bytes, failures and recoveries, epoch records).
//! - [`http`]: `/healthz`, `/readyz`, `/metrics` (Prometheus) and `/status` (JSON).
//! - [`error`]: [`CoordinatorError`] and its conversion to gRPC `Status`.

pub mod error;
pub mod http;
pub mod journal;
pub mod leases;
pub mod ledger;
pub mod membership;
pub mod plan;
pub mod server;
pub mod service;
pub mod state;
pub mod telemetry;
pub mod votes;
pub mod wire;

pub use error::CoordinatorError;
pub use funnel_common::manifest::DatasetManifest;
pub use server::{JobOutcome, bind, prepare, serve};
