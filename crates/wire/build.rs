//! Compiles the .proto files with a pure-Rust parser, so building the crate
//! never needs a `protoc` binary, and embeds the descriptor set for JSON/text
//! transcoding and gRPC server reflection.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "swarming/proto/plugin/plugin.proto",
    "qscheduler/qslib/protos/config.proto",
    "qscheduler/qslib/protos/state.proto",
    "qscheduler/qslib/protos/scheduler.proto",
    "qscheduler/qslib/protos/reconciler.proto",
    "qscheduler/qslib/protos/metrics/metrics.proto",
    "qscheduler/service/api/qscheduler/v1/admin.proto",
    "qscheduler/service/api/qscheduler/v1/insight.proto",
    "luci/prpc/details.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build.rs");

    let mut compiler = protox::Compiler::new(["proto"])?;
    // Comments flow into the generated docs; imports (the well-known types)
    // must be in the set so prost-reflect knows their JSON mapping.
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(PROTOS)?;
    let fds = compiler.file_descriptor_set();

    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("file_descriptor_set.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    let mut config = tonic_prost_build::Config::new();
    // `prost::Name` gives every message its full proto name, which the pRPC
    // client needs to find the descriptor for JSON.
    config.enable_type_names();
    tonic_prost_build::configure()
        // Sorted maps make encodings deterministic, which storage snapshots
        // and golden tests rely on.
        .btree_map(".")
        .build_client(true)
        .build_server(true)
        .compile_fds_with_config(fds, config)?;
    Ok(())
}
