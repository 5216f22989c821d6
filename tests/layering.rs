//! The layering check: the lease core has no import circle, and nothing in it reaches up to
//! the faces or the supervisor.
//!
//! Within `src/lease/`, each file may use only files of a lower layer:
//!
//! 0. the shared pure rules: `backoff.rs`, `follow.rs`;
//! 1. `machine.rs`: the pure lease machine;
//! 2. `lifecycle.rs`: the pure term lifecycle;
//! 3. `core.rs`: the state lent to faces, executing the lifecycle's effects;
//! 4. `face.rs`: what a face adds (sees the core, never the actor);
//! 5. `actor.rs`: IO only.
//!
//! and no file under `src/lease/` uses a face (`election`, `lock`, `semaphore`) or anything built
//! on them (`supervisor`, `dsync`, `observe`, `leader_only`, `admin`). The check reads the
//! sources: `use` lines and paths through `super::` / `crate::`, not comments.

use std::collections::BTreeMap;
use std::path::Path;

/// The layer of each file in `src/lease/` (lower may not use higher or equal-but-other).
fn layer(module: &str) -> Option<u8> {
    Some(match module {
        "backoff" | "follow" => 0,
        "machine" => 1,
        "lifecycle" => 2,
        "core" => 3,
        "face" => 4,
        "actor" => 5,
        _ => return None,
    })
}

/// Modules above the lease core.
const ABOVE: &[&str] = &[
    "election",
    "lock",
    "semaphore",
    "supervisor",
    "dsync",
    "observe",
    "leader_only",
    "admin",
];

/// The source with comments removed (line comments and doc comments; the sources use no block
/// comments).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// What `lease/mod.rs` re-exports, by name: the module each name comes from.
fn reexports(mod_rs: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    let code = code(mod_rs);
    for stmt in code.split(';') {
        let stmt = stmt.trim();
        let Some(rest) = stmt
            .strip_prefix("pub use ")
            .or_else(|| stmt.strip_prefix("pub(crate) use "))
        else {
            continue;
        };
        let Some((module, items)) = rest.split_once("::") else {
            continue;
        };
        for item in items.trim_matches(|c| c == '{' || c == '}').split(',') {
            let item = item.trim();
            if !item.is_empty() {
                names.insert(item.to_owned(), module.to_owned());
            }
        }
    }
    names
}

/// The sibling modules (in `src/lease/`) and the crate modules a file's code refers to.
fn uses(code: &str, reexports: &BTreeMap<String, String>) -> (Vec<String>, Vec<String>) {
    let mut siblings = Vec::new();
    let mut crate_modules = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("super::").or_else(|| rest.find("crate::")) {
        let (prefix, after) = rest[at..].split_at(if rest[at..].starts_with("super::") {
            "super::".len()
        } else {
            "crate::".len()
        });
        let crate_path = prefix.starts_with("crate::");
        // One name, or a `{...}` group of names.
        let names: Vec<String> = if let Some(group) = after.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            group[..end]
                .split(',')
                .map(|n| n.split("::").next().unwrap_or("").trim().to_owned())
                .filter(|n| !n.is_empty())
                .collect()
        } else {
            let end = after
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            vec![after[..end].to_owned()]
        };
        for name in names {
            if crate_path {
                if name == "lease" {
                    // crate::lease::X: a sibling.
                    let tail = after.strip_prefix("lease::").unwrap_or("");
                    let end = tail
                        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .unwrap_or(tail.len());
                    let sibling = &tail[..end];
                    if !sibling.is_empty() {
                        siblings.push(
                            reexports
                                .get(sibling)
                                .cloned()
                                .unwrap_or_else(|| sibling.to_owned()),
                        );
                    }
                } else {
                    crate_modules.push(name);
                }
            } else {
                siblings.push(reexports.get(&name).cloned().unwrap_or(name));
            }
        }
        rest = &rest[at + prefix.len()..];
    }
    (siblings, crate_modules)
}

#[test]
fn the_lease_core_has_no_import_circle_and_does_not_reach_up() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lease");
    let mod_rs = std::fs::read_to_string(dir.join("mod.rs")).expect("src/lease/mod.rs");
    let reexports = reexports(&mod_rs);
    let mut checked = 0;
    let mut errors = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("src/lease") {
        let path = entry.expect("a directory entry").path();
        let Some(module) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".rs"))
        else {
            continue; // test folders (`lifecycle/tests.rs`) test their parent
        };
        if module == "mod" || module == "tests" {
            continue;
        }
        let Some(own) = layer(module) else {
            errors.push(format!(
                "src/lease/{module}.rs has no layer: add it to tests/layering.rs"
            ));
            continue;
        };
        let text = std::fs::read_to_string(&path).expect("a source file");
        // Only the module's own code: its unit tests may use anything.
        let text = text.split("#[cfg(test)]").next().unwrap_or("");
        let (siblings, crate_modules) = uses(&code(text), &reexports);
        for sibling in siblings {
            if sibling == module {
                continue;
            }
            match layer(&sibling) {
                Some(theirs) if theirs < own => {}
                Some(_) => errors.push(format!(
                    "src/lease/{module}.rs uses {sibling}, which is not below it"
                )),
                None => {} // an item of mod.rs itself, or of an outer module
            }
        }
        for name in crate_modules {
            if ABOVE.contains(&name.as_str()) {
                errors.push(format!(
                    "src/lease/{module}.rs uses crate::{name}, which is built on the lease core"
                ));
            }
        }
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} files of src/lease checked");
    assert!(errors.is_empty(), "layering broken:\n{}", errors.join("\n"));
}

