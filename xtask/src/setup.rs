//! Installs what the project needs on a fresh Debian machine, idempotently:
//! each step checks first and says what it found or did.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// Debian packages needed to build and test: LLVM 22 for bpf-linker,
/// iproute2 and ethtool for the test bed (namespaces, veth offloads),
/// Chromium and its WebDriver for the dashboard's browser tests,
/// prometheus for `promtool check metrics`, etcd (server and etcdctl) for
/// the cluster tests, protoc with protobuf's well-known .proto files,
/// which the etcd client crate's build needs, and BIRD 2 for the ECMP
/// tests' router and nodes.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libclang-22-dev",
    "iproute2",
    "ethtool",
    "chromium",
    "chromium-driver",
    "prometheus",
    "etcd-server",
    "etcd-client",
    "protobuf-compiler",
    "libprotobuf-dev",
    // The cluster tests make their TLS certificates with it.
    "openssl",
    "bird2",
];
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

fn step(what: &str, status: &str) {
    eprintln!("setup: {what:<34} {status}");
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("{what}: cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{what} failed ({status}): {cmd:?}");
    }
    Ok(())
}

fn cargo_bin_dir() -> PathBuf {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"));
    cargo_home.join("bin")
}

/// PATH with cargo's bin directory (where bpf-linker lands) in front.
pub fn path_with_cargo_bin() -> std::ffi::OsString {
    let mut paths = vec![cargo_bin_dir()];
    paths.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
    std::env::join_paths(paths).expect("PATH entries have no separator")
}

pub fn ensure_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "this needs root (it installs packages, loads XDP programs and creates network namespaces): run it with sudo or as root"
        );
    }
    Ok(())
}

/// What the benchmarks compare against, and their load generator.
// clang-19, llvm-19, libbpf-dev and gcc build Katran beside our datapath
// (section 1) when its tree is there (tests/peers/katran/README.md).
const BENCH_PACKAGES: &[&str] =
    &["nginx-light", "haproxy", "wrk", "nftables", "conntrack", "clang-19", "llvm-19", "libbpf-dev", "gcc"];

/// Installs the benchmarks' peers.
pub fn bench_setup() -> anyhow::Result<()> {
    install_missing("benchmark peers", BENCH_PACKAGES)
}

/// Installs the packages of `list` that are missing. Debian would start
/// some as services on the host (nginx, haproxy, prometheus): a policy-rc.d
/// keeps it from doing so (tests and benchmarks run their own, in namespaces).
fn install_missing(what: &str, list: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = list.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        step(what, "present");
        return Ok(());
    }
    step(what, &format!("installing {}", missing.join(" ")));
    let policy = std::path::Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy.exists();
    if ours {
        std::fs::write(policy, "#!/bin/sh\n# lb xtask: no service starts while installing packages\nexit 101\n")
            .context("cannot write /usr/sbin/policy-rc.d")?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755))?;
    }
    let result = run(Command::new("apt-get").args(["update", "-qq"]), "apt-get update").and_then(|()| {
        run(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
            &format!("installing the {what}"),
        )
    });
    if ours {
        let _ = std::fs::remove_file(policy);
    }
    result
}

pub fn setup() -> anyhow::Result<()> {
    ensure_root()?;
    debian_packages().context("cannot install the Debian packages the build and tests need")?;
    nightly_rust_src()?;
    bpf_linker()?;
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn debian_packages() -> anyhow::Result<()> {
    install_missing("Debian packages", PACKAGES)
}

fn nightly_rust_src() -> anyhow::Result<()> {
    let has_nightly = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .context("rustup is needed to build the XDP program (nightly, rust-src)")?;
    if !String::from_utf8_lossy(&has_nightly.stdout).lines().any(|l| l.starts_with("nightly")) {
        step("nightly toolchain", "installing");
        run(
            Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]),
            "installing the nightly toolchain",
        )?;
    } else {
        step("nightly toolchain", "present");
    }
    let components = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("cannot list nightly components")?;
    if String::from_utf8_lossy(&components.stdout).lines().any(|l| l.starts_with("rust-src")) {
        step("nightly rust-src", "present");
        return Ok(());
    }
    step("nightly rust-src", "installing");
    run(
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
        "adding rust-src to nightly",
    )
}

fn bpf_linker() -> anyhow::Result<()> {
    if succeeds(Command::new("bpf-linker").arg("--version").env("PATH", path_with_cargo_bin())) {
        step("bpf-linker", "present");
        return Ok(());
    }
    step("bpf-linker", "installing (cargo install, about a minute)");
    let mut path = std::ffi::OsString::from(LLVM_BIN);
    path.push(":");
    path.push(path_with_cargo_bin());
    run(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--locked", "--no-default-features", "--features", "llvm-22"])
            .env("PATH", path),
        "installing bpf-linker",
    )
}
