//! The `quant.toml` manifest: from the text a user typed to a [`ResolvedPipeline`] the engine
//! builds, and the discovery of manifests in a monorepo.
//!
//! Two stages, as the data flows: `raw` checks syntax, keys, types and values and keeps every
//! TOML span ([`RawManifest`]); `resolve` follows references and `extends`, applies defaults,
//! checks the backend capability table ([`Backend::capabilities`]) and the referenced files.
//! Every problem becomes a [`ManifestDiagnostic`] pointing at the TOML span, with a help line;
//! all problems of a manifest are reported together.
//!
//! **Architecture Invariant:** this module reads only the manifest and checks only that the
//! files it names exist; it never opens a model, input list or overrides file, and never
//! prints. The resolved types are plain data (`Clone + Eq + Hash`) so the engine can key
//! queries by them.

mod backend;
mod diagnostic;
mod discover;
mod raw;
mod resolve;
mod types;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::NamedSource;

pub use backend::{Backend, Capabilities};
pub use diagnostic::{ManifestDiagnostic, ManifestError};
pub use discover::{ALLOW_OUTSIDE_ROOT_FLAG, SKIPPED_FOLDERS, check_workspace, discover};
pub(crate) use raw::suggestion;
pub use raw::{
    Given, RawCache, RawCalibration, RawEval, RawManifest, RawModel, RawOverrides, RawPipeline,
    RawQuantizerOptions, RawTarget, TARGET_KEYS,
};
pub use resolve::{DEFAULT_OUT_DIR, FileCheck};
pub use types::{
    CalibrationMethod, EncodingVersion, FloatBitwidth, LegacyQuantizer, Percentile, Precision,
    Quantization, QuantizerSettings, ResolvedCalibration, ResolvedEval, ResolvedModel,
    ResolvedOverrides, ResolvedPipeline, ResolvedTarget,
};

/// The manifest's file name.
pub const MANIFEST_FILE: &str = "quant.toml";

/// Reads and resolves the manifest at `path` (a `quant.toml`, or a folder holding one),
/// checking that every file it references exists.
pub fn load(path: &Path) -> Result<ResolvedPipeline, ManifestError> {
    let path = if path.is_dir() {
        path.join(MANIFEST_FILE)
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Read {
        path: path.clone(),
        source,
    })?;
    resolve_text(&text, &path, FileCheck::Exists)
}

/// The `[cache]` table of the manifest at `path` (a `quant.toml`, or a folder holding one):
/// `None` when there is no such file or no table. A manifest that does not parse gives `None`
/// too: the build reports its diagnostics.
pub fn cache_settings(path: &Path) -> Option<RawCache> {
    let path = if path.is_dir() {
        path.join(MANIFEST_FILE)
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&path).ok()?;
    parse_raw(&text, &path).ok()?.cache
}

/// Resolves manifest `text` that lives at `path`.
///
/// `path` names the manifest in diagnostics exactly as given (pass a relative path for stable
/// output); relative paths inside the manifest are joined to `path`'s folder made absolute.
pub fn resolve_text(
    text: &str,
    path: &Path,
    files: FileCheck,
) -> Result<ResolvedPipeline, ManifestError> {
    resolve_text_as(text, path, path, files)
}

/// [`resolve_text`] for a manifest at `manifest` that diagnostics name `shown_as` (an embedder's
/// label, a path relative to another folder): paths resolve against `manifest`'s folder, never
/// against the label's.
pub fn resolve_text_as(
    text: &str,
    manifest: &Path,
    shown_as: &Path,
    files: FileCheck,
) -> Result<ResolvedPipeline, ManifestError> {
    let path = shown_as;
    let mut problems = problems_for(text, path);
    let Some(raw) = raw::parse(&mut problems, text) else {
        return Err(invalid(path, problems));
    };
    let manifest_path = absolute(manifest);
    let root = manifest_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let pipeline = resolve::resolve(&mut problems, &raw, &manifest_path, &root, files);
    if problems.list.is_empty() {
        Ok(pipeline)
    } else {
        Err(invalid(path, problems))
    }
}

/// Checks `text` up to the raw stage: syntax, keys, types, values, alias conflicts.
pub fn parse_raw(text: &str, path: &Path) -> Result<RawManifest, ManifestError> {
    let mut problems = problems_for(text, path);
    match raw::parse(&mut problems, text) {
        Some(raw) if problems.list.is_empty() => Ok(raw),
        _ => Err(invalid(path, problems)),
    }
}

fn problems_for(text: &str, path: &Path) -> raw::Problems {
    raw::Problems::new(
        NamedSource::new(path.display().to_string(), Arc::from(text)).with_language("toml"),
    )
}

fn invalid(path: &Path, mut problems: raw::Problems) -> ManifestError {
    problems
        .list
        .sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    ManifestError::Invalid {
        path: path.to_path_buf(),
        problems: problems.list,
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
