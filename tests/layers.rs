//! The layers `src/lib.rs` documents, checked on the source: the pure core (`routing`) does
//! no I/O and imports nothing above it, `metrics` is a leaf, and the modules of `gateway`
//! import each other without a cycle (issue 26 removed the last one).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::repo_file;

/// The `.rs` files under `dir`, with their code: comments dropped, and the tests (a file of
/// tests, or what follows `#[cfg(test)]`) left out.
fn code_under(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                dirs.push(path);
            } else if name.ends_with(".rs") && name != "tests.rs" && !name.ends_with("_tests.rs") {
                out.push((path.clone(), code(&std::fs::read_to_string(&path).unwrap())));
            }
        }
    }
    out
}

fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_pure_core_does_no_io_and_imports_nothing_above_it() {
    let files = code_under(&repo_file("src/routing"));
    assert!(files.len() > 5);
    for (path, code) in files {
        for io in [
            "pingora",
            "tokio",
            "reqwest",
            "std::fs",
            "std::net::Tcp",
            "std::process",
        ] {
            assert!(!code.contains(io), "{}: uses {io}", path.display());
        }
        for line in code.lines().filter(|l| l.contains("crate::")) {
            let after = line.split("crate::").nth(1).unwrap_or_default();
            assert!(
                after.starts_with("routing"),
                "{}: imports from above the core: {line}",
                path.display()
            );
        }
    }
}

#[test]
fn metrics_is_a_leaf() {
    let code = code(&std::fs::read_to_string(repo_file("src/metrics.rs")).unwrap());
    assert!(
        !code.contains("crate::"),
        "src/metrics.rs imports from the crate"
    );
}

#[test]
fn the_gateway_modules_import_each_other_without_a_cycle() {
    let dir = repo_file("src/gateway");
    let modules: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().to_string();
            name.strip_suffix(".rs").map(str::to_string)
        })
        .filter(|m| m != "mod")
        .collect();
    let mut imports: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, code) in code_under(&dir) {
        let module = path.file_stem().unwrap().to_string_lossy().to_string();
        if module == "mod" {
            continue;
        }
        let used = code
            .split("super::")
            .skip(1)
            .map(|rest| {
                rest.split(|c: char| !c.is_alphanumeric() && c != '_')
                    .next()
            })
            .filter_map(|m| m.map(str::to_string))
            .filter(|m| modules.contains(m) && *m != module)
            .collect();
        imports.insert(module, used);
    }
    assert!(imports.len() > 10);
    // Depth-first search for a path back to where it started.
    fn back_to(
        start: &str,
        at: &str,
        imports: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
    ) -> bool {
        for next in imports.get(at).into_iter().flatten() {
            if next == start {
                return true;
            }
            if !path.contains(next) {
                path.push(next.clone());
                if back_to(start, next, imports, path) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    for module in imports.keys() {
        let mut path = vec![module.clone()];
        assert!(
            !back_to(module, module, &imports, &mut path),
            "an import cycle: {} -> {module}",
            path.join(" -> ")
        );
    }
}
