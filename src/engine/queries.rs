//! The build's query chain: manifest → resolved target × model → model graph, overrides and
//! calibration → per-sample statistics → merged statistics → per-tensor statistics and
//! overrides (the projections) → per-tensor encoding → the unit's encodings → artifacts.
//!
//! It owns the salsa queries and their keys ([`Project`], [`Unit`], [`CalibrationKey`],
//! [`SampleKey`], [`TensorKey`]) and the two places that consult the persistent store: a
//! sample's statistics and a tensor's encoding are looked up by a content key before they are
//! computed, and stored after. The store is a cache of pure functions, so reading it from a
//! query does not break salsa's model: a hit returns exactly what the computation would.
//!
//! It must not write output files, print, or spawn threads (the driver in
//! [`super::pipeline`] does all three); errors are values ([`BuildError`]) so a broken file is
//! one more state of the build, not a failure of the engine.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use miette::{Diagnostic, LabeledSpan, SourceCode};

use super::db::Db;
use super::files::{FileError, SourceFile, source_file};
use super::oneshot::{model_tensors, quantizer_args};
use super::stored::{
    StoredEncoding, StoredTensorEntry, decode_sample_statistics, encode_sample_statistics,
    stable_digest,
};
use crate::calib::{CalibError, InputList, Sample};
use crate::encoding::tensor::FloatBitwidth as TensorFloatBitwidth;
use crate::encoding::{Bitwidth, TensorEncoding};
use crate::export::aimet::{AimetEncodings, EncodingVersion as AimetVersion, QuantizerArgs};
use crate::graph::{EncodingRule, Graph, Role};
use crate::manifest::{
    EncodingVersion, FileCheck, ManifestError, Precision, QuantizerSettings, ResolvedModel,
    ResolvedPipeline, ResolvedTarget,
};
use crate::onnx::OnnxModel;
use crate::overrides::{
    self, FixedEncoding, ModelTensors, Override, Overrides, OverridesError, OverridesInvalid,
    ParsedOverrides,
};
use crate::quantizer::{
    self, CalibrationError, EncodeError, SampleStatistics, statistics_settings,
};
use crate::run::FloatRunner;
use crate::stats::TensorStatistics;
use crate::store::{Corruption, Digest, GetOutcome, KeyBuilder, Kind, Store};

pub use keys::{BuildContext, CalibrationKey, Project, SampleKey, TensorKey, Unit};

/// The float runtime whose behaviour statistics depend on; part of every statistics key.
pub(super) const RUNTIME: &str = "tract-onnx 0.23";

// Salsa generates constructors and getters without docs; the fields are documented.
#[allow(missing_docs)]
mod keys {
    use super::{SourceFile, Store, WorkLog};

    /// What every query of one build can reach besides the files: the persistent store (none
    /// in tests that want every query to compute) and the log of work actually done.
    #[salsa::input(debug)]
    pub struct BuildContext {
        /// The store consulted before computing statistics and encodings.
        #[returns(ref)]
        pub store: Option<Store>,
        /// Where computations report themselves (shared by clones; drained by the driver).
        #[returns(ref)]
        pub log: WorkLog,
    }

    /// One manifest being built.
    #[salsa::interned(debug)]
    pub struct Project<'db> {
        /// The manifest file.
        #[returns(copy)]
        pub manifest: SourceFile,
        /// The manifest's path as diagnostics show it.
        #[returns(ref)]
        pub shown_as: String,
        /// The store and work log of this build.
        #[returns(copy)]
        pub context: BuildContext,
    }

    /// One model of one target of a manifest: the unit that gets an output folder.
    #[salsa::interned(debug)]
    pub struct Unit<'db> {
        /// The manifest.
        #[returns(copy)]
        pub project: Project<'db>,
        /// The target's name.
        #[returns(ref)]
        pub target: String,
        /// The model's name.
        #[returns(ref)]
        pub model: String,
    }

    /// A model file with its input dims fixed.
    #[salsa::interned(debug)]
    pub struct ModelKey<'db> {
        /// The ONNX file.
        #[returns(copy)]
        pub file: SourceFile,
        /// `input_dims`, sorted by input name.
        #[returns(ref)]
        pub input_dims: Vec<(String, Vec<u64>)>,
    }

    /// Everything calibration statistics depend on: shared by every target that needs the same
    /// statistics (e.g. `htp` and `htp-a16`), so they are gathered once.
    #[salsa::interned(debug)]
    pub struct CalibrationKey<'db> {
        /// The float model.
        #[returns(copy)]
        pub model: ModelKey<'db>,
        /// The input list.
        #[returns(copy)]
        pub list: SourceFile,
        /// Whether histograms are collected.
        #[returns(copy)]
        pub histogram: bool,
        /// The unit whose weight encodings fake-quantize the model first, when the target
        /// calibrates with quantized weights (then statistics are that target's own).
        #[returns(copy)]
        pub quantized_weights: Option<super::Unit<'db>>,
        /// The store statistics are looked up in (and the log they report to).
        #[returns(copy)]
        pub context: BuildContext,
    }

    /// One sample (by list position) of a calibration.
    #[salsa::interned(debug)]
    pub struct SampleKey<'db> {
        /// The calibration.
        #[returns(copy)]
        pub calibration: CalibrationKey<'db>,
        /// 0-based position in the input list.
        #[returns(copy)]
        pub index: usize,
    }

    /// One tensor of one unit: the key of the per-tensor queries.
    #[salsa::interned(debug)]
    pub struct TensorKey<'db> {
        /// The unit.
        #[returns(copy)]
        pub unit: super::Unit<'db>,
        /// The tensor's ONNX name.
        #[returns(ref)]
        pub name: String,
    }
}

pub use keys::ModelKey;

// ---------------------------------------------------------------------------------------------
// The work log.

/// One sample that was run through the float model (a store miss).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleRun {
    /// The sample's files, as diagnostics show them.
    pub files: Vec<String>,
}

/// One tensor whose encoding was computed (a store miss).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRun {
    /// `[pipeline] name` of the manifest.
    pub pipeline: String,
    /// The target.
    pub target: String,
    /// The model.
    pub model: String,
    /// The tensor.
    pub tensor: String,
}

/// What the queries of a build actually computed, and the store problems they met.
#[derive(Debug, Clone, Default)]
pub struct WorkRecord {
    /// Samples run, in completion order.
    pub samples_run: Vec<SampleRun>,
    /// Tensors encoded, in completion order.
    pub tensors_encoded: Vec<TensorRun>,
    /// Store entries that failed verification (they were recomputed).
    pub corruptions: Vec<Corruption>,
    /// Store reads or writes that failed for another reason (the build went on without them).
    pub store_errors: Vec<String>,
    /// Units evaluated (a store miss), as `pipeline/target/model`.
    pub evaluations_run: Vec<String>,
    /// Eval samples those evaluations ran through the float model and the simulation.
    pub eval_samples_run: usize,
    /// Eval samples served from their traces (reused, or terminal tensors re-quantized).
    pub eval_samples_reused: usize,
}

