//! Builds the eBPF object (agent-ebpf, through aya-build with the nightly toolchain)
//! and the gRPC code for the agentctl API (from proto/agentd.proto, compiled in pure
//! Rust by protox so no protoc is needed).

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let fds = protox::compile(["proto/agentd.proto"], ["proto"]).context("compiling proto/agentd.proto")?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // `agentctl --json` prints these messages: their proto field names are the
        // stable JSON names.
        .type_attribute(".", "#[derive(serde::Serialize)]")
        // Maps (labels) in key order, so JSON output is stable.
        .btree_map(".")
        .compile_fds(fds)
        .context("generating gRPC code")?;
    println!("cargo:rerun-if-changed=proto/agentd.proto");

    // AYA_BUILD_SKIP=1 builds userspace without the eBPF object (for work on pure
    // logic); the enforcer then refuses to start and says why.
    if std::env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR")?);
        std::fs::write(out.join("agent"), b"").context("writing empty eBPF placeholder")?;
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        return Ok(());
    }
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "agent-ebpf")
        .ok_or_else(|| anyhow!("agent-ebpf package not found"))?;
    let cargo_metadata::Package { name, manifest_path, .. } = ebpf_package;
    let root_dir = manifest_path.parent().ok_or_else(|| anyhow!("no parent for {manifest_path}"))?;
    let ebpf_package = aya_build::Package { name: name.as_str(), root_dir: root_dir.as_str(), ..Default::default() };
    aya_build::build_ebpf([ebpf_package], aya_build::Toolchain::default())
}
