//! The house's layering: no import circle between the top-level modules of `src/` (a module's
//! files may use each other freely; `crate::x` from module `y` is an edge y → x). Comments and
//! `#[cfg(test)] mod tests` blocks do not count. The checker is tested on a small tree with a
//! circle of its own.

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
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
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