#[test]
fn the_check_catches_a_circle() {
    // The check itself can fail: a face module that uses the actor is caught.
    let reexports = reexports("pub use machine::{Machine, Want};");
    let (siblings, _) = uses(
        "use super::actor::{Core, LeaseActor};\nuse super::{Machine, Want};",
        &reexports,
    );
    assert_eq!(siblings, ["actor", "machine", "machine"]);
    assert!(layer("actor") > layer("face"));
    let (_, crate_modules) = uses("use crate::election::Election;", &reexports);
    assert_eq!(crate_modules, ["election"]);
}

/// The faces (`election`, `lock`, `semaphore`, `observe`) that plug into the entry point.
const FACES: &[&str] = &["election", "lock", "semaphore", "observe"];

#[test]
fn the_entry_point_is_face_agnostic_and_each_face_brings_its_factories() {
    // `Dsync` (src/dsync.rs) knows no face: each face's module adds its own factories to it
    // (`impl crate::Dsync { pub fn election(..) }` in src/election/mod.rs, ...), so a new face
    // is a new module, not an edit of the entry point.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("src/dsync.rs")).unwrap();
    let text = code(text.split("#[cfg(test)]").next().unwrap_or(""));
    let (_, crate_modules) = uses(&text, &BTreeMap::new());
    let faces: Vec<_> = crate_modules
        .iter()
        .filter(|m| FACES.contains(&m.as_str()))
        .collect();
    assert!(faces.is_empty(), "src/dsync.rs uses faces: {faces:?}");
    for (face, file) in [
        ("election", "src/election/mod.rs"),
        ("lock", "src/lock/mod.rs"),
        ("semaphore", "src/semaphore.rs"),
        ("observe", "src/observe.rs"),
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        assert!(
            text.contains("impl crate::Dsync {"),
            "{file}: the {face} face's factories on Dsync are not in its module"
        );
    }
}

/// Every `.rs` file of the repository (sources, tests, examples, benches), not `target/`.
fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "target" && !name.to_string_lossy().starts_with('.') {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_module_is_included_by_path() {
    // A `#[path]` attribute compiles one file into two crates (a test including an example's
    // module): each sees half of it as dead code, and a reader cannot tell which crate owns
    // it. Examples carry their own tests instead (`[[example]] test = true`).
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "tests", "examples", "benches"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 50, "only {} files found", files.len());
    let attribute = ["#[", "path"].concat(); // not spelled out: this file would match
    let offenders: Vec<_> = files
        .iter()
        .filter(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .any(|l| l.trim_start().starts_with(&attribute))
        })
        .collect();
    assert!(offenders.is_empty(), "{offenders:?}");
}

#[test]
fn the_root_api_is_small_and_each_name_says_when_to_use_it() {
    // The crate root re-exports what most programs name (at most 30 names); every one of
    // them has a row in the crate docs' "The root API" table saying when to use it.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
    let mut names = Vec::new();
    for line in code(&lib).lines() {
        let Some(rest) = line.trim().strip_prefix("pub use ") else {
            continue;
        };
        let rest = rest.trim_end_matches(';');
        let items = match rest.split_once('{') {
            Some((_, list)) => list.trim_end_matches('}').split(',').collect::<Vec<_>>(),
            None => vec![rest.rsplit("::").next().unwrap()],
        };
        names.extend(
            items
                .into_iter()
                .map(|i| i.trim().rsplit("::").next().unwrap().to_owned())
                .filter(|i| !i.is_empty()),
        );
    }
    assert!(names.len() >= 10, "pub use lines not found: {names:?}");
    assert!(names.len() <= 30, "{} root exports: {names:?}", names.len());
    let table: Vec<&str> = lib
        .lines()
        .skip_while(|l| !l.starts_with("//! # The root API"))
        .take_while(|l| !l.starts_with("//! # Feature flags"))
        .filter(|l| l.starts_with("//! | [`"))
        .collect();
    for name in &names {
        assert!(
            table.iter().any(|row| row
                .split(" | ")
                .nth(1)
                .unwrap_or("")
                .contains(&format!("[`{name}`]"))),
            "{name} has no row in the crate docs' root API table"
        );
    }
}

#[test]
fn the_package_is_kube_dsync_and_the_library_dsync() {
    // `dsync` on crates.io is another crate: users `cargo add kube-dsync` and still write
    // `use dsync::...` (this file does, so the library's name is checked by compiling it).
    assert_eq!(env!("CARGO_PKG_NAME"), "kube-dsync");
    assert_eq!(dsync::MASTER, "master");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains("[lib]\nname = \"dsync\"\n"),
        "no [lib] name"
    );
    assert!(
        manifest.contains("[[bin]]\nname = \"dsync\"\n"),
        "no dsync binary"
    );
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for line in [
        "cargo add kube-dsync",
        "cargo install kube-dsync --features cli",
    ] {
        assert!(readme.contains(line), "the README does not say `{line}`");
    }
}
