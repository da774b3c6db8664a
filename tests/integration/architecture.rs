//! The layering rules of docs/ARCHITECTURE.md, checked against the source text: which module
//! may name which, where async runtimes, protobuf, `anyhow`, file IO and process exits may
//! appear. A rule broken by new code fails here with the file and line, so the map stays true.
//!
//! Known exceptions that are still to be removed are listed by file, so they cannot spread:
//! a new file breaking the same rule fails, and an exception that is gone must be struck off.

#![allow(clippy::tests_outside_test_module)]

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Every `.rs` file under `src/`, relative to `src/`, with comment lines removed (rules speak
/// of code, and doc comments may name other modules to explain a boundary).
fn sources() -> Vec<(String, Vec<(usize, String)>)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(&root)
                .expect("under src")
                .to_string_lossy()
                .replace('\\', "/");
            let text = fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
            let lines = text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim_start().starts_with("//"))
                .map(|(i, l)| (i + 1, l.to_owned()))
                .collect();
            (rel, lines)
        })
        .collect()
}

/// The top-level module a file belongs to (`datastore/mvcc/write.rs` -> `datastore`).
fn module_of(rel: &str) -> &str {
    let first = rel.split('/').next().unwrap_or(rel);
    first.strip_suffix(".rs").unwrap_or(first)
}

/// Lines of files in `modules` that contain any of `needles`, outside the allowed files.
fn offenders(modules: &[&str], needles: &[&str], allowed_files: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for (rel, lines) in sources() {
        if !modules.contains(&module_of(&rel)) || allowed_files.contains(&rel.as_str()) {
            continue;
        }
        for (n, line) in &lines {
            if let Some(needle) = needles.iter().find(|x| line.contains(*x)) {
                out.push(format!("src/{rel}:{n}: {needle:?} in `{}`", line.trim()));
            }
        }
    }
    out
}

/// `offenders` over every module of the crate.
fn offenders_anywhere(needles: &[&str], allowed_files: &[&str]) -> Vec<String> {
    let modules = modules_except(&[]);
    let modules: Vec<&str> = modules.iter().map(String::as_str).collect();
    offenders(&modules, needles, allowed_files)
}

fn assert_none(rule: &str, found: Vec<String>) {
    assert!(found.is_empty(), "{rule}; found:\n  {}", found.join("\n  "));
}

/// `crate::X` paths named by the code of `module`, except `module` itself.
fn crate_deps(module: &str) -> BTreeSet<String> {
    let mut deps = BTreeSet::new();
    for (rel, lines) in sources() {
        if module_of(&rel) != module {
            continue;
        }
        for (_, line) in &lines {
            let mut rest = line.as_str();
            while let Some(i) = rest.find("crate::") {
                rest = &rest[i + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if name.starts_with(|c: char| c.is_ascii_lowercase()) && name != module {
                    deps.insert(name);
                }
            }
        }
    }
    deps
}

#[test]
fn each_module_names_only_the_modules_the_map_allows() {
    // (module, the crate modules it may name). From the code map's "does not know" column.
    let table: &[(&str, &[&str])] = &[
        ("datastore", &[]),
        ("supervisor", &[]),
        ("pki", &[]),
        ("images", &[]),
        ("template", &[]),
        ("backup", &[]),
        ("addons", &["images", "template"]),
        ("lb", &["httpc"]),
        ("tls", &[]),
        ("mirror", &[]),
        ("reset", &["paths", "supervisor"]),
        ("metrics", &["tls"]),
        ("node", &["datastore", "raft", "metrics"]),
        ("raft", &["datastore", "metrics"]),
        ("etcd", &["datastore", "node", "raft", "pb", "metrics"]),
        // Known exception, to be removed: cluster/server.rs validates node names through
        // daemon::config (an arrow that runs back up the layers).
        ("cluster", &["datastore", "node", "pki", "daemon"]),
    ];
    // Leaves every module may name: they name no other module themselves (checked below).
    let leaves = ["atomic_file"];
    let mut bad = Vec::new();
    for leaf in leaves {
        for dep in crate_deps(leaf) {
            bad.push(format!("the leaf {leaf} names crate::{dep}"));
        }
    }
    for (module, allowed) in table {
        for dep in crate_deps(module) {
            if !allowed.contains(&dep.as_str()) && !leaves.contains(&dep.as_str()) {
                bad.push(format!("{module} names crate::{dep}"));
            }
        }
    }
    assert_none(
        "a module names another that docs/ARCHITECTURE.md keeps it from knowing",
        bad,
    );
    assert!(
        crate_deps("cluster").contains("daemon"),
        "cluster no longer names daemon: strike the exception off this table and docs/ARCHITECTURE.md"
    );
}

#[test]
fn the_datastore_has_no_async_runtime_and_no_protobuf() {
    assert_none(
        "datastore must stay synchronous and protobuf-free",
        offenders(
            &["datastore"],
            &["tokio", "tonic", "prost", "async fn", ".await"],
            &[],
        ),
    );
}

/// What the datastore knows of Raft (docs/ARCHITECTURE.md, "What the datastore knows of
/// Raft"): it is all in `datastore/mvcc/raft_ext.rs`, re-exported by name from the two
/// `mod.rs` files, and it stays opaque: no openraft type, no decoding of the rows it keeps.
#[test]
fn the_datastore_knows_raft_only_through_raft_ext() {
    const HOME: &str = "datastore/mvcc/raft_ext.rs";
    // Everything raft_ext.rs offers, the only Raft-shaped names the rest of datastore may say.
    const EXPORTS: &[&str] = &[
        "raft_ext",
        "DedupPrune",
        "RaftApplied",
        "RaftCommand",
        "export_snapshot",
        "read_raft_meta",
        "reseed_for_new_cluster",
    ];
    let mut bad = Vec::new();
    for (rel, lines) in sources() {
        if module_of(&rel) != "datastore" {
            continue;
        }
        for (n, line) in &lines {
            let lower = line.to_lowercase();
            if rel == HOME {
                if let Some(w) = ["openraft", "serde"].iter().find(|w| lower.contains(*w)) {
                    bad.push(format!("src/{rel}:{n}: {w} in `{}`", line.trim()));
                }
                continue;
            }
            if !(lower.contains("raft") || lower.contains("dedup")) {
                continue;
            }
            let reexport = matches!(rel.as_str(), "datastore/mod.rs" | "datastore/mvcc/mod.rs")
                && line
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|w| {
                        let w = w.to_lowercase();
                        w.contains("raft") || w.contains("dedup")
                    })
                    .all(|w| EXPORTS.contains(&w));
            if !reexport {
                bad.push(format!("src/{rel}:{n}: `{}`", line.trim()));
            }
        }
    }
    assert_none(
        "the datastore's Raft additions live in datastore/mvcc/raft_ext.rs alone, opaque to it",
        bad,
    );
}

