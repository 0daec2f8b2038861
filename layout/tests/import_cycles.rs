//! No crate of the workspace has an import cycle among its modules (see `layout`'s docs for how
//! imports are read; a cycle fails with the files involved and the names that tie them), and no
//! module file is over 700 lines.

use std::path::{Path, PathBuf};

use layout::{Graph, crate_roots};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace holds this crate").to_path_buf()
}

#[test]
fn no_crate_of_the_workspace_has_an_import_cycle() {
    let root = workspace();
    let mut failures = Vec::new();
    let mut checked = Vec::new();
    for package in ["relay", "signaling", "signaling-api", "geo", "cluster", "bench", "layout"] {
        let roots = crate_roots(&root.join(package));
        assert!(!roots.is_empty(), "{package}: no crate root found");
        for file in roots {
            let graph = Graph::of_crate(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
            checked.push((file.clone(), graph.files().len(), graph.edges.len()));
            for cycle in graph.cycles() {
                failures.push(format!("{}: {}", file.display(), graph.describe(&cycle)));
            }
        }
    }
    // The read must have found the crates' structure, or the check would pass on nothing.
    let size = |suffix: &str| {
        checked.iter().find(|(f, ..)| f.ends_with(suffix)).map(|&(_, files, edges)| (files, edges)).unwrap_or_default()
    };
    let (relay_files, relay_edges) = size("relay/src/lib.rs");
    let (signaling_files, signaling_edges) = size("signaling/src/lib.rs");
    assert!(relay_files >= 30 && relay_edges >= 50, "relay read as {relay_files} files, {relay_edges} imports");
    assert!(
        signaling_files >= 15 && signaling_edges >= 30,
        "signaling read as {signaling_files} files, {signaling_edges} imports"
    );
    assert!(size("signaling/src/bin/relayctl.rs").0 >= 5, "relayctl's #[path] modules were not followed");
    assert!(failures.is_empty(), "import cycles:\n{}", failures.join("\n"));
}

/// Each file has one concern and can be read in a sitting: no module file of any crate is over
/// 700 lines (test modules in files of their own are not module files of the crate).
#[test]
fn no_source_file_is_over_700_lines() {
    let root = workspace();
    let mut long = Vec::new();
    let mut files = 0;
    for package in ["relay", "signaling", "signaling-api", "geo", "cluster", "bench", "layout"] {
        for file in crate_roots(&root.join(package)) {
            let graph = Graph::of_crate(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
            for path in graph.files() {
                files += 1;
                let lines = std::fs::read_to_string(path).unwrap().lines().count();
                if lines > 700 {
                    long.push(format!("{}: {lines} lines", path.display()));
                }
            }
        }
    }
    assert!(files >= 80, "only {files} files read");
    assert!(long.is_empty(), "files over 700 lines:\n{}", long.join("\n"));
}

/// A small crate written to disk.
fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

fn cycles_of(dir: &Path) -> Vec<String> {
    let graph = Graph::of_crate(&dir.join("src/lib.rs")).unwrap();
    graph.cycles().iter().map(|c| graph.describe(c)).collect()
}

#[test]
fn a_cycle_is_found_through_uses_paths_and_reexports() {
    // b uses a's item in a path expression; a imports b's item through the parent's re-export.
    let dir = tree(&[
        ("src/lib.rs", "pub mod shell;\n"),
        ("src/shell/mod.rs", "pub mod a;\npub mod b;\npub use b::Thing;\n"),
        ("src/shell/a.rs", "use crate::shell::Thing;\npub fn f() -> Thing { Thing }\n"),
        ("src/shell/b.rs", "pub struct Thing;\npub fn g() { super::a::f(); }\n"),
    ]);
    let found = cycles_of(dir.path());
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("shell/a.rs") && found[0].contains("shell/b.rs"), "{}", found[0]);
    assert!(found[0].contains(": Thing") && found[0].contains(": f"), "{}", found[0]);
    assert!(!found[0].contains("shell/mod.rs ->"), "the re-export is followed to b: {}", found[0]);
}

#[test]
fn test_code_declarations_and_other_crates_are_not_imports() {
    let dir = tree(&[
        ("src/lib.rs", "pub mod a;\npub mod b;\n"),
        (
            "src/a.rs",
            "use std::fmt;\npub fn f() { crate::b::g(); }\n#[cfg(test)]\nmod tests {\n    use crate::b::g;\n}\n",
        ),
        ("src/b.rs", "pub fn g() {}\n#[cfg(test)]\nfn helper() { crate::a::f(); }\n#[cfg(test)]\nmod tests;\n"),
        ("src/b/tests.rs", "use crate::a::f;\n"),
    ]);
    assert_eq!(cycles_of(dir.path()), Vec::<String>::new());
    let graph = Graph::of_crate(&dir.path().join("src/lib.rs")).unwrap();
    assert_eq!(graph.edges.len(), 1, "only a -> b: {:?}", graph.edges);
}

#[test]
fn a_cycle_through_three_files_is_one_cycle() {
    let dir = tree(&[
        ("src/lib.rs", "mod a;\nmod b;\nmod c;\n"),
        ("src/a.rs", "use super::b::B;\npub struct A;\n"),
        ("src/b.rs", "use crate::c::C;\npub struct B;\n"),
        ("src/c.rs", "pub struct C;\nfn f(_: crate::a::A) {}\n"),
    ]);
    let found = cycles_of(dir.path());
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("3 files"), "{}", found[0]);
}
