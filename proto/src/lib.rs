//! Funnel's gRPC wire protocol (`funnel.v1`, DESIGN §2).
//!
//! Everything here is generated at build time from `proto/funnel/v1/*.proto` by protox (a Rust
//! protobuf compiler, so no protoc binary is needed) and tonic-prost-build. Only generated types
//! live here: domain types stay in `funnel-common` and the worker, and the conversions between
//! them sit in one place on the side that owns the domain type (`funnel_worker::transport::wire`).
//!
//! Modules:
//! - [`v1`]: messages, `Coordinator` and `Peer` clients and servers.
//! - [`auth`]: the job token every RPC of every service carries (the interceptors both sides
//!   attach), kept beside the protocol so the coordinator and the workers share one check.
//! - [`tls`]: TLS and mutual TLS from PEM files for every connection, with the token as
//!   [`tls::Security`].
//! - [`ops`]: `grpc.health.v1` and server reflection, added to every server.

pub mod auth;
pub mod ops;
pub mod tls;

/// The protocol package version that every service carries.
pub const PROTOCOL_PACKAGE: &str = "funnel.v1";

/// The generated `funnel.v1` package.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    reason = "generated code"
)]
pub mod v1 {
    tonic::include_proto!("funnel.v1");
}
