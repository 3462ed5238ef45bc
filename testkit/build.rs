//! Generates the prost messages and tonic client/server stubs of `proto/*.proto` into
//! `OUT_DIR`, and their encoded FileDescriptorSet (`descriptors.bin`, served by gRPC server
//! reflection). The protos are parsed by `protox` (pure Rust), so no system `protoc` is needed.

use std::path::Path;

const PROTOS: &[&str] = &["helloworld.proto", "zctest.proto", "routeguide.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new("proto");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", dir.join(proto).display());
    }
    let fds = protox::compile(PROTOS, [dir])?;
    // The encoded set, for the server reflection service.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("descriptors.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // `bytes` fields as `bytes::Bytes`: echoing a payload is a reference-count increment.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
