//! The house's layout, read from the source: no module of a crate imports, through any chain of imports,
//! a module that imports it back (issue 23). Arrows are `crate::`, `super::` and `self::` paths (also in
//! attributes: a `schema_with` is a dependency) and `use child::…` of a module's own children; comments
//! (doc links) and test modules (`#[cfg(test)] mod tests { … }` at a file's end) do not count.
//!
//! No crate holds a circle any more (the last ones, in `events`, were broken with the log's move into
//! `custodian-log`); a new one anywhere fails this test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Module path (`api::query`, `""` for the crate root) → source without its trailing test module.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let tests = regex::Regex::new(r"(?s)#\[cfg\(test\)\]\s*mod tests \{.*").unwrap();
    files
        .into_iter()
        .filter(|f| !f.components().any(|c| c.as_os_str() == "bin"))
        .map(|f| {
            let rel = f.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            if parts == ["lib"] || parts == ["main"] {
                parts.clear();
            }
            let text = std::fs::read_to_string(&f).unwrap();
            (parts.join("::"), tests.replace(&text, "").into_owned())
        })
        .collect()
}

/// The module a path names: the longest prefix that is a module, or None outside the crate.
fn resolve(names: &BTreeSet<String>, from: &str, path: &str) -> Option<String> {
    let mut segs: Vec<&str> = path.split("::").collect();
    let mut base: Vec<&str> = if from.is_empty() {
        Vec::new()
    } else {
        from.split("::").collect()
    };
    match segs[0] {
        "crate" => base.clear(),
        "super" => {
            base.pop();
            while segs.get(1) == Some(&"super") {
                segs.remove(0);
                base.pop();
            }
        }
        "self" => {}
        _ => return None,
    }
    segs.remove(0);
    (0..=segs.len())
        .map(|i| {
            let mut v = base.clone();
            v.extend(&segs[..i]);
            v.join("::")
        })
        .rfind(|c| names.contains(c))
}

fn arrows(mods: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let names: BTreeSet<String> = mods.keys().cloned().collect();
    let path = regex::Regex::new(r"\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)*)").unwrap();
    let comment = regex::Regex::new(r"(?m)^\s*//.*$").unwrap();
    let child =
        regex::Regex::new(r"(?m)^\s*(?:pub(?:\([a-z]+\))? )?use ([a-z_][a-z0-9_]*)::").unwrap();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, src) in mods {
        let src = comment.replace_all(src, "");
        let src = src.as_ref();
        let mut to = BTreeSet::new();
        for c in path.captures_iter(src) {
            if let Some(t) = resolve(&names, m, &c[1])
                && t != *m
                && !t.starts_with(&format!("{m}::"))
                && !t.is_empty()
            {
                to.insert(t);
            }
        }
        for c in child.captures_iter(src) {
            let t = if m.is_empty() {
                c[1].to_owned()
            } else {
                format!("{m}::{}", &c[1])
            };
            if names.contains(&t) {
                to.insert(t);
            }
        }
        out.insert(m.clone(), to);
    }
    out
}

/// Strongly connected components of more than one module (Tarjan).
fn circles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn strong<'a>(t: &mut T<'a>, v: &'a str) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                strong(t, w);
                let l = t.low[v].min(t.low[w]);
                t.low.insert(v, l);
            } else if t.on.contains(w) {
                let l = t.low[v].min(t.index[w]);
                t.low.insert(v, l);
            }
        }
        if t.low[v] == t.index[v] {
            let mut c = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                c.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if c.len() > 1 {
                c.sort();
                t.out.push(c);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            strong(&mut t, v);
        }
    }
    t.out
}

/// The workspace's member crates, as the root Cargo.toml lists them (a new crate is checked too).
fn members() -> Vec<String> {
    let manifest =
        std::fs::read_to_string(workspace().join("Cargo.toml")).expect("the root Cargo.toml");
    let line = manifest
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("a members line in the root Cargo.toml");
    let list: Vec<String> = line
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    assert!(list.len() >= 8, "read the members from {line:?}");
    list
}

#[test]
fn no_crate_holds_an_import_circle() {
    let mut found = Vec::new();
    for krate in members() {
        let krate = krate.as_str();
        let mods = modules(&workspace().join(krate).join("src"));
        assert!(
            mods.len() > 1 || krate == "tests",
            "{krate}: read its modules"
        );
        for c in circles(&arrows(&mods)) {
            found.push((krate.to_owned(), c));
        }
    }
    assert!(
        found.is_empty(),
        "import circles (break them: a leaf module both sides can import): {found:?}"
    );
}

#[test]
fn the_circle_finder_finds_a_circle() {
    let mut mods = BTreeMap::new();
    mods.insert(String::new(), "mod a; mod b;".to_owned());
    mods.insert("a".to_owned(), "use crate::b::X;".to_owned());
    mods.insert(
        "b".to_owned(),
        "pub struct X; fn f() { super::a::g() }".to_owned(),
    );
    mods.insert("c".to_owned(), "use crate::a;".to_owned());
    assert_eq!(
        circles(&arrows(&mods)),
        vec![vec!["a".to_owned(), "b".to_owned()]]
    );
}
