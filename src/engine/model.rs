//! A unit's model: the ONNX file read, its input dims fixed, cross-layer equalization applied
//! when the target asks for it, and its graph built, once per file, dims and transform however
//! many targets use it.
//!
//! The equalized model is a stage of its own: its bytes are stored under a key of the source
//! model's digest, the dims and the transform's settings, so a fresh process loads it instead
//! of equalizing again. Bias correction, which needs calibration data, is a later stage
//! (`correct`); this module sees only the transforms that read nothing but the model.

use std::sync::Arc;

use super::cache::{RUNTIME, TRANSFORMED_MODELS, lookup_bytes};
use super::db::Db;
use super::error::{BuildError, display_path};
use super::inputs::source_file;
use super::keys::{ModelKey, Unit};
use super::plan::{UnitPlan, unit_plan};
use super::stored::{decode_transformed_model, encode_transformed_model, stable_digest};
use crate::graph::Graph;
use crate::onnx::OnnxModel;
use crate::overrides::ModelTensors;
use crate::store::{Digest, KeyBuilder};
use crate::transform::CleOptions;

/// Version of what the model transforms compute; bump when any transform's output changes for
/// the same input, so stored transformed models are never read back stale.
pub const TRANSFORM_VERSION: u64 = 1;

/// A model read, its dims fixed, its transforms applied, its graph built.
#[derive(Debug)]
pub struct LoadedModel {
    /// The model with `input_dims` applied and transformed (what calibration runs).
    pub onnx: OnnxModel,
    /// Its graph.
    pub graph: Graph,
    /// The tensors overrides may name.
    pub tensors: ModelTensors,
    /// What names the model's bytes: the file's digest for an untransformed model, the
    /// transformed bytes' digest otherwise.
    pub content: Digest,
    /// The transformed model's bytes, when a transform ran (the unit writes them out).
    pub transformed: Option<Arc<TransformedModel>>,
}

/// A transformed model as the store keeps it: its bytes, their digest and the transforms'
/// report, one line per event (warnings start with `warning: `).
#[derive(Debug, PartialEq, Eq)]
pub struct TransformedModel {
    /// blake3 of `bytes`: the model's identity for every later key.
    pub digest: Digest,
    /// The ONNX bytes.
    pub bytes: Arc<[u8]>,
    /// The report of every transform that made it, in order.
    pub lines: Vec<String>,
}

impl TransformedModel {
    /// A transformed model from its bytes and report lines.
    pub fn new(bytes: Vec<u8>, lines: Vec<String>) -> TransformedModel {
        TransformedModel {
            digest: Digest::of(&bytes),
            bytes: bytes.into(),
            lines,
        }
    }
}

/// The key of a unit's model: its file with the unit's input dims and the transforms its
/// target asks for.
pub fn model_key<'db>(db: &'db dyn Db, unit: Unit<'db>, plan: &UnitPlan) -> ModelKey<'db> {
    let algorithms = plan.algorithms();
    ModelKey::new(
        db,
        source_file(db, &plan.model.path),
        dims(plan),
        algorithms.cle,
        algorithms.bias_correction.then_some(unit),
        algorithms.adaround.then_some(unit),
        unit.project(db).context(db),
    )
}

/// The key of the model a unit's overrides are checked against: its model before bias
/// correction and AdaRound, which add no tensor an override could name and must not wait for
/// calibration.
pub fn uncorrected_key<'db>(db: &'db dyn Db, key: ModelKey<'db>) -> ModelKey<'db> {
    ModelKey::new(
        db,
        key.file(db),
        key.input_dims(db).clone(),
        key.cle(db),
        None,
        None,
        key.context(db),
    )
}

/// The key of the untransformed model of `key`: the float model a transform starts from.
pub fn source_key<'db>(db: &'db dyn Db, key: ModelKey<'db>) -> ModelKey<'db> {
    ModelKey::new(
        db,
        key.file(db),
        key.input_dims(db).clone(),
        false,
        None,
        None,
        key.context(db),
    )
}

/// `input_dims` as the runner takes them.
pub fn runner_dims(dims: &[(String, Vec<u64>)]) -> Vec<(String, Vec<usize>)> {
    dims.iter()
        .map(|(name, dims)| (name.clone(), dims.iter().map(|&d| d as usize).collect()))
        .collect()
}

fn dims(plan: &UnitPlan) -> Vec<(String, Vec<u64>)> {
    plan.model
        .input_dims
        .iter()
        .map(|(name, dims)| (name.clone(), dims.clone()))
        .collect()
}

/// [`model_key`] of a unit, memoized: making one normalizes the model's path (system calls),
/// which the per-tensor queries must not repeat for every tensor.
#[salsa::tracked]
pub(super) fn unit_model_key<'db>(db: &'db dyn Db, unit: Unit<'db>) -> Option<ModelKey<'db>> {
    let plan = unit_plan(db, unit).as_ref().ok()?;
    Some(model_key(db, unit, plan))
}

