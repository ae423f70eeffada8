//! Builds the eBPF probes (`ws-ebpf`) for `bpfel-unknown-none` with the nightly toolchain
//! and bpf-linker; the object lands in `OUT_DIR/ws-ebpf` and is embedded by the loader.
//! `cargo xtask setup` installs what this needs.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let probes = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "ws-ebpf")
        .ok_or_else(|| anyhow!("the ws-ebpf package is not in the workspace"))?;
    let root_dir = probes
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", probes.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: probes.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF probes (run `cargo xtask setup` if the toolchain is missing)")
}
