//! The house's layering: no import circle between the top-level modules of `src/` (a module's
//! files may use each other freely; `crate::x` from module `y` is an edge y → x). Comments and
//! `#[cfg(test)] mod tests` blocks do not count. The checker is tested on a small tree with a
//! circle of its own.
//!
//! And one owner per metric: no `metrics` macro outside `src/telemetry/`, where each metric is
//! declared once with the function that records it (comments do not count). That checker is
//! tested on a small tree too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Edges between top-level modules: module → (module it uses → the files that do).
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn top_level_modules(src: &Path) -> BTreeSet<String> {
    std::fs::read_dir(src)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            if e.file_type().unwrap().is_dir() {
                Some(name)
            } else {
                name.strip_suffix(".rs")
                    .filter(|n| !matches!(*n, "lib" | "main"))
                    .map(str::to_owned)
            }
        })
        .collect()
}

/// The code of a file without its comments and its test module.
fn code(text: &str) -> String {
    without_comments(text.split("#[cfg(test)]\nmod tests").next().unwrap_or(""))
}

/// A file's lines without their `//` comments.
fn without_comments(text: &str) -> String {
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `.rs` file under `src`, as its path relative to it.
fn rust_files(src: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path.strip_prefix(src).unwrap().to_str().unwrap().to_owned());
            }
        }
    }
    out.sort();
    out
}

/// The `metrics` macros a recording call is made with (`metrics::counter!(` or, after a `use`,
/// `counter!(`).
const METRIC_MACROS: [&str; 3] = ["counter!(", "gauge!(", "histogram!("];

/// Files outside `telemetry/` that record a metric themselves, with the first such line.
fn metrics_outside_telemetry(src: &Path) -> Vec<(String, String)> {
    rust_files(src)
        .into_iter()
        .filter(|rel| !rel.starts_with("telemetry/") && rel != "telemetry.rs")
        .filter_map(|rel| {
            let text = without_comments(&std::fs::read_to_string(src.join(&rel)).unwrap());
            let line = text
                .lines()
                .find(|l| METRIC_MACROS.iter().any(|m| l.contains(m)))?
                .trim()
                .to_owned();
            Some((rel, line))
        })
        .collect()
}

fn graph(src: &Path) -> Graph {
    let modules = top_level_modules(src);
    let mut g = Graph::new();
    let mut stack = vec![src.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().to_str().unwrap().to_owned();
            let Some(top) = rel.split('/').next().map(|t| t.trim_end_matches(".rs")) else {
                continue;
            };
            if !rel.ends_with(".rs") || !modules.contains(top) {
                continue;
            }
            let text = code(&std::fs::read_to_string(&path).unwrap());
            for (i, _) in text.match_indices("crate::") {
                let target: String = text[i + 7..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if target != top && modules.contains(&target) {
                    g.entry(top.to_owned())
                        .or_default()
                        .entry(target)
                        .or_default()
                        .insert(rel.clone());
                }
            }
        }
    }
    g
}

/// One circle of the graph, as the modules along it, if there is one.
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(
        g: &Graph,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in g.get(node).into_iter().flat_map(|m| m.keys()) {
            if let Some(c) = visit(g, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|n| visit(g, n, &mut Vec::new(), &mut done))
}

fn describe(g: &Graph, cycle: &[String]) -> String {
    cycle
        .windows(2)
        .map(|w| {
            let files: Vec<&String> = g[&w[0]][&w[1]].iter().collect();
            format!("{} -> {} (in {files:?})", w[0], w[1])
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn no_import_circle_between_top_level_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&src);
    assert!(g.len() >= 5, "the checker sees the modules: {g:?}");
    if let Some(cycle) = find_cycle(&g) {
        panic!(
            "import circle between top-level modules:\n{}",
            describe(&g, &cycle)
        );
    }
}

#[test]
fn the_checker_finds_a_circle() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir(src.join("store")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod config; pub mod store;").unwrap();
    std::fs::write(src.join("config.rs"), "use crate::store::StoreConfig;\n").unwrap();
    std::fs::write(
        src.join("store/mod.rs"),
        "// crate::config in a comment does not count\nmod recorder;\n",
    )
    .unwrap();
    let g = graph(src);
    assert_eq!(find_cycle(&g), None, "{g:?}");
    std::fs::write(
        src.join("store/recorder.rs"),
        "use crate::config::Config;\n",
    )
    .unwrap();
    let g = graph(src);
    let cycle = find_cycle(&g).expect("store/recorder.rs closes a circle");
    assert_eq!(cycle.first(), cycle.last());
    assert!(describe(&g, &cycle).contains("store/recorder.rs"));
}

#[test]
fn metrics_are_recorded_only_in_telemetry() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    assert!(rust_files(&src).len() >= 20, "the checker sees the files");
    let found = metrics_outside_telemetry(&src);
    assert!(
        found.is_empty(),
        "metrics recorded outside src/telemetry/ (add a typed function there):\n{found:#?}"
    );
}

#[test]
fn the_checker_finds_a_metric_outside_telemetry() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("telemetry")).unwrap();
    std::fs::create_dir(src.join("store")).unwrap();
    std::fs::write(
        src.join("telemetry/store.rs"),
        "pub fn up(on: bool) { metrics::gauge!(\"kinderwatch_store_up\").set(1.0); }\n",
    )
    .unwrap();
    std::fs::write(
        src.join("store/recorder.rs"),
        "// metrics::counter!(\"kinderwatch_x_total\") in a comment does not count\n\
         fn f() { crate::telemetry::store::up(true); }\n",
    )
    .unwrap();
    assert_eq!(metrics_outside_telemetry(src), vec![]);
    std::fs::write(
        src.join("store/retention.rs"),
        "use metrics::histogram;\nfn f() { histogram!(\"kinderwatch_x_seconds\").record(1.0); }\n",
    )
    .unwrap();
    let found = metrics_outside_telemetry(src);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "store/retention.rs");
    assert!(found[0].1.contains("histogram!("), "{found:?}");
}
