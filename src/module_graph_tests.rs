//! The library's modules form no import circle: reading `crate::…` and `super::…` paths in each
//! module's source (test code left out), two modules that depend on each other through their
//! nearest common parent — two files of one directory, or two top-level modules — fail the test.
//! A circle makes a module impossible to understand (or move) without the other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`controller::deployment::plan`, the root is empty) → its source without test code.
type Sources = BTreeMap<Vec<String>, String>;

/// Reads the library's module tree from `lib.rs`, following `mod x;` declarations (and `#[path]`).
fn library() -> Sources {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Sources::new();
    read_module(&src.join("lib.rs"), &src, Vec::new(), &mut out);
    out
}

fn read_module(file: &Path, dir: &Path, path: Vec<String>, out: &mut Sources) {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    let code = without_tests(&text);
    let mut attribute_path: Option<String> = None;
    for line in code.lines().map(str::trim) {
        if let Some(p) = line.strip_prefix("#[path = \"").and_then(|l| l.strip_suffix("\"]")) {
            attribute_path = Some(p.to_owned());
            continue;
        }
        let decl = line.strip_prefix("pub ").or_else(|| line.strip_prefix("pub(crate) ")).unwrap_or(line);
        let Some(name) = decl.strip_prefix("mod ").and_then(|d| d.strip_suffix(';')) else {
            attribute_path = None;
            continue;
        };
        let (child_file, child_dir) = match attribute_path.take() {
            // `#[path]` outside an inline block is relative to the directory of the declaring file.
            Some(p) => {
                let base = file.parent().unwrap_or(dir);
                (base.join(&p), base.to_path_buf())
            }
            None => child_location(dir, name),
        };
        let mut child = path.clone();
        child.push(name.to_owned());
        read_module(&child_file, &child_dir, child, out);
    }
    out.insert(path, code);
}

/// `dir/name.rs` (its children in `dir/name/`) or `dir/name/mod.rs`.
fn child_location(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let flat = dir.join(format!("{name}.rs"));
    if flat.exists() { (flat, dir.join(name)) } else { (dir.join(name).join("mod.rs"), dir.join(name)) }
}

/// The source without comments and without `#[cfg(test)]` items (a `mod x;` line or a braced block).
fn without_tests(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let trimmed = line.trim();
        if trimmed.starts_with("//") {
            continue;
        }
        if trimmed != "#[cfg(test)]" {
            out.push_str(line.split(" // ").next().unwrap_or(line));
            out.push('\n');
            continue;
        }
        // Skip the item: attributes, then one line ending in `;` or a block until its braces close.
        let mut depth = 0i32;
        for item in lines.by_ref() {
            depth += item.matches('{').count() as i32 - item.matches('}').count() as i32;
            let t = item.trim();
            if t.starts_with("#[") {
                continue;
            }
            if depth <= 0 && (t.ends_with(';') || t.ends_with('}')) {
                break;
            }
        }
    }
    out
}

/// Every path the source names from `crate::` or `super::` (use trees expanded), as module-relative
/// segments from the crate root.
fn referenced(module: &[String], code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for statement in code.split(';') {
        let s = statement.trim();
        let tree = s.strip_prefix("pub ").or_else(|| s.strip_prefix("pub(crate) ")).unwrap_or(s);
        let tree = tree.strip_prefix("pub(super) ").unwrap_or(tree);
        if let Some(tree) = tree.strip_prefix("use ") {
            for path in expand(&tree.split_whitespace().collect::<String>()) {
                out.extend(absolute(module, &path));
            }
        }
    }
    // Paths in code (`super::materialise::count_files(dir)`, `crate::registry::clip(t)`).
    let bytes: Vec<char> = code.chars().collect();
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut i = 0;
    while i < bytes.len() {
        let starts = (i == 0 || !is_ident(bytes[i - 1]))
            && ["crate::", "super::"].iter().any(|p| bytes[i..].iter().take(p.len()).copied().eq(p.chars()));
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < bytes.len() && (is_ident(bytes[j]) || bytes[j] == ':') {
            j += 1;
        }
        let path: String = bytes[i..j].iter().collect();
        out.extend(absolute(module, path.trim_end_matches(':')));
        i = j;
    }
    out
}

/// A use tree (`crate::{a, b::{c, d}}`) as its paths.
fn expand(tree: &str) -> Vec<String> {
    let Some(open) = tree.find('{') else { return vec![tree.split(" as ").next().unwrap_or(tree).to_owned()] };
    let (prefix, rest) = (&tree[..open], &tree[open + 1..]);
    let inner = rest.strip_suffix('}').unwrap_or(rest);
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (k, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..k]);
                start = k + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts.into_iter().filter(|p| !p.is_empty()).flat_map(|p| expand(&format!("{prefix}{p}"))).collect()
}

