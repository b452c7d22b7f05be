//! The architecture's rules, checked on the source (ARCHITECTURE.md): files stay small, the
//! files of the application and config crates do not import each other in a cycle, a run reads
//! as a short list of stages, and the CLI sits on a handful of library crates.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use voxbridge_e2e::workspace_root;

/// Longest source file under `crates/*/src`.
const MAX_FILE_LINES: usize = 600;
/// Longest `run_experiment_on` (the run's stages, in order).
const MAX_RUN_LINES: usize = 60;
/// Most workspace crates the CLI may depend on.
const MAX_CLI_WORKSPACE_DEPS: usize = 6;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn crate_sources(name: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    rust_files(&workspace_root().join("crates").join(name).join("src"), &mut files);
    files.sort();
    files
}

#[test]
fn no_source_file_is_longer_than_the_limit() {
    let mut long = Vec::new();
    for dir in std::fs::read_dir(workspace_root().join("crates")).unwrap() {
        let name = dir.unwrap().file_name().to_string_lossy().into_owned();
        for file in crate_sources(&name) {
            let lines = std::fs::read_to_string(&file).unwrap().lines().count();
            if lines > MAX_FILE_LINES {
                long.push(format!("{} ({lines} lines)", file.display()));
            }
        }
    }
    assert!(long.is_empty(), "files over {MAX_FILE_LINES} lines: {long:#?}");
}

/// The module a top-level file of a crate's `src` defines (`foo.rs` and `foo/mod.rs` → `foo`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_string_lossy().into_owned();
    let name = first.trim_end_matches(".rs").to_string();
    (name != "lib" && name != "main").then_some(name)
}

/// The first path segments after each `crate::` in `code`, expanding `crate::{a, b::c}`.
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `voxbridge_crate::`, not ours
        }
        if let Some(group) = rest.strip_prefix('{') {
            let (mut depth, mut item, mut items) = (0, String::new(), Vec::new());
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => items.push(std::mem::take(&mut item)),
                    _ => {}
                }
                if depth == 0 && c != ',' {
                    item.push(c);
                }
            }
            items.push(item);
            out.extend(items.iter().map(|i| first_ident(i.trim())).filter(|i| !i.is_empty()));
        } else {
            out.push(first_ident(rest));
        }
    }
    out
}

fn first_ident(text: &str) -> String {
    text.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

/// Names `lib.rs` re-exports from a module (`pub use foo::{A, B}` → A, B ↦ foo).
fn reexports(lib: &str, modules: &BTreeSet<String>) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for statement in lib.split(';') {
        let Some(path) = statement.trim().strip_prefix("pub use ") else { continue };
        let path = path.trim_start_matches("crate::").trim_start_matches("self::");
        let module = first_ident(path);
        if !modules.contains(&module) {
            continue;
        }
        let tail = &path[module.len()..];
        let items = tail.rsplit("::").next().unwrap_or("").trim_matches(|c: char| c == '{' || c == '}');
        for item in items.split(',') {
            let name = item.split(" as ").last().unwrap_or("").trim();
            if !name.is_empty() && name != "*" {
                names.insert(name.to_string(), module.clone());
            }
        }
    }
    names
}

/// Which top-level modules of a crate each one imports through `crate::`.
fn module_graph(name: &str) -> BTreeMap<String, BTreeSet<String>> {
    let src = workspace_root().join("crates").join(name).join("src");
    let files = crate_sources(name);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(&src, f)).collect();
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap_or_default();
    let reexported = reexports(&lib, &modules);
    let mut graph: BTreeMap<String, BTreeSet<String>> = modules.iter().map(|m| (m.clone(), BTreeSet::new())).collect();
    for file in &files {
        let Some(from) = module_of(&src, file) else { continue };
        let code = std::fs::read_to_string(file).unwrap();
        for first in crate_paths(&code) {
            let to = if modules.contains(&first) { Some(first) } else { reexported.get(&first).cloned() };
            if let Some(to) = to.filter(|to| *to != from) {
                graph.get_mut(&from).unwrap().insert(to);
            }
        }
    }
    graph
}

/// A cycle of the graph, as the modules along it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, done, path) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|start| visit(start, graph, &mut done, &mut Vec::new()))
}

#[test]
fn the_cycle_finder_finds_cycles_through_grouped_and_reexported_imports() {
    assert_eq!(crate_paths("use crate::{a, b::{c, d}, e::F};\nlet x = crate::g::h();"), ["a", "b", "e", "g"]);
    assert!(crate_paths("use voxbridge_crate::x;").is_empty());
    let modules: BTreeSet<String> = ["run", "report"].map(String::from).into();
    let names = reexports("pub use run::{RunOptions, run_experiment};\npub use report::RunReport as Report;", &modules);
    assert_eq!(names.get("RunOptions").map(String::as_str), Some("run"));
    assert_eq!(names.get("Report").map(String::as_str), Some("report"));
    let graph = |edges: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            g.entry(a.to_string()).or_default().insert(b.to_string());
            g.entry(b.to_string()).or_default();
        }
        g
    };
    assert_eq!(find_cycle(&graph(&[("a", "b"), ("b", "c")])), None);
    assert_eq!(find_cycle(&graph(&[("a", "b"), ("b", "c"), ("c", "a")])).unwrap(), ["a", "b", "c", "a"]);
}

#[test]
fn files_of_the_experiment_and_config_crates_import_each_other_without_cycles() {
    for name in ["voxbridge-experiment", "voxbridge-config"] {
        let graph = module_graph(name);
        assert!(graph.len() > 3, "{name}: found only {:?}", graph.keys());
        assert_eq!(find_cycle(&graph), None, "{name}: modules import each other in a cycle");
    }
}

#[test]
fn a_run_is_a_short_list_of_stages() {
    let mut found = None;
    for file in crate_sources("voxbridge-experiment") {
        let code = std::fs::read_to_string(&file).unwrap();
        let Some(start) = code.find("pub fn run_experiment_on") else { continue };
        let body = &code[start..];
        let end = body.find("\n}\n").expect("run_experiment_on ends with a `}` line");
        found = Some((file, body[..end].lines().count() + 1));
    }
    let (file, lines) = found.expect("run_experiment_on is defined in voxbridge-experiment");
    assert!(lines <= MAX_RUN_LINES, "{}: run_experiment_on is {lines} lines (at most {MAX_RUN_LINES})", file.display());
}

#[test]
fn the_cli_depends_on_a_handful_of_workspace_crates() {
    let manifest = std::fs::read_to_string(workspace_root().join("crates/voxbridge-cli/Cargo.toml")).unwrap();
    let table: toml::Table = manifest.parse().unwrap();
    let deps = table["dependencies"].as_table().unwrap();
    let ours: Vec<&String> = deps.keys().filter(|k| k.starts_with("voxbridge-")).collect();
    assert!(ours.len() <= MAX_CLI_WORKSPACE_DEPS, "voxbridge-cli depends on {} workspace crates: {ours:?}", ours.len());
}
