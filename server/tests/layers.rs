//! The server's modules import one way only (see `src/lib.rs`):
//! foundations -> mesh -> shard state -> operations -> edges -> node.
//! This test reads every source file, collects the `crate::<module>` paths
//! it names outside comments, and fails on any path that points up a layer,
//! unless it is one of the known debts listed below, each with the reason
//! it still exists. A debt that disappears must be removed from the list
//! (the test fails on a stale entry too), so the list only shrinks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layer of a module (by its path under `src/`, first component, except
/// `group/native`, the native protocol's group edge).
fn layer(module: &str) -> Option<u8> {
    let l = match module {
        "alloc" | "cluster" | "config" | "error" | "limits" | "metadata" | "metrics"
        | "shutdown" | "waits" | "producers" | "producer_recovery" | "gather" | "readbuf"
        | "txn_index" | "tls" | "auth" | "acl" | "engine" => 0,
        "router" => 1,
        "shard" => 2,
        "ops" | "group" | "txn" => 3,
        "handlers" | "connection" | "kafka" | "http" | "group/native" => 4,
        "serve" | "node" | "main" | "lib" => 5,
        _ => return None,
    };
    Some(l)
}

/// Upward imports that still exist, with why. Remove an entry with its debt.
const KNOWN_DEBTS: &[(&str, &str, &str)] = &[
    (
        "config",
        "group",
        "the coordinator's settings type is defined beside the coordinator",
    ),
    (
        "config",
        "kafka",
        "the Kafka listener's settings type is defined in the Kafka edge",
    ),
    (
        "router",
        "group",
        "the mesh's Op enum names the group service's operations",
    ),
    (
        "router",
        "txn",
        "the mesh's Op enum names the transaction coordinator's operations",
    ),
    (
        "shard",
        "txn",
        "a shard holds the transaction coordinator (shard 0's is used)",
    ),
    (
        "shard",
        "group",
        "a shard holds the state of the groups it coordinates",
    ),
    (
        "shard",
        "kafka",
        "the process-wide state holds the Kafka listener's settings and \
         bound address, defined in the Kafka edge",
    ),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src dir") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/kafka/handlers.rs` -> `kafka`; `src/group/native.rs` -> `group/native`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts.len() >= 2 && parts[0] == "group" && parts[1] == "native" {
        return "group/native".into();
    }
    parts[0].clone()
}

/// The modules `code` names as `crate::<name>`, ignoring `//` comments.
fn imports(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in code.lines() {
        let line = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn modules_import_only_downward() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 20, "found only {} source files", files.len());
    let mut upward: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for f in &files {
        let from = module_of(&src, f);
        let from_layer =
            layer(&from).unwrap_or_else(|| panic!("{from}: module without a layer in this test"));
        let code = std::fs::read_to_string(f).expect("read source");
        for to in imports(&code) {
            if to == from || (from == "group/native" && to == "group") {
                continue;
            }
            let to_layer =
                layer(&to).unwrap_or_else(|| panic!("{}: names unknown module {to}", f.display()));
            if to_layer > from_layer {
                upward
                    .entry((from.clone(), to))
                    .or_default()
                    .push(f.display().to_string());
            }
        }
    }
    let known: BTreeSet<(String, String)> = KNOWN_DEBTS
        .iter()
        .map(|(a, b, _)| (a.to_string(), b.to_string()))
        .collect();
    let new: Vec<_> = upward.keys().filter(|k| !known.contains(*k)).collect();
    assert!(
        new.is_empty(),
        "imports up a layer (see src/lib.rs): {:?}",
        new.iter().map(|k| (k, &upward[*k])).collect::<Vec<_>>()
    );
    let stale: Vec<_> = known.iter().filter(|k| !upward.contains_key(*k)).collect();
    assert!(
        stale.is_empty(),
        "these debts are paid: remove them from KNOWN_DEBTS: {stale:?}"
    );
}

#[test]
fn the_import_scanner_ignores_comments_and_finds_paths() {
    let code = "use crate::ops::{call};\n// crate::node is only mentioned\nlet x = crate::shard::Shard::new(); // crate::kafka\n";
    let got: Vec<String> = imports(code).into_iter().collect();
    assert_eq!(got, vec!["ops".to_owned(), "shard".to_owned()]);
}
