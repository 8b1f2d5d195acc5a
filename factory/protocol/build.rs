//! Generates the gRPC types and stubs from proto/factory.proto with protox (no `protoc`
//! needed on the machine).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/factory.proto");
    let fds = protox::compile(["factory.proto"], ["proto"])?;
    tonic_prost_build::configure().build_transport(false).compile_fds(fds)?;
    Ok(())
}
