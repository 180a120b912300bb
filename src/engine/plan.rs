//! The manifest as the build sees it: the resolved pipeline of a [`Project`], and each unit's
//! [`UnitPlan`] and eval set, the projections that keep an edit elsewhere in the manifest from
//! reaching a unit.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::db::Db;
use super::error::BuildError;
use super::keys::{Project, Unit};
use super::source::FileError;
use crate::manifest::{
    EncodingVersion, FileCheck, ManifestError, ResolvedEval, ResolvedModel, ResolvedPipeline,
    ResolvedTarget,
};

/// The manifest, resolved (paths joined, `extends` and defaults applied). Files it names are
/// not checked here: the queries that read them report what is missing.
#[salsa::tracked(returns(ref))]
pub fn pipeline<'db>(
    db: &'db dyn Db,
    project: Project<'db>,
) -> Result<Arc<ResolvedPipeline>, BuildError> {
    let file = project.manifest(db);
    let text = match file.bytes(db) {
        Ok(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Err(error) => {
            return Err(BuildError::Manifest(Arc::new(ManifestError::Read {
                path: PathBuf::from(project.shown_as(db)),
                source: std::io::Error::new(
                    match error {
                        FileError::NotFound => std::io::ErrorKind::NotFound,
                        FileError::Unreadable { kind, .. } => kind,
                        FileError::Changed => std::io::ErrorKind::Other,
                    },
                    error.to_string(),
                ),
            })));
        }
    };
    // Paths resolve against the manifest's own folder; `shown_as` only names it.
    crate::manifest::resolve_text_as(
        &text,
        file.path(db),
        Path::new(project.shown_as(db)),
        FileCheck::Skip,
    )
    .map(Arc::new)
    .map_err(|e| BuildError::Manifest(Arc::new(e)))
}

/// What one unit builds, taken out of the pipeline so that an edit elsewhere in the manifest
/// (another target, a comment) leaves it equal and spares everything downstream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnitPlan {
    /// `[pipeline] name`.
    pub pipeline: String,
    /// The manifest's folder.
    pub root: PathBuf,
    /// Where outputs go: `<out_dir>/<target>/<model>/`.
    pub out_dir: PathBuf,
    /// The AIMET layout written.
    pub encoding_version: EncodingVersion,
    /// The target (after `extends`).
    pub target: ResolvedTarget,
    /// The model.
    pub model: ResolvedModel,
    /// The calibration input list, for quantized targets.
    pub input_list: Option<PathBuf>,
    /// The overrides files that apply, in order (later wins).
    pub overrides: Vec<PathBuf>,
}

impl UnitPlan {
    /// The model transforms the target asks for (none for float targets).
    pub fn algorithms(&self) -> crate::transform::Algorithms {
        self.target
            .quantization()
            .map(|q| q.algorithms)
            .unwrap_or_default()
    }

    /// The quantizer settings (`None` for float targets).
    pub fn settings(&self) -> Option<&crate::quantizer::QuantizerSettings> {
        self.target.quantizer()
    }
}

/// The plan of one unit; an error when the manifest is broken or no longer has the unit.
#[salsa::tracked(returns(ref))]
pub fn unit_plan<'db>(db: &'db dyn Db, unit: Unit<'db>) -> Result<Arc<UnitPlan>, BuildError> {
    let pipeline = pipeline(db, unit.project(db))
        .as_ref()
        .map_err(Clone::clone)?;
    let gone = |what: &str, name: &str| BuildError::Model {
        path: unit.project(db).shown_as(db).clone(),
        message: format!("the manifest no longer declares {what} `{name}`"),
    };
    let target = pipeline
        .targets
        .get(unit.target(db))
        .ok_or_else(|| gone("target", unit.target(db)))?;
    let model = pipeline
        .models
        .get(unit.model(db))
        .ok_or_else(|| gone("model", unit.model(db)))?;
    let (input_list, overrides) = match target.quantization() {
        Some(quantization) => (
            quantization
                .calibration
                .as_ref()
                .and_then(|name| pipeline.calibration.get(name))
                .map(|c| c.input_list.clone()),
            quantization
                .effective_overrides()
                .iter()
                .filter_map(|name| pipeline.overrides.get(name).map(|o| o.path.clone()))
                .collect(),
        ),
        None => (None, Vec::new()),
    };
    Ok(Arc::new(UnitPlan {
        pipeline: pipeline.name.clone(),
        root: pipeline.root.clone(),
        out_dir: pipeline.out_dir.join(&target.name).join(&model.name),
        encoding_version: pipeline.encoding_version,
        target: target.clone(),
        model: model.clone(),
        input_list,
        overrides,
    }))
}

/// The eval set a unit is evaluated on: the projection of the manifest that spares the
/// evaluation when another part of the manifest changes.
#[salsa::tracked]
pub fn unit_eval_set<'db>(db: &'db dyn Db, unit: Unit<'db>) -> Option<ResolvedEval> {
    let pipeline = pipeline(db, unit.project(db)).as_ref().ok()?;
    let target = pipeline.targets.get(unit.target(db))?;
    pipeline.eval.get(target.evaluate.as_ref()?).cloned()
}

/// The unit's plan by reference: the form the driver and freshness checks use.
pub(super) fn plan_of<'db>(
    db: &'db dyn Db,
    unit: Unit<'db>,
) -> Result<&'db Arc<UnitPlan>, &'db BuildError> {
    unit_plan(db, unit).as_ref()
}
