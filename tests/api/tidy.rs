//! House rules checked mechanically: every source file opens with a `//!`
//! module doc saying what it owns.

use std::path::Path;

fn visit(dir: &Path, missing: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            visit(&path, missing);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("read");
            if !text.trim_start().starts_with("//!") {
                missing.push(path.display().to_string());
            }
        }
    }
}

#[test]
fn every_source_file_starts_with_a_module_doc() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut missing = Vec::new();
    for dir in ["src", "tests", "benches", "examples"] {
        visit(&root.join(dir), &mut missing);
    }
    assert!(
        missing.is_empty(),
        "files without a //! module doc: {missing:?}"
    );
}
