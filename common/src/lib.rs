//! `funnel-common`: what the coordinator, the workers and the CLI share. No servers here.
//!
//! Map of modules:
//! - [`audit`]: the exactly-once audit: rows per committed step, written per epoch, and the check.
//! - [`spec`]: the job spec (TOML, versioned), funnel presets and validation with key paths.
//! - [`store`]: object-store URLs (`s3://`, `gs://`, `az://`, `file://`, `memory://`, paths).
//! - [`hash`]: the stable feature hash that serving systems reproduce.
//! - [`manifest`]: the dataset manifest built once from Parquet footers, and its schema check.
//! - [`columns`]: how spec features and labels map onto Parquet columns (the decode plan).
//! - [`decode`]: Arrow record batches -> [`batch::Batch`], with label policies and counts.
//! - [`checkpoint`]: checkpoint commits (files, then a create-only MANIFEST, then LATEST) and
//!   verified reads; safetensors encoding of named tensors.
//! - [`pipeline`]: an epoch of batches (deterministic shard order, shuffle, bounded hand-off to
//!   the training thread).
//! - [`batch`]: plain-array batches (no burn), the shuffle buffer and fixed-size batching.
//! - [`embedding`]: host-side embedding tables, pooled gather, row-sparse gradients, sparse optimizers.
//! - [`reader`]: streams one shard (row-group range) with ranged GETs and a bounded decode pool.
//! - [`synth`]: synthetic funnel logs with ground-truth probabilities (`funnel gen-data`).
//! - [`metrics`]: exact, mergeable metrics: AUC (ties averaged), logloss, calibration, CVR AUC.
//! - [`oracle`]: the best achievable AUC per target from gen-data's `truth_p_<stage>` columns.
//! - [`model`]: burn towers, the log-space funnel loss and the flat dense-parameter buffer.
//! - [`retry`]: retries with backoff for the reads Funnel issues (footers, column chunks).
//! - [`store_faults`]: seeded object-store read failures for tests (`FUNNEL_STORE_FAULTS`).
//! - [`rng`]: the seedable PRNG behind gen-data and shuffles (stream fixed by this crate).
//! - [`validate`]: `funnel validate`: manifests, schema checks and a full decode scan.
//! - [`weighting`]: task-loss weighting rules (GradNorm, DWA, UWL) and their state.
//! - [`telemetry`]: the Prometheus text format and the operational HTTP server.
//! - [`slots`]: which member reads which data slot of an epoch, through deaths and joins.
//! - [`error`]: the crate's error type.
//! - [`fault`]: SIGKILL on purpose, for fault-injection tests.

pub mod audit;
pub mod batch;
pub mod checkpoint;
pub mod columns;
pub mod decode;
pub mod embedding;
pub mod error;
pub mod fault;
pub mod hash;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod oracle;
pub mod pipeline;
pub mod reader;
pub mod retry;
pub mod rng;
pub mod slots;
pub mod spec;
pub mod store;
pub mod store_faults;
pub mod synth;
pub mod telemetry;
pub mod validate;
pub mod weighting;

pub use error::{DataLocation, Error, Result};
