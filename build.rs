//! Compiles our own etcd-compatible protobuf definitions and the Raft peer service (proto/)
//! into Rust with tonic.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/etcd/kv.proto", "proto/etcd/rpc.proto"], &["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/raft/raft.proto"], &["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/cluster/cluster.proto"], &["proto"])?;
    Ok(())
}
