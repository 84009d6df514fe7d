//! Generates the Protobuf form of the client protocol from
//! `proto/client.proto`, compiled in Rust (no `protoc` needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/client.proto");
    let descriptors = protox::compile(["proto/client.proto"], ["proto"])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
