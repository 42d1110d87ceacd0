use which::which;

/// Rebuild the BPF object when bpf-linker changes (a new LLVM changes the code).
fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found on PATH: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
