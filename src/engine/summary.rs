//! `report.json`: a deterministic summary of one unit's encodings, written next to
//! `encodings.json`.
//!
//! It owns the report's layout. It must not hold anything that differs between two builds of
//! the same inputs — no paths, times, thread counts, nor what the cache reused (those go to
//! `quant build --json`) — because an incremental build must write the bytes a clean one does.
//! A target with `evaluate = "NAME"` gets its evaluation ([`crate::report::Report`]: float vs
//! QuantSim metrics and the per-tensor table) under `evaluation`; other targets have no such
//! field.

use serde_json::{Map, Value, json};

use super::queries::{UnitEncodings, UnitPlan};
use crate::overrides::FixedEncoding;

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

/// The report of one unit, pretty-printed JSON with a trailing newline; `evaluation` is the
/// evaluation's report as a JSON value, when the target is evaluated.
pub fn unit_report(
    plan: &UnitPlan,
    encodings: &UnitEncodings,
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
    if let (Some(evaluation), Value::Object(fields)) = (evaluation, &mut report) {
        fields.insert("evaluation".to_string(), evaluation.clone());
    }
    let mut text = serde_json::to_string_pretty(&report).unwrap_or_default();
    text.push('\n');
    text
}
