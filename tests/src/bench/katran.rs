//! Katran, the peer of section 1: its XDP balancer built from its own tree
//! and timed by our harness (`tests/peers/katran/`) with section 1's method,
//! in the same run as ours. Nothing of Katran's is in this repository: the
//! bench uses a tree it finds, and says so when it finds none.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

/// The harness's source, in this crate.
const HARNESS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/katran/katran_cost.c");

/// Katran's own cost per path (ns, median of its rounds), by the names
/// section 1 uses: not_for_vip, new_flow, hot, random_1e6, new_flow_1e6.
pub type Figures = BTreeMap<String, f64>;

/// Katran, built and ready to time.
pub struct Katran {
    object: PathBuf,
    harness: PathBuf,
    /// Where the tree was found, for the report.
    pub tree: PathBuf,
}

/// Katran's tree: `$KATRAN_TREE`, else `/tmp/katran`; `Err` says why none.
fn tree() -> Result<PathBuf, String> {
    let tree = std::env::var_os("KATRAN_TREE").map_or_else(|| PathBuf::from("/tmp/katran"), PathBuf::from);
    if tree.join("katran/lib/bpf/balancer.bpf.c").is_file() {
        Ok(tree)
    } else {
        Err(format!(
            "Katran's tree not found at {} (set KATRAN_TREE; see tests/peers/katran/README.md)",
            tree.display()
        ))
    }
}

impl Katran {
    /// Finds Katran's tree and builds its program and our harness into
    /// `out`. `Err` says why Katran cannot be timed in this run.
    pub fn build(out: &Path) -> Result<Katran, String> {
        let tree = tree()?;
        std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
        let object = out.join("balancer_kern.o");
        let harness = out.join("katran_cost");
        // Katran's own recipe (katran/lib/Makefile-bpf): LLVM IR for the
        // host, then llc to BPF; no optional -D features.
        let include = |dir: &str| format!("-I{}", tree.join(dir).display());
        let source = tree.join("katran/lib/bpf/balancer.bpf.c");
        let script = format!(
            "clang-19 {} {} -D__KERNEL__ -Wno-unused-value -Wno-pointer-sign \
             -Wno-compare-distinct-pointer-types -O2 -emit-llvm -c -g {} -o - \
             | llc-19 -march=bpf -filetype=obj -o {}",
            include("."),
            include("katran/lib/linux_includes"),
            source.display(),
            object.display()
        );
        run(Command::new("bash").args(["-o", "pipefail", "-c", &script]), "building Katran's XDP program")?;
        run(
            Command::new("gcc").args(["-O2", "-Wall", "-o"]).arg(&harness).arg(HARNESS).arg("-lbpf"),
            "building the harness",
        )?;
        Ok(Katran { object, harness, tree })
    }

    /// One run of the harness: `rounds` x `calls`, as ours.
    pub fn measure(&self, rounds: usize, calls: usize) -> Result<Figures, String> {
        let output = Command::new(&self.harness)
            .arg(&self.object)
            .args([rounds.to_string(), calls.to_string()])
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.harness.display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(format!("Katran's harness failed: {}", stderr.lines().last().unwrap_or("no message")));
        }
        parse_result(&stdout).ok_or_else(|| "Katran's harness printed no RESULT line".to_owned())
    }
}

/// The harness's `RESULT katran name=ns ...` line.
fn parse_result(stdout: &str) -> Option<Figures> {
    let line = stdout.lines().find_map(|l| l.strip_prefix("RESULT katran "))?;
    line.split_whitespace()
        .map(|pair| {
            let (name, value) = pair.split_once('=')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn run(command: &mut Command, what: &str) -> Result<(), String> {
    let output = command.output().map_err(|e| format!("{what}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().rfind(|l| !l.contains("eh_frame")).unwrap_or("no message");
    Err(format!("{what} failed: {last}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_result_line() {
        let out = "hot flow on real 1\nRESULT katran not_for_vip=59.3 new_flow=620.3 hot=151.6\n";
        let figures = parse_result(out).unwrap();
        assert_eq!(figures["new_flow"], 620.3);
        assert_eq!(figures.len(), 3);
        assert!(parse_result("no result\n").is_none());
        assert!(parse_result("RESULT katran hot=fast\n").is_none());
    }
}
