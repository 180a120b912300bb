//! Shared by the integration tests: where the reference fixtures are, and skipping without them.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

/// `../shared/fixtures` seen from the crate root, or `None` (with the reason printed) when this
/// is a user's fresh clone without it. Tests that need the fixtures return early on `None`.
pub fn fixtures() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures");
    if dir.join("README.md").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "skipped: reference fixtures not found at {} (they ship only with the project's CI)",
            dir.display()
        );
        None
    }
}

/// Path of the built `quant` binary for end-to-end tests.
pub fn quant_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_quant"))
}

/// The bundled example pipeline.
pub const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/text-orientation");

/// Copies the tree `from` to `to`, leaving out build outputs (`quant-out`) and stores
/// (`.quant`). Files are written fresh rather than `fs::copy`d: the shipped samples are
/// read-only, and a test that deletes and rewrites them should not trip over copied permissions.
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "quant-out" || name == ".quant" {
            continue;
        }
        let (source, target) = (entry.path(), to.join(&name));
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&source, &target);
        } else {
            fs::write(&target, fs::read(&source).unwrap()).unwrap();
        }
    }
}
