//! Every safety rule has one stable id, used in the README, the module docs and the names of
//! the tests that protect it. This test reads the README's "Safety rules" section and checks
//! the other two places.

use std::path::{Path, PathBuf};

/// The rule ids of the README's "Safety rules": the backticked ids in parentheses after each
/// numbered rule's title, e.g. ``(`local-expiry`)`` or ``(`a`, `b`)``.
fn readme_ids(readme: &str) -> Vec<String> {
    let section = readme
        .split("\n## Safety rules")
        .nth(1)
        .expect("README.md has a \"Safety rules\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut ids = Vec::new();
    let mut numbers = Vec::new();
    for line in section.lines() {
        let Some((number, rest)) = line.split_once(". **") else {
            continue;
        };
        let Ok(number) = number.trim().parse::<u32>() else {
            continue;
        };
        numbers.push(number);
        // The ids follow the bold title, in parentheses; the parentheses may wrap a line.
        let after_title = rest.split_once("** (").map(|(_, ids)| ids).unwrap_or("");
        let at = section.find(line).expect("the line is in the section") + line.len();
        let text = format!("{after_title}{}", &section[at..]);
        let group = text.split(')').next().unwrap_or("");
        for id in group.split('`').skip(1).step_by(2) {
            ids.push(id.to_owned());
        }
    }
    let expected: Vec<u32> = (1..=numbers.len() as u32).collect();
    assert_eq!(
        numbers, expected,
        "safety rules are numbered once, 1, 2, 3, ..."
    );
    ids
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_safety_rule_id_is_in_the_module_docs_and_in_test_names() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let ids = readme_ids(&readme);
    assert!(
        ids.len() >= 16,
        "only {} rule ids found: {ids:?}",
        ids.len()
    );
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "an id is used twice: {ids:?}");

    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    rust_files(&root.join("tests"), &mut files);
    let sources: Vec<(PathBuf, String)> = files
        .into_iter()
        .filter(|p| !p.ends_with("tests/rule_ids.rs"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("a source file");
            (p, text)
        })
        .collect();

    let mut missing = Vec::new();
    for id in &ids {
        let in_docs = sources.iter().any(|(path, text)| {
            path.starts_with(root.join("src"))
                && text
                    .lines()
                    .any(|l| l.trim_start().starts_with("//!") && l.contains(id.as_str()))
        });
        if !in_docs {
            missing.push(format!("`{id}` is in no module doc (`//!`) under src/"));
        }
        let test_name = format!("fn {}", id.replace('-', "_"));
        let in_tests = sources.iter().any(|(_, text)| text.contains(&test_name));
        if !in_tests {
            missing.push(format!(
                "`{id}` names no test (`{test_name}_...`) under src/ or tests/"
            ));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn the_readme_parser_finds_ids_and_catches_a_missing_number() {
    let readme =
        "\n## Safety rules\n\n1. **A** (`a-b`). text\n2. **B** (`c`,\n   `d`). text\n\n## Next\n";
    assert_eq!(readme_ids(readme), ["a-b", "c", "d"]);
    let gap = "\n## Safety rules\n\n1. **A** (`a`). x\n3. **B** (`b`). y\n";
    assert!(std::panic::catch_unwind(|| readme_ids(gap)).is_err());
}