/// The model's graph, for a model without bias correction (`adarounded::model_graph` is the one
/// for every key). Not compared for equality (a graph holds float attributes): a changed model
/// file re-runs everything that reads it, which it has to anyway.
#[salsa::tracked(returns(ref), no_eq)]
pub fn source_model<'db>(
    db: &'db dyn Db,
    model: ModelKey<'db>,
) -> Result<Arc<LoadedModel>, BuildError> {
    debug_assert!(
        model.corrected_for(db).is_none() && model.adaround_for(db).is_none(),
        "bias correction is `correct`'s, AdaRound `adarounded`'s"
    );
    let file = model.file(db);
    let path = file.path(db);
    let failed = |message: String| BuildError::Model {
        path: display_path(path),
        message,
    };
    if model.cle(db) {
        let equalized = equalized_model(db, model).as_ref().map_err(Clone::clone)?;
        let onnx =
            OnnxModel::from_bytes(&equalized.bytes, path).map_err(|e| failed(e.to_string()))?;
        let source = source_model(db, source_key(db, model))
            .as_ref()
            .map_err(Clone::clone)?;
        let mut equalized =
            loaded(onnx, equalized.digest, Some(equalized.clone())).map_err(failed)?;
        // Just built, so not shared yet.
        if let Some(loaded) = Arc::get_mut(&mut equalized) {
            loaded.tensors = std::mem::take(&mut loaded.tensors).removed_from(&source.tensors);
        }
        return Ok(equalized);
    }
    let bytes = file
        .bytes(db)
        .map_err(|e| BuildError::file("model", path, &e))?;
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
    let content = file.digest(db).unwrap_or_else(|| Digest::of(bytes));
    let tensors = ModelTensors::of(&graph);
    Ok(Arc::new(LoadedModel {
        onnx,
        graph,
        tensors,
        content,
        transformed: None,
    }))
}

/// A transformed model, loaded: its graph built from the transformed bytes.
pub fn loaded(
    onnx: OnnxModel,
    content: Digest,
    transformed: Option<Arc<TransformedModel>>,
) -> Result<Arc<LoadedModel>, String> {
    let graph = Graph::from_model(&onnx).map_err(|e| e.to_string())?;
    let tensors = ModelTensors::of(&graph);
    Ok(Arc::new(LoadedModel {
        onnx,
        graph,
        tensors,
        content,
        transformed,
    }))
}

/// The model cross-layer equalized: read from the store when kept, otherwise computed from the
/// untransformed model and stored. Compared by digest, so a rebuild that equalizes to the
/// same bytes spares everything downstream.
#[salsa::tracked(returns(ref))]
pub fn equalized_model<'db>(
    db: &'db dyn Db,
    model: ModelKey<'db>,
) -> Result<Arc<TransformedModel>, BuildError> {
    let file = model.file(db);
    let Some(file_digest) = file.digest(db) else {
        // The model's own diagnostic (missing, unreadable).
        source_model(db, source_key(db, model))
            .as_ref()
            .map_err(Clone::clone)?;
        return Err(BuildError::Changed {
            path: display_path(file.path(db)),
        });
    };
    let options = CleOptions::default();
    let key = KeyBuilder::new(TRANSFORMED_MODELS)
        .str("transform", "cle")
        .u64("version", TRANSFORM_VERSION)
        .str("runtime", RUNTIME)
        .digest("model", &file_digest)
        .digest("inputs", &stable_digest(model.input_dims(db)))
        .digest(
            "settings",
            &stable_digest(&("high_bias_absorption", options.high_bias_absorption)),
        )
        .finish();
    let (store, log) = (
        model.context(db).store(db).as_ref(),
        model.context(db).log(db),
    );
    if let Some(store) = store
        && let Some(stored) = lookup_bytes(store, log, TRANSFORMED_MODELS, &key)
            .and_then(|b| decode_transformed_model(&b))
    {
        let (lines, bytes) = stored;
        return Ok(Arc::new(TransformedModel::new(bytes, lines)));
    }
    let source = source_model(db, source_key(db, model))
        .as_ref()
        .map_err(Clone::clone)?;
    let (equalized, report) =
        crate::transform::equalize(&source.onnx, &options).map_err(|e| BuildError::Model {
            path: display_path(file.path(db)),
            message: format!("cross-layer equalization failed: {e}"),
        })?;
    let transformed = TransformedModel::new(equalized.to_bytes(), report.lines());
    if let Some(store) = store
        && let Err(e) = store.put(
            TRANSFORMED_MODELS,
            &key,
            &encode_transformed_model(&transformed.lines, &transformed.bytes),
        )
    {
        log.with(|r| r.store_errors.push(format!("{e:#}")));
    }
    log.with(|r| {
        r.transforms_run
            .push(format!("cle {}", display_path(file.path(db))))
    });
    Ok(Arc::new(transformed))
}
