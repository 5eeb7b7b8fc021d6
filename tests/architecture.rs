//! The module graph keeps its layers: `api` at the bottom, the pure `model`
//! above it, the pure builders (`build`) above both, and the controllers on
//! top, none of which reaches into another. Read from the source: every
//! `crate::…` and `super::…` path outside comments is an edge.
//!
//! `cargo test --test architecture -- --nocapture` prints the graph and the
//! largest files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The controllers, one per kind: none may name another.
const CONTROLLERS: [&str; 4] = [
    "servicedatabase",
    "databaseserver",
    "databasebackup",
    "databaseclass",
];

/// What each pure layer must never name.
const FORBIDDEN: [(&str, &[&str]); 3] = [
    (
        "api",
        &[
            "model",
            "build",
            "controller",
            "operator",
            "cli",
            "run",
            "agent",
            "instance",
        ],
    ),
    (
        "model",
        &[
            "build",
            "controller",
            "operator",
            "cli",
            "run",
            "agent",
            "instance",
        ],
    ),
    ("build", &["controller", "operator", "cli", "run"]),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a file is in, at the granularity of the rules: `model`,
/// `build`, `controller::servicedatabase`, `controller::apply`, …
fn module_of(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The code of a file without its comments (line comments and doc
/// comments; servicedb has no block comments).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            // `//` inside a string literal (a URL) is rare in paths; a line
            // whose first `//` follows a quote keeps its text.
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules a file names, as paths from the crate root (at most two
/// segments: `controller::apply`, `model`).
fn references(file_module: &[String], text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let code = code(text);
    let segments = |rest: &str| -> Vec<String> {
        rest.split("::")
            .map(|s| {
                s.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .take_while(|s| !s.is_empty())
            .collect()
    };
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let is_module = |path: &[String]| {
        let dir = path.iter().fold(src.clone(), |dir, p| dir.join(p));
        dir.is_dir() || dir.with_extension("rs").is_file()
    };
    let mut push = |path: Vec<String>| {
        // Only paths into the crate's modules (not `super::Error` in a
        // file's own module), as deep as the rules look: two modules.
        let mut modules: Vec<String> = Vec::new();
        for segment in path.into_iter().take(2) {
            let mut candidate = modules.clone();
            candidate.push(segment);
            if !is_module(&candidate) {
                break;
            }
            modules = candidate;
        }
        if !modules.is_empty() {
            found.insert(modules.join("::"));
        }
    };
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        let path = segments(rest);
        // `crate::controller::{apply, cache}`
        let after = &rest[path
            .iter()
            .map(|s| s.len() + 2)
            .sum::<usize>()
            .min(rest.len())..];
        if after.starts_with('{') {
            let group = &after[1..after.find('}').unwrap_or(after.len())];
            for item in group.split(',') {
                let mut p = path.clone();
                p.extend(segments(item.trim()));
                push(p);
            }
        } else {
            push(path);
        }
    }
    // `super::` from a file in `a/b/c.rs` (module a::b::c) names a::b's
    // items; from `a/b/mod.rs` (module a::b), a's.
    for (i, _) in code.match_indices("super::") {
        if i > 0 && code[..i].ends_with("super::") {
            continue;
        }
        let mut rest = &code[i..];
        let mut base = file_module.to_vec();
        while let Some(r) = rest.strip_prefix("super::") {
            base.pop();
            rest = r;
        }
        if rest.starts_with('*') || rest.starts_with('{') {
            continue;
        }
        let mut path = base;
        path.extend(segments(rest));
        push(path);
    }
    found
}

struct Graph {
    /// module → the modules it names, with the files that do.
    edges: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    sizes: Vec<(usize, String)>,
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    let mut sizes = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src/").to_path_buf();
        let text = std::fs::read_to_string(&file).expect("read");
        let non_test = text.split("#[cfg(test)]").next().unwrap_or_default();
        // Files that are test modules as a whole hold no product code.
        if !relative.to_string_lossy().ends_with("tests.rs") {
            sizes.push((non_test.lines().count(), relative.display().to_string()));
        }
        let module = module_of(&relative);
        let from = module
            .iter()
            .take(2)
            .cloned()
            .collect::<Vec<_>>()
            .join("::");
        for to in references(&module, &text) {
            let to_top = to.split("::").next().unwrap_or_default();
            let from_top = from.split("::").next().unwrap_or_default();
            if to == from || (to_top == from_top && from_top != "controller") {
                continue;
            }
            edges
                .entry(from.clone())
                .or_default()
                .entry(to)
                .or_default()
                .insert(relative.display().to_string());
        }
    }
    sizes.sort_by(|a, b| b.cmp(a));
    Graph { edges, sizes }
}

fn is_controller(module: &str) -> Option<&str> {
    let sub = module.strip_prefix("controller::")?;
    CONTROLLERS.contains(&sub).then_some(sub)
}

#[test]
fn the_layers_hold() {
    let graph = graph();
    let mut broken = Vec::new();
    for (from, targets) in &graph.edges {
        let from_top = from.split("::").next().unwrap_or_default();
        for (to, files) in targets {
            let to_top = to.split("::").next().unwrap_or_default();
            let files = files.iter().cloned().collect::<Vec<_>>().join(", ");
            for (layer, never) in FORBIDDEN {
                if from_top == layer && never.contains(&to_top) {
                    broken.push(format!("{from} names {to} ({files})"));
                }
            }
            // A controller names no other controller; the controllers'
            // shared modules (apply, dereference, cache, …) name none.
            let Some(target) = is_controller(to) else {
                continue;
            };
            if from_top != "controller" || from == "controller" {
                continue;
            }
            match is_controller(from) {
                Some(own) if own == target => {}
                Some(_) => broken.push(format!("{from} names {to}, another controller ({files})")),
                None => broken.push(format!(
                    "shared module {from} names controller {to} ({files})"
                )),
            }
        }
    }
    println!("module graph (module → what it names):");
    for (from, targets) in &graph.edges {
        let to: Vec<_> = targets.keys().cloned().collect();
        println!("  {from} → {}", to.join(", "));
    }
    println!("largest files (lines before #[cfg(test)]):");
    for (lines, file) in graph.sizes.iter().take(12) {
        println!("  {lines:5} src/{file}");
    }
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
}

/// The lint sees what it must: a reference through a grouped import, one
/// through `super::super::` and one in a comment (ignored).
#[test]
fn references_are_read_from_code_not_comments() {
    let module: Vec<String> = ["controller", "databaseserver", "managed"]
        .map(String::from)
        .to_vec();
    let text = "use crate::controller::{apply, servicedatabase::rotation};\n\
                use super::super::databasebackup::x;\n\
                // see crate::build::children\n\
                use super::validate::Target;\n";
    let found = references(&module, text);
    let want: BTreeSet<String> = [
        "controller::apply",
        "controller::servicedatabase",
        "controller::databasebackup",
        "controller::databaseserver",
    ]
    .map(String::from)
    .into();
    assert_eq!(found, want);
}
