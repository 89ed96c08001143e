//! The crate's structural rules, checked on its own source so they stay true: one owner of
//! transactions ([`crate::database::Database::write`]), handlers that do no SQL of their own,
//! and no import loops among the top-level modules. Test-only: read from `src/` at test time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under this crate's `src/`: see [`sources_of`].
fn sources() -> Vec<(String, String)> {
    sources_of(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

/// Every `.rs` file under `root`, with its path relative to `root` and its text, comments and
/// `#[cfg(test)]` modules left out (what production code does is what the rules are about).
fn sources_of(root: &Path) -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(root, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            (relative, production_code(&text))
        })
        .collect()
}

/// `text` without comment lines and without what follows a `#[cfg(test)]` line (test modules
/// sit at the end of a file in this crate).
fn production_code(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") || trimmed.starts_with("#![cfg(test)]") {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The top-level module a file under `src/` belongs to (`http/sync.rs` → `http`).
fn top_module(relative: &str) -> String {
    let first = relative.split('/').next().unwrap();
    first.trim_end_matches(".rs").to_string()
}

/// The top-level modules `code` names through `crate::` paths, `use crate::{a, b::c}` included.
fn crate_references(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 1 => break,
                    '}' => depth -= 1,
                    ',' if depth == 1 => {
                        out.insert(first_segment(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            out.insert(first_segment(&item));
        } else {
            out.insert(first_segment(after));
        }
        rest = after;
    }
    out.remove("");
    out
}

fn first_segment(path: &str) -> String {
    path.trim()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Which top-level module uses which, from the source files of one crate.
fn module_graph(files: &[(String, String)]) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<String> = files
        .iter()
        .map(|(path, _)| top_module(path))
        .filter(|m| m != "lib" && m != "main")
        .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, code) in files {
        let from = top_module(path);
        if !modules.contains(&from) {
            continue;
        }
        let uses = graph.entry(from.clone()).or_default();
        for to in crate_references(code) {
            if to != from && modules.contains(&to) {
                uses.insert(to);
            }
        }
    }
    graph
}

/// The groups of modules that reach each other (strongly connected, more than one module).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    let reach = |start: &String| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![start.clone()];
        while let Some(module) = stack.pop() {
            for next in graph.get(&module).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|module| (module, reach(module))).collect();
    let mut groups: Vec<BTreeSet<String>> = Vec::new();
    for (module, reached) in &reaches {
        let group: BTreeSet<String> = reached
            .iter()
            .filter(|other| {
                reaches
                    .get(other)
                    .is_some_and(|back| back.contains(*module))
            })
            .cloned()
            .chain(std::iter::once((*module).clone()))
            .collect();
        if group.len() > 1 && !groups.contains(&group) {
            groups.push(group);
        }
    }
    groups
}

#[test]
fn the_cycle_finder_finds_a_loop_and_a_grouped_import() {
    // Positive control for the rule below: a loop made up here is found.
    let refs =
        crate_references("use crate::{ledger::{self, X}, vault};\nfn f() { crate::purge::g() }");
    assert_eq!(
        refs,
        ["ledger", "purge", "vault"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(m, uses)| (m.to_string(), uses.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(
        cycles(&graph),
        vec![["a", "b", "c"].map(String::from).into_iter().collect()]
    );
}

#[test]
fn no_top_level_modules_import_each_other() {
    let graph = module_graph(&sources());
    assert!(
        graph
            .get("http")
            .is_some_and(|uses| uses.contains("ledger")),
        "the graph is read from the source: {graph:?}"
    );
    let found = cycles(&graph);
    assert!(
        found.is_empty(),
        "modules that import each other (move what they share to a module below them): {found:?}"
    );
}

#[test]
fn no_modules_of_the_core_import_each_other() {
    let core = Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/src");
    let graph = module_graph(&sources_of(&core));
    assert!(
        graph
            .get("relay")
            .is_some_and(|uses| uses.contains("protocol")),
        "the graph is read from the source: {graph:?}"
    );
    let found = cycles(&graph);
    let known: Vec<BTreeSet<String>> = KNOWN_CORE_LOOPS
        .iter()
        .map(|group| group.iter().map(|m| m.to_string()).collect())
        .collect();
    assert_eq!(
        found, known,
        "core modules that import each other (move what they share to a module below them); a \
         known loop that is gone comes off KNOWN_CORE_LOOPS"
    );
}

/// The core's one loop left: the device store opens the relay's signing key when it is made,
/// and the relay's keys live in the store's settings. It goes when `store.rs` becomes a folder
/// (issue 11, item 6), which is another change's work.
const KNOWN_CORE_LOOPS: &[&[&str]] = &[&["relay_auth", "store"]];

#[test]
fn only_the_database_begins_a_transaction() {
    let beginning = [
        ".transaction(",
        "transaction_with_behavior(",
        "unchecked_transaction(",
        ".savepoint(",
        "BEGIN IMMEDIATE",
        "BEGIN;",
        "COMMIT",
    ];
    let files = sources();
    assert!(
        files.iter().any(
            |(path, code)| path == "database.rs" && code.contains("transaction_with_behavior(")
        ),
        "the database itself is found beginning one"
    );
    let offenders: Vec<String> = files
        .iter()
        .filter(|(path, _)| path != "database.rs" && path != "house_rules.rs")
        .flat_map(|(path, code)| {
            beginning
                .iter()
                .filter(|pattern| code.contains(*pattern))
                .map(move |pattern| format!("{path}: {pattern}"))
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "only Database::write begins and commits a transaction; take the `&Transaction` it hands out: {offenders:?}"
    );
}

#[test]
fn http_handlers_do_no_sql_of_their_own() {
    let sql = [
        ".execute(",
        ".execute_batch(",
        ".query_row(",
        ".prepare(",
        ".prepare_cached(",
        ".query_map(",
    ];
    let files = sources();
    assert!(
        files
            .iter()
            .any(|(path, code)| path == "ledger.rs" && code.contains(".query_row(")),
        "SQL is found where it belongs"
    );
    let offenders: Vec<String> = files
        .iter()
        .filter(|(path, _)| path.starts_with("http/"))
        .flat_map(|(path, code)| {
            sql.iter()
                .filter(|pattern| code.contains(*pattern))
                .map(move |pattern| format!("{path}: {pattern}"))
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "handlers call the domain modules, which own the SQL: {offenders:?}"
    );
}
