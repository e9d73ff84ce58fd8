//! Generates the gRPC services of `proto/proto/transportpb.proto` (the
//! raft transport) and `kvpb.proto` (the client service) with
//! tonic, on the message types of `flotilla-proto` (referenced, not
//! generated again), with the vendored protoc.

use std::error::Error;

const PROTO_DIR: &str = "../../proto/proto";

fn main() -> Result<(), Box<dyn Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    config.bytes(["."]);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .extern_path(".raft_serverpb", "::flotilla_proto::raft_serverpb")
        .extern_path(".eraftpb", "::flotilla_proto::eraftpb")
        .extern_path(".metapb", "::flotilla_proto::metapb")
        .extern_path(".raft_cmdpb", "::flotilla_proto::raft_cmdpb")
        .compile_with_config(
            config,
            &[
                format!("{PROTO_DIR}/transportpb.proto"),
                format!("{PROTO_DIR}/kvpb.proto"),
            ],
            &[PROTO_DIR.to_string()],
        )?;
    println!("cargo:rerun-if-changed={PROTO_DIR}");
    Ok(())
}
