//! Structural checks on the source tree, in the style of rust-analyzer's `tidy`: properties that
//! code review forgets and the compiler does not check.
//!
//! The engine is layered: `src/engine/mod.rs` declares its modules bottom to top, and a module
//! may use only modules declared before it. So the arrows between engine files point one way
//! and no two files can grow into each other (a circle makes every change to one a change to
//! both, and hides which file owns which step of the build).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// The engine's modules in declaration order, read from `mod` lines of `mod.rs`.
fn declared_modules(mod_rs: &str) -> Vec<String> {
    mod_rs
        .lines()
        .map(str::trim)
        .filter_map(|line| {
            let rest = line
                .strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("mod "))?;
            Some(rest.strip_suffix(';')?.trim().to_string())
        })
        .collect()
}

/// The sibling modules a file's code names through `super::NAME` or `crate::engine::NAME`
/// (comments ignored; `super::{a::X, b}` groups included).
fn referenced_modules(source: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in source.lines() {
        let code = match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        };
        for prefix in ["super::", "crate::engine::"] {
            let mut rest = code;
            while let Some(at) = rest.find(prefix) {
                rest = &rest[at + prefix.len()..];
                let names: Vec<&str> = match rest.strip_prefix('{') {
                    // A group: every `name::` inside it up to the closing brace.
                    Some(group) => group
                        .split('}')
                        .next()
                        .unwrap_or("")
                        .split(',')
                        .filter_map(|item| item.trim().split("::").next())
                        .collect(),
                    None => vec![
                        rest.split(|c: char| !c.is_alphanumeric() && c != '_')
                            .next()
                            .unwrap_or(""),
                    ],
                };
                for name in names {
                    if modules.contains(name) {
                        found.insert(name.to_string());
                    }
                }
            }
        }
    }
    found
}

/// The first circle in `edges` (module → modules it uses), as a path that ends where it starts.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
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
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, done, path) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        if let Some(cycle) = visit(node, edges, &mut done, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

/// Every engine file's uses of its siblings, by module name.
fn engine_edges(engine: &Path) -> (Vec<String>, BTreeMap<String, BTreeSet<String>>) {
    let order = declared_modules(&fs::read_to_string(engine.join("mod.rs")).unwrap());
    let modules: BTreeSet<String> = order.iter().cloned().collect();
    let mut edges = BTreeMap::new();
    for module in &order {
        let file = engine.join(format!("{module}.rs"));
        let source = match fs::read_to_string(&file) {
            Ok(source) => source,
            Err(_) => fs::read_to_string(engine.join(module).join("mod.rs"))
                .unwrap_or_else(|e| panic!("engine module `{module}` has no file: {e}")),
        };
        let mut uses = referenced_modules(&source, &modules);
        uses.remove(module);
        edges.insert(module.clone(), uses);
    }
    (order, edges)
}

#[test]
fn engine_modules_form_no_circle() {
    let engine = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/engine");
    let (_, edges) = engine_edges(&engine);
    assert!(edges.len() > 10, "read too few engine modules: {edges:?}");
    if let Some(cycle) = find_cycle(&edges) {
        panic!(
            "engine modules use each other in a circle: {}",
            cycle.join(" → ")
        );
    }
}

#[test]
fn engine_modules_use_only_modules_declared_before_them() {
    let engine = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/engine");
    let (order, edges) = engine_edges(&engine);
    let position: BTreeMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    let mut upward = Vec::new();
    for (module, uses) in &edges {
        for used in uses {
            if position[used.as_str()] > position[module.as_str()] {
                upward.push(format!("{module} uses {used}"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "src/engine/mod.rs declares modules bottom to top, but these point up: {}",
        upward.join(", ")
    );
}

#[test]
fn the_checks_see_uses_and_circles() {
    let modules: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let source = "use super::a::X;\n// super::c::Y is a comment\nuse super::{b::Z, Other};\n";
    let found = referenced_modules(source, &modules);
    assert_eq!(found, ["a", "b"].iter().map(|s| s.to_string()).collect());
    assert_eq!(
        referenced_modules("let x = crate::engine::c::f();", &modules),
        ["c".to_string()].into()
    );

    let edge = |from: &str, to: &[&str]| {
        (
            from.to_string(),
            to.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>(),
        )
    };
    let acyclic: BTreeMap<_, _> = [edge("a", &[]), edge("b", &["a"]), edge("c", &["a", "b"])]
        .into_iter()
        .collect();
    assert_eq!(find_cycle(&acyclic), None);
    let circular: BTreeMap<_, _> = [edge("a", &["c"]), edge("b", &["a"]), edge("c", &["b"])]
        .into_iter()
        .collect();
    let cycle = find_cycle(&circular).expect("a → c → b → a is a circle");
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4);
}
