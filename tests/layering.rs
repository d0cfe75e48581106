//! No module imports a module above it: every `crate::…` path in `src/` is checked
//! against the layer order of ARCHITECTURE.md §Layers.
//!
//! A source scan (not a build) keeps the check cheap and its failure readable: it names
//! the file, the line and the two layers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Layer of each top-level module, bottom (0) to top. Modules of one layer do not import
/// each other either.
const LAYERS: &[(&str, u32)] = &[
    ("fs", 0),
    ("progress", 0),
    ("store", 1),
    ("model", 1),
    ("index", 2),
    ("kernels", 2),
    ("archive", 3),
    ("select", 3),
    ("tune", 4),
    ("engine", 5),
];

/// The umbrella error names every layer's error type; the layers from 3 up that return
/// it (select, tune, engine) may import it, the layers below have their own types.
const UMBRELLA: &str = "error";
const UMBRELLA_USERS_FROM: u32 = 3;

/// Test data (feature `test-support`): above everything, imported by nothing.
const TEST_SUPPORT: &str = "synth";

/// Imports that break the order today, each with the issue that removes it (none left:
/// issue 14 moved the gate into `kernels`, issue 19 the CUDA launcher's last
/// `crate::select` import).
const ALLOWED: &[(&str, &str, &str)] = &[];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`None` for `lib.rs`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    if first == "lib.rs" {
        return None;
    }
    Some(first.trim_end_matches(".rs").to_string())
}

/// Top-level modules named by `crate::` paths in one line of code (comments skipped).
fn imports(line: &str) -> Vec<String> {
    let code = line.trim_start();
    if code.starts_with("//") {
        return Vec::new();
    }
    let code = code.split(" //").next().unwrap_or(code);
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

#[test]
fn no_module_imports_a_module_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let layer: BTreeMap<&str, u32> = LAYERS.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(
        files.len() > 20,
        "found only {} files under src/",
        files.len()
    );

    let mut problems = Vec::new();
    let mut allowed_seen = vec![false; ALLOWED.len()];
    for file in &files {
        let Some(from) = module_of(&src, file) else {
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read");
        for (n, line) in text.lines().enumerate() {
            for to in imports(line) {
                if to == from || to == "self" {
                    continue;
                }
                let at = format!("{}:{}", file.display(), n + 1);
                if let Some(i) = ALLOWED.iter().position(|&(a, b, _)| a == from && b == to) {
                    allowed_seen[i] = true;
                    continue;
                }
                if from == UMBRELLA {
                    // The umbrella wraps every layer's error type.
                    continue;
                }
                if to == TEST_SUPPORT {
                    problems.push(format!("{at}: `{from}` imports the test data `{to}`"));
                    continue;
                }
                if from == TEST_SUPPORT {
                    continue;
                }
                let Some(&lf) = layer.get(from.as_str()) else {
                    problems.push(format!("{at}: module `{from}` has no layer in LAYERS"));
                    continue;
                };
                if to == UMBRELLA {
                    if lf < UMBRELLA_USERS_FROM || from == "archive" {
                        problems.push(format!(
                            "{at}: `{from}` uses the umbrella error instead of its own type"
                        ));
                    }
                    continue;
                }
                let Some(&lt) = layer.get(to.as_str()) else {
                    problems.push(format!("{at}: `{from}` imports `{to}`, which has no layer"));
                    continue;
                };
                if lt >= lf {
                    problems.push(format!(
                        "{at}: `{from}` (layer {lf}) imports `{to}` (layer {lt}): {}",
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "imports against the layer order (ARCHITECTURE.md §Layers):\n{}",
        problems.join("\n")
    );
    // An allowance that is no longer needed must go, so that the order tightens.
    for (seen, (a, b, why)) in allowed_seen.iter().zip(ALLOWED) {
        assert!(
            seen,
            "`{a}` no longer imports `{b}`: remove its allowance ({why})"
        );
    }
}

#[test]
fn the_scanner_finds_paths_and_groups() {
    assert_eq!(imports("use crate::store::Store;"), vec!["store"]);
    assert_eq!(
        imports("use crate::{index::Hit, store};"),
        vec!["index", "store"]
    );
    assert_eq!(
        imports("    let x = crate::select::select(a); // crate::engine"),
        vec!["select"]
    );
    assert!(imports("//! see [`crate::engine::Engine`]").is_empty());
}
