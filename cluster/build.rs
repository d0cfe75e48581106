//! Generates the node RPC (tonic + prost) from `proto/mome_cluster.proto`. Needs
//! `protoc` (Debian: protobuf-compiler), which `etcd-client` needs as well.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/mome_cluster.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/mome_cluster.proto"], &["proto"])?;
    Ok(())
}