/// A shared, append-only [`WorkRecord`]: the side channel through which queries report work.
///
/// It sits outside salsa's dependency tracking on purpose: what it records is *that* something
/// ran, which is exactly what memoization hides.
#[derive(Debug, Clone, Default)]
pub struct WorkLog(Arc<Mutex<WorkRecord>>);

impl WorkLog {
    pub(super) fn with<R>(&self, f: impl FnOnce(&mut WorkRecord) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Removes and returns everything recorded so far.
    pub fn take(&self) -> WorkRecord {
        self.with(std::mem::take)
    }

    /// Adds another record's entries.
    pub fn append(&self, other: WorkRecord) {
        self.with(|r| {
            r.samples_run.extend(other.samples_run);
            r.tensors_encoded.extend(other.tensors_encoded);
            r.corruptions.extend(other.corruptions);
            r.store_errors.extend(other.store_errors);
            r.evaluations_run.extend(other.evaluations_run);
            r.eval_samples_run += other.eval_samples_run;
            r.eval_samples_reused += other.eval_samples_reused;
        });
    }

    /// Whether two handles share one record.
    pub fn same_as(&self, other: &WorkLog) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

// ---------------------------------------------------------------------------------------------
// Errors.

/// Why part of a build could not be computed. A value, compared by its message, so a build
/// that fails the same way twice backdates like any other result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BuildError {
    /// The manifest is invalid or unreadable.
    #[error(transparent)]
    Manifest(Arc<ManifestError>),
    /// A file the manifest names is missing or unreadable.
    #[error("{what} `{path}`: {error}")]
    File {
        /// What the file is ("model", "input list", "overrides file").
        what: &'static str,
        /// The path as shown.
        path: String,
        /// What went wrong.
        error: FileError,
    },
    /// The model cannot be read or its graph is malformed.
    #[error("model `{path}`: {message}")]
    Model {
        /// The model as shown.
        path: String,
        /// What the reader said.
        message: String,
    },
    /// The model cannot be prepared for running.
    #[error("model `{path}` cannot be run: {message}")]
    Runner {
        /// The model as shown.
        path: String,
        /// What the runtime said.
        message: String,
    },
    /// The input list or one of its samples is bad.
    #[error(transparent)]
    List(Arc<CalibError>),
    /// An overrides file is malformed.
    #[error(transparent)]
    Overrides(Arc<OverridesError>),
    /// An overrides file names tensors the model does not have.
    #[error(transparent)]
    OverridesInvalid(Arc<OverridesInvalid>),
    /// A sample failed to run.
    #[error(transparent)]
    Calibration(Arc<CalibrationError>),
    /// A tensor could not be encoded.
    #[error(transparent)]
    Encode(EncodeError),
    /// An output file could not be written.
    #[error("cannot write `{path}`: {message}")]
    Output {
        /// The file as shown.
        path: String,
        /// What the operating system said.
        message: String,
    },
    /// The evaluation could not run (labels that do not fit, a model it cannot simulate).
    #[error(transparent)]
    Evaluation(Arc<crate::eval::EvalError>),
    /// The QDQ model could not be made.
    #[error("cannot export `{path}`: {message}")]
    Export {
        /// The output file as shown.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A file changed while it was being read; the next build sees the new contents.
    #[error("`{path}` changed while it was being read; build again")]
    Changed {
        /// The file as shown.
        path: String,
    },
}

impl BuildError {
    fn inner(&self) -> Option<&dyn Diagnostic> {
        match self {
            BuildError::Manifest(e) => Some(e.as_ref()),
            BuildError::List(e) => Some(e.as_ref()),
            BuildError::Overrides(e) => Some(e.as_ref()),
            BuildError::OverridesInvalid(e) => Some(e.as_ref()),
            BuildError::Calibration(e) => Some(e.as_ref()),
            BuildError::Evaluation(e) => Some(e.as_ref()),
            _ => None,
        }
    }

    fn file(what: &'static str, path: &Path, error: &FileError) -> BuildError {
        BuildError::File {
            what,
            path: display_path(path),
            error: error.clone(),
        }
    }
}

impl PartialEq for BuildError {
    fn eq(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
            && self.to_string() == other.to_string()
    }
}

impl Eq for BuildError {}

impl Diagnostic for BuildError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        match self.inner() {
            Some(inner) => inner.code(),
            None => Some(Box::new(match self {
                BuildError::File { .. } => "quant::build::file",
                BuildError::Model { .. } => "quant::build::model",
                BuildError::Runner { .. } => "quant::build::run",
                BuildError::Encode(_) => "quant::build::encode",
                BuildError::Output { .. } => "quant::build::output",
                BuildError::Export { .. } => "quant::build::export",
                _ => "quant::build::changed",
            })),
        }
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        match self.inner() {
            Some(inner) => inner.help(),
            None => match self {
                BuildError::File { .. } => Some(Box::new(
                    "paths in quant.toml are relative to the manifest's folder",
                )),
                BuildError::Model { .. } => Some(Box::new(
                    "check that the file is an ONNX model and that `input_dims` names its inputs",
                )),
                _ => None,
            },
        }
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.inner().and_then(|inner| inner.source_code())
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.inner().and_then(|inner| inner.labels())
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        self.inner().and_then(|inner| inner.related())
    }
}

/// `path` as diagnostics show it: relative to the working directory when inside it.
pub fn display_path(path: &Path) -> String {
    let relative = std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf));
    relative
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}

fn text_of<'a>(
    db: &'a dyn Db,
    file: SourceFile,
    what: &'static str,
) -> Result<&'a str, BuildError> {
    let bytes = file
        .bytes(db)
        .map_err(|e| BuildError::file(what, file.path(db), &e))?;
    std::str::from_utf8(bytes).map_err(|_| BuildError::File {
        what,
        path: display_path(file.path(db)),
        error: FileError::Unreadable {
            kind: std::io::ErrorKind::InvalidData,
            message: "not UTF-8 text".to_string(),
        },
    })
}

