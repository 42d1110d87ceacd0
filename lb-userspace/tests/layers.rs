//! The modules' layers, as `src/lib.rs` names them: each top-level module
//! uses only the modules before it, so no two import each other. A use of a
//! later module (`crate::api` from `agent/`, say) fails here with its file.

use std::{fs, path::Path};

/// Lowest first, as in `src/lib.rs`.
const LAYERS: &[&str] =
    &["config", "servers", "model", "health", "datapath", "agent", "cluster", "api", "cli", "daemon"];

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut wrong = Vec::new();
    for (rank, module) in LAYERS.iter().enumerate() {
        for file in rust_files(&src, module) {
            let text = fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            for used in modules_used(&text) {
                let Some(used_rank) = LAYERS.iter().position(|m| *m == used) else { continue };
                if used_rank > rank {
                    wrong.push(format!("{} uses crate::{used}", file.strip_prefix(&src).unwrap().display()));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "a module uses one of a later layer:\n{}", wrong.join("\n"));
}

#[test]
fn lib_rs_declares_the_same_modules() {
    let lib = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let mut declared: Vec<&str> =
        lib.lines().filter_map(|l| l.strip_prefix("pub mod ")).map(|l| l.trim_end_matches(';')).collect();
    let mut layers = LAYERS.to_vec();
    declared.sort_unstable();
    layers.sort_unstable();
    assert_eq!(declared, layers, "a module added to lib.rs needs its place in LAYERS (and lib.rs's list)");
}

/// `src/<module>.rs` or every file under `src/<module>/`.
fn rust_files(src: &Path, module: &str) -> Vec<std::path::PathBuf> {
    let file = src.join(format!("{module}.rs"));
    if file.exists() {
        return vec![file];
    }
    let mut files = Vec::new();
    let mut dirs = vec![src.join(module)];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
}

/// The top-level modules a file names: `crate::x` and, in a
/// `use crate::{..}` block, each path it starts at depth one. Comments are
/// skipped (they may name any path).
fn modules_used(text: &str) -> Vec<String> {
    let code: String = text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    let mut used = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(block) = rest.strip_prefix('{') {
            used.extend(block_roots(block));
        } else {
            used.push(ident(rest));
        }
    }
    used.retain(|m| !m.is_empty());
    used
}

/// The first name of each path at depth one of `a::b, c::{d, e}, f }`.
fn block_roots(block: &str) -> Vec<String> {
    let mut roots = vec![ident(block.trim_start())];
    let mut depth = 0;
    for (i, c) in block.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => roots.push(ident(block[i + 1..].trim_start())),
            _ => {}
        }
    }
    roots
}

fn ident(text: &str) -> String {
    text.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
}

#[test]
fn the_reader_finds_uses_in_blocks_and_paths() {
    let text = "use crate::{\n    api::wire,\n    model::{A, B},\n    config,\n};\nlet x = crate::agent::runtime::now_ms(); // crate::cli\n";
    assert_eq!(modules_used(text), ["api", "model", "config", "agent"]);
}