/// Only the apply path writes to the datastore: its writer, `Store`, is opened by the
/// standalone node's start (which hands it to the apply thread) and by the Raft state machine;
/// inside `datastore/` only `k8sd restore`'s reseed opens one, and unit tests that set a store
/// up (`datastore/tests.rs`, the tests of `raft/recover.rs`). The needles start at a word
/// boundary, so Raft's `LogStore::open` is not the datastore's writer.
#[test]
fn only_the_apply_path_opens_the_datastore_writer() {
    let allowed = [
        "node/start.rs",
        "raft/state_machine.rs",
        "datastore/mvcc/raft_ext.rs",
        "datastore/tests.rs",
        "raft/recover.rs",
    ];
    assert_none(
        "only the apply path opens the datastore's writer",
        offenders_anywhere(&[" Store::open", "(Store::open", "::Store::open"], &allowed),
    );
}

/// One applier does what follows a commit: only `node/applier.rs` publishes to the watch hub
/// and records lease grants and revokes in the lessor, for both writers.
#[test]
fn one_applier_publishes_events_and_moves_lease_deadlines() {
    assert_none(
        "only node/applier.rs publishes events and records lease changes",
        offenders_anywhere(
            &["hub.publish(", "lessor.granted(", "lessor.revoked("],
            &["node/applier.rs"],
        ),
    );
}

/// Every file k8sd replaces goes through `atomic_file.rs`. A rename elsewhere is a move to a
/// name nothing else holds, listed by file so no replacement can slip in beside them: log
/// rotation moving a log aside, a Raft snapshot placed under a fresh unique name, and `k8sd
/// restore` moving its verified scratch copy into an empty data dir.
#[test]
fn files_are_replaced_only_through_atomic_file() {
    let moves = [
        "atomic_file.rs",
        "supervisor/logs.rs",
        "raft/state_machine.rs",
        "cli/backup.rs",
    ];
    assert_none(
        "a file is replaced outside atomic_file.rs",
        offenders_anywhere(&["fs::rename"], &moves),
    );
    assert_exceptions_still_needed(&moves, "fs::rename");
}

/// Every top-level module (and crate-root file) except `skip`, from the source tree itself, so a
/// new module is covered without editing this file.
fn modules_except(skip: &[&str]) -> Vec<String> {
    let names: BTreeSet<String> = sources()
        .iter()
        .map(|(rel, _)| module_of(rel).to_owned())
        .collect();
    names
        .into_iter()
        .filter(|m| !skip.contains(&m.as_str()))
        .collect()
}

#[test]
fn anyhow_stays_in_the_cli() {
    let modules = modules_except(&["main", "cli"]);
    let modules: Vec<&str> = modules.iter().map(String::as_str).collect();
    assert_none(
        "only main.rs and cli/ use anyhow",
        offenders(&modules, &["anyhow"], &[]),
    );
}

#[test]
fn only_main_exits_the_process() {
    let modules = modules_except(&["main"]);
    let modules: Vec<&str> = modules.iter().map(String::as_str).collect();
    let found = offenders(&modules, &["process::exit", "std::process::abort"], &[]);
    assert_none("exit codes are decided in main.rs alone", found);
}

