//! Shared by the integration tests: where the reference fixtures are, and skipping without them.
#![allow(dead_code)]

use std::path::PathBuf;

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