// ---------------------------------------------------------------------------------------------
// Manifest and units.

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
    crate::manifest::resolve_text(&text, Path::new(project.shown_as(db)), FileCheck::Skip)
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
    /// The quantizer settings (`None` for float targets).
    pub fn settings(&self) -> Option<&QuantizerSettings> {
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
    let (input_list, overrides) = match target.quantizer() {
        Some(settings) => (
            pipeline
                .calibration
                .get(&settings.calibration)
                .map(|c| c.input_list.clone()),
            settings
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

// ---------------------------------------------------------------------------------------------
// Model.

/// A model read, its dims fixed, its graph built.
#[derive(Debug)]
pub struct LoadedModel {
    /// The model with `input_dims` applied (what calibration runs).
    pub onnx: OnnxModel,
    /// Its graph.
    pub graph: Graph,
    /// The tensors overrides may name.
    pub tensors: ModelTensors,
}

/// The key of a unit's model: its file with the unit's input dims.
pub fn model_key<'db>(db: &'db dyn Db, plan: &UnitPlan) -> ModelKey<'db> {
    let dims: Vec<(String, Vec<u64>)> = plan
        .model
        .input_dims
        .iter()
        .map(|(name, dims)| (name.clone(), dims.clone()))
        .collect();
    ModelKey::new(db, source_file(db, &plan.model.path), dims)
}

/// [`model_key`] of a unit, memoized: making one normalizes the model's path (system calls),
/// which the per-tensor queries must not repeat for every tensor.
#[salsa::tracked]
fn unit_model_key<'db>(db: &'db dyn Db, unit: Unit<'db>) -> Option<ModelKey<'db>> {
    let plan = unit_plan(db, unit).as_ref().ok()?;
    Some(model_key(db, plan))
}

/// The model's graph. Not compared for equality (a graph holds float attributes): a changed
/// model file re-runs everything that reads it, which it has to anyway.
#[salsa::tracked(returns(ref), no_eq)]
pub fn model_graph<'db>(
    db: &'db dyn Db,
    model: ModelKey<'db>,
) -> Result<Arc<LoadedModel>, BuildError> {
    let file = model.file(db);
    let path = file.path(db);
    let bytes = file
        .bytes(db)
        .map_err(|e| BuildError::file("model", path, &e))?;
    let failed = |message: String| BuildError::Model {
        path: display_path(path),
        message,
    };
    let mut onnx = OnnxModel::from_bytes(bytes, path).map_err(|e| failed(e.to_string()))?;
    for (name, dims) in model.input_dims(db) {
        onnx.fix_input_dims(name, dims)
            .map_err(|e| failed(e.to_string()))?;
    }
    let graph = Graph::from_model(&onnx).map_err(|e| failed(e.to_string()))?;
    for (name, _) in model.input_dims(db) {
        if !graph.inputs().iter().any(|i| i.as_str() == name) {
            let known: Vec<&str> = graph.inputs().iter().map(|i| i.as_str()).collect();
            return Err(failed(format!(
                "`input_dims` names `{name}`, which is not an input (inputs: {})",
                known.join(", ")
            )));
        }
    }
    let tensors = model_tensors(&graph);
    Ok(Arc::new(LoadedModel {
        onnx,
        graph,
        tensors,
    }))
}

// ---------------------------------------------------------------------------------------------
// Overrides.

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
    let model = model_graph(db, model_key(db, plan))
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

// ---------------------------------------------------------------------------------------------
// Calibration.

/// The calibration of a unit: `None` for float targets.
pub fn unit_calibration<'db>(
    db: &'db dyn Db,
    unit: Unit<'db>,
) -> Result<Option<CalibrationKey<'db>>, BuildError> {
    let plan = unit_plan(db, unit).as_ref().map_err(Clone::clone)?;
    let (Some(settings), Some(list)) = (plan.settings(), &plan.input_list) else {
        return Ok(None);
    };
    Ok(Some(CalibrationKey::new(
        db,
        model_key(db, plan),
        source_file(db, list),
        statistics_settings(settings).histogram,
        settings.calibrate_with_quantized_weights.then_some(unit),
        unit.project(db).context(db),
    )))
}

/// The input list, parsed.
#[salsa::tracked(returns(ref), no_eq)]
pub fn input_list(db: &dyn Db, list: SourceFile) -> Result<Arc<InputList>, BuildError> {
    let text = text_of(db, list, "input list")?;
    InputList::parse(Path::new(&display_path(list.path(db))), text)
        .map(Arc::new)
        .map_err(|e| BuildError::List(Arc::new(e)))
}

/// The model bytes calibration runs and their digest (the statistics key's model field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalibrationModel {
    /// The ONNX bytes when weights are fake-quantized; `None` runs the model as loaded (with
    /// `input_dims` applied), whose bytes are only serialized if a sample must run.
    pub rewritten: Option<Arc<[u8]>>,
    /// Identifies the bytes calibration runs: blake3 of `rewritten`, or of the model file's
    /// digest and the `input_dims` (the loaded model is a function of both).
    pub digest: Digest,
}

/// The model a calibration runs.
#[salsa::tracked(returns(ref))]
pub fn calibration_model<'db>(
    db: &'db dyn Db,
    calibration: CalibrationKey<'db>,
) -> Result<Arc<CalibrationModel>, BuildError> {
    let key = calibration.model(db);
    if key.file(db).digest(db).is_none() {
        // The model's own diagnostic (missing, unreadable).
        model_graph(db, key).as_ref().map_err(Clone::clone)?;
    }
    let rewritten = match calibration.quantized_weights(db) {
        Some(unit) => {
            let model = model_graph(db, key).as_ref().map_err(Clone::clone)?;
            let plan = unit_plan(db, unit).as_ref().map_err(Clone::clone)?;
            let overrides = unit_overrides(db, unit).as_ref().map_err(Clone::clone)?;
            match plan.settings() {
                Some(settings) => quantizer::calibration_model(
                    &model.onnx,
                    &model.graph,
                    &overrides.overrides,
                    settings,
                )
                .map_err(|e| BuildError::Calibration(Arc::new(e)))?,
                None => None,
            }
        }
        None => None,
    };
    Ok(Arc::new(match rewritten {
        Some(rewritten) => {
            let bytes: Arc<[u8]> = rewritten.to_bytes().into();
            CalibrationModel {
                digest: Digest::of(&bytes),
                rewritten: Some(bytes),
            }
        }
        // Re-serializing a large model only to digest it cost more than the rest of an edit's
        // calibration lookups; the file digest and the dims name the same bytes.
        None => CalibrationModel {
            rewritten: None,
            digest: KeyBuilder::new(Kind::STATISTICS)
                .str("loaded model", "onnx file and input_dims")
                .digest(
                    "file",
                    &key.file(db).digest(db).unwrap_or_else(|| Digest::of(b"")),
                )
                .digest("input_dims", &stable_digest(key.input_dims(db)))
                .finish(),
        },
    }))
}

/// The float runner of a calibration: built only when some sample misses the store (loading
/// and optimizing a model costs far more than reading statistics back).
#[salsa::tracked(returns(ref), no_eq)]
pub fn float_runner<'db>(
    db: &'db dyn Db,
    calibration: CalibrationKey<'db>,
) -> Result<Arc<FloatRunner>, BuildError> {
    let model = calibration_model(db, calibration)
        .as_ref()
        .map_err(Clone::clone)?;
    let dims: Vec<(String, Vec<usize>)> = calibration
        .model(db)
        .input_dims(db)
        .iter()
        .map(|(name, dims)| (name.clone(), dims.iter().map(|&d| d as usize).collect()))
        .collect();
    let bytes = match &model.rewritten {
        Some(bytes) => bytes.to_vec(),
        None => model_graph(db, calibration.model(db))
            .as_ref()
            .map_err(Clone::clone)?
            .onnx
            .to_bytes(),
    };
    FloatRunner::new(&bytes, &dims)
        .map(Arc::new)
        .map_err(|e| BuildError::Runner {
            path: display_path(calibration.model(db).file(db).path(db)),
            message: e.to_string(),
        })
}

/// The number of samples of a calibration.
pub fn sample_count<'db>(
    db: &'db dyn Db,
    calibration: CalibrationKey<'db>,
) -> Result<usize, BuildError> {
    let list = input_list(db, calibration.list(db))
        .as_ref()
        .map_err(Clone::clone)?;
    Ok(list.samples.len())
}

