//! The plugin protocols' gRPC services, generated from their published definitions
//! (`proto/`: Terraform's `tfplugin5` and `tfplugin6`, go-plugin's controller, stdio and
//! broker). Needs `protoc` (Debian's `protobuf-compiler`, installed by `scripts/prereqs.sh`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/tfplugin5.proto",
        "proto/tfplugin6.proto",
        "proto/grpc_controller.proto",
        "proto/grpc_stdio.proto",
        "proto/grpc_broker.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_build::configure().compile_protos(&protos, &["proto"])?;
    Ok(())
}
