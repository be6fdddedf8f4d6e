//! Funnel's gRPC wire protocol (`funnel.v1`).
//!
//! Empty until the coordinator and worker services land (issue 4): the messages and services will
//! be generated here at build time from `.proto` files with protox (no protoc binary needed), and
//! kept apart from the domain types in `funnel-common`, with conversions in one place.
//!
//! Modules: none yet.

/// The protocol package version that every service will carry.
pub const PROTOCOL_PACKAGE: &str = "funnel.v1";
