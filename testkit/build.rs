//! Generates the prost messages and tonic client/server stubs of `proto/*.proto` into
//! `OUT_DIR`. The protos are parsed by `protox` (pure Rust), so no system `protoc` is needed.

use std::path::Path;

const PROTOS: &[&str] = &["helloworld.proto", "zctest.proto", "routeguide.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new("proto");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", dir.join(proto).display());
    }
    let fds = protox::compile(PROTOS, [dir])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // `bytes` fields as `bytes::Bytes`: echoing a payload is a reference-count increment.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
