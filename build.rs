//! Compiles `proto/` without a system protoc: protox parses the files into a
//! descriptor set, tonic-prost-build generates code from it, and the set is
//! embedded for server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_file = "proto/segd/v1/segd.proto";
    println!("cargo:rerun-if-changed={proto_file}");
    let file_descriptors = protox::compile([proto_file], ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("segd_descriptor.bin");
    std::fs::write(
        &descriptor_path,
        prost::Message::encode_to_vec(&file_descriptors),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(file_descriptors)?;
    Ok(())
}
