//! A unit's output files as bytes: `encodings.json`, `model.qdq.onnx`, the evaluation's
//! `report.html`, and `report.json`, a deterministic summary of the unit's encodings.
//!
//! `report.json` must not hold anything that differs between two builds of the same inputs —
//! no paths, times, thread counts, nor what the cache reused (those go to `quant build --json`)
//! — because an incremental build must write the bytes a clean one does. A target with
//! `evaluate = "NAME"` gets its evaluation ([`crate::report::Report`]: float vs QuantSim
//! metrics and the per-tensor table) under `evaluation`; other targets have no such field.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::adarounded::model_graph;
use super::db::Db;
use super::encode::{UnitEncodings, unit_encodings};
use super::error::BuildError;
use super::evaluate::unit_evaluation;
use super::export::{unit_encodings_json, unit_qdq_model};
use super::keys::Unit;
use super::model::model_key;
use super::plan::{UnitPlan, unit_plan};
use super::precision::unit_float_model;
use crate::overrides::FixedEncoding;

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
    /// The transformed float model the encodings refer to, `model.{infix}.onnx` (targets with
    /// `algorithms`): its file name and bytes.
    pub transformed_model: Option<(String, Arc<[u8]>)>,
    /// A float target's model, `model.fp16.onnx` or `model.fp32.onnx`: its file name and
    /// bytes.
    pub float_model: Option<(String, Arc<[u8]>)>,
}

/// Every name a transformed model's file can have, so a unit that stops transforming (or
/// transforms differently) removes the file it wrote before, as a clean build would not have
/// it.
pub const TRANSFORMED_MODEL_FILES: [&str; 7] = [
    "model.cle.onnx",
    "model.bc.onnx",
    "model.cle.bc.onnx",
    "model.adaround.onnx",
    "model.cle.adaround.onnx",
    "model.bc.adaround.onnx",
    "model.cle.bc.adaround.onnx",
];

/// paths, times or thread counts, so equal inputs give equal bytes on any machine.
#[salsa::tracked(returns(ref))]
pub fn unit_artifacts<'db>(db: &'db dyn Db, unit: Unit<'db>) -> Result<Arc<Artifacts>, BuildError> {
    let plan = unit_plan(db, unit).as_ref().map_err(Clone::clone)?;
    let encodings = unit_encodings(db, unit).as_ref().map_err(Clone::clone)?;
    let encodings_json = unit_encodings_json(db, unit)
        .as_ref()
        .map_err(Clone::clone)?
        .clone();
    let qdq_model = unit_qdq_model(db, unit)
        .as_ref()
        .map_err(Clone::clone)?
        .clone();
    let float_model = unit_float_model(db, unit)
        .as_ref()
        .map_err(Clone::clone)?
        .clone();
    let evaluation = unit_evaluation(db, unit)
        .as_ref()
        .map_err(Clone::clone)?
        .clone();
    let transformed = match plan.algorithms().file_infix() {
        Some(infix) => model_graph(db, model_key(db, unit, plan))
            .as_ref()
            .map_err(Clone::clone)?
            .transformed
            .clone()
            .map(|t| (format!("model.{infix}.onnx"), t)),
        None => None,
    };
    let report_json = unit_report(
        plan,
        encodings,
        transformed.as_ref().map(|(_, t)| t.lines.as_slice()),
        evaluation.as_ref().map(|e| &e.report),
    );
    Ok(Arc::new(Artifacts {
        encodings_json,
        report_json,
        qdq_model,
        evaluation,
        transformed_model: transformed.map(|(name, t)| (name, t.bytes.clone())),
        float_model,
    }))
}

/// Layout version of `report.json`; bump when fields change meaning.
pub const REPORT_VERSION: u32 = 2;

fn entry(fixed: &FixedEncoding) -> Value {
    match fixed {
        FixedEncoding::Float(bits) => json!({ "dtype": "float", "bitwidth": bits.bits() }),
        FixedEncoding::PerTensor(e) => json!({
            "dtype": "int",
            "bitwidth": e.bitwidth.bits(),
            "schema": e.schema.as_str(),
            "min": e.min,
            "max": e.max,
            "scale": e.scale,
            "offset": e.offset,
        }),
        FixedEncoding::PerChannel(channels) => {
            let scales = channels.iter().map(|e| e.scale);
            json!({
                "dtype": "int",
                "bitwidth": channels.first().map_or(0, |e| e.bitwidth.bits()),
                "schema": channels.first().map_or("", |e| e.schema.as_str()),
                "channels": channels.len(),
                "scale_min": scales.clone().fold(f64::INFINITY, f64::min),
                "scale_max": scales.fold(f64::NEG_INFINITY, f64::max),
            })
        }
    }
}

/// The report of one unit, pretty-printed JSON with a trailing newline; `transforms` is the
/// model transforms' report, one line per event, when the target transforms its model;
/// `evaluation` is the evaluation's report as a JSON value, when the target is evaluated.
pub fn unit_report(
    plan: &UnitPlan,
    encodings: &UnitEncodings,
    transforms: Option<&[String]>,
    evaluation: Option<&Value>,
) -> String {
    let section = |map: &std::collections::BTreeMap<String, FixedEncoding>| {
        Value::Object(
            map.iter()
                .map(|(name, fixed)| (name.clone(), entry(fixed)))
                .collect::<Map<String, Value>>(),
        )
    };
    let mut report = json!({
        "report_version": REPORT_VERSION,
        "pipeline": plan.pipeline,
        "target": plan.target.name,
        "backend": plan.target.backend.to_string(),
        "model": plan.model.name,
        "precision": if encodings.float { "float" } else { "quantized" },
        "encoding_version": plan.encoding_version.as_str(),
        "calibration_samples": encodings.samples,
        "counts": {
            "activation_encodings": encodings.activations.len(),
            "param_encodings": encodings.parameters.len(),
        },
        "warnings": encodings.warnings,
        "activation_encodings": section(&encodings.activations),
        "param_encodings": section(&encodings.parameters),
    });
    if let (Some(lines), Value::Object(fields)) = (transforms, &mut report) {
        fields.insert(
            "transforms".to_string(),
            json!({ "algorithms": plan.algorithms().to_string(), "report": lines }),
        );
    }
    if let (Some(evaluation), Value::Object(fields)) = (evaluation, &mut report) {
        fields.insert("evaluation".to_string(), evaluation.clone());
    }
    let mut text = serde_json::to_string_pretty(&report).unwrap_or_default();
    text.push('\n');
    text
}