/// One line of the input list as far as statistics care: its files (input name and path), and
/// the parsed line itself for reading the sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleLine {
    /// The files in the order written.
    pub files: Vec<(Option<String>, PathBuf)>,
    /// The line as parsed.
    pub sample: Sample,
    /// The list's path as given to the parser.
    pub list_path: PathBuf,
}

/// The projection of the input list on one sample: adding a line re-runs this for every
/// sample, but only the new one gets a new value, so only it is calibrated.
#[salsa::tracked(returns(ref))]
pub fn sample_line<'db>(db: &'db dyn Db, sample: SampleKey<'db>) -> Option<SampleLine> {
    let list = input_list(db, sample.calibration(db).list(db))
        .as_ref()
        .ok()?;
    let line = list.samples.get(sample.index(db))?;
    Some(SampleLine {
        files: line
            .files
            .iter()
            .map(|f| (f.input.clone(), f.path.clone()))
            .collect(),
        sample: line.clone(),
        list_path: list.path.clone(),
    })
}

/// [`sample_line`], or the reason there is none: the list's own error when it failed to parse,
/// or that it changed (shrank) under the build.
fn listed_sample<'db>(
    db: &'db dyn Db,
    sample: SampleKey<'db>,
) -> Result<&'db SampleLine, BuildError> {
    match sample_line(db, sample) {
        Some(line) => Ok(line),
        None => {
            let calibration = sample.calibration(db);
            input_list(db, calibration.list(db))
                .as_ref()
                .map_err(Clone::clone)?;
            Err(BuildError::Changed {
                path: display_path(calibration.list(db).path(db)),
            })
        }
    }
}

/// The statistics of one sample: every captured activation (by name) and its statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleStats {
    /// Activation names in the runner's order.
    pub names: Arc<Vec<String>>,
    /// One entry per name.
    pub tensors: Vec<TensorStatistics>,
}

/// A sample's statistics: from the store when an entry has the same model, sample contents and
/// settings; otherwise the sample is run (and the result stored).
#[salsa::tracked(returns(ref))]
pub fn sample_statistics<'db>(
    db: &'db dyn Db,
    sample: SampleKey<'db>,
) -> Result<Arc<SampleStats>, BuildError> {
    let calibration = sample.calibration(db);
    let context = calibration.context(db);
    let line = listed_sample(db, sample)?;
    let key = sample_statistics_key(db, sample, line)?;
    let store = context.store(db);
    let log = context.log(db);
    if let Some(store) = store
        && let Some((names, tensors)) = lookup_bytes(store, log, Kind::STATISTICS, &key)
            .and_then(|bytes| decode_sample_statistics(&bytes))
    {
        return Ok(Arc::new(SampleStats {
            names: Arc::new(names),
            tensors,
        }));
    }

    db.unwind_if_revision_cancelled();
    let runner = float_runner(db, calibration)
        .as_ref()
        .map_err(Clone::clone)?;
    // Read through a one-line list built from the projection, not the whole parsed list: a
    // dependency on the list would re-run every sample whenever a line is added.
    let one = InputList {
        path: line.list_path.clone(),
        outputs: Default::default(),
        samples: vec![line.sample.clone()],
        source: Arc::from(""),
    };
    let entry = &one.samples[0];
    let specs = runner.input_specs();
    let read = one.load(entry, specs).ok().zip(one.bind(entry, specs).ok());
    let (loaded, bound) = match read {
        Some(read) => read,
        None => {
            // Failed: the whole list's diagnostic points at the right line and span.
            let list = input_list(db, calibration.list(db))
                .as_ref()
                .map_err(Clone::clone)?;
            let error = match list.samples.get(sample.index(db)) {
                Some(entry) => list.load(entry, specs).err(),
                None => None,
            };
            return Err(match error {
                Some(e) => BuildError::List(Arc::new(e)),
                None => BuildError::Changed {
                    path: display_path(&line.list_path),
                },
            });
        }
    };
    let mut expected = blake3::Hasher::new();
    for file in bound {
        let Ok(bytes) = source_file(db, &file.path).bytes(db) else {
            return Err(BuildError::Changed {
                path: display_path(&file.path),
            });
        };
        expected.update(&(bytes.len() as u64).to_le_bytes());
        expected.update(bytes);
    }
    if expected.finalize() != loaded.digest {
        return Err(BuildError::Changed {
            path: display_path(&line.files[0].1),
        });
    }
    let statistics = quantizer::sample_statistics(
        runner,
        &loaded,
        crate::stats::StatisticsSettings {
            histogram: calibration.histogram(db),
        },
    )
    .map_err(|e| BuildError::Calibration(Arc::new(e)))?;
    let names: Vec<String> = runner.activation_names().to_vec();
    if let Some(store) = store {
        let bytes = encode_sample_statistics(&names, &statistics.tensors);
        if let Err(e) = store.put(Kind::STATISTICS, &key, &bytes) {
            log.with(|r| r.store_errors.push(format!("{e:#}")));
        }
    }
    log.with(|r| {
        r.samples_run.push(SampleRun {
            files: line.files.iter().map(|(_, p)| display_path(p)).collect(),
        })
    });
    Ok(Arc::new(SampleStats {
        names: Arc::new(names),
        tensors: statistics.tensors,
    }))
}

/// The store key of one sample's statistics: the calibration model, the runtime, the
/// statistics settings and each input file's name and digest. Fails as the sample would: a
/// missing file is the list's diagnostic.
fn sample_statistics_key(
    db: &dyn Db,
    sample: SampleKey<'_>,
    line: &SampleLine,
) -> Result<Digest, BuildError> {
    let calibration = sample.calibration(db);
    let mut digests = Vec::with_capacity(line.files.len());
    for (input, path) in &line.files {
        let file = source_file(db, path);
        match file.digest(db) {
            Some(digest) => digests.push((input, digest)),
            None => return Err(missing_sample(db, sample, path, file)),
        }
    }
    let model = calibration_model(db, calibration)
        .as_ref()
        .map_err(Clone::clone)?;
    let mut key = KeyBuilder::new(Kind::STATISTICS)
        .digest("model", &model.digest)
        .str("runtime", RUNTIME)
        .bool("histogram", calibration.histogram(db));
    for (input, digest) in &digests {
        key = key
            .str("input", input.as_deref().unwrap_or(""))
            .digest("file", digest);
    }
    Ok(key.finish())
}

/// The store key of a calibration's merged statistics: its samples' keys in list order (so
/// it changes exactly when some sample's statistics would, or when samples are added, removed
/// or reordered).
#[salsa::tracked(returns(ref))]
pub fn merged_statistics_key<'db>(
    db: &'db dyn Db,
    calibration: CalibrationKey<'db>,
) -> Result<Digest, BuildError> {
    let count = sample_count(db, calibration)?;
    let mut key = KeyBuilder::new(Kind::MERGED_STATISTICS).u64("samples", count as u64);
    for index in 0..count {
        let sample = SampleKey::new(db, calibration, index);
        let line = listed_sample(db, sample)?;
        key = key.digest("sample", &sample_statistics_key(db, sample, line)?);
    }
    Ok(key.finish())
}

