//! Builds the XDP program (lb-ebpf) for the BPF target; the agent embeds it.

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let ebpf_dir = std::path::Path::new(&manifest_dir).join("../lb-ebpf");
    let ebpf_dir = ebpf_dir.canonicalize().with_context(|| format!("lb-ebpf not found at {}", ebpf_dir.display()))?;
    let root_dir = ebpf_dir.to_str().ok_or_else(|| anyhow!("non UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf([Package { name: "lb-ebpf", root_dir, ..Default::default() }], Toolchain::default())
}
