//! What every gRPC server of a job serves besides its own service: `grpc.health.v1` (for
//! Kubernetes gRPC probes and load balancers) and server reflection (so `grpcurl` can list and
//! call `funnel.v1` without the .proto files).
//!
//! Health answers without the job token: a probe cannot carry one, and health reveals only
//! "serving" or not. Reflection is behind the token like the job's own services: it describes
//! the whole protocol.

pub use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The encoded `FileDescriptorSet` of `funnel.v1`, written by build.rs.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/funnel_v1_descriptor.bin"));

/// The health service of a server, and the handle that changes what it reports.
pub struct Health {
    reporter: HealthReporter,
    /// The fully qualified services this server serves (`funnel.v1.Coordinator`).
    services: Vec<&'static str>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("services", &self.services)
            .finish()
    }
}

/// The health service to add to a server, and its reporter. Every service in `services` and
/// the server as a whole (the empty name) start as SERVING.
pub async fn health(
    services: &[&'static str],
) -> (
    Health,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, server) = tonic_health::server::health_reporter();
    let health = Health {
        reporter,
        services: services.to_vec(),
    };
    health.set(ServingStatus::Serving).await;
    (health, server)
}

impl Health {
    /// Reports `status` for the server and each of its services (NOT_SERVING when a job has
    /// ended or failed, so a readiness probe takes the pod out of rotation).
    pub async fn set(&self, status: ServingStatus) {
        self.reporter.set_service_status("", status).await;
        for s in &self.services {
            self.reporter.set_service_status(*s, status).await;
        }
    }
}

/// The reflection service (`grpc.reflection.v1`) describing `funnel.v1` and health.
pub fn reflection() -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    String,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| format!("gRPC reflection: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_descriptor_set_names_both_services() {
        let fds: prost_types_check::Fds = prost_types_check::decode(FILE_DESCRIPTOR_SET);
        assert!(fds.services.contains(&"funnel.v1.Coordinator".to_string()));
        assert!(fds.services.contains(&"funnel.v1.Peer".to_string()));
    }

    #[test]
    fn reflection_builds_from_the_descriptors() {
        assert!(reflection().is_ok());
    }

    /// A decoder of just the names this test needs, so the crate needs no prost-types.
    mod prost_types_check {
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct FileSet {
            #[prost(message, repeated, tag = "1")]
            pub file: Vec<File>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct File {
            #[prost(string, optional, tag = "2")]
            pub package: Option<String>,
            #[prost(message, repeated, tag = "6")]
            pub service: Vec<Service>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct Service {
            #[prost(string, optional, tag = "1")]
            pub name: Option<String>,
        }
        pub struct Fds {
            pub services: Vec<String>,
        }
        pub fn decode(bytes: &[u8]) -> Fds {
            let set: FileSet = prost::Message::decode(bytes).expect("descriptor set decodes");
            let services = set
                .file
                .iter()
                .flat_map(|f| {
                    let pkg = f.package.clone().unwrap_or_default();
                    f.service
                        .iter()
                        .map(move |s| format!("{pkg}.{}", s.name.clone().unwrap_or_default()))
                })
                .collect();
            Fds { services }
        }
    }
}
