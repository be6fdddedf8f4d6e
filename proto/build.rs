//! Generates `funnel.v1` from `funnel/v1/*.proto` without protoc: protox compiles the files into
//! a `FileDescriptorSet` and tonic-prost-build generates messages, clients and servers from it.

const PROTOS: &[&str] = &["funnel/v1/coordinator.proto", "funnel/v1/peer.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    // The same descriptors, encoded, for gRPC server reflection (`funnel_proto::ops`).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("funnel_v1_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // Both ends are Rust in this workspace: clients and servers are generated for every service.
    // `compile_fds` does not emit rerun-if-changed lines itself, hence the loop above.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Every bytes field (footers, chunk values, sparse rows) as `Bytes`: a slice of the
        // received buffer, not a copied Vec.
        .bytes(".funnel.v1")
        .compile_fds(fds)?;
    Ok(())
}
