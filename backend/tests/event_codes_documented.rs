//! Every event code fleetformd can record is explained in `docs/guides/operations.md`, so
//! operators never meet an undocumented code (and the guide names no code that is gone).
//!
//! Event codes are UPPER_SNAKE string literals in the backend's source; the other literals
//! of that shape (statuses, environment variables) are told apart by what they are.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use fleetform_api::{MachineStatus, ProcessStatus, ResourceStatus};

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read source dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// `"UPPER_SNAKE"` literals of `text` (at least one underscore).
fn upper_snake_literals(text: &str) -> BTreeSet<String> {
    text.split('"')
        .skip(1)
        .step_by(2)
        .filter(|literal| {
            literal.contains('_')
                && !literal.starts_with('_')
                && !literal.ends_with('_')
                && literal.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        })
        .map(str::to_string)
        .collect()
}

/// Literals of that shape that are not event codes.
fn not_event_codes() -> BTreeSet<String> {
    let statuses = MachineStatus::ALL
        .iter()
        .map(|s| s.as_str())
        .chain(ResourceStatus::ALL.iter().map(|s| s.as_str()))
        .chain(ProcessStatus::ALL.iter().map(|s| s.as_str()));
    statuses.map(str::to_string).collect()
}

fn is_environment_variable(literal: &str) -> bool {
    ["FLEETFORM", "XDG_", "RUST_", "AWS_"]
        .iter()
        .any(|prefix| literal.starts_with(prefix))
}

#[test]
fn every_event_code_is_in_the_operations_guide() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let excluded = not_event_codes();
    let mut codes = BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read source");
        codes.extend(
            upper_snake_literals(&text)
                .into_iter()
                .filter(|literal| !excluded.contains(literal) && !is_environment_variable(literal)),
        );
    }
    for expected in [
        "MACHINE_UNHEALTHY",
        "BARE_METAL_TAKEN",
        "BUILD_UPDATE_COMPLETED",
    ] {
        assert!(
            codes.contains(expected),
            "{expected} not found in {codes:?}"
        );
    }
    let guide_path = root.join("../docs/guides/operations.md");
    let guide = std::fs::read_to_string(&guide_path).expect("docs/guides/operations.md");
    let documented: BTreeSet<String> = guide
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|word| upper_snake_literals(&format!("\"{word}\"")).contains(*word))
        .map(str::to_string)
        .filter(|word| !excluded.contains(word))
        .collect();
    let undocumented: Vec<&String> = codes.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "event codes missing from docs/guides/operations.md: {undocumented:?}"
    );
    let stale: Vec<&String> = documented.difference(&codes).collect();
    assert!(
        stale.is_empty(),
        "docs/guides/operations.md names codes fleetformd no longer records: {stale:?}"
    );
}