/// Whether a calibration's merged statistics are in the store, so that the driver need not
/// read (or run) its samples at all.
pub fn merged_statistics_stored(db: &dyn Db, calibration: CalibrationKey<'_>) -> bool {
    let Some(store) = calibration.context(db).store(db) else {
        return false;
    };
    match merged_statistics_key(db, calibration) {
        Ok(key) => store.contains(Kind::MERGED_STATISTICS, key),
        Err(_) => false,
    }
}

/// The input list's own diagnostic for a sample file that cannot be read.
fn missing_sample(db: &dyn Db, sample: SampleKey<'_>, path: &Path, file: SourceFile) -> BuildError {
    let reason = match file.contents(db) {
        Err(e) => e.to_string(),
        Ok(_) => "unreadable".to_string(),
    };
    let calibration = sample.calibration(db);
    match input_list(db, calibration.list(db)) {
        Ok(list) => {
            let entry = &list.samples[sample.index(db)];
            let span = entry
                .files
                .iter()
                .find(|f| f.path == path)
                .map(|f| f.span)
                .unwrap_or(entry.span);
            BuildError::List(Arc::new(CalibError::ReadSample {
                line: entry.line,
                path: PathBuf::from(display_path(path)),
                list_dir: list.dir(),
                reason,
                src: list.named_source(),
                span,
            }))
        }
        Err(e) => e.clone(),
    }
}

/// Looks an entry up, recording corruption and store errors in the log; `None` unless a hit.
pub(super) fn lookup_bytes(
    store: &Store,
    log: &WorkLog,
    kind: Kind,
    key: &Digest,
) -> Option<Vec<u8>> {
    match store.get(kind, key) {
        Ok(GetOutcome::Hit(bytes)) => Some(bytes),
        Ok(GetOutcome::Miss) => None,
        Ok(GetOutcome::Corrupt(corruption)) => {
            log.with(|r| r.corruptions.push(corruption));
            None
        }
        Err(e) => {
            log.with(|r| r.store_errors.push(format!("{e:#}")));
            None
        }
    }
}

pub(super) fn lookup<T: serde::de::DeserializeOwned>(
    store: &Store,
    log: &WorkLog,
    kind: Kind,
    key: &Digest,
) -> Option<T> {
    match store.get_json::<T>(kind, key) {
        Ok(GetOutcome::Hit(value)) => Some(value),
        Ok(GetOutcome::Miss) => None,
        Ok(GetOutcome::Corrupt(corruption)) => {
            log.with(|r| r.corruptions.push(corruption));
            None
        }
        Err(e) => {
            log.with(|r| r.store_errors.push(format!("{e:#}")));
            None
        }
    }
}

/// Every sample's statistics merged in list order, by activation name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedStatistics {
    /// Activation name → merged statistics.
    pub by_name: BTreeMap<String, TensorStatistics>,
    /// How many samples were merged.
    pub samples: usize,
}

/// The merged statistics of a calibration. The driver computes the samples in parallel
/// before asking for this, so here they are memoized reads.
#[salsa::tracked(returns(ref))]
pub fn merged_statistics<'db>(
    db: &'db dyn Db,
    calibration: CalibrationKey<'db>,
) -> Result<Arc<MergedStatistics>, BuildError> {
    let count = sample_count(db, calibration)?;
    let key = *merged_statistics_key(db, calibration)
        .as_ref()
        .map_err(Clone::clone)?;
    let context = calibration.context(db);
    if let Some(store) = context.store(db)
        && let Some((names, tensors)) =
            lookup_bytes(store, context.log(db), Kind::MERGED_STATISTICS, &key)
                .and_then(|bytes| decode_sample_statistics(&bytes))
    {
        return Ok(Arc::new(MergedStatistics {
            by_name: names.into_iter().zip(tensors).collect(),
            samples: count,
        }));
    }
    let mut total = SampleStatistics {
        tensors: Vec::new(),
    };
    let mut names: Option<Arc<Vec<String>>> = None;
    for index in 0..count {
        db.unwind_if_revision_cancelled();
        let sample = SampleKey::new(db, calibration, index);
        let stats = sample_statistics(db, sample)
            .as_ref()
            .map_err(Clone::clone)?;
        if names.as_ref().is_some_and(|n| **n != *stats.names) {
            return Err(BuildError::Changed {
                path: display_path(calibration.list(db).path(db)),
            });
        }
        names.get_or_insert_with(|| stats.names.clone());
        quantizer::merge_statistics(
            &mut total,
            &SampleStatistics {
                tensors: stats.tensors.clone(),
            },
        );
    }
    let names = names.map(|n| n.to_vec()).unwrap_or_default();
    if let Some(store) = context.store(db)
        && let Err(e) = store.put(
            Kind::MERGED_STATISTICS,
            &key,
            &encode_sample_statistics(&names, &total.tensors),
        )
    {
        context
            .log(db)
            .with(|r| r.store_errors.push(format!("{e:#}")));
    }
    let by_name = names.into_iter().zip(total.tensors).collect();
    Ok(Arc::new(MergedStatistics {
        by_name,
        samples: count,
    }))
}

/// The projection of the merged statistics on one activation: backdates for every tensor whose
/// statistics did not move (a new sample inside a tensor's range leaves its encoding alone).
#[salsa::tracked]
pub fn tensor_statistics<'db>(db: &'db dyn Db, tensor: TensorKey<'db>) -> Option<TensorStatistics> {
    let unit = tensor.unit(db);
    let calibration = unit_calibration(db, unit).ok()??;
    let merged = merged_statistics(db, calibration).as_ref().ok()?;
    merged.by_name.get(tensor.name(db)).cloned()
}

// ---------------------------------------------------------------------------------------------
// Tensors.

/// How a tensor gets its encoding (the order of [`quantizer::encode_model`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TensorJob {
    /// An activation with its own encoding, from statistics.
    Activation,
    /// A parameter other than a bias, from its values.
    Parameter,
    /// A bias, from its values and its op's input and weight encodings.
    Bias,
    /// A data-movement output sharing its source's encoding.
    Shared,
}

/// Which section of the encodings file a tensor is listed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Section {
    /// `activation_encodings` (constant operands included, as AIMET lists them).
    Activations,
    /// `param_encodings`.
    Parameters,
}

/// The tensors of a model that get encodings, in the order the encodings are computed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TensorPlan {
    /// Names in computing order: own activations, parameters, biases, shared activations.
    pub order: Vec<String>,
    /// Each name's job.
    pub jobs: BTreeMap<String, TensorJob>,
}

/// The tensor plan of a unit's model.
#[salsa::tracked(returns(ref))]
pub fn unit_tensors<'db>(db: &'db dyn Db, unit: Unit<'db>) -> Result<Arc<TensorPlan>, BuildError> {
    let plan = unit_plan(db, unit).as_ref().map_err(Clone::clone)?;
    let model = model_graph(db, model_key(db, plan))
        .as_ref()
        .map_err(Clone::clone)?;
    let graph = &model.graph;
    let mut out = TensorPlan::default();
    let mut add = |name: &str, job| {
        out.order.push(name.to_string());
        out.jobs.insert(name.to_string(), job);
    };
    for tensor in graph.float_activations() {
        if tensor.rule == EncodingRule::Own {
            add(tensor.name.as_str(), TensorJob::Activation);
        }
    }
    let mut biases = Vec::new();
    for tensor in graph.float_parameters() {
        if tensor.rule != EncodingRule::Own {
            continue;
        }
        if tensor.role == Role::Bias {
            biases.push(tensor.name.as_str());
        } else {
            add(tensor.name.as_str(), TensorJob::Parameter);
        }
    }
    for name in biases {
        add(name, TensorJob::Bias);
    }
    for tensor in graph.float_activations() {
        if let EncodingRule::SharesInput(_) = tensor.rule {
            add(tensor.name.as_str(), TensorJob::Shared);
        }
    }
    Ok(Arc::new(out))
}

