//! A unit's overrides: each file parsed once, merged in the manifest's order and checked
//! against the model, then projected on each tensor ([`tensor_override`]) so that an edit of one
//! entry re-encodes one tensor.

use std::sync::Arc;

use super::db::Db;
use super::error::{BuildError, display_path};
use super::inputs::{source_file, text_of};
use super::keys::{TensorKey, Unit};
use super::model::{model_key, source_model, uncorrected_key};
use super::plan::unit_plan;
use super::source::SourceFile;
use crate::overrides::{self, Override, Overrides, ParsedOverrides};

/// One overrides file, parsed.
#[salsa::tracked(returns(ref), no_eq)]
pub fn overrides_file(db: &dyn Db, file: SourceFile) -> Result<Arc<ParsedOverrides>, BuildError> {
    let text = text_of(db, file, "overrides file")?;
    overrides::parse(&display_path(file.path(db)), text.to_string())
        .map(Arc::new)
        .map_err(|e| BuildError::Overrides(Arc::new(e)))
}

/// A unit's overrides: its files merged in order (a later file wins on the same tensor),
/// each checked against the model, with the warnings they raised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitOverrides {
    /// The merged overrides.
    pub overrides: Overrides,
    /// Warnings from the files, worded.
    pub warnings: Vec<String>,
}

/// The overrides of a unit (empty for float targets and `ignore_quantization_overrides`).
#[salsa::tracked(returns(ref))]
pub fn unit_overrides<'db>(
    db: &'db dyn Db,
    unit: Unit<'db>,
) -> Result<Arc<UnitOverrides>, BuildError> {
    let plan = unit_plan(db, unit).as_ref().map_err(Clone::clone)?;
    let mut merged = UnitOverrides::default();
    if plan.overrides.is_empty() {
        return Ok(Arc::new(merged));
    }
    // Checked against the model before bias correction: correction renames nothing an
    // override could name, and must itself read the overrides.
    let model = source_model(db, uncorrected_key(db, model_key(db, unit, plan)))
        .as_ref()
        .map_err(Clone::clone)?;
    for path in &plan.overrides {
        let parsed = overrides_file(db, source_file(db, path))
            .as_ref()
            .map_err(Clone::clone)?;
        parsed
            .validate(&model.tensors)
            .map_err(|e| BuildError::OverridesInvalid(Arc::new(e)))?;
        merged
            .warnings
            .extend(parsed.warnings.iter().map(ToString::to_string));
        for (name, ov) in &parsed.overrides.activations {
            merged.overrides.parameters.remove(name);
            merged
                .overrides
                .activations
                .insert(name.clone(), ov.clone());
        }
        for (name, ov) in &parsed.overrides.parameters {
            merged.overrides.activations.remove(name);
            merged.overrides.parameters.insert(name.clone(), ov.clone());
        }
    }
    Ok(Arc::new(merged))
}

/// The projection of the overrides on one tensor: re-runs with the overrides but backdates for
/// every tensor whose entry did not change, which keeps their encodings from re-running.
#[salsa::tracked]
pub fn tensor_override<'db>(db: &'db dyn Db, tensor: TensorKey<'db>) -> Option<Override> {
    let merged = unit_overrides(db, tensor.unit(db)).as_ref().ok()?;
    merged.overrides.get(tensor.name(db)).cloned()
}
