//! Shared by the integration tests: where the reference fixtures, onnxruntime and Chromium are,
//! and skipping without them — or failing, when CI says they must be there.
#![allow(dead_code)]

use std::fmt::Display;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Set (to anything but empty or `0`) where every fixture, onnxruntime and Chromium must be
/// present: a test that would skip fails instead, so CI cannot pass by skipping.
pub const REQUIRE_ENV: &str = "QUANT_REQUIRE_FIXTURES";

/// Whether [`REQUIRE_ENV`] is set.
pub fn required() -> bool {
    std::env::var_os(REQUIRE_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// The one place a test gives up for want of something outside the crate: prints
/// `skipped: {reason}` (the test then returns), or panics with the reason under
/// [`REQUIRE_ENV`].
#[track_caller]
pub fn skip_or_fail(reason: impl Display) {
    if required() {
        panic!("{reason} ({REQUIRE_ENV} is set: nothing may be skipped)");
    }
    eprintln!("skipped: {reason}");
}

/// The reference fixtures folder. Only [`Fixtures::join`] leads into it, so that every file a
/// test takes from it is checked to be there.
#[derive(Debug, Clone)]
pub struct Fixtures(PathBuf);

impl Fixtures {
    /// `relative` inside the fixtures, which must exist. A present but incomplete fixtures folder
    /// fails naming the file, with or without [`REQUIRE_ENV`], rather than with a bare "No such
    /// file or directory" from whatever reads it.
    #[track_caller]
    pub fn join(&self, relative: impl AsRef<Path>) -> PathBuf {
        let path = self.0.join(relative);
        assert!(
            path.exists(),
            "reference fixture missing: {} (the fixtures at {} are incomplete)",
            path.display(),
            self.0.display()
        );
        path
    }

    /// The folder itself.
    pub fn dir(&self) -> &Path {
        &self.0
    }
}

/// `../shared/fixtures` seen from the crate root, or `None` (see [`skip_or_fail`]) when this is
/// a user's fresh clone without it. Tests that need the fixtures return early on `None`.
#[track_caller]
pub fn fixtures() -> Option<Fixtures> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures");
    if dir.join("README.md").is_file() {
        Some(Fixtures(dir))
    } else {
        skip_or_fail(format_args!(
            "reference fixtures not found at {} (they ship only with the project's CI)",
            dir.display()
        ));
        None
    }
}

/// A Python that imports onnxruntime, onnx and numpy: `$QUANT_PYTHON`, else the crate's `.venv`;
/// `None` (see [`skip_or_fail`]) without one.
#[track_caller]
pub fn python() -> Option<PathBuf> {
    let from_env = std::env::var_os("QUANT_PYTHON");
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    for candidate in from_env.iter().map(PathBuf::from).chain([venv.clone()]) {
        let works = Command::new(&candidate)
            .args(["-c", "import onnxruntime, onnx, numpy"])
            .output()
            .is_ok_and(|o| o.status.success());
        if works {
            return Some(candidate);
        }
    }
    let from_env = from_env.map_or("unset".into(), |p| p.to_string_lossy().into_owned());
    skip_or_fail(format_args!(
        "no Python with onnxruntime, onnx and numpy (QUANT_PYTHON={from_env}, nor {}; set \
         QUANT_PYTHON or create .venv as .ci/run does)",
        venv.display()
    ));
    None
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

/// A deterministic generator of values in [-1, 1) (xorshift), so tiny models need no files.
pub struct Values(pub u64);

impl Values {
    /// The next value.
    pub fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// The next `n` values.
    pub fn take(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

/// A float32 value info of fixed dims (`None`: no shape).
pub fn info(name: &str, dims: Option<&[u64]>) -> quant::onnx::ValueInfo {
    use quant::onnx::{DType, Dim, ValueInfo};
    ValueInfo {
        name: name.into(),
        dtype: Some(DType::Float32),
        shape: dims.map(|d| d.iter().map(|&n| Dim::Fixed(n)).collect()),
    }
}