/// One tensor's encoding: where it is listed, the encoding (with its channel axis) when it
/// gets one, and the warnings its computation raised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedTensor {
    /// The encodings file section.
    pub section: Section,
    /// The encoding and its channel axis; `None` for an activation without statistics.
    pub encoding: Option<(FixedEncoding, usize)>,
    /// Warnings, worded.
    pub warnings: Vec<String>,
}

impl EncodedTensor {
    /// The engine's form of the encoding.
    pub fn tensor_encoding(&self) -> Option<TensorEncoding> {
        self.encoding
            .as_ref()
            .map(|(fixed, axis)| fixed.clone().with_axis(*axis))
    }
}

/// Constant operands are listed with the activations (AIMET's convention).
fn is_activation_like(role: Role) -> bool {
    !matches!(
        role,
        Role::Weight { .. }
            | Role::Bias
            | Role::BatchNormScale
            | Role::BatchNormBias
            | Role::BatchNormMean
            | Role::BatchNormVariance
    )
}

/// The settings as they affect one tensor: names of the calibration set and overrides do not.
fn settings_digest(settings: &QuantizerSettings) -> Digest {
    let mut anonymous = settings.clone();
    anonymous.calibration.clear();
    anonymous.overrides.clear();
    stable_digest(&anonymous)
}

fn parameter_values<'g>(
    graph: &'g Graph,
    name: &str,
) -> Result<(&'g [f32], &'g [usize]), BuildError> {
    let missing = || {
        BuildError::Encode(EncodeError::ParameterData {
            tensor: name.to_string(),
        })
    };
    let data = graph.parameter(name).ok_or_else(missing)?;
    let values = data.as_f32().ok_or_else(missing)?;
    Ok((values, &data.shape))
}

/// What of a tensor's statistics its encoding can depend on. Without a histogram that is the
/// range and the non-finite counts (for the warning), not how many finite values were seen:
/// so a new sample inside every tensor's range re-encodes nothing.
fn statistics_digest(statistics: Option<&TensorStatistics>) -> Digest {
    match statistics {
        Some(s) if s.histogram.is_none() => {
            let m = &s.min_max;
            stable_digest(&(
                "min-max",
                m.min().map(f32::to_bits),
                m.max().map(f32::to_bits),
                m.nan_count(),
                m.positive_infinity_count(),
                m.negative_infinity_count(),
            ))
        }
        other => stable_digest(&other),
    }
}

fn values_digest(values: &[f32]) -> Digest {
    // The same bytes as hashing each value's little-endian bytes in turn, fed in blocks: one
    // `update` per value costs more than the hashing itself on a model's worth of weights.
    let mut hasher = blake3::Hasher::new();
    let mut block = [0u8; 4096];
    for chunk in values.chunks(block.len() / 4) {
        for (bytes, value) in block.chunks_exact_mut(4).zip(chunk) {
            bytes.copy_from_slice(&value.to_le_bytes());
        }
        hasher.update(&block[..chunk.len() * 4]);
    }
    Digest::from(hasher.finalize())
}

