//! Generates, with a Rust protobuf compiler (no `protoc` needed):
//! - the gRPC server API's messages and service from `proto/api.proto`,
//!   keeping the compiled descriptors for gRPC reflection;
//! - the proxy protocol's messages and client from `proto/proxy.proto`,
//!   which also read and write the JSON of HTTP proxies (serde derives;
//!   `data`, `info` and `meta` as embedded JSON values);
//! - the unidirectional gRPC transport's service from
//!   `proto/unistream.proto`, over the client protocol's messages.

use std::path::PathBuf;

use prost::Message;

/// The proxy messages' `bytes` fields that hold JSON.
const RAW_JSON_FIELDS: &[&str] = &["data", "info", "meta"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/api.proto");
    println!("cargo:rerun-if-changed=proto/proxy.proto");
    println!("cargo:rerun-if-changed=proto/unistream.proto");
    println!("cargo:rerun-if-changed=../herald-protocol/proto/client.proto");
    let descriptors = protox::compile(["proto/api.proto"], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("api_descriptor.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;

    let proxy = protox::compile(["proto/proxy.proto"], ["proto"])?;
    // Calls are made through `tonic::client::Grpc` directly (a generated
    // client's `connect` would clash with the service's Connect).
    let mut build = tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .type_attribute(".", "#[serde(default)]");
    for field in RAW_JSON_FIELDS {
        build = build.field_attribute(
            field,
            "#[serde(with = \"crate::proxy::raw_json\", skip_serializing_if = \"Vec::is_empty\")]",
        );
    }
    for field in ["b64data", "b64info"] {
        build = build.field_attribute(
            field,
            "#[serde(skip_serializing_if = \"String::is_empty\")]",
        );
    }
    build.compile_fds(proxy)?;

    // The client protocol's messages are herald-protocol's.
    let uni = protox::compile(
        ["proto/unistream.proto"],
        ["proto", "../herald-protocol/proto"],
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .extern_path(
            ".centrifugal.centrifuge.protocol",
            "::herald_protocol::protobuf::pb",
        )
        .compile_fds(uni)?;
    Ok(())
}
