//! A unit's model: the ONNX file read, its input dims fixed and its graph built, once per file
//! and dims however many targets use it.

use std::sync::Arc;

use super::db::Db;
use super::error::{BuildError, display_path};
use super::inputs::source_file;
use super::keys::{ModelKey, Unit};
use super::plan::{UnitPlan, unit_plan};
use crate::graph::Graph;
use crate::onnx::OnnxModel;
use crate::overrides::ModelTensors;

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
pub(super) fn unit_model_key<'db>(db: &'db dyn Db, unit: Unit<'db>) -> Option<ModelKey<'db>> {
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
    let tensors = ModelTensors::of(&graph);
    Ok(Arc::new(LoadedModel {
        onnx,
        graph,
        tensors,
    }))
}