/// One tensor's encoding, computed exactly as [`quantizer::encode_model`] would, from the
/// per-tensor projections only; looked up in the store first.
#[salsa::tracked(returns(ref))]
pub fn tensor_encoding<'db>(
    db: &'db dyn Db,
    tensor: TensorKey<'db>,
) -> Result<Arc<EncodedTensor>, BuildError> {
    let unit = tensor.unit(db);
    let name = tensor.name(db);
    let plan = unit_plan(db, unit).as_ref().map_err(Clone::clone)?;
    let Some(settings) = plan.settings() else {
        return Err(BuildError::Model {
            path: display_path(&plan.model.path),
            message: format!("target `{}` is not quantized", plan.target.name),
        });
    };
    let tensors = unit_tensors(db, unit).as_ref().map_err(Clone::clone)?;
    let model_key = unit_model_key(db, unit).unwrap_or_else(|| model_key(db, plan));
    let model = model_graph(db, model_key).as_ref().map_err(Clone::clone)?;
    let graph = &model.graph;
    let Some(job) = tensors.jobs.get(name).copied() else {
        return Err(BuildError::Encode(EncodeError::ParameterData {
            tensor: name.clone(),
        }));
    };
    let Some(info) = graph.tensor(name) else {
        return Err(BuildError::Encode(EncodeError::ParameterData {
            tensor: name.clone(),
        }));
    };
    let ov = tensor_override(db, tensor);
    let partner = |partner: &str,
                   section: Section|
     -> Result<Option<Arc<EncodedTensor>>, BuildError> {
        let wanted = match section {
            Section::Activations => {
                matches!(
                    tensors.jobs.get(partner),
                    Some(TensorJob::Activation | TensorJob::Parameter)
                )
            }
            Section::Parameters => matches!(tensors.jobs.get(partner), Some(TensorJob::Parameter)),
        };
        if !wanted {
            return Ok(None);
        }
        let encoded = tensor_encoding(db, TensorKey::new(db, unit, partner.to_string()))
            .as_ref()
            .map_err(Clone::clone)?;
        Ok((encoded.section == section && encoded.encoding.is_some()).then(|| encoded.clone()))
    };

    let key = KeyBuilder::new(Kind::ENCODINGS)
        .str("tensor", name)
        .digest("settings", &settings_digest(settings))
        .digest("override", &stable_digest(&ov));
    let (key, compute): (
        KeyBuilder,
        Box<dyn FnOnce() -> Result<EncodedTensor, BuildError> + '_>,
    ) = match job {
        TensorJob::Activation => {
            let statistics = tensor_statistics(db, tensor);
            let key = key
                .str("role", "activation")
                .digest("statistics", &statistics_digest(statistics.as_ref()));
            (
                key,
                Box::new(move || {
                    let (encoding, warnings) = quantizer::encode_activation(
                        name,
                        statistics.as_ref(),
                        ov.as_ref(),
                        settings,
                    )
                    .map_err(BuildError::Encode)?;
                    Ok(encoded(Section::Activations, encoding.as_ref(), warnings))
                }),
            )
        }
        TensorJob::Parameter => {
            let (values, shape) = parameter_values(graph, name)?;
            let consumers: Vec<&str> = info.consumers.iter().map(|u| u.op_type.as_str()).collect();
            let key = key
                .str("role", "parameter")
                .digest("values", &values_digest(values))
                .digest("layout", &stable_digest(&(shape, info.role, &consumers)));
            (
                key,
                Box::new(move || {
                    let (encoding, warnings) =
                        quantizer::encode_parameter(info, values, shape, ov.as_ref(), settings)
                            .map_err(BuildError::Encode)?;
                    let section = if is_activation_like(info.role) {
                        Section::Activations
                    } else {
                        Section::Parameters
                    };
                    Ok(encoded(section, Some(&encoding), warnings))
                }),
            )
        }
        TensorJob::Bias => {
            let (values, shape) = parameter_values(graph, name)?;
            let (input, weight) = match bias_partners(graph, info) {
                Some((input, weight)) => (
                    partner(input, Section::Activations)?,
                    partner(weight, Section::Parameters)?,
                ),
                None => (None, None),
            };
            let input_encoding = input.as_ref().and_then(|e| e.encoding.clone());
            let weight_encoding = weight.as_ref().and_then(|e| e.encoding.clone());
            let key = key
                .str("role", "bias")
                .digest("values", &values_digest(values))
                .digest("layout", &stable_digest(&(shape, info.role)))
                .digest("input", &stable_digest(&input_encoding))
                .digest("weight", &stable_digest(&weight_encoding));
            (
                key,
                Box::new(move || {
                    let input = input_encoding.map(|(f, axis)| f.with_axis(axis));
                    let weight = weight_encoding.map(|(f, axis)| f.with_axis(axis));
                    let (encoding, warnings) = quantizer::bias_encoding(
                        info,
                        values,
                        ov.as_ref(),
                        input.as_ref(),
                        weight.as_ref(),
                        settings,
                    )
                    .map_err(BuildError::Encode)?;
                    Ok(encoded(Section::Parameters, Some(&encoding), warnings))
                }),
            )
        }
        TensorJob::Shared => {
            let source = match &ov {
                Some(Override::Fixed(_)) => None,
                _ => match graph.encoding_source(name) {
                    Some(source) => partner(source.as_str(), Section::Activations)?
                        .and_then(|e| e.encoding.clone()),
                    None => None,
                },
            };
            let key = key
                .str("role", "shared")
                .digest("source", &stable_digest(&source));
            (
                key,
                Box::new(move || {
                    let encoding = match ov {
                        Some(Override::Fixed(fixed)) => Some((fixed.clone(), 0)),
                        _ => source,
                    };
                    Ok(EncodedTensor {
                        section: Section::Activations,
                        encoding,
                        warnings: Vec::new(),
                    })
                }),
            )
        }
    };
    let key = key.finish();
    let context = unit.project(db).context(db);
    let store = context.store(db);
    let log = context.log(db);
    let section_of = |job: TensorJob| match job {
        TensorJob::Activation | TensorJob::Shared => Section::Activations,
        TensorJob::Bias => Section::Parameters,
        TensorJob::Parameter if is_activation_like(info.role) => Section::Activations,
        _ => Section::Parameters,
    };
    if let Some(store) = store
        && let Some(hit) = lookup::<StoredTensorEntry>(store, log, Kind::ENCODINGS, &key)
    {
        let restored = match &hit.encoding {
            Some(stored) => stored.restore().map(Some),
            None => Some(None),
        };
        if let Some(encoding) = restored {
            return Ok(Arc::new(EncodedTensor {
                section: section_of(job),
                encoding,
                warnings: hit.warnings,
            }));
        }
    }
    db.unwind_if_revision_cancelled();
    let result = compute()?;
    if let Some(store) = store {
        let entry = StoredTensorEntry {
            encoding: result
                .encoding
                .as_ref()
                .map(|(fixed, axis)| StoredEncoding::new(fixed, *axis)),
            warnings: result.warnings.clone(),
        };
        if let Err(e) = store.put_json(Kind::ENCODINGS, &key, &entry) {
            log.with(|r| r.store_errors.push(format!("{e:#}")));
        }
    }
    log.with(|r| {
        r.tensors_encoded.push(TensorRun {
            pipeline: plan.pipeline.clone(),
            target: plan.target.name.clone(),
            model: plan.model.name.clone(),
            tensor: name.clone(),
        })
    });
    Ok(Arc::new(result))
}

fn encoded(
    section: Section,
    encoding: Option<&TensorEncoding>,
    warnings: Vec<quantizer::Warning>,
) -> EncodedTensor {
    EncodedTensor {
        section,
        encoding: encoding.map(|e| {
            let axis = match e {
                TensorEncoding::PerChannel { axis, .. } => *axis,
                _ => 0,
            };
            (FixedEncoding::from(e), axis)
        }),
        warnings: warnings.iter().map(ToString::to_string).collect(),
    }
}

/// The tensors a bias's op reads as input 0 and as weight (input 1).
fn bias_partners<'g>(
    graph: &'g Graph,
    tensor: &crate::graph::Tensor,
) -> Option<(&'g str, &'g str)> {
    let consumer = tensor.consumers.first()?;
    let node = graph.node(consumer.node);
    let input = node.inputs.first()?.as_ref()?;
    let weight = node.inputs.get(1)?.as_ref()?;
    Some((input.as_str(), weight.as_str()))
}

// ---------------------------------------------------------------------------------------------
// Unit results.

/// Every encoding of one unit, as the encodings file lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitEncodings {
    /// `activation_encodings`, by name.
    pub activations: BTreeMap<String, FixedEncoding>,
    /// `param_encodings`, by name.
    pub parameters: BTreeMap<String, FixedEncoding>,
    /// The file's `quantizer_args`.
    pub quantizer_args: QuantizerArgs,
    /// Warnings from overrides and encoding, deduplicated, in computing order.
    pub warnings: Vec<String>,
    /// Whether the target is float (no calibration).
    pub float: bool,
    /// Samples merged into the statistics (0 for float targets).
    pub samples: usize,
    /// Tensors whose encoding was asked for (each one a computation or a reuse).
    pub computed_tensors: usize,
}