#[test]
fn pki_does_file_io_only_in_files_rs() {
    assert_none(
        "pki is pure apart from pki/files.rs",
        offenders(&["pki"], &["std::fs", "fs::", "File::"], &["pki/files.rs"]),
    );
}

#[test]
fn grpc_statuses_are_built_in_known_places_only() {
    // The map says etcd/status.rs alone maps errors to tonic::Status for the etcd API. The
    // other files listed build statuses for their own gRPC services and are to be folded into
    // one mapping module per service; no further file may start doing it.
    let allowed = [
        "etcd/status.rs",
        "etcd/kv.rs",
        "etcd/lease.rs",
        "etcd/watch.rs",
        "etcd/mod.rs",
        "cluster/server.rs",
        "raft/service.rs",
    ];
    // `Status::` names an associated function or constant of tonic::Status (statuses are built
    // with them); the type alone never carries the `::`.
    let found = offenders_anywhere(&["Status::"], &allowed);
    assert_none("a new file builds tonic::Status values", found);
    assert_exceptions_still_needed(&allowed, "Status::");
}

/// Every file of an exception list still holds `needle`: an exception that is gone must be
/// struck off, or the list would quietly allow it to return.
fn assert_exceptions_still_needed(files: &[&str], needle: &str) {
    for file in files {
        let still = sources()
            .into_iter()
            .any(|(rel, lines)| rel == *file && lines.iter().any(|(_, l)| l.contains(needle)));
        assert!(
            still,
            "src/{file} has no {needle:?} any more: strike it off the exception list"
        );
    }
}

/// The files of `raft/` (stems, `mod.rs` left out: it only declares and re-exports) each names
/// through `super::`, `super::{a, b}` included.
fn raft_deps() -> std::collections::BTreeMap<String, BTreeSet<String>> {
    let mut deps = std::collections::BTreeMap::new();
    for (rel, lines) in sources() {
        let Some(file) = rel.strip_prefix("raft/") else {
            continue;
        };
        if file == "mod.rs" || file.contains('/') {
            continue;
        }
        let stem = file.strip_suffix(".rs").unwrap_or(file).to_owned();
        let mut names = BTreeSet::new();
        for (_, line) in &lines {
            let mut rest = line.as_str();
            while let Some(i) = rest.find("super::") {
                rest = &rest[i + "super::".len()..];
                let group = rest.strip_prefix('{').map(|g| g.split('}').next().unwrap_or(""));
                let items: Vec<&str> = match group {
                    Some(g) => g.split(',').collect(),
                    None => vec![rest],
                };
                for item in items {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if name.starts_with(|c: char| c.is_ascii_lowercase()) && name != stem {
                        names.insert(name);
                    }
                }
            }
        }
        deps.insert(stem, names);
    }
    deps
}

#[test]
fn raft_modules_form_no_cycle() {
    // `RaftNode` is one type whose methods are split by role over these files; together they
    // count as one module, which may name `node` (the type and its state) freely.
    let node_files = ["node", "propose", "read_index", "admin", "lease"];
    let unit = |m: &str| -> String {
        if node_files.contains(&m) {
            "node".to_owned()
        } else {
            m.to_owned()
        }
    };
    let mut graph: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    let files = raft_deps();
    for (file, names) in &files {
        let entry = graph.entry(unit(file)).or_default();
        for n in names {
            // `pb` is generated code inside mod.rs, and names nothing back.
            if files.contains_key(n) && unit(n) != unit(file) {
                entry.insert(unit(n));
            }
        }
    }
    // Depth-first search for a path back to where it started.
    fn cycle_from(
        graph: &std::collections::BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        let last = path.last().cloned().unwrap_or_default();
        for next in graph.get(&last).into_iter().flatten() {
            if next == &path[0] {
                let mut found = path.clone();
                found.push(next.clone());
                return Some(found);
            }
            if !path.contains(next) && next > &path[0] {
                path.push(next.clone());
                if let Some(found) = cycle_from(graph, path) {
                    return Some(found);
                }
                path.pop();
            }
        }
        None
    }
    let cycles: Vec<String> = graph
        .keys()
        .filter_map(|start| cycle_from(&graph, &mut vec![start.clone()]))
        .map(|c| c.join(" -> "))
        .collect();
    assert_none("raft's modules name each other in a circle", cycles);
    // The roles docs/design/raft.md names: the wire types know nothing but `types` (and the
    // generated `pb`), the client transport nothing of membership or the service.
    let wire: Vec<String> = files["wire"]
        .iter()
        .filter(|n| !["types", "pb"].contains(&n.as_str()))
        .map(|n| format!("wire names {n}"))
        .collect();
    assert_none("raft/wire.rs names only types", wire);
    let transport: Vec<String> = files["transport"]
        .iter()
        .filter(|n| ["membership", "membership_plan", "service", "node"].contains(&n.as_str()))
        .map(|n| format!("transport names {n}"))
        .collect();
    assert_none(
        "raft/transport.rs knows nothing of membership or the service",
        transport,
    );
}
