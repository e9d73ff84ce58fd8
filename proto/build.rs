//! Generates the Rust types of `proto/*.proto` with prost-build, using the
//! protoc binary shipped by the `protoc-bin-vendored` crate so that a fresh
//! machine needs no system protoc.

use std::error::Error;

const PROTOS: &[&str] = &[
    "proto/eraftpb.proto",
    "proto/metapb.proto",
    "proto/raft_cmdpb.proto",
    "proto/raft_serverpb.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    // Every `bytes` field is a `bytes::Bytes`: entries and contexts clone
    // without copying.
    config.bytes(["."]);
    // A raft `Message` is moved through queues by value many times per
    // proposal; an inline `Snapshot` (rarely set) would make every message
    // ~100 bytes larger. Boxing it keeps `Message` small.
    config.boxed(".eraftpb.Message.snapshot");
    config.compile_protos(PROTOS, &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