/// A unit's encodings: its per-tensor encodings collected (quantized targets), or every tensor
/// kept in float (cpu, gpu).
#[salsa::tracked(returns(ref))]
pub fn unit_encodings<'db>(
    db: &'db dyn Db,
    unit: Unit<'db>,
) -> Result<Arc<UnitEncodings>, BuildError> {
    let plan = unit_plan(db, unit).as_ref().map_err(Clone::clone)?;
    let tensors = unit_tensors(db, unit).as_ref().map_err(Clone::clone)?;
    let mut out = UnitEncodings {
        activations: BTreeMap::new(),
        parameters: BTreeMap::new(),
        quantizer_args: QuantizerArgs::default(),
        warnings: Vec::new(),
        float: false,
        samples: 0,
        computed_tensors: 0,
    };
    match &plan.target.precision {
        Precision::Float { float_bitwidth } => {
            let model = model_graph(db, model_key(db, plan))
                .as_ref()
                .map_err(Clone::clone)?;
            let bits =
                TensorFloatBitwidth::new(float_bitwidth.bits()).unwrap_or(TensorFloatBitwidth::F32);
            let float = FixedEncoding::Float(bits);
            for name in &tensors.order {
                let parameter_section = match tensors.jobs[name] {
                    TensorJob::Bias => true,
                    TensorJob::Parameter => model
                        .graph
                        .tensor(name)
                        .is_some_and(|t| !is_activation_like(t.role)),
                    TensorJob::Activation | TensorJob::Shared => false,
                };
                let section = if parameter_section {
                    &mut out.parameters
                } else {
                    &mut out.activations
                };
                section.insert(name.clone(), float.clone());
            }
            let bitwidth = Bitwidth::new(float_bitwidth.bits()).unwrap_or(Bitwidth::B32);
            out.quantizer_args = QuantizerArgs {
                activation_bitwidth: bitwidth,
                param_bitwidth: bitwidth,
                ..QuantizerArgs::default()
            };
            out.float = true;
        }
        Precision::Quantized(settings) => {
            // The coarse results first: their errors are the ones to report, and the
            // projections below read them as plain values.
            let overrides = unit_overrides(db, unit).as_ref().map_err(Clone::clone)?;
            out.warnings.extend(overrides.warnings.iter().cloned());
            if let Some(calibration) = unit_calibration(db, unit)? {
                let merged = merged_statistics(db, calibration)
                    .as_ref()
                    .map_err(Clone::clone)?;
                out.samples = merged.samples;
            }
            for name in &tensors.order {
                db.unwind_if_revision_cancelled();
                let encoded = tensor_encoding(db, TensorKey::new(db, unit, name.clone()))
                    .as_ref()
                    .map_err(Clone::clone)?;
                out.computed_tensors += 1;
                for warning in &encoded.warnings {
                    if !out.warnings.contains(warning) {
                        out.warnings.push(warning.clone());
                    }
                }
                if let Some((fixed, _)) = &encoded.encoding {
                    let section = match encoded.section {
                        Section::Activations => &mut out.activations,
                        Section::Parameters => &mut out.parameters,
                    };
                    section.insert(name.clone(), fixed.clone());
                }
            }
            out.quantizer_args = quantizer_args(settings);
        }
    }
    Ok(Arc::new(out))
}

/// The bytes of a unit's output files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifacts {
    /// `encodings.json` (the same bytes as [`unit_encodings_json`], shared, not copied).
    pub encodings_json: Arc<str>,
    /// `report.json`.
    pub report_json: String,
    /// `model.qdq.onnx` (quantized targets).
    pub qdq_model: Option<Arc<[u8]>>,
    /// The evaluation (targets with `evaluate`): `report.html` and the terminal summary.
    pub evaluation: Option<Arc<super::evaluate::UnitEvaluation>>,
}

/// The AIMET layout for a manifest's `encoding_version`.
pub fn aimet_version(version: EncodingVersion) -> AimetVersion {
    match version {
        EncodingVersion::V0_6_1 => AimetVersion::V0_6_1,
        EncodingVersion::V1_0_0 => AimetVersion::V1_0_0,
    }
}

/// `encodings.json` of a unit: its encodings in the manifest's AIMET layout.
pub fn encodings_json(plan: &UnitPlan, encodings: &UnitEncodings) -> String {
    let aimet = AimetEncodings {
        activations: encodings.activations.clone(),
        parameters: encodings.parameters.clone(),
        quantizer_args: encodings.quantizer_args.clone(),
    };
    aimet.to_json(aimet_version(plan.encoding_version))
}

/// The unit's `encodings.json` bytes, serialized once per revision: the file itself, the QDQ
/// model's metadata digest and the evaluation's store key all read this one value (a large
/// model's file is megabytes of JSON). A quantized unit's file is assembled from each tensor's
/// kept [`tensor_json_fragment`], so an edit formats only the tensors it changed.
#[salsa::tracked(returns(ref))]
pub fn unit_encodings_json<'db>(db: &'db dyn Db, unit: Unit<'db>) -> Result<Arc<str>, BuildError> {
    let plan = unit_plan(db, unit).as_ref().map_err(Clone::clone)?;
    // The unit's own errors (overrides, calibration) come first, as everywhere.
    let encodings = unit_encodings(db, unit).as_ref().map_err(Clone::clone)?;
    if encodings.float {
        return Ok(Arc::from(encodings_json(plan, encodings)));
    }
    let tensors = unit_tensors(db, unit).as_ref().map_err(Clone::clone)?;
    let mut activations: BTreeMap<&str, Arc<str>> = BTreeMap::new();
    let mut parameters: BTreeMap<&str, Arc<str>> = BTreeMap::new();
    for name in &tensors.order {
        let fragment = tensor_json_fragment(db, TensorKey::new(db, unit, name.clone()))
            .as_ref()
            .map_err(Clone::clone)?;
        if let Some((section, text)) = fragment {
            let map = match section {
                Section::Activations => &mut activations,
                Section::Parameters => &mut parameters,
            };
            map.insert(name.as_str(), text.clone());
        }
    }
    // Name order in each section, as the whole-file writer lists them.
    let activations: Vec<Arc<str>> = activations.into_values().collect();
    let parameters: Vec<Arc<str>> = parameters.into_values().collect();
    Ok(Arc::from(crate::export::aimet::assemble(
        &activations,
        &parameters,
        &encodings.quantizer_args,
        aimet_version(plan.encoding_version),
    )))
}

/// One tensor's entry in its unit's `encodings.json`, formatted for its place in the file
/// ([`crate::export::aimet::entry_fragment`]); `None` when the tensor is not listed.
#[salsa::tracked(returns(ref))]
pub fn tensor_json_fragment<'db>(
    db: &'db dyn Db,
    tensor: TensorKey<'db>,
) -> Result<Option<(Section, Arc<str>)>, BuildError> {
    let plan = unit_plan(db, tensor.unit(db))
        .as_ref()
        .map_err(Clone::clone)?;
    let encoded = tensor_encoding(db, tensor).as_ref().map_err(Clone::clone)?;
    let Some((fixed, _)) = &encoded.encoding else {
        return Ok(None);
    };
    let text = crate::export::aimet::entry_fragment(
        tensor.name(db),
        fixed,
        aimet_version(plan.encoding_version),
    );
    Ok(Some((encoded.section, Arc::from(text))))
}

/// A unit's output files. Pure function of the encodings, the evaluation and the plan: no
/// paths, times or thread counts, so equal inputs give equal bytes on any machine.
#[salsa::tracked(returns(ref))]
pub fn unit_artifacts<'db>(db: &'db dyn Db, unit: Unit<'db>) -> Result<Arc<Artifacts>, BuildError> {
    let plan = unit_plan(db, unit).as_ref().map_err(Clone::clone)?;
    let encodings = unit_encodings(db, unit).as_ref().map_err(Clone::clone)?;
    let encodings_json = unit_encodings_json(db, unit)
        .as_ref()
        .map_err(Clone::clone)?
        .clone();
    let qdq_model = super::evaluate::unit_qdq_model(db, unit)
        .as_ref()
        .map_err(Clone::clone)?
        .clone();
    let evaluation = super::evaluate::unit_evaluation(db, unit)
        .as_ref()
        .map_err(Clone::clone)?
        .clone();
    let report_json =
        super::summary::unit_report(plan, encodings, evaluation.as_ref().map(|e| &e.report));
    Ok(Arc::new(Artifacts {
        encodings_json,
        report_json,
        qdq_model,
        evaluation,
    }))
}
