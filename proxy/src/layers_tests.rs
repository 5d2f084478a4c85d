//! The layer table in `lib.rs` is the rule: a module imports only from the rows below its own.
//! This test reads the table and every source file, and names each import that runs upward or
//! sideways, with its file and line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Module name → row in the table (0 at the top).
fn table() -> HashMap<String, usize> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let block = lib
        .split("//! ```text\n")
        .nth(1)
        .and_then(|rest| rest.split("//! ```\n").next())
        .expect("lib.rs has the layer table");
    let mut rows = HashMap::new();
    let mut row = 0;
    for line in block.lines() {
        let line = line.trim_start_matches("//!").trim_start();
        let names = line.split("  ").next().unwrap_or("").trim();
        for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            rows.insert(name.to_string(), row);
        }
        if !names.ends_with(',') {
            row += 1;
        }
    }
    rows
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a line of code names through `crate::`.
fn imports(line: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = Vec::new();
    for (i, _) in line.match_indices("crate::") {
        let rest = &line[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a, b::c, d::{e, f}}`: the names at depth one.
            let mut depth = 0;
            let mut at_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => at_start = true,
                    c if at_start && (c.is_alphanumeric() || c == '_') => {
                        found.push(ident(&group[j..]));
                        at_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.push(ident(rest));
        }
    }
    found
}

#[test]
fn imports_run_down_the_layer_table() {
    let rows = table();
    assert!(rows.len() > 20, "the table lists the modules: {rows:?}");
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut wrong = Vec::new();
    for file in files {
        let rel = file.strip_prefix(src()).unwrap();
        let module = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if ["lib", "main", "fuzz_tests", "layers_tests"].contains(&module.as_str()) {
            continue;
        }
        let Some(&own) = rows.get(&module) else {
            wrong.push(format!(
                "{}: module {module} is not in the layer table",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for dep in imports(line) {
                if dep == module {
                    continue;
                }
                match rows.get(&dep) {
                    Some(&r) if r > own => {}
                    Some(_) => wrong.push(format!(
                        "{}:{}: {module} imports {dep}, which is not below it",
                        rel.display(),
                        n + 1
                    )),
                    None => wrong.push(format!(
                        "{}:{}: {dep} is not in the layer table",
                        rel.display(),
                        n + 1
                    )),
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_import_reader_sees_groups_and_paths() {
    assert_eq!(imports("use crate::config::{self, Config};"), ["config"]);
    assert_eq!(
        imports("use crate::{acme, metrics::{self, X}, names};"),
        ["acme", "metrics", "names"]
    );
    assert_eq!(
        imports("let x = crate::pem::hex(&crate::pem::sha256(b));"),
        ["pem", "pem"]
    );
}