/// `crate::a::b` or `super::…` as segments from the crate root (None for other roots).
fn absolute(module: &[String], path: &str) -> Option<Vec<String>> {
    let mut segments = path.split("::").filter(|s| !s.is_empty() && *s != "self");
    let mut base: Vec<String> = match segments.next()? {
        "crate" => Vec::new(),
        "super" => module[..module.len().saturating_sub(1)].to_vec(),
        _ => return None,
    };
    for s in segments {
        if s == "super" {
            base.pop();
        } else {
            base.push(s.to_owned());
        }
    }
    Some(base)
}

/// Per common parent, the edges between its children that some module's references make, each with
/// one example (`from` module → referenced path).
type Edges = BTreeMap<Vec<String>, BTreeMap<(String, String), String>>;

fn edges(sources: &Sources) -> Edges {
    let mut out = Edges::new();
    for (module, code) in sources {
        for path in referenced(module, code) {
            // The longest prefix that is a module: `crate::cache::Store` names `cache`.
            let target = (0..=path.len()).rev().map(|n| &path[..n]).find(|p| sources.contains_key(*p));
            let Some(target) = target else { continue };
            let common = module.iter().zip(target).take_while(|(a, b)| a == b).count();
            // One contains the other: a parent and its child are one unit.
            if common == module.len() || common == target.len() {
                continue;
            }
            let pair = (module[common].clone(), target[common].clone());
            let example = format!("{} → {}", show(module), show(&path));
            out.entry(module[..common].to_vec()).or_default().entry(pair).or_insert(example);
        }
    }
    out
}

fn show(path: &[String]) -> String {
    if path.is_empty() { "crate".into() } else { path.join("::") }
}

/// Every circle, as the members of each strongly connected group of more than one module.
fn circles(sources: &Sources) -> Vec<String> {
    let mut found = Vec::new();
    for (parent, pairs) in edges(sources) {
        let nodes: BTreeSet<&String> = pairs.keys().flat_map(|(a, b)| [a, b]).collect();
        let reaches = |from: &String| {
            let mut seen = BTreeSet::from([from.clone()]);
            let mut todo = vec![from.clone()];
            while let Some(n) = todo.pop() {
                for (_, b) in pairs.keys().filter(|(a, _)| *a == n) {
                    if seen.insert(b.clone()) {
                        todo.push(b.clone());
                    }
                }
            }
            seen
        };
        let mut done = BTreeSet::new();
        for n in &nodes {
            if done.contains(*n) {
                continue;
            }
            let group: BTreeSet<String> = reaches(n).into_iter().filter(|m| reaches(m).contains(*n)).collect();
            done.extend(group.iter().cloned());
            if group.len() > 1 {
                let why: Vec<&String> =
                    pairs.iter().filter(|((a, b), _)| group.contains(a) && group.contains(b)).map(|(_, e)| e).collect();
                found.push(format!(
                    "in {}: {:?} ({})",
                    show(&parent),
                    group,
                    why.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("; ")
                ));
            }
        }
    }
    found
}

#[test]
fn the_library_has_no_import_circle() {
    let sources = library();
    assert!(sources.len() > 50, "the module tree was not read: {} modules", sources.len());
    let circles = circles(&sources);
    assert!(circles.is_empty(), "import circles:\n{}", circles.join("\n"));
}

#[test]
fn a_circle_between_two_files_or_two_top_level_modules_is_found() {
    let module = |p: &str| p.split("::").filter(|s| !s.is_empty()).map(str::to_owned).collect::<Vec<_>>();
    let mut sources: Sources = [
        ("", "pub mod a;\npub mod b;"),
        ("a", "mod x;\nmod y;\nmod z;\nuse crate::b::Thing;"),
        ("a::x", "use super::{y::Y, Error};\n"),
        ("a::y", "pub struct Y;\nfn f() { super::x::helper(); }\n"),
        ("a::z", "use super::x;\n#[cfg(test)]\nmod tests {\n    use super::super::y;\n}\n"),
        ("b", "pub struct Thing;\n"),
    ]
    .into_iter()
    .map(|(m, code)| (module(m), without_tests(code)))
    .collect();
    let found = circles(&sources);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("in a: {\"x\", \"y\"}"), "{found:?}");
    // Between top-level modules, through a nested path.
    sources.insert(module("b"), "use crate::a::x::X;".into());
    let found = circles(&sources);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found.iter().any(|c| c.starts_with("in crate: {\"a\", \"b\"}")), "{found:?}");
    // The cut-off: z's test code refers to y and is not counted; without x ↔ y and a ↔ b nothing is.
    sources.insert(module("a::y"), "pub struct Y;".into());
    sources.insert(module("b"), String::new());
    assert!(circles(&sources).is_empty(), "{:?}", circles(&sources));
}
